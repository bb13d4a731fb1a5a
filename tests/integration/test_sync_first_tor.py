"""Sync first, then Tor with two complete bridge daemons and the private Tor network (real tor,
real onion service), configured as an operator would (mode = "hybrid", peers.sync_first, kaspad.rpc
pointing at an emulated kaspad RPC):

    emulator A ─slot─► daemon A ─direct─► emulator C (an IP peer)        while A "syncs"
                                ══ Tor ══► onion B ─► daemon B ─► emulator B   once A is synced
                                ══ Tor ══► emulator C (through an exit)    or this
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio

from bridge.config import load_config
from bridge.core.kaspa import SIMNET
from bridge.rig.demo import bridge_config, free_port_range
from bridge.rig.emu_rpc import RpcEmulator
from bridge.rig.emulator import EmulatorConfig, KaspadEmulator
from bridge.rig.tornet import TorNetwork, free_ports
from bridge.runtime.daemon import Daemon

pytestmark = pytest.mark.tor
log = logging.getLogger("test")


async def test_daemon_syncs_direct_then_switches_its_slot_to_tor(
        tornet: TorNetwork, tmp_path: Path) -> None:
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    keep = Keep(logging.INFO)
    sync_log = logging.getLogger("bridge.sync")
    sync_log.addHandler(keep)
    level = sync_log.level
    sync_log.setLevel(logging.INFO)
    socks = tornet.clients[0].socks_port
    control = tornet.onion_hosts[0].control_port
    assert socks is not None
    emu_a = KaspadEmulator(EmulatorConfig(addrv2=False))
    emu_b = KaspadEmulator(EmulatorConfig(addrv2=False))
    emu_c = KaspadEmulator(EmulatorConfig(addrv2=False))
    rpc = RpcEmulator(network_id="simnet", synced=False)
    try:
        port_a, port_b, port_c = [await trio.to_thread.run_sync(e.start_server)
                                  for e in (emu_a, emu_b, emu_c)]
        rpc_port = await trio.to_thread.run_sync(rpc.start)
        async with trio.open_nursery() as nursery:
            b = Daemon(bridge_config(tmp_path, "b", socks_port=socks, control_port=control,
                                     kaspad_port=port_b, peers=[]), handle_signals=False)
            await nursery.start(b.run)
            assert b.supervisor is not None and b.supervisor.onion_address
            (inbound,) = free_ports(1)
            slot = free_port_range(1, avoid={inbound})
            cfg = load_config(None, env={"HOME": os.environ.get("HOME", "/root")}, overrides={
                "network": SIMNET.name, "mode": "hybrid", "data_dir": str(tmp_path / "a"),
                "kaspad.p2p": f"127.0.0.1:{port_a}", "kaspad.rpc": f"127.0.0.1:{rpc_port}",
                "slots.base_port": slot, "slots.count": 1,
                "inbound.listen": f"127.0.0.1:{inbound}",
                "tor.socks": f"127.0.0.1:{socks}", "tor.control": f"127.0.0.1:{control}",
                "tor.bootstrap_timeout": 60.0, "pool.size": 1, "pool.dial_timeout": 30.0,
                "peers.sync_first": True, "peers.dns_seed": False,
                "peers.connect": [f"127.0.0.1:{port_c}", f"{b.supervisor.onion_address}:16511"],
            })
            assert cfg.peers.allow_direct  # implied
            a = Daemon(cfg, handle_signals=False)
            await nursery.start(a.run)
            bridge = a.bridge
            assert bridge is not None

            # syncing: the slot relays to C, dialed directly
            sa = emu_a.dial("127.0.0.1", bridge.slot_ports[0])
            assert await trio.to_thread.run_sync(sa.wait_handshake, 20.0), repr(sa)
            (info,) = [i for i in bridge.relays.values() if i.kind == "slot"]
            assert info.direct and info.target is not None and info.target.port == port_c
            snap = a.snapshot()
            assert snap.bridge is not None and snap.bridge.sync is not None
            assert snap.bridge.sync.phase == "syncing"

            # kaspad synced: the direct relay is closed; kaspad's retry gets onion B over Tor
            rpc.synced = True
            with trio.fail_after(20):
                while not sa.closed:
                    await trio.sleep(0.1)
            with trio.fail_after(120):
                while True:
                    sa = emu_a.dial("127.0.0.1", bridge.slot_ports[0])
                    if await trio.to_thread.run_sync(sa.wait_handshake, 15.0):
                        break
                    await trio.sleep(1)
            (info,) = [i for i in bridge.relays.values() if i.kind == "slot"]
            # onion B, or C through a Tor exit (the private network's exits reach loopback)
            assert not info.direct and info.target is not None
            assert bridge.dialer.route(info.target) is not None  # a SOCKS proxy: Tor
            if info.target.is_onion:
                sessions = await trio.to_thread.run_sync(lambda: emu_b.wait_sessions(1, 10.0))
                assert sessions, "onion B's kaspad never saw the relayed connection"
            else:
                assert info.target.port == port_c and len(emu_c.sessions) >= 2
            snap = a.snapshot()
            assert snap.bridge is not None and snap.bridge.sync is not None
            assert snap.bridge.sync.phase == "tor"
            assert (cfg.network_dir / "sync_first.switched").exists()
            switch_lines = [m for m in lines if "switching to Tor for good" in m]
            assert len(switch_lines) == 1 and r"kaspad reported synced" in switch_lines[0]
            a.request_stop()
            b.request_stop()
    finally:
        sync_log.removeHandler(keep)
        sync_log.setLevel(level)
        for emu in (emu_a, emu_b, emu_c):
            await trio.to_thread.run_sync(emu.stop)
        await trio.to_thread.run_sync(rpc.stop)
