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

import ipaddress
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from bridge.core.peers import hostport
from bridge.rig.emu_codec import (
    _identity,
    _parse_grpc_peer,
    _ser,
    check_onion,
    make_block_message,
    net_address,
    payload_kind,
    version_message,
)
from bridge.rig.emu_config import (
    ADDR_V2,
    CLIENT_OPTIONS,
    IGNORABLE_REJECTS,
    MAX_ADDRESSES_RECEIVE,
    MAX_ADDRESSES_SEND,
    MAX_REJECT_REASON,
    METHOD,
    P2P_MAX_MESSAGE_SIZE,
    PONG_NONCE_MISMATCH,
    RPC_ABORTED,
    SERVER_OPTIONS,
    SUPPRESSIBLE,
    TONIC_USER_AGENT,
    EmulatorConfig,
    KaspadMessage,
    NetAddr,
    SessionStats,
)
from bridge.rig.emu_session import PeerSession

__all__ = [
    "ADDR_V2",
    "CLIENT_OPTIONS",
    "IGNORABLE_REJECTS",
    "MAX_ADDRESSES_RECEIVE",
    "MAX_ADDRESSES_SEND",
    "MAX_REJECT_REASON",
    "METHOD",
    "P2P_MAX_MESSAGE_SIZE",
    "PONG_NONCE_MISMATCH",
    "RPC_ABORTED",
    "SERVER_OPTIONS",
    "SUPPRESSIBLE",
    "TONIC_USER_AGENT",
    "EmulatorConfig",
    "KaspadEmulator",
    "KaspadMessage",
    "NetAddr",
    "PeerSession",
    "SessionStats",
    "check_onion",
    "make_block_message",
    "net_address",
    "payload_kind",
    "version_message",
]

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
        addr = hostport(host, port)
        bound: int = server.add_insecure_port(addr)
        if not bound:
            raise OSError(f"cannot bind {addr}")
        server.start()
        self._server = server
        self.port = bound
        return bound

    def dial(self, host: str, port: int) -> PeerSession:
        """Connect like kaspad's outbound ConnectionHandler::connect (returns immediately)."""
        target = hostport(host, port)
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
