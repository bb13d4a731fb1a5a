"""By-hand benchmark over the private Tor network: throughput, slot readiness, time to first peer.

    unshare -rn bash -c 'ip link set lo up; python3 -m bench.tor_bench --out docs/benchmarks.md'
    unshare -rn bash -c 'ip link set lo up; python3 -m bench.tor_bench --quick'   # ~2 min

Starts a private Tor network (``bridge.rig.tornet.TorNetwork``: 3 authorities, 3 relays, one
client tor whose SOCKS port every path uses, one onion-host tor that publishes every onion
service of the run with ``ADD_ONION``), like the test suite's ``tornet`` fixture. Bridges run as
subprocesses (``python3 -m bench.relay_bench --bridge-child``) so their CPU is their own.

(a) **Throughput through Tor**, paths measured interleaved, fresh circuits every round:

* ``bridge``: sender → slot of bridge A → SOCKS5 (fresh credentials: own circuit) → client
  tor ══ rendezvous circuit ══ onion-host tor → onion X → inbound of bridge B → receiver.
* ``socat``: sender → ``socat TCP-LISTEN:p SOCKS4A:127.0.0.1:<onion Y>:16511,socksport=<client
  SOCKS port>,socksuser=<per round>`` → client tor ══ circuit ══ onion-host tor → onion Y →
  receiver (a raw TCP splice over the same SOCKS/Tor path; Tor isolates SOCKS4a streams by
  user id, so each round gets its own circuit like the bridge's fresh SOCKS5 credentials).
* ``loopback``: sender → receiver directly (no Tor), for scale.

(a') **Paired throughput on one circuit** (``--only paired``; its own ``tor-paired`` section of
the report, so running only this part leaves the ``tor`` section alone): per round fresh SOCKS5
credentials C, and both paths go to the same onion X → bridge B → receiver with C, so Tor
(IsolateSOCKSAuth) carries them on the same circuit: ``bridge`` (bridge A, every SOCKS dial with
C: bench-only ``socks_creds`` in the bridge child) and ``splice`` (a raw trio byte splice in its
own process, ``--splice-child``, SOCKS5 with C). The circuit of each path's streams is read from
the client tor's control port (``GETINFO stream-status``); order alternates per round; the
target is judged on the median of the per-round ratios bridge/splice.

(b) **Slot readiness**: kaspad-like connections to a slot of bridge A (its remote is onion X →
bridge B → a raw "kaspad" that sends Version as soon as the stream opens), each counted as in
time when the response HEADERS arrive within 10 s of the TCP connect and the remote's Version
within 4 s after them (kaspad's timeouts). With the warm pool (``pool_size`` N) and without it
(the pool dials only when a slot asks, see ``on_demand`` in
``bench.harness.bridgeproc.bridge_child``), attempts interleaved.

(c) **Time to first peer**: a bridge process started with an address book that is empty (cold:
only the configured peers, one live onion and several that are not published) and again with the
book the cold run left (persisted); time from process spawn to the first warm upstream.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import report
from bench.harness.tools import check_tools
from bench.harness.wire import pb
from bench.tor.net import start_tornet
from bench.tor.ready import Attempt, FirstPeer, run_first_peer, run_readiness
from bench.tor.report import paired_section, section
from bench.tor.tput import Paired, TorTput, run_paired, run_tput, splice_child

ALL_PARTS = "tput,ready,first,paired"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (about 2 minutes)")
    ap.add_argument("--out", type=Path, default=None,
                    help="write the 'tor' and/or 'tor-paired' sections of this markdown file")
    ap.add_argument("--gens", default=None, help="load generators for (a): raw,emu")
    ap.add_argument("--only", default=ALL_PARTS, help=f"parts: {ALL_PARTS}")
    ap.add_argument("--rounds", type=int, default=None, help="throughput rounds")
    ap.add_argument("--paired-rounds", type=int, default=None, help="paired rounds")
    ap.add_argument("--splice-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.splice_child:
        splice_child(json.loads(args.splice_child))
        return 0
    check_tools(["socat", "tor"])
    t_start = time.monotonic()
    if args.quick:
        settings: dict[str, Any] = {"rounds": 1, "warmup": 2.0, "window": 3.0,
                                    "block_size": 1_000_000, "attempts": 6, "pool_size": 2,
                                    "gap": 0.3, "hold": 0.3, "zero_attempts": 1, "pairs": 1,
                                    "dead": 7, "linger": 5.0, "window_variant": True,
                                    "bursts": 1, "burst_size": 8, "paired_rounds": 2}
        gens = ["raw"]
    else:
        settings = {"rounds": 5, "warmup": 3.0, "window": 6.0, "block_size": 1_000_000,
                    "attempts": 50, "pool_size": 2, "gap": 0.5, "hold": 1.0,
                    "zero_attempts": 3, "pairs": 3, "dead": 7, "linger": 15.0,
                    "window_variant": True, "bursts": 5, "burst_size": 8,
                    "paired_rounds": 6}
        gens = ["raw", "emu"]
    if args.gens:
        gens = [g for g in args.gens.split(",") if g]
    if args.rounds:
        settings["rounds"] = args.rounds
    if args.paired_rounds:
        settings["paired_rounds"] = args.paired_rounds
    parts = set(args.only.split(","))
    cmd = "unshare -rn bash -c 'ip link set lo up; python3 -m bench.tor_bench" + \
        (" --quick" if args.quick else "") + (f" --gens {args.gens}" if args.gens else "") \
        + (f" --only {args.only}" if args.only != ALL_PARTS else "") \
        + (f" --rounds {args.rounds}" if args.rounds else "") \
        + (f" --paired-rounds {args.paired_rounds}" if args.paired_rounds else "") \
        + (f" --out {args.out}" if args.out else "") + "'"
    load = [report.loadavg()]
    print(f"load {load[0]}", flush=True)
    pb()
    workdir = Path(tempfile.mkdtemp(prefix="ktb-tornet-"))
    t0 = time.monotonic()
    net = start_tornet(workdir)
    tor_start = time.monotonic() - t0
    tput: list[TorTput] = []
    ready: list[Attempt] = []
    ready_stats: dict[str, Any] = {}
    first: list[FirstPeer] = []
    pairs: list[Paired] = []
    try:
        if "tput" in parts:
            tput = run_tput(net, gens, settings["rounds"], settings["warmup"],
                            settings["window"], settings["block_size"],
                            512 * 1024 if settings["window_variant"] else None)
            load.append(report.loadavg())
        if "ready" in parts:
            ready, ready_stats = run_readiness(net, settings["attempts"], settings["pool_size"],
                                               settings["gap"], settings["hold"],
                                               settings["zero_attempts"], settings["bursts"],
                                               settings["burst_size"])
            load.append(report.loadavg())
        if "first" in parts:
            first = run_first_peer(net, settings["pairs"], settings["dead"], settings["linger"])
            load.append(report.loadavg())
        if "paired" in parts:
            pairs = run_paired(net, settings["paired_rounds"], settings["warmup"],
                               settings["window"], settings["block_size"])
    finally:
        net.stop()
        if not os.environ.get("KTB_BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    load.append(report.loadavg())
    wall = time.monotonic() - t_start
    if parts & {"tput", "ready", "first"}:
        text = section(cmd, args.quick, load, wall, {**settings, "gens": gens}, tput, ready,
                       ready_stats, first, tor_start)
        print()
        print(text)
        if args.out:
            report.write_section(args.out, "tor", text)
            print(f"wrote the tor section of {args.out}")
    if pairs:
        keys = ("paired_rounds", "warmup", "window", "block_size")
        text = paired_section(cmd, args.quick, load, wall, {k: settings[k] for k in keys},
                              pairs, tor_start)
        print()
        print(text)
        if args.out:
            # its own section: a run of only this part leaves the tor section as it is
            report.write_section(args.out, "tor-paired", text)
            print(f"wrote the tor-paired section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
