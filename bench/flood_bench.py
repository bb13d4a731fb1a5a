"""By-hand flood benchmark (issue G): what each hostile-peer flood costs a real bridge daemon.

    python3 -m bench.flood_bench --quick                       # ~10 s per case, nothing written
    python3 -m bench.flood_bench --out docs/benchmarks.md      # 60 s per case (long)
    python3 -m bench.flood_bench --targets bridge --kinds ping,bomb --conns 32 --seconds 20

Everything is on 127.0.0.1 (no network namespace needed). Per case, fresh processes:

* the daemon: ``python3 -m bridge run -c <toml>`` (tor-only mode, ``tor.control = ""``, no onion
  published), its ``metrics.listen`` endpoint on, its inbound listener relaying to a grpcio kaspad
  emulator (``bridge/rig/emulator.py``), its slots dialing through the scripted SOCKS5 server of
  ``tests/peers/socks_server.py`` (playing Tor) to an honest remote emulator;
* an honest relay: an emulator remote dials the inbound listener, completes the handshake with
  the kaspad emulator through the daemon and sends 100 KB blocks (4 in flight) for the whole
  case; the kaspad side counts what arrives;
* the attacker: ``python3 -m bench.floods`` (its own process: its CPU is not the daemon's nor
  this process's), ``conns`` connections at once, each replaced when closed.

Each case first runs ``--baseline`` seconds with only the honest relay, then the flood for
``--seconds``. Measured: the daemon's ``VmRSS`` every 20 ms (growth = peak during the flood minus
the value when it started), ``GET /health`` started every 50 ms on schedule (latency = answer
time minus scheduled time, so a stalled loop counts every poll it delays), the honest relay's
messages per second during the flood against its own baseline just before, and every attacker
connection's fate (closed by the target or not, when, GOAWAY code).

Targets: ``bridge`` (attacks on the inbound listener, the onion side anyone can reach; ``silent``
on the slot ports), ``upstream`` (the daemon's pool dials a hostile upstream through SOCKS: it
floods once the flood starts; kaspad emulators keep one connection on every slot), ``nghttpx``
(nghttpx, Debian ``nghttp2-proxy``, as an h2c reverse proxy with its default limits in front of
the same kind of grpcio server, same honest relay and the same HTTP/2 floods; its RSS is master
plus worker; no /health).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import relay_bench as rb
from bench import report
from bench.flood_world import ONION_GOOD, ONION_HOSTILE

SAMPLE_EVERY = 0.02
#: a case whose target passes this RSS is stopped (SIGKILL): the machine is shared
RSS_CAP_KIB = 4 * 1024 * 1024
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
HEALTH_EVERY = 0.05
HEALTH_TIMEOUT = 10.0
#: acceptance (issue G): under every flood from 32 connections for 60 s
RSS_BOUND_MIB = 64
HEALTH_P99_MS = 100
TPUT_KEEP = 0.80
H2_KINDS = ("ping", "settings", "data0", "rst", "priority", "winupd", "cont")
BRIDGE_KINDS = (*H2_KINDS, "bomb", "addrs", "silent")
UPSTREAM_KINDS = ("ping", "settings", "stall", "bomb")
KIND_TEXT = {
    "ping": "PING flood, never reading", "settings": "empty SETTINGS flood, never reading",
    "data0": "empty DATA frames", "rst": "rapid reset (HEADERS + RST_STREAM)",
    "priority": "PRIORITY on new streams", "winupd": "WINDOW_UPDATE +1",
    "cont": "CONTINUATION without END_HEADERS", "bomb": "gzip-bomb Version (4 KB → 4 MiB)",
    "addrs": "Addresses with 340 000 entries", "silent": "silent slot connections",
    "stall": "warm upstream that never reads",
}


# -- processes and probes ---------------------------------------------------------------------


def tree_pids(pid: int) -> list[int]:
    out = [pid]
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                for c in f.read().split():
                    out += tree_pids(int(c))
    return out


class Sampler:
    """RSS (KiB) of a process and its children, sampled in a thread; peak since ``mark``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.capped = False
        self.peak = self.last = self.rss()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="rss")
        self.thread.start()

    def rss(self) -> int:
        total = 0
        for p in tree_pids(self.pid):
            with contextlib.suppress(OSError, RuntimeError):
                total += report.rss_kib(p)
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            v = self.rss()
            if v:
                self.last = v
                self.peak = max(self.peak, v)
            if v > RSS_CAP_KIB and not self.capped:
                self.capped = True
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
            time.sleep(SAMPLE_EVERY)

    def mark(self) -> int:
        self.peak = self.last = self.rss()
        return self.last

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)


def http_get(port: int, path: str, timeout: float) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0


class HealthPoller:
    """``GET /health`` started every HEALTH_EVERY s on schedule, each in a pool thread;
    (phase, latency s, status) per poll; status 0 = failed or timed out."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.phase = "base"
        self.samples: list[tuple[str, float, int]] = []
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="health")
        self.thread = threading.Thread(target=self._run, daemon=True, name="health")
        self.thread.start()

    def _one(self, phase: str, due: float) -> None:
        try:
            status = http_get(self.port, "/health", HEALTH_TIMEOUT)
        except OSError:
            status = 0
        self.samples.append((phase, time.monotonic() - due, status))

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            self._pool.submit(self._one, self.phase, due)
            due += HEALTH_EVERY
            time.sleep(max(0.0, due - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self._pool.shutdown(wait=True)

    def of(self, phase: str) -> list[float]:
        return [lat for p, lat, _ in self.samples if p == phase]


#: children import this checkout's code (a worktree's, when run from one), not the installed one
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(rb.REPO)}


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
                                     cwd=rb.REPO, env=ENV, preexec_fn=_pinned(False))
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log_path.read_text()[-2000:]}")
            if rb.listening(self.inbound) and rb.listening(self.metrics):
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


class NghttpxProc:
    """nghttpx as an h2c reverse proxy, its default limits and timeouts, one worker."""

    def __init__(self, backend: int) -> None:
        exe = rb.find_tool("nghttpx")
        if exe is None:
            raise RuntimeError("nghttpx not found (apt-get install -y nghttp2-proxy)")
        self.port = rb.free_port()
        self.proc = subprocess.Popen(
            [exe, "--conf=/dev/null", f"--frontend=127.0.0.1,{self.port};no-tls",
             f"--backend=127.0.0.1,{backend};;proto=h2;no-tls", "--workers=1", "--no-via",
             "--log-level=WARN", "--errorlog-file=/dev/null", "--accesslog-file=/dev/null"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_pinned(False))
        self.pid = self.proc.pid
        deadline = time.monotonic() + 10
        while not rb.listening(self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("nghttpx did not start listening")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Attacker:
    """``python3 -m bench.floods``: waits for :meth:`go` (client) or floods what dials it once
    ``go`` (server: ``go`` is simply its start)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        # niced: on a real deployment the attacker's CPU is not the bridge host's
        self.proc = subprocess.Popen(["nice", "-n", str(ATTACKER_NICE), sys.executable, "-m",
                                      "bench.floods", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=rb.REPO, env=ENV, preexec_fn=_pinned(True))
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


# -- one case ---------------------------------------------------------------------------------


@dataclass
class Case:
    target: str  # bridge | upstream | nghttpx
    kind: str
    conns: int
    seconds: float
    baseline: float
    rss_start_kib: int = 0
    rss_peak_kib: int = 0
    rss_end_kib: int = 0
    health_base: list[float] = field(default_factory=list)
    health_flood: list[float] = field(default_factory=list)
    health_failed: int = 0
    tput_base: float = 0.0  # honest messages/s before the flood
    tput_flood: float = 0.0  # during it
    tput_after: float = float("nan")  # in the seconds after it (recovery)
    attack: list[dict[str, Any]] = field(default_factory=list)
    socks_connects: int | None = None  # Tor connections the daemon made during the flood
    cpu_pct: float = float("nan")  # target's CPU during the flood, % of one core
    attacker_cpu_pct: float = float("nan")
    #: the world process (kaspad emulator, honest remote and sender) before / during the flood:
    #: with a target on the same CPUs, what it loses shows up as honest throughput lost
    world_cpu_base_pct: float = float("nan")
    world_cpu_pct: float = float("nan")
    wait_pct: float = float("nan")  # target runnable but not running (run queue), % of time
    rss_capped: bool = False
    shutdown_s: float | None = None
    tracebacks: int = 0
    load: str = ""
    error: str = ""
    cmd: str = ""
    commit: str = ""
    started: str = ""  # UTC time the case started

    # derived figures
    def growth_mib(self) -> float:
        return (self.rss_peak_kib - self.rss_start_kib) / 1024

    def health(self, q: float) -> float:
        return report.pct(self.health_flood, q) * 1e3 if self.health_flood else float("nan")

    def tput_ratio(self) -> float:
        return self.tput_flood / self.tput_base if self.tput_base > 0 else float("nan")

    def closed(self) -> tuple[int, int, float | None]:
        """(connections made, closed by the target, median seconds from open to close)"""
        made = [a for a in self.attack if not a["note"].startswith("connect failed")]
        shut = [a["closed"] - a["opened"] for a in made if a["closed"] is not None]
        return len(made), len(shut), statistics.median(shut) if shut else None


class World:
    """``python3 -m bench.flood_world``: SOCKS, honest remote, kaspad emulator, honest relay and
    slot connections in their own process; one JSON command, one JSON answer."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.flood_world"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=rb.REPO, env=ENV, preexec_fn=_pinned(False))
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


def run_case(target: str, kind: str, conns: int, seconds: float, baseline: float,
             world: World, workdir: Path, after: float = 0.0) -> Case:
    case = Case(target, kind, conns, seconds, baseline, load=report.loadavg(),
                started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    stoppers: list[Any] = []
    daemon: DaemonProc | None = None
    attacker: Attacker | None = None
    try:
        kaspad_port = int(world.ask("case")["port"])
        spec: dict[str, Any] = {"kind": kind, "conns": conns, "seconds": seconds}
        if target == "upstream":
            # the hostile upstreams: one listener that is an idle, well-behaved HTTP/2 server
            # until go(), every candidate onion routed to it by "Tor"
            spec.update(serve=True, port=rb.free_port())
            attacker = Attacker(spec)
            world.ask("routes", routes={h: spec["port"] for h in ONION_HOSTILE[:conns]})
        if target == "nghttpx":
            ng = NghttpxProc(kaspad_port)
            stoppers.append(ng.stop)
            pid, port, health_port = ng.pid, ng.port, None
        else:
            upstream = target == "upstream"
            slots = max(4, conns) if upstream else 4
            daemon = DaemonProc(workdir, kaspad_port, world.socks_port,
                                ONION_HOSTILE[:conns] if upstream else [ONION_GOOD], slots,
                                conns if upstream else 1)
            pid, port, health_port = daemon.pid, daemon.inbound, daemon.metrics
        world.ask("honest", port=port)
        sampler = Sampler(pid)
        stoppers.insert(0, sampler.stop)
        poller = HealthPoller(health_port) if health_port else None
        if poller:
            stoppers.insert(0, poller.stop)
        if target != "upstream":
            spec["port"] = port
            if kind == "silent":
                assert daemon is not None
                spec["ports"] = [daemon.slot_base + i for i in range(daemon.slots)]
            attacker = Attacker(spec)
        time.sleep(1.0)
        t_base = time.monotonic()
        wcpu_base = rb.tree_cpu(world.proc.pid)[0]
        time.sleep(baseline)
        t_flood = time.monotonic()
        wcpu0 = rb.tree_cpu(world.proc.pid)[0]
        case.world_cpu_base_pct = (wcpu0 - wcpu_base) / (t_flood - t_base) * 100
        case.rss_start_kib = sampler.mark()
        cpu0, wait0 = rb.tree_cpu(pid)[0], rb.tree_wait(pid)
        if poller:
            poller.phase = "flood"
        connects0 = world.ask("connects")["connects"]
        assert attacker is not None
        acpu0 = rb.tree_cpu(attacker.proc.pid)[0]
        attacker.go()
        if target == "upstream":
            assert daemon is not None
            world.ask("slots", ports=[daemon.slot_base + i for i in range(daemon.slots)])
        time.sleep(seconds)
        t_end = time.monotonic()
        case.rss_peak_kib = sampler.peak
        case.rss_capped = sampler.capped
        case.attacker_cpu_pct = (rb.tree_cpu(attacker.proc.pid)[0] - acpu0) / (t_end - t_flood) \
            * 100
        case.world_cpu_pct = (rb.tree_cpu(world.proc.pid)[0] - wcpu0) / (t_end - t_flood) * 100
        with contextlib.suppress(Exception):
            case.cpu_pct = (rb.tree_cpu(pid)[0] - cpu0) / (t_end - t_flood) * 100
            case.wait_pct = (rb.tree_wait(pid) - wait0) / (t_end - t_flood) * 100
        if poller:
            poller.phase = "after"
        case.attack = attacker.records(seconds + 60)
        attacker = None
        time.sleep(max(0.5, t_end + after - time.monotonic()))
        case.rss_end_kib = sampler.rss()
        case.tput_base = world.ask("rate", t0=t_base, t1=t_flood)["rate"] or float("nan")
        case.tput_flood = world.ask("rate", t0=t_flood, t1=t_end)["rate"] or float("nan")
        if after:
            case.tput_after = world.ask("rate", t0=t_end + 1.0,
                                        t1=time.monotonic())["rate"] or float("nan")
        if daemon is not None:
            case.socks_connects = world.ask("connects")["connects"] - connects0
        if poller:
            poller.stop()
            case.health_base = poller.of("base")
            case.health_flood = poller.of("flood")
            case.health_failed = sum(1 for p, _, s in poller.samples if p == "flood" and s == 0)
    except Exception as e:  # one broken case must not lose the run
        case.error = f"{type(e).__name__}: {e}"
    finally:
        if attacker is not None:
            attacker.proc.kill()
            attacker.proc.wait()
        for stop in stoppers:
            with contextlib.suppress(Exception):
                stop()
        if daemon is not None:
            case.shutdown_s = daemon.stop()
            case.tracebacks = daemon.tracebacks()
        with contextlib.suppress(Exception):
            world.ask("end")
    return case


def summary_line(c: Case) -> str:
    made, shut, med = c.closed()
    h = (f"/health p50 {report.pct(c.health_flood, .5) * 1e3:.0f} p99 {c.health(.99):.0f} "
         f"max {max(c.health_flood, default=float('nan')) * 1e3:.0f} ms "
         f"(failed {c.health_failed}); " if c.target != "nghttpx" else "")
    return (f"{c.target:8s} {c.kind:8s} x{c.conns:<3d} RSS +{c.growth_mib():.1f} MiB "
            f"(start {c.rss_start_kib / 1024:.0f}, end {c.rss_end_kib / 1024:.0f}); {h}"
            f"honest {c.tput_flood:.1f}/{c.tput_base:.1f} msg/s ({c.tput_ratio():.0%}; after "
            f"{c.tput_after:.1f}); "
            f"CPU {c.cpu_pct:.0f} % (attacker {c.attacker_cpu_pct:.0f} %, world "
            f"{c.world_cpu_base_pct:.0f} -> {c.world_cpu_pct:.0f} %), run-queue wait "
            f"{c.wait_pct:.0f} %; "
            f"attacker conns {made}, closed {shut}"
            + (f" (median {med:.2f} s)" if med is not None else "")
            + (f"; socks connects {c.socks_connects}" if c.socks_connects is not None else "")
            + (f"; shutdown {c.shutdown_s:.1f} s" if c.shutdown_s is not None else
               ("; shutdown HUNG (killed)" if c.target != "nghttpx" else ""))
            + (f"; tracebacks {c.tracebacks}" if c.tracebacks else "")
            + (f"; ERROR {c.error}" if c.error else ""))


# -- report -----------------------------------------------------------------------------------


def _f(x: float, fmt: str = "{:.0f}") -> str:
    return "—" if x != x else fmt.format(x)


def section(cases: list[Case]) -> str:
    runs: dict[tuple[str, str], list[Case]] = {}
    for c in cases:
        runs.setdefault((c.cmd, c.commit), []).append(c)
    L = ["## Floods (issue G)", "",
         "Generated by `bench/flood_bench.py` (runs merged with `--save` / `--report`):", ""]
    for (cmd, commit), cs in runs.items():
        L += [f"* `{cmd}`: {len(cs)} cases, code of commit `{commit}`, started "
              f"{cs[0].started}, load average {cs[0].load} at the first case and "
              f"{cs[-1].load} at the last"]
    L += ["",
          f"* {report.machine_line()}",
          "* **The machine has 2 cores, shared during these runs with other agents' test runs "
          "and a Rust build** (load averages above): the daemon, the attacker process, the "
          "emulators and nghttpx all compete for them, so throughput and latency figures carry "
          "that noise.", "",
         "**Method.** Per case, fresh processes on 127.0.0.1: the daemon as users run it "
         "(`python3 -m bridge run -c <toml>`: tor-only mode, `tor.control = \"\"`, no onion "
         "published, `metrics.listen` on, otherwise the defaults: `inbound.max_connections` "
         "64, `max_pending` 64, 4 slots, `pool.size` 1), its inbound listener relaying to a "
         "grpcio kaspad emulator, its pool dialing through the scripted SOCKS5 server of "
         "`tests/peers/socks_server.py` (playing Tor) to an honest remote emulator. An "
         "**honest relay** (an emulator remote dialing the inbound listener, handshaking with "
         "the kaspad emulator through the daemon, then sending 100 KB blocks, 4 in flight) "
         "runs for the whole case. The **attacker** (`python3 -m bench.floods`, its own "
         "process) keeps `conns` connections at once and replaces each one the target closes. "
         "First a baseline with the honest relay only (`s` column: flood seconds; baseline "
         f"{cases[0].baseline if cases else 0:.0f} s), then the flood. "
         "Targets: **bridge** = floods on the inbound listener (the "
         "onion side, anyone can reach it; *silent* goes to the slot ports, spread over the "
         "4 slots); **upstream** = the daemon's pool reaches a hostile upstream through "
         "\"Tor\" (`pool.size` and slots = conns): it behaves as an idle HTTP/2 server until "
         "the flood starts, then floods every connection the pool has or makes, while kaspad "
         "emulators keep a connection on every slot (re-dialed 0.5 s after one closes); "
         "**nghttpx** = nghttpx (Debian `nghttp2-proxy`, h2c reverse proxy, one worker, its "
         "default limits and timeouts) in front of the same kind of grpcio server, with the "
         "same honest relay and the same HTTP/2 floods (no /health: its RSS is master + "
         "worker). Frames are serialized by hand; the raw kinds never read what the target "
         "sends (PING/SETTINGS ACKs pile up on the target's side). *bomb*: a 4,200-byte "
         "gzip'd first Version that inflates to 4 MiB (a real Version then empty `address` "
         "fields), a new connection after each; *addrs*: handshake, then one Addresses "
         "message of 340,000 entries (767 KB gzip'd, 3.7 MB inflated), a new connection "
         "after each.", "",
         "Columns: **RSS +** = peak `VmRSS` during the flood minus the value at its start "
         "(MiB); **/health** p50 / p99 / max in ms during the flood (failed = no answer in "
         f"{HEALTH_TIMEOUT:.0f} s; before = p99 during the baseline); "
         "**honest** = honest relay messages/s during the flood / "
         "before it (ratio; after = in the seconds after the flood, from 1 s after its end: "
         "recovery, and a hint of how much the box's load drifted); "
         "**attacker** = connections made / closed by the target (median "
         "seconds to close; GOAWAY codes seen); **Tor conns** = SOCKS connections the daemon "
         "made during the flood; **CPU** = the target's CPU time during the flood, % of one "
         "core (the attacker process's in brackets; the attacker runs at nice "
         f"{ATTACKER_NICE}: a real attacker's CPU is not the bridge host's; with "
         "`--attacker-cpu N` it is also pinned to CPU N and everything else to the other "
         "CPUs; *world* = the process of the kaspad emulator and the honest peers, before → "
         "during the flood); **wait** = time "
         "the target was runnable but waiting for a CPU (run queue, `/proc/<pid>/schedstat`), "
         "% of the flood; **stop** = seconds from SIGTERM to exit "
         "after the case.", "",
         "| target | flood | conns | s | RSS + MiB | /health p50 / p99 / max ms | honest msg/s "
         "(ratio) | attacker: made / closed (median s) | GOAWAY | Tor conns | CPU % "
         "| wait % | stop s |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    kinds = [*BRIDGE_KINDS, *UPSTREAM_KINDS]
    targets = ["bridge", "nghttpx", "upstream"]
    for c in sorted(cases, key=lambda c: (c.target == "upstream", kinds.index(c.kind)
                                          if c.kind in kinds else 99, c.conns,
                                          targets.index(c.target))):
        made, shut, med = c.closed()
        codes = sorted({a["goaway"] for a in c.attack if a.get("goaway") is not None})
        if c.target == "nghttpx":
            health = "n/a"
        else:
            health = (f"{report.pct(c.health_flood, .5) * 1e3:.0f} / {c.health(.99):.0f} / "
                      f"{max(c.health_flood, default=float('nan')) * 1e3:.0f}"
                      + (f" ({c.health_failed} failed)" if c.health_failed else "")
                      + f" (before: p99 {_f(report.pct(c.health_base, .99) * 1e3)})")
        stop = ("—" if c.target == "nghttpx" else
                f"{c.shutdown_s:.1f}" if c.shutdown_s is not None else "**hung**")
        err = f" ERROR: {c.error}" if c.error else ""
        L.append(f"| {c.target} | {KIND_TEXT.get(c.kind, c.kind)} | {c.conns} | "
                 f"{c.seconds:.0f} | {c.growth_mib():+.1f}"
                 + (" (killed at the 4 GiB cap)" if c.rss_capped else "") + f" | {health} | "
                 f"{_f(c.tput_flood, '{:.0f}')} / {_f(c.tput_base, '{:.0f}')} "
                 f"({_f(c.tput_ratio() * 100)} %; after {_f(c.tput_after, '{:.0f}')}) | "
                 f"{made} / {shut}"
                 + (f" ({med:.2f})" if med is not None else "") + " | "
                 + (", ".join(str(x) for x in codes) or "—") + " | "
                 + ("—" if c.socks_connects is None else str(c.socks_connects))
                 + f" | {_f(c.cpu_pct)} ({_f(c.attacker_cpu_pct)}"
                 + ("" if c.world_cpu_pct != c.world_cpu_pct else
                    f"; world {_f(c.world_cpu_base_pct)} → {_f(c.world_cpu_pct)}")
                 + f") | {_f(c.wait_pct)} "
                 f"| {stop}{err} |")
    L += ["", "**Acceptance (issue G: from 32 connections at once for 60 s: RSS grows by at "
          f"most {RSS_BOUND_MIB} MiB, /health p99 within {HEALTH_P99_MS} ms, honest relays "
          f"keep at least {TPUT_KEEP:.0%} of their throughput)**, daemon cases with 32 "
          "connections:", ""]
    for c in cases:
        if c.target == "nghttpx" or c.conns < 32:
            continue
        checks = [("RSS", c.growth_mib() <= RSS_BOUND_MIB, f"{c.growth_mib():+.1f} MiB"),
                  ("/health p99", c.health(.99) <= HEALTH_P99_MS and not c.health_failed,
                   f"{c.health(.99):.0f} ms"),
                  ("throughput", c.tput_ratio() >= TPUT_KEEP, f"{c.tput_ratio():.1%}")]
        short = " (shorter than 60 s)" if c.seconds < 60 else ""
        L.append(f"* {c.target}, {KIND_TEXT.get(c.kind, c.kind)}{short}: " + "; ".join(
            f"{name} {val} {'holds' if ok else '**fails**'}" for name, ok, val in checks))
    return "\n".join(L)


def git_commit() -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run(["git", "log", "-1", "--format=%h %cI %s"], cwd=rb.REPO,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no",
                                "bridge"], cwd=rb.REPO, capture_output=True, text=True).stdout
        return out[:100] + (" (bridge/ has uncommitted changes)" if dirty.strip() else "")
    return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="10 s floods, 3 s baselines, nothing written unless --out")
    ap.add_argument("--seconds", type=float, default=60.0, help="flood duration per case")
    ap.add_argument("--baseline", type=float, default=8.0,
                    help="honest-only seconds before each flood")
    ap.add_argument("--after", type=float, default=6.0,
                    help="seconds the honest relay is measured after the flood (recovery)")
    ap.add_argument("--conns", default="1,32", help="attacker connection counts")
    ap.add_argument("--targets", default="bridge,upstream,nghttpx")
    ap.add_argument("--kinds", default="", help="only these flood kinds (default: all)")
    ap.add_argument("--save", type=Path, default=None,
                    help="append every case as a JSON line to this file")
    ap.add_argument("--report", type=Path, nargs="*", default=None,
                    help="no run: write the report from these --save files")
    ap.add_argument("--out", type=Path, default=None,
                    help="write the 'flood' section of this markdown file")
    ap.add_argument("--attacker-cpu", type=int, default=None,
                    help="pin the attacker to this CPU and everything else to the others")
    args = ap.parse_args(argv)
    if args.attacker_cpu is not None:
        global PIN
        cpus = os.sched_getaffinity(0)
        rest = cpus - {args.attacker_cpu}
        if args.attacker_cpu not in cpus or not rest:
            ap.error(f"--attacker-cpu {args.attacker_cpu}: needs a CPU of {sorted(cpus)} and "
                     "at least one other")
        PIN = ({args.attacker_cpu}, rest)
    cmd = "python3 -m bench.flood_bench " + " ".join(sys.argv[1:] if argv is None else argv)
    load = [report.loadavg()]
    commit = git_commit()
    if args.report is not None:
        saved = [Case(**json.loads(ln)) for f in args.report for ln in f.read_text().splitlines()
                 if ln.strip()]
        text = section(saved)
        print(text)
        if args.out:
            report.write_section(args.out, "flood", text)
        return 0
    if args.quick:
        args.seconds, args.baseline = min(args.seconds, 10.0), min(args.baseline, 3.0)
    rb.check_tools(["nghttpx"] if "nghttpx" in args.targets else [])
    only = set(filter(None, args.kinds.split(",")))
    counts = [int(x) for x in args.conns.split(",")]
    plan = []
    for target in args.targets.split(","):
        kinds = {"bridge": BRIDGE_KINDS, "upstream": UPSTREAM_KINDS, "nghttpx": H2_KINDS}[target]
        plan += [(target, k, n) for n in counts for k in kinds if not only or k in only]
    print(f"flood_bench: {len(plan)} cases of {args.seconds:.0f} s (+{args.baseline:.0f} s "
          f"baseline); load {load[0]}; commit {commit}", flush=True)
    world = World()
    cases: list[Case] = []
    try:
        for target, kind, n in plan:
            with tempfile.TemporaryDirectory(prefix="flood-") as d:
                c = run_case(target, kind, n, args.seconds, args.baseline, world, Path(d),
                             args.after)
            c.cmd, c.commit = cmd, commit
            cases.append(c)
            print(summary_line(c), flush=True)
            if args.save:
                with args.save.open("a") as f:
                    f.write(json.dumps(asdict(c)) + "\n")
    finally:
        world.stop()
    load.append(report.loadavg())
    text = section(cases)
    print()
    print(text)
    if args.out:
        report.write_section(args.out, "flood", text)
        print(f"wrote the flood section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
