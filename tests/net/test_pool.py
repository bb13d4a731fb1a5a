"""Dialing and the warm pool against a scripted SOCKS5 server (failure injection)."""

from __future__ import annotations

import logging
import socket
from functools import partial

import pytest
import trio
import trio.testing

from bridge.core.errors import Fault
from bridge.core.onion import OnionAddress
from bridge.core.peers import PeerSelector, Target
from bridge.core.relay import RelaySettings
from bridge.net import pool as pool_mod
from bridge.net.pool import Dialer, DialPolicy, WarmPool
from bridge.net.socks import DialError, ProxyEndpoint
from bridge.rig.tornet import free_ports
from bridge.runtime.bridge import Bridge, BridgeOptions
from tests.costs import rss_bytes
from tests.faults.rig import open_fds, task_count, task_names, until
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


async def test_dial_durations_by_route_and_outcome(nursery: trio.Nursery) -> None:
    """Every dial is timed, by route (Tor's SOCKS or direct) and outcome."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    nursery.start_soon(trio.serve_listeners, lambda s: s.aclose(), [listener])
    open_port = listener.socket.getsockname()[1]
    (closed,) = free_ports(1)
    socks = ScriptedSocks5Server(lambda host, port: 4)
    sport = await nursery.start(socks.serve)
    dialer = Dialer(DialPolicy(proxy=ProxyEndpoint("127.0.0.1", sport), ip_via_tor=False,
                               allow_direct=True, timeout=5))
    stream = await dialer.dial(Target("127.0.0.1", open_port))
    await stream.aclose()
    with pytest.raises(DialError):
        await dialer.dial(Target("127.0.0.1", closed))
    with pytest.raises(DialError):
        await dialer.dial(Target(ONION, 16111))  # through the SOCKS port: unreachable
    d = dialer.stats().durations
    counts = {k: h.count for k, h in d.items()}
    assert counts == {("tor", "ok"): 0, ("tor", "failed"): 1, ("direct", "ok"): 1,
                      ("direct", "failed"): 1}
    assert all(0 <= h.sum < 5 for h in d.values())
    assert dialer.stats().dials == 3


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
        while pool.events.failed < 1:
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
        while pool2.events.failed < 1:
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
        while pool.events.failed < 5:
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
    assert pool.events.taken == 4
    await trio.sleep(0.2)
    assert pool.ready_count <= size + 4  # extra warm connections stay bounded


# -- issue 10, defect 4: a warm connection whose remote stops reading ------------------------

_PING = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"  # HTTP/2 PING, stream 0


def _unbudgeted() -> RelaySettings:
    """Relay settings without the frame budget's limits. The budget (bridge.core.budget) closes
    a *fast* PING flood after ``burst`` frames, but it refills (10 frames/s): a remote may ping
    forever at that rate and never read, which fills any socket buffer in time. These tests
    reach that state in seconds instead of hours, so the bound under test is the pool's own."""
    try:
        from bridge.core.budget import BudgetSettings
    except ImportError:  # the code before issue 10 had no budget
        return RelaySettings()
    return RelaySettings(budget=BudgetSettings(burst=10**9, max_unread_replies=10**9))


class TinyBufDialer(Dialer):
    """Dials with a minimal send buffer, so that a remote that does not read blocks the pool's
    writes after a few KB rather than a few MB."""

    async def dial(self, target: Target) -> trio.SocketStream:
        stream = await super().dial(target)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return stream


class NoReadRemote:
    """Answers the pool's HTTP/2 handshake (its SETTINGS, sent without reading a byte) and then,
    on its first connection, sends PINGs as fast as it can and never reads: its tiny receive
    buffer fills, then the bridge's send buffer, and every write of ACKs blocks. It gives up
    ``close_after`` seconds after the connection (so that code without the fix ends at all).
    Later connections only answer the handshake and stay open."""

    def __init__(self, close_after: float) -> None:
        self.close_after = close_after
        self.port = 0
        self.connections = 0
        self.sent = 0
        self.last_progress = 0.0
        self.ended: list[tuple[str, float]] = []  # (how the first connection ended, when)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        for listener in listeners:  # accepted sockets inherit it (and the window scale)
            listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    @property
    def blocked(self) -> bool:
        """The flood has been stuck for a second (the bridge stopped reading too)."""
        return self.sent > 0 and trio.current_time() - self.last_progress > 1.0

    async def _handle(self, s: trio.SocketStream) -> None:
        import h2.config
        import h2.connection

        self.connections += 1
        first = self.connections == 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        await s.send_all(conn.data_to_send())
        if not first:
            await trio.sleep_forever()
        chunk = _PING * 64
        how = "gave up"
        with trio.move_on_after(self.close_after):
            try:
                while True:
                    await s.send_all(chunk)
                    self.sent += len(chunk)
                    self.last_progress = trio.current_time()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                how = "closed by the bridge"
        self.ended.append((how, trio.current_time()))


async def _bridge_to(remote_port: int, send_timeout: float) -> Bridge:
    opts = BridgeOptions(kaspad_p2p=("127.0.0.1", 1),
                         candidates=[Target("127.0.0.1", remote_port)],
                         slot_ports=[], inbound=None, pool_size=1, refresh_interval=None,
                         dial=DialPolicy(proxy=None, allow_direct=True, ip_via_tor=False,
                                         timeout=5),
                         h2_handshake_timeout=send_timeout, relay=_unbudgeted())
    return Bridge(opts, dialer=TinyBufDialer(opts.dial))


async def test_remote_that_stops_reading_is_dropped_within_the_send_timeout(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    """Regression (issue 10, defect 4): the idle task wrote h2's PING ACKs in a shielded send
    without a timeout; a remote that floods PINGs and never reads left it blocked forever, the
    candidate "in use", the task and socket alive, nothing logged. Now the write has
    ``send_timeout`` seconds: the connection is closed, logged once as the remote's fault, and
    the candidate released with a backoff; no task, fd or memory is left behind."""
    caplog.set_level(logging.INFO, logger="bridge")
    remote = NoReadRemote(close_after=20)
    port = await nursery.start(remote.serve)
    fds, tasks, rss = open_fds(), task_count("NoReadRemote"), rss_bytes()
    send_timeout = 1.5
    bridge = await _bridge_to(port, send_timeout)
    await nursery.start(bridge.run)
    target = Target("127.0.0.1", port)
    await until(lambda: remote.blocked, 10, "the remote's flood blocked")
    blocked_at = remote.last_progress
    await until(lambda: bool(remote.ended), send_timeout + 5,
                lambda: f"the bridge to close the connection: stats {bridge.pool.events}, "
                        f"candidate {bridge.selector.snapshot()[str(target)]}")
    how, at = remote.ended[0]
    assert how == "closed by the bridge" and at - blocked_at < send_timeout + 3
    assert bridge.pool.events.not_reading == 1
    snap = bridge.selector.snapshot()[str(target)]
    assert snap["failures"] == 1 and not (snap["in_use"] and bridge.pool.ready_count == 0)
    lines = [r for r in caplog.records if "did not read" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING, lines
    assert "[remote peer]" in lines[0].getMessage()
    # bounded: the second (quiet) connection is all that is left
    await until(lambda: bridge.pool.ready_count == 1, 10, "redialed after the backoff")
    names = task_names("NoReadRemote")
    assert sum("_keep" in n for n in names) == 1, names
    assert open_fds() <= fds + 2 + 4  # the warm connection's two ends (+ slack for trio)
    assert task_count("NoReadRemote") <= tasks + 8
    assert rss_bytes() - rss < 64 << 20


async def test_shutdown_is_prompt_with_a_remote_that_does_not_read(nursery: trio.Nursery
                                                                   ) -> None:
    """Regression (issue 10, defect 4): with the idle task blocked in its shielded write, a
    cancelled ``Bridge.run`` (SIGTERM) hung until the remote went away. Now it ends at once,
    and the socket is closed."""
    remote = NoReadRemote(close_after=15)
    port = await nursery.start(remote.serve)
    fds = open_fds()
    bridge = await _bridge_to(port, send_timeout=60)  # the timeout is not what ends it
    done = trio.Event()
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            await bridge.run()
        done.set()

    nursery.start_soon(run)
    await until(lambda: remote.blocked, 10, "the remote's flood blocked")
    await trio.sleep(0.5)
    t0 = trio.current_time()
    scope.cancel()
    with trio.move_on_after(30):
        await done.wait()
    took = trio.current_time() - t0
    assert took < 2.0, f"Bridge.run took {took:.1f}s to end after cancellation"
    await until(lambda: bool(remote.ended), 5, "the remote saw its connection closed")
    assert remote.ended[0][0] == "closed by the bridge"
    await until(lambda: open_fds() <= fds + 1, 5, "the bridge's fds released")
