"""What an input costs: event-loop stall, Python memory, process RSS.

Hostile-input tests assert a *bound on cost*, not only which error escapes (issue G): a cheap
input with an expensive effect (a 4 KB gzip bomb that freezes the loop for 5 s, a PING flood that
grows memory without a ceiling) must fail a test.

- :class:`StallMeter` is a trio instrument: the longest single task step while installed (a step
  is the code between two awaits; a long one stalls every connection and ``/health``).
- :func:`python_memory` measures the peak of Python allocations (``tracemalloc``) during a block;
  use it for sans-IO code (no threads, no sockets).
- :func:`rss_bytes` is the process resident set (``/proc/self/statm``), for daemons and
  subprocesses (``rss_bytes(pid)``).
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import trio

_PAGE = os.sysconf("SC_PAGE_SIZE")


class StallMeter(trio.abc.Instrument):
    """Longest task step (seconds) and the task that took it. Install with
    ``trio.lowlevel.add_instrument(meter)`` or use :meth:`installed`."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.longest_task = ""
        self.steps = 0
        self._start: float | None = None

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._start = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._start is None:
            return
        took = time.perf_counter() - self._start
        self._start = None
        self.steps += 1
        if took > self.longest:
            self.longest, self.longest_task = took, task.name

    def reset(self) -> None:
        self.longest, self.longest_task, self.steps = 0.0, "", 0

    @contextmanager
    def installed(self) -> Iterator[StallMeter]:
        trio.lowlevel.add_instrument(self)
        try:
            yield self
        finally:
            trio.lowlevel.remove_instrument(self)

    def __str__(self) -> str:
        return f"longest task step {self.longest * 1000:.1f} ms ({self.longest_task})"


@dataclass
class MemoryUse:
    """Python allocations during a block: ``peak`` above the level at its start, and what was
    still allocated at its end (``kept``), in bytes."""

    peak: int = 0
    kept: int = 0


@contextmanager
def python_memory() -> Iterator[MemoryUse]:
    """Measure Python allocations (``tracemalloc``) inside the block. Nestable with a running
    tracemalloc (it is left running if it was)."""
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    use = MemoryUse()
    try:
        yield use
    finally:
        current, peak = tracemalloc.get_traced_memory()
        use.peak, use.kept = max(0, peak - base), max(0, current - base)
        if not was:
            tracemalloc.stop()


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of ``pid`` (default: this process), in bytes."""
    with open(f"/proc/{pid or 'self'}/statm") as f:
        return int(f.read().split()[1]) * _PAGE
