"""tor_bench's readiness parts: (b) share of kaspad-like slot connections that see the response
HEADERS and the remote's Version within kaspad's timeouts, with and without the warm pool,
and (c) time from bridge start to the first warm upstream, cold and with a persisted book.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import wire as p2p  # p2p.VERACK/READY: filled by pb()
from bench.harness.bridgeproc import BridgeProc
from bench.harness.wire import RawPeer, RawServer, grpc_frame, raw_version
from bench.tor.net import VPORT, add_onion, dead_onion, wait_reachable

KASPAD_HEADERS_TIMEOUT = 10.0
KASPAD_VERSION_TIMEOUT = 4.0


class AutoServer(RawServer):
    """A raw "kaspad" that sends Version, Verack and Ready as soon as a stream opens."""

    def __init__(self) -> None:
        self.version = raw_version()
        super().__init__()

    def accepted(self, peer: RawPeer) -> None:
        with self.cond:
            self.peers = [p for p in self.peers if not p.closed.is_set()]
            self.peers.append(peer)
        threading.Thread(target=self._greet, args=(peer,), daemon=True).start()

    def _greet(self, peer: RawPeer) -> None:
        if peer.open.wait(60) and not peer.closed.is_set():
            peer.handshake(self.version)


class TimedPeer(RawPeer):
    """A kaspad-like client that records when the response HEADERS arrived."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        self.t_headers: float | None = None
        super().__init__(*a, **kw)

    def _event(self, ev: Any, m: Any) -> None:
        if isinstance(ev, m.ResponseReceived) and self.t_headers is None:
            self.t_headers = time.perf_counter()
        super()._event(ev, m)


@dataclass
class Attempt:
    variant: str
    headers: float | None  # s from connect to response HEADERS
    version: float | None  # s from HEADERS to the remote's Version
    outcome: str  # "in time", "refused (UNAVAILABLE)", "headers late", "version late", ...

    @property
    def ok(self) -> bool:
        return self.outcome == "in time"


def attempt(slot: int, variant: str, version: bytes, hold: float) -> Attempt:
    t0 = time.perf_counter()
    try:
        sock = socket.create_connection(("127.0.0.1", slot), timeout=5)
    except OSError as exc:
        return Attempt(variant, None, None, f"connect failed: {exc!r}")
    sock.settimeout(None)
    p = TimedPeer(sock, client=True, authority=f"127.0.0.1:{slot}".encode())
    p.counter.times = []
    try:
        p.send(grpc_frame(version, False))  # kaspad sends its Version right away
        p.open.wait(KASPAD_HEADERS_TIMEOUT + 5)
        if p.t_headers is None:
            return Attempt(variant, None, None,
                           "no response HEADERS" if not p.closed.is_set() else "closed")
        th = p.t_headers - t0
        deadline = p.t_headers + KASPAD_VERSION_TIMEOUT + 5
        while not p.counter.times and not p.closed.is_set() and time.perf_counter() < deadline:
            time.sleep(0.002)
        if not p.counter.times:
            return Attempt(variant, th, None, "refused (trailers only: UNAVAILABLE)"
                           if p.closed.is_set() else "no Version")
        tv = p.counter.times[0] - p.t_headers
        if th > KASPAD_HEADERS_TIMEOUT:
            outcome = "HEADERS too late"
        elif tv > KASPAD_VERSION_TIMEOUT:
            outcome = "Version too late"
        else:
            outcome = "in time"
        p.send(grpc_frame(p2p.VERACK, False))
        p.send(grpc_frame(p2p.READY, False))
        time.sleep(hold)
        return Attempt(variant, th, tv, outcome)
    finally:
        p.finish(2.0)


def run_readiness(net: Any, attempts: int, pool_size: int, gap: float, hold: float,
                  zero_attempts: int, bursts: int, burst_size: int,
                  ) -> tuple[list[Attempt], dict[str, Any]]:
    socks = net.client.socks_port
    server = AutoServer()
    version = raw_version()
    b = BridgeProc({"role": "B", "kaspad": ["127.0.0.1", server.port]})
    assert b.inbound is not None
    # as many distinct live peers as a burst has slots: the bridge never uses one onion twice
    onions = [add_onion(net, b.inbound) for _ in range(max(burst_size, pool_size))]
    for onion in onions:
        wait_reachable(socks, onion)
    specs = {f"warm pool (pool_size {pool_size})": {"pool_size": pool_size},
             "no warm pool (dial on demand)": {"pool_size": 0, "on_demand": True},
             "pool_size 0 as configured": {"pool_size": 0}}
    cands = [[o, VPORT] for o in onions]
    procs = {name: BridgeProc({"role": "A", "candidates": cands, "socks": socks,
                                  "no_wait": True, **spec}) for name, spec in specs.items()}
    out: list[Attempt] = []
    stats: dict[str, Any] = {}
    try:
        warm = next(iter(procs))
        procs[warm].wait_ready()
        names = list(procs)[:2]
        for i in range(attempts):
            for name in names if i % 2 == 0 else names[::-1]:
                slot = procs[name].slot
                assert slot is not None
                a = attempt(slot, name, version, hold)
                out.append(a)
                print(f"ready {i + 1:3d} {name:30}: {a.outcome:12} headers "
                      f"{'-' if a.headers is None else f'{a.headers:.2f}s'} version "
                      f"{'-' if a.version is None else f'{a.version:.2f}s'}", flush=True)
                time.sleep(gap)
        # kaspad start-up: every --addpeer slot dials at once
        for i in range(bursts):
            for name in names if i % 2 == 0 else names[::-1]:
                slot = procs[name].slot
                assert slot is not None
                procs[name].wait_ready()  # the pool is back to its size (if it has one)
                label = f"{name}, bursts of {burst_size}"
                res: list[Attempt] = []

                def one(slot: int = slot, label: str = label, res: list[Attempt] = res) -> None:
                    res.append(attempt(slot, label, version, hold))

                threads = [threading.Thread(target=one, daemon=True) for _ in range(burst_size)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
                out += res
                hs = sorted(a.headers for a in res if a.headers is not None)
                print(f"burst {i + 1} {name:30}: {sum(a.ok for a in res)}/{burst_size} in time; "
                      f"headers {[round(h, 2) for h in hs]}", flush=True)
                time.sleep(2.0)
        name = list(procs)[2]
        for i in range(zero_attempts):
            slot = procs[name].slot
            assert slot is not None
            a = attempt(slot, name, version, hold)
            out.append(a)
            print(f"ready {i + 1:3d} {name:30}: {a.outcome}", flush=True)
        for name, bp in procs.items():
            stats[name] = bp.ask("stats")
    finally:
        for bp in procs.values():
            bp.stop()
        b.stop()
        server.stop()
    return out, stats


# =============================================================================================
# (c) time to first peer


@dataclass
class FirstPeer:
    book: str  # "cold" | "persisted"
    spawn_to_ready: float | None  # s, process spawn -> first warm upstream
    run_to_ready: float | None  # s, Bridge.run start -> first warm upstream
    stats: dict[str, Any] = field(default_factory=dict)


def run_first_peer(net: Any, pairs: int, dead: int, linger: float) -> list[FirstPeer]:
    socks = net.client.socks_port
    server = AutoServer()
    b = BridgeProc({"role": "B", "kaspad": ["127.0.0.1", server.port]})
    assert b.inbound is not None
    live = add_onion(net, b.inbound)
    wait_reachable(socks, live)
    out: list[FirstPeer] = []
    try:
        for k in range(pairs):
            tmp = Path(tempfile.mkdtemp(prefix="ktb-book-"))
            cands = [[live, VPORT]] + [[dead_onion(), VPORT] for _ in range(dead)]
            for which in ("cold", "persisted"):
                spawn = time.time()
                bp = BridgeProc({"role": "A", "candidates": cands, "socks": socks,
                                    "pool_size": 2, "no_wait": True,
                                    "book": str(tmp / "book.sqlite")})
                try:
                    first = bp.ask("first")
                    # let it keep dialing (the book records what worked and what did not)
                    time.sleep(linger)
                    stats = bp.ask("stats")
                finally:
                    bp.stop()
                fp = FirstPeer(which, None if first is None else first - spawn,
                               None if first is None else first - bp.t_run, stats)
                out.append(fp)
                shown = "never" if fp.spawn_to_ready is None else f"{fp.spawn_to_ready:.2f} s"
                print(f"first peer {k + 1} {which:9}: spawn->ready {shown}; pool "
                      f"{stats['pool']}", flush=True)
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        b.stop()
        server.stop()
    return out
