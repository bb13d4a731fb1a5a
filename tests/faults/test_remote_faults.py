"""Fault injection from remote peers (issue 6, part 3): stalls, slowloris trickles, TCP resets,
RST_STREAM/GOAWAY, a 1000-connection flood of the onion inbound, and kaspad restarts.

Each case asserts what must still hold: the faulty connection is closed by the bridge within
kaspad's deadlines (scaled down, see ``tests/faults/rig.py``), kaspad gets a clean close and never
a partial message as if complete, the slot is re-filled from another peer, other connections keep
relaying, and nothing leaks (TCP sockets, fds, trio tasks).
"""

from __future__ import annotations

import logging
import os
import queue
from collections.abc import Callable, Iterator

import h2.config
import h2.connection
import pytest
import trio

from bridge.config import load_config
from bridge.core import grpc
from bridge.core.errors import ConfigError
from bridge.core.peers import Target
from bridge.core.policy import OnionPeer
from bridge.net.pool import DialPolicy
from bridge.net.runner import StallPolicy
from bridge.rig.emulator import EmulatorConfig, KaspadEmulator, PeerSession, make_block_message
from bridge.runtime.bridge import Bridge, BridgeOptions
from bridge.runtime.wiring import bridge_options
from tests.faults.remote import Ctx, RawClient, ScriptedRemote, handshake_bytes
from tests.faults.rig import (
    H2_HANDSHAKE_TIMEOUT,
    ONION_G2,
    ONION_H,
    PORT,
    RESPONSE_DEADLINE,
    STALL,
    SlotRig,
    block_arrives,
    close_wait,
    open_fds,
    raise_nofile,
    start_inbound_rig,
    start_slot_rig,
    task_count,
    task_names,
    tcp_sockets,
    until,
)

BLOCK = grpc.frame(make_block_message(1 << 20, request_id=0, fill="random").SerializeToString())
#: what kaspad (the emulator) may legitimately report when a remote never sent its Version
KASPAD_TIMEOUTS = ("timeout expired",)


@pytest.fixture
def emulators() -> Iterator[Callable[..., KaspadEmulator]]:
    made: list[KaspadEmulator] = []

    def make(**kw: object) -> KaspadEmulator:
        kw.setdefault("max_workers", 128)
        emu = KaspadEmulator(EmulatorConfig(**kw))  # type: ignore[arg-type]
        made.append(emu)
        return emu

    yield make
    for emu in made:
        emu.stop()


async def thread(fn: Callable[[], object]) -> object:
    return await trio.to_thread.run_sync(fn)


def no_bad_frames(session: PeerSession, allowed: tuple[str, ...] = ()) -> None:
    """kaspad saw nothing it would choke on: the only violations are its own timeouts."""
    bad = [v for v in session.violations if not any(a in v for a in allowed)]
    assert not bad, session


def fd_names() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(f"{fd}:{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass
    return out


def blocks_received(session: PeerSession) -> int:
    n = 0
    kept = []
    while True:
        try:
            m = session.received.get_nowait()
        except queue.Empty:
            break
        kept.append(m)
        n += m.WhichOneof("payload") == "block"
    for m in kept:
        session.received.put(m)
    return n


def failures(rig: SlotRig, target: Target | None) -> int:
    assert target is not None
    snap = rig.bridge.selector.snapshot()
    entry = snap.get(str(target)) or snap.get(target.authority.decode()) or {}
    return int(entry.get("failures") or 0)


async def logged(caplog: pytest.LogCaptureFixture, *parts: str) -> None:
    """A log line containing all ``parts`` appears (the close is logged after kaspad's stream
    was ended)."""
    def found() -> bool:
        return any(all(p in r.getMessage() for p in parts) for r in caplog.records)
    try:
        await until(found, 5, f"a log line with {parts}")
    except AssertionError as exc:
        lines = "\n  ".join(r.getMessage() for r in caplog.records)
        raise AssertionError(f"{exc}; log:\n  {lines}") from None


async def relays_to(rig: SlotRig, session: PeerSession, block_id: int) -> None:
    """The session's slot still relays: a block sent by kaspad arrives at the remote emulator."""
    target = rig.target_of(session)
    assert target is not None and target in rig.good, target
    emu = rig.good[target]
    msg = make_block_message(50_000, request_id=block_id)
    session.send(msg)
    await block_arrives([emu], block_id)


async def steady(rig: SlotRig, hostile: ScriptedRemote | None) -> None:
    """No kaspad connection, no relay, the pool full and idle, no hostile connection open."""
    pool = rig.bridge.pool
    await until(lambda: not rig.bridge.relays and pool.ready_count == pool.size
                and pool._dialing == 0 and (hostile is None or hostile.open_connections == 0),
                20, "the bridge back to its steady state")


async def warm_up_grpc(rig: SlotRig) -> None:
    """One kaspad session straight to a good remote, so grpc's lazily created client-side fds
    exist before any fd baseline is taken."""
    emu = next(iter(rig.good.values()))
    assert emu.port is not None
    s = rig.kaspad.dial("127.0.0.1", emu.port)
    assert await thread(lambda: s.wait_handshake(10))
    s.close()
    await thread(lambda: s.wait_closed(5))


class Probe:
    """fds and trio tasks at a steady state, compared again at the same state later."""

    def __init__(self) -> None:
        self.fds = open_fds()
        self.tasks = task_count()
        self.fd_names = fd_names()
        self.task_names = task_names()

    async def same_again(self, rig: SlotRig, hostile: ScriptedRemote | None) -> None:
        await steady(rig, hostile)
        try:
            # grpc may have closed some of its own fds meanwhile: never more than before
            await until(lambda: open_fds() <= self.fds and task_count() == self.tasks
                        and not rig.leaked(), 10,
                        f"fds back to {self.fds}, tasks to {self.tasks}, no CLOSE_WAIT")
        except AssertionError as exc:
            now = fd_names()
            raise AssertionError(f"{exc}: fds {open_fds()} tasks {task_count()} "
                                 f"CLOSE_WAIT {rig.leaked()}; "
                                 f"new {sorted(set(now) - set(self.fd_names))} "
                                 f"gone {sorted(set(self.fd_names) - set(now))} "
                                 f"tasks {self.task_names} -> {task_names()}") from None


async def dial_slots(rig: SlotRig) -> list[PeerSession]:
    return [rig.kaspad.dial("127.0.0.1", p) for p in rig.bridge.slot_ports]


async def hostile_episode(rig: SlotRig, hostile: ScriptedRemote, *, warm: bool
                          ) -> tuple[PeerSession, PeerSession, float]:
    """Both slots dialed while H (and G1) are in the pool; returns (the session that got H, the
    good one, when H's stream was opened). ``warm=False``: H never gets warm."""
    if warm:
        await until(lambda: rig.bridge.pool.ready_count == 2 and hostile.connections >= 1, 10,
                    "H and G1 warm")
    else:
        await until(lambda: rig.bridge.pool.ready_count == 2, 10, "G1 and G2 warm")
    s1, s2 = await dial_slots(rig)
    if not warm:
        for s in (s1, s2):
            assert await thread(lambda s=s: s.wait_handshake(10)), s
        return s1, s2, 0.0
    await until(lambda: hostile.requests >= 1, 10, "a slot relayed to H")
    opened = hostile.ctxs[-1].request_at
    assert opened is not None
    assert rig.h in (rig.target_of(s1), rig.target_of(s2))
    bad, good = (s1, s2) if rig.target_of(s1) == rig.h else (s2, s1)
    return bad, good, opened


async def refill(rig: SlotRig, bad: PeerSession) -> PeerSession:
    """kaspad redials the slot H had: it is served by another peer (G2), never H again."""
    port = int(bad.remote.rsplit(":", 1)[1])
    again = rig.kaspad.dial("127.0.0.1", port)
    assert await thread(lambda: again.wait_handshake(10)), again
    assert rig.target_of(again) not in (None, rig.h)
    return again


async def finish(rig: SlotRig, hostile: ScriptedRemote, probe: Probe,
                 sessions: list[PeerSession]) -> None:
    rig.block_h()
    for s in sessions:
        s.close()
    for s in sessions:
        await thread(lambda s=s: s.wait_closed(5))
    await probe.same_again(rig, hostile)
    assert tcp_sockets(hostile.port) == []


async def start(nursery: trio.Nursery, emulators: Callable[..., KaspadEmulator],
                hostile: ScriptedRemote, **options: object) -> SlotRig:
    hport = await nursery.start(hostile.serve)
    return await start_slot_rig(nursery, emulators, hport, **options)


async def baseline(rig: SlotRig, hostile: ScriptedRemote) -> Probe:
    """A probe at the first steady state: H and G1 warm in the pool (the pool dials candidates
    in order), no kaspad connection. The final state (G1 and G2 warm, H gone) has the same
    number of sockets and bridge tasks."""
    await warm_up_grpc(rig)
    await until(lambda: rig.bridge.pool.ready_count == 2 and hostile.open_connections == 1
                and not rig.bridge.relays, 10, "H and G1 warm")
    return Probe()


# -- 1. stalls ------------------------------------------------------------------------------


async def hold(ctx: Ctx) -> None:
    await ctx.hold()


async def headers_then_hold(ctx: Ctx) -> None:
    await ctx.headers()
    await ctx.hold()


async def stall_mid_message(ctx: Ctx) -> None:
    await ctx.headers()
    await ctx.data(handshake_bytes())
    await trio.sleep(0.5)  # after kaspad's Ready
    await ctx.data(BLOCK[:100_000])
    await ctx.hold()


@pytest.mark.parametrize("pre", ["silent", "trickle"])
async def test_never_warm(pre: str, emulators: Callable[..., KaspadEmulator]) -> None:
    """A remote that accepts and never sends a byte, or trickles its HTTP/2 preface at 1 B/s,
    never reaches a slot: the warm pool gives up on it after its HTTP/2 handshake timeout and
    both slots relay through other peers."""
    hostile = ScriptedRemote(pre=pre, trickle_delay=1.0)
    async with trio.open_nursery() as nursery:
        rig = await start(nursery, emulators, hostile)
        probe = await baseline_after_h_failed(rig, hostile)
        s1, s2, _ = await hostile_episode(rig, hostile, warm=False)
        # The pool dials H again to refill; every connection to H is closed by the bridge,
        # each within the HTTP/2 handshake timeout.
        await until(lambda: hostile.connections >= 2 and hostile.open_connections == 0, 10,
                    "H dialed again and given up")
        for end in hostile.ends:
            assert end.how == "eof"
            assert end.at - end.accepted_at < H2_HANDSHAKE_TIMEOUT + 1.5
        assert all(r.target != rig.h for r in rig.bridge.relays.values())
        for s in (s1, s2):
            no_bad_frames(s)
        await relays_to(rig, s1, 11)
        await relays_to(rig, s2, 12)
        assert failures(rig, rig.h) >= 1
        await finish(rig, hostile, probe, [s1, s2])
        nursery.cancel_scope.cancel()


async def baseline_after_h_failed(rig: SlotRig, hostile: ScriptedRemote) -> Probe:
    """For an H that never gets warm: the baseline is G1+G2 warm, H's connection gone."""
    await until(lambda: hostile.connections >= 1, 10, "H dialed")
    saved = rig.routes.pop(ONION_H.host)
    await until(lambda: hostile.open_connections == 0, 10, "H's stalled dial given up")
    probe = await baseline_from(rig)
    rig.routes[ONION_H.host] = saved
    # dial H again now (clear the backoffs only: WarmPool.forgive_all would also start the
    # after-Tor-recovery grace, during which H's failures are not counted)
    rig.bridge.selector.forgive_all()
    rig.bridge.pool.poke()
    return probe


async def baseline_from(rig: SlotRig) -> Probe:
    await warm_up_grpc(rig)
    await steady(rig, None)
    return Probe()


async def trickle_headers(ctx: Ctx) -> None:
    async with ctx.lock:  # so that the reader task does not flush the HEADERS frame at once
        ctx.conn.send_headers(ctx.sid, [(b":status", b"200"),
                                        (b"content-type", b"application/grpc")])
        raw = ctx.conn.data_to_send()
    await ctx.trickle_raw(raw, 1.0)
    await ctx.hold()


async def trickle_version(ctx: Ctx) -> None:
    await ctx.headers()
    await ctx.trickle(handshake_bytes(), 1.0)


async def trickle_message(ctx: Ctx) -> None:
    await ctx.headers()
    await ctx.data(handshake_bytes())
    await trio.sleep(0.5)
    await ctx.trickle(BLOCK, 1.0)


STALLS = {
    # never answers the stream / trickles the response HEADERS: the bridge's response watchdog
    "after-preface": (hold, "answer"),
    "trickle-headers": (trickle_headers, "answer"),
    # answers, then no Version / Version at 1 B/s: kaspad's 4 s handshake timeout
    "after-headers": (headers_then_hold, "version"),
    "trickle-version": (trickle_version, "version"),
    # stops / trickles in the middle of a 1 MB message: the bridge's stall watchdog
    "mid-message": (stall_mid_message, "message"),
    "trickle-message": (trickle_message, "message"),
}


@pytest.mark.parametrize("case", list(STALLS))
async def test_stall(case: str, emulators: Callable[..., KaspadEmulator],
                     caplog: pytest.LogCaptureFixture) -> None:
    """H completes the HTTP/2 preface (so it is warm and handed to a slot), then stalls or
    trickles one byte per second: before answering the stream, before its Version, or in the
    middle of a message. kaspad gets a clean close within its deadlines, the slot is re-filled,
    the other slot keeps relaying, nothing leaks and the relay's buffers stay small."""
    caplog.set_level(logging.INFO, logger="bridge")
    script, kind = STALLS[case]
    hostile = ScriptedRemote(script=script)
    async with trio.open_nursery() as nursery:
        rig = await start(nursery, emulators, hostile)
        probe = await baseline(rig, hostile)
        bad, good, opened = await hostile_episode(rig, hostile, warm=True)
        relay = next(r.relay for r in rig.bridge.relays.values() if r.target == rig.h)
        buffered = 0
        while not bad.closed and trio.current_time() - opened < 15:
            buffered = max(buffered, relay.stats()["buffered"])
            await trio.sleep(0.05)
        assert await thread(lambda: bad.wait_closed(1)), bad
        assert buffered <= 64 * 1024, buffered  # bounded: a trickle never piles up
        assert await thread(lambda: good.wait_handshake(10)), good
        await until(lambda: hostile.open_connections == 0, 5, "H's connection closed")
        end = hostile.ends[-1]
        assert end.how == "eof"  # the bridge closed it
        took = end.at - opened
        if kind == "answer":
            # The bridge answers kaspad UNAVAILABLE before kaspad's own response deadline
            # (kaspad would record a violation if its deadline had passed).
            assert RESPONSE_DEADLINE - 0.2 < took < RESPONSE_DEADLINE + 2.5, took
            assert "UNAVAILABLE" in (bad.closed_reason or ""), bad
            no_bad_frames(bad)
            await logged(caplog, "[remote peer]", "did not answer within")
        elif kind == "version":
            # kaspad's 4 s Version timeout closes it; the bridge closes H right after.
            assert took < 4.0 + 2.0, took
            no_bad_frames(bad, KASPAD_TIMEOUTS)
            assert not bad.handshake_complete
        else:
            # The bridge's stall watchdog (kaspad would wait for its ping/pong timeouts).
            assert took < 0.5 + STALL.timeout * 1.25 + 1.5, took
            what = "trickled" if case.startswith("trickle") else "stalled"
            await logged(caplog, "[remote peer]", what, "in the middle of a message")
            # kaspad gets the stream ended (UNAVAILABLE), never the partial block
            assert "UNAVAILABLE" in (bad.closed_reason or ""), bad
            assert blocks_received(bad) == 0
            no_bad_frames(bad)
        assert failures(rig, rig.h) >= 1
        again = await refill(rig, bad)
        no_bad_frames(good)
        await relays_to(rig, good, 21)
        await relays_to(rig, again, 22)
        await finish(rig, hostile, probe, [good, again, bad])
        nursery.cancel_scope.cancel()


# -- 3. reset mid-message, 4. RST_STREAM / GOAWAY -----------------------------------------------


async def _handshake_then(ctx: Ctx) -> None:
    await ctx.headers()
    await ctx.data(handshake_bytes())
    await trio.sleep(0.5)  # after kaspad's Ready


@pytest.mark.parametrize("path", ["tor", "direct"])
async def test_reset_mid_message(path: str, emulators: Callable[..., KaspadEmulator],
                                 caplog: pytest.LogCaptureFixture) -> None:
    """H sends half of a 1 MB block, then resets the TCP connection (SO_LINGER 0): kaspad's
    stream ends without the partial block, the bridge logs H as at fault and penalizes it, the
    slot is re-filled, the other slot keeps relaying, nothing leaks. Through Tor (the SOCKS
    server here) the RST reaches the bridge as a plain close; dialed directly (hybrid) as
    ECONNRESET."""
    caplog.set_level(logging.INFO, logger="bridge")
    reset_at: list[float] = []

    async def script(ctx: Ctx) -> None:
        await _handshake_then(ctx)
        await ctx.data(BLOCK[:len(BLOCK) // 2])
        await until(lambda: any(r.relay.stats()["bytes_from_remote"] >= len(BLOCK) // 2
                                and r.relay.stats()["buffered"] == 0
                                for r in rig.bridge.relays.values() if r.target == rig.h),
                    10, "half the block relayed to kaspad")
        reset_at.append(trio.current_time())
        ctx.reset_tcp()

    hostile = ScriptedRemote(script=script)
    async with trio.open_nursery() as nursery:
        rig = await start(nursery, emulators, hostile, direct=path == "direct")
        probe = await baseline(rig, hostile)
        bad, good, _ = await hostile_episode(rig, hostile, warm=True)
        assert await thread(lambda: bad.wait_closed(15)), bad
        assert reset_at and trio.current_time() - reset_at[0] < 3.0
        assert "UNAVAILABLE" in (bad.closed_reason or ""), bad
        assert bad.handshake_complete and blocks_received(bad) == 0
        assert bad.stats.bytes_in < len(BLOCK) // 2  # only the handshake was delivered whole
        no_bad_frames(bad)
        how = "closed the connection" if path == "tor" else "reset the connection"
        await logged(caplog, "[remote peer]", how, "in the middle of a message")
        assert failures(rig, rig.h) >= 1
        again = await refill(rig, bad)
        await relays_to(rig, good, 31)
        await relays_to(rig, again, 32)
        await finish(rig, hostile, probe, [good, again, bad])
        nursery.cancel_scope.cancel()


SMALL = grpc.frame(make_block_message(2_000, request_id=0, seed=1).SerializeToString())


@pytest.mark.parametrize("case", ["rst-idle", "rst-mid-message",
                                  "goaway-0", "goaway-1", "goaway-0-inflight",
                                  "goaway-1-inflight"])
async def test_rst_stream_and_goaway(case: str, emulators: Callable[..., KaspadEmulator],
                                     caplog: pytest.LogCaptureFixture) -> None:
    """H ends the stream with RST_STREAM (between messages or mid-message), or sends GOAWAY
    with last_stream_id 0 or 1, without or with data in flight (a whole 2 KB block and the first
    1 KB of the next one, in the same TCP segment as the GOAWAY). kaspad's stream is ended
    cleanly (UNAVAILABLE; never a partial message; whole messages that arrived before a GOAWAY
    that covers the stream are delivered first), the bridge closes H's connection, the slot is
    re-filled and the other slot keeps relaying."""
    caplog.set_level(logging.INFO, logger="bridge")
    sent_at: list[float] = []

    async def script(ctx: Ctx) -> None:
        await _handshake_then(ctx)
        # Not a fault (a peer may close its stream or shut down): H is not penalized, so make
        # it unreachable to keep the pool from handing it to the refilled slot again.
        rig.block_h()
        if case == "rst-mid-message":
            await ctx.data(BLOCK[:100_000])
        if case.startswith("rst"):
            sent_at.append(trio.current_time())
            await ctx.rst_stream()
        else:
            async with ctx.lock:
                if case.endswith("inflight"):
                    ctx.conn.send_data(ctx.sid, SMALL + BLOCK[:1000])
                ctx.conn.close_connection(0, last_stream_id=int(case.split("-")[1]))
                sent_at.append(trio.current_time())
                await ctx.s.send_all(ctx.conn.data_to_send())
        await ctx.hold()

    hostile = ScriptedRemote(script=script)
    async with trio.open_nursery() as nursery:
        rig = await start(nursery, emulators, hostile)
        probe = await baseline(rig, hostile)
        bad, good, _ = await hostile_episode(rig, hostile, warm=True)
        assert await thread(lambda: bad.wait_closed(15)), bad
        assert sent_at and trio.current_time() - sent_at[0] < 3.0
        await until(lambda: hostile.open_connections == 0, 5, "H's connection closed")
        assert hostile.ends[-1].how == "eof"  # the bridge closed H, H never had to
        assert "UNAVAILABLE" in (bad.closed_reason or ""), bad
        no_bad_frames(bad)
        expected = 1 if case == "goaway-1-inflight" else 0
        assert blocks_received(bad) == expected, (case, bad.stats)
        what = "reset the stream" if case.startswith("rst") else "sent GOAWAY"
        await logged(caplog, what)
        again = await refill(rig, bad)
        await relays_to(rig, good, 41)
        await relays_to(rig, again, 42)
        await finish(rig, hostile, probe, [good, again, bad])
        nursery.cancel_scope.cancel()


# -- kaspad restarted ---------------------------------------------------------------------------


async def test_kaspad_restart_slot(emulators: Callable[..., KaspadEmulator]) -> None:
    """kaspad behind a slot goes away: the bridge closes that upstream at once. A new kaspad
    (new node id) dialing the slot is served from the warm pool, without a new dial."""
    async with trio.open_nursery() as nursery:
        rig = await start_slot_rig(nursery, emulators, None, pool_size=1)
        await warm_up_grpc(rig)
        await steady(rig, None)
        probe = Probe()
        session = rig.kaspad.dial("127.0.0.1", rig.bridge.slot_ports[0])
        assert await thread(lambda: session.wait_handshake(10)), session
        target = rig.target_of(session)
        assert target is not None
        remote = rig.good[target]
        upstream = [s for s in remote.sessions if not s.closed]
        assert len(upstream) == 1
        assert await thread(lambda: upstream[0].wait_handshake(5)), upstream[0]
        await steady_pool(rig)
        stopped = trio.current_time()
        await thread(rig.kaspad.stop)  # kaspad is gone
        assert await thread(lambda: upstream[0].wait_closed(5)), upstream[0]
        assert trio.current_time() - stopped < 3.0
        no_bad_frames(upstream[0])
        await until(lambda: not rig.bridge.relays, 5, "the relay ended")
        # kaspad comes back (a new process: new node id) and dials the slot again
        await steady_pool(rig)
        warm = {e.up.target for e in rig.bridge.pool._ready}

        def dials_to(t: Target | None) -> int:
            return sum(1 for r in rig.socks.records if t is not None and r.host == t.host)

        before = {t: dials_to(t) for t in warm}
        rig.kaspad = emulators()
        again = rig.kaspad.dial("127.0.0.1", rig.bridge.slot_ports[0])
        started = trio.current_time()
        assert await thread(lambda: again.wait_handshake(10)), again
        assert trio.current_time() - started < 2.0
        # served by a connection that was already warm: no dial to that peer meanwhile
        served = rig.target_of(again)
        assert served in warm and dials_to(served) == before[served]
        no_bad_frames(again)
        await relays_to(rig, again, 51)
        again.close()
        await thread(lambda: again.wait_closed(5))
        await probe.same_again(rig, None)
        nursery.cancel_scope.cancel()


async def steady_pool(rig: SlotRig) -> None:
    pool = rig.bridge.pool
    await until(lambda: pool.ready_count == pool.size and pool._dialing == 0, 10,
                "the pool full again")


async def test_kaspad_p2p_port_down(emulators: Callable[..., KaspadEmulator]) -> None:
    """kaspad's P2P port goes down and comes back: relayed onion peers are closed cleanly, new
    ones are refused cleanly (UNAVAILABLE) while it is down, and relayed again after."""
    async with trio.open_nursery() as nursery:
        rig = await start_inbound_rig(nursery, emulators)
        remote = emulators(addrv2=True)
        first = remote.dial("127.0.0.1", rig.inbound)
        assert await thread(lambda: first.wait_handshake(10)), first
        await thread(rig.kaspad.stop)  # kaspad's P2P port goes down
        assert await thread(lambda: first.wait_closed(5)), first
        no_bad_frames(first)
        await until(lambda: not rig.bridge.relays, 5, "the relay ended")
        assert rig.bridge.inbound_active == 0
        refused = remote.dial("127.0.0.1", rig.inbound)
        assert await thread(lambda: refused.wait_closed(8)), refused
        assert not refused.handshake_complete
        assert "UNAVAILABLE" in (refused.closed_reason or ""), refused
        assert "kaspad is not reachable" in (refused.closed_reason or ""), refused
        no_bad_frames(refused)
        # kaspad back on the same port
        back = emulators()
        await thread(lambda: back.start_server(port=rig.kaspad_port))
        again = remote.dial("127.0.0.1", rig.inbound)
        assert await thread(lambda: again.wait_handshake(10)), again
        inbound = await thread(lambda: back.wait_sessions(1, 5))
        assert inbound  # kaspad's side completes its handshake a moment after the remote's
        assert await thread(lambda: inbound[0].wait_handshake(5)), inbound  # type: ignore[index]
        no_bad_frames(again)
        again.close()
        await thread(lambda: again.wait_closed(5))
        await until(lambda: not rig.bridge.relays and rig.bridge.inbound_active == 0, 5,
                    "the relay ended")
        nursery.cancel_scope.cancel()


# -- 5. the onion inbound under a connection flood ---------------------------------------------


async def raw_handshake(port: int) -> RawClient:
    """A Tor peer that opens the MessageStream and sends its Version, Verack and Ready."""
    c = await RawClient.connect(port)
    await c.preface()
    await c.open_stream()
    await c.pump(lambda c: c.status is not None)
    if c.status == b"200" and c.grpc_status is None:
        await c.send(handshake_bytes())
    return c


async def wait_eof(c: trio.SocketStream) -> None:
    while True:
        try:
            data = await c.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        if not data:
            return


def handshaken(emu: KaspadEmulator) -> int:
    return sum(1 for s in emu.sessions if s.handshake_complete and not s.closed)


async def test_flood_1000_connections(emulators: Callable[..., KaspadEmulator]) -> None:
    """1000 connections to the inbound listener (what the onion service points at): 380 idle
    (not a byte), 380 idle after the HTTP/2 preface (a warm-pool-like connection), 200 sending
    garbage, 40 real handshakes. The bridge stays responsive (a legitimate onion peer and the
    outbound slot relay during the flood), holds at most max_pending idle connections and
    max_inbound relays, closes preface-less connections after inbound.handshake_timeout, does
    not crash, and releases every fd afterwards.

    RLIMIT_NOFILE: the test process holds both ends of every connection; the soft limit is
    raised to 8192 if it is lower (within the hard limit)."""
    assert raise_nofile(8192) >= 4096
    max_pending, max_inbound, preface_timeout = 64, 64, 2.0
    async with trio.open_nursery() as nursery:
        # (accept pacing off: this test is about what 1000 connections at once may hold; with
        # pacing most would wait in the kernel's queue, see test_floods' pacing test)
        rig = await start_inbound_rig(nursery, emulators, slot=True, max_pending=max_pending,
                                      max_inbound=max_inbound,
                                      inbound_handshake_timeout=preface_timeout,
                                      inbound_accept_rate=None)
        remote = emulators(addrv2=True)
        kaspad = emulators()
        # warm up grpc's lazily created fds, then take the baseline
        for s in (remote.dial("127.0.0.1", rig.inbound),
                  kaspad.dial("127.0.0.1", rig.bridge.slot_ports[0])):
            assert await thread(lambda s=s: s.wait_handshake(10)), s
            s.close()
            assert await thread(lambda s=s: s.wait_closed(5))
        await until(lambda: not rig.bridge.relays and rig.bridge.pool.ready_count == 1, 10,
                    "steady state")
        fds = open_fds()
        tasks = task_count()

        closed_after: dict[str, list[float]] = {"idle": [], "preface": [], "garbage": []}
        release = trio.Event()
        held: list[RawClient] = []

        async def idle(kind: str) -> None:
            c = await trio.open_tcp_stream("127.0.0.1", rig.inbound)
            t0 = trio.current_time()
            if kind == "preface":
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                conn.initiate_connection()
                await c.send_all(conn.data_to_send())
            elif kind == "garbage":
                await c.send_all(os.urandom(64))
            with trio.move_on_at(t0 + 30):
                await wait_eof(c)
                closed_after[kind].append(trio.current_time() - t0)
            await trio.aclose_forcefully(c)

        async def real() -> None:
            c = await raw_handshake(rig.inbound)
            held.append(c)
            await release.wait()
            await c.aclose()

        async with trio.open_nursery() as flood:
            started = trio.current_time()
            for i in range(960):
                flood.start_soon(idle, "idle" if i % 5 < 2 else "preface" if i % 5 < 4
                                 else "garbage")
            await until(lambda: rig.bridge.inbound_stats.accepted >= 960 + 1, 30,
                        lambda: f"the flood accepted: {rig.bridge.inbound_stats}, closed "
                        f"{ {k: len(v) for k, v in closed_after.items()} }")
            for _ in range(40):
                flood.start_soon(real)
            await until(lambda: len(held) == 40, 20, "40 real handshakes answered")
            assert all(c.status == b"200" and c.grpc_status is None for c in held)
            await until(lambda: handshaken(rig.kaspad) >= 40, 20, "kaspad handshaken 40 peers")
            # During the flood: a legitimate onion peer and the outbound slot still relay.
            peer = remote.dial("127.0.0.1", rig.inbound)
            out = kaspad.dial("127.0.0.1", rig.bridge.slot_ports[0])
            for s in (peer, out):
                assert await thread(lambda s=s: s.wait_handshake(10)), s
            peer.send(make_block_message(20_000, request_id=61))
            out.send(make_block_message(20_000, request_id=62))
            for emu, rid in ((rig.kaspad, 61), (rig.good, 62)):
                assert emu is not None
                await until(lambda emu=emu, rid=rid: any(
                    m.request_id == rid for s in emu.sessions for m in list(s.received.queue)),
                    10, f"block {rid} relayed during the flood")
            # Bounded: idle connections are capped (the oldest closed for newcomers), relays are
            # capped, connections without a preface are closed after the handshake timeout.
            await until(lambda: len(closed_after["idle"]) == 384
                        and len(closed_after["garbage"]) == 192, 20,
                        "idle and garbage connections closed by the bridge")
            # (generous: on a loaded 2-core CI box with 1000 connections in flight, an idle one
            # was closed 5.1 s after its connect once; the point is that it is closed at all,
            # well before the 30 s the test waits and long before an idle Tor peer would leave)
            assert max(closed_after["garbage"]) < 8.0
            assert max(closed_after["idle"]) < preface_timeout + 6.0
            inbound = [r for r in rig.bridge.relays.values() if r.kind == "inbound"]
            assert len(inbound) <= max_pending + max_inbound
            assert rig.bridge.inbound_active == 41 <= max_inbound
            assert len(closed_after["preface"]) >= 384 - max_pending
            assert open_fds() <= fds + 3 * (max_pending + max_inbound) + 64
            took = trio.current_time() - started
            for s in (peer, out):
                assert s.handshake_complete and not s.closed, s
                no_bad_frames(s)
            release.set()
            flood.cancel_scope.cancel()  # the flood's clients close their sockets
        for s in (peer, out):
            s.close()
            await thread(lambda s=s: s.wait_closed(5))
        # Everything released; the bridge still serves a new peer.
        await until(lambda: not rig.bridge.relays and rig.bridge.inbound_active == 0
                    and not rig.bridge._pending and rig.bridge.pool.ready_count == 1, 20,
                    "all flood connections gone")
        await until(lambda: open_fds() <= fds and task_count() == tasks, 20,
                    f"fds back to {fds}, tasks to {tasks}")
        assert not close_wait([rig.inbound], [rig.kaspad_port])
        after = remote.dial("127.0.0.1", rig.inbound)
        assert await thread(lambda: after.wait_handshake(10)), after
        after.close()
        await thread(lambda: after.wait_closed(5))
        assert took < 60
        nursery.cancel_scope.cancel()


async def test_inbound_caps(emulators: Callable[..., KaspadEmulator]) -> None:
    """The inbound bounds, one by one: beyond max_inbound relays a new stream is answered
    UNAVAILABLE (trailers-only, nothing kaspad-side); beyond max_pending idle connections the
    oldest is closed with GOAWAY; a connection without an HTTP/2 preface (silent, or trickling
    it at 1 B/s) is closed after inbound.handshake_timeout."""
    async with trio.open_nursery() as nursery:
        rig = await start_inbound_rig(nursery, emulators, max_inbound=2, max_pending=3,
                                      inbound_handshake_timeout=1.0)
        relayed = [await raw_handshake(rig.inbound) for _ in range(2)]
        assert all(c.status == b"200" and c.grpc_status is None for c in relayed)
        await until(lambda: handshaken(rig.kaspad) == 2, 10, "kaspad handshaken 2 peers")
        third = await raw_handshake(rig.inbound)
        await third.pump(lambda c: c.ended)
        assert third.status == b"200" and third.grpc_status == b"14", vars(third)
        assert b"inbound peers already" in third.grpc_message, vars(third)
        assert rig.bridge.inbound_stats.refused_full == 1
        assert len(rig.kaspad.sessions) == 2  # the refused one never reached kaspad
        await third.aclose()
        # max_pending: the fourth idle connection evicts the first
        idle = []
        for _ in range(4):
            c = await RawClient.connect(rig.inbound)
            await c.preface()
            idle.append(c)
            await until(lambda: rig.bridge.inbound_stats.accepted == 3 + len(idle), 5,
                        "accepted")
        with trio.fail_after(5):
            await idle[0].pump(lambda c: c.goaway)
        await idle[0].pump(lambda c: False)  # then closed
        assert idle[0].goaway and idle[0].eof
        assert rig.bridge.inbound_stats.evicted == 1
        assert len(rig.bridge._pending) == 3
        for c in idle[1:]:
            assert not c.goaway and not c.eof
        # no preface at all: closed after the handshake timeout
        silent = await trio.open_tcp_stream("127.0.0.1", rig.inbound)
        t0 = trio.current_time()
        with trio.fail_after(5):
            await wait_eof(silent)
        assert 0.9 < trio.current_time() - t0 < 3.0
        await silent.aclose()
        # a slowloris preface (1 B/s) likewise
        slow = await trio.open_tcp_stream("127.0.0.1", rig.inbound)
        t0 = trio.current_time()

        async def trickle_preface() -> None:
            for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n":
                try:
                    await slow.send_all(bytes([b]))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
                await trio.sleep(1.0)

        async with trio.open_nursery() as n:
            n.start_soon(trickle_preface)
            with trio.fail_after(5):
                await wait_eof(slow)
            n.cancel_scope.cancel()
        assert 0.9 < trio.current_time() - t0 < 3.0
        await slow.aclose()
        for c in (*relayed, *idle):
            await c.aclose()
        await until(lambda: not rig.bridge.relays and rig.bridge.inbound_active == 0, 5,
                    "all released")
        nursery.cancel_scope.cancel()


async def test_idle_inbound_connection_is_kept(emulators: Callable[..., KaspadEmulator]) -> None:
    """Regression: the inbound side dialed kaspad as soon as a Tor connection arrived and its
    response watchdog then closed any connection that had not opened its stream within 9 s,
    so a remote bridge's warm-pool connection to our onion was torn down (and the remote
    penalized us) every 9 s. Now an idle HTTP/2 connection costs no kaspad connection and is
    kept until it opens its stream, which is then relayed at once."""
    async with trio.open_nursery() as nursery:
        rig = await start_inbound_rig(nursery, emulators)
        c = await RawClient.connect(rig.inbound)
        await c.preface()
        with trio.move_on_after(RESPONSE_DEADLINE + 1.5):
            await c.pump(lambda c: False)
        assert not c.goaway and not c.eof
        assert rig.kaspad.sessions == [] and rig.bridge.inbound_active == 0
        await c.open_stream()
        await c.pump(lambda c: c.status is not None)
        assert c.status == b"200" and c.grpc_status is None
        await c.send(handshake_bytes())
        await until(lambda: handshaken(rig.kaspad) == 1, 10, "kaspad handshaken the peer")
        await c.aclose()
        nursery.cancel_scope.cancel()


async def test_evicted_warm_connection_is_not_penalized(
        emulators: Callable[..., KaspadEmulator], caplog: pytest.LogCaptureFixture) -> None:
    """Regression: a warm upstream closed politely (GOAWAY NO_ERROR, e.g. by the remote
    bridge's max_pending eviction) counted as a peer failure with backoff. Bridge A's pool
    keeps one warm connection to bridge B's inbound (max_pending=1); another Tor peer arriving
    at B evicts it; A drops it without a failure and redials at once."""
    caplog.set_level(logging.INFO, logger="bridge")
    async with trio.open_nursery() as nursery:
        b = await start_inbound_rig(nursery, emulators, max_pending=1)
        target = Target("127.0.0.1", b.inbound)
        a = Bridge(BridgeOptions(
            kaspad_p2p=("127.0.0.1", 1), candidates=[target], slot_ports=[0], inbound=None,
            dial=DialPolicy(proxy=None, allow_direct=True, timeout=5), pool_size=1,
            own_onion=OnionPeer(ONION_G2, PORT), refresh_interval=None))
        await nursery.start(a.run)
        await until(lambda: a.pool.ready_count == 1, 10, "A's warm connection to B")
        dials = a.dialer.dials
        other = await RawClient.connect(b.inbound)
        await other.preface()
        await until(lambda: b.bridge.inbound_stats.evicted >= 1, 5, "eviction")
        await logged(caplog, "dropped", "GOAWAY NO_ERROR")
        await until(lambda: a.dialer.dials > dials and a.pool.ready_count == 1, 5,
                    "A redialed at once")
        assert a.selector.snapshot()[str(target)]["failures"] == 0
        await other.aclose()
        nursery.cancel_scope.cancel()


def test_inbound_and_stall_settings_are_configurable() -> None:
    """inbound.max_connections / max_pending / handshake_timeout and relay.stall_timeout /
    min_message_rate reach the bridge (documented in config/tor-only.toml); 0 turns the stall
    watchdog off."""
    env = {"HOME": "/home/tester", "KTB_INBOUND__MAX_CONNECTIONS": "8",
           "KTB_INBOUND__MAX_PENDING": "16", "KTB_INBOUND__HANDSHAKE_TIMEOUT": "5",
           "KTB_RELAY__STALL_TIMEOUT": "30", "KTB_RELAY__MIN_MESSAGE_RATE": "100"}
    opts = bridge_options(load_config(None, env=env))
    assert (opts.max_inbound, opts.max_pending, opts.inbound_handshake_timeout) == (8, 16, 5.0)
    assert opts.stall == StallPolicy(30.0, 100.0)
    default = bridge_options(load_config(None, env={"HOME": "/home/tester"}))
    assert (default.max_inbound, default.max_pending) == (64, 64)
    assert default.stall == StallPolicy(60.0, 1024.0)
    off = bridge_options(load_config(None, env={"HOME": "/home/tester",
                                                "KTB_RELAY__STALL_TIMEOUT": "0"}))
    assert off.stall is None
    with pytest.raises(ConfigError, match=r"inbound\.max_pending"):
        load_config(None, env={"HOME": "/home/tester", "KTB_INBOUND__MAX_PENDING": "0"})
