"""Kaspa test rig with real nodes: N simnet kaspads, each behind its own bridge daemon, reachable
only as onions of a private Tor network on loopback.

    kaspad i ─slot─► bridge i ══ Tor (client0 SOCKS) ══► onion of node j ─► bridge j ─► kaspad j

Every bridge is the real daemon (``python -m bridge run -c <toml>``, a child process with its own
config file and log), every node is a real ``kaspad`` started with exactly the flags
``kaspa-tor-bridge kaspad-flags`` prints for that config (plus the simnet test flags of
:class:`~bridge.rig.kaspad.KaspadNode`). Onion keys are generated before anything starts, so
every topology is known up front: ``ring`` (i → i+1), ``mesh`` (every pair once), ``star``
(i → 0). With ``via="direct"`` there are no bridges and no Tor: the same kaspads peer with
``--addpeer`` straight to each other's P2P port (the benchmarks' baseline).

Used by ``kaspa-tor-bridge rig up/mine/status/down/check``, by ``tests/kaspad/`` and by
``bench/kaspad_bench.py``. A rig started with ``die_with_parent=False`` writes
``<workdir>/nodes.json`` and can be attached to from another process (:meth:`KaspadRig.attach`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.core.kaspa import SIMNET
from bridge.rig.kaspad import (
    KaspadError,
    KaspadNode,
    LoggedChild,
    RpcError,
)
from bridge.rig.mining import (
    BlockWatch,
    MineReport,
    RigNodesError,
    mine,
    percentiles,
    wait_synced,
)
from bridge.rig.tornet import TorInstance, TorNetwork, free_ports
from bridge.tor.keys import OnionKey, save_key

__all__ = [
    "SIMNET_P2P_PORT",
    "TOPOLOGIES",
    "BlockWatch",
    "BridgeProc",
    "Echo",
    "KaspadRig",
    "MineReport",
    "RigNode",
    "RigNodesError",
    "edges",
    "mine",
    "new_onion_key",
    "percentiles",
    "wait_synced",
    "write_toml",
]

Echo = Callable[[str], Any]
TOPOLOGIES = ("ring", "mesh", "star")
SIMNET_P2P_PORT = SIMNET.p2p_port


def edges(topology: str, n: int) -> list[tuple[int, int]]:
    """Directed links ``(dialer, dialed)``; each unordered pair at most once."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r} (one of {', '.join(TOPOLOGIES)})")
    if n < 2:
        return []
    if topology == "star":
        return [(i, 0) for i in range(1, n)]
    if topology == "mesh":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    if n == 2:
        return [(0, 1)]
    return [(i, (i + 1) % n) for i in range(n)]


def new_onion_key() -> OnionKey:
    """A fresh ed25519 v3 onion key (Tor's expanded form: clamped SHA-512 of a random seed)."""
    h = bytearray(hashlib.sha512(secrets.token_bytes(32)).digest())
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return OnionKey(bytes(h))


@dataclass
class BridgeProc(LoggedChild):
    """A bridge daemon child process (the real CLI) with its config file and log."""

    config_path: Path
    log_path: Path
    die_with_parent: bool = True
    proc: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    starts: int = 0
    marker = b"bridge"

    def start(self) -> None:
        self._spawn([sys.executable, "-m", "bridge", "run", "-c", str(self.config_path)], "")


@dataclass
class RigNode:
    index: int
    name: str
    home: Path
    kaspad: KaspadNode
    bridge: BridgeProc | None = None
    onion: str | None = None
    slots: list[int] = field(default_factory=list)
    inbound_port: int | None = None
    metrics_port: int | None = None
    dials: list[int] = field(default_factory=list)  # indices this node's bridge (or kaspad) dials

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "onion": self.onion, "p2p": self.kaspad.p2p_port,
                "rpc": self.kaspad.rpc_port, "slots": self.slots, "dials": self.dials,
                "kaspad_pid": self.kaspad.proc.pid if self.kaspad.proc else self.kaspad.pid,
                "bridge_pid": (self.bridge.proc.pid if self.bridge and self.bridge.proc
                               else self.bridge.pid if self.bridge else None),
                "kaspad_log": str(self.kaspad.log_path),
                "bridge_log": str(self.bridge.log_path) if self.bridge else None,
                "bridge_config": str(self.bridge.config_path) if self.bridge else None,
                "metrics_port": self.metrics_port, "home": str(self.home)}


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_toml(path: Path, values: dict[str, object]) -> None:
    """Dotted keys → a TOML file (top-level keys first, then one table per prefix)."""
    top = {k: v for k, v in values.items() if "." not in k}
    tables: dict[str, dict[str, object]] = {}
    for k, v in values.items():
        if "." in k:
            t, key = k.split(".", 1)
            tables.setdefault(t, {})[key] = v
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    for t, kv in tables.items():
        lines += ["", f"[{t}]"] + [f"{k} = {_toml_value(v)}" for k, v in kv.items()]
    path.write_text("\n".join(lines) + "\n")


class KaspadRig:
    """N kaspad nodes, behind bridges over a private Tor network (or ``via="direct"``)."""

    def __init__(self, workdir: Path, *, nodes: int, kaspad: Path, topology: str = "ring",
                 via: str = "tor", tor: TorNetwork | None = None, late: int = 0,
                 die_with_parent: bool = True, echo: Echo | None = None,
                 bridge_extra: dict[str, object] | None = None,
                 onion_hosts: Sequence[TorInstance] | None = None) -> None:
        if nodes < 1:
            raise ValueError("need at least one node")
        if via not in ("tor", "direct"):
            raise ValueError("via must be 'tor' or 'direct'")
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.n = nodes
        self.late = late
        self.kaspad_bin = Path(kaspad)
        self.topology = topology
        self.via = via
        self.links = edges(topology, nodes)
        self.die_with_parent = die_with_parent
        self.echo: Echo = echo or (lambda _m: None)
        self.bridge_extra = dict(bridge_extra or {})
        self._hosts = list(onion_hosts) if onion_hosts else None
        self._own_tor = tor is None and via == "tor"
        self.tor = tor
        if self._own_tor:
            self.tor = TorNetwork(self.workdir / "tor", clients=1,
                                  onion_hosts=max(1, nodes + late),
                                  die_with_parent=die_with_parent)
        self.nodes: list[RigNode] = []
        self.timings: dict[str, float] = {}

    # -- building ---------------------------------------------------------------------------

    def _onion_host(self, i: int) -> TorInstance:
        assert self.tor is not None
        hosts = self._hosts or self.tor.onion_hosts
        return hosts[i % len(hosts)]

    def _make_node(self, i: int, dials: list[int], *, late: bool = False) -> RigNode:
        name = f"node{i}"
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        p2p, rpc = free_ports(2)
        kn = KaspadNode(self.kaspad_bin, home / "kaspad", rpc_port=rpc, p2p_port=p2p, name=name,
                        die_with_parent=self.die_with_parent)
        node = RigNode(i, name, home, kn, dials=dials)
        if self.via == "tor":
            key = new_onion_key()
            key_path = home / "bridge" / "onion_ed25519_v3.key"
            save_key(key_path, key)
            node.onion = f"{key.service_id}.onion"
        return node

    def _configure(self, node: RigNode) -> None:
        """Bridge config (tor) or kaspad --addpeer flags (direct), once every onion is known."""
        from bridge.config import load_config
        from bridge.rig.demo import free_port_range
        from bridge.runtime.wiring import kaspad_flags

        if self.via == "direct":
            flags = [f"--addpeer=127.0.0.1:{self.nodes[j].kaspad.p2p_port}" for j in node.dials]
            flags += ["--outpeers=0", "--nodnsseed", "--disable-upnp",
                      f"--listen=127.0.0.1:{node.kaspad.p2p_port}"]
            node.kaspad.flags = flags
            return
        assert self.tor is not None
        client = self.tor.clients[0]
        host = self._onion_host(node.index)
        inbound, metrics = free_ports(2)
        count = max(1, len(node.dials))
        base = free_port_range(count, avoid={inbound, metrics})
        node.slots = list(range(base, base + count))
        node.inbound_port, node.metrics_port = inbound, metrics
        values: dict[str, object] = {
            "network": SIMNET.name, "mode": "tor-only",
            "data_dir": str(node.home / "bridge"), "log_level": "info",
            "kaspad.p2p": f"127.0.0.1:{node.kaspad.p2p_port}",
            "slots.base_port": base, "slots.count": count,
            "inbound.listen": f"127.0.0.1:{inbound}",
            "tor.socks": f"127.0.0.1:{client.socks_port}",
            "tor.control": f"127.0.0.1:{host.control_port}",
            "tor.listen_onion": True, "tor.bootstrap_timeout": 90.0,
            "tor.onion_key_file": str(node.home / "bridge" / "onion_ed25519_v3.key"),
            "peers.connect": [f"{self.nodes[j].onion}:{SIMNET_P2P_PORT}" for j in node.dials],
            "peers.dns_seed": False,
            "pool.size": max(1, len(node.dials)), "pool.dial_timeout": 30.0,
            "metrics.listen": f"127.0.0.1:{metrics}",
        }
        if host.control_password:
            values["tor.control_password"] = host.control_password
        values.update(self.bridge_extra)
        cfg_path = node.home / "bridge.toml"
        write_toml(cfg_path, values)
        cfg = load_config(cfg_path, env={})
        node.kaspad.flags = kaspad_flags(cfg)
        node.bridge = BridgeProc(cfg_path, node.home / "bridge.log",
                                 die_with_parent=self.die_with_parent)

    def start(self, *, timeout: float = 180.0) -> None:
        t0 = time.monotonic()
        if self._own_tor:
            assert self.tor is not None
            self.echo(f"starting a private Tor network ({self.n + self.late} onion hosts) …")
            self.tor.start(timeout=120)
            self.timings["tor_s"] = time.monotonic() - t0
            self.echo(f"  Tor network up in {self.timings['tor_s']:.1f}s")
        dials: dict[int, list[int]] = {i: [] for i in range(self.n)}
        for a, b in self.links:
            dials[a].append(b)
        self.nodes = [self._make_node(i, dials[i]) for i in range(self.n)]
        for node in self.nodes:
            self._configure(node)
        self._write_state()
        t1 = time.monotonic()
        # bridges first, kaspads once every bridge is ready: a kaspad whose first dial of a slot
        # finds no upstream retries only ~30 s later
        for node in self.nodes:
            if node.bridge is not None:
                node.bridge.start()
        self.wait_bridges_ready(self.nodes, timeout=120.0)
        self.timings["bridges_ready_s"] = time.monotonic() - t1
        # every kaspad spawned back to back, then waited for: a node's first dial reaches the
        # remote bridge within ~0.1-0.5 s, and that bridge refuses it (UNAVAILABLE) while its own
        # kaspad is not listening yet; kaspad retries a failed --addpeer only ~30 s later
        for node in self.nodes:
            node.kaspad.start(wait=0)
        for node in self.nodes:
            node.kaspad.wait_rpc(90.0)
        self.echo(f"started {self.n} kaspad nodes"
                  + (f" behind bridges (bridges ready in {self.timings['bridges_ready_s']:.1f}s)"
                     if self.via == "tor" else " (direct)")
                  + f"; links: {', '.join(f'{a}→{b}' for a, b in self.links) or 'none'}")
        self.wait_links(timeout=timeout)
        self.timings["peering_s"] = time.monotonic() - t1
        self.echo(f"  every link peered in {self.timings['peering_s']:.1f}s")
        self._write_state()

    def _start_node(self, node: RigNode) -> None:
        if node.bridge is not None:
            node.bridge.start()
            self.wait_bridges_ready([node], timeout=120.0)
        node.kaspad.start(wait=90.0)

    def wait_bridges_ready(self, nodes: Sequence[RigNode], timeout: float = 120.0) -> bool:
        """Until each bridge is healthy (onion published) and, if it dials, has a warm upstream
        (its /status endpoint). False after ``timeout`` (kaspad will retry; not fatal)."""
        from bridge.runtime.status import StatusUnavailable, fetch

        deadline = time.monotonic() + timeout
        todo = [n for n in nodes if n.bridge is not None and n.metrics_port is not None]
        while todo and time.monotonic() < deadline:
            rest = []
            for n in todo:
                assert n.bridge is not None and n.metrics_port is not None
                if not n.bridge.alive():
                    raise RigNodesError(f"{n.name}'s bridge exited:\n"
                                        + "\n".join(n.bridge.log_text().splitlines()[-20:]))
                try:
                    st = fetch("127.0.0.1", n.metrics_port, timeout=2.0)
                except StatusUnavailable:
                    rest.append(n)
                    continue
                if not st["health"]["ok"] or (n.dials and st["pool"]["ready"] < 1):
                    rest.append(n)
            todo = rest
            if todo:
                time.sleep(0.3)
        return not todo

    def add_late_node(self, dials: Sequence[int] = (0,)) -> RigNode:
        """One more node (started now) that dials ``dials`` (e.g. to measure IBD)."""
        i = len(self.nodes)
        node = self._make_node(i, list(dials), late=True)
        self.nodes.append(node)
        self._configure(node)
        self._start_node(node)
        self._write_state()
        return node

    # -- observing --------------------------------------------------------------------------

    def peer_counts(self) -> list[int]:
        out = []
        for node in self.nodes:
            try:
                with node.kaspad.rpc(timeout=5.0) as r:
                    out.append(len(r.peers()))
            except (RpcError, KaspadError):
                out.append(-1)
        return out

    def link_up(self, a: int, b: int) -> bool:
        """kaspad ``a`` has kaspad ``b`` (by node id) among its connected peers."""
        with self.nodes[a].kaspad.rpc(timeout=5.0) as ra, self.nodes[b].kaspad.rpc(timeout=5.0) \
                as rb:
            idb = rb.info().p2pId
            return any(p.id == idb for p in ra.peers())

    def wait_links(self, links: Iterable[tuple[int, int]] | None = None,
                   timeout: float = 180.0) -> float:
        todo = list(self.links if links is None else links)
        t0 = time.monotonic()
        deadline = t0 + timeout
        ids: dict[int, str] = {}
        last_note = t0
        while todo:
            for node in self.nodes:
                if not node.kaspad.alive():
                    raise RigNodesError(f"{node.name}'s kaspad exited:\n{node.kaspad.tail(20)}")
                if node.bridge is not None and not node.bridge.alive():
                    raise RigNodesError(f"{node.name}'s bridge exited:\n"
                                        + "\n".join(node.bridge.log_text().splitlines()[-20:]))
            rest = []
            for a, b in todo:
                try:
                    if b not in ids:
                        with self.nodes[b].kaspad.rpc(timeout=5.0) as rb:
                            ids[b] = rb.info().p2pId
                    with self.nodes[a].kaspad.rpc(timeout=5.0) as ra:
                        if not any(p.id == ids[b] for p in ra.peers()):
                            rest.append((a, b))
                except (RpcError, KaspadError):
                    rest.append((a, b))
            todo = rest
            if not todo:
                break
            now = time.monotonic()
            if now > deadline:
                raise RigNodesError(
                    f"links {todo} not peered after {timeout:.0f}s; " + self.diagnose())
            if now - last_note > 15:
                self.echo(f"  waiting for links {todo} ({now - t0:.0f}s)")
                last_note = now
            time.sleep(0.5)
        return time.monotonic() - t0

    def diagnose(self) -> str:
        parts = []
        for node in self.nodes:
            parts.append(f"--- {node.name} kaspad peer log:\n"
                         + "\n".join(node.kaspad.peer_log(15)))
            if node.bridge is not None:
                parts.append(f"--- {node.name} bridge log (last 15):\n" +
                             "\n".join(node.bridge.log_text().splitlines()[-15:]))
        return "\n".join(parts)

    def violations(self) -> dict[str, list[str]]:
        return {n.name: v for n in self.nodes if (v := n.kaspad.violations())}

    # -- stopping ---------------------------------------------------------------------------

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kaspad.stop()
            if node.bridge is not None:
                with contextlib.suppress(Exception):
                    node.bridge.stop()
        if self._own_tor and self.tor is not None:
            self.tor.stop()
        with contextlib.suppress(OSError):
            (self.workdir / "nodes.json").unlink()

    def __enter__(self) -> KaspadRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state for detached rigs ------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.workdir / "nodes.json"

    def _write_state(self) -> None:
        state = {"kaspad": str(self.kaspad_bin), "topology": self.topology, "via": self.via,
                 "links": self.links, "own_tor": self._own_tor,
                 "tor_dir": str(self.tor.workdir) if self.tor is not None else None,
                 "nodes": [n.summary() for n in self.nodes], "timings": self.timings}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    @classmethod
    def attach(cls, workdir: Path) -> KaspadRig:
        workdir = Path(workdir).resolve()
        try:
            state = json.loads((workdir / "nodes.json").read_text())
        except (OSError, ValueError) as exc:
            raise RigNodesError(f"no node rig recorded in {workdir} ({exc})") from exc
        tor = TorNetwork.attach(Path(state["tor_dir"])) if state.get("tor_dir") else None
        rig = cls(workdir, nodes=max(1, len(state["nodes"])), kaspad=Path(state["kaspad"]),
                  topology=state["topology"], via=state["via"], tor=tor,
                  die_with_parent=False)
        rig._own_tor = bool(state.get("own_tor"))
        rig.links = [(int(x[0]), int(x[1])) for x in state["links"]]
        rig.timings = state.get("timings", {})
        for i, s in enumerate(state["nodes"]):
            kn = KaspadNode(Path(state["kaspad"]), Path(s["home"]) / "kaspad",
                            rpc_port=s["rpc"], p2p_port=s["p2p"], name=s["name"],
                            die_with_parent=False)
            kn.pid = s["kaspad_pid"]
            node = RigNode(i, s["name"], Path(s["home"]), kn, onion=s["onion"],
                           slots=s["slots"], dials=s["dials"], metrics_port=s["metrics_port"])
            if s.get("bridge_config"):
                node.bridge = BridgeProc(Path(s["bridge_config"]), Path(s["bridge_log"]),
                                         die_with_parent=False, pid=s["bridge_pid"])
            rig.nodes.append(node)
        return rig

    def status(self) -> list[dict[str, Any]]:
        out = []
        for node in self.nodes:
            row: dict[str, Any] = {"name": node.name, "onion": node.onion,
                                   "kaspad": "up" if node.kaspad.alive() else "DOWN",
                                   "bridge": None if node.bridge is None else
                                   ("up" if node.bridge.alive() else "DOWN"),
                                   "rpc": node.kaspad.rpc_port, "p2p": node.kaspad.p2p_port}
            try:
                with node.kaspad.rpc(timeout=5.0) as r:
                    dag = r.dag_info()
                    row["blocks"] = int(dag.blockCount)
                    row["peers"] = [{"address": p.address, "outbound": p.isOutbound,
                                     "user_agent": p.userAgent,
                                     "protocol": p.advertisedProtocolVersion}
                                    for p in r.peers()]
            except (RpcError, KaspadError) as exc:
                row["error"] = str(exc)
            out.append(row)
        return out
