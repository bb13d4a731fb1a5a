"""Fuzz targets: plain functions over fuzz bytes that raise :class:`ContractViolation`.

Every target takes one ``bytes`` input and turns it into *structured* input with
:class:`Source` (like atheris' ``FuzzedDataProvider``): real kaspad messages, HTTP/2 conversations
built with ``h2`` and the builders of ``tests/core/relay_harness.py``, then mutated (bit flips,
truncation, splices, raw frames, arbitrary chunkings down to one byte at a time). An exhausted
``Source`` yields zeros and zeros always pick the ordinary choice, so the empty input is the happy
path and every mutation of it is a small step away.

The contract (docs/fuzzing.md): the code under test may only raise the project's declared error
types (``DecodeError`` for ``proto``, ``FramingError``/``DecodeError`` for ``grpc``,
``OnionAddressError`` for ``onion``, ``ProtocolError`` subclasses for the policy; the relay and the
probe client raise nothing at all and report bad input as a typed close). Any other exception
escaping (``IndexError``, ``KeyError``, ``AssertionError``, an ``h2`` exception, ``zlib.error``,
``UnicodeDecodeError``, ``RecursionError``, ...) or a broken invariant raises
:class:`ContractViolation`.

Every target also has a **cost bound** (issue 10; docs/fuzzing.md, "Costs"): the CPU time and
the peak of Python allocations (``tracemalloc``, :func:`tests.costs.python_memory`) of one input
may not exceed the target's :class:`CostBound`. Inputs are at most a few KiB, so an input that
costs seconds or tens of MiB is a cheap input with an expensive effect (a gzip bomb, millions of
tiny protobuf fields, an address list decoded before its size was checked), and fails like an
exception would.

The same functions run under hypothesis in ``tests/fuzz/test_fuzz.py`` and under atheris or
hypothesis in the campaign (``python3 -m tests.fuzz.campaign``).
"""

from __future__ import annotations

import base64
import functools
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from bridge.core import grpc, onion, policy, probe, proto
from bridge.core.errors import (
    BridgeError,
    DecodeError,
    Fault,
    FramingError,
    OnionAddressError,
    ProtocolError,
)
from bridge.core.events import AddressesLearned, Closed, RelayEvent
from bridge.core.relay import Relay, RelaySettings, Side, new_upstream_connection
from tests.core.relay_harness import READY, REQUEST_ADDRESSES, REQUEST_HEADERS, VERACK
from tests.costs import python_memory

T = TypeVar("T")


class ContractViolation(Exception):
    """A fuzz target found a bug: an undeclared exception escaped or an invariant broke."""


def guarded(fn: Callable[[], T], allowed: tuple[type[BaseException], ...]) -> T | None:
    """Run ``fn``; a declared error (``allowed``) gives ``None``, anything else is a violation.

    ``KeyboardInterrupt``/``SystemExit`` pass through; ``ContractViolation`` from an inner check
    too.
    """
    try:
        return fn()
    except ContractViolation:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except allowed:
        return None
    except BaseException as exc:  # MemoryError and RecursionError included on purpose
        raise ContractViolation(f"undeclared {type(exc).__name__} escaped: {exc!r}") from exc


MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class CostBound:
    """What one input of a target may cost: process CPU seconds and peak Python allocation
    (bytes). Set from the targets' worst honest inputs, with a wide margin (docs/fuzzing.md)."""

    cpu: float
    memory: int


#: Multiplies the CPU bounds: the campaign's atheris workers run instrumented code (slower).
COST_SCALE = 1.0
#: The largest cost seen per target (for calibration and the campaign's summary).
COSTS_SEEN: dict[str, tuple[float, int]] = {}


#: Per target (docs/fuzzing.md, "Costs").
BOUNDS: dict[str, CostBound] = {
    # (worst honest input seen in 500 hypothesis + random inputs, docs/fuzzing.md "Costs")
    "grpc_reader": CostBound(0.5, 16 * MiB),  # 26 ms, 0.01 MiB
    "grpc_sniffer": CostBound(0.5, 16 * MiB),  # 1 ms, 0.3 MiB
    "proto": CostBound(2.0, 16 * MiB),  # 181 ms, 0.7 MiB (2500-entry Addresses)
    "onion": CostBound(0.5, 16 * MiB),  # 2 ms, 0.01 MiB
    "policy": CostBound(1.0, 16 * MiB),  # 6 ms, 0.3 MiB
    "probe": CostBound(1.0, 16 * MiB),  # 27 ms, 0.7 MiB
    "relay": CostBound(2.0, 16 * MiB),  # 106 ms, 0.7 MiB
    "relay_passthrough": CostBound(5.0, 16 * MiB),  # 598 ms, 0.9 MiB (32 x 70 KB messages)
    "hostile": CostBound(2.0, 16 * MiB),  # 256 ms, 1.3 MiB
}


def contract(bound: CostBound) -> Callable[[Callable[[bytes], None]], Callable[[bytes], None]]:
    """Decorates a target: an exception escaping a call the target did not guard is a
    violation too, and so is an input that costs more than ``bound``."""
    def decorate(fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
        name = fn.__name__.removeprefix("fuzz_")

        @functools.wraps(fn)
        def target(data: bytes) -> None:
            with python_memory() as mem:
                t0 = time.process_time()
                guarded(lambda: fn(data), ())
                cpu = time.process_time() - t0
            seen = COSTS_SEEN.get(name, (0.0, 0))
            COSTS_SEEN[name] = (max(seen[0], cpu), max(seen[1], mem.peak))
            check(mem.peak <= bound.memory,
                  f"one input allocated {mem.peak / MiB:.1f} MiB at its peak (bound "
                  f"{bound.memory / MiB:.1f} MiB)")
            check(cpu <= bound.cpu * COST_SCALE,
                  f"one input took {cpu:.2f} s of CPU (bound {bound.cpu * COST_SCALE:.2f} s)")

        return target

    return decorate


def check(condition: bool, what: str) -> None:
    """An invariant (not ``assert``: it must hold under ``python -O`` too)."""
    if not condition:
        raise ContractViolation(what)


# ---------------------------------------------------------------------------------------------
# Structured input from bytes


class Source:
    """Decisions drawn from fuzz bytes; exhausted, it yields zeros (the ordinary choice)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.data)

    def u8(self) -> int:
        if self.pos >= len(self.data):
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def below(self, n: int) -> int:
        """An integer in ``[0, n)``."""
        if n <= 1:
            return 0
        if n <= 256:
            return self.u8() % n
        if n <= 65536:
            return (self.u8() << 8 | self.u8()) % n
        return int.from_bytes(self.take(4).ljust(4, b"\0"), "big") % n

    def chance(self, k: int) -> bool:
        """True with probability about ``1/k`` (False on zeros)."""
        return self.below(k) == k - 1

    def flag(self) -> bool:
        return self.u8() & 1 == 1

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def blob(self, max_len: int) -> bytes:
        return self.take(self.below(max_len + 1))

    def pick(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out


INTERESTING_INTS = (0, 1, 7, 8, 0x7F, 0x80, 0xFF, 0x3FFF, 0x4000, 0xFFFF, 0x10000, 16111,
                    (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 63, (1 << 64) - 1)


def some_int(src: Source) -> int:
    if src.flag():
        return src.pick(INTERESTING_INTS)
    return int.from_bytes(src.take(src.below(9)), "little")


def mutate(src: Source, data: bytes) -> bytes:
    """One to four byte-level mutations of ``data``."""
    buf = bytearray(data)
    for _ in range(1 + src.below(4)):
        op = src.below(7)
        at = src.below(len(buf) + 1)
        if op == 0 and buf:  # flip a bit
            i = at % len(buf)
            buf[i] ^= 1 << src.below(8)
        elif op == 1 and buf:  # interesting byte
            buf[at % len(buf)] = src.pick((0x00, 0xFF, 0x80, 0x7F, 0x01, 0x08, 0x0A, 0x12))
        elif op == 2:  # insert
            buf[at:at] = src.blob(16)
        elif op == 3:  # delete a range
            del buf[at:at + 1 + src.below(16)]
        elif op == 4:  # truncate
            del buf[at:]
        elif op == 5 and buf:  # duplicate a range
            n = 1 + src.below(32)
            buf[at:at] = buf[at:at + n]
        else:  # overwrite with random bytes
            new = src.blob(8)
            buf[at:at + len(new)] = new
    return bytes(buf)


def chunks(src: Source, data: bytes) -> Iterator[bytes]:
    """``data`` in an arbitrary chunking: whole, one byte at a time, or drawn sizes."""
    mode = src.below(4)
    if mode == 0 or not data:
        yield data
        return
    if mode == 1:  # one byte at a time (the first 2 KiB; then drawn sizes, to bound the cost)
        for i in range(min(len(data), 2048)):
            yield data[i:i + 1]
        data = data[2048:]
        mode = 2
    pos = 0
    while pos < len(data):
        if src.exhausted:  # out of decisions: the rest at once
            yield data[pos:]
            return
        # small pieces for the first 4 KiB, then up to a frame's worth (bounds the cost)
        top = 16 if mode == 2 and pos < 4096 else 16384
        n = 1 + src.below(top)
        yield data[pos:pos + n]
        pos += n


# -- kaspad messages ---------------------------------------------------------------------------

_B32 = b"abcdefghijklmnopqrstuvwxyz234567"


def onion_host(src: Source) -> bytes:
    """A valid v3 onion host, a well-shaped one with a bad checksum/version, or junk."""
    kind = src.below(5)
    if kind == 0:
        return onion.OnionAddress(src.take(32).ljust(32, b"\0")).host.encode()
    if kind == 1:
        host = onion.OnionAddress(src.take(32).ljust(32, b"\1")).host.encode()
        return mutate(src, host)
    if kind == 2:
        return bytes(_B32[b % 32] for b in src.take(56).ljust(56, b"a")) + b".onion"
    if kind == 3:
        return base64.b32encode(src.take(35).ljust(35, b"\0")).lower() + b".ONION"
    return src.blob(80)


def net_address(src: Source) -> bytes:
    """An encoded NetAddress: good IPs, bad lengths, onions (good and bad), wrong wire types."""
    fields: list[proto.Field] = []
    if src.chance(3):
        fields.append(proto.make_varint_field(proto.NA_TIMESTAMP, some_int(src)))
    kind = src.below(8)
    if kind in (0, 6):
        fields.append(proto.make_len_field(proto.NA_IP, src.take(4).ljust(4, b"\1")))
    elif kind == 1:
        fields.append(proto.make_len_field(proto.NA_IP, src.take(16).ljust(16, b"\0")))
    elif kind == 2:
        fields.append(proto.make_len_field(proto.NA_IP, src.blob(20)))
    elif kind == 7:
        fields.append(proto.make_varint_field(proto.NA_IP, some_int(src)))  # wrong wire type
    port = src.pick((16111, 0, 65535, 65536, (1 << 64) - 1, -1, 1))
    if port == -1:
        port = src.below(1 << 16)
    if src.chance(8):
        fields.append(proto.make_len_field(proto.NA_PORT, src.blob(4)))  # wrong wire type
    else:
        fields.append(proto.make_varint_field(proto.NA_PORT, port))
    if kind in (3, 4, 6):
        fields.append(proto.make_len_field(proto.NA_ONION, onion_host(src)))
    elif kind == 5:
        fields.append(proto.make_varint_field(proto.NA_ONION, some_int(src)))
    if src.chance(6):
        fields.append(proto.make_len_field(6 + src.below(100), src.blob(8)))  # unknown field
    return proto.encode_fields(fields)


def version_payload(src: Source, *, node_id: bytes | None = None) -> bytes:
    """A VersionMessage payload with every field drawn (tag order like prost, or shuffled)."""
    fields = [proto.make_varint_field(proto.V_PROTOCOL, src.pick((8, 7, 9, 0, 6, 1 << 40)))]
    services = src.pick((proto.SERVICE_ADDRV2, 0, -1))
    if services == -1:
        services = some_int(src)
    if services:
        fields.append(proto.make_varint_field(proto.V_SERVICES, services))
    fields.append(proto.make_varint_field(proto.V_TIMESTAMP, some_int(src)))
    if src.chance(3):
        fields.append(proto.make_len_field(proto.V_ADDRESS, net_address(src)))
    if node_id is None:
        node_id = src.take(src.pick((16, 16, 16, 0, 15, 17, 32))).ljust(16, b"\x42")
    fields.append(proto.make_len_field(proto.V_ID, node_id))
    fields.append(proto.make_len_field(proto.V_USER_AGENT,
                                       src.pick((b"/kaspad:1.0.1/", b"")) + src.blob(8)))
    if src.chance(6):
        fields.append(proto.make_varint_field(8, src.below(3)))  # disableRelayTx
    network = src.pick((b"kaspa-simnet", b"kaspa-mainnet", b"", b"\xff\xfe"))
    fields.append(proto.make_len_field(proto.V_NETWORK, network))
    if src.chance(8):  # a known field with the wrong wire type
        num = src.pick((proto.V_PROTOCOL, proto.V_SERVICES, proto.V_ADDRESS, proto.V_ID,
                        proto.V_NETWORK))
        fields.append(proto.make_len_field(num, src.blob(4)) if src.flag()
                      else proto.make_varint_field(num, some_int(src)))
    if src.chance(8):
        fields.append(proto.make_len_field(11 + src.below(50), src.blob(8)))
    if src.chance(8):
        fields.reverse()
    return proto.encode_fields(fields)


def addresses_payload(src: Source) -> bytes:
    if src.chance(24):  # over kaspad's 2500 limit
        entry = proto.NetAddress.from_ip(b"\x01\x02\x03\x04", 16111)
        return proto.encode_addresses([entry] * (2500 + src.below(3)))
    out = b""
    for _ in range(src.below(7)):
        out += proto.make_len_field(1, net_address(src)).raw
    if src.chance(8):
        out += proto.make_len_field(2, src.blob(4)).raw  # includeAllSubnetworks-style junk
    return out


_OTHER_KNOWN = sorted(proto.KNOWN_PAYLOADS - {proto.VERSION, proto.VERACK, proto.READY,
                                              proto.ADDRESSES})


def kaspad_message(src: Source) -> bytes:
    """A decompressed KaspadMessage: real shapes from protocol.md §4 plus broken ones."""
    kind = src.below(20)
    if kind == 0:  # zeros: a benign message, so the happy path keeps the connection up
        msg = proto.make_len_field(proto.PING, proto.make_varint_field(1, some_int(src)).raw).raw
    elif kind == 1:
        msg = VERACK
    elif kind == 2:
        msg = READY
    elif kind == 3:
        msg = REQUEST_ADDRESSES
    elif kind == 4:
        msg = proto.make_len_field(proto.ADDRESSES, addresses_payload(src)).raw
    elif kind == 5:
        msg = proto.make_len_field(proto.VERSION, version_payload(src)).raw
    elif kind == 6:
        msg = proto.make_len_field(proto.PONG, proto.make_varint_field(1, some_int(src)).raw).raw
    elif kind == 7:
        msg = proto.make_len_field(proto.BLOCK, src.blob(300)).raw
    elif kind == 8:
        msg = proto.make_len_field(proto.INV_RELAY_BLOCK, proto.make_len_field(
            1, proto.make_len_field(1, src.take(32)).raw).raw).raw
    elif kind == 9:
        msg = proto.make_len_field(proto.REJECT, proto.make_len_field(1, src.blob(40)).raw).raw
    elif kind == 10:
        msg = proto.make_len_field(src.pick((4, 7, 64, 99, 100, 103, 1 << 20)),
                                   src.blob(8)).raw  # unknown payload numbers
    elif kind == 11:
        msg = b""
    elif kind == 12:
        msg = proto.make_varint_field(proto.REQUEST_ID, some_int(src)).raw
    elif kind == 13:
        msg = src.blob(64)
    elif kind == 14:
        msg = VERACK + READY  # two payloads
    elif kind == 15:
        msg = proto.make_varint_field(src.pick((proto.BLOCK, proto.VERSION)), 5).raw
    elif kind == 16:
        msg = proto.make_len_field(src.pick(_OTHER_KNOWN), src.blob(40)).raw
    elif kind == 17:
        msg = proto.make_len_field(proto.RESPONSE_ID, b"\x01").raw + READY  # id as LEN
    else:
        msg = proto.make_len_field(proto.ADDRESSES, b"").raw
    if src.chance(4):
        ids = proto.make_varint_field(src.pick((proto.RESPONSE_ID, proto.REQUEST_ID)),
                                      some_int(src)).raw
        msg = ids + msg if src.flag() else msg + ids
    if src.chance(6):
        msg = mutate(src, msg)
    return msg


def gzip_body(src: Source, plain: bytes) -> bytes:
    body = grpc.gzip_compress(plain) if src.flag() else probe.kaspad_gzip(plain)
    if src.chance(6):
        body = mutate(src, body)
    return body


# ---------------------------------------------------------------------------------------------
# Targets: grpc


def _oracle_frames(stream: bytes, max_length: int
                   ) -> tuple[list[tuple[bytes, bytes]], bool, bytes]:
    """The obvious parse of a whole gRPC stream: (messages, framing error?, unparsed tail)."""
    pos = 0
    out: list[tuple[bytes, bytes]] = []
    while len(stream) - pos >= grpc.PREFIX_LEN:
        flag = stream[pos]
        length = int.from_bytes(stream[pos + 1:pos + 5], "big")
        if flag not in (0, 1) or length > max_length:
            return out, True, stream[pos:]
        if len(stream) - pos - 5 < length:
            break
        out.append((stream[pos:pos + 5], stream[pos + 5:pos + 5 + length]))
        pos += 5 + length
    return out, False, stream[pos:]


@contract(BOUNDS["grpc_reader"])
def fuzz_grpc_reader(data: bytes) -> None:
    """MessageReader in any chunking agrees with a whole-stream oracle; only FramingError."""
    src = Source(data)
    max_length = src.pick((1 << 30, 0, 1, 5, 100, 4096))
    if src.chance(3):
        stream = src.rest()
    else:
        stream = b""
        for _ in range(src.below(8) + 1):
            flag = src.pick((0, 1, 0, 2, 0xFF))
            payload = src.blob(300)
            stream += bytes([flag]) + len(payload).to_bytes(4, "big") + payload
        if src.chance(4):
            stream = mutate(src, stream)
    want, want_error, tail = _oracle_frames(stream, max_length)
    reader = grpc.MessageReader(max_length)
    got: list[tuple[bytes, bytes]] = []
    cur: bytearray | None = None
    prefix = b""
    failed = False
    for piece in chunks(src, stream):
        events = guarded(lambda p=piece: reader.feed(p), (FramingError,))  # type: ignore[misc]
        if events is None:
            failed = True
            break
        for ev in events:
            if isinstance(ev, grpc.MessageStart):
                check(cur is None, "MessageStart inside a message")
                check(len(ev.prefix) == 5 and ev.prefix[0] in (0, 1), f"bad prefix {ev.prefix!r}")
                check(ev.compressed == (ev.prefix[0] == 1), "compressed flag mismatch")
                check(ev.length == int.from_bytes(ev.prefix[1:], "big"), "length mismatch")
                cur, prefix = bytearray(), ev.prefix
            elif isinstance(ev, grpc.MessageChunk):
                check(cur is not None and len(ev.data) > 0, "empty or stray MessageChunk")
                assert cur is not None
                cur += ev.data
            else:
                check(cur is not None, "MessageEnd without MessageStart")
                assert cur is not None
                got.append((prefix, bytes(cur)))
                cur = None
    check(failed == want_error, f"framing error {failed}, oracle says {want_error}")
    check(got == want[:len(got)], "messages differ from the oracle")
    if not failed:
        check(got == want, f"{len(got)} messages, oracle has {len(want)}")
        check(reader.messages == len(want), "message counter wrong")
        check(reader.at_boundary == (tail == b""), "at_boundary wrong")
        if cur is not None:
            check(bytes(cur) == tail[5:], "partial message bytes differ")


@contract(BOUNDS["grpc_sniffer"])
def fuzz_grpc_sniffer(data: bytes) -> None:
    """PayloadSniffer (plain and gzip) agrees with a full decode; only DecodeError."""
    src = Source(data)
    compressed = src.flag()
    plain = src.blob(200) if src.chance(4) else kaspad_message(src)
    body = (gzip_body(src, plain) if not src.chance(8) else src.blob(200)) if compressed else plain
    sniffer = grpc.PayloadSniffer(compressed)
    tag: int | None = None
    for piece in chunks(src, body):
        res = guarded(lambda p=piece: (sniffer.feed(p),), (DecodeError,))  # type: ignore[misc]
        if res is None:
            break
        if tag is not None:
            check(res[0] == tag, "sniffer changed its mind about the tag")
        tag = res[0]
    # the reference: inflate everything (tolerating corruption after the sniffed prefix)
    ref: bytes | None = body
    if compressed:
        try:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            ref = d.decompress(body, 1 << 20)
        except zlib.error:
            ref = None
    if tag is not None and ref is not None:
        try:
            want: int | str | None = proto.peek_payload_tag(ref)
        except DecodeError:
            want = "DecodeError"
        check(want == tag, f"sniffed tag {tag}, the whole message says {want}")
    limit = src.pick((1 << 20, 0, 10, 64))
    out = guarded(lambda: grpc.gzip_decompress(body, limit), (DecodeError,))
    if out is not None:
        check(len(out) <= limit, "gzip_decompress exceeded its limit")
        check(zlib.decompress(body, 16 + zlib.MAX_WBITS) == out, "gzip_decompress differs")


# ---------------------------------------------------------------------------------------------
# Targets: proto


def _exercise_netaddress(na: proto.NetAddress) -> None:
    for get in (lambda: na.ip, lambda: na.onion, lambda: na.port, na.kaspad_accepts):
        guarded(get, (DecodeError,))
    check(proto.NetAddress.decode(na.encode()).encode() == na.encode(), "NetAddress round trip")
    if guarded(na.kaspad_accepts, (DecodeError,)):
        ip = na.ip
        check(ip is not None and len(ip) in (4, 16) and na.port <= 0xFFFF and na.onion is None,
              "kaspad_accepts() accepted an entry kaspad rejects")


@contract(BOUNDS["proto"])
def fuzz_proto(data: bytes) -> None:
    """The protobuf subset: every decoder and accessor; only DecodeError; byte-exact round trips."""
    src = Source(data)
    mode = src.below(4)
    if mode == 0:
        buf = kaspad_message(src)
    elif mode == 1:
        buf = version_payload(src)
    elif mode == 2:
        buf = addresses_payload(src) if src.flag() else net_address(src)
    else:
        buf = src.rest()
    if src.chance(3):
        buf = mutate(src, buf)
    allowed = (DecodeError,)

    v = guarded(lambda: proto.decode_varint(buf, 0), allowed)
    if v is not None:
        check(proto.decode_varint(proto.encode_varint(v[0]), 0)[0] == v[0], "varint round trip")
    fields = guarded(lambda: proto.parse(buf), allowed)
    if fields is not None:
        check(proto.encode_fields(fields) == buf, "parse/encode is not byte-exact")
        for f in fields:
            guarded(lambda f=f: f.as_int, allowed)  # type: ignore[misc]
            guarded(lambda f=f: f.as_bytes, allowed)  # type: ignore[misc]
        check(all(f.number > 0 and f.wire_type in (0, 1, 2, 5) for f in fields), "bad field")

    full = guarded(lambda: proto.peek_payload_tag(buf), allowed)
    for cut in sorted({src.below(len(buf) + 1), len(buf) // 2, 1}):
        part = guarded(lambda c=cut: proto.peek_payload_tag(buf[:c]), allowed)  # type: ignore[misc]
        if full is not None and part is not None:
            check(part == full, f"peek of a prefix says {part}, the whole says {full}")
    guarded(lambda: proto.payload_tag(buf), allowed)

    env = guarded(lambda: proto.Envelope.decode(buf), allowed)
    if env is not None:
        again = proto.Envelope.decode(env.encode())
        check((again.tag, again.payload, [f.raw for f in again.others])
              == (env.tag, env.payload, [f.raw for f in env.others]), "Envelope round trip")

    ver = guarded(lambda: proto.Version.decode(buf), allowed)
    if ver is not None:
        check(ver.encode() == buf, "Version round trip is not byte-exact")
        for get in (lambda: ver.protocol_version, lambda: ver.services, lambda: ver.addrv2,
                    lambda: ver.node_id, lambda: ver.network, lambda: ver.user_agent,
                    lambda: ver.address):
            guarded(get, allowed)
        services = guarded(lambda: ver.services, allowed)
        if services is not None:
            ver.services = services | proto.SERVICE_ADDRV2
            check(ver.addrv2, "services setter lost ADDRv2")
        ver.address = None
        check(ver.address is None, "address setter")
        check(proto.Version.decode(ver.encode()).address is None, "re-decoded Version")

    entries = guarded(lambda: proto.decode_addresses(buf), allowed)
    if entries is not None:
        for na in entries[:64]:  # (an over-limit Addresses has 2500 identical entries)
            _exercise_netaddress(na)
        again_entries = proto.decode_addresses(proto.encode_addresses(entries))
        check([e.encode() for e in again_entries] == [e.encode() for e in entries],
              "Addresses round trip")
    na1 = guarded(lambda: proto.NetAddress.decode(buf), allowed)
    if na1 is not None:
        _exercise_netaddress(na1)


# ---------------------------------------------------------------------------------------------
# Targets: onion


@contract(BOUNDS["onion"])
def fuzz_onion(data: bytes) -> None:
    """OnionAddress.parse on anything; only OnionAddressError; accepted = canonical round trip."""
    src = Source(data)
    mode = src.below(4)
    if mode == 0:
        raw = onion_host(src)
        if src.chance(3):
            raw = mutate(src, raw)
        text = raw.decode("latin-1") if src.flag() else raw.decode("utf-8", "replace")
        if src.chance(4):
            text = text.upper() if src.flag() else text.swapcase()
    elif mode == 1:
        text = src.rest().decode("utf-8", "surrogateescape")
    elif mode == 2:
        host = onion.OnionAddress(src.take(32).ljust(32, b"\0")).service_id
        i = src.below(len(host))
        text = host[:i] + chr(src.below(0x3000)) + host[i + 1:]  # one odd character
        if src.flag():
            text += src.pick((".onion", ".ONION", ".onio", "\u0130.onion", " .onion", ".onion."))
    else:
        text = src.rest().decode("latin-1")
    check(isinstance(onion.is_onion_host(text), bool), "is_onion_host")
    addr = guarded(lambda: onion.OnionAddress.parse(text), (OnionAddressError,))
    if addr is not None:
        check(len(addr.pubkey) == 32, "pubkey length")
        check(addr.host == addr.service_id + ".onion" and addr.host.islower(), "canonical host")
        check(text.lower() in (addr.host, addr.service_id), f"{text!r} parsed as {addr.host}")
        check(onion.OnionAddress.parse(addr.host) == addr, "host round trip")
        check(onion.OnionAddress.parse(addr.service_id.upper()) == addr, "upper-case round trip")
    key = src.blob(40)
    made = guarded(lambda: onion.OnionAddress(key), (OnionAddressError,))
    if made is not None:
        check(onion.OnionAddress.parse(made.host) == made, "from_pubkey round trip")


# ---------------------------------------------------------------------------------------------
# Targets: policy


def _check_rewritten(pol: policy.ConnectionPolicy, direction: policy.Direction, tag: int,
                     original: bytes, out: bytes | None) -> None:
    if out is None:
        check(tag == proto.ADDRESSES and direction is policy.Direction.TO_KASPAD,
              f"policy dropped a {proto.payload_name(tag)} {direction.value}")
        return
    env = proto.Envelope.decode(out)  # must decode: we produced it
    orig = proto.Envelope.decode(original)
    check(env.tag == tag, "rewrite changed the payload type")
    check([f.raw for f in env.others] == [f.raw for f in orig.others], "rewrite lost the ids")
    to_kaspad = direction is policy.Direction.TO_KASPAD
    if tag == proto.VERSION:
        v = proto.Version.decode(env.payload)
        ov = proto.Version.decode(orig.payload)
        check(v.node_id == ov.node_id, "Version id changed")
        addr = v.address
        if to_kaspad:
            check(len(v.node_id) == 16, "a Version with a bad id reached kaspad")
            check(addr is None or addr.kaspad_accepts(), "kaspad gets a Version.address it "
                  "rejects (or an onion)")
        else:
            check(v.addrv2, "outgoing Version lacks the ADDRv2 bit")
            if pol.settings.via_tor and not pol.settings.advertise_address:
                check(addr is None, "kaspad's Version.address leaked over Tor")
    else:
        entries = proto.decode_addresses(env.payload)
        if to_kaspad:
            check(len(entries) <= policy.MAX_ADDRESSES_RECEIVE, "too many addresses to kaspad")
            check(all(e.kaspad_accepts() for e in entries),
                  "kaspad gets an Addresses entry it rejects (or an onion)")
        else:
            onions = [f.value for e in entries
                      if (f := proto.first(e.fields, proto.NA_ONION)) is not None]
            if not pol.remote.addrv2:
                check(not onions, "onion gossiped to a peer without ADDRv2")
            if pol.remote_onion is not None:
                check(pol.remote_onion.host.encode() not in onions,
                      "remote's own onion gossiped back")


@contract(BOUNDS["policy"])
def fuzz_policy(data: bytes) -> None:
    """ConnectionPolicy classify/rewrite on arbitrary traffic (gzip'd or not) in both
    directions; only ProtocolError subclasses; nothing kaspad disconnects on reaches it."""
    src = Source(data)
    own = None if src.chance(4) else policy.OnionPeer(onion.OnionAddress(bytes(range(32))), 16111)
    gossip = policy.GossipState(own_onion=own, capacity=src.pick((4096, 1, 3)))
    for i in range(src.below(4)):
        gossip.learn(policy.OnionPeer(onion.OnionAddress(bytes([i + 1]) * 32), 16111), "seed")
    settings = policy.PolicySettings(advertise_address=src.chance(4), via_tor=not src.chance(4),
                                     max_rewrite_bytes=src.pick((4 << 20, 100, 2000)))
    pol = policy.ConnectionPolicy(gossip, settings, remote_label="fuzz peer")
    if src.chance(3):
        pol.remote_onion = onion.OnionAddress(bytes([2]) * 32)
    kaspad_id = bytes(range(16))
    script = {policy.Direction.TO_REMOTE: 0, policy.Direction.TO_KASPAD: 0}
    for _ in range(24):
        if src.exhausted and all(n >= 3 for n in script.values()):
            break
        direction = policy.Direction.TO_KASPAD if src.flag() else policy.Direction.TO_REMOTE
        step = script[direction]
        script[direction] += 1
        if step < 3 and not src.chance(5):  # the handshake, with drawn Versions
            if step == 0:
                nid = kaspad_id if direction is policy.Direction.TO_REMOTE else None
                plain = proto.make_len_field(proto.VERSION, version_payload(src, node_id=nid)).raw
            else:
                plain = VERACK if step == 1 else READY
        else:
            plain = kaspad_message(src)
        if src.flag():  # the relay inflates a gzip message before handing it to the policy
            body = gzip_body(src, plain)
            inflated = guarded(lambda b=body: grpc.gzip_decompress(  # type: ignore[misc]
                b, settings.max_rewrite_bytes), (DecodeError,))
            if inflated is None:
                return  # the relay closes the connection here
            plain = inflated
        tag = guarded(lambda p=plain: proto.payload_tag(p), (DecodeError,))  # type: ignore[misc]
        if tag is None:
            return
        action = guarded(lambda d=direction, t=tag: pol.classify(d, t),  # type: ignore[misc]
                         (ProtocolError,))
        if action is None:
            return
        if action is policy.Action.REWRITE:
            check(tag in (proto.VERSION, proto.ADDRESSES), f"REWRITE for {tag}")
            res = guarded(lambda d=direction, p=plain: (pol.rewrite(d, p),),  # type: ignore[misc]
                          (ProtocolError,))
            if res is None:
                return
            _check_rewritten(pol, direction, tag, plain, res[0])
        else:
            check(tag not in (proto.VERSION, proto.ADDRESSES), f"PASS for {tag}")
        if pol.can_refresh() and src.chance(4):
            pol.bridge_asked()


# ---------------------------------------------------------------------------------------------
# HTTP/2 wire peers for the probe and relay targets


def raw_frame(src: Source, sid_hint: int) -> bytes:
    """One HTTP/2 frame with a drawn type, flags, stream id and (often wrong) payload."""
    ftype = src.pick((0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xA, 0xB, 0x10, 0xFF))
    flags = src.pick((0, 1, 4, 5, 8, 0x20, 0x25, 0xFF))
    sid = src.pick((sid_hint, 0, sid_hint + 2, 2, 1 << 31 | sid_hint, 0x7FFFFFFF))
    payload = src.blob(64)
    if ftype == 8 and src.flag():
        payload = src.pick((b"\0\0\0\0", b"\x7f\xff\xff\xff", b"\0\0\x10\0"))
    length = len(payload) if not src.chance(8) else src.pick((0, 1, 16385, 1 << 20))
    return length.to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


class WirePeer:
    """One HTTP/2 endpoint driven by the fuzz script; records every gRPC message it gets."""

    def __init__(self, client: bool) -> None:
        self.client = client
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=client, header_encoding=None))
        self.conn.initiate_connection()
        self.sid: int | None = None
        self.reader = grpc.MessageReader(1 << 31)
        self.received: list[tuple[bool, bytes]] = []  # (compressed, body exactly as framed)
        self.sent: list[tuple[bool, bytes]] = []
        self._cur = bytearray()
        self._flag = False
        self.pending = bytearray()
        self.auto_ack = True
        self.unacked = 0
        self.opened = False
        self.responded = False
        self.ended = False
        self.closed = False  # got GOAWAY or RST_STREAM
        self.lenient = False  # h2 may refuse valid input (own GOAWAY, shrunk window)
        self.dead = False  # its h2 state no longer matches the wire (raw bytes were injected)
        self.wire = bytearray()  # bytes on their way to the other end, mutable by the script

    def collect(self) -> None:
        if not self.dead:
            self.wire += self.conn.data_to_send()

    def open(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.sid, headers)
        self.opened = True

    def respond(self, headers: list[tuple[bytes, bytes]], end: bool = False) -> None:
        assert self.sid is not None
        self.conn.send_headers(self.sid, headers, end_stream=end)
        self.responded = True

    def send(self, body: bytes, compressed: bool) -> None:
        self.sent.append((compressed, body))
        self.send_raw(grpc.frame(body, compressed=compressed))

    def send_raw(self, data: bytes) -> None:
        self.pending += data
        self.flush()

    def flush(self) -> None:
        if self.sid is None or self.dead:
            return
        while self.pending:
            n = min(self.conn.local_flow_control_window(self.sid),
                    self.conn.max_outbound_frame_size, len(self.pending))
            if n <= 0:
                return
            self.conn.send_data(self.sid, bytes(self.pending[:n]))
            del self.pending[:n]

    def ack(self) -> None:
        if self.unacked and self.sid is not None and not self.dead:
            self.conn.acknowledge_received_data(self.unacked, self.sid)
            self.unacked = 0

    def receive(self, data: bytes) -> None:
        """Raises h2's ProtocolError for bad HTTP/2 and FramingError for bad gRPC framing."""
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.sid = ev.stream_id
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == self.sid:
                self.unacked += ev.flow_controlled_length or 0
                for m in self.reader.feed(ev.data or b""):
                    if isinstance(m, grpc.MessageStart):
                        self._cur = bytearray()
                        self._flag = m.compressed
                    elif isinstance(m, grpc.MessageChunk):
                        self._cur += m.data
                    else:
                        self.received.append((self._flag, bytes(self._cur)))
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended = True
            elif isinstance(ev, h2.events.StreamReset | h2.events.ConnectionTerminated):
                self.closed = True
        try:  # the peer's own reaction: h2 may refuse it (stream reset, GOAWAY received)
            if self.auto_ack:
                self.ack()
            if self.pending:
                self.flush()
        except _H2_API_ERRORS:
            self.lenient = True  # python-h2 closes its own state machine on a refused call


_H2_API_ERRORS = (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError)


def h2_control(src: Source, peer: WirePeer) -> None:
    """A legal-for-h2 control action of the peer's own (the script's, not the target's)."""
    if peer.dead:
        return
    op = src.below(7)
    try:
        if op == 0:
            peer.conn.ping(src.take(8).ljust(8, b"\0"))
        elif op == 1:
            peer.conn.increment_flow_control_window(1 + src.below(1 << 20))
        elif op == 2:
            code = src.pick((h2.settings.SettingCodes.INITIAL_WINDOW_SIZE,
                             h2.settings.SettingCodes.MAX_FRAME_SIZE,
                             h2.settings.SettingCodes.HEADER_TABLE_SIZE))
            value = src.pick((0, 1, 16384, 65535, 1 << 20))
            peer.conn.update_settings({code: value})
            if code == h2.settings.SettingCodes.INITIAL_WINDOW_SIZE and value < 65535:
                peer.lenient = True  # python-h2 refuses data beyond a shrunk window (RFC: ok)
            if code == h2.settings.SettingCodes.HEADER_TABLE_SIZE:
                # hpack 4.2's encoder signals every table size change, not min + final
                # (RFC 7541 §4.2), which python-h2's decoder refuses: docs/fuzzing.md
                peer.lenient = True
        elif op == 3 and peer.sid is not None:
            peer.conn.reset_stream(peer.sid, src.pick((0, 1, 8, 0xFF)))
        elif op == 4:
            peer.conn.close_connection(src.pick((0, 1, 2)))
            peer.lenient = True
        elif op == 5 and peer.sid is not None:
            if peer.client or not src.flag():
                peer.conn.end_stream(peer.sid)
            else:
                peer.conn.send_headers(peer.sid, [(b"grpc-status", src.pick((b"0", b"14", b"x")))],
                                       end_stream=True)
        elif op == 6 and peer.sid is not None:
            peer.conn.increment_flow_control_window(1 + src.below(1 << 16), peer.sid)
    except (*_H2_API_ERRORS, ValueError, KeyError):
        peer.lenient = True  # h2 refused the script's request (and may have closed its state)


def request_headers(src: Source) -> list[tuple[bytes, bytes]]:
    headers = list(REQUEST_HEADERS)
    if src.chance(4):
        i = src.below(len(headers))
        name, _value = headers[i]
        headers[i] = (name, src.pick((b"GET", b"/other", b"zstd", b"", b"identity",
                                      b"/protowire.P2P/MessageStream\x00")))
    if src.chance(8):
        headers.append((b"grpc-encoding", b"identity"))
    return headers


def response_headers(src: Source) -> tuple[list[tuple[bytes, bytes]], bool]:
    headers = [(b":status", b"200"), (b"content-type", b"application/grpc"),
               (b"grpc-encoding", b"gzip")]
    end = False
    if src.chance(4):
        k = src.below(5)
        if k == 0:
            headers[0] = (b":status", src.pick((b"404", b"500", b"20")))
        elif k == 1:
            headers += [(b"grpc-status", src.pick((b"14", b"0", b"\xff")))]
            end = src.flag()
        elif k == 2:
            headers[2] = (b"grpc-encoding", src.pick((b"zstd", b"identity", b"deflate")))
        elif k == 3:
            del headers[2]
        else:
            headers.append((b"grpc-message", src.blob(20).replace(b"\n", b"").replace(b"\r", b"")
                            .replace(b"\0", b"")))
    return headers, end


def deliver_mutated(src: Source, peer: WirePeer) -> None:
    """Mutate the HTTP/2 bytes already on the wire (real frames) and mark the peer desynced."""
    if peer.wire:
        peer.wire[:] = mutate(src, bytes(peer.wire))
        peer.dead = True


# ---------------------------------------------------------------------------------------------
# Target: probe


@contract(BOUNDS["probe"])
def fuzz_probe(data: bytes) -> None:
    """ProbeClient against a scripted, mutated kaspad server: nothing escapes receive(),
    timeout(), connection_lost() or close(); exactly one Closed, after which nothing is sent."""
    src = Source(data)
    client = probe.ProbeClient(
        src.pick(("kaspa-simnet", "kaspa-mainnet")), now_ms=1_760_000_000_000,
        node_id=bytes(range(16)), compress=not src.chance(4),
        max_message=src.pick((probe.DEFAULT_MAX_MESSAGE, 64, 1000)),
        reply_addresses=[proto.NetAddress.from_ip(b"\x01\x02\x03\x04", 16111)],
    )
    peer = WirePeer(client=False)
    peer.receive(client.initiate())
    events: list[probe.Event] = []
    drained_after_finish = False
    script = [lambda: proto.make_len_field(proto.VERSION, version_payload(src)).raw,
              lambda: VERACK, lambda: READY,
              lambda: proto.make_len_field(proto.ADDRESSES, addresses_payload(src)).raw]
    step = 0
    gzip_ok = True

    def call(fn: Callable[[], list[probe.Event]]) -> None:
        nonlocal drained_after_finish
        got = guarded(fn, ())
        assert got is not None
        events.extend(got)
        out = guarded(client.data_to_send, ())
        assert out is not None
        if drained_after_finish:
            check(out == b"", f"probe sent {len(out)} bytes after it finished")
        if client.finished:
            drained_after_finish = True
        if out and not peer.dead:
            try:
                peer.receive(out)
            except h2.exceptions.ProtocolError as exc:
                if not peer.lenient:
                    raise ContractViolation(f"probe sent invalid HTTP/2: {exc!r}") from exc
                peer.dead = True

    def deliver() -> None:
        peer.collect()
        wire = bytes(peer.wire)
        peer.wire.clear()
        for piece in chunks(src, wire):
            call(lambda p=piece: client.receive(p))  # type: ignore[misc]

    for _ in range(40):
        if src.exhausted and step > len(script):
            break
        op = src.below(12)
        try:
            if op == 0 or op > 9:
                if not peer.responded:
                    headers, end = response_headers(src)
                    gzip_ok = (b"grpc-encoding", b"gzip") in headers
                    peer.respond(headers, end)
                else:
                    plain = script[step]() if step < len(script) else kaspad_message(src)
                    step += 1
                    compressed = gzip_ok and not src.chance(4)
                    peer.send(gzip_body(src, plain) if compressed else plain, compressed)
                    deliver()
            elif op == 1:
                peer.send(kaspad_message(src), False)
            elif op == 2:
                peer.send_raw(src.blob(64))
            elif op == 3:
                peer.collect()
                peer.wire += raw_frame(src, peer.sid or 1)
                peer.dead = True
            elif op == 4:
                h2_control(src, peer)
            elif op == 5:
                deliver()
            elif op == 6:
                peer.collect()
                deliver_mutated(src, peer)
            elif op == 7:
                call(lambda: client.timeout(src.pick((10, 4, 8, 0.5))))
            elif op == 8:
                call(client.connection_lost)
            else:
                call(lambda: client.close("fuzz"))
        except _H2_API_ERRORS:
            peer.lenient = True  # the scripted peer's own h2 refused (e.g. its stream is closed)
    deliver()

    closed = [i for i, e in enumerate(events) if isinstance(e, probe.Closed)]
    failed = [e for e in events if isinstance(e, probe.Failed)]
    check(len(closed) <= 1, f"{len(closed)} Closed events")
    check(len(failed) <= 1, f"{len(failed)} Failed events")
    check(client.finished == bool(closed), "finished but no Closed event (or the reverse)")
    if closed:
        check(closed[0] == len(events) - 1, "events after Closed")
    if failed:
        check(client.error is failed[0].error, "Failed.error is not client.error")
        check(isinstance(failed[0].error, BridgeError), "untyped failure")
    if client.result is not None:
        check(not failed, "a harvest and a failure")
        check(len(client.result.ips) + len(client.result.onions) <= probe.MAX_ADDRESSES_RECEIVE,
              "harvest over kaspad's limit")
        check(all(0 <= e.port <= 0xFFFF and not e.ip.is_loopback for e in client.result.ips),
              "harvested an IP kaspad would not accept")


# ---------------------------------------------------------------------------------------------
# Targets: relay


_WINDOWS = (65535, 512 * 1024, 16384 * 5)


def _payload_fields(plain: bytes) -> list[int] | None:
    """The numbers of a KaspadMessage's payload fields (length-delimited, not an id), walking
    its top level without copying; ``None`` if it does not parse."""
    out = []
    pos = 0
    try:
        while pos < len(plain):
            key, pos = proto.decode_varint(plain, pos)
            if key & 7 == proto.LEN:
                length, pos = proto.decode_varint(plain, pos)
                pos += length
                if key >> 3 not in (proto.RESPONSE_ID, proto.REQUEST_ID):
                    out.append(key >> 3)
            elif key & 7 == proto.VARINT:
                _, pos = proto.decode_varint(plain, pos)
            else:
                pos += {proto.I64: 8, proto.I32: 4}.get(key & 7, 1 << 62)
    except DecodeError:
        return None
    return out if pos == len(plain) else None


class RelayRig:
    """A Relay between two WirePeers, with the checks every step runs."""

    def __init__(self, src: Source, *, kaspad_side: Side, settings: RelaySettings,
                 pol_settings: policy.PolicySettings, attach: bool = True) -> None:
        gossip = policy.GossipState(
            own_onion=policy.OnionPeer(onion.OnionAddress(bytes(range(32))), 16111))
        gossip.learn(policy.OnionPeer(onion.OnionAddress(bytes(range(1, 33))), 16111), "seed")
        self.policy = policy.ConnectionPolicy(gossip, pol_settings, remote_label="fuzz peer")
        self.relay = Relay(self.policy, kaspad_side=kaspad_side,
                           upstream_authority=b"x.onion:16111", settings=settings)
        self.settings = settings
        self.kaspad_side = kaspad_side
        self.peers = {Side.DOWN: WirePeer(client=True), Side.UP: WirePeer(client=False)}
        self.attached = False
        self.close_drained = False
        self.src = src
        #: everything the relay returned, in order
        self.events: list[RelayEvent] = []
        # the tags kaspad saw, to check it never gets what it would disconnect on
        self.kaspad_seen = 0
        self.kaspad_stage = 0
        self.kaspad_addresses = 0
        if attach:
            self.attach()

    def attach(self) -> None:
        # like the shell (bridge/net/runner.py): no upstream for a relay that already closed
        if not self.attached and self.relay.closed is None:
            self.attached = True
            self.call(lambda: self.relay.attach_upstream(new_upstream_connection(self.settings)))

    @property
    def bound(self) -> int:
        """What the relay may hold: per direction one window of pass-through data, one message
        being sniffed or collected for rewriting, and the rewritten output (≤ 1000 onions)."""
        held = max(grpc.SNIFF_INPUT_LIMIT, self.policy.settings.max_rewrite_bytes)
        return 2 * (self.settings.window + held + 2 * self.settings.max_frame + 200_000)

    def call(self, fn: Callable[[], object]) -> None:
        """A Relay entry point: nothing may escape; afterwards run the per-step checks."""
        out = guarded(fn, ())
        if isinstance(out, list):
            self.events += out
        relay = self.relay
        closes = [e for e in self.events if isinstance(e, Closed)]
        check(len(closes) <= 1, f"the relay returned {len(closes)} Closed events")
        check(closes == ([relay.closed] if relay.closed is not None else []),
              f"the relay's Closed events {closes} do not match its state {relay.closed}")
        check(not closes or self.events[-1] is closes[0],
              f"events after Closed: {self.events[self.events.index(closes[0]) + 1:]}"
              if closes else "")
        if relay.closed is not None:
            err = relay.closed.error
            check(err is None or (isinstance(err, BridgeError) and isinstance(err.fault, Fault)),
                  f"close reason is not a typed error: {err!r}")
            if not self.close_drained:
                self.drain()
                self.close_drained = True
                return
        self.drain()
        buffered = relay.stats()["buffered"]
        check(buffered <= self.bound, f"relay buffers {buffered} bytes (bound {self.bound})")

    def drain(self) -> None:
        for side in (Side.DOWN, Side.UP):
            out = guarded(lambda s=side: self.relay.data_to_send(s), ())  # type: ignore[misc]
            assert out is not None
            if self.close_drained:
                check(out == b"", f"{len(out)} bytes to {side.value} after the relay closed")
            peer = self.peers[side]
            if out and not peer.dead:
                before = len(peer.received)
                try:
                    peer.receive(out)
                except h2.exceptions.ProtocolError as exc:
                    if not peer.lenient:
                        raise ContractViolation(
                            f"relay sent invalid HTTP/2 to {side.value}: {exc!r}") from exc
                    peer.dead = True
                    continue
                except FramingError as exc:
                    raise ContractViolation(f"relay sent bad gRPC framing: {exc}") from exc
                if side is self.kaspad_side:
                    for compressed, body in peer.received[before:]:
                        self._kaspad_got(compressed, body)

    def _kaspad_got(self, compressed: bool, body: bytes) -> None:
        """kaspad must never get what it disconnects on, nor an onion (the bridge's promise)."""
        plain: bytes | None = body
        if compressed:
            try:
                plain = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body, 64 * MiB)
            except zlib.error:
                plain = None  # a passed-through message corrupted after its first bytes
        if plain is None:
            return
        tag = proto.peek_payload_tag(plain)  # the relay sniffed it: it must decode
        check(tag in proto.KNOWN_PAYLOADS, f"kaspad got payload type {tag}")
        assert tag is not None
        # protobuf keeps the last member of the payload oneof: kaspad must get exactly one, the
        # one the relay classified (issue 10, defect 6)
        payloads = _payload_fields(plain)
        if payloads is None:
            payloads = [tag]  # truncated or corrupt after the checked part: kaspad drops it
        check(payloads == [tag], f"kaspad got a {proto.payload_name(tag)} whose payload fields "
              f"are {payloads}: protobuf decodes it as a {proto.payload_name(payloads[-1])}")
        order = {proto.VERSION: 1, proto.VERACK: 2, proto.READY: 3}
        if tag in order:
            check(order[tag] == self.kaspad_stage + 1, f"kaspad got {proto.payload_name(tag)} "
                  f"at handshake stage {self.kaspad_stage}")
            self.kaspad_stage = order[tag]
        elif tag != proto.REJECT:
            check(self.kaspad_stage == 3, f"kaspad got {proto.payload_name(tag)} before Ready")
        if tag == proto.VERSION:
            v = proto.Version.decode(proto.Envelope.decode(plain).payload)
            check(len(v.node_id) == 16 and (v.address is None or v.address.kaspad_accepts()),
                  "kaspad got a Version it rejects (bad id or address, or an onion)")
        elif tag == proto.ADDRESSES:
            self.kaspad_addresses += 1
            check(self.kaspad_addresses == 1, "kaspad got a second Addresses")
            entries = proto.decode_addresses(proto.Envelope.decode(plain).payload)
            check(len(entries) <= policy.MAX_ADDRESSES_RECEIVE, "kaspad got > 2500 addresses")
            check(all(e.kaspad_accepts() for e in entries),
                  "kaspad got an Addresses entry it rejects (or an onion)")

    def deliver(self, side: Side, src: Source) -> None:
        if side is Side.UP and not self.attached:
            return  # the shell never reads an upstream it has not attached
        peer = self.peers[side]
        peer.collect()
        wire = bytes(peer.wire)
        peer.wire.clear()
        for piece in chunks(src, wire):
            if self.relay.closed is not None and self.close_drained:
                self.call(lambda p=piece: self.relay.receive(side, p))  # type: ignore[misc]
                continue
            self.call(lambda p=piece: self.relay.receive(side, p))  # type: ignore[misc]

    def pump(self, src: Source, rounds: int = 60) -> None:
        for _ in range(rounds):
            moved = False
            for side in (Side.DOWN, Side.UP):
                peer = self.peers[side]
                peer.collect()
                if peer.wire and (side is Side.DOWN or self.attached):
                    moved = True
                    self.deliver(side, src)
            if not moved:
                return


@contract(BOUNDS["relay"])
def fuzz_relay(data: bytes) -> None:
    """The relay against hostile, structured-but-mutated HTTP/2 from either side, delivered in
    arbitrary chunkings: nothing escapes, bad input becomes a typed close, no bytes after the
    close, buffers bounded, and kaspad never receives what it would disconnect on."""
    src = Source(data)
    kaspad_side = Side.UP if src.flag() else Side.DOWN
    settings = RelaySettings(window=src.pick(_WINDOWS),
                             max_message_bytes=src.pick((1 << 30, 16, 1000, 100_000)))
    pol_settings = policy.PolicySettings(max_rewrite_bytes=src.pick((4 << 20, 64, 3000)),
                                         advertise_address=src.chance(4))
    rig = RelayRig(src, kaspad_side=kaspad_side, settings=settings, pol_settings=pol_settings,
                   attach=not src.chance(6))
    down, up = rig.peers[Side.DOWN], rig.peers[Side.UP]
    kaspad_id, remote_id = bytes(range(16)), bytes(range(16, 32))
    steps = {Side.DOWN: 0, Side.UP: 0}

    def next_message(side: Side) -> bytes:
        step = steps[side]
        steps[side] += 1
        if step == 0:
            nid = kaspad_id if side is kaspad_side else remote_id
            if src.chance(6):
                nid = kaspad_id  # a loopback through Tor
            return proto.make_len_field(proto.VERSION, version_payload(src, node_id=nid)).raw
        if step in (1, 2):
            return VERACK if step == 1 else READY
        return kaspad_message(src)

    def send(side: Side, plain: bytes) -> None:
        peer = rig.peers[side]
        if peer.sid is None or peer.dead:
            return
        compressed = not src.chance(3)
        peer.send(gzip_body(src, plain) if compressed else plain, compressed)

    for _ in range(48):
        if src.exhausted and min(steps.values()) > 4:
            break
        op = src.below(16)
        side = Side.UP if src.flag() else Side.DOWN
        peer = rig.peers[side]
        try:
            if op == 0 or op > 12:  # the ordinary conversation, one step
                if not down.opened:
                    down.open(request_headers(src))
                elif up.sid is None:
                    rig.attach()
                    rig.pump(src)
                elif not up.responded:
                    headers, end = response_headers(src)
                    up.respond(headers, end)
                else:
                    send(Side.DOWN, next_message(Side.DOWN))
                    send(Side.UP, next_message(Side.UP))
                    rig.pump(src)
            elif op == 1:
                send(side, kaspad_message(src))
            elif op == 2 and peer.sid is not None and not peer.dead:
                peer.send_raw(src.blob(80))  # raw gRPC bytes
            elif op == 3:  # a raw HTTP/2 frame of any type, flags and stream id
                peer.collect()
                peer.wire += raw_frame(src, peer.sid or 1)
                peer.dead = True
            elif op == 4:
                h2_control(src, peer)
            elif op == 5:
                rig.deliver(side, src)
            elif op == 6:
                rig.pump(src)
            elif op == 7:
                rig.call(rig.relay.request_addresses)
            elif op == 8:
                peer.auto_ack = not peer.auto_ack
                peer.ack()
            elif op == 9:  # mutate the real frames on the wire
                peer.collect()
                deliver_mutated(src, peer)
            elif op == 10:
                if not rig.attached and src.flag():
                    rig.call(lambda: rig.relay.refuse("no upstream (fuzz)"))
                else:
                    rig.attach()
            elif op == 11 and src.chance(3):
                rig.call(lambda s=side: rig.relay.connection_lost(s))  # type: ignore[misc]
            elif op == 12:
                if not down.opened:  # a client that skips the request
                    down.opened = True
                elif peer.sid is not None and not peer.dead:  # half-close this side
                    peer.conn.end_stream(peer.sid)
        except _H2_API_ERRORS:  # the scripted peer's own h2 refused the action
            for p in rig.peers.values():
                p.lenient = True
    for p in rig.peers.values():
        p.auto_ack = True
        p.ack()
    rig.pump(src)


@contract(BOUNDS["relay_passthrough"])
def fuzz_relay_passthrough(data: bytes) -> None:
    """Well-formed traffic through the relay in arbitrary chunkings and with receivers that
    stall: every pass-through message arrives byte for byte (gzip body and flag included), in
    order, the relay never closes, and it never holds more than its windows allow."""
    src = Source(data)
    kaspad_side = Side.UP if src.flag() else Side.DOWN
    window = src.pick(_WINDOWS)
    rig = RelayRig(src, kaspad_side=kaspad_side, settings=RelaySettings(window=window),
                   pol_settings=policy.PolicySettings())
    down, up = rig.peers[Side.DOWN], rig.peers[Side.UP]
    down.open(list(REQUEST_HEADERS))
    rig.pump(src)
    check(up.sid is not None, "the request did not reach the upstream")
    up.respond([(b":status", b"200"), (b"content-type", b"application/grpc"),
                (b"grpc-encoding", b"gzip")])
    rig.pump(src)
    for side, nid, services in ((kaspad_side, bytes(range(16)), 0),
                                (Side.UP if kaspad_side is Side.DOWN else Side.DOWN,
                                 bytes(range(16, 32)), proto.SERVICE_ADDRV2 * src.below(2))):
        v = proto.make_varint_field(proto.V_PROTOCOL, 8).raw
        if services:
            v += proto.make_varint_field(proto.V_SERVICES, services).raw
        v += proto.make_len_field(proto.V_ID, nid).raw
        v += proto.make_len_field(proto.V_NETWORK, b"kaspa-simnet").raw
        rig.peers[side].send(proto.make_len_field(proto.VERSION, v).raw, False)
    for p in (down, up):
        p.send(grpc.gzip_compress(VERACK), True)
        p.send(READY, False)
    rig.pump(src)
    pass_tags = (proto.BLOCK, proto.PING, proto.PONG, proto.INV_RELAY_BLOCK, 3, 15, 10, 25)
    for _ in range(32):
        if src.exhausted:
            break
        op = src.below(8)
        side = Side.UP if src.flag() else Side.DOWN
        peer = rig.peers[side]
        if op <= 3:
            size = src.pick((0, 1, 100, 1000, 20_000, 70_000, 5))
            payload = src.take(min(size, 64)) * (size // 64 + 1)
            msg = proto.make_len_field(src.pick(pass_tags), payload[:size]).raw
            if src.chance(3):
                msg += proto.make_varint_field(proto.REQUEST_ID, some_int(src)).raw
            compressed = src.flag()
            peer.send(grpc.gzip_compress(msg) if compressed else msg, compressed)
        elif op == 4:
            peer.auto_ack = not peer.auto_ack
            peer.ack()
        elif op == 5:
            rig.deliver(side, src)
        else:
            rig.pump(src)
    for p in (down, up):
        p.auto_ack = True
    for _ in range(400):
        for p in (down, up):
            p.ack()
            p.flush()
        rig.pump(src)
        if (not down.pending and not up.pending and not down.wire and not up.wire
                and len(down.received) >= len(up.sent) and len(up.received) >= len(down.sent)):
            break
    relay = rig.relay
    check(relay.closed is None, f"relay closed on valid traffic: {relay.closed}")
    for a, b in ((down, up), (up, down)):
        # [0] is the Version (rewritten); everything else passes byte for byte
        check(b.received[1:] == a.sent[1:],
              f"pass-through differs: sent {len(a.sent)}, got {len(b.received)} messages")
    check(relay.stats()["buffered"] == 0, "relay still holds bytes after everything arrived")


# ---------------------------------------------------------------------------------------------
# Target: hostile (what an input costs; issue 10)


def tiny_fields(size: int) -> bytes:
    """``size`` bytes of two-byte varint fields: what a gzip bomb inflates to, and the most
    fields per byte protobuf allows."""
    return b"\x78\x00" * (size // 2)


def many_addresses(n: int, first: int = 0) -> bytes:
    """An AddressesMessage payload of ``n`` distinct IPv4 entries, built fast."""
    return b"".join(b"\x0a\x09\x1a\x04" + (first + i).to_bytes(4, "big") + b"\x20\xef\x7d"
                    for i in range(n))


_ONION_ENTRY = proto.NetAddress.from_onion(onion.OnionAddress(bytes(range(7, 39))).host, 16111)


@dataclass(frozen=True, slots=True)
class Hostile:
    """A KaspadMessage: ``head`` then ``tiny`` bytes of tiny fields (a bomb's body, never
    built whole by the harness: it is gzip'd as a stream)."""

    head: bytes
    tiny: int = 0

    def plain(self) -> bytes:
        return self.head + tiny_fields(self.tiny)

    def gzip(self) -> bytes:
        c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        out = [c.compress(self.head)]
        chunk = tiny_fields(64 * 1024)
        left = self.tiny
        while left > 0:
            out.append(c.compress(chunk[:left]))
            left -= len(chunk)
        out.append(c.flush())
        return b"".join(out)


def hostile_message(src: Source) -> Hostile:
    """A KaspadMessage that is cheap to send and was expensive (or misleading) to receive."""
    kind = src.below(6)
    if kind == 0:  # a bomb: a message of tiny fields, any type, up to 4 MiB inflated
        tag = src.pick((proto.VERSION, proto.ADDRESSES, proto.PING, proto.BLOCK, proto.VERACK,
                        proto.INV_RELAY_BLOCK))
        size = src.pick((64 * 1024, MiB, 4 * MiB - 64, 300_000))  # within max_rewrite_bytes
        inner = proto.make_varint_field(1, 7).raw if tag == proto.PING else b""
        head = (proto.encode_varint(tag << 3 | proto.LEN) + proto.encode_varint(len(inner) + size)
                + inner)
        return Hostile(head, size)
    if kind == 1:  # a second payload field: protobuf keeps the last one
        first = src.pick((proto.make_len_field(proto.PING, b"\x08\x07").raw,
                          proto.make_len_field(proto.BLOCK, src.blob(64) * 50).raw, VERACK,
                          proto.make_len_field(proto.INV_RELAY_BLOCK, src.blob(40)).raw))
        second = src.pick((proto.make_len_field(proto.ADDRESSES,
                                                proto.encode_addresses([_ONION_ENTRY])).raw,
                           proto.make_len_field(proto.VERSION, version_payload(src)).raw,
                           READY, first))
        ids = proto.make_varint_field(proto.REQUEST_ID, 3).raw if src.flag() else b""
        return Hostile(first + ids + second)
    if kind == 2:  # over kaspad's 2500 addresses, distinct entries
        n = src.pick((2501, 3000, 10_001, 40_000))
        return Hostile(proto.make_len_field(proto.ADDRESSES, many_addresses(n)).raw)
    if kind == 3:  # 2500 entries, all accepted: the most an Addresses may cost
        if src.flag():
            payload = many_addresses(2500, src.below(1 << 16) << 16)
        else:
            payload = proto.encode_addresses([_ONION_ENTRY] * 2500)
        return Hostile(proto.make_len_field(proto.ADDRESSES, payload).raw)
    if kind == 4:  # a Version of tiny fields within the byte cap
        return Hostile(proto.make_len_field(proto.VERSION, tiny_fields(60_000)).raw)
    return Hostile(kaspad_message(src))


@contract(BOUNDS["hostile"])
def fuzz_hostile(data: bytes) -> None:
    """Hostile messages through the relay, from either side, first or after a normal handshake:
    gzip bombs of tiny protobuf fields in any message type, a second payload field, Addresses
    over kaspad's limit or at it, a Version of tiny fields; gzip'd or not, in any chunking.
    Nothing escapes, a refusal is a typed close, kaspad never gets a message whose effective
    type differs from the checked one or more than 2500 addresses, the address book is never
    handed more than 2500 entries from one message, and the input stays within its cost bound
    (so a bomb the bridge decodes in full fails here)."""
    src = Source(data)
    # the hostile part is drawn first, so the fuzzer steers it directly; the rest of the input
    # only chooses chunkings
    kaspad_side = Side.UP if src.flag() else Side.DOWN
    remote_side = Side.DOWN if kaspad_side is Side.UP else Side.UP
    first = src.chance(3)  # the remote's very first message is the hostile one
    script = [(src.flag(), src.chance(4), not src.chance(3), hostile_message(src))
              for _ in range(1 if first else 1 + src.below(3))]
    rig = RelayRig(src, kaspad_side=kaspad_side, settings=RelaySettings(),
                   pol_settings=policy.PolicySettings())
    down, up = rig.peers[Side.DOWN], rig.peers[Side.UP]
    down.open(list(REQUEST_HEADERS))
    rig.pump(src)
    up.respond([(b":status", b"200"), (b"content-type", b"application/grpc"),
                (b"grpc-encoding", b"gzip")])
    rig.pump(src)

    def send(side: Side, msg: Hostile | bytes, compressed: bool = True) -> None:
        peer = rig.peers[side]
        if peer.sid is None or peer.dead or peer.closed:
            return
        if isinstance(msg, bytes):
            msg = Hostile(msg)
        # a big bomb goes gzip'd only (the harness would spend seconds framing 4 MiB)
        compressed = compressed or msg.tiny > 300_000
        try:
            peer.send(msg.gzip() if compressed else msg.plain(), compressed)
        except _H2_API_ERRORS:
            peer.lenient = True
            return
        rig.pump(src)

    if not first:
        for side, nid, services in ((kaspad_side, bytes(range(16)), 0),
                                    (remote_side, bytes(range(16, 32)), proto.SERVICE_ADDRV2)):
            v = proto.make_varint_field(proto.V_PROTOCOL, 8).raw
            if services:
                v += proto.make_varint_field(proto.V_SERVICES, services).raw
            v += proto.make_len_field(proto.V_ID, nid).raw
            v += proto.make_len_field(proto.V_NETWORK, b"kaspa-simnet").raw
            send(side, proto.make_len_field(proto.VERSION, v).raw)
        for side in (kaspad_side, remote_side):
            send(side, VERACK)
            send(side, READY)
    for ask, from_kaspad, compressed, msg in script:
        if rig.relay.closed is not None:
            break
        if ask and not first:
            send(kaspad_side, REQUEST_ADDRESSES)
        send(kaspad_side if from_kaspad else remote_side, msg, compressed)
    rig.pump(src)
    handed = [len(e.endpoints) for e in rig.events if isinstance(e, AddressesLearned)]
    check(all(n <= policy.MAX_ADDRESSES_RECEIVE for n in handed),
          f"the address book was handed {max(handed, default=0)} entries of one message")


# ---------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    fn: Callable[[bytes], None]
    #: largest input worth generating
    max_size: int
    #: share of a campaign's inputs (relative): cheap targets get more
    weight: float
    #: modest example count for the normal test suite
    examples: int


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("grpc_reader", fuzz_grpc_reader, 2048, 3.0, 2000),
    Target("grpc_sniffer", fuzz_grpc_sniffer, 1024, 2.5, 2000),
    Target("proto", fuzz_proto, 1024, 2.0, 800),
    Target("onion", fuzz_onion, 512, 2.0, 2000),
    Target("policy", fuzz_policy, 2048, 1.5, 1000),
    Target("probe", fuzz_probe, 2048, 0.6, 400),
    Target("relay", fuzz_relay, 4096, 0.8, 500),
    Target("relay_passthrough", fuzz_relay_passthrough, 1024, 0.2, 100),
    Target("hostile", fuzz_hostile, 256, 0.3, 60),
)}
