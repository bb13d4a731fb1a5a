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
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from bridge.core import addrman
from bridge.core.policy import OnionPeer
from bridge.core.selection import (
    NETWORKS,
    PROTECTED_RANK,
    Kind,
    PeerEntry,
    backoff_delay,
    normalize_endpoint,
    source_rank,
)
from bridge.store.book_errors import AddressBookError, Corrupt, tolerant
from bridge.store.book_place import (
    LearnedStats,
    admissible,
    bound_tried,
    new_counts,
    place,
)
from bridge.store.book_schema import (
    COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    move_aside,
    open_db,
    row_entry,
)

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AddressBook",
    "AddressBookError",
    "LearnedStats",
]

DEFAULT_MAX_ENTRIES: Final = 4096


def _check_network(network: str) -> None:
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; allowed: {', '.join(NETWORKS)}")


def _stamp(now: float | None) -> float:
    t = time.time() if now is None else float(now)
    if not math.isfinite(t):
        raise ValueError(f"timestamp must be finite, got {now!r}")
    return t


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
        except Corrupt as exc:
            if on_corrupt == "raise":
                raise AddressBookError(
                    f"address book {self.path} is corrupt ({exc}); move it aside or delete it "
                    "(peers are re-learned from seeds and gossip)") from None
            self.moved_aside = move_aside(self.path, str(exc))
            try:
                self._conn = self._open()
            except Corrupt as again:  # pragma: no cover - a fresh file cannot be corrupt
                raise AddressBookError(
                    f"address book {self.path}: still corrupt after moving the old file "
                    f"aside ({again})") from None

    # -- opening ---------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        return open_db(self.path, synchronous=self.synchronous, busy_timeout=self.busy_timeout)

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

    # -- writes (each one transaction) -----------------------------------------------------

    @tolerant(lambda: False, "learn")
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

    @tolerant(lambda: 0, "learn_many")
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
        items = admissible(self, endpoints, rank, strict=strict)
        if not items:
            return set()
        with self._write() as conn:
            return place(self, conn, network, items, source, rank, group, t, addrv2)

    @tolerant(lambda: False, "record_success")
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
                new_counts(self, conn, network).add(group, -1)
                bound_tried(self, conn, network, agroup, rowid)
            return True

    @tolerant(lambda: None, "record_failure")
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

    @tolerant(lambda: 0, "reset_backoff")
    def reset_backoff(self, network: str) -> int:
        """Clear failures and backoffs of every entry (our Tor recovered). Returns the count."""
        _check_network(network)
        with self._write() as conn:
            cur = conn.execute("UPDATE peers SET failures = 0, backoff_until = 0 "
                               "WHERE network = ? AND (failures > 0 OR backoff_until > 0)",
                               (network,))
            return int(cur.rowcount)

    @tolerant(lambda: False, "mark_self")
    def mark_self(self, network: str, host: str, port: int, is_self: bool = True) -> bool:
        """Flag (or unflag) the peer as a route back to our own kaspad. ``False`` if unknown."""
        _check_network(network)
        h, p, _ = normalize_endpoint(host, port)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE peers SET is_self = ? WHERE network = ? AND host = ? AND port = ?",
                (int(is_self), network, h, p))
            return cur.rowcount == 1

    @tolerant(lambda: False, "remove")
    def remove(self, network: str, host: str, port: int) -> bool:
        _check_network(network)
        h, p, _ = normalize_endpoint(host, port)
        with self._write() as conn:
            cur = conn.execute("DELETE FROM peers WHERE network = ? AND host = ? AND port = ?",
                               (network, h, p))
            self._new_counts.pop(network, None)  # recounted on the next learn
            return cur.rowcount == 1

    # -- reads -----------------------------------------------------------------------------

    @tolerant(lambda: None, "read", write=False)
    def get(self, network: str, host: str, port: int) -> PeerEntry | None:
        _check_network(network)
        h, p, _ = normalize_endpoint(host, port)
        with self._lock:
            row = self._db.execute(
                f"SELECT {COLUMNS} FROM peers WHERE network = ? AND host = ? AND port = ?",
                (network, h, p)).fetchone()
        return None if row is None else row_entry(row)

    @tolerant(list, "read", write=False)
    def entries(self, network: str, kinds: Collection[Kind] | None = None) -> list[PeerEntry]:
        """All entries of ``network`` (optionally only these kinds), ordered by host, port."""
        _check_network(network)
        sql = f"SELECT {COLUMNS} FROM peers WHERE network = ?"
        args: list[object] = [network]
        if kinds is not None:
            ks = sorted(set(kinds))
            if not ks:
                return []
            sql += f" AND kind IN ({', '.join('?' * len(ks))})"
            args += ks
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY host, port", args).fetchall()
        return [row_entry(r) for r in rows]

    @tolerant(lambda: 0, "count", write=False)
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
