"""Continuous kaspad-emulator traffic across two bridges, and process-resource counters.

:class:`Traffic` plays an unmodified kaspad on each end of a bridge pair:

* side A (like ``--addpeer``) keeps dialing bridge A's slot, and while a session is up sends one
  block request every ``interval`` seconds (``request_id`` = a global sequence number);
* side B answers every block it receives with a block carrying ``response_id`` = that number.

Each delivery is recorded with the time, the receiving session and the id, so a test can ask
"was anything delivered on a connection that was opened after time T" (a *re-established* peer,
not bytes that were already in flight).
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from dataclasses import dataclass, field

import trio

from bridge.rig.emulator import KaspadEmulator, PeerSession, make_block_message, payload_kind


@dataclass(frozen=True)
class Delivery:
    at: float  # time.monotonic()
    session_started: float  # time.monotonic() when the receiving session was first seen
    ident: int


@dataclass
class Traffic:
    emu_a: KaspadEmulator
    emu_b: KaspadEmulator
    slot_port: int
    interval: float = 0.2
    block_bytes: int = 2000
    #: close side A's session after this many blocks and dial again (None: keep it)
    reconnect_every: int | None = None
    sent: int = 0
    dials: int = 0
    handshakes: int = 0
    to_b: list[Delivery] = field(default_factory=list)  # blocks A -> B
    to_a: list[Delivery] = field(default_factory=list)  # answers B -> A
    violations: list[str] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _first_seen: dict[int, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _seen(self, s: PeerSession) -> float:
        return self._first_seen.setdefault(id(s), time.monotonic())

    def delivered_since(self, t: float, *, to: str = "b") -> list[Delivery]:
        """Deliveries on sessions first seen after ``t`` (re-established connections)."""
        got = self.to_b if to == "b" else self.to_a
        with self._lock:
            return [d for d in got if d.session_started > t]

    async def run(self) -> None:
        async with trio.open_nursery() as n:
            n.start_soon(self._side_a)
            n.start_soon(self._side_b)

    async def _side_a(self) -> None:
        while True:
            self.dials += 1
            sa = self.emu_a.dial("127.0.0.1", self.slot_port)
            t_dial = time.monotonic()
            try:
                ok = await trio.to_thread.run_sync(sa.wait_handshake, 15.0,
                                                   abandon_on_cancel=True)
                if not ok:
                    await trio.sleep(max(0.0, 1.0 - (time.monotonic() - t_dial)))
                    continue
                self.handshakes += 1
                started = self._seen(sa)
                for k in itertools.count():
                    if sa.closed or (self.reconnect_every is not None
                                     and k >= self.reconnect_every):
                        await trio.sleep(self.interval)  # the last answers
                        break
                    ident = next(self._seq)
                    sa.send(make_block_message(self.block_bytes, request_id=ident, seed=ident))
                    self.sent += 1
                    self._drain(sa, "response_id", self.to_a, started)
                    await trio.sleep(self.interval)
            finally:
                self._drain(sa, "response_id", self.to_a, self._seen(sa))
                self.violations += sa.violations
                sa.close()

    async def _side_b(self) -> None:
        while True:
            for sb in [s for s in self.emu_b.sessions if not s.closed]:
                started = self._seen(sb)
                for ident in self._drain(sb, "request_id", self.to_b, started):
                    sb.send(make_block_message(self.block_bytes, response_id=ident, seed=ident))
            await trio.sleep(0.05)

    def _drain(self, s: PeerSession, id_field: str, into: list[Delivery],
               started: float) -> list[int]:
        idents: list[int] = []
        while True:
            try:
                m = s.received.get_nowait()
            except queue.Empty:
                break
            if payload_kind(m) != "block":
                continue
            ident = int(getattr(m, id_field))
            idents.append(ident)
            with self._lock:
                into.append(Delivery(time.monotonic(), started, ident))
        return idents


@dataclass(frozen=True)
class Resources:
    fds: int
    threads: int
    tasks: int

    def __str__(self) -> str:
        return f"fds={self.fds} threads={self.threads} trio_tasks={self.tasks}"


def resources() -> Resources:
    """Open fds, live threads and trio tasks of this process (call from trio)."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    stack, tasks = [root], 0
    while stack:
        t = stack.pop()
        tasks += 1
        for nursery in t.child_nurseries:
            stack.extend(nursery.child_tasks)
    return Resources(len(os.listdir("/proc/self/fd")), threading.active_count(), tasks)


def summary(values: list[float]) -> tuple[float, float, float]:
    """(min, median, max)."""
    s = sorted(values)
    return s[0], s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2, s[-1]
