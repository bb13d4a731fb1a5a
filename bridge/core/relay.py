"""Sans-IO relay of one kaspad P2P stream between two HTTP/2 connections.

One :class:`Relay` owns two ``h2`` connections: ``DOWN``, where the bridge is the HTTP/2 server
(the side that connected to us), and ``UP``, where the bridge is the client. For a kaspad slot,
DOWN is kaspad and UP the Tor peer; for the onion inbound, DOWN is the Tor peer and UP kaspad.

The shell feeds socket bytes with :meth:`Relay.receive` and writes :meth:`Relay.data_to_send`;
``receive`` and the relay's other shell-facing calls return events (:mod:`bridge.core.events`:
``Closed``, ``Dropped``, ``Note``, ``HandshakeSeen``, ``OnionsLearned``, ``AddressesLearned``),
which the shell acts on. Nothing here touches a socket, a clock, a log or a thread. Each side is
one :class:`~bridge.core.legs.Leg` (connection, stream, pipe of what it sends); the HTTP/2
plumbing is :mod:`bridge.core.h2conn`.

Flow control is end to end: bytes received on one side are acknowledged to h2 (which then opens
the sender's window) only once their output has been handed to the other side's h2 connection,
which itself only accepts what the receiver's window allows. A slow receiver therefore throttles
the sender; buffered data is bounded by the windows we advertise, never by message sizes.

Screening the remote (``screen=True``: the bridge's slot relays, ``kaspad_side=DOWN``): the
remote's response HEADERS are held back from kaspad, and kaspad's bytes from the remote, until the
remote's Version has arrived and the policy accepted it (not our own kaspad, not a node id already
connected to kaspad, see :mod:`bridge.core.nodes`). kaspad sends nothing before the response
HEADERS and a kaspad remote sends its Version right after them without waiting for ours (protocol.md
§2.5, §5.1), so this costs no round trip; the warm pool's upstreams only have the HTTP/2 preface
done, and the Version is the first place the remote's node id can be seen. Until then kaspad has
seen nothing of this remote, so when the Version shows a duplicate
(:class:`~bridge.errors.DuplicatePeer`) the relay *drops that upstream* instead of closing: it
cancels the stream, returns a :class:`~bridge.core.events.Dropped` event carrying the
GOAWAY(NO_ERROR) for the shell to deliver, and waits for :meth:`Relay.attach_upstream` with
another one, on which it opens the same request.
kaspad only ever sees the upstream that passed (or, when the shell has none in time, an
UNAVAILABLE answer). The response deadline therefore covers the remote's Version, not just its
HEADERS.

Gating the onion inbound (``screen=True`` with ``kaspad_side=UP``): the remote is the HTTP/2
client and kaspad is not dialed until the remote's Version passed. A kaspad client waits for the
response HEADERS before it sends anything (protocol.md §3.2), so the relay answers the request
itself, with the headers kaspad would send (:func:`response_headers_for`, protocol.md §2.5), and
holds the remote's messages until the Version has been checked. Only then does
:attr:`Relay.upstream_wanted` ask the shell for kaspad; the relay opens the same request on it,
hands on the held Version, and takes kaspad's own response HEADERS as the start of the relay
without sending them on (the remote has had its HEADERS). A peer whose Version is refused (a
decompression bomb, a duplicate node id, our own kaspad) therefore costs kaspad nothing: no
connection, no handshake.

One peer does not send its Version first: another bridge's slot relay, which screens *us* (it
holds its kaspad back until our kaspad's Version passed). Such a peer sends nothing at all after
its request, so the shell opens the gate (:meth:`Relay.open_gate`) when the peer stayed silent
for a short while: kaspad is dialed and the relay goes on as an ungated one (the peer's Version,
when it comes, is still checked before kaspad sees it). A peer that has started a message must
finish its Version first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from bridge.core import grpc, h2fast
from bridge.core.budget import ENHANCE_YOUR_CALM, Flood, FrameBudget
from bridge.core.errors import (
    BridgeError,
    DuplicatePeer,
    Fault,
    FramingError,
    PolicyViolation,
    ProtocolError,
)
from bridge.core.events import Closed, Dropped, RelayEvent
from bridge.core.h2conn import (
    H2_CLOSED,
    P2P_PATH,
    Endpoint,
    RelaySettings,
    errname,
    new_upstream_connection,
    safe,
)
from bridge.core.legs import Leg, Pipe, RelayTiming, Side, connect
from bridge.core.policy import ConnectionPolicy, Direction

h2fast.install()  # output-identical; saves a 16 KiB hexlify per received DATA frame

#: RequestAddresses{includeAllSubnetworks: false} exactly as kaspad sends it (protocol.md §4.3)
REQUEST_ADDRESSES_MSG = bytes.fromhex("3200")
GRPC_UNAVAILABLE = 14
GRPC_UNIMPLEMENTED = 12
GRPC_INTERNAL = 13
_ENCODINGS = {b"gzip", b"identity"}
# Request headers copied from the HTTP/2 client to the server (everything else is dropped).
_REQUEST_COPY = (b"te", b"content-type", b"grpc-encoding", b"grpc-accept-encoding", b"user-agent")
_RESPONSE_COPY = (b"content-type", b"grpc-encoding", b"grpc-accept-encoding")
_TRAILER_COPY = (b"grpc-status", b"grpc-message")


@dataclass(frozen=True, slots=True)
class Inflow:
    """How one side's current gRPC message is coming in (the shell's stall watchdog)."""

    #: counts the upstreams dropped so far: a new value means the leg has a new connection
    upstream: int
    #: a message has started and not ended
    mid_message: bool
    #: part of it waits for the other side's window: the relay itself holds the sender back
    held_back: bool
    #: bytes received from this side so far (on the current connection)
    bytes_in: int


class Relay:
    """Relay state machine for one kaspad⇄remote P2P stream.

    The shell-facing methods that can change the relay's course (:meth:`receive`,
    :meth:`attach_upstream`, :meth:`wrote`, :meth:`tick`, :meth:`connection_lost`,
    :meth:`refuse`) return the :data:`~bridge.core.events.RelayEvent` s it produced, in order;
    the last one of a relay is :class:`~bridge.core.events.Closed`."""

    def __init__(self, policy: ConnectionPolicy, *, kaspad_side: Side,
                 upstream_authority: bytes, settings: RelaySettings | None = None,
                 upstream: Endpoint | None = None, screen: bool = False,
                 timing: RelayTiming | None = None) -> None:
        self.policy = policy
        #: message latency per direction (the shell's clock and histograms), or None
        self.timing = timing
        self.settings = settings or RelaySettings()
        self.kaspad_side = kaspad_side
        self.upstream_authority = upstream_authority
        self.legs = {
            Side.DOWN: Leg(Side.DOWN, Endpoint(False, self.settings,
                                               remote=kaspad_side is Side.UP)),
            Side.UP: Leg(Side.UP, upstream),
        }
        down, up = self.legs[Side.DOWN], self.legs[Side.UP]
        down_dir = (Direction.TO_REMOTE if kaspad_side is Side.DOWN else Direction.TO_KASPAD)
        up_dir = Direction.TO_KASPAD if kaspad_side is Side.DOWN else Direction.TO_REMOTE
        connect(down, up, down_dir, policy, self.settings, timing)
        connect(up, down, up_dir, policy, self.settings, timing)
        self._request_headers: list[tuple[bytes, bytes]] | None = None
        self._closed: Closed | None = None
        self._events: list[RelayEvent] = []

        self.response_started = False
        #: HTTP/2 error code for the GOAWAY to a peer that broke the protocol
        self._culprit_code: int | None = None
        #: hold the remote back from kaspad until its Version passed, see the module docstring
        #: (slot relays: the remote's response; the onion inbound: kaspad is not even dialed)
        self.screening = screen
        #: the onion inbound's form of screening: the relay answers the remote's request itself
        self.gated = screen and kaspad_side is Side.UP
        #: the grpc-encoding the relay announced to the remote in its own response HEADERS
        self._announced: bytes | None = None
        self._held_response: list[tuple[bytes, bytes]] | None = None
        self.upstreams_dropped = 0

    # -- accessors --------------------------------------------------------------------------

    @property
    def closed(self) -> Closed | None:
        """How the relay ended (the :class:`Closed` it returned), or None while it runs."""
        return self._closed

    @property
    def finished(self) -> bool:
        return self._closed is not None

    def leg(self, side: Side) -> Leg:
        return self.legs[side]

    def conn(self, side: Side) -> h2.connection.H2Connection:
        e = self.legs[side].end
        if e is None:
            raise RuntimeError("upstream not attached yet")
        return e.conn

    def stream_id(self, side: Side) -> int | None:
        return self.legs[side].sid

    def headers_sent(self, side: Side) -> bool:
        return self.legs[side].headers_sent

    def fault_of(self, side: Side) -> Fault:
        return Fault.KASPAD if side is self.kaspad_side else Fault.REMOTE

    def who(self, side: Side) -> str:
        return "kaspad" if side is self.kaspad_side else self.policy.remote_label

    @property
    def upstream_wanted(self) -> bool:
        """The shell should attach the upstream now: the DOWN client opened its stream and, on
        a gated inbound relay, its Version passed."""
        return (self._closed is None and self._request_headers is not None
                and not (self.gated and self.screening))

    def open_gate(self) -> bool:
        """A gated relay whose remote has sent nothing since it opened its stream: it waits for
        kaspad's Version first (a screening bridge, see the module docstring). From now on the
        upstream is wanted and kaspad's bytes are not held back. False (nothing changes) when
        the remote has started sending: its Version must pass first."""
        if (not self.gated or not self.screening or self._closed is not None
                or self._request_headers is None or self.legs[Side.DOWN].pipe.bytes_in):
            return False
        self.screening = False
        return True

    @property
    def has_upstream(self) -> bool:
        """An UP connection is attached (not yet, or not since one was dropped)."""
        return self.legs[Side.UP].end is not None

    def mid_message(self, side: Side) -> bool:
        """``side`` has started a gRPC message it has not finished."""
        return not self.legs[side].pipe.reader.at_boundary

    def inflow(self, side: Side) -> Inflow:
        pipe = self.legs[side].pipe
        return Inflow(self.upstreams_dropped if side is Side.UP else 0,
                      not pipe.reader.at_boundary, pipe.queued > 0, pipe.bytes_in)

    # -- shell interface --------------------------------------------------------------------

    def attach_upstream(self, end: Endpoint, authority: bytes | None = None) -> list[RelayEvent]:
        """Give the relay its upstream connection (fresh or from the warm pool)."""
        if self._closed is None:
            if authority is not None:
                self.upstream_authority = authority
            self.legs[Side.UP].end = end
            if self.upstream_wanted:
                try:
                    self._open_upstream()
                except h2.exceptions.ProtocolError as exc:
                    self._fail(ProtocolError(f"upstream connection unusable: {exc}",
                                             fault=Fault.REMOTE), culprit=Side.UP)
        return self._take()

    def receive(self, side: Side, data: bytes) -> list[RelayEvent]:
        """Bytes from ``side``'s socket. Errors close the relay (a :class:`Closed` event)."""
        end = self.legs[side].end
        if self._closed is not None or end is None:  # (None: bytes of an upstream dropped)
            return self._take()
        try:
            for ev in end.receive_data(data):
                self._event(side, ev)
                if self._closed is not None:
                    return self._take()
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
        return self._take()

    def data_to_send(self, side: Side) -> bytes:
        e = self.legs[side].end
        return e.conn.data_to_send() if e is not None else b""

    def budget(self, side: Side) -> FrameBudget | None:
        """``side``'s connection budget (:mod:`bridge.core.budget`), if it is attached."""
        e = self.legs[side].end
        return e.budget if e is not None else None

    def unsent(self, side: Side) -> int:
        """Bytes produced for ``side`` and not yet written: h2's outbound queue (including the
        ACKs h2 sends on its own) plus what the shell reported as being written."""
        e = self.legs[side].end
        return e.unsent if e is not None else 0

    def reading_paused(self, side: Side) -> bool:
        """Whether the shell must not read ``side`` now: more is waiting to be written to it
        than relayed DATA can account for (``max_unsent_data``, which the relay never exceeds)
        plus ``max_unsent`` -- replies it asked for and does not read."""
        b = self.settings.budget
        return self.unsent(side) > b.max_unsent_data + b.max_unsent

    def writing(self, side: Side, n: int) -> None:
        """The shell took ``n`` bytes from :meth:`data_to_send` and is writing them."""
        e = self.legs[side].end
        if e is not None:
            e.writing(n)

    def wrote(self, side: Side, n: int) -> list[RelayEvent]:
        """The shell wrote ``n`` bytes to ``side``'s socket; relayed data held back for want
        of room (``max_unsent_data``) moves on."""
        e = self.legs[side].end
        if e is not None:
            e.wrote(n)
            self._flush()
        return self._take()

    def deadline(self, side: Side) -> float | None:
        """When :meth:`tick` must be called again for ``side`` (its unfinished header block's
        limit), or None."""
        e = self.legs[side].end
        return e.budget.deadline if e is not None and self._closed is None else None

    def tick(self, now: float) -> list[RelayEvent]:
        """The shell's clock (monotonic seconds), passed in before each read and at
        :meth:`deadline`: refills the connections' budgets and closes one whose header block
        stayed unfinished too long."""
        if self._closed is None:
            for side in (Side.DOWN, Side.UP):
                end = self.legs[side].end
                if end is None:
                    continue
                try:
                    end.budget.tick(now)
                except Flood as exc:
                    self._flood(side, exc)
                    break
        return self._take()

    def connection_lost(self, side: Side) -> list[RelayEvent]:
        if self.legs[side].end is not None and self._closed is None:  # (None: dropped)
            self._close_both(f"{self.who(side)} closed the connection", culprit=side)
        return self._take()

    def request_addresses(self) -> bool:
        """Send the remote a RequestAddresses of the bridge's own (active discovery). Only to an
        ADDRv2 remote after the handshake; its reply is harvested, never given to kaspad.
        Returns False when not possible now."""
        if self._closed is not None or not self.policy.can_refresh():
            return False
        pipe = self.legs[self.kaspad_side].pipe  # kaspad → remote
        if pipe.end_pending:  # kaspad ended its stream: nothing more may go to the remote
            return False
        pipe.inject(grpc.frame(REQUEST_ADDRESSES_MSG), self.policy.bridge_asked)
        self._forward(pipe)  # (cannot end the stream: its end is not pending)
        return True

    def refuse(self, message: str) -> list[RelayEvent]:
        """No upstream could be had in time (or the shell gives up on the relay): answer the
        DOWN client UNAVAILABLE and close."""
        if self._closed is None:
            self._close_both(message, culprit=None, status=GRPC_UNAVAILABLE)
        return self._take()

    def stats(self) -> dict[str, int]:
        k = self.legs[self.kaspad_side].pipe
        r = self.legs[Side.UP if self.kaspad_side is Side.DOWN else Side.DOWN].pipe
        return {
            "bytes_from_kaspad": k.bytes_in,
            "bytes_from_remote": r.bytes_in,
            "messages_from_kaspad": k.messages,
            "messages_from_remote": r.messages,
            # bytes held by the relay itself: queued for the other side + a message being
            # sniffed or collected for rewriting + produced for a socket and not yet written
            # (h2's own outbound queue, ACKs included)
            "buffered": sum(p.queued + len(p.held) for p in (k, r))
            + self.unsent(Side.DOWN) + self.unsent(Side.UP),
        }

    # -- events out -------------------------------------------------------------------------

    def _emit(self, event: RelayEvent) -> None:
        self._events.extend(self.policy.take_events())  # (what led to it comes first)
        self._events.append(event)

    def _take(self) -> list[RelayEvent]:
        self._events.extend(self.policy.take_events())
        out, self._events = self._events, []
        return out

    # -- h2 events in -----------------------------------------------------------------------

    def _event(self, side: Side, ev: h2.events.Event) -> None:
        leg = self.legs[side]
        if isinstance(ev, h2.events.DataReceived):
            if ev.stream_id == leg.sid:
                self._relay_data(leg, ev.data or b"", ev.flow_controlled_length or 0)
        elif isinstance(ev, h2.events.RequestReceived):
            self._on_request(ev)
        elif isinstance(ev, h2.events.ResponseReceived):
            self._on_response(ev)
        elif isinstance(ev, h2.events.TrailersReceived):
            if side is Side.UP:
                leg.pipe.trailers = _pick(ev.headers or [], _TRAILER_COPY)
        elif isinstance(ev, h2.events.StreamEnded):
            if ev.stream_id == leg.sid:
                if not leg.pipe.reader.at_boundary:
                    raise FramingError("stream ended in the middle of a gRPC message")
                leg.pipe.end_pending = True
                if self.screening and side is not self.kaspad_side:
                    if self.gated:  # nothing for kaspad: it is not even dialed
                        self._close_both(f"{self.who(side)} ended its stream before sending "
                                         "its Version", culprit=None)
                        return
                    self._screened()  # ended without a Version: kaspad gets what it sent
        elif isinstance(ev, h2.events.StreamReset):
            if ev.stream_id == leg.sid:
                self._close_both(
                    f"{self.who(side)} reset the stream ({errname(ev.error_code)})",
                    culprit=side)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            if leg.sid is not None and (ev.last_stream_id or 0) >= leg.sid:
                # Our stream was covered by the GOAWAY: hand on what arrived before it (whole
                # messages reach the receiver; a partial one is still ended by the close).
                self._flush()
            self._close_both(f"{self.who(side)} sent GOAWAY ({errname(ev.error_code)})",
                             culprit=side)
        elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            pass  # _flush() after the batch handles both

    def _relay_data(self, leg: Leg, data: bytes, flow_controlled: int) -> None:
        """DATA of the relayed stream from ``leg``: into its pipe (forwarded by :meth:`_flush`
        after the batch, see :meth:`Pipe.forward`)."""
        leg.pipe.feed(data, flow_controlled)
        if self.screening and leg.side is not self.kaspad_side and self.policy.remote.node_id:
            self._screened()  # the remote's Version passed

    def _on_request(self, ev: h2.events.RequestReceived) -> None:
        headers = ev.headers or []
        sid = ev.stream_id
        assert sid is not None
        down = self.legs[Side.DOWN]
        if down.sid is not None:
            self.conn(Side.DOWN).reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        down.sid = sid
        h = dict(headers)
        if h.get(b":method") != b"POST" or h.get(b":path") != P2P_PATH:
            raise ProtocolError(
                f"{self.who(Side.DOWN)} requested {h.get(b':method')!r} {h.get(b':path')!r}, "
                "not the P2P MessageStream")
        enc = h.get(b"grpc-encoding")
        if enc is not None and enc not in _ENCODINGS:
            raise ProtocolError(f"{self.who(Side.DOWN)} uses unsupported grpc-encoding {enc!r}")
        down.pipe.encoding = enc
        self._request_headers = _pick(headers, _REQUEST_COPY)
        if self.gated:
            out = response_headers_for(headers)
            self._announced = dict(out).get(b"grpc-encoding")
            self.conn(Side.DOWN).send_headers(sid, out)
            down.headers_sent = True
        if self.legs[Side.UP].end is not None and self.upstream_wanted:
            self._open_upstream()

    def _open_upstream(self) -> None:
        up = self.legs[Side.UP]
        conn = self.conn(Side.UP)
        assert self._request_headers is not None
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [
            (b":method", b"POST"), (b":scheme", b"http"),
            (b":authority", self.upstream_authority), (b":path", P2P_PATH),
            *self._request_headers,
        ])
        up.sid = sid
        up.headers_sent = True

    def _on_response(self, ev: h2.events.ResponseReceived) -> None:
        up, down = self.legs[Side.UP], self.legs[Side.DOWN]
        if ev.stream_id != up.sid:
            return
        headers = ev.headers or []
        h = dict(headers)
        if h.get(b":status") != b"200":
            raise ProtocolError(f"{self.who(Side.UP)} answered HTTP status "
                                f"{h.get(b':status')!r}")
        enc = h.get(b"grpc-encoding")
        if enc is not None and enc not in _ENCODINGS:
            raise ProtocolError(f"{self.who(Side.UP)} uses unsupported grpc-encoding {enc!r}")
        up.pipe.encoding = enc
        down_sid = down.sid
        assert down_sid is not None
        if self.gated and enc not in (None, b"identity") and enc != self._announced:
            # (kaspad compresses only for a client that accepts it: protocol.md §2.2)
            raise ProtocolError(f"{self.who(Side.UP)} answered with grpc-encoding {enc!r}, "
                                f"not {self._announced!r} as the bridge told the remote",
                                fault=Fault.KASPAD)
        out = [(b":status", b"200"), *_pick(headers, _RESPONSE_COPY)]
        if b"grpc-status" not in h and self.screening:
            self._held_response = out  # sent once the remote's Version passed
            return
        if b"grpc-status" in h:  # trailers-only response
            if down.headers_sent:  # (gated: the relay answered the remote already)
                out = _pick(headers, _TRAILER_COPY)
            else:
                out += _pick(headers, _TRAILER_COPY)
            self.conn(Side.DOWN).send_headers(down_sid, out, end_stream=True)
            down.headers_sent = True
            self._close_both(f"{self.who(Side.UP)} ended the call at once "
                             f"(grpc-status {h[b'grpc-status'].decode(errors='replace')})",
                             culprit=Side.UP, quiet=True)
            return
        if not self.gated:  # (gated: the remote has the relay's own HEADERS)
            self.conn(Side.DOWN).send_headers(down_sid, out)
            down.headers_sent = True
        self.response_started = True

    def _screened(self) -> None:
        """The remote passed (or ended its call): stop holding it back from kaspad."""
        self.screening = False
        held, self._held_response = self._held_response, None
        down = self.legs[Side.DOWN]
        if held is not None and down.sid is not None:
            self.conn(Side.DOWN).send_headers(down.sid, held)
            down.headers_sent = True
            self.response_started = True
        up = self.legs[Side.UP]
        if self.gated and up.end is not None and up.sid is None:
            self._open_upstream()  # (attached early: only a test does that)

    def _can_drop_upstream(self) -> bool:
        """kaspad has seen nothing of the current upstream: it can be replaced unnoticed."""
        return (self.screening and self.kaspad_side is Side.DOWN
                and not self.legs[Side.DOWN].headers_sent and self.has_upstream)

    def _drop_upstream(self, error: BridgeError) -> None:
        """Let the upstream go (its node id is connected already) and wait for another."""
        up = self.legs[Side.UP]
        end = up.end
        assert end is not None
        conn, sid = end.conn, up.sid
        if sid is not None:
            safe(lambda s=sid: conn.reset_stream(s, h2.errors.ErrorCodes.CANCEL))
        safe(lambda: conn.close_connection(h2.errors.ErrorCodes.NO_ERROR))
        self.upstreams_dropped += 1
        up.detach()
        self._held_response = None
        connect(up, self.legs[Side.DOWN], up.pipe.direction, self.policy, self.settings,
                self.timing)
        self.policy.reset_remote()
        self._emit(Dropped(error, conn.data_to_send()))

    def _flush(self) -> None:
        for leg in self.legs.values():
            if self._closed is None:
                self._forward(leg.pipe)

    def _forward(self, pipe: Pipe) -> None:
        if pipe.dst.end is None or pipe.src.end is None:
            return
        if self.screening and pipe.dst.side is not self.kaspad_side:
            return  # nothing of kaspad's reaches a remote before its Version passed
        if pipe.forward() and pipe.dst.side is Side.DOWN:
            # The call is over when the server's trailers (UP → DOWN end) went out.
            self._set_closed(Closed(f"{self.who(Side.UP)} ended the call"))
            self._goaway_all(h2.errors.ErrorCodes.NO_ERROR)

    # -- closing ----------------------------------------------------------------------------

    def _set_closed(self, closed: Closed) -> None:
        self._closed = closed
        self._emit(closed)

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
        if self._closed is not None:
            return
        self._set_closed(Closed(reason, error if not quiet else None))
        text = reason if message is None or self.kaspad_side is Side.DOWN else message
        encoded = text.encode("utf-8", "replace")[:200]
        for side, leg in self.legs.items():
            conn = leg.end.conn if leg.end is not None else None
            sid = leg.sid
            if conn is None or side is culprit:
                # Nothing useful can be said to the side that broke the protocol beyond GOAWAY.
                # When h2 itself detected the error it has queued that GOAWAY already, with
                # the precise code: do not send a second one.
                if conn is not None and conn.state_machine.state is not H2_CLOSED:
                    code = ((self._culprit_code or h2.errors.ErrorCodes.PROTOCOL_ERROR)
                            if error else 0)
                    safe(lambda c=conn, k=code: c.close_connection(k))
                continue
            if side is Side.DOWN and sid is not None:
                # Tell the HTTP/2 client a proper gRPC status so it logs a reason.
                trailers = [(b"grpc-status", str(status).encode()), (b"grpc-message", encoded)]
                if not leg.headers_sent:
                    trailers = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                *trailers]
                safe(lambda c=conn, s=sid, t=trailers: c.send_headers(s, t, end_stream=True))
            elif sid is not None:
                safe(lambda c=conn, s=sid: c.reset_stream(s, h2.errors.ErrorCodes.CANCEL))
            safe(lambda c=conn: c.close_connection())

    def _goaway_all(self, code: int) -> None:
        for leg in self.legs.values():
            if leg.end is not None:
                safe(lambda c=leg.end.conn: c.close_connection(code))


def response_headers_for(request: Sequence[tuple[bytes, bytes]] | Sequence[tuple[str, str]]
                         ) -> list[tuple[bytes, bytes]]:
    """The response HEADERS kaspad's server sends for ``request`` (protocol.md §2.5): status
    200, the gRPC content type, and ``grpc-encoding: gzip`` when the client accepts gzip (kaspad
    then compresses its messages; otherwise it sends them plain, flag 0)."""
    picked = _pick(request, (b"grpc-accept-encoding",))
    accept = picked[-1][1] if picked else b""
    out = [(b":status", b"200"), (b"content-type", b"application/grpc")]
    if b"gzip" in (e.strip() for e in accept.split(b",")):
        out.append((b"grpc-encoding", b"gzip"))
    return out


def _pick(headers: Sequence[tuple[bytes, bytes]] | Sequence[tuple[str, str]],
          names: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
    out = []
    for k, v in headers:
        kb = k.encode() if isinstance(k, str) else k
        vb = v.encode() if isinstance(v, str) else v
        if kb in names:
            out.append((kb, vb))
    return out

__all__ = ["Closed", "Dropped", "Endpoint", "Inflow", "Relay", "RelaySettings", "RelayTiming",
           "Side", "new_upstream_connection", "response_headers_for"]
