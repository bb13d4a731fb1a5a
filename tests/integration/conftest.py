"""Fixtures for loopback end-to-end tests: two bridges, grpcio kaspad emulators, scripted SOCKS.

Topology (all 127.0.0.1)::

    emulator A -> bridge A slot -> [scripted SOCKS5] -> bridge B inbound -> emulator B

The scripted SOCKS server plays Tor: it maps the onion name of bridge B to B's inbound port and
records every CONNECT (address type, host, port, credentials).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import trio

from bridge.core.onion import OnionAddress
from bridge.core.peers import Target
from bridge.core.policy import GossipState, OnionPeer, PolicySettings
from bridge.core.relay import RelaySettings
from bridge.net.pool import DialPolicy
from bridge.net.socks import ProxyEndpoint
from bridge.rig.emulator import KaspadEmulator
from bridge.runtime.bridge import Bridge, BridgeOptions
from tests.peers.socks_server import ScriptedSocks5Server

ONION_B = OnionAddress.from_pubkey(bytes(range(32)))
ONION_A = OnionAddress.from_pubkey(bytes(range(100, 132)))


@dataclass
class Rig:
    socks: ScriptedSocks5Server
    bridge_a: Bridge
    bridge_b: Bridge
    emu_a: KaspadEmulator
    emu_b: KaspadEmulator
    routes: dict[str, int] = field(default_factory=dict)


async def start_rig(nursery: trio.Nursery, emu_a: KaspadEmulator, emu_b: KaspadEmulator, *,
                    pool_size: int = 1, relay: RelaySettings | None = None,
                    gossip_b: GossipState | None = None, direct_b: bool = False,
                    slots: int = 1, extra: dict[str, int] | None = None) -> Rig:
    """``direct_b``: the onion leads straight to emulator B, which then plays a Tor-fork
    kaspad with its own onion service (no bridge in front of it)."""
    routes: dict[str, int] = {}

    def route(host: str, port: int) -> tuple[str, int] | int:
        if host in routes:
            return ("127.0.0.1", routes[host])
        return 4  # host unreachable, like Tor for an unknown onion

    socks = ScriptedSocks5Server(route, require_auth=True)
    socks_port = await nursery.start(socks.serve)
    proxy = ProxyEndpoint("127.0.0.1", socks_port)
    b_port = await trio.to_thread.run_sync(emu_b.start_server)
    settings = relay or RelaySettings()
    opts_b = BridgeOptions(
        kaspad_p2p=("127.0.0.1", b_port), candidates=[], slot_ports=[0],
        inbound=("127.0.0.1", 0), dial=DialPolicy(proxy=proxy), pool_size=0,
        relay=settings, own_onion=OnionPeer(ONION_B, 16511), policy=PolicySettings())
    bridge_b = Bridge(opts_b, gossip=gossip_b)
    await nursery.start(bridge_b.run)
    assert bridge_b.inbound_port is not None
    routes[ONION_B.host] = b_port if direct_b else bridge_b.inbound_port
    routes.update(extra or {})
    opts_a = BridgeOptions(
        kaspad_p2p=("127.0.0.1", 1),
        candidates=[Target(ONION_B.host, 16511)] + [Target(h, 16511) for h in extra or {}],
        slot_ports=[0] * slots,
        inbound=None, dial=DialPolicy(proxy=proxy, timeout=10), pool_size=pool_size,
        relay=settings, own_onion=OnionPeer(ONION_A, 16511))
    bridge_a = Bridge(opts_a)
    await nursery.start(bridge_a.run)
    return Rig(socks, bridge_a, bridge_b, emu_a, emu_b, routes)


@pytest.fixture
async def rig_factory() -> AsyncIterator[Callable[..., object]]:
    async with trio.open_nursery() as nursery:
        async def make(emu_a: KaspadEmulator, emu_b: KaspadEmulator, **kw: object) -> Rig:
            return await start_rig(nursery, emu_a, emu_b, **kw)  # type: ignore[arg-type]
        yield make
        nursery.cancel_scope.cancel()


def random_id() -> bytes:
    return os.urandom(16)
