"""peers.sync_first against a real kaspad's RPC: the bridge reads "not synced" from a fresh
simnet kaspad (its sink is the genesis, far in the past), and switches to Tor once a block mined
through the RPC makes kaspad report synced (rusty-kaspa: the sink's timestamp is recent; simnet
needs no peers for that). One RPC stream for all the questions: kaspad logs every stream that
ends."""

from __future__ import annotations

import os
import re
from pathlib import Path

import trio

from bridge.config import load_config
from bridge.core.kaspa import SIMNET
from bridge.core.kaspad_rpc import ServerInfo
from bridge.net.kaspad_rpc import poll_server_info
from bridge.net.pool import DialPolicy
from bridge.rig.kaspad import KaspadNode
from bridge.rig.tornet import TorNetwork, free_ports
from bridge.runtime.bridge import Bridge, BridgeOptions
from bridge.runtime.bridge_options import SyncFirstOptions
from bridge.runtime.daemon import Daemon
from bridge.runtime.wiring import kaspad_flags
from tests.kaspad.conftest import MEASURED

STREAM_ENDED = re.compile(r"GRPC, incoming stream (ended|interrupted) by client")


async def test_real_kaspad_rpc_says_unsynced_then_synced_after_a_block(
        kaspad_bin: Path, tmp_path: Path) -> None:
    rpc_port, p2p_port = free_ports(2)
    node = KaspadNode(kaspad_bin, tmp_path / "kaspad", rpc_port, p2p_port, name="sync-first")
    await trio.to_thread.run_sync(lambda: node.start(wait=90.0))
    try:
        # the raw client first: what the real RPC answers
        answers: list[ServerInfo] = []
        problems: list[str] = []
        with trio.move_on_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: poll_server_info(
                    "127.0.0.1", rpc_port, interval=0.2, timeout=10.0,
                    on_answer=answers.append, on_problem=problems.append))
                while len(answers) < 3:
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
        assert problems == [] and len(answers) >= 3, (problems, node.tail())
        first = answers[0]
        assert first.network_id == "simnet" and first.error == ""
        assert first.server_version.startswith("2.")
        assert not first.is_synced, "a fresh simnet kaspad reported synced"
        assert [a.id for a in answers[:3]] == [1, 2, 3]

        ended_before = len(STREAM_ENDED.findall(node.log_text()))
        bridge = Bridge(BridgeOptions(
            kaspad_p2p=("127.0.0.1", p2p_port), candidates=[], slot_ports=[0], inbound=None,
            pool_size=0, dial=DialPolicy(proxy=None, ip_via_tor=False, allow_direct=True),
            network="kaspa-simnet",
            sync_first=SyncFirstOptions(rpc=("127.0.0.1", rpc_port), network_id="simnet",
                                        timeout=None, poll_interval=0.3, stagger=0.1)))
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            with trio.fail_after(20):
                while True:
                    st = bridge.stats().sync
                    assert st is not None
                    if st.kaspad_synced is not None:
                        break
                    await trio.sleep(0.1)
            assert st.phase == "syncing" and st.kaspad_synced is False, st
            await trio.sleep(1.5)  # several more questions on the same stream
            assert len(STREAM_ENDED.findall(node.log_text())) == ended_before

            t0 = trio.current_time()
            def mine() -> str:
                with node.rpc(timeout=15.0) as r:
                    return r.mine()

            block = await trio.to_thread.run_sync(mine)
            assert block
            with trio.fail_after(20):
                while bridge.sync is None or not bridge.sync.gate.switched:
                    await trio.sleep(0.05)
            MEASURED["sync first: block mined -> switch to Tor (s)"] = round(
                trio.current_time() - t0, 2)
            st = bridge.stats().sync
            assert st is not None and st.phase == "tor" and st.kaspad_synced is True
            assert st.reason == "kaspad reported synced"
            assert bridge.dialer.policy.ip_via_tor and not bridge.dialer.policy.allow_direct
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(node.stop)


async def test_real_kaspad_syncs_through_a_direct_slot_then_gets_a_tor_upstream(
        kaspad_bin: Path, tornet: TorNetwork, tmp_path: Path) -> None:
    """The whole story with two real kaspads: node1 runs with what `kaspad-flags` prints for
    hybrid + sync_first (its only peer is the slot); the bridge relays the slot directly to
    node2 (an IP peer), node1 syncs node2's block, reports synced, the bridge switches, closes
    the direct relay, and node1's own retry of its --addpeer gets node2 again, through Tor."""
    socks = tornet.clients[0].socks_port
    assert socks is not None
    rpc1, p2p1, rpc2, p2p2, slot = free_ports(5)
    node2 = KaspadNode(kaspad_bin, tmp_path / "node2", rpc2, p2p2, name="node2")
    await trio.to_thread.run_sync(lambda: node2.start(wait=90.0))
    node1: KaspadNode | None = None
    try:
        def mine2() -> str:
            with node2.rpc(timeout=15.0) as r:
                return r.mine()

        await trio.to_thread.run_sync(mine2)  # node2 is synced; a fresh node1 is not
        cfg = load_config(None, env={"HOME": os.environ.get("HOME", "/root")}, overrides={
            "network": SIMNET.name, "mode": "hybrid", "data_dir": str(tmp_path / "bridge"),
            "kaspad.p2p": f"127.0.0.1:{p2p1}", "kaspad.rpc": f"127.0.0.1:{rpc1}",
            "slots.base_port": slot, "slots.count": 1, "tor.socks": f"127.0.0.1:{socks}",
            "tor.control": "", "tor.listen_onion": False, "peers.sync_first": True,
            "peers.dns_seed": False, "peers.connect": [f"127.0.0.1:{p2p2}"],
            "pool.size": 1, "pool.dial_timeout": 30.0})
        flags = kaspad_flags(cfg)
        assert "--outpeers=0" in flags and f"--addpeer=127.0.0.1:{slot}" in flags
        daemon = Daemon(cfg, handle_signals=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            bridge = daemon.bridge
            assert bridge is not None
            n1 = node1 = KaspadNode(kaspad_bin, tmp_path / "node1", rpc1, p2p1, flags=flags,
                                    name="node1")
            t0 = trio.current_time()
            await trio.to_thread.run_sync(lambda: n1.start(wait=90.0))
            direct_ids: set[int] = set()
            with trio.fail_after(120):
                while bridge.sync is None or not bridge.sync.gate.switched:
                    direct_ids |= {i.id for i in bridge.relays.values() if i.kind == "slot"
                                   and i.direct and i.relay.policy.remote.node_id}
                    await trio.sleep(0.05)
            seen_direct = bool(direct_ids)
            MEASURED["sync first: node1 start -> synced over the direct slot (s)"] = round(
                trio.current_time() - t0, 1)
            assert seen_direct, "node1 never had a direct, handshaken slot relay to node2"
            st = bridge.stats().sync
            assert st is not None and st.reason == "kaspad reported synced"
            # kaspad retries a closed --addpeer at its next 30 s round (protocol.md §10.2)
            t1 = trio.current_time()
            with trio.fail_after(150):
                while not any(i.kind == "slot" and not i.direct and i.target is not None
                              and i.relay.policy.remote.node_id
                              for i in bridge.relays.values()):
                    await trio.sleep(0.2)
            (back,) = [i for i in bridge.relays.values() if i.kind == "slot"]
            assert back.id not in direct_ids and not set(bridge.relays) & direct_ids
            st = bridge.stats().sync
            assert st is not None and st.closed_direct_relays == 1
            MEASURED["sync first: switch -> node1 back on a Tor upstream (s)"] = round(
                trio.current_time() - t1, 1)
            assert bridge.dialer.stats().dials >= 2
            assert not n1.violations(), "\n".join(n1.violations()[-20:])
            assert not node2.violations(), "\n".join(node2.violations()[-20:])
            daemon.request_stop()
    finally:
        if node1 is not None:
            await trio.to_thread.run_sync(node1.stop)
        await trio.to_thread.run_sync(node2.stop)
