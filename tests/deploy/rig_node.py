"""In-container helper of the compose test (run by deploy/docker-compose.test.yml; not collected).

Runs inside the ``rig`` image (deploy/Dockerfile, target ``rig``), mounted at /ktb-test:

``tornet --shared DIR``
    Start the private Tor network (:class:`bridge.rig.tornet.TorNetwork`) on this network
    namespace's loopback (the compose ``tor`` service's, via ``network_mode: service:tor``) and
    write ``DIR/testnet.conf``: the torrc lines that join a tor to it (``TestingTorNetwork 1``,
    ``DirAuthority`` …). The stack's tor includes that file. Runs until SIGTERM.
``peer --shared DIR``
    The remote side, in the tornet container: emulator R (a kaspad) behind bridge R, published
    as an onion (the stack's bridge dials it: the stack's outbound path); then, once the test
    writes the stack's onion to ``DIR/stack-onion``, emulator D dials bridge D's slot, which
    reaches the stack's onion over the private network (the stack's inbound path). Status goes
    to ``DIR/peer.json``.
``kaspad -- <kaspad flags>``
    Stand-in for the kaspad container: understands the flags ``kaspa-tor-bridge kaspad-flags``
    prints (``--listen``, ``--addpeer``, network flags), serves on ``--listen`` and dials every
    ``--addpeer`` slot, re-dialing a slot whose session closed (like kaspad, faster). Status in
    ``/tmp/kaspad.json``.
``listening PORT``
    Healthcheck: exit 0 when something listens on TCP PORT in this network namespace.
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


def _session(s: Any) -> dict[str, Any]:
    return {"direction": s.direction, "remote": s.remote, "handshake": s.handshake_complete,
            "closed": s.closed, "closed_reason": s.closed_reason, "violations": s.violations,
            "messages_in": s.stats.messages_in, "messages_out": s.stats.messages_out,
            "remote_addresses": None if s.remote_addresses is None
            else [a.WhichOneof("address") for a in s.remote_addresses]}


# -- listening --------------------------------------------------------------------------------


def listening(port: int) -> int:
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                return 0
    print(f"nothing listens on {port}")
    return 1


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


# -- peer (remote kaspad + bridge pair) -------------------------------------------------------


def _bridge_cfg(name: str, *, control: int | None, kaspad_port: int, peers: list[str],
                socks: int) -> Any:
    from bridge.config import load_config
    from bridge.rig.tornet import free_ports

    slot, inbound = free_ports(2)
    return load_config(None, env={"HOME": "/root"}, overrides={
        "network": "kaspa-mainnet", "mode": "tor-only", "data_dir": f"/rig/{name}",
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

    from bridge.daemon import Daemon
    from bridge.rig.emulator import EmulatorConfig, KaspadEmulator
    from bridge.rig.tornet import TorNetwork

    net = TorNetwork.attach(TORNET_DIR)
    socks = net.client.socks_port
    assert socks is not None
    status: dict[str, Any] = {"phase": "starting"}
    out = shared / "peer.json"
    emu_r = KaspadEmulator(EmulatorConfig(network="kaspa-mainnet"))
    emu_d = KaspadEmulator(EmulatorConfig(network="kaspa-mainnet"))

    def publish(**kw: Any) -> None:
        status.update(kw)
        status["r_sessions"] = [_session(s) for s in list(emu_r.sessions)]
        status["d_sessions"] = [_session(s) for s in list(emu_d.sessions)]
        _write_json(out, status)

    async def main() -> None:
        port_r = await trio.to_thread.run_sync(emu_r.start_server)
        async with trio.open_nursery() as nursery:
            # R: the stack dials this onion (its outbound path)
            daemon_r = Daemon(_bridge_cfg("peer-r", control=net.onion_host.control_port,
                                          kaspad_port=port_r, peers=[], socks=socks),
                              handle_signals=False)
            await nursery.start(daemon_r.run)
            assert daemon_r.supervisor is not None
            publish(phase="published", onion_r=daemon_r.supervisor.onion_address)
            stack_file = shared / "stack-onion"
            while not stack_file.exists():
                publish()
                await trio.sleep(0.5)
            stack = stack_file.read_text().strip()
            # D: dials the stack's onion (the stack's inbound path); no onion of its own
            daemon_d = Daemon(_bridge_cfg("peer-d", control=None, kaspad_port=port_r,
                                          peers=[stack], socks=socks), handle_signals=False)
            await nursery.start(daemon_d.run)
            assert daemon_d.bridge is not None
            publish(phase="dialing", stack=stack)
            t0 = time.monotonic()
            with trio.move_on_after(120):
                while daemon_d.bridge.pool.ready_count < 1:
                    publish(warm=False)
                    await trio.sleep(0.5)
            publish(warm=daemon_d.bridge.pool.ready_count >= 1,
                    warm_seconds=round(time.monotonic() - t0, 1))
            slot = daemon_d.bridge.slot_ports[0]
            t1 = time.monotonic()
            session = emu_d.dial("127.0.0.1", slot)
            ok = await trio.to_thread.run_sync(session.wait_handshake, 30.0)
            publish(phase="dialed", d_handshake=ok, d_handshake_seconds=round(
                time.monotonic() - t1, 2))
            if ok:  # let the one-shot address exchange happen, then report gossip
                await trio.to_thread.run_sync(
                    lambda: session.wait_for(lambda s: s.remote_addresses is not None, 15))
            while True:
                publish(learned_d=[str(p.address) for p in daemon_d.bridge.gossip.onions])
                await trio.sleep(1.0)

    try:
        trio.run(main)
    except BaseException as exc:
        publish(phase="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        emu_r.stop()
        emu_d.stop()
    return 0


# -- kaspad stand-in --------------------------------------------------------------------------


def kaspad(flags: list[str]) -> int:
    from bridge.config import parse_hostport
    from bridge.rig.emulator import EmulatorConfig, KaspadEmulator

    network = "kaspa-mainnet"
    listen = None
    addpeers = []
    for f in flags:
        name, _, value = f.partition("=")
        if name == "--listen":
            listen = parse_hostport(value)
        elif name == "--addpeer":
            addpeers.append(parse_hostport(value))
        elif name == "--testnet":
            network = "kaspa-testnet-10"
        elif name == "--simnet":
            network = "kaspa-simnet"
        elif name == "--devnet":
            network = "kaspa-devnet"
    if listen is None:
        raise SystemExit("kaspad stand-in: no --listen flag")
    emu = KaspadEmulator(EmulatorConfig(network=network))
    emu.start_server(listen.host, listen.port)
    _log("kaspad-listening", listen=str(listen), addpeers=[str(a) for a in addpeers],
         network=network)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    current: dict[str, Any] = {}
    while not stop.is_set():
        for a in addpeers:  # kaspad re-dials --addpeer peers (30 s, 60 s, …); faster here
            s = current.get(str(a))
            if s is None or s.closed:
                if s is not None:
                    _log("slot-session-closed", slot=str(a), reason=s.closed_reason)
                current[str(a)] = emu.dial(a.host, a.port)
        _write_json(Path("/tmp/kaspad.json"),
                    {"network": network, "sessions": [_session(s) for s in list(emu.sessions)]})
        stop.wait(3.0)
    emu.stop()
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rig_node.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("tornet", "peer"):
        sp = sub.add_parser(name)
        sp.add_argument("--shared", type=Path, required=True)
    sp = sub.add_parser("kaspad")
    sp.add_argument("flags", nargs=argparse.REMAINDER)
    sp = sub.add_parser("listening")
    sp.add_argument("port", type=int)
    args = p.parse_args(argv)
    if args.cmd == "tornet":
        return tornet(args.shared)
    if args.cmd == "peer":
        return peer(args.shared)
    if args.cmd == "kaspad":
        return kaspad([f for f in args.flags if f != "--"])
    return listening(args.port)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
