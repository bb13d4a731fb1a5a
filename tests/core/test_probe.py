"""The sans-IO harvesting client against hand-built peer byte streams (no sockets, no clocks)."""

from __future__ import annotations

import os

import h2.errors
import hyperframe.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core import grpc, proto
from bridge.core.errors import Fault, SelfConnection
from bridge.core.onion import OnionAddress
from bridge.core.probe import (
    AddressesReceived,
    Closed,
    Event,
    Failed,
    HandshakeDone,
    IncompatiblePeer,
    PeerClosed,
    PeerRejected,
    PeerViolation,
    Phase,
    ProbeClient,
    ProbeTimeout,
    kaspad_gzip,
)
from tests.core.relay_harness import (
    READY,
    REQUEST_ADDRESSES,
    VERACK,
    Peer,
    addresses,
    ping,
    version,
)

OWN_ID = bytes(range(16))
PEER_ID = bytes(range(16, 32))
NOW = 1_760_000_000_123
ONION = OnionAddress.from_pubkey(bytes(range(32)))
ONION2 = OnionAddress.from_pubkey(bytes(range(1, 33)))
ADDRV2 = proto.SERVICE_ADDRV2
IP_ENTRIES = [proto.NetAddress.from_ip(bytes([1, 2, 3, 4]), 16111),
              proto.NetAddress.from_ip(bytes(range(16)), 16112)]
ALL_ENTRIES = [*IP_ENTRIES, proto.NetAddress.from_onion(ONION.host, 16111)]


def new(**kw: object) -> tuple[ProbeClient, Peer]:
    client = ProbeClient("kaspa-simnet", now_ms=NOW, node_id=OWN_ID,
                         authority="seeder.test:16511", **kw)  # type: ignore[arg-type]
    peer = Peer(client=False)
    peer.receive(client.initiate())
    return client, peer


def started(**kw: object) -> tuple[ProbeClient, Peer, list[Event]]:
    client, peer = new(**kw)
    peer.respond()
    events = pump(client, peer)
    return client, peer, events


def pump(client: ProbeClient, peer: Peer, *, chunk: int | None = None) -> list[Event]:
    events: list[Event] = []
    for _ in range(1000):
        data = peer.conn.data_to_send()
        if data:
            step = chunk or len(data)
            for i in range(0, len(data), step):
                events += client.receive(data[i:i + step])
        out = client.data_to_send()
        if out:
            peer.receive(out)
        if not data and not out:
            return events
    raise AssertionError("pump did not settle")


def phase_of(client: ProbeClient) -> Phase:
    return client.phase  # (a call, so mypy does not keep an earlier narrowing)


def tags(peer: Peer) -> list[int | None]:
    return [proto.payload_tag(m) for m in peer.payloads]


def failed(events: list[Event]) -> Failed:
    found = [e for e in events if isinstance(e, Failed)]
    assert len(found) == 1, events
    assert isinstance(events[-1], Closed)
    return found[0]


def reject_text(peer: Peer) -> str:
    env = proto.Envelope.decode(peer.payloads[-1])
    assert env.tag == proto.REJECT
    f = proto.first(proto.parse(env.payload), 1)
    assert f is not None
    return f.as_bytes.decode()


def handshake(client: ProbeClient, peer: Peer, *, services: int = ADDRV2,
              compress: bool = True) -> list[Event]:
    peer.send(version(node_id=PEER_ID, services=services), compressed=compress)
    peer.send(VERACK, compressed=compress)
    peer.send(READY, compressed=compress)
    return pump(client, peer)


# -- what goes on the wire --------------------------------------------------------------------


def test_preface_settings_and_request_headers_like_tonic_over_hyper() -> None:
    client = ProbeClient("kaspa-simnet", now_ms=NOW, node_id=OWN_ID, authority="1.2.3.4:16111")
    data = client.initiate()
    assert data.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    data = data[24:]
    frames = []
    while data:
        f, length = hyperframe.frame.Frame.parse_frame_header(memoryview(data[:9]))
        f.parse_body(memoryview(data[9:9 + length]))
        frames.append(f)
        data = data[9 + length:]
    settings_frame, wu, headers = frames
    assert isinstance(settings_frame, hyperframe.frame.SettingsFrame)
    assert list(settings_frame.settings.items()) == [(2, 0), (4, 2097152), (5, 16384),
                                                     (6, 16384)]
    assert isinstance(wu, hyperframe.frame.WindowUpdateFrame)
    assert (wu.stream_id, wu.window_increment) == (0, 5177345)
    assert isinstance(headers, hyperframe.frame.HeadersFrame)
    assert headers.stream_id == 1 and "END_STREAM" not in headers.flags
    # decode the request with a real h2 server
    client2, peer = new()
    assert peer.headers == [
        (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"seeder.test:16511"),
        (b":path", b"/protowire.P2P/MessageStream"), (b"te", b"trailers"),
        (b"content-type", b"application/grpc"), (b"grpc-encoding", b"gzip"),
        (b"grpc-accept-encoding", b"gzip,identity"), (b"user-agent", b"tonic/0.12.3"),
    ]
    # no DATA before the response HEADERS (kaspad's client waits for them, protocol.md §3.2)
    assert pump(client2, peer) == [] and peer.messages == []
    assert client2.phase is Phase.HEADERS


def test_version_is_kaspads_and_every_message_is_gzipped() -> None:
    client, peer, events = started()
    assert events == [] and client.phase is Phase.VERSION
    assert len(peer.messages) == 1
    compressed, msg = peer.messages[0]
    assert compressed
    env = proto.Envelope.decode(msg)
    assert env.tag == proto.VERSION and env.others == []
    v = proto.Version.decode(env.payload)
    assert [f.number for f in v.fields] == [1, 2, 3, 5, 6, 10]  # prost tag order, no address
    assert v.protocol_version == 8 and v.services == 1 << 23
    assert proto.first(v.fields, proto.V_TIMESTAMP).as_int == NOW  # type: ignore[union-attr]
    assert v.node_id == OWN_ID and v.user_agent == "/kaspad:1.0.1/kaspad:1.0.1/"
    assert v.network == "kaspa-simnet" and v.address is None


def test_kaspad_gzip_header_is_flate2s() -> None:
    blob = kaspad_gzip(b"hello" * 10)
    assert blob[:10] == bytes.fromhex("1f8b08000000000000ff")
    assert grpc.gzip_decompress(blob, 100) == b"hello" * 10


def test_configurable_version_fields() -> None:
    _, peer, _ = started(protocol_version=10, user_agent="/kaspad:2.0.1/kaspad:2.0.1/",
                         services=0)
    v = proto.Version.decode(proto.Envelope.decode(peer.payloads[0]).payload)
    assert v.protocol_version == 10 and v.services == 0
    assert v.user_agent == "/kaspad:2.0.1/kaspad:2.0.1/"


# -- the happy path ---------------------------------------------------------------------------


def test_ready_only_after_peer_version_and_verack_request_only_after_peer_ready() -> None:
    client, peer, _ = started()
    peer.send(version(node_id=PEER_ID, services=ADDRV2))
    assert pump(client, peer) == []
    assert tags(peer) == [proto.VERSION, proto.VERACK]  # Verack at once, before validation
    peer.send(VERACK)
    assert pump(client, peer) == []
    assert tags(peer) == [proto.VERSION, proto.VERACK, proto.READY]
    assert client.phase is Phase.READY
    peer.send(READY)
    events = pump(client, peer)
    assert isinstance(events[0], HandshakeDone) and events[0].peer.node_id == PEER_ID
    assert events[0].peer.addrv2 and events[0].peer.protocol_version == 8
    assert tags(peer)[-1] == proto.REQUEST_ADDRESSES
    assert peer.payloads[-1] == REQUEST_ADDRESSES  # "3200", exactly as kaspad
    assert phase_of(client) is Phase.ADDRESSES
    peer.send(addresses(ALL_ENTRIES))
    events = pump(client, peer)
    got = events[0]
    assert isinstance(got, AddressesReceived)
    assert [(i.host, i.port) for i in got.ips] == [("1.2.3.4", 16111),
                                                   ("1:203:405:607:809:a0b:c0d:e0f", 16112)]
    assert [(o.onion, o.port) for o in got.onions] == [(ONION, 16111)]
    assert isinstance(events[-1], Closed) and client.finished
    # clean close: END_STREAM then GOAWAY(NO_ERROR), no reset
    assert peer.ended and peer.goaway == h2.errors.ErrorCodes.NO_ERROR and peer.reset is None
    assert not client.peer_gone
    # (the test peer's h2 has seen our GOAWAY and sends nothing more: raw frames)
    data = (b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x10\x00"  # WINDOW_UPDATE
            b"\x00\x00\x00\x00\x01\x00\x00\x00\x01")  # empty DATA with END_STREAM
    for i in range(len(data)):  # byte by byte
        assert client.receive(data[i:i + 1]) == []
    assert client.peer_gone


@settings(max_examples=150, deadline=None)
@given(chunks=st.lists(st.integers(1, 97), min_size=1, max_size=20),
       compress=st.booleans(), extras=st.booleans())
def test_scripted_peer_in_arbitrary_chunks(chunks: list[int], compress: bool,
                                           extras: bool) -> None:
    client, peer = new()
    peer.respond()
    peer.send(version(node_id=PEER_ID, services=ADDRV2), compressed=compress)
    peer.send(VERACK, compressed=compress)
    peer.send(READY, compressed=compress)
    if extras:  # what a kaspad peer sends right after the handshake
        peer.send(proto.make_len_field(proto.INV_RELAY_BLOCK, b"\x0a\x22\x0a\x20" + bytes(32)).raw,
                  compressed=compress)
        peer.send(REQUEST_ADDRESSES + proto.make_varint_field(proto.REQUEST_ID, 7).raw,
                  compressed=compress)
        peer.send(ping(0xDEADBEEF), compressed=compress)
    peer.send(addresses(ALL_ENTRIES), compressed=compress)
    stream = peer.conn.data_to_send()
    events: list[Event] = []
    i = k = 0
    while i < len(stream):
        n = chunks[k % len(chunks)]
        events += client.receive(stream[i:i + n])
        i, k = i + n, k + 1
        out = client.data_to_send()
        if out:
            peer.receive(out)
    kinds = [type(e) for e in events]
    assert kinds == [HandshakeDone, AddressesReceived, Closed], events
    got = events[1]
    assert isinstance(got, AddressesReceived) and len(got.ips) == 2 and len(got.onions) == 1
    want = [proto.VERSION, proto.VERACK, proto.READY, proto.REQUEST_ADDRESSES]
    if extras:
        want += [proto.ADDRESSES, proto.PONG]
    assert tags(peer) == want
    if extras:
        reply = proto.Envelope.decode(peer.payloads[4])
        assert reply.payload == b""  # empty Addresses
        assert proto.first(reply.others, proto.RESPONSE_ID).as_int == 7  # type: ignore[union-attr]
        pong = proto.Envelope.decode(peer.payloads[5])
        assert proto.first(proto.parse(pong.payload), 1).as_int == 0xDEADBEEF  # type: ignore
    assert all(c for c, _ in peer.messages)  # all gzip'd
    assert peer.ended and peer.reset is None


def test_flow_messages_between_our_ready_and_theirs_wait_for_the_ready() -> None:
    client, peer, _ = started()
    peer.send(version(node_id=PEER_ID, services=ADDRV2))
    peer.send(VERACK)
    pump(client, peer)
    peer.send(REQUEST_ADDRESSES)  # before its Ready: kaspad queues it until the flows launch
    assert pump(client, peer) == []
    assert tags(peer)[-1] == proto.READY
    peer.send(READY)
    events = pump(client, peer)
    assert isinstance(events[0], HandshakeDone)
    assert tags(peer)[-2:] == [proto.REQUEST_ADDRESSES, proto.ADDRESSES]


def test_reply_addresses_are_sent_onions_only_to_addrv2_peers() -> None:
    onion_entry = proto.NetAddress.from_onion(ONION2.host, 16111)
    for services, want in ((ADDRV2, 2), (0, 1)):
        client, peer, _ = started(reply_addresses=[IP_ENTRIES[0], onion_entry])
        handshake(client, peer, services=services)
        peer.send(REQUEST_ADDRESSES)
        pump(client, peer)
        reply = proto.Envelope.decode(peer.payloads[-1])
        assert reply.tag == proto.ADDRESSES
        assert len(proto.decode_addresses(reply.payload)) == want


# -- harvested entries -----------------------------------------------------------------------


def harvest_entries(entries: list[proto.NetAddress], services: int = ADDRV2) -> list[Event]:
    client, peer, _ = started()
    handshake(client, peer, services=services)
    peer.send(addresses(entries))
    return pump(client, peer)


def test_onions_only_from_addrv2_peers() -> None:
    events = harvest_entries(ALL_ENTRIES, services=0)
    got = events[0]
    assert isinstance(got, AddressesReceived)
    assert got.onions == () and len(got.ips) == 2
    assert any("ADDRv2" in d for d in got.dropped)


def test_entries_are_normalised_deduplicated_and_filtered() -> None:
    fake = proto.NetAddress.from_onion("a" * 56 + ".onion", 1)  # fork accepts, checksum fails
    mapped = proto.NetAddress.from_ip(bytes(10) + b"\xff\xff" + bytes([8, 8, 8, 8]), 2)
    events = harvest_entries([
        mapped, proto.NetAddress.from_ip(bytes([8, 8, 8, 8]), 2), fake,
        proto.NetAddress.from_ip(bytes([127, 0, 0, 1]), 3), proto.NetAddress.from_ip(bytes(4), 4),
        proto.NetAddress.from_onion(ONION.host.upper(), 5),
    ])
    got = events[0]
    assert isinstance(got, AddressesReceived)
    assert [(i.host, i.port) for i in got.ips] == [("8.8.8.8", 2)]
    assert [(o.host, o.port) for o in got.onions] == [(ONION.host, 5)]
    assert len(got.dropped) == 3 and "version byte" in got.dropped[0]


@pytest.mark.parametrize(("entry", "why"), [
    (proto.NetAddress.from_ip(bytes(5), 1), "IP has illegal length 5"),
    (proto.NetAddress([proto.make_varint_field(proto.NA_PORT, 1)]), "IP has illegal length 0"),
    (proto.NetAddress.from_ip(bytes(4), 70000), "does not fit in u16"),
    (proto.NetAddress.from_onion("abc.onion", 1), "expected 56"),
])
def test_an_entry_kaspad_cannot_convert_fails_the_whole_message(entry: proto.NetAddress,
                                                                why: str) -> None:
    events = harvest_entries([IP_ENTRIES[0], entry])
    err = failed(events).error
    assert isinstance(err, PeerViolation) and why in str(err) and err.fault is Fault.REMOTE


def test_more_than_2500_addresses_fails() -> None:
    events = harvest_entries([IP_ENTRIES[0]] * 2501)
    assert "2501 entries" in str(failed(events).error)


# -- a misbehaving or incompatible peer -------------------------------------------------------


@pytest.mark.parametrize(("peer_version", "err_type", "reject"), [
    (version(node_id=PEER_ID, network="kaspa-mainnet"), IncompatiblePeer,
     "Network mismatch - local: kaspa-simnet, remote: kaspa-mainnet"),
    (version(node_id=b"short"), PeerViolation, "Identity error: invalid peer id length 5"),
    (version(node_id=PEER_ID, pv=6), IncompatiblePeer,
     "P2P protocol version mismatch - local: 8, remote: 6"),
    (version(node_id=OWN_ID), SelfConnection, "LOOPBACK_CONNECTION"),
    (version(node_id=PEER_ID, address=proto.NetAddress.from_ip(bytes(3), 1)), PeerViolation,
     "IP has illegal length 3"),
])
def test_bad_peer_version_is_rejected_with_kaspads_text(peer_version: bytes, err_type: type,
                                                        reject: str) -> None:
    client, peer, _ = started()
    peer.send(peer_version)
    peer.send(VERACK)
    events = pump(client, peer)
    err = failed(events).error
    assert isinstance(err, err_type)
    assert tags(peer) == [proto.VERSION, proto.VERACK, proto.REJECT]
    assert reject_text(peer) == reject
    assert peer.ended and peer.reset is None  # the Reject is delivered, then END_STREAM
    assert client.peer is None


def test_min_protocol_version_is_configurable() -> None:
    client, peer, _ = started(min_protocol_version=9)
    peer.send(version(node_id=PEER_ID, pv=8))
    peer.send(VERACK)
    assert "below our minimum 9" in str(failed(pump(client, peer)).error)
    client, peer, _ = started(min_protocol_version=9)
    peer.send(version(node_id=PEER_ID, pv=10))
    peer.send(VERACK)
    peer.send(READY)
    assert isinstance(pump(client, peer)[0], HandshakeDone)


def test_forbidden_ids_mean_self() -> None:
    client, peer, _ = started(forbidden_ids=[PEER_ID])
    peer.send(version(node_id=PEER_ID))
    peer.send(VERACK)
    assert isinstance(failed(pump(client, peer)).error, SelfConnection)


@pytest.mark.parametrize("when", ["handshake", "after"])
def test_peer_reject_names_its_reason(when: str) -> None:
    client, peer, _ = started()
    if when == "after":
        handshake(client, peer)
    peer.send(proto.make_len_field(proto.REJECT,
                                   proto.make_len_field(1, b"DUPLICATE_CONNECTION").raw).raw)
    err = failed(pump(client, peer)).error
    assert isinstance(err, PeerRejected) and err.reason == "DUPLICATE_CONNECTION" and err.ignorable
    assert err.fault is Fault.REMOTE and "DUPLICATE_CONNECTION" in str(err)
    assert peer.reset == h2.errors.ErrorCodes.CANCEL


@pytest.mark.parametrize(("message", "why"), [
    (proto.make_len_field(99, b"").raw, "unknown message type payload#99"),
    (proto.make_varint_field(proto.REQUEST_ID, 3).raw, "empty payload"),
    (b"", "empty payload"),
    (proto.make_len_field(proto.PONG, b"").raw, "never sent a Ping"),
    (VERACK, "Verack after the handshake"),
    (proto.make_len_field(proto.BLOCK, b"").raw + proto.make_varint_field(101, 9).raw,
     "Block with response_id 9"),
    (b"\xff", "bad data"),
])
def test_unexpected_messages_after_the_handshake(message: bytes, why: str) -> None:
    client, peer, _ = started()
    handshake(client, peer)
    peer.send(message)
    err = failed(pump(client, peer)).error
    assert isinstance(err, PeerViolation) and why in str(err), str(err)
    assert err.fault is Fault.REMOTE


@pytest.mark.parametrize("message", [addresses(IP_ENTRIES), REQUEST_ADDRESSES, ping(1)])
def test_flow_messages_before_validation_are_violations(message: bytes) -> None:
    client, peer, _ = started()
    peer.send(message)
    err = failed(pump(client, peer)).error
    assert "during the handshake" in str(err)


def test_duplicate_version_during_handshake() -> None:
    client, peer, _ = started()
    peer.send(version(node_id=PEER_ID))
    peer.send(version(node_id=PEER_ID))
    assert "second Version" in str(failed(pump(client, peer)).error)


def test_other_known_messages_after_the_handshake_are_ignored() -> None:
    client, peer, _ = started()
    handshake(client, peer)
    inv = proto.make_len_field(proto.INV_RELAY_BLOCK, b"\x0a\x22\x0a\x20" + bytes(32)).raw
    for m in (inv, proto.make_len_field(15, b"").raw, proto.make_len_field(proto.BLOCK, b"").raw):
        peer.send(m)
    assert pump(client, peer) == []
    assert client.ignored == [proto.INV_RELAY_BLOCK, 15, proto.BLOCK]
    peer.send(addresses(IP_ENTRIES))
    assert isinstance(pump(client, peer)[0], AddressesReceived)


def test_second_addresses_after_the_harvest_is_ignored_we_are_gone() -> None:
    client, peer, _ = started()
    handshake(client, peer)
    peer.send(addresses(IP_ENTRIES))
    peer.send(addresses(IP_ENTRIES))
    events = pump(client, peer)
    assert [type(e) for e in events] == [AddressesReceived, Closed]
    assert client.error is None


def test_compressed_flag_without_grpc_encoding() -> None:
    client, peer = new()
    assert peer.sid is not None
    peer.conn.send_headers(peer.sid, [(b":status", b"200"),
                                      (b"content-type", b"application/grpc")])
    pump(client, peer)
    peer.send(VERACK, compressed=True)
    assert "no grpc-encoding" in str(failed(pump(client, peer)).error)


def test_plain_frames_without_grpc_encoding_are_fine() -> None:
    client, peer = new()
    assert peer.sid is not None
    peer.conn.send_headers(peer.sid, [(b":status", b"200"),
                                      (b"content-type", b"application/grpc")])
    pump(client, peer)
    events = handshake(client, peer, compress=False)
    assert isinstance(events[0], HandshakeDone)


def test_trailers_only_response_and_bad_status() -> None:
    client, peer = new()
    assert peer.sid is not None
    peer.conn.send_headers(peer.sid, [(b":status", b"200"), (b"grpc-status", b"12"),
                                      (b"grpc-message", b"nope")], end_stream=True)
    err = failed(pump(client, peer)).error
    assert isinstance(err, PeerClosed) and "grpc-status 12: nope" in str(err)
    client, peer = new()
    assert peer.sid is not None
    peer.conn.send_headers(peer.sid, [(b":status", b"404")])
    assert "HTTP status b'404'" in str(failed(pump(client, peer)).error)


def test_peer_ends_stream_or_goaway_mid_handshake() -> None:
    client, peer, _ = started()
    assert peer.sid is not None
    peer.conn.send_headers(peer.sid, [(b"grpc-status", b"14")], end_stream=True)
    err = failed(pump(client, peer)).error
    assert isinstance(err, PeerClosed) and "Version and Verack" in str(err)
    client, peer, _ = started()
    peer.conn.close_connection()
    assert "GOAWAY" in str(failed(pump(client, peer)).error)


def test_http2_garbage_is_the_peers_fault() -> None:
    client, _ = new()
    events = client.receive(b"\x00\x00\x04\x99\x00\x00\x00\x00\x00garbage-garbage")
    err = failed(events).error
    assert err.fault is Fault.REMOTE


@pytest.mark.parametrize(("phase_steps", "phase", "reject"), [
    (0, Phase.HEADERS, False), (1, Phase.VERSION, True), (2, Phase.READY, True),
    (3, Phase.ADDRESSES, True),
])
def test_timeouts_name_the_phase_and_send_kaspads_reject(phase_steps: int, phase: Phase,
                                                         reject: bool) -> None:
    client, peer = new()
    if phase_steps >= 1:
        peer.respond()
        pump(client, peer)
    if phase_steps >= 2:
        peer.send(version(node_id=PEER_ID))
        peer.send(VERACK)
        pump(client, peer)
    if phase_steps >= 3:
        peer.send(READY)
        pump(client, peer)
    assert client.phase is phase
    events = client.timeout(4)
    peer.receive(client.data_to_send())
    err = failed(events).error
    assert isinstance(err, ProbeTimeout) and err.phase is phase
    assert str(err).startswith("timeout expired after 4s waiting for the peer's")
    if reject:
        assert reject_text(peer) == "timeout expired after 4s" and peer.ended
    else:
        assert peer.reset == h2.errors.ErrorCodes.CANCEL
    assert client.timeout(4) == [] and client.receive(b"x") == []


def test_connection_lost_and_local_close() -> None:
    client, peer, _ = started()
    err = failed(client.connection_lost()).error
    assert isinstance(err, PeerClosed) and "Version and Verack" in str(err)
    client, peer, _ = started()
    events = client.close("shutting down")
    assert events == [Closed("shutting down")]
    peer.receive(client.data_to_send())
    assert peer.reset == h2.errors.ErrorCodes.CANCEL and peer.goaway == 0


def test_oversized_message_is_refused_from_its_prefix() -> None:
    client, peer, _ = started(max_message=1000)
    peer.send_raw(grpc.frame(b"x" * 2000)[:5])
    assert "exceeds the limit" in str(failed(pump(client, peer)).error)


def test_gzip_bomb_is_refused() -> None:
    client, peer, _ = started(max_message=10_000)
    handshake(client, peer)
    peer.send(addresses([proto.NetAddress.from_ip(bytes(4), 1)] * 2000), compressed=True)
    assert "inflates to more than" in str(failed(pump(client, peer)).error)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        ProbeClient("kaspa-simnet", now_ms=NOW, node_id=b"x")
    with pytest.raises(ValueError, match="network"):
        ProbeClient("", now_ms=NOW)
    c = ProbeClient("kaspa-simnet", now_ms=NOW)
    assert len(c.node_id) == 16 and c.node_id != ProbeClient("kaspa-simnet", now_ms=NOW).node_id
    with pytest.raises(RuntimeError):
        c.receive(b"")
    c.initiate()
    with pytest.raises(RuntimeError):
        c.initiate()


def test_random_bytes_never_crash() -> None:
    for seed in range(200):
        client, peer, _ = started()
        blob = os.urandom(seed % 50 + 1)
        events = client.receive(peer.conn.data_to_send() + grpc.frame(blob))
        assert all(isinstance(e, (Failed, Closed, HandshakeDone)) for e in events)
