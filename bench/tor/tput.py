"""tor_bench's throughput parts: (a) bridge vs ``socat`` through Tor, interleaved, and (a')
bridge vs a raw trio splice on one shared circuit (the splice runs in its own process,
``python3 -m bench.tor_bench --splice-child``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench.harness.bridgeproc import BridgeProc
from bench.harness.gens import EmuGen, RawGen, Sender
from bench.harness.procs import REPO, proc_cpu
from bench.harness.stats import med
from bench.harness.wire import grpc_frame, gzip6, tx_message
from bench.tor.net import VPORT, SocatSocks, add_onion, onion_streams, tor_cpu, wait_reachable

#: diagnostic path: both bridges with 512 KiB HTTP/2 windows on both sides (the default before
#: RelaySettings.remote_window = 2 MiB toward the remote peer)
BIG = "bridge, 512 KiB windows (before)"


@dataclass
class TorTput:
    gen: str
    path: str
    mb_s: float
    relay_cpu: float | None  # bridges A+B / socat, CPU s in the window
    tor_cpu: float  # all tor processes, CPU s in the window
    window: float
    probe: list[float] = field(default_factory=list)  # one-way s of single small messages
    rnd: int = 0


def measure_tput(gen_name: str, gen: Any, path: str, port: int, procs: list[Any], net: Any,
                 warmup: float, window: float, payload: tuple[Any, int, Any],
                 hook: Any = None) -> TorTput:
    link = gen.connect(port)
    msg, wire, tx = payload
    probe = []
    for _ in range(5):  # one-way latency of a lone small message on the idle path
        before, ts = link.received(), time.perf_counter()
        link.send(tx)
        while link.received() <= before and time.perf_counter() - ts < 10:
            time.sleep(0.0005)
        probe.append(time.perf_counter() - ts)
    sender = Sender(link, msg)
    time.sleep(warmup)
    if hook is not None:  # e.g. read the streams' circuits while the transfer runs
        hook()
    c0 = [p.cpu()[0] for p in procs]
    tc0 = tor_cpu(net)
    n0, t0 = link.received(), time.perf_counter()
    time.sleep(window)
    n1, t1 = link.received(), time.perf_counter()
    tc1 = tor_cpu(net)
    c1 = [p.cpu()[0] for p in procs]
    sender.stop(30)
    with contextlib.suppress(Exception):
        link.close()
    dt = t1 - t0
    return TorTput(gen_name, path, (n1 - n0) * wire / dt / 1e6,
                   sum(b - a for a, b in zip(c0, c1, strict=True)) if procs else None,
                   tc1 - tc0, dt, probe)


def run_tput(net: Any, gens: list[str], rounds: int, warmup: float, window: float,
             block_size: int, big_window: int | None) -> list[TorTput]:
    socks = net.client.socks_port
    from bridge.rig.emulator import make_block_message

    plain = make_block_message(block_size, seed=1).SerializeToString()
    wire = len(gzip6(plain))
    tx = tx_message(1).SerializeToString()
    payloads = {"raw": (grpc_frame(gzip6(plain), True), wire, grpc_frame(tx, False)),
                "emu": (plain, wire, tx)}
    made: dict[str, Any] = {}
    bridges: dict[str, tuple[BridgeProc, BridgeProc]] = {}  # "<gen>/<path>"
    onion_direct: dict[str, str] = {}
    out: list[TorTput] = []
    try:
        for g in gens:
            made[g] = EmuGen() if g == "emu" else RawGen()
            b = BridgeProc({"role": "B", "kaspad": ["127.0.0.1", made[g].port]})
            assert b.inbound is not None
            onion_x = add_onion(net, b.inbound)
            onion_direct[g] = add_onion(net, made[g].port)
            a = BridgeProc({"role": "A", "target": [onion_x, VPORT], "socks": socks,
                               "pool_size": 1, "no_wait": True})
            bridges[f"{g}/bridge"] = (a, b)
            if big_window:
                extra = {"window": big_window}
                b2 = BridgeProc({"role": "B", "kaspad": ["127.0.0.1", made[g].port], **extra})
                assert b2.inbound is not None
                a2 = BridgeProc({"role": "A", "target": [add_onion(net, b2.inbound), VPORT],
                                    "socks": socks, "pool_size": 1, "no_wait": True, **extra})
                bridges[f"{g}/{BIG}"] = (a2, b2)
            print(f"tor tput {g}: onion X {onion_x} -> bridge B; onion Y {onion_direct[g]} -> "
                  "receiver", flush=True)
        for g in gens:
            # published? (a circuit to each, so the first measured round is not the first)
            wait_reachable(socks, onion_direct[g])
            for key, (a, _b) in bridges.items():
                if key.startswith(f"{g}/"):
                    print(f"tor tput {key}: bridge A warm: {a.wait_ready()}", flush=True)
        paths = ("loopback", "socat", "bridge") + ((BIG,) if big_window else ())
        variants = [(g, p) for g in gens for p in paths]
        for rnd in range(rounds):
            k = rnd % len(variants)
            for g, p in variants[k:] + variants[:k]:
                procs: list[Any] = []
                socat = None
                if p == "loopback":
                    port = made[g].port
                elif p == "socat":
                    socat = SocatSocks(socks, onion_direct[g], f"bench{rnd}{g}")
                    port, procs = socat.port, [socat]
                else:
                    a, b = bridges[f"{g}/{p}"]
                    a.wait_ready()
                    assert a.slot is not None
                    port, procs = a.slot, [a, b]
                try:
                    r = measure_tput(g, made[g], p, port, procs, net, warmup, window,
                                     payloads[g])
                finally:
                    if socat is not None:
                        socat.stop()
                r.rnd = rnd
                out.append(r)
                cpu = "" if r.relay_cpu is None else f" relay cpu {r.relay_cpu / r.window:.0%}"
                print(f"tor tput round {rnd + 1} {g} {p:8}: {r.mb_s:6.2f} MB/s{cpu} tor cpu "
                      f"{r.tor_cpu / r.window:.0%}; idle one-way "
                      f"{med(r.probe) * 1e3:.1f} ms", flush=True)
                if g == "raw":
                    made[g].server.prune()
    finally:
        for a, b in bridges.values():
            a.stop()
            b.stop()
        for gen in made.values():
            gen.stop()
    return out


# =============================================================================================
# (a') paired throughput on one shared circuit


class SpliceProc:
    """A raw byte splice in its own process (``--splice-child``): each accepted TCP connection
    is dialed through SOCKS5 with the given credentials to ``onion:16511`` (the bridge's own
    ``open_socks_stream``, trio) and the bytes are copied both ways; nothing else."""

    def __init__(self, socks_port: int, onion: str, creds: tuple[str, str]) -> None:
        spec = {"socks": socks_port, "onion": onion, "port": VPORT, "creds": list(creds)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.tor_bench", "--splice-child", json.dumps(spec)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("splice child did not start")
        self.port: int = json.loads(line)["port"]
        self.pid = self.proc.pid

    def cpu(self) -> tuple[float, float]:
        return proc_cpu(self.pid)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def splice_child(spec: dict[str, Any]) -> None:
    import trio

    from bridge.net.socks import ProxyEndpoint, open_socks_stream

    proxy = ProxyEndpoint("127.0.0.1", int(spec["socks"]))
    creds = (str(spec["creds"][0]), str(spec["creds"][1]))

    async def pump(src: Any, dst: Any) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await dst.send_eof()

    async def handle(down: Any) -> None:
        async with down:
            up = await open_socks_stream(proxy, spec["onion"], int(spec["port"]), timeout=60,
                                         credentials=creds)
            async with up, trio.open_nursery() as n:
                n.start_soon(pump, down, up)
                n.start_soon(pump, up, down)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, handle, listeners)
            print(json.dumps({"port": port}), flush=True)
            stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            while await stdin.receive_some(4096):
                pass
            nursery.cancel_scope.cancel()

    trio.run(main)


@dataclass
class Paired:
    rnd: int
    first: str  # which path was measured first in this round
    bridge: TorTput
    splice: TorTput
    bridge_circs: list[str]  # circuit ids of bridge A's streams to onion X during its window
    splice_circs: list[str]  # circuit ids of the splice's stream(s) during its window

    @property
    def same(self) -> bool:
        return bool(self.splice_circs) and set(self.splice_circs) == set(self.bridge_circs)

    @property
    def ratio(self) -> float:
        return self.bridge.mb_s / self.splice.mb_s if self.splice.mb_s else float("nan")


def run_paired(net: Any, rounds: int, warmup: float, window: float,
               block_size: int) -> list[Paired]:
    """Per round: fresh SOCKS credentials C; bridge A (every dial with C) -> onion X -> bridge
    B -> receiver, and a raw splice (SOCKS5 with C) -> onion X -> bridge B -> receiver: the
    same destination and isolation key, hence the same Tor circuit. Order alternates."""
    socks = net.client.socks_port
    from bridge.rig.emulator import make_block_message

    plain = make_block_message(block_size, seed=1).SerializeToString()
    wire = len(gzip6(plain))
    payload = (grpc_frame(gzip6(plain), True), wire,
               grpc_frame(tx_message(1).SerializeToString(), False))
    gen = RawGen()
    b = BridgeProc({"role": "B", "kaspad": ["127.0.0.1", gen.port]})
    out: list[Paired] = []
    try:
        assert b.inbound is not None
        onion_x = add_onion(net, b.inbound)
        target = f"{onion_x}:{VPORT}"
        print(f"tor paired: onion X {onion_x} -> bridge B -> receiver; reachable after "
              f"{wait_reachable(socks, onion_x):.1f}s", flush=True)
        for rnd in range(rounds):
            creds = (secrets.token_hex(8), secrets.token_hex(16))
            order = ("bridge", "splice") if rnd % 2 == 0 else ("splice", "bridge")
            # bridge A's pool dials its upstream with C before it reports its ports (no_wait
            # off): that stream builds the round's circuit, the splice's stream joins it
            a = BridgeProc({"role": "A", "target": [onion_x, VPORT], "socks": socks,
                               "pool_size": 1, "socks_creds": list(creds)})
            sp = SpliceProc(socks, onion_x, creds)
            res: dict[str, TorTput] = {}
            circs: dict[str, list[str]] = {}
            try:
                print(f"tor paired round {rnd + 1}: bridge A warm: {a.wait_ready()}", flush=True)
                for path in order:
                    before = onion_streams(net, target)
                    seen: dict[str, str] = {}

                    def sample(path: str = path, before: dict[str, str] = before,
                               seen: dict[str, str] = seen,
                               circs: dict[str, list[str]] = circs) -> None:
                        now = onion_streams(net, target)
                        if path == "splice":  # the stream the splice opened for this link
                            seen.update({k: v for k, v in now.items() if k not in before})
                        else:  # bridge A's streams (the splice's are gone or excluded)
                            seen.update({k: v for k, v in now.items()
                                         if k not in circs.get("splice_ids", [])})

                    if path == "bridge":
                        assert a.slot is not None
                        port, procs = a.slot, [a, b]
                    else:
                        port, procs = sp.port, [sp, b]
                    r = measure_tput("raw", gen, path, port, procs, net, warmup, window,
                                     payload, hook=sample)
                    r.rnd = rnd
                    res[path] = r
                    circs[path] = sorted(set(seen.values()), key=lambda c: int(c))
                    if path == "splice":
                        circs["splice_ids"] = list(seen)
                    gen.server.prune()
                    print(f"tor paired round {rnd + 1} {path:6}: {r.mb_s:6.2f} MB/s relay cpu "
                          f"{(r.relay_cpu or 0) / r.window:.0%} tor cpu "
                          f"{r.tor_cpu / r.window:.0%}; circuits {circs[path]}", flush=True)
            finally:
                a.stop()
                sp.stop()
            p = Paired(rnd, order[0], res["bridge"], res["splice"], circs["bridge"],
                       circs["splice"])
            out.append(p)
            print(f"tor paired round {rnd + 1}: same circuit {p.same}, ratio bridge/splice "
                  f"{p.ratio:.2f}", flush=True)
    finally:
        b.stop()
        gen.stop()
    return out
