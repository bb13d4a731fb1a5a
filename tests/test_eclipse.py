"""Issue G acceptance: the address book resists eclipse attacks (defect 3) and never learns or
dials non-public addresses from gossip (defect 7), with the cost of an attack bounded.

Only the book's long-standing API (learn_many, record_success, entries) is used here, so these
tests state what a user expects of any version of the book.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from bridge.core import proto
from bridge.core.events import AddressesLearned, OnionsLearned
from bridge.core.onion import OnionAddress
from bridge.core.peers import Target
from bridge.core.policy import ConnectionPolicy, Direction, GossipState, OnionPeer, PolicySettings
from bridge.net.pool import DialPolicy
from bridge.runtime.bridge import Bridge, BridgeOptions
from bridge.store.book import AddressBook
from tests.costs import python_memory

NET = "kaspa-mainnet"
DAY = 86400.0
T0 = 1_000_000.0  # the honest book was built then ...
ATTACK = T0 + 10 * DAY  # ... and is attacked ten days later (successes older than a week)
BATCH = 2500  # kaspad's (and the bridge's) limit for one Addresses message
HONEST_PEERS = [f"gossip:peer {10 + g}.{g}.0.1:16111" for g in range(8)]  # 8 honest upstreams


def _tried_hosts() -> list[str]:
    # 1000 previously connected peers, spread over /16s like a real network (5 per /16)
    return [f"{31 + i // 1000}.{(i // 5) % 200}.{i % 5}.1" for i in range(1000)]


def _build_full_book(b: AddressBook) -> tuple[set[str], set[str]]:
    """1000 tried entries (learned from kaspad, connected once), then a new table filled by
    kaspad and eight honest upstreams. Returns (tried hosts, honest untried hosts)."""
    tried = _tried_hosts()
    for h in tried:
        b.learn_many(NET, [(h, 16111)], source="gossip:kaspad", now=T0)
        b.record_success(NET, h, 16111, now=T0)
    b.learn_many(NET, [(f"60.{i // 200}.{i % 200}.1", 16111) for i in range(2000)],
                 source="gossip:kaspad", now=T0)
    for g, src in enumerate(HONEST_PEERS):
        b.learn_many(NET, [(f"{70 + g}.{i // 200}.{i % 200}.1", 16111) for i in range(400)],
                     source=src, now=T0)
    hosts = {e.host for e in b.entries(NET)}
    assert set(tried) <= hosts
    return set(tried), hosts - set(tried)


def _attacker_entries(rng: random.Random) -> list[tuple[str, int]]:
    # public addresses the attacker controls or invents, one full Addresses message
    return [(f"{100 + rng.randrange(100)}.{rng.randrange(256)}.{rng.randrange(256)}."
             f"{1 + rng.randrange(254)}", 16111) for _ in range(BATCH)]


ONION = OnionAddress.from_pubkey(b"\x66" * 32).host
ATTACKS: dict[str, Callable[[int], str]] = {
    # any number of remotes in one /16 (every slot upstream the attacker runs there)
    "one /16": lambda k: f"gossip:peer 66.77.{k % 256}.{k // 256 + 1}:16111",
    # any number of connections to our onion service
    "inbound": lambda k: f"gossip:inbound peer #{k + 1}",
    # one onion, dialed again and again (Version-advertised or gossiped)
    "one onion": lambda k: f"{'version' if k % 2 else 'gossip'}:peer {ONION}:{16111 + k % 7}",
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_flood_from_one_group_keeps_the_book(tmp_path: Path, attack: str) -> None:
    """Defect 3: an attacker sending as many 2500-entry Addresses as it likes, from as many
    connections as it likes within one group, keeps every previously connected entry and takes
    at most a small share of the rest of the book; each message is cheap to process."""
    source = ATTACKS[attack]
    rng = random.Random(attack)
    with AddressBook(tmp_path / "peers.sqlite") as b:
        tried, honest = _build_full_book(b)
        assert len(b.entries(NET)) >= 4000  # a full book (the new table is at its bound)
        timings: list[float] = []
        peak = 0
        for k in range(40):  # 100 000 addresses
            batch = _attacker_entries(rng)
            if k % 10 == 0:  # tracemalloc slows Python down: memory and time measured apart
                with python_memory() as mem:
                    b.learn_many(NET, batch, source=source(k), now=ATTACK + k)
                peak = max(peak, mem.peak)
                continue
            t = time.perf_counter()
            b.learn_many(NET, batch, source=source(k), now=ATTACK + k)
            timings.append(time.perf_counter() - t)
        entries = b.entries(NET)
        hosts = {e.host for e in entries}
        kept_tried = len(tried & hosts)
        kept_honest = len(honest & hosts)
        foreign = len(hosts - tried - honest)
        print(f"\n{attack}: tried kept {kept_tried}/1000, honest untried kept "
              f"{kept_honest}/{len(honest)}, attacker entries {foreign}; learn_many of "
              f"{BATCH}: median {sorted(timings)[len(timings) // 2] * 1000:.1f} ms, max "
              f"{max(timings) * 1000:.1f} ms; Python peak {peak / 1e6:.2f} MB")
        assert kept_tried == 1000  # the acceptance threshold is 90 %: none may go
        # what others told us keeps all but a bounded share of the book (1/16 of new + slack)
        assert foreign <= 4096 // 16
        assert kept_honest >= len(honest) - 4096 // 16
        # wall clock on a shared, loaded box: a generous bound on the median (~0.1-0.2 s seen);
        # the old book took ~9 s for one oversized message
        assert sorted(timings)[len(timings) // 2] < 1.0
        assert peak < 16 * 1024 * 1024
        # and the book stays bounded, on disk too (the -wal is truncated to 4 MiB)
        assert len(entries) <= 4096 + 1024
        disk = sum(f.stat().st_size for f in tmp_path.glob("peers.sqlite*"))
        print(f"{attack}: {len(entries)} entries, {disk / 1e6:.1f} MB on disk")
        assert disk < 16 * 1024 * 1024


def test_flood_cannot_push_out_honest_new_entries_of_a_half_full_book(tmp_path: Path) -> None:
    """Below the bound nothing honest is evicted; the attacker's group is capped on its own."""
    with AddressBook(tmp_path / "peers.sqlite") as b:
        honest = [(f"{70 + g}.{i}.0.1", 16111) for g in range(4) for i in range(100)]
        for g in range(4):
            b.learn_many(NET, honest[g * 100:(g + 1) * 100], source=HONEST_PEERS[g], now=T0)
        rng = random.Random(5)
        for k in range(10):
            b.learn_many(NET, _attacker_entries(rng), source=ATTACKS["one /16"](k),
                         now=ATTACK + k)
        hosts = {e.host for e in b.entries(NET)}
        assert {h for h, _ in honest} <= hosts
        assert len(hosts) - len(honest) <= 4096 // 16


def test_gossip_state_flood_keeps_what_others_told_us() -> None:
    """Defect 3 for the onions the bridge gossips onward: 4000 onions from 16 honest upstreams,
    then 40 messages of 2500 onions from one /16 (and from inbound connections): the honest
    onions lose at most a quota's worth, the attacker holds at most 1/16, cheaply."""
    g = GossipState()
    honest = [OnionPeer(OnionAddress.from_pubkey(i.to_bytes(32, "big")), 16111)
              for i in range(4000)]
    for i, p in enumerate(honest):
        g.learn(p, f"gossip:peer 20.{i % 16}.0.1:16111")
    assert len(g.onions) == 4000
    rng = random.Random(1)
    with python_memory() as mem:
        for k in range(40):
            src = (f"gossip:peer 66.77.{k}.1:16111" if k % 2 else f"gossip:inbound peer #{k}")
            for _ in range(2500):
                g.learn(OnionPeer(OnionAddress.from_pubkey(rng.randbytes(32)), 16111), src)
    kept = sum(p in g.onions for p in honest)
    assert len(g.onions) <= 4096
    assert kept >= 4000 - 2 * 256
    assert len(g.onions) - kept <= 2 * 256
    assert mem.kept < 2 * 1024 * 1024  # bounded: what it keeps is the bounded set


# -- defect 7: non-public addresses, through the bridge's own hooks --------------------------

PRIVATE = ["127.0.0.1", "10.1.2.3", "192.168.1.10", "172.16.0.5", "100.64.0.1", "169.254.1.1",
           "fd00::1", "fe80::1", "::1", "0.1.2.3", "198.18.0.1", "192.0.2.7", "2001:db8::9",
           "::ffff:10.0.0.1", "2002:a00:1::1", "fec0::1", "64:ff9b::a00:1"]
PUBLIC = ["8.8.4.4", "1.1.1.1", "2606:4700::1111"]


def _v1_book_with_gossiped_private(path: Path) -> None:
    """A book written by the previous version, which stored gossiped private addresses."""
    with AddressBook(path) as b:
        b.learn_many(NET, [("45.1.1.1", 16111)], source="config", now=T0)
    conn = sqlite3.connect(path)
    with conn:
        for h in ("10.9.9.9", "192.168.7.7"):
            conn.execute(
                "INSERT INTO peers (network, host, port, kind, source, source_rank, "
                "first_seen, last_seen) VALUES (?, ?, 16111, 'ipv4', 'gossip:peer 1.2.3.4:16111',"
                " 0, ?, ?)", (NET, h, T0, T0))
    conn.close()


async def test_hybrid_allow_direct_never_learns_or_dials_private_gossip(tmp_path: Path) -> None:
    """Defect 7: in hybrid mode with allow_direct, a remote's Addresses (the policy's
    AddressesLearned event, handed to Bridge.learned) with loopback/private entries puts none
    of them in the book, and the bridge's selector never offers one; the operator's configured
    private peer stays usable."""
    path = tmp_path / "data" / "peers.sqlite"
    path.parent.mkdir()
    _v1_book_with_gossiped_private(path)
    opts = BridgeOptions(kaspad_p2p=("127.0.0.1", 1), candidates=[Target("192.168.50.5", 16111)],
                         dial=DialPolicy(proxy=None, allow_direct=True, ip_via_tor=False),
                         book_path=path, onlynet=frozenset({"onion", "ipv4", "ipv6"}))
    bridge = Bridge(opts)
    assert bridge.book is not None
    gossip = tuple((h, 16111) for h in PRIVATE + PUBLIC)
    bridge.learned(AddressesLearned(gossip, "gossip:peer 5.6.7.8:16111"))
    bridge.learned(AddressesLearned(gossip, "gossip:kaspad"))
    bridge.learned(AddressesLearned(gossip, "gossip:inbound peer #3"))
    stored = {e.host for e in bridge.book.entries(NET)}
    assert stored >= {"8.8.4.4", "1.1.1.1", "2606:4700::1111", "192.168.50.5"}
    learned_private = stored & {str(h) for h in PRIVATE} - {"10.9.9.9", "192.168.7.7"}
    assert not learned_private
    picked: set[str] = set()
    now = trio.current_time()
    while (t := bridge.selector.pick(now)) is not None:
        picked.add(t.host)
    assert "10.9.9.9" not in picked and "192.168.7.7" not in picked  # stored by the old version
    assert picked <= {"8.8.4.4", "1.1.1.1", "2606:4700::1111", "192.168.50.5", "45.1.1.1"}
    assert "192.168.50.5" in picked  # configured: the operator's choice
    bridge.book.close()


async def test_bridge_stores_the_onions_of_one_message_in_one_transaction(
        tmp_path: Path) -> None:
    """2500 onions gossiped in one Addresses message (the policy's one OnionsLearned event,
    handed to Bridge.learned) cost one book transaction, not 2500 (~1 s of event-loop stall
    on a loaded box)."""
    path = tmp_path / "data" / "peers.sqlite"
    opts = BridgeOptions(kaspad_p2p=("127.0.0.1", 1), candidates=[], book_path=path,
                         onlynet=frozenset({"onion"}))
    bridge = Bridge(opts)
    book = bridge.book
    assert book is not None
    calls = {"learn": 0, "learn_many": 0}
    learn, learn_many = book.learn, book.learn_many

    def count_learn(*a: Any, **kw: Any) -> bool:
        calls["learn"] += 1
        return learn(*a, **kw)

    def count_learn_many(*a: Any, **kw: Any) -> int:
        calls["learn_many"] += 1
        return learn_many(*a, **kw)

    book.learn = count_learn  # type: ignore[method-assign]
    book.learn_many = count_learn_many  # type: ignore[method-assign]
    rng = random.Random(7)
    onions = [OnionPeer(OnionAddress.from_pubkey(rng.randbytes(32)), 16111)
              for _ in range(BATCH)]
    pol = ConnectionPolicy(bridge.gossip, PolicySettings(), remote_label="peer 5.6.7.8:16111")
    pol.remote.services = proto.SERVICE_ADDRV2
    message = proto.make_len_field(proto.ADDRESSES, proto.encode_addresses(
        [proto.NetAddress.from_onion(p.address.host, p.port) for p in onions])).raw
    t = time.perf_counter()
    pol.rewrite(Direction.TO_KASPAD, message)
    for event in pol.take_events():
        if isinstance(event, OnionsLearned):
            bridge.learned(event)
    await trio.testing.wait_all_tasks_blocked()
    took = time.perf_counter() - t
    print(f"\n2500 gossiped onions stored in {took * 1000:.0f} ms, {calls}")
    assert calls == {"learn": 0, "learn_many": 1}
    stored = {e.host for e in book.entries(NET)}
    assert len(stored) == 4096 * 3 // 4 // 16  # the source group's quota of the new table
    book.close()


async def test_running_bridge_writes_learned_addresses_off_the_event_loop(
        tmp_path: Path) -> None:
    """A running bridge hands gossiped addresses to a writer thread: storing a 2500-entry
    Addresses message (~0.1-0.3 s of book work on this box) must not stall every relay and
    /health. The hook returns at once; the batch lands in the book from another thread."""
    import threading

    from tests.costs import StallMeter

    path = tmp_path / "data" / "peers.sqlite"
    opts = BridgeOptions(kaspad_p2p=("127.0.0.1", 1), candidates=[], book_path=path,
                         slot_ports=[0], inbound=None, onlynet=frozenset({"onion"}))
    # (onion-only: the IPs are stored, not dialed, so the pool does not pick among them; a
    # pick over a full book costs ~25-100 ms of its own on this box, see the closing note)
    bridge = Bridge(opts)
    book = bridge.book
    assert book is not None
    threads: list[bool] = []
    learn_many = book.learn_many

    def spy(*a: Any, **kw: Any) -> int:
        threads.append(threading.current_thread() is threading.main_thread())
        return learn_many(*a, **kw)

    book.learn_many = spy  # type: ignore[method-assign]
    rng = random.Random(11)
    batches = [[(f"{rng.randrange(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.1", 16111)
                for _ in range(BATCH)] for _ in range(4)]
    meter = StallMeter()
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.run)
        with meter.installed():
            for k, batch in enumerate(batches):
                bridge.learned(AddressesLearned(tuple(batch), f"gossip:peer 5.{k}.7.8:16111"))
            with trio.fail_after(60):
                while bridge.book_stats.batches < len(batches):
                    await trio.sleep(0.01)
        stored = len(book.entries(NET))
        nursery.cancel_scope.cancel()
    print(f"\n{len(batches)} x {BATCH} gossiped addresses stored ({stored} in the book); "
          f"{meter}")
    assert threads and not any(threads), "learn_many ran on the trio thread"
    assert stored >= 4 * 192 * 3 // 4  # (each source's quota, roughly)
    assert meter.longest < 0.25, str(meter)  # (wall time: generous for a loaded box)
