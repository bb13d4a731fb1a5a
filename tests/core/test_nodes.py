"""Duplicate connections (issue F, item 3), without I/O: the node registry, the policy's claim of
the remote's node id, the relay's screening of a slot's upstream (drop and replace it before
kaspad sees a duplicate) and the selector's ``exclude``."""

from __future__ import annotations

import os

import h2.errors
import pytest

from bridge.core import proto
from bridge.core.errors import DuplicatePeer
from bridge.core.events import Dropped
from bridge.core.nodes import NodeRegistry
from bridge.core.onion import OnionAddress
from bridge.core.peers import PeerSelector, Target
from bridge.core.policy import ConnectionPolicy, Direction, GossipState, PolicySettings
from bridge.core.relay import Relay, RelaySettings, Side, new_upstream_connection
from tests.core.relay_harness import READY, VERACK, Peer, block, pump, version

ONION_A = OnionAddress.from_pubkey(bytes(range(1, 33)))
ONION_B = OnionAddress.from_pubkey(bytes(range(40, 72)))
A = Target(ONION_A.host, 16111)
B = Target(ONION_B.host, 16111)
C = Target("10.1.2.3", 16111)
X, Y = b"X" * 16, b"Y" * 16


# -- registry -----------------------------------------------------------------------------------


def test_registry_first_claim_wins_until_released() -> None:
    reg = NodeRegistry()
    first, second = object(), object()
    assert reg.claim(first, X, label="slot:1#1", target=A) is None
    holder = reg.claim(second, X, label="inbound#2", target=None)
    assert holder is not None and holder.label == "slot:1#1" and holder.target == A
    assert "slot:1#1 at " + str(A) == str(holder)
    assert reg.refused == 1 and len(reg) == 1
    assert reg.claim(first, X, label="slot:1#1", target=A) is None  # the holder again: fine
    assert reg.release(second) is None  # refused claims hold nothing
    assert reg.release(first) is not None and len(reg) == 0
    assert reg.claim(second, X, label="inbound#2") is None


def test_registry_one_id_per_owner() -> None:
    reg = NodeRegistry()
    owner = object()
    reg.claim(owner, X, label="a")
    reg.claim(owner, Y, label="a")
    assert reg.holder(X) is None and reg.holder(Y) is not None


def test_registry_busy_targets_follow_the_remembered_node_id() -> None:
    reg = NodeRegistry()
    slot, inbound = object(), object()
    reg.remember(B, X)  # X was seen at B some time ago (B and A are the same node)
    assert reg.busy_targets() == set()
    assert reg.claim(inbound, X, label="inbound#1") is None  # X connects inbound
    assert reg.busy_targets() == {B}
    assert reg.in_use(B) is not None and reg.in_use(A) is None
    # a slot sees X at A too: refused, and A is remembered as X
    assert reg.claim(slot, X, label="slot:1#2", target=A) is not None
    assert reg.busy_targets() == {A, B}
    reg.release(inbound)
    assert reg.busy_targets() == set()
    reg.remember(A, Y)  # A's node changed (a restart gives a new id)
    reg.claim(slot, X, label="slot:1#2", target=C)
    assert reg.busy_targets() == {B, C}
    assert reg.node_at(A) == Y


def test_registry_memory_is_bounded() -> None:
    reg = NodeRegistry(capacity=2)
    reg.remember(A, X)
    reg.remember(B, X)
    reg.remember(C, Y)
    assert reg.node_at(A) is None and reg.node_at(B) == X and reg.node_at(C) == Y
    reg.claim(object(), X, label="i")
    assert reg.busy_targets() == {B}


# -- policy -------------------------------------------------------------------------------------


def _remote_version(pol: ConnectionPolicy, node_id: bytes,
                    address: proto.NetAddress | None = None) -> None:
    assert pol.classify(Direction.TO_KASPAD, proto.VERSION).name == "REWRITE"
    pol.rewrite(Direction.TO_KASPAD, version(node_id=node_id, services=proto.SERVICE_ADDRV2,
                                             address=address))


def test_policy_refuses_a_node_id_connected_through_another_connection() -> None:
    shared = GossipState()
    inbound = ConnectionPolicy(shared, PolicySettings(), "inbound peer #1", conn_label="inbound#1")
    _remote_version(inbound, X)
    slot = ConnectionPolicy(shared, PolicySettings(), f"peer {A}", conn_label="slot:16200#2")
    slot.remote_target = A
    with pytest.raises(DuplicatePeer) as info:
        _remote_version(slot, X)
    assert info.value.node_id == X and "inbound#1" in info.value.holder
    assert "already connected to kaspad through inbound#1" in str(info.value)
    assert shared.nodes.busy_targets() == {A}  # the pool will not pick A while #1 lasts
    # another remote is fine; once #1 is gone, X may connect again
    other = ConnectionPolicy(shared, PolicySettings(), f"peer {C}", conn_label="slot:16200#3")
    _remote_version(other, Y)
    shared.nodes.release(inbound)
    slot.reset_remote()
    _remote_version(slot, X)
    assert shared.nodes.holder(X) is not None


def test_inbound_version_address_is_remembered_as_the_nodes_target() -> None:
    shared = GossipState()
    inbound = ConnectionPolicy(shared, PolicySettings(), "inbound peer #1", conn_label="inbound#1")
    _remote_version(inbound, X, proto.NetAddress.from_onion(ONION_B.host, 16111))
    assert shared.nodes.busy_targets() == {B}
    ip = ConnectionPolicy(shared, PolicySettings(), "inbound peer #2", conn_label="inbound#2")
    _remote_version(ip, Y, proto.NetAddress.from_ip(bytes([10, 1, 2, 3]), 16111))
    assert shared.nodes.busy_targets() == {B, C}


def test_own_kaspad_check_comes_first() -> None:
    shared = GossipState(kaspad_node_id=X)
    pol = ConnectionPolicy(shared, PolicySettings(), "peer")
    with pytest.raises(Exception, match="our own kaspad"):
        _remote_version(pol, X)
    assert len(shared.nodes) == 0


# -- selector -----------------------------------------------------------------------------------


def test_peer_selector_skips_excluded_targets_and_their_onion_on_other_ports() -> None:
    sel = PeerSelector([A, B, C])
    assert sel.pick(0.0, exclude={Target(ONION_A.host, 9999), B}) == C
    assert sel.pick(0.0, exclude={Target(ONION_A.host, 9999), B}) is None
    assert sel.pick(0.0) in (A, B)


# -- relay: screening a slot's upstream ----------------------------------------------------------


def _slot(shared: GossipState) -> tuple[Relay, Peer, Peer]:
    policy = ConnectionPolicy(shared, PolicySettings(), f"peer {A}", conn_label="slot:16200#9")
    policy.remote_target = A
    relay = Relay(policy, kaspad_side=Side.DOWN, upstream_authority=A.authority,
                  settings=RelaySettings(), screen=True)
    relay.attach_upstream(new_upstream_connection(relay.settings))
    kaspad, remote = Peer(client=True), Peer(client=False)
    kaspad.open()
    pump(relay, kaspad, remote)
    assert remote.headers is not None
    remote.respond()
    pump(relay, kaspad, remote)
    return relay, kaspad, remote


def test_slot_holds_the_response_until_the_remote_version_passed() -> None:
    relay, kaspad, remote = _slot(GossipState())
    assert kaspad.headers is None and not relay.response_started  # held
    remote.send(version(node_id=X, services=proto.SERVICE_ADDRV2))
    pump(relay, kaspad, remote)
    assert dict(kaspad.headers or [])[b":status"] == b"200" and relay.response_started
    assert len(kaspad.payloads) == 1  # the Version, right behind the HEADERS
    kaspad.send(version(node_id=Y))
    pump(relay, kaspad, remote)
    for p in (kaspad, remote):
        p.send(VERACK)
        p.send(READY)
    pump(relay, kaspad, remote)
    msg = block(1000, request_id=3)
    kaspad.send(msg)
    pump(relay, kaspad, remote)
    assert remote.payloads[-1] == msg and not relay.finished


def test_slot_drops_a_duplicate_upstream_and_relays_to_the_next_one() -> None:
    shared = GossipState()
    holder = ConnectionPolicy(shared, PolicySettings(), "inbound peer #1", conn_label="inbound#1")
    _remote_version(holder, X)  # X is connected to kaspad through the onion inbound
    relay, kaspad, dup = _slot(shared)
    early = version(node_id=Y)
    kaspad.send(early)  # (kaspad sends nothing before the response; held anyway)
    pump(relay, kaspad, dup)
    assert dup.payloads == []
    dup.send(version(node_id=X, services=proto.SERVICE_ADDRV2))
    drops = [e for e in pump(relay, kaspad, dup) if isinstance(e, Dropped)]
    assert len(drops) == 1
    dropped = drops[0]
    assert isinstance(dropped.error, DuplicatePeer)
    assert not relay.finished and not relay.has_upstream
    assert kaspad.headers is None and kaspad.payloads == []  # kaspad saw nothing of it
    dup.receive(dropped.goodbye)
    assert dup.reset == h2.errors.ErrorCodes.CANCEL
    assert dup.goaway == h2.errors.ErrorCodes.NO_ERROR  # polite: not a fault
    assert dup.payloads == []  # and kaspad's Version never reached it
    assert shared.nodes.busy_targets() == {A}
    # another upstream: the same request is opened on it
    relay.policy.remote_target = C
    relay.upstream_authority = C.authority
    relay.attach_upstream(new_upstream_connection(relay.settings))
    nxt = Peer(client=False)
    pump(relay, kaspad, nxt)
    assert dict(nxt.headers or [])[b":authority"] == C.authority
    nxt.respond()
    nxt.send(version(node_id=os.urandom(16), services=proto.SERVICE_ADDRV2))
    pump(relay, kaspad, nxt)
    # kaspad's early Version went to the new remote only once that remote passed
    assert len(nxt.payloads) == 1
    sent = proto.Version.decode(proto.Envelope.decode(nxt.payloads[0]).payload)
    assert sent.node_id == Y and sent.addrv2
    assert dict(kaspad.headers or [])[b":status"] == b"200"
    assert len(kaspad.payloads) == 1 and not relay.finished
    for p in (kaspad, nxt):
        p.send(VERACK)
        p.send(READY)
    pump(relay, kaspad, nxt)
    assert kaspad.payloads[1:] == [VERACK, READY] and nxt.payloads[1:] == [VERACK, READY]
    assert relay.policy.handshake_done and relay.upstreams_dropped == 1


def test_slot_without_a_replacement_answers_kaspad_unavailable() -> None:
    shared = GossipState()
    _remote_version(ConnectionPolicy(shared, PolicySettings(), "i"), X)
    relay, kaspad, dup = _slot(shared)
    dup.send(version(node_id=X, services=proto.SERVICE_ADDRV2))
    assert any(isinstance(e, Dropped) for e in pump(relay, kaspad, dup))
    relay.refuse("no upstream peer available")
    pump(relay, kaspad, dup)
    assert dict(kaspad.headers or [])[b"grpc-status"] == b"14"  # trailers-only UNAVAILABLE
    assert relay.closed is not None and relay.closed.error is None


def test_inbound_duplicate_is_closed_politely_without_naming_our_peer() -> None:
    shared = GossipState()
    slot = ConnectionPolicy(shared, PolicySettings(), f"peer {A}", conn_label="slot:16200#1")
    slot.remote_target = A
    _remote_version(slot, X)
    policy = ConnectionPolicy(shared, PolicySettings(), "inbound peer #2", conn_label="inbound#2")
    relay = Relay(policy, kaspad_side=Side.UP, upstream_authority=b"127.0.0.1:16111",
                  screen=True)  # gated: kaspad is dialed only once the Version passed
    remote, kaspad = Peer(client=True), Peer(client=False)
    remote.open()
    pump(relay, remote, kaspad)
    assert remote.headers is not None  # the relay answered the stream itself
    remote.send(version(node_id=X, services=proto.SERVICE_ADDRV2))
    pump(relay, remote, kaspad)
    assert relay.closed is not None and isinstance(relay.closed.error, DuplicatePeer)
    assert not relay.upstream_wanted and not relay.has_upstream  # kaspad never dialed
    trailers = dict(remote.trailers or [])
    assert trailers[b"grpc-status"] == b"14"
    assert b"slot:" not in trailers[b"grpc-message"] and A.host.encode() not in \
        trailers[b"grpc-message"]
    assert remote.goaway in (None, h2.errors.ErrorCodes.NO_ERROR)
    holder = shared.nodes.holder(X)
    assert holder is not None and holder.label == "slot:16200#1"


def test_slot_remote_ending_before_its_version_reaches_kaspad() -> None:
    relay, kaspad, remote = _slot(GossipState())
    assert remote.sid is not None
    remote.conn.send_headers(remote.sid, [(b"grpc-status", b"5"), (b"grpc-message", b"bye")],
                             end_stream=True)
    pump(relay, kaspad, remote)
    assert dict(kaspad.headers or [])[b":status"] == b"200"
    assert dict(kaspad.trailers or [])[b"grpc-status"] == b"5"
