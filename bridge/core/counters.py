"""Typed, frozen counters: the base of every component's ``stats()``.

A component holds its counters as one frozen dataclass and replaces it on each event
(:meth:`Counters.bump`), so what ``stats()`` hands out is a value that never changes under the
reader (the status snapshot, ``/metrics``), and a misspelt counter name fails loudly
(``dataclasses.replace`` refuses unknown fields) instead of starting a new key.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Self


@dataclass(frozen=True, slots=True)
class Counters:
    """Base of frozen counter sets: every field is an ``int`` counting events."""

    def bump(self, **by: int) -> Self:
        """A copy with the named counters increased (``stats.bump(taken=1)``)."""
        return replace(self, **{k: getattr(self, k) + v for k, v in by.items()})

    def __add__(self, other: Self) -> Self:
        return replace(self, **{f.name: getattr(self, f.name) + getattr(other, f.name)
                                for f in fields(self)})

    def items(self) -> list[tuple[str, int]]:
        """``(name, value)`` in declaration order (the JSON and metric label order)."""
        return [(f.name, int(getattr(self, f.name))) for f in fields(self)]

    def total(self) -> int:
        return sum(v for _, v in self.items())
