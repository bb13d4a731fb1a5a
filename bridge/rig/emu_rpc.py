"""An emulated kaspad gRPC RPC (``/protowire.RPC/MessageStream``) that answers GetServerInfo,
for the ``peers.sync_first`` tests: ``synced`` is whatever the test sets.

The messages are built with the protobuf library from a descriptor holding the subset of
rusty-kaspa's ``messages.proto``/``rpc.proto`` that GetServerInfo uses (same field numbers and
types), so the bridge's hand-written decoder (:mod:`bridge.core.kaspad_rpc`) is checked against
an independent encoder. Like kaspad, a request without a known payload gets no answer, and the
stream stays open between requests.

Usage::

    rpc = RpcEmulator(network_id="simnet"); port = rpc.start()
    ...; rpc.synced = True; ...; rpc.stop()
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["RpcEmulator", "rpc_messages"]

_F = descriptor_pb2.FieldDescriptorProto


def _build() -> dict[str, Any]:
    fd = descriptor_pb2.FileDescriptorProto(name="ktb_emu_rpc.proto", package="protowire",
                                            syntax="proto3")

    def msg(name: str, fields: list[tuple[str, int, int, str]]) -> None:
        m = fd.message_type.add(name=name)
        for fname, number, ftype, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=_F.LABEL_OPTIONAL)
            if type_name:
                f.type_name = f".protowire.{type_name}"

    msg("RPCError", [("message", 1, _F.TYPE_STRING, "")])
    msg("GetServerInfoRequestMessage", [])
    msg("GetServerInfoResponseMessage", [
        ("rpcApiVersion", 1, _F.TYPE_UINT32, ""), ("rpcApiRevision", 2, _F.TYPE_UINT32, ""),
        ("serverVersion", 3, _F.TYPE_STRING, ""), ("networkId", 4, _F.TYPE_STRING, ""),
        ("hasUtxoIndex", 5, _F.TYPE_BOOL, ""), ("isSynced", 6, _F.TYPE_BOOL, ""),
        ("virtualDaaScore", 7, _F.TYPE_UINT64, ""),
        ("error", 1000, _F.TYPE_MESSAGE, "RPCError")])
    msg("KaspadRequest", [("id", 101, _F.TYPE_UINT64, ""),
                          ("getServerInfoRequest", 1092, _F.TYPE_MESSAGE,
                           "GetServerInfoRequestMessage")])
    msg("KaspadResponse", [("id", 101, _F.TYPE_UINT64, ""),
                           ("getServerInfoResponse", 1093, _F.TYPE_MESSAGE,
                            "GetServerInfoResponseMessage")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"protowire.{name}"))
            for name in ("KaspadRequest", "KaspadResponse")}


_MESSAGES: dict[str, Any] | None = None


def rpc_messages() -> dict[str, Any]:
    """``{"KaspadRequest": cls, "KaspadResponse": cls}`` (the GetServerInfo subset)."""
    global _MESSAGES
    if _MESSAGES is None:
        _MESSAGES = _build()
    return _MESSAGES


class RpcEmulator:
    """A threaded grpcio server answering GetServerInfo on kaspad's RPC method."""

    def __init__(self, *, network_id: str = "simnet", synced: bool = False,
                 server_version: str = "2.1.0") -> None:
        self.network_id = network_id
        self.synced = synced
        self.server_version = server_version
        #: answer with RPCError instead (kaspad's error answers)
        self.error = ""
        self.requests = 0
        self.streams = 0
        self.port: int | None = None
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None

    def _stream(self, requests: Iterator[bytes], context: grpc.ServicerContext
                ) -> Iterator[bytes]:
        msgs = rpc_messages()
        with self._lock:
            self.streams += 1
        for raw in requests:
            req = msgs["KaspadRequest"].FromString(raw)
            if not req.HasField("getServerInfoRequest"):
                continue
            with self._lock:
                self.requests += 1
            resp = msgs["KaspadResponse"](id=req.id)
            info = resp.getServerInfoResponse
            info.rpcApiVersion = 1
            info.serverVersion = self.server_version
            info.networkId = self.network_id
            info.isSynced = self.synced
            info.virtualDaaScore = 42
            if self.error:
                info.error.message = self.error
            yield resp.SerializeToString()

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        server = grpc.server(ThreadPoolExecutor(max_workers=4, thread_name_prefix="emu-rpc"))
        handler = grpc.stream_stream_rpc_method_handler(
            self._stream, request_deserializer=None, response_serializer=None)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("protowire.RPC", {"MessageStream": handler}),))
        bound: int = server.add_insecure_port(f"{host}:{port}")
        if not bound:
            raise OSError(f"cannot bind {host}:{port}")
        server.start()
        self._server = server
        self.port = bound
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5.0)
            self._server = None
