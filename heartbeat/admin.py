"""``python -m heartbeat.admin erase USER…``: erase users straight in the store.

For an operator with no API key at hand, or a store no daemon serves. It
reads the same settings as the daemon (environment, ``.env``). On Redis it
erases as ``DELETE /users/{id}`` does — the running instances' watchers get
the erased event, the users' own streams end — through the store itself.
The embedded store's file is held by a running daemon, so there the command
refuses and points at ``DELETE /users/{id}``, which also tells that
daemon's watchers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from twisted.application.service import IService
from twisted.internet.task import deferLater, react
from twisted.python.usage import UsageError

from heartbeat.core.changes import erased_change
from heartbeat.daemon.config import Settings, load_settings
from heartbeat.daemon.tap import make_store
from heartbeat.store.sqlite import Changes, Database, DatabaseUnusable

USAGE = "usage: python -m heartbeat.admin erase USER [USER ...]"
# Seconds to wait for Redis to take commands before giving up.
CONNECT_TIMEOUT = 15.0


def erase_embedded(setting: str, userids: Sequence[str]) -> None:
    """Erase ``userids`` from the SQLite file ``DATABASE`` names, as the daemon would."""
    if setting == ":memory:":
        raise DatabaseUnusable("DATABASE=:memory: keeps nothing: there is nothing to erase")
    try:
        database = Database.open(setting)
    except DatabaseUnusable as e:
        if "another process" in str(e):
            raise DatabaseUnusable(
                f"{e}; erase through the running daemon: DELETE /users/<id> with the API key"
            ) from None
        raise
    try:
        # Each user's one erased change, numbered after the file's newest.
        rows = Changes()
        at = int(time.time() * 1000)
        for n, userid in enumerate(dict.fromkeys(userids), database.feed_newest + 1):
            rows.erase(erased_change(userid, at), n)
        database.write(rows)
    finally:
        database.close()
        database.unlock()


async def erase_on_redis(reactor: Any, settings: Settings, userids: Sequence[str]) -> None:
    """Erase ``userids`` through a Redis store of our own, then close it."""
    store = make_store(settings, reactor)
    assert IService.providedBy(store)
    store.startService()
    try:
        waited = 0.0
        while not store.available:
            if waited >= CONNECT_TIMEOUT:
                raise UsageError(f"REDIS={settings.redis.describe() if settings.redis else ''} "
                                 f"did not take commands within {CONNECT_TIMEOUT:g}s")
            await deferLater(reactor, 0.1, lambda: None)
            waited += 0.1
        for userid in userids:
            await store.erase(userid)
            await store.disconnect(userid)
    finally:
        await store.close()


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2 or argv[0] != "erase":
        print(USAGE, file=sys.stderr)
        return 2
    userids = list(argv[1:])
    try:
        settings = load_settings({})
        if settings.redis is None:
            erase_embedded(settings.database, userids)
            where = f"DATABASE={settings.database}"
        else:
            failed: list[str] = []

            async def run(reactor: Any) -> None:
                try:
                    await erase_on_redis(reactor, settings, userids)
                except Exception as e:  # one line, as every other refusal here
                    failed.append(str(e) or type(e).__name__)

            try:
                react(run)
            except SystemExit:
                pass
            if failed:
                raise UsageError(failed[0])
            where = "REDIS"
    except (UsageError, DatabaseUnusable) as e:
        print(f"heartbeat.admin: {e}", file=sys.stderr)
        return 1
    print(f"erased {len(userids)} user(s) in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
