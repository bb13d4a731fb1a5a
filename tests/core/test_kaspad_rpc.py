"""kaspad's RPC subset (GetServerInfo) and the sync-first switch, sans-IO.

The messages are checked against an independent encoder: the protobuf library with the field
numbers of rusty-kaspa's rpc.proto (:mod:`bridge.rig.emu_rpc`)."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.core import grpc
from bridge.core.kaspad_rpc import (
    RpcClient,
    RpcClosed,
    RpcError,
    ServerInfo,
    decode_response,
    encode_server_info_request,
)
from bridge.core.sync_first import Phase, SyncGate
from bridge.rig.emu_rpc import rpc_messages


def _response(**info: Any) -> bytes:
    msgs = rpc_messages()
    resp = msgs["KaspadResponse"](id=info.pop("id", 7))
    err = info.pop("error", "")
    for k, v in info.items():
        setattr(resp.getServerInfoResponse, k, v)
    if err:
        resp.getServerInfoResponse.error.message = err
    if not info and not err:
        resp.getServerInfoResponse.SetInParent()
    return bytes(resp.SerializeToString())


@pytest.mark.parametrize("rid", [1, 127, 128, 2**40])
def test_request_decodes_as_kaspads_get_server_info(rid: int) -> None:
    req = rpc_messages()["KaspadRequest"].FromString(encode_server_info_request(rid))
    assert req.id == rid
    assert req.HasField("getServerInfoRequest")


@pytest.mark.parametrize("synced", [True, False])
def test_response_fields(synced: bool) -> None:
    info = decode_response(_response(id=9, isSynced=synced, networkId="testnet-10",
                                     serverVersion="2.1.0", virtualDaaScore=2**40,
                                     hasUtxoIndex=True, rpcApiRevision=3))
    assert info == ServerInfo(id=9, is_synced=synced, network_id="testnet-10",
                              server_version="2.1.0", virtual_daa_score=2**40)


def test_response_with_error_and_empty_response() -> None:
    info = decode_response(_response(error="not ready"))
    assert info is not None and info.error == "not ready" and not info.is_synced
    empty = decode_response(_response())
    assert empty == ServerInfo(id=7, is_synced=False)


def test_other_responses_are_ignored_and_garbage_is_refused() -> None:
    # a GetSyncStatusResponse (field 1095) we did not ask for
    assert decode_response(bytes.fromhex("e806 07") + b"\xba\x44\x02\x08\x01") is None
    with pytest.raises(RpcError):
        decode_response(b"\xff\xff\xff")
    with pytest.raises(RpcError):  # field 1093 as a varint, not a message
        decode_response(b"\xa8\x44\x01")


def test_client_sends_one_call_and_matches_answers() -> None:
    import h2.config
    import h2.connection
    import h2.events

    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                  header_encoding=None))
    server.initiate_connection()
    client = RpcClient("127.0.0.1:16110")
    rid = client.ask()
    events = server.receive_data(client.data_to_send())
    req = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    headers = dict(req.headers)
    assert headers[b":path"] == b"/protowire.RPC/MessageStream"
    assert headers[b"content-type"] == b"application/grpc"
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert data[:5] == b"\x00" + (len(data) - 5).to_bytes(4, "big")
    assert rpc_messages()["KaspadRequest"].FromString(data[5:]).id == rid
    sid = req.stream_id
    server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    body = grpc.frame(_response(id=rid, isSynced=True, networkId="simnet"))
    server.send_data(sid, body[:3])
    assert client.receive_data(server.data_to_send()) == []  # split across DATA frames
    server.send_data(sid, body[3:])
    (info,) = client.receive_data(server.data_to_send())
    assert isinstance(info, ServerInfo) and info.id == rid and info.is_synced
    # a second question on the same stream (kaspad logs every ended stream)
    rid2 = client.ask()
    assert rid2 != rid
    server.receive_data(client.data_to_send())
    server.send_headers(sid, [(b"grpc-status", b"14"), (b"grpc-message", b"bye")],
                        end_stream=True)
    (closed,) = client.receive_data(server.data_to_send())
    assert isinstance(closed, RpcClosed) and "grpc-status 14 bye" in closed.why


def test_client_refuses_a_non_grpc_answer() -> None:
    import h2.config
    import h2.connection

    client = RpcClient("127.0.0.1:16110")
    client.ask()
    # an HTTP/1.1 server: its first bytes read as an oversized HTTP/2 frame
    with pytest.raises(RpcError, match="does not speak HTTP/2"):
        client.receive_data(b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(1 << 16) * 80)
    # an HTTP/2 server without this method
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                  header_encoding=None))
    server.initiate_connection()
    client = RpcClient("127.0.0.1:16110")
    client.ask()
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(b":status", b"404")], end_stream=True)
    (closed,) = client.receive_data(server.data_to_send())
    assert isinstance(closed, RpcClosed) and closed.why == "HTTP status 404"


# -- the switch ---------------------------------------------------------------------------


def _info(synced: bool, network: str = "mainnet", error: str = "") -> ServerInfo:
    return ServerInfo(id=1, is_synced=synced, network_id=network, error=error)


def test_switches_once_kaspad_says_synced_and_never_back() -> None:
    gate = SyncGate(network_id="mainnet", started=0.0, timeout=100.0)
    assert not gate.answer(1.0, _info(False))
    assert gate.phase is Phase.SYNCING and gate.kaspad_synced is False
    assert gate.state().deadline == 100.0
    assert gate.answer(2.0, _info(True))
    st = gate.state()
    assert st.phase is Phase.TOR and st.switched_at == 2.0 and st.deadline is None
    assert st.reason == "kaspad reported synced"
    # kaspad falls behind later, the RPC goes away, the timeout passes: still Tor, no new switch
    assert not gate.answer(3.0, _info(False))
    assert not gate.unreachable(4.0, "refused")
    assert not gate.tick(500.0)
    assert gate.state().phase is Phase.TOR and gate.switched_at == 2.0


@pytest.mark.parametrize("bad", [_info(True, network="testnet-10"),
                                 _info(True, error="internal error")])
def test_an_answer_that_is_not_this_nodes_sync_state_does_not_switch(bad: ServerInfo) -> None:
    gate = SyncGate(network_id="mainnet", started=0.0, timeout=None)
    assert not gate.answer(1.0, bad)
    assert gate.phase is Phase.SYNCING and gate.kaspad_synced is None
    assert gate.rpc_problem and ("testnet-10" in gate.rpc_problem
                                 or "internal error" in gate.rpc_problem)


def test_unreachable_rpc_waits_until_the_timeout() -> None:
    gate = SyncGate(network_id="simnet", started=10.0, timeout=60.0)
    assert not gate.unreachable(20.0, "connection refused")
    assert gate.state().rpc_problem == "connection refused"
    assert not gate.tick(69.9)
    assert gate.tick(70.0)
    assert gate.phase is Phase.TOR and "sync_first_timeout" in gate.reason


def test_no_timeout_means_only_kaspads_answer_switches() -> None:
    gate = SyncGate(network_id="simnet", started=0.0, timeout=None)
    assert not gate.unreachable(1e9, "refused") and not gate.tick(1e12)
    assert gate.answer(1e12, _info(True, network="simnet"))


def test_a_later_answer_clears_the_problem() -> None:
    gate = SyncGate(network_id="simnet", started=0.0, timeout=None)
    gate.unreachable(1.0, "refused")
    gate.answer(2.0, _info(False, network="simnet"))
    assert gate.state().rpc_problem == "" and gate.state().last_answer_at == 2.0
