"""Discovery over the private Tor network: three bridges that only know one seed onion find
each other's onions through gossip (passive harvest + the bridges' own address requests), keep
them in their address books, and dial them."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import trio

from bridge.rig.demo import bridge_config
from bridge.rig.emulator import EmulatorConfig, KaspadEmulator
from bridge.rig.tornet import TorNetwork
from bridge.runtime.daemon import Daemon

pytestmark = pytest.mark.tor
log = logging.getLogger("test")


def known(d: Daemon) -> set[str]:
    assert d.bridge is not None and d.bridge.book is not None
    return {e.host for e in d.bridge.book.entries("kaspa-simnet", ["onion"])}


async def test_three_bridges_find_each_other_from_one_seed(tornet: TorNetwork,
                                                           tmp_path: Path) -> None:
    socks = tornet.client.socks_port
    assert socks is not None
    control = tornet.onion_host.control_port
    emus = [KaspadEmulator(EmulatorConfig(addresses=[(bytes([198, 51, 100, i]), 16511)]))
            for i in range(3)]
    try:
        ports = [await trio.to_thread.run_sync(e.start_server) for e in emus]
        extra: dict[str, object] = {"peers.refresh_interval": 2.0, "pool.size": 2}
        async with trio.open_nursery() as nursery:
            seed = Daemon(bridge_config(tmp_path, "seed", socks_port=socks, control_port=control,
                                        kaspad_port=ports[0], peers=[], slots=2, extra=extra),
                          handle_signals=False)
            await nursery.start(seed.run)
            assert seed.supervisor is not None and seed.supervisor.onion_address
            seed_onion = seed.supervisor.onion_address
            others = []
            for i, name in ((1, "a"), (2, "b")):
                d = Daemon(bridge_config(tmp_path, name, socks_port=socks, control_port=control,
                                         kaspad_port=ports[i], peers=[f"{seed_onion}:16511"],
                                         slots=2, extra=extra), handle_signals=False)
                await nursery.start(d.run)
                others.append(d)
            daemons = [seed, *others]
            onions = {d.supervisor.onion_address for d in daemons if d.supervisor}
            assert len(onions) == 3
            # The two non-seed nodes' kaspads dial their bridges' slots (kaspad --addpeer).
            t0 = time.monotonic()
            sessions = []
            for i, d in ((1, others[0]), (2, others[1])):
                assert d.bridge is not None
                with trio.fail_after(60):
                    while d.bridge.pool.ready_count < 1:
                        await trio.sleep(0.1)
                s = emus[i].dial("127.0.0.1", d.bridge.slot_ports[0])
                assert await trio.to_thread.run_sync(s.wait_handshake, 15.0), repr(s)
                sessions.append(s)
            # Every bridge ends up knowing the other two onions.
            with trio.fail_after(60):
                while not all(known(d) >= onions - {d.supervisor.onion_address}
                              for d in daemons if d.supervisor):
                    await trio.sleep(0.2)
            converged = time.monotonic() - t0
            log.warning("discovery: 3 bridges knew each other's onions %.1fs after the first "
                        "kaspad connected", converged)
            # ...and a non-seed bridge dials a peer it only learned from gossip.
            a, b = others
            assert a.bridge is not None and b.bridge is not None and b.supervisor is not None
            target = f"{b.supervisor.onion_address}:16511"
            with trio.fail_after(60):
                while not any(str(r.target) == target for r in a.bridge.relays.values()) and \
                        not a.bridge.selector.snapshot().get(target, {}).get("in_use"):
                    await trio.sleep(0.2)
            for s in sessions:
                assert not s.violations, s.violations
            # kaspad never saw an onion
            for e in emus:
                for s in e.sessions:
                    for addr in s.remote_addresses or []:
                        assert addr.WhichOneof("address") == "ip"
            for d in daemons:
                d.request_stop()
    finally:
        for e in emus:
            await trio.to_thread.run_sync(e.stop)


async def test_dns_seeder_is_harvested_through_a_tor_exit(tornet: TorNetwork,
                                                          tmp_path: Path) -> None:
    """The seeder name goes to Tor unresolved; the exit resolves it (the rig's DNS stub maps
    *.test to 127.0.0.1), the bridge handshakes like kaspad, keeps the addresses, closes."""
    socks = tornet.client.socks_port
    assert socks is not None
    seeder = KaspadEmulator(EmulatorConfig(addresses=[(bytes([45, 51, 100, 7]), 16511),
                                                      (bytes([46, 0, 113, 8]), 16511)]))
    try:
        port = await trio.to_thread.run_sync(seeder.start_server)
        cfg = bridge_config(tmp_path, "s", socks_port=socks,
                            control_port=tornet.onion_host.control_port, kaspad_port=1,
                            peers=[], extra={"peers.seeders": [f"seeder.test:{port}"]})
        async with trio.open_nursery() as nursery:
            d = Daemon(cfg, handle_signals=False)
            await nursery.start(d.run)
            assert d.bridge is not None and d.bridge.book is not None
            with trio.fail_after(60):
                while {e.host for e in d.bridge.book.entries("kaspa-simnet")} < {
                        "45.51.100.7", "46.0.113.8"}:
                    await trio.sleep(0.2)
            entry = d.bridge.book.get("kaspa-simnet", "45.51.100.7", 16511)
            assert entry is not None and entry.source == "seed"
            sessions = seeder.sessions
            assert len(sessions) == 1 and not sessions[0].violations
            d.request_stop()
    finally:
        await trio.to_thread.run_sync(seeder.stop)
