"""Upstream selection policy over address-book entries (sans-IO, clock-free).

Issue C item 3. The persistent store (:class:`bridge.store.book.AddressBook`) holds what is
known about each peer; this module decides whom to dial next. Nothing here touches SQLite,
sockets or a clock: ``now`` is always passed in and randomness comes from an injected
:class:`random.Random`, so a given seed and call sequence always yields the same picks.

Rules, in order (:func:`choose`):

1. **Filters** (hard): the peer's network kind is allowed by the mode (``onion``/``ipv4``/
   ``ipv6``); it is not ``is_self`` and not our own onion; it is not in use (reserved for the warm
   pool or relaying) nor excluded by the caller; its ``backoff_until`` has passed; an IP peer
   must have a public address (:func:`bridge.core.addrman.is_public_ip`) unless the operator
   configured it (source ``config``): whatever a remote gossiped, a private, loopback or
   otherwise non-public address learned from it (or from a seeder, or stored by an older
   version) is never dialed (issue G defect 7).
2. **Spread** (hard): no two in-use peers share a *group*: the IPv4 /16, the IPv6 /32, or the
   onion itself (an onion is its own group, so the same onion is never used twice even on two
   ports). IPv4-mapped IPv6 addresses count as IPv4. Loopback addresses are exempt by default
   (``SelectionPolicy.exempt_loopback``): they are local test rigs, where /16 spreading is
   meaningless, and an exempt peer neither blocks nor is blocked by a group.
3. **Preference** (soft, weighted random like kaspad's address manager, protocol.md §7.2):
   ``weight = 64**-min(failures, 4) * bonus / (eligible peers in the same group)`` where
   ``bonus`` is ``recent_bonus`` for a peer that succeeded within ``recent_window`` seconds or an
   operator-configured (``config``) peer, ``tried_bonus`` for one that succeeded at some point,
   else 1. Dividing by the group size keeps one /16 full of addresses from drowning the others.

Backoff is exponential: after the n-th consecutive failure the peer rests
``min(max_backoff, base_backoff * 2**(n-1))`` seconds (:func:`backoff_delay`); a success resets it.

:class:`BookSelector` wraps a store (anything satisfying :class:`PeerStore`, e.g. the SQLite
address book) behind the same interface as :class:`bridge.core.peers.PeerSelector`, so the warm
pool can swap it in. Its in-use set is runtime state and lives in memory only. ``pick`` reads
the network's entries from the store on every call (about 15 ms for a full 4096-entry book),
which is fine for the warm pool's rate of picks.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple, Protocol, TypeAlias

from bridge.core import kaspa
from bridge.core.addrman import group_of, is_public_host
from bridge.core.onion import OnionAddress, is_onion_host
from bridge.core.peers import Target

__all__ = [
    "ALL_KINDS",
    "NETWORKS",
    "SOURCE_KINDS",
    "BookSelector",
    "Kind",
    "PeerEntry",
    "PeerStore",
    "SelectionPolicy",
    "backoff_delay",
    "choose",
    "eligible",
    "group_of",
    "is_exempt",
    "normalize_endpoint",
    "source_rank",
    "spread_violations",
    "weight",
]

#: Same literal as ``bridge.config.HostKind`` (kept local: the core does not import config).
Kind: TypeAlias = Literal["onion", "ipv4", "ipv6"]
ALL_KINDS: Final[frozenset[Kind]] = frozenset(("onion", "ipv4", "ipv6"))

#: Kaspa networks an address book keeps apart (the names of :data:`bridge.core.kaspa.NETWORKS`).
NETWORKS: Final[tuple[str, ...]] = tuple(kaspa.NETWORKS)

#: Where an address came from -> rank. A source of higher rank replaces a lower one when the same
#: address is learned again; ranks >= 2 (``seed``, ``config``) are never evicted from the book.
#: A source is ``kind`` or ``kind:detail`` (``gossip:<from whom>``, ``version:<remote>`` as
#: written by ``bridge.core.policy``).
SOURCE_KINDS: Final[dict[str, int]] = {
    "gossip": 0,
    "version": 1,
    "inbound-version": 1,
    "seed": 2,
    "config": 3,
}
PROTECTED_RANK: Final = 2
MAX_SOURCE_LEN: Final = 200


def source_rank(source: str) -> int:
    """Rank of a source string; ``ValueError`` for an unknown kind."""
    if not isinstance(source, str) or not source or len(source) > MAX_SOURCE_LEN:
        raise ValueError(f"invalid address source {source!r}: 1..{MAX_SOURCE_LEN} characters")
    kind = source.partition(":")[0]
    try:
        return SOURCE_KINDS[kind]
    except KeyError:
        allowed = ", ".join(SOURCE_KINDS)
        raise ValueError(
            f"invalid address source {source!r}: kind must be one of {allowed} "
            "(optionally followed by ':detail')"
        ) from None


def normalize_endpoint(host: str, port: int) -> tuple[str, int, Kind]:
    """Validate and normalise a peer endpoint: ``(host, port, kind)``.

    ``host`` is a v3 onion (any case, checksum verified -> lower case), a dotted IPv4 or an IPv6
    literal without brackets (compressed; IPv4-mapped becomes plain IPv4). Hostnames, scope ids,
    unspecified and multicast addresses and ports outside 1..65535 raise ``ValueError``.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 0xFFFF:
        raise ValueError(f"invalid port {port!r} for {host!r}: must be 1..65535")
    if not isinstance(host, str) or not host:
        raise ValueError(f"invalid host {host!r}")
    if is_onion_host(host):
        return OnionAddress.parse(host).host, port, "onion"  # OnionAddressError is a ValueError
    if "%" in host:
        raise ValueError(f"invalid host {host!r}: IPv6 scope ids are not supported")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"invalid host {host!r}: not an IP literal or a v3 onion (hostnames are not stored)"
        ) from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"invalid host {host!r}: unspecified or multicast address")
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip), port, "ipv4"
    return str(ip), port, "ipv6"


def _entry_group(kind: str, host: str) -> str:
    """:func:`group_of` for a normalised host of known kind (fast path for IPv4 and onion)."""
    if kind == "ipv4":
        return "ipv4:" + host.rsplit(".", 2)[0]
    if kind == "onion":
        return "onion:" + host
    return group_of(host)


class PeerEntry(NamedTuple):
    """One address-book row (what the store knows about a peer). Times are wall-clock seconds.

    A named tuple (immutable, cheap to build from a row); ``host`` is normalised
    (:func:`normalize_endpoint`).
    """

    network: str
    host: str
    port: int
    kind: Kind
    source: str
    first_seen: float
    last_seen: float
    last_success: float | None = None
    failures: int = 0  # consecutive
    backoff_until: float = 0.0
    addrv2: bool = False  # the peer itself was seen advertising ADDRv2 (onion gossip)
    is_self: bool = False  # a route back to our own kaspad

    @property
    def target(self) -> Target:
        return Target(self.host, self.port)

    @property
    def group(self) -> str:
        return _entry_group(self.kind, self.host)

    @property
    def protected(self) -> bool:
        """Seeds and configured peers are never evicted (recent successes: see the book)."""
        return source_rank(self.source) >= PROTECTED_RANK


@dataclass(frozen=True, slots=True)
class SelectionPolicy:
    """Knobs of :func:`choose` and of the adapter's backoff (see the module docstring)."""

    kinds: frozenset[Kind] = ALL_KINDS  # the mode's allowed peer networks (onlynet)
    base_backoff: float = 5.0
    max_backoff: float = 600.0
    recent_window: float = 24 * 3600.0
    recent_bonus: float = 64.0
    tried_bonus: float = 8.0
    failure_base: float = 64.0
    max_failure_penalty: int = 4
    exempt_loopback: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - ALL_KINDS
        if unknown:
            raise ValueError(f"unknown peer kinds {sorted(unknown)}; allowed: onion, ipv4, ipv6")
        if not 0 < self.base_backoff <= self.max_backoff:
            raise ValueError("need 0 < base_backoff <= max_backoff")


def backoff_delay(failures: int, base: float = 5.0, maximum: float = 600.0) -> float:
    """Backoff after the ``failures``-th consecutive failure (0 failures -> 0)."""
    if failures <= 0:
        return 0.0
    return float(min(maximum, base * float(2 ** min(failures - 1, 30))))


def is_exempt(host: str, policy: SelectionPolicy) -> bool:
    """Exempt from the spread rule (loopback test peers, when the policy says so)."""
    if not policy.exempt_loopback or is_onion_host(host):
        return False
    if host.startswith("127."):
        return True
    if "." in host and ":" not in host:
        return False  # other IPv4
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _occupied_groups(in_use: Iterable[Target], policy: SelectionPolicy) -> set[str]:
    groups: set[str] = set()
    for t in in_use:
        if not is_exempt(t.host, policy):
            try:
                groups.add(group_of(t.host))
            except ValueError:  # not an address we would select; cannot collide
                continue
    return groups


def eligible(entry: PeerEntry, now: float, *, busy: Collection[Target],
             occupied: Collection[str], policy: SelectionPolicy,
             own_onion: OnionAddress | None = None) -> bool:
    """Hard filters of rule 1 and the spread rule 2 for one entry."""
    return _eligible(entry, now, {(t.host.lower(), t.port) for t in busy},
                     {t.host.lower() for t in busy if is_onion_host(t.host)},
                     occupied, policy, own_onion.host if own_onion is not None else None)


def _eligible(entry: PeerEntry, now: float, busy: Collection[tuple[str, int]],
              busy_onions: Collection[str], occupied: Collection[str],
              policy: SelectionPolicy, own_host: str | None) -> bool:
    if entry.kind not in policy.kinds or entry.is_self or entry.backoff_until > now:
        return False
    if entry.kind != "onion" and not is_public_host(entry.host) \
            and not entry.source.startswith("config"):
        return False  # learned from someone else: never dial a non-public address
    if entry.host == own_host or (entry.host, entry.port) in busy:
        return False
    if entry.kind == "onion" and entry.host in busy_onions:
        return False  # the same onion on another port is the same remote
    if not occupied:
        return True
    return is_exempt(entry.host, policy) or entry.group not in occupied


def weight(entry: PeerEntry, now: float, policy: SelectionPolicy) -> float:
    """Unnormalised preference of one eligible entry (rule 3, before the group division)."""
    w = policy.failure_base ** -min(entry.failures, policy.max_failure_penalty)
    if entry.source.partition(":")[0] == "config" or (
        entry.last_success is not None and now - entry.last_success <= policy.recent_window
    ):
        w *= policy.recent_bonus
    elif entry.last_success is not None:
        w *= policy.tried_bonus
    return w


def choose(entries: Iterable[PeerEntry], now: float, rng: random.Random, *,
           in_use: Collection[Target] = (), exclude: Collection[Target] = (),
           policy: SelectionPolicy | None = None,
           own_onion: OnionAddress | None = None) -> PeerEntry | None:
    """Pick one entry by the module rules, or ``None`` when nothing is eligible.

    ``in_use`` are the targets already reserved (they occupy their groups); ``exclude`` are
    remotes that must not be dialed now but do not occupy a group (e.g. connected otherwise).
    Deterministic for a given ``rng`` state and entry set (entries are ordered by key first).
    """
    pol = policy or SelectionPolicy()
    busy = [*in_use, *exclude]
    busy_keys = {(t.host.lower(), t.port) for t in busy}
    busy_onions = {t.host.lower() for t in busy if is_onion_host(t.host)}
    occupied = _occupied_groups(in_use, pol)
    own_host = own_onion.host if own_onion is not None else None
    pool = [e for e in entries
            if _eligible(e, now, busy_keys, busy_onions, occupied, pol, own_host)]
    if not pool:
        return None
    pool.sort(key=lambda e: (e.host, e.port))
    groups = [e.group for e in pool]
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    weights = [weight(e, now, pol) / sizes[g] for e, g in zip(pool, groups, strict=True)]
    return rng.choices(pool, weights=weights, k=1)[0]


def spread_violations(in_use: Iterable[Target], policy: SelectionPolicy | None = None,
                      ) -> list[str]:
    """Human-readable breaches of exclusivity/spread among ``in_use`` (empty when fine)."""
    pol = policy or SelectionPolicy()
    out: list[str] = []
    seen_remote: dict[str, Target] = {}
    seen_group: dict[str, Target] = {}
    for t in in_use:
        remote = t.host.lower() if is_onion_host(t.host) else str(t)
        if remote in seen_remote:
            out.append(f"{t} duplicates {seen_remote[remote]}")
        seen_remote[remote] = t
        if is_exempt(t.host, pol):
            continue
        g = group_of(t.host)
        if g in seen_group:
            out.append(f"{t} shares group {g} with {seen_group[g]}")
        seen_group[g] = t
    return out


class PeerStore(Protocol):
    """What :class:`BookSelector` needs from a store (``bridge.store.book.AddressBook`` has it).

    ``now`` arguments are wall-clock seconds; ``None`` lets the store read its own clock.
    """

    def entries(self, network: str, kinds: Collection[Kind] | None = None,
                ) -> list[PeerEntry]: ...

    def learn(self, network: str, host: str, port: int, *, source: str,
              now: float | None = None, addrv2: bool = False) -> bool: ...

    def record_success(self, network: str, host: str, port: int, *, now: float | None = None,
                       addrv2: bool | None = None) -> bool: ...

    def record_failure(self, network: str, host: str, port: int, *, now: float | None = None,
                       backoff: Callable[[int], float] = backoff_delay,
                       ) -> tuple[int, float] | None: ...

    def mark_self(self, network: str, host: str, port: int, is_self: bool = True) -> bool: ...

    def reset_backoff(self, network: str) -> int: ...


def _identity(now: float) -> float:
    return now


@dataclass(slots=True)
class BookSelector:
    """Drop-in for :class:`bridge.core.peers.PeerSelector`, backed by a :class:`PeerStore`.

    ``now`` values passed to the methods are in the *caller's* clock (the warm pool passes
    ``trio.current_time()``, a monotonic clock); ``to_wall`` maps them to the wall-clock seconds
    the store persists. Use a fixed offset taken once at startup, e.g.
    ``off = time.time() - trio.current_time(); to_wall=lambda t: t + off``, so backoffs stay
    consistent under trio's MockClock too. ``next_retry`` answers in the caller's clock.
    """

    store: PeerStore
    network: str
    policy: SelectionPolicy = field(default_factory=SelectionPolicy)
    rng: random.Random = field(default_factory=random.Random)
    own_onion: OnionAddress | None = None
    to_wall: Callable[[float], float] = _identity
    #: targets reserved by pick() and not yet released (pooled or relaying)
    _in_use: set[Target] = field(default_factory=set)
    #: failure counts for targets the store no longer holds (evicted while in use)
    _orphans: dict[Target, int] = field(default_factory=dict)
    #: short no-penalty retry delays (caller clock), e.g. after our own proxy failed
    _deferred: dict[Target, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise ValueError(f"unknown network {self.network!r}; allowed: {', '.join(NETWORKS)}")

    # -- PeerSelector interface ------------------------------------------------------------

    def add(self, target: Target, *, source: str = "config", now: float | None = None) -> None:
        """Add a candidate (default source ``config``; ``now`` in the caller's clock)."""
        self.store.learn(self.network, target.host, target.port, source=source,
                         now=None if now is None else self.to_wall(now))

    def pick(self, now: float, exclude: Collection[Target] = ()) -> Target | None:
        """Reserve a candidate by the module rules (mark it in use), or ``None``."""
        entries = self.store.entries(self.network, self.policy.kinds)
        waiting = {t for t, at in self._deferred.items() if at > now}
        choice = choose(entries, self.to_wall(now), self.rng, in_use=self._in_use,
                        exclude={*exclude, *waiting}, policy=self.policy,
                        own_onion=self.own_onion)
        if choice is None:
            return None
        t = choice.target
        self._in_use.add(t)
        return t

    def next_retry(self, now: float) -> float | None:
        """Earliest caller-clock time a backed-off candidate (not in use, not self) is due."""
        wall = self.to_wall(now)
        times = [e.backoff_until for e in self.store.entries(self.network, self.policy.kinds)
                 if e.backoff_until > wall and not e.is_self and e.target not in self._in_use
                 and not (self.own_onion is not None and e.host == self.own_onion.host)]
        caller = [t - wall + now for t in times]
        caller += [at for t, at in self._deferred.items() if at > now and t not in self._in_use]
        return float(min(caller)) if caller else None

    def defer(self, t: Target, now: float, delay: float) -> None:
        """Retry ``t`` after ``delay`` without counting a failure (not the peer's fault)."""
        self._deferred[t] = max(self._deferred.get(t, 0.0), now + delay)

    def forgive_all(self) -> None:
        """Clear every backoff (our Tor came back: failures meanwhile were ours)."""
        self._deferred.clear()
        self.store.reset_backoff(self.network)

    def release(self, t: Target) -> None:
        self._in_use.discard(t)

    def success(self, t: Target, now: float | None = None, *, addrv2: bool | None = None,
                ) -> None:
        self._orphans.pop(t, None)
        self.store.record_success(self.network, t.host, t.port,
                                  now=None if now is None else self.to_wall(now), addrv2=addrv2)

    def failure(self, t: Target, now: float) -> float:
        """Record a failure; returns the backoff applied (seconds)."""
        pol = self.policy

        def delay(n: int) -> float:
            return backoff_delay(n, pol.base_backoff, pol.max_backoff)

        got = self.store.record_failure(self.network, t.host, t.port, now=self.to_wall(now),
                                        backoff=delay)
        if got is not None:
            return got[1]
        # Not stored: evicted while in use, or the store could not write (disk full). Keep
        # the backoff in memory, or pick() would offer the failing peer again at once.
        n = self._orphans[t] = self._orphans.get(t, 0) + 1
        d = delay(n)
        self.defer(t, now, d)
        return d

    def mark_self(self, t: Target) -> None:
        self.store.mark_self(self.network, t.host, t.port)

    def in_use(self) -> list[Target]:
        return sorted(self._in_use, key=lambda t: (t.host, t.port))

    def snapshot(self) -> dict[str, dict[str, float | int | bool | str | None]]:
        return {
            str(e.target): {"failures": e.failures, "retry_at": e.backoff_until,
                            "in_use": e.target in self._in_use, "self": e.is_self,
                            "last_success": e.last_success, "source": e.source,
                            "addrv2": e.addrv2}
            for e in self.store.entries(self.network)
        }
