"""Sync first, then Tor (peers.sync_first) end to end on loopback: grpcio kaspad emulators, an
emulated kaspad RPC answering GetServerInfo, and a scripted SOCKS5 server playing Tor.

    emulator A (kaspad) ─slot─► bridge ─direct─► IP peers C1, C2      while "kaspad" syncs
                                       ─SOCKS──► onion D, C1, C2       once it reports synced
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from bridge.core.peers import Target
from bridge.net.pool import DialPolicy
from bridge.net.socks import ProxyEndpoint
from bridge.rig.emu_rpc import RpcEmulator
from bridge.rig.emu_session import PeerSession
from bridge.rig.emulator import EmulatorConfig, KaspadEmulator
from bridge.runtime.bridge import Bridge, BridgeOptions
from bridge.runtime.bridge_options import SyncFirstOptions
from tests.integration.conftest import ONION_B
from tests.peers.socks_server import ScriptedSocks5Server

STAGGER = 0.5


@dataclass
class SyncRig:
    bridge: Bridge
    socks: ScriptedSocks5Server
    rpc: RpcEmulator
    kaspad: KaspadEmulator
    ip_ports: list[int]
    state_file: Path


@pytest.fixture
def synced_at_start() -> bool:
    return False


@pytest.fixture
async def sync_rig(tmp_path: Path, synced_at_start: bool) -> AsyncIterator[SyncRig]:
    kaspad = KaspadEmulator(EmulatorConfig(addrv2=False))
    peers = [KaspadEmulator(EmulatorConfig(addrv2=True)) for _ in range(3)]
    rpc = RpcEmulator(network_id="simnet", synced=synced_at_start)
    try:
        ports = [await trio.to_thread.run_sync(p.start_server) for p in peers]
        rpc_port = await trio.to_thread.run_sync(rpc.start)

        def route(host: str, port: int) -> tuple[str, int] | int:
            if host == ONION_B.host:
                return ("127.0.0.1", ports[2])
            if host == "127.0.0.1" and port in ports[:2]:
                return ("127.0.0.1", port)  # "a Tor exit" reaching the IP peer
            return 4

        socks = ScriptedSocks5Server(route, require_auth=True)
        async with trio.open_nursery() as nursery:
            socks_port = await nursery.start(socks.serve)
            opts = BridgeOptions(
                kaspad_p2p=("127.0.0.1", 1),
                candidates=[Target("127.0.0.1", ports[0]), Target("127.0.0.1", ports[1]),
                            Target(ONION_B.host, 16511)],
                slot_ports=[0, 0], inbound=None, pool_size=1,
                # hybrid + sync_first, as wiring builds it: IP peers directly while syncing
                dial=DialPolicy(proxy=ProxyEndpoint("127.0.0.1", socks_port),
                                ip_via_tor=False, allow_direct=True, timeout=10),
                sync_first=SyncFirstOptions(rpc=("127.0.0.1", rpc_port), network_id="simnet",
                                            timeout=None, poll_interval=0.2, rpc_timeout=5.0,
                                            stagger=STAGGER, stagger_max=30.0,
                                            state_file=tmp_path / "sync_first.switched"))
            bridge = Bridge(opts)
            await nursery.start(bridge.run)
            yield SyncRig(bridge, socks, rpc, kaspad, ports[:2],
                          tmp_path / "sync_first.switched")
            nursery.cancel_scope.cancel()
    finally:
        for emu in (kaspad, *peers):
            await trio.to_thread.run_sync(emu.stop)
        await trio.to_thread.run_sync(rpc.stop)


async def dial_slots(rig: SyncRig) -> list[PeerSession]:
    sessions = [rig.kaspad.dial("127.0.0.1", port) for port in rig.bridge.slot_ports]
    for s in sessions:
        assert await trio.to_thread.run_sync(s.wait_handshake, 12.0), repr(s)
    return sessions


def slot_relays(bridge: Bridge) -> list[tuple[Target | None, bool]]:
    return [(i.target, i.direct) for i in bridge.relays.values() if i.kind == "slot"]


async def test_slots_sync_over_direct_ip_peers_then_switch_to_tor_for_good(
        sync_rig: SyncRig) -> None:
    rig, bridge = sync_rig, sync_rig.bridge
    # 1. kaspad syncing: both slots on the IP peers, dialed directly; nothing through "Tor"
    before = await dial_slots(rig)
    relays = slot_relays(bridge)
    assert sorted(t.port for t, _ in relays if t is not None) == sorted(rig.ip_ports)
    assert all(direct for _, direct in relays), relays
    assert rig.socks.records == []
    with trio.fail_after(5):
        while rig.rpc.requests < 2:
            await trio.sleep(0.05)
    st = bridge.stats().sync
    assert st is not None and st.phase == "syncing" and st.kaspad_synced is False
    assert rig.rpc.streams == 1  # one RPC stream for every question

    # 2. kaspad reports synced: one direct slot relay is closed; the other stays until that
    #    slot relays to a Tor upstream again (kaspad never loses all its slot peers at once)
    rig.rpc.synced = True
    with trio.fail_after(10):
        while not any(s.closed for s in before):
            await trio.sleep(0.02)
    first = next(i for i, s in enumerate(before) if s.closed)
    other = before[1 - first]
    st = bridge.stats().sync
    assert st is not None and st.phase == "tor" and st.reason == "kaspad reported synced"
    assert all(not e.up.direct for e in bridge.pool._ready)
    await trio.sleep(STAGGER + 1.0)  # (kaspad retries a closed --addpeer after 30 s)
    assert not other.closed, "both slots were closed before the first one had a Tor upstream"

    # 3. kaspad reconnects to its slots: Tor upstreams only, the IP peers through the exit too
    port = rig.bridge.slot_ports[first]
    again = rig.kaspad.dial("127.0.0.1", port)
    assert await trio.to_thread.run_sync(again.wait_handshake, 12.0), repr(again)
    with trio.fail_after(10):
        while not other.closed:
            await trio.sleep(0.02)
    after = [again, rig.kaspad.dial("127.0.0.1", rig.bridge.slot_ports[1 - first])]
    assert await trio.to_thread.run_sync(after[1].wait_handshake, 12.0), repr(after[1])
    relays = slot_relays(bridge)
    assert len(relays) == 2 and not any(direct for _, direct in relays), relays
    via_socks = {(r.host, r.port) for r in rig.socks.records if r.reply == 0}
    for target, _ in relays:
        assert target is not None and (target.host, target.port) in via_socks, (target,
                                                                                via_socks)
    assert bridge.dialer.stats().failures.local == 0
    st = bridge.stats().sync
    assert st is not None and st.closed_direct_relays == 2
    assert rig.state_file.exists()  # one way across restarts too

    # 4. one way: kaspad falling behind later changes nothing
    rig.rpc.synced = False
    asked = rig.rpc.requests
    await trio.sleep(1.0)
    assert rig.rpc.requests == asked  # no more polling after the switch
    st = bridge.stats().sync
    assert st is not None and st.phase == "tor"
    assert bridge.dialer.policy.ip_via_tor and not bridge.dialer.policy.allow_direct
    assert not any(s.closed for s in after)


async def test_unreachable_rpc_keeps_the_direct_phase_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    """No answer from kaspad's RPC: the bridge stays in the sync phase (it cannot know that
    kaspad is synced), logs it once, and shows why in its stats."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    dead_port = listener.getsockname()[1]
    listener.close()  # nothing listens there
    opts = BridgeOptions(
        kaspad_p2p=("127.0.0.1", 1), candidates=[], slot_ports=[0], inbound=None, pool_size=0,
        dial=DialPolicy(proxy=None, ip_via_tor=False, allow_direct=True),
        sync_first=SyncFirstOptions(rpc=("127.0.0.1", dead_port), network_id="simnet",
                                    timeout=None, poll_interval=0.1, stagger=0.1))
    bridge = Bridge(opts)
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.run)
        await trio.sleep(1.0)
        st = bridge.stats().sync
        assert st is not None and st.phase == "syncing" and st.kaspad_synced is None
        assert "not reachable" in st.rpc_problem and f"127.0.0.1:{dead_port}" in st.rpc_problem
        assert st.switch_in is None
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.sync"]
    assert len(lines) == 1, lines  # ~10 failed polls, one line
    assert "keeps dialing IP peers directly until it does" in lines[0]
    assert bridge.dialer.policy.allow_direct


@pytest.mark.parametrize("synced_at_start", [True])
async def test_a_synced_kaspad_at_start_means_no_direct_connection_at_all(
        sync_rig: SyncRig) -> None:
    """A bridge restarted next to a synced kaspad: it dials nothing before kaspad's first
    answer, then only through Tor."""
    rig, bridge = sync_rig, sync_rig.bridge
    with trio.fail_after(10):
        while bridge.pool.ready_count < 1:
            await trio.sleep(0.02)
    st = bridge.stats().sync
    assert st is not None and st.phase == "tor" and st.closed_direct_warm == 0
    sessions = await dial_slots(rig)
    assert not any(direct for _, direct in slot_relays(bridge))
    assert bridge.dialer.stats().dials == rig.socks.connections  # every dial went via SOCKS
    assert not any(s.closed for s in sessions)
    assert rig.state_file.exists()


async def test_the_switch_survives_a_restart(tmp_path: Path) -> None:
    """The state file of an earlier switch: Tor only from the start, kaspad is not even asked,
    and IP peers go through Tor."""
    state = tmp_path / "sync_first.switched"
    state.write_text("switched\n")
    rpc = RpcEmulator(network_id="simnet", synced=False)
    rpc_port = await trio.to_thread.run_sync(rpc.start)
    socks = ScriptedSocks5Server(lambda host, port: 4, require_auth=True)
    try:
        async with trio.open_nursery() as nursery:
            socks_port = await nursery.start(socks.serve)
            bridge = Bridge(BridgeOptions(
                kaspad_p2p=("127.0.0.1", 1), candidates=[Target("127.0.0.1", 9)],
                slot_ports=[0], inbound=None, pool_size=1,
                dial=DialPolicy(proxy=ProxyEndpoint("127.0.0.1", socks_port),
                                ip_via_tor=False, allow_direct=True, timeout=5),
                sync_first=SyncFirstOptions(rpc=("127.0.0.1", rpc_port), network_id="simnet",
                                            timeout=None, poll_interval=0.1,
                                            state_file=state)))
            await nursery.start(bridge.run)
            with trio.fail_after(10):
                await socks.wait_records(1)
            st = bridge.stats().sync
            assert st is not None and st.phase == "tor" and str(state) in st.reason
            assert [(r.host, r.port) for r in socks.records][:1] == [("127.0.0.1", 9)]
            await trio.sleep(0.5)
            assert rpc.requests == 0
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(rpc.stop)
