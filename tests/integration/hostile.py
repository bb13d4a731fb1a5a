"""A scripted hostile remote peer (failure injection only; good peers are grpcio emulators)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import trio

from bridge.core import grpc, proto
from tests.core.relay_harness import READY, VERACK, version


@dataclass
class HostileServer:
    """Listens on 127.0.0.1. ``mode``:

    * ``garbage``: answers the HTTP/2 preface with random bytes;
    * ``bad-h2``: valid SETTINGS, then a DATA frame on stream 0;
    * ``stream``: a normal HTTP/2 gRPC server that, after the response HEADERS, sends ``first``
      raw bytes at once and ``after_ready`` raw bytes 0.5 s later (after kaspad's Ready).
    """

    mode: str
    first: bytes = b""
    after_ready: bytes = b""
    port: int = 0
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)
    _lock: trio.Lock = field(default_factory=trio.Lock)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, s: trio.SocketStream) -> None:
        self.connections += 1
        try:
            if self.mode == "garbage":
                await s.receive_some(65536)
                await s.send_all(os.urandom(64))
                await trio.sleep(5)
                return
            conn = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=False, header_encoding=None))
            conn.initiate_connection()
            await s.send_all(conn.data_to_send())
            if self.mode == "bad-h2":
                await s.receive_some(65536)
                await s.send_all(b"\x00\x00\x05\x00\x00\x00\x00\x00\x00hello")  # DATA on stream 0
                await trio.sleep(5)
                return
            sid = None
            async with trio.open_nursery() as n:
                while True:
                    data = await s.receive_some(65536)
                    if not data:
                        return
                    self.received += data
                    for ev in conn.receive_data(data):
                        if isinstance(ev, h2.events.RequestReceived):
                            sid = ev.stream_id
                            conn.send_headers(sid, [(b":status", b"200"),
                                                    (b"content-type", b"application/grpc")])
                            conn.send_data(sid, self.first)
                            n.start_soon(self._later, s, conn, sid)
                        elif isinstance(ev, h2.events.DataReceived) and sid is not None:
                            conn.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
                    async with self._lock:
                        out = conn.data_to_send()
                        if out:
                            await s.send_all(out)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _later(self, s: trio.SocketStream, conn: h2.connection.H2Connection,
                     sid: int) -> None:
        if not self.after_ready:
            return
        await trio.sleep(0.5)
        async with self._lock:
            for i in range(0, len(self.after_ready), 16384):
                conn.send_data(sid, self.after_ready[i:i + 16384])
            await s.send_all(conn.data_to_send())


def handshake_bytes() -> bytes:
    return b"".join(grpc.frame(m) for m in (version(node_id=os.urandom(16),
                                                    services=proto.SERVICE_ADDRV2),
                                            VERACK, READY))
