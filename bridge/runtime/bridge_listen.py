"""The listeners of :class:`bridge.runtime.bridge.Bridge`: the accept loop behind the slot ports and
the onion inbound port, with the slot connection cap (``max_slot_connections``), accept pacing for
the inbound port (:class:`_Pacer`, a token bucket) and quiet, bounded handling of accept errors
(running out of file descriptors: the loop waits and retries).

Repeated conditions caused by local connections are logged through :class:`_Throttled`, at most
once per :data:`LOG_EVERY` seconds with a count. What a connection is relayed to is not decided
here: each accepted stream goes to the handler the bridge passes in
(:mod:`bridge.runtime.bridge_relays`).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from bridge.core.errors import Fault

if TYPE_CHECKING:  # the bridge imports this module and passes itself in
    from bridge.runtime.bridge import Bridge

log = logging.getLogger("bridge")

#: accept(2) errors that mean "out of resources for now" (descriptors, kernel memory): the
#: listener waits :data:`ACCEPT_RETRY` seconds and tries again
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY = 0.1
#: repeated conditions caused by local connections (cap reached, silent clients, accept
#: errors) are logged at most once per this many seconds, with a count
LOG_EVERY = 60.0


class _Throttled:
    """One log line per ``every`` seconds at most for a repeated event, with how many events
    there were since the last line (a flood of local connections must not flood the log)."""

    def __init__(self, level: int, every: float = LOG_EVERY) -> None:
        self.level = level
        self.every = every
        self._last: float | None = None
        self._since = 0

    def __call__(self, fmt: str, *args: object) -> None:
        self._since += 1
        now = trio.current_time()
        if self._last is not None and now - self._last < self.every:
            return
        more = (f" ({self._since - 1} more in the last {now - self._last:.0f}s)"
                if self._last is not None and self._since > 1 else "")
        log.log(self.level, fmt + more, *args)
        self._last, self._since = now, 0


async def serve(bridge: Bridge, handler: Callable[[trio.SocketStream], Awaitable[None]],
                port: int, host: str, *, slot: bool,
                task_status: trio.TaskStatus[list[trio.SocketListener]]
                = trio.TASK_STATUS_IGNORED) -> None:
    """Like :func:`trio.serve_tcp`, with the slot connection cap and quiet, bounded handling
    of accept errors (trio logs each one with a traceback, ten times a second)."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, bridge, listener, handler, slot, nursery)
        task_status.started(listeners)


async def _accept_loop(bridge: Bridge, listener: trio.SocketListener,
                       handler: Callable[[trio.SocketStream], Awaitable[None]], slot: bool,
                       nursery: trio.Nursery) -> None:
    what = "slot" if slot else "inbound"
    rate = None if slot else bridge.options.inbound_accept_rate
    pacer = _Pacer(rate, bridge.options.inbound_accept_burst) if rate else None
    async with listener:
        while True:
            if pacer is not None and await pacer.wait():
                bridge.inbound_stats = bridge.inbound_stats.bump(accept_paced=1)
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                bridge.closed_count = bridge.closed_count.bump(accept_failed=1)
                bridge._log_accept("%s listener: accept failed: %s (%s); new connections wait "
                                   "(local resources: raise the open-files limit?)", what,
                                   errno.errorcode.get(exc.errno or 0, exc.errno),
                                   exc.strerror)
                await trio.sleep(ACCEPT_RETRY)
                continue
            if slot and bridge.slot_connections >= bridge.max_slot_connections:
                bridge.closed_count = bridge.closed_count.bump(slot_full=1)
                bridge._log_full("slot ports: %d local connections already (max %d); a new "
                                 "one was closed [%s]", bridge.slot_connections,
                                 bridge.max_slot_connections, Fault.LOCAL.value)
                await trio.aclose_forcefully(stream)
                continue
            if slot:
                bridge.slot_connections += 1
            nursery.start_soon(_run_handler, bridge, handler, stream, slot)


async def _run_handler(bridge: Bridge, handler: Callable[[trio.SocketStream], Awaitable[None]],
                       stream: trio.SocketStream, slot: bool) -> None:
    try:
        await handler(stream)
    finally:
        if slot:
            bridge.slot_connections -= 1
        await trio.aclose_forcefully(stream)


class _Pacer:
    """Token bucket for accepts: ``burst`` at once, then ``rate`` per second."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(max(burst, 1))
        self.tokens = self.burst
        self.last = trio.current_time()

    def _refill(self) -> None:
        now = trio.current_time()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now

    async def wait(self) -> bool:
        """Take a token, sleeping until there is one; whether it had to wait."""
        self._refill()
        waited = self.tokens < 1
        if waited:
            await trio.sleep((1 - self.tokens) / self.rate)
            self._refill()
        self.tokens -= 1
        return waited


def _port_of(listeners: list[trio.SocketListener]) -> int:
    port: int = listeners[0].socket.getsockname()[1]
    return port
