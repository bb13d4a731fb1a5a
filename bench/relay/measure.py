"""relay_bench's measurements: throughput and relay CPU per path, added latency under a
block + transaction load, and a cProfile of one bridge.
"""

from __future__ import annotations

import io
import os
import pstats
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench.harness.bridgeproc import BridgeProc
from bench.harness.gens import RawGen, Sender, block_plain
from bench.harness.procs import sched_wait
from bench.harness.wire import grpc_frame, gzip6, tx_message
from bench.relay.rig import Rig

LAT_BLOCK_SIZE = 100_000  # latency load: ~100 KB blocks ...
LAT_BLOCKS_PER_S = 10  # ... 10 per second ...
LAT_TX_PER_S = 300  # ... plus 300 small transaction messages per second


@dataclass
class Tput:
    gen: str
    path: str
    mb_s: float  # relayed gRPC payload (gzip'd) MB/s
    block_mb_s: float  # uncompressed block MB/s
    relay_cpu: float | None  # CPU s of the relay process(es) in the window
    relay_cpu_per_proc: list[float]
    gen_cpu: float  # CPU s of this (load generator) process in the window
    window: float
    relay_wait: list[float]  # run-queue wait s of each relay process in the window
    relay_sys: float  # kernel (stime) CPU s of the relay processes in the window
    gen_wait: float


def measure_tput(rig: Rig, gen: str, path: str, warmup: float, window: float,
                 payloads: dict[str, tuple[Any, int, int]]) -> Tput:
    rig.prepare(gen, path)
    g = rig.gens[gen]
    link = g.connect(rig.port(gen, path))
    msg, wire, plain = payloads[gen]
    sender = Sender(link, msg)
    time.sleep(warmup)
    procs = rig.relay_procs(gen, path)
    me = os.getpid()
    c0, w0 = [p.cpu() for p in procs], [p.wait() for p in procs]
    g0, gw0 = time.process_time(), sched_wait(me)
    n0, t0 = link.received(), time.perf_counter()
    time.sleep(window)
    n1, t1 = link.received(), time.perf_counter()
    g1, gw1 = time.process_time(), sched_wait(me)
    c1, w1 = [p.cpu() for p in procs], [p.wait() for p in procs]
    sender.stop(10)
    link.close()
    dt = t1 - t0
    per = [b[0] - a[0] for a, b in zip(c0, c1, strict=True)]
    ksys = sum(b[1] - a[1] for a, b in zip(c0, c1, strict=True))
    return Tput(gen, path, (n1 - n0) * wire / dt / 1e6, (n1 - n0) * plain / dt / 1e6,
                sum(per) if procs else None, per, g1 - g0, dt,
                relay_wait=[b - a for a, b in zip(w0, w1, strict=True)], gen_wait=gw1 - gw0,
                relay_sys=ksys)


@dataclass
class Lat:
    gen: str
    path: str
    tx: list[float] = field(default_factory=list)  # seconds, one per delivered tx message
    blocks: list[float] = field(default_factory=list)
    lost: int = 0


def lat_schedule(duration: float) -> list[tuple[float, str, int]]:
    ev = [(i / LAT_TX_PER_S, "tx", 0) for i in range(int(duration * LAT_TX_PER_S))]
    ev += [(j / LAT_BLOCKS_PER_S + 0.0017, "block", 0)
           for j in range(int(duration * LAT_BLOCKS_PER_S))]
    ev.sort()
    return [(t, kind, i + 1) for i, (t, kind, _) in enumerate(ev)]


def measure_latency(rig: Rig, gen: str, path: str, duration: float,
                    lat_msgs: dict[str, Any]) -> Lat:
    rig.prepare(gen, path)
    g = rig.gens[gen]
    link = g.connect(rig.port(gen, path))
    sched = lat_schedule(duration)
    sent: dict[int, float] = {}
    kinds: dict[int, str] = {}
    if gen == "emu":
        link.recv_times.times = {}
    make = lat_msgs[gen]
    start = time.perf_counter() + 0.05
    for at, kind, i in sched:
        item = make(kind, i)
        delay = start + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        kinds[i] = kind
        sent[i] = time.perf_counter()
        link.send(item)
    deadline = time.monotonic() + 5
    while link.received() < len(sched) and time.monotonic() < deadline:
        time.sleep(0.01)
    if gen == "emu":
        recv: dict[int, float] = dict(link.recv_times.times)
    else:  # in-order delivery on one stream: the k-th message received is the k-th sent
        recv = {k + 1: t for k, t in enumerate(link.recv_times.times)}
    link.close()
    out = Lat(gen, path)
    for i, t_sent in sent.items():
        t_recv = recv.get(i)
        if t_recv is None:
            out.lost += 1
            continue
        (out.tx if kinds[i] == "tx" else out.blocks).append(t_recv - t_sent)
    return out


def make_lat_msgs() -> dict[str, Any]:
    from bridge.rig.emulator import make_block_message

    block = make_block_message(LAT_BLOCK_SIZE, seed=7)
    block_raw = grpc_frame(gzip6(block.SerializeToString()), True)
    tx_raw = grpc_frame(tx_message(1).SerializeToString(), False)

    def emu(kind: str, i: int) -> bytes:
        if kind == "tx":
            out: bytes = tx_message(i).SerializeToString()
            return out
        block.request_id = i
        out = block.SerializeToString()
        return out

    def raw(kind: str, i: int) -> bytes:
        return tx_raw if kind == "tx" else block_raw

    return {"emu": emu, "raw": raw}


def profile_bridge(seconds: float, top: int = 15) -> tuple[Any, float, float, Any]:
    """Raw sender → one profiled bridge → raw receiver for ``seconds``. Returns the top
    functions by own time (name, tottime, cumtime, calls), total profiled CPU, MB/s and the
    own time per category."""
    fd, path = tempfile.mkstemp(suffix=".prof")
    os.close(fd)
    gen = RawGen()
    bp = BridgeProc({"role": "A", "target": ["127.0.0.1", gen.port], "profile": path})
    try:
        bp.wait_ready()
        msg = grpc_frame(gzip6(block_plain()), True)
        link = gen.connect(bp.slot or 0)
        stop = threading.Event()

        def sender() -> None:
            while not stop.is_set():
                link.send(msg)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        n0, t0 = link.received(), time.perf_counter()
        time.sleep(seconds)
        n1, t1 = link.received(), time.perf_counter()
        stop.set()
        t.join(10)
        link.close()
    finally:
        bp.stop()
        gen.stop()
    mb_s = (n1 - n0) * (len(msg) - 5) / (t1 - t0) / 1e6
    st = pstats.Stats(path, stream=io.StringIO())
    os.unlink(path)
    rows = []
    total = 0.0
    for (fname, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        total += tt
        short = re.sub(r".*/(site-packages|lib/python3\.\d+|main)/", "", fname)
        rows.append((f"{short}:{line}({func})", tt, ct, nc))
    rows.sort(key=lambda r: -r[1])
    cats: dict[str, float] = {}
    for name, tt, _ct, _nc in rows:
        cats[_category(name)] = cats.get(_category(name), 0.0) + tt
    return rows[:top], total, mb_s, sorted(cats.items(), key=lambda kv: -kv[1])


def _category(name: str) -> str:
    if "_socket.socket" in name:
        return "socket send/recv syscalls"
    if "epoll" in name:
        return "epoll wait"
    if "hexlify" in name:
        return "binascii.hexlify (h2 debug repr of every received frame)"
    for prefix, cat in (("h2/", "h2"), ("hyperframe/", "hyperframe"), ("hpack/", "hpack"),
                        ("bridge/", "bridge (relay, runner, grpc framing)"),
                        ("trio/", "trio"), ("enum.py", "enum (h2 flag/state hashing)")):
        if name.startswith(prefix):
            return cat
    return "other (builtins, bytes ops, stdlib)"
