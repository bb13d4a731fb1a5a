"""Persistent peer address book (issue C item 1): one SQLite file, stdlib ``sqlite3``, WAL.

One table holds, per Kaspa network (``bridge.core.selection.NETWORKS``), the onion v3, IPv4 and
IPv6 peers the bridge knows, with their source, first/last seen, last success, consecutive
failures, backoff deadline, "ADDRv2 seen" and "self" flags. Selection policy lives in the sans-IO
:mod:`bridge.core.selection`; this module only stores. Suggested file: ``<data_dir>/peers.sqlite``.

Clock: every timestamp is passed in by the caller (wall-clock seconds). ``now=None`` reads
``time.time()`` once at the method's entry -- the only place a clock is read.

Durability: ``journal_mode=WAL`` + ``synchronous=NORMAL`` (default). Each public write method is
exactly one ``BEGIN IMMEDIATE ... COMMIT`` transaction. In WAL mode a commit has written its frames
to the ``-wal`` file with ``write()`` before returning, so a ``kill -9`` of the bridge at any
moment loses nothing committed and cannot corrupt the file (the OS still holds the pages).
``NORMAL`` skips the per-commit ``fsync``: after a power cut or kernel crash the last few commits
may roll back, but the database stays consistent (WAL checksums). That trade is right for a book
that is a re-learnable cache, and it keeps each write sub-millisecond, so calls may run inline on
the trio thread. ``synchronous="FULL"`` is accepted for operators who want power-loss durability.

Bounds and eviction (eclipse resistance, issue G defect 3; the rules are those of
:mod:`bridge.core.addrman`, modelled on Bitcoin Core's new/tried tables). Per network:

* the *new* table -- gossip/version entries never connected successfully -- holds at most
  ``max_new`` entries (default ``max_entries - max_tried``: 3072). Each entry is charged to the
  source group of who told us (``addrman.source_group``, stored in ``source_group``; re-learning
  it from someone else does not move it). A group holds at most ``max_new // 16`` (``kaspad``:
  ``max_new // 2``). A newcomer whose group is at its quota replaces only a *terrible* entry of
  its own group (``failures >= 3`` or not seen for 30 days), worst first; else it is dropped
  (the incumbent wins). When the table is full, a newcomer takes the place of the worst entry
  (most failures, then oldest ``last_seen``) of the largest group, if that group is larger than
  its own. So one remote, one /16, one onion or all inbound connections together fill at most
  1/16 of the table and cannot evict what other groups told us;
* the *tried* table -- entries with a ``last_success`` -- is never touched by learning. It holds
  at most ``max_tried`` (default ``max_entries // 4``: 1024), at most ``max_tried // 16`` per
  address group (``addr_group``: the IPv4 /16, IPv6 /32 or onion); ``record_success`` over
  either bound deletes the worst tried entry (most failures, oldest success) of the newcomer's
  address group, or else of the largest one;
* ``seed`` entries (never evicted by gossip) are at most ``max_seed`` (default
  ``max_entries // 4``); a new seed replaces the worst untried seed entry. ``config`` entries
  (the operator's file) are never evicted and not bounded.

The total is therefore bounded (``max_new + max_tried + max_seed`` + configured peers per network;
the -wal file is truncated to 4 MiB after checkpoints), and so is the file. A learn costs a few
index lookups per entry (group counts are cached in memory; the book is the file's only writer).

Non-public addresses (issue G defect 7): a learn from any source but ``config`` skips IPs that are
not public unicast (``addrman.is_public_ip``: loopback, RFC 1918, CGNAT, link-local, ULA,
documentation, reserved ...); :attr:`AddressBook.learned` counts them (``not_public``).

Opening (``AddressBook(path)``):

* missing file -> created empty with mode 0600 (it reveals which peers this node uses);
* missing directory, permission problems, a file locked by another process, a database written
  by a newer schema, or a SQLite file that is not an address book -> :class:`AddressBookError`
  naming the file and what to do; nothing is touched;
* a corrupt file (not a database, malformed pages, failing ``PRAGMA quick_check``) -> the file
  and its ``-wal``/``-shm`` are renamed to ``<name>.corrupt-<UTC time>[-wal|-shm]``, a WARNING
  names both paths, and an empty book is created. The book is a cache: seeds and configured
  peers are re-added from config at startup and the rest is re-learned by gossip, so refusing to
  start would turn a damaged cache into an outage. ``on_corrupt="raise"`` opts out.

Schema changes: ``SCHEMA_VERSION`` and the ``schema_version`` table; ``MIGRATIONS[v]`` upgrades
``v -> v+1`` inside the opening transaction (version 0 is an empty file). Version 2 added the
``source_group`` and ``addr_group`` columns (computed for the rows of a version-1 file, which are
all kept; entries over the new bounds leave as newcomers arrive).

Threads: the class is synchronous and serialises its calls with a lock over one connection
opened with ``check_same_thread=False``. Intended use from trio: call inline (sub-millisecond
with ``NORMAL``); for a large batch (``learn_many`` with a 2500-entry Addresses message) or with
``synchronous="FULL"``, ``await trio.to_thread.run_sync(functools.partial(book.learn_many,
net, endpoints, source=src))`` is safe (keyword arguments need ``partial``). Do not
share one file between two bridge processes (a second writer gets "database is locked").

Errors after a successful open (disk full, filesystem remounted read-only, I/O errors, a lock
held too long): a failed write method has rolled back and changed nothing. With
``on_error="log"`` (the default, what the daemon uses) the book is a best-effort cache: the
method returns its "nothing happened" value (``False``, ``0``, ``None``, an empty set or list),
the *first* failure is logged at ERROR naming the file and the cause, further failures are only
counted (:attr:`AddressBook.errors`; no log flood while the disk stays full), and a successful
write once no write has failed for ``recover_after`` seconds (default 10) logs that the book works
again. (On an almost full disk some writes still fit: without that quiet period a flapping disk
would log error/recovered pairs over and over.) The relay never stops because its cache
cannot be written. ``on_error="raise"`` lets ``sqlite3.Error`` propagate instead.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, ParamSpec, TypeVar

from bridge.core import addrman
from bridge.core.counters import Counters
from bridge.core.errors import BridgeError, Fault
from bridge.core.policy import OnionPeer
from bridge.core.selection import (
    NETWORKS,
    PROTECTED_RANK,
    Kind,
    PeerEntry,
    backoff_delay,
    group_of,
    normalize_endpoint,
    source_rank,
)

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AddressBook",
    "AddressBookError",
]

log = logging.getLogger("bridge.store.book")

SCHEMA_VERSION: Final = 2
DEFAULT_MAX_ENTRIES: Final = 4096
_CONFIG_RANK: Final = 3
_WAL_LIMIT: Final = 4 * 1024 * 1024
_SQLITE_READONLY: Final = 8
_SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_NOTADB: Final = 26

_P = ParamSpec("_P")
_R = TypeVar("_R")


class AddressBookError(BridgeError):
    """The address book file cannot be used; the message names the file and the remedy."""

    fault = Fault.LOCAL
    action = "startup aborted"


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version (version) VALUES (0)")
    conn.execute(
        """
        CREATE TABLE peers (
            network       TEXT    NOT NULL,
            host          TEXT    NOT NULL,
            port          INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
            kind          TEXT    NOT NULL CHECK (kind IN ('onion', 'ipv4', 'ipv6')),
            source        TEXT    NOT NULL,
            source_rank   INTEGER NOT NULL,
            first_seen    REAL    NOT NULL,
            last_seen     REAL    NOT NULL,
            last_success  REAL,
            failures      INTEGER NOT NULL DEFAULT 0,
            backoff_until REAL    NOT NULL DEFAULT 0,
            addrv2        INTEGER NOT NULL DEFAULT 0,
            is_self       INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (network, host, port)
        )
        """
    )
    conn.execute("CREATE INDEX peers_evict ON peers "
                 "(network, failures DESC, last_seen, host, port)")


def _groups(source: str, host: str) -> tuple[str, str]:
    """``(source_group, addr_group)`` columns of an entry (see the module docstring)."""
    return addrman.source_group(source), group_of(host)


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Eclipse resistance: who told us (``source_group``) and the address's own group
    (``addr_group``) become columns with their indexes; every row is kept."""
    conn.execute("ALTER TABLE peers ADD COLUMN source_group TEXT NOT NULL DEFAULT 'other'")
    conn.execute("ALTER TABLE peers ADD COLUMN addr_group TEXT NOT NULL DEFAULT ''")
    rows = conn.execute("SELECT rowid, source, host FROM peers").fetchall()
    conn.executemany("UPDATE peers SET source_group = ?, addr_group = ? WHERE rowid = ?",
                     [(*_groups(str(src), str(host)), rowid) for rowid, src, host in rows])
    conn.execute("DROP INDEX IF EXISTS peers_evict")
    # the new table by source group, worst first; the tried table by address group
    conn.execute("CREATE INDEX peers_new ON peers "
                 "(network, source_group, last_success, failures DESC, last_seen)")
    conn.execute("CREATE INDEX peers_tried ON peers (network, addr_group, last_success)")


#: ``MIGRATIONS[v]`` upgrades schema ``v`` to ``v + 1`` (run inside one transaction).
MIGRATIONS: Final[dict[int, Callable[[sqlite3.Connection], None]]] = {
    0: _migrate_0_to_1, 1: _migrate_1_to_2}

_COLUMNS: Final = ("network, host, port, kind, source, first_seen, last_seen, last_success, "
                   "failures, backoff_until, addrv2, is_self")


def _row_entry(row: Sequence[Any]) -> PeerEntry:
    # columns are in PeerEntry field order; SQLite stores the flags as 0/1
    return PeerEntry._make([*row[:10], bool(row[10]), bool(row[11])])


def _entry_addr_group(kind: Kind, host: str) -> str:
    """The ``addr_group`` column: the IPv4 /16, IPv6 /32 or onion of a normalised host."""
    return PeerEntry("", host, 1, kind, "", 0.0, 0.0).group


def _check_network(network: str) -> None:
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; allowed: {', '.join(NETWORKS)}")


def _stamp(now: float | None) -> float:
    t = time.time() if now is None else float(now)
    if not math.isfinite(t):
        raise ValueError(f"timestamp must be finite, got {now!r}")
    return t


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        return False  # locked, read-only, cannot open, disk I/O: not the file's contents
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    msg = str(exc).lower()
    return "not a database" in msg or "malformed" in msg


class _Corrupt(Exception):
    pass


def _tolerant(default: Callable[[], Any], what: str, *, write: bool = True,
              ) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """With ``on_error="log"``: a database error after opening returns ``default()`` (see the
    module docstring). Programming errors (``ValueError``, a closed book, a violated constraint)
    still raise. Only a successful *write* ends a failure period (reads work on a full disk)."""

    def deco(fn: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(fn)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            self = args[0]
            assert isinstance(self, AddressBook)
            try:
                result = fn(*args, **kwargs)
            except sqlite3.DatabaseError as exc:
                if self.on_error == "raise" or isinstance(exc, sqlite3.IntegrityError):
                    raise
                self._failed(what, exc)
                value: _R = default()
                return value
            if write:
                self._worked()
            return result

        return wrapper

    return deco


@dataclass(frozen=True, slots=True)
class LearnedStats(Counters):
    """Learned entries not stored: not public (IPs only the operator may give), dropped
    (a newcomer over its source group's quota); and entries evicted to make room."""

    not_public: int = 0
    dropped: int = 0
    evicted: int = 0


@dataclass(frozen=True, slots=True)
class BookStats:
    """What :meth:`AddressBook.stats` reports."""

    path: str
    errors: int  # operations that failed (disk full, read-only, I/O error)
    failing: int  # non-zero while writes are failing
    last_error: str | None
    learned: LearnedStats


class AddressBook:
    """SQLite-backed peer address book. See the module docstring for the guarantees."""

    def __init__(self, path: str | os.PathLike[str], *,
                 max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_tried: int | None = None,
                 max_seed: int | None = None,
                 synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
                 on_corrupt: Literal["move", "raise"] = "move",
                 busy_timeout: float = 5.0,
                 on_error: Literal["log", "raise"] = "log",
                 recover_after: float = 10.0) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be 'NORMAL' or 'FULL'")
        self.path = Path(path)
        self.max_entries = max_entries
        #: bounds of the tried table, the new table and the seed entries (module docstring)
        self.max_tried = max(1, max_entries // 4) if max_tried is None else max_tried
        self.max_new = max(1, max_entries - self.max_tried)
        self.max_seed = max(1, max_entries // 4) if max_seed is None else max_seed
        if self.max_tried < 1 or self.max_seed < 1:
            raise ValueError("max_tried and max_seed must be at least 1")
        #: what learning refused: non-public IPs, newcomers dropped by a quota, entries evicted
        self.learned = LearnedStats()
        #: untried entries per source group, per network (cached: this is the only writer)
        self._new_counts: dict[str, addrman.GroupCounts] = {}
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        if on_error not in ("log", "raise"):
            raise ValueError("on_error must be 'log' or 'raise'")
        self.on_error = on_error
        #: database errors after opening (with on_error="log"), in all and since the last success
        self.errors = 0
        self.failing = 0
        self.last_error: str | None = None
        self.recover_after = recover_after
        self._failing_since: float | None = None
        self._last_failure = 0.0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.moved_aside: Path | None = None  # where a corrupt file went, if it did
        try:
            self._conn = self._open()
        except _Corrupt as exc:
            if on_corrupt == "raise":
                raise AddressBookError(
                    f"address book {self.path} is corrupt ({exc}); move it aside or delete it "
                    "(peers are re-learned from seeds and gossip)") from None
            self.moved_aside = self._move_aside(str(exc))
            try:
                self._conn = self._open()
            except _Corrupt as again:  # pragma: no cover - a fresh file cannot be corrupt
                raise AddressBookError(
                    f"address book {self.path}: still corrupt after moving the old file "
                    f"aside ({again})") from None

    # -- opening ---------------------------------------------------------------------------

    def _fs_problem(self, exc: BaseException) -> str | None:
        """'read-only' / 'full' when the filesystem holding the book is the cause."""
        code = getattr(exc, "sqlite_errorcode", None)
        code = code & 0xFF if isinstance(code, int) else None
        try:
            vfs = os.statvfs(self.path.parent)
        except OSError:
            vfs = None
        if getattr(exc, "errno", None) == errno.EROFS or (
                code == _SQLITE_READONLY and vfs is not None and vfs.f_flag & os.ST_RDONLY):
            return "read-only"
        if getattr(exc, "errno", None) == errno.ENOSPC or code == _SQLITE_FULL:
            return "full"
        return None

    def _hint(self, exc: BaseException) -> AddressBookError:
        msg = str(exc)
        low = msg.lower()
        fs = self._fs_problem(exc)
        if fs == "read-only":
            what = (f"the filesystem holding {self.path.parent} is mounted read-only; the "
                    "bridge must be able to write its data directory (remount it read-write "
                    "or point data_dir at a writable directory)")
        elif fs == "full":
            what = f"the disk holding {self.path.parent} is full; free some space"
        elif not self.path.parent.is_dir():
            what = (f"directory {self.path.parent} does not exist; create the data directory "
                    "or point the bridge at an existing one")
        elif "locked" in low or "busy" in low:
            what = ("the file is locked by another process; is a second kaspa-tor-bridge "
                    "running with the same data directory?")
        elif isinstance(exc, PermissionError) or "readonly" in low or "read-only" in low \
                or "unable to open" in low or "permission" in low:
            what = (f"cannot read and write it as uid {os.getuid()}; fix the ownership or "
                    f"permissions of {self.path} (and its -wal/-shm files) and of "
                    f"{self.path.parent}, which must be writable")
        else:
            what = "check the file and the disk (space, I/O errors)"
        return AddressBookError(f"address book {self.path}: {msg}: {what}")

    def _open(self) -> sqlite3.Connection:
        if not self.path.parent.is_dir():
            raise self._hint(FileNotFoundError(f"no directory {self.path.parent}"))
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        except OSError as exc:
            raise self._hint(exc) from exc
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._hint(exc) from exc
        try:
            self._setup(conn)
        except _Corrupt:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _is_corruption(exc):
                raise _Corrupt(str(exc)) from exc
            raise self._hint(exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise AddressBookError(
                f"address book {self.path}: SQLite refused WAL mode (got {mode!r}); put the "
                "data directory on a local filesystem")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
        check = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
        if check != ["ok"]:
            raise _Corrupt("quick_check: " + "; ".join(check[:3]))
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = self._schema_version(conn)
            if version > SCHEMA_VERSION:
                raise AddressBookError(
                    f"address book {self.path} has schema version {version}, written by a newer "
                    f"kaspa-tor-bridge (this one supports up to {SCHEMA_VERSION}); upgrade the "
                    "bridge or move the file aside")
            for v in range(version, SCHEMA_VERSION):
                MIGRATIONS[v](conn)
                conn.execute("UPDATE schema_version SET version = ?", (v + 1,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        tables = {str(r[0]) for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            if tables:
                raise AddressBookError(
                    f"{self.path} is an SQLite database but not an address book (tables: "
                    f"{', '.join(sorted(tables))}); point the bridge at another file")
            return 0
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
        if len(rows) != 1 or not isinstance(rows[0][0], int):
            raise _Corrupt(f"schema_version table holds {rows!r}")
        return int(rows[0][0])

    def _move_aside(self, why: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while base.exists():
            n += 1
            base = self.path.with_name(f"{self.path.name}.corrupt-{stamp}.{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                try:
                    os.replace(src, str(base) + suffix)
                except OSError as exc:
                    raise self._hint(exc) from exc
        log.warning("address book %s is corrupt (%s): moved it to %s and started an empty book; "
                    "peers will be re-learned from seeds and gossip", self.path, why, base)
        return base

    # -- plumbing --------------------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise AddressBookError(f"address book {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE ... COMMIT`` transaction under the lock."""
        with self._lock:
            conn = self._db
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                self._new_counts.clear()  # the cache may count what was rolled back
                # SQLite may already have rolled back by itself (SQLITE_FULL, I/O errors); a
                # failed COMMIT leaves the transaction open, which would make every later
                # BEGIN fail ("cannot start a transaction within a transaction") even after
                # the disk has space again.
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    def _failed(self, what: str, exc: sqlite3.Error) -> None:
        self.errors += 1
        self.failing += 1
        self.last_error = f"{what}: {exc}"
        self._last_failure = time.monotonic()
        if self._failing_since is not None:
            return  # logged once per failure period
        self._failing_since = time.monotonic()
        fs = self._fs_problem(exc)
        cause = {"full": "the disk is full", "read-only": "the filesystem is read-only"}.get(
            fs or "", "a database error")
        log.error("address book %s: %s failed (%s: %s); the bridge keeps relaying, but peers "
                  "and their state are not saved until writes succeed again (further failures "
                  "are counted, not logged)", self.path, what, cause, exc)

    def _worked(self) -> None:
        if self._failing_since is None \
                or time.monotonic() - self._last_failure < self.recover_after:
            return
        log.warning("address book %s works again (%d operations failed over %.0fs; last: %s)",
                    self.path, self.failing, time.monotonic() - self._failing_since,
                    self.last_error)
        self._failing_since = None
        self.failing = 0

    def stats(self) -> BookStats:
        return BookStats(str(self.path), self.errors, self.failing, self.last_error,
                         self.learned)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._conn.close()
                self._conn = None

    def __enter__(self) -> AddressBook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bounds (see the module docstring) ----------------------------------------------------

    def _counts(self, conn: sqlite3.Connection, network: str) -> addrman.GroupCounts:
        """Untried gossip entries per source group (loaded once, then kept up to date)."""
        counts = self._new_counts.get(network)
        if counts is None:
            rows = conn.execute(
                "SELECT source_group, count(*) FROM peers WHERE network = ? "
                "AND last_success IS NULL AND source_rank < ? GROUP BY source_group",
                (network, PROTECTED_RANK)).fetchall()
            counts = self._new_counts[network] = addrman.GroupCounts(
                {str(g): int(n) for g, n in rows})
        return counts

    def _victim(self, conn: sqlite3.Connection, network: str, group: str, now: float,
                terrible: bool) -> int | None:
        """rowid of the worst untried entry of ``group`` (only a terrible one if asked)."""
        sql = ("SELECT rowid FROM peers WHERE network = ? AND source_group = ? "
               "AND last_success IS NULL")
        args: list[object] = [network, group]
        if terrible:
            sql += " AND (failures >= ? OR last_seen < ?)"
            args += [addrman.TERRIBLE_FAILURES, now - addrman.HORIZON]
        row = conn.execute(sql + " ORDER BY failures DESC, last_seen, host, port LIMIT 1",
                           args).fetchone()
        return None if row is None else int(row[0])

    def _make_room(self, conn: sqlite3.Connection, network: str, group: str, rank: int,
                   now: float, barren: set[str], seeds: list[int]) -> bool:
        """Make room for one new entry of ``group``: evict by the rules, or say no.
        Per call: ``barren`` remembers the groups known to hold no terrible entry, ``seeds[0]``
        the number of seed entries (-1: not counted yet)."""
        if rank >= _CONFIG_RANK:
            return True
        if rank >= PROTECTED_RANK:  # a seed: bounded among seeds only
            if seeds[0] < 0:
                seeds[0] = int(conn.execute("SELECT count(*) FROM peers WHERE network = ? AND "
                                            "source_group = ?", (network, group)).fetchone()[0])
            if seeds[0] < self.max_seed:
                seeds[0] += 1
                return True
            victim = self._victim(conn, network, group, now, terrible=False)
            if victim is None:
                return False
            conn.execute("DELETE FROM peers WHERE rowid = ?", (victim,))
            self.learned = self.learned.bump(evicted=1)
            return True
        counts = self._counts(conn, network)
        quota = addrman.group_quota(group, self.max_new)
        victim_group = counts.victim_group(group, quota, self.max_new)
        if victim_group is None:
            return True
        only_terrible = victim_group == group
        if only_terrible and group in barren:
            return False
        victim = self._victim(conn, network, victim_group, now, terrible=only_terrible)
        if victim is None:
            barren.add(group)
            return False
        conn.execute("DELETE FROM peers WHERE rowid = ?", (victim,))
        counts.add(victim_group, -1)
        self.learned = self.learned.bump(evicted=1)
        return True

    # -- writes (each one transaction) -----------------------------------------------------

    @_tolerant(lambda: False, "learn")
    def learn(self, network: str, host: str, port: int, *, source: str,
              now: float | None = None, addrv2: bool = False) -> bool:
        """Record that ``host:port`` exists (seed, config, gossip, version ...).

        New entry: ``first_seen = last_seen = now``. Known entry: ``last_seen`` moves forward,
        ``addrv2`` is OR-ed in, and the source is replaced only by one of higher rank
        (``selection.SOURCE_KINDS``). Returns ``True`` if the entry is new and survived eviction.
        Raises ``ValueError`` for an invalid endpoint, source, network or time.
        """
        h, p, _ = normalize_endpoint(host, port)
        return (h, p) in self._learn(network, [(host, port)], source, now, addrv2, strict=True)

    @_tolerant(lambda: 0, "learn_many")
    def learn_many(self, network: str, endpoints: Iterable[tuple[str, int]], *, source: str,
                   now: float | None = None, addrv2: bool = False) -> int:
        """:meth:`learn` for a whole Addresses message in one transaction; invalid endpoints
        are skipped. Returns how many new entries are in the book afterwards."""
        return len(self._learn(network, endpoints, source, now, addrv2, strict=False))

    def _learn(self, network: str, endpoints: Iterable[tuple[str, int]], source: str,
               now: float | None, addrv2: bool, *, strict: bool) -> set[tuple[str, int]]:
        t = _stamp(now)
        _check_network(network)
        rank = source_rank(source)
        group = addrman.source_group(source)
        items: dict[tuple[str, int], Kind] = {}
        for host, port in endpoints:
            try:
                h, p, k = normalize_endpoint(host, port)
            except ValueError:
                if strict:
                    raise
                continue
            if k != "onion" and rank < _CONFIG_RANK and not addrman.is_public_host(h):
                # never learned from anyone but the operator
                self.learned = self.learned.bump(not_public=1)
                continue
            items[(h, p)] = k
        if not items:
            return set()
        new: set[tuple[str, int]] = set()
        barren: set[str] = set()
        seeds = [-1]
        flag = int(bool(addrv2))
        with self._write() as conn:
            counts = self._counts(conn, network)
            for (h, p), k in items.items():
                row = conn.execute(
                    "SELECT source_rank, source_group, last_success FROM peers "
                    "WHERE network = ? AND host = ? AND port = ?", (network, h, p)).fetchone()
                if row is None:
                    if not self._make_room(conn, network, group, rank, t, barren, seeds):
                        self.learned = self.learned.bump(dropped=1)
                        continue
                    conn.execute(
                        "INSERT INTO peers (network, host, port, kind, source, source_rank, "
                        "first_seen, last_seen, addrv2, source_group, addr_group) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (network, h, p, k, source, rank, t, t, flag, group,
                         _entry_addr_group(k, h)))
                    if rank < PROTECTED_RANK:
                        counts.add(group)
                    new.add((h, p))
                    continue
                old_rank, old_group, tried = int(row[0]), str(row[1]), row[2] is not None
                # a higher rank replaces the source; the quota group changes only when the entry
                # becomes a seed/config one (so nobody can move what others told us into a
                # group they can churn)
                regroup = rank > old_rank and rank >= PROTECTED_RANK
                conn.execute(
                    """
                    UPDATE peers SET last_seen = max(last_seen, ?), addrv2 = (addrv2 OR ?),
                        source = CASE WHEN ? > source_rank THEN ? ELSE source END,
                        source_rank = max(source_rank, ?),
                        source_group = CASE WHEN ? THEN ? ELSE source_group END
                    WHERE network = ? AND host = ? AND port = ?
                    """,
                    (t, flag, rank, source, rank, int(regroup), group, network, h, p))
                if regroup and old_rank < PROTECTED_RANK and not tried:
                    counts.add(old_group, -1)
                if regroup and seeds[0] >= 0:  # seed entries counted in this call
                    seeds[0] += (rank < _CONFIG_RANK) - (old_group == "seed")
        return new

    @_tolerant(lambda: False, "record_success")
    def record_success(self, network: str, host: str, port: int, *, now: float | None = None,
                       addrv2: bool | None = None) -> bool:
        """A connection to the peer worked: failures and backoff reset, ``last_success = now``.

        The entry joins the tried table (never evicted by gossip); if that leaves the tried table
        or the entry's address group over its bound, the worst other tried entry of that group
        (or else of the largest group) is deleted. ``addrv2`` (when given) sets what the peer's
        Version said. ``False`` if unknown peer.
        """
        t = _stamp(now)
        _check_network(network)
        h, p, _ = normalize_endpoint(host, port)
        with self._write() as conn:
            row = conn.execute(
                "SELECT rowid, source_rank, source_group, addr_group, last_success FROM peers "
                "WHERE network = ? AND host = ? AND port = ?", (network, h, p)).fetchone()
            if row is None:
                return False
            rowid, rank, group, agroup = int(row[0]), int(row[1]), str(row[2]), str(row[3])
            conn.execute(
                """
                UPDATE peers SET failures = 0, backoff_until = 0, last_success = ?,
                                 last_seen = max(last_seen, ?),
                                 addrv2 = coalesce(?, addrv2)
                WHERE rowid = ?
                """,
                (t, t, None if addrv2 is None else int(addrv2), rowid),
            )
            if rank < PROTECTED_RANK and row[4] is None:
                self._counts(conn, network).add(group, -1)
                self._bound_tried(conn, network, agroup, rowid)
            return True

    def _bound_tried(self, conn: sqlite3.Connection, network: str, agroup: str,
                     keep: int) -> None:
        tried = "network = ? AND last_success IS NOT NULL AND source_rank < ?"
        (in_group,) = conn.execute(
            f"SELECT count(*) FROM peers WHERE {tried} AND addr_group = ?",
            (network, PROTECTED_RANK, agroup)).fetchone()
        victim_group: str | None = None
        if int(in_group) > max(1, self.max_tried // addrman.QUOTA_DIVISOR):
            victim_group = agroup
        else:
            (total,) = conn.execute(f"SELECT count(*) FROM peers WHERE {tried}",
                                    (network, PROTECTED_RANK)).fetchone()
            if int(total) > self.max_tried:
                victim_group = str(conn.execute(
                    f"SELECT addr_group FROM peers WHERE {tried} GROUP BY addr_group "
                    "ORDER BY count(*) DESC, addr_group LIMIT 1",
                    (network, PROTECTED_RANK)).fetchone()[0])
        if victim_group is None:
            return
        victim = conn.execute(
            f"SELECT rowid FROM peers WHERE {tried} AND addr_group = ? AND rowid != ? "
            "ORDER BY failures DESC, last_success, host, port LIMIT 1",
            (network, PROTECTED_RANK, victim_group, keep)).fetchone()
        if victim is not None:
            conn.execute("DELETE FROM peers WHERE rowid = ?", (int(victim[0]),))
            self.learned = self.learned.bump(evicted=1)

    @_tolerant(lambda: None, "record_failure")
    def record_failure(self, network: str, host: str, port: int, *, now: float | None = None,
                       backoff: Callable[[int], float] = backoff_delay,
                       ) -> tuple[int, float] | None:
        """One more consecutive failure: ``backoff_until = now + backoff(failures)``.

        Returns ``(failures, delay)``, or ``None`` if the peer is not in the book.
        """
        t = _stamp(now)
        _check_network(network)
        h, p, _ = normalize_endpoint(host, port)
        with self._write() as conn:
            row = conn.execute(
                "SELECT failures FROM peers WHERE network = ? AND host = ? AND port = ?",
                (network, h, p)).fetchone()
            if row is None:
                return None
            n = int(row[0]) + 1
            delay = float(backoff(n))
            conn.execute(
                "UPDATE peers SET failures = ?, backoff_until = ? "
                "WHERE network = ? AND host = ? AND port = ?",
                (n, t + delay, network, h, p))
            return n, delay

    @_tolerant(lambda: 0, "reset_backoff")
    def reset_backoff(self, network: str) -> int:
        """Clear failures and backoffs of every entry (our Tor recovered). Returns the count."""
        _check_network(network)
        with self._write() as conn:
            cur = conn.execute("UPDATE peers SET failures = 0, backoff_until = 0 "
                               "WHERE network = ? AND (failures > 0 OR backoff_until > 0)",
                               (network,))
            return int(cur.rowcount)

    @_tolerant(lambda: False, "mark_self")
    def mark_self(self, network: str, host: str, port: int, is_self: bool = True) -> bool:
        """Flag (or unflag) the peer as a route back to our own kaspad. ``False`` if unknown."""
        _check_network(network)
        h, p, _ = normalize_endpoint(host, port)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE peers SET is_self = ? WHERE network = ? AND host = ? AND port = ?",
                (int(is_self), network, h, p))
            return cur.rowcount == 1

    @_tolerant(lambda: False, "remove")
    def remove(self, network: str, host: str, port: int) -> bool:
        _check_network(network)
        h, p, _ = normalize_endpoint(host, port)
        with self._write() as conn:
            cur = conn.execute("DELETE FROM peers WHERE network = ? AND host = ? AND port = ?",
                               (network, h, p))
            self._new_counts.pop(network, None)  # recounted on the next learn
            return cur.rowcount == 1

    # -- reads -----------------------------------------------------------------------------

    @_tolerant(lambda: None, "read", write=False)
    def get(self, network: str, host: str, port: int) -> PeerEntry | None:
        _check_network(network)
        h, p, _ = normalize_endpoint(host, port)
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM peers WHERE network = ? AND host = ? AND port = ?",
                (network, h, p)).fetchone()
        return None if row is None else _row_entry(row)

    @_tolerant(list, "read", write=False)
    def entries(self, network: str, kinds: Collection[Kind] | None = None) -> list[PeerEntry]:
        """All entries of ``network`` (optionally only these kinds), ordered by host, port."""
        _check_network(network)
        sql = f"SELECT {_COLUMNS} FROM peers WHERE network = ?"
        args: list[object] = [network]
        if kinds is not None:
            ks = sorted(set(kinds))
            if not ks:
                return []
            sql += f" AND kind IN ({', '.join('?' * len(ks))})"
            args += ks
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY host, port", args).fetchall()
        return [_row_entry(r) for r in rows]

    @_tolerant(lambda: 0, "count", write=False)
    def count(self, network: str | None = None) -> int:
        with self._lock:
            if network is None:
                row = self._db.execute("SELECT count(*) FROM peers").fetchone()
            else:
                _check_network(network)
                row = self._db.execute(
                    "SELECT count(*) FROM peers WHERE network = ?", (network,)).fetchone()
        return int(row[0])

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` result (``"ok"`` when healthy)."""
        with self._lock:
            rows = self._db.execute("PRAGMA integrity_check").fetchall()
        return "; ".join(str(r[0]) for r in rows)

    # -- hooks -----------------------------------------------------------------------------

    def gossip_hook(self, network: str) -> Callable[[OnionPeer, str], None]:
        """A callable ``(peer, source)`` that stores one learned onion (now = wall time); each
        call is one small transaction (the bridge stores a whole message with
        :meth:`learn_many`). Invalid sources are
        recorded as ``gossip:<source>``.
        """
        _check_network(network)

        def hook(peer: OnionPeer, source: str) -> None:
            try:
                source_rank(source)
            except ValueError:
                source = ("gossip:" + source)[:200]
            self.learn(network, peer.address.host, peer.port, source=source)

        return hook
