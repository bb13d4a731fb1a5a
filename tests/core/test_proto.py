"""Tests for bridge.core.proto: the byte-exact protobuf wire subset.

Encodings are cross-checked against Google's protobuf runtime, using the repo's kaspad protos
(``bridge.rig.proto_gen``) and ``UnknownFieldSet`` for schema-less parsing.
"""

from __future__ import annotations

import os

import pytest
from google.protobuf import empty_pb2
from google.protobuf.unknown_fields import UnknownFieldSet
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core import proto
from bridge.core.errors import DecodeError
from bridge.core.onion import OnionAddress
from bridge.rig.proto_gen import pb

U64 = (1 << 64) - 1
MAX_FIELD = (1 << 29) - 1

ONION = OnionAddress.from_pubkey(bytes(range(32)))


# --------------------------------------------------------------------------------------------
# strategies


def _varint_raw(value: int, pad: int) -> bytes:
    """``value`` as a varint, made ``pad`` bytes longer with non-minimal continuation bytes."""
    raw = bytearray(proto.encode_varint(value))
    pad = min(pad, proto.MAX_VARINT_BYTES - len(raw))
    if pad > 0:
        raw[-1] |= 0x80
        raw += b"\x80" * (pad - 1) + b"\x00"
    return bytes(raw)


@st.composite
def varint_raw(draw: st.DrawFn, max_value: int = U64) -> tuple[int, bytes]:
    value = draw(st.integers(0, max_value))
    pad = draw(st.sampled_from([0, 0, 0, 1, 3]))
    return value, _varint_raw(value, pad)


@st.composite
def wire_field(draw: st.DrawFn, numbers: st.SearchStrategy[int] | None = None
               ) -> tuple[int, int, int | bytes, bytes]:
    """(number, wire_type, value, raw) of one wire-valid field, possibly non-minimally encoded."""
    number = draw(numbers if numbers is not None else st.integers(1, MAX_FIELD))
    wire_type = draw(st.sampled_from([proto.VARINT, proto.I64, proto.LEN, proto.I32]))
    key = _varint_raw(number << 3 | wire_type, draw(st.sampled_from([0, 0, 0, 1])))
    if len(key) > 5:  # protobuf (upb) caps keys at 5 bytes; prost and we accept up to 10
        key = proto.encode_varint(number << 3 | wire_type)
    value: int | bytes
    if wire_type == proto.VARINT:
        value, body = draw(varint_raw())
    elif wire_type == proto.I64:
        value = draw(st.integers(0, U64))
        body = value.to_bytes(8, "little")
    elif wire_type == proto.I32:
        value = draw(st.integers(0, (1 << 32) - 1))
        body = value.to_bytes(4, "little")
    else:
        value = draw(st.binary(max_size=40))
        body = _varint_raw(len(value), draw(st.sampled_from([0, 0, 1]))) + value
    return number, wire_type, value, key + body


wire_messages = st.lists(wire_field(), max_size=12)


def _pb_kaspad(**kw: object) -> bytes:
    return pb.KaspadMessage(**kw).SerializeToString()


def _key_len(number: int) -> int:
    return len(proto.encode_varint(number << 3 | proto.LEN))


# --------------------------------------------------------------------------------------------
# varints


@pytest.mark.parametrize(
    ("value", "hex_"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (16111, "ef7d"),
        (1 << 23, "80808004"),
        ((1 << 63) - 1, "ffffffffffffffff7f"),
        (U64, "ffffffffffffffffff01"),
        (-1, "ffffffffffffffffff01"),
        (-(1 << 63), "80808080808080808001"),
    ],
)
def test_varint_known_encodings(value: int, hex_: str) -> None:
    raw = bytes.fromhex(hex_)
    assert proto.encode_varint(value) == raw
    assert proto.decode_varint(raw, 0) == (value & U64, len(raw))
    # With surrounding bytes: position handling.
    assert proto.decode_varint(b"\xff" + raw + b"\x01", 1) == (value & U64, 1 + len(raw))


def test_negative_int64_is_ten_bytes_like_protobuf() -> None:
    for ts in (-1, -2, -(1 << 63), -1234567890123):
        ours = proto.make_varint_field(proto.V_TIMESTAMP, ts).raw
        assert ours == pb.VersionMessage(timestamp=ts).SerializeToString()
        assert len(ours) == 1 + 10
        (f,) = proto.parse(ours)
        assert f.value == ts & U64
        msg = pb.VersionMessage()
        msg.ParseFromString(ours)
        assert msg.timestamp == ts


@given(st.integers(-(1 << 63), U64))
def test_varint_round_trip(value: int) -> None:
    raw = proto.encode_varint(value)
    assert 1 <= len(raw) <= 10
    assert all(b & 0x80 for b in raw[:-1]) and not raw[-1] & 0x80
    assert proto.decode_varint(raw, 0) == (value & U64, len(raw))
    # Agrees with Google's protobuf runtime (uint64 field: Version.services).
    if value:
        assert pb.VersionMessage(services=value & U64).SerializeToString() == b"\x10" + raw


@given(st.integers(0, U64), st.integers(1, 9))
def test_non_minimal_varint_decodes(value: int, pad: int) -> None:
    raw = _varint_raw(value, pad)
    assert proto.decode_varint(raw, 0) == (value, len(raw))


@pytest.mark.parametrize("hex_", ["", "80", "ff", "8080", "ffffffffffffffffff"])
def test_truncated_varint(hex_: str) -> None:
    with pytest.raises(proto.Truncated):
        proto.decode_varint(bytes.fromhex(hex_), 0)
    assert issubclass(proto.Truncated, DecodeError)


def test_truncated_varint_at_offset() -> None:
    with pytest.raises(proto.Truncated):
        proto.decode_varint(b"\x01\x80", 1)
    with pytest.raises(proto.Truncated):
        proto.decode_varint(b"\x01", 1)


@pytest.mark.parametrize(
    "hex_",
    [
        "8080808080808080808001",  # 11 bytes
        "ffffffffffffffffffff01",  # 11 bytes
        "ffffffffffffffffff02",  # 10 bytes but > 64 bits
        "ffffffffffffffffff7f",
        "80808080808080808080",  # 10 continuation bytes: too long, not truncated
    ],
)
def test_overlong_varint(hex_: str) -> None:
    with pytest.raises(DecodeError) as info:
        proto.decode_varint(bytes.fromhex(hex_), 0)
    assert not isinstance(info.value, proto.Truncated)


# --------------------------------------------------------------------------------------------
# fields


@given(wire_messages)
@settings(max_examples=300)
def test_parse_encode_byte_exact(fields: list[tuple[int, int, int | bytes, bytes]]) -> None:
    buf = b"".join(raw for *_, raw in fields)
    parsed = proto.parse(buf)
    assert [(f.number, f.wire_type, f.value, f.raw) for f in parsed] == fields
    assert proto.encode_fields(parsed) == buf
    assert list(proto.iter_fields(buf)) == parsed
    # Google's protobuf parses the same bytes to the same (number, wire type, value) list.
    m = empty_pb2.Empty()
    m.ParseFromString(buf)
    theirs = [(u.field_number, u.wire_type, u.data) for u in UnknownFieldSet(m)]
    assert theirs == [(n, w, v) for n, w, v, _ in fields]


@given(wire_messages, st.data())
def test_truncated_message_raises(fields: list[tuple[int, int, int | bytes, bytes]],
                                  data: st.DataObject) -> None:
    buf = b"".join(raw for *_, raw in fields)
    if not buf:
        return
    boundaries = {0}
    pos = 0
    for *_, raw in fields:
        pos += len(raw)
        boundaries.add(pos)
    cut = data.draw(st.integers(1, len(buf) - 1)) if len(buf) > 1 else 0
    if cut in boundaries:
        assert proto.encode_fields(proto.parse(buf[:cut])) == buf[:cut]
    else:
        with pytest.raises(DecodeError):
            proto.parse(buf[:cut])


@pytest.mark.parametrize(
    ("hex_", "truncated"),
    [
        ("0b", False),  # wire type 3 (start group)
        ("0c", False),  # wire type 4 (end group)
        ("0e", False),  # wire type 6
        ("0f", False),  # wire type 7
        ("00", False),  # field number 0
        ("0201", False),  # field number 0, LEN
        ("0a05010203", True),  # LEN runs past the end
        ("09010203", True),  # fixed64 short
        ("0d0102", True),  # fixed32 short
        ("08", True),  # varint value missing
        ("0a", True),  # length missing
    ],
)
def test_bad_fields(hex_: str, truncated: bool) -> None:
    with pytest.raises(DecodeError) as info:
        proto.parse(bytes.fromhex(hex_))
    assert isinstance(info.value, proto.Truncated) == truncated


def test_field_accessors() -> None:
    v, b, f64 = proto.parse(bytes.fromhex("0805 120178 19 0100000000000000".replace(" ", "")))
    assert v.as_int == 5
    assert b.as_bytes == b"x"
    assert f64.as_int == 1
    with pytest.raises(DecodeError):
        _ = v.as_bytes
    with pytest.raises(DecodeError):
        _ = b.as_int
    with pytest.raises(DecodeError):
        _ = f64.as_bytes


def test_make_fields_match_protobuf() -> None:
    f = proto.make_varint_field(2, 1 << 23)
    assert f.raw == bytes.fromhex("1080808004") == pb.VersionMessage(
        services=1 << 23).SerializeToString()
    assert f.value == 1 << 23 and f.wire_type == proto.VARINT
    g = proto.make_len_field(6, b"/kaspad:2.0.1/")
    assert g.raw == pb.VersionMessage(userAgent="/kaspad:2.0.1/").SerializeToString()
    assert proto.parse(g.raw) == [g]
    assert proto.parse(f.raw) == [f]
    neg = proto.make_varint_field(3, -5)
    assert neg.value == -5 & U64
    assert proto.parse(neg.raw) == [neg]


def test_first_returns_last_occurrence() -> None:
    fields = proto.parse(bytes.fromhex("0801 1002 0803".replace(" ", "")))
    f = proto.first(fields, 1)
    assert f is not None and f.value == 3
    assert proto.first(fields, 9) is None
    m = pb.VersionMessage()
    m.ParseFromString(proto.encode_fields(fields))
    assert m.protocolVersion == 3  # protobuf semantics: the last one wins


def test_replace_field() -> None:
    fields = proto.parse(bytes.fromhex("0801 1802 0803 2804".replace(" ", "")))
    new = proto.make_varint_field(1, 9)
    out = proto.replace_field(fields, new, 1)
    assert proto.encode_fields(out) == bytes.fromhex("0809 1802 2804".replace(" ", ""))
    # Absent: inserted in tag order.
    out = proto.replace_field(fields, proto.make_varint_field(2, 7), 2)
    assert [f.number for f in out] == [1, 2, 3, 1, 5]
    out = proto.replace_field(fields, proto.make_varint_field(9, 7), 9)
    assert [f.number for f in out][-1] == 9
    # None removes every occurrence.
    assert [f.number for f in proto.replace_field(fields, None, 1)] == [3, 5]
    assert proto.replace_field([], None, 1) == []
    assert proto.replace_field([], new, 1) == [new]


# --------------------------------------------------------------------------------------------
# protocol.md §4.3 byte examples


PROTOCOL_EXAMPLES = [
    ("9a0100", proto.VERACK, None, None, _pb_kaspad(verack=pb.VerackMessage())),
    ("920300", proto.READY, None, None, _pb_kaspad(ready=pb.ReadyMessage())),
    ("3200", proto.REQUEST_ADDRESSES, None, None,
     _pb_kaspad(requestAddresses=pb.RequestAddressesMessage())),
    ("8201020801", proto.PING, None, None, _pb_kaspad(ping=pb.PingMessage(nonce=1))),
    ("8a01020801", proto.PONG, None, None, _pb_kaspad(pong=pb.PongMessage(nonce=1))),
    ("b201030a0178", proto.REJECT, None, None, _pb_kaspad(reject=pb.RejectMessage(reason="x"))),
    ("8201020801a80605b00607", proto.PING, 5, 7,
     _pb_kaspad(ping=pb.PingMessage(nonce=1), response_id=5, request_id=7)),
    ("0a0b0a091a040102030420ef7d", proto.ADDRESSES, None, None,
     _pb_kaspad(addresses=pb.AddressesMessage(
         addressList=[pb.NetAddress(ip=bytes([1, 2, 3, 4]), port=16111)]))),
    ("a20107080810808080" "04", proto.VERSION, None, None,
     _pb_kaspad(version=pb.VersionMessage(protocolVersion=8, services=1 << 23))),
]


@pytest.mark.parametrize(("hex_", "tag", "resp", "req", "pb_bytes"), PROTOCOL_EXAMPLES)
def test_protocol_examples(hex_: str, tag: int, resp: int | None, req: int | None,
                       pb_bytes: bytes) -> None:
    raw = bytes.fromhex(hex_)
    assert raw == pb_bytes  # protocol.md's table agrees with the protobuf runtime
    assert proto.payload_tag(raw) == tag
    assert proto.peek_payload_tag(raw) == tag
    env = proto.Envelope.decode(raw)
    assert env.tag == tag
    ids = {f.number: f.value for f in env.others}
    assert ids.get(proto.RESPONSE_ID) == resp
    assert ids.get(proto.REQUEST_ID) == req
    assert env.encode() == raw


def test_fact_addresses_example_decodes() -> None:
    env = proto.Envelope.decode(bytes.fromhex("0a0b0a091a040102030420ef7d"))
    (a,) = proto.decode_addresses(env.payload)
    assert a.ip == bytes([1, 2, 3, 4])
    assert a.port == 16111
    assert a.onion is None
    assert a.kaspad_accepts()
    assert proto.encode_addresses([proto.NetAddress.from_ip(bytes([1, 2, 3, 4]), 16111)]) == \
        env.payload


def test_fact_fork_version_services() -> None:
    env = proto.Envelope.decode(bytes.fromhex("a2010708081080808004"))
    v = proto.Version.decode(env.payload)
    assert v.protocol_version == 8
    assert v.services == 1 << 23 == proto.SERVICE_ADDRV2
    assert v.addrv2


def test_fact_upstream_version_layout() -> None:
    node_id = bytes(range(16))
    ua = "/kaspad:2.0.1/kaspad:2.0.1/"
    raw = _pb_kaspad(version=pb.VersionMessage(
        protocolVersion=10, timestamp=1_780_000_000_000, id=node_id, userAgent=ua,
        network="kaspa-simnet"))
    assert raw[:5] == bytes.fromhex("a20146080a")
    assert raw[5] == 0x18
    assert bytes.fromhex("2a10") + node_id in raw
    assert bytes.fromhex("321b") + ua.encode() in raw
    assert raw.endswith(bytes.fromhex("520c6b617370612d73696d6e6574"))
    env = proto.Envelope.decode(raw)
    assert env.tag == proto.VERSION and env.others == []
    v = proto.Version.decode(env.payload)
    assert (v.protocol_version, v.services, v.node_id, v.user_agent, v.network) == (
        10, 0, node_id, ua, "kaspa-simnet")
    assert v.address is None and not v.addrv2
    assert v.encode() == env.payload
    assert env.encode() == raw


# --------------------------------------------------------------------------------------------
# peek_payload_tag / payload_tag


def _check_every_prefix(msg: bytes, tag: int, key_end: int) -> None:
    for i in range(len(msg) + 1):
        got = proto.peek_payload_tag(msg[:i])
        if i < key_end:
            assert got is None, (msg.hex(), i)
        else:
            assert got == tag, (msg.hex(), i)


@pytest.mark.parametrize(("hex_", "tag", "resp", "req", "pb_bytes"), PROTOCOL_EXAMPLES)
def test_peek_every_prefix_fact_examples(hex_: str, tag: int, resp: int | None,
                                         req: int | None, pb_bytes: bytes) -> None:
    _check_every_prefix(bytes.fromhex(hex_), tag, _key_len(tag))


def test_peek_ids_first() -> None:
    msg = bytes.fromhex("a80605b006078201020801")
    _check_every_prefix(msg, proto.PING, 6 + 2)
    assert proto.payload_tag(msg) == proto.PING


@given(
    tag=st.sampled_from(sorted(proto.KNOWN_PAYLOADS)) | st.integers(1, 100),
    payload=st.binary(max_size=30),
    ids=st.lists(st.tuples(st.sampled_from([proto.RESPONSE_ID, proto.REQUEST_ID]),
                           st.integers(0, (1 << 32) - 1)), max_size=3),
    ids_first=st.booleans(),
)
def test_peek_every_prefix_property(tag: int, payload: bytes, ids: list[tuple[int, int]],
                                    ids_first: bool) -> None:
    if tag in (proto.RESPONSE_ID, proto.REQUEST_ID):
        tag = 1
    id_bytes = b"".join(proto.make_varint_field(n, v).raw for n, v in ids)
    body = proto.make_len_field(tag, payload).raw
    if ids_first:
        msg, key_end = id_bytes + body, len(id_bytes) + _key_len(tag)
    else:
        msg, key_end = body + id_bytes, _key_len(tag)
    _check_every_prefix(msg, tag, key_end)
    assert proto.payload_tag(msg) == tag


@pytest.mark.parametrize(
    "hex_",
    [
        "0801",  # payload field as a varint
        "0d01000000",  # payload field as fixed32
        "aa0600",  # response_id as LEN
        "ad0601000000",  # response_id as fixed32
        "02",  # field number 0
        "a806058001",  # ids then a payload field with varint wire type
        "ffffffffffffffffffff01",  # key varint too long
    ],
)
def test_peek_rejects_non_kaspad_messages(hex_: str) -> None:
    with pytest.raises(DecodeError):
        proto.peek_payload_tag(bytes.fromhex(hex_))


def test_payload_tag_complete_messages_without_payload() -> None:
    assert proto.payload_tag(b"") is None
    assert proto.payload_tag(bytes.fromhex("a80605")) is None
    assert proto.payload_tag(bytes.fromhex("a80605b00607")) is None
    with pytest.raises(DecodeError):
        proto.payload_tag(bytes.fromhex("a806"))  # truncated id value
    with pytest.raises(DecodeError):
        proto.payload_tag(bytes.fromhex("a8"))


# --------------------------------------------------------------------------------------------
# Envelope


def test_envelope_ids_first_keeps_ids_exactly() -> None:
    msg = bytes.fromhex("a80605b006078201020801")
    env = proto.Envelope.decode(msg)
    assert env.tag == proto.PING and env.payload == bytes.fromhex("0801")
    assert [f.raw for f in env.others] == [bytes.fromhex("a80605"), bytes.fromhex("b00607")]
    out = env.encode()
    assert out == bytes.fromhex("8201020801a80605b00607")  # prost order
    m = pb.KaspadMessage()
    m.ParseFromString(out)
    assert (m.response_id, m.request_id, m.ping.nonce) == (5, 7, 1)


def test_envelope_keeps_non_minimal_ids_and_unknown_fields() -> None:
    # response_id=5 encoded non-minimally, plus an unknown varint field 200.
    msg = bytes.fromhex("8201020801") + bytes.fromhex("a8068500") + bytes.fromhex("c00c01")
    env = proto.Envelope.decode(msg)
    assert env.encode() == msg


def test_envelope_errors() -> None:
    with pytest.raises(DecodeError):
        proto.Envelope.decode(b"")
    with pytest.raises(DecodeError):
        proto.Envelope.decode(bytes.fromhex("a80605"))  # ids only
    with pytest.raises(DecodeError):
        proto.Envelope.decode(bytes.fromhex("9a01009203 00".replace(" ", "")))  # two payloads
    with pytest.raises(DecodeError):
        proto.Envelope.decode(bytes.fromhex("8201050801"))  # truncated payload


def test_envelope_empty_payload_is_kept() -> None:
    env = proto.Envelope(proto.VERACK, b"", [])
    assert env.encode() == bytes.fromhex("9a0100")


@given(
    tag=st.sampled_from(sorted(proto.KNOWN_PAYLOADS)),
    payload=st.binary(max_size=64),
    resp=st.none() | st.integers(0, (1 << 32) - 1),
    req=st.none() | st.integers(0, (1 << 32) - 1),
)
def test_envelope_round_trip_property(tag: int, payload: bytes, resp: int | None,
                                      req: int | None) -> None:
    msg = proto.make_len_field(tag, payload).raw
    if resp is not None:
        msg += proto.make_varint_field(proto.RESPONSE_ID, resp).raw
    if req is not None:
        msg += proto.make_varint_field(proto.REQUEST_ID, req).raw
    env = proto.Envelope.decode(msg)
    assert (env.tag, env.payload) == (tag, payload)
    assert env.encode() == msg
    m = empty_pb2.Empty()
    m.ParseFromString(msg)
    theirs = [(u.field_number, u.data) for u in UnknownFieldSet(m)]
    assert theirs[0] == (tag, payload)
    assert dict(theirs[1:]) == {k: v for k, v in ((proto.RESPONSE_ID, resp),
                                                  (proto.REQUEST_ID, req)) if v is not None}


# --------------------------------------------------------------------------------------------
# NetAddress / Addresses


def test_from_onion_matches_protocol_example() -> None:
    host = "a" * 56 + ".onion"
    raw = proto.NetAddress.from_onion(host, 16111).encode()
    assert raw == bytes.fromhex("20ef7d2a3e") + host.encode()
    assert raw.hex() == "20ef7d2a3e" + "61" * 56 + "2e6f6e696f6e"
    assert raw == pb.NetAddress(onion=host, port=16111).SerializeToString()


def test_from_onion_real_address_cross_check() -> None:
    a = proto.NetAddress.from_onion(ONION.host, 16111)
    m = pb.NetAddress()
    m.ParseFromString(a.encode())
    assert m.WhichOneof("address") == "onion"
    assert m.onion == ONION.host and m.port == 16111
    assert a.onion == ONION.host and a.ip is None and a.port == 16111
    assert not a.kaspad_accepts()


def test_from_ip_matches_protobuf() -> None:
    for ip in (bytes([1, 2, 3, 4]), bytes(range(16))):
        a = proto.NetAddress.from_ip(ip, 16111)
        assert a.encode() == pb.NetAddress(ip=ip, port=16111).SerializeToString()
        assert a.kaspad_accepts()


@pytest.mark.parametrize("n", range(18))
def test_kaspad_accepts_ip_lengths(n: int) -> None:
    a = proto.NetAddress.from_ip(bytes(n), 16111)
    assert a.kaspad_accepts() == (n in (4, 16))


@pytest.mark.parametrize(
    ("port", "ok"), [(0, True), (1, True), (65535, True), (65536, False), ((1 << 32) - 1, False)]
)
def test_kaspad_accepts_port(port: int, ok: bool) -> None:
    assert proto.NetAddress.from_ip(bytes(4), port).kaspad_accepts() == ok
    assert proto.NetAddress.from_ip(bytes(16), port).kaspad_accepts() == ok


def test_kaspad_accepts_other_cases() -> None:
    assert not proto.NetAddress([]).kaspad_accepts()  # no ip at all
    assert not proto.NetAddress.decode(bytes.fromhex("20ef7d")).kaspad_accepts()  # port only
    # ip and onion both present: kaspad (upstream) would see the ip, the fork an onion; reject.
    ip_fields = proto.NetAddress.from_ip(bytes(4), 1).fields
    both = [*ip_fields, proto.make_len_field(proto.NA_ONION, ONION.host.encode())]
    assert not proto.NetAddress(both).kaspad_accepts()
    # timestamp present and ignored.
    ts = proto.NetAddress([proto.make_varint_field(1, 123), *ip_fields])
    assert ts.kaspad_accepts()
    # last ip wins (protobuf semantics)
    two = proto.NetAddress.decode(bytes.fromhex("1a03000000 1a0401020304".replace(" ", "")))
    assert two.ip == bytes([1, 2, 3, 4]) and two.kaspad_accepts()


@given(ip=st.binary(max_size=20), port=st.integers(0, (1 << 32) - 1),
       onion=st.none() | st.text(alphabet="abc234.", max_size=62))
def test_kaspad_accepts_matches_protobuf_view(ip: bytes, port: int, onion: str | None) -> None:
    a = proto.NetAddress.from_ip(ip, port)
    if onion is not None:
        a = proto.NetAddress([*a.fields, proto.make_len_field(proto.NA_ONION, onion.encode())])
    m = pb.NetAddress()
    m.ParseFromString(a.encode())
    expect = m.WhichOneof("address") == "ip" and len(m.ip) in (4, 16) and m.port <= 0xFFFF
    assert a.kaspad_accepts() == expect


@pytest.mark.parametrize(
    "hex_",
    [
        "1a0401020304" "256f3f0000",  # port as fixed32: prost 'invalid wire type' -> disconnect
        "1a0401020304" "216f3f000000000000",  # port as fixed64
        "0a00" "1a0401020304" "20ef7d",  # timestamp (int64) as LEN
    ],
)
def test_kaspad_accepts_checks_wire_types(hex_: str) -> None:
    a = proto.NetAddress.decode(bytes.fromhex(hex_))
    assert not a.kaspad_accepts()


def test_onion_non_ascii_raises() -> None:
    a = proto.NetAddress([proto.make_len_field(proto.NA_ONION, b"\xff" * 62)])
    with pytest.raises(DecodeError):
        _ = a.onion


@given(st.lists(
    st.one_of(
        st.builds(lambda ip, port: proto.NetAddress.from_ip(ip, port),
                  st.binary(max_size=17), st.integers(0, 70000)),
        st.builds(lambda k, port: proto.NetAddress.from_onion(
            OnionAddress.from_pubkey(k).host, port), st.binary(min_size=32, max_size=32),
            st.integers(1, 65535)),
    ), max_size=20))
def test_addresses_round_trip(entries: list[proto.NetAddress]) -> None:
    payload = proto.encode_addresses(entries)
    back = proto.decode_addresses(payload)
    assert [e.encode() for e in back] == [e.encode() for e in entries]
    assert proto.encode_addresses(back) == payload
    m = pb.AddressesMessage()
    m.ParseFromString(payload)
    assert len(m.addressList) == len(entries)
    for mine, theirs in zip(back, m.addressList, strict=True):
        assert (mine.ip, mine.onion, mine.port) == (
            theirs.ip if theirs.WhichOneof("address") == "ip" else None,
            theirs.onion if theirs.WhichOneof("address") == "onion" else None,
            theirs.port)


def test_decode_addresses_ignores_other_fields() -> None:
    payload = proto.encode_addresses([proto.NetAddress.from_ip(bytes(4), 1)])
    junk = proto.make_varint_field(7, 3).raw + payload + proto.make_len_field(9, b"z").raw
    (a,) = proto.decode_addresses(junk)
    assert a.ip == bytes(4)
    with pytest.raises(DecodeError):
        proto.decode_addresses(bytes.fromhex("0801"))  # entry field as a varint


# --------------------------------------------------------------------------------------------
# Version


def _pb_version(**kw: object) -> bytes:
    base: dict[str, object] = dict(protocolVersion=10, timestamp=1_780_000_000_000,
                                   id=bytes(range(16)), userAgent="/kaspad:2.0.1/",
                                   network="kaspa-simnet")
    base.update(kw)
    return pb.VersionMessage(**base).SerializeToString()


def test_version_set_services_matches_protobuf() -> None:
    raw = _pb_version()
    v = proto.Version.decode(raw)
    assert v.services == 0 and not v.addrv2
    v.services = proto.SERVICE_ADDRV2
    assert v.encode() == _pb_version(services=proto.SERVICE_ADDRV2)
    assert v.addrv2
    v.services = proto.SERVICE_ADDRV2 | 1
    assert v.encode() == _pb_version(services=proto.SERVICE_ADDRV2 | 1)
    v.services = 0
    assert v.encode() == raw  # cleared: field removed, rest byte-identical


def test_version_set_and_remove_address_matches_protobuf() -> None:
    raw = _pb_version()
    v = proto.Version.decode(raw)
    na = proto.NetAddress.from_ip(bytes([8, 8, 8, 8]), 16111)
    v.address = na
    assert v.encode() == _pb_version(address=pb.NetAddress(ip=bytes([8, 8, 8, 8]), port=16111))
    got = v.address
    assert got is not None and got.encode() == na.encode()
    v.address = None
    assert v.encode() == raw
    assert v.address is None
    v.address = None  # removing an absent address is a no-op
    assert v.encode() == raw


def test_version_keeps_unknown_fields() -> None:
    raw = _pb_version(disableRelayTx=True) + proto.make_len_field(77, b"future").raw
    v = proto.Version.decode(raw)
    assert v.encode() == raw
    v.services = 1
    v.services = 0
    assert v.encode() == raw


@pytest.mark.parametrize(
    "hex_",
    [
        "0a0100",  # protocolVersion as LEN
        "150100 0000".replace(" ", ""),  # services as fixed32
        "2801",  # id as varint
        "3001",  # userAgent as varint
        "5001",  # network as varint
        "2203 0a05 01".replace(" ", ""),  # address: truncated NetAddress inside
        "0a",  # truncated
    ],
)
def test_version_decode_rejects_garbage(hex_: str) -> None:
    with pytest.raises(DecodeError):
        proto.Version.decode(bytes.fromhex(hex_))


@pytest.mark.parametrize(
    "hex_",
    [
        "0d01000000" "080a",  # protocolVersion as fixed32, then as a varint (last one is fine)
        "4200",  # disableRelayTx (bool) as LEN
        "4801",  # subnetworkId (message) as a varint
    ],
)
def test_version_decode_checks_every_known_field(hex_: str) -> None:
    with pytest.raises(DecodeError):
        proto.Version.decode(bytes.fromhex(hex_))


def test_version_random_id() -> None:
    nid = os.urandom(16)
    v = proto.Version.decode(_pb_version(id=nid))
    assert v.node_id == nid
    assert proto.Version.decode(b"").node_id == b""


def test_known_payloads_match_the_protos() -> None:
    # The repo's protos are the Tor fork's: master-only 59, 60, 61, 63 are the only extras.
    fork = {f.number for f in pb.KaspadMessage.DESCRIPTOR.oneofs_by_name["payload"].fields}
    assert fork <= proto.KNOWN_PAYLOADS
    assert proto.KNOWN_PAYLOADS - fork == {59, 60, 61, 63}
    by_name = {f.name: f.number for f in pb.KaspadMessage.DESCRIPTOR.fields}
    assert (by_name["addresses"], by_name["block"], by_name["requestAddresses"],
            by_name["invRelayBlock"], by_name["ping"], by_name["pong"], by_name["verack"],
            by_name["version"], by_name["reject"], by_name["ready"], by_name["response_id"],
            by_name["request_id"]) == (
        proto.ADDRESSES, proto.BLOCK, proto.REQUEST_ADDRESSES, proto.INV_RELAY_BLOCK, proto.PING,
        proto.PONG, proto.VERACK, proto.VERSION, proto.REJECT, proto.READY, proto.RESPONSE_ID,
        proto.REQUEST_ID)
    assert proto.payload_name(proto.VERSION) == "Version"
    assert proto.payload_name(63) == "payload#63"


# --------------------------------------------------------------------------------------------
# Bounded decoding (issue 10, defects 2, 3 and 6)

_NA_FIELD = st.one_of(
    st.builds(proto.make_varint_field, st.sampled_from([1, 3, 4, 5, 2, 9]),
              st.sampled_from([0, 1, 127, 128, 16111, 65535, 65536, (1 << 64) - 1])),
    st.builds(proto.make_len_field, st.sampled_from([1, 3, 4, 5, 6]),
              st.sampled_from([b"", bytes(4), bytes(16), bytes(3), b"x" * 62, b"\xff" * 62,
                               b"y" * 200])),
)


@settings(max_examples=400)
@given(st.lists(_NA_FIELD, max_size=6))
def test_canonical_netaddress_reading_agrees_with_the_field_by_field_one(
        fields: list[proto.Field]) -> None:
    """The one-pass reading (most entries) and the general one must say the same thing."""
    raw = proto.encode_fields(fields)
    slow = proto.NetAddress(proto.parse(raw))
    try:
        fast = proto.NetAddress.decode(raw)
    except DecodeError:
        assert len(fields) > proto.MAX_NET_ADDRESS_FIELDS
        return

    def view(na: proto.NetAddress) -> tuple[object, ...]:
        out: list[object] = [na.encode(), na.kaspad_accepts()]
        for get in (lambda: na.ip, lambda: na.port, lambda: na.onion):
            try:
                out.append(get())
            except DecodeError:
                out.append("DecodeError")
        return tuple(out)

    assert view(fast) == view(slow)
    assert fast == slow and fast.fields == slow.fields


def test_decoding_stops_at_the_field_caps() -> None:
    tiny = proto.make_varint_field(15, 0).raw
    with pytest.raises(proto.TooManyFields, match="Version has more than 64"):
        proto.Version.decode(tiny * 65)
    assert len(proto.Version.decode(tiny * 64).fields) == 64
    with pytest.raises(proto.TooManyFields):
        proto.NetAddress.decode(tiny * 9)
    with pytest.raises(proto.TooManyFields):
        proto.Envelope.decode(proto.make_len_field(proto.PING, b"").raw + tiny * 8)


def test_version_address_is_the_merge_of_its_occurrences() -> None:
    """protobuf merges a repeated embedded message: an ip in one and an onion in the next is
    one address with both; the bridge sees that too (and removes all of them together)."""
    ip = proto.make_len_field(proto.V_ADDRESS, proto.NetAddress.from_ip(bytes(4), 1).encode())
    oni = proto.make_len_field(proto.V_ADDRESS, proto.NetAddress.from_onion(
        OnionAddress.from_pubkey(bytes(32)).host, 2).encode())
    v = proto.Version.decode(proto.encode_fields([ip, oni]))
    addr = v.address
    assert addr is not None and addr.ip == bytes(4) and addr.onion is not None
    assert addr.port == 2 and not addr.kaspad_accepts()
    v.address = None
    assert v.address is None and v.fields == []


def test_addresses_are_counted_before_they_are_decoded() -> None:
    entry = proto.NetAddress.from_ip(bytes([1, 2, 3, 4]), 16111)
    payload = proto.encode_addresses([entry] * 2500)
    assert len(proto.decode_addresses(payload)) == 2500
    with pytest.raises(proto.TooManyAddresses) as exc:
        proto.decode_addresses(payload + proto.encode_addresses([entry]))
    assert exc.value.count == 2501 and "2501 entries" in str(exc.value)
    with pytest.raises(proto.TooManyAddresses, match="more than 10000"):
        proto.decode_addresses(b"\x0a\x00" * 20_000)
    with pytest.raises(proto.TooManyFields):  # junk fields count too
        proto.decode_addresses(b"\x10\x00" * 20_000)
    with pytest.raises(DecodeError):  # an entry that is not length-delimited
        proto.count_addresses(b"\x08\x01")
    spans = proto.count_addresses(proto.make_varint_field(7, 1).raw + payload[:11])
    assert spans == [(4, 13)]


_PAYLOAD = st.builds(lambda n, body: proto.make_len_field(n, body).raw,
                     st.sampled_from(sorted(proto.KNOWN_PAYLOADS)), st.binary(max_size=300))
_OTHER = st.sampled_from([proto.make_varint_field(proto.RESPONSE_ID, 5).raw,
                          proto.make_varint_field(proto.REQUEST_ID, 1 << 40).raw,
                          proto.make_varint_field(200, 1).raw, b"\x0d\x01\x02\x03\x04"])


@settings(max_examples=300)
@given(st.lists(_PAYLOAD | _OTHER, max_size=6), st.lists(st.integers(1, 400), max_size=8))
def test_envelope_scanner_agrees_with_the_whole_message_decode(parts: list[bytes],
                                                               cuts: list[int]) -> None:
    """In any chunking, the scanner refuses exactly the messages Envelope.decode refuses
    (two payloads, too many fields, ...), and finds the same payload."""
    msg = b"".join(parts)
    try:
        proto.peek_payload_tag(msg)  # the sniffer's rule: only ids before the payload
        want: int | str = proto.Envelope.decode(msg).tag
    except DecodeError:
        want = "error"
    s = proto.EnvelopeScanner()
    got: int | str | None
    try:
        pos = 0
        for c in sorted(cuts):
            s.feed(msg[pos:c])
            pos = max(pos, c)
        s.feed(msg[pos:])
        got = s.tag if s.at_boundary else "error"
    except DecodeError:
        got = "error"
    if got is None:  # no payload at all: Envelope.decode refuses it too
        got = "error"
    assert got == want, msg.hex()
