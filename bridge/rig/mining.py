"""Mining on a :class:`~bridge.rig.nodes.KaspadRig` and measuring propagation: the mine loop, its
:class:`MineReport`, block-arrival watching and the sync wait.

It drives a rig that :mod:`bridge.rig.nodes` built; it starts nothing itself. Import these through
:mod:`bridge.rig.nodes`.
"""

from __future__ import annotations

import secrets
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.rig.kaspad import (
    BlockAdded,
    KaspadError,
    KaspadRpc,
    RpcError,
)

if TYPE_CHECKING:  # nodes imports this module to re-export it
    from bridge.rig.nodes import Echo, KaspadRig, RigNode


# -- mining and measuring ---------------------------------------------------------------------


class RigNodesError(KaspadError):
    """A node of the rig failed (its kaspad or bridge exited, or it did not sync)."""


@dataclass
class MineReport:
    nodes: int
    blocks: int
    delivered: int
    expected: int
    propagation_ms: dict[str, float]
    per_node: list[dict[str, Any]]
    rejected: int
    mine_s: float
    achieved_bps: float
    missing: dict[str, int]

    def ok(self) -> bool:
        return self.delivered == self.expected and self.rejected == 0


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan"), "n": 0}
    s = sorted(values)

    def pick(q: float) -> float:
        return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]

    return {"p50": round(statistics.median(s), 2), "p99": round(pick(0.99), 2),
            "max": round(s[-1], 2), "n": len(s)}


class BlockWatch:
    """BlockAdded notifications from every node, stamped on arrival (one RPC stream each)."""

    def __init__(self, nodes: Sequence[RigNode]) -> None:
        self.arrivals: list[dict[str, float]] = [{} for _ in nodes]
        self.hashes: dict[str, str] = {}
        self._lock = threading.Lock()
        self.rpcs: list[KaspadRpc] = []
        for i, node in enumerate(nodes):
            r = node.kaspad.rpc(timeout=15.0, on_block=self._cb(i))
            r.notify_blocks()
            self.rpcs.append(r)

    def _cb(self, i: int) -> Callable[[BlockAdded], None]:
        def on(b: BlockAdded) -> None:
            with self._lock:
                self.arrivals[i].setdefault(b.merkle_root, b.at)
                if b.hash:
                    self.hashes.setdefault(b.merkle_root, b.hash)
        return on

    def have(self, i: int, roots: Iterable[str]) -> int:
        with self._lock:
            a = self.arrivals[i]
            return sum(1 for r in roots if r in a)

    def close(self) -> None:
        for r in self.rpcs:
            r.close()


def mine(rig: KaspadRig, *, blocks: int | None = None, bps: float = 1.0,
         seconds: float | None = None, on_nodes: Sequence[int] | None = None,
         settle: float = 60.0, echo: Echo | None = None,
         watch_nodes: Sequence[int] | None = None) -> MineReport:
    """Mine ``blocks`` (or ``bps * seconds``) blocks at ``bps``, round-robin over ``on_nodes``,
    then wait up to ``settle`` s for every block to reach every watched node."""
    echo = echo or (lambda _m: None)
    total = blocks if blocks is not None else max(1, round(bps * (seconds or 10.0)))
    miners = list(on_nodes) if on_nodes else list(range(len(rig.nodes)))
    watched = list(watch_nodes) if watch_nodes is not None else list(range(len(rig.nodes)))
    nodes = [rig.nodes[i] for i in watched]
    watch = BlockWatch(nodes)
    mined: dict[str, int] = {}  # merkle root -> origin (index into watched, or -1)
    rejected = 0
    rpcs = {i: rig.nodes[i].kaspad.rpc(timeout=30.0) for i in miners}
    try:
        tag = secrets.token_hex(3)
        t0 = time.monotonic()
        next_at = t0
        last_note = t0
        for k in range(total):
            i = miners[k % len(miners)]
            now = time.monotonic()
            if next_at > now:
                time.sleep(next_at - now)
            next_at += 1.0 / bps
            try:
                root = rpcs[i].mine(extra_data=f"ktb-rig {tag} {k} n{i}")
            except RpcError as exc:
                rejected += 1
                echo(f"  block {k} on node{i}: {exc}")
                continue
            mined[root] = watched.index(i) if i in watched else -1
            if time.monotonic() - last_note > 5:
                last_note = time.monotonic()
                echo(f"  mined {k + 1}/{total} ({(k + 1) / (last_note - t0):.1f} blocks/s); "
                     "arrived: " + ", ".join(f"{n.name} {watch.have(j, mined)}"
                                             for j, n in enumerate(nodes)))
        mine_s = time.monotonic() - t0
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            if all(watch.have(j, mined) == len(mined) for j in range(len(nodes))):
                break
            time.sleep(0.1)
        # authoritative count: ask each node for every block it has not notified (GetBlock)
        delivered = 0
        missing: dict[str, int] = {}
        for j, node in enumerate(nodes):
            got = watch.have(j, mined)
            lacking = [r for r in mined if r not in watch.arrivals[j]]
            if lacking:
                got += _confirm_by_hash(node, [watch.hashes.get(r, "") for r in lacking])
            delivered += got
            if got < len(mined):
                missing[node.name] = len(mined) - got
        delays: list[float] = []
        per_node: list[dict[str, Any]] = []
        for j, node in enumerate(nodes):
            mine_delays = []
            for root, origin in mined.items():
                if origin == j or origin < 0:
                    continue
                t_origin = watch.arrivals[origin].get(root)
                t_here = watch.arrivals[j].get(root)
                if t_origin is not None and t_here is not None:
                    mine_delays.append((t_here - t_origin) * 1000.0)
            delays += mine_delays
            row: dict[str, Any] = {"name": node.name, "received": watch.have(j, mined),
                                   "propagation_ms": percentiles(mine_delays)}
            try:
                with node.kaspad.rpc(timeout=5.0) as r:
                    row["peers"] = [{"address": p.address, "outbound": p.isOutbound,
                                     "user_agent": p.userAgent,
                                     "protocol": p.advertisedProtocolVersion,
                                     "ping_ms": p.lastPingDuration} for p in r.peers()]
            except (RpcError, KaspadError) as exc:
                row["peers_error"] = str(exc)
            per_node.append(row)
        return MineReport(nodes=len(nodes), blocks=len(mined), delivered=delivered,
                          expected=len(mined) * len(nodes),
                          propagation_ms=percentiles(delays), per_node=per_node,
                          rejected=rejected, mine_s=round(mine_s, 2),
                          achieved_bps=round(len(mined) / mine_s, 2) if mine_s > 0 else 0.0,
                          missing=missing)
    finally:
        watch.close()
        for r in rpcs.values():
            r.close()


def _confirm_by_hash(node: RigNode, hashes: Sequence[str]) -> int:
    known = [h for h in hashes if h]
    if not known:
        return 0
    n = 0
    with node.kaspad.rpc(timeout=10.0) as r:
        for h in known:
            try:
                r.call("getBlockRequest", hash=h, includeTransactions=False)
                n += 1
            except RpcError:
                pass
    return n


def wait_synced(rig: KaspadRig, node: RigNode, source: RigNode, timeout: float = 300.0,
                echo: Echo | None = None) -> float:
    """Seconds until ``node``'s sink and block count equal ``source``'s (IBD finished)."""
    echo = echo or (lambda _m: None)
    t0 = time.monotonic()
    with source.kaspad.rpc(timeout=10.0) as rs:
        want = rs.dag_info()
    last = t0
    while True:
        try:
            with node.kaspad.rpc(timeout=10.0) as r:
                d = r.dag_info()
            if d.sink == want.sink and d.blockCount >= want.blockCount:
                return time.monotonic() - t0
            if time.monotonic() - last > 5:
                last = time.monotonic()
                echo(f"  {node.name} syncing: {d.blockCount}/{want.blockCount} blocks, "
                     f"{d.headerCount} headers ({last - t0:.0f}s)")
        except (RpcError, KaspadError):
            pass
        if time.monotonic() - t0 > timeout:

            raise RigNodesError(f"{node.name} did not sync with {source.name} within "
                                f"{timeout:.0f}s; " + rig.diagnose())
        time.sleep(0.2)
