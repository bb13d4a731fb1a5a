"""The bridge's statistics as typed, frozen values, and the one :class:`Snapshot` built from them.

Every component reports its own ``stats()`` (:class:`~bridge.net.pool.PoolStats`,
:class:`~bridge.net.pool.DialStats`, :class:`~bridge.store.book.BookStats`,
:class:`~bridge.tor.supervisor.TorStats`, :class:`BridgeStats` with a :class:`RelayStats` per
live connection); the daemon gathers them into a :class:`Snapshot`. ``/status`` (JSON), the
``status`` screen and ``/metrics`` are all rendered from a Snapshot
(:func:`bridge.runtime.status.to_json`, :func:`bridge.runtime.observe.metric_families`), so they
show the same facts, and each can be tested from a hand-built Snapshot without a running daemon.

Recent errors are typed records in a bounded ring (:class:`RecentErrors`): the bridge appends a
relay's closing error itself; warnings known only as log lines reach it through a small log
handler (:class:`ErrorLogHandler`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from bridge.core.counters import Counters
from bridge.core.histogram import HistogramSnapshot
from bridge.core.peers import Target
from bridge.core.relay import Relay
from bridge.net.pool import DialStats, PoolStats
from bridge.store.book import BookStats
from bridge.tor.supervisor import TorStats, TorStatus

#: version of the ``/status`` JSON layout
SNAPSHOT_VERSION = 1
KINDS = ("slot", "inbound")
DIRECTIONS = ("from_kaspad", "from_remote")
#: how many recent errors a snapshot carries
MAX_RECENT_ERRORS = 20


@dataclass(frozen=True, slots=True)
class RewriteStats(Counters):
    """Policy actions on relayed messages, and the bridge's own address refreshes."""

    onions_added: int = 0
    onions_removed: int = 0
    invalid_removed: int = 0
    dropped: int = 0
    versions_rewritten: int = 0
    refreshes: int = 0  # the bridge's own RequestAddresses to the remote

    @classmethod
    def of(cls, counters: Mapping[str, int]) -> RewriteStats:
        """From a connection policy's counters (names as these fields)."""
        return cls(**{f.name: int(counters.get(f.name, 0)) for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class TrafficStats(Counters):
    """Bytes and gRPC messages relayed, by the side that sent them."""

    bytes_from_kaspad: int = 0
    bytes_from_remote: int = 0
    messages_from_kaspad: int = 0
    messages_from_remote: int = 0

    @classmethod
    def of(cls, relay_stats: Mapping[str, int]) -> TrafficStats:
        """From :meth:`bridge.core.relay.Relay.stats`."""
        return cls(**{f.name: int(relay_stats[f.name]) for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class RelayStats:
    """One live connection. ``label`` (``slot:<port>`` / ``inbound#<id>``) is privacy-safe;
    ``peer`` and ``user_agent`` are not (``/status`` only, never ``/metrics``)."""

    id: int
    kind: str  # "slot" | "inbound"
    label: str
    local_port: int
    peer: str | None
    user_agent: str | None
    handshake: bool
    age: float
    traffic: TrafficStats
    buffered: int  # bytes held by the relay
    rewrites: RewriteStats
    closing: str | None
    #: the upstream was dialed directly, not through Tor (hybrid mode's IP peers)
    direct: bool = False


def relay_stats(id: int, kind: str, label: str, local_port: int, target: Target | None,
                relay: Relay, started: float, now: float, *, direct: bool = False
                ) -> RelayStats:
    """The stats of one live relay (:class:`bridge.runtime.bridge.RelayInfo`)."""
    st = relay.stats()
    remote = relay.policy.remote
    closed = relay.closed
    return RelayStats(
        id=id, kind=kind, label=label, local_port=local_port,
        peer=str(target) if target is not None else None,
        user_agent=_printable(remote.user_agent) if remote.user_agent else None,
        handshake=bool(remote.node_id), age=round(max(0.0, now - started), 1),
        traffic=TrafficStats.of(st), buffered=st["buffered"],
        rewrites=RewriteStats.of(relay.policy.counters),
        closing=closed.reason if closed is not None else None, direct=direct)


def _printable(text: str, limit: int = 64) -> str:
    """A remote-controlled string made safe for a terminal and bounded."""
    out = "".join(c if c.isprintable() else "?" for c in text)
    return out if len(out) <= limit else out[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Totals:
    """Everything relayed since the start: closed connections and the live ones."""

    slot: TrafficStats = TrafficStats()
    inbound: TrafficStats = TrafficStats()
    rewrites: RewriteStats = RewriteStats()

    def add(self, kind: str, traffic: TrafficStats, rewrites: RewriteStats) -> Totals:
        if kind == "inbound":
            return Totals(self.slot, self.inbound + traffic, self.rewrites + rewrites)
        return Totals(self.slot + traffic, self.inbound, self.rewrites + rewrites)

    def traffic(self, kind: str) -> TrafficStats:
        return self.inbound if kind == "inbound" else self.slot


@dataclass(frozen=True, slots=True)
class InboundEvents(Counters):
    """Inbound (onion) connections: accepted, evicted while idle (max_pending), refused
    (max_connections), refused because the node is connected to kaspad already, accepts that
    waited for the pacer."""

    accepted: int = 0
    evicted: int = 0
    refused_full: int = 0
    refused_duplicate: int = 0
    accept_paced: int = 0


@dataclass(frozen=True, slots=True)
class InboundStats:
    events: InboundEvents
    active: int  # inbound relays holding a kaspad connection
    max_active: int
    max_pending: int


@dataclass(frozen=True, slots=True)
class ClosedStats(Counters):
    """Connections closed, by outcome. ``slot_no_request``: local slot connections closed
    before their gRPC request (no upstream used); ``slot_full``: closed at once,
    ``max_slot_connections`` reached; ``accept_failed``: accept(2) failures for lack of
    descriptors or memory (retried)."""

    ok: int = 0
    error: int = 0
    refused: int = 0
    slot_no_request: int = 0
    slot_full: int = 0
    accept_failed: int = 0


@dataclass(frozen=True, slots=True)
class BookWriterStats(Counters):
    """Learned-address batches: stored, dropped while the writer was behind, failed."""

    batches: int = 0
    dropped_batches: int = 0
    failed_batches: int = 0


@dataclass(frozen=True, slots=True)
class CandidateStats:
    total: int = 0
    in_use: int = 0
    backing_off: int = 0


@dataclass(frozen=True, slots=True)
class SyncStats:
    """``peers.sync_first``: the phase, what kaspad last said, the switch. Times are seconds
    ago (``*_ago``) or from now (``switch_in``), None when not applicable."""

    phase: str  # "syncing" | "tor"
    kaspad_synced: bool | None
    reason: str
    switched_ago: float | None
    last_answer_ago: float | None
    rpc: str
    rpc_problem: str
    switch_in: float | None
    #: slot relays and warm connections on direct upstreams closed at the switch
    closed_direct_relays: int = 0
    closed_direct_warm: int = 0


@dataclass(frozen=True, slots=True)
class BridgeStats:
    """What :meth:`bridge.runtime.bridge.Bridge.stats` reports."""

    up: bool
    slot_ports: tuple[int, ...]
    inbound_port: int | None
    pool: PoolStats
    dial: DialStats
    closed: ClosedStats
    inbound: InboundStats
    book: BookStats | None
    book_writer: BookWriterStats
    candidates: CandidateStats
    relays: tuple[RelayStats, ...]
    totals: Totals  # closed + live connections
    #: gRPC message latency inside the bridge (first byte in to last byte handed on), by
    #: (kind, direction): ("slot" | "inbound", "from_kaspad" | "from_remote")
    relay_latency: Mapping[tuple[str, str], HistogramSnapshot] = field(default_factory=dict)
    #: peers.sync_first's switch (None: not configured)
    sync: SyncStats | None = None


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """A recent problem: wall-clock time of its last occurrence, where, what, how often."""

    at: float | None
    source: str
    message: str
    count: int = 1


class RecentErrors:
    """A bounded ring of :class:`ErrorRecord`; a repeat of the newest record only bumps it."""

    def __init__(self, limit: int = MAX_RECENT_ERRORS) -> None:
        self.limit = limit
        self._items: deque[ErrorRecord] = deque()

    def add(self, source: str, message: str, at: float | None = None) -> None:
        now = time.time() if at is None else at
        message = message[:500]
        last = self._items[-1] if self._items else None
        if last is not None and (last.source, last.message) == (source, message):
            self._items[-1] = ErrorRecord(now, source, message, last.count + 1)
            return
        self._items.append(ErrorRecord(now, source, message))
        while len(self._items) > self.limit:
            self._items.popleft()

    def records(self) -> tuple[ErrorRecord, ...]:
        return tuple(self._items)


class ErrorLogHandler(logging.Handler):
    """Feeds warnings (and the warm pool's dial failures, logged at INFO) into a
    :class:`RecentErrors` ring: many problems are only known where they are logged."""

    def __init__(self, errors: RecentErrors) -> None:
        super().__init__(logging.INFO)
        self.errors = errors

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING and record.name != "bridge.pool":
            return
        try:
            self.errors.add(record.name.removeprefix("bridge.") or "bridge",
                            record.getMessage(), at=record.created)
        except Exception:  # pragma: no cover - never let logging fail
            pass


@dataclass(frozen=True, slots=True)
class Health:
    """The ``/health`` verdict: ``reasons`` lists what is wrong."""

    ok: bool
    reasons: tuple[str, ...] = ()


def health(*, listeners_up: bool, tor: TorStatus | None, needs_tor: bool,
           needs_onion: bool) -> Health:
    """Listeners up and, when the mode needs Tor (``needs_tor``), Tor usable and (with
    ``needs_onion``, i.e. ``tor.listen_onion``) the onion published."""
    reasons: list[str] = []
    if not listeners_up:
        reasons.append("listeners not up yet")
    if tor is not None:
        if needs_tor and not tor.usable:
            what = f"tor not usable (state {tor.state.value}"
            if tor.bootstrap is not None:
                what += f", bootstrap {tor.bootstrap.progress}%"
            reasons.append(what + ")")
        if needs_onion and not tor.onion_published:
            reasons.append("onion service not published")
    return Health(not reasons, tuple(reasons))


@dataclass(frozen=True, slots=True)
class Listeners:
    up: bool
    slot_host: str
    slot_ports: tuple[int, ...]
    inbound: str | None  # "host:port" once bound
    kaspad_p2p: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything ``/status``, ``/metrics`` and the ``status`` screen show, at one moment."""

    bridge_version: str
    time: float  # wall clock
    uptime: float | None
    network: str
    mode: str
    health: Health
    tor: TorStats | None  # None: no Tor control configured (not monitored)
    own_onion: str | None
    known_onions: int
    listeners: Listeners
    pool_size: int  # configured (the pool's own size once the bridge exists)
    bridge: BridgeStats | None  # None before the bridge is built
    recent_errors: tuple[ErrorRecord, ...] = ()
    #: tor.listen_onion: the onion service is meant to be published
    listen_onion: bool = False
    #: seconds from the daemon's start to its first warm upstream (None: none yet)
    first_warm_seconds: float | None = None
    #: each time Tor became usable (at startup, after each loss): seconds to the next warm
    #: upstream (None: no Tor monitored)
    tor_to_warm: HistogramSnapshot | None = None

    @property
    def relays(self) -> tuple[RelayStats, ...]:
        return self.bridge.relays if self.bridge is not None else ()

    @property
    def slots_filled(self) -> int:
        """Slot ports with kaspad connected and relayed to a peer."""
        return len({r.local_port for r in self.relays
                    if r.kind == "slot" and r.peer is not None
                    and r.local_port in self.listeners.slot_ports})
