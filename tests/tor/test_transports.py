"""Censored networks: a bridge-managed tor that enters Tor only through an obfs4 bridge.

The private network gets one more relay, an obfs4 bridge (:mod:`bridge.rig.ptbridge`, real
``obfs4proxy`` on both ends). The managed tor is configured with that bridge's line, as an
operator pastes one into ``tor.bridges``; it bootstraps, reaches the onion host's onion
service, and every circuit it builds starts at the bridge.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import trio

from bridge.core.bridges import BridgeLine
from bridge.net.socks import ProxyEndpoint, open_socks_stream
from bridge.rig import TorNetwork
from bridge.rig.ptbridge import find_obfs4proxy, network_torrc, start_obfs4_bridge
from bridge.rig.tornet import free_ports
from bridge.tor.control import ControlAuth, ControlEndpoint, TorControl
from bridge.tor.keys import KEY_FILE_NAME
from bridge.tor.managed import ManagedTor, ManagedTorConfig
from bridge.tor.supervisor import Backoff, OnionSpec, TorSupervisor

pytestmark = [pytest.mark.tor,
              pytest.mark.skipif(find_obfs4proxy() is None,
                                 reason="obfs4proxy is not installed (scripts/setup.sh does)")]


async def _echo(stream: trio.SocketStream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def test_managed_tor_reaches_an_onion_only_through_an_obfs4_bridge(
        tornet: TorNetwork, tmp_path: Path) -> None:
    bridge = await trio.to_thread.run_sync(
        functools.partial(start_obfs4_bridge, tornet, tmp_path / "obfs4bridge"))
    short = Path("/tmp") / f"ktb-obfs4-{os.getpid()}"  # Unix socket paths must be short
    socks_port, control_port = free_ports(2)
    cfg = ManagedTorConfig(short, socks_port=socks_port, control_port=control_port,
                           extra_torrc=network_torrc(tornet),
                           bridges=(BridgeLine.parse(bridge.line),))
    managed = ManagedTor(cfg, backoff=Backoff(initial=0.1, cap=0.5))
    host = tornet.onion_host
    try:
        async with trio.open_nursery() as n:
            # the onion to reach: an echo service on the rig's onion host
            listeners = await n.start(functools.partial(trio.serve_tcp, _echo, 0,
                                                        host="127.0.0.1"))
            echo_port = listeners[0].socket.getsockname()[1]
            onion_sup = TorSupervisor(
                ControlEndpoint.tcp("127.0.0.1", host.control_port),
                ControlAuth(password_env=None),
                onion=OnionSpec(tmp_path / KEY_FILE_NAME, ("127.0.0.1", echo_port), 16511),
                backoff=Backoff(initial=0.1, cap=1.0))
            await n.start(onion_sup.run)
            addr = (await onion_sup.wait_usable(timeout=60, onion=True)).onion_address
            assert addr is not None

            await n.start(managed.run)
            torrc = (short / "tor" / "torrc").read_text()
            assert "UseBridges 1" in torrc and f"Bridge {bridge.line}" in torrc
            assert "ClientTransportPlugin obfs4 exec " in torrc
            sup = TorSupervisor(managed.endpoint, managed.auth,
                                backoff=Backoff(initial=0.1, cap=0.5))
            await n.start(sup.run)
            await sup.wait_usable(timeout=90)

            proxy = ProxyEndpoint("127.0.0.1", socks_port)
            last: Exception | None = None
            with trio.move_on_after(120):
                while True:
                    try:
                        s = await open_socks_stream(proxy, addr, 16511, timeout=20)
                        async with s:
                            await s.send_all(b"through obfs4")
                            with trio.fail_after(15):
                                got = b""
                                while len(got) < 13:
                                    got += await s.receive_some(64)
                        assert got == b"through obfs4"
                        break
                    except Exception as exc:
                        last = exc
                        await trio.sleep(0.5)
            assert last is None or got == b"through obfs4", f"onion not reached: {last!r}"

            # every circuit the managed tor built starts at the bridge
            async with await TorControl.connect(managed.endpoint, managed.auth) as ctl:
                status = await ctl.getinfo("circuit-status")
            circuits = [ln for ln in status.splitlines() if " BUILT " in f" {ln} "]
            assert circuits, status
            for ln in circuits:
                path = ln.split(" ")[2]
                first = path.split(",")[0].lstrip("$").split("~")[0]
                assert first == bridge.fingerprint, ln
            await sup.stop()
            await onion_sup.stop()
            n.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(bridge.stop)
