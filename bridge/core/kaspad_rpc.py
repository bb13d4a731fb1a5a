"""A minimal client of kaspad's own gRPC RPC, sans-IO: is kaspad synced? (protocol.md §13)

``peers.sync_first`` needs to know when kaspad has finished its initial sync, without modifying
kaspad. kaspad answers that on its RPC port (``--rpclisten``, by default ``127.0.0.1:16110`` on
mainnet): ``/protowire.RPC/MessageStream`` is one long bidirectional stream of ``KaspadRequest``
/ ``KaspadResponse`` messages (rusty-kaspa ``rpc/grpc/core/proto/messages.proto``), matched by
their ``id`` (field 101). The bridge sends ``GetServerInfoRequest`` (payload field 1092, an empty
message) every few seconds on the same stream and reads ``GetServerInfoResponse`` (field 1093):

======  ================  ==========================================
field   name              type (rusty-kaspa ``rpc.proto``)
======  ================  ==========================================
1       rpcApiVersion     uint32
2       rpcApiRevision    uint32
3       serverVersion     string
4       networkId         string ("mainnet", "testnet-10", "simnet")
5       hasUtxoIndex      bool
6       isSynced          bool
7       virtualDaaScore   uint64
1000    error             RPCError { string message = 1; }
======  ================  ==========================================

One stream for the whole session, not one per question: kaspad logs every RPC stream that ends
("incoming stream ended by client") at INFO level. Nothing here touches a socket or a clock;
:mod:`bridge.net.kaspad_rpc` is the trio shell.
"""

from __future__ import annotations

from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from bridge.core import grpc, wire
from bridge.core.errors import DecodeError, ProtocolError

__all__ = [
    "GET_SERVER_INFO_REQUEST",
    "GET_SERVER_INFO_RESPONSE",
    "RPC_PATH",
    "RpcClient",
    "RpcClosed",
    "RpcError",
    "ServerInfo",
    "decode_response",
    "encode_server_info_request",
]

RPC_PATH = b"/protowire.RPC/MessageStream"
#: ``KaspadRequest.id`` / ``KaspadResponse.id``
ID_FIELD = 101
GET_SERVER_INFO_REQUEST = 1092
GET_SERVER_INFO_RESPONSE = 1093
ERROR_FIELD = 1000
#: a GetServerInfoResponse is ~50 bytes; anything this large is not one we asked for
MAX_RESPONSE = 1 << 20


class RpcError(DecodeError):
    """kaspad's RPC answered something this client cannot use (kaspad's fault, or not kaspad)."""


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """One ``GetServerInfoResponse``."""

    id: int
    is_synced: bool
    network_id: str = ""
    server_version: str = ""
    virtual_daa_score: int = 0
    #: ``RPCError.message`` when kaspad answered with an error ("" otherwise)
    error: str = ""


@dataclass(frozen=True, slots=True)
class RpcClosed:
    """kaspad ended the stream (trailers, a reset or GOAWAY); ``why`` says how."""

    why: str


def encode_server_info_request(request_id: int) -> bytes:
    """A ``KaspadRequest { id, getServerInfoRequest {} }`` (the protobuf message, no gRPC
    prefix)."""
    return wire.encode_fields([
        wire.make_varint_field(ID_FIELD, request_id),
        wire.make_len_field(GET_SERVER_INFO_REQUEST, b""),
    ])


def _text(fields: list[wire.Field], number: int) -> str:
    f = wire.first(fields, number)
    return f.as_bytes.decode("utf-8", "replace") if f is not None else ""


def _int(fields: list[wire.Field], number: int) -> int:
    f = wire.first(fields, number)
    return f.as_int if f is not None else 0


def decode_response(payload: bytes) -> ServerInfo | None:
    """The ``GetServerInfoResponse`` in a ``KaspadResponse``, or ``None`` for any other
    response (a notification, a reply we did not ask for). :class:`RpcError` when the bytes are
    not protobuf."""
    try:
        fields = wire.parse(payload, max_fields=64, what="KaspadResponse")
        info = wire.first(fields, GET_SERVER_INFO_RESPONSE)
        if info is None:
            return None
        body = wire.parse(info.as_bytes, max_fields=64, what="GetServerInfoResponse")
        err = wire.first(body, ERROR_FIELD)
        error = _text(wire.parse(err.as_bytes, max_fields=8, what="RPCError"), 1) \
            if err is not None else ""
        return ServerInfo(id=_int(fields, ID_FIELD), is_synced=bool(_int(body, 6)),
                          network_id=_text(body, 4), server_version=_text(body, 3),
                          virtual_daa_score=_int(body, 7), error=error)
    except DecodeError as exc:
        raise RpcError(f"kaspad's RPC sent a response that is not a KaspadResponse: {exc}") \
            from None


class RpcClient:
    """HTTP/2 client of one ``MessageStream`` call. :meth:`ask` queues a GetServerInfo request
    (returning its id); feed received bytes to :meth:`receive_data` and write
    :meth:`data_to_send`. Events: :class:`ServerInfo` per answer, one :class:`RpcClosed` when
    the call or the connection ended. Protocol errors raise :class:`RpcError`."""

    def __init__(self, authority: str) -> None:
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=False))
        self._h2.initiate_connection()
        self._sid = self._h2.get_next_available_stream_id()
        self._h2.send_headers(self._sid, [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", RPC_PATH),
            (b":authority", authority.encode()), (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ])
        self._reader = grpc.MessageReader(MAX_RESPONSE)
        self._msg = bytearray()
        self._compressed = False
        self._next_id = 1
        self.closed: RpcClosed | None = None

    def ask(self) -> int:
        """Queue a GetServerInfo request; its id."""
        rid = self._next_id
        self._next_id += 1
        try:
            self._h2.send_data(self._sid, grpc.frame(encode_server_info_request(rid)))
        except h2.exceptions.H2Error as exc:  # window exhausted, stream closed
            raise RpcError(f"cannot send on kaspad's RPC stream: {exc}") from None
        return rid

    def data_to_send(self) -> bytes:
        return self._h2.data_to_send()

    def receive_data(self, data: bytes) -> list[ServerInfo | RpcClosed]:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            raise RpcError(f"kaspad's RPC port does not speak HTTP/2 as expected: {exc}") \
                from None
        out: list[ServerInfo | RpcClosed | None] = []
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers).get(b":status", b"")
                if status != b"200":
                    out.append(self._close(f"HTTP status {status.decode(errors='replace')}"))
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == self._sid:
                self._h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                out += self._messages(ev.data)
            elif isinstance(ev, h2.events.TrailersReceived):
                h = dict(ev.headers)
                out.append(self._close(
                    f"grpc-status {h.get(b'grpc-status', b'?').decode(errors='replace')}"
                    f" {h.get(b'grpc-message', b'').decode(errors='replace')}".rstrip()))
            elif isinstance(ev, h2.events.StreamReset):
                out.append(self._close(f"stream reset (error {ev.error_code})"))
            elif isinstance(ev, h2.events.StreamEnded):
                out.append(self._close("stream ended"))
            elif isinstance(ev, h2.events.ConnectionTerminated):
                out.append(self._close(f"GOAWAY (error {ev.error_code})"))
        return [e for e in out if e is not None]

    def _close(self, why: str) -> RpcClosed | None:
        if self.closed is None:
            self.closed = RpcClosed(why)
            return self.closed
        return None

    def _messages(self, data: bytes) -> list[ServerInfo | RpcClosed]:
        out: list[ServerInfo | RpcClosed] = []
        try:
            for ev in self._reader.feed(data):
                if isinstance(ev, grpc.MessageStart):
                    self._msg.clear()
                    self._compressed = ev.compressed
                elif isinstance(ev, grpc.MessageChunk):
                    self._msg += ev.data
                else:
                    payload = bytes(self._msg)
                    if self._compressed:
                        payload = grpc.gzip_decompress(payload, MAX_RESPONSE)
                    info = decode_response(payload)
                    if info is not None:
                        out.append(info)
        except ProtocolError as exc:
            raise RpcError(f"kaspad's RPC sent a bad gRPC message: {exc}") from None
        return out
