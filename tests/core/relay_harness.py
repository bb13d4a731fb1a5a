"""In-memory HTTP/2 peers for driving the sans-IO relay without any I/O.

The peers here use h2 too, so these tests check the relay's logic; interoperability with an
independent HTTP/2 stack is proven by the grpcio-based kaspad emulator in the integration tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events

from bridge.core import grpc, proto
from bridge.core.events import RelayEvent
from bridge.core.h2conn import P2P_PATH
from bridge.core.relay import Relay, Side

REQUEST_HEADERS = [
    (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"127.0.0.1:16200"),
    (b":path", P2P_PATH), (b"te", b"trailers"), (b"content-type", b"application/grpc"),
    (b"grpc-encoding", b"gzip"), (b"grpc-accept-encoding", b"gzip,identity"),
    (b"user-agent", b"tonic/0.12.3"), (b"x-secret", b"leak"),
]


@dataclass
class Peer:
    """One HTTP/2 endpoint. ``client``: it sends the request (kaspad outbound or a Tor peer)."""

    client: bool
    compress: bool = True
    auto_ack: bool = True
    conn: h2.connection.H2Connection = field(init=False)
    sid: int | None = None
    reader: grpc.MessageReader = field(default_factory=lambda: grpc.MessageReader(1 << 31))
    messages: list[tuple[bool, bytes]] = field(default_factory=list)  # (compressed, payload)
    _cur: bytearray = field(default_factory=bytearray)
    _cur_flag: bool = False
    headers: list[tuple[bytes, bytes]] | None = None
    trailers: list[tuple[bytes, bytes]] | None = None
    reset: int | None = None
    goaway: int | None = None
    ended: bool = False
    unacked: int = 0
    pending: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=self.client, header_encoding=None))
        self.conn.initiate_connection()

    def open(self) -> None:
        assert self.client
        self.sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.sid, REQUEST_HEADERS)

    def respond(self) -> None:
        assert not self.client and self.sid is not None
        self.conn.send_headers(self.sid, [(b":status", b"200"),
                                          (b"content-type", b"application/grpc"),
                                          (b"grpc-encoding", b"gzip"), (b"date", b"now")])

    def send(self, message: bytes, *, compressed: bool | None = None) -> None:
        c = self.compress if compressed is None else compressed
        body = grpc.gzip_compress(message) if c else message
        self.pending += grpc.frame(body, compressed=c)
        self.flush()

    def send_raw(self, data: bytes) -> None:
        self.pending += data
        self.flush()

    def flush(self) -> None:
        assert self.sid is not None
        while self.pending:
            n = min(self.conn.local_flow_control_window(self.sid),
                    self.conn.max_outbound_frame_size, len(self.pending))
            if n <= 0:
                return
            self.conn.send_data(self.sid, bytes(self.pending[:n]))
            del self.pending[:n]

    def ack(self) -> None:
        if self.unacked and self.sid is not None:
            self.conn.acknowledge_received_data(self.unacked, self.sid)
            self.unacked = 0

    def receive(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.sid = ev.stream_id
                self.headers = list(ev.headers or [])
            elif isinstance(ev, h2.events.ResponseReceived):
                self.headers = list(ev.headers or [])
            elif isinstance(ev, h2.events.TrailersReceived):
                self.trailers = list(ev.headers or [])
            elif isinstance(ev, h2.events.DataReceived):
                self.unacked += ev.flow_controlled_length or 0
                for m in self.reader.feed(ev.data or b""):
                    if isinstance(m, grpc.MessageStart):
                        self._cur = bytearray()
                        self._cur_flag = m.compressed
                    elif isinstance(m, grpc.MessageChunk):
                        self._cur += m.data
                    else:
                        raw = bytes(self._cur)
                        plain = grpc.gzip_decompress(raw, 1 << 31) if self._cur_flag else raw
                        self.messages.append((self._cur_flag, plain))
            elif isinstance(ev, h2.events.StreamReset):
                self.reset = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev.error_code
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended = True
        if self.auto_ack:
            self.ack()
        if self.sid is not None and self.pending:
            self.flush()

    @property
    def payloads(self) -> list[bytes]:
        return [m for _, m in self.messages]


def pump(relay: Relay, down: Peer, up: Peer, *, chunk: int | None = None,
         rounds: int = 10_000) -> list[RelayEvent]:
    """Shuttle bytes until nothing moves. ``chunk``: deliver at most this many bytes at a time.
    Returns the relay's events, in order."""
    events: list[RelayEvent] = []
    for _ in range(rounds):
        moved = False
        for peer, side in ((down, Side.DOWN), (up, Side.UP)):
            data = peer.conn.data_to_send()
            if data:
                moved = True
                if chunk:
                    for i in range(0, len(data), chunk):
                        events += relay.receive(side, data[i:i + chunk])
                else:
                    events += relay.receive(side, data)
            out = relay.data_to_send(side)
            if out:
                moved = True
                peer.receive(out)
        if not moved:
            return events
    raise AssertionError("pump did not settle")


# -- message builders --------------------------------------------------------------------------


def version(*, node_id: bytes | None = None, services: int = 0, network: str = "kaspa-simnet",
            address: proto.NetAddress | None = None, pv: int = 8) -> bytes:
    fields = [proto.make_varint_field(proto.V_PROTOCOL, pv)]
    if services:
        fields.append(proto.make_varint_field(proto.V_SERVICES, services))
    fields.append(proto.make_varint_field(proto.V_TIMESTAMP, 1_700_000_000_000))
    if address is not None:
        fields.append(proto.make_len_field(proto.V_ADDRESS, address.encode()))
    fields.append(proto.make_len_field(proto.V_ID, node_id or os.urandom(16)))
    fields.append(proto.make_len_field(proto.V_USER_AGENT, b"/kaspad:1.0.1/kaspad:1.0.1/"))
    fields.append(proto.make_len_field(proto.V_NETWORK, network.encode()))
    return proto.make_len_field(proto.VERSION, proto.encode_fields(fields)).raw


VERACK = bytes.fromhex("9a0100")
READY = bytes.fromhex("920300")
REQUEST_ADDRESSES = bytes.fromhex("3200")


def addresses(entries: list[proto.NetAddress]) -> bytes:
    return proto.make_len_field(proto.ADDRESSES, proto.encode_addresses(entries)).raw


def block(size: int, *, request_id: int = 0, response_id: int = 0) -> bytes:
    body = proto.make_len_field(1, os.urandom(size)).raw
    msg = proto.make_len_field(proto.BLOCK, body).raw
    if response_id:
        msg += proto.make_varint_field(proto.RESPONSE_ID, response_id).raw
    if request_id:
        msg += proto.make_varint_field(proto.REQUEST_ID, request_id).raw
    return msg


def ping(nonce: int) -> bytes:
    return proto.make_len_field(proto.PING, proto.make_varint_field(1, nonce).raw).raw
