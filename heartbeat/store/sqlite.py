"""The embedded store: presence in this process, every change committed to SQLite first.

The state a stream or ``/status`` reads is the in-process store's
(:class:`~heartbeat.store.memory.MemoryStore`, whose presence rules it
inherits) for the users that are live; the database, ``DATABASE``, is the
record of everyone, read when a user not in memory is asked for, and at
start-up for the users online. A ping or a leave changes memory, and is
published and answered, only once its transaction has committed: a ``200``
survives ``kill -9``.

One writer thread owns the connection (a one-thread pool, not the
reactor's shared one, so a slow ``getaddrinfo`` elsewhere never queues
behind a commit, and no other thread ever touches the connection); reads
take turns with the writes there, so a read never sees a write half-way. The
changes of one reactor turn, and those arriving while a commit is under
way, go to it as one transaction, so the ping rate is bounded by commits,
not by pings. ``twisted.enterprise.adbapi``
would do the same hop but adds a transaction object and a reconnect policy
per call, and hides the connection heartbeat needs to shape its batches.

Nothing at start-up is ever silently replaced: a path that cannot be
created, a file that is not SQLite, or a SQLite database that is not
heartbeat's (by ``PRAGMA application_id``) stops start-up with
:class:`DatabaseUnusable`, the file untouched. A ``DATABASE + "-lock"`` file,
held with ``flock`` for the life of the process (and of twistd's daemonized
child, which inherits it), keeps a second process off the same file.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import MAX_DEVICES_PER_USER, Devices, Ping, Presence, UserState
from heartbeat.core.store_contract import StoreUnavailable
from heartbeat.store.memory import MemoryStore

log = Logger()

# "hbea" in the database header: how a file is known to be heartbeat's.
APPLICATION_ID = 0x68626561
# The schema below; a later one migrates files of an earlier one.
SCHEMA_VERSION = 2
_SQLITE_MAGIC = b"SQLite format 3\x00"
# Milliseconds a write waits for a reader's lock (``sqlite3 … .backup``) before failing.
BUSY_TIMEOUT_MS = 2000
# Seconds between writes that test whether a failing disk takes writes again,
# so /health recovers with no ping to try it.
PROBE_INTERVAL = 1.0

# What each schema version adds to the one before.
_MIGRATIONS = {
    # The online devices, what start-up loads, without reading every row.
    2: ("CREATE INDEX IF NOT EXISTS devices_online ON devices (deadline)"
        " WHERE deadline IS NOT NULL",),
}
_SCHEMA = (
    # Each user's latest ping, whichever device sent it.
    "CREATE TABLE users (userid TEXT PRIMARY KEY, time INTEGER NOT NULL,"
    " status TEXT NOT NULL, clientid TEXT NOT NULL) WITHOUT ROWID",
    # Each device's latest ping and, while it is online, when it times out
    # (wall-clock seconds; NULL once it left).
    "CREATE TABLE devices (userid TEXT NOT NULL, clientid TEXT NOT NULL,"
    " time INTEGER NOT NULL, status TEXT NOT NULL, deadline REAL,"
    " PRIMARY KEY (userid, clientid)) WITHOUT ROWID",
    # When this file last took a write: what the probe writes.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    *_MIGRATIONS[2],
)
_PUT_USER = "INSERT OR REPLACE INTO users VALUES (?, ?, ?, ?)"
_PUT_DEVICE = "INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?, ?)"
_LEAVE = "UPDATE devices SET deadline = NULL WHERE userid = ? AND clientid = ?"
_FORGET = "DELETE FROM devices WHERE userid = ? AND clientid = ?"
# A device's deadline passed: offline on disk too, unless a later ping moved it.
_TIMED_OUT = ("UPDATE devices SET deadline = NULL"
              " WHERE userid = ? AND clientid = ? AND deadline <= ?")
_ONLINE_USERS = "SELECT DISTINCT userid FROM devices WHERE deadline IS NOT NULL"
# Most userids in one IN (…): under SQLite's smallest variable limit.
_READ_CHUNK = 500
_PROBE = "INSERT OR REPLACE INTO meta VALUES ('written', ?)"


class DatabaseUnusable(Exception):
    """``DATABASE`` cannot be used; the message is the one line start-up prints."""


# A user as the database has them: the latest ping, and each device with its deadline.
Restored = tuple[Ping, list[tuple[Presence, float]]]


@dataclass
class Changes:
    """One transaction's rows: a batch of pings and leaves, the latest of each kept.

    A later ping of a device replaces an earlier one; a leave after a ping
    in the same batch stores that ping with no deadline, so the order the
    changes came in is what is stored.
    """

    users: dict[str, tuple[str, int, str, str]] = field(default_factory=dict)
    devices: dict[tuple[str, str], tuple[str, str, int, str, float | None]] = field(
        default_factory=dict)
    leaves: dict[tuple[str, str], None] = field(default_factory=dict)
    forgets: dict[tuple[str, str], None] = field(default_factory=dict)
    timeouts: dict[tuple[str, str], float] = field(default_factory=dict)

    def ping(self, ping: Ping, deadline: float) -> None:
        key = (ping.userid, ping.clientid)
        self.users[ping.userid] = (ping.userid, ping.time, ping.status, ping.clientid)
        self.leaves.pop(key, None)
        self.forgets.pop(key, None)
        self.devices[key] = (ping.userid, ping.clientid, ping.time, ping.status, deadline)

    def leave(self, userid: str, clientid: str) -> None:
        key = (userid, clientid)
        row = self.devices.get(key)
        if row is None:
            self.leaves[key] = None
        else:
            self.devices[key] = (*row[:4], None)

    def forget(self, userid: str, clientid: str) -> None:
        key = (userid, clientid)
        self.devices.pop(key, None)
        self.leaves.pop(key, None)
        self.forgets[key] = None

    def timed_out(self, userid: str, clientid: str, now: float) -> None:
        self.timeouts[(userid, clientid)] = now

    def __bool__(self) -> bool:
        return bool(self.users or self.devices or self.leaves or self.forgets or self.timeouts)


class Database:
    """The SQLite file: checked, locked and read at start-up, then written by one thread."""

    def __init__(self, path: str, lock_fd: int) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def open(cls, setting: str) -> Database:
        """Lock and check (creating it if new) ``DATABASE``; read nothing yet.

        Runs before the reactor does, so blocking here blocks nobody; it
        costs the same however many users the file holds. The connection it
        checks with is closed before twistd may fork.
        """
        path = os.path.abspath(setting)
        lock_fd, created = _lock(setting, path + "-lock")
        try:
            _open_database(setting, path).close()
        except BaseException:
            os.close(lock_fd)
            if created:
                os.unlink(path + "-lock")
            raise
        return cls(path, lock_fd)

    def read_online(self) -> list[Restored]:
        """Every user with an online device, whole (in the writer thread).

        What presence needs at start-up: their deadlines, to sweep, and
        their devices, to tell watchers which went offline. A file of an
        older schema is brought up to date first.
        """
        conn = self._connection()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION:
            def migrate(conn: sqlite3.Connection) -> None:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[step]:
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._transaction(migrate)
        users = [row[0] for row in conn.execute(_ONLINE_USERS)]
        return list(self.read_users(users).values())

    def read_users(self, userids: list[str]) -> dict[str, Restored]:
        """The stored ones of ``userids`` (in the writer thread)."""
        conn = self._connection()
        found: dict[str, Restored] = {}
        for start in range(0, len(userids), _READ_CHUNK):
            found.update(_read(conn, userids[start:start + _READ_CHUNK]))
        return found

    def read_all(self, chunk: int = _READ_CHUNK) -> Iterator[list[Restored]]:
        """Every stored user, ``chunk`` at a time (for the export, which owns the file)."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            userids = [row[0] for row in conn.execute("SELECT userid FROM users")]
            for start in range(0, len(userids), chunk):
                yield list(_read(conn, userids[start:start + chunk]).values())
        finally:
            conn.close()

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            # Made in the writer thread, which alone uses it.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # A commit is in the WAL before its ping is answered, so the ping
            # survives the process (kill -9, a crash, a deploy); the WAL is
            # synced at checkpoints, so a power cut may take the last moment's
            # pings, never the file. FULL (an fsync per commit) would make a
            # ping sent only after the last was answered wait for the disk.
            conn.execute("PRAGMA synchronous = NORMAL")
            self._conn = conn
        return conn

    def write(self, changes: Changes) -> None:
        """Commit ``changes`` as one transaction (in the writer thread)."""
        self._transaction(lambda conn: (
            conn.executemany(_PUT_USER, changes.users.values()),
            conn.executemany(_PUT_DEVICE, changes.devices.values()),
            conn.executemany(_LEAVE, changes.leaves),
            conn.executemany(_FORGET, changes.forgets),
            conn.executemany(_TIMED_OUT, ((*key, now) for key, now in changes.timeouts.items())),
        ))

    def probe(self) -> None:
        """A small write, to learn whether writes work again (in the writer thread)."""
        self._transaction(lambda conn: conn.execute(_PROBE, (str(time.time()),)))

    def _transaction(self, work: Callable[[sqlite3.Connection], object]) -> None:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            work(conn)
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    # Past rolling back (an I/O error): start on a fresh connection.
                    self._conn = None
                    conn.close()
            raise

    def close(self) -> None:
        """Close the connection (in the writer thread)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def unlock(self) -> None:
        """Let another process have the file: the last step of shutting down."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _lock(setting: str, lock_path: str) -> tuple[int, bool]:
    created = not os.path.exists(lock_path)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise DatabaseUnusable(
            f"cannot use DATABASE={setting!r}: cannot create {lock_path}: {e.strerror}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DatabaseUnusable(
            f"cannot use DATABASE={setting!r}: another process is using it (it holds {lock_path})"
        ) from None
    return fd, created


def _open_database(setting: str, path: str) -> sqlite3.Connection:
    """A connection to heartbeat's database at ``path``, made if there is none yet."""
    def unusable(why: str) -> DatabaseUnusable:
        return DatabaseUnusable(f"cannot use DATABASE={setting!r}: {why}")

    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        head = b""
    except OSError as e:
        raise unusable(e.strerror or str(e)) from None
    if head and head != _SQLITE_MAGIC:
        raise unusable("not a SQLite database; it is left as it is")
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as e:
        raise unusable(str(e)) from None
    try:
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if application_id == 0 and tables == 0:
            _create(conn)
        elif application_id != APPLICATION_ID:
            raise unusable("a SQLite database that is not heartbeat's; it is left as it is")
        elif version > SCHEMA_VERSION:
            raise unusable(f"written by a newer heartbeat (schema {version}, this one knows "
                           f"{SCHEMA_VERSION}); it is left as it is")
        # Writable now, not at the first ping: a read-only file stops start-up.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_PROBE, (str(time.time()),))
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        conn.close()
        raise unusable(str(e)) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _create(conn: sqlite3.Connection) -> None:
    if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
        raise sqlite3.OperationalError("its file system does not support WAL")
    conn.execute("BEGIN IMMEDIATE")
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("COMMIT")


def _read(conn: sqlite3.Connection, userids: list[str]) -> dict[str, Restored]:
    """``userids``' rows, each user's devices least recently seen first."""
    marks = ",".join("?" * len(userids))
    devices: dict[str, list[tuple[Presence, float]]] = {}
    for userid, clientid, ptime, status, deadline in conn.execute(
            f"SELECT * FROM devices WHERE userid IN ({marks}) ORDER BY userid, time", userids):
        online = deadline is not None
        device = Presence(userid, ptime, status, online, clientid)
        devices.setdefault(userid, []).append((device, deadline if online else 0.0))
    return {
        userid: (Ping(userid, ptime, status, clientid), devices.get(userid, []))
        for userid, ptime, status, clientid in conn.execute(
            f"SELECT * FROM users WHERE userid IN ({marks})", userids)
    }


def _read_failed(failure: Failure) -> None:
    failure.trap(sqlite3.Error)
    log.error("cannot read DATABASE: {error}", error=failure.getErrorMessage())
    raise StoreUnavailable()


# Users kept in memory though offline and unwatched, so a user read again
# soon (a page of /status, a stream reopened) costs no read.
RESTING_USERS = 10_000

T = TypeVar("T")
# Runs a function in the writer thread; its Deferred fires on the reactor thread.
Writer = Callable[..., Deferred[Any]]


class SQLiteStore(MemoryStore, Service):
    """The default store: one process, what is live in memory, everything on disk.

    Memory holds the users someone needs now: those online (their deadlines
    are presence), those watched (a change reaches their streams without a
    read), those with a write under way, and a bounded cache of the
    :data:`RESTING_USERS` others last used. Any other user is read from the
    file when asked, in the writer thread, so memory and start-up do not
    grow with every user ever stored (SPEC §4). A user out of memory is
    offline once start-up has loaded the online ones, so reading them back
    is only ever a read; before that, whoever is asked for is read first.

    A service so its writer thread starts with the application (after
    twistd forks, if it daemonizes) and stops with it.
    """

    kind = "sqlite"

    def __init__(self, database: Database, reactor: Any, timeout: float,
                 hiding: Hiding = Hiding(), max_devices: int = MAX_DEVICES_PER_USER,
                 writer: Writer | None = None) -> None:
        super().__init__(reactor, timeout, hiding, max_devices)
        self._reactor = reactor
        self._db = database
        self.available = True
        # Tests give a writer that runs at once; the daemon's is made at start.
        self._writer = writer
        self._pool: ThreadPool | None = None
        self._changes = Changes()
        self._waiting: list[Deferred[None]] = []
        self._applies: list[tuple[str, Callable[[], None]]] = []
        self._flush_call: IDelayedCall | None = None
        self._writing = False
        self._idle: list[Deferred[None]] = []
        self._probe_call: IDelayedCall | None = None
        # Users in memory whom nothing holds there, least recently used first.
        self._resting: OrderedDict[str, None] = OrderedDict()
        # Users with changes queued or being written: held in memory until applied.
        self._pending: dict[str, int] = {}
        self._load_call: IDelayedCall | None = None
        self._loaded_waiters: list[Deferred[None]] = []
        self.loaded = False

    def startService(self) -> None:
        super().startService()
        if self._writer is None:
            pool = self._pool = ThreadPool(1, 1, "heartbeat-sqlite")
            pool.start()
            self._writer = lambda f, *args: deferToThreadPool(self._reactor, pool, f, *args)
        self._load_online()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.close()

    # Start-up: presence loaded after the port opens, never before.

    def when_loaded(self) -> Deferred[None]:
        """Fires once every online device's deadline is in memory (``/readyz``)."""
        if self.loaded:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._loaded_waiters.append(d)
        return d

    def online_users(self) -> int | None:
        return super().online_users() if self.loaded else None

    def _load_online(self) -> None:
        self._load_call = None
        d = self._run(self._db.read_online)
        d.addCallbacks(self._restore_online, self._load_failed)

    def _restore_online(self, state: list[Restored]) -> None:
        for restored in state:
            userid = restored[0].userid
            if userid not in self._users:  # read since, as someone asked: as new
                self._restore(restored)
                self._settle(userid)
        self.loaded = True
        log.info("presence loaded from DATABASE={path}: {users} users online",
                 path=self._db.path, users=len(self._online))
        waiters, self._loaded_waiters = self._loaded_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _load_failed(self, failure: Failure) -> None:
        if not self.running:
            return
        log.error("cannot read DATABASE={path}: {error}; trying again",
                  path=self._db.path, error=failure.getErrorMessage())
        self._load_call = self._clock.callLater(PROBE_INTERVAL, self._load_online)

    def _restore(self, restored: Restored) -> None:
        """Put back a user as stored, publishing nothing.

        A device whose deadline passed while nobody held it in memory (the
        process was down) is offline from the start, on disk too.
        """
        latest, stored = restored
        user = self._users[latest.userid] = Devices(latest.userid)
        user.latest = latest
        now = self._clock.seconds()
        for device, deadline in stored:
            clientid = device.clientid
            assert clientid is not None
            if device.online and deadline <= now:
                device = replace(device, online=False)
                self._changes.timed_out(latest.userid, clientid, now)
                self._schedule_flush()
            user.put(device)
            if device.online:
                self._online.add(latest.userid)
                self._deadlines.arm_at((latest.userid, clientid), deadline)
        # Stored before MAX_DEVICES_PER_USER was (or was lower): down to it now.
        while len(user.devices) > self._max_devices:
            forgotten, _ = user.forget_oldest()
            self._deadlines.disarm((latest.userid, forgotten))
            self._forgot(latest.userid, forgotten)
        if not user.online:
            self._online.discard(latest.userid)

    def _read(self, userids: list[str], then: Callable[[], Any]) -> Deferred[Any]:
        """Bring those of ``userids`` not in memory into it, from the file, then ``then()``.

        They are held in memory until ``then`` is done with them.
        """
        missing = [userid for userid in userids if userid not in self._users]
        for userid in missing:
            self._hold(userid)
        read = self._run(self._db.read_users, missing) if missing else succeed({})
        read.addCallbacks(self._restore_read, _read_failed)
        read.addCallback(lambda _: then())

        def release(result: object) -> object:
            for userid in missing:
                self._release(userid)
            return result

        return read.addBoth(release)

    def _restore_read(self, found: dict[str, Restored]) -> None:
        for userid, restored in found.items():
            # Reads and writes take turns in one thread: a user already back
            # in memory (written, or read by an earlier call) is newer there.
            if userid not in self._users:
                self._restore(restored)
            self._settle(userid)

    # What memory holds.

    def _settle(self, userid: str) -> None:
        """Hold ``userid`` in memory while something needs them; else cache them."""
        user = self._users.get(userid)
        if user is None:
            return
        if user.online or userid in self._subscribed or userid in self._pending:
            self._resting.pop(userid, None)
            return
        self._resting[userid] = None
        self._resting.move_to_end(userid)
        while len(self._resting) > RESTING_USERS:
            del self._users[self._resting.popitem(last=False)[0]]

    def _hold(self, userid: str) -> None:
        self._pending[userid] = self._pending.get(userid, 0) + 1
        self._resting.pop(userid, None)

    def _release(self, userid: str) -> None:
        left = self._pending.pop(userid) - 1
        if left:
            self._pending[userid] = left
        self._settle(userid)

    # The Store protocol, where it differs from memory's: durable first.

    def get(self, userids: Iterable[str]) -> Deferred[dict[str, UserState | None]]:
        userids = list(userids)
        return self._read(userids, lambda: self._states(userids))

    def subscribe(self, userid: str) -> Deferred[None]:
        self._subscribed.add(userid)
        self._resting.pop(userid, None)
        return succeed(None)

    def unsubscribe(self, userid: str) -> Deferred[None]:
        self._subscribed.discard(userid)
        self._settle(userid)
        return succeed(None)

    def ping(self, ping: Ping) -> Deferred[None]:
        if ping.userid in self._users:
            return self._store_ping(ping)
        return self._read([ping.userid], lambda: self._store_ping(ping))

    def _store_ping(self, ping: Ping) -> Deferred[None]:
        deadline = self._clock.seconds() + self._timeout
        if self._hiding.hides(ping.status):
            # Stored as watchers see it: the device offline at its last visible
            # ping. Its silent deadline is memory's alone; after a restart the
            # device is offline all the same.
            self._changes.leave(ping.userid, ping.clientid)
        else:
            self._changes.ping(ping, deadline)
        return self._queue(ping.userid, lambda: self._apply_ping(ping, deadline))

    def leave(self, userid: str, clientid: str) -> Deferred[None]:
        if userid in self._users:
            return self._store_leave(userid, clientid)
        return self._read([userid], lambda: self._store_leave(userid, clientid))

    def _store_leave(self, userid: str, clientid: str) -> Deferred[None]:
        self._changes.leave(userid, clientid)
        return self._queue(userid, lambda: self._apply_leave(userid, clientid))

    def _timed_out(self, device: tuple[str, str]) -> None:
        # Memory first, as a sweep is no answer to anyone: if the process
        # dies before this commits, the deadline is past at the next start.
        userid, clientid = device
        self._changes.timed_out(userid, clientid, self._clock.seconds())
        self._schedule_flush()
        super()._timed_out(device)
        self._settle(userid)

    def _forgot(self, userid: str, clientid: str) -> None:
        # Applied after the ping's commit: the row goes in the next transaction.
        self._changes.forget(userid, clientid)
        self._schedule_flush()

    def close(self) -> Deferred[None]:
        """Finish the writes under way, close the file, stop the thread, unlock."""
        for call in (self._probe_call, self._load_call):
            if call is not None and call.active():
                call.cancel()
        idle: Deferred[None] = Deferred()
        self._idle.append(idle)
        self._check_idle()
        idle.addCallback(lambda _: self._run(self._db.close) if self._writer else None)
        idle.addBoth(self._closed)
        return idle

    def _closed(self, result: object) -> object:
        if self._pool is not None:
            self._pool.stop()  # its one thread is idle: this join is at once
            self._pool = None
            self._writer = None
        self._db.unlock()
        super().close()
        return None if not isinstance(result, Failure) else result

    # Batching.

    def _queue(self, userid: str, apply: Callable[[], None]) -> Deferred[None]:
        """Answered once this turn's transaction, with this change in it, commits."""
        d: Deferred[None] = Deferred()
        self._hold(userid)
        self._waiting.append(d)
        self._applies.append((userid, apply))
        self._schedule_flush()
        return d

    def _schedule_flush(self) -> None:
        if not self._writing and self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)

    def _run(self, f: Callable[..., T], *args: object) -> Deferred[T]:
        if self._writer is None:  # not started, or stopped: nothing is written
            return fail(StoreUnavailable())
        return self._writer(f, *args)

    def _flush(self) -> None:
        self._flush_call = None
        if not self._waiting and not self._changes:
            self._check_idle()
            return
        changes, self._changes = self._changes, Changes()
        waiting, self._waiting = self._waiting, []
        applies, self._applies = self._applies, []
        self._writing = True
        d = self._run(self._db.write, changes)
        d.addCallbacks(self._committed, self._failed,
                       callbackArgs=(waiting, applies), errbackArgs=(waiting, applies))
        d.addBoth(self._written)

    def _committed(self, _: None, waiting: list[Deferred[None]],
                   applies: list[tuple[str, Callable[[], None]]]) -> None:
        self._now_available()
        for userid, apply in applies:
            try:
                apply()
            except Exception:
                # Stored all the same: a failing stream must not leave the
                # rest of the batch unanswered.
                log.failure("delivering a stored change failed")
            self._release(userid)
        for d in waiting:
            d.callback(None)

    def _failed(self, failure: Failure, waiting: list[Deferred[None]],
                applies: list[tuple[str, Callable[[], None]]]) -> None:
        self._now_unavailable(failure)
        for userid, _ in applies:
            self._release(userid)
        for d in waiting:
            d.errback(StoreUnavailable())

    def _written(self, _: object) -> None:
        self._writing = False
        # What came while this commit ran is the next batch, sent now.
        self._flush()

    def _check_idle(self) -> None:
        if self._writing or self._waiting or self._changes:
            return
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)

    # A failing disk.

    def _now_unavailable(self, failure: Failure) -> None:
        if self.available:
            self.available = False
            log.error("cannot write DATABASE={path}: {error}; pings get 503 until it can",
                      path=self._db.path, error=failure.getErrorMessage())
        if self._probe_call is None and self.running:
            self._probe_call = self._clock.callLater(PROBE_INTERVAL, self._probe)

    def _now_available(self) -> None:
        if not self.available:
            self.available = True
            log.info("DATABASE={path} takes writes again", path=self._db.path)

    def _probe(self) -> None:
        self._probe_call = None
        if self.available:
            return
        d = self._run(self._db.probe)
        d.addCallbacks(lambda _: self._now_available(), self._now_unavailable)


def open_store(setting: str, reactor: Any, timeout: float, hiding: Hiding = Hiding(),
               max_devices: int = MAX_DEVICES_PER_USER) -> MemoryStore:
    """The embedded store ``DATABASE`` asks for: ``:memory:`` keeps nothing."""
    if setting == ":memory:":
        return MemoryStore(reactor, timeout, hiding, max_devices)
    return SQLiteStore(Database.open(setting), reactor, timeout, hiding, max_devices)

