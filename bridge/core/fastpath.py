"""The relay's DATA fast path: relayed payload bytes pass without per-frame h2 objects.

Most of the relay's CPU went to ``h2`` and ``hyperframe`` handling DATA frames the bridge only
forwards: a ``DataFrame`` parsed, flag sets and enum state machines consulted, an event built,
then a second ``DataFrame`` built and serialized for the other side, with five to seven copies
of every byte on the way. ``h2`` keeps the connection state; this module does the same
bookkeeping for the common DATA frame itself, exactly as ``h2`` 4.4 would, and leaves every
other case to ``h2``:

* **Inbound** (:func:`receive`, used by :meth:`bridge.core.relay.Endpoint.receive_data`): the
  bytes are split at frame boundaries (the frame guard still sees every header first, so the
  size limit and the :class:`~bridge.core.budget.FrameBudget` are unchanged). A complete DATA
  frame without flags (no END_STREAM, no padding), non-empty, on a stream ``h2`` has open for
  receiving, outside a header block, without a content-length to check and within both
  inbound windows, is accounted the way ``H2Connection._receive_data_frame`` does it (both
  window managers' ``window_consumed``, the stream's received length) and becomes a
  ``DataReceived`` event whose data is a memoryview of the received bytes. Everything else
  (preface, control frames, HEADERS, END_STREAM, padded or empty DATA, DATA on a closed or
  unknown stream, DATA beyond a window) goes to ``h2`` unchanged, and ``h2`` has processed all
  bytes before a DATA frame when that frame is judged, so its state is current. A DATA frame cut
  by a read is held until complete (``h2`` too consumes a frame only once it is whole), so the
  WINDOW_UPDATEs ``h2`` sends when the relay acknowledges data are the same, in amount and
  moment.
* **Pass-through** (:func:`pass_through`, used by ``_Pipe.feed``): a chunk wholly inside a
  message the policy passes goes to the payload sniffer (the second-payload check) and the
  output queue without the :class:`~bridge.core.grpc.MessageReader`'s event objects and copy.
* **Outbound** (:func:`send_data`, used by ``_Pipe.flush``): DATA frames are written straight
  into ``h2``'s outbound buffer from memoryview slices (one copy), with both outbound windows
  debited as ``H2Connection.send_data`` does; a stream or connection not open for sending falls
  back to ``send_data`` itself (which raises as before).

One difference in order, not in outcome: without the fast path the guard checks every frame
header of a read before h2 sees any of it; here h2 is handed a read's frames up to each DATA
frame as it goes, so when a later frame of the same read goes over the budget, h2 (and the
windows) have already seen the frames before it. The connection is closed the same way, with the
same bytes (the lockstep test compares them).

The output is byte-identical to the slow path's (``tests/core/test_fastpath.py`` runs both on
random chunkings, frame sizes and window updates). A queued payload view pins the read it came
from; a payload smaller than an eighth of its read is copied instead, so what is held stays
within a small factor of what is queued (and the queue is bounded by the windows, as before).

:data:`ENABLED` switches it off for side-by-side benchmarks (``BRIDGE_FASTPATH=0`` in the
environment at import, or :func:`set_enabled`). Nothing here touches a socket, clock or thread.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import h2.connection
import h2.events
import h2.stream

from bridge.core.policy import Action

if TYPE_CHECKING:
    from bridge.core.relay import Endpoint, _Pipe

ENABLED = os.environ.get("BRIDGE_FASTPATH", "1") != "0"

_OPEN = (h2.connection.ConnectionState.CLIENT_OPEN, h2.connection.ConnectionState.SERVER_OPEN)
_RECV = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL)
_SEND = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE)
_WU = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL,
       h2.stream.StreamState.HALF_CLOSED_REMOTE)
_MAX_WINDOW = 2**31 - 1
_DATA = 0
_WINDOW_UPDATE = 8
#: END_STREAM | PADDED: either sends the frame to h2
_SLOW_FLAGS = 0x1 | 0x8
_DataReceived = h2.events.DataReceived
_WindowUpdated = h2.events.WindowUpdated


def set_enabled(on: bool) -> None:
    """Switch the fast path for endpoints created from now on (benchmarks, tests)."""
    global ENABLED
    ENABLED = on


class Inbound:
    """Per-connection state of :func:`receive`: the frame being read."""

    __slots__ = ("data_frame", "header", "remaining")

    def __init__(self) -> None:
        #: the 9-byte header of the current frame, while incomplete
        self.header = bytearray()
        #: payload bytes of the current frame still to come (0: at a frame header)
        self.remaining = 0
        #: the current frame is a DATA frame held here until whole (header + payload so far)
        self.data_frame: bytearray | None = None


def receive(end: Endpoint, data: bytes) -> list[h2.events.Event]:
    """``end.guard.feed(data); return end.conn.receive_data(data)``, with qualifying DATA
    frames accounted here instead of by h2 (module docstring)."""
    st = end.fast
    assert st is not None
    guard = end.guard
    check = guard.on_header
    events: list[h2.events.Event] = []
    view = memoryview(data)
    n = len(view)
    pos = 0
    slow = 0  # view[slow:pos] are h2's bytes not handed to it yet
    while pos < n:
        if guard.skip:  # the client preface: h2's
            k = min(guard.skip, n - pos)
            guard.skip -= k
            pos += k
            continue
        if st.remaining:  # inside a frame's payload
            k = min(st.remaining, n - pos)
            st.remaining -= k
            if st.data_frame is None:  # h2's frame
                pos += k
                continue
            st.data_frame += view[pos:pos + k]
            pos += k
            slow = pos
            if not st.remaining:
                whole, st.data_frame = bytes(st.data_frame), None
                _data(end, memoryview(whole), 0, events)
            continue
        # a frame header
        if not st.header and n - pos >= 9:
            hv = view[pos:pos + 9]
            hstart = pos
            pos += 9
        else:
            begin = pos
            take = min(9 - len(st.header), n - pos)
            st.header += view[pos:pos + take]
            pos += take
            _slow(end, view[slow:begin], events)  # h2 gets what came before
            slow = pos
            if len(st.header) < 9:
                break
            hv = memoryview(bytes(st.header))
            hstart = -1
            st.header.clear()
        length = int.from_bytes(hv[:3], "big")
        ftype, flags = hv[3], hv[4]
        check(length, ftype, flags)  # the guard: size limit and budget, before anything else
        if ftype == _WINDOW_UPDATE and length == 4 and hstart >= 0 and n - pos >= 4:
            _slow(end, view[slow:hstart], events)
            slow = hstart
            if _window_update(end, hv, view[pos:pos + 4], events):
                pos += 4
                slow = pos
            else:
                st.remaining = 4
            continue
        if ftype != _DATA or flags & _SLOW_FLAGS or not length:
            if hstart < 0:
                _slow(end, hv, events)
            st.remaining = length
            continue
        # a DATA frame: h2 must first have processed everything before it
        if hstart >= 0:
            _slow(end, view[slow:hstart], events)
        if n - pos >= length:  # whole in this read
            if hstart >= 0:
                _data(end, view[hstart:pos + length], n, events)
            else:
                _data(end, memoryview(bytes(hv) + view[pos:pos + length]), 0, events)
            pos += length
            slow = pos
            continue
        st.data_frame = bytearray(hv)
        st.data_frame += view[pos:]
        st.remaining = length - (n - pos)
        pos = slow = n
    _slow(end, view[slow:pos], events)
    return events


def _slow(end: Endpoint, chunk: memoryview, events: list[h2.events.Event]) -> None:
    if chunk:
        events.extend(end.conn.receive_data(chunk))


def _data(end: Endpoint, frame: memoryview, base: int, events: list[h2.events.Event]) -> None:
    """One whole DATA frame (header + payload; no END_STREAM, no padding, not empty), accounted
    here when h2 would accept it as it is, else handed to h2. ``base``: the size of the read
    ``frame`` is a view of (0: its own copy)."""
    conn = end.conn
    length = len(frame) - 9
    sid = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
    stream: Any = conn.streams.get(sid)
    if (stream is None or conn.state_machine.state not in _OPEN
            or stream.state_machine.state not in _RECV
            or not stream.state_machine.headers_received
            or conn.incoming_buffer._headers_buffer
            or stream._expected_content_length is not None):
        events.extend(conn.receive_data(frame))
        return
    cw = conn._inbound_flow_control_window_manager
    sw = stream._inbound_window_manager
    if length > cw.current_window_size or length > sw.current_window_size:
        events.extend(conn.receive_data(frame))  # h2 raises FLOW_CONTROL_ERROR
        return
    cw.current_window_size -= length
    sw.current_window_size -= length
    stream._actual_content_length += length
    payload = frame[9:]
    if base and length * 8 < base:
        payload = memoryview(payload.tobytes())  # do not pin a large read for a small frame
    events.append(_DataReceived(stream_id=sid, data=payload,  # type: ignore[arg-type]
                                flow_controlled_length=length))


def _window_update(end: Endpoint, header: memoryview, body: memoryview,
                   events: list[h2.events.Event]) -> bool:
    """A whole WINDOW_UPDATE frame, applied as ``H2Connection._receive_window_update_frame``
    does when it is valid and changes nothing but a window; False: h2 must handle it."""
    conn = end.conn
    inc = int.from_bytes(body, "big") & 0x7FFFFFFF
    sid = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
    if not inc or conn.state_machine.state not in _OPEN or conn.incoming_buffer._headers_buffer:
        return False
    if not sid:
        if conn.outbound_flow_control_window + inc > _MAX_WINDOW:
            return False
        conn.outbound_flow_control_window += inc
    else:
        stream: Any = conn.streams.get(sid)
        if (stream is None or stream.state_machine.state not in _WU
                or stream.outbound_flow_control_window + inc > _MAX_WINDOW):
            return False
        stream.outbound_flow_control_window += inc
    events.append(_WindowUpdated(stream_id=sid, delta=inc))
    return True


def send_data(end: Endpoint, sid: int, data: memoryview, max_unsent: int) -> int:
    """Send DATA frames of ``data`` on ``sid`` as far as the windows, the peer's frame size and
    ``max_unsent`` (bytes produced for ``end`` and not yet written) allow; returns the number of
    payload bytes sent. Each frame is charged to ``end.budget`` as the relay did per frame."""
    conn = end.conn
    stream: Any = conn.streams.get(sid)
    fast = (ENABLED and stream is not None and conn.state_machine.state in _OPEN
            and stream.state_machine.state in _SEND)
    max_frame = conn.max_outbound_frame_size
    earn = end.budget.earn
    sent = 0
    total = len(data)
    while sent < total:
        if fast:
            window = min(conn.outbound_flow_control_window, stream.outbound_flow_control_window)
        else:
            window = conn.local_flow_control_window(sid)
        room = max_unsent - (len(conn._data_to_send) + end.unwritten)
        k = min(window, room, max_frame, total - sent)
        if k <= 0:
            break
        if fast:
            buf = conn._data_to_send
            buf += k.to_bytes(3, "big") + b"\x00\x00" + sid.to_bytes(4, "big")
            buf += data[sent:sent + k]
            conn.outbound_flow_control_window -= k
            stream.outbound_flow_control_window -= k
        else:
            conn.send_data(sid, data[sent:sent + k].tobytes())
        earn(k, frames_sent=1)
        sent += k
    return sent


def pass_through(pipe: _Pipe, data: bytes | memoryview, credit: int) -> bool:
    """``_Pipe.feed`` for a chunk wholly inside a message the policy passes (not its last
    byte): the same accounting, second-payload check and output, without the message reader's
    events. Returns False (nothing done) for any other chunk."""
    reader = pipe.reader
    n = len(data)
    if not ENABLED or pipe.action is not Action.PASS or reader._remaining <= n or not n:
        return False
    pipe.bytes_in += n
    src = pipe.relay._ends[pipe.src]
    if src is not None:
        src.budget.earn(n)
    reader._remaining -= n
    if pipe.sniffer is not None:  # follows the whole message: no 2nd payload passes
        pipe.sniffer.feed(data)  # type: ignore[arg-type]
    pipe._emit(data, credit)  # type: ignore[arg-type]
    return True
