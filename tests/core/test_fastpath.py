"""The DATA fast path (:mod:`bridge.core.fastpath`) against the h2 path it replaces.

Two identical worlds (kaspad-like client, relay, remote-like server) run in lockstep, one with
the fast path and one without; every byte the relay produces for either side must be the same,
as must what the peers receive, the relay's stats and every h2 flow-control window. Hypothesis
varies the read chunking, the DATA frame sizes (with padded, empty and END_STREAM frames in
between, which the fast path leaves to h2), message sizes and when and how much the receivers
acknowledge. Hostile frames (beyond the window, on a closed stream, window overflow, ...) are
checked the same way: the same GOAWAY bytes and the same close reason.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import h2.connection
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from bridge.core import fastpath, grpc, proto
from bridge.core.policy import ConnectionPolicy, GossipState, PolicySettings
from bridge.core.relay import Relay, RelaySettings, Side, new_upstream_connection
from tests.core import relay_harness as rh

KASPAD_ID = bytes(range(16))
REMOTE_ID = bytes(range(16, 32))


@contextmanager
def mode(fast: bool) -> Iterator[None]:
    old = fastpath.ENABLED
    fastpath.set_enabled(fast)
    try:
        yield
    finally:
        fastpath.set_enabled(old)


@dataclass
class World:
    fast: bool
    relay: Relay = field(init=False)
    down: rh.Peer = field(init=False)
    up: rh.Peer = field(init=False)
    out: dict[Side, bytearray] = field(default_factory=lambda: {Side.DOWN: bytearray(),
                                                                Side.UP: bytearray()})

    def __post_init__(self) -> None:
        with mode(self.fast):
            settings = RelaySettings()
            policy = ConnectionPolicy(GossipState(), PolicySettings(), remote_label="r")
            self.relay = Relay(policy, kaspad_side=Side.DOWN, upstream_authority=b"x:1",
                               settings=settings, upstream=new_upstream_connection(settings))
        self.down = rh.Peer(client=True, auto_ack=False)
        self.up = rh.Peer(client=False, auto_ack=False)

    def feed(self, side: Side, data: bytes, chunks: list[int]) -> None:
        """Bytes from a peer to the relay, cut at ``chunks`` (cycled)."""
        with mode(self.fast):
            i = 0
            k = 0
            while i < len(data):
                n = chunks[k % len(chunks)] if chunks else len(data)
                self.relay.receive(side, data[i:i + n])
                i += n
                k += 1

    def drain(self, side: Side) -> bytes:
        with mode(self.fast):
            out = self.relay.data_to_send(side)
        self.out[side] += out
        return out

    def peer(self, side: Side) -> rh.Peer:
        return self.down if side is Side.DOWN else self.up


def windows(w: World) -> list[int]:
    out = []
    for side in (Side.DOWN, Side.UP):
        conn = w.relay.conn(side)
        out += [conn._inbound_flow_control_window_manager.current_window_size,
                conn._inbound_flow_control_window_manager._bytes_processed,
                conn.outbound_flow_control_window]
        for sid, s in sorted(conn.streams.items()):
            out += [sid, s._inbound_window_manager.current_window_size,
                    s._inbound_window_manager._bytes_processed,
                    s.outbound_flow_control_window, s._actual_content_length]
    return out


class Lockstep:
    """The same inputs to both worlds; asserts the same outputs at every step."""

    def __init__(self, chunks: list[int]) -> None:
        self.w = [World(True), World(False)]
        self.chunks = chunks

    def pump(self, rounds: int = 10_000) -> None:
        for _ in range(rounds):
            moved = False
            for side in (Side.DOWN, Side.UP):
                datas = [w.peer(side).conn.data_to_send() for w in self.w]
                assert datas[0] == datas[1]
                if datas[0]:
                    moved = True
                    for w, d in zip(self.w, datas, strict=True):
                        w.feed(side, d, self.chunks)
                outs = [w.drain(side) for w in self.w]
                assert outs[0] == outs[1], f"relay output to {side} differs"
                if outs[0]:
                    moved = True
                    for w, d in zip(self.w, outs, strict=True):
                        w.peer(side).receive(d)
            if self.w[0].relay.closed is None or self.w[1].relay.closed is None:
                # (once closed, the fast path may have accounted a DATA frame of the read that
                # ended it, which the guard rejected as a whole before h2 saw any of it: the
                # bytes produced are the same, the windows no longer matter)
                assert windows(self.w[0]) == windows(self.w[1])
            if not moved:
                return
        raise AssertionError("pump did not settle")

    def each(self, fn: object) -> None:
        for w in self.w:
            fn(w)  # type: ignore[operator]

    def handshake(self) -> None:
        self.each(lambda w: w.down.open())
        self.pump()
        self.each(lambda w: w.up.respond())
        self.pump()
        self.each(lambda w: w.up.send(rh.version(node_id=REMOTE_ID,
                                                  services=proto.SERVICE_ADDRV2)))
        self.each(lambda w: w.down.send(rh.version(node_id=KASPAD_ID)))
        self.ack_all()
        for m in (rh.VERACK, rh.READY):
            self.each(lambda w, m=m: (w.down.send(m), w.up.send(m)))
        self.ack_all()
        for w in self.w:
            assert w.relay.closed is None, w.relay.closed

    def ack_all(self) -> None:
        for _ in range(50):
            self.pump()
            if not any(p.unacked or p.pending for w in self.w for p in (w.down, w.up)):
                return
            self.each(lambda w: (w.down.ack(), w.up.ack(), w.down.flush(), w.up.flush()))
        self.pump()


def block_message(rng: random.Random, size: int) -> bytes:
    body = proto.make_len_field(1, rng.randbytes(size // 2) + bytes(size - size // 2)).raw
    return proto.make_len_field(proto.BLOCK, body).raw


def send_frames(p: rh.Peer, data: bytes, sizes: list[int], rng: random.Random) -> None:
    """Queue ``data`` as DATA frames of ``sizes`` (cycled), some padded or followed by an empty
    frame (both left to h2 by the fast path); what the window does not allow waits."""
    p.pending += data
    assert p.sid is not None
    if p.conn.state_machine.state is h2.connection.ConnectionState.CLOSED:
        return
    k = 0
    while p.pending:
        room = min(p.conn.local_flow_control_window(p.sid), p.conn.max_outbound_frame_size)
        n = min(sizes[k % len(sizes)], len(p.pending), room)
        k += 1
        if n <= 0:
            return
        pad = rng.choice([None] * 9 + [0, 7]) if n + 8 <= room else None
        p.conn.send_data(p.sid, bytes(p.pending[:n]), pad_length=pad)
        del p.pending[:n]
        if rng.random() < 0.03:
            p.conn.send_data(p.sid, b"")


@settings(max_examples=20, deadline=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate])  # shrinking takes too long
@given(seed=st.integers(0, 2**32),
       chunks=st.lists(st.one_of(st.integers(1, 40), st.integers(1000, 70_000)), min_size=1,
                       max_size=6),
       sizes=st.lists(st.integers(1, 16384), min_size=1, max_size=5).filter(
           lambda xs: sum(xs) >= 100 * len(xs)),
       messages=st.lists(st.tuples(st.integers(1, 60_000), st.booleans(), st.booleans()),
                         min_size=1, max_size=6),
       acks=st.lists(st.integers(0, 3), min_size=1, max_size=8))
def test_same_bytes_and_windows_as_h2(seed: int, chunks: list[int], sizes: list[int],
                                      messages: list[tuple[int, bool, bool]],
                                      acks: list[int]) -> None:
    ls = Lockstep(chunks)
    ls.handshake()
    k = 0
    for size, compressed, from_kaspad in messages:
        m = block_message(random.Random(seed + size), size)
        framed = grpc.frame(grpc.gzip_compress(m) if compressed else m, compressed=compressed)
        side = Side.DOWN if from_kaspad else Side.UP
        for w in ls.w:
            send_frames(w.peer(side), framed, sizes, random.Random(seed))
        for _ in range(200):  # acknowledge in varying amounts until all is through
            ls.pump()
            step = acks[k % len(acks)]
            k += 1
            for w in ls.w:
                for p in (w.down, w.up):
                    if step and p.unacked:
                        n = max(1, p.unacked // step)
                        assert p.sid is not None
                        p.conn.acknowledge_received_data(n, p.sid)
                        p.unacked -= n
                    if p.pending:
                        send_frames(p, b"", sizes, random.Random(seed))
            if not any(p.pending for w in ls.w for p in (w.down, w.up)) and not step:
                ls.ack_all()
                break
        ls.ack_all()
    ls.each(lambda w: w.down.conn.end_stream(w.down.sid))
    ls.ack_all()
    fast, slow = ls.w
    assert fast.relay.closed == slow.relay.closed
    assert fast.relay.stats() == slow.relay.stats()
    assert fast.down.messages == slow.down.messages
    assert fast.up.messages == slow.up.messages
    # what went through is what was sent (the relay's own traffic aside)
    assert len(fast.up.messages) == 3 + sum(1 for *_, k in messages if k)


def _data_frame(sid: int, payload: bytes, flags: int = 0) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([0, flags]) + sid.to_bytes(4, "big") \
        + payload


def _wu(sid: int, inc: int) -> bytes:
    return (4).to_bytes(3, "big") + bytes([8, 0]) + sid.to_bytes(4, "big") \
        + inc.to_bytes(4, "big")


HOSTILE = {
    "beyond the connection window": [_data_frame(1, bytes(16384))] * 40,
    "data on an unknown stream": [_data_frame(3, b"x" * 10)],
    "data on stream 0": [_data_frame(0, b"x" * 10)],
    "stream window overflow": [_wu(1, 2**31 - 1)],
    "connection window overflow": [_wu(0, 2**31 - 1)],
    "zero increment": [_wu(1, 0)],
    "zero increment, connection": [_wu(0, 0)],
    "window update on an idle stream": [_wu(9, 5)],
    "data after end of stream": [_data_frame(1, b"", 1), _data_frame(1, b"abc")],
    "short window update": [(3).to_bytes(3, "big") + bytes([8, 0, 0, 0, 0, 1, 0, 0, 1])],
    "data inside a header block": [
        (1).to_bytes(3, "big") + bytes([1, 0]) + (1).to_bytes(4, "big") + b"\x88",
        _data_frame(1, b"abc")],
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("split", [0, 5, 13])
def test_hostile_frames_as_h2(name: str, split: int) -> None:
    ls = Lockstep([70_000])
    ls.handshake()
    raw = b"".join(HOSTILE[name])
    for w in ls.w:
        if split:
            w.feed(Side.DOWN, raw, [split])
        else:
            w.feed(Side.DOWN, raw, [len(raw)])
    outs = [(w.drain(Side.DOWN), w.drain(Side.UP)) for w in ls.w]
    assert outs[0] == outs[1]
    fast, slow = ls.w
    assert (fast.relay.closed is None) == (slow.relay.closed is None)
    if fast.relay.closed is not None and slow.relay.closed is not None:
        assert fast.relay.closed.reason == slow.relay.closed.reason
    assert windows(fast) == windows(slow)


def test_window_update_on_the_fast_path_is_applied() -> None:
    """The fast path really handles a WINDOW_UPDATE (not only passes it to h2)."""
    ls = Lockstep([70_000])
    ls.handshake()
    fast = ls.w[0]
    conn = fast.relay.conn(Side.UP)
    before = conn.outbound_flow_control_window
    with mode(True):
        assert fastpath.ENABLED
        fast.relay.receive(Side.UP, _wu(0, 1000))
    assert conn.outbound_flow_control_window == before + 1000


def test_small_frame_does_not_pin_its_read() -> None:
    """A small DATA payload queued for a closed window is a copy, not a view of the read."""
    ls = Lockstep([70_000])
    ls.handshake()
    fast = ls.w[0]
    up = fast.relay.conn(Side.UP)
    up.outbound_flow_control_window = 0  # the remote's window is closed: output waits
    msg = grpc.frame(block_message(random.Random(1), 20_000))
    sid = fast.down.sid
    assert sid is not None
    frames = _data_frame(sid, msg[:16384]) + _data_frame(sid, msg[16384:16484])
    read = frames + bytes(8) * 0
    with mode(True):
        fast.relay.receive(Side.DOWN, read)
    pipe = fast.relay.pipes[Side.DOWN]
    assert fast.relay.closed is None
    views = [o.data for o in pipe.out]
    assert views, "data must be queued"
    small = [v for v in views if len(v) == 100]
    assert small and isinstance(small[0].obj, bytes) and len(small[0].obj) == 100


def test_output_frames_identical_to_h2() -> None:
    """DATA frames written by the fast path are what h2's send_data writes."""
    for size in (1, 100, 16384):
        a = h2.connection.H2Connection()
        b = h2.connection.H2Connection()
        for c in (a, b):
            c.initiate_connection()
            c.send_headers(1, rh.REQUEST_HEADERS)
            c.data_to_send()
        data = memoryview(bytes(range(256)) * 200)
        end = new_upstream_connection(RelaySettings())
        end.conn = a
        with mode(True):
            n = fastpath.send_data(end, 1, data[:size], 1 << 20)
        b.send_data(1, data[:size].tobytes())
        assert n == size
        assert a.data_to_send() == b.data_to_send()
        assert a.outbound_flow_control_window == b.outbound_flow_control_window
        assert a.streams[1].outbound_flow_control_window == \
            b.streams[1].outbound_flow_control_window


def test_gzip_payload_check_still_runs() -> None:
    """A second payload inside a gzip'd pass-through message is refused on the fast path."""
    ls = Lockstep([70_000])
    ls.handshake()
    big = block_message(random.Random(2), 100_000) + rh.ping(7)  # a 2nd payload at the end
    framed = grpc.frame(zlib.compress(big, wbits=31), compressed=True)
    for w in ls.w:
        send_frames(w.down, framed, [16384], random.Random(0))
    ls.ack_all()
    for w in ls.w:
        assert w.relay.closed is not None and "two payloads" in w.relay.closed.reason
    assert ls.w[0].up.messages == ls.w[1].up.messages
