"""The bridge daemon's network side: slot listeners, the onion inbound listener, the warm pool.

* A **slot** is a local port kaspad dials (``--addpeer=127.0.0.1:<slot>``). Each kaspad
  connection is relayed to one upstream peer taken from the warm pool.
* The **inbound** listener is the target of the onion service: each Tor connection is relayed to
  kaspad's P2P listener.

No duplicate connections: kaspad keeps one connection per (node id, remote IP) and drops a newer
one right after its handshake; every bridged peer is 127.0.0.1 to kaspad. The bridge keeps the
node ids connected through it (``gossip.nodes``, :mod:`bridge.core.nodes`): a slot whose upstream
shows, in its Version, an id already connected (through another slot or the onion inbound) drops
that upstream before kaspad sees anything of it and takes another from the pool while
``refill_margin`` seconds remain before the response deadline (else kaspad is answered
UNAVAILABLE, as when no upstream is ready); the target is put aside, not penalised, and the pool
does not pick it while that node stays connected. An inbound peer whose id is connected already
is closed politely. Each is logged ("... already connected to kaspad through ...") and counted
(``pool.events.duplicates`` for slots, ``inbound_stats.refused_duplicate``).

Slot ports cost nothing until kaspad asks (issue 10, defect 5). kaspad sends its HTTP/2 preface
and its MessageStream request as soon as it connects, so a slot takes a warm upstream only once
that request has arrived: a local connection that closes before (a port scan, a TCP health
check) or says nothing for ``slot_request_timeout`` seconds never touches the pool, no Tor
connection is spent on it, and no remote is credited or blamed for it; it is closed, blamed on
the local side and counted (``closed_count.slot_no_request``). A relay that ends before the
remote could handshake, for a reason not the remote's, records neither a success nor a failure.
At most ``max_slot_connections`` local connections are served at once; more are closed at once
(``closed_count.slot_full``). Both listeners survive running out of file descriptors: the
accept loop waits and retries, counted (``closed_count.accept_failed``) and logged at most
once a minute, without a traceback.
"""

from __future__ import annotations

import errno
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from bridge.core.errors import BridgeError, DuplicatePeer, Fault, SelfConnection
from bridge.core.events import AddressesLearned, Dropped, OnionsLearned
from bridge.core.kaspa import MAINNET
from bridge.core.onion import OnionAddress
from bridge.core.peers import PeerSelector, Selector, Target, filter_kinds
from bridge.core.policy import ConnectionPolicy, GossipState, OnionPeer, PolicySettings
from bridge.core.relay import (
    Endpoint,
    Relay,
    RelaySettings,
    Side,
    new_upstream_connection,
)
from bridge.core.selection import BookSelector, SelectionPolicy, source_rank
from bridge.net.h2io import h2_client_handshake
from bridge.net.pool import Dialer, DialPolicy, WarmPool
from bridge.net.probe import harvest
from bridge.net.runner import RelayRunner, StallPolicy
from bridge.runtime.stats import (
    BookWriterStats,
    BridgeStats,
    CandidateStats,
    ClosedStats,
    InboundEvents,
    InboundStats,
    RecentErrors,
    RelayStats,
    RewriteStats,
    Totals,
    TrafficStats,
    relay_stats,
)
from bridge.store.book import AddressBook, AddressBookError

#: learned-address batches (each up to one Addresses message) waiting for the book's writer
BOOK_QUEUE = 32

log = logging.getLogger("bridge")

#: kaspad's client gives up if response HEADERS take over 10 s (protocol.md §3.1); answer by 9.
KASPAD_RESPONSE_DEADLINE = 9.0
#: Version.protocolVersion the seeder harvest announces: upstream master accepts only >= 10
#: (protocol.md §5.3) and the Tor fork accepts anything >= 8, so 10 reaches both.
SEED_PROTOCOL_VERSION = 10
#: accept(2) errors that mean "out of resources for now" (descriptors, kernel memory): the
#: listener waits :data:`ACCEPT_RETRY` seconds and tries again
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY = 0.1
#: repeated conditions caused by local connections (cap reached, silent clients, accept
#: errors) are logged at most once per this many seconds, with a count
LOG_EVERY = 60.0


class SilentSlotClient(BridgeError):
    """A local connection to a slot port that sent no gRPC request in time. kaspad sends its
    request as soon as it connects: this is another local process (or a stuck kaspad)."""

    fault = Fault.LOCAL
    action = "closed; no upstream was used and no remote is blamed"


def _book_source(source: str) -> str:
    """A source as the book accepts it (as ``AddressBook.gossip_hook`` writes it)."""
    try:
        source_rank(source)
    except ValueError:
        return ("gossip:" + source)[:200]
    return source


class _Throttled:
    """One log line per ``every`` seconds at most for a repeated event, with how many events
    there were since the last line (a flood of local connections must not flood the log)."""

    def __init__(self, level: int, every: float = LOG_EVERY) -> None:
        self.level = level
        self.every = every
        self._last: float | None = None
        self._since = 0

    def __call__(self, fmt: str, *args: object) -> None:
        self._since += 1
        now = trio.current_time()
        if self._last is not None and now - self._last < self.every:
            return
        more = (f" ({self._since - 1} more in the last {now - self._last:.0f}s)"
                if self._last is not None and self._since > 1 else "")
        log.log(self.level, fmt + more, *args)
        self._last, self._since = now, 0


@dataclass(slots=True)
class BridgeOptions:
    kaspad_p2p: tuple[str, int]
    candidates: list[Target]
    slot_host: str = "127.0.0.1"
    slot_ports: list[int] = field(default_factory=lambda: [16200])
    inbound: tuple[str, int] | None = ("127.0.0.1", 16300)
    dial: DialPolicy = field(default_factory=lambda: DialPolicy(proxy=None))
    pool_size: int = 2
    slot_wait: float = 6.0
    #: seconds for a warm upstream's HTTP/2 handshake, and for its remote to take each write
    #: of the pool while the connection is idle (a remote that stops reading is closed)
    h2_handshake_timeout: float = 30.0
    #: inbound connections relayed to kaspad at once (each holds a kaspad connection); more are
    #: answered UNAVAILABLE. Keep it below kaspad's inbound limit (--maxinpeers, default 128).
    max_inbound: int = 64
    #: inbound connections that have not opened their stream yet (idle HTTP/2, e.g. a remote
    #: bridge's warm pool); when full, the oldest is closed to admit a new one.
    max_pending: int = 64
    #: seconds an inbound connection has to send its HTTP/2 preface
    inbound_handshake_timeout: float = 10.0
    #: inbound connections accepted per second after ``inbound_accept_burst`` (None: unpaced).
    #: Anyone can connect to the onion, and every new connection costs HTTP/2 set-up and a
    #: frame budget's worth of work before it can be closed; pacing accepts keeps a flood of
    #: new connections from starving the relays already running (the rest wait in the
    #: kernel's accept queue; Tor's own onion-service DoS defences sit in front of that)
    inbound_accept_rate: float | None = 20.0
    inbound_accept_burst: int = 64
    #: kaspad's 10 s response-HEADERS deadline, with margin (protocol.md §3.1). A slot's remote must
    #: have answered *and* sent its Version by then (the bridge checks it before kaspad sees it)
    response_deadline: float = KASPAD_RESPONSE_DEADLINE
    #: a slot whose upstream was dropped as a duplicate (node id connected already) takes
    #: another only while this many seconds remain before ``response_deadline`` (time for the
    #: new remote to answer); None: never, kaspad is answered UNAVAILABLE and retries
    refill_margin: float | None = 3.0
    #: seconds a local connection to a slot port has to send its gRPC request (kaspad sends
    #: it at once); one that has not is closed, blamed on the local side, without taking an
    #: upstream
    slot_request_timeout: float = 5.0
    #: local connections to the slot ports at once (None: 4 per slot port, at least 8); more
    #: are closed at once and counted in ``closed_count.slot_full``
    max_slot_connections: int | None = None
    #: a started message from a remote peer must keep flowing (None: never checked)
    stall: StallPolicy | None = field(default_factory=StallPolicy)
    relay: RelaySettings = field(default_factory=RelaySettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    own_onion: OnionPeer | None = None
    network: str = MAINNET.name
    #: which peer networks are dialed (onlynet): "onion", "ipv4", "ipv6"
    onlynet: frozenset[str] = frozenset({"onion", "ipv4", "ipv6"})
    #: persistent address book (SQLite); None: config candidates + gossip kept in memory
    book_path: Path | None = None
    #: seconds between the bridge's own RequestAddresses to ADDRv2 upstreams (None: never)
    refresh_interval: float | None = 600.0
    #: DNS seeders harvested through Tor ("name", port): the exit resolves the name
    seeders: list[tuple[str, int]] = field(default_factory=list)
    #: re-harvest the seeders while the book has fewer usable peers than this
    seed_below: int = 16
    seed_interval: float = 1800.0


@dataclass(slots=True)
class RelayInfo:
    """What `status` shows about one live relay."""

    id: int
    kind: str  # "slot" | "inbound"
    local_port: int
    target: Target | None
    relay: Relay
    started: float

    @property
    def label(self) -> str:
        """The privacy-safe name of the connection: ``slot:<port>`` or ``inbound#<id>``."""
        return f"slot:{self.local_port}" if self.kind == "slot" else f"inbound#{self.id}"

    def stats(self, now: float) -> RelayStats:
        return relay_stats(self.id, self.kind, self.label, self.local_port, self.target,
                           self.relay, self.started, now)


class Bridge:
    def __init__(self, options: BridgeOptions, gossip: GossipState | None = None,
                 dialer: Dialer | None = None, errors: RecentErrors | None = None) -> None:
        self.options = options
        #: recent problems (a relay's closing error goes here; see :mod:`bridge.runtime.stats`)
        self.errors = errors if errors is not None else RecentErrors()
        #: what the connections closed so far relayed (the live ones are added by :meth:`stats`)
        self._closed_totals = Totals()
        self.gossip = gossip or GossipState(own_onion=options.own_onion)
        own = options.own_onion.address if options.own_onion else None
        self.book: AddressBook | None = None
        self.selector: Selector
        if options.book_path is not None:
            options.book_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.book = AddressBook(options.book_path)
            # the pool passes trio.current_time(); the book stores wall-clock seconds
            offset = time.time() - trio.current_time()
            self.selector = BookSelector(
                self.book, options.network,
                SelectionPolicy(kinds=frozenset(options.onlynet),  # type: ignore[arg-type]
                                base_backoff=2.0, max_backoff=60.0),
                own_onion=own, to_wall=lambda t: t + offset)
            for t in options.candidates:
                self.selector.add(t)
        else:
            self.selector = PeerSelector(filter_kinds(options.candidates, options.onlynet),
                                         own_onion=own)
        #: learned addresses on their way to the book, written by a worker thread
        #: (:meth:`_book_writer`): a 2500-entry batch costs the book ~0.1-0.3 s of CPU, which
        #: must not stall every relay and /health. Bounded: when the writer falls behind,
        #: new batches are dropped and counted (the book is a cache; gossip repeats).
        self._book_in, self._book_out = trio.open_memory_channel[
            tuple[list[tuple[str, int]], str, bool]](BOOK_QUEUE)
        self._book_writing = False
        self.book_stats = BookWriterStats()
        #: the writer's thread and the trio thread both count batches
        self._book_stats_lock = threading.Lock()
        self.dialer = dialer or Dialer(options.dial)
        self.pool = WarmPool(self.selector, self.dialer, size=options.pool_size,
                             relay_settings=options.relay,
                             handshake_timeout=options.h2_handshake_timeout,
                             busy=self.gossip.nodes.busy_targets,
                             send_timeout=options.h2_handshake_timeout)
        self.slot_ports: list[int] = []
        self.inbound_port: int | None = None
        self.relays: dict[int, RelayInfo] = {}
        #: inbound connections waiting for their stream, oldest first
        self._pending: dict[int, RelayRunner] = {}
        self.inbound_active = 0  # inbound relays holding a kaspad connection
        self.inbound_stats = InboundEvents()
        self._ids = itertools.count(1)
        #: connections closed, by outcome (see :class:`~bridge.runtime.stats.ClosedStats`)
        self.closed_count = ClosedStats()
        self.slot_connections = 0  # local connections to the slot ports being served
        self._log_full = _Throttled(logging.WARNING)
        self._log_silent = _Throttled(logging.WARNING)
        self._log_accept = _Throttled(logging.WARNING)
        self.started = trio.Event()

    def _retire(self, info: RelayInfo) -> None:
        """A relay closed: its counters go into the totals, its error into the recent errors."""
        try:
            self._closed_totals = self._closed_totals.add(
                info.kind, TrafficStats.of(info.relay.stats()),
                RewriteStats.of(info.relay.policy.counters))
            closed = info.relay.closed
            if closed is not None and closed.error is not None:
                self.errors.add(info.label, closed.error.describe())
        except Exception:  # bookkeeping must never break the relay's cleanup
            log.exception("stats: could not account a closed relay")

    def stats(self) -> BridgeStats:
        """The bridge's counters and its live connections, now."""
        now = trio.current_time()
        relays = tuple(info.stats(now) for info in list(self.relays.values()))
        totals = self._closed_totals
        for r in relays:
            totals = totals.add(r.kind, r.traffic, r.rewrites)
        cands = self.selector.snapshot()
        return BridgeStats(
            up=self.started.is_set(), slot_ports=tuple(self.slot_ports),
            inbound_port=self.inbound_port, pool=self.pool.stats(), dial=self.dialer.stats(),
            closed=self.closed_count,
            inbound=InboundStats(self.inbound_stats, self.inbound_active,
                                 self.options.max_inbound, self.options.max_pending),
            book=self.book.stats() if self.book is not None else None,
            book_writer=self.book_stats,
            candidates=CandidateStats(
                total=len(cands), in_use=sum(1 for c in cands.values() if c.get("in_use")),
                backing_off=sum(1 for c in cands.values()
                                if float(c.get("retry_at") or 0) > now)),
            relays=relays, totals=totals)

    @property
    def max_slot_connections(self) -> int:
        cap = self.options.max_slot_connections
        return cap if cap is not None else max(8, 4 * len(self.options.slot_ports))

    def learned(self, event: OnionsLearned | AddressesLearned) -> None:
        """What a relay's policy learned from gossip (its runner's ``on_learned``). Discovery:
        every onion becomes a candidate; with a book, the entries of one event (one Addresses
        message) are stored together, one book transaction (issue G). IP entries are stored
        only with a book (passive harvest; dialed only if peers.onlynet allows)."""
        onlynet = self.options.onlynet
        if isinstance(event, AddressesLearned):
            if self.book is not None:
                self._store(list(event.endpoints), event.source, poke=bool(onlynet - {"onion"}))
            return
        if "onion" not in onlynet:
            return
        if self.book is None:
            for peer in event.peers:
                self.selector.add(Target(peer.address.host, peer.port))
            self.pool.poke()
            return
        self._store([(p.address.host, p.port) for p in event.peers], _book_source(event.source),
                    poke=True)

    def _store(self, endpoints: list[tuple[str, int]], source: str, *, poke: bool) -> None:
        """Queue learned addresses for the book (written inline when no writer runs, e.g. a
        test calling the gossip hooks of a bridge that is not running)."""
        if not endpoints:
            return
        if not self._book_writing:
            if self._write_batch(endpoints, source) and poke:
                self.pool.poke()
            return
        try:
            self._book_in.send_nowait((endpoints, source, poke))
        except trio.WouldBlock:
            self._count_batch(dropped_batches=1)
            log.debug("address book writer busy: %d addresses from %s not stored",
                      len(endpoints), source)

    def _count_batch(self, **by: int) -> None:
        with self._book_stats_lock:
            self.book_stats = self.book_stats.bump(**by)

    def _write_batch(self, endpoints: list[tuple[str, int]], source: str) -> int:
        """Store one batch; how many entries are new. Runs in the writer's thread."""
        book = self.book
        assert book is not None
        try:
            added = book.learn_many(self.options.network, endpoints, source=source)
        except AddressBookError:  # closed meanwhile (shutdown): it is a cache
            return 0
        except Exception:  # a bug here must not end the daemon (the book is a cache)
            self._count_batch(failed_batches=1)
            log.exception("storing %d learned addresses failed", len(endpoints))
            return 0
        self._count_batch(batches=1)
        return added

    async def _book_writer(self) -> None:
        """Writes learned addresses to the book in a worker thread, one batch at a time (the
        book serialises its calls; a shutdown waits for the batch being written)."""
        try:
            async for endpoints, source, poke in self._book_out:
                # shielded: a batch taken from the queue is written even if the bridge is
                # stopping (run_sync checks for cancellation before it starts the thread, which
                # lost the batch; a write takes well under a second)
                with trio.CancelScope(shield=True):
                    added = await trio.to_thread.run_sync(self._write_batch, endpoints, source)
                if added and poke:
                    self.pool.poke()
        finally:
            self._book_writing = False

    def _drain_book_queue(self) -> None:
        """At shutdown: what was learned and not stored yet is written before the book closes
        (inline: the writer has stopped)."""
        self._book_writing = False
        if self.book is None:
            return
        while True:
            try:
                endpoints, source, _poke = self._book_out.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            self._write_batch(endpoints, source)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._run(task_status)
        finally:
            if self.book is not None:
                self._drain_book_queue()
                self.book.close()

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            for port in self.options.slot_ports:
                listeners = await nursery.start(
                    partial(self._serve, self._slot_handler, port, self.options.slot_host,
                            slot=True))
                self.slot_ports.append(_port_of(listeners))
            if self.options.inbound is not None:
                host, port = self.options.inbound
                listeners = await nursery.start(
                    partial(self._serve, self._inbound_handler, port, host, slot=False))
                self.inbound_port = _port_of(listeners)
            nursery.start_soon(self.pool.run)
            if self.book is not None:
                self._book_writing = True  # batches queue from now on (the writer drains them)
                nursery.start_soon(self._book_writer)
            if self.options.seeders and self.book is not None:
                nursery.start_soon(self._seed_loop)
            log.info("bridge up: slots %s on %s, inbound %s, %d candidates",
                     self.slot_ports, self.options.slot_host, self.inbound_port,
                     len(self.options.candidates))
            self.started.set()
            task_status.started()

    async def _serve(self, handler: Callable[[trio.SocketStream], Awaitable[None]], port: int,
                     host: str, *, slot: bool,
                     task_status: trio.TaskStatus[list[trio.SocketListener]]
                     = trio.TASK_STATUS_IGNORED) -> None:
        """Like :func:`trio.serve_tcp`, with the slot connection cap and quiet, bounded handling
        of accept errors (trio logs each one with a traceback, ten times a second)."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, handler, slot, nursery)
            task_status.started(listeners)

    async def _accept_loop(self, listener: trio.SocketListener,
                           handler: Callable[[trio.SocketStream], Awaitable[None]], slot: bool,
                           nursery: trio.Nursery) -> None:
        what = "slot" if slot else "inbound"
        rate = None if slot else self.options.inbound_accept_rate
        pacer = _Pacer(rate, self.options.inbound_accept_burst) if rate else None
        async with listener:
            while True:
                if pacer is not None and await pacer.wait():
                    self.inbound_stats = self.inbound_stats.bump(accept_paced=1)
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    self.closed_count = self.closed_count.bump(accept_failed=1)
                    self._log_accept("%s listener: accept failed: %s (%s); new connections wait "
                                     "(local resources: raise the open-files limit?)", what,
                                     errno.errorcode.get(exc.errno or 0, exc.errno),
                                     exc.strerror)
                    await trio.sleep(ACCEPT_RETRY)
                    continue
                if slot and self.slot_connections >= self.max_slot_connections:
                    self.closed_count = self.closed_count.bump(slot_full=1)
                    self._log_full("slot ports: %d local connections already (max %d); a new "
                                   "one was closed [%s]", self.slot_connections,
                                   self.max_slot_connections, Fault.LOCAL.value)
                    await trio.aclose_forcefully(stream)
                    continue
                if slot:
                    self.slot_connections += 1
                nursery.start_soon(self._run_handler, handler, stream, slot)

    async def _run_handler(self, handler: Callable[[trio.SocketStream], Awaitable[None]],
                           stream: trio.SocketStream, slot: bool) -> None:
        try:
            await handler(stream)
        finally:
            if slot:
                self.slot_connections -= 1
            await trio.aclose_forcefully(stream)

    async def _seed_loop(self) -> None:
        """DNS seeding without local DNS: each seeder name is dialed *through Tor* as a one-shot
        peer (the exit resolves it and connects to one node), its addresses are harvested into
        the book, and the connection is closed."""
        assert self.book is not None
        while True:
            usable = [e for e in self.book.entries(self.options.network)
                      if e.kind in self.options.onlynet and not e.is_self]
            if len(usable) < self.options.seed_below:
                for host, port in self.options.seeders:
                    await self._harvest_seeder(host, port)
            await trio.sleep(self.options.seed_interval)

    async def _harvest_seeder(self, host: str, port: int) -> None:
        assert self.book is not None
        if self.dialer.gate is not None:
            await self.dialer.gate()
        proxy = self.dialer.tor_proxy()
        if proxy is None:
            log.info("seeder %s:%d skipped: no SOCKS proxy known yet", host, port)
            return
        own = {self.gossip.kaspad_node_id} if self.gossip.kaspad_node_id else set()
        try:
            res = await harvest(host, port, proxy=proxy, network=self.options.network,
                                protocol_version=SEED_PROTOCOL_VERSION, forbidden_ids=own)
        except (BridgeError, OSError, trio.TooSlowError) as exc:
            what = exc.describe() if isinstance(exc, BridgeError) else repr(exc)
            log.info("seeder %s:%d: %s", host, port, what)
            return
        added = self.book.learn_many(self.options.network, res.endpoints, source="seed",
                                     addrv2=False)
        log.info("seeder %s:%d gave %d IPs and %d onions (%d new) in %.1fs", host, port,
                 len(res.ips), len(res.onions), added, res.elapsed)
        self.pool.poke()

    def _policy(self, label: str, conn_label: str) -> ConnectionPolicy:
        return ConnectionPolicy(self.gossip, self.options.policy, remote_label=label,
                                conn_label=conn_label)

    # -- slots ------------------------------------------------------------------------------

    async def _slot_handler(self, stream: trio.SocketStream) -> None:
        local_port = stream.socket.getsockname()[1]
        rid = next(self._ids)
        label = f"slot:{local_port}#{rid}"
        policy = self._policy("remote", label)
        taken: list[Target] = []  # the upstream's target (one at a time)

        async def get_upstream() -> tuple[trio.abc.Stream, Endpoint] | None:
            up = await self.pool.take(self.options.slot_wait)
            if up is None:
                log.warning("%s: no upstream ready within %.1fs; kaspad will retry",
                            label, self.options.slot_wait)
                return None
            taken.append(up.target)
            policy.remote_label = f"peer {up.target}"
            policy.remote_target = up.target
            if up.target.is_onion:
                policy.remote_onion = OnionAddress.parse(up.target.host)
            info.target = up.target
            relay.upstream_authority = up.target.authority
            log.info("%s: kaspad connected, relaying to %s%s", label, up.target,
                     " (instead)" if relay.upstreams_dropped else "")
            return up.stream, up.end

        def on_drop(_dropped: Dropped) -> None:
            """The relay let the upstream go before kaspad saw it: its node id is connected
            already. Not the remote's fault; it is put aside while that connection lasts."""
            if taken:
                self.pool.duplicate(taken.pop())
            info.target = None

        relay = Relay(policy, kaspad_side=Side.DOWN, upstream_authority=b"",
                      settings=self.options.relay, screen=True)
        info = RelayInfo(rid, "slot", local_port, None, relay, trio.current_time())
        self.relays[rid] = info
        runner = RelayRunner(relay, stream, label)
        runner.on_drop = on_drop
        runner.on_learned = self.learned
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._request_deadline, runner, local_port)
                # lazy: an upstream is taken only once kaspad's request is in
                await self._guarded(runner.run(get_upstream, lazy=True,
                                               response_timeout=self.options.response_deadline,
                                               refresh_interval=self.options.refresh_interval,
                                               stall=self.options.stall,
                                               refill_margin=self.options.refill_margin),
                                    label)
                nursery.cancel_scope.cancel()
        finally:
            del self.relays[rid]
            self._retire(info)
            self._finish(runner, policy, taken[-1] if taken else None)

    async def _request_deadline(self, runner: RelayRunner, local_port: int) -> None:
        """Close a local slot connection that sent no gRPC request in time, blamed on the
        local side (the runner's own preface timeout would blame the remote)."""
        timeout = self.options.slot_request_timeout
        await trio.sleep(timeout)
        if not runner.request_seen and not runner.relay.finished:
            runner.fault = SilentSlotClient(
                f"local connection to slot port {local_port} sent no gRPC request within "
                f"{timeout:.1f}s (kaspad sends it at once: another local process?)")
            runner.abort("no request")

    @staticmethod
    async def _guarded(coro: Coroutine[Any, Any, None], label: str) -> None:
        """A bug in one connection's handling must never take the listeners down with it."""
        try:
            await coro
        except Exception:
            log.exception("%s: internal error; connection closed", label)

    def _finish(self, runner: RelayRunner, policy: ConnectionPolicy, target: Target | None) -> None:
        if self.gossip.nodes.release(policy) is not None:
            self.pool.poke()  # that node may be dialed again
        closed = runner.closed
        err = closed.error if closed is not None else None
        err = err or runner.fault
        if (runner.relay.kaspad_side is Side.DOWN and target is None
                and not runner.request_seen):
            # A local slot connection that never asked for anything: no upstream was taken.
            self.closed_count = self.closed_count.bump(slot_no_request=1)
            if isinstance(err, SilentSlotClient):
                self._log_silent("%s closed: %s", runner.label, err.describe())
            else:  # connected and closed (a port scan, a TCP health check): not worth a line
                log.debug("%s: local connection closed before any request", runner.label)
            return
        runner.log_close()
        if isinstance(err, DuplicatePeer):
            # kaspad has that node connected already: nobody's fault
            self.closed_count = self.closed_count.bump(refused=1)
            if target is not None:
                self.pool.duplicate(target)
            else:
                self.inbound_stats = self.inbound_stats.bump(refused_duplicate=1)
            return
        handshake_ok = bool(policy.remote.node_id) and err is None
        if err is None and runner.relay.response_started:
            self.closed_count = self.closed_count.bump(ok=1)
        elif runner.relay.response_started or err is not None:
            self.closed_count = self.closed_count.bump(error=1)
        else:
            self.closed_count = self.closed_count.bump(refused=1)
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
            self.pool.done_with(target, ok=ok, is_self=is_self,
                                addrv2=policy.remote.addrv2 if policy.remote.node_id else None)

    # -- inbound ----------------------------------------------------------------------------

    async def _inbound_handler(self, stream: trio.SocketStream) -> None:
        """One Tor connection to the onion. It may hold an idle HTTP/2 connection (a remote
        bridge's warm pool does) without costing a kaspad connection: kaspad is dialed only once
        the peer opens its MessageStream. Bounded: ``max_pending`` idle connections (the oldest
        is closed for a newcomer), ``inbound_handshake_timeout`` for the HTTP/2 preface, and
        ``max_inbound`` relayed at once (more are answered UNAVAILABLE)."""
        rid = next(self._ids)
        label = f"inbound#{rid}"
        host, port = self.options.kaspad_p2p
        policy = self._policy(f"inbound peer #{rid}", label)
        relay = Relay(policy, kaspad_side=Side.UP,
                      upstream_authority=f"{host}:{port}".encode(), settings=self.options.relay)
        info = RelayInfo(rid, "inbound", self.inbound_port or 0, None, relay, trio.current_time())
        runner = RelayRunner(relay, stream, label)
        runner.on_learned = self.learned
        self.inbound_stats = self.inbound_stats.bump(accepted=1)
        active = False

        async def get_kaspad() -> tuple[trio.abc.Stream, Endpoint] | None:
            nonlocal active
            self._pending.pop(rid, None)
            if self.inbound_active >= self.options.max_inbound:
                self.inbound_stats = self.inbound_stats.bump(refused_full=1)
                log.warning("%s: %d inbound connections relayed already (max_inbound); "
                            "refusing", label, self.inbound_active)
                runner.abort(f"this bridge relays {self.inbound_active} inbound peers already; "
                             "try later")
                return None
            self.inbound_active += 1
            active = True
            try:
                with trio.fail_after(5):
                    up = await trio.open_tcp_stream(host, port)
            except (OSError, trio.TooSlowError) as exc:
                log.warning("%s: kaspad at %s:%d unreachable (%r); refusing the Tor peer",
                            label, host, port, exc)
                return None
            conn = new_upstream_connection(self.options.relay, remote=False)  # to kaspad
            try:
                await h2_client_handshake(up, conn, 10)
            except (BridgeError, trio.TooSlowError, OSError, trio.BrokenResourceError) as exc:
                log.warning("%s: kaspad did not complete HTTP/2 (%s)", label, exc)
                await up.aclose()
                return None
            return up, conn

        self.relays[rid] = info
        if len(self._pending) >= max(self.options.max_pending, 1):
            oldest_id = next(iter(self._pending))
            oldest = self._pending.pop(oldest_id)
            self.inbound_stats = self.inbound_stats.bump(evicted=1)
            log.info("inbound#%d: closed to admit a new connection (%d idle inbound "
                     "connections, max_pending)", oldest_id, self.options.max_pending)
            oldest.abort("too many idle inbound connections")
        self._pending[rid] = runner
        try:
            opts = self.options
            await self._guarded(runner.run(get_kaspad, response_timeout=opts.response_deadline,
                                           refuse_message="kaspad is not reachable through "
                                           "this bridge", lazy=True,
                                           preface_timeout=opts.inbound_handshake_timeout,
                                           stall=opts.stall), label)
        finally:
            self._pending.pop(rid, None)
            if active:
                self.inbound_active -= 1
            del self.relays[rid]
            self._retire(info)
            self._finish(runner, policy, None)


class _Pacer:
    """Token bucket for accepts: ``burst`` at once, then ``rate`` per second."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(max(burst, 1))
        self.tokens = self.burst
        self.last = trio.current_time()

    def _refill(self) -> None:
        now = trio.current_time()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now

    async def wait(self) -> bool:
        """Take a token, sleeping until there is one; whether it had to wait."""
        self._refill()
        waited = self.tokens < 1
        if waited:
            await trio.sleep((1 - self.tokens) / self.rate)
            self._refill()
        self.tokens -= 1
        return waited


def _port_of(listeners: list[trio.SocketListener]) -> int:
    port: int = listeners[0].socket.getsockname()[1]
    return port
