"""Tests for bridge.book: the SQLite address book (model-based, persistence, kill -9)."""

from __future__ import annotations

import collections
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from bridge.core.onion import OnionAddress
from bridge.core.peers import Target
from bridge.core.policy import OnionPeer
from bridge.core.selection import (
    BookSelector,
    PeerEntry,
    PeerStore,
    backoff_delay,
    group_of,
    normalize_endpoint,
    source_rank,
)
from bridge.store import book as book_mod
from bridge.store import book_schema
from bridge.store.book import AddressBook, AddressBookError

NET = "kaspa-mainnet"
TESTNET = "kaspa-testnet-10"
ONION = OnionAddress.from_pubkey(b"\x01" * 32)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "peers.sqlite"


# --------------------------------------------------------------------------------------------
# opening


def test_open_creates_private_wal_file(db: Path) -> None:
    with AddressBook(db) as b:
        assert b.count() == 0
        assert b.integrity_check() == "ok"
        conn = b._db
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (book_mod.SCHEMA_VERSION,)]
    assert db.stat().st_mode & 0o777 == 0o600
    with AddressBook(db, synchronous="FULL") as b:
        assert b._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    with pytest.raises(AddressBookError, match="closed"):
        b.count()


def test_open_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "peers.sqlite"
    with pytest.raises(AddressBookError, match="does not exist") as ei:
        AddressBook(path)
    assert str(path.parent) in str(ei.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_open_permission_denied(db: Path) -> None:
    AddressBook(db).close()
    db.chmod(0o000)
    try:
        with pytest.raises(AddressBookError, match="permission") as ei:
            AddressBook(db)
        assert str(db) in str(ei.value)
    finally:
        db.chmod(0o600)


def test_open_permission_message(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied", str(db))

    monkeypatch.setattr("bridge.store.book.os.open", deny)
    with pytest.raises(AddressBookError, match="permissions of") as ei:
        AddressBook(db)
    assert str(db) in str(ei.value) and "startup aborted" in ei.value.describe()


def test_open_locked_by_another_process(db: Path) -> None:
    AddressBook(db).close()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(AddressBookError, match="second kaspa-tor-bridge"):
            AddressBook(db, busy_timeout=0.05)
    finally:
        other.execute("ROLLBACK")
        other.close()
    AddressBook(db).close()


def test_open_garbage_is_moved_aside(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    db.write_bytes(b"this is not a database" * 100)
    (db.parent / (db.name + "-wal")).write_bytes(b"junk")
    with caplog.at_level(logging.WARNING, logger="bridge.store.book"), AddressBook(db) as b:
        assert b.count() == 0
        assert b.moved_aside is not None
        b.learn(NET, "1.2.3.4", 1, source="seed", now=1)
    assert b.moved_aside.read_bytes().startswith(b"this is not")
    live_wal = db.parent / (db.name + "-wal")  # the stale WAL never meets the new file
    assert not live_wal.exists() or live_wal.read_bytes() != b"junk"
    assert any("corrupt" in r.message and str(b.moved_aside) in r.message
               for r in caplog.records)
    with AddressBook(db) as b2:
        assert b2.count() == 1 and b2.moved_aside is None


def test_open_corrupt_pages_are_moved_aside(db: Path) -> None:
    with AddressBook(db) as b:
        b.learn_many(NET, [(f"10.{i // 256}.{i % 256}.1", 16111) for i in range(3000)],
                     source="config", now=1)
    size = db.stat().st_size
    assert size > 16 * 4096
    with db.open("r+b") as f:  # smash pages in the middle (not the header page)
        f.seek(size // 2)
        f.write(b"\xa5" * (4 * 4096))
    with AddressBook(db) as b:
        assert b.moved_aside is not None and b.count() == 0
    db.write_bytes(b"garbage" * 1000)
    with pytest.raises(AddressBookError, match="corrupt"):
        AddressBook(db, on_corrupt="raise")
    assert db.read_bytes().startswith(b"garbage")  # untouched


def test_open_newer_schema_refused(db: Path) -> None:
    with AddressBook(db) as b:
        b._db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(AddressBookError, match="newer"):
        AddressBook(db)
    assert db.exists()


def test_open_foreign_database_refused(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE wallet (x)")
    conn.commit()
    conn.close()
    with pytest.raises(AddressBookError, match="not an address book"):
        AddressBook(db)


def test_migration_hook(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with AddressBook(db) as b:
        b.learn(NET, "1.2.3.4", 1, source="seed", now=5)

    def to_v2(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE peers ADD COLUMN note TEXT NOT NULL DEFAULT 'v2'")

    monkeypatch.setattr(book_schema, "SCHEMA_VERSION", 3)  # read where the file is opened
    monkeypatch.setitem(book_mod.MIGRATIONS, 2, to_v2)
    with AddressBook(db) as b:
        assert b._db.execute("SELECT version FROM schema_version").fetchone()[0] == 3
        assert b._db.execute("SELECT host, note FROM peers").fetchall() == [("1.2.3.4", "v2")]
        assert b.get(NET, "1.2.3.4", 1) is not None


def test_bad_arguments(db: Path) -> None:
    with pytest.raises(ValueError):
        AddressBook(db, max_entries=0)
    with pytest.raises(ValueError):
        AddressBook(db, synchronous="OFF")  # type: ignore[arg-type]
    with AddressBook(db) as b:
        with pytest.raises(ValueError, match="network"):
            b.learn("kaspa-nonet", "1.2.3.4", 1, source="seed")
        with pytest.raises(ValueError, match="source"):
            b.learn(NET, "1.2.3.4", 1, source="dns")
        with pytest.raises(ValueError):
            b.learn(NET, "example.com", 1, source="seed")
        with pytest.raises(ValueError, match="finite"):
            b.learn(NET, "1.2.3.4", 1, source="seed", now=float("nan"))
        assert b.count() == 0


# --------------------------------------------------------------------------------------------
# semantics


def test_learn_and_update(db: Path) -> None:
    with AddressBook(db) as b:
        assert b.learn(NET, ONION.host.upper(), 16111, source="gossip:a", now=10)
        assert not b.learn(NET, ONION.host, 16111, source="gossip:b", now=5, addrv2=True)
        e = b.get(NET, ONION.host, 16111)
        assert e == PeerEntry(NET, ONION.host, 16111, "onion", "gossip:a", 10.0, 10.0, None, 0,
                              0.0, True, False)
        b.learn(NET, ONION.host, 16111, source="seed", now=20)
        b.learn(NET, ONION.host, 16111, source="version:x", now=15)
        e = b.get(NET, ONION.host, 16111)
        assert e is not None and (e.source, e.last_seen, e.addrv2) == ("seed", 20.0, True)
        # IPv6 and IPv4-mapped normalisation; networks are separate
        assert b.learn(NET, "2001:DB8::0:1", 1, source="config", now=1)
        assert not b.learn(NET, "2001:db8::1", 1, source="config", now=1)
        assert b.learn(NET, "::ffff:1.2.3.4", 1, source="config", now=1)
        assert b.get(NET, "1.2.3.4", 1) is not None
        assert b.learn(TESTNET, "1.2.3.4", 1, source="config", now=1)
        assert b.count(NET) == 3 and b.count(TESTNET) == 1 and b.count() == 4
        assert [e.kind for e in b.entries(NET)] == ["ipv4", "ipv6", "onion"]
        assert [e.kind for e in b.entries(NET, ["onion", "ipv6"])] == ["ipv6", "onion"]
        assert b.entries(NET, []) == []


def test_learn_many(db: Path) -> None:
    with AddressBook(db) as b:
        n = b.learn_many(NET, [("1.2.3.4", 1), ("bad host", 1), ("1.2.3.4", 1),
                               ("1.2.3.5", 0), (ONION.host, 2)], source="gossip:z", now=3)
        assert n == 2 and b.count(NET) == 2
        assert b.learn_many(NET, [("1.2.3.4", 1), ("5.6.7.8", 1)], source="gossip:z") == 1
        assert b.learn_many(NET, [], source="gossip:z") == 0


def test_success_failure_self_remove(db: Path) -> None:
    with AddressBook(db) as b:
        b.learn(NET, "1.2.3.4", 1, source="gossip:a", now=10)
        assert b.record_failure(NET, "1.2.3.4", 1, now=100) == (1, 5.0)
        assert b.record_failure(NET, "1.2.3.4", 1, now=100) == (2, 10.0)
        assert b.record_failure(NET, "1.2.3.4", 1, now=100,
                                backoff=lambda n: 7.0 * n) == (3, 21.0)
        e = b.get(NET, "1.2.3.4", 1)
        assert e is not None and (e.failures, e.backoff_until) == (3, 121.0)
        assert b.record_success(NET, "1.2.3.4", 1, now=200, addrv2=True)
        e = b.get(NET, "1.2.3.4", 1)
        assert e is not None
        assert (e.failures, e.backoff_until, e.last_success, e.last_seen, e.addrv2) == (
            0, 0.0, 200.0, 200.0, True)
        assert b.record_success(NET, "1.2.3.4", 1, now=300, addrv2=False)
        assert b.get(NET, "1.2.3.4", 1).addrv2 is False  # type: ignore[union-attr]
        assert b.mark_self(NET, "1.2.3.4", 1)
        assert b.get(NET, "1.2.3.4", 1).is_self  # type: ignore[union-attr]
        assert b.mark_self(NET, "1.2.3.4", 1, False)
        assert not b.get(NET, "1.2.3.4", 1).is_self  # type: ignore[union-attr]
        assert b.record_failure(NET, "9.9.9.9", 1) is None
        assert not b.record_success(NET, "9.9.9.9", 1)
        assert not b.mark_self(NET, "9.9.9.9", 1)
        assert b.remove(NET, "1.2.3.4", 1) and not b.remove(NET, "1.2.3.4", 1)
        assert b.get(NET, "1.2.3.4", 1) is None


def test_eviction_rule(db: Path) -> None:
    """Quotas per source group (issue G): max_entries=64 -> 16 tried, 48 new, 3 per group."""
    a, c = "gossip:peer 5.5.0.1:1", "gossip:peer 6.6.0.1:1"
    with AddressBook(db, max_entries=64, max_seed=2) as b:
        assert (b.max_tried, b.max_new) == (16, 48)
        for i in range(1, 4):
            assert b.learn(NET, f"1.0.0.{i}", 1, source=a, now=i)
        # at its quota, the group keeps its entries: the newcomer is dropped ...
        assert not b.learn(NET, "1.0.0.4", 1, source=a, now=4)
        assert not b.learn(NET, "1.0.0.4", 1, source="gossip:peer 5.5.9.9:7", now=4)  # same /16
        assert b.learned.dropped == 2
        # ... unless one of its own is terrible (3 failures, or not seen for 30 days)
        for _ in range(2):
            b.record_failure(NET, "1.0.0.2", 1, now=5)
        assert not b.learn(NET, "1.0.0.4", 1, source=a, now=5)  # 2 failures: not yet
        b.record_failure(NET, "1.0.0.2", 1, now=5)
        assert b.learn(NET, "1.0.0.4", 1, source=a, now=6)
        assert b.get(NET, "1.0.0.2", 1) is None
        assert b.learn(NET, "1.0.0.5", 1, source=a, now=6 + 31 * 86400)
        assert b.get(NET, "1.0.0.1", 1) is None  # the stalest went
        # another group has its own quota; re-learning ours from it moves nothing
        assert b.learn(NET, "2.0.0.1", 1, source=c, now=7)
        assert not b.learn(NET, "1.0.0.3", 1, source=c, now=8)
        assert b.get(NET, "1.0.0.3", 1).last_seen == 8  # type: ignore[union-attr]
        assert b.learn(NET, "2.0.0.2", 1, source=c, now=9)
        # a tried entry leaves the new table: room in the group, and never evicted by gossip
        b.record_success(NET, "1.0.0.3", 1, now=10)
        assert b.learn(NET, "1.0.0.6", 1, source=a, now=11)
        for _ in range(5):
            b.record_failure(NET, "1.0.0.3", 1, now=12)
        assert not b.learn(NET, "1.0.0.7", 1, source=a, now=13)
        assert b.get(NET, "1.0.0.3", 1) is not None
        # seeds: bounded among themselves only; config: never evicted, not bounded
        for i in range(1, 4):
            assert b.learn(NET, f"3.0.0.{i}", 1, source="seed", now=20 + i)
        assert b.get(NET, "3.0.0.1", 1) is None and b.count(NET) == 8
        for i in range(1, 70):
            assert b.learn(NET, f"4.0.{i}.1", 1, source="config", now=30)
        assert b.count(NET) == 77
        # the bound is per network
        assert b.learn(TESTNET, "1.0.0.9", 1, source=a, now=1)


def test_new_table_full_takes_from_the_largest_group(db: Path) -> None:
    with AddressBook(db, max_entries=64) as b:  # 48 new, quota 3, kaspad 24
        assert b.learn_many(NET, [(f"1.0.{i}.1", 1) for i in range(24)], source="gossip:kaspad",
                            now=1) == 24
        for g in range(8):
            assert b.learn_many(NET, [(f"2.{g}.{i}.1", 1) for i in range(3)],
                                source=f"gossip:peer 9.{g}.0.1:1", now=2) == 3
        assert b.count(NET) == 48
        # full: a new group takes the worst of the largest (kaspad) ...
        b.record_failure(NET, "1.0.7.1", 1, now=3)
        assert b.learn(NET, "3.0.0.1", 1, source="gossip:inbound peer #4", now=4)
        assert b.get(NET, "1.0.7.1", 1) is None and b.count(NET) == 48
        # ... but never from a group no larger than its own would be
        small = AddressBook(db.with_name("small.sqlite"), max_entries=64)
        with small:
            for g in range(48):
                assert small.learn(NET, f"2.{g}.0.1", 1, source=f"gossip:peer 9.{g}.0.1:1",
                                   now=2)
            assert small.count(NET) == 48
            assert not small.learn(NET, "3.0.0.1", 1, source="gossip:inbound peer #4", now=4)
            assert small.count(NET) == 48


def test_tried_table_bounds(db: Path) -> None:
    with AddressBook(db, max_entries=256) as b:  # 64 tried, 4 per address group
        src = "gossip:kaspad"
        for i in range(6):  # one /16
            b.learn(NET, f"7.7.0.{i + 1}", 1, source=src, now=1)
            b.record_success(NET, f"7.7.0.{i + 1}", 1, now=10 + i)
        tried = [e.host for e in b.entries(NET) if e.last_success is not None]
        assert tried == ["7.7.0.3", "7.7.0.4", "7.7.0.5", "7.7.0.6"]  # the oldest successes went
        for g in range(70):  # many /16s: the bound is max_tried
            b.learn(NET, f"8.{g}.0.1", 1, source=src, now=1)
            b.record_success(NET, f"8.{g}.0.1", 1, now=100 + g)
        assert sum(e.last_success is not None for e in b.entries(NET)) == 64
        # seeds and config are never tried-table victims
        b.learn(NET, "9.9.9.9", 1, source="config", now=1)
        b.record_success(NET, "9.9.9.9", 1, now=1)
        assert b.get(NET, "9.9.9.9", 1) is not None


def test_persistence_across_reopen(db: Path) -> None:
    with AddressBook(db) as b:
        b.learn(NET, ONION.host, 16111, source="seed", now=1, addrv2=True)
        b.learn_many(TESTNET, [("1.2.3.4", 2), ("2001:4860::1", 3)], source="gossip:q", now=2)
        b.record_failure(TESTNET, "1.2.3.4", 2, now=3)
        b.mark_self(TESTNET, "2001:4860::1", 3)
        before = {n: b.entries(n) for n in (NET, TESTNET)}
    with AddressBook(db) as b:
        assert {n: b.entries(n) for n in (NET, TESTNET)} == before
    # also without a clean close (no checkpoint): another connection sees committed data
    b = AddressBook(db)
    b.learn(NET, "7.7.7.7", 1, source="seed", now=4)
    with AddressBook(db) as b2:
        assert b2.get(NET, "7.7.7.7", 1) is not None
    b.close()


def test_threads(db: Path) -> None:
    with AddressBook(db) as b:
        def work(k: int) -> None:
            for i in range(50):
                b.learn(NET, f"10.{k}.{i}.1", 1, source="config", now=i)
                b.record_failure(NET, f"10.{k}.{i}.1", 1, now=i)
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert b.count(NET) == 200
        assert all(e.failures == 1 for e in b.entries(NET))


def test_gossip_hook(db: Path) -> None:
    with AddressBook(db) as b:
        hook = b.gossip_hook(NET)
        hook(OnionPeer(ONION, 16111), "gossip:1.2.3.4:16111")
        hook(OnionPeer(OnionAddress.from_pubkey(b"\x02" * 32), 1), "weird")
        srcs = sorted(e.source for e in b.entries(NET))
        assert srcs == ["gossip:1.2.3.4:16111", "gossip:weird"]


def test_book_selector_over_book(db: Path) -> None:
    with AddressBook(db) as b:
        store: PeerStore = b
        sel = BookSelector(store, NET, rng=random.Random(1))
        for t in (Target("1.2.3.4", 1), Target("1.2.9.9", 1), Target(ONION.host, 16111)):
            sel.add(t, now=0.0)
        a, c = sel.pick(1.0), sel.pick(1.0)
        assert a is not None and c is not None and sel.pick(1.0) is None
        ip = a if not a.is_onion else c
        assert sel.failure(ip, 1.0) == 5.0
        sel.release(ip)
        assert sel.next_retry(1.0) == 6.0
        other = sel.pick(2.0)
        assert other is not None and other != ip
        sel.success(other, 3.0)
        e = b.get(NET, other.host, other.port)
        assert e is not None and e.last_success == 3.0 and e.source == "config"
    with AddressBook(db) as b:  # backoff survives a restart
        e = b.get(NET, ip.host, ip.port)
        assert e is not None and e.failures == 1 and e.backoff_until == 6.0


# --------------------------------------------------------------------------------------------
# model-based: the book agrees with a dict model over random operation sequences


@dataclass
class _M:
    kind: str
    source: str
    first_seen: float
    last_seen: float
    last_success: float | None = None
    failures: int = 0
    backoff_until: float = 0.0
    addrv2: bool = False
    is_self: bool = False
    group: str = ""


_MAXN = 8  # the book's bounds at this size (bridge.book module docstring):
_TRIED, _NEW, _SEEDS = 2, 6, 2  # quotas: 1 per source group (kaspad 3), 1 tried per /16
_HOSTS = ["10.0.0.1", "1.0.0.1", "1.0.0.2", "1.1.0.1", "2001:db8::1", "2001:4860::2",
          "::ffff:1.0.0.1", "::ffff:10.0.0.1", "127.0.0.1",
          ONION.host, ONION.host.upper(), OnionAddress.from_pubkey(b"\x03" * 32).host]
_EP = st.tuples(st.sampled_from(_HOSTS), st.sampled_from([1, 2]))
_GROUPS = {  # source -> its quota group (bridge.core.addrman.source_group)
    "gossip:peer 5.5.0.1:1": "ipv4:5.5", "version:peer 5.5.7.7:2": "ipv4:5.5",
    **{f"gossip:peer 7.{i}.0.1:1": f"ipv4:7.{i}" for i in range(6)},
    "gossip:kaspad": "kaspad", "gossip:inbound peer #3": "inbound", "inbound-version": "inbound",
    "gossip:odd": "other", "seed": "seed", "config": "config",
}
_SRC = st.sampled_from(sorted(_GROUPS))
_NOW = st.integers(0, 30).map(float)
_NETS = st.sampled_from([NET, TESTNET])


class BookMachine(RuleBasedStateMachine):
    """The book against a plain re-statement of its rules (module docstring of bridge.book)."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="book-model-")
        self.path = Path(self.dir) / "peers.sqlite"
        self.book = AddressBook(self.path, max_entries=_MAXN)
        self.model: dict[tuple[str, str, int], _M] = {}

    def teardown(self) -> None:
        self.book.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _net(self, net: str) -> dict[tuple[str, int], _M]:
        return {(h, p): m for (n, h, p), m in self.model.items() if n == net}

    def _make_room(self, net: str, group: str, rank: int, now: float) -> bool:
        rows = self._net(net)
        if rank == 3:
            return True
        if rank == 2:
            if sum(m.group == "seed" for m in rows.values()) < _SEEDS:
                return True
            cands = [k for k, m in rows.items() if m.group == "seed" and m.last_success is None]
            terrible = False
            victim_group = "seed"
        else:
            new = collections.Counter(m.group for m in rows.values()
                                      if source_rank(m.source) < 2 and m.last_success is None)
            own = new[group]
            quota = _NEW // 2 if group == "kaspad" else 1
            if own >= quota:
                victim_group = group
            elif sum(new.values()) < _NEW:
                return True
            else:
                top = min(new, key=lambda g: (-new[g], g))
                victim_group = top if top != group and new[top] > own + 1 else group
            terrible = victim_group == group
            cands = [k for k, m in rows.items() if m.group == victim_group
                     and m.last_success is None
                     and (not terrible or m.failures >= 3 or m.last_seen < now - 30 * 86400)]
        if not cands:
            return False
        del self.model[(net, *min(cands, key=lambda k: (-rows[k].failures, rows[k].last_seen,
                                                         k)))]
        return True

    def _model_learn(self, net: str, eps: list[tuple[str, int]], src: str, now: float,
                     addrv2: bool) -> set[tuple[str, int]]:
        new = set()
        rank = source_rank(src)
        group = _GROUPS[src]
        todo: dict[tuple[str, int], str] = {}
        for host, port in eps:
            h, p, kind = normalize_endpoint(host, port)
            if kind == "onion" or rank == 3 or h not in ("10.0.0.1", "2001:db8::1", "127.0.0.1"):
                todo.setdefault((h, p), kind)
        for (h, p), k in todo.items():
            m = self.model.get((net, h, p))
            if m is None:
                if self._make_room(net, group, rank, now):
                    self.model[(net, h, p)] = _M(k, src, now, now, addrv2=addrv2,
                                                 group=group)
                    new.add((h, p))
            else:
                m.last_seen = max(m.last_seen, now)
                m.addrv2 = m.addrv2 or addrv2
                if rank > source_rank(m.source):
                    m.source = src
                    if rank >= 2:
                        m.group = group
        return new

    @rule(net=_NETS, ep=_EP, src=_SRC, now=_NOW, addrv2=st.booleans())
    def learn(self, net: str, ep: tuple[str, int], src: str, now: float, addrv2: bool) -> None:
        got = self.book.learn(net, *ep, source=src, now=now, addrv2=addrv2)
        assert got == bool(self._model_learn(net, [ep], src, now, addrv2))

    @rule(net=_NETS, eps=st.lists(_EP, max_size=12), src=_SRC, now=_NOW, addrv2=st.booleans())
    def learn_many(self, net: str, eps: list[tuple[str, int]], src: str, now: float,
                   addrv2: bool) -> None:
        got = self.book.learn_many(net, eps, source=src, now=now, addrv2=addrv2)
        assert got == len(self._model_learn(net, eps, src, now, addrv2))

    @rule(net=_NETS, ep=_EP, now=_NOW, addrv2=st.sampled_from([None, True, False]))
    def success(self, net: str, ep: tuple[str, int], now: float, addrv2: bool | None) -> None:
        got = self.book.record_success(net, *ep, now=now, addrv2=addrv2)
        h, p, _ = normalize_endpoint(*ep)
        m = self.model.get((net, h, p))
        assert got == (m is not None)
        if m is None:
            return
        was_new = m.last_success is None
        m.failures, m.backoff_until, m.last_success = 0, 0.0, now
        m.last_seen = max(m.last_seen, now)
        if addrv2 is not None:
            m.addrv2 = addrv2
        if not was_new or source_rank(m.source) >= 2:
            return
        tried = {k: e for k, e in self._net(net).items()
                 if e.last_success is not None and source_rank(e.source) < 2}
        agroup = group_of(h)
        per = collections.Counter(group_of(k[0]) for k in tried)
        if per[agroup] > 1:
            victim_group = agroup
        elif len(tried) > _TRIED:
            victim_group = min(per, key=lambda g: (-per[g], g))
        else:
            return
        cands = [k for k in tried if group_of(k[0]) == victim_group and k != (h, p)]
        if cands:
            k = min(cands, key=lambda k: (-tried[k].failures, tried[k].last_success, k))
            del self.model[(net, *k)]

    @rule(net=_NETS, ep=_EP, now=_NOW, times=st.integers(1, 3))
    def failure(self, net: str, ep: tuple[str, int], now: float, times: int) -> None:
        for _ in range(times):
            got = self.book.record_failure(net, *ep, now=now)
            h, p, _ = normalize_endpoint(*ep)
            m = self.model.get((net, h, p))
            if m is None:
                assert got is None
            else:
                m.failures += 1
                m.backoff_until = now + backoff_delay(m.failures)
                assert got == (m.failures, backoff_delay(m.failures))

    @rule(net=_NETS, ep=_EP, flag=st.booleans())
    def mark_self(self, net: str, ep: tuple[str, int], flag: bool) -> None:
        got = self.book.mark_self(net, *ep, flag)
        h, p, _ = normalize_endpoint(*ep)
        m = self.model.get((net, h, p))
        assert got == (m is not None)
        if m is not None:
            m.is_self = flag

    @rule(net=_NETS, ep=_EP)
    def remove(self, net: str, ep: tuple[str, int]) -> None:
        h, p, _ = normalize_endpoint(*ep)
        assert self.book.remove(net, *ep) == (self.model.pop((net, h, p), None) is not None)

    @rule()
    def reopen(self) -> None:
        self.book.close()
        self.book = AddressBook(self.path, max_entries=_MAXN)

    @invariant()
    def agrees(self) -> None:
        for net in (NET, TESTNET):
            want = [PeerEntry(net, h, p, m.kind, m.source, m.first_seen,  # type: ignore[arg-type]
                              m.last_seen, m.last_success, m.failures, m.backoff_until,
                              m.addrv2, m.is_self)
                    for (n, h, p), m in sorted(self.model.items()) if n == net]
            assert self.book.entries(net) == want


TestBookModel = BookMachine.TestCase
TestBookModel.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)


# --------------------------------------------------------------------------------------------
# kill -9 during heavy writes

_CHILD = textwrap.dedent(
    """
    import sys
    from bridge.store.book import AddressBook

    def ip(j):
        return f"44.{(j >> 16) & 255}.{(j >> 8) & 255}.{j & 255}"

    b = AddressBook(sys.argv[1], max_entries=10**6)
    b._db.execute("PRAGMA wal_autocheckpoint=64")  # checkpoint often: kills land there too
    i = int(sys.argv[2])
    out = sys.stdout
    while True:
        if i % 7 == 0:
            n = 1 + i % 97
            b.learn_many("kaspa-mainnet", [(ip(j), 16111) for j in range(i, i + n)],
                         source="gossip:child", now=float(i))
        else:
            n = 1
            b.learn("kaspa-mainnet", ip(i), 16111, source="gossip:child", now=float(i))
            b.record_failure("kaspa-mainnet", ip(i - 1), 16111, now=float(i))
        out.write(f"{i} {i + n}\\n")
        out.flush()
        i += n
    """
)


def _ip(j: int) -> str:
    return f"44.{(j >> 16) & 255}.{(j >> 8) & 255}.{j & 255}"


def test_kill9_during_heavy_writes(db: Path) -> None:
    rng = random.Random(0xC0FFEE)
    committed: list[tuple[int, int]] = []
    start = 1
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_no in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(db), str(start)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                cwd=ROOT)
        assert proc.stdout is not None
        seen = b""
        if round_no == 0:  # a kill early on, possibly while the file is being created
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            for _ in range(rng.randint(20, 300)):
                line = proc.stdout.readline()
                if not line:
                    break
                seen += line
            time.sleep(rng.uniform(0.0, 0.02))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL, err.decode()
        # everything printed before the kill was committed (the last line may be cut off)
        for text in (seen + out).decode().split("\n")[:-1]:
            a, b_ = map(int, text.split())
            committed.append((a, b_))
        if committed:
            start = max(b_ for _, b_ in committed)
        with AddressBook(db, on_corrupt="raise") as b:
            assert b.integrity_check() == "ok"
            have = {e.host for e in b.entries(NET)}
        missing = [j for a, b_ in committed for j in range(a, b_) if _ip(j) not in have]
        assert not missing, f"round {round_no}: {len(missing)} committed ids lost"
    assert len(committed) > 200  # the child did get to write a lot


# -- errors after opening (disk full, read-only, I/O): the book is a best-effort cache ---------

def _fill_up(b: AddressBook) -> None:
    """Make the database 'full' (SQLITE_FULL) by capping its page count where it is."""
    (pages,) = b._db.execute("PRAGMA page_count").fetchone()
    b._db.execute(f"PRAGMA max_page_count = {pages}")


def _many(n: int, base: int = 0) -> list[tuple[str, int]]:
    return [(f"44.{(base + i) // 250}.{(base + i) % 250}.1", 16111) for i in range(n)]


def test_write_errors_are_logged_once_and_recover(db: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Regression (issue 6 E, disk full): a failed write used to raise sqlite3.OperationalError
    into the relay (the daemon crashed); now it returns the neutral value, logs one ERROR per
    failure period, and the first write after a quiet period logs the recovery."""
    caplog.set_level(logging.INFO, logger="bridge.store.book")
    with AddressBook(db, recover_after=0.2) as b:
        b.learn(NET, "10.0.0.1", 16111, source="config")
        _fill_up(b)
        for i in range(5):
            assert b.learn_many(NET, _many(300, 1000 * (i + 1)), source="config") == 0
        assert b.errors == 5 and "database or disk is full" in (b.last_error or "")
        # a small write that fits in the pages already there succeeds: within the quiet period
        # that is not a recovery (no error/recovered log pairs on a flapping disk)
        assert b.record_failure(NET, "10.0.0.1", 16111) == (1, 5.0)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and str(db) in errors[0].getMessage()
        assert "works again (" not in caplog.text
        # reads still work, and nothing of the failed writes was stored
        assert b.count(NET) == 1
        b._db.execute("PRAGMA max_page_count = 1073741823")
        time.sleep(0.25)
        assert b.learn_many(NET, _many(300, 10_000), source="config") == 300
        assert "works again (5 operations failed" in caplog.text
        assert b.count(NET) == 301 and b.failing == 0


def test_write_error_raise_mode(db: Path) -> None:
    with AddressBook(db, on_error="raise") as b:
        _fill_up(b)
        with pytest.raises(sqlite3.OperationalError, match="full"):
            b.learn_many(NET, _many(300), source="config")


class _CommitFails:
    """The book's connection, except that the next COMMIT fails like one on a full disk
    (SQLite then leaves the transaction open)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.fail_next = True

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.fail_next:
            self.fail_next = False
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)


def test_failed_commit_does_not_wedge_the_book(db: Path) -> None:
    """Regression: a failed COMMIT left the transaction open, so every later write failed
    with 'cannot start a transaction within a transaction', even with space back."""
    with AddressBook(db, recover_after=0) as b:
        real = b._db
        b._conn = _CommitFails(real)  # type: ignore[assignment]
        assert not b.learn(NET, "10.0.0.1", 16111, source="config")
        assert not real.in_transaction and b.errors == 1
        assert b.learn(NET, "10.0.0.2", 16111, source="config")
        assert [e.host for e in b.entries(NET)] == ["10.0.0.2"]  # the failed one rolled back
        b._conn = real


def test_selector_backs_off_in_memory_when_the_book_cannot_write(db: Path) -> None:
    """Regression: with the book unable to store a failure, BookSelector offered the failing
    peer again at once (a tight dial loop); it now keeps the backoff in memory."""
    with AddressBook(db) as b:
        sel = BookSelector(b, NET)
        t = Target("10.0.0.1", 16111)
        sel.add(t)
        assert sel.pick(100.0) == t
        _fill_up(b)
        b.learn_many(NET, _many(300), source="config")  # the book is now failing
        delay = sel.failure(t, 100.0)
        sel.release(t)
        assert delay > 0
        assert sel.pick(100.0) is None
        retry = sel.next_retry(100.0)
        assert retry is not None and retry == pytest.approx(100.0 + delay)
        assert sel.pick(100.0 + delay + 0.01) == t


# -- schema migration 1 -> 2 (issue G: source and address groups) ----------------------------

_V1_ROWS = [
    # network, host, port, kind, source, rank, first_seen, last_seen, last_success, failures,
    # backoff_until, addrv2, is_self
    (NET, "1.2.3.4", 16111, "ipv4", "gossip:peer 5.6.7.8:16111", 0, 1.0, 2.0, None, 2, 9.0, 0, 0),
    (NET, "10.0.0.7", 16111, "ipv4", "gossip:inbound peer #4", 0, 1.0, 2.0, None, 0, 0.0, 0, 0),
    (NET, ONION.host, 16511, "onion", "version:peer [2001:4860::1]:16111", 1, 3.0, 4.0, 4.0, 0,
     0.0, 1, 0),
    (NET, "2001:4860::8", 1, "ipv6", "seed", 2, 5.0, 5.0, None, 0, 0.0, 0, 1),
    (TESTNET, "9.9.9.9", 16211, "ipv4", "config", 3, 6.0, 6.0, 6.0, 0, 0.0, 0, 0),
    (TESTNET, "8.8.8.8", 16211, "ipv4", "gossip:kaspad", 0, 6.0, 7.0, None, 0, 0.0, 0, 0),
]


def _write_v1(path: Path) -> None:
    """A book as the previous version (schema 1) wrote it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    book_mod.MIGRATIONS[0](conn)
    conn.execute("UPDATE schema_version SET version = 1")
    conn.executemany("INSERT INTO peers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _V1_ROWS)
    conn.execute("COMMIT")
    conn.close()


def test_migrates_a_version_1_book_keeping_its_rows(db: Path) -> None:
    _write_v1(db)
    want = sorted(PeerEntry(*r[:5], *r[6:11], bool(r[11]), bool(r[12]))  # type: ignore[arg-type]
                  for r in _V1_ROWS)
    with AddressBook(db) as b:
        assert b._db.execute("SELECT version FROM schema_version").fetchone()[0] == 2
        assert sorted(b.entries(NET) + b.entries(TESTNET)) == want
        groups = dict(((str(h), int(p)), (str(sg), str(ag))) for h, p, sg, ag in b._db.execute(
            "SELECT host, port, source_group, addr_group FROM peers"))
        assert groups == {
            ("1.2.3.4", 16111): ("ipv4:5.6", "ipv4:1.2"),
            ("10.0.0.7", 16111): ("inbound", "ipv4:10.0"),
            (ONION.host, 16511): ("ipv6:20014860", "onion:" + ONION.host),
            ("2001:4860::8", 1): ("seed", "ipv6:20014860"),
            ("9.9.9.9", 16211): ("config", "ipv4:9.9"),
            ("8.8.8.8", 16211): ("kaspad", "ipv4:8.8"),
        }
        names = {str(r[0]) for r in b._db.execute("SELECT name FROM sqlite_master "
                                                  "WHERE type = 'index'")}
        assert {"peers_new", "peers_tried"} <= names and "peers_evict" not in names
        # and the migrated book works under the new rules
        assert b.learn(NET, "1.2.9.9", 1, source="gossip:peer 5.6.1.1:1", now=10)
        assert not b.learn(NET, "10.0.0.8", 1, source="gossip:peer 5.6.1.1:1", now=10)
    with AddressBook(db) as b:  # reopening does not migrate again
        assert len(b.entries(NET)) == 5
