"""memory_bench's flow-control attack: senders that ignore HTTP/2 flow control (towards a slot
and towards the inbound listener, with a receiver that stalls), and what the bridge does:
GOAWAY code, bytes accepted, peak RSS against its baseline.
"""

from __future__ import annotations

import contextlib
import re
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench.harness.bridgeproc import BridgeProc
from bench.harness.gens import RawGen, dial_raw, headers_seen
from bench.harness.wire import RawPeer, RawServer, grpc_frame, gzip6, raw_version, tx_message
from bench.memory.levels import EXTRA, RssSampler, settle_rss, warm_up
from bridge.core.proto import encode_varint

FLOOD_MESSAGE = 1 << 28  # the announced gRPC message: 256 MiB (under the 1 GiB cap)


def flood_header() -> bytes:
    """gRPC prefix + the start of a valid ``KaspadMessage{block = 2}`` of FLOOD_MESSAGE bytes:
    a message the bridge passes through without decoding, so only flow control can stop it."""
    body = FLOOD_MESSAGE - 1 - 4
    assert len(encode_varint(body)) == 4
    return b"\x00" + FLOOD_MESSAGE.to_bytes(4, "big") + b"\x12" + encode_varint(body)


class Attacker(RawPeer):
    """A RawPeer that records the GOAWAY it gets, and can flood DATA past the window."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        self.goaway: int | None = None
        self.reset_code: int | None = None
        self.t_closed: float | None = None
        super().__init__(*a, **kw)

    def _event(self, ev: Any, m: Any) -> None:
        if isinstance(ev, m.ConnectionTerminated):
            self.goaway = int(ev.error_code)
        elif isinstance(ev, m.StreamReset):
            self.reset_code = int(ev.error_code)
        super()._event(ev, m)

    def flood(self, limit: int, frame_size: int = 16384) -> tuple[int, float]:
        """Write DATA frames on our stream regardless of flow control until the bridge stops
        us (socket error / GOAWAY) or ``limit`` bytes. Returns (bytes written, seconds)."""
        import hyperframe.frame

        assert self.sid is not None
        body = flood_header() + bytes(frame_size - len(flood_header()))
        f = hyperframe.frame.DataFrame(self.sid)
        f.data = body
        wire = f.serialize()
        f.data = bytes(frame_size)
        wire_rest = f.serialize()
        written = 0
        t0 = time.monotonic()
        self.sock.settimeout(10)
        try:
            self.sock.sendall(wire)
            written += frame_size
            batch = wire_rest * 16
            while written < limit and not self.closed.is_set():
                self.sock.sendall(batch)
                written += 16 * frame_size
        except OSError:
            pass
        self.closed.wait(10)
        self.t_closed = time.monotonic()
        return written, self.t_closed - t0


class NoAckPeer(RawPeer):
    """A "kaspad" end that, once ``stall`` is set, keeps reading but grants no more window
    (a busy kaspad): the bridge cannot pass the attacker's excess on."""

    stall = False

    def _event(self, ev: Any, m: Any) -> None:
        if self.stall and isinstance(ev, m.DataReceived):
            self.counter.feed(ev.data)
            return
        super()._event(ev, m)


class StallServer(RawServer):
    def new_peer(self, sock: socket.socket) -> RawPeer:
        return NoAckPeer(sock, client=False)


@dataclass
class Attack:
    attackers: int
    kaspad: str  # "reading" | "stalled"
    baseline: int  # KiB
    peak: int  # KiB during the attack
    after: int  # KiB, settled after
    goaways: list[int | None] = field(default_factory=list)
    written: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)  # bridge log: close reason -> count


def measure_attack(n_attackers: int, limit: int, stalled: bool) -> Attack:
    import h2.errors

    gen = RawGen()
    gen.server.stop()
    gen.server = StallServer()
    gen.port = gen.server.port
    log = tempfile.TemporaryFile("w+")
    bp = BridgeProc({"role": "B", "kaspad": ["127.0.0.1", gen.port], "max_inbound": 256,
                        "log_level": "INFO", **EXTRA}, stderr=log)
    assert bp.inbound is not None
    sampler = RssSampler(bp.pid)
    try:
        time.sleep(1.0)
        # same warm-up as the levels: one honest peer with traffic, closed
        from bridge.rig.emulator import make_block_message

        block = grpc_frame(gzip6(make_block_message(100_000, seed=3).SerializeToString()),
                              True)
        tx = grpc_frame(tx_message(1).SerializeToString(), False)
        base = warm_up(gen, bp, block, tx)
        attackers: list[Attacker] = []
        receivers: list[RawPeer] = []
        for _ in range(n_attackers):
            a = dial_raw(bp.inbound or 0, Attacker)
            a.handshake(raw_version())  # at once, own node id (see open_peers)
            r = gen.server.wait_stream()
            r.handshake(gen.version_r)
            headers_seen(a, "attacker")
            attackers.append(a)
            receivers.append(r)
        time.sleep(0.3)
        if stalled:
            for r in receivers:
                assert isinstance(r, NoAckPeer)
                r.stall = True
        sampler.reset()
        results: list[tuple[int, float]] = [(0, 0.0)] * n_attackers

        def go(i: int) -> None:
            results[i] = attackers[i].flood(limit)

        threads = [threading.Thread(target=go, args=(i,), daemon=True)
                   for i in range(n_attackers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        time.sleep(0.3)
        peak = sampler.peak
        after = settle_rss(bp.pid)
        out = Attack(n_attackers, "stalled" if stalled else "reading", base, peak, after,
                     goaways=[a.goaway for a in attackers],
                     written=[w for w, _ in results], seconds=[s for _, s in results])
        names = [h2.errors.ErrorCodes(g).name if g is not None else "none"
                 for g in out.goaways]
        print(f"attack x{n_attackers} kaspad {out.kaspad}: baseline {base / 1024:.1f} MiB, "
              f"peak {peak / 1024:.1f} MiB, after {after / 1024:.1f} MiB; GOAWAY "
              f"{sorted(set(names))}; written "
              f"{statistics.median(out.written) / 1e6:.2f} MB median, closed after "
              f"{statistics.median(out.seconds) * 1e3:.0f} ms median", flush=True)
        for a in attackers:
            with contextlib.suppress(Exception):
                a.sock.close()
        bp.stop()
        log.seek(0)
        reasons: dict[str, int] = {}
        for line in log:
            m = re.search(r"inbound#\d+ closed: (.*?); stats=", line)
            if m and "peer" in m.group(1):
                why = re.sub(r"#\d+", "#N", m.group(1))
                reasons[why] = reasons.get(why, 0) + 1
        out.reasons = reasons
        print(f"  bridge log: {reasons}", flush=True)
        return out
    finally:
        sampler.stop()
        bp.stop()
        gen.stop()
