"""A one-shot kaspad P2P *client* that harvests addresses from one peer (sans-IO).

The bridge runs it itself, e.g. against a DNS seeder hostname dialed through Tor (the exit
resolves the name and connects to one of the nodes it lists). It behaves like kaspad's outbound
connection (facts §1.7, §1.8, §3.1, §4.1):

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
an Addresses entry kaspad cannot convert (all-or-nothing, §2.4) or more than 2500 entries. Other
known messages after the handshake (InvRelayBlock(sink) at start-up, InvTransactions, ...) are
ignored, as kaspad would route them to a flow.

Every message we send is gzip'd with compressed-flag 1 (tonic does that on a gzip stream); the
peer's messages are accepted with flag 0 or 1 (gzip) as tonic does. Nothing here touches a socket
or a clock: the caller passes the timestamp and drives timeouts by :attr:`ProbeClient.phase`
(kaspad's budgets: headers 10 s, Version/Verack 4 s, Ready 8 s).
"""

from __future__ import annotations

import base64
import enum
import ipaddress
import os
import struct
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import h2.errors
import h2.events
import h2.exceptions

from bridge.core import grpc, proto
from bridge.core.errors import BridgeError, Fault, ProtocolError, SelfConnection
from bridge.core.errors import OnionAddressError as _OnionError
from bridge.core.events import Closed
from bridge.core.h2conn import (
    P2P_PATH,
    PREFACE,
    Endpoint,
    FrameScanner,
    RelaySettings,
    errname,
)
from bridge.core.onion import OnionAddress

__all__ = [
    "DEFAULT_PROTOCOL_VERSION",
    "DEFAULT_USER_AGENT",
    "AddressesReceived",
    "Closed",
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

DEFAULT_PROTOCOL_VERSION = 8  # the Tor fork (facts §3.6)
DEFAULT_MIN_PROTOCOL_VERSION = 7  # the fork accepts 7 (v7 flows) on every network
DEFAULT_USER_AGENT = "/kaspad:1.0.1/kaspad:1.0.1/"  # fork 1.0.1 (facts §3.3)
TONIC_USER_AGENT = "tonic/0.12.3"  # the fork's tonic (facts §1.7)
MAX_ADDRESSES_RECEIVE = proto.MAX_ADDRESSES  # kaspad disconnects above this
MAX_ADDRESSES_SEND = proto.MAX_ADDRESSES_SEND
MAX_USER_AGENT_LEN = 256
MAX_REJECT_REASON = 2048
IGNORABLE_REJECTS = frozenset({"LOOPBACK_CONNECTION", "DUPLICATE_CONNECTION"})
#: Largest peer message the probe buffers (compressed and inflated). Addresses of 2500 entries is
#: under 100 KB; a block never comes since we never ask for one.
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
_HANDSHAKE_TAGS = frozenset({proto.VERSION, proto.VERACK, proto.READY})

# hyper 1.x client defaults (facts §1.6): stream window 2 MiB, connection window 5 MiB.
_STREAM_WINDOW = 2 * 1024 * 1024
_CONN_WINDOW = 5 * 1024 * 1024
_MAX_FRAME = 16384


# ---------------------------------------------------------------------------------------------
# Errors


class ProbeError(BridgeError):
    """The harvest failed. ``fault`` says who is to blame."""

    fault = Fault.REMOTE
    action = "harvest aborted; connection closed"


class PeerViolation(ProbeError, ProtocolError):
    """The peer broke HTTP/2, gRPC or the Kaspa P2P protocol (what kaspad disconnects on)."""


class IncompatiblePeer(ProbeError):
    """A well-behaved peer we cannot talk to: other network, too old a protocol version."""

    action = "Reject sent; connection closed"


class PeerRejected(ProbeError):
    """The peer sent Reject (it refused us). ``reason`` is its text (at most 2048 bytes)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"peer rejected us: {reason!r}")
        self.reason = reason

    @property
    def ignorable(self) -> bool:
        """kaspad logs these quietly (duplicate/loopback connection, facts §3.2)."""
        return self.reason in IGNORABLE_REJECTS


class PeerClosed(ProbeError):
    """The peer ended the call (stream end, RST_STREAM, GOAWAY or TCP close) before we were done."""


class ProbeTimeout(ProbeError):
    """The peer (or the Tor path to it) did not answer within a phase's budget."""

    def __init__(self, message: str, *, phase: Phase) -> None:
        super().__init__(message)
        self.phase = phase


# ---------------------------------------------------------------------------------------------
# Events and results


class Phase(enum.Enum):
    """What the probe waits for; the shell applies one timeout per phase."""

    HEADERS = "response HEADERS"
    VERSION = "Version and Verack"
    READY = "Ready"
    ADDRESSES = "Addresses"
    DONE = "nothing (done)"


@dataclass(frozen=True, slots=True)
class PeerVersionInfo:
    protocol_version: int
    services: int
    timestamp_ms: int
    node_id: bytes
    user_agent: str
    network: str
    address: tuple[str, int] | None  # Version.address as (host, port), if any

    @property
    def addrv2(self) -> bool:
        return bool(self.services & proto.SERVICE_ADDRV2)


@dataclass(frozen=True, slots=True)
class HarvestedIp:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    @property
    def host(self) -> str:
        return str(self.ip)


@dataclass(frozen=True, slots=True)
class HarvestedOnion:
    onion: OnionAddress
    port: int

    @property
    def host(self) -> str:
        return self.onion.host


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    peer: PeerVersionInfo


@dataclass(frozen=True, slots=True)
class AddressesReceived:
    ips: tuple[HarvestedIp, ...]
    onions: tuple[HarvestedOnion, ...]
    #: entries left out, each "entry N: why" (loopback/unspecified IPs that kaspad ignores too,
    #: onions from a non-ADDRv2 peer, onions failing the v3 checksum/version check)
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Failed:
    error: ProbeError | SelfConnection


Event = HandshakeDone | AddressesReceived | Failed | Closed


# ---------------------------------------------------------------------------------------------
# Helpers


def kaspad_gzip(payload: bytes) -> bytes:
    """gzip like flate2's GzEncoder (tonic): mtime 0, XFL 0, OS byte 255 ("unknown").

    zlib's own gzip wrapper writes OS=3 (Unix); the deflate stream itself is zlib's, not
    miniz_oxide's, so the compressed bytes still differ from kaspad's for larger messages.
    """
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = c.compress(payload) + c.flush()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    trailer = struct.pack("<II", zlib.crc32(payload) & 0xFFFFFFFF, len(payload) & 0xFFFFFFFF)
    return header + body + trailer


def _settings_frame() -> bytes:
    body = b"".join(struct.pack(">HI", k, v) for k, v in (
        (0x2, 0), (0x4, _STREAM_WINDOW), (0x5, _MAX_FRAME), (0x6, 16384)))
    return len(body).to_bytes(3, "big") + b"\x04\x00" + b"\x00\x00\x00\x00" + body


def _window_update_frame(increment: int) -> bytes:
    return b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + increment.to_bytes(4, "big")


def _fork_onion_shape_error(host: str) -> str | None:
    """The fork's own onion check (facts §8.4): what kaspad would disconnect on."""
    h = host.lower()
    if not h.endswith(".onion"):
        return f"onion {host[:80]!r} does not end in .onion"
    label = h[: -len(".onion")]
    if len(label) != 56:
        return f"onion {host[:80]!r} has {len(label)} base32 characters, expected 56"
    try:
        base64.b32decode(label.upper())
    except ValueError:
        return f"onion {host[:80]!r} is not base32"
    return None


def _message(tag: int, payload: bytes, *, response_id: int = 0) -> bytes:
    out = proto.make_len_field(tag, payload).raw
    if response_id:
        out += proto.make_varint_field(proto.RESPONSE_ID, response_id).raw
    return out


def _response_id_for(env: proto.Envelope) -> int:
    """kaspad's ``make_response!``: the reply carries the request's request_id as response_id."""
    f = proto.first(env.others, proto.REQUEST_ID)
    return f.as_int if f is not None and f.wire_type == proto.VARINT else 0


def _fmt_secs(t: float) -> str:
    return f"{int(t)}s" if float(t).is_integer() else f"{t}s"


# ---------------------------------------------------------------------------------------------


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
        self._out += PREFACE + _settings_frame() + _window_update_frame(_CONN_WINDOW - 65535)
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
        reject = text if phase is not Phase.HEADERS else None  # kaspad's Reject text (§3.2)
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

    # -- Kaspa P2P --------------------------------------------------------------------------

    def _version_payload(self) -> bytes:
        # Tag order as prost writes it (facts §2.3); no address, disableRelayTx=false omitted.
        fields = [proto.make_varint_field(proto.V_PROTOCOL, self.protocol_version)]
        if self.services:
            fields.append(proto.make_varint_field(proto.V_SERVICES, self.services))
        if self.now_ms:
            fields.append(proto.make_varint_field(proto.V_TIMESTAMP, self.now_ms))
        fields.append(proto.make_len_field(proto.V_ID, self.node_id))
        if self.user_agent:
            fields.append(proto.make_len_field(proto.V_USER_AGENT, self.user_agent.encode()))
        fields.append(proto.make_len_field(proto.V_NETWORK, self.network.encode()))
        return proto.encode_fields(fields)

    def _on_message(self, plain: bytes, events: list[Event]) -> None:
        st = self._st
        tag = proto.payload_tag(plain)
        if tag is None:
            raise PeerViolation("message with an empty payload (kaspad: NoRouteForMessageType)")
        env = proto.Envelope.decode(plain)
        self.received.append(tag)
        name = proto.payload_name(tag)
        if tag == proto.REJECT:
            f = proto.first(proto.parse(env.payload), 1)
            reason = (f.as_bytes.decode("utf-8", "replace") if f is not None else "")
            raise PeerRejected(reason[:MAX_REJECT_REASON])
        if tag not in proto.KNOWN_PAYLOADS:
            raise PeerViolation(f"unknown message type {name} (kaspad: NoRouteForMessageType)")
        rid = proto.first(env.others, proto.RESPONSE_ID)
        if rid is not None and rid.as_int:
            raise PeerViolation(f"{name} with response_id {rid.as_int}, but we sent no request "
                                "with an id (kaspad: NoRouteForMessageType)")
        if st.addresses_done:
            return  # we are closing; nothing more matters
        if not st.got_ready:
            if tag == proto.VERSION:
                if st.peer_version is not None:
                    raise PeerViolation("second Version during the handshake")
                st.peer_version = self._parse_version(env.payload)
                self._send(proto.VERACK, b"")  # before validation, as kaspad does
                self._maybe_validate(events)
            elif tag == proto.VERACK:
                if st.got_verack:
                    raise PeerViolation("second Verack during the handshake")
                st.got_verack = True
                self._maybe_validate(events)
            elif tag == proto.READY:
                st.got_ready = True
                self._maybe_done(events)
            elif st.validated:
                # Our flows are registered once we validated (kaspad queues these until the
                # Ready exchange is over).
                st.queued.append(env)
            else:
                raise PeerViolation(f"unexpected {name} during the handshake "
                                    "(kaspad: NoRouteForMessageType)")
            return
        self._flow_message(tag, env, events)

    def _parse_version(self, payload: bytes) -> PeerVersionInfo:
        try:
            v = proto.Version.decode(payload)
        except ProtocolError as exc:
            raise PeerViolation(f"undecodable Version: {exc}") from exc
        address: tuple[str, int] | None = None
        na = v.address
        if na is not None:
            problem = self._entry_problem(na)
            if problem is not None:
                self._version_address_error = problem
            onion = na.onion
            ip = na.ip
            if onion is not None:
                address = (onion, na.port)
            elif ip is not None and len(ip) in (4, 16):
                address = (str(ipaddress.ip_address(ip)), na.port)
        ts = proto.first(v.fields, proto.V_TIMESTAMP)
        ts_ms = ts.as_int if ts is not None else 0
        if ts_ms >= 1 << 63:
            ts_ms -= 1 << 64
        return PeerVersionInfo(
            protocol_version=v.protocol_version, services=v.services, timestamp_ms=ts_ms,
            node_id=v.node_id, user_agent=v.user_agent[:MAX_USER_AGENT_LEN],
            network=v.network, address=address,
        )

    def _version_problem(self, payload_version: PeerVersionInfo) -> tuple[ProbeError |
                                                                          SelfConnection,
                                                                          str | None] | None:
        """kaspad's checks in its order (facts §3.1 step 4): (error, Reject text)."""
        pv = payload_version
        if len(pv.node_id) != 16:
            text = f"Identity error: invalid peer id length {len(pv.node_id)}"
            return PeerViolation(f"peer's Version.id has {len(pv.node_id)} bytes, "
                                 "expected 16"), text
        if self._version_address_error is not None:
            text = self._version_address_error
            return PeerViolation(f"peer's Version.address is illegal: {text}"), text
        if pv.node_id == self.node_id or pv.node_id in self.forbidden_ids:
            return SelfConnection("peer has our own node id (a loopback through Tor)"), \
                "LOOPBACK_CONNECTION"
        if pv.network != self.network:
            text = f"Network mismatch - local: {self.network}, remote: {pv.network}"
            return IncompatiblePeer(f"peer is on {pv.network!r}, not {self.network!r}"), text
        if pv.protocol_version < self.min_protocol_version:
            text = (f"P2P protocol version mismatch - local: {self.protocol_version}, "
                    f"remote: {pv.protocol_version}")
            return IncompatiblePeer(f"peer speaks protocol version {pv.protocol_version}, "
                                    f"below our minimum {self.min_protocol_version}"), text
        return None

    def _entry_problem(self, na: proto.NetAddress) -> str | None:
        """What kaspad's conversion fails on for one NetAddress (facts §2.4, §8.3)."""
        onion = na.onion
        if onion is not None:
            err = _fork_onion_shape_error(onion)
            if err is not None:
                return err
        else:
            ip = na.ip
            if ip is None or len(ip) not in (4, 16):
                return f"IP has illegal length {0 if ip is None else len(ip)}"
        if na.port > 0xFFFF:
            return f"port {na.port} does not fit in u16"
        return None

    def _maybe_validate(self, events: list[Event]) -> None:
        st = self._st
        if st.validated or st.peer_version is None or not st.got_verack:
            return
        problem = self._version_problem(st.peer_version)
        if problem is not None:
            error, reject = problem
            self._fail(error, events, reject=reject)
            return
        st.validated = True
        self.peer = st.peer_version
        self._send(proto.READY, b"")
        st.phase = Phase.READY
        self._maybe_done(events)

    def _maybe_done(self, events: list[Event]) -> None:
        st = self._st
        if not (st.validated and st.got_ready) or st.requested or st.finished:
            return
        assert st.peer_version is not None
        events.append(HandshakeDone(st.peer_version))
        st.requested = True
        st.phase = Phase.ADDRESSES
        # ReceiveAddressesFlow: RequestAddresses{includeAllSubnetworks:false} -> "3200"
        self._send(proto.REQUEST_ADDRESSES, b"")
        queued, st.queued = st.queued, []
        for env in queued:
            self._flow_message(env.tag, env, events)
            if st.finished or st.addresses_done:
                return

    def _flow_message(self, tag: int, env: proto.Envelope, events: list[Event]) -> None:
        name = proto.payload_name(tag)
        if tag == proto.ADDRESSES:
            self._on_addresses(env, events)
        elif tag == proto.REQUEST_ADDRESSES:
            self._send(proto.ADDRESSES, self._reply_payload(), response_id=_response_id_for(env))
        elif tag == proto.PING:
            f = proto.first(proto.parse(env.payload), 1)
            nonce = f.as_int if f is not None else 0
            pong = proto.make_varint_field(1, nonce).raw if nonce else b""
            self._send(proto.PONG, pong, response_id=_response_id_for(env))
        elif tag in _HANDSHAKE_TAGS:
            raise PeerViolation(f"{name} after the handshake (kaspad: route closed, disconnect)")
        elif tag == proto.PONG:
            raise PeerViolation("Pong although we never sent a Ping "
                                "(kaspad: nonce mismatch between ping and pong)")
        else:
            # InvRelayBlock(sink) at start-up, InvTransactions, or a request kaspad would route
            # to a flow: nothing kaspad disconnects on, and nothing a harvest needs.
            self.ignored.append(tag)

    def _reply_payload(self) -> bytes:
        st = self._st
        addrv2 = st.peer_version is not None and st.peer_version.addrv2
        entries = [e for e in self.reply_addresses if addrv2 or e.onion is None]
        return proto.encode_addresses(entries[:MAX_ADDRESSES_SEND])

    def _on_addresses(self, env: proto.Envelope, events: list[Event]) -> None:
        st = self._st
        if not st.requested or st.addresses_done:
            raise PeerViolation("Addresses we did not ask for (kaspad: route closed, disconnect)")
        entries = proto.decode_addresses(env.payload)
        if len(entries) > MAX_ADDRESSES_RECEIVE:
            raise PeerViolation(f"Addresses has {len(entries)} entries; kaspad disconnects above "
                                f"{MAX_ADDRESSES_RECEIVE}")
        assert st.peer_version is not None
        addrv2 = st.peer_version.addrv2
        ips: list[HarvestedIp] = []
        onions: list[HarvestedOnion] = []
        dropped: list[str] = []
        seen: set[tuple[str, int]] = set()
        for i, na in enumerate(entries):
            try:
                problem = self._entry_problem(na)
            except ProtocolError as exc:
                problem = str(exc)
            if problem is not None:
                # kaspad's conversion is all-or-nothing: one bad entry fails the message.
                raise PeerViolation(f"Addresses entry {i}: {problem} (kaspad disconnects)")
            onion = na.onion
            if onion is not None:
                if not addrv2:
                    dropped.append(f"entry {i}: onion from a peer without ADDRv2")
                    continue
                try:
                    addr = OnionAddress.parse(onion)
                except _OnionError as exc:
                    dropped.append(f"entry {i}: {exc}")
                    continue
                key = (addr.host, na.port)
                if key not in seen:
                    seen.add(key)
                    onions.append(HarvestedOnion(addr, na.port))
                continue
            ip_bytes = na.ip
            assert ip_bytes is not None
            ip = ipaddress.ip_address(ip_bytes)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if ip.is_loopback or ip.is_unspecified:
                dropped.append(f"entry {i}: {ip} is loopback/unspecified (kaspad ignores it)")
                continue
            key = (str(ip), na.port)
            if key not in seen:
                seen.add(key)
                ips.append(HarvestedIp(ip, na.port))
        result = AddressesReceived(tuple(ips), tuple(onions), tuple(dropped))
        self.result = result
        st.addresses_done = True
        events.append(result)
        self._finish(events, "addresses harvested", cancel=False)

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


def _tail_scanner() -> FrameScanner:
    """Frame-header scan of what arrives after we closed (h2 refuses input once it sent
    GOAWAY): stops at the peer's END_STREAM, RST_STREAM or GOAWAY. Best effort: it starts at the
    next chunk, so a frame h2 had half-buffered can make it miss the end (the shell then just
    waits out its grace period) or see it early (the shell closes a little early)."""
    def end(_length: int, ftype: int, flags: int) -> bool:
        return ftype in (0x3, 0x7) or (ftype in (0x0, 0x1) and bool(flags & 0x1))

    return FrameScanner(end)


def _status(h: dict[bytes, bytes]) -> str:
    status = h.get(b"grpc-status", b"?").decode("ascii", "replace")
    msg = h.get(b"grpc-message", b"").decode("utf-8", "replace")
    return f"grpc-status {status}" + (f": {msg}" if msg else "")
