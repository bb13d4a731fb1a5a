"""peers.sync_first against a real kaspad's RPC: the bridge reads "not synced" from a fresh
simnet kaspad (its sink is the genesis, far in the past), and switches to Tor once a block mined
through the RPC makes kaspad report synced (rusty-kaspa: the sink's timestamp is recent; simnet
needs no peers for that). One RPC stream for all the questions: kaspad logs every stream that
ends."""

from __future__ import annotations

import re
from pathlib import Path

import trio

from bridge.core.kaspad_rpc import ServerInfo
from bridge.net.kaspad_rpc import poll_server_info
from bridge.net.pool import DialPolicy
from bridge.rig.kaspad import KaspadNode
from bridge.rig.tornet import free_ports
from bridge.runtime.bridge import Bridge, BridgeOptions
from bridge.runtime.bridge_options import SyncFirstOptions
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
