"""Observability: Prometheus ``/metrics``, ``/health`` and ``/status`` on a loopback HTTP port.

Enabled with ``metrics.listen = "127.0.0.1:9464"``. The server is a deliberately tiny HTTP/1.1
server on trio: GET/HEAD only, one request per connection (``Connection: close``), a bounded
request head, a read deadline and a cap on concurrent connections.

* ``/metrics`` — Prometheus text format. A custom collector reads the live daemon state at scrape
  time (no background polling). **Privacy**: no label ever carries a remote address or an onion
  address. Per-connection series are labelled ``peer="slot:<local port>"`` or
  ``peer="inbound#<connection id>"``; the own onion is not exported either (a central
  Prometheus would otherwise link this host to its onion).
* ``/health`` — 200 ``{"status": "ok"}`` when the listeners are up and, in tor-only mode or with
  ``tor.listen_onion``, Tor is usable (and the onion published); else 503 with the reasons.
* ``/status`` — the JSON snapshot of :mod:`bridge.runtime.status` (used by
  ``kaspa-tor-bridge status``).
  It names peers and the own onion, which is why the server refuses non-loopback addresses and
  any ``Host`` header that is not a loopback name (DNS-rebinding from a local browser).

Neither the control password nor the onion key is reachable from here: the snapshot reads
:class:`~bridge.tor.supervisor.TorStatus` and the bridge's counters only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge import __version__
from bridge.core.errors import BridgeError, Fault
from bridge.runtime.status import (
    DIRECTIONS,
    REWRITE_KEYS,
    RecentErrors,
    Totals,
    build_snapshot,
    health,
    relay_label,
)
from bridge.tor.supervisor import TorState

if TYPE_CHECKING:
    from bridge.runtime.bridge import Bridge, RelayInfo
    from bridge.runtime.daemon import Daemon

log = logging.getLogger("bridge.runtime.observe")

MAX_REQUEST_HEAD = 8192
READ_TIMEOUT = 5.0
MAX_CONNECTIONS = 16
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
            "\"127.0.0.1:9464\"); to scrape it from elsewhere, put a proxy in front of it")


# ------------------------------------------------------------------------ relay bookkeeping


class RelayLedger(dict[int, "RelayInfo"]):
    """Replaces ``Bridge.relays``: a relay removed from it (it closed) is folded into
    :class:`Totals` and, when it ended with an error, into the recent errors. This keeps the
    cumulative counters exact without polling."""

    def __init__(self, initial: dict[int, RelayInfo], totals: Totals,
                 errors: RecentErrors) -> None:
        super().__init__(initial)
        self.totals = totals
        self.errors = errors

    def _closed(self, info: RelayInfo) -> None:
        try:
            self.totals.add(info)
            closed = info.relay.closed
            if closed is not None and closed.error is not None:
                self.errors.add(relay_label(info), closed.error.describe())
        except Exception:  # bookkeeping must never break the relay's cleanup
            log.exception("observability: could not account a closed relay")

    def __delitem__(self, key: int) -> None:
        info = self[key]
        super().__delitem__(key)
        self._closed(info)

    def pop(self, key: int, *default: Any) -> Any:
        if key not in self:
            return super().pop(key, *default)
        info = super().pop(key)
        self._closed(info)
        return info


class _ErrorLogHandler(logging.Handler):
    """Feeds warnings (and the warm pool's dial failures) into the recent-errors ring."""

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


class Observer:
    """Per-daemon observability state: totals of closed relays and recent errors."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.totals = Totals()
        self.errors = RecentErrors()
        self.started_at = time.time()
        self._attached: Bridge | None = None
        self._handler = _ErrorLogHandler(self.errors)

    def attach(self) -> None:
        """Hook into the daemon's bridge (once it exists) and the ``bridge`` logger."""
        bridge = self.daemon.bridge
        if bridge is not None and self._attached is not bridge:
            if not isinstance(bridge.relays, RelayLedger):
                bridge.relays = RelayLedger(dict(bridge.relays), self.totals, self.errors)
            self._attached = bridge
        logger = logging.getLogger("bridge")
        if self._handler not in logger.handlers:
            logger.addHandler(self._handler)

    def detach(self) -> None:
        logging.getLogger("bridge").removeHandler(self._handler)

    def snapshot(self) -> dict[str, Any]:
        self.attach()
        return build_snapshot(self.daemon, totals=self.totals, errors=self.errors,
                              started_at=self.started_at)

    def health(self) -> tuple[bool, list[str]]:
        return health(self.daemon)


# ------------------------------------------------------------------------ Prometheus


class DaemonCollector(Collector):
    """Reads the live daemon at scrape time. Labels never carry remote or onion addresses."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        obs = self.observer
        obs.attach()
        d = obs.daemon
        cfg = d.cfg

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        info = GaugeMetricFamily("ktb_info", "Bridge version and configuration",
                                 labels=["version", "network", "mode"])
        info.add_metric([__version__, cfg.network, cfg.mode], 1)
        yield info
        ok, _ = obs.health()
        yield gauge("ktb_healthy", "1 when /health answers 200", 1 if ok else 0)
        bridge = d.bridge
        yield gauge("ktb_listeners_up", "1 when the slot and inbound listeners are bound",
                    1 if bridge is not None and bridge.started.is_set() else 0)
        yield gauge("ktb_uptime_seconds", "Seconds since the daemon started",
                    time.time() - obs.started_at)

        # Tor
        sup = d.supervisor
        yield gauge("ktb_tor_monitored", "1 when the bridge has a Tor control connection "
                    "configured", 1 if sup is not None else 0)
        if sup is not None:
            st = sup.status
            yield gauge("ktb_tor_bootstrap_progress", "Tor bootstrap progress (0-100)",
                        st.bootstrap.progress if st.bootstrap is not None else 0)
            yield gauge("ktb_tor_usable", "1 when Tor is connected and bootstrapped",
                        1 if st.usable else 0)
            yield gauge("ktb_tor_onion_published", "1 when the onion service is published",
                        1 if st.onion_published else 0)
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
                ("ktb_tor_connection_losses", "Tor control connections lost",
                 st.connection_losses),
                ("ktb_tor_connect_failures", "Failed Tor control connection attempts",
                 st.attempts_failed),
                ("ktb_tor_hs_desc_uploads", "Onion service descriptor uploads",
                 st.hs_desc_uploaded),
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

        # Slots, pool, dialing
        relays = list(bridge.relays.values()) if bridge is not None else []
        yield gauge("ktb_slots", "Configured kaspad slots", cfg.slots.count)
        filled = {r.local_port for r in relays if r.kind == "slot" and r.target is not None}
        yield gauge("ktb_slots_filled", "Slots with kaspad connected and relayed to a peer",
                    len(filled))
        yield gauge("ktb_inbound_connections", "Live inbound (onion) connections",
                    sum(1 for r in relays if r.kind == "inbound"))
        yield gauge("ktb_gossip_known_onions", "Onion peers learned from gossip",
                    len(d.gossip.onions) if d.gossip is not None else 0)
        if bridge is not None:
            pool = bridge.pool
            yield gauge("ktb_pool_size", "Warm pool target size", pool.size)
            yield gauge("ktb_pool_ready", "Warm upstream connections ready", pool.ready_count)
            ev = CounterMetricFamily("ktb_pool_events", "Warm pool events (duplicates: "
                                     "upstreams not handed to kaspad, their node is "
                                     "connected already)", labels=["event"])
            for k, v in pool.stats.items():
                ev.add_metric([k], v)
            yield ev
            yield CounterMetricFamily("ktb_dials", "Upstream dial attempts",
                                      value=bridge.dialer.dials)
            fails = CounterMetricFamily("ktb_dial_failures", "Upstream dial failures by fault",
                                        labels=["reason"])
            for reason in ("TOR", "LOCAL", "REMOTE"):
                fails.add_metric([reason.lower()], bridge.dialer.failures.get(reason, 0))
            for reason, v in bridge.dialer.failures.items():
                if reason not in ("TOR", "LOCAL", "REMOTE"):
                    fails.add_metric([reason.lower()], v)
            yield fails
            closed = CounterMetricFamily("ktb_relays_closed", "Relays closed, by outcome",
                                         labels=["outcome"])
            for k, v in bridge.closed_count.items():
                closed.add_metric([k], v)
            yield closed
            inb = CounterMetricFamily("ktb_inbound_events", "Inbound (onion) connections: "
                                      "accepted, evicted while idle (max_pending), refused "
                                      "(max_connections), refused because the node is "
                                      "connected to kaspad already", labels=["event"])
            for k, v in bridge.inbound_stats.items():
                inb.add_metric([k], v)
            yield inb
            if bridge.book is not None:
                yield CounterMetricFamily("ktb_book_errors", "Address book operations that "
                                          "failed (disk full, read-only, I/O error)",
                                          value=bridge.book.errors)
                yield gauge("ktb_book_failing", "1 while address book writes are failing",
                            1 if bridge.book.failing else 0)
                entries = CounterMetricFamily(
                    "ktb_book_learned_refused", "Learned addresses not stored (not_public, "
                    "dropped: over their source group's quota) or evicted", labels=["reason"])
                for k, v in bridge.book.stats.items():
                    entries.add_metric([k], v)
                yield entries
                batches = CounterMetricFamily(
                    "ktb_book_batches", "Learned-address batches by outcome (stored, dropped "
                    "while the writer was behind, failed)", labels=["outcome"])
                for k, v in bridge.book_stats.items():
                    batches.add_metric([k], v)
                yield batches
            cands = bridge.selector.snapshot()
            yield gauge("ktb_candidates", "Known upstream candidates", len(cands))
            now = trio.current_time()
            yield gauge("ktb_candidates_backing_off", "Candidates waiting for a retry",
                        sum(1 for c in cands.values() if float(c.get("retry_at") or 0) > now))

        # Per live connection (label: slot port / inbound id — never a remote address)
        pb = CounterMetricFamily("ktb_peer_bytes", "Bytes relayed on a live connection",
                                 labels=["peer", "kind", "direction"])
        pm = CounterMetricFamily("ktb_peer_messages", "gRPC messages relayed on a live "
                                 "connection", labels=["peer", "kind", "direction"])
        pbuf = GaugeMetricFamily("ktb_peer_buffered_bytes", "Bytes held by the relay",
                                 labels=["peer", "kind"])
        for r in relays:
            s = r.relay.stats()
            label = relay_label(r)
            for direction in DIRECTIONS:
                pb.add_metric([label, r.kind, direction], s[f"bytes_{direction}"])
                pm.add_metric([label, r.kind, direction], s[f"messages_{direction}"])
            pbuf.add_metric([label, r.kind], s["buffered"])
        yield pb
        yield pm
        yield pbuf

        # Cumulative (closed + live)
        t = obs.totals.with_live(relays)
        rb = CounterMetricFamily("ktb_relay_bytes", "Bytes relayed, all connections",
                                 labels=["kind", "direction"])
        rm = CounterMetricFamily("ktb_relay_messages", "gRPC messages relayed, all connections",
                                 labels=["kind", "direction"])
        for (kind, direction), v in t.bytes.items():
            rb.add_metric([kind, direction], v)
        for (kind, direction), v in t.messages.items():
            rm.add_metric([kind, direction], v)
        yield rb
        yield rm
        rw = CounterMetricFamily("ktb_rewrites", "Policy actions on relayed messages: onions "
                                 "added/removed, invalid addresses removed, messages dropped, "
                                 "Versions rewritten", labels=["action"])
        for k in REWRITE_KEYS:
            rw.add_metric([k], t.rewrites.get(k, 0))
        yield rw


def make_registry(observer: Observer) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(observer))
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
    """The loopback HTTP server. ``await nursery.start(server.run)`` returns the bound port."""

    def __init__(self, daemon: Daemon, host: str, port: int) -> None:
        check_loopback(host)
        self.host = host
        self.port = port
        self.observer = Observer(daemon)
        self.registry = make_registry(self.observer)
        self._limit = trio.Semaphore(MAX_CONNECTIONS)
        self.bound_port: int | None = None

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        self.observer.attach()
        try:
            try:
                listeners = await trio.open_tcp_listeners(self.port, host=self.host)
            except OSError as exc:
                raise ObserveError(f"cannot listen on metrics.listen {self.host}:{self.port}: "
                                   f"{exc.strerror or exc}") from exc
            self.bound_port = int(listeners[0].socket.getsockname()[1])
            log.info("metrics/health/status on http://%s/ (loopback only)",
                     _hostport(self.host, self.bound_port))
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle, listeners)
                task_status.started(self.bound_port)
        finally:
            self.observer.detach()

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
        host = headers.get("host")
        if host is not None and not _loopback_host_header(host):
            return _response(403, "Forbidden", b"Host must be a loopback address\n",
                             "text/plain")
        head_only = method == "HEAD"
        path = target.split("?", 1)[0]
        try:
            if path == "/metrics":
                return _response(200, "OK", generate_latest(self.registry),
                                 PROMETHEUS_CONTENT_TYPE, head_only)
            if path == "/health":
                ok, reasons = self.observer.health()
                if ok:
                    return _json(200, "OK", {"status": "ok"}, head_only)
                return _json(503, "Service Unavailable",
                             {"status": "unhealthy", "reasons": reasons}, head_only)
            if path == "/status":
                return _json(200, "OK", self.observer.snapshot(), head_only)
            if path == "/":
                return _response(200, "OK", b"kaspa-tor-bridge: /metrics /health /status\n",
                                 "text/plain", head_only)
        except Exception:
            log.exception("observability: %s failed", path)
            return _response(500, "Internal Server Error", b"internal error\n", "text/plain")
        return _response(404, "Not Found", b"not found\n", "text/plain", head_only)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
