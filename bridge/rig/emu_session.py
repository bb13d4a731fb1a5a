"""One emulated kaspad peer connection (:class:`PeerSession`): the gRPC stream it rides (dialed or
served), its reader/driver threads, timers and closing the way kaspad closes.

What the session does with each message (handshake, validation, flows) is
:mod:`bridge.rig.emu_flows`; the node that owns sessions is :mod:`bridge.rig.emulator`. Import
:class:`PeerSession` through :mod:`bridge.rig.emulator`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from bridge.core.peers import hostport
from bridge.rig import emu_flows
from bridge.rig.emu_codec import (
    _fmt_secs,
    _identity,
    _ser,
    payload_kind,
    version_message,
)
from bridge.rig.emu_config import (
    ADDR_V2,
    CLIENT_OPTIONS,
    MAX_REJECT_REASON,
    METHOD,
    RPC_ABORTED,
    SessionStats,
)
from bridge.rig.proto_gen import pb

if TYPE_CHECKING:  # emulator imports this module
    from bridge.rig.emulator import KaspadEmulator


# ---------------------------------------------------------------------------------------------


class _Close:
    pass


_CLOSE = _Close()


class PeerSession:
    """One peer connection (one gRPC stream). Created by the emulator; tests read its state."""

    def __init__(self, emu: KaspadEmulator, direction: str, remote: str, remote_ip: str) -> None:
        self.emulator = emu
        self.config = emu.config
        self.direction = direction
        self.remote = remote
        self.remote_ip = remote_ip
        self.remote_version: Any = None  # pb.VersionMessage once received
        self.remote_addresses: list[Any] | None = None
        self.received: queue.Queue[Any] = queue.Queue()
        self.violations: list[str] = []
        self.closed_reason: str | None = None
        self.sent_rejects: list[str] = []  # Reject reasons we sent (kaspad's wording)
        self.stats = SessionStats()
        self.response_metadata: tuple[tuple[str, str | bytes], ...] | None = None
        self.request_metadata: tuple[tuple[str, str | bytes], ...] | None = None

        self._out: queue.Queue[Any] = queue.Queue()
        self._inbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._out_open = threading.Event()
        self._handshake_done = threading.Event()
        self._settled = threading.Event()  # handshake done or closed
        self._closed = threading.Event()
        self._close_requested = threading.Event()
        self._wake = threading.Event()  # dial thread: headers arrived or close requested
        self._reader_done = threading.Event()
        self._lock = threading.Lock()
        self._progress = threading.Condition()
        self._call: Any = None
        self._channel: grpc.Channel | None = None
        self._pending_requests: set[int] = set()
        # handshake / flow state (driver thread only)
        self._got_verack = False
        self._validated = False
        self._sent_ready = False
        self._got_ready = False
        self._done = False
        self._pending: list[Any] = []
        self._awaiting_addresses = False
        self._ping_nonce: int | None = None
        self._ping_sent_at = 0.0
        self._timers: dict[str, tuple[float, str, str | None]] = {}

    # -- public API -----------------------------------------------------------------------

    @property
    def handshake_complete(self) -> bool:
        return self._handshake_done.is_set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def remote_supports_addrv2(self) -> bool:
        return self.remote_version is not None and bool(self.remote_version.services & ADDR_V2)

    def wait_handshake(self, timeout: float) -> bool:
        """True once Version -> Verack -> Ready completed both ways; False on close/timeout."""
        self._settled.wait(timeout)
        return self._handshake_done.is_set()

    def wait_closed(self, timeout: float) -> bool:
        return self._closed.wait(timeout)

    def wait_for(self, predicate: Callable[[PeerSession], bool], timeout: float) -> bool:
        """Wait until predicate(self) holds; re-checked after every event the session handles
        (messages, timers, close). Returns the final predicate value."""
        with self._progress:
            return self._progress.wait_for(lambda: predicate(self), timeout)

    def send(self, msg: Any) -> None:
        """Enqueue a KaspadMessage exactly as given (any type, any time), or raw bytes as one
        gRPC message. A nonzero request_id makes a later response_id with that value legal."""
        if not isinstance(msg, bytes | bytearray | memoryview) and msg.request_id:
            with self._lock:
                self._pending_requests.add(msg.request_id)
        self._out.put(msg)

    def close(self) -> None:
        self._close_requested.set()
        self._wake.set()
        self._inbox.put(("close", "closed locally"))

    def wait_received(self, kind: str | None = None, timeout: float = 5.0) -> Any:
        """Next message from ``received`` (optionally of one payload kind, others are skipped and
        re-queued at the end). Raises queue.Empty on timeout."""
        deadline = time.monotonic() + timeout
        skipped: list[Any] = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise queue.Empty
                m = self.received.get(timeout=left)
                if kind is None or payload_kind(m) == kind:
                    return m
                skipped.append(m)
        finally:
            for m in skipped:
                self.received.put(m)

    def __repr__(self) -> str:
        return (
            f"<PeerSession {self.direction} {self.remote} hs={self.handshake_complete} "
            f"closed={self.closed_reason!r} violations={self.violations!r}>"
        )

    # -- transport plumbing -----------------------------------------------------------------

    def _outgoing(self) -> Iterator[Any]:
        """The request/response iterator handed to grpcio."""
        while not self._out_open.is_set():
            if self._out_open.wait(0.05):
                break
            if self._closed.is_set():
                return
        while True:
            item = self._out.get()
            if item is _CLOSE:
                return
            self.stats.messages_out += 1
            raw = isinstance(item, bytes | bytearray | memoryview)
            self.stats.bytes_out += len(item) if raw else item.ByteSize()
            yield item

    def _read(self, incoming: Iterator[bytes]) -> None:
        try:
            for raw in incoming:
                self._inbox.put(("raw", raw))
            self._inbox.put(("eof", "stream ended by peer"))
        except grpc.RpcError as e:
            self._inbox.put(("rpcerror", e))
        except Exception as e:  # pragma: no cover - defensive
            self._inbox.put(("eof", f"reader failed: {e!r}"))
        finally:
            self._reader_done.set()

    def _rpc_terminated(self) -> None:  # grpcio server callback
        # Runs on normal completion too (then the session is already closed and this is moot).
        # Before that it means the stream was aborted: RST_STREAM or connection loss from the
        # peer, or grpc-core failed the call itself (e.g. compressed flag without grpc-encoding:
        # the peer gets grpc-status 13) -- the grpcio server API does not say which.
        self._inbox.put(("eof", RPC_ABORTED))
        self._out.put(_CLOSE)

    # -- outbound connect -------------------------------------------------------------------

    def _dial(self, host: str, port: int) -> None:
        cfg = self.config
        target = hostport(host, port)
        try:
            channel = grpc.insecure_channel(
                target, options=CLIENT_OPTIONS, compression=grpc.Compression.Gzip
            )
            self._channel = channel
            try:
                grpc.channel_ready_future(channel).result(timeout=cfg.connect_timeout)
            except grpc.FutureTimeoutError:
                self._violation(
                    f"connect to {target} not completed within {_fmt_secs(cfg.connect_timeout)}"
                )
                self._finish(f"connect timeout to {target}")
                return
            if self._close_requested.is_set():
                self._finish("closed locally")
                return
            stream = channel.stream_stream(
                METHOD, request_serializer=_ser, response_deserializer=_identity
            )
            call = stream(self._outgoing())
            self._call = call
            got_headers = threading.Event()

            def wait_headers() -> None:
                with contextlib.suppress(Exception):
                    self.response_metadata = tuple(call.initial_metadata() or ())
                got_headers.set()
                self._wake.set()

            threading.Thread(target=wait_headers, daemon=True, name="emu-headers").start()
            self._wake.wait(cfg.response_headers_timeout)
            if self._close_requested.is_set() and not got_headers.is_set():
                with contextlib.suppress(Exception):
                    call.cancel()
                self._finish("closed locally")
                return
            if not got_headers.is_set():
                self._violation(
                    "response HEADERS not received within "
                    f"{_fmt_secs(cfg.response_headers_timeout)} of dialing"
                )
                with contextlib.suppress(Exception):
                    call.cancel()
                self._finish("response headers timeout")
                return
            # If the call already failed, the reader reports it as the first event.
            self._start_reader(call)
            self._drive()
        except Exception as e:  # pragma: no cover - defensive
            self._violation(f"emulator internal error while dialing: {e!r}")
            self._finish(f"internal error: {e!r}")

    def _start_reader(self, incoming: Iterator[bytes]) -> None:
        threading.Thread(
            target=self._read, args=(incoming,), daemon=True, name=f"emu-read-{self.remote}"
        ).start()

    # -- inbound ----------------------------------------------------------------------------

    def _serve(
        self, request_iterator: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        self.request_metadata = tuple(context.invocation_metadata() or ())
        context.add_callback(self._rpc_terminated)
        delay = self.config.response_headers_delay
        if delay is None:
            while context.is_active() and not self.emulator._stopping.wait(0.1):
                pass
            self._finish("stopped while withholding response headers")
            return
        if delay > 0:
            self.emulator._stopping.wait(delay)
        context.send_initial_metadata(())
        self._start_reader(request_iterator)
        threading.Thread(target=self._drive, daemon=True, name=f"emu-drive-{self.remote}").start()
        yield from self._outgoing()

    # -- driver -----------------------------------------------------------------------------

    def _drive(self) -> None:
        try:
            self._out_open.set()
            self._start_handshake()
            while not self._closed.is_set():
                now = time.monotonic()
                timeout = None
                if self._timers:
                    timeout = max(0.0, min(t for t, _, _ in self._timers.values()) - now)
                try:
                    ev = self._inbox.get(timeout=timeout)
                except queue.Empty:
                    self._fire_timers()
                    self._notify()
                    continue
                self._handle_event(ev)
                self._fire_timers()
                self._notify()
        except Exception as e:  # pragma: no cover - defensive
            self._violation(f"emulator internal error: {e!r}")
            self._shutdown(f"internal error: {e!r}")

    def _handle_event(self, ev: tuple[Any, ...]) -> None:
        kind = ev[0]
        if kind == "raw":
            self._on_raw(ev[1])
        elif kind == "eof":
            self._shutdown(ev[1], by_peer=True)
        elif kind == "close":
            self._shutdown(ev[1])
        elif kind == "rpcerror":
            self._on_rpc_error(ev[1])

    def _on_rpc_error(self, e: Any) -> None:
        if self._close_requested.is_set() or self._closed.is_set():
            self._shutdown("closed locally")
            return
        if not hasattr(e, "code"):  # grpcio server request iterator: bare RpcError, no status
            self._shutdown(RPC_ABORTED, by_peer=True)
            return
        code = e.code()
        details = e.details() if hasattr(e, "details") else str(e)
        name = code.name if code is not None else "UNKNOWN"
        if code in (
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.OK,
            None,
        ):
            self._shutdown(f"stream ended: {name}: {details}", by_peer=True)
        else:
            self._violation(f"gRPC stream error {name}: {details}")
            self._shutdown(f"stream error {name}: {details}", by_peer=True)

    def _start_handshake(self) -> None:
        cfg = self.config
        if "version" not in cfg.suppress:
            self._enqueue(version_message(cfg))
        now = time.monotonic()
        hs = cfg.handshake_timeout
        self._timers["version"] = (now + hs, "Version", f"timeout expired after {_fmt_secs(hs)}")
        self._timers["verack"] = (now + hs, "Verack", f"timeout expired after {_fmt_secs(hs)}")

    def _fire_timers(self) -> None:
        now = time.monotonic()
        for name, (deadline, what, reject) in list(self._timers.items()):
            if deadline > now or self._closed.is_set():
                continue
            del self._timers[name]
            if name == "ping":
                self._send_ping()
                continue
            timeout = {
                "version": self.config.handshake_timeout,
                "verack": self.config.handshake_timeout,
                "ready": self.config.ready_timeout,
                "addresses": self.config.addresses_timeout,
                "pong": self.config.pong_timeout,
            }[name]
            self._fail(f"timeout expired after {_fmt_secs(timeout)} waiting for {what}", reject)

    def _notify(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def _enqueue(self, msg: Any) -> None:
        self._out.put(msg)

    def _violation(self, text: str) -> None:
        with self._lock:
            self.violations.append(text)

    def _fail(self, violation: str, reject: str | None) -> None:
        """Record a violation; send Reject where kaspad would; disconnect when strict."""
        self._violation(violation)
        if reject is not None and "reject" not in self.config.suppress:
            self.sent_rejects.append(reject)
            self._enqueue(
                pb.KaspadMessage(reject=pb.RejectMessage(reason=reject[:MAX_REJECT_REASON]))
            )
        if self.config.strict:
            self._shutdown(violation)

    def _shutdown(self, reason: str, *, by_peer: bool = False) -> None:
        if self._closed.is_set():
            return
        if self.closed_reason is None:
            self.closed_reason = reason
        self._out.put(_CLOSE)
        if self.direction == "outbound" and self._call is not None:
            # Half-closed; give the peer a moment to end its side (so a Reject gets delivered),
            # then cancel the call and drop the channel (one connection per peer).
            if not by_peer:
                self._reader_done.wait(1.0)
            with contextlib.suppress(Exception):
                self._call.cancel()
        else:
            self._reader_done.wait(0 if by_peer else 1.0)
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
        if self._channel is not None:
            with contextlib.suppress(Exception):
                self._channel.close()
        self.emulator._unregister(self)
        self._closed.set()
        self._settled.set()
        self._out.put(_CLOSE)
        self._notify()

    # -- message handling (bridge.rig.emu_flows) ----------------------------------------------

    _on_raw = emu_flows._on_raw
    _on_handshake_message = emu_flows._on_handshake_message
    _check_net_address = emu_flows._check_net_address
    _maybe_validate = emu_flows._maybe_validate
    _complete_handshake = emu_flows._complete_handshake
    _send_ping = emu_flows._send_ping
    _on_flow_message = emu_flows._on_flow_message
    _on_addresses = emu_flows._on_addresses
