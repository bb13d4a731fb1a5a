"""No duplicate-connection churn (issue F, item 3), with grpcio kaspad emulators behind a bridge.

kaspad (and the emulator, like it) keeps one connection per (node id, remote IP) and drops the
newer one after its handshake; every bridged peer is 127.0.0.1 to kaspad. The bridge must never
hand kaspad a second connection carrying a node id it already has (through another slot or the
onion inbound): the slot drops that upstream before kaspad sees it and relays to another
candidate; the duplicate's target is not penalised and is not dialed while the node stays
connected.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import pytest
import trio

from bridge.core.peers import Target
from bridge.rig.emulator import KaspadEmulator, PeerSession
from tests.faults.rig import (
    ONION_G1,
    ONION_G2,
    ONION_H,
    PORT,
    start_inbound_rig,
    start_slot_rig,
    until,
)

SAME = b"\x5a" * 16  # the node id two remotes share (one node reachable at two addresses)


async def thread(fn: Callable[[], object]) -> object:
    return await trio.to_thread.run_sync(fn)


def duplicates_seen(kaspad: KaspadEmulator) -> list[str]:
    return [v for s in kaspad.sessions for v in s.violations if "duplicate" in v.lower()]


def remote_ids(kaspad: KaspadEmulator) -> list[bytes]:
    return [bytes(s.remote_version.id) for s in kaspad.sessions
            if s.remote_version is not None and s.handshake_complete and not s.closed]


async def test_two_candidates_with_one_node_id_fill_two_slots_with_two_nodes(
        emulators: Callable[..., KaspadEmulator], caplog: pytest.LogCaptureFixture) -> None:
    """G1 and G2 are the same node (same id, two onions); H is another node. The pool warms G1
    and G2 first. kaspad's first slot gets one of them (say G1); its second slot gets the other
    (G2) from the pool, whose Version shows G1's id: the bridge drops G2 before kaspad sees it
    and relays that slot to H instead. kaspad never sees a duplicate; G2 is put aside without a
    failure while G1 lasts."""
    caplog.set_level(logging.INFO, logger="bridge")
    made = 0

    def make(**kw: object) -> KaspadEmulator:
        nonlocal made
        made += 1
        if made <= 2:  # the rig makes G1 and G2 first
            kw["node_id"] = SAME
        return emulators(**kw)

    async with trio.open_nursery() as nursery:
        other = emulators(addrv2=True)  # H: another node
        hport = await thread(other.start_server)
        assert isinstance(hport, int)
        g1, g2, h = (Target(ONION_G1.host, PORT), Target(ONION_G2.host, PORT),
                     Target(ONION_H.host, PORT))
        rig = await start_slot_rig(nursery, make, hport, refill_margin=1.0,
                                   candidates=[g1, g2, h])  # G1, G2 warmed first
        await until(lambda: {e.up.target for e in rig.bridge.pool._ready} == {g1, g2}, 10,
                    "G1 and G2 warm")
        p1, p2 = rig.bridge.slot_ports
        s1 = rig.kaspad.dial("127.0.0.1", p1)
        assert await thread(lambda: s1.wait_handshake(10)), s1
        first = rig.target_of(s1)
        assert first in (g1, g2)
        dup = g2 if first == g1 else g1  # warm before H: the next one a slot takes
        await until(lambda: [e.up.target for e in rig.bridge.pool._ready] == [dup, h], 10,
                    "the other of G1/G2, then H, warm")
        s2 = rig.kaspad.dial("127.0.0.1", p2)
        assert await thread(lambda: s2.wait_handshake(10)), s2
        assert rig.target_of(s2) == h  # refilled from another candidate
        assert duplicates_seen(rig.kaspad) == [], rig.kaspad.sessions
        assert not s1.violations and not s2.violations, (s1, s2)
        assert sorted(remote_ids(rig.kaspad)) == sorted([SAME, bytes(other.config.node_id)])
        # G2's own session was cancelled before any handshake (kaspad's Version never went there)
        g2emu = rig.good[dup]
        await until(lambda: all(s.closed for s in g2emu.sessions), 5, "G2's stream closed")
        assert not any(s.handshake_complete for s in g2emu.sessions)
        stats = rig.bridge.pool.events
        assert stats.duplicates == 1, stats
        snap = rig.bridge.selector.snapshot()
        assert snap[str(dup)]["failures"] == 0  # not penalised
        assert dup in rig.bridge.gossip.nodes.busy_targets()
        assert any("already connected to kaspad through slot:" in r.getMessage()
                   for r in caplog.records)
        # while G1 is connected, G2 is never handed to kaspad (the pool does not pick it)
        rig.bridge.selector.forgive_all()  # (clears the short defer too)
        rig.bridge.pool.poke()
        await trio.sleep(0.5)
        assert dup not in {e.up.target for e in rig.bridge.pool._ready}
        # G1 goes away: its node may be used again (through G2)
        s1.close()
        await thread(lambda: s1.wait_closed(5))
        await until(lambda: dup not in rig.bridge.gossip.nodes.busy_targets(), 5,
                    "G1's node released")
        s3 = rig.kaspad.dial("127.0.0.1", p1)
        assert await thread(lambda: s3.wait_handshake(10)), s3
        assert duplicates_seen(rig.kaspad) == []
        for s in (s2, s3):
            s.close()
        nursery.cancel_scope.cancel()


async def test_node_connected_inbound_is_not_dialed_by_a_slot_again(
        emulators: Callable[..., KaspadEmulator]) -> None:
    """R dials the bridge's onion inbound and is relayed to kaspad; R also listens and is the
    slot's first candidate (R's id is not known to the bridge when it is warmed). kaspad's slot
    gets R from the warm pool: its Version shows the id already connected inbound, so the bridge
    drops it and relays the slot to G (warmed meanwhile) instead."""
    async with trio.open_nursery() as nursery:
        r = emulators(addrv2=True, node_id=os.urandom(16))
        rport = await thread(r.start_server)
        g = emulators(addrv2=True)
        gport = await thread(g.start_server)
        assert isinstance(rport, int) and isinstance(gport, int)
        rt, gt = Target("127.0.0.1", rport), Target("127.0.0.1", gport)
        rig = await start_inbound_rig(nursery, emulators, slot=True, candidates=[rt, gt],
                                      pool_size=1, refill_margin=1.0)
        await until(lambda: [e.up.target for e in rig.bridge.pool._ready] == [rt], 10,
                    "R warm")
        inbound = r.dial("127.0.0.1", rig.inbound)
        assert await thread(lambda: inbound.wait_handshake(10)), inbound
        await until(lambda: remote_ids(rig.kaspad) == [bytes(r.config.node_id)], 5,
                    "kaspad's side of R's inbound connection handshaken")
        slot = rig.kaspad.dial("127.0.0.1", rig.bridge.slot_ports[0])
        assert await thread(lambda: slot.wait_handshake(10)), slot
        sessions: list[PeerSession] = rig.kaspad.sessions
        assert duplicates_seen(rig.kaspad) == [], sessions
        ids = remote_ids(rig.kaspad)
        assert sorted(ids) == sorted([bytes(r.config.node_id), bytes(g.config.node_id)])
        assert next(i for i in rig.bridge.relays.values() if i.kind == "slot").target == gt
        assert rig.bridge.pool.events.duplicates == 1
        assert rt in rig.bridge.gossip.nodes.busy_targets()
        assert not inbound.closed  # the first connection is untouched
        for s in (slot, inbound):
            s.close()
        nursery.cancel_scope.cancel()


async def test_inbound_duplicate_of_a_slot_peer_is_refused_politely(
        emulators: Callable[..., KaspadEmulator]) -> None:
    """The other way round: kaspad's slot is relayed to G first; then G (same node) dials the
    onion inbound. The bridge refuses that inbound connection itself (UNAVAILABLE, no reason
    that names our peer), counted in ``inbound_stats.refused_duplicate``; kaspad never sees
    it."""
    async with trio.open_nursery() as nursery:
        rig = await start_inbound_rig(nursery, emulators, slot=True)
        assert rig.good is not None
        await until(lambda: rig.bridge.pool.ready_count == 1, 10, "G warm")
        slot = rig.kaspad.dial("127.0.0.1", rig.bridge.slot_ports[0])
        assert await thread(lambda: slot.wait_handshake(10)), slot
        dup = rig.good.dial("127.0.0.1", rig.inbound)
        assert await thread(lambda: dup.wait_closed(10)), dup
        assert not dup.handshake_complete
        assert "UNAVAILABLE" in (dup.closed_reason or "") and "duplicate" in \
            (dup.closed_reason or ""), dup
        assert duplicates_seen(rig.kaspad) == [], rig.kaspad.sessions
        await until(lambda: rig.bridge.inbound_stats.refused_duplicate == 1, 5,
                    lambda: f"the refusal counted: {rig.bridge.inbound_stats}")
        assert not slot.closed
        slot.close()
        nursery.cancel_scope.cancel()
