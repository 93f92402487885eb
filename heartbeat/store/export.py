"""``python -m heartbeat.store.export REDIS``: copy the embedded store into a Redis.

For moving a deployment from the embedded default to ``REDIS`` (more
processes, more machines): stop heartbeat, export, start it with ``REDIS``
set. Every user's latest ping, devices and presence deadlines are copied,
in the keys the Redis store uses, nothing published. The database's lock
keeps a running heartbeat and the export apart, so the copy is whole.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import deferLater, react

from heartbeat.store.redis.address import parse_redis
from heartbeat.store.redis.store import RedisStore
from heartbeat.store.redis.tls import load_trust_root
from heartbeat.store.sqlite import Database, DatabaseUnusable

# Users restored at once: enough to keep the connection busy, not so many
# that a large database floods txredisapi's queue.
CHUNK = 500
# Seconds to wait for Redis before giving up.
CONNECT_TIMEOUT = 15.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m heartbeat.store.export", description=__doc__)
    p.add_argument("redis", help="where to copy to, as the REDIS setting (host:port, redis://…)")
    p.add_argument("--database", default="heartbeat.db",
                   help="the embedded store's file, as DATABASE (default: %(default)s)")
    p.add_argument("--redis-prefix", default="heartbeat:",
                   help="key prefix, as REDIS_PREFIX (default: %(default)s)")
    p.add_argument("--redis-ca-file", default=None, help="as REDIS_CA_FILE, for rediss://")
    return p.parse_args(argv)


async def export(reactor: Any, args: argparse.Namespace) -> int:
    try:
        address = parse_redis(args.redis)
        if args.redis_ca_file:
            load_trust_root(args.redis_ca_file)
    except ValueError as e:
        print(f"heartbeat.export: bad REDIS={args.redis!r}: {e}", file=sys.stderr)
        return 2
    if address is None:
        print("heartbeat.export: REDIS is empty", file=sys.stderr)
        return 2
    try:
        database = Database.open(args.database)
    except DatabaseUnusable as e:
        print(f"heartbeat.export: {e}", file=sys.stderr)
        return 1
    # The timeout only shapes new deadlines; restored ones keep theirs.
    store = RedisStore(address, args.redis_prefix, reactor, 60.0, args.redis_ca_file)
    store.startService()
    try:
        waited = 0.0
        while not store.available:
            if waited >= CONNECT_TIMEOUT:
                print(f"heartbeat.export: REDIS={address.describe()} not reachable", file=sys.stderr)
                return 1
            await deferLater(reactor, 0.1, lambda: None)
            waited += 0.1
        users = devices = 0
        for chunk in database.read_all(CHUNK):
            await gatherResults([store.restore(latest, stored) for latest, stored in chunk],
                                consumeErrors=True)
            users += len(chunk)
            devices += sum(len(stored) for _, stored in chunk)
        print(f"heartbeat.export: copied {users} users ({devices} devices) "
              f"from DATABASE={args.database!r} to REDIS={address.describe()}")
        return 0
    finally:
        await store.stopService()
        database.unlock()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def run(reactor: Any) -> Deferred[None]:
        async def go() -> None:
            code = await export(reactor, args)
            if code:
                raise SystemExit(code)
        return ensureDeferred(go())

    react(run)


if __name__ == "__main__":
    main()
