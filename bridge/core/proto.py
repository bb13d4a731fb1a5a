"""The protobuf wire-format subset the bridge needs, with byte-exact round trips.

Messages are kept as a list of :class:`Field` values that remember their original bytes, so a
message that is decoded and re-encoded without changes comes out identical, unknown fields
included. Only the fields the rewrite policy touches are interpreted (facts §2).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from bridge.errors import DecodeError

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


@dataclass(frozen=True, slots=True)
class Field:
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
    key, pos = decode_varint(buf, pos)
    number, wire_type = key >> 3, key & 7
    if number == 0:
        raise DecodeError("field number 0")
    value: int | bytes
    if wire_type == VARINT:
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
        length, pos = decode_varint(buf, pos)
        if pos + length > len(buf):
            raise Truncated(f"field {number} length {length} runs past the end of the message")
        value, pos = bytes(buf[pos:pos + length]), pos + length
    else:
        raise DecodeError(f"unsupported wire type {wire_type} for field {number}")
    return Field(number, wire_type, value, bytes(buf[start:pos])), pos


def iter_fields(buf: bytes) -> Iterator[Field]:
    pos = 0
    while pos < len(buf):
        field, pos = _read_field(buf, pos)
        yield field


def parse(buf: bytes) -> list[Field]:
    return list(iter_fields(buf))


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
        for f in iter_fields(message):
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


@dataclass(slots=True)
class NetAddress:
    fields: list[Field]

    @classmethod
    def decode(cls, buf: bytes) -> NetAddress:
        return cls(parse(buf))

    @classmethod
    def from_ip(cls, ip: bytes, port: int) -> NetAddress:
        return cls([make_len_field(NA_IP, ip), make_varint_field(NA_PORT, port)])

    @classmethod
    def from_onion(cls, host: str, port: int) -> NetAddress:
        # Fork order: port (4) then onion (5) — prost encodes in tag order.
        return cls([make_varint_field(NA_PORT, port), make_len_field(NA_ONION, host.encode())])

    def encode(self) -> bytes:
        return encode_fields(self.fields)

    @property
    def ip(self) -> bytes | None:
        f = first(self.fields, NA_IP)
        return f.as_bytes if f is not None else None

    @property
    def onion(self) -> str | None:
        f = first(self.fields, NA_ONION)
        if f is None:
            return None
        try:
            return f.as_bytes.decode("ascii")
        except UnicodeDecodeError as exc:
            raise DecodeError("NetAddress.onion is not ASCII") from exc

    @property
    def port(self) -> int:
        f = first(self.fields, NA_PORT)
        return f.as_int if f is not None else 0

    def kaspad_accepts(self) -> bool:
        """Would upstream kaspad convert this entry (facts §2.4)? ip 4/16 bytes, port ≤ 65535,
        and every known field with its declared wire type (prost rejects the whole message
        otherwise)."""
        if first(self.fields, NA_ONION) is not None:
            return False
        for f in self.fields:
            want = _NA_WIRE.get(f.number)
            if want is not None and f.wire_type != want:
                return False
        ip = self.ip
        return ip is not None and len(ip) in (4, 16) and self.port <= 0xFFFF


_NA_WIRE = {NA_TIMESTAMP: VARINT, NA_IP: LEN, NA_PORT: VARINT, NA_ONION: LEN}


def decode_addresses(payload: bytes) -> list[NetAddress]:
    out = []
    for f in iter_fields(payload):
        if f.number == 1:
            out.append(NetAddress.decode(f.as_bytes))
    return out


def encode_addresses(entries: Iterable[NetAddress]) -> bytes:
    return b"".join(make_len_field(1, e.encode()).raw for e in entries)


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
        v = cls(parse(payload))
        # Type-check every known field (prost rejects a known field with a wrong wire type), so
        # a bad Version fails here, as the remote's fault, and never reaches kaspad.
        for f in v.fields:
            want = _VERSION_WIRE.get(f.number)
            if want is not None and f.wire_type != want:
                raise DecodeError(f"Version field {f.number} has wire type {f.wire_type}, "
                                  f"expected {want}")
        addr = first(v.fields, V_ADDRESS)
        if addr is not None:
            NetAddress.decode(addr.as_bytes)
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
        f = first(self.fields, V_ADDRESS)
        return NetAddress.decode(f.as_bytes) if f is not None else None

    @address.setter
    def address(self, value: NetAddress | None) -> None:
        new = make_len_field(V_ADDRESS, value.encode()) if value is not None else None
        self.fields = replace_field(self.fields, new, V_ADDRESS)
