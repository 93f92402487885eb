"""The embedded store: presence in this process, every change committed to SQLite first.

The state a stream or ``/status`` reads is the in-process store's
(:class:`~heartbeat.store.memory.MemoryStore`, whose presence rules it
inherits) for the users that are live; the database, ``DATABASE``, is the
record of everyone, read when a user not in memory is asked for, and at
start-up for the users online. A ping or a leave changes memory, and is
published and answered, only once its transaction has committed: a ``200``
survives ``kill -9``.

One writer thread owns the write connection (a one-thread pool, not the
reactor's shared one, so a slow ``getaddrinfo`` elsewhere never queues
behind a commit, and no other thread ever touches the connection); reads of
users take turns with the writes there, so a read never sees a write
half-way. The
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
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from heartbeat.core.changes import (
    Change,
    Page,
    Position,
    PositionGone,
    erased_change,
    new_epoch,
    offline_changes,
    ping_changes,
    positions_of,
    room_changes,
)
from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import MAX_DEVICES_PER_USER, Devices, Ping, Presence, UserState
from heartbeat.core.store_contract import StoreUnavailable
from heartbeat.store.changelog import DEFAULT_RETENTION, ChangeLog, now_ms
from heartbeat.store.memory import NO_MARKS, Marks, MemoryStore, prune_interval

log = Logger()

# "hbea" in the database header: how a file is known to be heartbeat's.
APPLICATION_ID = 0x68626561
# The schema below; a later one migrates files of an earlier one.
SCHEMA_VERSION = 3
_SQLITE_MAGIC = b"SQLite format 3\x00"
# Milliseconds a write waits for a reader's lock (``sqlite3 … .backup``) before failing.
BUSY_TIMEOUT_MS = 2000
# Seconds between writes that test whether a failing disk takes writes again,
# so /health recovers with no ping to try it.
PROBE_INTERVAL = 1.0

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
)
# What each schema version adds to the one before it.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # The change feed (SPEC §8): written in the transaction of the change it
    # records; seq numbers it (assigned by the one writer, so never reused).
    2: ("CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL,"
        " type TEXT NOT NULL, userid TEXT NOT NULL, clientid TEXT, time INTEGER NOT NULL,"
        " status TEXT NOT NULL, online INTEGER NOT NULL)",
        "CREATE INDEX changes_by_user ON changes (userid, seq)"),
    # The online devices, what start-up loads, found without reading every row.
    3: ("CREATE INDEX IF NOT EXISTS devices_online ON devices (deadline)"
        " WHERE deadline IS NOT NULL",),
}
_PUT_CHANGE = "INSERT INTO changes VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_FIRST_KEPT = "SELECT seq FROM changes WHERE at >= ? ORDER BY seq LIMIT 1"
_NEWEST = "SELECT seq FROM sqlite_sequence WHERE name = 'changes'"
_PUT_META = "INSERT OR REPLACE INTO meta VALUES (?, ?)"
_GET_META = "SELECT value FROM meta WHERE key = ?"
# meta keys: the feed's lifetime, the highest seq trimmed, a webhook's delivered position.
_EPOCH_KEY = "feed_epoch"
_TRIMMED_KEY = "feed_trimmed"
_DELIVERED_KEY = "delivered:"
# Seconds between trims of the feed: at most one per this, in a transaction with pings.
TRIM_INTERVAL = 1.0
_PUT_USER = "INSERT OR REPLACE INTO users VALUES (?, ?, ?, ?)"
_PUT_DEVICE = "INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?, ?)"
_LEAVE = "UPDATE devices SET deadline = NULL WHERE userid = ? AND clientid = ?"
_REARM = ("UPDATE devices SET deadline = ? WHERE userid = ? AND clientid = ?"
          " AND deadline IS NOT NULL")
_PROBE = "INSERT OR REPLACE INTO meta VALUES ('written', ?)"
_FORGET = "DELETE FROM devices WHERE userid = ? AND clientid = ?"
_ONLINE_USERS = "SELECT DISTINCT userid FROM devices WHERE deadline IS NOT NULL"
# Most userids in one IN (…): under SQLite's smallest variable limit.
_READ_CHUNK = 500
_ERASE_USER = "DELETE FROM users WHERE userid = ?"
_ERASE_DEVICES = "DELETE FROM devices WHERE userid = ?"
# The user's changes in the feed; the erased change is written after it.
_ERASE_CHANGES = "DELETE FROM changes WHERE userid = ? AND seq < ?"
# Offline devices (left, or past their deadline) last seen before a cutoff.
_STALE = "FROM devices WHERE time < ? AND (deadline IS NULL OR deadline <= ?)"


class DatabaseUnusable(Exception):
    """``DATABASE`` cannot be used; the message is the one line start-up prints."""


# A user as the database has them: the latest ping, and each device with its deadline.
Restored = tuple[Ping, list[tuple[Presence, float]]]


@dataclass
class Changes:
    """One transaction's rows: a batch of pings, leaves and deadlines moved,
    the latest of each kept.

    A later ping of a device replaces an earlier one; a leave after a ping
    in the same batch stores that ping with no deadline, and a deadline
    moved after a ping moves that ping's; so the order the changes came in
    is what is stored. Moved deadlines are written last, only for devices
    still online then.
    """

    users: dict[str, tuple[str, int, str, str]] = field(default_factory=dict)
    devices: dict[tuple[str, str], tuple[str, str, int, str, float | None]] = field(
        default_factory=dict)
    leaves: dict[tuple[str, str], None] = field(default_factory=dict)
    rearms: dict[tuple[str, str], float] = field(default_factory=dict)
    # Devices forgotten for MAX_DEVICES_PER_USER.
    forgets: dict[tuple[str, str], None] = field(default_factory=dict)
    # Users erased in this batch (an erasure ends its batch), each with the
    # seq of its erased change: their rows go, and their changes before it.
    erased: dict[str, int] = field(default_factory=dict)
    # The feed's rows (SPEC §8), a trim of those older than ``trim_before``
    # (epoch ms), and meta values (webhooks' delivered positions).
    feed: list[tuple[object, ...]] = field(default_factory=list)
    trim_before: int | None = None
    meta: dict[str, str] = field(default_factory=dict)

    def ping(self, ping: Ping, deadline: float) -> None:
        key = (ping.userid, ping.clientid)
        self.users[ping.userid] = (ping.userid, ping.time, ping.status, ping.clientid)
        self.leaves.pop(key, None)
        self.rearms.pop(key, None)
        self.forgets.pop(key, None)
        self.devices[key] = (ping.userid, ping.clientid, ping.time, ping.status, deadline)

    def leave(self, userid: str, clientid: str) -> None:
        key = (userid, clientid)
        self.rearms.pop(key, None)
        row = self.devices.get(key)
        if row is None:
            self.leaves[key] = None
        else:
            self.devices[key] = (*row[:4], None)

    def rearm(self, devices: Sequence[tuple[str, str]], deadline: float) -> None:
        for key in devices:
            row = self.devices.get(key)
            if row is None:
                self.rearms[key] = deadline
            elif row[4] is not None:
                self.devices[key] = (*row[:4], deadline)

    def forget(self, userid: str, clientid: str) -> None:
        key = (userid, clientid)
        self.devices.pop(key, None)
        self.leaves.pop(key, None)
        self.rearms.pop(key, None)
        self.forgets[key] = None

    def erase(self, change: Change, seq: int) -> None:
        """Erase ``change``'s user: the rows queued for them too, and record
        ``change`` (their erased change) as ``seq``."""
        userid = change.userid
        self.users.pop(userid, None)
        for rows in (self.devices, self.leaves, self.rearms):
            for key in [key for key in rows if key[0] == userid]:
                del rows[key]
        self.erased[userid] = seq
        self.record(change, seq)

    def record(self, change: Change, seq: int) -> None:
        """``change`` into the feed, as ``seq``."""
        self.feed.append((seq, change.at, change.type, change.userid, change.clientid,
                          change.time, change.status, int(change.online)))


class Database:
    """The SQLite file: checked, locked and read at start-up, then written by one thread."""

    def __init__(self, path: str, lock_fd: int, feed: tuple[str, int, int] | None = None) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        # The change feed as the file has it: its epoch, newest seq and highest seq trimmed.
        self.feed_epoch, self.feed_newest, self.feed_trimmed = feed or (new_epoch(), 0, 0)

    @classmethod
    def open(cls, setting: str) -> Database:
        """Lock and check (creating it if new) ``DATABASE``; read only the feed's place.

        Runs before the reactor does, so blocking here blocks nobody; it
        costs the same however many users the file holds (users are read
        later, in the writer thread). The connection it checks with is
        closed before twistd may fork.
        """
        path = os.path.abspath(setting)
        lock_fd, created = _lock(setting, path + "-lock")
        try:
            conn = _open_database(setting, path)
            try:
                feed = _read_feed(conn)
            finally:
                conn.close()
        except BaseException:
            os.close(lock_fd)
            if created:
                os.unlink(path + "-lock")
            raise
        return cls(path, lock_fd, feed)

    def read_online(self) -> list[Restored]:
        """Every user with an online device, whole (in the writer thread).

        What presence needs at start-up: their deadlines, to sweep, and
        their devices, to tell watchers which went offline.
        """
        users = [row[0] for row in self._connection().execute(_ONLINE_USERS)]
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
            # A row deleted or replaced is overwritten with zeros, not left
            # in free space: an erased user is gone from the file's bytes.
            conn.execute("PRAGMA secure_delete = ON")
            self._conn = conn
        return conn

    def write(self, changes: Changes) -> int | None:
        """Commit ``changes`` as one transaction (in the writer thread); the
        highest seq trimmed, if it trimmed."""
        trimmed: list[int] = []

        erased = [(userid,) for userid in changes.erased]

        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(_ERASE_USER, erased)
            conn.executemany(_ERASE_DEVICES, erased)
            conn.executemany(_PUT_USER, changes.users.values())
            conn.executemany(_PUT_DEVICE, changes.devices.values())
            conn.executemany(_LEAVE, changes.leaves)
            conn.executemany(_REARM, ((deadline, userid, clientid)
                                      for (userid, clientid), deadline in changes.rearms.items()))
            conn.executemany(_FORGET, changes.forgets)
            conn.executemany(_PUT_CHANGE, changes.feed)
            # After the batch's own rows: none of the user's before their erased change stays.
            conn.executemany(_ERASE_CHANGES, changes.erased.items())
            conn.executemany(_PUT_META, changes.meta.items())
            if changes.trim_before is not None:
                trimmed.extend(_trim(conn, changes.trim_before))

        self._transaction(work)
        if erased:
            # The WAL still holds the erased rows' old pages: copy the file
            # up to date and empty it, so no byte of theirs is left.
            self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return trimmed[0] if trimmed else None

    def prune(self, cutoff: float, now: float) -> list[tuple[str, str]]:
        """Delete the devices offline and last seen before ``cutoff``; which they were."""
        stale: list[tuple[str, str]] = []

        def delete(conn: sqlite3.Connection) -> None:
            stale.extend(conn.execute("SELECT userid, clientid " + _STALE, (cutoff, now)))
            conn.execute("DELETE " + _STALE, (cutoff, now))

        self._transaction(delete)
        return stale

    def read_changes(self, after: int | None, limit: int,
                     userids: tuple[str, ...] | None) -> tuple[list[tuple[Any, ...]], int] | None:
        """Up to ``limit`` rows of the feed after ``after`` (None: the oldest
        kept), and the newest seq, in one read (in the reader thread); None
        for a position not kept."""
        conn = self._reading()
        conn.execute("BEGIN")
        try:
            trimmed = int(_meta(conn, _TRIMMED_KEY) or 0)
            newest = (conn.execute(_NEWEST).fetchone() or (0,))[0]
            if after is not None and not trimmed <= after <= newest:
                return None
            query = "SELECT * FROM changes WHERE seq > ?"
            args: list[object] = [trimmed if after is None else after]
            if userids is not None:
                query += f" AND userid IN ({','.join('?' * len(userids))})"
                args.extend(userids)
            rows = conn.execute(query + " ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
            return rows, newest
        finally:
            conn.execute("COMMIT")

    def read_meta(self, key: str) -> str | None:
        """A meta value, read apart from the writer (in the reader thread)."""
        return _meta(self._reading(), key)

    def _reading(self) -> sqlite3.Connection:
        conn = self._reader
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._reader = conn
        return conn

    def close_reader(self) -> None:
        """Close the reader's connection (in the reader thread)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

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
        elif version < SCHEMA_VERSION:
            _migrate(conn, version)
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
    conn.execute("COMMIT")
    _migrate(conn, 1)


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a file of schema ``version`` to this one, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    for step in range(version + 1, SCHEMA_VERSION + 1):
        for statement in _MIGRATIONS[step]:
            conn.execute(statement)
    conn.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (_EPOCH_KEY, new_epoch()))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("COMMIT")


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute(_GET_META, (key,)).fetchone()
    return None if row is None else str(row[0])


def _read_feed(conn: sqlite3.Connection) -> tuple[str, int, int]:
    newest = (conn.execute(_NEWEST).fetchone() or (0,))[0]
    epoch = _meta(conn, _EPOCH_KEY) or new_epoch()
    return epoch, newest, int(_meta(conn, _TRIMMED_KEY) or 0)


def _trim(conn: sqlite3.Connection, before: int) -> Iterator[int]:
    """Drop the feed's changes older than ``before`` (epoch ms): the highest seq dropped."""
    first = conn.execute(_FIRST_KEPT, (before,)).fetchone()
    if first is None:
        last = (conn.execute("SELECT max(seq) FROM changes").fetchone() or (None,))[0]
        if last is None:
            return
        cut = int(last)
    else:
        cut = int(first[0]) - 1
    if conn.execute("SELECT 1 FROM changes WHERE seq <= ? LIMIT 1", (cut,)).fetchone() is None:
        return
    conn.execute("DELETE FROM changes WHERE seq <= ?", (cut,))
    conn.execute(_PUT_META, (_TRIMMED_KEY, str(cut)))
    yield cut


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


@dataclass(frozen=True, slots=True)
class _Ping:
    ping: Ping
    deadline: float


@dataclass(frozen=True, slots=True)
class _Offline:
    """A device going offline: a leave, or (``timeout``) its deadline passing."""

    userid: str
    clientid: str
    timeout: bool = False


@dataclass(frozen=True, slots=True)
class _Delivered:
    name: str
    position: Position


@dataclass(frozen=True, slots=True)
class _Rearm:
    """Presence streams' deadlines moved: renewed, or their grace."""

    devices: Sequence[tuple[str, str]]
    deadline: float


@dataclass(frozen=True, slots=True)
class _Forgot:
    """A device forgotten for MAX_DEVICES_PER_USER (by a new one, or when read back)."""

    userid: str
    clientid: str


@dataclass(frozen=True, slots=True)
class _Erase:
    userid: str


_Op = _Ping | _Offline | _Delivered | _Rearm | _Forgot | _Erase


def _user_of(op: _Op) -> str | None:
    if isinstance(op, _Ping):
        return op.ping.userid
    if isinstance(op, (_Offline, _Erase, _Forgot)):
        return op.userid
    return None


def _copied(devices: Devices | None, userid: str) -> Devices:
    return Devices(userid) if devices is None else devices.copy()


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

    Pings, leaves and timeouts are queued as they come; each batch's
    transitions are worked out when it is written, on copies of the users it
    touches (the state it will commit over), so the feed's changes go into
    the same transaction, and memory takes the copies only once it commits.
    """

    kind = "sqlite"

    def __init__(self, database: Database, reactor: Any,
                 timeout: float, hiding: Hiding = Hiding(), writer: Writer | None = None,
                 retention: float | None = None, *,
                 changes_retention: float = DEFAULT_RETENTION,
                 max_devices: int = MAX_DEVICES_PER_USER) -> None:
        feed = ChangeLog(reactor, changes_retention, database.feed_epoch, database.feed_newest,
                         database.feed_trimmed)
        super().__init__(reactor, timeout, hiding, retention, feed=feed, max_devices=max_devices)
        self._reactor = reactor
        self._db = database
        self.available = True
        # Tests give a writer that runs at once (and reads with it); the
        # daemon's are made at start.
        self._writer = writer
        self._reader = writer
        self._pool: ThreadPool | None = None
        self._read_pool: ThreadPool | None = None
        self._ops: list[_Op] = []
        self._waiting: list[Deferred[None] | None] = []
        self._flush_call: IDelayedCall | None = None
        self._writing = False
        self._idle: list[Deferred[None]] = []
        self._probe_call: IDelayedCall | None = None
        self._trim_call: IDelayedCall | None = None
        self._trimmed_at = float("-inf")
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
            # Feed reads get their own thread and connection: a backend
            # reading a day of changes never holds up a commit.
            reads = self._read_pool = ThreadPool(1, 1, "heartbeat-sqlite-read")
            reads.start()
            self._reader = lambda f, *args: deferToThreadPool(self._reactor, reads, f, *args)
        self._trim_tick()
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
        """Put back a user as stored, publishing nothing; a device whose deadline
        passed while the process was down falls due at once, as any timeout."""
        latest, stored = restored
        self.restore(latest, stored)
        user = self._users[latest.userid]
        # Stored before MAX_DEVICES_PER_USER was (or was lower): down to it now.
        while len(user.devices) > self._max_devices:
            forgotten, _ = user.forget_oldest()
            self._deadlines.disarm((latest.userid, forgotten))
            self._queue(_Forgot(latest.userid, forgotten), answered=False)
        if not user.online:
            self._online.discard(latest.userid)

    def _load_then(self, userids: list[str], then: Callable[[], Any]) -> Deferred[Any]:
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
        wanted = list(userids)
        return self._load_then(wanted, lambda: self._states(wanted))

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
            return self._queue(_Ping(ping, self._clock.seconds() + self._timeout))
        return self._load_then([ping.userid], lambda: self._queue(
            _Ping(ping, self._clock.seconds() + self._timeout)))

    def leave(self, userid: str, clientid: str) -> Deferred[None]:
        if userid in self._users:
            return self._queue(_Offline(userid, clientid))
        return self._load_then([userid], lambda: self._queue(_Offline(userid, clientid)))

    def _timed_out(self, device: tuple[str, str]) -> None:
        # Recorded like a leave, so its offline change is in the feed, once.
        self._queue(_Offline(*device, timeout=True), answered=False)

    def rearm(self, devices: Sequence[tuple[str, str]], after: float) -> Deferred[None]:
        # Kept on disk too, so a device held at a restart is not due at once after it.
        return self._queue(_Rearm(devices, self._clock.seconds() + after))

    def erase(self, userid: str) -> Deferred[None]:
        return self._queue(_Erase(userid))

    def _prune(self) -> None:
        """Forget old offline devices in the file first, then in memory, as a write."""
        assert self._retention is not None
        self._prune_call = None
        now = self._clock.seconds()
        cutoff = now - self._retention
        d = self._run(self._db.prune, cutoff, now)
        d.addCallback(self._forget, cutoff)
        d.addErrback(lambda f: log.failure("forgetting old devices failed", f,
                                           level=LogLevel.warn))
        d.addCallback(self._prune_later)

    def _prune_later(self, _: object) -> None:
        if self.running and self._retention is not None:
            self._prune_call = self._clock.callLater(prune_interval(self._retention), self._prune)

    def close(self) -> Deferred[None]:
        """Finish the writes under way, close the file, stop the threads, unlock."""
        for call in (self._probe_call, self._trim_call, self._load_call):
            if call is not None and call.active():
                call.cancel()
        idle: Deferred[None] = Deferred()
        self._idle.append(idle)
        self._check_idle()
        idle.addCallback(lambda _: self._run(self._db.close) if self._writer else None)
        idle.addCallback(lambda _: self._read(self._db.close_reader)
                         if self._read_pool is not None else None)
        idle.addBoth(self._closed)
        return idle

    def _closed(self, result: object) -> object:
        for pool in (self._pool, self._read_pool):
            if pool is not None:
                pool.stop()  # its one thread is idle: this join is at once
        self._pool = self._read_pool = None
        self._writer = self._reader = None
        self._db.unlock()
        super().close()
        return None if not isinstance(result, Failure) else result

    # The change feed: recorded with its transitions, read back from the file.

    def changes(self, after: Position | None, limit: int,
                userids: Collection[str] | None = None) -> Deferred[Page]:
        feed = self.feed
        if after is not None and after.epoch != feed.epoch:
            return fail(PositionGone())
        wanted = None if userids is None else tuple(userids)
        d = self._read(self._db.read_changes, None if after is None else after.seq, limit, wanted)
        return d.addCallback(self._page, limit)

    def _page(self, read: tuple[list[tuple[Any, ...]], int] | None, limit: int) -> Page:
        if read is None:
            raise PositionGone()
        rows, newest = read
        feed = self.feed
        changes = tuple(
            feed.stamp(seq, Change(kind, userid, ptime, status, bool(online), at, clientid))
            for seq, at, kind, userid, clientid, ptime, status, online in rows
        )
        last = rows[-1][0] if len(rows) >= limit else newest
        positions = tuple(Position.at(feed.epoch, row[0]) for row in rows)
        return Page(changes, Position.at(feed.epoch, last), positions)

    def delivered(self, name: str) -> Deferred[Position | None]:
        d = self._read(self._db.read_meta, _DELIVERED_KEY + name)
        return d.addCallback(lambda text: None if text is None else Position.parse(text))

    def set_delivered(self, name: str, position: Position, owner: str = "") -> Deferred[bool]:
        # The file's lock makes this process the only one: its claim always holds.
        return self._queue(_Delivered(name, position)).addCallback(lambda _: True)

    def _read(self, f: Callable[..., T], *args: object) -> Deferred[T]:
        if self._reader is None:
            return fail(StoreUnavailable())
        return self._reader(f, *args)

    # Batching.

    def _queue(self, op: _Op, answered: bool = True) -> Deferred[None]:
        """Answered once a transaction, with ``op`` in it, commits."""
        d: Deferred[None] = Deferred()
        held = _user_of(op)
        if held is not None:
            self._hold(held)
        self._ops.append(op)
        self._waiting.append(d if answered else None)
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
        now = self._clock.seconds()
        # A trim alone waits for a writer (not before start, not after close).
        trim = now - self._trimmed_at >= TRIM_INTERVAL and self._writer is not None
        if not self._ops and not trim:
            self._check_idle()
            return
        ops, self._ops = self._ops, []
        waiting, self._waiting = self._waiting, []
        erasing = next((n for n, op in enumerate(ops) if isinstance(op, _Erase)), None)
        if erasing is not None:
            # An erasure ends its batch: what comes after it is the next one's,
            # so nothing of a user comes back from before it.
            self._ops, ops = ops[erasing + 1:], ops[:erasing + 1]
            self._waiting, waiting = waiting[erasing + 1:], waiting[:erasing + 1]
        rows, users, outcomes = self._work_out(ops)
        if trim:
            self._trimmed_at = now
            rows.trim_before = self.feed.cutoff()
        self._writing = True
        d = self._run(self._db.write, rows)
        d.addCallbacks(self._committed, self._failed,
                       callbackArgs=(waiting, users, outcomes, len(rows.feed), ops),
                       errbackArgs=(waiting, ops))
        d.addBoth(self._written)

    def _work_out(self, ops: list[_Op]) -> tuple[
            Changes, dict[str, Devices], list[tuple[_Op, tuple[Presence, ...], Marks]]]:
        """The rows ``ops`` write, the users they leave, and what each tells watchers.

        Nothing is committed yet, so the users are copies; a timeout is
        nothing when its device pinged since its deadline passed (in this
        batch, or in one committed since).
        """
        rows = Changes()
        users: dict[str, Devices] = {}
        outcomes: list[tuple[_Op, tuple[Presence, ...], Marks]] = []
        pinged: set[tuple[str, str]] = set()
        at = now_ms(self._clock)
        seq = self.feed.newest

        def user(userid: str) -> Devices:
            devices = users.get(userid)
            if devices is None:
                devices = users[userid] = _copied(self._users.get(userid), userid)
            return devices

        def record(changes: tuple[Change, ...]) -> Marks:
            nonlocal seq
            positions = []
            for change in changes:
                seq += 1
                rows.record(change, seq)
                positions.append(Position.at(self.feed.epoch, seq))
            return positions_of(changes, positions)

        for op in ops:
            if isinstance(op, _Erase):
                # What the batch said of the user before goes with them: their
                # rows and changes, and what watchers would have been told.
                seq += 1
                rows.erase(erased_change(op.userid, at), seq)
                outcomes = [o for o in outcomes if _user_of(o[0]) != op.userid]
                users[op.userid] = Devices(op.userid)
                outcomes.append((op, (), {None: Position.at(self.feed.epoch, seq)}))
                continue
            if isinstance(op, _Delivered):
                rows.meta[_DELIVERED_KEY + op.name] = str(op.position)
                outcomes.append((op, (), NO_MARKS))
                continue
            if isinstance(op, _Rearm):
                rows.rearm(op.devices, op.deadline)
                outcomes.append((op, (), NO_MARKS))
                continue
            if isinstance(op, _Forgot):
                rows.forget(op.userid, op.clientid)
                user(op.userid).forget(op.clientid)
                outcomes.append((op, (), NO_MARKS))
                continue
            if isinstance(op, _Ping):
                ping = op.ping
                key = (ping.userid, ping.clientid)
                pinged.add(key)
                room = None if self._hiding.hides(ping.status) else room_changes(
                    user(ping.userid), ping.clientid, self._max_devices, at)
                if room is not None:
                    forgotten, gone, forgetting = room
                    rows.forget(ping.userid, forgotten)
                    outcomes.append((_Forgot(ping.userid, forgotten), gone, record(forgetting)))
                if self._hiding.hides(ping.status):
                    # Stored as watchers see it: the device offline at its last
                    # visible ping. Its silent deadline is memory's alone; after
                    # a restart the device is offline all the same.
                    rows.leave(*key)
                else:
                    rows.ping(ping, op.deadline)
                presences, changes = ping_changes(user(ping.userid), ping, self._hiding, at)
            else:
                key = (op.userid, op.clientid)
                if op.timeout and (key in pinged or key in self._deadlines):
                    outcomes.append((op, (), NO_MARKS))
                    continue
                rows.leave(*key)
                presences, changes = offline_changes(user(op.userid), op.clientid, at)
            outcomes.append((op, presences, record(changes)))
        return rows, users, outcomes

    def _committed(self, trimmed: int | None, waiting: list[Deferred[None] | None],
                   users: dict[str, Devices],
                   outcomes: list[tuple[_Op, tuple[Presence, ...], Marks]], recorded: int,
                   ops: list[_Op]) -> None:
        self._now_available()
        for userid, devices in users.items():
            if devices.latest is not None or userid in self._users:
                self._users[userid] = devices
        if trimmed is not None:
            self.feed.trimmed = trimmed
        self.feed.committed(self.feed.newest + recorded, recorded)
        for op, presences, marks in outcomes:
            try:
                if isinstance(op, _Erase):
                    self._erased(op.userid, marks)
                elif isinstance(op, _Ping):
                    self._pinged(op.ping, op.deadline, presences, marks)
                elif isinstance(op, _Rearm):
                    self._apply_rearm(op.devices, op.deadline)
                elif isinstance(op, _Offline):
                    if not op.timeout:
                        self._deadlines.disarm((op.userid, op.clientid))
                    self._went_offline(presences, marks)
                elif isinstance(op, _Forgot):
                    self._deadlines.disarm((op.userid, op.clientid))
                    self._went_offline(presences, marks)
            except Exception:
                # Stored all the same: a failing stream must not leave the
                # rest of the batch unanswered.
                log.failure("delivering a stored change failed")
        self._release_all(ops)
        for d in waiting:
            if d is not None:
                d.callback(None)

    def _failed(self, failure: Failure, waiting: list[Deferred[None] | None],
                ops: list[_Op]) -> None:
        self._now_unavailable(failure)
        self._release_all(ops)
        for d in waiting:
            if d is not None:
                d.errback(StoreUnavailable())

    def _release_all(self, ops: Iterable[_Op]) -> None:
        """The users of ``ops``, queued and now written (or not): held no more by them."""
        for op in ops:
            held = _user_of(op)
            if held is not None:
                self._release(held)

    def _written(self, _: object) -> None:
        self._writing = False
        # What came while this commit ran is the next batch, sent now.
        self._flush()

    def _check_idle(self) -> None:
        if self._writing or self._ops:
            return
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)

    def _trim_tick(self) -> None:
        """Trim the feed now and then when nothing is written, so a quiet feed ages too."""
        self._trim_call = self._clock.callLater(
            max(TRIM_INTERVAL, min(60.0, self.feed.retention_ms / 4000)), self._trim_tick)
        self._schedule_flush()

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
               retention: float | None = None, *,
               changes_retention: float = DEFAULT_RETENTION,
               max_devices: int = MAX_DEVICES_PER_USER) -> MemoryStore:
    """The embedded store ``DATABASE`` asks for: ``:memory:`` keeps nothing."""
    if setting == ":memory:":
        return MemoryStore(reactor, timeout, hiding, retention,
                           changes_retention=changes_retention, max_devices=max_devices)
    return SQLiteStore(Database.open(setting), reactor, timeout, hiding, retention=retention,
                       changes_retention=changes_retention, max_devices=max_devices)

