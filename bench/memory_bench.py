"""By-hand memory benchmark of one bridge process: RSS per peer, and under a flow-control attack.

    unshare -rn bash -c 'ip link set lo up; python3 -m bench.memory_bench --out docs/benchmarks.md'
    unshare -rn bash -c 'ip link set lo up; python3 -m bench.memory_bench --quick'   # ~1.5 min

One bridge process (``python3 -m bench.relay_bench --bridge-child``, role B: the inbound listener
relaying every connection to a "kaspad" listener, ``max_inbound`` raised to 256 for this
benchmark) is loaded with 0, 32 and 128 concurrent peers. Each peer is a kaspad-like HTTP/2
connection made with the raw ``h2`` load generator of ``relay_bench`` (no grpcio, so 128 peers
stay light): it completes the Version/Verack/Ready handshake through the bridge with the raw
"kaspad" at the other end, then both ends exchange traffic (blocks and transactions both ways).
The bridge's RSS (``VmRSS``) is sampled every 20 ms during the traffic (peak) and read again
once the traffic has stopped with all the connections still open (settled).

Then the flow-control attack: fresh bridge processes; one or several attackers open the P2P stream
through the inbound listener, complete the handshake, and then write DATA frames on the stream
as fast as the socket takes them, ignoring the bridge's flow-control window (the frames are
serialized by hand, bypassing the ``h2`` state machine). The bridge must close the connection
with GOAWAY ``FLOW_CONTROL_ERROR`` (RFC 9113 6.9.1) and its memory must not grow with what the
attacker writes. Reported: the GOAWAY error code each attacker saw, bytes it managed to write
before the close, time to close, and the bridge's peak RSS during the attack against its
baseline.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import report
from bench.harness.wire import pb
from bench.memory.attack import measure_attack
from bench.memory.levels import EXTRA, LEVELS, measure_levels
from bench.memory.report import section


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one short run (about a minute)")
    ap.add_argument("--out", type=Path, default=None,
                    help="write the 'memory' section of this markdown file")
    ap.add_argument("--window", type=int, default=None,
                    help="diagnostic: the bridge's HTTP/2 windows in bytes (default: "
                         "RelaySettings' 512 KiB)")
    ap.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                    help="diagnostic: trace the bridge's allocations and print what grew "
                         "between leak-check cycles")
    ap.add_argument("--cycles", type=int, default=None, help="leak-check cycles")
    args = ap.parse_args(argv)
    if args.tracemalloc:
        EXTRA["tracemalloc"] = args.tracemalloc
    if args.window:
        EXTRA["window"] = args.window
    t0 = time.monotonic()
    if args.quick:
        settings: dict[str, Any] = {"runs": 1, "seconds": 2.0, "block_size": 100_000,
                                    "cycles": 2,
                                    "attackers": [1, 8], "attack_limit": 64_000_000}
    else:
        settings = {"runs": 2, "seconds": 4.0, "block_size": 100_000, "cycles": 4,
                    "attackers": [1, 8, 32], "attack_limit": 64_000_000}
    cmd = "unshare -rn bash -c 'ip link set lo up; python3 -m bench.memory_bench" + \
        (" --quick" if args.quick else "") + (f" --window {args.window}" if args.window else "") \
        + (f" --out {args.out}" if args.out else "") + "'"
    settings["window"] = args.window or "default (512 KiB)"
    if args.cycles is not None:
        settings["cycles"] = args.cycles
    load = [report.loadavg()]
    print(f"load {load[0]}", flush=True)
    pb()
    runs = []
    for _ in range(settings["runs"]):
        runs.append(measure_levels(LEVELS, settings["seconds"], settings["block_size"],
                                   settings["cycles"]))
    attacks = [measure_attack(n, settings["attack_limit"], stalled)
               for stalled in (False, True) for n in settings["attackers"]]
    load.append(report.loadavg())
    text = section(cmd, args.quick, load, time.monotonic() - t0, settings, runs, attacks)
    print()
    print(text)
    if args.out:
        report.write_section(args.out, "memory", text)
        print(f"wrote the memory section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
