"""Every module that knows about networks reads core/kaspa.py's table."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import NETWORK_P2P_PORTS, load_config
from bridge.config.keys import KEYS
from bridge.core import selection
from bridge.core.kaspa import NETWORKS, Network
from bridge.net.probe import DNS_SEEDERS, seeder_targets
from bridge.runtime.wiring import bridge_options, kaspad_flags
from bridge.tor.supervisor import OnionSpec


@pytest.mark.parametrize("net", NETWORKS.values(), ids=lambda n: n.name)
def test_every_user_follows_the_table(net: Network, tmp_path: Path) -> None:
    assert KEYS["network"].choices == tuple(NETWORKS) == selection.NETWORKS
    assert NETWORK_P2P_PORTS[net.name] == net.p2p_port
    assert DNS_SEEDERS[net.name] == net.dns_seeders
    assert seeder_targets(net.name) == [(h, net.p2p_port) for h in net.dns_seeders]
    cfg = load_config(None, env={"HOME": str(tmp_path), "KTB_NETWORK": net.name})
    assert cfg.kaspad.p2p.port == cfg.tor.onion_virtual_port == cfg.p2p_port == net.p2p_port
    flags = kaspad_flags(cfg)
    assert flags[:len(net.kaspad_flags)] == list(net.kaspad_flags)
    assert f"--listen=127.0.0.1:{net.p2p_port}" in flags
    assert bridge_options(cfg).seeders == net.seeder_targets()
    for name in (net.name, net.short_name):
        assert OnionSpec.for_network(tmp_path, name, ("127.0.0.1", 1)).virt_port == net.p2p_port


def test_the_deploy_env_example_lists_the_table() -> None:
    """deploy/.env.example explains which network name, kaspad flags and P2P port go together;
    each row it lists is the table's."""
    text = (Path(__file__).resolve().parents[2] / "deploy" / ".env.example").read_text()
    rows = [line[1:].split() for line in text.splitlines()
            if line.startswith("#   ") and line.split(":")[0][1:].strip() in
            {n.short_name for n in NETWORKS.values()}]
    assert len(rows) >= 3
    for row in rows:
        net = NETWORKS[row[1]]
        assert row[0] == f"{net.short_name}:" and int(row[-1]) == net.p2p_port
        flags = tuple(row[2:-1])
        assert flags == (net.kaspad_flags or ("(empty)",)), row
