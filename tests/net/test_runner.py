"""The trio shell around the relay acts on the relay's events (issue 11 item 1): notes become log
lines, what the policy learned goes to ``on_learned`` (the bridge's book writer), and the run
ends on the relay's ``Closed``. In-memory streams, real h2 peers, no network."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import pytest
import trio
import trio.testing

from bridge.core import proto
from bridge.core.events import AddressesLearned, OnionsLearned
from bridge.core.onion import OnionAddress
from bridge.core.policy import ConnectionPolicy, GossipState, OnionPeer, PolicySettings
from bridge.core.relay import Endpoint, Relay, Side, new_upstream_connection
from bridge.net.runner import RelayRunner
from tests.core.relay_harness import READY, REQUEST_ADDRESSES, VERACK, Peer, addresses, version

OWN = OnionPeer(OnionAddress.from_pubkey(bytes(range(32))), 16111)
OTHER = OnionPeer(OnionAddress.from_pubkey(bytes(range(1, 33))), 16111)


class Wired:
    """An h2 test peer on one end of an in-memory stream: what it produces is written, what
    arrives is fed to it."""

    def __init__(self, peer: Peer, stream: trio.abc.Stream) -> None:
        self.peer = peer
        self.stream = stream
        # the test task and serve() both flush: one send_all at a time (a memory stream
        # refuses a second concurrent sender with BusyResourceError)
        self._sending = trio.Lock()

    async def flush(self) -> None:
        async with self._sending:
            data = self.peer.conn.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def serve(self) -> None:
        await self.flush()
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self.peer.receive(data)
            try:
                await self.flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


async def until(cond: Callable[[], bool], what: str) -> None:
    with trio.fail_after(5):
        while not cond():
            await trio.sleep(0.005)
    assert cond(), what


async def test_runner_acts_on_the_relays_events(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "bridge.relay")
    gossip = GossipState(own_onion=OWN)
    policy = ConnectionPolicy(gossip, PolicySettings(), remote_label="peer x")
    relay = Relay(policy, kaspad_side=Side.DOWN, upstream_authority=b"x.onion:16111")
    kaspad_end, down_end = trio.testing.memory_stream_pair()
    remote_end, up_end = trio.testing.memory_stream_pair()
    kaspad = Wired(Peer(client=True), kaspad_end)
    remote = Wired(Peer(client=False), remote_end)
    runner = RelayRunner(relay, down_end, "slot:test#1")
    learned: list[OnionsLearned | AddressesLearned] = []
    runner.on_learned = learned.append

    async def get_upstream() -> tuple[trio.abc.Stream, Endpoint]:
        return up_end, new_upstream_connection(relay.settings)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kaspad.serve)
        nursery.start_soon(remote.serve)
        done = trio.Event()

        async def run() -> None:
            await runner.run(get_upstream, lazy=True)
            done.set()

        nursery.start_soon(run)
        kaspad.peer.open()
        await kaspad.flush()
        await until(lambda: remote.peer.headers is not None, "request relayed")
        remote.peer.respond()
        await remote.flush()
        await until(lambda: kaspad.peer.headers is not None, "response relayed")
        # kaspad advertises a routable address: the policy's warning is logged by the runner
        kaspad.peer.send(version(address=proto.NetAddress.from_ip(bytes([8, 8, 4, 4]), 1)))
        remote.peer.send(version(node_id=os.urandom(16), services=proto.SERVICE_ADDRV2))
        for w in (kaspad, remote):
            w.peer.send(VERACK)
            w.peer.send(READY)
            await w.flush()
        await until(lambda: len(kaspad.peer.payloads) == 3 and len(remote.peer.payloads) == 3,
                    "handshake relayed")
        kaspad.peer.send(REQUEST_ADDRESSES)
        await kaspad.flush()
        await until(lambda: len(remote.peer.payloads) == 4, "RequestAddresses relayed")
        ip = proto.NetAddress.from_ip(bytes([1, 2, 3, 4]), 16111)
        remote.peer.send(addresses([ip, proto.NetAddress.from_onion(OTHER.address.host, 16111)]))
        await remote.flush()
        await until(lambda: len(kaspad.peer.payloads) == 4, "Addresses relayed")
        assert learned == [AddressesLearned((("1.2.3.4", 16111),), "gossip:peer x"),
                           OnionsLearned((OTHER,), "gossip:peer x")]
        assert runner.closed is None
        # the remote ends the call: the relay's Closed ends the run
        assert remote.peer.sid is not None
        remote.peer.conn.send_headers(remote.peer.sid, [(b"grpc-status", b"0")],
                                      end_stream=True)
        await remote.flush()
        with trio.fail_after(5):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert runner.closed is not None and runner.closed is relay.closed
    assert runner.closed.reason == "peer x ended the call" and runner.closed.error is None
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(r.getMessage().startswith("slot:test#1: kaspad advertises the routable "
                                         "address 8.8.4.4") for r in warned), warned
    runner.log_close()
    assert any(r.getMessage().startswith("slot:test#1 closed: peer x ended the call")
               for r in caplog.records)
