"""The network table (sans-IO data)."""

from __future__ import annotations

import dataclasses

import pytest

from bridge.core.kaspa import (
    DEVNET,
    MAINNET,
    NETWORKS,
    PUBLIC_NETWORKS,
    SIMNET,
    TESTNET_10,
    find_network,
    get_network,
    network_p2p_port,
)


def test_the_supported_networks() -> None:
    # rusty-kaspa consensus/core/src/config/params.rs
    assert {n.name: (n.p2p_port, n.rpc_port) for n in NETWORKS.values()} == {
        "kaspa-mainnet": (16111, 16110), "kaspa-testnet-10": (16211, 16210),
        "kaspa-simnet": (16511, 16510), "kaspa-devnet": (16611, 16610)}
    assert list(NETWORKS.values()) == [MAINNET, TESTNET_10, SIMNET, DEVNET]
    assert {n.name: n.kaspad_flags for n in NETWORKS.values()} == {
        "kaspa-mainnet": (), "kaspa-testnet-10": ("--testnet", "--netsuffix=10"),
        "kaspa-simnet": ("--simnet",), "kaspa-devnet": ("--devnet",)}
    assert [n.address_prefix for n in NETWORKS.values()] == ["kaspa", "kaspatest", "kaspasim",
                                                             "kaspadev"]
    assert PUBLIC_NETWORKS == {"kaspa-mainnet", "kaspa-testnet-10"}
    assert len(MAINNET.dns_seeders) == 9 and SIMNET.dns_seeders == DEVNET.dns_seeders == ()
    assert TESTNET_10.seeder_targets()[0] == ("seeder1-tn.kaspad.net", 16211)


def test_lookups() -> None:
    assert get_network("kaspa-simnet") is SIMNET and network_p2p_port("kaspa-devnet") == 16611
    for bad in ("mainnet", "kaspa-testnet-11", "kaspa-testnet-12", ""):
        with pytest.raises(ValueError, match="allowed: kaspa-mainnet, kaspa-testnet-10, "
                           "kaspa-simnet, kaspa-devnet"):
            get_network(bad)
    assert find_network("simnet") is SIMNET and find_network("kaspa-simnet") is SIMNET
    assert find_network("testnet-10") is TESTNET_10 and SIMNET.short_name == "simnet"
    assert find_network("testnet-11") is None and find_network("kaspa") is None


def test_the_table_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        MAINNET.p2p_port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        NETWORKS["x"] = MAINNET  # type: ignore[index]
