"""A bridge in its own subprocess, so its CPU and RSS are its own.

``BridgeProc(spec)`` starts ``python3 -m bench.relay_bench --bridge-child '<json>'``, which runs
:func:`bridge_child`: one bridge (slot listener A, inbound listener B, or both) configured by
``spec``; it prints its ports as JSON, answers "ready" on stdin, and exits on stdin EOF.
"""

from __future__ import annotations

import contextlib
import cProfile
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness.procs import REPO, proc_cpu, sched_wait


def bridge_child(spec: dict[str, Any]) -> None:
    """Run one bridge; print its ports as JSON; answer "ready" on stdin; exit on stdin EOF."""
    import logging

    import trio

    from bridge.core.peers import Target
    from bridge.net.pool import DialPolicy
    from bridge.runtime.bridge import Bridge, BridgeOptions

    logging.basicConfig(level=spec.get("log_level", "WARNING"), stream=sys.stderr,
                        format=f"[bridge {spec['role']}] %(levelname)s %(name)s: %(message)s")
    direct = DialPolicy(proxy=None, allow_direct=True, timeout=10)
    if spec["role"] == "A":
        # optional keys (tor_bench): "socks" (dial through this SOCKS port), "candidates"
        # (instead of "target"), "pool_size", "slot_wait", "book" (address book path),
        # "on_demand" (see below), "no_wait" (report the ports before the pool is warm),
        # "socks_creds" ([user, password] for every SOCKS dial instead of fresh ones)
        cands = [Target(h, p) for h, p in spec.get("candidates", [spec.get("target")])]
        dial = direct
        if spec.get("socks"):
            from bridge.net.socks import ProxyEndpoint

            dial = DialPolicy(proxy=ProxyEndpoint("127.0.0.1", spec["socks"]),
                              timeout=spec.get("dial_timeout", 60.0))
            if spec.get("socks_creds"):
                # tor_bench paired mode: every SOCKS dial uses these credentials instead of
                # fresh random ones, so Tor (IsolateSOCKSAuth) puts this bridge's streams on
                # the circuit a raw splice with the same credentials uses too
                import bridge.net.socks as socks_mod

                creds = (str(spec["socks_creds"][0]), str(spec["socks_creds"][1]))
                socks_mod.fresh_credentials = lambda: creds
        opts = BridgeOptions(kaspad_p2p=("127.0.0.1", 1), candidates=cands,
                             slot_ports=[0], inbound=None, dial=dial,
                             pool_size=spec.get("pool_size", 1),
                             slot_wait=spec.get("slot_wait", 6.0),
                             book_path=Path(spec["book"]) if spec.get("book") else None,
                             refresh_interval=None)
    else:
        host, port = spec["kaspad"]
        opts = BridgeOptions(kaspad_p2p=(host, port), candidates=[], slot_ports=[],
                             inbound=("127.0.0.1", 0), dial=direct, pool_size=0,
                             max_inbound=spec.get("max_inbound", 64))
    if spec.get("window"):  # diagnostic: other HTTP/2 windows than RelaySettings' default
        from bridge.core.relay import RelaySettings

        # both sides (kaspad-facing and remote-facing) get this window
        opts.relay = RelaySettings(window=int(spec["window"]), remote_window=int(spec["window"]))
    if spec.get("cheap_repr"):
        import hyperframe.frame

        hyperframe.frame.Frame.__repr__ = lambda self: f"<{type(self).__name__}>"  # type: ignore[method-assign]
    first_ready: list[float] = []
    tm_snaps: list[Any] = []
    if spec.get("tracemalloc"):
        import tracemalloc

        tracemalloc.start(int(spec["tracemalloc"]))

    def make_bridge() -> Bridge:
        """Built inside trio.run: a Bridge with an address book reads trio's clock."""
        bridge = Bridge(opts)
        if spec.get("on_demand"):
            # "no warm pool": a slot connection makes the pool dial one upstream for it (the
            # pool target is raised by one while a slot waits), so the slot waits for a whole
            # SOCKS + Tor circuit + HTTP/2 handshake. (pool_size 0 alone never dials at all.)
            pool = bridge.pool
            take = pool.take

            async def take_on_demand(timeout: float) -> Any:
                pool.size += 1
                try:
                    return await take(timeout)
                finally:
                    pool.size -= 1

            pool.take = take_on_demand  # type: ignore[method-assign]
        return bridge

    async def ready(bridge: Bridge) -> None:
        with trio.move_on_after(15):
            while bridge.pool.ready_count < opts.pool_size:
                await trio.sleep(0.01)

    async def watch_first(bridge: Bridge) -> None:
        while not first_ready:
            if bridge.pool.ready_count or bridge.pool.events.taken:
                first_ready.append(time.time())
            await trio.sleep(0.005)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            t_run = time.time()
            bridge = make_bridge()
            await nursery.start(bridge.run)
            nursery.start_soon(watch_first, bridge)
            if not spec.get("no_wait"):
                await ready(bridge)
            ports = {"slot": bridge.slot_ports[0] if bridge.slot_ports else None,
                     "inbound": bridge.inbound_port, "pid": os.getpid(), "t_run": t_run}
            print(json.dumps(ports), flush=True)
            stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            buf = b""
            while True:
                data = await stdin.receive_some(4096)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip() == b"ready":
                        await ready(bridge)
                        print(f"ok {bridge.pool.ready_count} {dict(bridge.closed_count.items())}",
                              flush=True)
                    elif line.strip() == b"first":  # wall time the first upstream was ready
                        with trio.move_on_after(120):
                            while not first_ready:
                                await trio.sleep(0.01)
                        print(json.dumps(first_ready[0] if first_ready else None), flush=True)
                    elif line.strip() in (b"tm_snap", b"tm_diff"):  # needs "tracemalloc"
                        import gc
                        import tracemalloc

                        gc.collect()
                        snap = tracemalloc.take_snapshot().filter_traces(
                            [tracemalloc.Filter(False, tracemalloc.__file__)])
                        if line.strip() == b"tm_snap":
                            tm_snaps[:] = [snap]
                            print(json.dumps(tracemalloc.get_traced_memory()), flush=True)
                        else:
                            diff = snap.compare_to(tm_snaps[0], "lineno")[:12]
                            print(json.dumps([str(d) for d in diff]), flush=True)
                    elif line.strip() == b"objects":  # live objects of the relay's types
                        import gc

                        gc.collect()
                        want = ("Relay", "RelayRunner", "H2Connection", "SocketStream",
                                "Endpoint", "RelayInfo")
                        counts = dict.fromkeys(want, 0)
                        for o in gc.get_objects():
                            n = type(o).__name__
                            if n in counts:
                                counts[n] += 1
                        counts["relays"] = len(bridge.relays)
                        print(json.dumps(counts), flush=True)
                    elif line.strip() == b"stats":
                        fails = bridge.dialer.failures.items()
                        print(json.dumps({"pool": dict(bridge.pool.events.items()),
                                          "dial_failures": {k.upper(): v for k, v in fails if v},
                                          "closed": dict(bridge.closed_count.items())}),
                              flush=True)
            nursery.cancel_scope.cancel()

    profile = spec.get("profile")
    if profile:
        prof = cProfile.Profile(time.thread_time)  # CPU time: preemption is not charged
        prof.enable()
        try:
            trio.run(main)
        finally:
            prof.disable()
            prof.dump_stats(profile)
    else:
        trio.run(main)


class BridgeProc:
    def __init__(self, spec: dict[str, Any], stderr: Any = None) -> None:
        self.spec = spec
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.relay_bench", "--bridge-child", json.dumps(spec)],
            env={**os.environ, **spec.get("env", {})}, cwd=REPO, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bridge child {spec} did not start")
        info = json.loads(line)
        self.t_run: float = info["t_run"]
        self.slot: int | None = info["slot"]
        self.inbound: int | None = info["inbound"]
        self.pid = self.proc.pid

    def wait_ready(self) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("ready\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def ask(self, command: str) -> Any:
        """Send a child command ("first", "stats") and parse its JSON answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def cpu(self) -> tuple[float, float]:
        return proc_cpu(self.pid)

    def wait(self) -> float:
        return sched_wait(self.pid)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
