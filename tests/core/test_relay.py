"""The sans-IO relay driven by in-memory HTTP/2 peers: no sockets, no clocks."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core import grpc, proto
from bridge.core.errors import Fault
from bridge.core.events import (
    AddressesLearned,
    Closed,
    HandshakeSeen,
    Note,
    OnionsLearned,
    RelayEvent,
)
from bridge.core.onion import OnionAddress
from bridge.core.policy import ConnectionPolicy, GossipState, OnionPeer, PolicySettings
from bridge.core.relay import Relay, RelaySettings, Side, new_upstream_connection
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
from tests.costs import MemoryUse, python_memory

OWN = OnionPeer(OnionAddress.from_pubkey(bytes(range(32))), 16111)
OTHER = OnionPeer(OnionAddress.from_pubkey(bytes(range(1, 33))), 16111)


def make(kaspad_side: Side = Side.DOWN, *, window: int = 512 * 1024,
         gossip: GossipState | None = None, max_message: int = 1 << 30,
         budget: object = None) -> tuple[Relay, Peer, Peer, Peer, Peer]:
    gossip = gossip or GossipState(own_onion=OWN)
    policy = ConnectionPolicy(gossip, PolicySettings(), remote_label="peer x")
    extra = {} if budget is None else {"budget": budget}
    relay = Relay(policy, kaspad_side=kaspad_side, upstream_authority=b"x.onion:16111",
                  settings=RelaySettings(window=window, max_message_bytes=max_message,
                                         **extra))  # type: ignore[arg-type]
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
    assert relay.leg(Side.DOWN).pipe.injections  # held back: a block is streaming through
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


# -- the per-connection budget (issue 10: control-frame floods, CONTINUATION) -------------------
#
# Each flood below comes from one side as fast as it can, and that side never reads what the
# relay sends it (nothing is taken from ``relay.data_to_send``). On be2d1a4 every reply (PING
# and SETTINGS ACKs) piled up in h2's outbound queue, one byte per byte received, and nothing
# ever closed the connection.

ENHANCE_YOUR_CALM = 0xB
_FLOOD_BYTES = 512 * 1024  # sent by the hostile side in each flood test (2x the bound)
_READ = 64 * 1024  # what the shell reads at a time


def _frames(one: bytes, size: int) -> bytes:
    return one * (size // len(one))


#: one frame of each flood kind, for the stream id given
FLOODS: dict[str, Callable[[int], bytes]] = {
    "ping": lambda sid: PingFrame(0, b"12345678").serialize(),
    "settings": lambda sid: SettingsFrame(0).serialize(),
    "empty-data": lambda sid: DataFrame(sid, b"").serialize(),
    "priority": lambda sid: PriorityFrame(sid, depends_on=0, stream_weight=15).serialize(),
    "window-update": lambda sid: WindowUpdateFrame(0, window_increment=1).serialize(),
    "padded-data": lambda sid: DataFrame(sid, b"", flags=["PADDED"], pad_length=0).serialize(),
    # RST_STREAM for a stream that was never opened: h2 accepts it without a word
    "rst-stream": lambda sid: RstStreamFrame(sid + 2, error_code=8).serialize(),
}


def test_rst_stream_flood_on_ever_new_stream_ids_is_closed() -> None:
    """Rapid-reset style: RST_STREAM for ever new (never opened) stream ids, which h2 takes
    without complaint, each a frame without payload."""
    relay, down, up, kaspad, remote = make()
    handshake(relay, kaspad, remote, down, up)
    frames = b"".join(RstStreamFrame(sid, error_code=8).serialize()
                      for sid in range(3, 2 * 30_000, 2))
    mem = _flood(relay, Side.DOWN, frames, len(frames))
    assert relay.closed is not None and relay.closed.error is not None
    assert relay.closed.error.fault is Fault.KASPAD and "RST_STREAM" in str(relay.closed.error)
    assert mem.peak < 256 * 1024


def _flood(relay: Relay, side: Side, chunk: bytes, total: int) -> MemoryUse:
    """Feed ``total`` bytes of ``chunk`` (whole frames) repeated, ``_READ`` bytes at a time; the
    relay's output to ``side`` is never read (the peer does not read). Returns the Python
    memory it cost."""
    with python_memory() as mem:
        sent = pos = 0
        while sent < total and not relay.finished:
            piece = chunk[pos:pos + _READ]  # ``chunk`` over and over, in reads of _READ
            relay.receive(side, piece)
            sent += len(piece)
            pos = (pos + len(piece)) % len(chunk)
    return mem


@pytest.mark.parametrize("kind", sorted(FLOODS))
@pytest.mark.parametrize("kaspad_side", [Side.DOWN, Side.UP])
def test_control_frame_flood_from_remote_is_closed_with_bounded_memory(
        kind: str, kaspad_side: Side) -> None:
    relay, down, up, kaspad, remote = make(kaspad_side)
    handshake(relay, kaspad, remote, down, up)
    side = Side.UP if kaspad_side is Side.DOWN else Side.DOWN
    chunk = _frames(FLOODS[kind](relay.stream_id(side) or 1), _READ)
    mem = _flood(relay, side, chunk, _FLOOD_BYTES)
    assert relay.closed is not None, f"{kind} flood of {_FLOOD_BYTES} bytes was not stopped"
    err = relay.closed.error
    assert err is not None and err.fault is Fault.REMOTE, relay.closed
    assert "without payload" in str(err)
    assert _goaways(relay.data_to_send(side))[-1:] == [ENHANCE_YOUR_CALM]
    # kaspad is told politely (UNAVAILABLE trailers or a GOAWAY NO_ERROR), never blamed
    assert ENHANCE_YOUR_CALM not in _goaways(relay.data_to_send(kaspad_side))
    assert mem.peak < 256 * 1024, f"{kind} flood cost {mem.peak} bytes"


def test_ping_flood_from_kaspad_blames_kaspad() -> None:
    relay, down, up, kaspad, remote = make()
    handshake(relay, kaspad, remote, down, up)
    mem = _flood(relay, Side.DOWN, _frames(FLOODS["ping"](0), _READ), _FLOOD_BYTES)
    assert relay.closed is not None and relay.closed.error is not None
    assert relay.closed.error.fault is Fault.KASPAD
    assert _goaways(relay.data_to_send(Side.DOWN))[-1:] == [ENHANCE_YOUR_CALM]
    assert mem.peak < 256 * 1024


def _idle_inbound() -> Relay:
    """An onion inbound connection before its request: only the Tor peer's side exists."""
    policy = ConnectionPolicy(GossipState(own_onion=OWN), PolicySettings(),
                              remote_label="inbound peer #1")
    relay = Relay(policy, kaspad_side=Side.UP, upstream_authority=b"127.0.0.1:16111")
    client = Peer(client=True)
    relay.receive(Side.DOWN, client.conn.data_to_send())  # preface + SETTINGS, nothing else
    assert not relay.finished
    return relay


@pytest.mark.parametrize("kind", ["ping", "settings", "window-update"])
def test_flood_on_idle_inbound_before_its_request(kind: str) -> None:
    relay = _idle_inbound()
    mem = _flood(relay, Side.DOWN, _frames(FLOODS[kind](0), _READ), _FLOOD_BYTES)
    assert relay.closed is not None and relay.closed.error is not None
    assert relay.closed.error.fault is Fault.REMOTE
    assert _goaways(relay.data_to_send(Side.DOWN))[-1:] == [ENHANCE_YOUR_CALM]
    assert mem.peak < 256 * 1024


def test_h2_outbound_queue_counts_as_buffered() -> None:
    """The status "buffered" figure includes h2's own queue (here: PING ACKs nobody read)."""
    relay, down, up, kaspad, remote = make()
    handshake(relay, kaspad, remote, down, up)
    pings = _frames(FLOODS["ping"](0), 50 * 17)
    relay.receive(Side.UP, pings)
    assert not relay.finished  # 50 PINGs: within the budget
    assert relay.unsent(Side.UP) >= len(pings)  # 50 ACKs, the same size, wait for the remote
    assert relay.stats()["buffered"] >= len(pings)
    relay.data_to_send(Side.UP)
    assert relay.stats()["buffered"] == 0


def test_budget_refills_with_relayed_payload_and_time() -> None:
    """Honest use never runs out: PINGs paid for by payload relayed, and by time passing."""
    from bridge.core.budget import BudgetSettings

    budget = BudgetSettings(burst=50, earn_bytes=1024, per_second=10.0)
    relay, down, up, kaspad, remote = make(budget=budget)
    handshake(relay, kaspad, remote, down, up)
    ping_frame = PingFrame(0, b"12345678").serialize()
    relay.tick(0.0)
    for i in range(40):  # 40 x (30 PINGs + 32 KiB relayed): 1200 PINGs, 32 tokens earned each
        remote.send(block(32 * 1024, request_id=i + 1), compressed=False)
        pump(relay, down, up)
        relay.receive(Side.UP, ping_frame * 30)
        relay.data_to_send(Side.UP)  # the remote reads its ACKs
    assert not relay.finished, relay.closed
    for t in range(1, 200):  # 200 s, 5 PINGs a second: the time refill (10/s) covers them
        relay.tick(float(t))
        relay.receive(Side.UP, ping_frame * 5)
        relay.data_to_send(Side.UP)
    assert not relay.finished, relay.closed
    relay.receive(Side.UP, ping_frame * 60)  # more than the whole bucket at once
    assert relay.closed is not None and relay.closed.error is not None


def test_replies_the_peer_never_reads_close_it() -> None:
    """Within the token budget (raised here), a peer that keeps asking for PING ACKs while
    none of our output to it gets written is closed (nghttp2's retained-ACK limit)."""
    from bridge.core.budget import BudgetSettings

    relay, down, up, kaspad, remote = make(budget=BudgetSettings(burst=100_000))
    handshake(relay, kaspad, remote, down, up)
    ping_frame = PingFrame(0, b"12345678").serialize()
    stuck = relay.data_to_send(Side.UP)
    relay.writing(Side.UP, len(stuck) or 1)  # the shell's write to the remote is blocked
    for _ in range(20):  # 1200 PINGs
        relay.receive(Side.UP, ping_frame * 60)
        relay.writing(Side.UP, len(relay.data_to_send(Side.UP)))
    assert relay.closed is not None and relay.closed.error is not None
    assert "does not read" in str(relay.closed.error)
    assert relay.closed.error.fault is Fault.REMOTE
    # ... but a peer that reads what it asked for is not closed for the same PINGs
    relay2, down2, up2, kaspad2, remote2 = make(budget=BudgetSettings(burst=100_000))
    handshake(relay2, kaspad2, remote2, down2, up2)
    for _ in range(50):
        relay2.receive(Side.UP, ping_frame * 60)
        out = relay2.data_to_send(Side.UP)
        relay2.writing(Side.UP, len(out))
        relay2.wrote(Side.UP, len(out))
    assert not relay2.finished, relay2.closed


def _open_block(relay: Relay, side: Side) -> tuple[bytes, int]:
    """A HEADERS frame without END_HEADERS from ``side``: the idle inbound's request, or a
    slot remote's trailers."""
    sid = relay.stream_id(side) or 1
    frame = HeadersFrame(sid, b"\x83\x86")  # :method POST, :scheme http: HPACK indexed
    return frame.serialize(), sid


def _continuation(sid: int, size: int) -> bytes:
    return ContinuationFrame(sid, b"\x00" * size).serialize()


@pytest.mark.parametrize("where", ["idle-inbound", "slot-remote"])
def test_continuation_flood_is_bounded_far_below_h2s_backlog(where: str) -> None:
    """h2 keeps up to 64 CONTINUATIONs (about 2 MiB with its copies) of an unfinished block;
    the relay allows 16 KiB and 8 CONTINUATIONs."""
    if where == "idle-inbound":
        relay, side = _idle_inbound(), Side.DOWN
    else:
        relay, *_ = make()
        side = Side.UP
    head, sid = _open_block(relay, side)
    with python_memory() as mem:
        relay.receive(side, head)
        for _ in range(60):  # 60 x 16 KiB: stays under h2's own limit of 64 frames
            relay.receive(side, _continuation(sid, 16_000))
            if relay.finished:
                break
    assert relay.closed is not None, "an endless header block was buffered"
    assert relay.closed.error is not None and relay.closed.error.fault is Fault.REMOTE
    assert "header block" in str(relay.closed.error)
    assert _goaways(relay.data_to_send(side))[-1:] == [ENHANCE_YOUR_CALM]
    assert mem.peak < 128 * 1024, f"the unfinished header block pinned {mem.peak} bytes"


def test_empty_continuation_flood_is_closed_after_eight() -> None:
    relay = _idle_inbound()
    head, sid = _open_block(relay, Side.DOWN)
    relay.receive(Side.DOWN, head + _continuation(sid, 0) * 8)
    assert not relay.finished
    relay.receive(Side.DOWN, _continuation(sid, 0))
    assert relay.closed is not None and "CONTINUATION" in str(relay.closed.error)
    assert _goaways(relay.data_to_send(Side.DOWN))[-1:] == [ENHANCE_YOUR_CALM]


@pytest.mark.parametrize("where", ["idle-inbound", "slot-remote"])
def test_header_block_left_unfinished_is_closed_by_the_shells_clock(where: str) -> None:
    if where == "idle-inbound":
        relay, side = _idle_inbound(), Side.DOWN
    else:
        relay, *_ = make()
        side = Side.UP
    head, sid = _open_block(relay, side)
    relay.tick(100.0)
    relay.receive(side, head + _continuation(sid, 10))
    for t in (100.5, 101.0, 105.0, 110.0):  # seen unfinished at 100.5: 9.5 s so far
        relay.tick(t)
        assert not relay.finished, t
    relay.tick(111.0)
    assert relay.closed is not None and relay.closed.error is not None
    assert "unfinished" in str(relay.closed.error)
    assert relay.closed.error.fault is Fault.REMOTE
    assert _goaways(relay.data_to_send(side))[-1:] == [ENHANCE_YOUR_CALM]


def test_finished_header_blocks_are_not_timed() -> None:
    """An honest request in HEADERS + CONTINUATION, then a long idle connection."""
    client = Peer(client=True)
    relay = _idle_inbound()
    client.conn.data_to_send()
    client.open()
    frames = client.conn.data_to_send()  # one HEADERS frame with END_HEADERS
    n = int.from_bytes(frames[:3], "big")
    block = frames[9:9 + n]
    head = HeadersFrame(1, block[:10]).serialize()  # the same block split in two
    cont = ContinuationFrame(1, block[10:], flags=["END_HEADERS"]).serialize()
    relay.tick(0.0)
    relay.receive(Side.DOWN, head + cont)
    assert relay.stream_id(Side.DOWN) == 1 and not relay.finished, relay.closed
    for t in range(1, 600, 7):
        relay.tick(float(t))
    assert not relay.finished, relay.closed


def test_settings_with_too_many_entries() -> None:
    """Unknown settings are ignored by h2 (RFC 9113 §6.5.2), but each costs work: 32 entries
    per SETTINGS frame at most (nghttp2's default)."""
    for n in (32, 33):
        relay = _idle_inbound()
        frame = SettingsFrame(0)
        frame.settings = {0x20 + i: 1 for i in range(n)}
        relay.receive(Side.DOWN, frame.serialize())
        if n == 32:
            assert not relay.finished, relay.closed
        else:
            assert relay.closed is not None and "33 entries" in str(relay.closed.error)


def test_window_updates_for_data_sent_are_paid_for_even_in_a_batch() -> None:
    """A receiver may acknowledge each DATA frame with a stream and a connection WINDOW_UPDATE
    and send them later in one batch (grpcio did, 298 in a row, in a 10 000-message relay):
    those are not a flood, whatever the bucket's size. Beyond what our DATA frames account
    for, WINDOW_UPDATEs spend the bucket like any frame without payload."""
    from bridge.core.budget import WINDOW_UPDATE, BudgetSettings, Flood, FrameBudget

    b = FrameBudget(BudgetSettings(burst=10, per_second=0.0))
    b.earn(300 * 300, frames_sent=300)  # 300 small DATA frames sent to the peer
    for _ in range(600):
        b.frame(4, WINDOW_UPDATE, 0)
    for _ in range(10):  # then only the bucket pays
        b.frame(4, WINDOW_UPDATE, 0)
    with pytest.raises(Flood):
        b.frame(4, WINDOW_UPDATE, 0)


# -- the relay's events (issue 11 item 1) ------------------------------------------------------


def _of(kind: type, events: list[RelayEvent]) -> list[RelayEvent]:
    return [e for e in events if isinstance(e, kind)]


def test_events_report_handshakes_notes_and_what_was_learned() -> None:
    """What used to be policy lists and GossipState hooks comes back from Relay.receive: the
    Versions seen, the log lines, and one OnionsLearned / AddressesLearned per message."""
    gossip = GossipState(own_onion=OWN)
    relay, down, up, kaspad, remote = make(gossip=gossip)
    kid, rid = os.urandom(16), os.urandom(16)
    kaspad.send(version(node_id=kid, address=proto.NetAddress.from_ip(bytes([8, 8, 4, 4]), 1)))
    events = pump(relay, down, up)
    assert _of(HandshakeSeen, events) == [
        HandshakeSeen(True, kid, 0, 8, "kaspa-simnet", "/kaspad:1.0.1/kaspad:1.0.1/")]
    warnings = [e for e in _of(Note, events) if isinstance(e, Note) and e.warning]
    assert len(warnings) == 1 and "8.8.4.4" in warnings[0].text
    remote.send(version(node_id=rid, services=proto.SERVICE_ADDRV2))
    events = pump(relay, down, up)
    assert [(e.kaspad, e.node_id) for e in _of(HandshakeSeen, events)  # type: ignore[attr-defined]
            ] == [(False, rid)]
    for p in (kaspad, remote):
        p.send(VERACK)
        p.send(READY)
    assert pump(relay, down, up) == []
    kaspad.send(REQUEST_ADDRESSES)
    pump(relay, down, up)
    ip = proto.NetAddress.from_ip(bytes([1, 2, 3, 4]), 16111)
    remote.send(addresses([ip, proto.NetAddress.from_onion(OTHER.address.host, OTHER.port),
                           proto.NetAddress.from_onion(OWN.address.host, OWN.port)]))
    events = pump(relay, down, up)
    assert events == [AddressesLearned((("1.2.3.4", 16111),), "gossip:peer x"),
                      OnionsLearned((OTHER,), "gossip:peer x")]
    assert OTHER in gossip.onions  # the shared set learned it in the core already
    assert not relay.finished


def test_closed_is_the_last_event_and_comes_once() -> None:
    relay, down, up, kaspad, remote = make()
    handshake(relay, kaspad, remote, down, up)
    up.conn.send_headers(up.sid or 1, [(b"grpc-status", b"0")], end_stream=True)
    events = pump(relay, down, up)
    assert events and events[-1] == Closed("peer x ended the call")
    assert _of(Closed, events) == [relay.closed]
    assert relay.finished
    assert relay.receive(Side.DOWN, b"\x00" * 50) == []  # (bytes after the end: ignored)
    assert relay.refuse("too late") == [] and relay.tick(1e9) == []
    assert relay.connection_lost(Side.UP) == [] and relay.closed == events[-1]


def test_closed_carries_the_error_and_blames_the_sender() -> None:
    relay, down, up, _, remote = make()
    remote.send(ping(1))  # before the handshake: kaspad would disconnect
    events = pump(relay, down, up)
    closes = _of(Closed, events)
    assert len(closes) == 1 and closes[0] is relay.closed and events[-1] is closes[0]
    err = relay.closed.error if relay.closed is not None else None
    assert err is not None and err.fault is Fault.REMOTE


def test_refuse_returns_closed() -> None:
    relay, *_ = make()
    events = relay.refuse("no upstream peer available")
    assert events == [Closed("no upstream peer available")] and relay.closed == events[0]


def test_inflow_follows_a_message_in_progress() -> None:
    relay, down, up, kaspad, remote = make()
    handshake(relay, kaspad, remote, down, up)
    start = relay.inflow(Side.UP)
    assert not start.mid_message and not relay.mid_message(Side.UP)
    remote.send_raw(grpc.frame(block(100_000))[:50_000])
    pump(relay, down, up)
    now = relay.inflow(Side.UP)
    assert now.mid_message and relay.mid_message(Side.UP)
    assert now.bytes_in == start.bytes_in + 50_000 and now.upstream == start.upstream
