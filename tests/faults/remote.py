"""A scriptable remote peer on raw ``h2`` for fault injection (good peers are grpcio emulators).

``ScriptedRemote(pre, script)`` listens on 127.0.0.1. Each TCP connection:

* ``pre="silent"``: accepts and never sends a byte (TCP-level stall);
* ``pre="trickle"``: sends its HTTP/2 preface (SETTINGS) one byte every ``trickle_delay`` s;
* ``pre="h2"``: sends SETTINGS at once and serves HTTP/2; when the bridge opens the
  MessageStream, ``script(ctx)`` runs (it may answer HEADERS, send raw gRPC bytes, trickle,
  reset the TCP connection, send RST_STREAM or GOAWAY, or do nothing at all).

Every connection's end is recorded in :attr:`ScriptedRemote.ends` (how and when), so a test can
assert that the *bridge* closed it and how fast.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import trio

from bridge.aio import Signal
from bridge.core import grpc, proto
from tests.core.relay_harness import READY, VERACK, version


def handshake_bytes(node_id: bytes | None = None) -> bytes:
    """Version (ADDRv2), Verack, Ready as framed gRPC messages (kaspa-simnet)."""
    return b"".join(grpc.frame(m) for m in (
        version(node_id=node_id or os.urandom(16), services=proto.SERVICE_ADDRV2),
        VERACK, READY))


@dataclass
class End:
    how: str  # "eof" (the bridge closed), "reset", "local" (the script closed it)
    at: float  # trio.current_time()
    accepted_at: float


class Ctx:
    """One connection of a ScriptedRemote, as seen by its script."""

    def __init__(self, remote: ScriptedRemote, s: trio.SocketStream,
                 conn: h2.connection.H2Connection, accepted: float) -> None:
        self.remote = remote
        self.s = s
        self.conn = conn
        self.sid = 0
        self.accepted = accepted
        self.lock = trio.Lock()
        self.window_changed = Signal()
        self.request_at: float | None = None
        self.received = bytearray()  # DATA payload from the bridge
        self.closed_by_peer = trio.Event()

    async def flush(self) -> None:
        async with self.lock:
            out = self.conn.data_to_send()
            if out:
                await self.s.send_all(out)

    async def headers(self) -> None:
        self.conn.send_headers(self.sid, [(b":status", b"200"),
                                          (b"content-type", b"application/grpc")])
        await self.flush()

    async def data(self, payload: bytes) -> None:
        """Send ``payload`` on the stream as fast as the bridge's windows allow."""
        view = memoryview(payload)
        while view:
            window = min(self.conn.local_flow_control_window(self.sid),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                await self.window_changed.wait()
                continue
            self.conn.send_data(self.sid, bytes(view[:window]))
            view = view[window:]
            await self.flush()

    async def trickle(self, payload: bytes, delay: float) -> None:
        """One byte of DATA every ``delay`` seconds."""
        for i in range(len(payload)):
            self.conn.send_data(self.sid, payload[i:i + 1])
            await self.flush()
            await trio.sleep(delay)

    async def trickle_raw(self, raw: bytes, delay: float) -> None:
        for i in range(len(raw)):
            await self.s.send_all(raw[i:i + 1])
            await trio.sleep(delay)

    async def rst_stream(self, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        self.conn.reset_stream(self.sid, code)
        await self.flush()

    async def goaway(self, last_stream_id: int, code: int = 0) -> None:
        self.conn.close_connection(code, last_stream_id=last_stream_id)
        await self.flush()

    def reset_tcp(self) -> None:
        """Abort with a TCP RST (SO_LINGER 0, then close)."""
        self.s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.s.socket.close()

    async def hold(self) -> None:
        """Keep the connection open (reading) until the bridge closes it."""
        await self.closed_by_peer.wait()


Script = Callable[[Ctx], Awaitable[None]]


@dataclass
class ScriptedRemote:
    pre: str = "h2"
    script: Script | None = None
    trickle_delay: float = 1.0
    port: int = 0
    connections: int = 0
    requests: int = 0
    ends: list[End] = field(default_factory=list)
    ctxs: list[Ctx] = field(default_factory=list)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    @property
    def open_connections(self) -> int:
        return self.connections - len(self.ends)

    async def _handle(self, s: trio.SocketStream) -> None:
        self.connections += 1
        accepted = trio.current_time()
        how = "local"
        try:
            how = await self._session(s, accepted)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            how = "reset"
        except OSError:
            how = "reset"
        finally:
            self.ends.append(End(how, trio.current_time(), accepted))
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(s)

    async def _drain(self, s: trio.SocketStream, ctx: Ctx | None = None) -> str:
        while True:
            try:
                data = await s.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return "reset"
            if not data:
                return "eof"

    async def _session(self, s: trio.SocketStream, accepted: float) -> str:
        if self.pre == "silent":
            return await self._drain(s)
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        ctx = Ctx(self, s, conn, accepted)
        self.ctxs.append(ctx)
        if self.pre == "trickle":
            result = "local"
            async with trio.open_nursery() as n:
                async def drain() -> None:
                    nonlocal result
                    result = await self._drain(s)
                    n.cancel_scope.cancel()
                n.start_soon(drain)
                await ctx.trickle_raw(conn.data_to_send(), self.trickle_delay)
                await trio.sleep_forever()
            return result
        await ctx.flush()
        result = "local"
        async with trio.open_nursery() as n:
            while True:
                try:
                    data = await s.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    result = "reset"
                    break
                if not data:
                    result = "eof"
                    break
                try:
                    events = conn.receive_data(data)
                except Exception:  # the bridge's frames after our own GOAWAY/RST etc.
                    events = []
                for ev in events:
                    if isinstance(ev, h2.events.RequestReceived) and ctx.sid == 0:
                        ctx.sid = ev.stream_id or 0
                        ctx.request_at = trio.current_time()
                        self.requests += 1
                        if self.script is not None:
                            n.start_soon(self._run_script, ctx)
                    elif isinstance(ev, h2.events.DataReceived):
                        ctx.received += ev.data or b""
                        try:
                            conn.acknowledge_received_data(ev.flow_controlled_length or 0,
                                                           ev.stream_id or 0)
                        except Exception:
                            pass
                    elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                        ctx.window_changed.notify()
                try:
                    await ctx.flush()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    result = "reset"
                    break
            ctx.closed_by_peer.set()
            n.cancel_scope.cancel()
        return result

    async def _run_script(self, ctx: Ctx) -> None:
        assert self.script is not None
        try:
            await self.script(ctx)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


class RawClient:
    """A raw HTTP/2 gRPC client on ``h2`` (a Tor peer dialing the onion, without grpcio)."""

    def __init__(self, s: trio.SocketStream) -> None:
        self.s = s
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.sid = 0
        self.status: bytes | None = None
        self.grpc_status: bytes | None = None
        self.grpc_message = b""
        self.goaway = False
        self.ended = False
        self.eof = False
        self.received = bytearray()

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            await self.s.send_all(out)

    async def preface(self) -> None:
        self.conn.initiate_connection()
        await self.flush()

    async def open_stream(self) -> None:
        self.sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.sid, [
            (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"x.onion:16511"),
            (b":path", b"/protowire.P2P/MessageStream"), (b"te", b"trailers"),
            # as kaspad's tonic client (protocol.md §2.5); a grpcio server (the emulator)
            # compresses whatever the client accepts
            (b"content-type", b"application/grpc"), (b"grpc-encoding", b"gzip"),
            (b"grpc-accept-encoding", b"gzip,identity")])
        await self.flush()

    async def send(self, data: bytes) -> None:
        self.conn.send_data(self.sid, data)
        await self.flush()

    async def pump(self, until: Callable[[RawClient], bool]) -> None:
        """Read and handle frames until ``until(self)`` or the connection ends."""
        while not until(self) and not self.eof:
            try:
                data = await self.s.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            if not data:
                self.eof = True
                return
            try:
                events = self.conn.receive_data(data)
            except Exception:
                events = []
            for ev in events:
                if isinstance(ev, h2.events.ResponseReceived):
                    h = dict(ev.headers or [])
                    self.status = h.get(b":status")
                    self.grpc_status = h.get(b"grpc-status", self.grpc_status)
                    self.grpc_message = h.get(b"grpc-message", self.grpc_message)
                elif isinstance(ev, h2.events.TrailersReceived):
                    h = dict(ev.headers or [])
                    self.grpc_status = h.get(b"grpc-status")
                    self.grpc_message = h.get(b"grpc-message", b"")
                elif isinstance(ev, h2.events.DataReceived):
                    self.received += ev.data or b""
                    self.conn.acknowledge_received_data(ev.flow_controlled_length or 0,
                                                        ev.stream_id or 0)
                elif isinstance(ev, h2.events.StreamEnded):
                    self.ended = True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.goaway = True
            try:
                await self.flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self.eof = True

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.s)
