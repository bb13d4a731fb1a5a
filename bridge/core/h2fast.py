"""Output-identical speed-ups for the ``h2``/``hyperframe`` versions the bridge runs on.

h2's ``H2Connection._receive_frame`` logs every received frame with
``logger.trace("Received frame: %s", repr(frame))``. The ``repr`` is built even though the
default logger discards it, and for a DATA frame hyperframe's ``_raw_data_repr`` hexlifies the
*whole* body (16 KiB per frame) only to keep its first 20 hex digits. On the relay's hot path
that is one needless 32 KiB string per relayed frame.

:func:`install` swaps ``hyperframe.frame._raw_data_repr`` for a version that hexlifies at most
the bytes it shows; its output is identical for every input (tested against the original).
Nothing else changes. It is installed when :mod:`bridge.core.relay` is imported;
:func:`uninstall` exists for the side-by-side benchmark.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable

import hyperframe.frame

_ORIGINAL: Callable[[bytes | None], str] = hyperframe.frame._raw_data_repr


def raw_data_repr(data: bytes | None) -> str:
    """``hyperframe.frame._raw_data_repr`` without hexlifying more than 11 bytes."""
    if not data:
        return "None"
    r = binascii.hexlify(data[:11]).decode("ascii")
    if len(data) > 10:  # the original's hex string is longer than 20 digits
        r = r[:20] + "..."
    return "<hex:" + r + ">"


def install() -> None:
    setattr(hyperframe.frame, "_raw_data_repr", raw_data_repr)  # noqa: B010 (typed module attr)


def uninstall() -> None:
    setattr(hyperframe.frame, "_raw_data_repr", _ORIGINAL)  # noqa: B010


def installed() -> bool:
    return hyperframe.frame._raw_data_repr is raw_data_repr
