"""Hostile remotes close only their own connection, with a logged reason; kaspad never sees
a frame that would make it disconnect, and the other connection keeps relaying."""

from __future__ import annotations

import logging
import os
import queue
from collections.abc import Callable
from typing import Any

import pytest
import trio

from bridge.core import grpc, proto
from bridge.core.onion import OnionAddress
from bridge.rig.emulator import KaspadEmulator, make_block_message
from tests.core.relay_harness import addresses
from tests.integration.conftest import Rig
from tests.integration.hostile import HostileServer, handshake_bytes

ONION_H = OnionAddress.from_pubkey(os.urandom(32))

MANY = addresses([proto.NetAddress.from_ip(i.to_bytes(4, "big"), 16111) for i in range(3000)])

CASES = {
    "garbage": (HostileServer("garbage"), "HTTP/2"),
    "bad-http2": (HostileServer("bad-h2"), "HTTP/2"),
    "bad-grpc-prefix": (HostileServer("stream", first=b"\x07\x00\x00\x00\x01\x00"),
                        "compressed-flag byte is 7"),
    "oversized-length": (HostileServer("stream", first=b"\x00\x7f\xff\xff\xff"),
                         "exceeds the limit"),
    "undecodable-version": (
        HostileServer("stream", first=grpc.frame(proto.make_len_field(20, b"\x0a\xff").raw)),
        "undecodable"),
    "undecodable-addresses": (
        HostileServer("stream", first=handshake_bytes(),
                      after_ready=grpc.frame(proto.make_len_field(1, b"\x0a\x05\x1a\x10").raw)),
        "undecodable"),
    "3000-addresses": (
        HostileServer("stream", first=handshake_bytes(), after_ready=grpc.frame(MANY)),
        "3000 addresses"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_hostile_remote(case: str, emulators: Callable[..., KaspadEmulator],
                              rig_factory: Callable[..., Any],
                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    hostile, reason = CASES[case]
    hostile = HostileServer(hostile.mode, hostile.first, hostile.after_ready)
    async with trio.open_nursery() as nursery:
        hport = await nursery.start(hostile.serve)
        emu_a = emulators(addrv2=False)
        emu_b = emulators(addrv2=False)
        rig: Rig = await rig_factory(emu_a, emu_b, slots=2, pool_size=2,
                                     extra={ONION_H.host: hport})
        with trio.fail_after(10):
            while hostile.connections == 0 or rig.bridge_a.pool.ready_count < 1:
                await trio.sleep(0.02)
        sessions = [rig.emu_a.dial("127.0.0.1", p) for p in rig.bridge_a.slot_ports]
        for s in sessions:
            await trio.to_thread.run_sync(s.wait_handshake, 10.0)
        with trio.fail_after(10):  # the hostile connection is closed, during or after handshake
            while not any(s.closed for s in sessions):
                await trio.sleep(0.05)
        good = [s for s in sessions if not s.closed]
        assert len(good) == 1 and good[0].handshake_complete, sessions
        # The hostile one is closed (or was never handed to a slot); kaspad saw nothing bad.
        for s in sessions:
            assert not s.violations, s.violations
        # The good connection keeps relaying.
        msg = make_block_message(50_000, request_id=77)
        good[0].send(msg)
        sb = (await trio.to_thread.run_sync(rig.emu_b.wait_sessions, 1, 5.0))[0]
        try:
            got = await trio.to_thread.run_sync(lambda: sb.wait_received("block", 5.0))
        except queue.Empty:
            pytest.fail("good connection stopped relaying")
        assert got.request_id == 77
        with trio.fail_after(5):
            while not any(reason in r.getMessage() for r in caplog.records):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
