"""Tests for bridge.core.peers: upstream candidate selection (sans-IO, explicit ``now``)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.onion import OnionAddress
from bridge.core.peers import PeerSelector, Target

OWN = OnionAddress.from_pubkey(b"\x07" * 32)


def _onion_target(port: int = 16111) -> Target:
    return Target(OnionAddress.from_pubkey(os.urandom(32)).host, port)


def _targets(n: int) -> list[Target]:
    return [Target(f"10.0.0.{i + 1}", 16111) for i in range(n)]


# --------------------------------------------------------------------------------------------
# Target


def test_target_authority_and_kind() -> None:
    o = _onion_target(16111)
    assert o.is_onion
    assert o.authority == f"{o.host}:16111".encode()
    v4 = Target("1.2.3.4", 16111)
    assert not v4.is_onion and v4.authority == b"1.2.3.4:16111"
    v6 = Target("2001:db8::1", 16111)
    assert v6.authority == b"[2001:db8::1]:16111"
    assert str(v6) == "[2001:db8::1]:16111"
    assert Target("1.2.3.4", 1) == Target("1.2.3.4", 1)
    assert hash(Target("1.2.3.4", 1)) == hash(Target("1.2.3.4", 1))


# --------------------------------------------------------------------------------------------
# pick / release


def test_round_robin() -> None:
    ts = _targets(3)
    sel = PeerSelector(list(ts))
    order = []
    for _ in range(7):
        t = sel.pick(0.0)
        assert t is not None
        order.append(t)
        sel.release(t)
    assert order == [ts[0], ts[1], ts[2], ts[0], ts[1], ts[2], ts[0]]


def test_in_use_exclusive() -> None:
    ts = _targets(3)
    sel = PeerSelector(list(ts))
    picked = [sel.pick(0.0) for _ in range(3)]
    assert sorted(picked, key=str) == sorted(ts, key=str)
    assert sel.pick(0.0) is None
    assert sorted(sel.in_use(), key=str) == sorted(ts, key=str)
    sel.release(ts[1])
    assert sel.in_use() == [ts[0], ts[2]]
    assert sel.pick(0.0) == ts[1]
    assert sel.pick(0.0) is None


def test_round_robin_skips_in_use() -> None:
    ts = _targets(4)
    sel = PeerSelector(list(ts))
    a = sel.pick(0.0)
    assert a == ts[0]
    # ts[0] stays in use; the rest keep rotating.
    seen = []
    for _ in range(6):
        t = sel.pick(0.0)
        assert t is not None and t != ts[0]
        seen.append(t)
        sel.release(t)
    assert seen == [ts[1], ts[2], ts[3], ts[1], ts[2], ts[3]]


def test_empty_selector() -> None:
    sel = PeerSelector([])
    assert sel.pick(0.0) is None
    assert sel.next_retry(0.0) is None
    assert sel.in_use() == []


def test_own_onion_never_picked() -> None:
    other = _onion_target()
    cands = [Target(OWN.host, 16111), other, Target(OWN.host, 1)]
    sel = PeerSelector(list(cands), own_onion=OWN)
    for _ in range(5):
        t = sel.pick(0.0)
        assert t == other
        sel.release(t)
    assert sel.pick(0.0) == other
    assert sel.pick(0.0) is None  # own onion targets are never eligible
    assert sel.next_retry(0.0) is None


def test_own_onion_never_picked_any_case() -> None:
    sel = PeerSelector([Target(OWN.host.upper(), 16111)], own_onion=OWN)
    assert sel.pick(0.0) is None


def test_add() -> None:
    ts = _targets(2)
    sel = PeerSelector([ts[0]])
    sel.add(ts[1])
    sel.add(ts[1])  # duplicate ignored
    sel.add(ts[0])
    assert sel.candidates == ts
    assert {sel.pick(0.0), sel.pick(0.0)} == set(ts)
    assert sel.pick(0.0) is None


def test_duplicate_initial_candidates_share_state() -> None:
    t = _targets(1)[0]
    sel = PeerSelector([t, t])
    assert sel.pick(0.0) == t
    assert sel.pick(0.0) is None


# --------------------------------------------------------------------------------------------
# backoff


def test_backoff_doubles_and_caps() -> None:
    t = _targets(1)[0]
    sel = PeerSelector([t], base_backoff=5.0, max_backoff=60.0)
    now = 1000.0
    delays = []
    for _ in range(7):
        got = sel.pick(now)
        assert got == t
        d = sel.failure(t, now)
        sel.release(t)
        delays.append(d)
        assert sel.pick(now) is None
        assert sel.pick(now + d - 0.001) is None
        assert sel.next_retry(now) == now + d
        now += d
    assert delays == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    assert sel.snapshot()[str(t)]["failures"] == 7


def test_backoff_huge_failure_count_is_capped() -> None:
    t = _targets(1)[0]
    sel = PeerSelector([t], base_backoff=1.0, max_backoff=600.0)
    for i in range(200):
        d = sel.failure(t, float(i))
    assert d == 600.0


def test_success_resets_backoff() -> None:
    t = _targets(1)[0]
    sel = PeerSelector([t], base_backoff=2.0, max_backoff=100.0)
    sel.failure(t, 0.0)
    sel.failure(t, 0.0)
    assert sel.failure(t, 0.0) == 8.0
    sel.success(t)
    assert sel.pick(0.0) == t  # retry_at cleared
    sel.release(t)
    assert sel.failure(t, 0.0) == 2.0
    snap = sel.snapshot()[str(t)]
    assert snap["successes"] == 1 and snap["failures"] == 1


def test_backed_off_candidate_skipped_not_blocking_others() -> None:
    ts = _targets(3)
    sel = PeerSelector(list(ts), base_backoff=10.0)
    sel.failure(ts[0], 0.0)
    got = []
    for _ in range(4):
        t = sel.pick(1.0)
        assert t is not None
        got.append(t)
        sel.release(t)
    assert ts[0] not in got
    assert sel.pick(10.0) is not None  # ts[0] eligible again at retry_at exactly


def test_next_retry() -> None:
    ts = _targets(4)
    sel = PeerSelector(list(ts), base_backoff=10.0)
    assert sel.next_retry(0.0) is None
    sel.failure(ts[0], 0.0)  # retry at 10
    sel.failure(ts[1], 5.0)  # retry at 15
    assert sel.next_retry(0.0) == 10.0
    assert sel.next_retry(12.0) == 15.0
    assert sel.next_retry(20.0) is None
    # A backed-off candidate that is also in use does not count (it cannot be dialled anyway).
    sel.failure(ts[2], 0.0)
    assert sel.pick(0.0) == ts[3]
    sel.failure(ts[3], 0.0)  # in use and backed off
    sel.mark_self(ts[0])
    assert sel.next_retry(0.0) == 10.0  # ts[2]; ts[0] is self, ts[3] in use
    assert isinstance(sel.next_retry(0.0), float)


# --------------------------------------------------------------------------------------------
# mark_self


def test_mark_self_is_permanent() -> None:
    ts = _targets(2)
    sel = PeerSelector(list(ts))
    t = sel.pick(0.0)
    assert t == ts[0]
    sel.mark_self(t)
    sel.release(t)
    sel.success(t)
    for i in range(5):
        got = sel.pick(float(i) * 1e6)
        assert got == ts[1]
        sel.release(got)
    assert sel.snapshot()[str(ts[0])]["self"] is True
    sel.mark_self(ts[1])
    assert sel.pick(1e9) is None
    assert sel.next_retry(0.0) is None


def test_snapshot_shape() -> None:
    t = Target("::1", 16111)
    sel = PeerSelector([t])
    sel.pick(0.0)
    assert sel.snapshot() == {"[::1]:16111": {"failures": 0, "retry_at": 0.0, "in_use": True,
                                              "self": False, "successes": 0}}


# --------------------------------------------------------------------------------------------
# property: never hands out an ineligible target, and never says None when one is eligible


_ops = st.lists(
    st.tuples(st.sampled_from(["pick", "release", "fail", "succeed", "self", "tick"]),
              st.integers(0, 5), st.floats(0, 50)),
    max_size=60,
)


@given(_ops, st.integers(1, 6))
@settings(max_examples=200)
def test_selector_model(ops: list[tuple[str, int, float]], n: int) -> None:
    ts = [*_targets(n), Target(OWN.host, 16111)]
    sel = PeerSelector(list(ts), base_backoff=3.0, max_backoff=20.0, own_onion=OWN)
    now = 0.0
    in_use: set[Target] = set()
    selfs: set[Target] = set()
    retry: dict[Target, float] = {}
    failures: dict[Target, int] = {}
    for op, i, x in ops:
        t = ts[i % len(ts)]
        if op == "tick":
            now += x
        elif op == "pick":
            eligible = {c for c in ts if c not in in_use and c not in selfs
                        and retry.get(c, 0.0) <= now and c.host != OWN.host}
            got = sel.pick(now)
            if eligible:
                assert got in eligible
                in_use.add(got)
            else:
                assert got is None
        elif op == "release":
            sel.release(t)
            in_use.discard(t)
        elif op == "fail":
            failures[t] = failures.get(t, 0) + 1
            d = sel.failure(t, now)
            assert d == min(20.0, 3.0 * 2 ** (failures[t] - 1))
            retry[t] = now + d
        elif op == "succeed":
            sel.success(t)
            failures[t] = 0
            retry[t] = 0.0
        else:
            sel.mark_self(t)
            selfs.add(t)
        assert set(sel.in_use()) == in_use
        waiting = [r for c, r in retry.items() if c not in in_use and c not in selfs and r > now]
        assert sel.next_retry(now) == (min(waiting) if waiting else None)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_round_robin_is_fair(n: int) -> None:
    ts = _targets(n)
    sel = PeerSelector(list(ts))
    counts = dict.fromkeys(ts, 0)
    for _ in range(10 * n):
        t = sel.pick(0.0)
        assert t is not None
        counts[t] += 1
        sel.release(t)
    assert set(counts.values()) == {10}
