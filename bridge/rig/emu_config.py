"""The kaspad emulator's (:mod:`bridge.rig.emulator`) constants and settings: kaspad's limits and
texts, the grpcio channel/server options that make grpcio behave like tonic/hyper, and
:class:`EmulatorConfig` and :class:`SessionStats`.

Values only; no sockets, no threads. Import these through :mod:`bridge.rig.emulator`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from bridge.core.kaspa import SIMNET

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
