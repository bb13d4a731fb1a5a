"""The protobuf wire-format subset the bridge needs, with byte-exact round trips.

Messages are kept as a list of :class:`Field` values that remember their original bytes, so a
message that is decoded and re-encoded without changes comes out identical, unknown fields
included. Only the fields the rewrite policy touches are interpreted (facts §2).

Bounded decoding (issue 10, defects 2, 3 and 6; docs/fuzzing.md, "Costs"). Whatever a peer sends,
the work done here is bounded by the shape of real messages, not by the size of the input: an
envelope has at most :data:`MAX_ENVELOPE_FIELDS` fields, a Version :data:`MAX_VERSION_FIELDS`, a
NetAddress :data:`MAX_NET_ADDRESS_FIELDS`, and :func:`decode_addresses` counts the entries by their
tags before it builds any (:class:`TooManyAddresses`). A message made of millions of tiny fields
(a gzip bomb inflates to that) fails after a few dozen of them instead of building millions of
objects. The byte caps for what the bridge inflates are :data:`MAX_VERSION_BYTES` and
:data:`MAX_ADDRESSES_BYTES`.

Repeated fields follow protobuf: the last occurrence of a scalar wins (:func:`first`), and two
occurrences of an embedded message merge (``Version.address`` is decoded from all of them
concatenated), so what the bridge checks is what kaspad decodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from bridge.core.errors import DecodeError

VARINT = 0
I64 = 1
LEN = 2
I32 = 5

# KaspadMessage payload field numbers (facts §2.1).
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

#: Version.services bit announcing ADDRv2 (onion gossip) support, as in the RK Tor fork (§8.2).
SERVICE_ADDRV2 = 1 << 23

MAX_VARINT_BYTES = 10

# -- bounds sized to real messages (module docstring) -----------------------------------------
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
#: kaspad disconnects on an Addresses message with more entries (facts §4.1).
MAX_ADDRESSES = 2500
#: kaspad's SendAddressesFlow cap (facts §4.1)
MAX_ADDRESSES_SEND = 1000
#: A whole Addresses KaspadMessage, inflated: 2500 maximal entries (each with its 3-byte tag and
#: length) plus the envelope.
MAX_ADDRESSES_BYTES = MAX_ADDRESSES * (MAX_NET_ADDRESS_BYTES + 3) + 64


def payload_name(tag: int) -> str:
    return PAYLOAD_NAMES.get(tag, f"payload#{tag}")


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
    """More fields than any real message of that type has (the module docstring's bounds)."""


class TooManyAddresses(DecodeError):
    """An Addresses message with more entries than kaspad accepts, found by counting tags
    before any entry was decoded. ``count`` is exact up to four times the limit."""

    def __init__(self, count: int, limit: int, *, exact: bool = True) -> None:
        what = f"{count}" if exact else f"more than {count}"
        self.what = f"{what} addresses (kaspad's limit is {limit})"
        super().__init__(f"Addresses has {what} entries; kaspad disconnects above {limit}")
        self.count = count
        self.limit = limit
        self.exact = exact


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
        """Payload first, then the other fields (prost's tag order, facts §2.3)."""
        return make_len_field(self.tag, self.payload).raw + encode_fields(self.others)


# --------------------------------------------------------------------------------------------
# NetAddress / AddressesMessage / VersionMessage


NA_TIMESTAMP = 1
NA_IP = 3
NA_PORT = 4
NA_ONION = 5


class NetAddress:
    """One NetAddress, kept byte-exact (its fields, or the bytes it was decoded from).

    :meth:`decode` reads a canonical entry (timestamp, ip, port, onion, each once at most,
    with their declared wire types: what every real node sends) in one pass without building
    :class:`Field` values, which are made only if :attr:`fields` is asked for. Anything else
    is decoded field by field, as before."""

    __slots__ = ("_fields", "_ip", "_onion", "_port", "_raw")

    def __init__(self, fields: list[Field]) -> None:
        self._fields: list[Field] | None = fields
        self._raw: bytes | None = None
        self._ip: bytes | None = None
        self._port = 0
        self._onion: bytes | None = None

    @property
    def fields(self) -> list[Field]:
        if self._fields is None:
            assert self._raw is not None
            self._fields = parse(self._raw)
        return self._fields

    @fields.setter
    def fields(self, value: list[Field]) -> None:
        self._fields, self._raw = value, None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NetAddress):
            return NotImplemented
        return self.encode() == other.encode()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    def __repr__(self) -> str:
        return f"NetAddress({self.encode().hex()})"

    @classmethod
    def decode(cls, buf: bytes) -> NetAddress:
        fast = _decode_canonical(buf)
        if fast is not None:
            return fast
        return cls(parse(buf, MAX_NET_ADDRESS_FIELDS, "NetAddress"))

    @classmethod
    def from_ip(cls, ip: bytes, port: int) -> NetAddress:
        return cls([make_len_field(NA_IP, ip), make_varint_field(NA_PORT, port)])

    @classmethod
    def from_onion(cls, host: str, port: int) -> NetAddress:
        # Fork order: port (4) then onion (5) — prost encodes in tag order.
        return cls([make_varint_field(NA_PORT, port), make_len_field(NA_ONION, host.encode())])

    def encode(self) -> bytes:
        if self._raw is not None:
            return self._raw
        return encode_fields(self.fields)

    @property
    def ip(self) -> bytes | None:
        if self._raw is not None:
            return self._ip
        f = first(self.fields, NA_IP)
        return f.as_bytes if f is not None else None

    @property
    def onion(self) -> str | None:
        if self._raw is not None:
            raw = self._onion
        else:
            f = first(self.fields, NA_ONION)
            raw = f.as_bytes if f is not None else None
        if raw is None:
            return None
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise DecodeError("NetAddress.onion is not ASCII") from exc

    @property
    def port(self) -> int:
        if self._raw is not None:
            return self._port
        f = first(self.fields, NA_PORT)
        return f.as_int if f is not None else 0

    def kaspad_accepts(self) -> bool:
        """Would upstream kaspad convert this entry (facts §2.4)? ip 4/16 bytes, port ≤ 65535,
        and every known field with its declared wire type (prost rejects the whole message
        otherwise)."""
        if self._raw is not None:  # canonical: wire types were checked while decoding
            ip = self._ip
            return (self._onion is None and ip is not None and len(ip) in (4, 16)
                    and self._port <= 0xFFFF)
        if first(self.fields, NA_ONION) is not None:
            return False
        for f in self.fields:
            want = _NA_WIRE.get(f.number)
            if want is not None and f.wire_type != want:
                return False
        ip = self.ip
        return ip is not None and len(ip) in (4, 16) and self.port <= 0xFFFF


def _decode_canonical(buf: bytes) -> NetAddress | None:
    """The one-pass reading of a canonical NetAddress (see :class:`NetAddress`), or ``None``
    when ``buf`` is anything else (then it is decoded field by field)."""
    pos = 0
    end = len(buf)
    seen = 0
    ip: bytes | None = None
    onion: bytes | None = None
    port = 0
    while pos < end:
        key = buf[pos]
        pos += 1
        bit = 1 << (key >> 3)
        if seen & bit or key & 0x80:
            return None  # a repeated field or a long key: not canonical
        seen |= bit
        if key in (0x08, 0x20):  # timestamp, port: varint
            value = 0
            shift = 0
            while True:
                if pos >= end or shift > 63:
                    return None
                b = buf[pos]
                pos += 1
                value |= (b & 0x7F) << shift
                if not b & 0x80:
                    break
                shift += 7
            if value >> 64:
                return None
            if key == 0x20:
                port = value
        elif key in (0x1A, 0x2A):  # ip, onion: length-delimited
            if pos >= end:
                return None
            length = buf[pos]
            pos += 1
            if length & 0x80 or pos + length > end:
                return None
            value_bytes = buf[pos:pos + length]
            pos += length
            if key == 0x1A:
                ip = value_bytes
            else:
                onion = value_bytes
        else:
            return None
    na = NetAddress.__new__(NetAddress)
    na._fields = None
    na._raw = bytes(buf)
    na._ip, na._port, na._onion = ip, port, onion
    return na


_NA_WIRE = {NA_TIMESTAMP: VARINT, NA_IP: LEN, NA_PORT: VARINT, NA_ONION: LEN}


def _skip_field(buf: bytes, pos: int, end: int) -> tuple[int, int, int, int]:
    """Read one field's key and skip its value without copying it: returns
    ``(number, wire_type, value_start, next_pos)``."""
    if pos < end and buf[pos] < 0x80:
        key, pos = buf[pos], pos + 1
    else:
        key, pos = decode_varint(buf, pos)
    number, wire_type = key >> 3, key & 7
    if number == 0:
        raise DecodeError("field number 0")
    start = pos
    if wire_type == LEN:
        if pos < end and buf[pos] < 0x80:
            length, pos = buf[pos], pos + 1
        else:
            length, pos = decode_varint(buf, pos)
        start = pos
        pos += length
    elif wire_type == VARINT:
        _, pos = decode_varint(buf, pos)
    elif wire_type == I64:
        pos += 8
    elif wire_type == I32:
        pos += 4
    else:
        raise DecodeError(f"unsupported wire type {wire_type} for field {number}")
    if pos > end:
        raise Truncated(f"field {number} runs past the end of the message")
    return number, wire_type, start, pos


def count_addresses(payload: bytes, limit: int = MAX_ADDRESSES) -> list[tuple[int, int]]:
    """Where the entries of an AddressesMessage are (``(start, end)`` of each NetAddress), found
    from the tags alone, without copying or decoding any entry.

    A first pass only counts (nothing is allocated): more than ``limit`` raises
    :class:`TooManyAddresses`; that count goes on, cheaply, up to four times the limit so the
    error says how many. Other fields count too, so a payload of tiny unknown fields costs no
    more than one of entries."""
    pos = 0
    end = len(payload)
    scanned = 0
    stop = 4 * limit
    count = 0
    while pos < end:
        scanned += 1
        if scanned > stop:
            if count > limit:
                raise TooManyAddresses(stop, limit, exact=False)
            raise TooManyFields(f"AddressesMessage has more than {stop} fields")
        number, wire_type, _, pos = _skip_field(payload, pos, end)
        if number == 1:
            if wire_type != LEN:
                raise DecodeError("field 1 is not length-delimited")
            count += 1
    if count > limit:
        raise TooManyAddresses(count, limit)
    spans: list[tuple[int, int]] = []
    pos = 0
    while pos < end:
        number, _, start, pos = _skip_field(payload, pos, end)
        if number == 1:
            spans.append((start, pos))
    return spans


def decode_addresses(payload: bytes, max_entries: int = MAX_ADDRESSES) -> list[NetAddress]:
    """The entries of an AddressesMessage, in order.

    The entries are counted first (:func:`count_addresses`): more than ``max_entries`` raises
    :class:`TooManyAddresses` before any is decoded. Identical entries are decoded once and
    share one :class:`NetAddress` (do not mutate the entries of a decoded message), so
    thousands of copies of one entry (what a small gzip message inflates to) cost a dict lookup
    each."""
    spans = count_addresses(payload, max_entries)
    out: list[NetAddress] = []
    seen: dict[bytes, NetAddress] = {}
    for start, stop in spans:
        raw = payload[start:stop]
        na = seen.get(raw)
        if na is None:
            na = seen[raw] = NetAddress.decode(raw)
        out.append(na)
    return out


def encode_addresses(entries: Iterable[NetAddress]) -> bytes:
    out = []
    for e in entries:
        raw = e.encode()
        n = len(raw)
        out.append(bytes((0x0A, n)) if n < 0x80 else b"\x0a" + encode_varint(n))
        out.append(raw)
    return b"".join(out)


V_PROTOCOL = 1
V_SERVICES = 2
V_TIMESTAMP = 3
V_ADDRESS = 4
V_ID = 5
V_USER_AGENT = 6
V_NETWORK = 10
_VERSION_WIRE = {V_PROTOCOL: VARINT, V_SERVICES: VARINT, V_TIMESTAMP: VARINT, V_ADDRESS: LEN,
                 V_ID: LEN, V_USER_AGENT: LEN, 8: VARINT, 9: LEN, V_NETWORK: LEN}


@dataclass(slots=True)
class Version:
    fields: list[Field]

    @classmethod
    def decode(cls, payload: bytes) -> Version:
        v = cls(parse(payload, MAX_VERSION_FIELDS, "Version"))
        # Type-check every known field (prost rejects a known field with a wrong wire type), so
        # a bad Version fails here, as the remote's fault, and never reaches kaspad.
        for f in v.fields:
            want = _VERSION_WIRE.get(f.number)
            if want is not None and f.wire_type != want:
                raise DecodeError(f"Version field {f.number} has wire type {f.wire_type}, "
                                  f"expected {want}")
        v.address  # noqa: B018 - decodes it (all occurrences merged), raising if it cannot
        return v

    def encode(self) -> bytes:
        return encode_fields(self.fields)

    def _int(self, num: int) -> int:
        f = first(self.fields, num)
        return f.as_int if f is not None else 0

    def _str(self, num: int) -> str:
        f = first(self.fields, num)
        return f.as_bytes.decode("utf-8", "replace") if f is not None else ""

    @property
    def protocol_version(self) -> int:
        return self._int(V_PROTOCOL)

    @property
    def services(self) -> int:
        return self._int(V_SERVICES)

    @services.setter
    def services(self, value: int) -> None:
        self.fields = replace_field(
            self.fields, make_varint_field(V_SERVICES, value) if value else None, V_SERVICES
        )

    @property
    def addrv2(self) -> bool:
        return bool(self.services & SERVICE_ADDRV2)

    @property
    def node_id(self) -> bytes:
        f = first(self.fields, V_ID)
        return f.as_bytes if f is not None else b""

    @property
    def network(self) -> str:
        return self._str(V_NETWORK)

    @property
    def user_agent(self) -> str:
        return self._str(V_USER_AGENT)

    @property
    def address(self) -> NetAddress | None:
        """The address kaspad decodes: protobuf merges repeated occurrences of an embedded
        message, which is decoding them concatenated (the setter replaces them all)."""
        parts = [f.as_bytes for f in self.fields if f.number == V_ADDRESS]
        if not parts:
            return None
        return NetAddress.decode(parts[0] if len(parts) == 1 else b"".join(parts))

    @address.setter
    def address(self, value: NetAddress | None) -> None:
        new = make_len_field(V_ADDRESS, value.encode()) if value is not None else None
        self.fields = replace_field(self.fields, new, V_ADDRESS)
