"""The Kaspa networks the bridge supports: one frozen table every module looks up.

Each :class:`Network` carries what the bridge needs to know about a network: its name (the
``network`` config key and the address book's partition), its default P2P port (kaspad's
``--listen`` port, the onion service's virtual port, the port of a configured peer or a DNS
seeder given without one), its default gRPC RPC port, the kaspad flags that select it, its DNS
seeders and its address prefix (rusty-kaspa ``consensus/core/src/config/params.rs`` and
``consensus/core/src/network.rs``).

Pure data: no I/O, nothing else imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = [
    "DEVNET",
    "MAINNET",
    "NETWORKS",
    "PUBLIC_NETWORKS",
    "SIMNET",
    "TESTNET_10",
    "Network",
    "find_network",
    "get_network",
    "network_p2p_port",
]


@dataclass(frozen=True, slots=True)
class Network:
    """One Kaspa network (see the module docstring for where each value comes from)."""

    #: ``kaspa-mainnet`` etc.: the config's ``network`` value and the book's partition
    name: str
    #: default P2P port (``--listen``; the onion service's virtual port)
    p2p_port: int
    #: default gRPC RPC port (``--rpclisten``)
    rpc_port: int
    #: kaspad's flags that select this network (none for mainnet)
    kaspad_flags: tuple[str, ...]
    #: DNS seeder host names (resolved by a Tor exit, never locally); none on simnet/devnet
    dns_seeders: tuple[str, ...]
    #: bech32 prefix of the network's addresses (``kaspasim:...``)
    address_prefix: str
    #: other people's nodes (mainnet, testnet) rather than the operator's own test nodes
    public: bool

    @property
    def short_name(self) -> str:
        """The name without ``kaspa-`` (``simnet``), as the Tor layer's key directories use."""
        return self.name.removeprefix("kaspa-")

    def seeder_targets(self) -> list[tuple[str, int]]:
        """``(hostname, P2P port)`` of every DNS seeder."""
        return [(host, self.p2p_port) for host in self.dns_seeders]


# DNS seeders of each network (rusty-kaspa ``consensus/core/src/config/params.rs``, protocol.md §9).
MAINNET: Final = Network(
    name="kaspa-mainnet", p2p_port=16111, rpc_port=16110, kaspad_flags=(),
    dns_seeders=(
        "mainnet-dnsseed-1.kaspanet.org",
        "mainnet-dnsseed-2.kaspanet.org",
        "seeder1.kaspad.net",
        "seeder2.kaspad.net",
        "seeder3.kaspad.net",
        "seeder4.kaspad.net",
        "kaspadns.kaspacalc.net",
        "n-mainnet.kaspa.ws",
        "dnsseeder-kaspa-mainnet.x-con.at",
    ),
    address_prefix="kaspa", public=True)
TESTNET_10: Final = Network(
    name="kaspa-testnet-10", p2p_port=16211, rpc_port=16210,
    kaspad_flags=("--testnet", "--netsuffix=10"),
    dns_seeders=(
        "seeder1-tn.kaspad.net",
        "dnsseeder-kaspa-testnet.x-con.at",
        "n-testnet-10.kaspa.ws",
    ),
    address_prefix="kaspatest", public=True)
SIMNET: Final = Network(
    name="kaspa-simnet", p2p_port=16511, rpc_port=16510, kaspad_flags=("--simnet",),
    dns_seeders=(), address_prefix="kaspasim", public=False)
DEVNET: Final = Network(
    name="kaspa-devnet", p2p_port=16611, rpc_port=16610, kaspad_flags=("--devnet",),
    dns_seeders=(), address_prefix="kaspadev", public=False)

#: Every supported network by name, in this order (mainnet first: the default).
NETWORKS: Final[Mapping[str, Network]] = MappingProxyType(
    {n.name: n for n in (MAINNET, TESTNET_10, SIMNET, DEVNET)})
#: Networks of other people's nodes.
PUBLIC_NETWORKS: Final[frozenset[str]] = frozenset(n.name for n in NETWORKS.values() if n.public)


def get_network(name: str) -> Network:
    """The network called ``name``; ``ValueError`` naming the allowed ones otherwise."""
    try:
        return NETWORKS[name]
    except KeyError:
        allowed = ", ".join(NETWORKS)
        raise ValueError(f"unknown network {name!r}; allowed: {allowed}") from None


def find_network(name: str) -> Network | None:
    """The network called ``name`` or, as the Tor layer names them, ``short_name``
    (``simnet``); ``None`` if there is none."""
    found = NETWORKS.get(name)
    if found is None:
        found = next((n for n in NETWORKS.values() if n.short_name == name), None)
    return found


def network_p2p_port(name: str) -> int:
    """Default P2P port of ``name``; ``ValueError`` for an unknown network."""
    return get_network(name).p2p_port
