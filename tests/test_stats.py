"""Frozen counter sets (``bridge.core.counters``) and the stats values built from them."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass

import pytest

from bridge.core.counters import Counters
from bridge.core.errors import Fault
from bridge.net.pool import FaultCounts
from bridge.runtime.stats import RewriteStats, Totals, TrafficStats


@dataclass(frozen=True, slots=True)
class Events(Counters):
    seen: int = 0
    lost: int = 0


def test_bump_returns_a_new_value_and_leaves_the_old_one() -> None:
    before = Events()
    after = before.bump(seen=2).bump(lost=1, seen=1)
    assert before == Events() and after == Events(seen=3, lost=1)
    with pytest.raises(FrozenInstanceError):
        after.seen = 5  # type: ignore[misc]


def test_a_misspelt_counter_fails_loudly() -> None:
    with pytest.raises((AttributeError, TypeError)):
        Events().bump(sen=1)


def test_sum_items_and_total() -> None:
    a, b = Events(1, 2), Events(10, 20)
    assert a + b == Events(11, 22)
    assert (a + b).items() == [("seen", 11), ("lost", 22)]
    assert (a + b).total() == 33


def test_every_fault_has_a_failure_counter() -> None:
    counts = FaultCounts()
    for fault in Fault:
        counts = counts.bump(**{fault.name.lower(): 1})
    assert counts.total() == len(Fault)


def test_rewrite_stats_from_policy_counters() -> None:
    """A policy's counters (``refreshes`` appears only after the first refresh)."""
    assert RewriteStats.of({"onions_added": 2, "dropped": 1}) == RewriteStats(
        onions_added=2, dropped=1)
    assert RewriteStats.of({"refreshes": 3}).refreshes == 3


def test_totals_add_by_kind() -> None:
    t = Totals().add("slot", TrafficStats(1, 2, 3, 4), RewriteStats(dropped=1))
    t = t.add("inbound", TrafficStats(10, 20, 30, 40), RewriteStats(dropped=2))
    assert t.slot == TrafficStats(1, 2, 3, 4) and t.inbound == TrafficStats(10, 20, 30, 40)
    assert t.traffic("inbound").bytes_from_remote == 20 and t.rewrites.dropped == 3
    assert TrafficStats.of({"bytes_from_kaspad": 5, "bytes_from_remote": 6,
                            "messages_from_kaspad": 7, "messages_from_remote": 8,
                            "buffered": 9}) == TrafficStats(5, 6, 7, 8)


def test_log_handler_feeds_warnings_and_pool_failures_into_the_ring() -> None:
    import logging

    from bridge.runtime.stats import ErrorLogHandler, ErrorRecord, RecentErrors

    errors = RecentErrors()
    handler = ErrorLogHandler(errors)
    logger = logging.getLogger("bridge")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        logging.getLogger("bridge.pool").info("upstream %s not ready", "x")
        logging.getLogger("bridge.relay").info("closed normally")  # not a problem
        logging.getLogger("bridge.relay").warning("slot:1 closed: %s", "boom")
        logger.warning("config: odd")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    got = errors.records()
    assert [(e.source, e.message) for e in got] == [
        ("pool", "upstream x not ready"), ("relay", "slot:1 closed: boom"),
        ("bridge", "config: odd")]
    assert all(isinstance(e, ErrorRecord) and e.at and e.count == 1 for e in got)
