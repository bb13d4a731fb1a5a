"""The pieces of the private Tor network (:mod:`bridge.rig.tornet`) that concern one tor: the
roles, :class:`TorInstance` and its status, :class:`RigError`, binary lookup, free-port
reservation and the process handle that signals and reaps a tor.

No network logic (layout, torrc, readiness): that is :mod:`bridge.rig.torrc` and
:class:`bridge.rig.tornet.TorNetwork`. Import these through :mod:`bridge.rig.tornet`.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, TypedDict

from bridge.rig.control import ControlConnection
from bridge.tor.proc import spawn

AUTHORITY: Final = "authority"
RELAY: Final = "relay"
EXIT: Final = "exit"
CLIENT: Final = "client"
ONION_HOST: Final = "onion-host"
ROLES: Final = (AUTHORITY, RELAY, EXIT, CLIENT, ONION_HOST)


class RigError(RuntimeError):
    """The private network could not be started or driven. The message names the logs."""

    def __init__(self, message: str, *, log_dir: Path | None = None) -> None:
        if log_dir is not None:
            message = f"{message} (tor logs under {log_dir})"
        super().__init__(message)
        self.log_dir = log_dir


@dataclass(frozen=True)
class TorInstance:
    """One tor process of the network. ``name`` is also its tor nickname."""

    name: str
    role: str  # one of ROLES; an authority that is also an exit has role "authority", exit=True
    data_dir: Path
    control_port: int
    socks_port: int | None
    or_port: int | None
    cookie_path: Path
    control_password: str | None
    torrc: Path
    log_path: Path
    dir_port: int | None = None
    exit: bool = False

    @property
    def is_relay(self) -> bool:
        return self.role in (AUTHORITY, RELAY, EXIT)

    @property
    def home(self) -> Path:
        """The instance's directory (torrc, logs, data directory)."""
        return self.torrc.parent

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TorInstance:
        kw = dict(d)
        for k in ("data_dir", "cookie_path", "torrc", "log_path"):
            kw[k] = Path(kw[k])
        return cls(**kw)

    def controller(self, *, timeout: float = 5.0) -> ControlConnection:
        """A raw authenticated control connection (cookie auth)."""
        return ControlConnection(self.control_port, cookie_path=self.cookie_path, timeout=timeout)


class InstanceStatus(TypedDict):
    name: str
    role: str
    pid: int | None
    alive: bool
    bootstrap: int | None
    control_port: int
    socks_port: int | None
    or_port: int | None


# --------------------------------------------------------------------------------------------
# helpers


def find_binary(name: str) -> str | None:
    """``name`` on PATH, or in the sbin directories Debian installs tor into."""
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def find_tor() -> str | None:
    return find_binary("tor")


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that are free right now (bind probe).

    Ports are drawn below the kernel's ephemeral range when it leaves room (>= 10000 ports):
    tors that start later (clients, onion hosts) would otherwise race the relays' outgoing
    connections, whose source ports come from that range. Falls back to bind-to-0.
    """
    lo, _ = _ephemeral_range()
    pool = range(max(1024, lo - 20000), lo) if lo - 10000 >= 1024 else None
    rng = random.SystemRandom()
    socks: list[socket.socket] = []
    try:
        tries = 0
        while len(socks) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            port = rng.choice(pool) if pool is not None and tries < 50 * count else 0
            tries += 1
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            if is_reserved(s.getsockname()[1]):  # free now, but promised to a caller
                s.close()
                continue
            socks.append(s)
        ports = [s.getsockname()[1] for s in socks]
        reserve(ports)
        return ports
    finally:
        for s in socks:
            s.close()


#: ports this process already handed out: a probe only proves a port is free *now*, so two
#: callers that bind later (two daemons configured one after the other) must not get the same
_handed_out: set[int] = set()
_handed_lock = threading.Lock()


def reserve(ports: Sequence[int]) -> None:
    """Never hand these ports out again in this process."""
    with _handed_lock:
        _handed_out.update(ports)


def is_reserved(port: int) -> bool:
    with _handed_lock:
        return port in _handed_out


def _spawn(argv: Sequence[str], *, die_with_parent: bool, **kw: Any) -> subprocess.Popen[bytes]:
    return spawn(argv, die_with_parent=die_with_parent, **kw)


class _Proc:
    """A tor (or DNS stub) process: our Popen child, or a pid recorded in a state file."""

    def __init__(self, pid: int, marker: str, popen: subprocess.Popen[bytes] | None = None):
        self.pid = pid
        self.marker = marker  # a string that must be in /proc/<pid>/cmdline (pid-reuse guard)
        self.popen = popen

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
        return state != "Z" and self.marker.encode() in cmdline

    def send(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self, timeout: float) -> bool:
        """True once the process is gone (reaped if it is our child)."""
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen is not None else None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])
