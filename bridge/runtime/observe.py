"""Observability: Prometheus ``/metrics``, ``/health`` and ``/status`` on a loopback HTTP port,
and optionally the address-free ``/metrics`` alone on a port beyond loopback.

Enabled with ``metrics.listen = "127.0.0.1:9464"`` (and ``metrics.public_listen``). The server is
a deliberately tiny HTTP/1.1 server on trio: GET/HEAD only, one request per connection
(``Connection: close``), a bounded request head, a read deadline and a cap on concurrent
connections.

* ``/metrics`` — Prometheus text format, rendered at scrape time (no background polling) from
  the same :class:`~bridge.runtime.stats.Snapshot` as ``/status`` (:func:`metric_families`),
  plus prometheus_client's process, platform and GC collectors (``process_*``,
  ``python_info``, ``python_gc_*``). **Privacy**: no label ever carries a remote address, an
  onion address or a per-connection id: series are totals, gauges and histograms by bounded
  label sets (kind, direction, outcome, reason, ...), so the series count does not grow with
  connections, and the output can leave the host. The own onion is not exported either (a
  central Prometheus would otherwise link this host to its onion).
* ``/health`` — 200 ``{"status": "ok"}`` when the listeners are up and, in tor-only mode or with
  ``tor.listen_onion``, Tor is usable (and the onion published); else 503 with the reasons.
* ``/status`` — the snapshot as JSON (:func:`bridge.runtime.status.to_json`; used by
  ``kaspa-tor-bridge status``).
  It names peers and the own onion, which is why this server refuses non-loopback addresses and
  any ``Host`` header that is not a loopback name (DNS-rebinding from a local browser).

The **public** server (``public=True``, ``metrics.public_listen``) may bind any address and
serves ``/metrics`` and a bare ``/health`` (status code and ``ok``/``unhealthy``, no reasons)
only; every other path, ``/status`` included, is 404 there, whatever the ``Host`` header.

The server knows nothing of the daemon: it is handed a :class:`SnapshotSource` (the wiring
layer, :mod:`bridge.runtime.service`, hands it the daemon). Neither the control password nor
the onion key is reachable from here: a snapshot holds
:class:`~bridge.tor.supervisor.TorStatus` and the components' counters only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import platform
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

import trio
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bridge.core.errors import BridgeError, Fault
from bridge.core.histogram import DIAL_BUCKETS, RELAY_BUCKETS, WARM_BUCKETS, HistogramSnapshot
from bridge.core.peers import hostport
from bridge.net.pool import DIAL_OUTCOMES, DIAL_ROUTES
from bridge.runtime.stats import DIRECTIONS, KINDS, Health, Snapshot, Totals
from bridge.runtime.status import to_json
from bridge.tor.supervisor import TorState

log = logging.getLogger("bridge.runtime.observe")

MAX_REQUEST_HEAD = 8192
READ_TIMEOUT = 5.0
MAX_CONNECTIONS = 16
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SnapshotSource(Protocol):
    """What the server reads at request time (the daemon)."""

    def snapshot(self) -> Snapshot: ...

    def health(self) -> Health: ...


class ObserveError(BridgeError):
    fault = Fault.LOCAL
    action = "startup aborted"


def check_loopback(host: str) -> None:
    """Refuse a non-loopback listen address: /status names peers and the own onion."""
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ObserveError(
            f"metrics.listen = {host!r} is not a loopback address; the metrics/status endpoint "
            "shows peers and the own onion and is only served on loopback (e.g. "
            "\"127.0.0.1:9464\"); to scrape /metrics from another host, set "
            "metrics.public_listen, which serves only the address-free /metrics and /health")


# ------------------------------------------------------------------------ Prometheus


def _histogram(name: str, doc: str, labels: list[str],
               series: Mapping[tuple[str, ...], HistogramSnapshot | None],
               bounds: tuple[float, ...]) -> HistogramMetricFamily:
    """A histogram family with one series per label tuple (each present, empty or not)."""
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for key, h in series.items():
        if h is None:
            h = HistogramSnapshot.empty(bounds)
        fam.add_metric(list(key), h.cumulative(), sum_value=h.sum)
    return fam


def metric_families(snap: Snapshot) -> Iterator[Metric]:
    """``/metrics`` for a snapshot. Labels never carry remote or onion addresses, nor a
    per-connection value: every label set is bounded by the code or the configuration."""

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, value=value)

    build = GaugeMetricFamily("ktb_build_info", "Bridge version, Python version, Kaspa network "
                              "and mode (always 1)", labels=["version", "python", "network",
                                                             "mode"])
    build.add_metric([snap.bridge_version, platform.python_version(), snap.network, snap.mode],
                     1)
    yield build
    info = GaugeMetricFamily("ktb_info", "DEPRECATED, removed in the next release: use "
                             "ktb_build_info", labels=["version", "network", "mode"])
    info.add_metric([snap.bridge_version, snap.network, snap.mode], 1)
    yield info
    yield gauge("ktb_healthy", "1 when /health answers 200", 1 if snap.health.ok else 0)
    bridge = snap.bridge
    yield gauge("ktb_listeners_up", "1 when the slot and inbound listeners are bound",
                1 if snap.listeners.up else 0)
    yield gauge("ktb_uptime_seconds", "Seconds since the daemon started", snap.uptime or 0.0)
    if snap.first_warm_seconds is not None:
        yield gauge("ktb_first_warm_upstream_seconds", "Seconds from the daemon's start to its "
                    "first warm upstream (absent until then)", snap.first_warm_seconds)

    # Tor
    yield gauge("ktb_tor_listen_onion", "1 when tor.listen_onion is set (the onion service "
                "should be published)", 1 if snap.listen_onion else 0)
    yield gauge("ktb_tor_monitored", "1 when the bridge has a Tor control connection "
                "configured", 1 if snap.tor is not None else 0)
    if snap.tor is not None:
        st = snap.tor.status
        yield gauge("ktb_tor_bootstrap_progress", "Tor bootstrap progress (0-100)",
                    st.bootstrap.progress if st.bootstrap is not None else 0)
        yield gauge("ktb_tor_usable", "1 when Tor is connected and bootstrapped",
                    1 if st.usable else 0)
        yield gauge("ktb_tor_onion_published", "1 when the onion service is published",
                    1 if st.onion_published else 0)
        yield gauge("ktb_tor_onion_pow", "1 when the published onion has tor's proof-of-work "
                    "defence on", 1 if st.onion_published and st.onion_pow else 0)
        state = GaugeMetricFamily("ktb_tor_state", "Tor supervisor state (1 = current)",
                                  labels=["state"])
        for ts in TorState:
            state.add_metric([ts.value], 1 if st.state is ts else 0)
        yield state
        for name, doc, value in (
            ("ktb_tor_connects", "Successful Tor control connections", st.connects),
            ("ktb_tor_reconnects", "Tor control reconnections after a loss", st.reconnects),
            ("ktb_tor_restarts", "Tor restarts seen (new PID after a reconnect)",
             st.restarts_seen),
            ("ktb_tor_connection_losses", "Tor control connections lost", st.connection_losses),
            ("ktb_tor_connect_failures", "Failed Tor control connection attempts",
             st.attempts_failed),
            ("ktb_tor_hs_desc_uploads", "Onion service descriptor uploads", st.hs_desc_uploaded),
            ("ktb_tor_hs_desc_upload_failures", "Onion service descriptor upload failures",
             st.hs_desc_upload_failures),
            ("ktb_tor_circuits_failed", "Tor circuits that failed", st.circuits_failed),
            ("ktb_tor_events_dropped", "Tor control events dropped (buffer full)",
             st.events_dropped),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        if st.last_recovery_seconds is not None:
            yield gauge("ktb_tor_last_recovery_seconds",
                        "Seconds from the last Tor loss to the onion being back",
                        st.last_recovery_seconds)

        if snap.tor_to_warm is not None:
            yield _histogram("ktb_tor_usable_to_warm_seconds", "Seconds from Tor becoming "
                             "usable (at startup and after each loss, with no upstream warm) "
                             "to the next warm upstream", [], {(): snap.tor_to_warm},
                             WARM_BUCKETS)

    # Slots, pool, dialing
    relays = snap.relays
    yield gauge("ktb_slots", "Configured kaspad slots", len(snap.listeners.slot_ports))
    yield gauge("ktb_slots_filled", "Slots with kaspad connected and relayed to a peer",
                snap.slots_filled)
    yield gauge("ktb_inbound_connections", "Live inbound (onion) connections",
                sum(1 for r in relays if r.kind == "inbound"))
    yield gauge("ktb_gossip_known_onions", "Onion peers learned from gossip", snap.known_onions)
    if bridge is not None:
        yield gauge("ktb_pool_size", "Warm pool target size", bridge.pool.size)
        yield gauge("ktb_pool_ready", "Warm upstream connections ready", bridge.pool.ready_now)
        ev = CounterMetricFamily("ktb_pool_events", "Warm pool events (duplicates: "
                                 "upstreams not handed to kaspad, their node is "
                                 "connected already)", labels=["event"])
        for k, v in bridge.pool.events.items():
            ev.add_metric([k], v)
        yield ev
        yield CounterMetricFamily("ktb_dials", "Upstream dial attempts", value=bridge.dial.dials)
        fails = CounterMetricFamily("ktb_dial_failures", "Upstream dial failures by fault",
                                    labels=["reason"])
        for reason, v in bridge.dial.failures.items():
            if v or reason in ("tor", "local", "remote"):
                fails.add_metric([reason], v)
        yield fails
        durations = bridge.dial.durations
        yield _histogram("ktb_dial_duration_seconds", "Upstream dial durations (SOCKS5 "
                         "through Tor, or direct in hybrid), by route and outcome",
                         ["route", "outcome"],
                         {(r, o): durations.get((r, o)) for r in DIAL_ROUTES
                          for o in DIAL_OUTCOMES},
                         DIAL_BUCKETS)
        closed = CounterMetricFamily("ktb_relays_closed", "Relays closed, by outcome",
                                     labels=["outcome"])
        for k, v in bridge.closed.items():
            closed.add_metric([k], v)
        yield closed
        inb = CounterMetricFamily("ktb_inbound_events", "Inbound (onion) connections: "
                                  "accepted, evicted while idle (max_pending), refused "
                                  "(max_connections), refused because the node is "
                                  "connected to kaspad already", labels=["event"])
        for k, v in bridge.inbound.events.items():
            inb.add_metric([k], v)
        yield inb
        book = bridge.book
        if book is not None:
            yield CounterMetricFamily("ktb_book_errors", "Address book operations that "
                                      "failed (disk full, read-only, I/O error)",
                                      value=book.errors)
            yield gauge("ktb_book_failing", "1 while address book writes are failing",
                        1 if book.failing else 0)
            entries = CounterMetricFamily(
                "ktb_book_learned_refused", "Learned addresses not stored (not_public, "
                "dropped: over their source group's quota) or evicted", labels=["reason"])
            for k, v in book.learned.items():
                entries.add_metric([k], v)
            yield entries
            batches = CounterMetricFamily(
                "ktb_book_batches", "Learned-address batches by outcome (stored, dropped "
                "while the writer was behind, failed)", labels=["outcome"])
            for k, v in bridge.book_writer.items():
                batches.add_metric([k], v)
            yield batches
        if bridge.sync is not None:
            phase = GaugeMetricFamily(
                "ktb_sync_phase", "peers.sync_first: 1 for the current phase (syncing: IP peers "
                "dialed directly while kaspad syncs; tor: Tor only, for good)", labels=["phase"])
            for name in ("syncing", "tor"):
                phase.add_metric([name], 1 if bridge.sync.phase == name else 0)
            yield phase
            yield gauge("ktb_sync_kaspad_synced", "peers.sync_first: kaspad's last answer "
                        "(1 synced, 0 syncing, -1 unknown: its RPC gave no usable answer)",
                        {True: 1, False: 0, None: -1}[bridge.sync.kaspad_synced])
        yield gauge("ktb_slots_direct", "Slot relays on an upstream dialed directly (not "
                    "through Tor)", sum(1 for r in relays if r.kind == "slot" and r.direct))
        yield gauge("ktb_candidates", "Known upstream candidates", bridge.candidates.total)
        yield gauge("ktb_candidates_backing_off", "Candidates waiting for a retry",
                    bridge.candidates.backing_off)

    # Live connections, aggregated by kind (never one series per connection)
    live = GaugeMetricFamily("ktb_relays_live", "Live relayed connections", labels=["kind"])
    buf = GaugeMetricFamily("ktb_relay_buffered_bytes", "Bytes held by the live relays",
                            labels=["kind"])
    for kind in KINDS:
        live.add_metric([kind], sum(1 for r in relays if r.kind == kind))
        buf.add_metric([kind], sum(r.buffered for r in relays if r.kind == kind))
    yield live
    yield buf
    latency = bridge.relay_latency if bridge is not None else {}
    yield _histogram("ktb_relay_message_latency_seconds", "Time a gRPC message spends inside "
                     "the bridge, from its first byte in to its last byte handed to the other "
                     "connection (waiting for the receiver's window included), by connection "
                     "kind and the side that sent it", ["kind", "direction"],
                     {(k, d): latency.get((k, d)) for k in KINDS
                      for d in DIRECTIONS},
                     RELAY_BUCKETS)

    # Cumulative (closed + live)
    totals = bridge.totals if bridge is not None else Totals()
    rb = CounterMetricFamily("ktb_relay_bytes", "Bytes relayed, all connections",
                             labels=["kind", "direction"])
    rm = CounterMetricFamily("ktb_relay_messages", "gRPC messages relayed, all connections",
                             labels=["kind", "direction"])
    for kind in KINDS:
        t = totals.traffic(kind)
        for direction in DIRECTIONS:
            rb.add_metric([kind, direction], getattr(t, f"bytes_{direction}"))
            rm.add_metric([kind, direction], getattr(t, f"messages_{direction}"))
    yield rb
    yield rm
    rw = CounterMetricFamily("ktb_rewrites", "Policy actions on relayed messages: onions "
                             "added/removed, invalid addresses removed, messages dropped, "
                             "Versions rewritten; and the bridge's own address refreshes "
                             "(refreshes)", labels=["action"])
    for k, v in totals.rewrites.items():
        rw.add_metric([k], v)
    yield rw


class SnapshotCollector(Collector):
    """Renders the source's snapshot at scrape time."""

    def __init__(self, source: SnapshotSource) -> None:
        self.source = source

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(self.source.snapshot())


def make_registry(source: SnapshotSource) -> CollectorRegistry:
    """The snapshot's families, and the process (CPU, RSS, open files), platform
    (``python_info``) and GC collectors of prometheus_client: all address-free."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(source))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


# ------------------------------------------------------------------------ HTTP


def _loopback_host_header(value: str) -> bool:
    host = value.strip()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _response(status: int, reason: str, body: bytes, content_type: str,
              head_only: bool = False, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: close", "Cache-Control: no-store",
             "X-Content-Type-Options: nosniff", *(f"{k}: {v}" for k, v in extra)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


def _json(status: int, reason: str, obj: object, head_only: bool = False) -> bytes:
    return _response(status, reason, (json.dumps(obj, indent=1) + "\n").encode(),
                     "application/json", head_only)


class ObserveServer:
    """The loopback HTTP server (or, with ``public``, the address-free /metrics server).
    ``await nursery.start(server.run)`` returns the bound port."""

    def __init__(self, source: SnapshotSource, host: str, port: int, *,
                 public: bool = False) -> None:
        #: the address-free server (metrics.public_listen): /metrics and a bare /health only
        self.public = public
        if not public:
            check_loopback(host)
        self.host = host
        self.port = port
        self.source = source
        self.registry = make_registry(source)
        self._limit = trio.Semaphore(MAX_CONNECTIONS)
        self.bound_port: int | None = None

    @property
    def key(self) -> str:
        """The configuration key this server listens on."""
        return "metrics.public_listen" if self.public else "metrics.listen"

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as exc:
            raise ObserveError(f"cannot listen on {self.key} {self.host}:{self.port}: "
                               f"{exc.strerror or exc}") from exc
        self.bound_port = int(listeners[0].socket.getsockname()[1])
        if self.public:
            log.info("address-free /metrics and /health on http://%s/ (metrics.public_listen; "
                     "no /status there)", hostport(self.host, self.bound_port))
        else:
            log.info("metrics/health/status on http://%s/ (loopback only)",
                     hostport(self.host, self.bound_port))
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.bound_port)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self._limit.value == 0:
                await self._send(stream, _response(503, "Service Unavailable", b"busy\n",
                                                   "text/plain"))
                return
            async with self._limit:
                try:
                    with trio.fail_after(READ_TIMEOUT):
                        head = await self._read_head(stream)
                except trio.TooSlowError:
                    await self._send(stream, _response(408, "Request Timeout", b"", "text/plain"))
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
                if head is None:
                    await self._send(stream, _response(431, "Request Header Fields Too Large",
                                                       b"", "text/plain"))
                    await self._linger(stream)
                    return
                await self._send(stream, self.respond(head))

    @staticmethod
    async def _send(stream: trio.SocketStream, data: bytes) -> None:
        try:
            with trio.move_on_after(READ_TIMEOUT):
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    @staticmethod
    async def _linger(stream: trio.SocketStream) -> None:
        """Half-close and drain (bounded) so the client reads our error instead of a reset."""
        try:
            await stream.send_eof()
            with trio.move_on_after(1.0):
                drained = 0
                while drained < (1 << 20):
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    @staticmethod
    async def _read_head(stream: trio.SocketStream) -> bytes | None:
        buf = bytearray()
        while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
            if len(buf) > MAX_REQUEST_HEAD:
                return None
            data = await stream.receive_some(4096)
            if not data:
                break
            buf += data
        return bytes(buf[:MAX_REQUEST_HEAD + 4096])

    def respond(self, head: bytes) -> bytes:
        """The full response for a raw request head (sans-IO, for tests too)."""
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
            text = ""
        lines = text.replace("\r\n", "\n").split("\n")
        parts = lines[0].split(" ") if lines else []
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _response(400, "Bad Request", b"bad request\n", "text/plain")
        method, target, _ = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                break
            name, sep, value = line.partition(":")
            if not sep:
                return _response(400, "Bad Request", b"bad header\n", "text/plain")
            headers[name.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            return _response(405, "Method Not Allowed", b"GET only\n", "text/plain",
                             extra=(("Allow", "GET, HEAD"),))
        head_only = method == "HEAD"
        path = target.split("?", 1)[0]
        if self.public:
            return self._respond_public(path, head_only)
        host = headers.get("host")
        if host is not None and not _loopback_host_header(host):
            return _response(403, "Forbidden", b"Host must be a loopback address\n",
                             "text/plain")
        try:
            if path == "/metrics":
                return _response(200, "OK", generate_latest(self.registry),
                                 PROMETHEUS_CONTENT_TYPE, head_only)
            if path == "/health":
                health = self.source.health()
                if health.ok:
                    return _json(200, "OK", {"status": "ok"}, head_only)
                return _json(503, "Service Unavailable",
                             {"status": "unhealthy", "reasons": list(health.reasons)},
                             head_only)
            if path == "/status":
                return _json(200, "OK", to_json(self.source.snapshot()), head_only)
            if path == "/":
                return _response(200, "OK", b"kaspa-tor-bridge: /metrics /health /status\n",
                                 "text/plain", head_only)
        except Exception:
            log.exception("observability: %s failed", path)
            return _response(500, "Internal Server Error", b"internal error\n", "text/plain")
        return _response(404, "Not Found", b"not found\n", "text/plain", head_only)

    def _respond_public(self, path: str, head_only: bool) -> bytes:
        """The public server: the address-free /metrics and a bare /health, nothing else (no
        Host check: nothing served here names a peer or the onion)."""
        try:
            if path == "/metrics":
                return _response(200, "OK", generate_latest(self.registry),
                                 PROMETHEUS_CONTENT_TYPE, head_only)
            if path == "/health":
                if self.source.health().ok:
                    return _json(200, "OK", {"status": "ok"}, head_only)
                return _json(503, "Service Unavailable", {"status": "unhealthy"}, head_only)
        except Exception:
            log.exception("observability: %s failed", path)
            return _response(500, "Internal Server Error", b"internal error\n", "text/plain")
        return _response(404, "Not Found", b"not found\n", "text/plain", head_only)

