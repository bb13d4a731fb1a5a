"""``kaspa-tor-bridge demo``: everything on loopback, nothing to configure.

A private Tor network (directory authorities, relays, exits, a client and two onion-service
hosts, all Debian ``tor`` processes), two kaspad-emulating nodes (grpcio), and two complete bridge
daemons (the same code as ``kaspa-tor-bridge run``), each publishing its node as a v3 onion:

    node A ─slot─► bridge A ══ Tor circuit ══► onion B ─► bridge B ─► node B

Node A dials its bridge's slot like kaspad's ``--addpeer``; bridge A reaches bridge B's onion
through Tor; the handshake, address gossip and block traffic cross; bridge B learns A's onion
from gossip. Then everything is torn down.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bridge.config import Config, load_config
from bridge.core.errors import BridgeError, Fault
from bridge.core.kaspa import SIMNET
from bridge.rig.tornet import TorNetwork, free_ports, is_reserved, reserve
from bridge.runtime.daemon import Daemon

Echo = Callable[[str], Any]

#: The onion services' virtual port: the simnet P2P port.
VPORT = SIMNET.p2p_port


class DemoError(BridgeError):
    fault = Fault.LOCAL
    action = "demo stopped"


def run_demo(*, duration: float = 10.0, workdir: Path | None = None,
             echo: Echo = print) -> bool:
    keep = workdir is not None
    root = workdir or Path(tempfile.mkdtemp(prefix="ktb-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    echo(f"[1/5] starting a private Tor network on 127.0.0.1 (files in {root}) …")
    t0 = time.monotonic()
    net = TorNetwork(root / "tor", clients=1, onion_hosts=2)
    try:
        net.start(timeout=120)
        echo(f"      up in {time.monotonic() - t0:.1f}s: {len(net.instances)} tor processes")
        return trio.run(_demo, net, root, duration, echo)
    finally:
        net.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        echo("      torn down: tor processes stopped, bridges and nodes closed")


def free_port_range(n: int, avoid: set[int] | None = None) -> int:
    """The first of ``n`` consecutive free TCP ports on 127.0.0.1 (bind probe)."""
    for _ in range(200):
        base = free_ports(1)[0]
        ports = range(base, base + n)
        if ports[-1] > 65535 or set(ports) & (avoid or set()) \
                or any(is_reserved(p) for p in ports[1:]):
            continue
        held: list[socket.socket] = []
        try:
            for p in ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(s)
                s.bind(("127.0.0.1", p))
            reserve(ports)
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise DemoError(f"no {n} consecutive free ports on 127.0.0.1")


def bridge_config(root: Path, name: str, *, socks_port: int, control_port: int,
                  kaspad_port: int, peers: list[str], slots: int = 1,
                  extra: dict[str, object] | None = None) -> Config:
    """A tor-only simnet bridge config on loopback with free ports (demo and tests)."""
    (inbound,) = free_ports(1)
    slot = free_port_range(slots, avoid={inbound})
    return load_config(None, env={"HOME": os.environ.get("HOME", "/root")}, overrides={
        **(extra or {}),
        "network": SIMNET.name, "mode": "tor-only", "data_dir": str(root / name),
        "kaspad.p2p": f"127.0.0.1:{kaspad_port}",
        "slots.base_port": slot, "slots.count": slots,
        "inbound.listen": f"127.0.0.1:{inbound}",
        "tor.socks": f"127.0.0.1:{socks_port}",
        "tor.control": f"127.0.0.1:{control_port}",
        "tor.listen_onion": True, "tor.bootstrap_timeout": 60.0,
        "peers.connect": peers, "pool.size": 1, "pool.dial_timeout": 30.0,
    })


async def _demo(net: TorNetwork, root: Path, duration: float, echo: Echo) -> bool:
    from bridge.rig.emulator import EmulatorConfig, KaspadEmulator, make_block_message

    emu_a = KaspadEmulator(EmulatorConfig(network=SIMNET.name, addrv2=False,
                                          addresses=[(bytes([203, 0, 113, 7]), VPORT)]))
    emu_b = KaspadEmulator(EmulatorConfig(network=SIMNET.name, addrv2=False,
                                          addresses=[(bytes([198, 51, 100, 9]), VPORT)]))
    try:
        port_a = await trio.to_thread.run_sync(emu_a.start_server)
        port_b = await trio.to_thread.run_sync(emu_b.start_server)
        echo("[2/5] two emulated kaspad nodes (grpcio) listening on 127.0.0.1:"
             f"{port_a} (A) and :{port_b} (B)")
        async with trio.open_nursery() as nursery:
            socks = net.clients[0].socks_port
            assert socks is not None
            daemon_b = Daemon(bridge_config(root, "bridge-b", socks_port=socks,
                                            control_port=net.onion_hosts[1].control_port,
                                            kaspad_port=port_b, peers=[]),
                              handle_signals=False)
            t0 = time.monotonic()
            await nursery.start(daemon_b.run)
            assert daemon_b.supervisor is not None and daemon_b.bridge is not None
            onion_b = daemon_b.supervisor.onion_address
            echo(f"[3/5] bridge B put node B online as {onion_b}:{VPORT} "
                 f"(bridge started and onion added in {time.monotonic() - t0:.1f}s)")
            daemon_a = Daemon(bridge_config(root, "bridge-a", socks_port=socks,
                                            control_port=net.onion_hosts[0].control_port,
                                            kaspad_port=port_a, peers=[f"{onion_b}:{VPORT}"]),
                              handle_signals=False)
            await nursery.start(daemon_a.run)
            assert daemon_a.supervisor is not None and daemon_a.bridge is not None
            onion_a = daemon_a.supervisor.onion_address
            echo(f"      bridge A published node A as {onion_a}:{VPORT}; "
                 f"its peer list: {onion_b}:{VPORT}")
            t1 = time.monotonic()
            with trio.fail_after(90):
                while daemon_a.bridge.pool.ready_count < 1:
                    await trio.sleep(0.1)
            echo(f"      bridge A has a warm Tor circuit to B's onion "
                 f"({time.monotonic() - t1:.1f}s; first contact with an onion is slow)")
            ok = await _talk(daemon_a, daemon_b, emu_a, emu_b, onion_a, duration, echo,
                             make_block_message)
            daemon_a.request_stop()
            daemon_b.request_stop()
        return ok
    finally:
        await trio.to_thread.run_sync(emu_a.stop)
        await trio.to_thread.run_sync(emu_b.stop)


async def _talk(daemon_a: Daemon, daemon_b: Daemon, emu_a: Any, emu_b: Any, onion_a: str | None,
                duration: float, echo: Echo, make_block: Callable[..., Any]) -> bool:
    assert daemon_a.bridge is not None and daemon_b.bridge is not None
    slot = daemon_a.bridge.slot_ports[0]
    t0 = time.monotonic()
    sa = emu_a.dial("127.0.0.1", slot)
    if not await trio.to_thread.run_sync(sa.wait_handshake, 15.0):
        raise DemoError(f"node A's handshake through the bridges failed: {sa!r}")
    hs = time.monotonic() - t0
    sessions = await trio.to_thread.run_sync(emu_b.wait_sessions, 1, 10.0)
    sb = sessions[0]
    echo(f"[4/5] node A ⇄ node B handshake (Version/Verack/Ready) over Tor in {hs:.2f}s "
         "(kaspad allows 10 s + 4 s)")
    sent = 0
    deadline = time.monotonic() + duration
    i = 0
    while time.monotonic() < deadline:
        i += 1
        sa.send(make_block(20_000 + 1000 * (i % 50), request_id=i, seed=i))
        sb.send(make_block(20_000, request_id=10_000 + i, seed=i))
        sent += 2
        await trio.sleep(0.2)
    await trio.to_thread.run_sync(
        lambda: sa.wait_for(lambda s: s.remote_addresses is not None, 10))
    await trio.to_thread.run_sync(
        lambda: sb.wait_for(lambda s: s.remote_addresses is not None, 10))
    await trio.sleep(1.0)
    got_b = sb.received.qsize()
    got_a = sa.received.qsize()
    learned_b = [str(p.address) for p in daemon_b.bridge.gossip.onions]
    learned_a = [str(p.address) for p in daemon_a.bridge.gossip.onions]
    addr_a = [a.WhichOneof("address") for a in (sa.remote_addresses or [])]
    addr_b = [a.WhichOneof("address") for a in (sb.remote_addresses or [])]
    violations = sa.violations + sb.violations
    echo("[5/5] summary")
    echo(f"      blocks relayed: A→B {got_b}, B→A {got_a} of {sent} sent "
         f"(ids and bytes untouched)")
    echo(f"      gossip: bridge B learned {learned_b or 'nothing'} from A's Addresses")
    echo(f"              bridge A learned {learned_a or 'nothing'} from B's Addresses")
    echo(f"      node A received address kinds {addr_a}; node B {addr_b} "
         "(onions never reach an unmodified kaspad)")
    echo(f"      kaspad-disconnect violations seen by the nodes: {violations or 'none'}")
    ok = (onion_a is not None and onion_a in learned_b and not violations
          and "onion" not in addr_a + addr_b and got_b > 0 and got_a > 0)
    echo("      RESULT: " + ("OK — onion peers connected and gossiped over Tor" if ok
                             else "FAILED"))
    return ok
