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

The service is in four more modules, re-exported here: its options
(:mod:`bridge.runtime.bridge_options`), the listeners and their accept loop
(:mod:`bridge.runtime.bridge_listen`), the slot and inbound connection handlers
(:mod:`bridge.runtime.bridge_relays`), and the learned-address book writer with DNS seeding
(:mod:`bridge.runtime.bridge_book`). :class:`Bridge` keeps the state they share, its stats and
its run loop.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import replace
from functools import partial

import trio

from bridge.core.events import AddressesLearned, OnionsLearned
from bridge.core.histogram import RELAY_BUCKETS, Histogram
from bridge.core.legs import RelayTiming
from bridge.core.peers import PeerSelector, Selector, filter_kinds
from bridge.core.policy import GossipState
from bridge.core.selection import BookSelector, SelectionPolicy
from bridge.net.pool import Dialer, WarmPool
from bridge.net.runner import RelayRunner
from bridge.runtime.bridge_book import (
    BOOK_QUEUE,
    SEED_PROTOCOL_VERSION,
    book_writer,
    drain_book_queue,
    seed_loop,
)
from bridge.runtime.bridge_book import learned as _learned
from bridge.runtime.bridge_listen import ACCEPT_RETRY, LOG_EVERY, _port_of, _Throttled, serve
from bridge.runtime.bridge_options import KASPAD_RESPONSE_DEADLINE, BridgeOptions
from bridge.runtime.bridge_relays import (
    RelayInfo,
    SilentSlotClient,
    inbound_handler,
    slot_handler,
)
from bridge.runtime.bridge_sync import SyncFirst, sync_first_loop
from bridge.runtime.stats import (
    DIRECTIONS,
    KINDS,
    BookWriterStats,
    BridgeStats,
    CandidateStats,
    ClosedStats,
    InboundEvents,
    InboundStats,
    RecentErrors,
    RewriteStats,
    Totals,
    TrafficStats,
)
from bridge.store.book import AddressBook

__all__ = [
    "ACCEPT_RETRY",
    "BOOK_QUEUE",
    "KASPAD_RESPONSE_DEADLINE",
    "LOG_EVERY",
    "SEED_PROTOCOL_VERSION",
    "Bridge",
    "BridgeOptions",
    "RelayInfo",
    "SilentSlotClient",
]

log = logging.getLogger("bridge")


class Bridge:
    def __init__(self, options: BridgeOptions, gossip: GossipState | None = None,
                 dialer: Dialer | None = None, errors: RecentErrors | None = None) -> None:
        self.options = options
        #: recent problems (a relay's closing error goes here; see :mod:`bridge.runtime.stats`)
        self.errors = errors if errors is not None else RecentErrors()
        #: what the connections closed so far relayed (the live ones are added by :meth:`stats`)
        self._closed_totals = Totals()
        #: message relay latency by connection kind (slot, inbound), kept by the relays
        #: themselves (:class:`~bridge.core.legs.RelayTiming`); time.perf_counter is read twice
        #: per message (~60 ns a read, trio.current_time ~330 ns)
        self.timing = {kind: RelayTiming(time.perf_counter, Histogram(RELAY_BUCKETS),
                                         Histogram(RELAY_BUCKETS)) for kind in KINDS}
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
        #: (:func:`~bridge.runtime.bridge_book.book_writer`): a 2500-entry batch costs the book
        #: ~0.1-0.3 s of CPU, which must not stall every relay and /health. Bounded: when the
        #: writer falls behind, new batches are dropped and counted (the book is a cache; gossip
        #: repeats).
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
        #: onion peers closed for their own fault or refused before kaspad answered: one line
        #: per 10 s at most, with a count
        self._log_inbound_refused = _Throttled(logging.INFO, every=10.0)
        self.started = trio.Event()
        if options.sync_first is not None:  # nothing until kaspad's RPC answered once
            self.pick_kinds(frozenset())
        #: peers.sync_first's switch (None: not configured), created when the bridge runs
        self.sync: SyncFirst | None = None

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
            relays=relays, totals=totals,
            relay_latency={(kind, direction): getattr(t, direction).snapshot()
                           for kind, t in self.timing.items() for direction in DIRECTIONS},
            sync=self.sync.stats(now) if self.sync is not None else None)

    @property
    def max_slot_connections(self) -> int:
        cap = self.options.max_slot_connections
        return cap if cap is not None else max(8, 4 * len(self.options.slot_ports))

    def pick_kinds(self, kinds: frozenset[str]) -> None:
        """Pick only candidates of these peer networks from now on (``peers.sync_first``: IP
        peers while kaspad syncs, then every network of ``onlynet``)."""
        sel = self.selector
        if isinstance(sel, BookSelector):
            sel.policy = replace(sel.policy, kinds=kinds)  # type: ignore[arg-type]
        elif isinstance(sel, PeerSelector):
            sel.kinds = kinds
        self.pool.poke()

    def learned(self, event: OnionsLearned | AddressesLearned) -> None:
        """What a relay's policy learned from gossip (its runner's ``on_learned``): onions
        become candidates, addresses go to the book (:func:`bridge.runtime.bridge_book.learned`)."""
        _learned(self, event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._run(task_status)
        finally:
            if self.book is not None:
                drain_book_queue(self)
                self.book.close()

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            for port in self.options.slot_ports:
                listeners = await nursery.start(
                    partial(serve, self, partial(slot_handler, self), port,
                            self.options.slot_host, slot=True))
                self.slot_ports.append(_port_of(listeners))
            if self.options.inbound is not None:
                host, port = self.options.inbound
                listeners = await nursery.start(
                    partial(serve, self, partial(inbound_handler, self), port, host, slot=False))
                self.inbound_port = _port_of(listeners)
            nursery.start_soon(self.pool.run)
            if self.book is not None:
                self._book_writing = True  # batches queue from now on (the writer drains them)
                nursery.start_soon(book_writer, self)
            if self.options.seeders and self.book is not None:
                nursery.start_soon(seed_loop, self)
            if self.options.sync_first is not None:
                self.sync = SyncFirst(self.options.sync_first, trio.current_time())
                nursery.start_soon(sync_first_loop, self, self.sync)
            log.info("bridge up: slots %s on %s, inbound %s, %d candidates",
                     self.slot_ports, self.options.slot_host, self.inbound_port,
                     len(self.options.candidates))
            self.started.set()
            task_status.started()
