"""Re-armable events: the two ways the shell wakes a task when something changed.

A :class:`trio.Event` fires once. The shell needs two kinds that fire again and again:

- :class:`Signal` (*broadcast*): :meth:`Signal.notify` wakes every task waiting at that moment
  and re-arms at once; a task that starts waiting afterwards waits for the next notify. The
  pattern is "check the state, and if it is not what I need, wait for a change": with trio's
  cooperative scheduling nothing can change between the check and :meth:`Signal.wait` (no
  checkpoint in between), so no change is missed. Used for "the pool changed", "the Tor status
  changed", "the relay made progress".
- :class:`Latch` (*auto-reset*): :meth:`Latch.set` is remembered until one :meth:`Latch.wait`
  returns, which re-arms it. Used where one task is kicked by others and must not miss a kick
  that came while it was busy (a writer told that its side has something to write).
"""

from __future__ import annotations

import trio


class Signal:
    """A broadcast event that re-arms itself: :meth:`notify` wakes the current waiters."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        """Wake every task in :meth:`wait` now; later waiters wait for the next notify."""
        event, self._event = self._event, trio.Event()
        event.set()

    async def wait(self) -> None:
        """Until the next :meth:`notify`."""
        await self._event.wait()


class Latch:
    """An auto-reset event: a :meth:`set` stays set until one :meth:`wait` has returned."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        """Return once set (at once if set already), and re-arm."""
        await self._event.wait()
        self._event = trio.Event()


__all__ = ["Latch", "Signal"]
