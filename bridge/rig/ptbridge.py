"""An obfs4 bridge relay in a private Tor network (tests and demos of censored-network setups).

:func:`start_obfs4_bridge` runs one extra tor that joins a running :class:`TorNetwork` as a
*bridge*: an unlisted relay (``BridgeRelay 1``, ``PublishServerDescriptor 0``) that accepts
clients only through the obfs4 transport (``ServerTransportPlugin obfs4 exec obfs4proxy``, its
plain ORPort on loopback as every relay of the rig). Once obfs4proxy has written its
``obfs4_bridgeline.txt``, :attr:`Obfs4Bridge.line` is the line a client puts in ``tor.bridges``.
Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.rig.tornet import TorNetwork, find_binary, free_ports
from bridge.tor.proc import spawn

#: torrc options a tor needs to join the rig's network (taken from its client's torrc)
NETWORK_OPTIONS = ("TestingTorNetwork", "DirAuthority", "PathsNeededToBuildCircuits",
                   "ShutdownWaitLength")


def find_obfs4proxy() -> str | None:
    """The obfs4 server binary: obfs4proxy, or its successor lyrebird (PATH or sbin)."""
    return find_binary("obfs4proxy") or find_binary("lyrebird")


def network_torrc(net: TorNetwork) -> list[str]:
    """The lines that make a tor join ``net`` (authorities and testing options)."""
    return [ln for ln in net.client.torrc.read_text().splitlines()
            if ln.split(" ", 1)[0] in NETWORK_OPTIONS]


@dataclass
class Obfs4Bridge:
    """A running obfs4 bridge relay. ``line``: ``obfs4 127.0.0.1:<port> <fingerprint>
    cert=... iat-mode=0``."""

    home: Path
    line: str
    fingerprint: str
    obfs4_port: int
    or_port: int
    proc: subprocess.Popen[bytes]

    @property
    def log_path(self) -> Path:
        return self.home / "tor.log"

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_obfs4_bridge(net: TorNetwork, home: Path, *, timeout: float = 60.0,
                       obfs4proxy: str | None = None) -> Obfs4Bridge:
    """Start an obfs4 bridge relay for ``net`` under ``home``; returns once its bridge line is
    known. Raises RuntimeError (with the log's tail) if it does not come up."""
    binary = obfs4proxy or find_obfs4proxy()
    if binary is None:
        raise RuntimeError("obfs4proxy not found (apt-get install -y obfs4proxy)")
    tor = net.tor_binary
    or_port, obfs4_port, control_port = free_ports(3)
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    torrc = home / "torrc"
    torrc.write_text("\n".join([
        *network_torrc(net),
        f"DataDirectory {data}",
        "Nickname obfs4bridge",
        f"Log notice file {home / 'tor.log'}",
        "SafeLogging 0",
        f"ControlPort 127.0.0.1:{control_port}",
        "SocksPort 0",
        f"ORPort 127.0.0.1:{or_port}",
        "Address 127.0.0.1",
        "AssumeReachable 1",
        "BridgeRelay 1",
        "PublishServerDescriptor 0",
        "ExitRelay 0",
        "ExitPolicy reject *:*",
        f"ServerTransportPlugin obfs4 exec {binary}",
        f"ServerTransportListenAddr obfs4 127.0.0.1:{obfs4_port}",
        "ExtORPort auto",
    ]) + "\n")
    proc = spawn([tor, "-f", str(torrc)], stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    line_file, fp_file = data / "pt_state" / "obfs4_bridgeline.txt", data / "fingerprint"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if line_file.exists() and fp_file.exists():
            m = re.search(r"cert=\S+ iat-mode=\d", line_file.read_text())
            if m:
                fingerprint = fp_file.read_text().split()[1]
                line = f"obfs4 127.0.0.1:{obfs4_port} {fingerprint} {m.group(0)}"
                return Obfs4Bridge(home, line, fingerprint, obfs4_port, or_port, proc)
        time.sleep(0.2)
    tail = (home / "tor.log").read_text(errors="replace")[-2000:] \
        if (home / "tor.log").exists() else ""
    if proc.poll() is None:
        proc.terminate()
    raise RuntimeError(f"obfs4 bridge did not come up within {timeout}s:\n{tail}")
