"""Where the address book (:mod:`bridge.store.book`) puts what it learns: which learned IPs may
be stored at all (public ones, issue G defect 7), then the SQL of the eclipse-resistance rules of
:mod:`bridge.core.addrman` (issue G defect 3) on the ``peers`` table -- the new table's
source-group quotas and eviction, the bounded seed entries, the tried table's bounds on a
success -- and :class:`LearnedStats`, what learning refused.

The rules are described in the book's module docstring ("Bounds and eviction", "Non-public
addresses"). Functions taking the book (a :class:`Shelves`) and, for the SQL, the connection of
its open write transaction; they never commit. Import these through :mod:`bridge.store.book`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from bridge.core import addrman
from bridge.core.counters import Counters
from bridge.core.selection import PROTECTED_RANK, Kind, normalize_endpoint
from bridge.store.book_schema import entry_addr_group

_CONFIG_RANK: Final = 3


@dataclass(frozen=True, slots=True)
class LearnedStats(Counters):
    """Learned entries not stored: not public (IPs only the operator may give), dropped
    (a newcomer over its source group's quota); and entries evicted to make room."""

    not_public: int = 0
    dropped: int = 0
    evicted: int = 0


class Shelves(Protocol):
    """The bounds and caches placement reads and updates on the book
    (:class:`~bridge.store.book.AddressBook` has them)."""

    max_tried: int
    max_new: int
    max_seed: int
    learned: LearnedStats
    #: untried entries per source group, per network (cached: the book is the only writer)
    _new_counts: dict[str, addrman.GroupCounts]


def new_counts(book: Shelves, conn: sqlite3.Connection, network: str) -> addrman.GroupCounts:
    """Untried gossip entries per source group (loaded once, then kept up to date)."""
    counts = book._new_counts.get(network)
    if counts is None:
        rows = conn.execute(
            "SELECT source_group, count(*) FROM peers WHERE network = ? "
            "AND last_success IS NULL AND source_rank < ? GROUP BY source_group",
            (network, PROTECTED_RANK)).fetchall()
        counts = book._new_counts[network] = addrman.GroupCounts(
            {str(g): int(n) for g, n in rows})
    return counts


def worst_untried(conn: sqlite3.Connection, network: str, group: str, now: float,
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


def make_room(book: Shelves, conn: sqlite3.Connection, network: str, group: str, rank: int,
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
        if seeds[0] < book.max_seed:
            seeds[0] += 1
            return True
        victim = worst_untried(conn, network, group, now, terrible=False)
        if victim is None:
            return False
        conn.execute("DELETE FROM peers WHERE rowid = ?", (victim,))
        book.learned = book.learned.bump(evicted=1)
        return True
    counts = new_counts(book, conn, network)
    quota = addrman.group_quota(group, book.max_new)
    victim_group = counts.victim_group(group, quota, book.max_new)
    if victim_group is None:
        return True
    only_terrible = victim_group == group
    if only_terrible and group in barren:
        return False
    victim = worst_untried(conn, network, victim_group, now, terrible=only_terrible)
    if victim is None:
        barren.add(group)
        return False
    conn.execute("DELETE FROM peers WHERE rowid = ?", (victim,))
    counts.add(victim_group, -1)
    book.learned = book.learned.bump(evicted=1)
    return True


def admissible(book: Shelves, endpoints: Iterable[tuple[str, int]], rank: int, *,
               strict: bool) -> dict[tuple[str, int], Kind]:
    """The normalised ``endpoints`` a source of ``rank`` may add, with their kinds: an invalid
    endpoint raises ``ValueError`` (``strict``) or is skipped; an IP that is not public is
    skipped and counted (``learned.not_public``) unless the operator gave it."""
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
            book.learned = book.learned.bump(not_public=1)
            continue
        items[(h, p)] = k
    return items


def place(book: Shelves, conn: sqlite3.Connection, network: str,
          items: dict[tuple[str, int], Kind], source: str, rank: int, group: str, t: float,
          addrv2: bool) -> set[tuple[str, int]]:
    """Store the checked, normalised ``items`` learned from ``source`` (of ``rank`` and source
    ``group``) at time ``t``, inside the caller's transaction: new entries where the bounds make
    room, known ones updated. Returns the new entries stored."""
    new: set[tuple[str, int]] = set()
    barren: set[str] = set()
    seeds = [-1]
    flag = int(bool(addrv2))
    counts = new_counts(book, conn, network)
    for (h, p), k in items.items():
        row = conn.execute(
            "SELECT source_rank, source_group, last_success FROM peers "
            "WHERE network = ? AND host = ? AND port = ?", (network, h, p)).fetchone()
        if row is None:
            if not make_room(book, conn, network, group, rank, t, barren, seeds):
                book.learned = book.learned.bump(dropped=1)
                continue
            conn.execute(
                "INSERT INTO peers (network, host, port, kind, source, source_rank, "
                "first_seen, last_seen, addrv2, source_group, addr_group) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (network, h, p, k, source, rank, t, t, flag, group,
                 entry_addr_group(k, h)))
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


def bound_tried(book: Shelves, conn: sqlite3.Connection, network: str, agroup: str,
                keep: int) -> None:
    tried = "network = ? AND last_success IS NOT NULL AND source_rank < ?"
    (in_group,) = conn.execute(
        f"SELECT count(*) FROM peers WHERE {tried} AND addr_group = ?",
        (network, PROTECTED_RANK, agroup)).fetchone()
    victim_group: str | None = None
    if int(in_group) > max(1, book.max_tried // addrman.QUOTA_DIVISOR):
        victim_group = agroup
    else:
        (total,) = conn.execute(f"SELECT count(*) FROM peers WHERE {tried}",
                                (network, PROTECTED_RANK)).fetchone()
        if int(total) > book.max_tried:
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
        book.learned = book.learned.bump(evicted=1)
