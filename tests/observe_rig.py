"""Two real daemons without Tor, for the observability/status tests, and hand-built snapshots.

    emulator A -> daemon A slot -> [scripted SOCKS5] -> daemon B inbound -> emulator B

Both run in tor-only mode with ``tor.control = ""`` and ``tor.listen_onion = false`` (no Tor
needed); daemon A serves ``/metrics``, ``/health`` and ``/status`` on ``metrics.listen``.

:func:`make_snapshot` builds a :class:`~bridge.runtime.stats.Snapshot` by hand, for the tests
that only check how a snapshot is rendered (``/status`` JSON, the screen, ``/metrics``);
:func:`address_rich_snapshot` is one with addresses wherever a snapshot can hold one and every
optional metric family present (the public /metrics and deploy/ tests).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from bridge.config import Config, load_config
from bridge.core.histogram import (
    DIAL_BUCKETS,
    RELAY_BUCKETS,
    WARM_BUCKETS,
    Histogram,
    HistogramSnapshot,
)
from bridge.net.pool import DialStats, FaultCounts, PoolEvents, PoolStats
from bridge.rig.emulator import EmulatorConfig, KaspadEmulator
from bridge.rig.tornet import free_ports
from bridge.runtime.daemon import Daemon
from bridge.runtime.service import build_daemon
from bridge.runtime.stats import (
    BookWriterStats,
    BridgeStats,
    CandidateStats,
    ClosedStats,
    ErrorRecord,
    Health,
    InboundEvents,
    InboundStats,
    Listeners,
    RelayStats,
    RewriteStats,
    Snapshot,
    Totals,
    TrafficStats,
)
from bridge.store.book import BookStats, LearnedStats
from bridge.tor.supervisor import TorState, TorStats, TorStatus
from tests.integration.conftest import ONION_B
from tests.peers.socks_server import ScriptedSocks5Server


def daemon_config(root: Path, **over: object) -> Config:
    slot, inbound = free_ports(2)
    base: dict[str, object] = {
        "network": "kaspa-simnet", "mode": "tor-only", "data_dir": str(root),
        "slots.base_port": slot, "slots.count": 2, "inbound.listen": f"127.0.0.1:{inbound}",
        "tor.control": "", "tor.listen_onion": False, "pool.size": 1,
        "pool.dial_timeout": 10.0,
    }
    base.update(over)
    return load_config(None, env={"HOME": str(root)}, overrides=base)


@dataclass
class Pair:
    a: Daemon
    b: Daemon
    emu_a: KaspadEmulator
    emu_b: KaspadEmulator
    socks: ScriptedSocks5Server
    metrics_port: int
    config_file: Path


async def start_pair(nursery: trio.Nursery, tmp_path: Path) -> Pair:
    emu_a = KaspadEmulator(EmulatorConfig(network="kaspa-simnet", addrv2=False,
                                          addresses=[(bytes([203, 0, 113, 7]), 16511)]))
    emu_b = KaspadEmulator(EmulatorConfig(network="kaspa-simnet", addrv2=False,
                                          addresses=[(bytes([198, 51, 100, 9]), 16511)]))
    routes: dict[str, int] = {}

    def route(host: str, port: int) -> tuple[str, int] | int:
        return ("127.0.0.1", routes[host]) if host in routes else 4

    socks = ScriptedSocks5Server(route, require_auth=True)
    socks_port = await nursery.start(socks.serve)
    port_b = await trio.to_thread.run_sync(emu_b.start_server)
    cfg_b = daemon_config(tmp_path / "b", **{"kaspad.p2p": f"127.0.0.1:{port_b}",
                                             "tor.socks": f"127.0.0.1:{socks_port}",
                                             "relay.own_onion": ONION_B.host, "pool.size": 0})
    b = Daemon(cfg_b, handle_signals=False)
    await nursery.start(b.run)
    assert b.bridge is not None and b.bridge.inbound_port is not None
    routes[ONION_B.host] = b.bridge.inbound_port
    (metrics,) = free_ports(1)
    (kaspad_a,) = free_ports(1)
    over: dict[str, Any] = {
        "kaspad.p2p": f"127.0.0.1:{kaspad_a}", "tor.socks": f"127.0.0.1:{socks_port}",
        "peers.connect": [f"{ONION_B.host}:16511"], "metrics.listen": f"127.0.0.1:{metrics}"}
    cfg_a = daemon_config(tmp_path / "a", **over)
    a = build_daemon(cfg_a, handle_signals=False)
    await nursery.start(a.run)
    cfg_file = tmp_path / "a.toml"
    cfg_file.write_text(f'network = "kaspa-simnet"\ndata_dir = "{tmp_path / "a"}"\n'
                        f'[metrics]\nlisten = "127.0.0.1:{metrics}"\n')
    return Pair(a, b, emu_a, emu_b, socks, metrics, cfg_file)


async def wait_for(pred: Any, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.02)


def http_get(port: int, path: str, *, method: str = "GET", host: str = "127.0.0.1",
             raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """A blocking HTTP/1.1 request (run it in a thread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw if raw is not None else
                  f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


async def aget(port: int, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    return await trio.to_thread.run_sync(lambda: http_get(port, path, **kw))


SLOT_PORTS = (16200, 16201)


def relay_stats(id: int, kind: str = "slot", local_port: int = 16200, *,
                peer: str | None = None, traffic: TrafficStats | None = None,
                rewrites: RewriteStats | None = None, buffered: int = 0,
                user_agent: str | None = None) -> RelayStats:
    label = f"slot:{local_port}" if kind == "slot" else f"inbound#{id}"
    return RelayStats(id=id, kind=kind, label=label, local_port=local_port, peer=peer,
                      user_agent=user_agent, handshake=peer is not None, age=12.0,
                      traffic=traffic or TrafficStats(), buffered=buffered,
                      rewrites=rewrites or RewriteStats(), closing=None)


def make_bridge_stats(*, relays: tuple[RelayStats, ...] = (), totals: Totals | None = None,
                      pool: PoolEvents | None = None, failures: FaultCounts | None = None,
                      dials: int = 0, closed: ClosedStats | None = None,
                      inbound: InboundEvents | None = None, learned: LearnedStats | None = None,
                      book: bool = True, book_errors: int = 0,
                      writer: BookWriterStats | None = None,
                      candidates: CandidateStats | None = None) -> BridgeStats:
    if totals is None:
        totals = Totals()
        for r in relays:
            totals = totals.add(r.kind, r.traffic, r.rewrites)
    return BridgeStats(
        up=True, slot_ports=SLOT_PORTS, inbound_port=16300,
        pool=PoolStats(1, 1, pool or PoolEvents()),
        dial=DialStats(dials, failures or FaultCounts()),
        closed=closed or ClosedStats(),
        inbound=InboundStats(inbound or InboundEvents(),
                             sum(1 for r in relays if r.kind == "inbound"), 64, 64),
        book=BookStats("/data/peers.sqlite", book_errors, 0, None,
                       learned or LearnedStats()) if book else None,
        book_writer=writer or BookWriterStats(),
        candidates=candidates or CandidateStats(3, 1, 1), relays=relays, totals=totals)


def make_snapshot(*, bridge: BridgeStats | None = None, tor: TorStatus | None = None,
                  health: Health | None = None, errors: tuple[ErrorRecord, ...] = (),
                  own_onion: str | None = None, known_onions: int = 0) -> Snapshot:
    """A snapshot as a daemon in tor-only mode on simnet would report it."""
    return Snapshot(
        bridge_version="0.0.test", time=1_700_000_000.0, uptime=3725.0,
        network="kaspa-simnet", mode="tor-only", health=health or Health(True),
        tor=None if tor is None else TorStats("127.0.0.1:9051", tor), own_onion=own_onion,
        known_onions=known_onions,
        listeners=Listeners(up=bridge is not None, slot_host="127.0.0.1", slot_ports=SLOT_PORTS,
                            inbound="127.0.0.1:16300" if bridge is not None else None,
                            kaspad_p2p="127.0.0.1:16511"),
        pool_size=1, bridge=bridge, recent_errors=errors)


def address_rich_snapshot() -> Snapshot:
    """A snapshot with addresses in every place that may hold one, and histograms with
    observations (so the public output is as full as it gets)."""
    def hist(bounds: tuple[float, ...], *values: float) -> HistogramSnapshot:
        h = Histogram(bounds)
        for v in values:
            h.observe(v)
        return h.snapshot()

    relays = (relay_stats(1, "slot", 16200, peer=f"{ONION_B.host}:16511",
                          user_agent="/kaspad:1.0.1 198.51.100.23/", buffered=77),
              relay_stats(2, "slot", 16201, peer="[2001:db8::7]:16111"),
              relay_stats(3, "inbound", 16300, peer="192.0.2.1:16111"))
    bridge = make_bridge_stats(relays=relays, dials=5, failures=FaultCounts(remote=1))
    bridge = replace(
        bridge,
        dial=replace(bridge.dial, durations={("tor", "ok"): hist(DIAL_BUCKETS, 1.5, 7.0),
                                             ("tor", "failed"): hist(DIAL_BUCKETS, 60.0)}),
        relay_latency={("slot", "from_remote"): hist(RELAY_BUCKETS, 0.0003, 0.02)})
    tor = TorStatus(state=TorState.READY, usable=True, onion_published=True,
                    onion_address=f"{ONION_B.host}", onion_port=16511, onion_pow=True,
                    socks_listeners=(("10.11.12.13", 9050),), tor_version="0.4.8.13",
                    last_error="could not reach 203.0.113.9:9001", last_recovery_seconds=4.0,
                    client_warnings=("DANGEROUS_SOCKS 203.0.113.9",))
    snap = make_snapshot(bridge=bridge, tor=tor, own_onion=f"{ONION_B.host}:16511",
                         known_onions=3,
                         errors=(ErrorRecord(1.0, "slot:16200", "peer 192.0.2.1 reset"),))
    return replace(snap, listen_onion=True, first_warm_seconds=12.5,
                   tor_to_warm=hist(WARM_BUCKETS, 3.0, 40.0))
