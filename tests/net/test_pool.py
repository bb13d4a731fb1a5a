"""Dialing and the warm pool against a scripted SOCKS5 server (failure injection)."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from bridge.core.onion import OnionAddress
from bridge.core.peers import PeerSelector, Target
from bridge.core.relay import RelaySettings
from bridge.errors import Fault
from bridge.net import pool as pool_mod
from bridge.net.pool import Dialer, DialPolicy, WarmPool
from bridge.net.socks import DialError, ProxyEndpoint
from bridge.rig.tornet import free_ports
from tests.peers.socks_server import ScriptedSocks5Server

ONION = OnionAddress.from_pubkey(bytes(range(32))).host


async def test_dial_errors_say_whose_fault(nursery: trio.Nursery) -> None:
    socks = ScriptedSocks5Server(lambda host, port: 4)  # Tor: host unreachable
    port = await nursery.start(socks.serve)
    dialer = Dialer(DialPolicy(proxy=ProxyEndpoint("127.0.0.1", port), timeout=5))
    with pytest.raises(DialError) as remote:
        await dialer.dial(Target(ONION, 16111))
    assert remote.value.fault is Fault.REMOTE and remote.value.socks_code == 4
    (closed,) = free_ports(1)
    dead = Dialer(DialPolicy(proxy=ProxyEndpoint("127.0.0.1", closed), timeout=5))
    with pytest.raises(DialError) as tor:
        await dead.dial(Target(ONION, 16111))
    assert tor.value.fault is Fault.TOR and "unreachable" in str(tor.value)


def test_routing_rules() -> None:
    p = ProxyEndpoint("127.0.0.1", 9050)
    o = ProxyEndpoint("127.0.0.1", 9150)
    tor_only = Dialer(DialPolicy(proxy=p, onion_proxy=o))
    assert tor_only.route(Target(ONION, 1)) == o
    assert tor_only.route(Target("203.0.113.1", 1)) == p
    with pytest.raises(DialError, match="no DNS"):
        tor_only.route(Target("example.com", 1))  # never a hostname
    hybrid = Dialer(DialPolicy(proxy=p, onion_proxy=o, ip_via_tor=False, allow_direct=True))
    assert hybrid.route(Target("203.0.113.1", 1)) is None  # direct, not through Tor
    assert hybrid.route(Target(ONION, 1)) == o
    no_direct = Dialer(DialPolicy(proxy=p, ip_via_tor=False))
    with pytest.raises(DialError, match="direct dialing is not allowed"):
        no_direct.route(Target("203.0.113.1", 1))
    auto = Dialer(DialPolicy(proxy=None), socks_provider=lambda: p)
    assert auto.route(Target(ONION, 1)) == p


async def test_tor_failures_do_not_penalise_the_peer(nursery: trio.Nursery) -> None:
    """Our proxy down: the candidate is retried soon, its failure count untouched. The peer
    unreachable: exponential backoff."""
    (closed,) = free_ports(1)
    t = Target(ONION, 16111)
    sel = PeerSelector([t])
    pool = WarmPool(sel, Dialer(DialPolicy(proxy=ProxyEndpoint("127.0.0.1", closed),
                                           timeout=2)),
                    size=1, relay_settings=RelaySettings())
    nursery.start_soon(pool.run)
    with trio.fail_after(5):
        while pool.stats["failed"] < 1:
            await trio.sleep(0.01)
    assert sel.snapshot()[str(t)]["failures"] == 0
    socks = ScriptedSocks5Server(lambda host, port: 4)
    port = await nursery.start(socks.serve)
    sel2 = PeerSelector([t])
    pool2 = WarmPool(sel2, Dialer(DialPolicy(proxy=ProxyEndpoint("127.0.0.1", port),
                                             timeout=2)),
                     size=1, relay_settings=RelaySettings())
    nursery.start_soon(pool2.run)
    with trio.fail_after(5):
        while pool2.stats["failed"] < 1:
            await trio.sleep(0.01)
    snap = sel2.snapshot()[str(t)]
    assert snap["failures"] == 1 and float(snap["retry_at"] or 0) > trio.current_time()


async def test_stalled_socks_is_bounded_by_dial_timeout(nursery: trio.Nursery) -> None:
    async def stall(_rec: object) -> str:
        return "stall"

    socks = ScriptedSocks5Server(lambda h, p: ("127.0.0.1", 1), script=stall)
    port = await nursery.start(socks.serve)
    dialer = Dialer(DialPolicy(proxy=ProxyEndpoint("127.0.0.1", port), timeout=1))
    t0 = trio.current_time()
    with pytest.raises(DialError, match="timed out"):
        await dialer.dial(Target(ONION, 16111))
    assert trio.current_time() - t0 < 3


async def test_failures_right_after_tor_recovered_are_not_penalised(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    """A freshly restarted Tor may fail onion dials while it fetches descriptors: for a grace
    period after :meth:`WarmPool.forgive_all` the peer is retried soon and not penalised;
    after it, the usual exponential backoff applies again."""
    socks = ScriptedSocks5Server(lambda host, port: 4)  # host unreachable: the peer's fault
    port = await nursery.start(socks.serve)
    t = Target(ONION, 16111)
    sel = PeerSelector([t])
    pool = WarmPool(sel, Dialer(DialPolicy(proxy=ProxyEndpoint("127.0.0.1", port), timeout=2)),
                    size=1, relay_settings=RelaySettings())
    pool.forgive_all()
    nursery.start_soon(pool.run)
    with trio.fail_after(pool_mod.TOR_RECOVERY_GRACE - 5):
        while pool.stats["failed"] < 5:
            await trio.sleep(0.01)
    assert sel.snapshot()[str(t)]["failures"] == 0  # five failures, none counted
    await trio.sleep(pool_mod.TOR_RECOVERY_GRACE)
    with trio.fail_after(10):
        while sel.snapshot()[str(t)]["failures"] == 0:
            await trio.sleep(0.01)
    assert sel.snapshot()[str(t)]["failures"] >= 1  # grace over: back to backoff


async def _h2_server(stream: trio.SocketStream) -> None:
    """Just enough HTTP/2 server for the pool's handshake: SETTINGS (after 1.5 s, like a slow
    Tor circuit), ACKs, then idle."""
    import h2.config
    import h2.connection

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    await trio.sleep(1.5)
    async with stream:
        await stream.send_all(conn.data_to_send())
        async for chunk in stream:
            conn.receive_data(chunk)
            out = conn.data_to_send()
            if out:
                await stream.send_all(out)


@pytest.mark.parametrize("size", [0, 1])
async def test_burst_of_slots_larger_than_the_pool_dials_for_each(
        nursery: trio.Nursery, size: int) -> None:
    """Four slots at once with a pool of 0 or 1: every waiting slot gets a dial of its own
    (before, at most ``size`` dials were in flight, so the slots were served one connection
    time after another, 6 s here, and ``size = 0`` never dialed at all)."""
    listeners = await nursery.start(partial(trio.serve_tcp, _h2_server, 0, host="127.0.0.1"))
    h2_port = listeners[0].socket.getsockname()[1]
    socks = ScriptedSocks5Server(lambda host, port: ("127.0.0.1", h2_port))
    port = await nursery.start(socks.serve)
    targets = [Target(OnionAddress.from_pubkey(bytes([i]) * 32).host, 16111) for i in range(6)]
    pool = WarmPool(PeerSelector(targets),
                    Dialer(DialPolicy(proxy=ProxyEndpoint("127.0.0.1", port), timeout=5)),
                    size=size, relay_settings=RelaySettings())
    nursery.start_soon(pool.run)
    got: list[object] = []

    async def take() -> None:
        got.append(await pool.take(4))

    with trio.fail_after(10):
        async with trio.open_nursery() as takers:
            for _ in range(4):
                takers.start_soon(take)
    assert len(got) == 4 and all(u is not None for u in got)
    assert len({u.target for u in got if u is not None}) == 4  # never the same remote twice
    assert pool.stats["taken"] == 4
    await trio.sleep(0.2)
    assert pool.ready_count <= size + 4  # extra warm connections stay bounded
