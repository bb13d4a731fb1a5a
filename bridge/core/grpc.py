"""gRPC length-prefixed message framing, incremental and sans-IO.

A gRPC message on an HTTP/2 stream is ``[flag u8][length u32 BE][payload]``; message boundaries
do not line up with DATA frames (protocol.md §2.2). :class:`MessageReader` turns any chunks into
:class:`MessageStart` / :class:`MessageChunk` / :class:`MessageEnd` events without ever holding a
whole message, so large pass-through messages can be streamed.

:class:`PayloadSniffer` learns the KaspadMessage payload type from the first bytes of a message,
and then follows the rest of it (:class:`~bridge.core.proto.EnvelopeScanner`) so that a message
with a second payload field is refused before its last bytes are let through (issue 10, defect
6). A gzip message is inflated for that as it streams, piece by piece, into nothing: the
inflated bytes are scanned and dropped, never held. What a sender can make the bridge inflate is
bounded by an :class:`InflateBudget` (issue 10, defect 2): a token bucket that allows
:data:`INFLATE_RATIO` inflated bytes per compressed byte received, with a burst of
:data:`INFLATE_BURST`. Real kaspad messages are hashes, keys and signatures that deflate cannot
shrink more than a few times; only a block carrying a large all-zero transaction payload comes
near the ratio, and a whole block (under 1 MiB) fits in the burst. A gzip bomb (1032:1) runs out
of tokens after a few MiB and closes that connection, and no single call inflates more than the
burst plus what its own input earns.
"""

from __future__ import annotations

import importlib
import os
import zlib
from dataclasses import dataclass
from typing import Any

from bridge.core import proto
from bridge.core.errors import DecodeError, FramingError

PREFIX_LEN = 5
#: Decompressed bytes we are willing to look at to find the payload tag (ids + tag fit in ~30).
SNIFF_LIMIT = 64
#: Compressed bytes fed to the sniffer before we give up on a message ever revealing its type.
SNIFF_INPUT_LIMIT = 64 * 1024
#: Inflated bytes allowed per compressed byte received, in the long run (module docstring).
INFLATE_RATIO = 64
#: ... and the bucket's size: what may be inflated ahead of that ratio.
INFLATE_BURST = 4 * 1024 * 1024
#: Largest piece inflated (and scanned, then dropped) at a time.
INFLATE_PIECE = 256 * 1024
#: ... while the payload tag is still unknown (it sits in the first few dozen bytes).
SNIFF_PIECE = 4096
#: kaspad's own limit on a decoded message (1 GiB, as tonic is configured, protocol.md §2.3).
MAX_INFLATED = 1 << 30


def _inflate_module() -> Any:
    """The zlib module the payload sniffer inflates with: ``zlib_ng.zlib_ng`` when installed
    (the optional ``speed`` extra; the same inflated bytes, 2-2.5x less CPU on the relay's
    hottest call), else the standard library's. ``BRIDGE_FASTPATH=0`` forces the latter (the
    side-by-side benchmark's "before", see :mod:`bridge.core.fastpath`)."""
    if os.environ.get("BRIDGE_FASTPATH", "1") != "0":
        try:
            return importlib.import_module("zlib_ng.zlib_ng")
        except ImportError:
            pass
    return zlib


_INFLATE: Any = _inflate_module()
_INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, _INFLATE.error)


@dataclass(frozen=True, slots=True)
class MessageStart:
    compressed: bool
    length: int
    prefix: bytes  # the original 5 bytes


@dataclass(frozen=True, slots=True)
class MessageChunk:
    data: bytes


@dataclass(frozen=True, slots=True)
class MessageEnd:
    pass


Event = MessageStart | MessageChunk | MessageEnd


def frame(payload: bytes, *, compressed: bool = False) -> bytes:
    return bytes([1 if compressed else 0]) + len(payload).to_bytes(4, "big") + payload


def gzip_compress(payload: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(payload) + c.flush()


def gzip_bound(plain: int) -> int:
    """The largest gzip encoding of ``plain`` bytes an honest encoder writes (zlib's
    ``compressBound`` plus the gzip header and trailer, with room for a file name)."""
    return plain + (plain >> 12) + (plain >> 14) + (plain >> 25) + 13 + 18 + 64


@dataclass(slots=True)
class InflateBudget:
    """What one sender may still make the bridge inflate: a token bucket that starts full at
    ``burst`` and earns ``ratio`` tokens per compressed byte received (module docstring). One per
    direction of a relay, shared by all the messages on it."""

    burst: int = INFLATE_BURST
    ratio: int = INFLATE_RATIO
    tokens: int = -1  # -1: start full
    #: inflated bytes so far (for the status page and tests)
    inflated: int = 0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def earn(self, compressed: int) -> None:
        self.tokens = min(self.burst, self.tokens + self.ratio * compressed)

    def spend(self, inflated: int) -> None:
        self.inflated += inflated
        self.tokens -= inflated
        if self.tokens < 0:
            raise DecodeError(
                f"gzip data inflates more than {self.ratio}:1 beyond a burst of {self.burst} "
                "bytes (a compression bomb)")


def gzip_decompress(data: bytes, limit: int) -> bytes:
    """Inflate a whole gzip message, refusing to produce more than ``limit`` bytes."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise DecodeError(f"bad gzip data: {exc}") from exc
    if len(out) > limit:
        raise DecodeError(f"message inflates to more than {limit} bytes")
    if not d.eof:
        raise DecodeError("truncated gzip data")
    if d.unused_data:
        raise DecodeError("trailing bytes after gzip data")
    return out


class MessageReader:
    """Splits a byte stream into gRPC message events.

    ``max_length`` is checked on the length prefix before any payload is read (as tonic does).
    """

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self._prefix = bytearray()
        self._remaining = -1  # -1: reading a prefix
        self.messages = 0

    @property
    def at_boundary(self) -> bool:
        return self._remaining < 0 and not self._prefix

    def feed(self, data: bytes | memoryview) -> list[Event]:
        events: list[Event] = []
        view = memoryview(data)
        while view:
            if self._remaining < 0:
                need = PREFIX_LEN - len(self._prefix)
                self._prefix += view[:need]
                view = view[need:]
                if len(self._prefix) < PREFIX_LEN:
                    break
                flag = self._prefix[0]
                length = int.from_bytes(self._prefix[1:5], "big")
                if flag not in (0, 1):
                    raise FramingError(f"gRPC compressed-flag byte is {flag}, must be 0 or 1")
                if length > self.max_length:
                    raise FramingError(
                        f"gRPC message length {length} exceeds the limit of {self.max_length}"
                    )
                events.append(MessageStart(flag == 1, length, bytes(self._prefix)))
                self._prefix.clear()
                self._remaining = length
                if length == 0:
                    events.append(MessageEnd())
                    self._remaining = -1
                    self.messages += 1
                continue
            take = min(self._remaining, len(view))
            events.append(MessageChunk(bytes(view[:take])))
            view = view[take:]
            self._remaining -= take
            if self._remaining == 0:
                events.append(MessageEnd())
                self._remaining = -1
                self.messages += 1
        return events


class PayloadSniffer:
    """Finds the payload field number of one message from its first bytes, and follows the
    rest of the message to refuse a second payload (module docstring).

    Feed it every byte of the message, in order, *before* passing them on: :meth:`feed` raises
    :class:`DecodeError` on a chunk that holds something the bridge must not forward. A gzip
    message is inflated within ``budget`` (a fresh :class:`InflateBudget` if none is given; a
    relay passes the one of its direction) and at most ``max_inflated`` bytes in all.

    With ``pause_at_tag`` (the relay's pipes), a gzip message's inflating pauses once the tag
    is known: :meth:`follow` resumes it (the message is passed on and must be followed to its
    end); a message that is decoded whole instead (a rewrite, with its own bounds) never pays
    for inflating the rest here."""

    def __init__(self, compressed: bool, budget: InflateBudget | None = None, *,
                 max_inflated: int = MAX_INFLATED, pause_at_tag: bool = False) -> None:
        self._inflater = _INFLATE.decompressobj(16 + zlib.MAX_WBITS) if compressed else None
        self.budget = budget if budget is not None else InflateBudget()
        self.max_inflated = max_inflated
        self.scanner = proto.EnvelopeScanner()
        self._fed = 0
        #: compressed input not inflated yet (paused at the tag, see :meth:`follow`)
        self._tail = b""
        self._paused = False
        self._following = not pause_at_tag

    def follow(self) -> None:
        """The message is passed on: inflate (and scan) all of it from now on, starting with
        what was held back since the tag was found. Raises :class:`DecodeError` as
        :meth:`feed` does."""
        self._following = True
        if self._paused:  # (zlib may hold output even when no input is left)
            self._paused = False
            self._inflate(b"")

    @property
    def tag(self) -> int | None:
        return self.scanner.tag

    def feed(self, data: bytes) -> int | None:
        """Feed more payload bytes; returns the tag once known."""
        self._fed += len(data)
        if self._inflater is None:
            self.scanner.feed(data)
        elif data:
            self._inflate(data)
        if self.scanner.tag is None and (
                self.scanner.consumed >= SNIFF_LIMIT or self._fed > SNIFF_INPUT_LIMIT):
            raise DecodeError("no KaspadMessage payload found at the start of the message")
        return self.scanner.tag

    def _inflate(self, data: bytes) -> None:
        inflater = self._inflater
        assert inflater is not None
        if inflater.eof and (data or self._tail):
            raise DecodeError("trailing bytes after gzip data")
        budget = self.budget
        budget.earn(len(data))
        pending = self._tail + data if self._tail else data
        self._tail = b""
        while True:
            if self.scanner.tag is not None and not self._following:
                self._tail = bytes(pending)  # paused until follow()
                self._paused = True
                return
            # one byte over what the budget allows, to learn whether there is more
            piece = INFLATE_PIECE if self.scanner.tag is not None else SNIFF_PIECE
            want = min(piece, max(budget.tokens, 0) + 1)
            try:
                out = inflater.decompress(pending, want)
            except _INFLATE_ERRORS as exc:
                raise DecodeError(f"bad gzip data: {exc}") from exc
            pending = inflater.unconsumed_tail
            if out:
                budget.spend(len(out))
                if self.scanner.consumed + len(out) > self.max_inflated:
                    raise DecodeError(f"message inflates to more than {self.max_inflated} bytes")
                self.scanner.feed(out)
                if self.scanner.tag is None and self.scanner.consumed >= SNIFF_LIMIT:
                    return  # feed() reports it
            if inflater.eof:
                if inflater.unused_data:
                    raise DecodeError("trailing bytes after gzip data")
                return
            if not pending and len(out) < want:
                return
