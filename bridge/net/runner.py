"""Moves bytes between two trio streams and one sans-IO :class:`~bridge.core.relay.Relay`.

Each socket has a reader task (socket → relay) and a writer task (relay → socket). Readers never
block on writes, so neither peer can deadlock the other; memory stays bounded because the relay
only produces what the HTTP/2 windows allow.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from bridge.core.relay import Endpoint, Relay, Side
from bridge.errors import Fault

log = logging.getLogger("bridge.relay")

READ_SIZE = 64 * 1024
#: After the relay decided to close: time allowed to deliver the last frames (trailers, GOAWAY).
CLOSE_FLUSH_TIMEOUT = 3.0


class _Signal:
    def __init__(self) -> None:
        self._ev = trio.Event()

    def set(self) -> None:
        self._ev.set()

    async def wait(self) -> None:
        await self._ev.wait()
        self._ev = trio.Event()


UpstreamGetter = Callable[[], Awaitable[tuple[trio.abc.Stream, Endpoint] | None]]


class RelayRunner:
    def __init__(self, relay: Relay, down: trio.abc.Stream, label: str) -> None:
        self.relay = relay
        self.label = label
        self.streams: dict[Side, trio.abc.Stream | None] = {Side.DOWN: down, Side.UP: None}
        self._kick = {Side.DOWN: _Signal(), Side.UP: _Signal()}
        self._done = trio.Event()
        self._writers_done = {Side.DOWN: trio.Event(), Side.UP: trio.Event()}

    def _drain_notes(self) -> None:
        pol = self.relay.policy
        for text in pol.notes:
            log.info("%s: %s", self.label, text)
        for text in pol.warnings:
            log.warning("%s: %s", self.label, text)
        pol.notes.clear()
        pol.warnings.clear()

    def _kick_all(self) -> None:
        self._drain_notes()
        for s in self._kick.values():
            s.set()
        if self.relay.finished:
            self._done.set()

    async def run(self, get_upstream: UpstreamGetter, *, response_timeout: float | None = None,
                  refuse_message: str = "no upstream peer available",
                  refresh_interval: float | None = None) -> None:
        """Relay until either side ends. ``get_upstream`` supplies the UP stream and its h2
        connection (or ``None``: the DOWN client is refused with UNAVAILABLE)."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, Side.DOWN)
                nursery.start_soon(self._writer, Side.DOWN)
                up = await get_upstream()
                if up is None:
                    self.relay.refuse(refuse_message)
                    self._writers_done[Side.UP].set()
                else:
                    up_stream, conn = up
                    self.streams[Side.UP] = up_stream
                    self.relay.attach_upstream(conn)
                    nursery.start_soon(self._reader, Side.UP)
                    nursery.start_soon(self._writer, Side.UP)
                    if response_timeout is not None:
                        nursery.start_soon(self._response_watchdog, response_timeout)
                    if refresh_interval:
                        nursery.start_soon(self._refresh, refresh_interval)
                self._kick_all()
                await self._done.wait()
                with trio.move_on_after(CLOSE_FLUSH_TIMEOUT):
                    for ev in self._writers_done.values():
                        await ev.wait()
                nursery.cancel_scope.cancel()
        finally:
            for stream in self.streams.values():
                if stream is not None:
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await stream.aclose()

    async def _response_watchdog(self, timeout: float) -> None:
        await trio.sleep(timeout)
        if not self.relay.response_started and not self.relay.finished:
            self.relay.refuse(f"upstream did not answer within {timeout:.1f}s")
            self._kick_all()

    async def _refresh(self, interval: float) -> None:
        """Active discovery: every ``interval`` s ask an ADDRv2 remote for addresses (the reply
        is harvested by the bridge, never forwarded to kaspad)."""
        while not self.relay.finished:
            await trio.sleep(interval)
            if self.relay.request_addresses():
                log.debug("%s: asked the remote for addresses", self.label)
                self._kick_all()

    async def _reader(self, side: Side) -> None:
        stream = self.streams[side]
        assert stream is not None
        while not self.relay.finished:
            try:
                data = await stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            if not data:
                self.relay.connection_lost(side)
            else:
                self.relay.receive(side, bytes(data))
            self._kick_all()
            if not data:
                return

    async def _writer(self, side: Side) -> None:
        stream = self.streams[side]
        assert stream is not None
        try:
            while True:
                data = self.relay.data_to_send(side)
                if data:
                    try:
                        await stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        self.relay.connection_lost(side)
                        self._kick_all()
                        return
                    continue
                if self.relay.finished:
                    return
                await self._kick[side].wait()
        finally:
            self._writers_done[side].set()

    def log_close(self) -> None:
        closed = self.relay.closed
        if closed is None:
            return
        stats = self.relay.stats()
        if closed.error is not None:
            err = closed.error
            level = logging.WARNING if err.fault in (Fault.KASPAD, Fault.LOCAL) else logging.INFO
            log.log(level, "%s closed: %s; stats=%s", self.label, err.describe(), stats)
        else:
            log.info("%s closed: %s; stats=%s", self.label, closed.reason, stats)
