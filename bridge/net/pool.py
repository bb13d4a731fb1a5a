"""Upstream dialing and the warm pool.

kaspad gives a slot 10 s for response HEADERS and 4 s for the peer's Version (protocol.md §3.2).
A Tor circuit to an onion service can take longer than that to build, so the bridge keeps
``size`` upstream connections *warm*: SOCKS done and the HTTP/2 preface exchanged (the server's
SETTINGS received). A kaspad slot connection takes one and only has to open a stream on it.

Duplicates: the remote's node id only shows in its Version, once a slot opened its stream (the
relay checks it there, see :mod:`bridge.core.relay`), so the pool cannot see it while warming.
What it does: it never picks, and never hands a slot, a target whose node id as last seen is
connected to kaspad now (``busy``: :meth:`bridge.core.nodes.NodeRegistry.busy_targets`); a warm
upstream that became such a target meanwhile is closed and put aside without penalty
(:meth:`WarmPool.duplicate`), as is an upstream a slot's relay dropped for that reason.

Bounded idle connections (issue 10, defect 4): the only thing the pool writes to an idle warm
connection is h2's own replies (PING and SETTINGS ACKs), and each write must be taken by the
remote within ``send_timeout`` seconds. A remote that stops reading (its TCP window full, or a
stuck circuit) is closed, logged once with the fault on the remote, and its candidate released
with a failure backoff. Writes are never shielded from cancellation, so the daemon's shutdown
does not wait for such a remote; :meth:`WarmPool.take` never waits for an entry in the middle of
a write either (that entry is not ready). The idle wait itself has no timeout: an idle warm
connection is meant to stay quiet (kaspad sends no HTTP/2 PING, protocol.md §3.1), and a keep-alive
PING of ours would be penalised by grpc servers when no stream is open. Frames received while
idle spend the connection's budget (:mod:`bridge.core.budget`), which is refilled with time as
in a relay.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field, replace

import h2.events
import h2.exceptions
import trio

from bridge.aio import Signal
from bridge.core.counters import Counters
from bridge.core.errors import BridgeError, Fault
from bridge.core.histogram import DIAL_BUCKETS, Histogram, HistogramSnapshot
from bridge.core.peers import Selector, Target
from bridge.core.relay import Endpoint, RelaySettings, new_upstream_connection
from bridge.net import h2io
from bridge.net.socks import DialError, ProxyEndpoint, open_socks_stream

log = logging.getLogger("bridge.pool")

#: Retry delay after a dial failed because of our own Tor/proxy (the peer is not penalised).
TOR_FAULT_RETRY = 2.0
#: A target whose node id turned out to be connected already rests this long (no failure is
#: counted); while that connection lasts it is not picked anyway (``busy``).
DUPLICATE_DEFER = 30.0
#: After our Tor comes back (restart, reconnect), it may still be fetching descriptors and
#: building its first circuits: dial failures this soon are not held against the peer (short
#: retries instead of the 2..60 s exponential backoff, which once delayed recovery by ~110 s).
TOR_RECOVERY_GRACE = 30.0


@dataclass(frozen=True, slots=True)
class FaultCounts(Counters):
    """Failures by :class:`~bridge.core.errors.Fault` (one field per member, lower case)."""

    remote: int = 0
    kaspad: int = 0
    local: int = 0
    tor: int = 0


#: how a dial went out: through Tor's SOCKS port (or ``tor.onion_socks``), or direct (hybrid)
DIAL_ROUTES = ("tor", "direct")
DIAL_OUTCOMES = ("ok", "failed")


@dataclass(frozen=True, slots=True)
class DialStats:
    """What :meth:`Dialer.stats` reports: dial attempts, failures by fault, and how long the
    dials took by (route, outcome) (:data:`DIAL_ROUTES`, :data:`DIAL_OUTCOMES`)."""

    dials: int
    failures: FaultCounts
    durations: Mapping[tuple[str, str], HistogramSnapshot] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PoolEvents(Counters):
    """The warm pool's events. ``duplicates``: upstreams not handed to kaspad (or dropped by a
    slot before kaspad saw them) because their node id was connected to kaspad already;
    ``not_reading``: idle warm connections closed because the remote did not take our writes
    (also counted in ``dropped``)."""

    dialed: int = 0
    ready: int = 0
    failed: int = 0
    taken: int = 0
    dropped: int = 0
    duplicates: int = 0
    not_reading: int = 0


@dataclass(frozen=True, slots=True)
class PoolStats:
    """What :meth:`WarmPool.stats` reports: target size, connections ready now, events."""

    size: int
    ready_now: int
    events: PoolEvents


@dataclass(frozen=True, slots=True)
class DialPolicy:
    """Which proxy carries which kind of target. ``None`` proxy + allow_direct: dial directly."""

    proxy: ProxyEndpoint | None
    onion_proxy: ProxyEndpoint | None = None
    allow_direct: bool = False
    timeout: float = 60.0
    #: False (hybrid): IP targets never go through Tor; they are dialed directly if allowed
    ip_via_tor: bool = True


class Dialer:
    def __init__(self, policy: DialPolicy,
                 gate: Callable[[], Awaitable[None]] | None = None,
                 socks_provider: Callable[[], ProxyEndpoint | None] | None = None) -> None:
        self.policy = policy
        #: awaited before every dial: the Tor supervisor pauses dialing while Tor is down
        self.gate = gate
        #: where the SOCKS port comes from when none is configured (asked from tor)
        self.socks_provider = socks_provider
        self.dials = 0
        self.failures = FaultCounts()
        #: dial durations (SOCKS5 handshake done or failed; the gate's wait not included)
        self.durations = {(route, outcome): Histogram(DIAL_BUCKETS)
                          for route in DIAL_ROUTES for outcome in DIAL_OUTCOMES}

    def stats(self) -> DialStats:
        return DialStats(self.dials, self.failures,
                         {k: h.snapshot() for k, h in self.durations.items()})

    def tor_proxy(self) -> ProxyEndpoint | None:
        """Tor's SOCKS port: the configured one, else the one tor reported (None: unknown)."""
        if self.policy.proxy is not None:
            return self.policy.proxy
        return self.socks_provider() if self.socks_provider is not None else None

    def is_direct(self, target: Target) -> bool:
        """Whether ``target`` would be dialed directly (not through Tor) now."""
        try:
            return not target.is_onion and self.route(target) is None
        except DialError:
            return False

    def tor_only(self) -> None:
        """From now on every target goes through Tor: IP peers via Tor exits, never directly
        (``peers.sync_first``'s switch; one way)."""
        self.policy = replace(self.policy, ip_via_tor=True, allow_direct=False)

    def route(self, target: Target) -> ProxyEndpoint | None:
        """The proxy for ``target``, or ``None`` for a direct connection (IP and allowed only)."""
        tor = self.tor_proxy()
        if target.is_onion:
            proxy = self.policy.onion_proxy or tor
            if proxy is None:
                raise DialError(f"no SOCKS proxy configured for onion target {target}",
                                fault=Fault.LOCAL)
            return proxy
        try:
            ipaddress.ip_address(target.host)
        except ValueError as exc:
            raise DialError(f"refusing non-IP, non-onion target {target.host!r} (no DNS)",
                            fault=Fault.LOCAL) from exc
        if self.policy.ip_via_tor and tor is not None:
            return tor
        if self.policy.allow_direct:
            return None
        raise DialError(f"no SOCKS proxy for {target} and direct dialing is not allowed",
                        fault=Fault.LOCAL)

    async def dial(self, target: Target) -> trio.SocketStream:
        if self.gate is not None:
            await self.gate()
        self.dials += 1
        proxy = self.route(target)  # (a configuration error: neither counted nor timed)
        route = "tor" if proxy is not None else "direct"
        started = trio.current_time()
        try:
            if proxy is None:
                with trio.fail_after(self.policy.timeout):
                    stream = await trio.open_tcp_stream(target.host, target.port)
            else:
                stream = await open_socks_stream(proxy, target.host, target.port,
                                                 timeout=self.policy.timeout)
        except DialError as exc:
            self.failures = self.failures.bump(**{exc.fault.name.lower(): 1})
            self._took(route, "failed", started)
            raise
        except (OSError, trio.TooSlowError) as exc:
            self.failures = self.failures.bump(remote=1)
            self._took(route, "failed", started)
            raise DialError(f"direct dial to {target} failed: {exc!r}", fault=Fault.REMOTE) from exc
        self._took(route, "ok", started)
        return stream

    def _took(self, route: str, outcome: str, started: float) -> None:
        self.durations[route, outcome].observe(trio.current_time() - started)


class _PoliteClose(BridgeError):
    fault = Fault.REMOTE
    action = "dropped from the warm pool; redialed without penalty"


class _NotReading(BridgeError):
    fault = Fault.REMOTE
    action = "warm connection closed; peer backed off"


@dataclass(slots=True)
class Upstream:
    target: Target
    stream: trio.SocketStream
    #: the h2 connection (with its frame guard and budget) over ``stream``
    end: Endpoint
    #: dialed directly, not through Tor (an IP peer in hybrid mode)
    direct: bool = False


@dataclass(slots=True)
class _Entry:
    up: Upstream
    exited: trio.Event
    #: cancels the idle task's current receive (a slot takes the connection)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    dead: bool = False
    #: handed to a slot: the idle task must leave the stream alone
    taken: bool = False
    #: the idle task is writing (h2's ACKs): not ready for a slot until the write is done
    sending: bool = False
    #: closed by the switch to Tor (dialed directly): the idle task closes the stream
    retired: bool = False


class WarmPool:
    """Keeps ``size`` ready upstream connections; slots :meth:`take` them."""

    def __init__(self, selector: Selector, dialer: Dialer, *, size: int,
                 relay_settings: RelaySettings, handshake_timeout: float = 30.0,
                 busy: Callable[[], Collection[Target]] | None = None,
                 send_timeout: float = 30.0) -> None:
        self.selector = selector
        #: targets not to dial or hand out now (their node id is connected to kaspad already)
        self.busy = busy
        self.dialer = dialer
        self.size = size
        self.relay_settings = relay_settings
        self.handshake_timeout = handshake_timeout
        #: seconds an idle warm connection's remote has to take what the pool writes to it
        self.send_timeout = send_timeout
        self._ready: list[_Entry] = []
        self._dialing = 0
        self._changed = Signal()
        self._ready_changed = Signal()
        self.events = PoolEvents()
        #: trio time our Tor last recovered (see :meth:`forgive_all`)
        self._tor_recovered_at: float | None = None
        #: slots waiting in :meth:`take` with nothing ready: each gets a dial of its own on top
        #: of ``size`` (a burst of kaspad connections; ``size = 0`` means dial on demand)
        self._waiting = 0
        #: called each time an upstream becomes warm (the daemon's time-to-first-warm)
        self.on_ready: Callable[[], None] | None = None

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    def stats(self) -> PoolStats:
        return PoolStats(self.size, self.ready_count, self.events)

    def _notify(self) -> None:
        self._changed.notify()

    def _notify_ready(self) -> None:
        self._ready_changed.notify()

    def forgive_all(self) -> None:
        """Our Tor recovered: failures counted while it was down were not the peers' fault, and
        for :data:`TOR_RECOVERY_GRACE` seconds new failures are not held against them either."""
        self._tor_recovered_at = trio.current_time()
        self.selector.forgive_all()
        self._notify()

    def _in_recovery_grace(self) -> bool:
        at = self._tor_recovered_at
        return at is not None and trio.current_time() - at < TOR_RECOVERY_GRACE

    def poke(self) -> None:
        """Candidates changed (a relay ended, a peer was learned): reconsider dialing."""
        self._notify()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                busy = self.busy() if self.busy is not None else ()
                while len(self._ready) + self._dialing < self.size + self._waiting:
                    target = self.selector.pick(trio.current_time(), exclude=busy)
                    if target is None:
                        break
                    self._dialing += 1
                    nursery.start_soon(self._warm, target, nursery)
                retry = self.selector.next_retry(trio.current_time())
                with trio.move_on_at(retry if retry is not None else float("inf")):
                    await self._changed.wait()

    async def _warm(self, target: Target, nursery: trio.Nursery) -> None:
        stream: trio.SocketStream | None = None
        direct = self.dialer.is_direct(target)
        try:
            self.events = self.events.bump(dialed=1)
            stream = await self.dialer.dial(target)
            direct = direct or self.dialer.is_direct(target)
            conn = new_upstream_connection(self.relay_settings)
            await h2io.h2_client_handshake(stream, conn, self.handshake_timeout)
        except (BridgeError, trio.TooSlowError, OSError, trio.BrokenResourceError) as exc:
            self.events = self.events.bump(failed=1)
            if isinstance(exc, BridgeError) and exc.fault in (Fault.TOR, Fault.LOCAL):
                # Our proxy or configuration failed, not the peer: no penalty, short retry.
                delay = TOR_FAULT_RETRY
                self.selector.defer(target, trio.current_time(), delay)
            elif self._in_recovery_grace():
                delay = TOR_FAULT_RETRY  # our Tor just came back: not the peer's fault yet
                self.selector.defer(target, trio.current_time(), delay)
            else:
                delay = self.selector.failure(target, trio.current_time())
            self.selector.release(target)
            what = exc.describe() if isinstance(exc, BridgeError) else repr(exc)
            log.info("upstream %s not ready: %s; retry in %.0fs", target, what, delay)
            if stream is not None:
                await stream.aclose()
            return
        finally:
            self._dialing -= 1
            self._notify()
        if direct and not self.dialer.policy.allow_direct:
            # dialed directly before the switch to Tor only (peers.sync_first): not for kaspad
            self.selector.release(target)
            log.info("upstream %s dialed directly before the switch to Tor: closed, not used",
                     target)
            await trio.aclose_forcefully(stream)
            self._notify()
            return
        entry = _Entry(Upstream(target, stream, conn, direct), trio.Event())
        self._ready.append(entry)
        self.events = self.events.bump(ready=1)
        if self.on_ready is not None:
            self.on_ready()
        self._notify_ready()
        log.debug("upstream %s warm", target)
        nursery.start_soon(self._keep, entry)

    async def _keep(self, entry: _Entry) -> None:
        """Service an idle pooled connection (PING, SETTINGS); drop it when it dies."""
        try:
            await self._serve_idle(entry)
        finally:
            entry.exited.set()
            if entry.retired or (not entry.taken and not entry.dead):
                # cancelled (the daemon shuts down): nobody else will close it
                entry.dead = True
                await trio.aclose_forcefully(entry.up.stream)

    async def _serve_idle(self, entry: _Entry) -> None:
        up = entry.up
        try:
            while True:
                entry.scope = trio.CancelScope()
                if entry.taken:
                    return
                with entry.scope:
                    data = await h2io.receive(up.stream)
                if entry.scope.cancelled_caught:
                    return  # taken by a slot
                if not data:
                    raise BridgeError("closed while idle", fault=Fault.REMOTE)
                up.end.budget.tick(trio.current_time())
                events = up.end.receive_data(data)
                out = up.end.data_to_send()
                if out:
                    # Not shielded (h2io.send): a shutdown must not wait for a remote that does
                    # not read; a slot never takes an entry in the middle of this write
                    # (``sending``).
                    entry.sending = True
                    try:
                        await h2io.send(up.stream, out, timeout=self.send_timeout)
                    except trio.TooSlowError:
                        raise _NotReading(
                            f"did not read {len(out)} bytes of HTTP/2 replies within "
                            f"{self.send_timeout:.0f}s while idle") from None
                    finally:
                        entry.sending = False
                    self._notify_ready()  # a slot may be waiting for this entry
                for e in events:
                    if isinstance(e, h2.events.ConnectionTerminated):
                        if not e.error_code:
                            # A polite close of an idle connection (the remote bridge's
                            # idle-connection cap, a restart): no fault, just redial.
                            raise _PoliteClose("closed the idle connection (GOAWAY NO_ERROR)")
                        raise BridgeError("sent GOAWAY while idle", fault=Fault.REMOTE)
        except (BridgeError, h2.exceptions.ProtocolError, trio.BrokenResourceError,
                trio.ClosedResourceError, OSError) as exc:
            entry.dead = True
            what = (f"[remote peer] broke HTTP/2 while idle: {exc}"
                    if isinstance(exc, h2.exceptions.ProtocolError) else
                    exc.describe() if isinstance(exc, BridgeError) else repr(exc))
            self.events = self.events.bump(dropped=1)
            self._ready = [e for e in self._ready if e is not entry]
            delay = None
            if isinstance(exc, _NotReading):
                self.events = self.events.bump(not_reading=1)
            if not isinstance(exc, _PoliteClose):
                delay = self.selector.failure(up.target, trio.current_time())
            self.selector.release(up.target)
            level = logging.WARNING if isinstance(exc, _NotReading) else logging.INFO
            log.log(level, "warm upstream %s dropped: %s%s", up.target, what,
                    f"; retry in {delay:.0f}s" if delay is not None else "")
            await trio.aclose_forcefully(up.stream)
            self._notify()

    def _pick_ready(self) -> _Entry | None:
        """The oldest ready entry whose idle task is not writing."""
        for entry in self._ready:
            if not entry.sending:
                return entry
        return None

    async def take(self, timeout: float) -> Upstream | None:
        """A warm upstream within ``timeout`` seconds, or ``None``."""
        with trio.move_on_after(timeout):
            while True:
                entry = self._pick_ready()
                if entry is None:
                    # nothing ready (or only entries in the middle of a write): one more dial
                    self._waiting += 1
                    self._notify()
                    try:
                        await self._ready_changed.wait()
                    finally:
                        self._waiting -= 1
                    continue
                self._ready.remove(entry)
                entry.taken = True
                entry.scope.cancel()
                # The idle task is in its receive (never in a write, see _pick_ready): the
                # stream is ours once it exits.
                try:
                    await entry.exited.wait()
                except trio.Cancelled:
                    # Cancelled before the upstream was ours: nobody gets it; free its target.
                    if not entry.dead:
                        self.selector.release(entry.up.target)
                        with trio.CancelScope(shield=True), trio.move_on_after(1):
                            await entry.up.stream.aclose()
                    self._notify()
                    raise
                self._notify()
                if entry.dead:
                    continue
                if entry.up.direct and not self.dialer.policy.allow_direct:
                    self._retire_direct(entry)
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await entry.up.stream.aclose()
                    continue
                if self.busy is not None and entry.up.target in self.busy():
                    log.info("warm upstream %s not used: its node is connected to kaspad "
                             "already", entry.up.target)
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await entry.up.stream.aclose()
                    self.duplicate(entry.up.target)
                    continue
                self.events = self.events.bump(taken=1)
                return entry.up
        return None

    def _retire_direct(self, entry: _Entry) -> None:
        """Close a directly dialed warm connection without penalty (the switch to Tor): its
        idle task closes it on its way out (:meth:`_keep`)."""
        entry.taken = entry.retired = True
        entry.scope.cancel()
        self.selector.release(entry.up.target)
        self.events = self.events.bump(dropped=1)

    def drop_direct(self) -> int:
        """Close every warm connection that was dialed directly (``peers.sync_first``'s switch
        to Tor); the number closed. The pool refills through Tor."""
        direct = [e for e in self._ready if e.up.direct]
        self._ready = [e for e in self._ready if not e.up.direct]
        for entry in direct:
            self._retire_direct(entry)
        self._notify()
        return len(direct)

    def duplicate(self, target: Target, delay: float = DUPLICATE_DEFER) -> None:
        """``target``'s node id is connected to kaspad already (seen in its Version, or known
        before it was handed out): put it aside for ``delay`` seconds without a failure, and
        free it."""
        self.events = self.events.bump(duplicates=1)
        self.selector.defer(target, trio.current_time(), delay)
        self.selector.release(target)
        self._notify()

    def done_with(self, target: Target, *, ok: bool | None, is_self: bool = False,
                  addrv2: bool | None = None) -> None:
        """A relay that used ``target`` ended: a success (``ok``), a failure (backoff), or
        neither (``None``: it ended before the remote could show either, e.g. kaspad left
        before the remote's handshake; only the target is freed)."""
        if is_self:
            self.selector.mark_self(target)
        elif ok:
            self.selector.success(target, addrv2=addrv2)
        elif ok is not None:
            self.selector.failure(target, trio.current_time())
        self.selector.release(target)
        self._notify()

    async def aclose(self) -> None:
        for entry in self._ready:
            entry.taken = entry.dead = True
            entry.scope.cancel()
            await trio.aclose_forcefully(entry.up.stream)
        self._ready.clear()
