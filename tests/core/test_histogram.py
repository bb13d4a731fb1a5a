"""Histograms (sans-IO) and the relay's message latency, timed by a clock the test drives."""

from __future__ import annotations

import pytest

from bridge.core.histogram import RELAY_BUCKETS, Histogram, HistogramSnapshot
from bridge.core.legs import RelayTiming
from bridge.core.policy import ConnectionPolicy, GossipState, PolicySettings
from bridge.core.relay import Relay, RelaySettings, Side, new_upstream_connection
from tests.core.relay_harness import READY, VERACK, Peer, addresses, block, pump, version
from tests.core.test_relay import OWN


def test_buckets_are_inclusive_upper_bounds_and_cumulative() -> None:
    h = Histogram((0.1, 1.0, 10.0))
    for v in (0.05, 0.1, 0.5, 1.0, 3.0, 11.0, -2.0):
        h.observe(v)
    snap = h.snapshot()
    assert snap.counts == (3, 2, 1, 1)  # -2 counts as 0; 0.1 and 1.0 in their own bucket
    assert snap.count == 7 and snap.sum == pytest.approx(0.05 + 0.1 + 0.5 + 1 + 3 + 11)
    assert snap.cumulative() == [("0.1", 3), ("1.0", 5), ("10.0", 6), ("+Inf", 7)]
    assert HistogramSnapshot.empty((1.0,)).cumulative() == [("1.0", 0), ("+Inf", 0)]
    with pytest.raises(ValueError):
        Histogram((1.0, 0.5))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def timed_relay(window: int = 65535) -> tuple[Relay, Peer, Peer, Clock, RelayTiming]:
    """A slot relay (kaspad is DOWN) whose messages are timed with ``Clock``."""
    clock = Clock()
    timing = RelayTiming(clock, Histogram(RELAY_BUCKETS), Histogram(RELAY_BUCKETS))
    policy = ConnectionPolicy(GossipState(own_onion=OWN), PolicySettings(), remote_label="peer x")
    relay = Relay(policy, kaspad_side=Side.DOWN, upstream_authority=b"x.onion:16111",
                  settings=RelaySettings(window=window), timing=timing)
    relay.attach_upstream(new_upstream_connection(relay.settings))
    kaspad, remote = Peer(client=True), Peer(client=False)
    kaspad.open()
    pump(relay, kaspad, remote)
    remote.respond()
    pump(relay, kaspad, remote)
    kaspad.send(version())
    remote.send(version())
    pump(relay, kaspad, remote)
    for p in (kaspad, remote):
        p.send(VERACK)
        p.send(READY)
    pump(relay, kaspad, remote)
    return relay, kaspad, remote, clock, timing


def test_every_relayed_message_is_observed_once_per_direction() -> None:
    relay, kaspad, remote, _clock, timing = timed_relay()
    # Version (rewritten), Verack, Ready each way, at no time at all
    assert timing.from_kaspad.snapshot().count == 3 == len(remote.messages)
    assert timing.from_remote.snapshot().count == 3 == len(kaspad.messages)
    assert timing.from_kaspad.snapshot().sum == 0.0
    for i in range(5):
        kaspad.send(block(3000, request_id=i + 1))
    pump(relay, kaspad, remote, chunk=100)  # many reads per message: still one observation each
    assert timing.from_kaspad.snapshot().count == 8 == len(remote.messages)
    assert timing.from_remote.snapshot().count == 3


def test_latency_runs_from_first_byte_in_to_last_byte_handed_on() -> None:
    """A message held back by the receiver's closed window is observed when its last byte is
    handed on, with the time since its first byte came in."""
    relay, kaspad, remote, clock, timing = timed_relay(window=65535)
    remote.auto_ack = False  # the remote stops opening its window
    kaspad.send(block(200_000), compressed=False)
    pump(relay, kaspad, remote)
    before = timing.from_kaspad.snapshot()
    assert before.count == 3, "not handed on yet: not observed"
    clock.now += 2.5
    remote.auto_ack = True
    for _ in range(50):
        remote.ack()
        kaspad.flush()
        pump(relay, kaspad, remote)
        if len(remote.messages) == 4:
            break
    after = timing.from_kaspad.snapshot()
    assert len(remote.messages) == 4 and after.count == 4
    assert after.sum - before.sum == pytest.approx(2.5)
    # in the bucket of 2.5 s (le="2.5"), not below
    i = RELAY_BUCKETS.index(2.5)
    assert after.counts[i] - before.counts[i] == 1


def test_a_dropped_message_is_not_observed() -> None:
    relay, kaspad, remote, _clock, timing = timed_relay()
    n = timing.from_remote.snapshot().count
    remote.send(addresses([]))  # unsolicited Addresses: dropped by the policy
    pump(relay, kaspad, remote)
    assert len(kaspad.messages) == 3 and not relay.finished
    assert timing.from_remote.snapshot().count == n
