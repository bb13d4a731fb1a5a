"""The connections of :class:`bridge.runtime.bridge.Bridge`: a kaspad connection to a slot port,
relayed to an upstream taken from the warm pool (:func:`slot_handler`), and a Tor connection to
the onion, relayed to kaspad's P2P listener (:func:`inbound_handler`); what each closed
connection counts and whom it credits or blames (:func:`_finish`), and the live relay's record
for ``status`` (:class:`RelayInfo`).

The rules (lazy upstreams, duplicate node ids, the inbound bounds) are described in
:mod:`bridge.runtime.bridge`. The listeners that accept these connections are in
:mod:`bridge.runtime.bridge_listen`.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from bridge.core.errors import BridgeError, DuplicatePeer, Fault, SelfConnection
from bridge.core.events import Dropped
from bridge.core.onion import OnionAddress
from bridge.core.peers import Target
from bridge.core.policy import ConnectionPolicy
from bridge.core.relay import (
    Endpoint,
    Relay,
    Side,
    new_upstream_connection,
)
from bridge.net.h2io import h2_client_handshake
from bridge.net.runner import RelayRunner
from bridge.runtime.stats import RelayStats, relay_stats

if TYPE_CHECKING:  # the bridge imports this module and passes itself in
    from bridge.runtime.bridge import Bridge

log = logging.getLogger("bridge")


class SilentSlotClient(BridgeError):
    """A local connection to a slot port that sent no gRPC request in time. kaspad sends its
    request as soon as it connects: this is another local process (or a stuck kaspad)."""

    fault = Fault.LOCAL
    action = "closed; no upstream was used and no remote is blamed"


@dataclass(slots=True)
class RelayInfo:
    """What `status` shows about one live relay."""

    id: int
    kind: str  # "slot" | "inbound"
    local_port: int
    target: Target | None
    relay: Relay
    started: float
    #: the upstream was dialed directly, not through Tor (hybrid mode's IP peers)
    direct: bool = False
    #: the relay's shell (set once it runs): the switch to Tor closes direct slot relays
    runner: RelayRunner | None = None

    @property
    def label(self) -> str:
        """The privacy-safe name of the connection: ``slot:<port>`` or ``inbound#<id>``."""
        return f"slot:{self.local_port}" if self.kind == "slot" else f"inbound#{self.id}"

    def stats(self, now: float) -> RelayStats:
        return relay_stats(self.id, self.kind, self.label, self.local_port, self.target,
                           self.relay, self.started, now, direct=self.direct)


def _policy(bridge: Bridge, label: str, conn_label: str) -> ConnectionPolicy:
    return ConnectionPolicy(bridge.gossip, bridge.options.policy, remote_label=label,
                            conn_label=conn_label)


async def slot_handler(bridge: Bridge, stream: trio.SocketStream) -> None:
    local_port = stream.socket.getsockname()[1]
    rid = next(bridge._ids)
    label = f"slot:{local_port}#{rid}"
    policy = _policy(bridge, "remote", label)
    taken: list[Target] = []  # the upstream's target (one at a time)

    async def get_upstream() -> tuple[trio.abc.Stream, Endpoint] | None:
        up = await bridge.pool.take(bridge.options.slot_wait)
        if up is None:
            log.warning("%s: no upstream ready within %.1fs; kaspad will retry",
                        label, bridge.options.slot_wait)
            return None
        taken.append(up.target)
        policy.remote_label = f"peer {up.target}"
        policy.remote_target = up.target
        if up.target.is_onion:
            policy.remote_onion = OnionAddress.parse(up.target.host)
        info.target = up.target
        info.direct = up.direct
        relay.upstream_authority = up.target.authority
        log.info("%s: kaspad connected, relaying to %s%s%s", label, up.target,
                 " (instead)" if relay.upstreams_dropped else "",
                 " (direct, not via Tor)" if up.direct else "")
        return up.stream, up.end

    def on_drop(_dropped: Dropped) -> None:
        """The relay let the upstream go before kaspad saw it: its node id is connected
        already. Not the remote's fault; it is put aside while that connection lasts."""
        if taken:
            bridge.pool.duplicate(taken.pop())
        info.target = None
        info.direct = False

    relay = Relay(policy, kaspad_side=Side.DOWN, upstream_authority=b"",
                  settings=bridge.options.relay, screen=True, timing=bridge.timing["slot"])
    info = RelayInfo(rid, "slot", local_port, None, relay, trio.current_time())
    bridge.relays[rid] = info
    runner = RelayRunner(relay, stream, label)
    info.runner = runner
    runner.on_drop = on_drop
    runner.on_learned = bridge.learned
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_request_deadline, bridge, runner, local_port)
            # lazy: an upstream is taken only once kaspad's request is in
            await _guarded(runner.run(get_upstream, lazy=True,
                                      response_timeout=bridge.options.response_deadline,
                                      refresh_interval=bridge.options.refresh_interval,
                                      stall=bridge.options.stall,
                                      refill_margin=bridge.options.refill_margin),
                           label)
            nursery.cancel_scope.cancel()
    finally:
        del bridge.relays[rid]
        bridge._retire(info)
        _finish(bridge, runner, policy, taken[-1] if taken else None)


async def _request_deadline(bridge: Bridge, runner: RelayRunner, local_port: int) -> None:
    """Close a local slot connection that sent no gRPC request in time, blamed on the
    local side (the runner's own preface timeout would blame the remote)."""
    timeout = bridge.options.slot_request_timeout
    await trio.sleep(timeout)
    if not runner.request_seen and not runner.relay.finished:
        runner.fault = SilentSlotClient(
            f"local connection to slot port {local_port} sent no gRPC request within "
            f"{timeout:.1f}s (kaspad sends it at once: another local process?)")
        runner.abort("no request")


async def _guarded(coro: Coroutine[Any, Any, None], label: str) -> None:
    """A bug in one connection's handling must never take the listeners down with it."""
    try:
        await coro
    except Exception:
        log.exception("%s: internal error; connection closed", label)


def _finish(bridge: Bridge, runner: RelayRunner, policy: ConnectionPolicy,
            target: Target | None) -> None:
    if bridge.gossip.nodes.release(policy) is not None:
        bridge.pool.poke()  # that node may be dialed again
    closed = runner.closed
    err = closed.error if closed is not None else None
    err = err or runner.fault
    if (runner.relay.kaspad_side is Side.DOWN and target is None
            and not runner.request_seen):
        # A local slot connection that never asked for anything: no upstream was taken.
        bridge.closed_count = bridge.closed_count.bump(slot_no_request=1)
        if isinstance(err, SilentSlotClient):
            bridge._log_silent("%s closed: %s", runner.label, err.describe())
        else:  # connected and closed (a port scan, a TCP health check): not worth a line
            log.debug("%s: local connection closed before any request", runner.label)
        return
    line = runner.close_line()
    if (line is not None and runner.relay.kaspad_side is Side.UP
            and (err.fault is Fault.REMOTE if err is not None
                 else not runner.relay.response_started)):
        # An onion peer closed for its own fault (a bad Version, a flood, an over-long
        # Addresses, a timeout) or refused before kaspad answered: anyone can connect to the
        # onion, so these lines are throttled (the log's disk is a cost too); each one is still
        # counted in /status and logged at debug level.
        log.debug("%s", line[1])
        bridge._log_inbound_refused("%s", line[1])
    else:
        runner.log_close(line)
    if isinstance(err, DuplicatePeer):
        # kaspad has that node connected already: nobody's fault
        bridge.closed_count = bridge.closed_count.bump(refused=1)
        if target is not None:
            bridge.pool.duplicate(target)
        else:
            bridge.inbound_stats = bridge.inbound_stats.bump(refused_duplicate=1)
        return
    handshake_ok = bool(policy.remote.node_id) and err is None
    if err is None and runner.relay.response_started:
        bridge.closed_count = bridge.closed_count.bump(ok=1)
    elif runner.relay.response_started or err is not None:
        bridge.closed_count = bridge.closed_count.bump(error=1)
    else:
        bridge.closed_count = bridge.closed_count.bump(refused=1)
    if target is not None:
        is_self = isinstance(err, SelfConnection)
        remote_fault = err is not None and err.fault is Fault.REMOTE
        # Answered the stream but never sent its Version: kaspad's 4 s handshake timeout
        # (protocol.md §5.1) closed it; not a peer to prefer next time.
        remote_fault = remote_fault or (runner.relay.response_started
                                        and not policy.remote.node_id)
        # A success only for a remote that handshook; ended before it could (kaspad left,
        # our own refusal): neither success nor failure.
        ok: bool | None = (False if remote_fault else
                           True if handshake_ok or policy.remote.node_id else None)
        bridge.pool.done_with(target, ok=ok, is_self=is_self,
                              addrv2=policy.remote.addrv2 if policy.remote.node_id else None)


async def inbound_handler(bridge: Bridge, stream: trio.SocketStream) -> None:
    """One Tor connection to the onion. It may hold an idle HTTP/2 connection (a remote
    bridge's warm pool does) without costing a kaspad connection: kaspad is dialed only once
    the peer opened its MessageStream and its Version passed (the relay answers the stream
    itself, see :mod:`bridge.core.relay`; ``inbound_version_timeout``), or once it stayed
    silent for ``inbound_silent_window`` (another bridge's slot waits for our Version first).
    Bounded: ``max_pending`` idle connections (the oldest is closed for a newcomer),
    ``inbound_handshake_timeout`` for the HTTP/2 preface, and ``max_inbound`` relayed at once
    (more are answered UNAVAILABLE)."""
    rid = next(bridge._ids)
    label = f"inbound#{rid}"
    host, port = bridge.options.kaspad_p2p
    policy = _policy(bridge, f"inbound peer #{rid}", label)
    # gated (screen=True): the relay answers the peer's request itself and kaspad is dialed
    # only once the peer's Version passed, so a refused peer costs kaspad nothing
    relay = Relay(policy, kaspad_side=Side.UP,
                  upstream_authority=f"{host}:{port}".encode(), settings=bridge.options.relay,
                  screen=True, timing=bridge.timing["inbound"])
    info = RelayInfo(rid, "inbound", bridge.inbound_port or 0, None, relay, trio.current_time())
    runner = RelayRunner(relay, stream, label)
    runner.on_learned = bridge.learned
    bridge.inbound_stats = bridge.inbound_stats.bump(accepted=1)
    active = False

    async def get_kaspad() -> tuple[trio.abc.Stream, Endpoint] | None:
        nonlocal active
        bridge._pending.pop(rid, None)
        if bridge.inbound_active >= bridge.options.max_inbound:
            bridge.inbound_stats = bridge.inbound_stats.bump(refused_full=1)
            log.warning("%s: %d inbound connections relayed already (max_inbound); "
                        "refusing", label, bridge.inbound_active)
            runner.abort(f"this bridge relays {bridge.inbound_active} inbound peers already; "
                         "try later")
            return None
        bridge.inbound_active += 1
        active = True
        try:
            with trio.fail_after(5):
                up = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            log.warning("%s: kaspad at %s:%d unreachable (%r); refusing the Tor peer",
                        label, host, port, exc)
            return None
        conn = new_upstream_connection(bridge.options.relay, remote=False)  # to kaspad
        try:
            await h2_client_handshake(up, conn, 10)
        except (BridgeError, trio.TooSlowError, OSError, trio.BrokenResourceError) as exc:
            log.warning("%s: kaspad did not complete HTTP/2 (%s)", label, exc)
            await up.aclose()
            return None
        return up, conn

    bridge.relays[rid] = info
    if len(bridge._pending) >= max(bridge.options.max_pending, 1):
        oldest_id = next(iter(bridge._pending))
        oldest = bridge._pending.pop(oldest_id)
        bridge.inbound_stats = bridge.inbound_stats.bump(evicted=1)
        log.info("inbound#%d: closed to admit a new connection (%d idle inbound "
                 "connections, max_pending)", oldest_id, bridge.options.max_pending)
        oldest.abort("too many idle inbound connections")
    bridge._pending[rid] = runner
    try:
        opts = bridge.options
        await _guarded(runner.run(get_kaspad, response_timeout=opts.response_deadline,
                                  refuse_message="kaspad is not reachable through "
                                  "this bridge", lazy=True,
                                  preface_timeout=opts.inbound_handshake_timeout,
                                  version_timeout=opts.inbound_version_timeout,
                                  silent_window=opts.inbound_silent_window,
                                  stall=opts.stall), label)
    finally:
        bridge._pending.pop(rid, None)
        if active:
            bridge.inbound_active -= 1
        del bridge.relays[rid]
        bridge._retire(info)
        _finish(bridge, runner, policy, None)
