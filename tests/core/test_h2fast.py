"""bridge.core.h2fast and the relay's work-arounds for h2 quirks."""

from __future__ import annotations

import hyperframe.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core import h2fast, proto
from bridge.core.policy import ConnectionPolicy, GossipState, PolicySettings
from bridge.core.relay import Relay, RelaySettings, Side, new_upstream_connection
from tests.core.relay_harness import READY, VERACK, Peer, block, pump, version


@settings(deadline=None)  # the original hexlifies up to 17 KB: slow on a loaded box
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=17000))
def test_raw_data_repr_is_output_identical(head: bytes, tail: int) -> None:
    for data in (head, head + bytes(tail), None):
        assert h2fast.raw_data_repr(data) == h2fast._ORIGINAL(data)


def test_frame_repr_identical_with_and_without_the_patch() -> None:
    frame = hyperframe.frame.DataFrame(1, data=bytes(range(256)) * 64, flags=["END_STREAM"])
    assert h2fast.installed()  # importing the relay installs it
    patched = repr(frame)
    h2fast.uninstall()
    try:
        original = repr(frame)
    finally:
        h2fast.install()
    assert patched == original
    assert "<hex:000102030405060708090a0b0c0d0e0f10111213...>" not in patched  # 20 digits kept
    assert "<hex:00010203040506070809...>" in patched


def test_raw_data_repr_hexlifies_only_what_it_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = h2fast.binascii.hexlify

    def spy(data: bytes) -> bytes:
        seen.append(len(data))
        return real(data)

    monkeypatch.setattr(h2fast.binascii, "hexlify", spy)
    h2fast.raw_data_repr(bytes(16384))
    assert seen == [11]


def test_larger_frames_right_after_the_settings_ack_are_accepted() -> None:
    """h2 only raises its inbound frame limit when it processes the peer's SETTINGS ACK, and
    keeps the old limit for the rest of that read: an ACK and a 64 KiB DATA frame arriving in
    one read used to close the relay with 'Received overlong frame'."""
    settings = RelaySettings(max_frame=65536)
    relay = Relay(ConnectionPolicy(GossipState(), PolicySettings(), remote_label="peer"),
                  kaspad_side=Side.DOWN, upstream_authority=b"x.onion:16111",
                  settings=settings, upstream=new_upstream_connection(settings))
    down, up = Peer(client=True), Peer(client=False)
    # The relay's SETTINGS reach the client, which answers with its ACK, opens the stream and
    # sends a large message: all of it delivered to the relay in one read.
    down.receive(relay.data_to_send(Side.DOWN))
    assert down.conn.max_outbound_frame_size == 65536
    down.open()
    down.send(_big_version(40_000), compressed=False)
    data = down.conn.data_to_send()
    assert max(_frame_lengths(data)) > 16384  # the peer really used the larger size
    relay.receive(Side.DOWN, data)
    assert relay.closed is None, relay.closed
    pump(relay, down, up)
    up.respond()
    up.send(version(services=proto.SERVICE_ADDRV2))
    for p in (down, up):
        p.send(VERACK)
        p.send(READY)
    pump(relay, down, up)
    assert relay.closed is None, relay.closed
    down.send(block(200_000))
    pump(relay, down, up)
    assert relay.closed is None, relay.closed
    assert len(up.payloads) == 4
    assert proto.payload_tag(up.payloads[-1]) == proto.BLOCK
    assert len(up.payloads[0]) > 40_000  # the padded Version went through, rewritten


def _big_version(pad: int) -> bytes:
    """A Version with an unknown 40 KB field (kept byte-exact by the codec), so the very first
    DATA frame is larger than 16 KiB."""
    outer = proto.first(proto.parse(version()), proto.VERSION)
    assert outer is not None
    extra = proto.make_len_field(15, bytes(pad)).raw
    return proto.make_len_field(proto.VERSION, bytes(outer.value) + extra).raw


def test_frames_above_the_limit_are_still_refused() -> None:
    settings = RelaySettings(max_frame=16384)
    relay = Relay(ConnectionPolicy(GossipState(), PolicySettings(), remote_label="peer"),
                  kaspad_side=Side.DOWN, upstream_authority=b"x.onion:16111",
                  settings=settings, upstream=new_upstream_connection(settings))
    down = Peer(client=True)
    down.receive(relay.data_to_send(Side.DOWN))
    down.open()
    down.conn.max_outbound_frame_size = 65536  # a peer ignoring our SETTINGS
    down.send(block(100_000), compressed=False)
    relay.receive(Side.DOWN, down.conn.data_to_send())
    assert relay.closed is not None and "exceeds the maximum 16384" in relay.closed.reason


def _frame_lengths(data: bytes) -> list[int]:
    out = []
    i = data.find(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    i = 24 if i == 0 else 0
    while i + 9 <= len(data):
        n = int.from_bytes(data[i:i + 3], "big")
        out.append(n)
        i += 9 + n
    return out
