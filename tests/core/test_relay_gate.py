"""The gated onion inbound (issue G): the relay answers a Tor peer's request itself and asks for
kaspad only once the peer's Version passed, so a refused peer (a decompression bomb, a duplicate,
a peer that never sends its Version) costs kaspad no connection and no handshake. Without I/O."""

from __future__ import annotations

import h2.errors
import pytest

from bridge.core import proto
from bridge.core.errors import Fault
from bridge.core.onion import OnionAddress
from bridge.core.policy import ConnectionPolicy, GossipState, PolicySettings
from bridge.core.relay import (
    Relay,
    Side,
    new_upstream_connection,
    response_headers_for,
)
from tests.core.relay_harness import READY, REQUEST_HEADERS, VERACK, Peer, block, pump, version

OWN = OnionAddress.from_pubkey(bytes(range(1, 33)))


def _gated(*, screen: bool = True) -> tuple[Relay, Peer]:
    policy = ConnectionPolicy(GossipState(own_onion=OWN), PolicySettings(),
                              remote_label="inbound peer #1", conn_label="inbound#1")
    relay = Relay(policy, kaspad_side=Side.UP, upstream_authority=b"127.0.0.1:16111",
                  screen=screen)
    remote = Peer(client=True)
    remote.open()
    pump(relay, remote, Peer(client=False))  # (no upstream yet: nothing goes UP)
    return relay, remote


def _attach_kaspad(relay: Relay, remote: Peer) -> Peer:
    relay.attach_upstream(new_upstream_connection(relay.settings, remote=False))
    kaspad = Peer(client=False)
    pump(relay, remote, kaspad)
    return kaspad


def test_the_relay_answers_the_request_and_wants_kaspad_only_after_the_version() -> None:
    relay, remote = _gated()
    assert relay.gated
    # answered at once, as kaspad would (the peer sends nothing before the response HEADERS)
    assert remote.headers == response_headers_for(REQUEST_HEADERS)
    assert not relay.upstream_wanted and not relay.has_upstream
    remote.send(version(node_id=b"R" * 16, services=proto.SERVICE_ADDRV2))
    pump(relay, remote, Peer(client=False))
    assert relay.upstream_wanted and not relay.finished
    kaspad = _attach_kaspad(relay, remote)
    # kaspad gets the request, then the held Version right behind it
    h = dict(kaspad.headers or [])
    assert h[b":path"] == b"/protowire.P2P/MessageStream" and b"x-secret" not in h
    assert len(kaspad.payloads) == 1
    got = proto.Version.decode(proto.Envelope.decode(kaspad.payloads[0]).payload)
    assert got.node_id == b"R" * 16
    kaspad.respond()  # kaspad's own response HEADERS: the start of the relay, not sent on
    kaspad.send(version(node_id=b"K" * 16))
    pump(relay, remote, kaspad)
    assert relay.response_started
    assert remote.headers == response_headers_for(REQUEST_HEADERS)  # still the one block
    assert len(remote.payloads) == 1  # kaspad's Version
    for p in (remote, kaspad):
        p.send(VERACK)
        p.send(READY)
    pump(relay, remote, kaspad)
    assert kaspad.payloads[1:] == [VERACK, READY] and remote.payloads[1:] == [VERACK, READY]
    msg = block(50_000, request_id=7)
    remote.send(msg)
    pump(relay, remote, kaspad)
    assert kaspad.payloads[-1] == msg and not relay.finished


def test_an_ungated_inbound_relay_dials_at_the_request() -> None:
    """(screen=False keeps the old order: the shell attaches kaspad once the stream opens.)"""
    relay, remote = _gated(screen=False)
    assert not relay.gated and remote.headers is None and relay.upstream_wanted


def test_a_version_bomb_is_refused_before_kaspad_is_dialed() -> None:
    relay, remote = _gated()
    # 4 MiB of a tiny field, gzip'd to a few KB: over the rewrite limit once inflated
    fat = proto.make_len_field(proto.VERSION, bytes(8 << 20)).raw
    remote.send(fat, compressed=True)
    pump(relay, remote, Peer(client=False))
    assert relay.closed is not None and relay.closed.error is not None
    assert relay.closed.error.fault is Fault.REMOTE
    assert not relay.upstream_wanted and not relay.has_upstream
    assert remote.goaway is not None  # the culprit gets a GOAWAY


def test_a_peer_ending_its_stream_before_its_version_never_reaches_kaspad() -> None:
    relay, remote = _gated()
    assert remote.sid is not None
    remote.conn.end_stream(remote.sid)
    pump(relay, remote, Peer(client=False))
    assert relay.closed is not None and not relay.upstream_wanted
    assert dict(remote.trailers or [])[b"grpc-status"] == b"14"


def test_a_refusal_after_the_answer_is_trailers_only() -> None:
    """max_inbound reached once the Version passed: the peer gets grpc-status 14 as trailers
    (its HEADERS went out already), not a second response."""
    relay, remote = _gated()
    remote.send(version(services=proto.SERVICE_ADDRV2))
    pump(relay, remote, Peer(client=False))
    relay.refuse("this bridge relays 64 inbound peers already; try later")
    pump(relay, remote, Peer(client=False))
    trailers = dict(remote.trailers or [])
    assert trailers[b"grpc-status"] == b"14" and b":status" not in trailers
    assert remote.ended


def test_kaspad_ending_the_call_at_once_is_handed_on_as_trailers() -> None:
    relay, remote = _gated()
    remote.send(version(services=proto.SERVICE_ADDRV2))
    pump(relay, remote, Peer(client=False))
    kaspad = _attach_kaspad(relay, remote)
    assert kaspad.sid is not None
    kaspad.conn.send_headers(kaspad.sid, [(b":status", b"200"),
                                          (b"content-type", b"application/grpc"),
                                          (b"grpc-status", b"14"), (b"grpc-message", b"full")],
                             end_stream=True)
    pump(relay, remote, kaspad)
    assert relay.finished
    assert dict(remote.trailers or []) == {b"grpc-status": b"14", b"grpc-message": b"full"}


def test_kaspad_compressing_for_a_peer_told_otherwise_is_kaspads_fault() -> None:
    policy = ConnectionPolicy(GossipState(own_onion=OWN), PolicySettings(),
                              remote_label="inbound peer #1")
    relay = Relay(policy, kaspad_side=Side.UP, upstream_authority=b"127.0.0.1:16111",
                  screen=True)
    remote = Peer(client=True, compress=False)
    assert remote.sid is None
    remote.sid = remote.conn.get_next_available_stream_id()
    no_gzip = [(k, v) for k, v in REQUEST_HEADERS
               if k not in (b"grpc-accept-encoding", b"grpc-encoding")]
    remote.conn.send_headers(remote.sid, [*no_gzip, (b"grpc-accept-encoding", b"identity")])
    pump(relay, remote, Peer(client=False))
    assert dict(remote.headers or []).get(b"grpc-encoding") is None
    remote.send(version(services=proto.SERVICE_ADDRV2))
    pump(relay, remote, Peer(client=False))
    kaspad = _attach_kaspad(relay, remote)
    kaspad.respond()  # grpc-encoding: gzip, which the peer was not told
    pump(relay, remote, kaspad)
    assert relay.closed is not None and relay.closed.error is not None
    assert relay.closed.error.fault is Fault.KASPAD


@pytest.mark.parametrize(("accept", "gzip"), [
    (b"gzip,identity", True),  # tonic (kaspad)
    (b"identity, deflate, gzip", True),  # grpcio
    (b"identity", False),
    (None, False),
    (b"gzipx", False),
])
def test_response_headers_follow_the_clients_accept_encoding(accept: bytes | None,
                                                             gzip: bool) -> None:
    req = [(k, v) for k, v in REQUEST_HEADERS if k != b"grpc-accept-encoding"]
    if accept is not None:
        req.append((b"grpc-accept-encoding", accept))
    out = dict(response_headers_for(req))
    assert out[b":status"] == b"200" and out[b"content-type"] == b"application/grpc"
    assert (out.get(b"grpc-encoding") == b"gzip") is gzip


def test_a_flood_while_gated_closes_only_the_peer() -> None:
    """PINGs in the wait for the Version are bounded by the same budget as ever."""
    from hyperframe.frame import PingFrame

    relay, remote = _gated()
    frame = PingFrame(0, b"12345678").serialize()
    out = bytearray()
    for _ in range(200):
        relay.receive(Side.DOWN, frame * 100)
        out += relay.data_to_send(Side.DOWN)
        if relay.finished:
            break
    assert relay.closed is not None and relay.closed.error is not None
    assert relay.closed.error.fault is Fault.REMOTE and not relay.has_upstream
    remote.receive(bytes(out))
    assert remote.goaway == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def test_a_silent_peer_opens_the_gate_a_talking_one_does_not() -> None:
    """Another bridge's slot relay screens us: it sends nothing until our kaspad's Version
    passed. Such a silent peer opens the gate (kaspad is dialed, its Version goes out first);
    one that has started a message must finish its Version first."""
    relay, remote = _gated()
    assert relay.open_gate() and relay.upstream_wanted
    kaspad = _attach_kaspad(relay, remote)
    assert kaspad.headers is not None
    kaspad.respond()
    kaspad.send(version(node_id=b"K" * 16))
    pump(relay, remote, kaspad)
    assert len(remote.payloads) == 1 and not relay.finished  # kaspad's Version, first
    assert remote.headers == response_headers_for(REQUEST_HEADERS)
    remote.send(version(node_id=b"R" * 16, services=proto.SERVICE_ADDRV2))
    pump(relay, remote, kaspad)
    assert len(kaspad.payloads) == 1 and relay.policy.remote.node_id == b"R" * 16

    talking, remote2 = _gated()
    remote2.send_raw(b"\x00\x00\x00\x01")  # the start of a message
    pump(talking, remote2, Peer(client=False))
    assert not talking.open_gate() and not talking.upstream_wanted
