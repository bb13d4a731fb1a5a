"""One flood_bench case: fresh processes, a baseline of the honest relay, the flood, and what it
cost the target (:class:`Case`, saved as one JSON line with ``--save``).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.flood.probes import HealthPoller, Sampler
from bench.flood.procs import Attacker, DaemonProc, NghttpxProc, World
from bench.flood_world import ONION_GOOD, ONION_HOSTILE
from bench.harness import report
from bench.harness.procs import free_port, tree_cpu, tree_wait

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
            spec.update(serve=True, port=free_port())
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
        wcpu_base = tree_cpu(world.proc.pid)[0]
        time.sleep(baseline)
        t_flood = time.monotonic()
        wcpu0 = tree_cpu(world.proc.pid)[0]
        case.world_cpu_base_pct = (wcpu0 - wcpu_base) / (t_flood - t_base) * 100
        case.rss_start_kib = sampler.mark()
        cpu0, wait0 = tree_cpu(pid)[0], tree_wait(pid)
        if poller:
            poller.phase = "flood"
        connects0 = world.ask("connects")["connects"]
        assert attacker is not None
        acpu0 = tree_cpu(attacker.proc.pid)[0]
        attacker.go()
        if target == "upstream":
            assert daemon is not None
            world.ask("slots", ports=[daemon.slot_base + i for i in range(daemon.slots)])
        time.sleep(seconds)
        t_end = time.monotonic()
        case.rss_peak_kib = sampler.peak
        case.rss_capped = sampler.capped
        case.attacker_cpu_pct = (tree_cpu(attacker.proc.pid)[0] - acpu0) / (t_end - t_flood) \
            * 100
        case.world_cpu_pct = (tree_cpu(world.proc.pid)[0] - wcpu0) / (t_end - t_flood) * 100
        with contextlib.suppress(Exception):
            case.cpu_pct = (tree_cpu(pid)[0] - cpu0) / (t_end - t_flood) * 100
            case.wait_pct = (tree_wait(pid) - wait0) / (t_end - t_flood) * 100
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
