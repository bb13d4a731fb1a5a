"""A one-shot kaspad P2P *client* that harvests addresses from one peer (sans-IO).

The bridge runs it itself, e.g. against a DNS seeder hostname dialed through Tor (the exit
resolves the name and connects to one of the nodes it lists). It behaves like kaspad's outbound
connection (protocol.md §2.5, §3.2, §5.1, §7.1):

1. HTTP/2 prior knowledge with hyper's client SETTINGS (ENABLE_PUSH=0, INITIAL_WINDOW_SIZE=2 MiB,
   MAX_FRAME_SIZE=16384, MAX_HEADER_LIST_SIZE=16384, connection window 5 MiB), then
   ``POST /protowire.P2P/MessageStream`` with tonic's headers; no DATA before the response HEADERS.
2. Version (protocol 8, services=ADDRv2, timestamp, random 16-byte id, kaspad's user agent,
   network; no address), Verack as soon as the peer's Version arrives (before validation),
   validation once the peer's Version *and* Verack are in (id, network, protocol version, in
   kaspad's order, with kaspad's Reject texts), then Ready.
3. After the peer's Ready: one RequestAddresses. The peer's RequestAddresses is answered with an
   Addresses (empty unless entries are given), Ping with Pong; the ONE Addresses reply is
   collected and the call is closed (END_STREAM, then GOAWAY NO_ERROR).

What kaspad disconnects on fails the probe with a typed :class:`ProbeError` naming the culprit:
a Reject, an unknown or empty payload, anything but Version/Verack/Ready before we validated the
peer, a duplicate handshake message, an unsolicited Pong, a ``response_id`` we never asked for,
an Addresses entry kaspad cannot convert (all-or-nothing, §4.4) or more than 2500 entries. Other
known messages after the handshake (InvRelayBlock(sink) at start-up, InvTransactions, ...) are
ignored, as kaspad would route them to a flow.

Every message we send is gzip'd with compressed-flag 1 (tonic does that on a gzip stream); the
peer's messages are accepted with flag 0 or 1 (gzip) as tonic does. Nothing here touches a socket
or a clock: the caller passes the timestamp and drives timeouts by :attr:`ProbeClient.phase`
(kaspad's budgets: headers 10 s, Version/Verack 4 s, Ready 8 s).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import h2.errors
import h2.events
import h2.exceptions

from bridge.core import grpc, probe_flows, proto
from bridge.core.errors import ProtocolError, SelfConnection
from bridge.core.events import Closed
from bridge.core.h2conn import P2P_PATH, Endpoint, RelaySettings, errname
from bridge.core.probe_events import (
    AddressesReceived,
    Event,
    Failed,
    HandshakeDone,
    HarvestedIp,
    HarvestedOnion,
    IncompatiblePeer,
    PeerClosed,
    PeerRejected,
    PeerVersionInfo,
    PeerViolation,
    Phase,
    ProbeError,
    ProbeTimeout,
)
from bridge.core.probe_wire import (
    _CONN_WINDOW,
    _MAX_FRAME,
    _PREFACE,
    _STREAM_WINDOW,
    DEFAULT_MAX_MESSAGE,
    DEFAULT_MIN_PROTOCOL_VERSION,
    DEFAULT_PROTOCOL_VERSION,
    DEFAULT_USER_AGENT,
    IGNORABLE_REJECTS,
    MAX_ADDRESSES_RECEIVE,
    MAX_ADDRESSES_SEND,
    MAX_REJECT_REASON,
    MAX_USER_AGENT_LEN,
    TONIC_USER_AGENT,
    _fmt_secs,
    _message,
    _settings_frame,
    _status,
    _tail_scanner,
    _window_update_frame,
    kaspad_gzip,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "DEFAULT_MIN_PROTOCOL_VERSION",
    "DEFAULT_PROTOCOL_VERSION",
    "DEFAULT_USER_AGENT",
    "IGNORABLE_REJECTS",
    "MAX_ADDRESSES_RECEIVE",
    "MAX_ADDRESSES_SEND",
    "MAX_REJECT_REASON",
    "MAX_USER_AGENT_LEN",
    "TONIC_USER_AGENT",
    "AddressesReceived",
    "Closed",
    "Event",
    "Failed",
    "HandshakeDone",
    "HarvestedIp",
    "HarvestedOnion",
    "IncompatiblePeer",
    "PeerClosed",
    "PeerRejected",
    "PeerVersionInfo",
    "PeerViolation",
    "Phase",
    "ProbeClient",
    "ProbeError",
    "ProbeTimeout",
    "kaspad_gzip",
]


@dataclass(slots=True)
class _State:
    phase: Phase = Phase.HEADERS
    headers_ok: bool = False
    encoding: bytes | None = None
    peer_version: PeerVersionInfo | None = None
    got_verack: bool = False
    validated: bool = False
    got_ready: bool = False
    requested: bool = False
    addresses_done: bool = False
    queued: list[proto.Envelope] = field(default_factory=list)
    finished: bool = False


class ProbeClient:
    """Sans-IO one-shot harvesting client. Feed bytes with :meth:`receive`, write
    :meth:`data_to_send`, call :meth:`timeout` when the current :attr:`phase` ran out of time and
    :meth:`connection_lost` on EOF. The run ends with exactly one :class:`Closed` event (preceded by
    :class:`Failed` on error)."""

    def __init__(
        self,
        network: str,
        *,
        now_ms: int,
        node_id: bytes | None = None,
        authority: str = "127.0.0.1:16111",
        protocol_version: int = DEFAULT_PROTOCOL_VERSION,
        min_protocol_version: int = DEFAULT_MIN_PROTOCOL_VERSION,
        user_agent: str = DEFAULT_USER_AGENT,
        services: int = proto.SERVICE_ADDRV2,
        reply_addresses: Sequence[proto.NetAddress] = (),
        forbidden_ids: Collection[bytes] = (),
        max_message: int = DEFAULT_MAX_MESSAGE,
        compress: bool = True,
    ) -> None:
        if not network:
            raise ValueError("network must be a kaspa network name, e.g. 'kaspa-mainnet'")
        self.node_id = os.urandom(16) if node_id is None else bytes(node_id)
        if len(self.node_id) != 16:
            raise ValueError(f"node_id must be 16 bytes, got {len(self.node_id)}")
        self.network = network
        self.now_ms = now_ms
        self.authority = authority
        self.protocol_version = protocol_version
        self.min_protocol_version = min_protocol_version
        self.user_agent = user_agent.encode("utf-8")[:MAX_USER_AGENT_LEN].decode("utf-8", "ignore")
        self.services = services
        self.reply_addresses = list(reply_addresses)
        self.forbidden_ids = frozenset(bytes(i) for i in forbidden_ids)
        self.max_message = max_message
        self.compress = compress
        self._end = Endpoint(True, RelaySettings(window=_STREAM_WINDOW, max_frame=_MAX_FRAME,
                                                 max_message_bytes=max_message))
        self._reader = grpc.MessageReader(max_message)
        self._cur = bytearray()
        self._cur_compressed = False
        self._sid: int | None = None
        self._pending = bytearray()  # gRPC bytes waiting for flow-control window
        self._end_after_pending = False
        self._out = bytearray()  # bytes written outside h2 (our hand-made SETTINGS)
        self._st = _State()
        self._started = False
        self._version_address_error: str | None = None
        self._tail = _tail_scanner()
        self.peer: PeerVersionInfo | None = None
        self.result: AddressesReceived | None = None
        self.error: ProbeError | SelfConnection | None = None
        self.sent: list[int] = []  # payload tags we sent, in order (for tests and logs)
        self.received: list[int] = []  # payload tags we received, in order
        self.ignored: list[int] = []  # known message types we let pass after the handshake

    # -- public API -------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._st.phase

    @property
    def finished(self) -> bool:
        return self._st.finished

    @property
    def peer_gone(self) -> bool:
        """After we finished: the peer ended its side (END_STREAM, RST_STREAM or GOAWAY), so
        the shell can close the socket without waiting any longer."""
        return self._tail.stopped

    def initiate(self) -> bytes:
        """The HTTP/2 preface, SETTINGS, WINDOW_UPDATE and the request HEADERS."""
        if self._started:
            raise RuntimeError("initiate() called twice")
        self._started = True
        conn = self._end.conn
        conn.data_to_send()  # h2's own preface/SETTINGS: replaced by hyper's exact set below
        conn.increment_flow_control_window(_CONN_WINDOW - _STREAM_WINDOW)
        conn.data_to_send()
        # h2 still expects an ACK for the settings it would have sent; the two it adds
        # (HEADER_TABLE_SIZE=4096, ENABLE_CONNECT_PROTOCOL=0) are the defaults, so what it
        # applies on the ACK is exactly what the peer was told.
        self._out += _PREFACE + _settings_frame() + _window_update_frame(_CONN_WINDOW - 65535)
        sid = conn.get_next_available_stream_id()
        self._sid = sid
        conn.send_headers(sid, [
            (b":method", b"POST"), (b":scheme", b"http"),
            (b":authority", self.authority.encode("ascii")), (b":path", P2P_PATH),
            (b"te", b"trailers"), (b"content-type", b"application/grpc"),
            (b"grpc-encoding", b"gzip"), (b"grpc-accept-encoding", b"gzip,identity"),
            (b"user-agent", TONIC_USER_AGENT.encode()),
        ])
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        out = bytes(self._out) + self._end.conn.data_to_send()
        self._out.clear()
        return out

    def receive(self, data: bytes) -> list[Event]:
        if not self._started:
            raise RuntimeError("receive() before initiate()")
        events: list[Event] = []
        if self._st.finished:
            self._tail.feed(data)
            return events
        try:
            for ev in self._end.receive_data(data):
                self._h2_event(ev, events)
                if self._st.finished:
                    break
            self._flush()
        except h2.exceptions.ProtocolError as exc:
            self._fail(PeerViolation(f"peer broke HTTP/2: {exc}"), events,
                       goaway=h2.errors.ErrorCodes.PROTOCOL_ERROR)
        except (ProbeError, SelfConnection) as exc:
            self._fail(exc, events)
        except ProtocolError as exc:  # DecodeError / FramingError from proto and grpc
            self._fail(PeerViolation(f"peer sent bad data: {exc}"), events)
        return events

    def timeout(self, seconds: float) -> list[Event]:
        """The current phase's budget of ``seconds`` ran out."""
        events: list[Event] = []
        if self._st.finished:
            return events
        phase = self._st.phase
        text = f"timeout expired after {_fmt_secs(seconds)}"
        reject = text if phase is not Phase.HEADERS else None  # kaspad's Reject text (§6.1)
        self._fail(ProbeTimeout(f"{text} waiting for the peer's {phase.value}", phase=phase),
                   events, reject=reject)
        return events

    def connection_lost(self) -> list[Event]:
        """The transport reached EOF or broke."""
        events: list[Event] = []
        if not self._st.finished:
            self._fail(PeerClosed(f"peer closed the connection while we waited for its "
                                  f"{self._st.phase.value}"), events)
        return events

    def close(self, reason: str = "closed locally") -> list[Event]:
        """Abandon the probe (e.g. the caller is shutting down)."""
        events: list[Event] = []
        if not self._st.finished:
            self._finish(events, reason, cancel=True)
        return events

    # -- HTTP/2 -----------------------------------------------------------------------------

    def _h2_event(self, ev: h2.events.Event, events: list[Event]) -> None:
        st = self._st
        if isinstance(ev, h2.events.ResponseReceived):
            if ev.stream_id == self._sid:
                self._on_response(list(ev.headers or []), events)
        elif isinstance(ev, h2.events.DataReceived):
            if ev.stream_id != self._sid:
                return
            if ev.flow_controlled_length:
                self._end.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            self._on_data(ev.data or b"", events)
        elif isinstance(ev, h2.events.TrailersReceived):
            if ev.stream_id == self._sid:
                h = dict(ev.headers or [])
                raise PeerClosed(f"peer ended the call while we waited for its "
                                 f"{st.phase.value} ({_status(h)})")
        elif isinstance(ev, h2.events.StreamEnded):
            if ev.stream_id == self._sid:
                raise PeerClosed(f"peer ended its stream while we waited for its "
                                 f"{st.phase.value}")
        elif isinstance(ev, h2.events.StreamReset):
            if ev.stream_id == self._sid:
                raise PeerClosed(f"peer reset the stream ({errname(ev.error_code)}) while we "
                                 f"waited for its {st.phase.value}")
        elif isinstance(ev, h2.events.ConnectionTerminated):
            raise PeerClosed(f"peer sent GOAWAY ({errname(ev.error_code)}) while we waited for "
                             f"its {st.phase.value}")
        # SETTINGS, WINDOW_UPDATE, PING (h2 answers it): nothing to do beyond _flush().

    def _on_response(self, headers: list[tuple[bytes, bytes]], events: list[Event]) -> None:
        h = dict(headers)
        status = h.get(b":status")
        if status != b"200":
            raise PeerViolation(f"peer answered HTTP status {status!r}, not 200")
        if b"grpc-status" in h:
            raise PeerClosed(f"peer refused the call at once ({_status(h)})")
        enc = h.get(b"grpc-encoding")
        if enc is not None and enc not in (b"gzip", b"identity"):
            raise PeerViolation(f"peer answers with unsupported grpc-encoding {enc!r}")
        self._st.encoding = enc
        self._st.headers_ok = True
        self._st.phase = Phase.VERSION
        self._send(proto.VERSION, self._version_payload())

    def _on_data(self, data: bytes, events: list[Event]) -> None:
        for ev in self._reader.feed(data):
            if isinstance(ev, grpc.MessageStart):
                if ev.compressed and self._st.encoding in (None, b"identity"):
                    raise PeerViolation("compressed-flag message but no grpc-encoding "
                                        "(tonic: INTERNAL)")
                self._cur_compressed = ev.compressed
                self._cur.clear()
            elif isinstance(ev, grpc.MessageChunk):
                self._cur += ev.data
            else:
                raw = bytes(self._cur)
                self._cur.clear()
                plain = (grpc.gzip_decompress(raw, self.max_message) if self._cur_compressed
                         else raw)
                self._on_message(plain, events)
                if self._st.finished:
                    return

    def _send(self, tag: int, payload: bytes, *, response_id: int = 0) -> None:
        msg = _message(tag, payload, response_id=response_id)
        if self.compress:
            self._pending += grpc.frame(kaspad_gzip(msg), compressed=True)
        else:
            self._pending += grpc.frame(msg)
        self.sent.append(tag)
        self._flush()

    def _flush(self) -> None:
        sid = self._sid
        if sid is None or not self._st.headers_ok:
            return
        conn = self._end.conn
        try:
            while self._pending:
                n = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size,
                        len(self._pending))
                if n <= 0:
                    return
                conn.send_data(sid, bytes(self._pending[:n]))
                del self._pending[:n]
            if self._end_after_pending:
                self._end_after_pending = False
                conn.end_stream(sid)
                conn.close_connection(h2.errors.ErrorCodes.NO_ERROR)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._pending.clear()

    # -- Kaspa P2P (bridge.core.probe_flows) ----------------------------------------------

    _version_payload = probe_flows._version_payload
    _on_message = probe_flows._on_message
    _parse_version = probe_flows._parse_version
    _version_problem = probe_flows._version_problem
    _maybe_validate = probe_flows._maybe_validate
    _maybe_done = probe_flows._maybe_done
    _flow_message = probe_flows._flow_message
    _reply_payload = probe_flows._reply_payload
    _on_addresses = probe_flows._on_addresses

    # -- closing ----------------------------------------------------------------------------

    def _fail(self, error: ProbeError | SelfConnection, events: list[Event], *,
              reject: str | None = None, goaway: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        if self._st.finished:
            return
        self.error = error
        events.append(Failed(error))
        if reject is not None and self._st.headers_ok:
            self._send(proto.REJECT, proto.make_len_field(
                1, reject.encode("utf-8")[:MAX_REJECT_REASON]).raw)
            self._finish(events, str(error), cancel=False, goaway=goaway)
        else:
            self._finish(events, str(error), cancel=True, goaway=goaway)

    def _finish(self, events: list[Event], reason: str, *, cancel: bool,
                goaway: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        st = self._st
        st.finished = True
        st.phase = Phase.DONE
        conn = self._end.conn
        sid = self._sid
        try:
            if sid is not None and (cancel or not st.headers_ok):
                self._pending.clear()
                conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                conn.close_connection(goaway)
            elif sid is not None:
                # Deliver what is queued (our last replies, a Reject), then END_STREAM + GOAWAY.
                self._end_after_pending = True
                self._flush()
            else:
                conn.close_connection(goaway)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            try:
                conn.close_connection(goaway)
            except h2.exceptions.ProtocolError:
                pass
        events.append(Closed(reason))
