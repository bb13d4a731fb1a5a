"""Small trio helpers shared by the I/O packages (``net``, ``tor``, ``store``), which may not
import each other: :class:`~bridge.aio.sync.Signal` and :class:`~bridge.aio.sync.Latch`."""

from bridge.aio.sync import Latch, Signal

__all__ = ["Latch", "Signal"]
