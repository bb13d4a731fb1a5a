"""Prometheus-style histograms, sans-IO: bounded memory whatever is observed.

A :class:`Histogram` counts observations into fixed buckets (upper bounds, inclusive, as
Prometheus' ``le``) and keeps their sum; :meth:`Histogram.snapshot` gives a frozen
:class:`HistogramSnapshot` that ``/metrics`` renders. The shell measures (it owns the clock) and
observes; the relay's message timing (:class:`bridge.core.legs.Pipe`) gets its clock handed in.
Nothing here reads a clock.

These replace per-connection series (a label value per connection grows without bound in a
time-series database): dial latency, time to the first warm upstream and message relay latency
are distributions over all connections.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

__all__ = ["DIAL_BUCKETS", "RELAY_BUCKETS", "WARM_BUCKETS", "Histogram", "HistogramSnapshot"]

#: Upstream dials (SOCKS5 through Tor: a new circuit, up to an onion's rendezvous).
DIAL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
#: From Tor usable to the next warm upstream (descriptors, circuits, SOCKS, HTTP/2 preface).
WARM_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: A gRPC message inside the bridge: first byte in to last byte handed on.
RELAY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """``counts[i]``: observations in bucket ``i`` (not cumulative); the last one counts
    those above every bound (``+Inf``)."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` per bucket, ``+Inf`` last (Prometheus' layout)."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> HistogramSnapshot:
        return cls(bounds, (0,) * (len(bounds) + 1))


class Histogram:
    """Counts observations into buckets (``bounds``: increasing upper bounds)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("bucket bounds must be increasing")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """One observation (a negative one, from a clock that stepped back, counts as 0)."""
        if value < 0:
            value = 0.0
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.sum)
