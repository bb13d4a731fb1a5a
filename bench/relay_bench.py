"""By-hand relay benchmark: throughput, bridge CPU and added latency on loopback.

    python3 -m bench.relay_bench [--quick] [--out docs/benchmarks.md]

Run it inside a private network namespace so nothing but loopback is involved::

    unshare -rn bash -c 'ip link set lo up; python3 -m bench.relay_bench --out docs/benchmarks.md'

Paths (all 127.0.0.1), each measured in the same run, interleaved, repeated:

* ``direct``   sender dials receiver.
* ``socat``    sender → ``socat TCP-LISTEN:p,reuseaddr,fork TCP:127.0.0.1:q`` → receiver.
* ``nghttpx``  sender → ``nghttpx`` (h2c → h2c gRPC proxy, one worker) → receiver: the C
  reference (Debian ``nghttp2-proxy``).
* ``bridge``   sender → slot of bridge A → (direct dial, no SOCKS) → receiver.
* ``2 bridges`` sender → slot of bridge A → inbound of bridge B → receiver (deployment shape).

Every bridge runs in its own subprocess (``--bridge-child``) so its CPU time can be read from
``/proc/<pid>/stat`` on its own. Two load generators:

* ``emu``  the grpcio kaspad emulator (``bridge/rig/emulator.py``) on both ends: grpc-core
  gzips each block on the sender and inflates + parses it on the receiver.
* ``raw``  a minimal ``h2`` sender/receiver pair (threads, blocking sockets, no grpcio): the
  gzip'd block is prepared once and only framed per send, the receiver only counts gRPC
  length prefixes. It exists because grpcio's per-message cost (gzip, protobuf) can cap the
  emulator below what the bridge can carry.

Both do the kaspad handshake (Version → Verack → Ready) through the bridge, as its policy requires.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.harness.bridgeproc import bridge_child
from bench.harness.gens import block_plain
from bench.harness.report import loadavg, pct
from bench.harness.stats import machine
from bench.harness.tools import check_tools
from bench.harness.wire import grpc_frame, gzip6, pb
from bench.relay.measure import (
    Lat,
    Tput,
    make_lat_msgs,
    measure_latency,
    measure_tput,
    profile_bridge,
)
from bench.relay.report import lat_table, tput_table, write_report
from bench.relay.rig import PATH_BEFORE, PATH_CHEAP, PATHS, start_rig, stop_rig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one short round (under a minute)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    ap.add_argument("--gens", default="raw,emu", help="load generators: raw,emu")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--cheap-repr-variant", action="store_true",
                    help=f"diagnostic: also measure '{PATH_CHEAP}' (raw load generator)")
    ap.add_argument("--before-variant", action="store_true",
                    help=f"also measure '{PATH_BEFORE}' (raw load generator)")
    ap.add_argument("--bridge-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bridge_child:
        bridge_child(json.loads(args.bridge_child))
        return 0
    check_tools(["socat", "nghttpx"])
    t_start = time.monotonic()
    gens = [g.strip() for g in args.gens.split(",") if g.strip()]
    if args.quick:
        settings = {"rounds": 1, "warmup": 0.5, "window": 1.5, "lat_rounds": 1,
                    "lat_duration": 3.0, "profile_seconds": 0}
    else:
        settings = {"rounds": 6, "warmup": 0.7, "window": 2.0, "lat_rounds": 4,
                    "lat_duration": 4.0, "profile_seconds": 8}
    if args.no_profile:
        settings["profile_seconds"] = 0
    if args.no_latency:
        settings["lat_rounds"] = 0
    cmd = "unshare -rn bash -c 'ip link set lo up; python3 -m bench.relay_bench" + \
        (" --quick" if args.quick else "") + (f" --out {args.out}" if args.out else "") + "'"
    mach = machine()
    load = [loadavg()]
    print(f"machine: {mach}; load {load[0]}", flush=True)

    pb()
    plain = block_plain()
    wire = len(gzip6(plain))
    payloads = {"raw": (grpc_frame(gzip6(plain), True), wire, len(plain)),
                "emu": (plain, wire, len(plain))}
    lat_msgs = make_lat_msgs()
    rig = start_rig(gens, cheap_repr=args.cheap_repr_variant, before=args.before_variant)
    tput: list[Tput] = []
    lat: list[Lat] = []
    variants = [(g, p) for g in gens for p in PATHS]
    t_variants = list(variants)
    if args.cheap_repr_variant and "raw" in gens:
        t_variants.insert(t_variants.index(("raw", "bridge")) + 1, ("raw", PATH_CHEAP))
    if args.before_variant and "raw" in gens:
        t_variants.insert(t_variants.index(("raw", "bridge")) + 1, ("raw", PATH_BEFORE))
    try:
        for rnd in range(settings["rounds"]):
            k = rnd % len(t_variants)
            order = t_variants[k:] + t_variants[:k]
            for g, p in order:
                r = measure_tput(rig, g, p, settings["warmup"], settings["window"], payloads)
                tput.append(r)
                cpu = "" if r.relay_cpu is None else f" relay cpu {r.relay_cpu / r.window:.0%}"
                print(f"tput round {rnd + 1} {g:3} {p:9}: {r.mb_s:7.1f} MB/s relayed{cpu} "
                      f"gen cpu {r.gen_cpu / r.window:.0%}", flush=True)
        load.append(loadavg())
        for rnd in range(settings["lat_rounds"]):
            order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
            for g, p in order:
                lr = measure_latency(rig, g, p, settings["lat_duration"], lat_msgs)
                lat.append(lr)
                print(f"lat round {rnd + 1} {g:3} {p:9}: tx p50 {pct(lr.tx, .5) * 1e3:.2f} "
                      f"p99 {pct(lr.tx, .99) * 1e3:.2f} ms; block p50 "
                      f"{pct(lr.blocks, .5) * 1e3:.2f} p99 {pct(lr.blocks, .99) * 1e3:.2f} ms; "
                      f"lost {lr.lost}", flush=True)
    finally:
        stop_rig(rig)
    prof = None
    if settings["profile_seconds"]:
        prof = profile_bridge(settings["profile_seconds"])
        print("profile top:", flush=True)
        for name, tt, _ct, _nc in prof[0][:10]:
            print(f"  {tt:7.3f}s {name}", flush=True)
        for cat, tt in prof[3]:
            print(f"  {tt / prof[1]:6.1%} {cat}", flush=True)
    load.append(loadavg())
    wall = time.monotonic() - t_start
    print("\n".join(tput_table(tput, gens)))
    print()
    print("\n".join(lat_table(lat, gens)))
    print(f"\nwall {wall:.0f} s; load {load}")
    if args.out:
        write_report(args.out, cmd=cmd, quick=args.quick, mach=mach, load=load, tput=tput,
                     lat=lat, gens=gens, prof=prof, settings=settings, wall=wall,
                     wire_sizes={g: wire for g in gens})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
