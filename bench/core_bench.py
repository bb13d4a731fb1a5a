"""In-memory CPU cost of the sans-IO relay per relayed byte (no sockets, no trio).

    python3 -m bench.core_bench [--rounds 8] [--megabytes 64]

A kaspad-like h2 client and an h2 server (both from ``tests/core/relay_harness.py``) are
connected through one :class:`bridge.core.relay.Relay`; the client streams 1 MB gzip'd block
messages, the server consumes them. Only the CPU time spent inside the relay's own calls
(``Relay.receive`` and ``Relay.data_to_send``) is counted, with ``time.thread_time``, so the
peers' h2 work and other processes on the machine do not enter the figure. Variants run
interleaved round by round in one process: ``as shipped`` (the relay with every speed-up it
installs) and ``h2 repr`` (hyperframe's original per-frame repr restored, i.e. before
:mod:`bridge.core.h2fast`). Prints CPU seconds per GB relayed, median and range.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from bridge.core import grpc, h2fast, proto
from bridge.core.policy import ConnectionPolicy, GossipState, PolicySettings
from bridge.core.relay import Relay, RelaySettings, Side, new_upstream_connection
from bridge.rig.emulator import make_block_message
from tests.core import relay_harness as rh


def one_round(megabytes: int, variant: str) -> tuple[float, int]:
    """Returns (relay CPU seconds, relayed bytes)."""
    if variant == "h2 repr":
        h2fast.uninstall()
    else:
        h2fast.install()
    try:
        return _run(megabytes, VARIANTS[variant])
    finally:
        h2fast.install()


VARIANTS = {"as shipped": RelaySettings(), "h2 repr": RelaySettings(),
            "64k frames": RelaySettings(max_frame=65536)}


def _run(megabytes: int, settings: RelaySettings) -> tuple[float, int]:
    policy = ConnectionPolicy(GossipState(), PolicySettings(), remote_label="bench")
    relay = Relay(policy, kaspad_side=Side.DOWN, upstream_authority=b"x.onion:16111",
                  settings=settings, upstream=new_upstream_connection(settings))
    down = rh.Peer(client=True)
    up = rh.Peer(client=False, compress=True)
    cpu = 0.0
    clock: Callable[[], float] = time.thread_time

    def pump() -> bool:
        nonlocal cpu
        moved = False
        for peer, side in ((down, Side.DOWN), (up, Side.UP)):
            data = peer.conn.data_to_send()
            if data:
                moved = True
                t = clock()
                relay.receive(side, data)
                cpu += clock() - t
            t = clock()
            out = relay.data_to_send(side)
            cpu += clock() - t
            if out:
                moved = True
                peer.receive(out)
                peer.messages.clear()  # keep memory flat
        return moved

    down.open()
    rh.pump(relay, down, up)
    up.respond()
    rh.pump(relay, down, up)
    down.send(rh.version())
    up.send(rh.version(services=proto.SERVICE_ADDRV2))
    rh.pump(relay, down, up)
    for p in (down, up):
        p.send(rh.VERACK)
        p.send(rh.READY)
    rh.pump(relay, down, up)
    if relay.closed is not None:
        raise SystemExit(f"relay closed during the handshake: {relay.closed}")
    msg = make_block_message(1_000_000).SerializeToString()  # relay_bench's block
    framed = grpc.frame(grpc.gzip_compress(msg), compressed=True)
    before = relay.inflow(Side.DOWN).bytes_in
    cpu = 0.0
    for _ in range(megabytes):
        down.send_raw(framed)
        while pump():
            pass
    if relay.closed is not None:
        raise SystemExit(f"relay closed: {relay.closed}")
    return cpu, relay.inflow(Side.DOWN).bytes_in - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--megabytes", type=int, default=64, help="1 MB blocks per round")
    args = ap.parse_args()
    variants = list(VARIANTS)
    results: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            cpu, nbytes = one_round(args.megabytes, v)
            results[v].append(cpu / nbytes * 1e9)
    print(f"relay CPU s/GB relayed (gzip'd bytes), {args.rounds} rounds x "
          f"{args.megabytes} blocks, interleaved:")
    base = statistics.median(results["h2 repr"])
    for v in variants:
        xs = results[v]
        med = statistics.median(xs)
        print(f"  {v:12s} {med:6.3f} [{min(xs):.3f}-{max(xs):.3f}]  "
              f"{(med / base - 1) * 100:+.1f}% vs h2 repr")


if __name__ == "__main__":
    main()
