"""bridge.core.addrman: public addresses, source groups, quotas (issue G defects 3 and 7)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core import addrman
from bridge.core.onion import OnionAddress

ONION = OnionAddress.from_pubkey(b"\x05" * 32).host

NOT_PUBLIC = [
    "0.0.0.1", "10.0.0.1", "100.64.0.1", "100.127.255.254", "127.0.0.1", "169.254.9.9",
    "172.16.0.1", "172.31.255.255", "192.0.0.9", "192.0.2.1", "192.88.99.1", "192.168.0.1",
    "198.18.0.1", "198.19.255.255", "198.51.100.1", "203.0.113.1", "224.0.0.1", "239.1.1.1",
    "240.0.0.1", "255.255.255.255",
    "::", "::1", "::1.2.3.4", "::ffff:10.0.0.1", "::ffff:127.0.0.1", "64:ff9b::808:808",
    "64:ff9b:1::1", "100::1", "2001::1", "2001:db8::1", "2001:10::1", "2002:a00:1::1",
    "2002:7f00:1::1", "3fff::1", "5f00::1", "fc00::1", "fd12:3456::1", "fe80::1", "fec0::1",
    "ff02::1",
]
PUBLIC = ["1.1.1.1", "8.8.8.8", "100.63.255.255", "100.128.0.0", "172.15.255.255",
          "172.32.0.0", "192.0.3.0", "192.169.0.0", "223.255.255.255", "::ffff:8.8.8.8",
          "2002:808:808::1", "2001:4860::8888", "2606:4700::1111", "2a00:1450::1"]


@pytest.mark.parametrize("host", NOT_PUBLIC)
def test_not_public(host: str) -> None:
    assert not addrman.is_public_ip(ipaddress.ip_address(host))
    assert not addrman.is_public_host(host)


@pytest.mark.parametrize("host", PUBLIC)
def test_public(host: str) -> None:
    assert addrman.is_public_ip(ipaddress.ip_address(host))
    assert addrman.is_public_host(host)


def test_public_host_odds() -> None:
    assert addrman.is_public_host(ONION)
    assert not addrman.is_public_host("example.com") and not addrman.is_public_host("")


@given(st.integers(0, 2**32 - 1))
def test_ipv4_fast_path_agrees_with_ipaddress(value: int) -> None:
    ip = ipaddress.IPv4Address(value)
    want = (ip.is_global and not ip.is_multicast and not ip.is_reserved
            and ip not in ipaddress.ip_network("192.0.0.0/24")
            and ip not in ipaddress.ip_network("192.88.99.0/24"))
    assert addrman.is_public_ip(ip) == want
    assert addrman.is_public_ip(ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)) \
        == want


def test_source_group() -> None:
    sg = addrman.source_group
    assert sg("gossip:peer 1.2.3.4:16111") == sg("version:peer 1.2.200.9:1") == "ipv4:1.2"
    assert sg("gossip:peer [2001:db8::1]:16111") == "ipv6:20010db8"
    assert sg(f"gossip:peer {ONION}:16111") == sg(f"version:peer {ONION}:9") == "onion:" + ONION
    assert sg("gossip:inbound peer #1") == sg("version:inbound peer #99") == "inbound"
    assert sg("inbound-version") == "inbound"
    assert sg("gossip:kaspad") == "kaspad"
    assert sg("seed") == "seed" and sg("config") == "config"
    for odd in ("gossip", "gossip:remote", "gossip:peer", "gossip:peer nohost", "gossip:peer x:1",
                "gossip:peer [::1", "gossip:1.2.3.4:16111"):
        assert sg(odd) == "other", odd


def test_group_counts() -> None:
    c = addrman.GroupCounts({"a": 3, "b": 1, "z": 0})
    assert (c.total, c.get("z"), c.largest()) == (4, 0, ("a", 3))
    assert c.victim_group("b", quota=1, capacity=10) == "b"  # at its quota
    assert c.victim_group("c", quota=2, capacity=10) is None  # room
    assert c.victim_group("c", quota=2, capacity=4) == "a"  # full: the largest pays
    c.add("a", -2)
    c.add("b")
    assert c.largest() == ("b", 2) and c.total == 3
    assert c.victim_group("c", quota=5, capacity=3) == "b"
    c.add("c")
    c.add("b", -1)
    # all equal: a newcomer takes from nobody but its own group
    assert c.victim_group("c", quota=5, capacity=3) == "c"
    for _ in range(1000):  # the lazy heap stays small
        c.add("a")
        c.add("a", -1)
    assert len(c._heap) < 100
