"""Hostile *local* connections to the slot ports (issue 10, defect 5).

The slot ports listen on the bridge host for kaspad (``--addpeer=127.0.0.1:<slot>``), but any
local process can connect: a port scanner, a TCP health check, a stuck client, a flood. kaspad
sends its HTTP/2 preface and its MessageStream request as soon as it connects, so a slot takes
a warm upstream only once that request is in. What must hold, with its cost:

* connect-and-close costs no Tor connection, no upstream, and credits no remote;
* a connection that says nothing (or only the HTTP/2 preface) is closed after
  ``slot_request_timeout``, blamed on the local side, and backs no remote off;
* 400 such connections at once: at most ``max_slot_connections`` are served, the rest closed at
  once and counted, nothing logged with a traceback, the log bounded, fds, tasks and memory back
  to where they were, and kaspad relays again right after;
* running out of file descriptors does not stop the listener, nor fill the log;
* an honest kaspad (grpcio emulator) still relays.

Rig: ``tests/faults/rig.py`` (emulated kaspad, scripted SOCKS, two good remotes).
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Callable

import h2.config
import h2.connection
import pytest
import trio

from bridge.rig.emulator import KaspadEmulator, make_block_message
from tests.costs import StallMeter, rss_bytes
from tests.faults.remote import Ctx, RawClient, ScriptedRemote
from tests.faults.rig import (
    SlotRig,
    block_arrives,
    close_wait,
    open_fds,
    start_slot_rig,
    task_count,
    until,
)


async def thread(fn: Callable[[], object]) -> object:
    return await trio.to_thread.run_sync(fn)


async def warm(rig: SlotRig) -> None:
    await until(lambda: rig.bridge.pool.ready_count == 2 and not rig.bridge.relays, 15,
                "the pool warm, no relay")


def records(rig: SlotRig) -> dict[str, tuple[object, object, object]]:
    """Each remote's record: failures, successes, in use."""
    return {k: (v["failures"], v["successes"], v["in_use"])
            for k, v in rig.bridge.selector.snapshot().items()}


async def wait_eof(s: trio.SocketStream, timeout: float) -> float | None:
    """Seconds until the bridge closed ``s`` (None: not within ``timeout``)."""
    t0 = trio.current_time()
    with trio.move_on_after(timeout):
        while True:
            try:
                data = await s.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            if not data:
                return trio.current_time() - t0
    return None


async def honest_kaspad_relays(rig: SlotRig, block_id: int) -> None:
    """An emulated kaspad dials a slot: handshake, and a block reaches a good remote."""
    s = rig.kaspad.dial("127.0.0.1", rig.bridge.slot_ports[0])
    assert await thread(lambda: s.wait_handshake(10)), s
    s.send(make_block_message(20_000, request_id=block_id))
    await block_arrives(rig.good.values(), block_id)
    s.close()
    await thread(lambda: s.wait_closed(5))


async def test_connect_and_close_costs_no_upstream(emulators: Callable[..., KaspadEmulator]
                                                   ) -> None:
    """Regression: each local connect-and-close took a warm upstream (the pool then dialed a
    new Tor connection to replace it) and recorded a *success* for a remote that never
    handshook. Now: no dial, nothing taken, no record touched; an honest kaspad still relays."""
    async with trio.open_nursery() as nursery:
        rig = await start_slot_rig(nursery, emulators, None)
        await warm(rig)
        dials, before, socks = rig.bridge.dialer.dials, records(rig), rig.socks.connections
        meter = StallMeter()
        with meter.installed():
            for _ in range(50):
                s = await trio.open_tcp_stream("127.0.0.1", rig.bridge.slot_ports[0])
                await s.aclose()
            await until(lambda: rig.bridge.closed_count.total() == 50
                        and not rig.bridge.relays, 10,
                        lambda: f"50 local connections closed: {rig.bridge.closed_count}")
        await trio.sleep(0.3)  # a dial would have started by now
        assert rig.bridge.pool.events.taken == 0, rig.bridge.pool.events
        assert rig.bridge.dialer.dials == dials and rig.socks.connections == socks
        assert records(rig) == before
        assert rig.bridge.pool.ready_count == 2
        assert rig.bridge.closed_count.slot_no_request == 50
        assert meter.longest < 0.5, meter
        assert not close_wait(rig.bridge.slot_ports)
        await honest_kaspad_relays(rig, 71)
        nursery.cancel_scope.cancel()


async def test_silent_connection_blames_the_local_side(
        emulators: Callable[..., KaspadEmulator], caplog: pytest.LogCaptureFixture) -> None:
    """Regression: a local connection that sent nothing took an upstream, and the response
    watchdog then blamed (and backed off) that innocent remote. Now a connection without a
    gRPC request (silent, or only the HTTP/2 preface) is closed after slot_request_timeout,
    blamed on the local side, logged once, and no remote is touched."""
    caplog.set_level(logging.INFO, logger="bridge")
    async with trio.open_nursery() as nursery:
        rig = await start_slot_rig(nursery, emulators, None)
        await warm(rig)
        dials, before = rig.bridge.dialer.dials, records(rig)
        silent = await trio.open_tcp_stream("127.0.0.1", rig.bridge.slot_ports[0])
        preface = await trio.open_tcp_stream("127.0.0.1", rig.bridge.slot_ports[1])
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        await preface.send_all(conn.data_to_send())
        took: list[float | None] = [None, None]

        async def watch(i: int, s: trio.SocketStream) -> None:
            took[i] = await wait_eof(s, 12)

        async with trio.open_nursery() as n:
            n.start_soon(watch, 0, silent)
            n.start_soon(watch, 1, preface)
        assert None not in took, took  # both closed by the bridge
        await until(lambda: not rig.bridge.relays, 5, "the slot connections gone")
        assert rig.bridge.pool.events.taken == 0, rig.bridge.pool.events
        assert records(rig) == before  # nobody backed off, nobody credited
        assert rig.bridge.dialer.dials == dials
        limit = rig.bridge.options.slot_request_timeout
        assert all(t is not None and limit - 0.5 < t < limit + 2.0 for t in took), took
        assert rig.bridge.closed_count.slot_no_request == 2
        lines = [r for r in caplog.records if "sent no gRPC request" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]  # throttled: one line
        assert lines[0].levelno == logging.WARNING
        assert "[local configuration]" in lines[0].getMessage()
        assert not any("remote peer" in r.getMessage() for r in caplog.records
                       if r.name.startswith("bridge") and r.levelno >= logging.INFO
                       and "slot:" in r.getMessage())
        for s in (silent, preface):
            await s.aclose()
        await honest_kaspad_relays(rig, 72)
        nursery.cancel_scope.cancel()


async def test_local_client_that_leaves_credits_no_remote(
        emulators: Callable[..., KaspadEmulator]) -> None:
    """Regression: a relay that ended because the local side left, before the remote could
    handshake, recorded a *success* for that remote (it never sent its Version). Now it
    records neither a success nor a failure; the candidate is only freed."""
    async def hold(ctx: Ctx) -> None:
        await ctx.hold()

    hostile = ScriptedRemote(script=hold)  # warm, but never answers the stream
    async with trio.open_nursery() as nursery:
        hport = await nursery.start(hostile.serve)
        rig = await start_slot_rig(nursery, emulators, hport, pool_size=1)
        await until(lambda: rig.bridge.pool.ready_count == 1 and hostile.connections == 1, 10,
                    "H warm (the pool dials the candidates in order)")
        assert rig.h is not None
        before = records(rig)[str(rig.h)]
        c = await RawClient.connect(rig.bridge.slot_ports[0])
        await c.preface()
        await c.open_stream()
        await until(lambda: hostile.requests == 1, 5, "the request relayed to H")
        await c.aclose()
        await until(lambda: not rig.bridge.relays, 5, "the relay over")
        failures, successes, in_use = records(rig)[str(rig.h)]
        assert (failures, successes) == before[:2], (before, records(rig)[str(rig.h)])
        assert not in_use
        nursery.cancel_scope.cancel()


async def test_400_silent_connections_are_capped(
        emulators: Callable[..., KaspadEmulator], caplog: pytest.LogCaptureFixture) -> None:
    """Regression: 400 silent local connections each got a handler, took (or waited for) an
    upstream and made the pool dial one more Tor connection each; the process ran out of file
    descriptors and trio's accept loop logged a traceback ten times a second. Now at most
    ``max_slot_connections`` are served at once, the rest are closed at once and counted; no
    dial, no traceback, a bounded log, fds/tasks/memory back to the baseline, and kaspad
    relays again right after. The open-files limit is set to what the 400 client ends need plus
    a margin: the bridge must live within it."""
    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        rig = await start_slot_rig(nursery, emulators, None)
        await warm(rig)
        await honest_kaspad_relays(rig, 73)  # grpc's lazily created fds exist from here on
        await warm(rig)
        fds, tasks, rss = open_fds(), task_count(), rss_bytes()
        dials, before = rig.bridge.dialer.dials, records(rig)
        taken = rig.bridge.pool.events.taken
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (fds + 400 + 150, hard))
        peak = 0
        closed: list[float] = []
        meter = StallMeter()
        try:
            async with trio.open_nursery() as flood:
                async def sample() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, sum(1 for r in rig.bridge.relays.values()
                                             if r.kind == "slot"))
                        await trio.sleep(0.005)

                async def client(port: int) -> None:
                    s = await trio.open_tcp_stream("127.0.0.1", port)
                    took = await wait_eof(s, 30)
                    if took is not None:
                        closed.append(took)
                    await trio.aclose_forcefully(s)

                flood.start_soon(sample)
                with meter.installed():
                    async with trio.open_nursery() as clients:
                        for i in range(400):
                            clients.start_soon(client, rig.bridge.slot_ports[i % 2])
                flood.cancel_scope.cancel()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(closed) == 400  # every one closed by the bridge
        assert rig.bridge.pool.events.taken == taken, rig.bridge.pool.events
        assert rig.bridge.dialer.dials == dials
        assert records(rig) == before
        cap = rig.bridge.max_slot_connections
        assert peak <= cap, (peak, cap)
        cc = rig.bridge.closed_count
        assert cc.slot_full + cc.slot_no_request == 400, cc
        assert cc.slot_full >= 400 - 4 * cap, cc
        assert max(closed) < rig.bridge.options.slot_request_timeout + 3
        warnings = [r for r in caplog.records if r.name.startswith("bridge")
                    and r.levelno >= logging.WARNING]
        assert len(warnings) <= 4, [r.getMessage() for r in warnings]
        assert meter.longest < 0.5, meter
        assert rss_bytes() - rss < 32 << 20
        await until(lambda: not rig.bridge.relays and rig.bridge.slot_connections == 0, 10,
                    "flood connections gone")
        await until(lambda: open_fds() <= fds and task_count() == tasks, 10,
                    lambda: f"fds {open_fds()} -> {fds}, tasks {task_count()} -> {tasks}")
        assert not close_wait(rig.bridge.slot_ports)
        await honest_kaspad_relays(rig, 74)
        nursery.cancel_scope.cancel()


async def test_listener_survives_running_out_of_fds(
        emulators: Callable[..., KaspadEmulator], caplog: pytest.LogCaptureFixture) -> None:
    """Regression: on EMFILE, trio's accept loop logged an ERROR with a traceback every
    100 ms for as long as it lasted. Now the slot listener waits and retries, counts it and
    logs one WARNING (at most one a minute); once descriptors are free it accepts again and
    kaspad relays."""
    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        rig = await start_slot_rig(nursery, emulators, None)
        await warm(rig)
        # client sockets made first; connecting needs no new descriptor
        socks = [trio.socket.socket() for _ in range(5)]
        fillers: list[int] = []
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_fds() + 32, hard))
        try:
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        try:
            for s in socks:
                await s.connect(("127.0.0.1", rig.bridge.slot_ports[0]))
            await trio.sleep(1.0)  # the listener meets EMFILE about ten times
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        full = [r for r in caplog.records if "accept failed" in r.getMessage()
                or "accept returned" in r.getMessage()]
        assert len(full) <= 1, [r.getMessage() for r in full]
        assert rig.bridge.closed_count.accept_failed >= 1
        streams = [trio.SocketStream(s) for s in socks]
        for st in streams:
            await st.aclose()
        await until(lambda: rig.bridge.closed_count.slot_no_request == 5, 10,
                    lambda: f"the 5 connections accepted once fds were free: "
                            f"{rig.bridge.closed_count}")
        await honest_kaspad_relays(rig, 75)
        nursery.cancel_scope.cancel()
