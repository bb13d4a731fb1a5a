"""kaspad emulator A → bridge A slot → SOCKS → bridge B inbound → kaspad emulator B, on loopback."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import trio

from bridge.rig.emulator import KaspadEmulator, make_block_message, payload_kind
from tests.integration.conftest import ONION_A, ONION_B, Rig


async def wait_warm(rig: Rig, n: int = 1, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while rig.bridge_a.pool.ready_count < n:
            await trio.sleep(0.02)


async def connect(rig: Rig) -> tuple[Any, Any]:
    """Emulator A dials bridge A's slot; returns (A's session, B's session) after handshake."""
    t0 = time.monotonic()
    sa = rig.emu_a.dial("127.0.0.1", rig.bridge_a.slot_ports[0])
    ok = await trio.to_thread.run_sync(sa.wait_handshake, 12.0)
    assert ok, f"handshake failed: {sa!r}"
    elapsed = time.monotonic() - t0
    # kaspad's own limits: headers ≤ 10 s, then Version ≤ 4 s (checked by the emulator too)
    assert elapsed < 4.0, elapsed
    sessions = await trio.to_thread.run_sync(rig.emu_b.wait_sessions, 1, 5.0)
    sb = sessions[0]
    assert await trio.to_thread.run_sync(sb.wait_handshake, 5.0), repr(sb)
    return sa, sb


async def test_handshake_gossip_and_isolation(emulators: Callable[..., KaspadEmulator],
                                              rig_factory: Callable[..., Any]) -> None:
    """Bridge on both ends: onions end in the bridges' stores, never reach either kaspad."""
    emu_a = emulators(addrv2=False, addresses=[(bytes([1, 2, 3, 4]), 16111)])
    emu_b = emulators(addrv2=False, addresses=[(bytes([5, 6, 7, 8]), 16111)])
    rig: Rig = await rig_factory(emu_a, emu_b)
    await wait_warm(rig)
    sa, sb = await connect(rig)
    # Versions crossed the bridge with ADDRv2 set, and nothing either side would drop on.
    assert sb.remote_version.id == emu_a.config.node_id
    assert sb.remote_version.services & (1 << 23)
    assert sa.remote_version.id == emu_b.config.node_id
    # Address exchange: bridge A appends its onion for bridge B (ADDRv2), bridge B learns it and
    # strips it before kaspad B; kaspad A gets B's IPs and no onion.
    ok = await trio.to_thread.run_sync(
        lambda: sb.wait_for(lambda s: s.remote_addresses is not None, 5))
    assert ok
    assert [bytes(a.ip) for a in sb.remote_addresses] == [bytes([1, 2, 3, 4])]
    assert [p.address for p in rig.bridge_b.gossip.onions] == [ONION_A]
    ok = await trio.to_thread.run_sync(
        lambda: sa.wait_for(lambda s: s.remote_addresses is not None, 5))
    assert ok
    assert all(a.WhichOneof("address") == "ip" for a in sa.remote_addresses)
    assert [bytes(a.ip) for a in sa.remote_addresses] == [bytes([5, 6, 7, 8])]
    # SOCKS saw the onion as a domain name (never resolved locally), with fresh credentials.
    rec = rig.socks.records[0]
    assert (rec.atyp, rec.host, rec.port) == ("domain", ONION_B.host, 16511)
    assert rec.username and rec.password
    assert not sa.violations and not sb.violations


async def test_onion_gossip_reaches_addrv2_fork_peer_only(
        emulators: Callable[..., KaspadEmulator], rig_factory: Callable[..., Any]) -> None:
    """Remote is a Tor-fork kaspad (ADDRv2, own onion): it gets our onion; a legacy one never."""
    for addrv2 in (True, False):
        emu_a = emulators(addrv2=False, addresses=[(bytes([1, 2, 3, 4]), 16111)])
        emu_b = emulators(addrv2=addrv2, addresses=[(bytes([5, 6, 7, 8]), 16111),
                                                    (ONION_B.host, 16511)])
        rig: Rig = await rig_factory(emu_a, emu_b, direct_b=True)
        await wait_warm(rig)
        sa, sb = await connect(rig)
        assert await trio.to_thread.run_sync(
            lambda s=sb: s.wait_for(lambda x: x.remote_addresses is not None, 5))
        kinds = [(a.WhichOneof("address"), a.onion or bytes(a.ip)) for a in sb.remote_addresses]
        if addrv2:
            assert kinds == [("ip", bytes([1, 2, 3, 4])), ("onion", ONION_A.host)]
        else:
            assert kinds == [("ip", bytes([1, 2, 3, 4]))]
        # Whatever the fork peer gossips back, kaspad A only ever sees IPs; the bridge keeps
        # the fork's onion (if the peer is ADDRv2) in its store.
        assert await trio.to_thread.run_sync(
            lambda s=sa: s.wait_for(lambda x: x.remote_addresses is not None, 5))
        assert [bytes(a.ip) for a in sa.remote_addresses] == [bytes([5, 6, 7, 8])]
        learned = [p.address for p in rig.bridge_a.gossip.onions]
        assert learned == ([ONION_B] if addrv2 else [])
        assert not sa.violations and not sb.violations, (sa.violations, sb.violations)


async def test_ten_thousand_messages_both_directions(
        emulators: Callable[..., KaspadEmulator], rig_factory: Callable[..., Any]) -> None:
    emu_a = emulators(addrv2=True)
    emu_b = emulators(addrv2=True)
    rig: Rig = await rig_factory(emu_a, emu_b)
    await wait_warm(rig)
    sa, sb = await connect(rig)
    n = 5000
    big = {100, 2500, 4999}

    def send_all(session: Any, base: int) -> None:
        for i in range(n):
            size = 2_000_000 if i in big else 300
            session.send(make_block_message(size, request_id=base + i, seed=i))

    def recv_all(session: Any) -> list[Any]:
        got = []
        deadline = time.monotonic() + 120
        while len(got) < n:
            try:
                m = session.wait_received("block", timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            got.append(m)
        return got

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, send_all, sa, 1)
        nursery.start_soon(trio.to_thread.run_sync, send_all, sb, 100_001)
        got_b = await trio.to_thread.run_sync(recv_all, sb)
        got_a = await trio.to_thread.run_sync(recv_all, sa)
    for got, base in ((got_b, 1), (got_a, 100_001)):
        assert len(got) == n
        assert [m.request_id for m in got] == list(range(base, base + n))  # in order, ids intact
        for i in sorted(big):
            assert got[i].ByteSize() == 2_000_000
            want = make_block_message(2_000_000, request_id=base + i, seed=i)
            # identical content (the header timestamp is the generation time, so skip it)
            assert got[i].block.transactions == want.block.transactions
    assert not sa.violations and not sb.violations
    assert payload_kind(got_a[0]) == "block"


async def test_no_upstream_fails_slot_fast(emulators: Callable[..., KaspadEmulator],
                                           rig_factory: Callable[..., Any]) -> None:
    emu_a = emulators(addrv2=True)
    emu_b = emulators(addrv2=True)
    rig: Rig = await rig_factory(emu_a, emu_b)
    rig.routes.clear()  # the onion is unreachable: the pool can never warm up
    rig.bridge_a.options.slot_wait = 1.0
    t0 = time.monotonic()
    sa = rig.emu_a.dial("127.0.0.1", rig.bridge_a.slot_ports[0])
    closed = await trio.to_thread.run_sync(sa.wait_closed, 8.0)
    assert closed
    assert time.monotonic() - t0 < 4
    assert not sa.handshake_complete
    # the emulator can see the close before the bridge's handler has counted it
    with trio.move_on_after(2):
        while rig.bridge_a.closed_count.refused != 1:
            await trio.sleep(0.01)
    assert rig.bridge_a.closed_count.refused == 1
    _ = ONION_B


async def test_each_upstream_gets_fresh_socks_credentials(
        emulators: Callable[..., KaspadEmulator], rig_factory: Callable[..., Any]) -> None:
    """Stream isolation: every upstream connection has its own random SOCKS credentials, and
    onion and IP targets reach the proxy exactly as configured (domain name / IP literal)."""
    emu_a = emulators(addrv2=True)
    emu_b = emulators(addrv2=True)
    rig: Rig = await rig_factory(emu_a, emu_b, extra={"127.0.0.2": 0})
    assert rig.bridge_b.inbound_port is not None
    rig.routes["127.0.0.2"] = rig.bridge_b.inbound_port
    for _ in range(4):
        await wait_warm(rig)
        sa, sb = await connect(rig)
        sa.close()
        assert await trio.to_thread.run_sync(sb.wait_closed, 5.0)
        rig.emu_b.sessions.clear()
    recs = rig.socks.records
    assert len(recs) >= 4
    assert {(r.atyp, r.host) for r in recs} == {("domain", ONION_B.host), ("ipv4", "127.0.0.2")}
    creds = [(r.username, r.password) for r in recs]
    assert len(set(creds)) == len(creds), "credentials reused: no stream isolation"
    assert all(u and p and len(p) >= 16 for u, p in creds)


async def test_huge_message_is_streamed_not_held(
        emulators: Callable[..., KaspadEmulator], rig_factory: Callable[..., Any]) -> None:
    """A 16 MB message crosses both bridges while each holds at most about one HTTP/2 window."""
    emu_a = emulators(addrv2=True)
    emu_b = emulators(addrv2=True)
    rig: Rig = await rig_factory(emu_a, emu_b)
    await wait_warm(rig)
    sa, sb = await connect(rig)
    window = rig.bridge_a.options.relay.window
    peak = 0
    done = trio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            for br in (rig.bridge_a, rig.bridge_b):
                for info in list(br.relays.values()):
                    peak = max(peak, info.relay.stats()["buffered"])
            await trio.sleep(0.001)

    size = 16 * 1024 * 1024
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        sb.send(make_block_message(size, request_id=5, seed=1))
        got = await trio.to_thread.run_sync(lambda: sa.wait_received("block", 60.0))
        done.set()
    assert got.ByteSize() == size and got.request_id == 5
    print(f"peak relay buffer {peak} bytes for a {size}-byte message (window {window})")
    assert 0 < peak <= 2 * window, (peak, window)
    assert not sa.violations and not sb.violations


async def test_remote_with_our_node_id_is_marked_self_and_never_redialed(
        emulators: Callable[..., KaspadEmulator], rig_factory: Callable[..., Any]) -> None:
    emu_a = emulators(addrv2=True)
    emu_b = emulators(addrv2=True, node_id=emu_a.config.node_id)  # "ourselves" through Tor
    # direct: no second bridge in front of B, which could detect the loop first and close
    rig: Rig = await rig_factory(emu_a, emu_b, direct_b=True)
    await wait_warm(rig)
    sa = rig.emu_a.dial("127.0.0.1", rig.bridge_a.slot_ports[0])
    assert await trio.to_thread.run_sync(sa.wait_closed, 10.0)
    assert not sa.handshake_complete and not sa.violations
    with trio.fail_after(5):  # the slot handler records the verdict as it winds down
        while not rig.bridge_a.selector.snapshot()[f"{ONION_B.host}:16511"]["self"]:
            await trio.sleep(0.02)
    dials = len(rig.socks.records)
    await trio.sleep(3)  # longer than the first backoff: a normal failure would be retried
    assert len(rig.socks.records) == dials
    assert rig.bridge_a.pool.ready_count == 0
