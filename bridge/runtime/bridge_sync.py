"""Sync first, then Tor (``peers.sync_first``): the task of :class:`bridge.runtime.bridge.Bridge`
that asks kaspad whether it is synced and switches the bridge to Tor only, once.

While kaspad syncs, the pool picks IP peers only and dials them directly (hybrid mode's
``allow_direct``): the initial sync is over clearnet, at clearnet speed.
:func:`sync_first_loop` polls kaspad's RPC (:mod:`bridge.net.kaspad_rpc`) and feeds the answers
to a :class:`~bridge.core.sync_first.SyncGate`. When it switches:

1. the dialer sends every new dial through Tor (IP peers via Tor exits, as in tor-only mode),
   for good (:meth:`bridge.net.pool.Dialer.tor_only`), and the pool picks from every network
   of ``peers.onlynet`` (onion peers too);
2. the warm connections dialed directly are closed (:meth:`bridge.net.pool.WarmPool.drop_direct`)
   and the pool refills through Tor;
3. each slot relay on a direct upstream is closed (kaspad is answered UNAVAILABLE, reconnects to
   the slot within 30 s, by its own schedule, and gets a Tor upstream), one at a time: the next
   one only once the previous slot relays to a Tor upstream again (at least ``stagger``, at most
   ``stagger_max`` seconds later), so that kaspad never loses all its slot peers at once;
4. one INFO line says what happened; ``status`` shows the phase.

Polling stops after the switch: nothing kaspad says later changes the phase, and the switch is
remembered in ``<data_dir>/<network>/sync_first.switched``: a restarted bridge starts on Tor only
(delete the file to sync over clearnet again). Before kaspad's RPC answered (or failed) once,
the bridge dials nothing, so a restart next to a synced kaspad makes no direct connection.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from bridge.core.kaspad_rpc import ServerInfo
from bridge.core.peers import hostport
from bridge.core.sync_first import SyncGate
from bridge.net.kaspad_rpc import poll_server_info
from bridge.runtime.stats import SyncStats

if TYPE_CHECKING:  # the bridge imports this module and passes itself in
    from bridge.runtime.bridge import Bridge
    from bridge.runtime.bridge_options import SyncFirstOptions

log = logging.getLogger("bridge.sync")


class SyncFirst:
    """The switch's state on the bridge (what :meth:`stats` shows)."""

    def __init__(self, options: SyncFirstOptions, started: float) -> None:
        self.options = options
        self.gate = SyncGate(network_id=options.network_id, started=started,
                             timeout=options.timeout)
        self.switched = trio.Event()
        #: kaspad's RPC answered, or failed, once: the sync phase may start dialing
        self.decided = trio.Event()
        self.closed_relays = 0
        self.closed_warm = 0
        self._problem_logged = ""
        self._answered = False

    @property
    def rpc(self) -> str:
        host, port = self.options.rpc
        return hostport(host, port)

    def stats(self, now: float) -> SyncStats:
        st = self.gate.state()
        return SyncStats(
            phase=st.phase.value, kaspad_synced=st.kaspad_synced, reason=st.reason,
            switched_ago=None if st.switched_at is None else round(now - st.switched_at, 1),
            last_answer_ago=(None if st.last_answer_at is None
                             else round(now - st.last_answer_at, 1)),
            rpc=self.rpc, rpc_problem=st.rpc_problem,
            switch_in=None if st.deadline is None else round(max(0.0, st.deadline - now), 1),
            closed_direct_relays=self.closed_relays, closed_direct_warm=self.closed_warm)

    def on_answer(self, info: ServerInfo) -> None:
        self.decided.set()
        if self.gate.answer(trio.current_time(), info):
            self.switched.set()
        elif self.gate.rpc_problem:
            self._problem(self.gate.rpc_problem)
        elif self._problem_logged or not self._answered:
            self._problem_logged = ""
            log.info("sync first: kaspad's RPC at %s answers: kaspad is still syncing; slots "
                     "get IP peers dialed directly until it reports synced", self.rpc)
        self._answered = True

    def on_problem(self, why: str) -> None:
        self.decided.set()
        if self.gate.unreachable(trio.current_time(), why):
            self.switched.set()
        else:
            self._problem(why)

    def _problem(self, why: str) -> None:
        """Logged once per kind of problem (and again after kaspad answered)."""
        kind = why.split(" (", 1)[0]
        if kind == self._problem_logged:
            return
        self._problem_logged = kind
        deadline = self.gate.deadline
        until = (f"at most until peers.sync_first_timeout expires (in "
                 f"{max(0.0, deadline - trio.current_time()):.0f}s)" if deadline is not None
                 else "until it does (peers.sync_first_timeout = 0: no limit)")
        log.warning("sync first: %s; the bridge cannot tell whether kaspad is synced and keeps "
                    "dialing IP peers directly %s; asking again every %gs (check kaspad.rpc and "
                    "kaspad's --rpclisten)", why, until, self.options.poll_interval)


async def sync_first_loop(bridge: Bridge, sync: SyncFirst) -> None:
    """Poll kaspad until the gate switches, then switch the bridge to Tor only. Nothing is
    dialed before kaspad's RPC answered (or failed) once: a restarted bridge next to a synced
    kaspad goes to Tor without a single direct connection."""
    opts = sync.options
    state = opts.state_file
    if state is not None and state.exists():
        sync.gate.already_switched(trio.current_time(), f"kaspad was synced in an earlier run "
                                   f"({state} exists)")
        log.info("sync first: kaspad was reported synced before (%s exists): Tor only from the "
                 "start; delete that file (bridge stopped) to sync over clearnet again", state)
        await switch_to_tor(bridge, sync, quiet=True)
        return
    async with trio.open_nursery() as nursery:
        host, port = opts.rpc
        nursery.start_soon(lambda: poll_server_info(
            host, port, interval=opts.poll_interval, timeout=opts.rpc_timeout,
            on_answer=sync.on_answer, on_problem=sync.on_problem))
        await sync.decided.wait()
        if not sync.switched.is_set():  # the sync phase: IP peers, dialed directly
            bridge.pick_kinds(frozenset(bridge.options.onlynet) - {"onion"})
        while not sync.switched.is_set():
            with trio.move_on_after(opts.poll_interval):
                await sync.switched.wait()
            if sync.gate.tick(trio.current_time()):
                sync.switched.set()
        nursery.cancel_scope.cancel()
    await switch_to_tor(bridge, sync)


async def _slot_back(bridge: Bridge, port: int, opts: SyncFirstOptions) -> None:
    """Wait ``opts.stagger`` seconds, then until slot ``port`` relays to a Tor upstream again
    (at most ``opts.stagger_max`` seconds in all)."""
    await trio.sleep(opts.stagger)
    with trio.move_on_after(max(0.0, opts.stagger_max - opts.stagger)):
        while not any(i.kind == "slot" and i.local_port == port and i.target is not None
                      and not i.direct for i in bridge.relays.values()):
            await trio.sleep(0.2)


def _remember(state: Path | None) -> None:
    """Write the state file (one way across restarts); a failure is logged, not fatal."""
    if state is None:
        return
    try:
        state.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        state.write_text("kaspad reported synced; the bridge dials through Tor only. Delete "
                         "this file (bridge stopped) to sync over clearnet again.\n")
    except OSError as exc:
        log.warning("sync first: cannot write %s (%s): after a restart the bridge asks kaspad "
                    "again and may sync over clearnet again if kaspad is behind by then",
                    state, exc.strerror or exc)


async def switch_to_tor(bridge: Bridge, sync: SyncFirst, *, quiet: bool = False) -> None:
    """Tor only from now on: new dials, the warm pool, then the slot relays one by one."""
    bridge.dialer.tor_only()
    bridge.pick_kinds(frozenset(bridge.options.onlynet))
    sync.closed_warm = bridge.pool.drop_direct()
    if quiet:
        return
    _remember(sync.options.state_file)
    direct = [info for info in bridge.relays.values() if info.kind == "slot" and info.direct]
    log.info("sync first: %s (kaspad's RPC at %s): switching to Tor for good. New upstreams go "
             "through Tor only (onion peers; IP peers via Tor exits); %d direct warm "
             "connection(s) closed; %d slot relay(s) on direct upstreams are closed one at a "
             "time (the next once the previous slot has a Tor upstream again, %g..%gs), kaspad "
             "reconnects to each slot and gets a Tor upstream. The bridge does not return to "
             "clearnet, even if kaspad reports unsynced later.",
             sync.gate.reason, sync.rpc, sync.closed_warm, len(direct), sync.options.stagger,
             sync.options.stagger_max)
    previous: int | None = None
    for info in direct:
        if previous is not None:
            await _slot_back(bridge, previous, sync.options)
        runner = info.runner
        if info.id not in bridge.relays or runner is None or runner.relay.finished \
                or not info.direct:
            continue
        log.info("%s: closed, its upstream %s was dialed directly; kaspad reconnects to the "
                 "slot and gets a Tor upstream", info.label, info.target)
        runner.abort("the bridge switched to Tor (kaspad is synced); reconnect")
        sync.closed_relays += 1
        previous = info.local_port
    bridge.pool.poke()
