"""The loopback world around the target of ``flood_bench``, in its own process.

    python3 -m bench.flood_world      # JSON commands on stdin, one JSON answer line each

It holds everything of a flood case that is Python and not the target: the scripted SOCKS5
server (``tests/peers/socks_server.py``, playing Tor), the honest remote the daemon's pool reaches
through it, the grpcio kaspad emulator behind the target, the honest relay (an emulator remote
sending blocks through the target to that kaspad) and the kaspad connections on the slots. In
its own process, their CPU and the GIL they take do not delay ``flood_bench``'s ``/health``
poller and RSS sampler; what the attack costs kaspad (streams that reach it) slows the honest
relay, as it would slow a real kaspad.

Commands: ``{"op": "case"}`` (fresh kaspad emulator: its port), ``{"op": "routes", "routes":
{onion: port}}``, ``{"op": "honest", "port": p}``, ``{"op": "rate", "t0": t, "t1": t}``,
``{"op": "slots", "ports": [...]}``, ``{"op": "connects"}``, ``{"op": "end"}`` (stop the case's
kaspad side), ``{"op": "quit"}``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from typing import Any

from bench.harness.gens import EmuGen, EmuRecorder
from bench.harness.wire import pb

HONEST_BLOCK = 100_000


class Kaspad(EmuGen):
    """The kaspad emulator behind a relay (``receiver``; many streams at once) and the honest
    remote's sender emulators (``connect``). Every session only counts what it receives."""

    def __init__(self) -> None:
        from bridge.rig.emulator import EmulatorConfig, KaspadEmulator

        class Counting(KaspadEmulator):
            def _add_session(self, s: Any) -> None:
                s.received = EmuRecorder()
                super()._add_session(s)

        self._cfg = EmulatorConfig
        self._emu = Counting
        self.receiver = Counting(EmulatorConfig(addrv2=True, max_workers=256))
        self.port = self.receiver.start_server("127.0.0.1", 0)
        self.senders = []


    def stop(self) -> None:
        """Close every session and the server without waiting for each session (a rapid-reset
        flood leaves thousands of them; KaspadEmulator.stop waits up to 2 s for every one)."""
        em = self.receiver
        em._stopping.set()
        with em._cond:
            sessions = list(em.sessions)
        for s in sessions:
            s.close()
        if em._server is not None:
            em._server.stop(grace=None).wait(5.0)
            em._server = None
        for sender in self.senders:
            with contextlib.suppress(Exception):
                sender.stop()


class Honest:
    """The honest relay: blocks from a remote emulator to the kaspad emulator, 4 in flight;
    ``(time, delivered)`` every 0.25 s."""

    def __init__(self, kaspad: Kaspad, port: int) -> None:
        from bridge.rig.emulator import make_block_message

        self.link = kaspad.connect(port)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        msg = make_block_message(HONEST_BLOCK, seed=5)
        self.t_connected = time.monotonic()
        self.threads = [threading.Thread(target=self._send, args=(msg,), daemon=True),
                        threading.Thread(target=self._sample, daemon=True)]
        for t in self.threads:
            t.start()

    def _send(self, msg: Any) -> None:
        while not self._stop.is_set():
            self.link.wait_below(4)
            if not self._stop.is_set():
                self.link.send(msg)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.link.received()))
            time.sleep(0.25)

    def rate(self, t0: float, t1: float) -> float:
        """Messages per second delivered between t0 and t1."""
        inside = [(t, n) for t, n in self.samples if t0 <= t <= t1]
        if len(inside) < 2:
            return float("nan")
        (ta, na), (tb, nb) = inside[0], inside[-1]
        return (nb - na) / (tb - ta) if tb > ta else float("nan")

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(5)
        with contextlib.suppress(Exception):
            self.link.close()


class Socks:
    """The scripted SOCKS5 server (``tests/peers/socks_server.py``) on its own trio thread;
    ``routes`` maps onion hosts to loopback ports."""

    def __init__(self) -> None:
        import trio

        from tests.peers.socks_server import ScriptedSocks5Server

        self.routes: dict[str, int] = {}

        def route(host: str, port: int) -> tuple[str, int] | int:
            return ("127.0.0.1", self.routes[host]) if host in self.routes else 4

        self.server = ScriptedSocks5Server(route, require_auth=True)
        started = threading.Event()
        self._cancel: Any = None

        async def main() -> None:
            async with trio.open_nursery() as n:
                self._cancel = n.cancel_scope
                self._token = trio.lowlevel.current_trio_token()
                await n.start(self.server.serve)
                started.set()

        self.thread = threading.Thread(target=trio.run, args=(main,), daemon=True, name="socks")
        self.thread.start()
        if not started.wait(10):
            raise RuntimeError("SOCKS server did not start")
        self.port = self.server.port

    def connects(self) -> int:
        return len(self.server.records)

    def stop(self) -> None:
        import trio

        with contextlib.suppress(Exception):
            trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
        self.thread.join(5)


def onion(seed: int) -> str:
    from bridge.core.onion import OnionAddress

    return OnionAddress.from_pubkey(bytes(range(seed, seed + 32))).host


ONION_GOOD = onion(40)
#: the hostile upstreams (one onion each: the pool keeps one connection per candidate)
ONION_HOSTILE = [onion(100 + i) for i in range(64)]



class SlotDialer:
    """kaspad's side of the slots: keeps one emulator connection on every slot port, dialing
    again 0.5 s after one closes (kaspad re-dials its --addpeer targets)."""

    def __init__(self, kaspad: Kaspad, ports: list[int]) -> None:
        self.kaspad = kaspad
        self.ports = ports
        self.dials = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="slots")
        self.thread.start()

    def _run(self) -> None:
        live: dict[int, Any] = {}
        while not self._stop.is_set():
            for p in self.ports:
                s = live.get(p)
                if s is None or s.closed:
                    live[p] = self.kaspad.receiver.dial("127.0.0.1", p)
                    self.dials += 1
            self._stop.wait(0.5)
        for s in live.values():
            with contextlib.suppress(Exception):
                s.close()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)



def serve(inp: Any, out: Any) -> None:
    pb()
    socks = Socks()
    good = Kaspad()  # the honest remote the slots' pool reaches through "Tor"
    socks.routes[ONION_GOOD] = good.port
    kaspad: Kaspad | None = None
    honest: Honest | None = None
    dialer: SlotDialer | None = None

    def end() -> None:
        nonlocal kaspad, honest, dialer
        for x in (dialer, honest, kaspad):
            if x is not None:
                with contextlib.suppress(Exception):
                    x.stop()
        kaspad = honest = dialer = None

    out.write(json.dumps({"socks": socks.port}) + "\n")
    out.flush()
    try:
        for line in inp:
            cmd = json.loads(line)
            op = cmd["op"]
            answer: dict[str, Any] = {}
            try:
                if op == "case":
                    end()
                    kaspad = Kaspad()
                    answer["port"] = kaspad.port
                elif op == "routes":
                    socks.routes.update(cmd["routes"])
                elif op == "honest":
                    assert kaspad is not None
                    honest = Honest(kaspad, int(cmd["port"]))
                elif op == "rate":
                    answer["rate"] = honest.rate(cmd["t0"], cmd["t1"]) if honest else None
                elif op == "slots":
                    assert kaspad is not None
                    dialer = SlotDialer(kaspad, cmd["ports"])
                elif op == "connects":
                    answer["connects"] = socks.connects()
                elif op == "end":
                    answer["dials"] = dialer.dials if dialer else 0
                    end()
                elif op == "quit":
                    break
            except Exception as e:  # reported to flood_bench, which records it in the case
                answer["error"] = f"{type(e).__name__}: {e}"
            out.write(json.dumps(answer) + "\n")
            out.flush()
    finally:
        end()
        socks.stop()
        good.stop()


if __name__ == "__main__":
    import os

    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr  # nothing else may write on the answer channel
    serve(sys.stdin, answers)
