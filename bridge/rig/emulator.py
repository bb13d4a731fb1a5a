"""A kaspad P2P peer emulator built on grpcio (threaded), for testing the relay end to end.

It follows docs/protocol.md: one bidirectional ``/protowire.P2P/MessageStream`` per
peer and one TCP connection per peer, the Version -> Verack -> Ready handshake with kaspad's
timeouts and validation order (§5), the one-shot address exchange (§7.1), application-level
ping/pong (§8), gzip like kaspad (§2.2) and the fork's ADDRv2/onion rules (§11). Everything
real kaspad would disconnect on is recorded in ``PeerSession.violations``; when ``strict`` the
session is then closed the way kaspad closes it (with a ``Reject`` where kaspad sends one, silently
where it does not). A few things kaspad tolerates but a relay must never cause (a duplicate
Version/Verack/Ready *during* the handshake) are recorded without disconnecting.

Usage::

    a = KaspadEmulator(EmulatorConfig(addrv2=True)); port = a.start_server()
    b = KaspadEmulator(EmulatorConfig()); out = b.dial("127.0.0.1", relay_port)
    assert out.wait_handshake(10); inbound = a.wait_sessions(1, 10)[0]
    ...; assert out.violations == [] and inbound.violations == []; a.stop(); b.stop()

grpcio is a different HTTP/2 stack from kaspad's tonic/hyper/h2, so the relay is exercised against
an independent implementation. What grpcio (1.85, grpc-c 58) does differently, as observed with a
raw h2 peer (see the wire-level tests), and what this module does about it:

* Compression is per message and only when it pays: with gzip enabled grpc-core sets
  compressed-flag 1 only if the gzip output is smaller. Verack/Ready/Ping/Pong/RequestAddresses and
  even a 78-byte Version go out with flag 0 under ``grpc-encoding: gzip``; tonic sets flag 1 on
  *every* message of a gzip stream (kaspad-as-client always). Compressible blocks/Addresses are
  flag 1 from both; incompressible ones are flag 0 from grpcio. ``make_block_message`` therefore
  defaults to half-compressible content so the relay's gunzip path is exercised.
* As server, grpcio gzips responses even when the client's ``grpc-accept-encoding`` lacks gzip
  (tonic honours it, so kaspad sends plain frames to such a client). ``server_gzip=False``
  emulates kaspad answering a client that does not accept gzip.
* Headers. grpcio client: ``:path, :authority, :method, :scheme, content-type, te,
  grpc-encoding: gzip, grpc-accept-encoding: identity, deflate, gzip, user-agent`` (tonic:
  ``gzip,identity`` and ``tonic/0.x``); we set ``grpc.primary_user_agent=tonic/0.12.3`` but
  grpc-c appends ``grpc-python/... grpc-c/... (linux; chttp2)``. No ``grpc-timeout`` (same as
  kaspad). grpcio server response: ``:status 200, content-type, grpc-encoding: gzip,
  grpc-accept-encoding: identity, deflate, gzip``; no ``date`` header (hyper adds one).
* Response HEADERS timing: a grpcio server sends them lazily, with the first response message;
  kaspad-as-server sends them at once, so the servicer calls ``send_initial_metadata`` first
  (``response_headers_delay`` delays or, with None, withholds them to test a relay's 10 s budget).
* Outbound timeouts: tonic's 1 s ``connect_timeout`` covers the TCP connect only; here it is
  ``channel_ready_future``, which also covers the HTTP/2 preface/SETTINGS exchange. tonic's 10 s
  ``timeout`` bounds the wait for response HEADERS; here a helper thread waits on the call's
  ``initial_metadata()``. Like kaspad, no DATA is sent before the response headers arrive.
* SETTINGS: grpcio server sends INITIAL_WINDOW_SIZE=1 MiB (our lookahead option; hyper: same),
  MAX_HEADER_LIST_SIZE=20480 (hyper 16384), 0xFE03 GRPC_ALLOW_TRUE_BINARY_METADATA=1, and a
  connection WINDOW_UPDATE of +983041 (same as hyper). grpcio client sends ENABLE_PUSH=0,
  MAX_CONCURRENT_STREAMS=0 (hyper: absent), INITIAL_WINDOW_SIZE=2 MiB (our lookahead; hyper: same),
  MAX_HEADER_LIST_SIZE=20480, 0xFE03=1. DATA-frame splitting/batching differs from tonic's ~32 KiB
  yield threshold, so gRPC message boundaries land differently in DATA frames.
* Turned off because kaspad has no such thing: BDP-probe PINGs (``grpc.http2.bdp_probe=0``),
  keepalive PINGs (``grpc.keepalive_time_ms`` = max), the server's ping-strike policy that sends
  GOAWAY "too_many_pings" (``grpc.http2.max_ping_strikes=0``), transparent retries
  (``grpc.enable_retries=0``), global subchannel sharing, which would put two dials of the same
  target on ONE TCP connection (``grpc.use_local_subchannel_pool=1``), SO_REUSEPORT, and
  reconnect-with-backoff: by default grpc-core re-dials (a new TCP connection every ~100 ms-1 s)
  while the channel is not READY and gives up on a connection that has not delivered the server's
  SETTINGS within its min connect timeout; a huge backoff makes each ``dial`` exactly one TCP
  connect, bounded by ``connect_timeout`` (kaspad: one attempt per dial). On server stop
  grpc-core sends GOAWAY followed by a PING (two-phase graceful close).
* Framing errors are handled by grpc-core before Python sees the message. Client side, a
  compressed-flag message without ``grpc-encoding`` fails the call with INTERNAL "Compression bit
  set but no encoding configured", which becomes a violation. Server side, grpc-core answers the
  peer with grpc-status 13 but the grpcio server API only shows the stream ending, so the session
  closes WITHOUT a violation (``closed_reason`` says "stream ended by peer" or "rpc terminated");
  a relay test should assert the inbound session did not close early. Message limits are 1 GiB
  each way (kaspad: 1 GiB decode, unlimited encode).
* Threads: the grpcio sync server holds one pool thread per live inbound stream
  (``max_workers`` bounds concurrent inbound peers); each session also has a reader and a driver
  thread. kaspad is async and serializes inbound handshakes (protocol.md §3.2); the emulator
  runs them in parallel.

Not emulated: IBD, block/tx relay logic (those messages land in ``PeerSession.received``),
``InvRelayBlock(sink)`` at start-up, the address book, inbound limits, user-agent rules. Addresses
are answered in ``EmulatorConfig.addresses`` order (kaspad samples randomly).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import queue
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import message as pb_message
from google.protobuf.unknown_fields import UnknownFieldSet

from bridge.core.kaspa import SIMNET
from bridge.rig.proto_gen import pb

KaspadMessage = Any  # pb.KaspadMessage (generated at import time; not a static type)
NetAddr = tuple[bytes | str, int]  # (4/16-byte ip, port) or (onion host "<56 chars>.onion", port)

METHOD = "/protowire.P2P/MessageStream"
ADDR_V2 = 1 << 23
MAX_ADDRESSES_RECEIVE = 2500
MAX_ADDRESSES_SEND = 1000
P2P_MAX_MESSAGE_SIZE = 1024 * 1024 * 1024
MAX_REJECT_REASON = 2048
IGNORABLE_REJECTS = frozenset({"LOOPBACK_CONNECTION", "DUPLICATE_CONNECTION"})
PONG_NONCE_MISMATCH = "nonce mismatch between ping and pong"
TONIC_USER_AGENT = "tonic/0.12.3"
# closed_reason of an inbound stream that grpcio reports as aborted without a status.
RPC_ABORTED = "rpc terminated (peer reset/disconnect, or grpc-core rejected a frame)"

# Built-in outputs that `EmulatorConfig.suppress` can withhold (hostile-peer tests).
SUPPRESSIBLE = frozenset(
    {"version", "verack", "ready", "request_addresses", "addresses", "pong", "ping", "reject"}
)

_COMMON_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", P2P_MAX_MESSAGE_SIZE),
    ("grpc.max_send_message_length", P2P_MAX_MESSAGE_SIZE),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.enable_retries", 0),
    ("grpc.max_metadata_size", 16 * 1024),
]
SERVER_OPTIONS: list[tuple[str, Any]] = [
    *_COMMON_OPTIONS,
    ("grpc.so_reuseport", 0),
    ("grpc.http2.lookahead_bytes", 1024 * 1024),
    ("grpc.max_connection_idle_ms", 2**31 - 1),
    ("grpc.max_connection_age_ms", 2**31 - 1),
]
CLIENT_OPTIONS: list[tuple[str, Any]] = [
    *_COMMON_OPTIONS,
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.http2.lookahead_bytes", 2 * 1024 * 1024),
    ("grpc.primary_user_agent", TONIC_USER_AGENT),
    # One TCP connection attempt per dial, like kaspad: a huge backoff means grpc-core never
    # retries within our connect_timeout window (min_reconnect_backoff is also its connect
    # deadline, which covers the wait for the server's SETTINGS; our own timer is shorter).
    ("grpc.initial_reconnect_backoff_ms", 600_000),
    ("grpc.min_reconnect_backoff_ms", 600_000),
    ("grpc.max_reconnect_backoff_ms", 600_000),
]


@dataclass
class EmulatorConfig:
    network: str = SIMNET.name
    protocol_version: int = 8  # the Tor fork's version
    min_peer_protocol_version: int = 7
    # True: Version.services |= ADDR_V2 and accept/gossip onion entries with ADDRv2 peers (fork).
    # False: upstream: an entry with no 4/16-byte ip is a violation + disconnect.
    addrv2: bool = False
    node_id: bytes = field(default_factory=lambda: os.urandom(16))
    user_agent: str = "/kaspad:1.0.1/kaspad:1.0.1/"
    advertised_address: tuple[bytes | str, int] | None = None  # Version.address
    addresses: list[NetAddr] = field(default_factory=list)  # answered to RequestAddresses
    ping_interval: float = 120.0
    connect_timeout: float = 1.0
    response_headers_timeout: float = 10.0
    handshake_timeout: float = 4.0
    ready_timeout: float = 8.0
    addresses_timeout: float = 120.0
    pong_timeout: float = 120.0
    # --- emulator knobs (not kaspad settings) ---
    strict: bool = True  # False: record violations but do not disconnect (Rejects are still sent)
    # Built-in outputs to withhold (see SUPPRESSIBLE). A withheld Pong/Addresses reply puts the
    # Ping/RequestAddresses into `received` so the test can answer it by hand.
    suppress: frozenset[str] = frozenset()
    response_headers_delay: float | None = 0.0  # inbound: None = never send response HEADERS
    max_workers: int = 64  # grpcio server threads = max concurrent inbound streams
    # Inbound: gzip responses. grpcio's server does this even when the client's
    # grpc-accept-encoding lacks gzip (tonic/kaspad would then send plain frames); set False to
    # emulate kaspad answering a client that does not accept gzip.
    server_gzip: bool = True
    services: int | None = None  # override Version.services entirely (None: derived from addrv2)

    def __post_init__(self) -> None:
        unknown = set(self.suppress) - SUPPRESSIBLE
        if unknown:
            raise ValueError(
                f"unknown suppress entries {sorted(unknown)}; use {sorted(SUPPRESSIBLE)}"
            )
        self.suppress = frozenset(self.suppress)


@dataclass
class SessionStats:
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0  # serialized protobuf bytes (before gzip / gRPC framing)
    bytes_out: int = 0
    pings_sent: int = 0
    pongs_ok: int = 0
    pings_answered: int = 0
    last_ping_rtt: float | None = None


# ---------------------------------------------------------------------------------------------
# Message helpers


def _ser(m: Any) -> bytes:
    """Serializer for the stream: a KaspadMessage, or raw bytes sent verbatim (escape hatch)."""
    if isinstance(m, bytes | bytearray | memoryview):
        return bytes(m)
    out: bytes = m.SerializeToString()
    return out


def _identity(b: bytes) -> bytes:
    return b


def payload_kind(m: Any) -> str | None:
    kind: str | None = m.WhichOneof("payload")
    return kind


def net_address(addr: bytes | str, port: int) -> Any:
    """Build a pb.NetAddress: ``addr`` is raw ip bytes (any length, so illegal ones can be
    built), an onion host ``"<56 chars>.onion"`` (field 5), or an IP literal string."""
    if isinstance(addr, str):
        if addr.lower().endswith(".onion"):
            return pb.NetAddress(onion=addr, port=port)
        return pb.NetAddress(ip=ipaddress.ip_address(addr).packed, port=port)
    return pb.NetAddress(ip=bytes(addr), port=port)


def _is_onion(addr: bytes | str) -> bool:
    return isinstance(addr, str) and addr.lower().endswith(".onion")


def version_message(config: EmulatorConfig) -> Any:
    services = config.services
    if services is None:
        services = ADDR_V2 if config.addrv2 else 0
    v = pb.VersionMessage(
        protocolVersion=config.protocol_version,
        services=services,
        timestamp=int(time.time() * 1000),
        id=config.node_id,
        userAgent=config.user_agent,
        network=config.network,
    )
    if config.advertised_address is not None:
        v.address.CopyFrom(net_address(*config.advertised_address))
    return pb.KaspadMessage(version=v)


def make_block_message(
    size: int,
    *,
    request_id: int = 0,
    response_id: int = 0,
    seed: int = 0,
    fill: str = "mixed",
    tx_payload: int = 60_000,
) -> Any:
    """A wire-realistic KaspadMessage{block} whose serialization is exactly ``size`` bytes.

    The block has a header and transactions whose payloads carry the bulk. ``fill``: "mixed"
    (default: half pseudo-random, half zeros, so gzip shrinks it about 2x and grpcio sends it
    with compressed-flag 1 -- note grpc-core sends flag 0 whenever gzip would not shrink the
    message), "random" (incompressible: flag 0 from grpcio) or "zeros". ``size`` must be at
    least ~200 bytes.
    """
    if fill not in ("mixed", "random", "zeros"):
        raise ValueError(f"fill must be mixed, random or zeros, not {fill!r}")
    rnd = random.Random(seed)

    def filler(n: int) -> bytes:
        if fill == "zeros":
            return bytes(n)
        if fill == "random":
            return rnd.randbytes(n)
        return rnd.randbytes(n // 2) + bytes(n - n // 2)

    header = pb.BlockHeader(
        version=1,
        hashMerkleRoot=pb.Hash(bytes=filler(32)),
        acceptedIdMerkleRoot=pb.Hash(bytes=filler(32)),
        utxoCommitment=pb.Hash(bytes=filler(32)),
        timestamp=int(time.time() * 1000),
        bits=0x207FFFFF,
        nonce=rnd.getrandbits(64),
        daaScore=1234,
        blueWork=filler(8),
        pruningPoint=pb.Hash(bytes=filler(32)),
        blueScore=1234,
    )
    header.parents.add().parentHashes.add(bytes=filler(32))
    msg = pb.KaspadMessage(response_id=response_id, request_id=request_id)
    msg.block.header.CopyFrom(header)
    if msg.ByteSize() > size:
        raise ValueError(f"size {size} is below the minimum block message size {msg.ByteSize()}")
    while size - msg.ByteSize() > tx_payload + 200:
        msg.block.transactions.add(version=0, payload=filler(tx_payload))
    last = msg.block.transactions.add(version=0, payload=b"")
    for _ in range(8):  # varint length prefixes may grow; converge on the exact size
        diff = size - msg.ByteSize()
        if diff == 0:
            return msg
        new_len = len(last.payload) + diff
        if new_len < 0:
            break
        last.payload = filler(new_len)
    if msg.ByteSize() != size:  # pragma: no cover - only for pathological sizes
        raise ValueError(f"cannot build a block message of exactly {size} bytes")
    return msg


def check_onion(host: str) -> str | None:
    """The fork's onion validation (protocol.md §11.3). Returns an error string or None."""
    h = host.lower()
    if not h.endswith(".onion"):
        return f"invalid onion address {host!r}: missing .onion suffix"
    label = h[: -len(".onion")]
    if len(label) != 56:
        return f"invalid onion address {host!r}: host part has {len(label)} chars, expected 56"
    try:
        raw = base64.b32decode(label.upper())
    except ValueError:
        return f"invalid onion address {host!r}: not base32"
    if len(raw) != 35:  # pragma: no cover - 56 base32 chars always give 35 bytes
        return f"invalid onion address {host!r}: decodes to {len(raw)} bytes"
    return None


def _fmt_secs(t: float) -> str:
    return f"{int(t)}s" if float(t).is_integer() else f"{t}s"


def _parse_grpc_peer(peer: str) -> str:
    # grpcio context.peer(): "ipv4:127.0.0.1:5555" / "ipv6:[::1]:5555" / "unix:..."
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.index("]")]
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return rest


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
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
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

    # -- message handling -------------------------------------------------------------------

    def _on_raw(self, raw: bytes) -> None:
        self.stats.messages_in += 1
        self.stats.bytes_in += len(raw)
        try:
            m = pb.KaspadMessage.FromString(raw)
        except pb_message.DecodeError as e:
            self._fail(f"undecodable KaspadMessage ({len(raw)} bytes): {e}", None)
            return
        kind = payload_kind(m)
        if kind is None:
            unknown = sorted({f.field_number for f in UnknownFieldSet(m)})
            extra = f" (unknown payload field numbers {unknown})" if unknown else ""
            self._fail(f"received kaspad p2p message with empty payload{extra}", None)
            return
        if kind == "reject":
            reason = m.reject.reason
            self.closed_reason = f"reject: {reason}"
            if reason not in IGNORABLE_REJECTS:
                self._violation(f"unexpected Reject from peer: {reason!r}")
            self._shutdown(self.closed_reason, by_peer=True)
            return
        if m.response_id:
            with self._lock:
                live = m.response_id in self._pending_requests
            if not live:
                self._fail(
                    f"{kind} with response_id {m.response_id} matches no pending request "
                    "(kaspad: NoRouteForMessageType)",
                    None,
                )
                return
        if not self._done:
            self._on_handshake_message(kind, m)
        else:
            self._on_flow_message(kind, m)

    def _on_handshake_message(self, kind: str, m: Any) -> None:
        if kind == "version":
            if self.remote_version is not None:
                # kaspad leaves it queued on the Version route and drops it silently.
                self._violation("duplicate Version during handshake")
                return
            self.remote_version = m.version
            self._timers.pop("version", None)
            if "verack" not in self.config.suppress:
                self._enqueue(pb.KaspadMessage(verack=pb.VerackMessage()))
            self._maybe_validate()
        elif kind == "verack":
            if self._got_verack:
                self._violation("duplicate Verack during handshake")
                return
            self._got_verack = True
            self._timers.pop("verack", None)
            self._maybe_validate()
        elif kind == "ready":
            if self._got_ready:
                self._violation("duplicate Ready during handshake")
                return
            self._got_ready = True
            if self._sent_ready:
                self._complete_handshake()
        elif self._sent_ready:
            # Flows are registered once we sent Ready; kaspad queues these until flows launch.
            self._pending.append(m)
        else:
            self._fail(f"unexpected {kind} during handshake (kaspad: NoRouteForMessageType)", None)

    def _check_net_address(self, a: Any, *, what: str) -> tuple[str | None, bool]:
        """Validate one NetAddress like kaspad's conversion. Returns (error, is_onion)."""
        which = a.WhichOneof("address")
        if which == "onion":
            if not self.config.addrv2:
                # An upstream decoder skips field 5 and sees an empty ip.
                return ("IP has illegal length 0", True)
            err = check_onion(a.onion)
            if err:
                return (err, True)
        elif which is None:
            if self.config.addrv2:
                return (f"{what}: NetAddress with neither ip nor onion (NoneValue)", False)
            return ("IP has illegal length 0", False)
        elif len(a.ip) not in (4, 16):
            return (f"IP has illegal length {len(a.ip)}", False)
        if a.port > 0xFFFF:
            return (f"{what}: port {a.port} does not fit in u16", which == "onion")
        return (None, which == "onion")

    def _maybe_validate(self) -> None:
        if self._validated or self.remote_version is None or not self._got_verack:
            return
        self._validated = True
        cfg = self.config
        v = self.remote_version
        if len(v.id) != 16:
            self._fail(
                f"Version.id has {len(v.id)} bytes, expected 16",
                f"Identity error: invalid peer id length {len(v.id)}",
            )
            if cfg.strict:
                return
        if v.HasField("address"):
            err, is_onion = self._check_net_address(v.address, what="Version.address")
            if err is None and is_onion and not (cfg.addrv2 and v.services & ADDR_V2):
                err = "onion Version.address from a peer without ADDRv2"
            if err is not None:
                self._fail(f"illegal Version.address: {err}", err)
                if cfg.strict:
                    return
        if self.emulator._is_duplicate(self, bytes(v.id)):
            self._fail("duplicate connection (same node id and IP)", "DUPLICATE_CONNECTION")
            if cfg.strict:
                return
        if bytes(v.id) == cfg.node_id:
            self._fail("loopback connection (peer has our own node id)", "LOOPBACK_CONNECTION")
            if cfg.strict:
                return
        if v.network != cfg.network:
            reason = f"Network mismatch - local: {cfg.network}, remote: {v.network}"
            self._fail(reason, reason)
            if cfg.strict:
                return
        if v.protocolVersion < cfg.min_peer_protocol_version:
            reason = (
                f"P2P protocol version mismatch - local: {cfg.protocol_version}, "
                f"remote: {v.protocolVersion}"
            )
            self._fail(reason, reason)
            if cfg.strict:
                return
        if "ready" not in cfg.suppress:
            self._enqueue(pb.KaspadMessage(ready=pb.ReadyMessage()))
        self._sent_ready = True
        rt = cfg.ready_timeout
        self._timers["ready"] = (
            time.monotonic() + rt,
            "Ready",
            f"timeout expired after {_fmt_secs(rt)}",
        )
        if self._got_ready:
            self._complete_handshake()

    def _complete_handshake(self) -> None:
        cfg = self.config
        self._timers.pop("ready", None)
        if self.remote_version is not None:
            # Like kaspad's hub: a peer becomes known (for the duplicate check) once it is ready.
            self.emulator._register_identity(self, bytes(self.remote_version.id))
        self._done = True
        self._handshake_done.set()
        self._settled.set()
        if "request_addresses" not in cfg.suppress:
            self._enqueue(pb.KaspadMessage(requestAddresses=pb.RequestAddressesMessage()))
            self._awaiting_addresses = True
            at = cfg.addresses_timeout
            self._timers["addresses"] = (
                time.monotonic() + at,
                "Addresses",
                f"timeout expired after {_fmt_secs(at)}",
            )
        self._timers["ping"] = (time.monotonic() + cfg.ping_interval, "", None)
        pending, self._pending = self._pending, []
        for m in pending:
            if self._closed.is_set():
                break
            self._on_flow_message(payload_kind(m) or "", m)

    def _send_ping(self) -> None:
        if "ping" in self.config.suppress:
            return
        nonce = secrets.randbits(64)
        self._ping_nonce = nonce
        self._ping_sent_at = time.monotonic()
        self.stats.pings_sent += 1
        self._enqueue(pb.KaspadMessage(ping=pb.PingMessage(nonce=nonce)))
        pt = self.config.pong_timeout
        self._timers["pong"] = (
            time.monotonic() + pt,
            "Pong",
            f"timeout expired after {_fmt_secs(pt)}",
        )

    def _on_flow_message(self, kind: str, m: Any) -> None:
        cfg = self.config
        if kind in ("version", "verack", "ready"):
            self._fail(f"{kind} after handshake (kaspad: route closed, ConnectionClosed)", None)
        elif kind == "addresses":
            self._on_addresses(m)
        elif kind == "requestAddresses":
            if "addresses" in cfg.suppress:
                self.received.put(m)  # the test answers (or not) by hand
                return
            allow_onion = cfg.addrv2 and self.remote_supports_addrv2
            out = pb.KaspadMessage()
            out.addresses.SetInParent()
            if m.request_id:
                out.response_id = m.request_id
            n = 0
            for addr, port in cfg.addresses:
                if n >= MAX_ADDRESSES_SEND:
                    break
                if _is_onion(addr) and not allow_onion:
                    continue
                out.addresses.addressList.append(net_address(addr, port))
                n += 1
            self._enqueue(out)
        elif kind == "ping":
            if "pong" in cfg.suppress:
                self.received.put(m)  # the test answers (or not) by hand
                return
            reply = pb.KaspadMessage(pong=pb.PongMessage(nonce=m.ping.nonce))
            if m.request_id:
                reply.response_id = m.request_id
            self.stats.pings_answered += 1
            self._enqueue(reply)
        elif kind == "pong":
            if self._ping_nonce is None:
                self._fail(
                    f"unsolicited Pong (nonce {m.pong.nonce}) with no Ping outstanding",
                    PONG_NONCE_MISMATCH,
                )
            elif m.pong.nonce != self._ping_nonce:
                self._fail(
                    f"{PONG_NONCE_MISMATCH} (sent {self._ping_nonce}, got {m.pong.nonce})",
                    PONG_NONCE_MISMATCH,
                )
            else:
                self.stats.pongs_ok += 1
                self.stats.last_ping_rtt = time.monotonic() - self._ping_sent_at
                self._ping_nonce = None
                self._timers.pop("pong", None)
                self._timers["ping"] = (time.monotonic() + cfg.ping_interval, "", None)
        else:
            self.received.put(m)

    def _on_addresses(self, m: Any) -> None:
        if not self._awaiting_addresses:
            what = (
                "second Addresses message"
                if self.remote_addresses is not None
                else ("unsolicited Addresses message")
            )
            self._fail(f"{what} (kaspad: route closed, ConnectionClosed)", None)
            return
        entries = list(m.addresses.addressList)
        if len(entries) > MAX_ADDRESSES_RECEIVE:
            reason = f"address count {len(entries)} exceeded {MAX_ADDRESSES_RECEIVE}"
            self._fail(f"Addresses: {reason}", reason)
            return
        for i, a in enumerate(entries):
            err, _ = self._check_net_address(a, what=f"Addresses[{i}]")
            if err is not None:
                self._fail(f"Addresses[{i}]: {err}", err)
                return
        self._awaiting_addresses = False
        self._timers.pop("addresses", None)
        self.remote_addresses = entries


class _Servicer:
    def __init__(self, emu: KaspadEmulator) -> None:
        self.emu = emu

    def message_stream(
        self, request_iterator: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        emu = self.emu
        peer = context.peer()
        remote_ip = _parse_grpc_peer(peer)
        session = PeerSession(emu, "inbound", peer, remote_ip)
        emu._add_session(session)
        yield from session._serve(request_iterator, context)


class KaspadEmulator:
    """A kaspad-like P2P node: serves inbound streams and dials outbound ones."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.sessions: list[PeerSession] = []
        self._cond = threading.Condition()
        self._server: grpc.Server | None = None
        self._stopping = threading.Event()
        self._identities: dict[tuple[bytes, str], PeerSession] = {}
        self.port: int | None = None

    def __enter__(self) -> KaspadEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_server(self, host: str = "127.0.0.1", port: int = 0) -> int:
        server = grpc.server(
            ThreadPoolExecutor(max_workers=self.config.max_workers, thread_name_prefix="emu-srv"),
            options=SERVER_OPTIONS,
            compression=grpc.Compression.Gzip if self.config.server_gzip else None,
        )
        handler = grpc.stream_stream_rpc_method_handler(
            _Servicer(self).message_stream,
            request_deserializer=_identity,
            response_serializer=_ser,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("protowire.P2P", {"MessageStream": handler}),)
        )
        addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        bound: int = server.add_insecure_port(addr)
        if not bound:
            raise OSError(f"cannot bind {addr}")
        server.start()
        self._server = server
        self.port = bound
        return bound

    def dial(self, host: str, port: int) -> PeerSession:
        """Connect like kaspad's outbound ConnectionHandler::connect (returns immediately)."""
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        session = PeerSession(self, "outbound", target, host)
        self._add_session(session)
        threading.Thread(
            target=session._dial, args=(host, port), daemon=True, name=f"emu-dial-{target}"
        ).start()
        return session

    def wait_sessions(self, n: int, timeout: float) -> list[PeerSession]:
        """Wait until at least n sessions exist; returns them all (possibly fewer on timeout)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.sessions) >= n, timeout)
            return list(self.sessions)

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            sessions = list(self.sessions)
        for s in sessions:
            s.close()
        for s in sessions:
            s.wait_closed(2.0)
        if self._server is not None:
            self._server.stop(grace=None).wait(5.0)
            self._server = None
        for s in sessions:  # anything the server stop terminated
            s.wait_closed(1.0)

    # -- internal ---------------------------------------------------------------------------

    def _add_session(self, s: PeerSession) -> None:
        with self._cond:
            self.sessions.append(s)
            self._cond.notify_all()

    def _is_duplicate(self, s: PeerSession, node_id: bytes) -> bool:
        """kaspad's hub.has_peer(PeerKey{id, remote IP}) over fully handshaken peers."""
        key = (node_id, _canonical_ip(s.remote_ip))
        with self._cond:
            other = self._identities.get(key)
            return other is not None and other is not s and not other.closed

    def _register_identity(self, s: PeerSession, node_id: bytes) -> None:
        with self._cond:
            self._identities.setdefault((node_id, _canonical_ip(s.remote_ip)), s)

    def _unregister(self, s: PeerSession) -> None:
        with self._cond:
            for k, v in list(self._identities.items()):
                if v is s:
                    del self._identities[k]


def _canonical_ip(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip
