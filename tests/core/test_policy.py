"""Tests for bridge.core.policy: the rewrite policy (protocol.md §6, §7.1, §11, §6.3)."""

from __future__ import annotations

import collections
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core import proto
from bridge.core.errors import Fault, PolicyViolation
from bridge.core.events import AddressesLearned, HandshakeSeen, Note, OnionsLearned
from bridge.core.onion import OnionAddress
from bridge.core.policy import (
    MAX_ADDRESSES_RECEIVE,
    MAX_ADDRESSES_SEND,
    Action,
    ConnectionPolicy,
    Direction,
    GossipState,
    OnionPeer,
    PolicySettings,
)
from bridge.rig.proto_gen import pb

TO_REMOTE = Direction.TO_REMOTE
TO_KASPAD = Direction.TO_KASPAD
FAULT = {TO_REMOTE: Fault.KASPAD, TO_KASPAD: Fault.REMOTE}

KASPAD_ID = bytes(range(16))
REMOTE_ID = bytes(range(100, 116))
OWN = OnionPeer(OnionAddress.from_pubkey(b"\x01" * 32), 16111)


def _onion(seed: int | None = None) -> OnionAddress:
    if seed is None:
        return OnionAddress.from_pubkey(os.urandom(32))
    return OnionAddress.from_pubkey(seed.to_bytes(32, "big"))


def _ip4(i: int) -> bytes:
    return bytes([10, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF])


def _version(node_id: bytes = KASPAD_ID, **kw: object) -> bytes:
    fields: dict[str, object] = dict(protocolVersion=10, timestamp=1_780_000_000_000, id=node_id,
                                     userAgent="/kaspad:2.0.1/kaspad:2.0.1/",
                                     network="kaspa-simnet")
    fields.update(kw)
    return pb.KaspadMessage(version=pb.VersionMessage(**fields)).SerializeToString()


def _remote_version(addrv2: bool = True, node_id: bytes = REMOTE_ID, **kw: object) -> bytes:
    kw.setdefault("protocolVersion", 8)
    kw.setdefault("userAgent", "/kaspad:1.0.1/kaspad:1.0.1/")
    return _version(node_id, services=proto.SERVICE_ADDRV2 if addrv2 else 0, **kw)


def _pb_version_of(message: bytes) -> pb.VersionMessage:
    m = pb.KaspadMessage()
    m.ParseFromString(message)
    assert m.WhichOneof("payload") == "version"
    return m.version


def _addresses(entries: list[proto.NetAddress], ids: bytes = b"") -> bytes:
    return proto.make_len_field(proto.ADDRESSES, proto.encode_addresses(entries)).raw + ids


def _notes(pol: ConnectionPolicy, *, warning: bool = False) -> list[str]:
    """The log lines the policy reported since the last look (at info or at warning level)."""
    return [e.text for e in pol.take_events() if isinstance(e, Note) and e.warning is warning]


def _entries_of(message: bytes) -> list[proto.NetAddress]:
    env = proto.Envelope.decode(message)
    assert env.tag == proto.ADDRESSES
    return proto.decode_addresses(env.payload)


def _policy(gossip: GossipState | None = None, **settings_kw: object
            ) -> tuple[ConnectionPolicy, GossipState]:
    gossip = gossip if gossip is not None else GossipState(own_onion=OWN,
                                                           rng=random.Random(0))
    return ConnectionPolicy(gossip, PolicySettings(**settings_kw), remote_label="peerX"), gossip


def _handshake(pol: ConnectionPolicy, kaspad_v: bytes | None = None,
               remote_v: bytes | None = None) -> tuple[bytes, bytes]:
    assert pol.classify(TO_REMOTE, proto.VERSION) is Action.REWRITE
    out_r = pol.rewrite(TO_REMOTE, kaspad_v if kaspad_v is not None else _version())
    assert out_r is not None
    assert pol.classify(TO_KASPAD, proto.VERSION) is Action.REWRITE
    out_k = pol.rewrite(TO_KASPAD, remote_v if remote_v is not None else _remote_version())
    assert out_k is not None
    for d in (TO_REMOTE, TO_KASPAD):
        assert pol.classify(d, proto.VERACK) is Action.PASS
    for d in (TO_REMOTE, TO_KASPAD):
        assert pol.classify(d, proto.READY) is Action.PASS
    return out_r, out_k


def _ready(addrv2: bool = True, gossip: GossipState | None = None, **kw: object
           ) -> tuple[ConnectionPolicy, GossipState]:
    pol, g = _policy(gossip, **kw)
    _handshake(pol, remote_v=_remote_version(addrv2))
    return pol, g


def _violation(direction: Direction, fn: object, *args: object, match: str | None = None
               ) -> PolicyViolation:
    with pytest.raises(PolicyViolation, match=match) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.fault is FAULT[direction] or "own kaspad" in str(info.value)
    return info.value


# --------------------------------------------------------------------------------------------
# handshake ordering


@pytest.mark.parametrize("direction", [TO_REMOTE, TO_KASPAD])
def test_handshake_order_passes(direction: Direction) -> None:
    pol, _ = _policy()
    assert pol.classify(direction, proto.VERSION) is Action.REWRITE
    assert pol.classify(direction, proto.VERACK) is Action.PASS
    assert pol.classify(direction, proto.READY) is Action.PASS
    for tag in (proto.PING, proto.PONG, proto.INV_RELAY_BLOCK, proto.BLOCK,
                proto.REQUEST_ADDRESSES, 63):
        assert pol.classify(direction, tag) is Action.PASS


@pytest.mark.parametrize("direction", [TO_REMOTE, TO_KASPAD])
@pytest.mark.parametrize(
    "sequence",
    [
        [proto.VERACK],
        [proto.READY],
        [proto.PING],
        [proto.ADDRESSES],
        [proto.REQUEST_ADDRESSES],
        [proto.BLOCK],
        [proto.VERSION, proto.READY],
        [proto.VERSION, proto.VERSION],
        [proto.VERSION, proto.PING],
        [proto.VERSION, proto.VERACK, proto.VERACK],
        [proto.VERSION, proto.VERACK, proto.PING],
        [proto.VERSION, proto.VERACK, proto.ADDRESSES],
        [proto.VERSION, proto.VERACK, proto.READY, proto.VERSION],
        [proto.VERSION, proto.VERACK, proto.READY, proto.VERACK],
        [proto.VERSION, proto.VERACK, proto.READY, proto.READY],
    ],
)
def test_handshake_out_of_order(direction: Direction, sequence: list[int]) -> None:
    pol, _ = _policy()
    *ok, bad = sequence
    for tag in ok:
        pol.classify(direction, tag)
    exc = _violation(direction, pol.classify, direction, bad)
    assert exc.fault is FAULT[direction]
    if direction is TO_KASPAD:
        assert "peerX" in str(exc)
    else:
        assert str(exc).startswith("kaspad sent")


def test_directions_are_independent() -> None:
    pol, _ = _policy()
    for tag in (proto.VERSION, proto.VERACK, proto.READY):
        pol.classify(TO_REMOTE, tag)
    assert pol.classify(TO_REMOTE, proto.PING) is Action.PASS
    _violation(TO_KASPAD, pol.classify, TO_KASPAD, proto.PING)


@pytest.mark.parametrize("direction", [TO_REMOTE, TO_KASPAD])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_reject_passes_at_any_stage(direction: Direction, stage: int) -> None:
    pol, _ = _policy()
    for tag in [proto.VERSION, proto.VERACK, proto.READY][:stage]:
        pol.classify(direction, tag)
    assert pol.classify(direction, proto.REJECT) is Action.PASS
    # Reject does not advance the handshake.
    if stage < 3:
        nxt = [proto.VERSION, proto.VERACK, proto.READY][stage]
        assert pol.classify(direction, nxt) in (Action.PASS, Action.REWRITE)


@pytest.mark.parametrize("direction", [TO_REMOTE, TO_KASPAD])
@pytest.mark.parametrize("tag", [4, 7, 8, 9, 11, 18, 23, 62, 64, 100, 101, 102, 1000, 1 << 28])
@pytest.mark.parametrize("after_handshake", [False, True])
def test_unknown_payload_number(direction: Direction, tag: int, after_handshake: bool) -> None:
    pol, _ = _policy()
    if after_handshake:
        for t in (proto.VERSION, proto.VERACK, proto.READY):
            pol.classify(direction, t)
    _violation(direction, pol.classify, direction, tag, match="unknown message type")


@pytest.mark.parametrize("tag", sorted(proto.KNOWN_PAYLOADS - {1, 6, 19, 20, 22, 50}))
def test_every_known_payload_passes_after_handshake(tag: int) -> None:
    pol, _ = _ready()
    assert pol.classify(TO_REMOTE, tag) is Action.PASS
    assert pol.classify(TO_KASPAD, tag) is Action.PASS


_MODEL_TAGS = [proto.VERSION, proto.VERACK, proto.READY, proto.REJECT, proto.PING, 4]


@given(st.lists(st.sampled_from(_MODEL_TAGS), max_size=8),
       st.sampled_from([TO_REMOTE, TO_KASPAD]))
def test_handshake_state_machine_model(tags: list[int], direction: Direction) -> None:
    pol, _ = _policy()
    stage = 0
    order = {proto.VERSION: 1, proto.VERACK: 2, proto.READY: 3}
    for tag in tags:
        if tag == 4:
            expect_ok = False
        elif tag == proto.REJECT:
            expect_ok = True
        elif tag in order:
            expect_ok = order[tag] == stage + 1
        else:
            expect_ok = stage == 3
        if expect_ok:
            action = pol.classify(direction, tag)
            assert action is (Action.REWRITE if tag == proto.VERSION else Action.PASS)
            if tag in order:
                stage = order[tag]
        else:
            with pytest.raises(PolicyViolation) as info:
                pol.classify(direction, tag)
            assert info.value.fault is FAULT[direction]
            return


# --------------------------------------------------------------------------------------------
# Version kaspad -> remote


def test_version_to_remote_sets_addrv2_and_keeps_the_rest() -> None:
    pol, gossip = _policy()
    src = _version(address=pb.NetAddress(ip=bytes([8, 8, 8, 8]), port=16111),
                   disableRelayTx=True)
    pol.classify(TO_REMOTE, proto.VERSION)
    out = pol.rewrite(TO_REMOTE, src)
    assert out is not None
    expect = pb.KaspadMessage()
    expect.ParseFromString(src)
    expect.version.services |= proto.SERVICE_ADDRV2
    expect.version.ClearField("address")
    assert out == expect.SerializeToString()  # byte-identical apart from the two changes
    assert gossip.kaspad_node_id == KASPAD_ID
    assert pol.kaspad.node_id == KASPAD_ID
    assert pol.counters["versions_rewritten"] == 1


def test_version_to_remote_keeps_other_service_bits() -> None:
    pol, _ = _policy()
    out = pol.rewrite(TO_REMOTE, _version(services=0b101))
    assert _pb_version_of(out or b"").services == 0b101 | proto.SERVICE_ADDRV2
    out2 = pol.rewrite(TO_REMOTE, _version(services=proto.SERVICE_ADDRV2))
    assert out2 == _version(services=proto.SERVICE_ADDRV2)  # already set: unchanged


def test_version_to_remote_without_address_only_gains_services() -> None:
    pol, _ = _policy()
    out = pol.rewrite(TO_REMOTE, _version())
    assert out == _version(services=proto.SERVICE_ADDRV2)


@pytest.mark.parametrize(
    ("advertise", "via_tor", "kept"),
    [(False, True, False), (True, True, True), (False, False, True), (True, False, True)],
)
def test_version_to_remote_address_setting(advertise: bool, via_tor: bool, kept: bool) -> None:
    pol, _ = _policy(advertise_address=advertise, via_tor=via_tor)
    addr = pb.NetAddress(ip=bytes([8, 8, 4, 4]), port=16111)
    out = _pb_version_of(pol.rewrite(TO_REMOTE, _version(address=addr)) or b"")
    assert out.HasField("address") == kept
    if kept:
        assert out.address == addr


@pytest.mark.parametrize("ip", [b"", bytes(5), bytes(15)])
def test_version_to_remote_invalid_address_always_removed(ip: bytes) -> None:
    pol, _ = _policy(advertise_address=True, via_tor=False)
    out = _pb_version_of(pol.rewrite(TO_REMOTE, _version(
        address=pb.NetAddress(ip=ip, port=16111))) or b"")
    assert not out.HasField("address")


def test_version_to_remote_undecodable_is_kaspad_fault() -> None:
    pol, _ = _policy()
    bad = proto.make_len_field(proto.VERSION, bytes.fromhex("0a0100")).raw  # pv as LEN
    exc = _violation(TO_REMOTE, pol.rewrite, TO_REMOTE, bad, match="undecodable")
    assert exc.fault is Fault.KASPAD
    exc = _violation(TO_REMOTE, pol.rewrite, TO_REMOTE, b"\x0a\x05", match="undecodable")
    assert exc.fault is Fault.KASPAD


# --------------------------------------------------------------------------------------------
# Version remote -> kaspad


def test_version_to_kaspad_unchanged_when_clean() -> None:
    pol, _ = _policy()
    src = _remote_version(address=pb.NetAddress(ip=bytes([1, 2, 3, 4]), port=16111))
    assert pol.rewrite(TO_KASPAD, src) == src
    assert pol.remote.node_id == REMOTE_ID
    assert pol.remote.addrv2
    assert pol.remote.protocol_version == 8


@pytest.mark.parametrize("n", [0, 1, 15, 17, 32])
def test_version_to_kaspad_requires_16_byte_id(n: int) -> None:
    pol, _ = _policy()
    exc = _violation(TO_KASPAD, pol.rewrite, TO_KASPAD, _remote_version(node_id=bytes(n)))
    assert exc.fault is Fault.REMOTE
    assert "16" in str(exc)


def test_version_to_kaspad_undecodable_is_remote_fault() -> None:
    pol, _ = _policy()
    bad = proto.make_len_field(proto.VERSION, bytes.fromhex("2801")).raw  # id as varint
    assert _violation(TO_KASPAD, pol.rewrite, TO_KASPAD, bad).fault is Fault.REMOTE
    two = _version() + proto.make_len_field(proto.VERACK, b"").raw  # two payloads
    assert _violation(TO_KASPAD, pol.rewrite, TO_KASPAD, two).fault is Fault.REMOTE


def test_remote_with_our_kaspad_id_is_loopback_kaspad_first() -> None:
    pol, _ = _policy()
    pol.rewrite(TO_REMOTE, _version())
    exc = _violation(TO_KASPAD, pol.rewrite, TO_KASPAD, _remote_version(node_id=KASPAD_ID),
                     match="our own kaspad")
    assert exc.fault is Fault.REMOTE
    assert "self" in exc.action


def test_remote_with_our_kaspad_id_is_loopback_remote_first() -> None:
    pol, _ = _policy()
    pol.rewrite(TO_KASPAD, _remote_version(node_id=KASPAD_ID))  # kaspad's id not known yet
    exc = _violation(TO_REMOTE, pol.rewrite, TO_REMOTE, _version(), match="our own kaspad")
    assert exc.fault is Fault.REMOTE


def test_kaspad_id_is_shared_between_connections() -> None:
    gossip = GossipState(own_onion=OWN)
    first, _ = _policy(gossip)
    first.rewrite(TO_REMOTE, _version())
    second, _ = _policy(gossip)
    _violation(TO_KASPAD, second.rewrite, TO_KASPAD, _remote_version(node_id=KASPAD_ID),
               match="our own kaspad")
    third, _ = _policy(gossip)
    assert third.rewrite(TO_KASPAD, _remote_version()) is not None


@pytest.mark.parametrize("addrv2", [True, False])
def test_version_to_kaspad_onion_address_stripped_and_learned(addrv2: bool) -> None:
    pol, gossip = _policy()
    onion = _onion()
    src = _remote_version(addrv2, address=pb.NetAddress(onion=onion.host, port=16112))
    out = pol.rewrite(TO_KASPAD, src)
    assert out == _remote_version(addrv2)  # only the address is gone
    assert pol.counters["onions_removed"] == 1
    peer = OnionPeer(onion, 16112)
    if addrv2:
        assert list(gossip.onions) == [peer]
        assert gossip.onions[peer] == "version:peerX"
    else:
        assert not gossip.onions


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("a" * 56 + ".onion", 16111),  # shape-valid, checksum-invalid (the fork accepts it)
        ("not an onion", 16111),
        (OnionAddress.from_pubkey(b"\x05" * 32).host, 0),  # port 0
        (OnionAddress.from_pubkey(b"\x05" * 32).host, 70000),  # port too big
        (OWN.address.host, 16111),  # our own onion
        (OWN.address.host, 1),
    ],
)
def test_version_to_kaspad_bad_onion_stripped_not_learned(host: str, port: int) -> None:
    pol, gossip = _policy()
    out = pol.rewrite(TO_KASPAD, _remote_version(address=pb.NetAddress(onion=host, port=port)))
    assert not _pb_version_of(out or b"").HasField("address")
    assert not gossip.onions


@pytest.mark.parametrize("ip", [b"", bytes(3), bytes(17)])
def test_version_to_kaspad_invalid_ip_stripped(ip: bytes) -> None:
    pol, gossip = _policy()
    out = pol.rewrite(TO_KASPAD, _remote_version(address=pb.NetAddress(ip=ip, port=16111)))
    assert out == _remote_version()
    assert pol.counters["invalid_removed"] == 1
    assert not gossip.onions


def test_version_to_kaspad_port_over_65535_stripped() -> None:
    pol, _ = _policy()
    out = pol.rewrite(TO_KASPAD, _remote_version(
        address=pb.NetAddress(ip=bytes(4), port=65536)))
    assert out == _remote_version()


def test_version_to_kaspad_services_untouched() -> None:
    pol, _ = _policy()
    src = _remote_version(False)
    assert pol.rewrite(TO_KASPAD, src) == src
    assert not pol.remote.addrv2


# --------------------------------------------------------------------------------------------
# Addresses remote -> kaspad


ONE_IP = [proto.NetAddress.from_ip(bytes([1, 2, 3, 4]), 16111)]


def _to_kaspad(pol: ConnectionPolicy) -> bytes | None:
    """One remote Addresses through the policy: what kaspad receives (None: nothing)."""
    assert pol.classify(TO_KASPAD, proto.ADDRESSES) is Action.REWRITE
    return pol.rewrite(TO_KASPAD, _addresses(ONE_IP))


def test_unsolicited_addresses_never_reach_kaspad() -> None:
    pol, _ = _ready()
    assert _to_kaspad(pol) is None
    assert pol.counters["dropped"] == 1
    assert any("unsolicited" in n for n in _notes(pol))
    # The remote's own RequestAddresses does not solicit anything for kaspad.
    assert pol.classify(TO_KASPAD, proto.REQUEST_ADDRESSES) is Action.PASS
    assert _to_kaspad(pol) is None


def test_solicited_addresses_once() -> None:
    pol, _ = _ready()
    assert pol.classify(TO_REMOTE, proto.REQUEST_ADDRESSES) is Action.PASS
    assert _to_kaspad(pol) is not None
    assert _to_kaspad(pol) is None
    assert _to_kaspad(pol) is None
    assert pol.counters["dropped"] == 2


def test_kaspad_gets_exactly_one_addresses_even_if_it_asked_twice() -> None:
    pol, _ = _ready()
    pol.classify(TO_REMOTE, proto.REQUEST_ADDRESSES)
    pol.classify(TO_REMOTE, proto.REQUEST_ADDRESSES)
    assert _to_kaspad(pol) is not None
    assert _to_kaspad(pol) is None  # kaspad's ReceiveAddressesFlow has ended (protocol.md §7.1)


def test_bridge_refresh_reply_is_consumed_in_fifo_order() -> None:
    g = GossipState()
    pol, _ = _ready(True, g)
    assert pol.can_refresh()
    pol.bridge_asked()  # the bridge asked first
    pol.classify(TO_REMOTE, proto.REQUEST_ADDRESSES)  # then kaspad
    onion = OnionAddress.from_pubkey(bytes(range(7, 39)))
    entries = [*ONE_IP, proto.NetAddress.from_onion(onion.host, 16111)]
    assert pol.classify(TO_KASPAD, proto.ADDRESSES) is Action.REWRITE
    assert pol.rewrite(TO_KASPAD, _addresses(entries)) is None  # the bridge's: harvested
    assert onion in [p.address for p in g.onions]
    out = _to_kaspad(pol)  # kaspad's: forwarded, onion-free
    assert out is not None
    assert [e.ip for e in proto.decode_addresses(proto.Envelope.decode(out).payload)] == [
        bytes([1, 2, 3, 4])]


def test_no_refresh_to_legacy_remote_or_before_handshake() -> None:
    pol, _ = _ready(False)
    assert not pol.can_refresh()
    fresh = ConnectionPolicy(GossipState(), PolicySettings())
    assert not fresh.can_refresh()


def test_ip_entries_are_harvested_both_directions() -> None:
    pol, _ = _ready(True, GossipState())
    pol.take_events()
    pol.classify(TO_REMOTE, proto.REQUEST_ADDRESSES)
    _to_kaspad(pol)
    v6 = proto.NetAddress.from_ip(bytes(15) + b"\x01", 5)
    pol.classify(TO_REMOTE, proto.ADDRESSES)
    pol.rewrite(TO_REMOTE, _addresses([v6]))
    seen = [e for e in pol.take_events() if isinstance(e, AddressesLearned)]
    assert [list(e.endpoints) for e in seen] == [[("1.2.3.4", 16111)], [("::1", 5)]]
    assert [e.source for e in seen] == ["gossip:peerX", "gossip:kaspad"]


def test_addresses_to_remote_always_rewritten() -> None:
    pol, _ = _ready()
    assert pol.classify(TO_REMOTE, proto.ADDRESSES) is Action.REWRITE
    assert pol.classify(TO_REMOTE, proto.ADDRESSES) is Action.REWRITE


def _solicited(addrv2: bool = True, gossip: GossipState | None = None
               ) -> tuple[ConnectionPolicy, GossipState]:
    pol, g = _ready(addrv2, gossip)
    pol.classify(TO_REMOTE, proto.REQUEST_ADDRESSES)
    assert pol.classify(TO_KASPAD, proto.ADDRESSES) is Action.REWRITE
    return pol, g


@pytest.mark.parametrize("addrv2", [True, False])
def test_addresses_to_kaspad_filtering(addrv2: bool) -> None:
    pol, gossip = _solicited(addrv2)
    o1, o2 = _onion(1), _onion(2)
    good = [proto.NetAddress.from_ip(_ip4(1), 16111), proto.NetAddress.from_ip(bytes(range(16)), 1),
            proto.NetAddress.from_ip(_ip4(2), 65535)]
    entries = [
        good[0],
        proto.NetAddress.from_onion(o1.host, 16111),
        proto.NetAddress.from_ip(bytes(5), 16111),
        good[1],
        proto.NetAddress.from_ip(_ip4(3), 65536),
        proto.NetAddress.from_onion(o2.host, 16222),
        proto.NetAddress.from_onion(OWN.address.host, OWN.port),  # our own: never learned
        proto.NetAddress([]),
        good[2],
    ]
    ids = proto.make_varint_field(proto.RESPONSE_ID, 9).raw
    out = pol.rewrite(TO_KASPAD, _addresses(entries, ids))
    assert out == _addresses(good, ids)  # kept entries byte-identical, in order, ids kept
    m = pb.KaspadMessage()
    m.ParseFromString(out or b"")
    assert m.response_id == 9
    assert all(a.WhichOneof("address") == "ip" for a in m.addresses.addressList)
    assert pol.counters["onions_removed"] == 3
    assert pol.counters["invalid_removed"] == 3
    if addrv2:
        assert list(gossip.onions) == [OnionPeer(o1, 16111), OnionPeer(o2, 16222)]
        assert set(gossip.onions.values()) == {"gossip:peerX"}
    else:
        assert not gossip.onions


def test_addresses_to_kaspad_limit() -> None:
    pol, _ = _solicited()
    ok = [proto.NetAddress.from_ip(_ip4(i), 16111) for i in range(MAX_ADDRESSES_RECEIVE)]
    assert len(_entries_of(pol.rewrite(TO_KASPAD, _addresses(ok)) or b"")) == 2500
    pol, _ = _solicited()
    too_many = [*ok, proto.NetAddress.from_ip(_ip4(99999), 1)]
    exc = _violation(TO_KASPAD, pol.rewrite, TO_KASPAD, _addresses(too_many), match="2501")
    assert exc.fault is Fault.REMOTE


def test_addresses_to_kaspad_garbage_is_remote_fault() -> None:
    pol, _ = _solicited()
    bad = proto.make_len_field(proto.ADDRESSES, bytes.fromhex("0801")).raw
    assert _violation(TO_KASPAD, pol.rewrite, TO_KASPAD, bad).fault is Fault.REMOTE


def test_addresses_to_kaspad_empty() -> None:
    pol, _ = _solicited()
    assert pol.rewrite(TO_KASPAD, _addresses([])) == _addresses([])


entry_st = st.one_of(
    st.builds(proto.NetAddress.from_ip, st.binary(max_size=17), st.integers(0, 1 << 20)),
    st.builds(lambda k, p: proto.NetAddress.from_onion(OnionAddress.from_pubkey(k).host, p),
              st.binary(min_size=32, max_size=32), st.integers(0, 70000)),
    st.builds(proto.NetAddress.from_onion, st.text("abcdefghijklmnopqrstuvwxyz234567.",
                                                   max_size=70), st.integers(0, 70000)),
    st.builds(lambda p: proto.NetAddress.from_onion(OWN.address.host, p), st.integers(1, 65535)),
    st.just(proto.NetAddress([])),
)


@given(st.lists(entry_st, max_size=40), st.booleans())
@settings(max_examples=150)
def test_addresses_to_kaspad_property(entries: list[proto.NetAddress], addrv2: bool) -> None:
    pol, gossip = _solicited(addrv2)
    out = pol.rewrite(TO_KASPAD, _addresses(entries))
    kept = _entries_of(out or b"")
    assert all(e.kaspad_accepts() for e in kept)
    assert [e.encode() for e in kept] == [e.encode() for e in entries if e.kaspad_accepts()]
    # What an upstream decoder sees: every entry is a 4/16-byte ip and a u16 port.
    m = pb.AddressesMessage()
    m.ParseFromString(proto.Envelope.decode(out or b"").payload)
    for a in m.addressList:
        assert a.WhichOneof("address") == "ip" and len(a.ip) in (4, 16) and a.port <= 0xFFFF
    assert all(p.address != OWN.address for p in gossip.onions)
    if not addrv2:
        assert not gossip.onions
    else:
        assert all(0 < p.port <= 0xFFFF for p in gossip.onions)


# --------------------------------------------------------------------------------------------
# Addresses kaspad -> remote


def _kaspad_ips(n: int) -> list[proto.NetAddress]:
    return [proto.NetAddress.from_ip(_ip4(i), 16111) for i in range(n)]


def _learned(gossip: GossipState, n: int) -> list[OnionPeer]:
    peers = [OnionPeer(_onion(1000 + i), 16111) for i in range(n)]
    for p in peers:
        assert gossip.learn(p, "test")
    return peers


def test_addresses_to_addrv2_remote_own_onion_first_then_learned() -> None:
    pol, gossip = _ready(True)
    learned = _learned(gossip, 5)
    ips = _kaspad_ips(3)
    out = _entries_of(pol.rewrite(TO_REMOTE, _addresses(ips)) or b"")
    assert [e.encode() for e in out[:3]] == [e.encode() for e in ips]
    onions = out[3:]
    assert onions[0].encode() == proto.NetAddress.from_onion(OWN.address.host, OWN.port).encode()
    got = {OnionPeer(OnionAddress.parse(e.onion or ""), e.port) for e in onions[1:]}
    assert got == set(learned)
    assert len(onions) == 6
    assert pol.counters["onions_added"] == 6
    # The fork decodes every onion entry with the oneof onion variant.
    m = pb.AddressesMessage()
    m.ParseFromString(proto.encode_addresses(out))
    assert [a.WhichOneof("address") for a in m.addressList] == ["ip"] * 3 + ["onion"] * 6


def test_addresses_to_addrv2_remote_capped_at_1000() -> None:
    pol, gossip = _ready(True)
    _learned(gossip, 50)
    out = _entries_of(pol.rewrite(TO_REMOTE, _addresses(_kaspad_ips(990))) or b"")
    assert len(out) == MAX_ADDRESSES_SEND
    assert sum(e.onion is not None for e in out) == 10
    assert out[990].onion == OWN.address.host


def test_own_onion_gets_in_even_with_1000_ips() -> None:
    pol, gossip = _ready(True)
    _learned(gossip, 5)
    out = _entries_of(pol.rewrite(TO_REMOTE, _addresses(_kaspad_ips(1000))) or b"")
    assert len(out) == MAX_ADDRESSES_SEND
    assert [e.onion for e in out if e.onion is not None] == [OWN.address.host]
    assert out[-1].port == OWN.port


def test_no_own_onion_1000_ips_unchanged() -> None:
    gossip = GossipState(own_onion=None, rng=random.Random(0))
    pol, _ = _ready(True, gossip)
    _learned(gossip, 5)
    msg = _addresses(_kaspad_ips(1000))
    assert pol.rewrite(TO_REMOTE, msg) == msg


def test_addresses_to_addrv2_remote_without_own_onion() -> None:
    gossip = GossipState(own_onion=None, rng=random.Random(0))
    pol, _ = _ready(True, gossip)
    learned = _learned(gossip, 3)
    out = _entries_of(pol.rewrite(TO_REMOTE, _addresses(_kaspad_ips(2))) or b"")
    got = [OnionPeer(OnionAddress.parse(e.onion or ""), e.port) for e in out[2:]]
    assert sorted(got, key=str) == sorted(learned, key=str)


def test_remote_onion_not_gossiped_back_to_itself() -> None:
    pol, gossip = _ready(True)
    learned = _learned(gossip, 4)
    pol.remote_onion = learned[0].address
    out = _entries_of(pol.rewrite(TO_REMOTE, _addresses(_kaspad_ips(1))) or b"")
    hosts = [e.onion for e in out[1:]]
    assert hosts[0] == OWN.address.host
    assert sorted(hosts[1:]) == sorted(p.address.host for p in learned[1:])


def test_addresses_to_legacy_remote_never_onion() -> None:
    pol, gossip = _ready(False)
    _learned(gossip, 5)
    ips = _kaspad_ips(4)
    msg = _addresses(ips)
    assert pol.rewrite(TO_REMOTE, msg) == msg
    # Even if kaspad itself listed an onion, it does not reach a legacy peer.
    mixed = _addresses([*ips, proto.NetAddress.from_onion(_onion(7).host, 1)])
    assert pol.rewrite(TO_REMOTE, mixed) == msg
    assert pol.counters["onions_removed"] == 1


@given(st.lists(entry_st, max_size=30), st.integers(0, 20), st.booleans())
@settings(max_examples=150)
def test_addresses_to_remote_property(entries: list[proto.NetAddress], n_learned: int,
                                      addrv2: bool) -> None:
    pol, gossip = _ready(addrv2)
    _learned(gossip, n_learned)
    out = _entries_of(pol.rewrite(TO_REMOTE, _addresses(entries)) or b"")
    if not addrv2:
        assert all(proto.first(e.fields, proto.NA_ONION) is None for e in out)
        assert [e.encode() for e in out] == [e.encode() for e in entries if e.onion is None]
    else:
        assert len(out) <= max(MAX_ADDRESSES_SEND, len(entries))
        assert [e.encode() for e in out[: len(entries)]] == [e.encode() for e in entries]
        added = out[len(entries):]
        assert added[0].onion == OWN.address.host
        assert len(added) == min(1 + n_learned, MAX_ADDRESSES_SEND - len(entries))
        hosts = [e.onion for e in added]
        assert len(set(hosts)) == len(hosts)


def test_addresses_to_remote_keeps_ids() -> None:
    pol, _ = _ready(True)
    ids = proto.make_varint_field(proto.RESPONSE_ID, 77).raw
    out = pol.rewrite(TO_REMOTE, _addresses(_kaspad_ips(1), ids))
    env = proto.Envelope.decode(out or b"")
    assert [f.raw for f in env.others] == [ids]


# --------------------------------------------------------------------------------------------
# GossipState


def test_gossip_learn_and_capacity() -> None:
    """First source kept; full: quotas per source group (issue G; more in test_addrman.py)."""
    g = GossipState(own_onion=OWN, capacity=3)
    peers = [OnionPeer(_onion(i + 10), 16111) for i in range(5)]
    assert g.learn(peers[0], "gossip:peer 1.2.3.4:1")
    assert not g.learn(peers[0], "gossip:peer 5.6.7.8:1")  # known: not new, first source kept
    assert g.onions[peers[0]] == "gossip:peer 1.2.3.4:1"
    assert g.learn(peers[1], "gossip:peer 5.6.7.8:1")
    assert g.learn(peers[2], "gossip:peer 9.9.9.9:1")
    # full (one per group): a newcomer of a group replaces that group's oldest
    assert g.learn(peers[3], "gossip:peer 5.6.1.1:1")
    assert list(g.onions) == [peers[0], peers[2], peers[3]]
    # a new group, nobody holds more: not kept (the policy still reports it, see
    # test_onions_learned_reports_every_valid_onion)
    assert g.learn(peers[4], "gossip:peer 7.7.7.7:1")
    assert len(g.onions) == 3 and peers[4] not in g.onions


def test_gossip_never_learns_own_onion() -> None:
    g = GossipState(own_onion=OWN)
    assert not g.learn(OWN, "x")
    assert not g.learn(OnionPeer(OWN.address, 1), "x")  # any port
    assert not g.onions
    # ... nor reports it for the book (a remote gossiping our own onion back to us)
    pol, _ = _solicited(True, g)
    pol.take_events()
    pol.rewrite(TO_KASPAD, _addresses([proto.NetAddress.from_onion(OWN.address.host, 1),
                                       proto.NetAddress.from_onion(OWN.address.host, 16111)]))
    assert not g.onions
    assert not [e for e in pol.take_events() if isinstance(e, OnionsLearned)]


def test_onions_learned_reports_every_valid_onion() -> None:
    """One OnionsLearned per message, for the book: every valid onion of it, also those the
    bounded GossipState does not keep (full) or knew already; not our own, not invalid ones."""
    g = GossipState(own_onion=OWN, capacity=1)
    known = OnionPeer(_onion(1), 16111)
    g.learn(known, "gossip:peer 1.2.3.4:1")
    pol, _ = _solicited(True, g)
    pol.take_events()
    fresh = [OnionPeer(_onion(i + 2), 16111) for i in range(3)]
    entries = [proto.NetAddress.from_onion(p.address.host, p.port) for p in [known, *fresh]]
    entries += [proto.NetAddress.from_onion(OWN.address.host, OWN.port),
                proto.NetAddress.from_onion("a" * 56 + ".onion", 16111)]  # bad checksum
    pol.rewrite(TO_KASPAD, _addresses(entries))
    learned = [e for e in pol.take_events() if isinstance(e, OnionsLearned)]
    assert learned == [OnionsLearned((known, *fresh), "gossip:peerX")]
    assert list(g.onions) == [known]  # full: the set kept only the first


def test_handshake_seen_for_both_versions() -> None:
    pol, _ = _ready(True)
    seen = [e for e in pol.take_events() if isinstance(e, HandshakeSeen)]
    assert [(e.kaspad, e.node_id) for e in seen] == [(True, KASPAD_ID), (False, REMOTE_ID)]
    assert seen[1].services & proto.SERVICE_ADDRV2 and not seen[0].services & (1 << 22)


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 5)), max_size=200),
       st.integers(1, 40))
def test_gossip_capacity_property(learns: list[tuple[int, int]], capacity: int) -> None:
    """Bounded, at most ``capacity // 16`` per source group, and an onion is only ever evicted
    by its own group or for a newcomer of a smaller group (issue G: no newest-wins eclipse)."""
    g = GossipState(own_onion=OWN, capacity=capacity)
    quota = max(1, capacity // 16)
    for s, grp in learns:
        before = dict(g.onions)
        had = collections.Counter(before.values())
        src = f"gossip:peer 1.{grp}.0.1:1"
        g.learn(OnionPeer(_onion(s + 2), 16111), src)
        assert len(g.onions) <= capacity
        assert all(n <= quota for n in collections.Counter(g.onions.values()).values())
        for lost in before.keys() - g.onions.keys():
            assert before[lost] == src or had[before[lost]] > had[src] + 1


def test_gossip_sample() -> None:
    g = GossipState(own_onion=None, rng=random.Random(3))
    peers = [OnionPeer(_onion(i + 10), 1) for i in range(10)]
    for p in peers:
        g.learn(p, "x")
    assert sorted(g.sample(100), key=str) == sorted(peers, key=str)
    s = g.sample(4)
    assert len(s) == 4 and len(set(s)) == 4 and set(s) <= set(peers)
    assert g.sample(0) == []
    assert peers[0] not in g.sample(100, exclude={peers[0].address})
    rest = g.sample(100, exclude={peers[0].address, peers[1].address})
    assert sorted(rest, key=str) == sorted(peers[2:], key=str)
    assert GossipState().sample(5) == []


def test_rewrite_of_pass_through_tag_is_identity() -> None:
    pol, _ = _ready()
    ping = bytes.fromhex("8201020801a80605")
    assert pol.rewrite(TO_KASPAD, ping) == ping


_pb_versions = st.builds(
    lambda pv, services, ts, addr, ua, relay, network: pb.VersionMessage(
        protocolVersion=pv, services=services, timestamp=ts, address=addr, id=KASPAD_ID,
        userAgent=ua, disableRelayTx=relay, network=network),
    st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 64) - 1),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.none() | st.builds(lambda ip, port: pb.NetAddress(ip=ip, port=port),
                          st.binary(max_size=17), st.integers(0, 70000)),
    st.text(max_size=30), st.booleans(), st.sampled_from(["", "kaspa-mainnet", "kaspa-simnet"]),
)


@given(_pb_versions, st.booleans(), st.booleans())
@settings(max_examples=150)
def test_version_to_remote_property(v: pb.VersionMessage, advertise: bool, via_tor: bool) -> None:
    pol, _ = _policy(advertise_address=advertise, via_tor=via_tor)
    src = pb.KaspadMessage(version=v).SerializeToString()
    out = pol.rewrite(TO_REMOTE, src)
    expect = pb.KaspadMessage()
    expect.ParseFromString(src)
    expect.version.services |= proto.SERVICE_ADDRV2
    a = v.address
    acceptable = len(a.ip) in (4, 16) and a.port <= 0xFFFF
    if v.HasField("address") and ((via_tor and not advertise) or not acceptable):
        expect.version.ClearField("address")
    assert out == expect.SerializeToString()


@given(_pb_versions, st.booleans())
@settings(max_examples=150)
def test_version_to_kaspad_property(v: pb.VersionMessage, addrv2: bool) -> None:
    v.id = REMOTE_ID
    if addrv2:
        v.services |= proto.SERVICE_ADDRV2
    else:
        v.services &= ~proto.SERVICE_ADDRV2
    pol, gossip = _policy()
    src = pb.KaspadMessage(version=v).SerializeToString()
    out = pol.rewrite(TO_KASPAD, src)
    got = _pb_version_of(out or b"")
    if got.HasField("address"):
        assert len(got.address.ip) in (4, 16) and got.address.port <= 0xFFFF
    expect = pb.KaspadMessage()
    expect.ParseFromString(src)
    if not got.HasField("address"):
        expect.version.ClearField("address")
    assert out == expect.SerializeToString()
    assert pol.remote.addrv2 == addrv2
    assert not gossip.onions


def test_kaspad_advertising_a_routable_address_is_warned_and_removed() -> None:
    pol = ConnectionPolicy(GossipState(), PolicySettings())
    pol.classify(TO_REMOTE, proto.VERSION)
    v = proto.Version.decode(proto.Envelope.decode(_kaspad_version_with(bytes([8, 8, 4, 4])))
                             .payload)
    out = proto.Envelope.decode(pol.rewrite(TO_REMOTE, _wrap_version(v)) or b"")
    assert proto.Version.decode(out.payload).address is None
    assert any("8.8.4.4" in w and "--externalip" in w for w in _notes(pol, warning=True))
    quiet = ConnectionPolicy(GossipState(), PolicySettings())
    quiet.classify(TO_REMOTE, proto.VERSION)
    quiet.rewrite(TO_REMOTE, _kaspad_version_with(bytes([192, 168, 1, 5])))
    assert _notes(quiet, warning=True) == []  # private: not a misconfiguration sign


def _kaspad_version_with(ip: bytes) -> bytes:
    fields = [proto.make_varint_field(proto.V_PROTOCOL, 8),
              proto.make_len_field(proto.V_ADDRESS, proto.NetAddress.from_ip(ip, 16111).encode()),
              proto.make_len_field(proto.V_ID, os.urandom(16))]
    return proto.make_len_field(proto.VERSION, proto.encode_fields(fields)).raw


def _wrap_version(v: proto.Version) -> bytes:
    return proto.make_len_field(proto.VERSION, v.encode()).raw
