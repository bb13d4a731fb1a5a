"""The two load generators: ``emu`` (the grpcio kaspad emulator on both ends) and ``raw`` (the
``h2`` peers of :mod:`bench.harness.wire`). Each ``connect(port)`` gives a :class:`Link`: one
handshaken sender to receiver stream.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bench.harness.wire import RawPeer, RawServer, raw_version

BLOCK_SIZE = 1_000_000  # throughput: serialized KaspadMessage{block} bytes


class EmuRecorder:
    """Stands in for ``PeerSession.received``: timestamps and counts messages, keeps none."""

    def __init__(self) -> None:
        self.count = 0
        self.times: dict[int, float] | None = None
        self.cond = threading.Condition()

    def put(self, m: Any) -> None:
        t = time.perf_counter()
        with self.cond:
            self.count += 1
            if self.times is not None:
                self.times[m.request_id] = t
            self.cond.notify_all()

    def get(self, timeout: float | None = None) -> Any:  # pragma: no cover - unused
        raise RuntimeError("benchmark recorder")


@dataclass
class Link:
    """One established sender→receiver stream of either load generator."""

    kind: str
    send: Callable[[Any], None]
    received: Callable[[], int]
    close: Callable[[], None]
    recv_times: Any
    wait_below: Callable[[int], None] = lambda n: None


P = TypeVar("P", bound=RawPeer)


class Sender:
    """Sends one message over a :class:`Link` again and again in a daemon thread, at most
    ``in_flight`` not yet received at once, until :meth:`stop`."""

    def __init__(self, link: Link, msg: Any, in_flight: int = 4) -> None:
        self._stop = threading.Event()
        self._link, self._msg, self._in_flight = link, msg, in_flight
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._link.wait_below(self._in_flight)
            if self._stop.is_set():
                return
            self._link.send(self._msg)

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._thread.join(timeout)


def dial_raw(port: int, peer: type[P]) -> P:
    """A raw client stream to ``127.0.0.1:port`` (its request HEADERS sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(None)
    return peer(sock, client=True, authority=f"127.0.0.1:{port}".encode())


def headers_seen(s: RawPeer, what: str) -> None:
    """Wait for the response HEADERS on ``s`` (RuntimeError "``what``: no response headers")."""
    if not s.open.wait(12) or s.closed.is_set():
        raise RuntimeError(f"{what}: no response headers")


class EmuGen:
    def __init__(self) -> None:
        from bridge.rig.emulator import EmulatorConfig, KaspadEmulator

        self._cfg = EmulatorConfig
        self._emu = KaspadEmulator
        self.receiver = KaspadEmulator(EmulatorConfig(addrv2=True, max_workers=8))
        self.port = self.receiver.start_server("127.0.0.1", 0)
        self.senders: list[Any] = []

    def connect(self, port: int) -> Link:
        before = len(self.receiver.sessions)
        sender = self._emu(self._cfg(addrv2=True))  # fresh node id: no DUPLICATE_CONNECTION
        self.senders.append(sender)
        s = sender.dial("127.0.0.1", port)
        if not s.wait_handshake(12):
            raise RuntimeError(f"emulator handshake failed: {s!r}")
        sessions = self.receiver.wait_sessions(before + 1, 5)
        r = sessions[before]
        if not r.wait_handshake(5):
            raise RuntimeError(f"receiver handshake failed: {r!r}")
        rec = EmuRecorder()
        r.received = rec
        sent = [0]

        def send(msg: Any) -> None:
            sent[0] += 1
            s.send(msg)

        def wait_below(n: int) -> None:
            with rec.cond:
                rec.cond.wait_for(lambda: sent[0] - rec.count < n or s.closed, 5)

        def close() -> None:
            s.close()
            s.wait_closed(3)
            r.wait_closed(3)
            sender.stop()
            if s.violations or r.violations:
                print(f"  note: violations {s.violations} {r.violations}", file=sys.stderr)

        return Link("emu", send, lambda: rec.count, close, rec, wait_below)

    def block_payload(self) -> bytes:
        from bridge.rig.emulator import make_block_message

        out: bytes = make_block_message(BLOCK_SIZE, seed=1).SerializeToString()
        return out

    def stop(self) -> None:
        for s in self.senders:
            s.stop()
        self.receiver.stop()


class RawGen:
    def __init__(self) -> None:
        self.server = RawServer()
        self.port = self.server.port
        self.version_s = raw_version()
        self.version_r = raw_version()

    def connect(self, port: int) -> Link:
        s = dial_raw(port, RawPeer)
        # Both ends send their Version at once, like kaspad: a bridge holds the response
        # HEADERS back until the Version of the side it screens has passed.
        s.handshake(self.version_s)
        r = self.server.wait_stream()
        r.counter.times = []
        r.handshake(self.version_r)
        headers_seen(s, "raw sender")
        # wait until the receiver has seen our Version, Verack and Ready
        deadline = time.monotonic() + 5
        while r.counter.count < 3 and time.monotonic() < deadline:
            time.sleep(0.002)
        if r.counter.count < 3:
            raise RuntimeError("raw handshake did not cross")
        base = r.counter.count
        r.counter.times = []

        def close() -> None:
            s.finish()
            r.finish()
            self.server.prune()

        return Link("raw", lambda framed: s.send(framed) or None,
                    lambda: r.counter.count - base, close, r.counter)

    def stop(self) -> None:
        self.server.stop()


_BLOCK_PLAIN: bytes | None = None


def block_plain() -> bytes:
    global _BLOCK_PLAIN
    if _BLOCK_PLAIN is None:
        from bridge.rig.emulator import make_block_message

        _BLOCK_PLAIN = make_block_message(BLOCK_SIZE, seed=1).SerializeToString()
    return _BLOCK_PLAIN
