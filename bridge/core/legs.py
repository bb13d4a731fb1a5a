"""The relay's two legs (:class:`Leg`, one per side) and the pipe of each direction (:class:`Pipe`).

A leg is one HTTP/2 connection of the relay: its :class:`~bridge.core.h2conn.Endpoint` (``None``
while no upstream is attached), the id of the relayed stream on it, whether our HEADERS went out
on it, and the :class:`Pipe` carrying what that side sends towards the other leg: gRPC messages
read from the source stream, classified (and, for Version and Addresses, rewritten) by the
policy, queued and forwarded as the destination's window allows. Sans-IO.

The DATA hot path is :meth:`Pipe.feed` (bytes received, split at gRPC message boundaries) and
:meth:`Pipe.forward` (bytes handed on to the other connection, and acknowledged to the sender).

Message relay latency (:class:`RelayTiming`, optional): the shell hands in its clock and a
histogram per direction; a pipe reads the clock when a message starts (its first bytes are in
the read being processed) and when the output item holding its last byte has been handed to the
destination's HTTP/2 connection, and observes the difference. Two clock reads per message, none
per byte or per DATA frame; a message the policy drops is not observed (it is not relayed).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.exceptions

from bridge.core import fastpath, grpc, proto
from bridge.core.errors import DecodeError, FramingError
from bridge.core.h2conn import Endpoint, RelaySettings
from bridge.core.histogram import Histogram
from bridge.core.policy import Action, ConnectionPolicy, Direction

__all__ = ["Leg", "Pipe", "RelayTiming", "Side", "connect"]


class Side(enum.Enum):
    DOWN = "down"  # we are the HTTP/2 server
    UP = "up"  # we are the HTTP/2 client

    # Members are singletons compared by identity; Enum's own __hash__ is a Python-level call
    # (hash of the name) on every per-side dict lookup of the hot path.
    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True)
class RelayTiming:
    """The shell's clock (monotonic seconds) and where each direction's message latencies go:
    ``from_kaspad`` for what kaspad sends, ``from_remote`` for what the remote sends."""

    clock: Callable[[], float]
    from_kaspad: Histogram
    from_remote: Histogram


@dataclass(slots=True)
class _Out:
    data: memoryview
    credit: int = 0  # bytes of the source to acknowledge once ``data`` is sent
    #: clock time the message whose last byte is in ``data`` started (timed pipes only)
    born: float | None = None


@dataclass(slots=True)
class Pipe:
    """One direction: source stream → gRPC messages → policy → destination stream.

    It reads its source leg and writes its destination leg, asks the policy about each message,
    and knows nothing of the relay that owns it."""

    src: Leg
    dst: Leg
    direction: Direction
    policy: ConnectionPolicy
    settings: RelaySettings
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
    #: message latency: the shell's clock and this direction's histogram (None: not timed)
    clock: Callable[[], float] | None = None
    latency: Histogram | None = None
    #: clock time the current message started
    started: float = 0.0

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
        src = self.src.end
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
                                           self.policy.inflate_budgets[self.direction],
                                           pause_at_tag=True)
        if self.clock is not None:
            self.started = self.clock()

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
            if len(self.held) > self.policy.rewrite_wire_limit(tag or 0, self.compressed):
                raise DecodeError("message too large to rewrite")

    def _decide(self, tag: int) -> None:
        self.action = self.policy.classify(self.direction, tag)
        if self.action is Action.PASS:
            if self.sniffer is not None:  # vet what was held before it goes out
                self.sniffer.follow()
            self._emit(self.prefix + bytes(self.held))
            self.held.clear()
        else:  # REWRITE: collected whole (bounded), then handed to the policy
            limit = self.policy.rewrite_wire_limit(tag, self.compressed)
            if int.from_bytes(self.prefix[1:5], "big") > limit:
                raise DecodeError(f"{proto.payload_name(tag)} larger than {limit} bytes")

    def _end(self) -> None:
        if self.action is None:
            # The message ended before revealing a payload type: empty payload.
            raise DecodeError("message with an empty payload")
        if self.action is Action.REWRITE:
            raw = bytes(self.held)
            tag = self.sniffer.tag if self.sniffer is not None else None
            limit = self.policy.rewrite_limit(tag or 0)  # never inflated past it
            plain = grpc.gzip_decompress(raw, limit) if self.compressed else raw
            new = self.policy.rewrite(self.direction, plain)
            if new is not None:
                self._emit(grpc.frame(new))
                self._stamp()
        else:
            self._stamp()
        self.messages += 1
        self.action = None
        self.held.clear()
        self.sniffer = None
        self._emit_injections()

    def _stamp(self) -> None:
        """The message that just ended has its last byte in the newest output item: mark it
        with the message's start, observed once that item is handed on (timed pipes only)."""
        if self.clock is not None and self.out:
            self.out[-1].born = self.started

    def _emit(self, data: bytes, credit: int = 0) -> None:
        if not data and not credit:
            return
        if not data and self.out and self.out[-1].credit >= 0:
            self.out[-1].credit += credit
            return
        self.out.append(_Out(memoryview(data), credit))
        self.queued += len(data)

    def forward(self) -> bool:
        """The DATA-forwarding step: hand queued output to the destination's h2 connection as
        far as its window and ``max_unsent_data`` allow, acknowledge to the source what went out
        (end-to-end flow control), and end the destination stream once the source's end has
        been forwarded. The caller checks that both legs are attached and that the destination
        may be written (screening). Returns True when this call ended the destination stream."""
        dst_end, src_end = self.dst.end, self.src.end
        sid, src_sid = self.dst.sid, self.src.sid
        if sid is None or not self.dst.headers_sent or dst_end is None or src_end is None:
            return False
        dst, src = dst_end.conn, src_end.conn
        max_unsent = self.settings.budget.max_unsent_data
        acked = 0
        while self.out:
            item = self.out[0]
            if item.data:  # as the windows, the frame size and max_unsent_data allow
                n = fastpath.send_data(dst_end, sid, item.data, max_unsent)
                item.data = item.data[n:]
                self.queued -= n
            if item.data:
                break
            acked += item.credit
            self.out.popleft()
            if item.born is not None and self.latency is not None and self.clock is not None:
                self.latency.observe(self.clock() - item.born)
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
            return True
        return False


class Leg:
    """One side of the relay: its connection, its stream and the pipe of what it sends."""

    __slots__ = ("end", "headers_sent", "pipe", "sid", "side")

    def __init__(self, side: Side, end: Endpoint | None) -> None:
        self.side = side
        #: the HTTP/2 connection; None while no upstream is attached (or since one was dropped)
        self.end = end
        #: the relayed stream's id on this connection
        self.sid: int | None = None
        #: our HEADERS (request or response) went out on this stream
        self.headers_sent = False
        self.pipe: Pipe  # set by the relay once both legs exist

    def detach(self) -> None:
        """The connection was let go: the leg waits for another."""
        self.end = None
        self.sid = None
        self.headers_sent = False


def connect(src: Leg, dst: Leg, direction: Direction, policy: ConnectionPolicy,
            settings: RelaySettings, timing: RelayTiming | None = None) -> Pipe:
    """A fresh pipe from ``src`` to ``dst`` (installed as ``src.pipe``), its messages timed
    into ``timing`` when given."""
    src.pipe = Pipe(src, dst, direction, policy, settings,
                    grpc.MessageReader(settings.max_message_bytes))
    if timing is not None:
        src.pipe.clock = timing.clock
        src.pipe.latency = (timing.from_kaspad if direction is Direction.TO_REMOTE
                            else timing.from_remote)
    return src.pipe
