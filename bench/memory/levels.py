"""memory_bench's levels: RSS of one bridge process with 0, 32 and 128 handshaken peers carrying
traffic (total, settled, per peer), and the leak check (further cycles of new peers).
:data:`EXTRA` is merged into every bridge child's spec (``--window``, ``--tracemalloc``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any

from bench.harness import report
from bench.harness.bridgeproc import BridgeProc
from bench.harness.gens import RawGen, dial_raw, headers_seen
from bench.harness.wire import RawPeer, grpc_frame, gzip6, raw_version, tx_message

LEVELS = (0, 32, 128)
PER_PEER_TARGET_MB = 2.0
SAMPLE_EVERY = 0.02
#: extra bridge-child spec keys (``--window``: a diagnostic with other HTTP/2 windows)
EXTRA: dict[str, Any] = {}


class RssSampler:
    """Samples a process's RSS in a thread; ``peak`` since the last :meth:`reset`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.last = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True, name="rss")
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                v = report.rss_kib(self.pid)
            except (OSError, RuntimeError):
                return
            with self._lock:
                self.last = v
                self.peak = max(self.peak, v)
            time.sleep(SAMPLE_EVERY)

    def reset(self) -> int:
        with self._lock:
            self.peak = self.last = report.rss_kib(self.pid)
            return self.last

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)


def settle_rss(pid: int, seconds: float = 1.0) -> int:
    """RSS after the traffic stopped: the minimum over ``seconds`` (freed buffers drop out)."""
    end = time.monotonic() + seconds
    low = report.rss_kib(pid)
    while time.monotonic() < end:
        time.sleep(0.05)
        low = min(low, report.rss_kib(pid))
    return low


@dataclass
class PeerPair:
    s: RawPeer  # the remote peer (dials the bridge's inbound listener)
    r: RawPeer  # the "kaspad" end the bridge dialed


def open_peers(gen: RawGen, port: int, n: int) -> list[PeerPair]:
    out = []
    for _ in range(n):
        s = dial_raw(port, RawPeer)
        # at once, like kaspad (see RawGen.connect); a node id of its own: the bridge refuses
        # a second inbound peer with a node id already connected to kaspad
        s.handshake(raw_version())
        r = gen.server.wait_stream()
        r.handshake(gen.version_r)
        headers_seen(s, "peer")
        out.append(PeerPair(s, r))
    deadline = time.monotonic() + 10
    for p in out:
        while (p.r.counter.count < 3 or p.s.counter.count < 3) and time.monotonic() < deadline:
            time.sleep(0.002)
        if p.r.counter.count < 3 or p.s.counter.count < 3:
            raise RuntimeError("handshake did not cross the bridge")
    return out


def traffic(pairs: list[PeerPair], seconds: float, block: bytes, tx: bytes) -> tuple[int, int]:
    """Every peer, both directions: one block and 10 transactions per round, rounds for
    ``seconds`` (one sender thread per direction, round-robin over the peers). Returns the
    messages sent and received."""
    if not pairs:
        time.sleep(seconds)
        return 0, 0
    before = sum(p.s.counter.count + p.r.counter.count for p in pairs)
    stop = threading.Event()
    sent = [0, 0]

    def run(k: int) -> None:
        while not stop.is_set():
            for p in pairs:
                peer = p.s if k == 0 else p.r
                if stop.is_set():
                    return
                peer.send(block)
                for _ in range(10):
                    peer.send(tx)
                sent[k] += 11

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in (0, 1)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(10)
    deadline = time.monotonic() + 5
    want = before + sum(sent)
    got = before
    while time.monotonic() < deadline:
        got = sum(p.s.counter.count + p.r.counter.count for p in pairs)
        if got >= want:
            break
        time.sleep(0.02)
    return sum(sent), got - before


@dataclass
class Level:
    peers: int
    baseline: int  # KiB, idle bridge before any peer (same process)
    settled: int  # KiB, traffic stopped, connections open
    peak: int  # KiB, during traffic
    sent: int
    received: int


def warm_up(gen: RawGen, bp: BridgeProc, block: bytes, tx: bytes) -> int:
    """One peer with traffic through ``bp``'s inbound listener, closed again; then the settled
    RSS (KiB) of the bridge process: the idle bridge after it served someone."""
    warm = open_peers(gen, bp.inbound or 0, 1)
    traffic(warm, 1.0, block, tx)
    close_pairs(warm)
    gen.server.prune()
    time.sleep(0.5)
    return settle_rss(bp.pid)


def measure_levels(levels: tuple[int, ...], seconds: float, block_size: int, cycles: int,
                   ) -> tuple[list[Level], int, list[int], dict[str, int]]:
    """One bridge process, peers added cumulatively. Returns the levels, the settled RSS after
    every peer closed, the settled RSS after each further cycle of opening the largest level
    (with traffic) and closing it again, and the bridge's live relay objects at the end."""
    gen = RawGen()
    bp = BridgeProc({"role": "B", "kaspad": ["127.0.0.1", gen.port], "max_inbound": 256,
                        **EXTRA})
    assert bp.inbound is not None
    sampler = RssSampler(bp.pid)
    from bridge.rig.emulator import make_block_message

    block = grpc_frame(gzip6(make_block_message(block_size, seed=3).SerializeToString()),
                          True)
    tx = grpc_frame(tx_message(1).SerializeToString(), False)
    pairs: list[PeerPair] = []
    out: list[Level] = []
    try:
        time.sleep(1.0)
        # warm the process up once (imports, h2 code paths, first allocations): one peer with
        # traffic, closed again, so that "0 peers" is the idle bridge after it served someone
        base = warm_up(gen, bp, block, tx)
        for n in levels:
            if n > len(pairs):
                pairs += open_peers(gen, bp.inbound, n - len(pairs))
            sampler.reset()
            sent, got = traffic(pairs, seconds, block, tx)
            peak = sampler.peak
            settled = settle_rss(bp.pid)
            out.append(Level(n, base, settled, max(peak, settled), sent, got))
            print(f"memory: {n:4d} peers: settled {settled / 1024:6.1f} MiB, peak "
                  f"{peak / 1024:6.1f} MiB (baseline {base / 1024:.1f} MiB); msgs sent {sent} "
                  f"received {got}", flush=True)
        close_pairs(pairs)
        gen.server.prune()
        time.sleep(1.0)
        after = settle_rss(bp.pid)
        print(f"memory: all peers closed: {after / 1024:.1f} MiB", flush=True)
        # leak check: the same number of peers again, several times, in the same process
        again = []
        for c in range(cycles):
            if c == 1 and EXTRA.get("tracemalloc"):
                print(f"memory: tracemalloc {bp.ask('tm_snap')}", flush=True)
            pairs = open_peers(gen, bp.inbound, max(levels))
            traffic(pairs, seconds, block, tx)
            close_pairs(pairs)
            gen.server.prune()
            time.sleep(1.0)
            again.append(settle_rss(bp.pid))
            print(f"memory: {max(levels)} peers again, closed: {again[-1] / 1024:.1f} MiB",
                  flush=True)
        time.sleep(1.0)
        if EXTRA.get("tracemalloc") and cycles > 1:
            print("memory: tracemalloc growth from the end of cycle 1 to the end:", flush=True)
            for d in bp.ask("tm_diff"):
                print(f"  {d}", flush=True)
        objects = bp.ask("objects")
        print(f"memory: live objects in the bridge after all closed: {objects}", flush=True)
    finally:
        sampler.stop()
        bp.stop()
        gen.stop()
    return out, after, again, objects


def close_pairs(pairs: list[PeerPair]) -> None:
    for p in pairs:
        with contextlib.suppress(Exception):
            p.s.finish(1.0)
        with contextlib.suppress(Exception):
            p.r.finish(0.2)


Run = tuple[list[Level], int, list[int], dict[str, int]]
