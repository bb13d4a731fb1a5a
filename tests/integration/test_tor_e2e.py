"""Two complete bridge daemons over the private Tor network (real tor, real onion services).

    emulator A ─slot─► daemon A ══ Tor ══► onion B ─► daemon B ─► emulator B
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge.rig.demo import bridge_config
from bridge.rig.emulator import EmulatorConfig, KaspadEmulator, make_block_message
from bridge.rig.tornet import TorNetwork
from bridge.runtime.daemon import Daemon

pytestmark = pytest.mark.tor
log = logging.getLogger("test")


@dataclass
class Pair:
    a: Daemon
    b: Daemon
    emu_a: KaspadEmulator
    emu_b: KaspadEmulator
    onion_a: str
    onion_b: str


@pytest.fixture
async def pair(tornet: TorNetwork, tmp_path: Path) -> AsyncIterator[Pair]:
    emu_a = KaspadEmulator(EmulatorConfig(addrv2=False,
                                          addresses=[(bytes([203, 0, 113, 7]), 16511)]))
    emu_b = KaspadEmulator(EmulatorConfig(addrv2=False))
    socks = tornet.clients[0].socks_port
    control = tornet.onion_hosts[0].control_port
    assert socks is not None
    try:
        port_a = await trio.to_thread.run_sync(emu_a.start_server)
        port_b = await trio.to_thread.run_sync(emu_b.start_server)
        async with trio.open_nursery() as nursery:
            b = Daemon(bridge_config(tmp_path, "b", socks_port=socks, control_port=control,
                                     kaspad_port=port_b, peers=[]), handle_signals=False)
            await nursery.start(b.run)
            assert b.supervisor is not None and b.supervisor.onion_address
            onion_b = b.supervisor.onion_address
            a = Daemon(bridge_config(tmp_path, "a", socks_port=socks, control_port=control,
                                     kaspad_port=port_a, peers=[f"{onion_b}:16511"]),
                       handle_signals=False)
            await nursery.start(a.run)
            assert a.supervisor is not None and a.supervisor.onion_address
            yield Pair(a, b, emu_a, emu_b, a.supervisor.onion_address, onion_b)
            a.request_stop()
            b.request_stop()
    finally:
        await trio.to_thread.run_sync(emu_a.stop)
        await trio.to_thread.run_sync(emu_b.stop)


async def warm(d: Daemon, timeout: float = 60) -> float:
    assert d.bridge is not None
    t0 = time.monotonic()
    with trio.fail_after(timeout):
        while d.bridge.pool.ready_count < 1:
            await trio.sleep(0.1)
    return time.monotonic() - t0


async def connect(p: Pair) -> tuple[Any, Any, float]:
    assert p.a.bridge is not None
    t0 = time.monotonic()
    sa = p.emu_a.dial("127.0.0.1", p.a.bridge.slot_ports[0])
    assert await trio.to_thread.run_sync(sa.wait_handshake, 15.0), repr(sa)
    elapsed = time.monotonic() - t0
    sessions = await trio.to_thread.run_sync(
        lambda: p.emu_b.wait_sessions(1, 10.0))
    sb = [s for s in sessions if not s.closed][-1]
    assert await trio.to_thread.run_sync(sb.wait_handshake, 10.0), repr(sb)
    return sa, sb, elapsed


async def test_handshake_blocks_and_gossip_over_tor(pair: Pair) -> None:
    t_warm = await warm(pair.a)
    sa, sb, t_hs = await connect(pair)
    log.warning("tor e2e: pool warm after %.2fs, kaspad handshake over Tor in %.2fs",
                t_warm, t_hs)
    # kaspad gives 10 s for response headers and 4 s for Version after them
    assert t_hs < 4.0
    for i in range(20):
        sa.send(make_block_message(100_000, request_id=i + 1, seed=i))
        sb.send(make_block_message(1000, response_id=i + 1, seed=i))
    got_b = [await trio.to_thread.run_sync(lambda: sb.wait_received("block", 20.0))
             for _ in range(20)]
    got_a = [await trio.to_thread.run_sync(lambda: sa.wait_received("block", 20.0))
             for _ in range(20)]
    assert [m.request_id for m in got_b] == list(range(1, 21))
    assert [m.response_id for m in got_a] == list(range(1, 21))
    # Gossip: bridge A appended its onion for bridge B (ADDRv2); kaspad B never saw it.
    assert await trio.to_thread.run_sync(
        lambda: sb.wait_for(lambda s: s.remote_addresses is not None, 10))
    assert [bytes(x.ip) for x in sb.remote_addresses] == [bytes([203, 0, 113, 7])]
    assert pair.b.bridge is not None
    with trio.fail_after(5):
        while pair.onion_a not in [str(p.address) for p in pair.b.bridge.gossip.onions]:
            await trio.sleep(0.05)
    assert not sa.violations and not sb.violations


async def test_onion_host_restart_same_onion_back(pair: Pair, tornet: TorNetwork) -> None:
    await warm(pair.a)
    sa, _sb, _ = await connect(pair)
    assert pair.b.supervisor is not None and pair.a.bridge is not None
    for hard in (True, False):
        t0 = time.monotonic()
        await trio.to_thread.run_sync(
            lambda h=hard: tornet.restart(tornet.onion_hosts[0], hard=h))
        # The same onion is published again by the supervisor, with nothing done by hand.
        st = await pair.b.supervisor.wait_usable(60, onion=True)
        assert st.onion_address == pair.onion_b
        republished = time.monotonic() - t0
        # A fresh kaspad connection reaches B again over Tor. The client tor may first retry
        # B's old (dead) introduction points from its cached descriptor, and bridge A backs
        # off between failed dials: allow for both.
        sa.close()
        with trio.fail_after(150):
            while True:
                sa = pair.emu_a.dial("127.0.0.1", pair.a.bridge.slot_ports[0])
                if await trio.to_thread.run_sync(sa.wait_handshake, 15.0):
                    break
                await trio.sleep(1)
        log.warning("tor e2e: onion host %s-restart: republished after %.1fs, kaspad "
                    "reconnected after %.1fs", "hard" if hard else "clean", republished,
                    time.monotonic() - t0)
        msg = make_block_message(5000, request_id=999)
        sa.send(msg)
        sessions = pair.emu_b.sessions
        deadline = time.monotonic() + 20
        got = None
        while got is None and time.monotonic() < deadline:
            for s in [s for s in sessions if not s.closed]:
                try:
                    got = await trio.to_thread.run_sync(lambda s=s: s.wait_received("block", 1.0))
                    break
                except queue.Empty:
                    continue
        assert got is not None and got.request_id == 999
        assert not sa.violations
