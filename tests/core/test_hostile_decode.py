"""What a hostile message costs the bridge to decode (issue 10, defects 2, 3 and 6).

Sans-IO: the relay and the policy driven in memory. Every test bounds the cost of the input (CPU
with ``time.process_time``, Python allocations with ``tests.costs.python_memory``), not only the
error: a cheap input with an expensive effect fails. The bounds are generous for a loaded 2-core
machine; the figures measured are in docs/fuzzing.md ("Costs").
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from bridge.core import grpc, proto
from bridge.core.errors import Fault, PolicyViolation
from bridge.core.events import AddressesLearned, OnionsLearned
from bridge.core.onion import OnionAddress
from bridge.core.policy import (
    ConnectionPolicy,
    Direction,
    GossipState,
    OnionPeer,
    PolicySettings,
)
from bridge.core.relay import Relay, Side, new_upstream_connection
from tests.core.relay_harness import (
    READY,
    REQUEST_ADDRESSES,
    VERACK,
    Peer,
    addresses,
    ping,
    pump,
    version,
)
from tests.costs import MemoryUse, python_memory

MiB = 1 << 20
OWN = OnionPeer(OnionAddress.from_pubkey(bytes(range(32))), 16111)
OTHER = OnionAddress.from_pubkey(bytes(range(1, 33)))


@dataclass
class Cost:
    cpu: float = 0.0  # seconds
    memory: MemoryUse | None = None

    @property
    def peak(self) -> int:
        assert self.memory is not None
        return self.memory.peak

    def __str__(self) -> str:
        return f"{self.cpu * 1000:.1f} ms CPU, {self.peak / MiB:.2f} MiB peak"


@contextmanager
def cost() -> Iterator[Cost]:
    c = Cost()
    with python_memory() as mem:
        t0 = time.process_time()
        try:
            yield c
        finally:
            c.cpu = time.process_time() - t0
    c.memory = mem


@dataclass
class Learned:
    ips: list[tuple[str, int]]
    onions: list[OnionPeer]


    @classmethod
    def of(cls, events: Sequence[object]) -> Learned:
        """What the events hand to the address book."""
        learned = cls([], [])
        for ev in events:
            if isinstance(ev, AddressesLearned):
                learned.ips.extend(ev.endpoints)
            elif isinstance(ev, OnionsLearned):
                learned.onions.extend(ev.peers)
        return learned


def make(kaspad_side: Side = Side.DOWN, gossip: GossipState | None = None
         ) -> tuple[Relay, Peer, Peer, Peer, Peer]:
    policy = ConnectionPolicy(gossip or GossipState(own_onion=OWN), PolicySettings(),
                              remote_label="peer x")
    relay = Relay(policy, kaspad_side=kaspad_side, upstream_authority=b"x.onion:16111")
    relay.attach_upstream(new_upstream_connection(relay.settings))
    down, up = Peer(client=True), Peer(client=False)
    down.open()
    pump(relay, down, up)
    up.respond()
    pump(relay, down, up)
    kaspad, remote = (down, up) if kaspad_side is Side.DOWN else (up, down)
    return relay, down, up, kaspad, remote


def handshake(relay: Relay, down: Peer, up: Peer, kaspad: Peer, remote: Peer) -> None:
    kaspad.send(version())
    remote.send(version(services=proto.SERVICE_ADDRV2))
    pump(relay, down, up)
    for p in (kaspad, remote):
        p.send(VERACK)
        p.send(READY)
    pump(relay, down, up)
    assert relay.closed is None and relay.policy.handshake_done


def tiny_fields(size: int) -> bytes:
    """``size`` bytes of two-byte varint fields: what a decompression bomb inflates to, and the
    most fields per byte protobuf allows."""
    return proto.make_varint_field(15, 0).raw * (size // 2)


def closed_by_remote(relay: Relay, *words: str) -> None:
    assert relay.closed is not None, "the relay did not close"
    err = relay.closed.error
    assert err is not None and err.fault is Fault.REMOTE, relay.closed
    for w in words:
        assert w in relay.closed.reason, relay.closed.reason


# -- defect 2: decompression bombs in Version and Addresses ------------------------------------


def test_gzip_version_bomb_is_refused_while_inflating() -> None:
    """A 4 KB gzip'd first Version that inflates to 4 MiB of tiny fields: before, the bridge
    inflated all of it and built ~2 million fields (about 5 s of CPU, ~300 MiB). Now it never
    inflates past the Version cap (64 KiB) and closes that peer."""
    msg = proto.make_len_field(proto.VERSION, tiny_fields(4 * MiB - 16)).raw
    body = grpc.gzip_compress(msg)
    assert len(body) < 5000
    relay, down, up, kaspad, remote = make()
    remote.send_raw(grpc.frame(body, compressed=True))
    with cost() as c:
        pump(relay, down, up)
    closed_by_remote(relay)
    assert kaspad.payloads == []
    assert c.cpu < 0.25, c
    assert c.peak < 4 * MiB, c


def test_version_of_tiny_fields_within_the_cap_stops_at_the_field_cap() -> None:
    """Even within the 64 KiB cap, a Version of 32 000 tiny fields is refused after 64 of them,
    without building the others."""
    pol = ConnectionPolicy(GossipState(), PolicySettings(), remote_label="peer x")
    pol.classify(Direction.TO_KASPAD, proto.VERSION)
    msg = proto.make_len_field(proto.VERSION, tiny_fields(64 * 1024 - 16)).raw
    with cost() as c, pytest.raises(PolicyViolation, match="more than 64 fields") as exc:
        pol.rewrite(Direction.TO_KASPAD, msg)
    assert exc.value.fault is Fault.REMOTE
    assert c.peak < 512 * 1024, c
    assert c.cpu < 0.05, c


def test_gzip_addresses_bomb_is_refused_while_inflating_and_learns_nothing() -> None:
    """4 KB of gzip that inflates to 4 MiB of one repeated entry (380 000 addresses): refused at
    the Addresses cap while inflating; not one address reaches the book."""
    relay, down, up, kaspad, remote = make(gossip=GossipState(own_onion=OWN))
    handshake(relay, down, up, kaspad, remote)
    kaspad.send(REQUEST_ADDRESSES)
    pump(relay, down, up)
    entry = proto.NetAddress.from_ip(bytes([8, 8, 4, 4]), 16111)
    n = (4 * MiB) // len(proto.encode_addresses([entry]))
    body = grpc.gzip_compress(addresses([entry] * n))
    assert len(body) < 10_000
    remote.send_raw(grpc.frame(body, compressed=True))
    with cost() as c:
        learned = Learned.of(pump(relay, down, up))
    closed_by_remote(relay)
    assert learned.ips == [] and learned.onions == []
    assert not any(proto.payload_tag(p) == proto.ADDRESSES for p in kaspad.payloads)
    assert c.cpu < 0.25, c
    assert c.peak < 8 * MiB, c


# -- defect 3 (first half): the 2500 limit before anything is learned --------------------------


def _many(n: int) -> list[proto.NetAddress]:
    out = [proto.NetAddress.from_ip(bytes([1, 2, i >> 8 & 0xFF, i & 0xFF]), 16111)
           for i in range(n)]
    out[1::7] = [proto.NetAddress.from_onion(OnionAddress.from_pubkey(os.urandom(32)).host,
                                             16111) for _ in out[1::7]]
    return out


@pytest.mark.parametrize("n", [2501, 3000, 9000])
def test_over_limit_addresses_are_counted_before_anything_is_decoded_or_learned(n: int) -> None:
    """More than kaspad's 2500: refused from the tags alone; nothing reaches the book or the
    gossip state (before, every entry was handed to the book first)."""
    gossip = GossipState(own_onion=OWN)
    pol = ConnectionPolicy(gossip, PolicySettings(), remote_label="peer x")
    pol.remote.services = proto.SERVICE_ADDRV2
    msg = addresses(_many(n))
    with cost() as c, pytest.raises(PolicyViolation, match="addresses") as exc:
        pol.rewrite(Direction.TO_KASPAD, msg)
    assert exc.value.fault is Fault.REMOTE
    assert f"sent {n} addresses (kaspad's limit is 2500)" in str(exc.value)
    learned = Learned.of(pol.take_events())
    assert learned.ips == [] and learned.onions == [] and not gossip.onions
    assert c.peak < 2 * len(msg) + 256 * 1024, c  # no entry was built
    assert c.cpu < 0.1, c


def test_addresses_with_one_undecodable_entry_learn_nothing() -> None:
    """kaspad drops the whole message for one bad entry; the bridge learns nothing from it
    either (before, the good entries before it had been handed to the book)."""
    gossip = GossipState(own_onion=OWN)
    pol = ConnectionPolicy(gossip, PolicySettings(), remote_label="peer x")
    pol.remote.services = proto.SERVICE_ADDRV2
    bad = proto.NetAddress([proto.make_len_field(proto.NA_ONION, b"\xff" * 62)])
    with pytest.raises(PolicyViolation, match="undecodable"):
        pol.rewrite(Direction.TO_KASPAD, addresses([*_many(100), bad]))
    learned = Learned.of(pol.take_events())
    assert learned.ips == [] and learned.onions == [] and not gossip.onions


def test_2500_distinct_addresses_cost_a_few_ms() -> None:
    """The most an accepted Addresses can hold: 2500 distinct entries, one in seven an onion
    (about 20 KB gzip'd), from kaspad to an ADDRv2 remote."""
    gossip = GossipState(own_onion=OWN)
    pol = ConnectionPolicy(gossip, PolicySettings(), remote_label="peer x")
    msg = addresses(_many(2500))
    assert len(grpc.gzip_compress(msg)) < 32_000
    best = 1.0
    for _ in range(3):  # best of three: the machine is shared
        t0 = time.process_time()
        out = pol.rewrite(Direction.TO_REMOTE, msg)
        best = min(best, time.process_time() - t0)
    assert out is not None
    learned = Learned.of(pol.take_events())
    assert len(learned.ips) == 3 * len({e.ip for e in _many(2500) if e.ip})
    assert best < 0.05, f"{best * 1000:.1f} ms"


# -- defect 6: a second payload field (protobuf keeps the last member of a oneof) --------------


def _onion_addresses() -> bytes:
    return addresses([proto.NetAddress.from_onion(OTHER.host, 16111)])


SMUGGLED = {
    "ping-then-addresses": ping(7) + _onion_addresses(),
    "ping-then-version": ping(7) + version(),
    "block-then-addresses": proto.make_len_field(proto.BLOCK, os.urandom(40_000)).raw
    + _onion_addresses(),
    "ping-then-ping": ping(7) + ping(8),  # one type twice: merged by protobuf; refused too
    "ids-between": ping(7) + proto.make_varint_field(proto.REQUEST_ID, 3).raw
    + _onion_addresses(),
}


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("kaspad_side", [Side.DOWN, Side.UP])
@pytest.mark.parametrize("chunk", [None, 7])
@pytest.mark.parametrize("name", list(SMUGGLED))
def test_second_payload_field_never_reaches_kaspad(name: str, chunk: int | None,
                                                   kaspad_side: Side, compressed: bool) -> None:
    """Before, the relay classified such a message by its first payload (a Ping passes) and
    forwarded it; kaspad decoded the last one (an Addresses with an onion) and dropped the
    peer, and the bridge blamed kaspad. Now the remote is closed before the message's last
    bytes are let through, in any chunking."""
    relay, down, up, kaspad, remote = make(kaspad_side)
    handshake(relay, down, up, kaspad, remote)
    before = len(kaspad.payloads)
    remote.send(SMUGGLED[name], compressed=compressed)
    pump(relay, down, up, chunk=chunk)
    closed_by_remote(relay, "two payloads")
    assert kaspad.payloads[before:] == []


def test_second_payload_from_kaspad_is_kaspads_fault() -> None:
    relay, down, up, kaspad, remote = make()
    handshake(relay, down, up, kaspad, remote)
    smuggled = ping(1) + _onion_addresses()
    kaspad.send(smuggled)
    pump(relay, down, up)
    assert relay.closed is not None and relay.closed.error is not None
    assert relay.closed.error.fault is Fault.KASPAD
    assert smuggled not in remote.payloads


def test_honest_traffic_still_passes_byte_for_byte() -> None:
    relay, down, up, kaspad, remote = make()
    handshake(relay, down, up, kaspad, remote)
    msgs = [ping(5) + proto.make_varint_field(proto.REQUEST_ID, 9).raw,
            proto.make_len_field(proto.BLOCK, os.urandom(100_000)).raw,
            proto.make_len_field(proto.BLOCK, bytes(900_000)).raw]  # a zero-payload block
    for m in msgs:
        remote.send(m)
    pump(relay, down, up, chunk=5000)
    assert relay.closed is None
    assert kaspad.payloads[-3:] == msgs


# -- the inflation budget: pass-through messages are inflated to be scanned ---------------------


def test_stream_of_small_gzip_bombs_runs_out_of_budget() -> None:
    """Pings that are 600 bytes gzip'd and 512 KiB inflated (protobuf skips the unknown fields,
    so kaspad would answer each): the bridge inflates at most the burst plus 64 times what it
    received, then closes that peer."""
    relay, down, up, kaspad, remote = make()
    handshake(relay, down, up, kaspad, remote)
    payload = proto.make_varint_field(1, 1).raw + tiny_fields(MiB // 2)
    msg = proto.make_len_field(proto.PING, payload).raw
    body = grpc.gzip_compress(msg)
    sent = 0
    with cost() as c:
        for _ in range(64):
            remote.send_raw(grpc.frame(body, compressed=True))
            sent += len(body) + 5
            pump(relay, down, up)
            if relay.closed is not None:
                break
    closed_by_remote(relay, "compression bomb")
    budget = relay.policy.inflate_budgets[Direction.TO_KASPAD]
    assert budget.inflated <= grpc.INFLATE_BURST + grpc.INFLATE_RATIO * sent + MiB
    assert c.cpu < 1.0, c
    assert c.peak < 16 * MiB, c

