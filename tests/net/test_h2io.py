"""The shell's pump helpers against a real h2 server connection over an in-memory stream."""

from __future__ import annotations

import h2.config
import h2.connection
import pytest
import trio
import trio.testing
from hyperframe.frame import GoAwayFrame

from bridge.core.errors import BridgeError, Fault
from bridge.core.relay import RelaySettings, new_upstream_connection
from bridge.net import h2io


def _server() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    return conn


async def _serve(stream: trio.abc.Stream, answer: str = "settings") -> None:
    """An h2 server: reads the client preface, then answers with its SETTINGS, a GOAWAY before
    any SETTINGS, an HTTP/1 error, EOF, or nothing."""
    server = _server()
    data = await stream.receive_some(65536)
    server.receive_data(bytes(data))
    if answer == "settings":
        await stream.send_all(server.data_to_send())
    elif answer == "goaway":
        await stream.send_all(GoAwayFrame(0, error_code=2).serialize())
    elif answer == "garbage":
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 64)
    elif answer == "eof":
        await stream.aclose()
        return
    await trio.sleep_forever()


async def test_handshake_sends_the_preface_and_returns_on_settings() -> None:
    client, server = trio.testing.memory_stream_pair()
    end = new_upstream_connection(RelaySettings())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, server)
        await h2io.h2_client_handshake(client, end, 5)
        nursery.cancel_scope.cancel()
    assert end.data_to_send() == b""  # the SETTINGS ACK was written


@pytest.mark.parametrize("kind, message", [
    ("goaway", "sent GOAWAY during the handshake"),
    ("eof", "closed during the HTTP/2 handshake"),
    ("garbage", "not an HTTP/2 server"),
])
async def test_handshake_failures_blame_the_upstream(kind: str, message: str) -> None:
    client, server = trio.testing.memory_stream_pair()
    end = new_upstream_connection(RelaySettings())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, server, kind)
        with pytest.raises(BridgeError) as err:
            await h2io.h2_client_handshake(client, end, 5)
        nursery.cancel_scope.cancel()
    assert err.value.fault is Fault.REMOTE and message in str(err.value)


async def test_handshake_times_out_when_nothing_answers() -> None:
    client, server = trio.testing.memory_stream_pair()
    end = new_upstream_connection(RelaySettings())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, server, "nothing")
        with pytest.raises(trio.TooSlowError):
            await h2io.h2_client_handshake(client, end, 0.2)
        nursery.cancel_scope.cancel()


async def test_receive_deadline_eof_and_broken_stream() -> None:
    client, server = trio.testing.memory_stream_pair()
    assert await h2io.receive(client, deadline=trio.current_time() + 0.05) is None
    await server.send_all(b"abc")
    assert await h2io.receive(client) == b"abc"
    await server.aclose()
    assert await h2io.receive(client) == b""
    await client.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await h2io.receive(client)
    assert await h2io.receive(client, eof_on_error=True) == b""


async def test_send_gives_up_on_a_peer_that_does_not_read() -> None:
    client, _server_end = trio.testing.lockstep_stream_pair()
    with pytest.raises(trio.TooSlowError):
        await h2io.send(client, b"x" * 10, timeout=0.1)
