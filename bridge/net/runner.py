"""Moves bytes between two trio streams and one sans-IO :class:`~bridge.core.relay.Relay`.

Each socket has a reader task (socket → relay) and a writer task (relay → socket). Readers never
block on writes, so neither peer can deadlock the other; memory stays bounded because the relay
only produces what the HTTP/2 windows allow.

Each side's budget (:mod:`bridge.core.budget`) is enforced here too: a reader does not read
while the relay says so (:meth:`~bridge.core.relay.Relay.reading_paused`: more waits to be
written to that side than relayed data accounts for; a peer that does not read what it asks
for, e.g. PING ACKs, stops being read), writers report what they wrote, and the
readers pass time to the relay before each read and at its deadline (token refill, an unfinished
header block's limit): nothing wakes up for an idle connection.

The runner acts on the relay's events (:mod:`bridge.core.events`): it logs its notes, hands what
the policy learned (onions, IP addresses) to ``on_learned`` (the bridge's address-book writer),
remembers its :class:`~bridge.core.events.Closed`, and replaces a dropped upstream.

When the relay drops its upstream before kaspad saw it (the remote's Version showed a node id
already connected to kaspad, see :mod:`bridge.core.relay`), the runner delivers the goodbye to
that socket, closes it, reports it (``on_drop``) and asks ``get_upstream`` for another one, as
long as ``refill_margin`` seconds remain before the response deadline; otherwise kaspad is
answered UNAVAILABLE, as when no upstream is ready.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from bridge.aio import Latch, Signal
from bridge.core.errors import BridgeError, Fault
from bridge.core.events import (
    AddressesLearned,
    Closed,
    Dropped,
    HandshakeSeen,
    Note,
    OnionsLearned,
    RelayEvent,
)
from bridge.core.h2conn import PREFACE
from bridge.core.relay import Endpoint, Relay, Side
from bridge.net import h2io

log = logging.getLogger("bridge.relay")

#: After the relay decided to close: time allowed to deliver the last frames (trailers, GOAWAY).
CLOSE_FLUSH_TIMEOUT = 3.0
#: Client preface (24 bytes) plus one frame header: the HTTP/2 client has started talking.
_PREFACE_SEEN = len(PREFACE) + 9


@dataclass(frozen=True, slots=True)
class StallPolicy:
    """A message the remote has started must keep arriving: while the relay is not holding the
    remote back (nothing queued for the other side), at least ``min_rate`` bytes/s averaged over
    ``timeout`` seconds, else the remote is closed as stalled (kaspad itself would only notice
    after its 120 s ping + 120 s pong timeout, and a partial message blocks everything behind
    it)."""

    timeout: float = 60.0
    min_rate: float = 1024.0


UpstreamGetter = Callable[[], Awaitable[tuple[trio.abc.Stream, Endpoint] | None]]
Learned = OnionsLearned | AddressesLearned


class RelayRunner:
    def __init__(self, relay: Relay, down: trio.abc.Stream, label: str) -> None:
        self.relay = relay
        self.label = label
        self.streams: dict[Side, trio.abc.Stream | None] = {Side.DOWN: down, Side.UP: None}
        self._kick = {Side.DOWN: Latch(), Side.UP: Latch()}
        self._drained = {Side.DOWN: Latch(), Side.UP: Latch()}  # a writer wrote something
        #: how often a reader waited for its side's backlog to drain (status, tests)
        self.read_pauses = {Side.DOWN: 0, Side.UP: 0}
        self._done = trio.Event()
        self._writers_done = {Side.DOWN: trio.Event(), Side.UP: trio.Event()}
        #: the side that is not kaspad
        self.remote_side = Side.UP if relay.kaspad_side is Side.DOWN else Side.DOWN
        #: why the remote is to blame when the relay itself closed without an error (timeouts,
        #: stalls, a reset connection)
        self.fault: BridgeError | None = None
        self.bytes_read = {Side.DOWN: 0, Side.UP: 0}
        self._progress = Signal()  # DOWN sent bytes / a request / the relay ended
        self._read_error: dict[Side, str] = {}
        #: called with each upstream the relay dropped (a duplicate node id), before a refill
        self.on_drop: Callable[[Dropped], None] | None = None
        #: called with what the relay's policy learned from gossip (for the address book)
        self.on_learned: Callable[[Learned], None] | None = None
        #: how the relay ended (its last event), None while it runs
        self.closed: Closed | None = None
        #: the upstream the relay let go, until :meth:`_upstreams` replaces it
        self._dropped: Dropped | None = None
        #: trio time by which kaspad must have the response (None: no deadline)
        self.response_deadline: float | None = None

    @property
    def request_seen(self) -> bool:
        """The DOWN client opened its MessageStream."""
        return self.relay.stream_id(Side.DOWN) is not None

    @property
    def preface_seen(self) -> bool:
        """The DOWN client sent the HTTP/2 preface and started its first frame (the relay would
        have failed on a bad preface)."""
        return self.bytes_read[Side.DOWN] >= _PREFACE_SEEN

    def blame(self, message: str) -> None:
        """Close the relay because of the remote (a timeout or stall the relay cannot see)."""
        if self.relay.finished:
            return
        self.fault = BridgeError(message, fault=Fault.REMOTE)
        self._act(self.relay.refuse(message))
        self._kick_all()

    def abort(self, message: str) -> None:
        """Close the relay for a reason of the bridge's own (eviction, shutdown)."""
        self._act(self.relay.refuse(message))
        self._kick_all()

    def _act(self, events: list[RelayEvent]) -> None:
        """Act on what the relay reported (every relay call's events pass through here)."""
        for ev in events:
            if isinstance(ev, Note):
                log.log(logging.WARNING if ev.warning else logging.INFO,
                        "%s: %s", self.label, ev.text)
            elif isinstance(ev, OnionsLearned | AddressesLearned):
                if self.on_learned is not None:
                    self.on_learned(ev)
            elif isinstance(ev, HandshakeSeen):
                log.debug("%s: %s is node %s (services %#x, protocol %d, %r)", self.label,
                          "kaspad" if ev.kaspad else "the remote", ev.node_id.hex(),
                          ev.services, ev.protocol_version, ev.user_agent)
            elif isinstance(ev, Dropped):
                self._dropped = ev
            else:
                self.closed = ev

    def _kick_all(self) -> None:
        for s in (*self._kick.values(), *self._drained.values()):
            s.set()
        self._progress.notify()
        if self.closed is not None:
            self._done.set()

    async def run(self, get_upstream: UpstreamGetter, *, response_timeout: float | None = None,
                  refuse_message: str = "no upstream peer available",
                  refresh_interval: float | None = None,
                  lazy: bool = False, preface_timeout: float | None = None,
                  stall: StallPolicy | None = None,
                  refill_margin: float | None = None,
                  version_timeout: float | None = None,
                  silent_window: float | None = None) -> None:
        """Relay until either side ends. ``get_upstream`` supplies the UP stream and its h2
        connection (or ``None``: the DOWN client is refused with UNAVAILABLE).

        ``lazy``: ask for the upstream only once the DOWN client has opened its MessageStream
        (it may keep an idle HTTP/2 connection as long as it likes, e.g. a remote bridge's warm
        pool); ``preface_timeout`` bounds the wait for its HTTP/2 preface. ``stall``: watch the
        remote side for a stalled or trickling message. ``refill_margin``: after the relay
        dropped an upstream, another is taken only while this many seconds remain before the
        response deadline (None: never; kaspad is answered UNAVAILABLE). ``version_timeout``:
        on a gated relay (the onion inbound, :attr:`Relay.gated`), the time the DOWN client has
        from opening its stream to its Version passing; the upstream (kaspad) is only asked
        for then, or once the client stayed silent for ``silent_window`` seconds (a screening
        bridge waits for kaspad's Version first, :meth:`Relay.open_gate`)."""
        try:
            async with trio.open_nursery() as nursery:
                down = self.streams[Side.DOWN]
                assert down is not None
                nursery.start_soon(self._reader, Side.DOWN, down)
                nursery.start_soon(self._writer, Side.DOWN, down)
                if lazy:
                    await self._wait_request(preface_timeout)
                if self.relay.gated:
                    await self._wait_version(version_timeout, silent_window)
                up = None if self.relay.finished else await get_upstream()
                if self.relay.finished:
                    if up is not None:
                        await up[0].aclose()
                    self._writers_done[Side.UP].set()
                elif up is None:
                    self._act(self.relay.refuse(refuse_message))
                    self._writers_done[Side.UP].set()
                else:
                    up_stream, conn = up
                    self.streams[Side.UP] = up_stream
                    self._act(self.relay.attach_upstream(conn))
                    nursery.start_soon(self._upstreams, up_stream, get_upstream,
                                       refuse_message, refill_margin)
                    if response_timeout is not None:
                        self.response_deadline = trio.current_time() + response_timeout
                        nursery.start_soon(self._response_watchdog, response_timeout)
                    if refresh_interval:
                        nursery.start_soon(self._refresh, refresh_interval)
                    if stall is not None:
                        nursery.start_soon(self._stall_watchdog, stall)
                self._kick_all()
                await self._done.wait()
                with trio.move_on_after(CLOSE_FLUSH_TIMEOUT):
                    for ev in self._writers_done.values():
                        await ev.wait()
                nursery.cancel_scope.cancel()
        finally:
            for stream in self.streams.values():
                if stream is not None:
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await stream.aclose()

    async def _upstreams(self, stream: trio.abc.Stream, get_upstream: UpstreamGetter,
                         refuse_message: str, refill_margin: float | None) -> None:
        """Serve the UP socket; when the relay drops it (duplicate node id), replace it."""
        current: trio.abc.Stream | None = stream
        while current is not None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, Side.UP, current)
                nursery.start_soon(self._writer, Side.UP, current)
            dropped, self._dropped = self._dropped, None
            if dropped is None:
                return  # the relay is over (the writer marked itself done)
            current = await self._replace_upstream(current, dropped, get_upstream,
                                                   refuse_message, refill_margin)

    async def _replace_upstream(self, old: trio.abc.Stream, dropped: Dropped,
                                get_upstream: UpstreamGetter, refuse_message: str,
                                refill_margin: float | None) -> trio.abc.Stream | None:
        log.info("%s: upstream dropped: %s", self.label, dropped.error.describe())
        if self.on_drop is not None:
            self.on_drop(dropped)
        with trio.move_on_after(1):
            try:
                await old.send_all(dropped.goodbye)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        self.streams[Side.UP] = None
        self._read_error.pop(Side.UP, None)
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await old.aclose()
        budget = (None if self.response_deadline is None
                  else self.response_deadline - trio.current_time() - (refill_margin or 0.0))
        up = None
        if refill_margin is not None and (budget is None or budget > 0) \
                and not self.relay.finished:
            with trio.move_on_after(budget if budget is not None else float("inf")):
                up = await get_upstream()
        if self.relay.finished:
            if up is not None:
                await up[0].aclose()
            self._writers_done[Side.UP].set()
            return None
        if up is None:
            why = ("no other upstream within kaspad's response deadline"
                   if refill_margin is not None else refuse_message)
            log.info("%s: %s; kaspad is answered UNAVAILABLE", self.label, why)
            self._act(self.relay.refuse(f"{refuse_message} (the one tried is connected "
                                        "already)"))
            self._writers_done[Side.UP].set()
            self._kick_all()
            return None
        new, conn = up
        self.streams[Side.UP] = new
        self._act(self.relay.attach_upstream(conn))
        self._kick_all()
        return new

    async def _wait_request(self, preface_timeout: float | None) -> None:
        """Until the DOWN client opens its stream (or the relay ends); the preface must come
        within ``preface_timeout``."""
        deadline = (trio.current_time() + preface_timeout if preface_timeout is not None
                    else float("inf"))
        while not self.request_seen and not self.relay.finished:
            with trio.move_on_at(deadline if not self.preface_seen else float("inf")):
                await self._progress.wait()
                continue
            self.blame(f"{self.relay.who(Side.DOWN)} sent no HTTP/2 preface within "
                       f"{preface_timeout:.1f}s")

    async def _wait_version(self, timeout: float | None, silent_window: float | None) -> None:
        """Until a gated relay wants its upstream (the DOWN client's Version passed, or it was
        silent for ``silent_window`` s) or ends; the Version must pass within ``timeout`` of
        now (the stream being open)."""
        now = trio.current_time()
        end = now + (timeout if timeout is not None else float("inf"))
        quiet = now + silent_window if silent_window is not None else float("inf")
        with trio.move_on_at(end):
            while not self.relay.upstream_wanted and not self.relay.finished:
                with trio.move_on_at(quiet):
                    await self._progress.wait()
                    continue
                quiet = float("inf")
                if self.relay.open_gate():
                    log.debug("%s: the peer waits for kaspad's Version first; dialing kaspad",
                              self.label)
            return
        self.blame(f"{self.relay.who(Side.DOWN)} sent no acceptable Version within "
                   f"{timeout:.1f}s of opening its stream")

    async def _response_watchdog(self, timeout: float) -> None:
        await trio.sleep(timeout)
        if not self.relay.response_started and not self.relay.finished:
            # no upstream attached (one was dropped, its replacement not in yet): not its fault
            up = Side.UP is self.remote_side and self.relay.has_upstream
            message = f"upstream did not answer within {timeout:.1f}s"
            if up:
                self.blame(f"{self.relay.who(Side.UP)} did not answer within {timeout:.1f}s")
            else:
                self._act(self.relay.refuse(message))
                self._kick_all()

    async def _stall_watchdog(self, policy: StallPolicy) -> None:
        side = self.remote_side
        upstream = self.relay.inflow(side).upstream
        tick = max(policy.timeout / 8, 0.02)
        since: float | None = None
        start_bytes = 0
        while not self.relay.finished:
            await trio.sleep(tick)
            now = trio.current_time()
            flow = self.relay.inflow(side)
            if flow.upstream != upstream:  # a dropped upstream was replaced
                upstream, since = flow.upstream, None
            # Only while a message is in progress and the relay is not itself holding the
            # sender back (bytes queued for a receiver whose window is closed).
            if not flow.mid_message or flow.held_back:
                since = None
                continue
            if since is None:
                since, start_bytes = now, flow.bytes_in
                continue
            elapsed = now - since
            if elapsed < policy.timeout:
                continue
            got = flow.bytes_in - start_bytes
            if got < max(1.0, policy.min_rate * elapsed):
                what = "stalled" if got == 0 else f"trickled {got} bytes"
                self.blame(f"{self.relay.who(side)} {what} in the middle of a message for "
                           f"{elapsed:.1f}s (minimum {policy.min_rate:.0f} B/s)")
                return
            since, start_bytes = now, flow.bytes_in

    async def _refresh(self, interval: float) -> None:
        """Active discovery: every ``interval`` s ask an ADDRv2 remote for addresses (the reply
        is harvested by the bridge, never forwarded to kaspad)."""
        while not self.relay.finished:
            await trio.sleep(interval)
            if self.relay.request_addresses():
                log.debug("%s: asked the remote for addresses", self.label)
                self._kick_all()

    def _tick(self) -> None:
        """Pass the time to the relay's budgets (the sans-IO core has no clock)."""
        self._act(self.relay.tick(trio.current_time()))
        if self.closed is not None:
            self._kick_all()

    def _deadline(self, side: Side) -> float:
        d = self.relay.deadline(side)
        return float("inf") if d is None else d

    async def _room(self, side: Side) -> None:
        """Wait while the relay says not to read ``side`` (:meth:`Relay.reading_paused`): a
        peer that does not read what it asked for (PING/SETTINGS ACKs) is not read either."""
        if not self.relay.reading_paused(side):
            return
        self.read_pauses[side] += 1
        while self.relay.reading_paused(side) and not self.relay.finished:
            with trio.move_on_at(self._deadline(side)):
                await self._drained[side].wait()
            self._tick()

    async def _reader(self, side: Side, stream: trio.abc.Stream) -> None:
        while not self.relay.finished:
            await self._room(side)
            self._tick()
            if self.relay.finished:
                return
            try:
                with trio.move_on_at(self._deadline(side)) as timer:
                    data = await stream.receive_some(h2io.READ_SIZE)
                if timer.cancelled_caught:
                    continue  # the header block's limit: _tick() closes the relay
            except h2io.STREAM_ERRORS as exc:
                data = b""
                self._read_error[side] = repr(exc.__cause__ or exc)
            if not data:
                self._lost(side)
            else:
                self.bytes_read[side] += len(data)
                self._act(self.relay.receive(side, bytes(data)))
            self._kick_all()
            if not data or (side is Side.UP and self._dropped is not None):
                return  # EOF, or this upstream was dropped (see _upstreams)

    def _lost(self, side: Side) -> None:
        """``side``'s connection ended. A remote whose connection breaks in the middle of a
        message (or with an error such as a TCP reset) is to blame."""
        if self.relay.finished or (side is Side.UP and not self.relay.has_upstream):
            return  # (an upstream the relay dropped: its end is not a fault)
        mid = self.relay.mid_message(side)
        err = self._read_error.get(side)
        self._act(self.relay.connection_lost(side))
        if side is self.remote_side and (mid or err):
            how = f"reset the connection ({err})" if err else "closed the connection"
            where = " in the middle of a message" if mid else ""
            self.fault = BridgeError(f"{self.relay.who(side)} {how}{where}", fault=Fault.REMOTE)

    async def _writer(self, side: Side, stream: trio.abc.Stream) -> None:
        dropped = False
        try:
            while True:
                data = self.relay.data_to_send(side)
                if data:
                    self.relay.writing(side, len(data))
                    try:
                        await stream.send_all(data)
                    except h2io.STREAM_ERRORS as exc:
                        self._read_error.setdefault(side, repr(exc.__cause__ or exc))
                        self._lost(side)
                        self._kick_all()
                        return
                    self._act(self.relay.wrote(side, len(data)))
                    self._kick_all()  # held-back data moved on; the source's window reopened
                    continue
                if self.relay.finished:
                    return
                if side is Side.UP and self._dropped is not None:
                    dropped = True  # the relay let this upstream go; _upstreams takes over
                    return
                await self._kick[side].wait()
        finally:
            if not dropped:
                self._writers_done[side].set()

    def close_line(self) -> tuple[int, str] | None:
        """The log level and text of the relay's end (None while it runs)."""
        closed = self.closed
        if closed is None:
            return None
        stats = self.relay.stats()
        err = closed.error or self.fault
        if err is not None:
            level = logging.WARNING if err.fault in (Fault.KASPAD, Fault.LOCAL) else logging.INFO
            return level, f"{self.label} closed: {err.describe()}; stats={stats}"
        return logging.INFO, f"{self.label} closed: {closed.reason}; stats={stats}"

    def log_close(self, line: tuple[int, str] | None = None) -> None:
        """Log the relay's end (``line``: :meth:`close_line`'s, when the caller has it)."""
        line = line or self.close_line()
        if line is not None:
            log.log(line[0], "%s", line[1])
