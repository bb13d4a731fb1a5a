"""Protobuf wire primitives: wire types, varints, and the byte-exact :class:`Field` reader.

What :mod:`bridge.core.proto` builds on: decoding and re-encoding fields without interpreting
them, with the field-count and byte bounds the module docstring of :mod:`bridge.core.proto`
explains. Not here: KaspadMessage numbers and envelopes (:mod:`bridge.core.envelope`), the
NetAddress/Addresses/Version codecs (:mod:`bridge.core.messages`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from bridge.core.errors import DecodeError

VARINT = 0
I64 = 1
LEN = 2
I32 = 5


MAX_VARINT_BYTES = 10

# -- bounds sized to real messages (bridge.core.proto's docstring) ----------------------------
#: A KaspadMessage has one payload plus ``response_id``/``request_id``: 3 fields.
MAX_ENVELOPE_FIELDS = 8
#: A real Version has 8 to 10 fields.
MAX_VERSION_FIELDS = 64
#: A real NetAddress has 2 to 4 (timestamp, ip or onion, port).
MAX_NET_ADDRESS_FIELDS = 8
#: A whole Version KaspadMessage, inflated. Real ones are under 1 KiB.
MAX_VERSION_BYTES = 64 * 1024
#: The largest NetAddress an honest node sends: timestamp (11 bytes), a 16-byte IP (18) or a
#: v3 onion (64), port (6), with room for one more varint; about 100 bytes.
MAX_NET_ADDRESS_BYTES = 128
#: kaspad disconnects on an Addresses message with more entries (protocol.md §7.1).
MAX_ADDRESSES = 2500
#: kaspad's SendAddressesFlow cap (protocol.md §7.1)
MAX_ADDRESSES_SEND = 1000
#: A whole Addresses KaspadMessage, inflated: 2500 maximal entries (each with its 3-byte tag and
#: length) plus the envelope.
MAX_ADDRESSES_BYTES = MAX_ADDRESSES * (MAX_NET_ADDRESS_BYTES + 3) + 64


def encode_varint(value: int) -> bytes:
    if value < 0:
        value &= (1 << 64) - 1  # int64 negatives are ten-byte two's complement
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class Truncated(DecodeError):
    """The buffer ends inside a field (only an error once the whole message is there)."""


class TooManyFields(DecodeError):
    """More fields than any real message of that type has (bridge.core.proto's bounds)."""


def decode_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode a varint at ``pos``; returns ``(value, new_pos)``."""
    result = 0
    shift = 0
    end = len(buf)
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= end:
            raise Truncated("varint runs past the end of the message")
        b = buf[pos + i]
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            if result >= 1 << 64:
                raise DecodeError("varint larger than 64 bits")
            return result, pos + i + 1
        shift += 7
    raise DecodeError("varint longer than 10 bytes")


class Field(NamedTuple):
    """One field as on the wire. A named tuple: decoding builds thousands of them, and a tuple
    is several times cheaper to create than a frozen dataclass."""

    number: int
    wire_type: int
    value: int | bytes
    raw: bytes  # tag + value exactly as on the wire

    @property
    def as_int(self) -> int:
        if not isinstance(self.value, int):
            raise DecodeError(f"field {self.number} is not a scalar")
        return self.value

    @property
    def as_bytes(self) -> bytes:
        if not isinstance(self.value, bytes) or self.wire_type != LEN:
            raise DecodeError(f"field {self.number} is not length-delimited")
        return self.value


def _read_field(buf: bytes, pos: int) -> tuple[Field, int]:
    start = pos
    end = len(buf)
    if pos < end and buf[pos] < 0x80:  # one-byte key: every field the bridge reads
        key, pos = buf[pos], pos + 1
    else:
        key, pos = decode_varint(buf, pos)
    number, wire_type = key >> 3, key & 7
    if number == 0:
        raise DecodeError("field number 0")
    value: int | bytes
    if wire_type == VARINT:
        if pos < end and buf[pos] < 0x80:
            value, pos = buf[pos], pos + 1
        else:
            value, pos = decode_varint(buf, pos)
    elif wire_type == I64:
        if pos + 8 > len(buf):
            raise Truncated("fixed64 runs past the end of the message")
        value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
    elif wire_type == I32:
        if pos + 4 > len(buf):
            raise Truncated("fixed32 runs past the end of the message")
        value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
    elif wire_type == LEN:
        if pos < end and buf[pos] < 0x80:
            length, pos = buf[pos], pos + 1
        else:
            length, pos = decode_varint(buf, pos)
        if pos + length > end:
            raise Truncated(f"field {number} length {length} runs past the end of the message")
        value, pos = bytes(buf[pos:pos + length]), pos + length
    else:
        raise DecodeError(f"unsupported wire type {wire_type} for field {number}")
    return Field(number, wire_type, value, bytes(buf[start:pos])), pos


def iter_fields(buf: bytes, max_fields: int | None = None, what: str = "message"
                ) -> Iterator[Field]:
    """The fields of ``buf`` in wire order; :class:`TooManyFields` after ``max_fields``."""
    pos = 0
    count = 0
    end = len(buf)
    while pos < end:
        count += 1
        if max_fields is not None and count > max_fields:
            raise TooManyFields(f"{what} has more than {max_fields} fields")
        field, pos = _read_field(buf, pos)
        yield field


def parse(buf: bytes, max_fields: int | None = None, what: str = "message") -> list[Field]:
    return list(iter_fields(buf, max_fields, what))


def encode_fields(fields: Iterable[Field]) -> bytes:
    return b"".join(f.raw for f in fields)


def make_varint_field(number: int, value: int) -> Field:
    raw = encode_varint(number << 3 | VARINT) + encode_varint(value)
    return Field(number, VARINT, value & ((1 << 64) - 1), raw)


def make_len_field(number: int, value: bytes) -> Field:
    raw = encode_varint(number << 3 | LEN) + encode_varint(len(value)) + value
    return Field(number, LEN, value, raw)


def first(fields: Iterable[Field], number: int) -> Field | None:
    """The last occurrence wins for scalars in protobuf; we return the last one too."""
    found = None
    for f in fields:
        if f.number == number:
            found = f
    return found


def replace_field(fields: list[Field], new: Field | None, number: int) -> list[Field]:
    """Replace every ``number`` field by ``new`` (at the first one's place, or in tag order)."""
    out: list[Field] = []
    placed = new is None
    for f in fields:
        if f.number == number:
            if not placed and new is not None:
                out.append(new)
                placed = True
            continue
        if not placed and new is not None and f.number > number:
            out.append(new)
            placed = True
        out.append(f)
    if not placed and new is not None:
        out.append(new)
    return out
