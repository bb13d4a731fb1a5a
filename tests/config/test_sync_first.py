"""peers.sync_first and kaspad.rpc: validation, defaults, and what the wiring builds from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import load_config
from bridge.core.errors import ConfigError
from bridge.runtime.wiring import bridge_options, kaspad_flags

ENV = {"HOME": "/home/tester"}
HYBRID = 'mode = "hybrid"\n[peers]\nsync_first = true\n'


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return load_config(path, env=ENV)


def error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value


def test_sync_first_only_in_hybrid(tmp_path: Path) -> None:
    err = error(tmp_path, "[peers]\nsync_first = true\n")
    assert err.key == "peers.sync_first"
    assert "only allowed with mode = 'hybrid'" in str(err) and "tor-only" in str(err)


def test_sync_first_implies_direct_ip_dialing(tmp_path: Path) -> None:
    cfg = load_config(None, env=ENV, overrides={"mode": "hybrid", "peers.sync_first": True,
                                                "network": "kaspa-simnet"})
    assert cfg.peers.sync_first and cfg.peers.allow_direct
    assert cfg.peers.onlynet == frozenset({"onion", "ipv4", "ipv6"})
    assert str(cfg.kaspad.rpc) == "127.0.0.1:16510"  # simnet's RPC port
    assert cfg.peers.sync_first_timeout == 86400.0
    opts = bridge_options(cfg)
    assert opts.dial.allow_direct and not opts.dial.ip_via_tor
    assert opts.sync_first is not None
    assert opts.sync_first.rpc == ("127.0.0.1", 16510)
    assert opts.sync_first.network_id == "simnet" and opts.sync_first.timeout == 86400.0
    # kaspad's only peers must be the slots, or the switch would leave its own on clearnet
    flags = kaspad_flags(cfg)
    assert {"--outpeers=0", "--nodnsseed", "--disable-upnp"} <= set(flags)
    assert "--listen=127.0.0.1:16511" in flags


def test_sync_first_seeds_through_tor_and_no_limit_with_zero(tmp_path: Path) -> None:
    cfg = load_config(None, env=ENV, overrides={
        "mode": "hybrid", "peers.sync_first": True, "peers.sync_first_timeout": 0,
        "kaspad.rpc": "127.0.0.2"})
    opts = bridge_options(cfg)
    assert opts.sync_first is not None and opts.sync_first.timeout is None
    assert opts.sync_first.rpc == ("127.0.0.2", 16110)
    assert opts.seeders  # kaspad runs with --nodnsseed: the bridge seeds (through Tor)
    plain = bridge_options(load_config(None, env=ENV, overrides={"mode": "hybrid"}))
    assert plain.sync_first is None and plain.seeders == []
    assert "--outpeers=0" not in kaspad_flags(load_config(None, env=ENV,
                                                          overrides={"mode": "hybrid"}))


def test_sync_first_contradictions(tmp_path: Path) -> None:
    err = error(tmp_path, HYBRID + "allow_direct = false\n")
    assert err.key == "peers.allow_direct" and "forbids it" in str(err)
    err = error(tmp_path, HYBRID + 'onlynet = ["onion"]\n')
    assert err.key == "peers.onlynet" and "no IP network" in str(err)
    err = error(tmp_path, HYBRID + "sync_first_timeout = 5\n")
    assert err.key == "peers.sync_first_timeout" and "0 (no limit" in str(err)
    err = error(tmp_path, '[kaspad]\nrpc = "localhost:16110"\n')
    assert err.key == "kaspad.rpc"
