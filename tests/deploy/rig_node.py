"""In-container helper of the compose test (run by deploy/docker-compose.test.yml; not collected).

Runs inside the ``rig`` image (deploy/Dockerfile, target ``rig``), mounted at /ktb-test, in the
``tornet`` container (the compose ``tor`` service's network namespace: its loopback carries the
private Tor network, its kaspa-internal address reaches the stack's kaspad). The real kaspad
binary and its RPC protos are mounted at /kaspad/bin/kaspad and /kaspad/proto.

``tornet --shared DIR``
    Start the private Tor network (:class:`bridge.rig.tornet.TorNetwork`) on this network
    namespace's loopback and write ``DIR/testnet.conf``: the torrc lines that join a tor to it
    (``TestingTorNetwork 1``, ``DirAuthority`` …). The stack's tor includes that file. Runs until
    SIGTERM.
``peer --shared DIR``
    The remote side: real simnet kaspad R behind bridge R, published as an onion (the stack's
    bridge dials it: the stack's outbound path); then, once the test writes the stack's onion to
    ``DIR/stack-onion``, real kaspad D behind bridge D, whose slot reaches the stack's onion over
    the private network (the stack's inbound path). Each kaspad runs with exactly the flags
    ``kaspad-flags`` prints for its bridge (R without ``--addpeer``: it only accepts). Status
    (RPC ports, onion, gossip) goes to ``DIR/peer.json``.
``relay --shared DIR --stack HOST:PORT``
    Over kaspad's gRPC RPC: wait until the stack's kaspad has an outbound peer (R) and an
    inbound one (D), submit a block to the stack's kaspad (GetBlockTemplate → SubmitBlock) and
    time its arrival at R and D (BlockAdded notifications), then one submitted to D and its
    arrival at the stack's kaspad and at R. Prints one JSON object; exit 1 on a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

CONTROL_PASSWORD = "kaspa-tor-bridge-rig"
TORNET_DIR = Path("/rig/tornet")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _log(event: str, **kw: Any) -> None:
    print(json.dumps({"t": round(time.time(), 2), "event": event, **kw}), flush=True)


# -- tornet -----------------------------------------------------------------------------------


def tornet(shared: Path) -> int:
    from bridge.rig.tornet import TorNetwork

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for stale in ("testnet.conf", "peer.json", "stack-onion"):
        (shared / stale).unlink(missing_ok=True)
    t0 = time.monotonic()
    net = TorNetwork(TORNET_DIR, clients=1, onion_hosts=1, control_password=CONTROL_PASSWORD)
    try:
        net.start(timeout=float(os.environ.get("KTB_TORNET_TIMEOUT", "120")))
        lines = [line for line in net.client.torrc.read_text().splitlines()
                 if line.startswith("DirAuthority ")]
        conf = ["# written by tests/deploy/rig_node.py: join the private test Tor network",
                "TestingTorNetwork 1", "PathsNeededToBuildCircuits 0.67", *lines]
        tmp = shared / "testnet.conf.tmp"
        tmp.write_text("\n".join(conf) + "\n")
        tmp.chmod(0o644)
        tmp.replace(shared / "testnet.conf")
        _log("tornet-up", seconds=round(time.monotonic() - t0, 1), timings=net.timings)
        while not stop.wait(1.0):
            pass
    finally:
        net.stop()
    return 0


# -- peer (remote kaspads, each behind its own bridge) -----------------------------------------

KASPAD = Path("/kaspad/bin/kaspad")


def _bridge_cfg(name: str, *, control: int | None, kaspad_port: int, peers: list[str],
                socks: int) -> Any:
    from bridge.config import load_config
    from bridge.rig.tornet import free_ports

    slot, inbound = free_ports(2)
    return load_config(None, env={"HOME": "/root"}, overrides={
        "network": "kaspa-simnet", "mode": "tor-only", "data_dir": f"/rig/{name}",
        "kaspad.p2p": f"127.0.0.1:{kaspad_port}",
        "slots.base_port": slot, "slots.count": 1, "inbound.listen": f"127.0.0.1:{inbound}",
        "tor.socks": f"127.0.0.1:{socks}",
        "tor.control": f"127.0.0.1:{control}" if control else "",
        "tor.control_password": CONTROL_PASSWORD if control else "",
        "tor.listen_onion": control is not None, "tor.bootstrap_timeout": 60.0,
        "peers.connect": peers, "pool.size": 1, "pool.dial_timeout": 30.0,
    })


def peer(shared: Path) -> int:
    import trio

    from bridge.rig.kaspad import KaspadNode
    from bridge.rig.tornet import TorNetwork, free_ports
    from bridge.runtime.daemon import Daemon
    from bridge.runtime.wiring import kaspad_flags

    net = TorNetwork.attach(TORNET_DIR)
    socks = net.client.socks_port
    assert socks is not None
    status: dict[str, Any] = {"phase": "starting"}
    out = shared / "peer.json"
    rpc_r, p2p_r, rpc_d, p2p_d = free_ports(4)
    nodes: list[KaspadNode] = []

    def publish(**kw: Any) -> None:
        status.update(kw)
        _write_json(out, status)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            # R: the stack dials this onion (its outbound path); R itself dials nobody
            cfg_r = _bridge_cfg("peer-r", control=net.onion_host.control_port,
                                kaspad_port=p2p_r, peers=[], socks=socks)
            node_r = KaspadNode(KASPAD, Path("/rig/kaspad-r"), rpc_r, p2p_r, name="kaspad-r",
                                flags=[f for f in kaspad_flags(cfg_r)
                                       if not f.startswith("--addpeer=")])
            nodes.append(node_r)
            await trio.to_thread.run_sync(lambda: node_r.start(wait=120))
            publish(phase="kaspad-r", r_rpc=rpc_r, r_log=str(node_r.log_path))
            daemon_r = Daemon(cfg_r, handle_signals=False)
            await nursery.start(daemon_r.run)
            assert daemon_r.supervisor is not None
            publish(phase="published", onion_r=daemon_r.supervisor.onion_address)
            stack_file = shared / "stack-onion"
            while not stack_file.exists():
                await trio.sleep(0.5)
            stack = stack_file.read_text().strip()
            # D: its slot reaches the stack's onion (the stack's inbound path); no onion itself
            cfg_d = _bridge_cfg("peer-d", control=None, kaspad_port=p2p_d, peers=[stack],
                                socks=socks)
            daemon_d = Daemon(cfg_d, handle_signals=False)
            await nursery.start(daemon_d.run)
            assert daemon_d.bridge is not None
            publish(phase="warming", stack=stack)
            t0 = time.monotonic()
            with trio.move_on_after(120):  # kaspad backs off 30 s after a failed --addpeer
                while daemon_d.bridge.pool.ready_count < 1:
                    await trio.sleep(0.5)
            publish(warm=daemon_d.bridge.pool.ready_count >= 1,
                    warm_seconds=round(time.monotonic() - t0, 1))
            node_d = KaspadNode(KASPAD, Path("/rig/kaspad-d"), rpc_d, p2p_d, name="kaspad-d",
                                flags=kaspad_flags(cfg_d))
            nodes.append(node_d)
            await trio.to_thread.run_sync(lambda: node_d.start(wait=120))
            publish(phase="running", d_rpc=rpc_d, d_log=str(node_d.log_path))
            while True:
                publish(learned_d=[str(p.address) for p in daemon_d.bridge.gossip.onions])
                await trio.sleep(1.0)

    try:
        trio.run(main)
    except BaseException as exc:
        publish(phase="failed", error=f"{type(exc).__name__}: {exc}",
                logs={n.name: n.tail(20) for n in nodes})
        raise
    finally:
        for n in nodes:
            n.stop()
    return 0


# -- relay (blocks over RPC) ------------------------------------------------------------------


def relay(shared: Path, stack: str, timeout: float) -> int:
    from bridge.config import parse_hostport
    from bridge.rig.kaspad import BlockAdded, KaspadRpc

    peer_state = json.loads((shared / "peer.json").read_text())
    hp = parse_hostport(stack)
    arrivals: dict[str, dict[str, float]] = {"stack": {}, "r": {}, "d": {}}
    lock = threading.Lock()

    def on(name: str) -> Any:
        def cb(b: BlockAdded) -> None:
            with lock:
                arrivals[name].setdefault(b.merkle_root, b.at)
        return cb

    rpcs = {"stack": KaspadRpc(hp.host, hp.port, binary=KASPAD, on_block=on("stack")),
            "r": KaspadRpc("127.0.0.1", peer_state["r_rpc"], binary=KASPAD, on_block=on("r")),
            "d": KaspadRpc("127.0.0.1", peer_state["d_rpc"], binary=KASPAD, on_block=on("d"))}
    result: dict[str, Any] = {}

    def peers() -> dict[str, list[dict[str, Any]]]:
        return {name: [{"address": p.address, "outbound": p.isOutbound,
                        "user_agent": p.userAgent} for p in r.peers()]
                for name, r in rpcs.items()}

    def wait_for(what: str, pred: Any, limit: float) -> float:
        t0 = time.monotonic()
        while not pred():
            if time.monotonic() - t0 > limit:
                raise TimeoutError(f"timed out after {limit:.0f}s waiting for {what}")
            time.sleep(0.05)
        return time.monotonic() - t0

    def got(name: str, root: str) -> bool:
        with lock:
            return root in arrivals[name]

    def delay_ms(root: str, frm: str, to: str) -> float:
        with lock:
            return round((arrivals[to][root] - arrivals[frm][root]) * 1000.0, 1)

    try:
        def linked() -> bool:
            p = peers()
            result["peers"] = p
            return (any(x["outbound"] for x in p["stack"])
                    and any(not x["outbound"] for x in p["stack"])
                    and bool(p["r"]) and bool(p["d"]))

        result["links_seconds"] = round(wait_for("stack kaspad <-> R (outbound) and D (inbound)",
                                                 linked, timeout), 1)
        for r in rpcs.values():
            r.notify_blocks()
        # a block submitted to the stack's kaspad reaches R (stack -> slot -> bridge -> Tor ->
        # R's onion) and D (stack -> bridge inbound -> onion -> Tor -> D's bridge)
        t0 = time.monotonic()
        root = rpcs["stack"].mine(extra_data="ktb compose stack")
        result["stack_submit_ms"] = round((time.monotonic() - t0) * 1000.0, 1)
        wait_for("the stack's block at R and D", lambda: got("stack", root) and got("r", root)
                 and got("d", root), 60)
        result["stack_to_r_ms"] = delay_ms(root, "stack", "r")
        result["stack_to_d_ms"] = delay_ms(root, "stack", "d")
        # the other way: a block of D reaches the stack's kaspad and, relayed by it, R
        root = rpcs["d"].mine(extra_data="ktb compose remote d")
        wait_for("D's block at the stack and R", lambda: got("d", root) and got("stack", root)
                 and got("r", root), 60)
        result["d_to_stack_ms"] = delay_ms(root, "d", "stack")
        result["d_to_r_ms"] = delay_ms(root, "d", "r")
        result["block_count"] = {n: int(r.dag_info().blockCount) for n, r in rpcs.items()}
        result["ok"] = True
    except Exception as exc:
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        try:
            result["peers"] = peers()
        except Exception as exc2:
            result["peers_error"] = repr(exc2)
    finally:
        for r in rpcs.values():
            r.close()
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rig_node.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("tornet", "peer", "relay"):
        sp = sub.add_parser(name)
        sp.add_argument("--shared", type=Path, required=True)
        if name == "relay":
            sp.add_argument("--stack", required=True, help="the stack kaspad's RPC HOST:PORT")
            sp.add_argument("--timeout", type=float, default=240.0)
    args = p.parse_args(argv)
    if args.cmd == "tornet":
        return tornet(args.shared)
    if args.cmd == "peer":
        return peer(args.shared)
    return relay(args.shared, args.stack, args.timeout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
