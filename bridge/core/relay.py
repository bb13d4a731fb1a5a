"""Sans-IO relay of one kaspad P2P stream between two HTTP/2 connections.

One :class:`Relay` owns two ``h2`` connections: ``DOWN``, where the bridge is the HTTP/2 server
(the side that connected to us), and ``UP``, where the bridge is the client. For a kaspad slot,
DOWN is kaspad and UP the Tor peer; for the onion inbound, DOWN is the Tor peer and UP kaspad.

The shell feeds socket bytes with :meth:`Relay.receive` and writes :meth:`Relay.data_to_send`.
Nothing here touches a socket, a clock or a thread.

Flow control is end to end: bytes received on one side are acknowledged to h2 (which then opens
the sender's window) only once their output has been handed to the other side's h2 connection,
which itself only accepts what the receiver's window allows. A slow receiver therefore throttles
the sender; buffered data is bounded by the windows we advertise, never by message sizes.

Screening the remote (``screen=True``: the bridge's slot relays, ``kaspad_side=DOWN``): the
remote's response HEADERS are held back from kaspad, and kaspad's bytes from the remote, until the
remote's Version has arrived and the policy accepted it (not our own kaspad, not a node id already
connected to kaspad, see :mod:`bridge.core.nodes`). kaspad sends nothing before the response
HEADERS and a kaspad remote sends its Version right after them without waiting for ours (facts
§1.7, §3.1), so this costs no round trip; the warm pool's upstreams only have the HTTP/2 preface
done, and the Version is the first place the remote's node id can be seen. Until then kaspad has
seen nothing of this remote, so when the Version shows a duplicate
(:class:`~bridge.errors.DuplicatePeer`) the relay *drops that upstream* instead of closing: it
cancels the stream, queues a GOAWAY(NO_ERROR) in :attr:`Relay.dropped` for the shell to deliver,
and waits for :meth:`Relay.attach_upstream` with another one, on which it opens the same request.
kaspad only ever sees the upstream that passed (or, when the shell has none in time, an
UNAVAILABLE answer). The response deadline therefore covers the remote's Version, not just its
HEADERS.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from bridge.core import fastpath, grpc, h2fast, proto
from bridge.core.budget import ENHANCE_YOUR_CALM, BudgetSettings, Flood, FrameBudget
from bridge.core.errors import (
    BridgeError,
    DecodeError,
    DuplicatePeer,
    Fault,
    FramingError,
    PolicyViolation,
    ProtocolError,
)
from bridge.core.policy import Action, ConnectionPolicy, Direction

h2fast.install()  # output-identical; saves a 16 KiB hexlify per received DATA frame

P2P_PATH = b"/protowire.P2P/MessageStream"
#: RequestAddresses{includeAllSubnetworks: false} exactly as kaspad sends it (facts §2.3)
REQUEST_ADDRESSES_MSG = bytes.fromhex("3200")
GRPC_UNAVAILABLE = 14
GRPC_UNIMPLEMENTED = 12
GRPC_INTERNAL = 13
_ENCODINGS = {b"gzip", b"identity"}
# Request headers copied from the HTTP/2 client to the server (everything else is dropped).
_REQUEST_COPY = (b"te", b"content-type", b"grpc-encoding", b"grpc-accept-encoding", b"user-agent")
_RESPONSE_COPY = (b"content-type", b"grpc-encoding", b"grpc-accept-encoding")
_TRAILER_COPY = (b"grpc-status", b"grpc-message")


class Side(enum.Enum):
    DOWN = "down"  # we are the HTTP/2 server
    UP = "up"  # we are the HTTP/2 client

    # Members are singletons compared by identity; Enum's own __hash__ is a Python-level call
    # (hash of the name) on every per-side dict lookup of the hot path.
    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True)
class RelaySettings:
    max_message_bytes: int = 1 << 30
    #: HTTP/2 stream and connection window we advertise to kaspad (bounds memory per peer).
    window: int = 512 * 1024
    #: ... and to the remote peer, across Tor: 2 MiB, kaspad's own client stream window, so the
    #: bridge never offers a remote less than kaspad itself would. (A Tor circuit's round trip
    #: under load is long; one bench.tor_bench run suggested 512 KiB limited throughput, a
    #: second did not reproduce it.) Bytes held for one peer stay bounded by
    #: window + remote_window.
    remote_window: int = 2 * 1024 * 1024
    max_frame: int = 16384
    #: what each HTTP/2 connection may cost (control frames, unread replies, header blocks)
    budget: BudgetSettings = field(default_factory=BudgetSettings)


def _h2(client: bool, settings: RelaySettings, window: int) -> h2.connection.H2Connection:
    cfg = h2.config.H2Configuration(
        client_side=client, header_encoding=None, validate_inbound_headers=True,
        normalize_inbound_headers=True,
    )
    conn = h2.connection.H2Connection(cfg)
    values = {
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16384,
        h2.settings.SettingCodes.MAX_FRAME_SIZE: settings.max_frame,
    }
    if client:
        values[h2.settings.SettingCodes.ENABLE_PUSH] = 0
    else:
        values[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 1
    conn.local_settings = h2.settings.Settings(client=client, initial_values=values)
    # h2 applies our MAX_FRAME_SIZE only when the peer's SETTINGS ACK is processed, and its
    # frame buffer keeps the old limit for the rest of that receive_data() call: an ACK followed
    # by a large frame in one read would be rejected. The peer may use the new size as soon as
    # it has sent its ACK, so accept it from the start (frame_guard enforces the same limit).
    conn.max_inbound_frame_size = settings.max_frame
    conn.initiate_connection()
    if window > 65535:
        conn.increment_flow_control_window(window - 65535)
    return conn


_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_CLOSED = h2.connection.ConnectionState.CLOSED


class FrameScanner:
    """Walks HTTP/2 frame headers as bytes arrive and calls ``on_header(length, type, flags)``
    for each (after ``skip`` leading bytes, e.g. the client preface). ``on_header`` returning
    True stops the scan."""

    def __init__(self, on_header: Callable[[int, int, int], bool | None], *,
                 skip: int = 0) -> None:
        self.on_header = on_header
        self.skip = skip
        self.header = bytearray()
        self.stopped = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.stopped:
            if self.skip:
                n = min(self.skip, len(view))
                view = view[n:]
                self.skip -= n
                continue
            need = 9 - len(self.header)
            self.header += view[:need]
            view = view[need:]
            if len(self.header) < 9:
                return
            length = int.from_bytes(self.header[:3], "big")
            ftype, flags = self.header[3], self.header[4]
            self.header.clear()
            self.skip = length
            if self.on_header(length, ftype, flags):
                self.stopped = True


def frame_guard(*, skip_preface: bool, max_frame: int,
                budget: FrameBudget | None = None) -> FrameScanner:
    """Rejects an oversized frame from its 9-byte header, and charges every frame to
    ``budget`` (:mod:`bridge.core.budget`), before h2 has spent anything on it.

    h2 buffers a whole frame before it validates the frame's length, so a peer announcing a
    16 MiB frame would make us hold 16 MiB.
    """
    def check(length: int, ftype: int, flags: int) -> None:
        if length > max_frame:
            raise h2.exceptions.FrameTooLargeError(
                f"frame length {length} exceeds the maximum {max_frame}")
        if budget is not None:
            budget.frame(length, ftype, flags)

    return FrameScanner(check, skip=len(_PREFACE) if skip_preface else 0)


class Endpoint:
    """An h2 connection plus its frame guard and budget (:mod:`bridge.core.budget`): feed it
    bytes with :meth:`receive_data`. :class:`~bridge.core.budget.Flood` is raised when the peer
    goes over its budget."""

    def __init__(self, client: bool, settings: RelaySettings, *, remote: bool = False) -> None:
        self.conn = _h2(client, settings,
                        settings.remote_window if remote else settings.window)
        self.budget = FrameBudget(settings.budget)
        self.guard = frame_guard(skip_preface=not client, max_frame=settings.max_frame,
                                 budget=self.budget)
        #: bytes the shell took from h2 and has not written to the socket yet
        self.unwritten = 0
        #: bytes the shell has written to the socket (it reports them, see :meth:`wrote`)
        self.written = 0
        self._written_seen = 0
        #: the DATA fast path's frame state (:mod:`bridge.core.fastpath`), None when it is off
        self.fast = fastpath.Inbound() if fastpath.ENABLED else None

    @property
    def queued(self) -> int:
        """Bytes in h2's own outbound queue (ACKs, WINDOW_UPDATEs, DATA, GOAWAY, ...)."""
        return len(self.conn._data_to_send)

    @property
    def unsent(self) -> int:
        """Bytes produced for this peer and not yet written to its socket."""
        return self.queued + self.unwritten

    def writing(self, n: int) -> None:
        """The shell took ``n`` bytes of :meth:`data_to_send` and is writing them."""
        self.unwritten += n

    def wrote(self, n: int) -> None:
        """The shell wrote ``n`` bytes to the socket."""
        self.unwritten = max(0, self.unwritten - n)
        self.written += n

    def receive_data(self, data: bytes) -> list[h2.events.Event]:
        if self.unsent == 0 or self.written != self._written_seen:
            # the peer reads what we send it: the replies it asks for do not pile up
            self._written_seen = self.written
            self.budget.output_progressed()
        if self.fast is not None:
            return fastpath.receive(self, data)
        self.guard.feed(data)
        return self.conn.receive_data(data)


def new_upstream_connection(settings: RelaySettings, *, remote: bool = True) -> Endpoint:
    """A client-side endpoint with the preface queued: to a remote peer (the warm pool) or,
    with ``remote=False``, to kaspad (an inbound relay)."""
    return Endpoint(True, settings, remote=remote)


@dataclass(slots=True)
class Closed:
    """The relay is over. ``error`` is set when it ended because somebody misbehaved."""

    reason: str
    error: BridgeError | None = None


@dataclass(slots=True)
class Dropped:
    """An upstream the relay let go before kaspad saw it (its node id was connected already).
    ``goodbye`` are the last bytes for that upstream's socket (RST_STREAM CANCEL, GOAWAY)."""

    error: BridgeError
    goodbye: bytes


@dataclass(slots=True)
class _Out:
    data: memoryview
    credit: int = 0  # bytes of the source to acknowledge once ``data`` is sent


@dataclass(slots=True)
class _Pipe:
    """One direction: source stream → gRPC messages → policy → destination stream."""

    relay: Relay
    src: Side
    dst: Side
    direction: Direction
    reader: grpc.MessageReader
    out: deque[_Out] = field(default_factory=deque)
    queued: int = 0
    # current message
    action: Action | None = None
    compressed: bool = False
    prefix: bytes = b""
    held: bytearray = field(default_factory=bytearray)
    sniffer: grpc.PayloadSniffer | None = None
    # the source stream ended; forward end (with these trailers, if any) once ``out`` drains
    end_pending: bool = False
    trailers: list[tuple[bytes, bytes]] | None = None
    ended: bool = False
    messages: int = 0
    bytes_in: int = 0
    encoding: bytes | None = None  # the source's declared grpc-encoding
    #: the bridge's own messages waiting for a message boundary: (framed bytes, on_emit)
    injections: deque[tuple[bytes, Callable[[], None]]] = field(default_factory=deque)

    def inject(self, framed: bytes, on_emit: Callable[[], None]) -> None:
        """Queue one whole gRPC message of the bridge's own, sent at the next boundary so it
        never lands inside a message being streamed through."""
        self.injections.append((framed, on_emit))
        if self.action is None and self.reader.at_boundary:
            self._emit_injections()

    def _emit_injections(self) -> None:
        while self.injections:
            framed, on_emit = self.injections.popleft()
            self._emit(framed)
            on_emit()

    def feed(self, data: bytes, credit: int) -> None:
        if fastpath.pass_through(self, data, credit):
            return
        self.bytes_in += len(data)
        src = self.relay._ends[self.src]
        if src is not None:
            src.budget.earn(len(data))
        for ev in self.reader.feed(data):
            if isinstance(ev, grpc.MessageStart):
                self._start(ev)
            elif isinstance(ev, grpc.MessageChunk):
                self._chunk(ev.data)
            else:
                self._end()
        self._emit(b"", credit)

    def _start(self, ev: grpc.MessageStart) -> None:
        if ev.compressed and self.encoding in (None, b"identity"):
            raise FramingError("compressed-flag message without a grpc-encoding")
        self.action = None
        self.compressed = ev.compressed
        self.prefix = ev.prefix
        self.held.clear()
        self.sniffer = grpc.PayloadSniffer(ev.compressed,
                                           self.relay.policy.inflate_budgets[self.direction])

    def _chunk(self, data: bytes) -> None:
        if self.action is None:
            assert self.sniffer is not None
            self.held += data
            tag = self.sniffer.feed(data)
            if tag is None:
                return
            self._decide(tag)
            return
        if self.action is Action.PASS:
            if self.sniffer is not None:  # follows the whole message: no 2nd payload passes
                self.sniffer.feed(data)
            self._emit(data)
        elif self.action is Action.REWRITE:
            self.held += data
            tag = self.sniffer.tag if self.sniffer is not None else None
            if len(self.held) > self.relay.policy.rewrite_wire_limit(tag or 0, self.compressed):
                raise DecodeError("message too large to rewrite")

    def _decide(self, tag: int) -> None:
        self.action = self.relay.policy.classify(self.direction, tag)
        if self.action is Action.PASS:
            self._emit(self.prefix + bytes(self.held))
            self.held.clear()
        else:  # REWRITE: collected whole (bounded), then handed to the policy
            limit = self.relay.policy.rewrite_wire_limit(tag, self.compressed)
            if int.from_bytes(self.prefix[1:5], "big") > limit:
                raise DecodeError(f"{proto.payload_name(tag)} larger than {limit} bytes")

    def _end(self) -> None:
        if self.action is None:
            # The message ended before revealing a payload type: empty payload.
            raise DecodeError("message with an empty payload")
        if self.action is Action.REWRITE:
            raw = bytes(self.held)
            tag = self.sniffer.tag if self.sniffer is not None else None
            limit = self.relay.policy.rewrite_limit(tag or 0)  # never inflated past it
            plain = grpc.gzip_decompress(raw, limit) if self.compressed else raw
            new = self.relay.policy.rewrite(self.direction, plain)
            if new is not None:
                self._emit(grpc.frame(new))
        self.messages += 1
        self.action = None
        self.held.clear()
        self.sniffer = None
        self._emit_injections()

    def _emit(self, data: bytes, credit: int = 0) -> None:
        if not data and not credit:
            return
        if not data and self.out and self.out[-1].credit >= 0:
            self.out[-1].credit += credit
            return
        self.out.append(_Out(memoryview(data), credit))
        self.queued += len(data)

    def flush(self) -> None:
        relay = self.relay
        dst = relay.conn(self.dst)
        sid = relay.stream_id(self.dst)
        src = relay.conn(self.src)
        src_sid = relay.stream_id(self.src)
        dst_end = relay._ends[self.dst]
        if sid is None or not relay.headers_sent(self.dst) or dst_end is None:
            return
        if relay.screening and self.dst is not relay.kaspad_side:
            return  # nothing of kaspad's reaches a remote before its Version passed
        acked = 0
        while self.out:
            item = self.out[0]
            if item.data:  # as the windows, the frame size and max_unsent_data allow
                n = fastpath.send_data(dst_end, sid, item.data,
                                       relay.settings.budget.max_unsent_data)
                item.data = item.data[n:]
                self.queued -= n
            if item.data:
                break
            acked += item.credit
            self.out.popleft()
        if acked and src_sid is not None and not self.ended:
            try:
                src.acknowledge_received_data(acked, src_sid)
            except h2.exceptions.StreamClosedError:
                pass
        if not self.out and self.end_pending and not self.ended:
            self.ended = True
            if self.trailers is not None:
                dst.send_headers(sid, self.trailers, end_stream=True)
            else:
                dst.end_stream(sid)
            relay._half_closed(self.dst)


class Relay:
    """Relay state machine for one kaspad⇄remote P2P stream."""

    def __init__(self, policy: ConnectionPolicy, *, kaspad_side: Side,
                 upstream_authority: bytes, settings: RelaySettings | None = None,
                 upstream: Endpoint | None = None, screen: bool = False) -> None:
        self.policy = policy
        self.settings = settings or RelaySettings()
        self.kaspad_side = kaspad_side
        self.upstream_authority = upstream_authority
        self._ends: dict[Side, Endpoint | None] = {
            Side.DOWN: Endpoint(False, self.settings, remote=kaspad_side is Side.UP),
            Side.UP: upstream,
        }
        self._sid: dict[Side, int | None] = {Side.DOWN: None, Side.UP: None}
        self._headers_sent: dict[Side, bool] = {Side.DOWN: False, Side.UP: False}
        self._request_headers: list[tuple[bytes, bytes]] | None = None
        self.closed: Closed | None = None
        down_dir = (Direction.TO_REMOTE if kaspad_side is Side.DOWN else Direction.TO_KASPAD)
        up_dir = Direction.TO_KASPAD if kaspad_side is Side.DOWN else Direction.TO_REMOTE
        self.pipes = {
            Side.DOWN: _Pipe(self, Side.DOWN, Side.UP, down_dir,
                             grpc.MessageReader(self.settings.max_message_bytes)),
            Side.UP: _Pipe(self, Side.UP, Side.DOWN, up_dir,
                           grpc.MessageReader(self.settings.max_message_bytes)),
        }

        self.response_started = False
        #: HTTP/2 error code for the GOAWAY to a peer that broke the protocol
        self._culprit_code: int | None = None
        #: hold the remote back from kaspad until its Version passed (the bridge's slot relays;
        #: only with ``kaspad_side=DOWN``), see the module docstring
        self.screen = screen and kaspad_side is Side.DOWN
        self.screening = self.screen
        self._held_response: list[tuple[bytes, bytes]] | None = None
        #: set when the upstream was dropped as a duplicate: the shell delivers ``goodbye`` to
        #: the old socket and attaches another upstream (or refuses); see :meth:`take_dropped`
        self.dropped: Dropped | None = None
        self.upstreams_dropped = 0

    # -- accessors --------------------------------------------------------------------------

    def conn(self, side: Side) -> h2.connection.H2Connection:
        e = self._ends[side]
        if e is None:
            raise RuntimeError("upstream not attached yet")
        return e.conn

    def stream_id(self, side: Side) -> int | None:
        return self._sid[side]

    def headers_sent(self, side: Side) -> bool:
        return self._headers_sent[side]

    def fault_of(self, side: Side) -> Fault:
        return Fault.KASPAD if side is self.kaspad_side else Fault.REMOTE

    def who(self, side: Side) -> str:
        return "kaspad" if side is self.kaspad_side else self.policy.remote_label

    @property
    def has_upstream(self) -> bool:
        """An UP connection is attached (not yet, or not since one was dropped)."""
        return self._ends[Side.UP] is not None

    # -- shell interface --------------------------------------------------------------------

    def attach_upstream(self, end: Endpoint, authority: bytes | None = None) -> None:
        """Give the relay its upstream connection (fresh or from the warm pool)."""
        if self.closed is not None:
            return
        if authority is not None:
            self.upstream_authority = authority
        self.dropped = None
        self._ends[Side.UP] = end
        if self._request_headers is not None:
            try:
                self._open_upstream()
            except h2.exceptions.ProtocolError as exc:
                self._fail(ProtocolError(f"upstream connection unusable: {exc}",
                                         fault=Fault.REMOTE), culprit=Side.UP)

    def receive(self, side: Side, data: bytes) -> None:
        """Bytes from ``side``'s socket. Errors close the relay (see :attr:`closed`)."""
        if self.closed is not None:
            return
        end = self._ends[side]
        if end is None:
            return  # bytes of an upstream already dropped
        try:
            events = end.receive_data(data)
            for ev in events:
                self._event(side, ev)
                if self.closed is not None:
                    return
            self._flush()
        except h2.exceptions.ProtocolError as exc:
            # The GOAWAY names what was broken (FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, ...).
            self._culprit_code = int(exc.error_code)
            self._fail(ProtocolError(f"{self.who(side)} broke HTTP/2: {exc}",
                                     fault=self.fault_of(side)), culprit=side)
        except Flood as exc:
            self._flood(side, exc)
        except DuplicatePeer as exc:
            if side is not self.kaspad_side and self._can_drop_upstream():
                self._drop_upstream(exc)
            else:
                # Nobody misbehaved: both sides get a polite close (kaspad UNAVAILABLE). The
                # remote is not told which connection of ours holds its id.
                self._close_both(str(exc), culprit=None, error=exc,
                                 message="duplicate connection: this node is connected already")
        except BridgeError as exc:
            if isinstance(exc, ProtocolError) and not isinstance(exc, PolicyViolation):
                # Framing/decoding errors are the fault of whoever sent the bytes.
                exc.fault = self.fault_of(side)
                exc.args = (f"{self.who(side)} sent bad data: {exc}",)
            self._fail(exc, culprit=side)

    def data_to_send(self, side: Side) -> bytes:
        e = self._ends[side]
        return e.conn.data_to_send() if e is not None else b""

    def budget(self, side: Side) -> FrameBudget | None:
        """``side``'s connection budget (:mod:`bridge.core.budget`), if it is attached."""
        e = self._ends[side]
        return e.budget if e is not None else None

    def unsent(self, side: Side) -> int:
        """Bytes produced for ``side`` and not yet written: h2's outbound queue (including the
        ACKs h2 sends on its own) plus what the shell reported as being written."""
        e = self._ends[side]
        return e.unsent if e is not None else 0

    def reading_paused(self, side: Side) -> bool:
        """Whether the shell must not read ``side`` now: more is waiting to be written to it
        than relayed DATA can account for (``max_unsent_data``, which the relay never exceeds)
        plus ``max_unsent`` -- replies it asked for and does not read."""
        b = self.settings.budget
        return self.unsent(side) > b.max_unsent_data + b.max_unsent

    def writing(self, side: Side, n: int) -> None:
        """The shell took ``n`` bytes from :meth:`data_to_send` and is writing them."""
        e = self._ends[side]
        if e is not None:
            e.writing(n)

    def wrote(self, side: Side, n: int) -> None:
        """The shell wrote ``n`` bytes to ``side``'s socket; relayed data held back for want
        of room (``max_unsent_data``) moves on."""
        e = self._ends[side]
        if e is not None:
            e.wrote(n)
            self._flush()

    def deadline(self, side: Side) -> float | None:
        """When :meth:`tick` must be called again for ``side`` (its unfinished header block's
        limit), or None."""
        e = self._ends[side]
        return e.budget.deadline if e is not None and self.closed is None else None

    def tick(self, now: float) -> None:
        """The shell's clock (monotonic seconds), passed in before each read and at
        :meth:`deadline`: refills the connections' budgets and closes one whose header block
        stayed unfinished too long."""
        if self.closed is not None:
            return
        for side in (Side.DOWN, Side.UP):
            end = self._ends[side]
            if end is None:
                continue
            try:
                end.budget.tick(now)
            except Flood as exc:
                self._flood(side, exc)
                return

    def connection_lost(self, side: Side) -> None:
        if self._ends[side] is None:
            return  # an upstream already dropped
        if self.closed is None:
            self._close_both(f"{self.who(side)} closed the connection", culprit=side)

    def request_addresses(self) -> bool:
        """Send the remote a RequestAddresses of the bridge's own (active discovery). Only to an
        ADDRv2 remote after the handshake; its reply is harvested, never given to kaspad.
        Returns False when not possible now."""
        if self.closed is not None or not self.policy.can_refresh():
            return False
        pipe = self.pipes[self.kaspad_side]  # kaspad → remote
        if pipe.end_pending:  # kaspad ended its stream: nothing more may go to the remote
            return False
        pipe.inject(grpc.frame(REQUEST_ADDRESSES_MSG), self.policy.bridge_asked)
        self._flush()
        return True

    def refuse(self, message: str) -> None:
        """No upstream could be had in time: answer the DOWN client UNAVAILABLE and close."""
        if self.closed is not None:
            return
        self._close_both(message, culprit=None, status=GRPC_UNAVAILABLE)

    def take_dropped(self) -> Dropped | None:
        """The upstream dropped since the last call (the shell closes its socket after sending
        ``goodbye``, then attaches another upstream or refuses), or ``None``."""
        d, self.dropped = self.dropped, None
        return d

    @property
    def finished(self) -> bool:
        return self.closed is not None

    def stats(self) -> dict[str, int]:
        k = self.kaspad_side
        r = Side.UP if k is Side.DOWN else Side.DOWN
        return {
            "bytes_from_kaspad": self.pipes[k].bytes_in,
            "bytes_from_remote": self.pipes[r].bytes_in,
            "messages_from_kaspad": self.pipes[k].messages,
            "messages_from_remote": self.pipes[r].messages,
            # bytes held by the relay itself: queued for the other side + a message being
            # sniffed or collected for rewriting + produced for a socket and not yet written
            # (h2's own outbound queue, ACKs included)
            "buffered": sum(p.queued + len(p.held) for p in self.pipes.values())
            + self.unsent(Side.DOWN) + self.unsent(Side.UP),
        }

    # -- events -----------------------------------------------------------------------------

    def _event(self, side: Side, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            self._on_request(ev)
        elif isinstance(ev, h2.events.ResponseReceived):
            self._on_response(ev)
        elif isinstance(ev, h2.events.DataReceived):
            if ev.stream_id != self._sid[side]:
                return
            self.pipes[side].feed(ev.data or b"", ev.flow_controlled_length or 0)
            if (self.screening and side is not self.kaspad_side
                    and self.policy.remote.node_id):
                self._screened()  # the remote's Version passed
        elif isinstance(ev, h2.events.TrailersReceived):
            if side is Side.UP:
                self.pipes[side].trailers = _pick(ev.headers or [], _TRAILER_COPY)
        elif isinstance(ev, h2.events.StreamEnded):
            if ev.stream_id == self._sid[side]:
                pipe = self.pipes[side]
                if not pipe.reader.at_boundary:
                    raise FramingError("stream ended in the middle of a gRPC message")
                pipe.end_pending = True
                if self.screening and side is not self.kaspad_side:
                    self._screened()  # ended without a Version: kaspad gets what it sent
        elif isinstance(ev, h2.events.StreamReset):
            if ev.stream_id == self._sid[side]:
                self._close_both(
                    f"{self.who(side)} reset the stream ({errname(ev.error_code)})",
                    culprit=side)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            sid = self._sid[side]
            if sid is not None and (ev.last_stream_id or 0) >= sid:
                # Our stream was covered by the GOAWAY: hand on what arrived before it (whole
                # messages reach the receiver; a partial one is still ended by the close).
                self._flush()
            self._close_both(f"{self.who(side)} sent GOAWAY ({errname(ev.error_code)})",
                             culprit=side)
        elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            pass  # _flush() after the batch handles both

    def _on_request(self, ev: h2.events.RequestReceived) -> None:
        headers = ev.headers or []
        sid = ev.stream_id
        assert sid is not None
        if self._sid[Side.DOWN] is not None:
            self.conn(Side.DOWN).reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        self._sid[Side.DOWN] = sid
        h = dict(headers)
        if h.get(b":method") != b"POST" or h.get(b":path") != P2P_PATH:
            raise ProtocolError(
                f"{self.who(Side.DOWN)} requested {h.get(b':method')!r} {h.get(b':path')!r}, "
                "not the P2P MessageStream")
        enc = h.get(b"grpc-encoding")
        if enc is not None and enc not in _ENCODINGS:
            raise ProtocolError(f"{self.who(Side.DOWN)} uses unsupported grpc-encoding {enc!r}")
        self.pipes[Side.DOWN].encoding = enc
        self._request_headers = _pick(headers, _REQUEST_COPY)
        if self._ends[Side.UP] is not None:
            self._open_upstream()

    def _open_upstream(self) -> None:
        up = self.conn(Side.UP)
        assert self._request_headers is not None
        sid = up.get_next_available_stream_id()
        up.send_headers(sid, [
            (b":method", b"POST"), (b":scheme", b"http"),
            (b":authority", self.upstream_authority), (b":path", P2P_PATH),
            *self._request_headers,
        ])
        self._sid[Side.UP] = sid
        self._headers_sent[Side.UP] = True

    def _on_response(self, ev: h2.events.ResponseReceived) -> None:
        if ev.stream_id != self._sid[Side.UP]:
            return
        headers = ev.headers or []
        h = dict(headers)
        if h.get(b":status") != b"200":
            raise ProtocolError(f"{self.who(Side.UP)} answered HTTP status "
                                f"{h.get(b':status')!r}")
        enc = h.get(b"grpc-encoding")
        if enc is not None and enc not in _ENCODINGS:
            raise ProtocolError(f"{self.who(Side.UP)} uses unsupported grpc-encoding {enc!r}")
        self.pipes[Side.UP].encoding = enc
        down_sid = self._sid[Side.DOWN]
        assert down_sid is not None
        out = [(b":status", b"200"), *_pick(headers, _RESPONSE_COPY)]
        if b"grpc-status" not in h and self.screening:
            self._held_response = out  # sent once the remote's Version passed
            return
        if b"grpc-status" in h:  # trailers-only response
            out += _pick(headers, _TRAILER_COPY)
            self.conn(Side.DOWN).send_headers(down_sid, out, end_stream=True)
            self._headers_sent[Side.DOWN] = True
            self._close_both(f"{self.who(Side.UP)} ended the call at once "
                             f"(grpc-status {h[b'grpc-status'].decode(errors='replace')})",
                             culprit=Side.UP, quiet=True)
            return
        self.conn(Side.DOWN).send_headers(down_sid, out)
        self._headers_sent[Side.DOWN] = True
        self.response_started = True

    def _screened(self) -> None:
        """The remote passed (or ended its call): stop holding it back from kaspad."""
        self.screening = False
        held, self._held_response = self._held_response, None
        sid = self._sid[Side.DOWN]
        if held is not None and sid is not None:
            self.conn(Side.DOWN).send_headers(sid, held)
            self._headers_sent[Side.DOWN] = True
            self.response_started = True

    def _can_drop_upstream(self) -> bool:
        """kaspad has seen nothing of the current upstream: it can be replaced unnoticed."""
        return (self.screening and self.kaspad_side is Side.DOWN
                and not self._headers_sent[Side.DOWN] and self._ends[Side.UP] is not None)

    def _drop_upstream(self, error: BridgeError) -> None:
        """Let the upstream go (its node id is connected already) and wait for another."""
        end = self._ends[Side.UP]
        assert end is not None
        conn, sid = end.conn, self._sid[Side.UP]
        if sid is not None:
            _safe(lambda s=sid: conn.reset_stream(s, h2.errors.ErrorCodes.CANCEL))
        _safe(lambda: conn.close_connection(h2.errors.ErrorCodes.NO_ERROR))
        self.dropped = Dropped(error, conn.data_to_send())
        self.upstreams_dropped += 1
        self._ends[Side.UP] = None
        self._sid[Side.UP] = None
        self._headers_sent[Side.UP] = False
        self._held_response = None
        old = self.pipes[Side.UP]
        self.pipes[Side.UP] = _Pipe(self, Side.UP, Side.DOWN, old.direction,
                                    grpc.MessageReader(self.settings.max_message_bytes))
        self.policy.reset_remote()

    def _flush(self) -> None:
        for pipe in self.pipes.values():
            if (self.closed is None and self._ends[pipe.dst] is not None
                    and self._ends[pipe.src] is not None):
                pipe.flush()

    def _half_closed(self, side: Side) -> None:
        # The call is over when the server's trailers (UP → DOWN end) went out.
        if side is Side.DOWN:
            self.closed = Closed(f"{self.who(Side.UP)} ended the call")
            self._goaway_all(h2.errors.ErrorCodes.NO_ERROR)

    # -- closing ----------------------------------------------------------------------------

    def _flood(self, side: Side, exc: Flood) -> None:
        """``side`` went over its budget: GOAWAY ENHANCE_YOUR_CALM to it, the other side is
        closed politely."""
        exc.fault = self.fault_of(side)
        exc.args = (f"{self.who(side)} {exc}",)
        self._culprit_code = ENHANCE_YOUR_CALM
        self._fail(exc, culprit=side)

    def _fail(self, error: BridgeError, culprit: Side | None) -> None:
        self._close_both(str(error), culprit=culprit, error=error)

    def _close_both(self, reason: str, *, culprit: Side | None, error: BridgeError | None = None,
                    status: int = GRPC_UNAVAILABLE, quiet: bool = False,
                    message: str | None = None) -> None:
        """``message``: the grpc-message for the DOWN client when it must not read ``reason``
        (an inbound remote)."""
        if self.closed is not None:
            return
        self.closed = Closed(reason, error if not quiet else None)
        text = reason if message is None or self.kaspad_side is Side.DOWN else message
        encoded = text.encode("utf-8", "replace")[:200]
        for side in (Side.DOWN, Side.UP):
            end = self._ends[side]
            conn = end.conn if end is not None else None
            sid = self._sid[side]
            if conn is None or side is culprit:
                # Nothing useful can be said to the side that broke the protocol beyond GOAWAY.
                # When h2 itself detected the error it has queued that GOAWAY already, with
                # the precise code: do not send a second one.
                if conn is not None and conn.state_machine.state is not _H2_CLOSED:
                    code = ((self._culprit_code or h2.errors.ErrorCodes.PROTOCOL_ERROR)
                            if error else 0)
                    _safe(lambda c=conn, k=code: c.close_connection(k))
                continue
            if side is Side.DOWN and sid is not None:
                # Tell the HTTP/2 client a proper gRPC status so it logs a reason.
                trailers = [(b"grpc-status", str(status).encode()), (b"grpc-message", encoded)]
                if not self._headers_sent[Side.DOWN]:
                    trailers = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                *trailers]
                _safe(lambda c=conn, s=sid, t=trailers: c.send_headers(s, t, end_stream=True))
            elif sid is not None:
                _safe(lambda c=conn, s=sid: c.reset_stream(s, h2.errors.ErrorCodes.CANCEL))
            _safe(lambda c=conn: c.close_connection())

    def _goaway_all(self, code: int) -> None:
        for end in self._ends.values():
            if end is not None:
                _safe(lambda c=end.conn: c.close_connection(code))


def _pick(headers: Sequence[tuple[bytes, bytes]] | Sequence[tuple[str, str]],
          names: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
    out = []
    for k, v in headers:
        kb = k.encode() if isinstance(k, str) else k
        vb = v.encode() if isinstance(v, str) else v
        if kb in names:
            out.append((kb, vb))
    return out


def errname(code: int | None) -> str:
    if code is None:
        return "no error code"
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"error {code}"


def _safe(fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError, KeyError):
        pass


__all__ = ["Closed", "Dropped", "Endpoint", "Relay", "RelaySettings", "Side",
           "new_upstream_connection"]
