"""The KaspadMessage envelope: payload field numbers, the incremental payload-tag scanner and
:class:`Envelope` (payload plus every other field verbatim).

Not here: the wire primitives it uses (:mod:`bridge.core.wire`) and the payload codecs
(:mod:`bridge.core.messages`). Import it through :mod:`bridge.core.proto`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.core.errors import DecodeError
from bridge.core.wire import (
    I32,
    I64,
    LEN,
    MAX_ENVELOPE_FIELDS,
    MAX_VARINT_BYTES,
    VARINT,
    Field,
    TooManyFields,
    Truncated,
    decode_varint,
    encode_fields,
    iter_fields,
    make_len_field,
    parse,
)

# KaspadMessage payload field numbers (protocol.md §4.1).
ADDRESSES = 1
BLOCK = 2
REQUEST_ADDRESSES = 6
INV_RELAY_BLOCK = 14
PING = 16
PONG = 17
VERACK = 19
VERSION = 20
REJECT = 22
READY = 50
RESPONSE_ID = 101
REQUEST_ID = 102

#: Every payload number some kaspad version routes (upstream master plus the Tor fork).
KNOWN_PAYLOADS: frozenset[int] = frozenset(
    {1, 2, 3, 5, 6, 10, 12, 13, 14, 15, 16, 17, 19, 20, 21, 22, 25, 26, 27, 30, 31, 33, 34, 35,
     36, 37, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60,
     61, 63}
)

PAYLOAD_NAMES: dict[int, str] = {
    1: "Addresses", 2: "Block", 3: "Transaction", 6: "RequestAddresses", 10: "RequestRelayBlocks",
    14: "InvRelayBlock", 15: "InvTransactions", 16: "Ping", 17: "Pong", 19: "Verack",
    20: "Version", 22: "Reject", 50: "Ready",
}


def payload_name(tag: int) -> str:
    return PAYLOAD_NAMES.get(tag, f"payload#{tag}")


# --------------------------------------------------------------------------------------------
# KaspadMessage envelope


class NeedMore(Exception):
    """Not enough bytes yet to answer."""


def peek_payload_tag(prefix: bytes) -> int | None:
    """The payload field number of a (possibly partial) KaspadMessage.

    Skips the ``response_id``/``request_id`` varints that a non-prost encoder may put first.
    Returns ``None`` when ``prefix`` is too short to tell; raises :class:`DecodeError` when the
    bytes cannot be a KaspadMessage, including a message with no payload at all (an empty
    ``prefix`` that is complete has to be checked by the caller with :func:`payload_tag`).
    """
    pos = 0
    while True:
        try:
            key, after_key = decode_varint(prefix, pos)
        except Truncated:
            return None
        number, wire_type = key >> 3, key & 7
        if number in (RESPONSE_ID, REQUEST_ID):
            if wire_type != VARINT:
                raise DecodeError(f"KaspadMessage field {number} has wire type {wire_type}")
            try:
                _, pos = decode_varint(prefix, after_key)
            except Truncated:
                return None
            continue
        if number == 0:
            raise DecodeError("field number 0")
        if wire_type != LEN:
            raise DecodeError(
                f"KaspadMessage field {number} has wire type {wire_type}, expected a message"
            )
        return number


class EnvelopeScanner:
    """Follows the top-level fields of one KaspadMessage as its bytes arrive, in any chunking,
    without holding them: payload values are skipped by their length, never copied.

    :attr:`tag` is the payload number as soon as its key is complete (as
    :func:`peek_payload_tag` would say). Every later byte is still followed, so that a second
    payload field anywhere in the message raises :class:`DecodeError` before the bytes holding
    it are let through (issue 10, defect 6: protobuf keeps the *last* member of the ``payload``
    oneof, so a message classified by its first payload could reach kaspad as another type; no
    honest encoder writes two, so the bridge refuses them rather than guess). The ids must be
    varints, any other field after the payload counts against :data:`MAX_ENVELOPE_FIELDS`, and
    the work per call is bounded by the number of fields, not bytes.
    """

    __slots__ = ("_carry", "_skip", "_tag_pending", "consumed", "fields", "tag")

    #: key (≤ 10 bytes) plus a length or varint value (≤ 10 bytes)
    _MAX_HEADER = 2 * MAX_VARINT_BYTES

    def __init__(self) -> None:
        self.tag: int | None = None
        self.fields = 0
        self.consumed = 0  # bytes fed so far
        self._carry = b""  # the start of a field header cut by a chunk boundary
        self._skip = 0  # bytes of the current field's value still to skip
        self._tag_pending = False  # the carried header is the payload's (tag already set)

    @property
    def at_boundary(self) -> bool:
        """Between fields: the bytes fed so far end exactly after a whole field."""
        return not self._carry and not self._skip

    def feed(self, data: bytes | memoryview) -> None:
        n = len(data)
        self.consumed += n
        pos = 0
        while True:
            if self._skip:
                k = min(self._skip, n - pos)
                self._skip -= k
                pos += k
                if self._skip:
                    return
            if pos >= n:
                return
            head = self._carry + bytes(data[pos:pos + self._MAX_HEADER])
            try:
                used = self._header(head)
            except Truncated:
                if len(head) > self._MAX_HEADER:  # pragma: no cover - varints raise first
                    raise
                self._carry = head
                return
            pos += used - len(self._carry)
            self._carry = b""

    def _header(self, head: bytes) -> int:
        """Parse one field header at the start of ``head``; returns its length. Sets
        :attr:`_skip` to the value bytes that follow it."""
        key, pos = decode_varint(head, 0)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wire_type == LEN and number not in (RESPONSE_ID, REQUEST_ID):
            if self.tag is None:
                self.tag = number  # known from the key alone, like peek_payload_tag
                self._tag_pending = True
            elif not self._tag_pending:
                raise DecodeError(
                    f"KaspadMessage has two payloads ({payload_name(self.tag)} and "
                    f"{payload_name(number)}): protobuf would keep the last one")
            length, pos = decode_varint(head, pos)
            self._tag_pending = False
            self._count()
            self._skip = length
            return pos
        if number in (RESPONSE_ID, REQUEST_ID):
            if wire_type != VARINT:
                raise DecodeError(f"KaspadMessage field {number} has wire type {wire_type}")
        elif self.tag is None:
            raise DecodeError(
                f"KaspadMessage field {number} has wire type {wire_type}, expected a message")
        if wire_type == VARINT:
            _, pos = decode_varint(head, pos)
        elif wire_type == I64:
            self._skip = 8
        elif wire_type == I32:
            self._skip = 4
        else:
            raise DecodeError(f"unsupported wire type {wire_type} for field {number}")
        self._count()
        return pos

    def _count(self) -> None:
        self.fields += 1
        if self.fields > MAX_ENVELOPE_FIELDS:
            raise TooManyFields(f"KaspadMessage has more than {MAX_ENVELOPE_FIELDS} fields")


def payload_tag(message: bytes) -> int | None:
    """Payload number of a complete KaspadMessage, ``None`` if it has no payload."""
    tag = peek_payload_tag(message)
    if tag is None:
        # Complete message, so "too short" means: only id fields, or nothing -> no payload.
        parse(message)  # raises on real garbage
        return None
    return tag


@dataclass(slots=True)
class Envelope:
    """A decoded KaspadMessage: the payload sub-message plus every other field verbatim."""

    tag: int
    payload: bytes
    others: list[Field]

    @classmethod
    def decode(cls, message: bytes) -> Envelope:
        tag: int | None = None
        payload = b""
        others: list[Field] = []
        for f in iter_fields(message, MAX_ENVELOPE_FIELDS, "KaspadMessage"):
            if f.number in (RESPONSE_ID, REQUEST_ID) or f.wire_type != LEN:
                others.append(f)
            elif tag is None:
                tag, payload = f.number, f.as_bytes
            else:
                raise DecodeError(f"KaspadMessage has two payloads ({tag} and {f.number})")
        if tag is None:
            raise DecodeError("KaspadMessage has no payload")
        return cls(tag, payload, others)

    def encode(self) -> bytes:
        """Payload first, then the other fields (prost's tag order, protocol.md §4.3)."""
        return make_len_field(self.tag, self.payload).raw + encode_fields(self.others)
