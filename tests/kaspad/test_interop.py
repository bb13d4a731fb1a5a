"""Real kaspad in the loop: two unmodified simnet kaspads behind two bridge daemons, peering only
through onions of the private Tor network (see conftest). Blocks are made with kaspad's own RPC
(GetBlockTemplate → SubmitBlock) and observed with its block-added notifications.

The tests share one rig and run in file order: peering, block relay both ways, a 10 blocks/s
burst, IBD of a late node, hostile remotes in front of kaspad, then restarts (kaspad, bridge,
the onion-hosting tor). Every test ends with kaspad's own log checked for disconnects or bans
caused by what a bridge sent.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import time
from typing import Any

import pytest

from bridge.rig.nodes import KaspadRig, RigNode, mine, wait_synced
from bridge.rig.tornet import TorNetwork
from bridge.runtime.status import fetch
from tests.kaspad.conftest import MEASURED, assert_no_violations

UA_RE = re.compile(r"^/kaspad:\d+\.\d+\.\d+/")


def _peer_of(node: RigNode, other: RigNode) -> Any:
    """``other`` as ``node``'s kaspad sees it (GetConnectedPeerInfo), or None."""
    with other.kaspad.rpc(timeout=10.0) as ro:
        other_id = ro.info().p2pId
    with node.kaspad.rpc(timeout=10.0) as r:
        return next((p for p in r.peers() if p.id == other_id), None)


def _connected_since(peer: Any) -> float:
    """When the connection started, on this machine's monotonic clock (seconds). kaspad reports
    ``timeConnected`` as the connection's age in milliseconds."""
    return time.monotonic() - peer.timeConnected / 1000.0


def _same_connection(before: Any, since: float, after: Any) -> bool:
    """``after`` is the connection ``before`` was: same address, same start (±3 s)."""
    return (after is not None and after.address == before.address
            and abs(_connected_since(after) - since) < 3.0)


def _status(node: RigNode) -> dict[str, Any]:
    assert node.metrics_port is not None
    return fetch("127.0.0.1", node.metrics_port)


def test_two_nodes_peer_only_through_onions(kaspad_rig: KaspadRig) -> None:
    n0, n1 = kaspad_rig.nodes[:2]
    p01 = _peer_of(n0, n1)
    p10 = _peer_of(n1, n0)
    assert p01 is not None and p10 is not None, kaspad_rig.diagnose()
    # node0's kaspad dialed its bridge's slot; node1's kaspad got the peer from its bridge's
    # inbound relay: kaspad only ever talks to loopback
    assert p01.isOutbound and p01.address == f"127.0.0.1:{n0.slots[0]}", p01
    assert not p10.isOutbound and p10.address.startswith("127.0.0.1:"), p10
    for p in (p01, p10):
        assert p.advertisedProtocolVersion >= 10, p
        assert UA_RE.match(p.userAgent), p.userAgent
    # the only path between them: bridge0's slot relay goes to node1's onion, and node1's
    # bridge published exactly that onion
    st0, st1 = _status(n0), _status(n1)
    peers = [r["peer"] for s in st0["slots"] for r in s["relays"] if r["handshake"]]
    assert f"{n1.onion}:16511" in peers, st0["slots"]
    assert st1["tor"]["onion_address"] == n1.onion
    assert all(r["handshake"] for r in st1["inbound"]), st1["inbound"]
    # kaspad was started with the flags kaspad-flags prints: no listener but loopback, no
    # outbound of its own, no DNS seeding
    for node in (n0, n1):
        argv = node.kaspad.argv()
        assert "--outpeers=0" in argv and "--nodnsseed" in argv and "--disable-upnp" in argv
        assert f"--listen=127.0.0.1:{node.kaspad.p2p_port}" in argv
    assert_no_violations(kaspad_rig)


def test_blocks_cross_both_ways(kaspad_rig: KaspadRig) -> None:
    rep = mine(kaspad_rig, blocks=10, bps=2.0, on_nodes=[0, 1], settle=30.0)
    assert rep.rejected == 0
    assert rep.ok(), f"missing deliveries {rep.missing}\n{kaspad_rig.diagnose()}"
    assert all(r["received"] == rep.blocks for r in rep.per_node)
    MEASURED["block propagation, 2 blocks/s, p50/p99 (ms)"] = \
        f"{rep.propagation_ms['p50']}/{rep.propagation_ms['p99']}"
    assert_no_violations(kaspad_rig)


def test_burst_at_ten_blocks_per_second(kaspad_rig: KaspadRig) -> None:
    """300 blocks at mainnet's 10 blocks/s: none rejected, the receiver keeps up, the same
    connection carries all of it."""
    n0, n1 = kaspad_rig.nodes[:2]
    before = _peer_of(n1, n0)
    assert before is not None
    since = _connected_since(before)
    rep = mine(kaspad_rig, blocks=300, bps=10.0, on_nodes=[0], settle=30.0)
    assert rep.rejected == 0, rep
    assert rep.ok(), f"missing deliveries {rep.missing}\n{kaspad_rig.diagnose()}"
    # keeping up: kaspad's RPC made the blocks at (nearly) the asked rate, and no block needed
    # more than a few seconds to cross (a receiver falling behind accumulates delay)
    assert rep.achieved_bps >= 8.0, rep
    assert rep.propagation_ms["max"] < 10_000, rep.propagation_ms
    after = _peer_of(n1, n0)
    assert _same_connection(before, since, after), \
        f"the connection did not survive the burst: {before} -> {after}"
    MEASURED["burst 300 blocks at 10/s: achieved blocks/s"] = rep.achieved_bps
    MEASURED["burst propagation p50/p99/max (ms)"] = \
        f"{rep.propagation_ms['p50']}/{rep.propagation_ms['p99']}/{rep.propagation_ms['max']}"
    assert_no_violations(kaspad_rig)


@pytest.mark.timeout(900)
def test_ibd_of_a_late_node_through_bridge_and_tor(kaspad_rig: KaspadRig) -> None:
    """A third node started later syncs a chain of >= 500 blocks through bridge + Tor only."""
    n0 = kaspad_rig.nodes[0]
    with n0.kaspad.rpc(timeout=10.0) as r:
        have = int(r.dag_info().blockCount)
    want = 520
    if have < want:
        rep = mine(kaspad_rig, blocks=want - have, bps=100.0, on_nodes=[0], settle=60.0,
                   watch_nodes=[0])
        assert rep.rejected == 0
    t0 = time.monotonic()
    late = kaspad_rig.add_late_node(dials=(0,))
    try:
        kaspad_rig.wait_links([(late.index, 0)], timeout=180.0)
        peered = time.monotonic() - t0
        synced = wait_synced(kaspad_rig, late, n0, timeout=300.0)
        total = time.monotonic() - t0
        with late.kaspad.rpc(timeout=10.0) as r:
            blocks = int(r.dag_info().blockCount)
            peers = r.peers()
        assert blocks >= 500, blocks
        # through the bridge only: every peer of the late kaspad is its bridge's slot (the
        # bridge may relay a second kaspad dial of that slot to an onion learned by gossip)
        assert peers and {p.address for p in peers} == {f"127.0.0.1:{late.slots[0]}"}, peers
        MEASURED["IBD: blocks synced by a late node"] = blocks
        MEASURED["IBD: peering / sync / total (s)"] = \
            f"{peered:.1f} / {synced:.1f} / {total:.1f}"
        assert_no_violations(kaspad_rig)
    finally:
        late.kaspad.stop()
        if late.bridge is not None:
            late.bridge.stop()
        kaspad_rig.nodes.remove(late)


def test_no_duplicate_connection_churn(kaspad_rig: KaspadRig) -> None:
    """node1's bridge learns node0's onion by gossip while node0 is already connected to kaspad1
    (inbound); its spare slot must not dial node0 again and again (kaspad would drop each
    duplicate right after the handshake): the bridge recognises node0's node id and keeps it
    out. Each kaspad sees the other exactly once, and the churn signature (kaspad cancelling a
    fresh slot stream) does not repeat."""
    n0, n1 = kaspad_rig.nodes[:2]
    deadline = time.monotonic() + 60.0
    while _status(n1)["known_onions"] < 1 and time.monotonic() < deadline:
        time.sleep(1.0)
    assert _status(n1)["known_onions"] >= 1, "node1's bridge never learned node0's onion"
    time.sleep(40.0)  # more than kaspad's ~30 s retry of its --addpeer slot
    for a, b in ((n0, n1), (n1, n0)):
        with b.kaspad.rpc(timeout=10.0) as rb:
            idb = rb.info().p2pId
        with a.kaspad.rpc(timeout=10.0) as ra:
            same = [p for p in ra.peers() if p.id == idb]
        assert len(same) == 1, f"{a.name} sees {b.name} {len(same)} times"
    assert n1.bridge is not None
    churn = n1.bridge.log_text().count("kaspad reset the stream (CANCEL)")
    assert churn <= 1, f"duplicate-connection churn on node1's slot ({churn} cancels)"
    st = _status(n1)
    MEASURED["node1 bridge: duplicates kept from kaspad (pool/inbound)"] = \
        f"{st['pool']['stats'].get('duplicates', 0)}/" \
        f"{st['inbound_stats'].get('refused_duplicate', 0)}"
    assert_no_violations(kaspad_rig)


# -- hostile remotes in front of a real kaspad ----------------------------------------------

def _socks_connect(socks_port: int, host: str, port: int, timeout: float = 60.0) -> socket.socket:
    """A plain SOCKS5 CONNECT (username/password: a fresh Tor circuit) to ``host:port``."""
    s = socket.create_connection(("127.0.0.1", socks_port), timeout=timeout)
    user = os.urandom(8).hex().encode()
    s.sendall(b"\x05\x01\x02")
    assert s.recv(2) == b"\x05\x02"
    s.sendall(b"\x01" + bytes([len(user)]) + user + b"\x01x")
    assert s.recv(2)[1] == 0
    h = host.encode()
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(h)]) + h + struct.pack(">H", port))
    rep = s.recv(4)
    assert len(rep) == 4 and rep[1] == 0, f"SOCKS CONNECT failed: {rep!r}"
    atyp = rep[3]
    s.recv({1: 4, 4: 16}.get(atyp, 0) + 2 if atyp != 3 else s.recv(1)[0] + 2)
    return s


def _closed_by_peer(s: socket.socket, timeout: float = 30.0) -> tuple[bool, bytes]:
    """Read until EOF (the bridge closed this connection) or ``timeout``."""
    s.settimeout(1.0)
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def _h2_frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream) + payload


def _grpc_open() -> bytes:
    """HTTP/2 preface, SETTINGS and the HEADERS of a MessageStream call (hpack-encoded)."""
    import hpack

    block = hpack.Encoder().encode([
        (":method", "POST"), (":scheme", "http"), (":path", "/protowire.P2P/MessageStream"),
        (":authority", "peer"), ("content-type", "application/grpc"), ("te", "trailers")])
    return (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _h2_frame(4, 0, 0, b"")
            + _h2_frame(1, 4, 1, block))


HOSTILE = {
    "garbage": lambda: os.urandom(70_000),
    # a KaspadMessage whose payload is field 999 (no route in kaspad: it would drop the peer)
    "unknown-message": lambda: _grpc_open() + _h2_frame(
        0, 0, 1, b"\x00" + struct.pack(">I", 4) + b"\xba\x3e\x01\x00"),
    # one gRPC message declaring 512 MiB, sent as fast as flow control is ignored
    "flood": lambda: _grpc_open() + b"".join(
        _h2_frame(0, 0, 1, (b"\x00" + struct.pack(">I", 512 << 20) if i == 0 else b"")
                  + os.urandom(16_000)) for i in range(400)),
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("attack", list(HOSTILE))
def test_hostile_remote_closes_only_itself(kaspad_rig: KaspadRig, tornet: TorNetwork,
                                           attack: str) -> None:
    n0, n1 = kaspad_rig.nodes[:2]
    before = _peer_of(n1, n0)
    assert before is not None
    since = _connected_since(before)
    client = tornet.clients[0]
    assert client.socks_port is not None and n1.onion is not None
    s = _socks_connect(client.socks_port, n1.onion, 16511)
    try:
        payload = HOSTILE[attack]()
        try:
            s.sendall(payload)
        except OSError:
            pass  # closed while we were still writing: that is the point
        closed, _ = _closed_by_peer(s)
    finally:
        s.close()
    assert closed, f"the bridge kept the {attack} connection open"
    # kaspad kept its other peer (the same connection), and a block still crosses
    after = _peer_of(n1, n0)
    assert _same_connection(before, since, after), \
        f"kaspad lost its honest peer after the {attack} remote\n{kaspad_rig.diagnose()}"
    rep = mine(kaspad_rig, blocks=2, bps=2.0, on_nodes=[0], settle=30.0)
    assert rep.ok(), rep
    st = _status(n1)
    assert st["health"]["ok"], st["health"]
    assert_no_violations(kaspad_rig)


# -- restarts ------------------------------------------------------------------------------

def _recovered(rig: KaspadRig, what: str, t0: float, timeout: float = 300.0) -> float:
    """Wait until node0 and node1 are peered again over a connection that started after ``t0``
    (the event broke the old one), then check a block crosses each way."""
    n0, n1 = rig.nodes[:2]
    deadline = t0 + timeout
    while True:
        try:
            p = _peer_of(n0, n1)
            q = _peer_of(n1, n0)
        except Exception:
            p = q = None
        if p is not None and q is not None and _connected_since(p) > t0 - 1.0:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"no new connection {timeout:.0f}s after {what}\n{rig.diagnose()}")
        time.sleep(0.25)
    took = time.monotonic() - t0
    MEASURED[f"recovery after {what} (s)"] = round(took, 1)
    rep = mine(rig, blocks=2, bps=2.0, on_nodes=[0, 1], settle=30.0)
    assert rep.ok(), f"after {what}: {rep}\n{rig.diagnose()}"
    return took


@pytest.mark.timeout(1200)
def test_peering_comes_back_after_restarts(kaspad_rig: KaspadRig, tornet: TorNetwork) -> None:
    """kaspad restarted (each side), a bridge restarted, the onion-hosting tor killed: peering
    comes back by itself; the time each took is reported in the session summary."""
    n0, n1 = kaspad_rig.nodes[:2]
    t0 = time.monotonic()
    n1.kaspad.stop()
    n1.kaspad.start(wait=90.0)
    _recovered(kaspad_rig, "kaspad restart (dialed side)", t0)

    t0 = time.monotonic()
    n0.kaspad.stop()
    n0.kaspad.start(wait=90.0)
    _recovered(kaspad_rig, "kaspad restart (dialing side)", t0)

    for node, side in ((n0, "slot side"), (n1, "onion side")):
        assert node.bridge is not None
        t0 = time.monotonic()
        node.bridge.stop()
        node.bridge.start()
        _recovered(kaspad_rig, f"bridge restart ({side})", t0)

    host = kaspad_rig._onion_host(1)  # the tor that publishes node1's onion
    t0 = time.monotonic()
    tornet.stop_instance(host, hard=True)
    tornet.start_instance(host, wait=True, timeout=120.0)
    _recovered(kaspad_rig, "SIGKILL of the onion-hosting tor", t0, timeout=400.0)
    assert_no_violations(kaspad_rig)
