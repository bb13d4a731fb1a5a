"""The sans-IO relay driven by in-memory HTTP/2 peers: no sockets, no clocks."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core import grpc, proto
from bridge.core.onion import OnionAddress
from bridge.core.policy import ConnectionPolicy, GossipState, OnionPeer, PolicySettings
from bridge.core.relay import Relay, RelaySettings, Side, new_upstream_connection
from bridge.errors import Fault
from tests.core.relay_harness import (
    READY,
    REQUEST_ADDRESSES,
    VERACK,
    Peer,
    addresses,
    block,
    ping,
    pump,
    version,
)

OWN = OnionPeer(OnionAddress.from_pubkey(bytes(range(32))), 16111)
OTHER = OnionPeer(OnionAddress.from_pubkey(bytes(range(1, 33))), 16111)


def make(kaspad_side: Side = Side.DOWN, *, window: int = 512 * 1024,
         gossip: GossipState | None = None, max_message: int = 1 << 30,
         ) -> tuple[Relay, Peer, Peer, Peer, Peer]:
    gossip = gossip or GossipState(own_onion=OWN)
    policy = ConnectionPolicy(gossip, PolicySettings(), remote_label="peer x")
    relay = Relay(policy, kaspad_side=kaspad_side, upstream_authority=b"x.onion:16111",
                  settings=RelaySettings(window=window, max_message_bytes=max_message))
    relay.attach_upstream(new_upstream_connection(relay.settings))
    down, up = Peer(client=True), Peer(client=False)
    down.open()
    pump(relay, down, up)
    assert up.headers is not None
    up.respond()
    pump(relay, down, up)
    kaspad, remote = (down, up) if kaspad_side is Side.DOWN else (up, down)
    return relay, down, up, kaspad, remote


def handshake(relay: Relay, kaspad: Peer, remote: Peer, down: Peer, up: Peer, *,
              remote_services: int = proto.SERVICE_ADDRV2, kaspad_id: bytes | None = None,
              remote_id: bytes | None = None) -> None:
    kaspad.send(version(node_id=kaspad_id))
    remote.send(version(services=remote_services, node_id=remote_id))
    pump(relay, down, up)
    for p in (kaspad, remote):
        p.send(VERACK)
        p.send(READY)
    pump(relay, down, up)


def test_request_headers_are_filtered_and_authority_rewritten() -> None:
    relay, down, up, _, _ = make()
    h = dict(up.headers or [])
    assert h[b":authority"] == b"x.onion:16111"
    assert h[b":path"] == b"/protowire.P2P/MessageStream"
    assert h[b"grpc-encoding"] == b"gzip"
    assert b"x-secret" not in h  # only the gRPC headers kaspad sends are passed on
    resp = dict(down.headers or [])
    assert resp[b":status"] == b"200" and b"date" not in resp  # no clock fingerprint
    assert not relay.finished


@pytest.mark.parametrize("kaspad_side", [Side.DOWN, Side.UP])
def test_handshake_rewrites_only_version(kaspad_side: Side) -> None:
    relay, down, up, kaspad, remote = make(kaspad_side)
    kid, rid = os.urandom(16), os.urandom(16)
    addr = proto.NetAddress.from_ip(bytes([8, 8, 8, 8]), 16111)
    onion_addr = proto.NetAddress.from_onion(OTHER.address.host, 16111)
    kaspad.send(version(node_id=kid, address=addr))
    remote.send(version(node_id=rid, services=proto.SERVICE_ADDRV2, address=onion_addr))
    pump(relay, down, up)
    rv = proto.Version.decode(proto.Envelope.decode(remote.payloads[0]).payload)
    assert rv.addrv2 and rv.node_id == kid
    assert rv.address is None  # a clearnet IP next to an onion identity is a leak
    kv = proto.Version.decode(proto.Envelope.decode(kaspad.payloads[0]).payload)
    assert kv.node_id == rid and kv.address is None  # kaspad would drop an onion Version.address
    assert relay.policy.shared.onions.get(OTHER) is not None
    for p in (kaspad, remote):
        p.send(VERACK)
        p.send(READY)
    pump(relay, down, up)
    assert kaspad.payloads[1:] == [VERACK, READY]
    assert remote.payloads[1:] == [VERACK, READY]
    assert not relay.finished


def test_pass_through_keeps_compression_flag_and_bytes() -> None:
    relay, down, up, kaspad, remote = make()
    handshake(relay, kaspad, remote, down, up)
    msg = block(1000, request_id=7, response_id=9)
    kaspad.send(msg)
    pump(relay, down, up)
    assert remote.messages[-1] == (True, msg)  # still gzip, identical content, ids untouched
    remote.send(msg, compressed=False)
    pump(relay, down, up)
    assert kaspad.messages[-1] == (False, msg)


def test_large_message_streams_through_small_windows() -> None:
    relay, down, up, kaspad, remote = make(window=65535)
    handshake(relay, kaspad, remote, down, up)
    big = block(300_000, response_id=3)
    kaspad.send(big, compressed=False)
    pump(relay, down, up, chunk=7)
    assert remote.payloads[-1] == big


def test_one_byte_at_a_time_both_directions() -> None:
    relay, down, up, kaspad, remote = make()
    kaspad.send(version())
    remote.send(version(services=proto.SERVICE_ADDRV2))
    pump(relay, down, up, chunk=1)
    for p in (kaspad, remote):
        p.send(VERACK)
        p.send(READY)
    msgs = [block(3000, request_id=i + 1) for i in range(3)] + [ping(5)]
    for m in msgs:
        kaspad.send(m)
        remote.send(m, compressed=False)
    pump(relay, down, up, chunk=1)
    assert remote.payloads[1:] == [VERACK, READY, *msgs]
    assert kaspad.payloads[1:] == [VERACK, READY, *msgs]
    assert not relay.finished


@settings(max_examples=40, deadline=None)
@given(chunk=st.integers(1, 20_000), sizes=st.lists(st.integers(1, 70_000), max_size=6),
       compress=st.booleans())
def test_any_chunking_delivers_the_same_messages(chunk: int, sizes: list[int],
                                                 compress: bool) -> None:
    relay, down, up, kaspad, remote = make(window=65535)
    kaspad.send(version())
    remote.send(version())
    pump(relay, down, up, chunk=chunk)
    for p in (kaspad, remote):
        p.send(VERACK)
        p.send(READY)
    msgs = [block(n, request_id=i + 1) for i, n in enumerate(sizes)]
    for m in msgs:
        kaspad.send(m, compressed=compress)
    pump(relay, down, up, chunk=chunk)
    assert remote.payloads[1:] == [VERACK, READY, *msgs]
    assert relay.stats()["buffered"] == 0


def test_memory_bounded_when_receiver_stops_reading() -> None:
    window = 65535
    relay, down, up, kaspad, remote = make(window=window)
    handshake(relay, kaspad, remote, down, up)
    remote.auto_ack = False  # the remote stops consuming: its window closes
    for _ in range(20):
        kaspad.send(block(100_000), compressed=False)
    pump(relay, down, up)
    # The relay holds at most one receive window; the sender is blocked by flow control.
    assert relay.stats()["buffered"] <= window
    assert kaspad.pending, "the sender must be throttled, not the bridge's memory"
    remote.auto_ack = True
    for _ in range(200):
        remote.ack()
        kaspad.flush()
        pump(relay, down, up)
        if not kaspad.pending and len(remote.messages) >= 3 + 20:
            break
    assert len([m for m in remote.payloads if m[:1] == b"\x12"]) == 20


def test_unsolicited_and_second_addresses_are_dropped() -> None:
    relay, down, up, kaspad, remote = make()
    handshake(relay, kaspad, remote, down, up)
    good = [proto.NetAddress.from_ip(bytes([1, 2, 3, 4]), 16111)]
    remote.send(addresses(good))  # before kaspad asked: dropped
    pump(relay, down, up)
    assert all(p[:1] != b"\x0a" for p in kaspad.payloads)
    kaspad.send(REQUEST_ADDRESSES)
    pump(relay, down, up)
    remote.send(addresses([*good, proto.NetAddress.from_onion(OTHER.address.host, 1),
                           proto.NetAddress.from_ip(b"\x01\x02\x03", 5)]))
    remote.send(addresses(good))  # a second one would make kaspad disconnect
    pump(relay, down, up)
    got = [p for p in kaspad.payloads if p[:1] == b"\x0a"]
    assert len(got) == 1
    entries = proto.decode_addresses(proto.Envelope.decode(got[0]).payload)
    assert [e.ip for e in entries] == [bytes([1, 2, 3, 4])]
    assert not relay.finished


def test_addresses_to_addrv2_remote_get_own_onion_first() -> None:
    relay, down, up, kaspad, remote = make()
    handshake(relay, kaspad, remote, down, up)
    remote.send(REQUEST_ADDRESSES)
    pump(relay, down, up)
    kaspad.send(addresses([proto.NetAddress.from_ip(bytes([1, 2, 3, 4]), 16111)]))
    pump(relay, down, up)
    entries = proto.decode_addresses(proto.Envelope.decode(remote.payloads[-1]).payload)
    assert entries[0].ip == bytes([1, 2, 3, 4])
    assert entries[1].onion == OWN.address.host


def test_addresses_to_legacy_remote_have_no_onion() -> None:
    gossip = GossipState(own_onion=OWN)
    gossip.learn(OTHER, "test")
    relay, down, up, kaspad, remote = make(gossip=gossip)
    handshake(relay, kaspad, remote, down, up, remote_services=0)
    remote.send(REQUEST_ADDRESSES)
    pump(relay, down, up)
    kaspad.send(addresses([proto.NetAddress.from_ip(bytes([1, 2, 3, 4]), 16111)]))
    pump(relay, down, up)
    entries = proto.decode_addresses(proto.Envelope.decode(remote.payloads[-1]).payload)
    assert [e.onion for e in entries] == [None]


@pytest.mark.parametrize("garbage", [
    pytest.param(b"\x02\x00\x00\x00\x01\x00", id="bad-flag"),
    pytest.param(b"\x00\xff\xff\xff\xff", id="oversized-length"),
    pytest.param(grpc.frame(b"\xff\xff\xff"), id="undecodable-payload"),
    pytest.param(grpc.frame(b""), id="empty-payload"),
    pytest.param(grpc.frame(proto.make_len_field(99, b"").raw), id="unknown-type"),
    pytest.param(grpc.frame(proto.make_len_field(proto.VERSION, b"\x2a\x03abc").raw),
                 id="version-bad-id"),
    pytest.param(grpc.frame(b"\x1f\x8b garbage", compressed=True), id="bad-gzip"),
])
def test_hostile_remote_closes_only_with_reason(garbage: bytes) -> None:
    relay, down, up, kaspad, remote = make(max_message=1 << 20)
    remote.send_raw(garbage)
    pump(relay, down, up)
    assert relay.closed is not None and relay.closed.error is not None
    assert relay.closed.error.fault is Fault.REMOTE
    # kaspad (the HTTP/2 client here) gets a gRPC status, never the bad bytes.
    assert kaspad.payloads == []
    assert dict(kaspad.trailers or [])[b"grpc-status"] == b"14"


def test_too_many_addresses_closes() -> None:
    relay, down, up, kaspad, remote = make()
    handshake(relay, kaspad, remote, down, up)
    kaspad.send(REQUEST_ADDRESSES)
    pump(relay, down, up)
    many = [proto.NetAddress.from_ip(i.to_bytes(4, "big"), 16111) for i in range(3000)]
    remote.send(addresses(many))
    pump(relay, down, up)
    assert relay.closed is not None and "3000 addresses" in relay.closed.reason
    assert not any(p[:1] == b"\x0a" for p in kaspad.payloads)


def test_remote_that_is_our_own_kaspad_is_refused() -> None:
    relay, down, up, kaspad, remote = make()
    same = os.urandom(16)
    kaspad.send(version(node_id=same))
    pump(relay, down, up)
    remote.send(version(node_id=same, services=proto.SERVICE_ADDRV2))
    pump(relay, down, up)
    assert relay.closed is not None and "our own kaspad" in relay.closed.reason


def test_message_before_handshake_closes() -> None:
    relay, down, up, kaspad, remote = make()
    remote.send(ping(1))
    pump(relay, down, up)
    assert relay.closed is not None and relay.closed.error is not None
    assert "before the handshake" in str(relay.closed.error)
    assert kaspad.payloads == []


def test_bad_http2_from_remote() -> None:
    relay, *_ = make()
    relay.receive(Side.UP, b"\x00\x00\x04\x08\x00\x00\x00\x00\x00garbage-not-a-frame")
    assert relay.closed is not None and relay.closed.error is not None
    assert relay.closed.error.fault is Fault.REMOTE
    assert "HTTP/2" in str(relay.closed.error)


def test_remote_trailers_end_the_call_for_kaspad() -> None:
    relay, down, up, kaspad, remote = make()
    handshake(relay, kaspad, remote, down, up)
    assert up.sid is not None
    up.conn.send_headers(up.sid, [(b"grpc-status", b"0")], end_stream=True)
    pump(relay, down, up)
    assert dict(kaspad.trailers or [])[b"grpc-status"] == b"0"
    assert relay.finished


def test_refuse_answers_unavailable() -> None:
    gossip = GossipState()
    policy = ConnectionPolicy(gossip, PolicySettings())
    relay = Relay(policy, kaspad_side=Side.DOWN, upstream_authority=b"")
    kaspad = Peer(client=True)
    kaspad.open()
    relay.receive(Side.DOWN, kaspad.conn.data_to_send())
    relay.refuse("no upstream")
    kaspad.receive(relay.data_to_send(Side.DOWN))
    h = dict((kaspad.headers or []) + (kaspad.trailers or []))
    assert h[b"grpc-status"] == b"14"
    assert b"no upstream" in h[b"grpc-message"]


def test_bridge_refresh_waits_for_a_message_boundary_and_reply_is_kept() -> None:
    gossip = GossipState(own_onion=OWN)
    relay, down, up, kaspad, remote = make(gossip=gossip, window=65535)
    assert not relay.request_addresses()  # not before the handshake
    handshake(relay, kaspad, remote, down, up)
    big = block(200_000, request_id=9)
    kaspad.send(big, compressed=False)
    # deliver only part of the big message, then ask: the request must not cut into it
    sent = kaspad.conn.data_to_send()
    relay.receive(Side.DOWN, sent[:30_000])
    assert relay.request_addresses()
    assert relay.pipes[Side.DOWN].injections  # held back: a block is streaming through
    relay.receive(Side.DOWN, sent[30_000:])
    pump(relay, down, up)
    assert remote.payloads[-2:] == [big, REQUEST_ADDRESSES]
    other = OnionPeer(OnionAddress.from_pubkey(bytes(range(50, 82))), 16111)
    remote.send(addresses([proto.NetAddress.from_onion(other.address.host, 16111)]))
    pump(relay, down, up)
    assert other in gossip.onions  # harvested by the bridge
    assert all(p[:1] != b"\x0a" for p in kaspad.payloads)  # kaspad never sees the reply
    assert not relay.finished


def _goaways(data: bytes) -> list[int]:
    """Error codes of the GOAWAY frames in a server→client byte stream."""
    codes, i = [], 0
    while i + 9 <= len(data):
        n = int.from_bytes(data[i:i + 3], "big")
        if data[i + 3] == 0x7:
            codes.append(int.from_bytes(data[i + 13:i + 17], "big"))
        i += 9 + n
    return codes


def test_flow_control_violation_gets_one_goaway_flow_control_error() -> None:
    """A sender that ignores our window is closed with GOAWAY(FLOW_CONTROL_ERROR), the code h2
    chose, and not a second GOAWAY(PROTOCOL_ERROR) after it."""
    relay, down, up, kaspad, remote = make(window=65535)
    handshake(relay, kaspad, remote, down, up)
    down.receive(relay.data_to_send(Side.DOWN))
    # ignore the stream window: send 200 KiB at once, frame by frame, bypassing h2's checks
    down.conn.outbound_flow_control_window = 1 << 30
    down.conn.streams[down.sid].outbound_flow_control_window = 1 << 30  # type: ignore[index]
    down.send(block(200_000), compressed=False)
    relay.receive(Side.DOWN, down.conn.data_to_send())
    assert relay.closed is not None and "Flow control" in relay.closed.reason
    assert relay.closed.error is not None and relay.closed.error.fault is Fault.KASPAD
    assert _goaways(relay.data_to_send(Side.DOWN)) == [3]  # FLOW_CONTROL_ERROR, once


def test_oversized_frame_gets_goaway_frame_size_error() -> None:
    relay, down, up, kaspad, remote = make()
    handshake(relay, kaspad, remote, down, up)
    down.receive(relay.data_to_send(Side.DOWN))
    down.conn.max_outbound_frame_size = 1 << 20  # a peer ignoring our MAX_FRAME_SIZE
    down.send(block(100_000), compressed=False)
    relay.receive(Side.DOWN, down.conn.data_to_send())
    assert relay.closed is not None and "exceeds the maximum" in relay.closed.reason
    assert _goaways(relay.data_to_send(Side.DOWN)) == [6]  # FRAME_SIZE_ERROR
