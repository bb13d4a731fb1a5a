"""Tests for bridge.core.selection: the sans-IO selection policy and the BookSelector adapter."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.addrman import is_public_host
from bridge.core.errors import OnionAddressError
from bridge.core.onion import OnionAddress
from bridge.core.peers import Target
from bridge.core.selection import (
    ALL_KINDS,
    BookSelector,
    Kind,
    PeerEntry,
    PeerStore,
    SelectionPolicy,
    backoff_delay,
    choose,
    eligible,
    group_of,
    is_exempt,
    normalize_endpoint,
    source_rank,
    spread_violations,
    weight,
)

NET = "kaspa-mainnet"
ONIONS = [OnionAddress.from_pubkey(bytes([i]) * 32) for i in range(1, 6)]
OWN = OnionAddress.from_pubkey(b"\x07" * 32)


def entry(host: str, port: int = 16111, *, source: str = "gossip:x", failures: int = 0,
          backoff_until: float = 0.0, last_success: float | None = None,
          is_self: bool = False) -> PeerEntry:
    h, p, k = normalize_endpoint(host, port)
    return PeerEntry(NET, h, p, k, source, 0.0, 0.0, last_success, failures, backoff_until,
                     False, is_self)


class FakeStore:
    """Dict-backed PeerStore (no eviction) for adapter tests."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, int], PeerEntry] = {}
        self.clock = 1_000_000.0  # what "now=None" reads

    def entries(self, network: str, kinds: Collection[Kind] | None = None) -> list[PeerEntry]:
        return sorted((e for (n, _, _), e in self.rows.items()
                       if n == network and (kinds is None or e.kind in kinds)),
                      key=lambda e: (e.host, e.port))

    def learn(self, network: str, host: str, port: int, *, source: str,
              now: float | None = None, addrv2: bool = False) -> bool:
        h, p, k = normalize_endpoint(host, port)
        t = self.clock if now is None else now
        if (network, h, p) in self.rows:
            return False
        self.rows[(network, h, p)] = PeerEntry(network, h, p, k, source, t, t, None, 0, 0.0,
                                               addrv2, False)
        return True

    def record_success(self, network: str, host: str, port: int, *, now: float | None = None,
                       addrv2: bool | None = None) -> bool:
        h, p, _ = normalize_endpoint(host, port)
        e = self.rows.get((network, h, p))
        if e is None:
            return False
        t = self.clock if now is None else now
        self.rows[(network, h, p)] = e._replace(
            failures=0, backoff_until=0.0, last_success=t, last_seen=max(e.last_seen, t),
            addrv2=e.addrv2 if addrv2 is None else addrv2)
        return True

    def record_failure(self, network: str, host: str, port: int, *, now: float | None = None,
                       backoff: Callable[[int], float] = backoff_delay,
                       ) -> tuple[int, float] | None:
        h, p, _ = normalize_endpoint(host, port)
        e = self.rows.get((network, h, p))
        if e is None:
            return None
        t = self.clock if now is None else now
        n = e.failures + 1
        d = backoff(n)
        self.rows[(network, h, p)] = e._replace(failures=n, backoff_until=t + d)
        return n, d

    def mark_self(self, network: str, host: str, port: int, is_self: bool = True) -> bool:
        h, p, _ = normalize_endpoint(host, port)
        e = self.rows.get((network, h, p))
        if e is None:
            return False
        self.rows[(network, h, p)] = e._replace(is_self=is_self)
        return True


def _typed_store() -> PeerStore:
    return FakeStore()  # mypy: FakeStore satisfies the protocol


# --------------------------------------------------------------------------------------------
# addresses, groups, sources


def test_normalize_endpoint() -> None:
    o = ONIONS[0]
    assert normalize_endpoint(o.host.upper(), 1) == (o.host, 1, "onion")
    assert normalize_endpoint("1.2.3.4", 16111) == ("1.2.3.4", 16111, "ipv4")
    assert normalize_endpoint("2001:DB8:0:0::1", 5) == ("2001:db8::1", 5, "ipv6")
    assert normalize_endpoint("::ffff:1.2.3.4", 5) == ("1.2.3.4", 5, "ipv4")
    assert normalize_endpoint("127.0.0.1", 5) == ("127.0.0.1", 5, "ipv4")
    for bad_host in ("example.com", "fe80::1%eth0", "0.0.0.0", "::", "224.0.0.1", "",
                     "[::1]", "1.2.3.4:5", o.service_id):
        with pytest.raises(ValueError):
            normalize_endpoint(bad_host, 1)
    for bad_port in (0, 65536, -1, True):
        with pytest.raises(ValueError):
            normalize_endpoint("1.2.3.4", bad_port)
    with pytest.raises(OnionAddressError):
        normalize_endpoint("a" * 56 + ".onion", 1)  # bad checksum


def test_groups() -> None:
    assert group_of("1.2.3.4") == group_of("1.2.200.9") == "ipv4:1.2"
    assert group_of("1.3.3.4") != group_of("1.2.3.4")
    assert group_of("::ffff:1.2.3.4") == "ipv4:1.2"
    assert group_of("2001:db8::1") == group_of("2001:db8:ffff::2")
    assert group_of("2001:db9::1") != group_of("2001:db8::1")
    assert group_of(ONIONS[0].host) != group_of(ONIONS[1].host)
    assert group_of(ONIONS[0].host.upper()) == group_of(ONIONS[0].host)
    for h in ("1.2.3.4", "2001:db8::1", ONIONS[0].host):
        assert entry(h).group == group_of(h)


def test_source_rank() -> None:
    assert source_rank("gossip:1.2.3.4:16111") == 0
    assert source_rank("version:x") == source_rank("inbound-version") == 1
    assert source_rank("seed") == 2 and source_rank("config") == 3
    assert entry("1.2.3.4", source="seed").protected
    assert not entry("1.2.3.4", source="gossip:y").protected
    for bad in ("", "dns", "Gossip:x", "x" * 201):
        with pytest.raises(ValueError):
            source_rank(bad)


def test_backoff_delay() -> None:
    assert [backoff_delay(n) for n in range(0, 9)] == [0, 5, 10, 20, 40, 80, 160, 320, 600]
    assert backoff_delay(10_000) == 600
    assert backoff_delay(3, base=1, maximum=3) == 3


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        SelectionPolicy(kinds=frozenset({"tor"}))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SelectionPolicy(base_backoff=10, max_backoff=5)


def test_exempt() -> None:
    pol = SelectionPolicy()
    assert is_exempt("127.0.0.1", pol) and is_exempt("::1", pol)
    assert not is_exempt("10.0.0.1", pol) and not is_exempt(ONIONS[0].host, pol)
    assert not is_exempt("127.0.0.1", SelectionPolicy(exempt_loopback=False))


# --------------------------------------------------------------------------------------------
# choose()


def test_choose_filters() -> None:
    rng = random.Random(1)
    assert choose([], 0, rng) is None
    assert choose([entry("1.2.3.4", is_self=True)], 0, rng) is None
    assert choose([entry(OWN.host)], 0, rng, own_onion=OWN) is None
    assert choose([entry("1.2.3.4", backoff_until=10)], 9.9, rng) is None
    assert choose([entry("1.2.3.4", backoff_until=10)], 10, rng) is not None
    assert choose([entry("1.2.3.4")], 0, rng, in_use=[Target("1.2.3.4", 16111)]) is None
    assert choose([entry("1.2.3.4")], 0, rng, exclude=[Target("1.2.3.4", 16111)]) is None
    only_onion = SelectionPolicy(kinds=frozenset({"onion"}))
    assert choose([entry("1.2.3.4"), entry("2001:db8::1")], 0, rng, policy=only_onion) is None
    got = choose([entry("1.2.3.4"), entry(ONIONS[0].host)], 0, rng, policy=only_onion)
    assert got is not None and got.kind == "onion"


def test_choose_spread() -> None:
    rng = random.Random(2)
    # same /16 as an in-use peer: blocked; another /16 is fine
    assert choose([entry("1.2.9.9")], 0, rng, in_use=[Target("1.2.3.4", 1)]) is None
    assert choose([entry("1.3.9.9")], 0, rng, in_use=[Target("1.2.3.4", 1)]) is not None
    # IPv6 /32
    assert choose([entry("2001:db8:1::1")], 0, rng, in_use=[Target("2001:db8::5", 1)]) is None
    assert choose([entry("2001:db9::1")], 0, rng, in_use=[Target("2001:db8::5", 1)]) is not None
    # the same onion on another port is the same remote
    o = ONIONS[0].host
    assert choose([entry(o, 2)], 0, rng, in_use=[Target(o, 1)]) is None
    assert choose([entry(o, 2)], 0, rng, exclude=[Target(o.upper(), 1)]) is None
    assert choose([entry(ONIONS[1].host)], 0, rng, in_use=[Target(o, 1)]) is not None
    # loopback (configured: a local test rig) is exempt unless the policy says otherwise
    lo = entry("127.0.0.1", 2, source="config")
    assert choose([lo], 0, rng, in_use=[Target("127.0.0.1", 1)]) is not None
    strict = SelectionPolicy(exempt_loopback=False)
    assert choose([lo], 0, rng, in_use=[Target("127.0.0.1", 1)], policy=strict) is None
    # exclude does not occupy the group
    assert choose([entry("1.2.9.9")], 0, rng, exclude=[Target("1.2.3.4", 1)]) is not None


def test_eligible_matches_choose() -> None:
    e = entry("1.2.9.9")
    pol = SelectionPolicy()
    assert not eligible(e, 0, busy=[Target("1.2.3.4", 1)], occupied={"ipv4:1.2"}, policy=pol)
    assert eligible(e, 0, busy=[], occupied=set(), policy=pol)


def _freq(entries: list[PeerEntry], now: float, n: int = 2000, seed: int = 5) -> dict[str, int]:
    rng = random.Random(seed)
    out: dict[str, int] = {}
    for _ in range(n):
        got = choose(entries, now, rng)
        assert got is not None
        out[got.host] = out.get(got.host, 0) + 1
    return out


def test_prefers_recently_good_and_penalises_failures() -> None:
    now = 100_000.0
    good = entry("1.1.1.1", last_success=now - 60)
    fresh = entry("2.2.2.2")
    f = _freq([good, fresh], now)
    assert f["1.1.1.1"] > 0.9 * 2000
    old = entry("3.3.3.3", last_success=now - 10 * 86400)  # tried long ago
    f = _freq([old, fresh], now)
    assert f["3.3.3.3"] > 0.8 * 2000
    failing = entry("4.4.4.4", failures=2)
    f = _freq([failing, fresh], now)
    assert f["2.2.2.2"] > 0.95 * 2000
    cfg = entry("5.5.5.5", source="config")
    f = _freq([cfg, fresh], now)
    assert f["5.5.5.5"] > 0.9 * 2000
    assert weight(good, now, SelectionPolicy()) == weight(cfg, now, SelectionPolicy())


def test_group_size_normalisation() -> None:
    crowd = [entry(f"9.9.{i}.1") for i in range(100)]  # one /16, 100 addresses
    lone = entry("8.8.8.8")
    f = _freq([*crowd, lone], 0)
    assert 0.4 * 2000 < f["8.8.8.8"] < 0.6 * 2000


def test_choose_deterministic() -> None:
    es = [entry(f"{a}.{b}.0.1") for a in range(1, 5) for b in range(5)]
    a = [choose(es, 0, random.Random(42)) for _ in range(3)]
    b = [choose(list(reversed(es)), 0, random.Random(42)) for _ in range(3)]
    assert a == b


def test_spread_violations() -> None:
    assert spread_violations([Target("1.2.3.4", 1), Target("1.3.3.4", 1)]) == []
    assert spread_violations([Target("1.2.3.4", 1), Target("1.2.3.5", 1)])
    assert spread_violations([Target("127.0.0.1", 1), Target("127.0.0.1", 2)]) == []
    assert spread_violations([Target("127.0.0.1", 1), Target("127.0.0.1", 1)])
    o = ONIONS[0].host
    assert spread_violations([Target(o, 1), Target(o, 2)])


# --------------------------------------------------------------------------------------------
# BookSelector


def test_book_selector_interface() -> None:
    store = FakeStore()
    sel = BookSelector(store, NET, rng=random.Random(3), own_onion=OWN)
    for t in (Target("1.2.3.4", 1), Target("1.2.3.5", 1), Target(OWN.host, 1),
              Target(ONIONS[0].host, 16111)):
        sel.add(t)
    picked = {sel.pick(0.0), sel.pick(0.0)}
    assert None not in picked and len(picked) == 2
    assert sel.pick(0.0) is None  # 1.2.3.5 shares the /16 with 1.2.3.4; own onion never
    assert sorted(map(str, sel.in_use())) == sorted(map(str, picked))
    ip = next(t for t in picked if t is not None and not t.is_onion)
    assert sel.failure(ip, 10.0) == 5.0
    sel.release(ip)
    other = Target("1.2.3.5", 1) if ip.host == "1.2.3.4" else Target("1.2.3.4", 1)
    assert sel.pick(11.0) == other  # the failed one rests, the other /16 member may go now
    sel.release(other)
    assert sel.failure(other, 11.0) == 5.0
    assert sel.next_retry(11.0) == 15.0
    assert sel.pick(12.0) is None
    assert sel.pick(15.0) == ip
    sel.success(ip)
    snap = sel.snapshot()
    assert snap[str(ip)]["failures"] == 0 and snap[str(ip)]["in_use"] is True
    assert snap[str(ip)]["last_success"] == store.clock
    assert snap[str(other)]["failures"] == 1
    sel.release(ip)
    sel.mark_self(ip)
    assert sel.snapshot()[str(ip)]["self"] is True
    assert sel.pick(100.0) == other
    assert sel.pick(100.0) is None


def test_book_selector_clock_mapping() -> None:
    store = FakeStore()
    off = 1_700_000_000.0
    sel = BookSelector(store, NET, rng=random.Random(0), to_wall=lambda t: t + off)
    t = Target("1.2.3.4", 1)
    sel.add(t, now=5.0)
    assert store.entries(NET)[0].first_seen == off + 5.0
    assert sel.pick(10.0) == t
    sel.release(t)
    assert sel.failure(t, 10.0) == 5.0
    assert store.entries(NET)[0].backoff_until == off + 15.0
    assert sel.next_retry(10.0) == 15.0  # answered in the caller's clock
    sel.success(t, 20.0, addrv2=True)
    e = store.entries(NET)[0]
    assert e.last_success == off + 20.0 and e.addrv2


def test_book_selector_orphans_and_exclude() -> None:
    store = FakeStore()
    sel = BookSelector(store, NET, rng=random.Random(0))
    t = Target("1.2.3.4", 1)
    sel.add(t)
    assert sel.pick(0.0, exclude=[t]) is None
    assert sel.pick(0.0) == t
    store.rows.clear()  # evicted while in use
    assert sel.failure(t, 0.0) == 5.0
    assert sel.failure(t, 0.0) == 10.0
    sel.success(t)
    sel.release(t)
    assert sel.in_use() == []
    with pytest.raises(ValueError):
        BookSelector(store, "kaspa-nonet")


# --------------------------------------------------------------------------------------------
# property: random operation sequences never break the rules

_HOSTS = (
    [f"10.{a}.{b}.{c}" for a in range(2) for b in range(2) for c in (1, 2)]
    + [f"200{a}:{b}::{c}" for a in (1, 2) for b in range(2) for c in (1, 2)]
    + ["::ffff:10.0.0.9", "127.0.0.1"]
    + [o.host for o in ONIONS[:3]] + [OWN.host]
)
_ENDPOINTS = st.tuples(st.sampled_from(_HOSTS), st.sampled_from([1, 2]))
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("pick"), st.integers(0, 3)),
        st.tuples(st.just("release"), st.integers(0, 10)),
        st.tuples(st.just("success"), st.integers(0, 10)),
        st.tuples(st.just("failure"), st.integers(0, 10)),
        st.tuples(st.just("self"), st.integers(0, 10)),
        st.tuples(st.just("tick"), st.integers(1, 30)),
        st.tuples(st.just("add"), st.integers(0, len(_HOSTS) * 2 - 1)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(endpoints=st.lists(_ENDPOINTS, min_size=1, max_size=20),
       kinds=st.sets(st.sampled_from(sorted(ALL_KINDS)), min_size=1),
       exempt=st.booleans(), seed=st.integers(0, 2**32 - 1), ops=_OPS)
def test_selector_never_breaks_rules(endpoints: list[tuple[str, int]], kinds: set[Kind],
                                     exempt: bool, seed: int,
                                     ops: list[tuple[str, int]]) -> None:
    def run() -> list[object]:
        store = FakeStore()
        pol = SelectionPolicy(kinds=frozenset(kinds), exempt_loopback=exempt)
        sel = BookSelector(store, NET, policy=pol, rng=random.Random(seed), own_onion=OWN)
        for h, p in endpoints:
            sel.add(Target(h, p), now=0.0)
        now = 0.0
        trace: list[object] = []
        for op, arg in ops:
            used = sel.in_use()
            if op == "pick":
                before = {(e.host, e.port): e for e in store.entries(NET)}
                t = sel.pick(now)
                trace.append(t)
                if t is not None:
                    e = before[(t.host, t.port)]
                    assert e.kind in kinds and not e.is_self and e.host != OWN.host
                    assert e.source == "config" or is_public_host(e.host)  # issue G defect 7
                    assert e.backoff_until <= now
                    assert t not in used
                else:  # nothing eligible: brute-force agrees
                    busy = set(used)
                    occ = {group_of(u.host) for u in used if not is_exempt(u.host, pol)}
                    assert not any(eligible(e, now, busy=busy, occupied=occ, policy=pol,
                                            own_onion=OWN) for e in before.values())
            elif op == "tick":
                now += arg
            elif op == "add":  # odd: learned from gossip, even: configured
                h = _HOSTS[arg // 2]
                sel.add(Target(h, 1 + arg % 2), now=now,
                        source="gossip:peer 1.2.3.4:1" if arg % 2 else "config")
            elif used:
                t = used[arg % len(used)]
                if op == "release":
                    sel.release(t)
                elif op == "success":
                    sel.success(t, now)
                elif op == "failure":
                    trace.append(sel.failure(t, now))
                else:
                    sel.mark_self(t)
            in_use = sel.in_use()
            assert spread_violations(in_use, pol) == []
            nr = sel.next_retry(now)
            assert nr is None or nr > now
        return trace

    assert run() == run()  # deterministic for a given seed
