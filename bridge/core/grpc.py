"""gRPC length-prefixed message framing, incremental and sans-IO.

A gRPC message on an HTTP/2 stream is ``[flag u8][length u32 BE][payload]``; message boundaries
do not line up with DATA frames (facts §1.2). :class:`MessageReader` turns arbitrary chunks into
:class:`MessageStart` / :class:`MessageChunk` / :class:`MessageEnd` events without ever holding a
whole message, so large pass-through messages can be streamed.

:class:`PayloadSniffer` learns the KaspadMessage payload type from the first bytes of a message,
inflating only as much of a gzip message as needed (a 1 MB block is never inflated to learn it
is a block).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from bridge.core import proto
from bridge.errors import DecodeError, FramingError

PREFIX_LEN = 5
#: Decompressed bytes we are willing to look at to find the payload tag (ids + tag fit in ~30).
SNIFF_LIMIT = 64
#: Compressed bytes fed to the sniffer before we give up on a message ever revealing its type.
SNIFF_INPUT_LIMIT = 64 * 1024


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
    """Finds the payload field number of one message from its first bytes."""

    def __init__(self, compressed: bool) -> None:
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if compressed else None
        self._plain = bytearray()
        self._fed = 0
        self.tag: int | None = None

    def feed(self, data: bytes) -> int | None:
        """Feed more payload bytes; returns the tag once known."""
        if self.tag is not None:
            return self.tag
        self._fed += len(data)
        if self._inflater is None:
            self._plain += data[: SNIFF_LIMIT - len(self._plain)]
        else:
            want = SNIFF_LIMIT - len(self._plain)
            if want > 0:
                try:
                    self._plain += self._inflater.decompress(
                        self._inflater.unconsumed_tail + data, want
                    )
                except zlib.error as exc:
                    raise DecodeError(f"bad gzip data: {exc}") from exc
        self.tag = proto.peek_payload_tag(bytes(self._plain))
        if self.tag is None and (len(self._plain) >= SNIFF_LIMIT or self._fed > SNIFF_INPUT_LIMIT):
            raise DecodeError("no KaspadMessage payload found at the start of the message")
        return self.tag
