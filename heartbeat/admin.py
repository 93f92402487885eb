"""``python -m heartbeat.admin erase USER…``: erase users straight in the store.

For an operator with no API key at hand, or a store no daemon serves. It
reads the same settings as the daemon (environment, ``.env``). The embedded
store's file is held by a running daemon, so there the command refuses and
points at ``DELETE /users/{id}``, which also tells that daemon's watchers.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from twisted.python.usage import UsageError

from heartbeat.daemon.config import load_settings
from heartbeat.store.sqlite import Changes, Database, DatabaseUnusable

USAGE = "usage: python -m heartbeat.admin erase USER [USER ...]"


def erase_embedded(setting: str, userids: Sequence[str]) -> None:
    """Erase ``userids`` from the SQLite file ``DATABASE`` names, as the daemon would."""
    if setting == ":memory:":
        raise DatabaseUnusable("DATABASE=:memory: keeps nothing: there is nothing to erase")
    try:
        database, _ = Database.open(setting)
    except DatabaseUnusable as e:
        if "another process" in str(e):
            raise DatabaseUnusable(
                f"{e}; erase through the running daemon: DELETE /users/<id> with the API key"
            ) from None
        raise
    try:
        database.write(Changes(erased=dict.fromkeys(userids)))
    finally:
        database.close()
        database.unlock()


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2 or argv[0] != "erase":
        print(USAGE, file=sys.stderr)
        return 2
    userids = list(argv[1:])
    try:
        settings = load_settings({})
        if settings.redis is not None:
            raise UsageError("erasing on REDIS from the command line is not available yet; "
                             "use DELETE /users/<id> with the API key")
        erase_embedded(settings.database, userids)
    except (UsageError, DatabaseUnusable) as e:
        print(f"heartbeat.admin: {e}", file=sys.stderr)
        return 1
    print(f"erased {len(userids)} user(s) from DATABASE={settings.database}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
