"""The payload codecs the rewrite policy needs: NetAddress, Addresses and Version.

Each keeps its original bytes so an unchanged message re-encodes identically (protocol.md §4).
Not here: the wire primitives (:mod:`bridge.core.wire`) and the envelope
(:mod:`bridge.core.envelope`). Import it through :mod:`bridge.core.proto`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bridge.core.errors import DecodeError
from bridge.core.wire import (
    I32,
    I64,
    LEN,
    MAX_ADDRESSES,
    MAX_NET_ADDRESS_FIELDS,
    MAX_VERSION_FIELDS,
    VARINT,
    Field,
    TooManyFields,
    Truncated,
    decode_varint,
    encode_fields,
    encode_varint,
    first,
    make_len_field,
    make_varint_field,
    parse,
    replace_field,
)

#: Version.services bit for ADDRv2 (onion gossip) support, as in the Tor fork (protocol.md §11.1).
SERVICE_ADDRV2 = 1 << 23


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
        """Would upstream kaspad convert this entry (protocol.md §4.4)? ip 4/16 bytes, port ≤ 65535,
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
