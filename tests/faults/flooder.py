"""Hostile HTTP/2 peers that write as fast as they can and never read (issue 10, defect 1).

* :func:`flood_inbound` dials the bridge's onion inbound listener as a Tor peer would: the HTTP/2
  preface, optionally the MessageStream request (an active relay to kaspad), then one kind of
  frame, over and over, for a few seconds, without reading a byte of what the bridge answers.
* :class:`FloodingUpstream` is a remote peer behind the bridge's slot (reached through the SOCKS
  server): it completes the handshake like a kaspad (response HEADERS, Version, Verack, Ready),
  then stops reading and floods.

Both record whether the bridge closed the connection (a write fails) and how much they sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import trio
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.faults.remote import handshake_bytes

CHUNK = 64 * 1024

#: one frame of each flood kind, for the stream id given
FRAMES: dict[str, Callable[[int], bytes]] = {
    "ping": lambda sid: PingFrame(0, b"12345678").serialize(),
    "settings": lambda sid: SettingsFrame(0).serialize(),
    "window-update": lambda sid: WindowUpdateFrame(0, window_increment=1).serialize(),
    "priority": lambda sid: PriorityFrame(sid, depends_on=0, stream_weight=15).serialize(),
    "empty-data": lambda sid: DataFrame(sid, b"").serialize(),
    "rst-stream": lambda sid: RstStreamFrame(sid + 2, error_code=8).serialize(),
    # an endless header block: one HEADERS without END_HEADERS is sent first (see _opening)
    "continuation": lambda sid: ContinuationFrame(sid, b"\x00" * 16_000).serialize(),
    "empty-continuation": lambda sid: ContinuationFrame(sid, b"").serialize(),
}


def chunk_of(kind: str, sid: int) -> bytes:
    one = FRAMES[kind](sid)
    return one * max(1, CHUNK // len(one))


@dataclass
class FloodResult:
    sent: int = 0
    closed_by_bridge: bool = False
    took: float = 0.0  # seconds until the bridge closed it (or the flood's end)


async def _pour(stream: trio.abc.Stream, chunk: bytes, seconds: float,
                result: FloodResult) -> None:
    start = trio.current_time()
    with trio.move_on_after(seconds):
        try:
            while True:
                await stream.send_all(chunk)
                result.sent += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            result.closed_by_bridge = True
    result.took = trio.current_time() - start


async def flood_inbound(port: int, kind: str, seconds: float, *,
                        open_stream: bool = False) -> FloodResult:
    """Flood the inbound listener with ``kind`` frames for ``seconds`` (never reading)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding=None))
    conn.initiate_connection()
    sid = 1
    if open_stream:
        conn.send_headers(sid, [
            (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"x.onion:16511"),
            (b":path", b"/protowire.P2P/MessageStream"), (b"te", b"trailers"),
            (b"content-type", b"application/grpc")])
    opening = conn.data_to_send()
    if kind.endswith("continuation"):
        opening += HeadersFrame(sid, b"\x83\x86").serialize()  # no END_HEADERS
    result = FloodResult()
    s = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await s.send_all(opening)
        await _pour(s, chunk_of(kind, sid), seconds, result)
    except (trio.BrokenResourceError, OSError):
        result.closed_by_bridge = True
    finally:
        await trio.aclose_forcefully(s)
    return result


@dataclass
class FloodingUpstream:
    """A remote that handshakes like kaspad, then floods ``kind`` frames and never reads."""

    kind: str = "ping"
    seconds: float = 4.0
    port: int = 0
    results: list[FloodResult] = field(default_factory=list)
    flooding: trio.Event = field(default_factory=trio.Event)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, s: trio.SocketStream) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                    header_encoding=None))
        conn.initiate_connection()
        try:
            await s.send_all(conn.data_to_send())
            sid = 0
            while not sid:  # answer the pool's handshake, wait for the bridge's request
                data = await s.receive_some(CHUNK)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        sid = ev.stream_id or 0
                await s.send_all(conn.data_to_send())
            conn.send_headers(sid, [(b":status", b"200"),
                                    (b"content-type", b"application/grpc")])
            conn.send_data(sid, handshake_bytes())
            await s.send_all(conn.data_to_send())
            await trio.sleep(0.5)  # the relay passes the Version on; kaspad answers
            result = FloodResult()
            self.results.append(result)
            self.flooding.set()
            await _pour(s, chunk_of(self.kind, sid), self.seconds, result)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(s)
