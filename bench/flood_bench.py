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
import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench.flood import procs
from bench.flood.case import BRIDGE_KINDS, H2_KINDS, UPSTREAM_KINDS, Case, run_case
from bench.flood.procs import World
from bench.flood.report import git_commit, section, summary_line
from bench.harness import report
from bench.harness.tools import check_tools


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
        cpus = os.sched_getaffinity(0)
        rest = cpus - {args.attacker_cpu}
        if args.attacker_cpu not in cpus or not rest:
            ap.error(f"--attacker-cpu {args.attacker_cpu}: needs a CPU of {sorted(cpus)} and "
                     "at least one other")
        procs.PIN = ({args.attacker_cpu}, rest)
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
    check_tools(["nghttpx"] if "nghttpx" in args.targets else [])
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
