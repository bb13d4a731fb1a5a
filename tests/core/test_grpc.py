"""Tests for bridge.core.grpc: gRPC length-prefix framing and payload sniffing."""

from __future__ import annotations

import gzip
import random
import time
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core import grpc, proto
from bridge.core.errors import DecodeError, FramingError
from tests.costs import python_memory

MAX = 1 << 20


def _events_to_messages(events: list[grpc.Event]) -> list[tuple[bool, bytes]]:
    """Reassemble events, checking Start/Chunk*/End structure and declared lengths."""
    out: list[tuple[bool, bytes]] = []
    current: bytearray | None = None
    start: grpc.MessageStart | None = None
    for ev in events:
        if isinstance(ev, grpc.MessageStart):
            assert current is None, "MessageStart inside a message"
            current, start = bytearray(), ev
        elif isinstance(ev, grpc.MessageChunk):
            assert current is not None, "MessageChunk outside a message"
            assert ev.data, "empty MessageChunk"
            current += ev.data
        else:
            assert isinstance(ev, grpc.MessageEnd)
            assert current is not None and start is not None, "MessageEnd outside a message"
            assert len(current) == start.length
            out.append((start.compressed, bytes(current)))
            current = start = None
    assert current is None, "stream ended inside a message"
    return out


def _feed_all(reader: grpc.MessageReader, chunks: list[bytes]) -> list[grpc.Event]:
    events: list[grpc.Event] = []
    for c in chunks:
        events += reader.feed(c)
    return events


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


# --------------------------------------------------------------------------------------------
# framing helpers


def test_frame() -> None:
    assert grpc.frame(b"") == b"\x00\x00\x00\x00\x00"
    assert grpc.frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert grpc.frame(b"abc", compressed=True) == b"\x01\x00\x00\x00\x03abc"
    big = bytes(70000)
    assert grpc.frame(big)[1:5] == (70000).to_bytes(4, "big")


@given(st.binary(max_size=5000))
def test_gzip_round_trip(payload: bytes) -> None:
    z = grpc.gzip_compress(payload)
    assert gzip.decompress(z) == payload  # a real gzip member (tonic uses flate2 GzDecoder)
    assert grpc.gzip_decompress(z, len(payload)) == payload
    assert grpc.gzip_decompress(gzip.compress(payload), MAX) == payload
    if payload:
        with pytest.raises(DecodeError):
            grpc.gzip_decompress(z, len(payload) - 1)


def test_gzip_decompress_bomb() -> None:
    bomb = gzip.compress(bytes(50 * MAX))  # 50 MiB of zeros, ~50 KB compressed
    assert len(bomb) < MAX
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="inflates to more than"):
            grpc.gzip_decompress(bomb, MAX)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MAX  # never inflated the whole 50 MiB


@pytest.mark.parametrize(
    "data",
    [
        b"not gzip at all",
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\xff",  # header then garbage
        b"",  # empty: truncated
    ],
)
def test_gzip_decompress_garbage(data: bytes) -> None:
    with pytest.raises(DecodeError):
        grpc.gzip_decompress(data, MAX)


def test_gzip_decompress_truncated_and_trailing() -> None:
    z = gzip.compress(b"hello world" * 100)
    with pytest.raises(DecodeError, match="truncated"):
        grpc.gzip_decompress(z[:-4], MAX)  # missing ISIZE
    with pytest.raises(DecodeError):
        grpc.gzip_decompress(z[: len(z) // 2], MAX)
    with pytest.raises(DecodeError, match="trailing"):
        grpc.gzip_decompress(z + b"x", MAX)
    bad_crc = bytearray(z)
    bad_crc[-8] ^= 0xFF
    with pytest.raises(DecodeError):
        grpc.gzip_decompress(bytes(bad_crc), MAX)


# --------------------------------------------------------------------------------------------
# MessageReader


messages_st = st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=8)


@given(messages_st, st.lists(st.integers(0, 3000), max_size=30))
@settings(max_examples=300)
def test_reader_arbitrary_chunking(messages: list[tuple[bool, bytes]], cuts: list[int]) -> None:
    stream = b"".join(grpc.frame(p, compressed=c) for c, p in messages)
    reader = grpc.MessageReader(MAX)
    events = _feed_all(reader, _split(stream, cuts))
    assert _events_to_messages(events) == messages
    assert reader.at_boundary
    assert reader.messages == len(messages)
    starts = [e for e in events if isinstance(e, grpc.MessageStart)]
    assert [s.prefix for s in starts] == [grpc.frame(p, compressed=c)[:5] for c, p in messages]


@given(messages_st)
def test_reader_one_byte_at_a_time(messages: list[tuple[bool, bytes]]) -> None:
    stream = b"".join(grpc.frame(p, compressed=c) for c, p in messages)
    reader = grpc.MessageReader(MAX)
    events: list[grpc.Event] = []
    ends = {0}
    pos = 0
    for c, p in messages:
        pos += len(grpc.frame(p, compressed=c))
        ends.add(pos)
    for i in range(len(stream)):
        events += reader.feed(stream[i:i + 1])
        assert reader.at_boundary == (i + 1 in ends)
    assert _events_to_messages(events) == messages
    assert reader.at_boundary


def test_reader_at_boundary_tracking() -> None:
    reader = grpc.MessageReader(MAX)
    assert reader.at_boundary
    reader.feed(b"\x00\x00")
    assert not reader.at_boundary
    reader.feed(b"\x00\x00\x02a")
    assert not reader.at_boundary
    evs = reader.feed(b"b")
    assert reader.at_boundary
    assert evs == [grpc.MessageChunk(b"b"), grpc.MessageEnd()]


def test_reader_zero_length_messages() -> None:
    reader = grpc.MessageReader(MAX)
    evs = reader.feed(grpc.frame(b"") + grpc.frame(b"", compressed=True) + grpc.frame(b"x"))
    assert evs == [
        grpc.MessageStart(False, 0, b"\x00\x00\x00\x00\x00"), grpc.MessageEnd(),
        grpc.MessageStart(True, 0, b"\x01\x00\x00\x00\x00"), grpc.MessageEnd(),
        grpc.MessageStart(False, 1, b"\x00\x00\x00\x00\x01"), grpc.MessageChunk(b"x"),
        grpc.MessageEnd(),
    ]
    assert reader.messages == 3


def test_reader_empty_feed() -> None:
    reader = grpc.MessageReader(MAX)
    assert reader.feed(b"") == []
    assert reader.feed(memoryview(b"")) == []
    assert reader.at_boundary


def test_reader_accepts_memoryview_and_copies() -> None:
    buf = bytearray(grpc.frame(b"abcd"))
    reader = grpc.MessageReader(MAX)
    evs = reader.feed(memoryview(buf))
    buf[:] = bytes(len(buf))  # caller reuses its buffer
    assert _events_to_messages(evs) == [(False, b"abcd")]


@pytest.mark.parametrize("flag", [2, 3, 0x80, 0xFF])
def test_reader_bad_flag(flag: int) -> None:
    reader = grpc.MessageReader(MAX)
    with pytest.raises(FramingError, match="flag"):
        reader.feed(bytes([flag]) + b"\x00\x00\x00\x01x")


def test_reader_bad_flag_after_good_message_split() -> None:
    reader = grpc.MessageReader(MAX)
    assert _events_to_messages(reader.feed(grpc.frame(b"ok"))) == [(False, b"ok")]
    reader.feed(b"\x02\x00")
    with pytest.raises(FramingError):
        reader.feed(b"\x00\x00\x00")


def test_reader_length_over_limit_before_payload() -> None:
    reader = grpc.MessageReader(100)
    # Exactly at the limit is fine.
    assert _events_to_messages(reader.feed(grpc.frame(bytes(100)))) == [(False, bytes(100))]
    # Over the limit: the error comes as soon as the 5-byte prefix is complete.
    reader.feed(b"\x00\x00\x00")
    with pytest.raises(FramingError, match="exceeds"):
        reader.feed(b"\x00\x65")  # 101, no payload byte yet
    with pytest.raises(FramingError):
        grpc.MessageReader(1 << 30).feed(b"\x01\xff\xff\xff\xff")


def test_reader_does_not_buffer_large_payload() -> None:
    reader = grpc.MessageReader(1 << 30)
    evs = reader.feed(b"\x00" + (10 * MAX).to_bytes(4, "big"))
    assert evs == [grpc.MessageStart(False, 10 * MAX, b"\x00" + (10 * MAX).to_bytes(4, "big"))]
    chunk = bytes(MAX)
    for _ in range(9):
        evs = reader.feed(chunk)
        assert evs == [grpc.MessageChunk(chunk)]  # streamed through at once
    evs = reader.feed(chunk + grpc.frame(b"z"))
    assert evs[:2] == [grpc.MessageChunk(chunk), grpc.MessageEnd()]
    assert _events_to_messages(evs[2:]) == [(False, b"z")]
    assert reader.messages == 2


# --------------------------------------------------------------------------------------------
# PayloadSniffer


def _kaspad(tag: int, payload: bytes, ids: bytes = b"") -> bytes:
    return ids + proto.make_len_field(tag, payload).raw


SNIFF_CASES = [
    (bytes.fromhex("9a0100"), proto.VERACK),
    (bytes.fromhex("920300"), proto.READY),
    (bytes.fromhex("3200"), proto.REQUEST_ADDRESSES),
    (bytes.fromhex("8201020801a80605b00607"), proto.PING),
    (bytes.fromhex("a80605b006078201020801"), proto.PING),  # ids first
    (bytes.fromhex("0a0b0a091a040102030420ef7d"), proto.ADDRESSES),
    (_kaspad(proto.BLOCK, bytes(5000)), proto.BLOCK),
]


@pytest.mark.parametrize(("msg", "tag"), SNIFF_CASES)
@pytest.mark.parametrize("compressed", [False, True])
def test_sniffer_one_byte_at_a_time(msg: bytes, tag: int, compressed: bool) -> None:
    data = grpc.gzip_compress(msg) if compressed else msg
    s = grpc.PayloadSniffer(compressed)
    got = None
    fed = 0
    for i in range(len(data)):
        got = s.feed(data[i:i + 1])
        fed += 1
        if got is not None:
            break
    assert got == tag
    assert s.tag == tag
    if not compressed:
        key_end = msg.index(proto.make_len_field(tag, b"").raw[:-1]) + len(
            proto.encode_varint(tag << 3 | proto.LEN))
        assert fed == key_end  # known exactly when the payload key is complete
    if compressed:  # nothing may follow the gzip data
        for i in range(fed, len(data)):
            assert s.feed(data[i:i + 1]) == tag
        with pytest.raises(DecodeError, match="trailing bytes"):
            s.feed(b"\xff")
    else:  # the start of another field: stable
        assert s.feed(b"\xff\xff\xff") == tag


@given(
    tag=st.sampled_from(sorted(proto.KNOWN_PAYLOADS)),
    payload=st.binary(max_size=200),
    ids=st.binary(max_size=0) | st.sampled_from([bytes.fromhex("a80605"),
                                                 bytes.fromhex("a80605b0068001")]),
    compressed=st.booleans(),
    cuts=st.lists(st.integers(0, 400), max_size=10),
)
def test_sniffer_property(tag: int, payload: bytes, ids: bytes, compressed: bool,
                          cuts: list[int]) -> None:
    msg = _kaspad(tag, payload, ids)
    data = grpc.gzip_compress(msg) if compressed else msg
    s = grpc.PayloadSniffer(compressed)
    got = None
    for chunk in _split(data, cuts):
        got = s.feed(chunk)
        if got is not None:
            break
    assert got == tag


def test_sniffer_large_gzip_block_needs_only_a_prefix() -> None:
    rng = random.Random(1)
    # A 2 MB "block": half random bytes (incompressible), half text-like (compressible).
    body = rng.randbytes(MAX) + b"kaspa " * (MAX // 6 + 1)
    msg = _kaspad(proto.BLOCK, body[: 2 * MAX])
    assert len(msg) > 2 * MAX
    data = grpc.gzip_compress(msg)
    assert len(data) > MAX
    s = grpc.PayloadSniffer(True)
    fed = 0
    tag = None
    while tag is None:
        tag = s.feed(data[fed:fed + 1])
        fed += 1
    assert tag == proto.BLOCK
    assert fed < 512, f"needed {fed} compressed bytes to learn the payload type"


def test_sniffer_refuses_a_gzip_bomb_with_bounded_memory_and_cpu() -> None:
    """A pass-through message is inflated to be scanned (defect 6), so a bomb must not cost
    what it inflates to: 64 MiB of zeros (65 KB gzip'd, 1000:1) fed at once is refused once
    the budget's burst is spent, inflating about INFLATE_BURST, never holding more than a piece."""
    msg = _kaspad(proto.BLOCK, bytes(64 * MAX))
    data = grpc.gzip_compress(msg)
    assert len(data) < MAX
    s = grpc.PayloadSniffer(True)
    t0 = time.process_time()
    with python_memory() as mem, pytest.raises(DecodeError, match="compression bomb"):
        s.feed(data)
    cpu = time.process_time() - t0
    assert s.tag == proto.BLOCK
    assert s.budget.inflated <= grpc.INFLATE_BURST + grpc.INFLATE_RATIO * len(data) + 1
    assert mem.peak < 2 * MAX, f"peak {mem.peak} bytes: the sniffer held what it inflated"
    assert cpu < 0.5, f"{cpu * 1000:.0f} ms of CPU for one message"


def test_sniffer_inflates_a_whole_honest_message_within_the_budget() -> None:
    """A large message with a long run of zeros (a block with an all-zero transaction payload:
    3 MiB from 3 KB) still passes: the run fits in the burst."""
    rng = random.Random(3)
    msg = _kaspad(proto.BLOCK, rng.randbytes(MAX) + bytes(3 * MAX))
    data = grpc.gzip_compress(msg)
    s = grpc.PayloadSniffer(True)
    for i in range(0, len(data), 16384):
        assert s.feed(data[i:i + 16384]) == proto.BLOCK
    assert s.budget.inflated == len(msg)
    assert s.scanner.at_boundary


def test_inflate_budget_is_shared_across_messages() -> None:
    """One budget per direction: a stream of small bombs (each under the burst) runs it dry."""
    budget = grpc.InflateBudget()
    bomb = grpc.gzip_compress(_kaspad(proto.PING, bytes(MAX // 2)))  # 512 KiB from ~600 B
    with pytest.raises(DecodeError, match="compression bomb"):
        for _ in range(64):
            grpc.PayloadSniffer(True, budget).feed(bomb)
    assert budget.inflated < 2 * grpc.INFLATE_BURST


def test_sniffer_garbage_gzip() -> None:
    s = grpc.PayloadSniffer(True)
    with pytest.raises(DecodeError):
        for b in b"this is not gzip data":
            s.feed(bytes([b]))


def test_sniffer_corrupt_deflate_after_valid_header() -> None:
    header = gzip.compress(b"")[:10]
    s = grpc.PayloadSniffer(True)
    assert s.feed(header) is None
    with pytest.raises(DecodeError):
        s.feed(b"\xff" * 16)


def test_sniffer_plain_garbage() -> None:
    s = grpc.PayloadSniffer(False)
    with pytest.raises(DecodeError):
        s.feed(b"\x08\x01")  # payload field as a varint
    # 64 bytes of id fields and still no payload: give up (the field cap comes first).
    s = grpc.PayloadSniffer(False)
    with pytest.raises(DecodeError, match=r"no KaspadMessage payload|more than 8 fields"):
        s.feed(bytes.fromhex("a80605") * 30)


def test_sniffer_gives_up_on_endless_gzip_header() -> None:
    # A gzip header with a 100 KB FCOMMENT inflates to nothing: the input cap must trigger.
    comment = b"x" * (100 * 1024) + b"\x00"
    header = b"\x1f\x8b\x08\x10\x00\x00\x00\x00\x00\xff" + comment
    body = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = header + body.compress(bytes.fromhex("9a0100")) + body.flush()
    s = grpc.PayloadSniffer(True)
    with pytest.raises(DecodeError, match="no KaspadMessage payload"):
        for i in range(0, len(data), 1024):
            s.feed(data[i:i + 1024])
    assert i <= grpc.SNIFF_INPUT_LIMIT + 1024


def test_sniffer_partial_message_returns_none() -> None:
    s = grpc.PayloadSniffer(False)
    assert s.feed(b"") is None
    assert s.feed(b"\xa8") is None
    assert s.feed(b"\x06") is None
    assert s.feed(b"\x05\x82") is None
    assert s.feed(b"\x01") == proto.PING


def test_reader_and_sniffer_together() -> None:
    """The relay's use: reader events feed a per-message sniffer."""
    msgs = [
        (True, grpc.gzip_compress(bytes.fromhex("a20107080810808080" "04"))),
        (False, bytes.fromhex("9a0100")),
        (True, grpc.gzip_compress(_kaspad(proto.BLOCK, bytes(100_000)))),
        (False, bytes.fromhex("920300")),
    ]
    stream = b"".join(grpc.frame(p, compressed=c) for c, p in msgs)
    reader = grpc.MessageReader(MAX)
    tags = []
    sniffer: grpc.PayloadSniffer | None = None
    for i in range(0, len(stream), 7):
        for ev in reader.feed(stream[i:i + 7]):
            if isinstance(ev, grpc.MessageStart):
                sniffer = grpc.PayloadSniffer(ev.compressed)
            elif isinstance(ev, grpc.MessageChunk):
                assert sniffer is not None
                if sniffer.tag is None:
                    sniffer.feed(ev.data)
            else:
                assert sniffer is not None
                tags.append(sniffer.tag)
    assert tags == [proto.VERSION, proto.VERACK, proto.BLOCK, proto.READY]


def test_sniffer_gzip_with_optional_header_fields() -> None:
    # FNAME + FCOMMENT + FHCRC-less header, as other gzip encoders may write.
    comment_header = b"\x1f\x8b\x08\x18\x00\x00\x00\x00\x00\xff" + b"name\x00" + b"comment\x00"
    msg = bytes.fromhex("a80605") + proto.make_len_field(proto.BLOCK, bytes(1000)).raw
    body = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = body.compress(msg) + body.flush()
    data = (comment_header + deflated + zlib.crc32(msg).to_bytes(4, "little")
            + len(msg).to_bytes(4, "little"))
    assert gzip.decompress(data) == msg
    assert grpc.gzip_decompress(data, MAX) == msg
    s = grpc.PayloadSniffer(True)
    tag = None
    for i in range(len(data)):
        tag = s.feed(data[i:i + 1])
        if tag is not None:
            break
    assert tag == proto.BLOCK


def test_a_paused_sniffer_inflates_only_the_start_until_it_follows() -> None:
    """The relay's sniffers pause at the tag: a message decoded whole for a rewrite (a Version
    bomb) costs a few KiB of inflating here, not the burst; one passed on is followed to its end
    from the same bytes, second payload field included."""
    bomb = grpc.gzip_compress(_kaspad(proto.VERSION, bytes(4 * MAX)))
    s = grpc.PayloadSniffer(True, pause_at_tag=True)
    assert s.feed(bomb) == proto.VERSION
    assert s.budget.inflated <= grpc.SNIFF_PIECE
    sneaky = grpc.gzip_compress(_kaspad(proto.PING, bytes(64 * 1024))
                                + _kaspad(proto.ADDRESSES, b""))
    p = grpc.PayloadSniffer(True, pause_at_tag=True)
    assert p.feed(sneaky) == proto.PING and p.budget.inflated <= grpc.SNIFF_PIECE
    with pytest.raises(DecodeError):
        p.follow()  # the held rest holds a second payload field
    whole = grpc.gzip_compress(_kaspad(proto.PING, bytes(64 * 1024)))
    q = grpc.PayloadSniffer(True, pause_at_tag=True)
    for i in range(0, len(whole), 7):
        q.feed(whole[i:i + 7])
        if q.tag is not None and i < 100:
            q.follow()
    assert q.budget.inflated == len(_kaspad(proto.PING, bytes(64 * 1024)))
