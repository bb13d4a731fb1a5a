"""Leak test: a tor-only bridge contacts nothing but Tor's SOCKS and control ports (and its own
kaspad), and never resolves a name, over a run with seeding, gossip, IP and onion peers and
reconnects.

The bridge runs as its own process (``kaspa-tor-bridge run``) with a Python audit hook installed
before anything is imported: every ``socket.connect`` and every name-resolution call of the
process is recorded, whatever library makes it. The test suite already runs in a network
namespace with only loopback, so nothing could have left anyway; this test proves the bridge
does not even *try*.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from bridge.rig.demo import bridge_config, free_port_range
from bridge.rig.emulator import EmulatorConfig, KaspadEmulator
from bridge.rig.tornet import TorNetwork, free_ports
from bridge.runtime.daemon import Daemon

pytestmark = pytest.mark.tor

AUDIT = r'''
import json, sys
out = open(sys.argv[1], "a", buffering=1)
NAMES = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
         "socket.gethostbyaddr", "socket.getnameinfo", "socket.sethostname"}
def hook(event, args):
    if event == "socket.connect":
        out.write(json.dumps(["connect", repr(args[1])]) + "\n")
    elif event in ("socket.sendto", "socket.sendmsg"):  # datagrams (e.g. DNS) need no connect
        out.write(json.dumps(["sendto", repr(args[-1])]) + "\n")
    elif event in NAMES:
        h = args[0]
        if isinstance(h, bytes):
            h = h.decode("ascii", "replace")
        out.write(json.dumps([event, h if h is None or isinstance(h, str) else repr(h)]) + "\n")
sys.addaudithook(hook)
sys.argv = ["kaspa-tor-bridge", "run", "-c", sys.argv[2]]
from bridge.cli.main import main
main()
'''


def _numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


async def test_tor_only_bridge_contacts_only_tor_and_resolves_nothing(
        tornet: TorNetwork, tmp_path: Path) -> None:
    socks = tornet.client.socks_port
    control = tornet.onion_host.control_port
    assert socks is not None
    kaspad = KaspadEmulator(EmulatorConfig())  # the audited bridge's own kaspad
    remote_b = KaspadEmulator(EmulatorConfig(addrv2=True,
                                             addresses=[(bytes([203, 0, 113, 9]), 16511)]))
    remote_c = KaspadEmulator(EmulatorConfig())  # an IP peer, reached through a Tor exit
    # a "DNS seeder": its name is only ever resolved by the Tor exit (the rig's DNS stub)
    seeder = KaspadEmulator(EmulatorConfig(addresses=[(bytes([198, 51, 100, 77]), 16511)]))
    audit = tmp_path / "audit.jsonl"
    proc: subprocess.Popen[str] | None = None
    try:
        kaspad_port = await trio.to_thread.run_sync(kaspad.start_server)
        b_port = await trio.to_thread.run_sync(remote_b.start_server)
        c_port = await trio.to_thread.run_sync(remote_c.start_server)
        seed_port = await trio.to_thread.run_sync(seeder.start_server)
        async with trio.open_nursery() as nursery:
            b = Daemon(bridge_config(tmp_path, "b", socks_port=socks, control_port=control,
                                     kaspad_port=b_port, peers=[]), handle_signals=False)
            await nursery.start(b.run)
            assert b.supervisor is not None
            onion_b = b.supervisor.onion_address
            slot = free_port_range(2)
            (inbound,) = free_ports(1)
            cfg = tmp_path / "audited.toml"
            cfg.write_text(f'''
network = "kaspa-simnet"
mode = "tor-only"
data_dir = "{tmp_path / 'audited'}"
[kaspad]
p2p = "127.0.0.1:{kaspad_port}"
[slots]
base_port = {slot}
count = 2
[inbound]
listen = "127.0.0.1:{inbound}"
[tor]
socks = "127.0.0.1:{socks}"
control = "127.0.0.1:{control}"
[peers]
connect = ["{onion_b}:16511", "127.0.0.1:{c_port}"]
refresh_interval = 2.0
seeders = ["seeder.test:{seed_port}"]
[pool]
size = 2
''')
            proc = subprocess.Popen([sys.executable, "-c", AUDIT, str(audit), str(cfg)],
                                    stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            sessions = []
            with trio.fail_after(90):
                for port in (slot, slot + 1):
                    while True:
                        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                        s = kaspad.dial("127.0.0.1", port)
                        if await trio.to_thread.run_sync(s.wait_handshake, 12.0):
                            break
                        await trio.sleep(1)
                    sessions.append(s)
                # reconnects: both kaspad connections drop and come back
                for i, s in enumerate(list(sessions)):
                    s.close()
                    await trio.to_thread.run_sync(s.wait_closed, 5.0)
                    while True:
                        s2 = kaspad.dial("127.0.0.1", slot + i)
                        if await trio.to_thread.run_sync(s2.wait_handshake, 12.0):
                            break
                        await trio.sleep(1)
                    sessions[i] = s2
            await trio.sleep(3)  # at least one refresh round (gossip) on the ADDRv2 peer
            assert remote_b.sessions and remote_c.sessions  # both peers were really reached
            assert seeder.sessions, "the seeder was never harvested"
            for s in sessions:
                assert not s.violations
            b.request_stop()
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for e in (kaspad, remote_b, remote_c, seeder):
            await trio.to_thread.run_sync(e.stop)
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    connects = {addr for kind, addr in events if kind == "connect"}
    allowed = {repr(("127.0.0.1", socks)), repr(("127.0.0.1", control)),
               repr(("127.0.0.1", kaspad_port))}
    assert connects, "the audit hook saw nothing: the test would prove nothing"
    assert connects <= allowed, f"unexpected destinations: {connects - allowed}"
    assert repr(("127.0.0.1", socks)) in connects and repr(("127.0.0.1", control)) in connects
    datagrams = [addr for kind, addr in events if kind == "sendto"]
    assert datagrams == [], f"datagrams sent: {datagrams}"
    lookups = [(kind, host) for kind, host in events if kind not in ("connect", "sendto")]
    non_numeric = [(k, h) for k, h in lookups
                   if k != "socket.getaddrinfo" or (h is not None and not _numeric(h))]
    assert non_numeric == [], f"name resolution attempted: {non_numeric}"
    # sanity: numeric getaddrinfo calls (trio's connect path) were seen, so the hook works
    assert any(k == "socket.getaddrinfo" for k, _ in lookups)
