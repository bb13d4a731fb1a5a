"""Tests of the scripted SOCKS5 server, with python-socks as the client."""

from __future__ import annotations

import functools
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from python_socks import ProxyError, ProxyTimeoutError
from python_socks.async_.trio import Proxy

from tests.peers.socks_server import ConnectRecord, ScriptedSocks5Server

ONION = "a" * 56 + ".onion"


async def echo_handler(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            async for data in stream:
                await stream.send_all(data)
        except trio.BrokenResourceError:  # the reset-after tests RST this side too
            pass


@pytest.fixture
async def echo_port(nursery: trio.Nursery) -> int:
    listeners: list[trio.SocketListener] = await nursery.start(
        functools.partial(trio.serve_tcp, echo_handler, 0, host="127.0.0.1")
    )
    port: int = listeners[0].socket.getsockname()[1]
    return port


StartSocks = Callable[..., Awaitable[ScriptedSocks5Server]]


@pytest.fixture
def start_socks(nursery: trio.Nursery) -> StartSocks:
    async def start(**kw: Any) -> ScriptedSocks5Server:
        server = ScriptedSocks5Server(**kw)
        await nursery.start(server.serve)
        return server

    return start


async def socks_connect(
    server: ScriptedSocks5Server,
    host: str,
    port: int,
    *,
    user: str | None = None,
    password: str | None = None,
    timeout: float = 5.0,
) -> trio.SocketStream:
    creds = f"{user}:{password}@" if user is not None else ""
    proxy = Proxy.from_url(f"socks5://{creds}127.0.0.1:{server.port}", rdns=True)
    sock = await proxy.connect(host, port, timeout=timeout)
    return trio.SocketStream(sock)


async def roundtrip(stream: trio.SocketStream, payload: bytes) -> bytes:
    await stream.send_all(payload)
    got = b""
    with trio.fail_after(5):
        while len(got) < len(payload):
            chunk = await stream.receive_some(65536)
            assert chunk, "connection closed early"
            got += chunk
    return got


@pytest.mark.parametrize(
    ("host", "atyp", "recorded_host"),
    [
        (ONION, "domain", ONION),
        ("10.1.2.3", "ipv4", "10.1.2.3"),
        ("2001:db8::1", "ipv6", "2001:db8::1"),
        ("seed.example.org", "domain", "seed.example.org"),
    ],
)
async def test_records_target_and_credentials_and_splices(
    start_socks: StartSocks, echo_port: int, host: str, atyp: str, recorded_host: str
) -> None:
    routed: list[tuple[str, int]] = []

    def route(h: str, p: int) -> tuple[str, int]:
        routed.append((h, p))
        return ("127.0.0.1", echo_port)

    server = await start_socks(route=route)
    stream = await socks_connect(server, host, 16111, user="0123456789abcdef-7", password="pw-7")
    payload = bytes(range(256)) * 1000
    assert await roundtrip(stream, payload) == payload
    await stream.aclose()
    (rec,) = server.records
    assert (rec.atyp, rec.host, rec.port) == (atyp, recorded_host, 16111)
    assert (rec.username, rec.password) == ("0123456789abcdef-7", "pw-7")
    assert rec.reply == 0 and rec.method == 2
    assert routed == [(recorded_host, 16111)]  # never resolved, handed to route() verbatim
    assert rec.target == ("127.0.0.1", echo_port)
    assert rec.bytes_up >= len(payload)


async def test_no_auth_client_records_no_credentials(
    start_socks: StartSocks, echo_port: int
) -> None:
    server = await start_socks(route=lambda h, p: ("127.0.0.1", echo_port))
    stream = await socks_connect(server, ONION, 9735)
    assert await roundtrip(stream, b"hello") == b"hello"
    (rec,) = server.records
    assert (rec.username, rec.password, rec.method) == (None, None, 0)


async def test_require_auth_refuses_no_auth_client(start_socks: StartSocks, echo_port: int) -> None:
    server = await start_socks(route=lambda h, p: ("127.0.0.1", echo_port), require_auth=True)
    with pytest.raises(ProxyError):
        await socks_connect(server, ONION, 1)
    assert server.records == []
    stream = await socks_connect(server, ONION, 1, user="u", password="p")
    assert await roundtrip(stream, b"x") == b"x"
    assert [(r.username, r.password) for r in server.records] == [("u", "p")]


@pytest.mark.parametrize("code", [1, 2, 3, 4, 5, 6, 8])
async def test_route_reply_codes_reach_client(start_socks: StartSocks, code: int) -> None:
    server = await start_socks(route=lambda h, p: code)
    with pytest.raises(ProxyError) as ei:
        await socks_connect(server, ONION, 16111)
    assert ei.value.error_code == code
    assert [r.reply for r in server.records] == [code]


async def test_unreachable_route_target_gives_connection_refused(
    start_socks: StartSocks,
) -> None:
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    server = await start_socks(route=lambda h, p: ("127.0.0.1", dead_port))
    with pytest.raises(ProxyError) as ei:
        await socks_connect(server, ONION, 16111)
    assert ei.value.error_code == 5
    assert server.records[0].reply == 5


async def test_delay_reply(start_socks: StartSocks, echo_port: int) -> None:
    server = await start_socks(route=lambda h, p: ("127.0.0.1", echo_port), delay_reply=0.3)
    t0 = trio.current_time()
    stream = await socks_connect(server, ONION, 1)
    assert trio.current_time() - t0 >= 0.3
    assert await roundtrip(stream, b"late") == b"late"


async def test_script_stall_times_out_client(start_socks: StartSocks, echo_port: int) -> None:
    async def stall(rec: ConnectRecord) -> str:
        return "stall"

    server = await start_socks(route=lambda h, p: ("127.0.0.1", echo_port), script=stall)
    with pytest.raises(ProxyTimeoutError):
        await socks_connect(server, ONION, 1, timeout=0.3)
    assert [r.reply for r in server.records] == [-1]


@pytest.mark.parametrize("action", ["close", "reset", "garbage"])
async def test_script_breaks_handshake(
    start_socks: StartSocks, echo_port: int, action: str
) -> None:
    async def script(rec: ConnectRecord) -> str:
        return action

    server = await start_socks(route=lambda h, p: ("127.0.0.1", echo_port), script=script)
    # python-socks surfaces a reset as a bare ConnectionResetError, the rest as ProxyError.
    with pytest.raises((ProxyError, OSError)):
        await socks_connect(server, ONION, 1)
    assert [r.reply for r in server.records] == [-1]


async def test_script_reply_override(start_socks: StartSocks, echo_port: int) -> None:
    async def script(rec: ConnectRecord) -> str | None:
        return "reply:6" if rec.host == ONION else None

    server = await start_socks(route=lambda h, p: ("127.0.0.1", echo_port), script=script)
    with pytest.raises(ProxyError) as ei:
        await socks_connect(server, ONION, 1)
    assert ei.value.error_code == 6
    ok = await socks_connect(server, "10.0.0.1", 1)
    assert await roundtrip(ok, b"fine") == b"fine"


@pytest.mark.parametrize("mode", ["close-after", "reset-after"])
async def test_script_cuts_connection_after_n_bytes(
    start_socks: StartSocks, echo_port: int, mode: str
) -> None:
    async def script(rec: ConnectRecord) -> str:
        return f"{mode}:1000"

    server = await start_socks(route=lambda h, p: ("127.0.0.1", echo_port), script=script)
    stream = await socks_connect(server, ONION, 1)
    await stream.send_all(b"z" * 600)  # 600 up + echoed 400 down reaches the limit
    got = b""
    with trio.fail_after(5):
        try:
            while chunk := await stream.receive_some(65536):
                got += chunk
            ended = "eof"
        except trio.BrokenResourceError:
            ended = "reset"
    (rec,) = server.records
    assert rec.bytes_up + rec.bytes_down == 1000
    assert len(got) == rec.bytes_down <= 600
    assert ended == ("eof" if mode == "close-after" else "reset")


async def test_pipelined_bytes_after_request_are_forwarded(
    start_socks: StartSocks, echo_port: int
) -> None:
    """A client that sends greeting, CONNECT and payload in one write (no-auth lets it)."""
    server = await start_socks(route=lambda h, p: ("127.0.0.1", echo_port))
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    host = ONION.encode()
    req = b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([len(host)]) + host + struct.pack(">H", 80)
    await stream.send_all(req + b"early-data")
    want = b"\x05\x00" + b"\x05\x00\x00\x01" + bytes(6) + b"early-data"
    got = b""
    with trio.fail_after(5):
        while len(got) < len(want):
            chunk = await stream.receive_some(65536)
            assert chunk
            got += chunk
    assert got == want
    assert server.records[0].host == ONION


async def test_wait_records_and_connection_counters(
    start_socks: StartSocks, echo_port: int
) -> None:
    server = await start_socks(route=lambda h, p: ("127.0.0.1", echo_port))

    async def client(i: int) -> None:
        s = await socks_connect(server, f"host{i}.example", 1000 + i)
        assert await roundtrip(s, b"%d" % i) == b"%d" % i
        await s.aclose()

    async with trio.open_nursery() as n:
        for i in range(5):
            n.start_soon(client, i)
        with trio.fail_after(5):
            recs = await server.wait_records(5)
    assert sorted((r.host, r.port) for r in recs) == [
        (f"host{i}.example", 1000 + i) for i in range(5)
    ]
    assert server.connections == 5
