"""tor_bench's Tor side: the private Tor network, onion services on it, SOCKS dials, the client
tor's CPU and stream table, and ``socat`` as a SOCKS4a splice.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.harness.procs import free_port, proc_cpu
from bench.harness.tools import ToolProc, find_tool

VPORT = 16511


def start_tornet(workdir: Path) -> Any:
    from bridge.rig.tornet import TorNetwork

    net = TorNetwork(workdir, control_password="kaspa-tor-bridge-bench")
    t0 = time.monotonic()
    net.start(timeout=120)
    print(f"tor: private network up in {time.monotonic() - t0:.1f}s ({workdir})", flush=True)
    return net


def add_onion(net: Any, target_port: int) -> str:
    """Publish an ephemeral onion service (virtual port 16511 -> 127.0.0.1:target_port) on the
    network's onion host; returns the ``<id>.onion`` host."""
    host = net.onion_host
    with host.controller(timeout=30) as ctl:
        replies = ctl.command(f"ADD_ONION NEW:ED25519-V3 Flags=DiscardPK,Detach "
                              f"Port={VPORT},127.0.0.1:{target_port}")
    for status, text in replies:
        if status == "250" and text.startswith("ServiceID="):
            return str(text).split("=", 1)[1] + ".onion"
    raise RuntimeError(f"ADD_ONION failed: {replies}")


def dead_onion() -> str:
    """A valid v3 onion address that nobody publishes (an offline peer)."""
    from bridge.tor.keys import OnionKey

    k = bytearray(secrets.token_bytes(64))
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return OnionKey(bytes(k)).service_id + ".onion"


def socks5_connect(socks_port: int, host: str, port: int, timeout: float) -> socket.socket:
    """A blocking SOCKS5 CONNECT (fresh random credentials: its own circuit)."""
    s = socket.create_connection(("127.0.0.1", socks_port), timeout=timeout)
    user, pw = secrets.token_hex(8).encode(), secrets.token_hex(8).encode()
    s.sendall(b"\x05\x01\x02")
    if s.recv(2) != b"\x05\x02":
        raise OSError("socks: no user/pass auth")
    s.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(pw)]) + pw)
    if s.recv(2)[1:] != b"\x00":
        raise OSError("socks auth failed")
    h = host.encode()
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(h)]) + h + port.to_bytes(2, "big"))
    rep = s.recv(10)
    if len(rep) < 2 or rep[1] != 0:
        s.close()
        raise OSError(f"socks connect failed: {rep!r}")
    return s


def wait_reachable(socks_port: int, onion: str, timeout: float = 120) -> float:
    """Poll until a SOCKS connection to ``onion`` succeeds (its descriptor is published)."""
    t0 = time.monotonic()
    while True:
        try:
            socks5_connect(socks_port, onion, VPORT, 30).close()
            return time.monotonic() - t0
        except OSError:
            if time.monotonic() - t0 > timeout:
                raise
            time.sleep(1.0)


def tor_cpu(net: Any) -> float:
    total = 0.0
    for inst in net.instances:
        pid = net.pid(inst)
        if pid:
            with contextlib.suppress(OSError):
                total += proc_cpu(pid)[0]
    return total


class SocatSocks(ToolProc):
    """``socat TCP-LISTEN:p,fork SOCKS4A:127.0.0.1:<onion>:16511,socksport=S,socksuser=U``."""

    def __init__(self, socks_port: int, onion: str, user: str) -> None:
        exe = find_tool("socat")
        assert exe is not None
        port = free_port()
        self._started(subprocess.Popen(
            [exe, f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,nodelay",
             f"SOCKS4A:127.0.0.1:{onion}:{VPORT},socksport={socks_port},socksuser={user},"
             "nodelay"], stdin=subprocess.DEVNULL), port, "socat", 5)


def onion_streams(net: Any, target: str) -> dict[str, str]:
    """Stream id -> circuit id of the client tor's streams to ``target`` (``host:port``)."""
    with net.client.controller(timeout=10) as ctl:
        text = ctl.getinfo("stream-status")
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 4 and f[3] == target:
            out[f[0]] = f[2]
    return out
