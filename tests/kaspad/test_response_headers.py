"""The onion inbound answers a peer's request itself, before kaspad is dialed (issue G): its
response HEADERS must be the ones a real kaspad sends for the same request (protocol.md §2.5;
``grpc-encoding: gzip`` exactly when kaspad would compress). Asked of a real simnet kaspad of its
own (not the two-node rig's: this test's bare connection ends without a Version, which kaspad
logs as a handshake failure)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from bridge.core.h2conn import P2P_PATH
from bridge.core.relay import response_headers_for
from bridge.rig.kaspad import KaspadNode
from bridge.rig.tornet import free_ports

#: the request headers kaspad's own tonic client sends (protocol.md §2.5), by accept-encoding
TONIC = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"127.0.0.1:1"),
         (b":path", P2P_PATH), (b"te", b"trailers"), (b"content-type", b"application/grpc"),
         (b"grpc-encoding", b"gzip"), (b"user-agent", b"tonic/0.14.5")]
#: what the relay hands on of a response (the rest, e.g. hyper's ``date``, is dropped)
COMPARED = {b":status", b"content-type", b"grpc-encoding", b"grpc-accept-encoding"}


def _response_headers(port: int, request: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding=None))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, request)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(conn.data_to_send())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    return {bytes(k): bytes(v) for k, v in (ev.headers or []) if k in COMPARED}
            out = conn.data_to_send()
            if out:
                s.sendall(out)
    pytest.fail("kaspad sent no response HEADERS within 10 s")


@pytest.mark.timeout(180)
def test_the_bridges_own_response_headers_are_kaspads(kaspad_bin: Path, tmp_path: Path) -> None:
    rpc, p2p = free_ports(2)
    node = KaspadNode(kaspad_bin, tmp_path / "kaspad", rpc_port=rpc, p2p_port=p2p,
                      flags=["--outpeers=0", "--nodnsseed", "--disable-upnp"],
                      name="headers-kaspad")
    node.start(wait=90.0)
    try:
        for accept in (b"gzip,identity", b"identity", None):
            req = list(TONIC)
            if accept is not None:
                req.append((b"grpc-accept-encoding", accept))
            got = _response_headers(p2p, req)
            want = dict(response_headers_for(req))
            assert got == want, f"accept-encoding {accept!r}: kaspad {got}, bridge {want}"
    finally:
        node.stop()
