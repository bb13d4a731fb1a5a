"""Upstream candidate selection (sans-IO: the caller passes ``now``).

Rules: one connection per remote at a time (pooled or relaying), never our own onion or a
remote found to be our own kaspad, never a target the caller excludes (``pick(now, exclude)``:
the warm pool passes the targets whose node id is connected to kaspad already, see
:mod:`bridge.core.nodes`; the same onion on another port counts as excluded), exponential backoff
after failures, round robin otherwise.
Issue C replaces the static candidate list by a persistent address book; the rules stay here.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal, Protocol

from bridge.core.onion import OnionAddress, is_onion_host

Kind = Literal["onion", "ipv4", "ipv6"]


def hostport(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets (an authority, a socket address to show)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Target:
    host: str  # onion host ("<56>.onion"), IPv4 or IPv6 literal (no brackets)
    port: int

    @property
    def is_onion(self) -> bool:
        return is_onion_host(self.host)

    @property
    def kind(self) -> Kind:
        if self.is_onion:
            return "onion"
        return "ipv6" if ":" in self.host else "ipv4"

    @property
    def authority(self) -> bytes:
        """The HTTP/2 ``:authority`` kaspad's tonic would send for this peer."""
        return hostport(self.host, self.port).encode()

    def __str__(self) -> str:
        return self.authority.decode()


class Selector(Protocol):
    """What the warm pool needs from a candidate source (PeerSelector or the address book's
    BookSelector)."""

    own_onion: OnionAddress | None

    def add(self, target: Target) -> None: ...
    def pick(self, now: float, exclude: Collection[Target] = ()) -> Target | None: ...
    def next_retry(self, now: float) -> float | None: ...
    def release(self, t: Target) -> None: ...
    def success(self, t: Target, now: float | None = None, *,
                addrv2: bool | None = None) -> None: ...
    def failure(self, t: Target, now: float) -> float: ...
    def defer(self, t: Target, now: float, delay: float) -> None: ...
    def forgive_all(self) -> None: ...
    def mark_self(self, t: Target) -> None: ...
    def snapshot(self) -> dict[str, dict[str, float | int | bool | str | None]]: ...


def filter_kinds(targets: Collection[Target], kinds: Collection[str]) -> list[Target]:
    return [t for t in targets if t.kind in kinds]


@dataclass(slots=True)
class _State:
    failures: int = 0
    retry_at: float = 0.0
    in_use: bool = False
    is_self: bool = False
    successes: int = 0


@dataclass(slots=True)
class PeerSelector:
    candidates: list[Target]
    base_backoff: float = 2.0
    max_backoff: float = 60.0
    own_onion: OnionAddress | None = None
    #: the peer networks picked now (None: every candidate); peers.sync_first narrows it
    kinds: frozenset[str] | None = None
    _state: dict[Target, _State] = field(default_factory=dict)
    _next: int = 0

    def __post_init__(self) -> None:
        for t in self.candidates:
            self._state.setdefault(t, _State())

    def add(self, target: Target) -> None:
        if target not in self._state:
            self.candidates.append(target)
            self._state[target] = _State()

    def _eligible(self, t: Target, now: float) -> bool:
        st = self._state[t]
        if st.in_use or st.is_self or st.retry_at > now:
            return False
        if self.kinds is not None and t.kind not in self.kinds:
            return False
        return not (self.own_onion is not None and t.host.lower() == self.own_onion.host)

    def pick(self, now: float, exclude: Collection[Target] = ()) -> Target | None:
        """Reserve the next eligible candidate not in ``exclude`` (mark it in use), or
        ``None``."""
        n = len(self.candidates)
        onions = {t.host.lower() for t in exclude if t.is_onion}
        for i in range(n):
            t = self.candidates[(self._next + i) % n]
            if t in exclude or (onions and t.host.lower() in onions):
                continue
            if self._eligible(t, now):
                self._next = (self._next + i + 1) % n
                self._state[t].in_use = True
                return t
        return None

    def next_retry(self, now: float) -> float | None:
        """Earliest time a currently backed-off candidate becomes eligible."""
        times = [s.retry_at for t, s in self._state.items()
                 if not s.in_use and not s.is_self and s.retry_at > now]
        return float(min(times)) if times else None

    def release(self, t: Target) -> None:
        self._state[t].in_use = False

    def success(self, t: Target, now: float | None = None, *, addrv2: bool | None = None) -> None:
        st = self._state[t]
        st.failures = 0
        st.retry_at = 0.0
        st.successes += 1

    def failure(self, t: Target, now: float) -> float:
        """Record a failure; returns the backoff applied."""
        st = self._state[t]
        st.failures += 1
        delay = min(self.max_backoff, self.base_backoff * float(2 ** min(st.failures - 1, 30)))
        st.retry_at = now + delay
        return delay

    def defer(self, t: Target, now: float, delay: float) -> None:
        """Retry ``t`` after ``delay`` without counting a failure (not the peer's fault)."""
        st = self._state[t]
        st.retry_at = max(st.retry_at, now + delay)

    def forgive_all(self) -> None:
        """Clear every backoff (e.g. our Tor came back: failures meanwhile were ours)."""
        for st in self._state.values():
            st.failures = 0
            st.retry_at = 0.0

    def mark_self(self, t: Target) -> None:
        self._state[t].is_self = True

    def in_use(self) -> list[Target]:
        return [t for t, s in self._state.items() if s.in_use]

    def snapshot(self) -> dict[str, dict[str, float | int | bool | str | None]]:
        return {
            str(t): {"failures": s.failures, "retry_at": s.retry_at, "in_use": s.in_use,
                     "self": s.is_self, "successes": s.successes}
            for t, s in self._state.items()
        }
