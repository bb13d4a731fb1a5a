"""kaspad P2P on the wire without grpcio: gRPC framing, a message counter, the minimal ``h2``
peer and server (threads, blocking sockets) and the messages they send (Version, Verack,
Ready, transactions). ``VERACK``/``READY`` are filled by :func:`pb`: read them as
``wire.VERACK`` after calling it, not imported by name.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
import zlib
from typing import Any

P2P_PATH = b"/protowire.P2P/MessageStream"
LAT_TX_PAYLOAD = 250


def grpc_frame(payload: bytes, compressed: bool) -> bytes:
    return bytes([1 if compressed else 0]) + len(payload).to_bytes(4, "big") + payload


class MsgCounter:
    """Counts gRPC messages in a stream of DATA bytes; optionally timestamps each one."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.times: list[float] | None = None
        self._pre = bytearray()
        self._left = 0
        self._len = 0

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                self._left -= take
                i += take
                if not self._left:
                    self._done()
                continue
            need = 5 - len(self._pre)
            self._pre += data[i:i + need]
            i += min(need, n - i)
            if len(self._pre) == 5:
                self._len = self._left = int.from_bytes(self._pre[1:5], "big")
                self._pre.clear()
                if not self._left:
                    self._done()

    def _done(self) -> None:
        self.count += 1
        self.bytes += self._len
        if self.times is not None:
            self.times.append(time.perf_counter())


class RawPeer:
    """One HTTP/2 connection carrying the P2P stream, driven by a reader thread."""

    def __init__(self, sock: socket.socket, client: bool, authority: bytes = b"") -> None:
        import h2.config
        import h2.connection
        import h2.events
        import h2.settings

        self.h2 = h2.events
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client = client
        cfg = h2.config.H2Configuration(
            client_side=client, header_encoding=None, validate_inbound_headers=False,
            validate_outbound_headers=False, normalize_inbound_headers=False,
            normalize_outbound_headers=False)
        self.conn = h2.connection.H2Connection(cfg)
        window = (2 if client else 1) * 1024 * 1024  # kaspad: client 2 MiB, server 1 MiB
        values = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
                  h2.settings.SettingCodes.MAX_FRAME_SIZE: 16384}
        if client:
            values[h2.settings.SettingCodes.ENABLE_PUSH] = 0
        self.conn.local_settings = h2.settings.Settings(client=client, initial_values=values)
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(window)
        self.cond = threading.Condition()
        self.send_lock = threading.Lock()
        self.sid: int | None = None
        self.open = threading.Event()  # stream usable (response headers seen / request got)
        self.closed = threading.Event()
        self.taken = False  # handed to a benchmark link already
        self.counter = MsgCounter()
        if client:
            self.sid = 1
            self.conn.send_headers(1, [
                (b":method", b"POST"), (b":scheme", b"http"), (b":path", P2P_PATH),
                (b":authority", authority), (b"te", b"trailers"),
                (b"content-type", b"application/grpc"), (b"grpc-encoding", b"gzip"),
                (b"grpc-accept-encoding", b"gzip,identity"), (b"user-agent", b"tonic/0.12.3")])
        self._flush()
        self.thread = threading.Thread(target=self._read, daemon=True, name="raw-read")
        self.thread.start()

    def _flush(self) -> None:
        with self.send_lock:
            with self.cond:
                out = self.conn.data_to_send()
            if out:
                try:
                    self.sock.sendall(out)
                except OSError:
                    self.closed.set()

    def _read(self) -> None:
        ev_mod = self.h2
        try:
            while True:
                data = self.sock.recv(262144)
                if not data:
                    break
                with self.send_lock:
                    with self.cond:
                        events = self.conn.receive_data(data)
                        for ev in events:
                            self._event(ev, ev_mod)
                        out = self.conn.data_to_send()
                        self.cond.notify_all()
                    if out:
                        self.sock.sendall(out)
                if self.closed.is_set():
                    break
        except Exception:  # connection reset, protocol error: the run just ends
            pass
        finally:
            self.closed.set()
            self.open.set()
            with self.cond:
                self.cond.notify_all()

    def _event(self, ev: Any, m: Any) -> None:
        if isinstance(ev, m.DataReceived):
            self.counter.feed(ev.data)
            if ev.flow_controlled_length:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, m.RequestReceived):
            self.sid = ev.stream_id
            self.conn.send_headers(self.sid, [
                (b":status", b"200"), (b"content-type", b"application/grpc"),
                (b"grpc-encoding", b"gzip"), (b"grpc-accept-encoding", b"gzip,identity")])
            self.open.set()
        elif isinstance(ev, m.ResponseReceived):
            self.open.set()
        elif isinstance(ev, m.StreamEnded):
            if not self.client and ev.stream_id == self.sid:
                self.conn.send_headers(self.sid, [(b"grpc-status", b"0")], end_stream=True)
            else:
                self.closed.set()
        elif isinstance(ev, m.StreamReset | m.ConnectionTerminated):
            self.closed.set()

    def send(self, framed: bytes) -> bool:
        """Send one framed gRPC message under HTTP/2 flow control. False if the peer is gone."""
        view = memoryview(framed)
        sid = self.sid
        assert sid is not None
        while view:
            with self.cond:
                while not self.closed.is_set():
                    window = self.conn.local_flow_control_window(sid)
                    if window > 0:
                        break
                    self.cond.wait(0.5)
                if self.closed.is_set():
                    return False
            with self.send_lock:
                with self.cond:
                    window = self.conn.local_flow_control_window(sid)
                    fs = self.conn.max_outbound_frame_size
                    n = min(window, len(view), 256 * 1024)
                    off = 0
                    while off < n:
                        k = min(fs, n - off)
                        self.conn.send_data(sid, bytes(view[off:off + k]))
                        off += k
                    out = self.conn.data_to_send()
                view = view[n:]
                try:
                    self.sock.sendall(out)
                except OSError:
                    self.closed.set()
                    return False
        return True

    def handshake(self, version: bytes) -> None:
        for raw in (version, VERACK, READY):
            self.send(grpc_frame(raw, False))

    def finish(self, timeout: float = 3.0) -> None:
        """End our side of the call and wait for the other end to finish; close the socket."""
        if self.client and self.sid is not None and not self.closed.is_set():
            with self.send_lock, self.cond:
                with contextlib.suppress(Exception):
                    self.conn.end_stream(self.sid)
                out = self.conn.data_to_send()
                with contextlib.suppress(OSError):
                    self.sock.sendall(out)
        self.closed.wait(timeout)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout)


class RawServer:
    """Accepts HTTP/2 connections (the bridge's warm pool ones too) and hands out the streams."""

    def __init__(self) -> None:
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port: int = self.lsock.getsockname()[1]
        self.peers: list[RawPeer] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._accept, daemon=True, name="raw-accept").start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.lsock.accept()
            except OSError:
                return
            self.accepted(self.new_peer(sock))

    def new_peer(self, sock: socket.socket) -> RawPeer:
        """The peer serving an accepted connection (subclasses: another kind of peer)."""
        return RawPeer(sock, client=False)

    def accepted(self, peer: RawPeer) -> None:
        """Add ``peer`` to :attr:`peers` (subclasses: prune first, greet it, ...)."""
        with self.cond:
            self.peers.append(peer)
            self.cond.notify_all()

    def wait_stream(self, timeout: float = 10) -> RawPeer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.cond:
                for p in self.peers:
                    if not p.taken and p.open.is_set() and not p.closed.is_set():
                        p.taken = True
                        return p
            time.sleep(0.005)
        raise TimeoutError("no stream reached the raw receiver")

    def prune(self) -> None:
        with self.cond:
            self.peers = [p for p in self.peers if not p.closed.is_set()]

    def stop(self) -> None:
        self.lsock.close()


# =============================================================================================
# Messages

_pb: Any = None
VERACK = b""
READY = b""


def pb() -> Any:
    global _pb, VERACK, READY
    if _pb is None:
        from bridge.rig.proto_gen import pb as generated

        _pb = generated
        VERACK = generated.KaspadMessage(verack=generated.VerackMessage()).SerializeToString()
        READY = generated.KaspadMessage(ready=generated.ReadyMessage()).SerializeToString()
    return _pb


def raw_version() -> bytes:
    from bridge.rig.emulator import EmulatorConfig, version_message

    out: bytes = version_message(EmulatorConfig(addrv2=True)).SerializeToString()
    return out


def gzip6(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def tx_message(i: int) -> Any:
    p = pb()
    rnd = random.Random(i)
    return p.KaspadMessage(request_id=i, transaction=p.TransactionMessage(
        version=0, payload=rnd.randbytes(LAT_TX_PAYLOAD)))
