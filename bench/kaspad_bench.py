"""Real kaspad through bridges + Tor vs a direct kaspad↔kaspad connection, side by side in one run.

    unshare -rn bash -c 'ip link set lo up; python3 -m bench.kaspad_bench --out docs/benchmarks.md'
    ... python3 -m bench.kaspad_bench --quick               # fewer blocks, nothing written
    ... python3 -m bench.kaspad_bench --soak-minutes 30     # the soak (by hand)

For each path (``direct``: two simnet kaspads with ``--addpeer`` to each other's P2P port;
``tor``: the same two kaspads behind two bridge daemons, peering only through onions of a private
Tor network on loopback), in one run, interleaved per phase:

* block propagation at 1 and at 10 blocks/s (mined on node0 with GetBlockTemplate → SubmitBlock;
  measured from node0's block-added notification to node1's), p50/p99/max;
* IBD: node0's chain (``--ibd-blocks``) synced by a late third node dialing node0, from its start
  until its sink and block count equal node0's;
* the bridges' CPU seconds and RSS during each phase (``/proc``).

The soak keeps the ``tor`` pair up for ``--soak-minutes``, mines one block every 10 s, and polls
every node's GetConnectedPeerInfo every 5 s: any new connection to a peer (another address, or
a start time, derived from ``timeConnected``, the connection's age, that moved; a reconnect) and
kaspad's ping durations (kaspad pings every 2 min) are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness.report import loadavg, machine_line, write_section
from bridge.rig.kaspad import find_kaspad, kaspad_version
from bridge.rig.nodes import KaspadRig, mine, percentiles, wait_synced
from bridge.rig.tornet import TorNetwork

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu_rss(pid: int) -> tuple[float, float]:
    """(CPU seconds user+system, RSS MiB) of ``pid``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / _TICK
        rss = 0.0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
        return cpu, rss
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


class ProcSampler:
    """CPU seconds used and peak RSS of some processes between start() and stop()."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak: dict[int, float] = {p: 0.0 for p in pids}
        self.cpu0: dict[int, float] = {}
        self._stop = threading.Event()
        self._t: threading.Thread | None = None
        self.t0 = 0.0

    def start(self) -> ProcSampler:
        self.t0 = time.monotonic()
        self.cpu0 = {p: _proc_cpu_rss(p)[0] for p in self.pids}
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            for p in self.pids:
                self.peak[p] = max(self.peak[p], _proc_cpu_rss(p)[1])

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._t is not None:
            self._t.join()
        wall = time.monotonic() - self.t0
        cpu = {p: _proc_cpu_rss(p)[0] - self.cpu0[p] for p in self.pids}
        return {"wall_s": round(wall, 1),
                "cpu_s": [round(c, 2) for c in cpu.values()],
                "cpu_pct": [round(100 * c / wall, 1) if wall > 0 else 0.0 for c in cpu.values()],
                "peak_rss_mib": [round(self.peak[p], 1) for p in self.pids]}


def _bridge_pids(rig: KaspadRig) -> list[int]:
    out = []
    for n in rig.nodes:
        if n.bridge is not None and n.bridge.proc is not None:
            out.append(n.bridge.proc.pid)
    return out


def _phase_propagation(rig: KaspadRig, bps: float, blocks: int) -> dict[str, Any]:
    s = ProcSampler(_bridge_pids(rig)).start()
    rep = mine(rig, blocks=blocks, bps=bps, on_nodes=[0], settle=60.0, watch_nodes=[0, 1])
    usage = s.stop()
    return {"bps": bps, "blocks": rep.blocks, "delivered": rep.delivered,
            "expected": rep.expected, "achieved_bps": rep.achieved_bps,
            "propagation_ms": rep.propagation_ms, "bridges": usage}


def _phase_ibd(rig: KaspadRig, ibd_blocks: int) -> dict[str, Any]:
    n0 = rig.nodes[0]
    with n0.kaspad.rpc(timeout=10.0) as r:
        have = int(r.dag_info().blockCount)
    if have < ibd_blocks:
        mine(rig, blocks=ibd_blocks - have, bps=200.0, on_nodes=[0], settle=120.0,
             watch_nodes=[0])
    with n0.kaspad.rpc(timeout=10.0) as r:
        total = int(r.dag_info().blockCount)
    s = ProcSampler(_bridge_pids(rig)).start()
    t0 = time.monotonic()
    late = rig.add_late_node(dials=(0,))
    pids = _bridge_pids(rig)
    if late.bridge is not None and late.bridge.proc is not None:
        s.pids = pids
        s.peak[late.bridge.proc.pid] = 0.0
        s.cpu0[late.bridge.proc.pid] = 0.0
    rig.wait_links([(late.index, 0)], timeout=240.0)
    peered = time.monotonic() - t0
    synced = wait_synced(rig, late, n0, timeout=900.0)
    usage = s.stop()
    late.kaspad.stop()
    if late.bridge is not None:
        late.bridge.stop()
    rig.nodes.remove(late)
    return {"blocks": total, "peering_s": round(peered, 2), "sync_s": round(synced, 2),
            "total_s": round(time.monotonic() - t0, 2), "bridges": usage}


def run(kaspad: Path, workdir: Path, *, quick: bool, ibd_blocks: int) -> dict[str, Any]:
    out: dict[str, Any] = {"kaspad": kaspad_version(kaspad), "load_before": loadavg(),
                           "paths": {}}
    tor = TorNetwork(workdir / "tor", clients=1, onion_hosts=3)
    t0 = time.monotonic()
    tor.start(timeout=180)
    out["tor_start_s"] = round(time.monotonic() - t0, 1)
    rigs: dict[str, KaspadRig] = {}
    try:
        for path in ("direct", "tor"):
            rig = KaspadRig(workdir / path, nodes=2, kaspad=kaspad, topology="ring", via=path,
                            tor=tor if path == "tor" else None, echo=print)
            rigs[path] = rig
            rig.start(timeout=240)
            out["paths"][path] = {"peering_s": round(rig.timings["peering_s"], 2)}
        phases = [(1.0, 20 if quick else 60), (10.0, 60 if quick else 300)]
        for bps, blocks in phases:
            for path, rig in rigs.items():  # interleaved: direct then tor, per phase
                print(f"[{path}] propagation at {bps:g} blocks/s, {blocks} blocks …", flush=True)
                out["paths"][path][f"prop_{bps:g}bps"] = _phase_propagation(rig, bps, blocks)
        for path, rig in rigs.items():
            print(f"[{path}] IBD of {ibd_blocks} blocks by a late node …", flush=True)
            out["paths"][path]["ibd"] = _phase_ibd(rig, ibd_blocks)
        out["violations"] = {p: r.violations() for p, r in rigs.items()}
    finally:
        for rig in rigs.values():
            rig.stop()
        tor.stop()
    out["load_after"] = loadavg()
    return out


def soak(kaspad: Path, workdir: Path, minutes: float) -> dict[str, Any]:
    tor = TorNetwork(workdir / "tor", clients=1, onion_hosts=2)
    tor.start(timeout=180)
    rig = KaspadRig(workdir / "soak", nodes=2, kaspad=kaspad, via="tor", tor=tor, echo=print)
    res: dict[str, Any] = {"minutes": minutes, "reconnects": [], "pings_ms": [],
                           "blocks": 0, "missing": 0}
    try:
        rig.start(timeout=240)
        seen: dict[tuple[int, str], tuple[str, float]] = {}  # -> (address, start estimate)
        t_end = time.monotonic() + minutes * 60
        next_block = time.monotonic()
        sampler = ProcSampler(_bridge_pids(rig)).start()
        while time.monotonic() < t_end:
            for i, node in enumerate(rig.nodes):
                with node.kaspad.rpc(timeout=10.0) as r:
                    for p in r.peers():
                        key = (i, p.id)
                        # timeConnected is the connection's age (ms): a new connection has a
                        # new start time (or a new local address)
                        start = time.monotonic() - p.timeConnected / 1000.0
                        old = seen.get(key)
                        if old is not None and (old[0] != p.address or abs(old[1] - start) > 3):
                            res["reconnects"].append({"node": node.name, "at_s": round(
                                minutes * 60 - (t_end - time.monotonic()), 1)})
                        if old is None or old[0] != p.address or abs(old[1] - start) > 3:
                            seen[key] = (p.address, start)
                        if p.lastPingDuration:
                            res["pings_ms"].append(int(p.lastPingDuration))
                    if not r.peers():
                        res["reconnects"].append({"node": node.name, "no_peer_at_s": round(
                            minutes * 60 - (t_end - time.monotonic()), 1)})
            if time.monotonic() >= next_block:
                rep = mine(rig, blocks=1, bps=1.0, on_nodes=[0], settle=30.0)
                res["blocks"] += rep.blocks
                res["missing"] += rep.expected - rep.delivered
                next_block += 10.0
            time.sleep(5.0)
        res["bridges"] = sampler.stop()
        res["distinct_connections"] = len(seen)
        res["ping_ms"] = percentiles(res.pop("pings_ms"))
        res["violations"] = rig.violations()
    finally:
        rig.stop()
        tor.stop()
    return res


def _fmt(p: dict[str, float]) -> str:
    return f"{p['p50']} / {p['p99']} / {p['max']}"


def render(r: dict[str, Any], cmd: str) -> str:
    d, t = r["paths"]["direct"], r["paths"]["tor"]
    lines = [
        "## Real kaspad: bridges + Tor vs direct",
        "",
        f"`{cmd}` — {r['kaspad']} (debug build from the Rust package registry, simnet), "
        f"{machine_line()}, load {r['load_before']} → {r['load_after']}. Two kaspads per path, "
        "one run, phases interleaved (direct then tor). `tor` = kaspad → bridge slot → private "
        "Tor network on loopback (3 authorities, 3 relays) → onion → bridge → kaspad.",
        "",
        "| phase | direct | bridges + Tor |",
        "|---|---|---|",
        f"| peering after kaspad start (s) | {d['peering_s']} | {t['peering_s']} |",
    ]
    for key in ("prop_1bps", "prop_10bps"):
        a, b = d[key], t[key]
        lines.append(f"| propagation at {a['bps']:g} blocks/s, {a['blocks']} blocks: "
                     f"p50 / p99 / max (ms) | {_fmt(a['propagation_ms'])} | "
                     f"{_fmt(b['propagation_ms'])} |")
        lines.append(f"| … delivered | {a['delivered']}/{a['expected']} | "
                     f"{b['delivered']}/{b['expected']} |")
        lines.append(f"| … bridges' CPU (% of one core each) / peak RSS (MiB) | - | "
                     f"{b['bridges']['cpu_pct']} / {b['bridges']['peak_rss_mib']} |")
    a, b = d["ibd"], t["ibd"]
    lines += [
        f"| IBD of {a['blocks']} blocks by a late node: peering / sync / total (s) | "
        f"{a['peering_s']} / {a['sync_s']} / {a['total_s']} | "
        f"{b['peering_s']} / {b['sync_s']} / {b['total_s']} |",
        f"| … bridges' CPU s / peak RSS (MiB) during IBD | - | {b['bridges']['cpu_s']} / "
        f"{b['bridges']['peak_rss_mib']} |",
        "",
        f"kaspad log lines blaming a bridge: {sum(len(v) for v in r['violations'].values())}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kaspad", default="auto")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ibd-blocks", type=int, default=None)
    ap.add_argument("--soak-minutes", type=float, default=0.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    ns = ap.parse_args(argv)
    kaspad = find_kaspad(ns.kaspad)
    if kaspad is None:
        print("no kaspad: run scripts/kaspad.sh or pass --kaspad PATH", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ktb-kaspad-bench-"))
    try:
        if ns.soak_minutes > 0:
            res = soak(kaspad, work, ns.soak_minutes)
            print(json.dumps(res, indent=2))
            if ns.out is not None:
                write_section(ns.out, "kaspad-soak", "\n".join([
                    "## Real kaspad soak through bridges + Tor",
                    "",
                    f"`python3 -m bench.kaspad_bench --soak-minutes {ns.soak_minutes:g}` — "
                    f"{machine_line()}. One block every 10 s, peers polled every 5 s.",
                    "",
                    f"- reconnects: **{len(res['reconnects'])}** {res['reconnects'] or ''}",
                    f"- distinct connections seen: {res['distinct_connections']}",
                    f"- blocks: {res['blocks']}, node x block deliveries missing: "
                    f"{res['missing']}",
                    f"- kaspad ping (ms) p50/p99/max: {_fmt(res['ping_ms'])}",
                    f"- bridges: CPU {res['bridges']['cpu_pct']} % of a core, peak RSS "
                    f"{res['bridges']['peak_rss_mib']} MiB",
                    f"- kaspad log lines blaming a bridge: {len(res['violations'])}",
                ]))
            return 0 if not res["reconnects"] and not res["missing"] else 1
        ibd = ns.ibd_blocks or (600 if ns.quick else 2000)
        res = run(kaspad, work, quick=ns.quick, ibd_blocks=ibd)
        print(json.dumps(res, indent=2))
        if ns.json is not None:
            ns.json.write_text(json.dumps(res, indent=2))
        if ns.out is not None and not ns.quick:
            cmd = "python3 -m bench.kaspad_bench" + (f" --ibd-blocks {ns.ibd_blocks}"
                                                     if ns.ibd_blocks else "")
            write_section(ns.out, "kaspad", render(res, cmd))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
