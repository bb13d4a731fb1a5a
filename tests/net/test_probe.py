"""The harvest shell against the grpcio kaspad emulator, through the scripted SOCKS5 server and
through the private Tor network. The bridge never resolves a name: the seeder hostname reaches
the proxy as a SOCKS domain request."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from bridge.core.onion import OnionAddress
from bridge.core.probe import IncompatiblePeer, PeerRejected, ProbeTimeout
from bridge.net.probe import DNS_SEEDERS, HarvestTimeouts, harvest, seeder_targets
from bridge.net.socks import DialError, ProxyEndpoint
from bridge.rig.emulator import EmulatorConfig, KaspadEmulator
from tests.peers.socks_server import ScriptedSocks5Server

ONION = OnionAddress.from_pubkey(bytes(range(32))).host
FAKE_ONION = "a" * 56 + ".onion"  # passes the fork's shape check, fails the v3 checksum
ADDRS: list[tuple[bytes | str, int]] = [(bytes([1, 2, 3, 4]), 16511), (ONION, 16511),
                                        (bytes([5, 6, 7, 8]), 16512)]


class DnsAudit:
    """Records every resolver call; a lookup of anything but an IP literal fails loudly."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.names: list[str] = []

    def check(self, host: Any) -> None:
        text = host.decode() if isinstance(host, bytes) else str(host)
        self.calls.append(text)
        try:
            ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            self.names.append(text)
            raise AssertionError(f"DNS lookup of {text!r} attempted") from None


@pytest.fixture
def dns_audit(monkeypatch: pytest.MonkeyPatch) -> DnsAudit:
    audit = DnsAudit()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kw: Any) -> Any:
        audit.check(host)
        return real(host, *args, **kw)

    def by_name(host: Any, *args: Any, **kw: Any) -> Any:
        audit.check(host)
        raise AssertionError(f"gethostbyname*({host!r}) called")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for name in ("gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        monkeypatch.setattr(socket, name, by_name)
    return audit


@pytest.fixture
def emulators() -> Iterator[list[KaspadEmulator]]:
    started: list[KaspadEmulator] = []
    yield started
    for e in started:
        e.stop()


def start_emulator(emulators: list[KaspadEmulator], **kw: Any) -> tuple[KaspadEmulator, int]:
    kw.setdefault("network", "kaspa-simnet")
    kw.setdefault("addresses", ADDRS)
    emu = KaspadEmulator(EmulatorConfig(**kw))
    port = emu.start_server()
    emulators.append(emu)
    return emu, port


async def socks_to(nursery: trio.Nursery, routes: dict[str, int]) -> ScriptedSocks5Server:
    def route(host: str, port: int) -> tuple[str, int] | int:
        return ("127.0.0.1", routes[host]) if host in routes else 4  # host unreachable

    server = ScriptedSocks5Server(route)
    await nursery.start(server.serve)
    return server


async def wait_closed(emu: KaspadEmulator) -> None:
    session = emu.sessions[0]
    await trio.to_thread.run_sync(session.wait_closed, 5.0)


async def test_harvest_from_addrv2_emulator_via_seeder_name(
        nursery: trio.Nursery, emulators: list[KaspadEmulator], dns_audit: DnsAudit) -> None:
    emu, port = start_emulator(emulators, addrv2=True,
                               addresses=[*ADDRS, (FAKE_ONION, 16511), (bytes(4), 1)])
    socks = await socks_to(nursery, {"seeder.test": port})
    with trio.fail_after(20):
        res = await harvest("seeder.test", port, proxy=ProxyEndpoint("127.0.0.1", socks.port),
                            network="kaspa-simnet")
    assert [(i.host, i.port) for i in res.ips] == [("1.2.3.4", 16511), ("5.6.7.8", 16512)]
    assert [(o.host, o.port) for o in res.onions] == [(ONION, 16511)]
    assert len(res.dropped) == 2  # the checksum-less onion and 0.0.0.0
    assert res.endpoints == [(ONION, 16511), ("1.2.3.4", 16511), ("5.6.7.8", 16512)]
    assert res.peer.addrv2 and res.peer.network == "kaspa-simnet"
    assert res.peer.node_id == emu.config.node_id
    rec = socks.records[0]
    assert (rec.atyp, rec.host, rec.port) == ("domain", "seeder.test", port)
    assert rec.username and rec.password  # fresh credentials: own circuit
    assert dns_audit.names == []
    await wait_closed(emu)
    session = emu.sessions[0]
    assert session.violations == [], session.violations
    assert session.handshake_complete
    v = session.remote_version
    assert v.protocolVersion == 8 and v.services == 1 << 23 and len(v.id) == 16
    assert v.userAgent == "/kaspad:1.0.1/kaspad:1.0.1/" and v.network == "kaspa-simnet"
    assert not v.HasField("address")
    meta = dict(session.request_metadata or ())  # grpcio hides the grpc-* headers
    assert str(meta["user-agent"]).startswith("tonic/0.12.3")
    # our empty Addresses reply reached it (it asked after the handshake) unless we left first
    assert session.remote_addresses in (None, [])


async def test_legacy_emulator_never_yields_onions(
        nursery: trio.Nursery, emulators: list[KaspadEmulator]) -> None:
    # An upstream kaspad: no ADDRv2, so it withholds onions; even if it sent some we drop them.
    emu, port = start_emulator(emulators, addrv2=False, addresses=[(bytes([9, 9, 9, 9]), 1)])
    socks = await socks_to(nursery, {"legacy.test": port})
    with trio.fail_after(20):
        res = await harvest("legacy.test", port, proxy=ProxyEndpoint("127.0.0.1", socks.port),
                            network="kaspa-simnet")
    assert res.onions == () and [(i.host, i.port) for i in res.ips] == [("9.9.9.9", 1)]
    assert not res.peer.addrv2
    await wait_closed(emu)
    assert emu.sessions[0].violations == []


async def test_wrong_network_sends_reject_and_raises(
        nursery: trio.Nursery, emulators: list[KaspadEmulator]) -> None:
    _, port = start_emulator(emulators, network="kaspa-devnet")
    socks = await socks_to(nursery, {"dev.test": port})
    with trio.fail_after(20), pytest.raises((IncompatiblePeer, PeerRejected)) as info:
        await harvest("dev.test", port, proxy=ProxyEndpoint("127.0.0.1", socks.port),
                      network="kaspa-simnet")
    assert "kaspa-devnet" in str(info.value)


async def test_peer_that_never_answers_addresses_times_out(
        nursery: trio.Nursery, emulators: list[KaspadEmulator]) -> None:
    emu, port = start_emulator(emulators, addrv2=True, suppress=frozenset({"addresses"}))
    socks = await socks_to(nursery, {"mute.test": port})
    with trio.fail_after(20), pytest.raises(ProbeTimeout) as info:
        await harvest("mute.test", port, proxy=ProxyEndpoint("127.0.0.1", socks.port),
                      network="kaspa-simnet", timeouts=HarvestTimeouts(addresses=1.0))
    assert "Addresses" in str(info.value) and info.value.fault.name == "REMOTE"
    await wait_closed(emu)
    # kaspad's wording of the Reject we sent
    assert emu.sessions[0].closed_reason == "reject: timeout expired after 1s"


async def test_unreachable_seeder_is_a_dial_error(nursery: trio.Nursery) -> None:
    socks = await socks_to(nursery, {})
    with trio.fail_after(10), pytest.raises(DialError) as info:
        await harvest("nx.test", 16111, proxy=ProxyEndpoint("127.0.0.1", socks.port),
                      network="kaspa-mainnet")
    assert info.value.fault.name == "REMOTE"


def test_seeder_targets() -> None:
    main = seeder_targets("kaspa-mainnet")
    assert ("seeder1.kaspad.net", 16111) in main and len(main) == 9
    assert all(p == 16111 for _, p in main)
    assert seeder_targets("kaspa-testnet-10") == [
        ("seeder1-tn.kaspad.net", 16211), ("dnsseeder-kaspa-testnet.x-con.at", 16211),
        ("n-testnet-10.kaspa.ws", 16211)]
    assert seeder_targets("kaspa-simnet") == [] and seeder_targets("kaspa-devnet") == []
    assert set(DNS_SEEDERS) == {"kaspa-mainnet", "kaspa-testnet-10", "kaspa-simnet",
                                "kaspa-devnet"}
    with pytest.raises(ValueError, match="unknown network"):
        seeder_targets("kaspa-testnet-11")


@pytest.mark.tor
async def test_harvest_through_private_tor_network(
        tornet: Any, emulators: list[KaspadEmulator], dns_audit: DnsAudit) -> None:
    emu, port = start_emulator(emulators, addrv2=True)
    socks_port = tornet.client.socks_port
    assert socks_port is not None
    t0 = trio.current_time()
    with trio.fail_after(90):
        res = await harvest("seeder.test", port, proxy=ProxyEndpoint("127.0.0.1", socks_port),
                            network="kaspa-simnet",
                            timeouts=HarvestTimeouts(dial=60, version=10, ready=10))
    tornet.timings["probe_harvest"] = trio.current_time() - t0
    assert {(i.host, i.port) for i in res.ips} == {("1.2.3.4", 16511), ("5.6.7.8", 16512)}
    assert [(o.host, o.port) for o in res.onions] == [(ONION, 16511)]
    assert dns_audit.names == []
    await wait_closed(emu)
    assert emu.sessions[0].violations == []
