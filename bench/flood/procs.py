"""flood_bench's processes: the real daemon, nghttpx, the attacker (``python3 -m bench.floods``)
and the world (``python3 -m bench.flood_world``), with the optional CPU pinning
(``--attacker-cpu``: set :data:`PIN` before starting them).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.flood.probes import http_get
from bench.harness.procs import REPO, free_port, listening
from bench.harness.tools import ToolProc, nghttpx_exe

ATTACKER_NICE = 10

#: ``--attacker-cpu N``: the attacker process runs on CPU N only and everything else (daemon,
#: world, nghttpx) on the other CPUs, so the attacker's own CPU use cannot be taken from the
#: target or the honest relay (on a real deployment the attacker's CPU is not the bridge host's).
#: ``None``: no pinning (the attacker is only niced).
PIN: tuple[set[int], set[int]] | None = None


def _pinned(attacker: bool) -> Callable[[], None] | None:
    """A ``preexec_fn`` that applies :data:`PIN` to the child (None when not pinning)."""
    if PIN is None:
        return None
    cpus = PIN[0] if attacker else PIN[1]

    def apply() -> None:
        os.sched_setaffinity(0, cpus)

    return apply


#: children import this checkout's code (a worktree's, when run from one), not the installed one
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


class DaemonProc:
    """``python3 -m bridge run -c <toml>``: the real daemon, log to a file."""

    def __init__(self, workdir: Path, kaspad_port: int, socks_port: int, peers: list[str],
                 slots: int, pool: int) -> None:
        from bridge.rig.demo import free_port_range
        from bridge.rig.tornet import free_ports

        self.slot_base = free_port_range(slots)
        self.slots = slots
        self.inbound, self.metrics = free_ports(2)
        cfg = workdir / "bridge.toml"
        cfg.write_text(f"""network = "kaspa-simnet"
mode = "tor-only"
data_dir = "{workdir / 'data'}"
log_level = "info"
[kaspad]
p2p = "127.0.0.1:{kaspad_port}"
[slots]
base_port = {self.slot_base}
count = {slots}
[inbound]
listen = "127.0.0.1:{self.inbound}"
[tor]
socks = "127.0.0.1:{socks_port}"
control = ""
listen_onion = false
[peers]
connect = [{", ".join(f'"{p}:16511"' for p in peers)}]
dns_seed = false
refresh_interval = 0
[pool]
size = {pool}
dial_timeout = 10.0
[metrics]
listen = "127.0.0.1:{self.metrics}"
""")
        self.log_path = workdir / "bridge.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "bridge", "run", "-c", str(cfg)],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     cwd=REPO, env=ENV, preexec_fn=_pinned(False))
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log_path.read_text()[-2000:]}")
            if listening(self.inbound) and listening(self.metrics):
                with contextlib.suppress(OSError):
                    http_get(self.metrics, "/health", 2)
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("daemon did not come up in 30 s")
            time.sleep(0.1)

    def stop(self) -> float | None:
        """SIGTERM; seconds until it exited (None: killed after 15 s)."""
        t0 = time.monotonic()
        took: float | None = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
                took = time.monotonic() - t0
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return took

    def tracebacks(self) -> int:
        return self.log_path.read_text(errors="replace").count("Traceback")


class NghttpxProc(ToolProc):
    """nghttpx as an h2c reverse proxy, its default limits and timeouts, one worker."""

    def __init__(self, backend: int) -> None:
        port = free_port()
        self._started(subprocess.Popen(
            [nghttpx_exe(), "--conf=/dev/null", f"--frontend=127.0.0.1,{port};no-tls",
             f"--backend=127.0.0.1,{backend};;proto=h2;no-tls", "--workers=1", "--no-via",
             "--log-level=WARN", "--errorlog-file=/dev/null", "--accesslog-file=/dev/null"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_pinned(False)), port, "nghttpx", 10, poll=0.05)


class Attacker:
    """``python3 -m bench.floods``: waits for :meth:`go` (client) or floods what dials it once
    ``go`` (server: ``go`` is simply its start)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        # niced: on a real deployment the attacker's CPU is not the bridge host's
        self.proc = subprocess.Popen(["nice", "-n", str(ATTACKER_NICE), sys.executable, "-m",
                                      "bench.floods", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=REPO, env=ENV, preexec_fn=_pinned(True))
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("attacker did not start")
        if spec.get("serve"):
            self.proc.stdout.readline()  # {"listening": port}

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def records(self, timeout: float) -> list[dict[str, Any]]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return [json.loads(ln) for ln in out.splitlines() if ln.startswith("{\"kind\"")]


class World:
    """``python3 -m bench.flood_world``: SOCKS, honest remote, kaspad emulator, honest relay and
    slot connections in their own process; one JSON command, one JSON answer."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.flood_world"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=REPO, env=ENV, preexec_fn=_pinned(False))
        self.socks_port = int(self._read()["socks"])

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("flood_world exited")
        out: dict[str, Any] = json.loads(line)
        return out

    def ask(self, op: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        out = self._read()
        if "error" in out:
            raise RuntimeError(f"flood_world {op}: {out['error']}")
        return out

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("quit")
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
