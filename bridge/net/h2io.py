"""Driving a sans-IO connection over a trio stream: the shell's read, write and handshake.

Every place in the shell that serves a sans-IO connection (an h2 connection behind
:class:`~bridge.core.relay.Endpoint`, or a :class:`~bridge.core.probe.ProbeClient`) does the
same steps: read a chunk from the stream, hand it to the connection, write what the connection
wants to send, and look at the events. This module holds those steps once:

- :func:`receive`: the next chunk, ``b""`` at EOF (and, if asked, when the stream broke),
  ``None`` when a deadline passed first;
- :func:`send` / :func:`flush`: write bytes, or what the connection has queued, within an
  optional time limit. Never shielded from cancellation: a shutdown does not wait for a remote
  that does not read;
- :func:`exchange`: feed one chunk and write the replies (PING and SETTINGS ACKs, ...);
- :func:`drive`: read, feed and write until an event says what the caller waited for;
- :func:`h2_client_handshake`: our client preface out, the server's SETTINGS in.

Users: :mod:`bridge.net.pool` (the handshake of a warm connection and its idle loop),
:mod:`bridge.net.probe` (the harvest loop), :mod:`bridge.runtime.bridge_relays` and
:mod:`bridge.cli.doctor` (handshake to kaspad). The relay runner's reader and writer tasks are
the same steps split over two tasks (:func:`receive`, then ``relay.receive``; ``relay
.data_to_send``, then :func:`send`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, TypeVar

import h2.events
import h2.exceptions
import trio

from bridge.core.errors import BridgeError, Fault
from bridge.core.relay import Endpoint

#: bytes asked of the stream per read
READ_SIZE = 64 * 1024
#: what a stream raises when the peer or our own side closed it
STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

E = TypeVar("E")
R = TypeVar("R")


class Outbox(Protocol):
    """A sans-IO connection's outbound side."""

    def data_to_send(self) -> bytes: ...


class Wire(Outbox, Protocol[E]):
    """A sans-IO connection: bytes in give events, and it has bytes to send."""

    def receive_data(self, data: bytes) -> list[E]: ...


async def receive(stream: trio.abc.ReceiveStream, *, deadline: float = math.inf,
                  eof_on_error: bool = False, max_bytes: int = READ_SIZE) -> bytes | None:
    """The next bytes from ``stream``: ``b""`` at EOF (with ``eof_on_error`` also when the
    stream broke; otherwise that error propagates), ``None`` when trio time ``deadline``
    passed first."""
    with trio.move_on_at(deadline):
        try:
            return bytes(await stream.receive_some(max_bytes))
        except STREAM_ERRORS:
            if not eof_on_error:
                raise
            return b""
    return None


async def send(stream: trio.abc.SendStream, data: bytes, *,
               timeout: float | None = None) -> None:
    """Write all of ``data``; with ``timeout``, :class:`trio.TooSlowError` when the peer has
    not taken it within that many seconds."""
    with trio.fail_after(math.inf if timeout is None else timeout):
        await stream.send_all(data)


async def flush(stream: trio.abc.SendStream, conn: Outbox, *,
                timeout: float | None = None) -> int:
    """Write what ``conn`` has queued (see :func:`send`); the number of bytes written."""
    out = conn.data_to_send()
    if out:
        await send(stream, out, timeout=timeout)
    return len(out)


async def exchange(stream: trio.abc.SendStream, conn: Wire[E], data: bytes) -> list[E]:
    """Feed ``data`` to ``conn`` and write its replies; the events it gave."""
    events = conn.receive_data(data)
    await flush(stream, conn)
    return events


async def drive(stream: trio.abc.Stream, conn: Wire[E], until: Callable[[E], R | None], *,
                on_eof: Callable[[], BaseException]) -> R:
    """Write what ``conn`` has queued, then read, feed and write until ``until(event)`` returns
    something other than ``None``, and return that. EOF raises ``on_eof()``; ``until`` may
    raise to end the exchange early. No time limit of its own: wrap it in one."""
    await flush(stream, conn)
    while True:
        data = await receive(stream)
        if not data:
            raise on_eof()
        for event in await exchange(stream, conn, data):
            result = until(event)
            if result is not None:
                return result


def _settings_received(event: h2.events.Event) -> bool | None:
    if isinstance(event, h2.events.ConnectionTerminated):
        raise BridgeError("upstream sent GOAWAY during the handshake", fault=Fault.REMOTE)
    return True if isinstance(event, h2.events.RemoteSettingsChanged) else None


async def h2_client_handshake(stream: trio.abc.Stream, end: Endpoint, timeout: float) -> None:
    """Send our preface and wait for the server's SETTINGS (proves an HTTP/2 server answers)."""
    with trio.fail_after(timeout):
        try:
            await drive(stream, end, _settings_received,
                        on_eof=lambda: BridgeError("upstream closed during the HTTP/2 handshake",
                                                   fault=Fault.REMOTE))
        except h2.exceptions.ProtocolError as exc:
            raise BridgeError(f"upstream is not an HTTP/2 server: {exc}",
                              fault=Fault.REMOTE) from exc


__all__ = ["READ_SIZE", "STREAM_ERRORS", "Outbox", "Wire", "drive", "exchange", "flush",
           "h2_client_handshake", "receive", "send"]
