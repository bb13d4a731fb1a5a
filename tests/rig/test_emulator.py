"""Tests of the kaspad emulator, emulator <-> emulator directly over loopback (no relay)."""

from __future__ import annotations

import contextlib
import gzip
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from bridge.rig import proto_gen
from bridge.rig.emulator import (
    ADDR_V2,
    RPC_ABORTED,
    EmulatorConfig,
    KaspadEmulator,
    PeerSession,
    make_block_message,
    version_message,
)
from bridge.rig.proto_gen import pb

ONION = "a" * 56 + ".onion"
ONION2 = "b" * 56 + ".onion"
IP4 = bytes([1, 2, 3, 4])
IP6 = bytes(range(16))

Factory = Callable[..., KaspadEmulator]


@pytest.fixture
def emu() -> Iterator[Factory]:
    made: list[KaspadEmulator] = []

    def make(**kw: Any) -> KaspadEmulator:
        e = KaspadEmulator(EmulatorConfig(**kw))
        made.append(e)
        return e

    yield make
    for e in made:
        e.stop()


def connect(server: KaspadEmulator, client: KaspadEmulator) -> tuple[PeerSession, PeerSession]:
    """client dials server; returns (inbound session on server, outbound session on client)."""
    port = server.port or server.start_server()
    n = len(server.sessions)
    out = client.dial("127.0.0.1", port)
    inbound = server.wait_sessions(n + 1, 5.0)[n]
    return inbound, out


def handshaken(server: KaspadEmulator, client: KaspadEmulator) -> tuple[PeerSession, PeerSession]:
    a, b = connect(server, client)
    assert a.wait_handshake(5.0), a
    assert b.wait_handshake(5.0), b
    return a, b


def msg(**kw: Any) -> Any:
    return pb.KaspadMessage(**kw)


# ------------------------------------------------------------------------------------------
# Wire encoding of the generated protos (protocol.md §4.3, §11.2 byte examples)


@pytest.mark.parametrize(
    ("message", "hex_bytes"),
    [
        (msg(verack=pb.VerackMessage()), "9a0100"),
        (msg(ready=pb.ReadyMessage()), "920300"),
        (msg(requestAddresses=pb.RequestAddressesMessage()), "3200"),
        (msg(ping=pb.PingMessage(nonce=1)), "8201020801"),
        (msg(pong=pb.PongMessage(nonce=1)), "8a01020801"),
        (msg(reject=pb.RejectMessage(reason="x")), "b201030a0178"),
        (
            msg(addresses=pb.AddressesMessage(addressList=[pb.NetAddress(ip=IP4, port=16111)])),
            "0a0b0a091a040102030420ef7d",
        ),
        (msg(ping=pb.PingMessage(nonce=1), response_id=5, request_id=7), "8201020801a80605b00607"),
        (
            msg(version=pb.VersionMessage(protocolVersion=8, services=1 << 23)),
            "a2010708081080808004",
        ),
    ],
)
def test_proto_wire_bytes_match_kaspad(message: Any, hex_bytes: str) -> None:
    assert message.SerializeToString().hex() == hex_bytes
    assert pb.KaspadMessage.FromString(bytes.fromhex(hex_bytes)) == message


def test_fork_onion_net_address_encoding() -> None:
    a = pb.NetAddress(onion=ONION, port=16111)
    assert a.SerializeToString().hex() == "20ef7d2a3e" + ONION.encode().hex()


def test_proto_gen_concurrent_builds_publish_once(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; import bridge.rig.proto_gen as g; "
        "g.GEN_DIR = Path(sys.argv[1]); print(g._ensure_built())"
    )
    root = Path(proto_gen.__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], cwd=root, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outs) == 1
    (pkg,) = outs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["__init__.py", pkg]
    assert (tmp_path / pkg / "messages_pb2.py").read_text().count("from . import p2p_pb2") == 1


# ------------------------------------------------------------------------------------------
# Handshake


@pytest.mark.parametrize(
    ("server_v2", "client_v2"), [(False, False), (True, True), (True, False), (False, True)]
)
def test_handshake(emu: Factory, server_v2: bool, client_v2: bool) -> None:
    a = emu(addrv2=server_v2, user_agent="/kaspad:1.0.1/kaspad:1.0.1(srv)/")
    b = emu(addrv2=client_v2, advertised_address=(IP6, 16511), protocol_version=7)
    before = int(time.time() * 1000)
    inbound, outbound = handshaken(a, b)
    assert (inbound.direction, outbound.direction) == ("inbound", "outbound")
    rv_b, rv_a = inbound.remote_version, outbound.remote_version
    assert rv_b.id == b.config.node_id and rv_a.id == a.config.node_id
    assert rv_a.services == (ADDR_V2 if server_v2 else 0)
    assert rv_b.services == (ADDR_V2 if client_v2 else 0)
    assert (rv_a.protocolVersion, rv_b.protocolVersion) == (8, 7)
    assert rv_a.network == rv_b.network == "kaspa-simnet"
    assert rv_a.userAgent == "/kaspad:1.0.1/kaspad:1.0.1(srv)/"
    assert not rv_a.HasField("address")
    assert (rv_b.address.ip, rv_b.address.port) == (IP6, 16511)
    assert before - 1000 <= rv_b.timestamp <= int(time.time() * 1000) + 1000
    # kaspad-like request headers reached the server; the client got response headers first.
    md = dict(inbound.request_metadata or ())
    assert str(md["user-agent"]).startswith("tonic/")
    assert outbound.response_metadata is not None
    for s in (inbound, outbound):
        assert s.violations == []
        assert s.closed_reason is None


def test_dial_back_is_duplicate_while_connected_then_allowed(emu: Factory) -> None:
    """A and B both serve. B->A handshakes; A->B is then a DUPLICATE (same node id, same IP
    127.0.0.1: protocol.md §5.4); once B->A is closed, A->B handshakes."""
    a, b = emu(addrv2=True), emu(addrv2=True)
    a.start_server()
    b.start_server()
    a_in, b_out = handshaken(a, b)
    b_in, a_out = connect(b, a)
    assert_violation(b_in, "duplicate connection")
    assert_violation(a_out, "duplicate connection")  # A already has B as an inbound peer
    b_out.close()
    assert a_in.wait_closed(5.0)
    b_in2, a_out2 = handshaken(b, a)
    assert (b_in2.direction, a_out2.direction) == ("inbound", "outbound")
    for s in (a_in, b_out, b_in2, a_out2):
        assert s.violations == []


def test_close_ends_both_sides(emu: Factory) -> None:
    a, b = emu(), emu()
    inbound, outbound = handshaken(a, b)
    outbound.close()
    assert outbound.wait_closed(3.0)
    assert inbound.wait_closed(3.0)
    assert outbound.closed_reason == "closed locally"
    assert inbound.violations == [] and outbound.violations == []


# ------------------------------------------------------------------------------------------
# Flows: addresses, ping/pong, blocks


def test_addresses_exchange_with_onion_filtering(emu: Factory) -> None:
    book = [(IP4, 16111), (ONION, 16111), (IP6, 16611), (ONION2, 9735)]
    a = emu(addrv2=True, addresses=book)
    v2 = emu(addrv2=True, addresses=[(ONION2, 1234)])
    legacy = emu(addrv2=False, addresses=[(IP4, 1)])
    a_v2, v2_out = handshaken(a, v2)
    a_leg, leg_out = handshaken(a, legacy)
    for s in (v2_out, leg_out, a_v2, a_leg):
        assert s.wait_for(lambda s: s.remote_addresses is not None, 5.0), s

    def entries(s: PeerSession) -> list[tuple[str, bytes | str, int]]:
        out = []
        for e in s.remote_addresses or []:
            kind = e.WhichOneof("address")
            out.append((kind, getattr(e, kind), e.port))
        return out

    assert entries(v2_out) == [("ip", IP4, 16111), ("onion", ONION, 16111),
                               ("ip", IP6, 16611), ("onion", ONION2, 9735)]  # fmt: skip
    assert entries(leg_out) == [("ip", IP4, 16111), ("ip", IP6, 16611)]
    assert entries(a_v2) == [("onion", ONION2, 1234)]
    assert entries(a_leg) == [("ip", IP4, 1)]
    for s in (v2_out, leg_out, a_v2, a_leg):
        assert s.violations == []


def test_addresses_reply_capped_at_1000(emu: Factory) -> None:
    book = [(bytes([10, 0, i // 256, i % 256]), 16111) for i in range(1500)]
    a = emu(addresses=book)
    _, out = handshaken(a, emu())
    assert out.wait_for(lambda s: s.remote_addresses is not None, 5.0)
    assert len(out.remote_addresses or []) == 1000


def test_ping_pong_short_interval(emu: Factory) -> None:
    a = emu(ping_interval=0.05, pong_timeout=1.0)
    b = emu(ping_interval=0.05, pong_timeout=1.0)
    inbound, outbound = handshaken(a, b)
    for s in (inbound, outbound):
        assert s.wait_for(lambda s: s.stats.pongs_ok >= 3 and s.stats.pings_answered >= 3, 5.0), (
            s.stats
        )
        assert s.stats.pings_sent >= s.stats.pongs_ok
        assert s.stats.last_ping_rtt is not None and s.stats.last_ping_rtt < 1.0
        assert s.violations == []


@pytest.mark.parametrize(
    "server_sends", [True, False], ids=["server-to-client", "client-to-server"]
)
def test_two_megabyte_block_with_ids_arrives_intact(emu: Factory, server_sends: bool) -> None:
    inbound, outbound = handshaken(emu(), emu())
    requester, responder = (outbound, inbound) if server_sends else (inbound, outbound)
    requester.send(msg(requestRelayBlocks=pb.RequestRelayBlocksMessage(), request_id=4242))
    req = responder.wait_received("requestRelayBlocks", 5.0)
    assert (req.request_id, req.response_id) == (4242, 0)
    block = make_block_message(2 * 1024 * 1024, response_id=req.request_id, request_id=7, seed=3)
    assert block.ByteSize() == 2 * 1024 * 1024
    responder.send(block)
    got = requester.wait_received("block", 10.0)
    assert (got.response_id, got.request_id) == (4242, 7)
    assert got.SerializeToString() == block.SerializeToString()
    assert requester.violations == [] and responder.violations == []


def test_make_block_message_exact_sizes() -> None:
    for size in (300, 1000, 65_536, 60_201, 1_000_003):
        assert make_block_message(size, request_id=1).ByteSize() == size
    with pytest.raises(ValueError):
        make_block_message(10)


def test_unmodelled_payload_kinds_pass_through_to_received(emu: Factory) -> None:
    inbound, outbound = handshaken(emu(), emu())
    outbound.send(msg(blockBody=b"\x0a\x00", request_id=9))
    outbound.send(msg(invRelayBlock=pb.InvRelayBlockMessage(hash=pb.Hash(bytes=bytes(32)))))
    assert inbound.wait_received("blockBody", 5.0).blockBody == b"\x0a\x00"
    assert inbound.wait_received("invRelayBlock", 5.0).invRelayBlock.hash.bytes == bytes(32)
    assert inbound.violations == []


# ------------------------------------------------------------------------------------------
# Violations (driven with the raw escape hatch / suppress knobs)


def assert_violation(s: PeerSession, fragment: str, *, closed: bool = True) -> None:
    assert s.wait_for(lambda s: any(fragment in v for v in s.violations), 5.0), s
    if closed:
        assert s.wait_closed(5.0), s


def test_violation_empty_payload(emu: Factory) -> None:
    inbound, outbound = handshaken(emu(), emu())
    outbound.send(msg())
    assert_violation(inbound, "received kaspad p2p message with empty payload")


def test_violation_unknown_payload_number(emu: Factory) -> None:
    inbound, outbound = handshaken(emu(), emu())
    outbound.send(b"\xfa\x03\x00")  # field 63 (smt chunk, master only), empty
    assert_violation(inbound, "empty payload (unknown payload field numbers [63])")


def test_violation_undecodable_bytes(emu: Factory) -> None:
    inbound, outbound = handshaken(emu(), emu())
    outbound.send(b"\xff\xff\xff")
    assert_violation(inbound, "undecodable KaspadMessage")


def test_violation_non_handshake_message_during_handshake(emu: Factory) -> None:
    a = emu()
    b = emu(suppress={"version"})
    inbound, outbound = connect(a, b)
    outbound.send(msg(ping=pb.PingMessage(nonce=1)))
    assert_violation(inbound, "unexpected ping during handshake")
    assert not inbound.handshake_complete


@pytest.mark.parametrize(
    "extra",
    [
        msg(version=pb.VersionMessage(protocolVersion=8)),
        msg(verack=pb.VerackMessage()),
        msg(ready=pb.ReadyMessage()),
    ],
    ids=["version", "verack", "ready"],
)
def test_violation_handshake_message_after_handshake(emu: Factory, extra: Any) -> None:
    inbound, outbound = handshaken(emu(), emu())
    outbound.send(extra)
    assert_violation(inbound, f"{extra.WhichOneof('payload')} after handshake")


def test_duplicate_version_during_handshake_is_recorded(emu: Factory) -> None:
    a = emu()
    b = emu()
    inbound, outbound = connect(a, b)
    outbound.send(version_message(b.config))  # queued right behind the built-in one
    assert_violation(inbound, "duplicate Version during handshake", closed=False)


def test_violation_second_addresses(emu: Factory) -> None:
    inbound, outbound = handshaken(emu(), emu(addresses=[(IP4, 1)]))
    assert inbound.wait_for(lambda s: s.remote_addresses is not None, 5.0)
    outbound.send(msg(addresses=pb.AddressesMessage(addressList=[pb.NetAddress(ip=IP4, port=2)])))
    assert_violation(inbound, "second Addresses message")


def _bad_addresses(entries: list[Any]) -> Any:
    return msg(addresses=pb.AddressesMessage(addressList=entries))


@pytest.mark.parametrize(
    ("receiver_v2", "sender_v2", "entries", "fragment", "reject"),
    [
        (False, False, [pb.NetAddress(ip=b"\x01\x02\x03\x04\x05", port=1)],
         "IP has illegal length 5", "IP has illegal length 5"),
        (False, False, [pb.NetAddress(port=1)],
         "IP has illegal length 0", "IP has illegal length 0"),
        (False, True, [pb.NetAddress(onion=ONION, port=1)],
         "IP has illegal length 0", "IP has illegal length 0"),
        (True, True, [pb.NetAddress(onion="a" * 55 + ".onion", port=1)],
         "host part has 55 chars", None),
        (True, True, [pb.NetAddress(onion="a" * 56 + ".onio", port=1)], "missing .onion", None),
        (True, True, [pb.NetAddress(onion="1" * 56 + ".onion", port=1)], "not base32", None),
        (True, True, [pb.NetAddress(port=1)], "neither ip nor onion", None),
        (False, False, [pb.NetAddress(ip=IP4, port=70000)], "port 70000 does not fit", None),
        (False, False, [pb.NetAddress(ip=IP4, port=1)] * 2501,
         "address count 2501 exceeded 2500", "address count 2501 exceeded 2500"),
    ],
    ids=["ip5", "no-ip", "onion-to-legacy", "onion-55", "onion-suffix", "onion-b32",
         "v2-none", "port", "too-many"],
)  # fmt: skip
def test_violation_illegal_addresses(
    emu: Factory,
    receiver_v2: bool,
    sender_v2: bool,
    entries: list[Any],
    fragment: str,
    reject: str | None,
) -> None:
    inbound, outbound = handshaken(
        emu(addrv2=receiver_v2), emu(addrv2=sender_v2, suppress={"addresses"})
    )
    outbound.wait_received("requestAddresses", 5.0)
    outbound.send(_bad_addresses(entries))
    assert_violation(inbound, fragment)
    assert inbound.remote_addresses is None
    # kaspad's flow error path sends Reject{reason} before closing.
    assert outbound.wait_closed(5.0)
    assert outbound.closed_reason is not None and outbound.closed_reason.startswith("reject: ")
    if reject is not None:
        assert outbound.closed_reason == f"reject: {reject}"
    assert any("unexpected Reject from peer" in v for v in outbound.violations)


def test_v2_receiver_silently_drops_onion_from_legacy_sender(emu: Factory) -> None:
    inbound, outbound = handshaken(emu(addrv2=True), emu(addrv2=False, suppress={"addresses"}))
    outbound.wait_received("requestAddresses", 5.0)
    outbound.send(_bad_addresses([pb.NetAddress(onion=ONION, port=1), pb.NetAddress(ip=IP4)]))
    assert inbound.wait_for(lambda s: s.remote_addresses is not None, 5.0)
    assert inbound.violations == []


@pytest.mark.parametrize(
    ("suppress", "cfg", "fragment"),
    [
        ("version", {"handshake_timeout": 0.3}, "timeout expired after 0.3s waiting for Version"),
        ("verack", {"handshake_timeout": 0.3}, "timeout expired after 0.3s waiting for Verack"),
        ("ready", {"ready_timeout": 0.3}, "timeout expired after 0.3s waiting for Ready"),
        ("addresses", {"addresses_timeout": 0.3},
         "timeout expired after 0.3s waiting for Addresses"),
        ("pong", {"ping_interval": 0.05, "pong_timeout": 0.3},
         "timeout expired after 0.3s waiting for Pong"),
    ],
)  # fmt: skip
def test_violation_timeouts(
    emu: Factory, suppress: str, cfg: dict[str, float], fragment: str
) -> None:
    a = emu(**cfg)
    b = emu(suppress={suppress})
    inbound, outbound = connect(a, b)
    t0 = time.monotonic()
    assert_violation(inbound, fragment)
    assert time.monotonic() - t0 >= 0.25
    assert outbound.wait_closed(5.0)
    assert outbound.closed_reason == "reject: timeout expired after 0.3s"


def test_violation_pong_nonce_mismatch(emu: Factory) -> None:
    inbound, outbound = handshaken(emu(ping_interval=0.05), emu(suppress={"pong"}))
    ping = outbound.wait_received("ping", 5.0)
    outbound.send(msg(pong=pb.PongMessage(nonce=(ping.ping.nonce + 1) % 2**64)))
    assert_violation(inbound, "nonce mismatch between ping and pong")
    assert outbound.wait_closed(5.0)
    assert outbound.closed_reason == "reject: nonce mismatch between ping and pong"


def test_violation_unsolicited_pong(emu: Factory) -> None:
    inbound, outbound = handshaken(emu(), emu())
    outbound.send(msg(pong=pb.PongMessage(nonce=5)))
    assert_violation(inbound, "unsolicited Pong")


def test_violation_response_id_without_request(emu: Factory) -> None:
    inbound, outbound = handshaken(emu(), emu())
    outbound.send(make_block_message(1000, response_id=99))
    assert_violation(inbound, "block with response_id 99 matches no pending request")


@pytest.mark.parametrize(
    ("client_cfg", "fragment", "reject"),
    [
        ({"network": "kaspa-mainnet"},
         "Network mismatch - local: kaspa-simnet, remote: kaspa-mainnet",
         "Network mismatch - local: kaspa-simnet, remote: kaspa-mainnet"),
        ({"protocol_version": 6}, "P2P protocol version mismatch - local: 8, remote: 6",
         "P2P protocol version mismatch - local: 8, remote: 6"),
        ({"node_id": b"short"}, "Version.id has 5 bytes", None),
        ({"advertised_address": (b"\x01\x02", 1)},
         "illegal Version.address: IP has illegal length 2", "IP has illegal length 2"),
        ({"advertised_address": (ONION, 1), "addrv2": True},
         "illegal Version.address: IP has illegal length 0", "IP has illegal length 0"),
    ],
    ids=["network", "protocol-version", "id-length", "address-ip", "onion-address-legacy"],
)  # fmt: skip
def test_violation_version_validation(
    emu: Factory, client_cfg: dict[str, Any], fragment: str, reject: str | None
) -> None:
    inbound, outbound = connect(emu(), emu(**client_cfg))
    assert_violation(inbound, fragment)
    assert not inbound.handshake_complete
    assert outbound.wait_closed(5.0)
    if client_cfg.get("network"):  # symmetric: the client may hit its own mismatch first
        assert outbound.violations
    else:
        assert outbound.closed_reason == f"reject: {reject or inbound.sent_rejects[0]}"


def test_onion_version_address_accepted_between_v2_peers(emu: Factory) -> None:
    inbound, _ = handshaken(emu(addrv2=True), emu(addrv2=True, advertised_address=(ONION, 16111)))
    assert inbound.remote_version.address.onion == ONION
    assert inbound.violations == []


def test_loopback_connection_rejected(emu: Factory) -> None:
    a = emu()
    port = a.start_server()
    out = a.dial("127.0.0.1", port)
    inbound = a.wait_sessions(2, 5.0)[1]
    for s in (inbound, out):
        assert_violation(s, "loopback connection")
        # Each side also receives the other's LOOPBACK_CONNECTION Reject, which is ignorable.
        assert not any("unexpected Reject" in v for v in s.violations)


def test_duplicate_connection_rejected(emu: Factory) -> None:
    a, b = emu(), emu()
    first_in, first_out = handshaken(a, b)
    second_in, second_out = connect(a, b)
    # Both kaspads already hold the other's (node id, 127.0.0.1): both refuse the second one,
    # and neither counts the other's DUPLICATE_CONNECTION Reject as a violation.
    for s in (second_in, second_out):
        assert_violation(s, "duplicate connection")
        assert not any("unexpected Reject" in v for v in s.violations)
    assert not first_in.closed and not first_out.closed


def test_unexpected_reject_is_violation_ignorable_is_not(emu: Factory) -> None:
    in1, out1 = handshaken(emu(), emu())
    out1.send(msg(reject=pb.RejectMessage(reason="boom")))
    assert_violation(in1, "unexpected Reject from peer: 'boom'")
    assert in1.closed_reason == "reject: boom"
    in2, out2 = handshaken(emu(), emu())
    out2.send(msg(reject=pb.RejectMessage(reason="LOOPBACK_CONNECTION")))
    assert in2.wait_closed(5.0)
    assert in2.closed_reason == "reject: LOOPBACK_CONNECTION"
    assert in2.violations == []


def test_non_strict_records_but_stays_connected(emu: Factory) -> None:
    inbound, outbound = handshaken(emu(strict=False, ping_interval=0.05), emu(ping_interval=0.05))
    outbound.send(msg(version=pb.VersionMessage()))
    outbound.send(msg())
    assert inbound.wait_for(lambda s: len(s.violations) >= 2, 5.0)
    # still alive: pings keep flowing both ways after the violations
    n = outbound.stats.pongs_ok
    assert outbound.wait_for(lambda s: s.stats.pongs_ok >= n + 2, 5.0)
    assert not inbound.closed and not outbound.closed


def test_violation_response_headers_timeout(emu: Factory) -> None:
    silent = emu(response_headers_delay=None)
    port = silent.start_server()
    out = emu(response_headers_timeout=0.3).dial("127.0.0.1", port)
    t0 = time.monotonic()
    assert_violation(out, "response HEADERS not received within 0.3s")
    assert time.monotonic() - t0 < 3.0
    assert out.stats.messages_out == 0  # like kaspad: no DATA before response headers


def test_close_while_waiting_for_response_headers(emu: Factory) -> None:
    silent = emu(response_headers_delay=None)
    port = silent.start_server()
    out = emu(response_headers_timeout=30.0).dial("127.0.0.1", port)
    assert len(silent.wait_sessions(1, 5.0)) == 1  # the request reached the server
    out.close()
    t0 = time.monotonic()
    assert out.wait_closed(5.0)
    assert time.monotonic() - t0 < 2.0
    assert out.closed_reason == "closed locally" and out.violations == []


def test_delayed_response_headers_within_budget(emu: Factory) -> None:
    slow = emu(response_headers_delay=0.3)
    inbound, outbound = handshaken(slow, emu(response_headers_timeout=2.0))
    assert outbound.violations == [] and inbound.violations == []


def test_violation_connect_timeout(emu: Factory) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    out = emu(connect_timeout=0.3).dial("127.0.0.1", port)
    assert_violation(out, "not completed within 0.3s")
    assert not out.handshake_complete


def test_connect_timeout_covers_silent_h2_server_with_one_tcp_attempt(emu: Factory) -> None:
    """A listener that accepts but never sends HTTP/2 SETTINGS: grpcio waits for SETTINGS before
    it considers the connection up, so connect_timeout fires, after exactly one TCP connect."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        out = emu(connect_timeout=0.5).dial("127.0.0.1", listener.getsockname()[1])
        assert_violation(out, "not completed within 0.5s")
        assert len(accepted) == 1
    finally:
        listener.close()
        for c in accepted:
            c.close()


# ------------------------------------------------------------------------------------------
# Wire-level checks against raw HTTP/2 peers (h2 library)


def grpc_frame(m: Any, flag: int = 0) -> bytes:
    body = m.SerializeToString()
    body = gzip.compress(body) if flag else body
    return struct.pack(">BI", flag, len(body)) + body


def parse_grpc_frames(buf: bytes) -> list[tuple[int, Any]]:
    out = []
    while len(buf) >= 5:
        flag, n = struct.unpack(">BI", buf[:5])
        if len(buf) < 5 + n:
            break
        body, buf = buf[5 : 5 + n], buf[5 + n :]
        out.append((flag, pb.KaspadMessage.FromString(gzip.decompress(body) if flag else body)))
    return out


class RawH2Peer:
    """One h2c connection driven by hand, for checking what grpcio puts on the wire.

    As server (``sock`` is a listener): waits for the request, then answers with ``:status 200``,
    ``content-type`` and ``resp_headers`` after ``delay`` seconds, then the given gRPC frames.
    As client: sends a MessageStream request with ``req_headers`` and the frames at once.
    Received DATA is accumulated in ``data``; ``wait_messages(n)`` waits for n gRPC messages.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        headers: list[tuple[str, str]],
        frames: list[bytes],
        delay: float = 0.0,
    ) -> None:
        self.client_side = port is not None
        self.headers = headers
        self.frames = frames
        self.delay = delay
        self.request_headers: dict[bytes, bytes] = {}
        self.response_headers: dict[bytes, bytes] = {}
        self.trailers: dict[bytes, bytes] = {}
        self.data_before_headers = b""
        self.data = b""
        self.cond = threading.Condition()
        self.finished = False
        self._stop = threading.Event()
        if port is None:
            self.listener: socket.socket | None = socket.create_server(("127.0.0.1", 0))
            self.port = self.listener.getsockname()[1]
        else:
            self.listener = None
            self.port = port
        threading.Thread(target=self._run, daemon=True).start()

    def close(self) -> None:
        self._stop.set()

    def wait_messages(self, n: int, timeout: float = 5.0) -> list[tuple[int, Any]]:
        with self.cond:
            self.cond.wait_for(
                lambda: len(parse_grpc_frames(self.data)) >= n or self.finished, timeout
            )
            return parse_grpc_frames(self.data)

    def wait_finished(self, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.finished, timeout)

    def _run(self) -> None:
        if self.listener is not None:
            conn, _ = self.listener.accept()
            self.listener.close()
        else:
            conn = socket.create_connection(("127.0.0.1", self.port))
        conn.settimeout(0.02)
        c = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=self.client_side, header_encoding=None)
        )
        c.initiate_connection()
        responded_at: float | None = None
        request_at: float | None = None
        if self.client_side:
            c.send_headers(1, [(":method", "POST"), (":scheme", "http"),
                               (":authority", f"127.0.0.1:{self.port}"),
                               (":path", "/protowire.P2P/MessageStream"), ("te", "trailers"),
                               ("content-type", "application/grpc"), *self.headers])  # fmt: skip
            for f in self.frames:
                c.send_data(1, f)
            responded_at = time.monotonic()
        conn.sendall(c.data_to_send())
        try:
            while not self._stop.is_set():
                if request_at is not None and responded_at is None:
                    if time.monotonic() >= request_at + self.delay:
                        c.send_headers(1, [(":status", "200"), ("content-type", "application/grpc"),
                                           *self.headers])  # fmt: skip
                        for f in self.frames:
                            c.send_data(1, f)
                        responded_at = time.monotonic()
                try:
                    d = conn.recv(1 << 20)
                except TimeoutError:
                    d = b"-"
                if d == b"":
                    break
                ended = False
                try:
                    events = c.receive_data(b"" if d == b"-" else d)
                except (h2.exceptions.ProtocolError, KeyError):
                    # e.g. grpc-core's shutdown PING after its GOAWAY closed h2's state machine
                    break
                for e in events:
                    if isinstance(e, h2.events.RequestReceived):
                        self.request_headers = dict(e.headers)
                        request_at = time.monotonic()
                    elif isinstance(e, h2.events.ResponseReceived):
                        self.response_headers = dict(e.headers)
                    elif isinstance(e, h2.events.TrailersReceived):
                        self.trailers = dict(e.headers)
                    elif isinstance(e, h2.events.DataReceived):
                        with self.cond:
                            if responded_at is None:
                                self.data_before_headers += e.data
                            self.data += e.data
                            self.cond.notify_all()
                        c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                    elif isinstance(e, h2.events.StreamReset | h2.events.StreamEnded):
                        ended = True
                conn.sendall(c.data_to_send())
                if ended:
                    break
        finally:
            conn.close()
            with self.cond:
                self.finished = True
                self.cond.notify_all()


HANDSHAKE_FRAMES = [
    grpc_frame(version_message(EmulatorConfig())),
    grpc_frame(msg(verack=pb.VerackMessage())),
    grpc_frame(msg(ready=pb.ReadyMessage())),
]


def test_client_headers_and_no_data_before_response_headers(emu: Factory) -> None:
    srv = RawH2Peer(headers=[("grpc-encoding", "gzip")], frames=HANDSHAKE_FRAMES, delay=0.3)
    out = emu().dial("127.0.0.1", srv.port)
    try:
        assert out.wait_handshake(5.0), out
        h = srv.request_headers
        assert h[b":path"] == b"/protowire.P2P/MessageStream"
        assert h[b":method"] == b"POST" and h[b":scheme"] == b"http"
        assert h[b"content-type"] == b"application/grpc" and h[b"te"] == b"trailers"
        assert h[b"grpc-encoding"] == b"gzip"
        assert b"gzip" in h[b"grpc-accept-encoding"]
        assert b"grpc-timeout" not in h
        assert srv.data_before_headers == b""
        kinds = [m.WhichOneof("payload") for _, m in srv.wait_messages(4)]
        assert kinds[:4] == ["version", "verack", "ready", "requestAddresses"]
    finally:
        srv.close()


def test_client_gzips_compressible_messages(emu: Factory) -> None:
    srv = RawH2Peer(headers=[("grpc-encoding", "gzip")], frames=HANDSHAKE_FRAMES)
    out = emu().dial("127.0.0.1", srv.port)
    try:
        assert out.wait_handshake(5.0), out
        n = len(srv.wait_messages(4))
        mixed = make_block_message(300_000, seed=1)
        rand = make_block_message(300_000, seed=2, fill="random")
        out.send(mixed)
        out.send(rand)
        got = srv.wait_messages(n + 2)[n:]
        assert [(f, m) for f, m in got] == [(1, mixed), (0, rand)]
    finally:
        srv.close()


@pytest.mark.parametrize(
    ("accept", "server_gzip", "flag"),
    [
        ("gzip,identity", True, 1),
        # grpcio deviation from tonic, pinned: it gzips even if the client does not accept gzip.
        ("identity", True, 1),
        ("identity", False, 0),
    ],
    ids=["gzip", "identity-grpcio-gzips-anyway", "identity-server-gzip-off"],
)
def test_server_response_compression(
    emu: Factory, accept: str, server_gzip: bool, flag: int
) -> None:
    a = emu(addresses=[(bytes([10, 0, 0, i]), 16111) for i in range(200)], server_gzip=server_gzip)
    port = a.start_server()
    cli = RawH2Peer(
        port=port,
        headers=[("grpc-accept-encoding", accept)],
        frames=[*HANDSHAKE_FRAMES, grpc_frame(msg(requestAddresses=pb.RequestAddressesMessage()))],
    )
    try:
        got = cli.wait_messages(5)
        assert [m.WhichOneof("payload") for _, m in got[:3]] == ["version", "verack", "ready"]
        ((addr_flag, addrs),) = [(f, m) for f, m in got if m.WhichOneof("payload") == "addresses"]
        assert len(addrs.addresses.addressList) == 200
        assert addr_flag == flag
        assert (cli.response_headers.get(b"grpc-encoding") == b"gzip") == (flag == 1)
        assert cli.response_headers[b":status"] == b"200"
    finally:
        cli.close()


def test_violation_compressed_flag_without_grpc_encoding_client_side(emu: Factory) -> None:
    srv = RawH2Peer(headers=[], frames=[grpc_frame(version_message(EmulatorConfig()), 1)])
    out = emu().dial("127.0.0.1", srv.port)
    try:
        assert_violation(out, "Compression bit set but no encoding configured")
    finally:
        srv.close()


def test_compressed_flag_without_grpc_encoding_server_side_aborts(emu: Factory) -> None:
    """grpcio's server API cannot report why grpc-core failed the call: the session just ends
    (see closed_reason) and the peer gets grpc-status 13."""
    a = emu()
    port = a.start_server()
    cli = RawH2Peer(
        port=port, headers=[], frames=[grpc_frame(version_message(EmulatorConfig()), 1)]
    )
    try:
        (inbound,) = a.wait_sessions(1, 5.0)
        assert inbound.wait_closed(5.0)
        assert not inbound.handshake_complete
        # Depending on thread timing grpcio reports the abort as the end of the request stream
        # or via the termination callback; either way no violation can be attributed.
        assert inbound.closed_reason in ("stream ended by peer", RPC_ABORTED)
        assert inbound.violations == []
        assert cli.wait_finished()
        assert cli.trailers.get(b"grpc-status") == b"13"
    finally:
        cli.close()
