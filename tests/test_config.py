from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import (
    KNOWN_KEYS,
    NETWORK_P2P_PORTS,
    Config,
    HostPort,
    UnixSocket,
    as_dict,
    defaults,
    env_var_name,
    load_config,
    network_p2p_port,
    parse_hostport,
)
from bridge.core.errors import ConfigError, Fault, OnionAddressError
from bridge.core.onion import OnionAddress

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "config"
ONION = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion"
ENV: Mapping[str, str] = {"HOME": "/home/tester"}


def write(tmp_path: Path, text: str, name: str = "bridge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(
    tmp_path: Path,
    text: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    path = write(tmp_path, text) if text is not None else None
    return load_config(path, env={**ENV, **(env or {})}, overrides=overrides)


def file_error(tmp_path: Path, text: str, key: str | None) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    err = info.value
    assert err.source == str(path)
    assert err.key == key
    assert str(path) in str(err)
    if key is not None:
        assert key in str(err)
    assert err.fault is Fault.LOCAL
    return err


# --- shipped files -------------------------------------------------------------------------


def test_config_dir_not_empty() -> None:
    names = {p.name for p in CONFIG_DIR.glob("*.toml")}
    assert {"tor-only.toml", "hybrid.toml", "managed-tor.toml"} <= names


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path, env=ENV)
    assert cfg.network in NETWORK_P2P_PORTS
    assert cfg.warnings == ()
    assert all(source in ("default", str(path)) for source in cfg.sources.values())


def test_shipped_files_match_their_names() -> None:
    assert load_config(CONFIG_DIR / "tor-only.toml", env=ENV).mode == "tor-only"
    hybrid = load_config(CONFIG_DIR / "hybrid.toml", env=ENV)
    assert hybrid.mode == "hybrid" and hybrid.peers.allow_direct
    managed = load_config(CONFIG_DIR / "managed-tor.toml", env=ENV)
    assert managed.tor.managed and managed.tor.control is not None


def test_tor_only_file_equals_defaults() -> None:
    # tor-only.toml documents every key with its default value.
    from_file = load_config(CONFIG_DIR / "tor-only.toml", env=ENV)
    assert from_file == load_config(None, env=ENV)
    text = (CONFIG_DIR / "tor-only.toml").read_text()
    for key in KNOWN_KEYS:
        assert f"\n{key.rsplit('.', 1)[-1]} = " in text, key


# --- defaults --------------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = load_config(None, env=ENV)
    assert cfg.network == "kaspa-mainnet"
    assert cfg.mode == "tor-only"
    assert cfg.data_dir == Path("/home/tester/.kaspa-tor-bridge")
    assert cfg.log_format == "text" and cfg.log_level == "info"
    assert cfg.kaspad.p2p == HostPort("127.0.0.1", 16111, "ipv4")
    assert cfg.slots.host == "127.0.0.1"
    assert list(cfg.slots.ports) == [16200, 16201, 16202, 16203]
    assert cfg.inbound.listen == HostPort("127.0.0.1", 16300, "ipv4")
    assert cfg.tor.socks == HostPort("127.0.0.1", 9050, "ipv4")
    assert cfg.tor.onion_socks is None
    assert cfg.tor.socks_for_onion == cfg.tor.socks
    assert cfg.tor.control == HostPort("127.0.0.1", 9051, "ipv4")
    assert cfg.tor.control_password == ""
    assert cfg.tor.control_password_file is None and cfg.tor.cookie_file is None
    assert cfg.tor.listen_onion is True and cfg.tor.managed is False
    assert cfg.tor.onion_virtual_port == 16111
    assert cfg.tor.onion_key_file == Path(
        "/home/tester/.kaspa-tor-bridge/kaspa-mainnet/onion_ed25519_v3.key"
    )
    assert cfg.tor.bootstrap_timeout == 120.0
    assert cfg.peers.connect == () and cfg.peers.allow_direct is False
    assert cfg.relay.max_message_bytes == 1 << 30
    assert cfg.relay.max_rewrite_bytes == 4 << 20
    assert cfg.relay.advertise_address is False and cfg.relay.own_onion is None
    assert (cfg.pool.size, cfg.pool.slot_wait, cfg.pool.dial_timeout) == (2, 6.0, 60.0)
    assert cfg.metrics.listen is None
    assert set(cfg.sources.values()) == {"default"}
    assert set(cfg.sources) == set(KNOWN_KEYS)
    assert cfg.network_dir == cfg.data_dir / "kaspa-mainnet"
    assert cfg.p2p_port == 16111


def test_defaults_helper_and_as_dict() -> None:
    d = defaults()
    assert set(d) == set(KNOWN_KEYS)
    assert d["slots.count"] == 4 and d["peers.connect"] == []
    out = as_dict(load_config(None, env=ENV, overrides={"tor.control_password": "s3cret"}))
    assert out["tor"]["control_password"] == "***"  # type: ignore[index]
    assert out["kaspad"] == {"p2p": "127.0.0.1:16111", "rpc": "127.0.0.1:16110"}
    assert "s3cret" not in repr(out)


@pytest.mark.parametrize(("network", "port"), sorted(NETWORK_P2P_PORTS.items()))
def test_network_defaults(tmp_path: Path, network: str, port: int) -> None:
    assert network_p2p_port(network) == port
    cfg = load(tmp_path, f'network = "{network}"\n')
    assert cfg.kaspad.p2p.port == port
    assert cfg.tor.onion_virtual_port == port
    assert cfg.tor.onion_key_file.parent.name == network


def test_network_ports_match_brief() -> None:
    assert dict(NETWORK_P2P_PORTS) == {
        "kaspa-mainnet": 16111,
        "kaspa-testnet-10": 16211,
        "kaspa-simnet": 16511,
        "kaspa-devnet": 16611,
    }
    with pytest.raises(ValueError, match="kaspa-mainnet"):
        network_p2p_port("mainnet")


def test_kaspad_p2p_without_port_uses_network_port(tmp_path: Path) -> None:
    cfg = load(tmp_path, 'network = "kaspa-simnet"\n[kaspad]\np2p = "10.0.0.5"\n')
    assert cfg.kaspad.p2p == HostPort("10.0.0.5", 16511, "ipv4")


def test_explicit_virtual_port_and_key_file(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[tor]\nonion_virtual_port = 443\nonion_key_file = "~/keys/k"\n'
        'cookie_file = "/run/tor/control.authcookie"\n',
    )
    assert cfg.tor.onion_virtual_port == 443
    assert cfg.tor.onion_key_file == Path("/home/tester/keys/k")
    assert cfg.tor.cookie_file == Path("/run/tor/control.authcookie")


def test_unix_control_and_onion_socks(tmp_path: Path) -> None:
    cfg = load(
        tmp_path, '[tor]\ncontrol = "unix:/run/tor/control"\nonion_socks = "127.0.0.1:9150"\n'
    )
    assert cfg.tor.control == UnixSocket(Path("/run/tor/control"))
    assert str(cfg.tor.control) == "unix:/run/tor/control"
    assert cfg.tor.socks_for_onion == HostPort("127.0.0.1", 9150, "ipv4")


def test_peers_connect(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        f'[peers]\nconnect = ["{ONION.upper()}", "{ONION[:-6]}.onion:1234", "1.2.3.4", '
        '"[2001:DB8::1]:99"]\n',
    )
    assert cfg.peers.connect == (
        HostPort(ONION, 16111, "onion"),
        HostPort(ONION, 1234, "onion"),
        HostPort("1.2.3.4", 16111, "ipv4"),
        HostPort("2001:db8::1", 99, "ipv6"),
    )
    assert cfg.peers.connect[0].onion == OnionAddress.parse(ONION)


def test_own_onion(tmp_path: Path) -> None:
    cfg = load(tmp_path, f'[relay]\nown_onion = "{ONION}"\n')
    assert cfg.relay.own_onion == OnionAddress.parse(ONION)


def test_non_loopback_allowed_when_opted_in(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[inbound]\nlisten = "0.0.0.0:16300"\nallow_non_loopback = true\n'
        '[slots]\nhost = "10.1.2.3"\nallow_non_loopback = true\n',
    )
    assert cfg.inbound.listen.host == "0.0.0.0"
    assert cfg.slots.host == "10.1.2.3"


def test_ipv6_loopback_listeners(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[inbound]\nlisten = "[::1]:16300"\n[slots]\nhost = "::1"\n')
    assert cfg.inbound.listen.kind == "ipv6"
    assert cfg.slots.endpoints()[0] == HostPort("::1", 16200, "ipv6")


def test_repr_hides_password() -> None:
    cfg = load_config(None, env={**ENV, "KTB_TOR_CONTROL_PASSWORD": "hunter2"})
    assert cfg.tor.control_password == "hunter2"
    assert "hunter2" not in repr(cfg)


# --- file errors: each names file + key ----------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(path, env=ENV)
    assert info.value.source == str(path)


def test_invalid_toml(tmp_path: Path) -> None:
    err = file_error(tmp_path, "network = \n", None)
    assert "invalid TOML" in str(err)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'log_level = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    assert info.value.source == str(path)


@pytest.mark.parametrize(
    ("text", "key", "suggestion"),
    [
        ('netwrok = "kaspa-mainnet"\n', "netwrok", "network"),
        ("[slots]\ncuont = 3\n", "slots.cuont", "slots.count"),
        ("base_port = 3\n", "base_port", "slots.base_port"),
        ("[tor]\nsocks_port = 9050\n", "tor.socks_port", "tor.socks"),
        ('[tor]\nlisten = "127.0.0.1:1"\n', "tor.listen", "inbound.listen"),
        ("[slot]\ncount = 3\n", "slot", "slots"),
        ("[pool.extra]\nx = 1\n", "pool.extra", None),
    ],
)
def test_unknown_keys(tmp_path: Path, text: str, key: str, suggestion: str | None) -> None:
    err = file_error(tmp_path, text, key)
    assert "unknown key" in str(err)
    if suggestion is not None:
        assert f"did you mean {suggestion!r}" in str(err)


def test_unknown_key_lists_known_keys_of_section(tmp_path: Path) -> None:
    err = file_error(tmp_path, "[pool]\nzzz = 1\n", "pool.zzz")
    assert "known keys in [pool]: size, slot_wait, dial_timeout" in str(err)


def test_section_must_be_table(tmp_path: Path) -> None:
    err = file_error(tmp_path, 'tor = "127.0.0.1:9050"\n', "tor")
    assert "table" in str(err)


def test_scalar_key_as_table(tmp_path: Path) -> None:
    err = file_error(tmp_path, "[network]\nname = 1\n", "network")
    assert "not a table" in str(err)


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ('network = "mainnet"\n', "network", "kaspa-mainnet, kaspa-testnet-10"),
        ('network = "kaspa-testnet-11"\n', "network", "did you mean 'kaspa-testnet-10'"),
        ('mode = "tor"\n', "mode", "tor-only, hybrid"),
        ('log_format = "xml"\n', "log_format", "text, json"),
        ('log_level = "INFO"\n', "log_level", "debug, info, warning, error, critical"),
        ("network = 1\n", "network", "one of 'kaspa-mainnet'"),
        ("data_dir = 1\n", "data_dir", "path string"),
        ('data_dir = ""\n', "data_dir", "must not be empty"),
        ('[slots]\ncount = "4"\n', "slots.count", "expected an integer with 1 <= value <= 64"),
        ("[slots]\ncount = 0\n", "slots.count", "1 <= value <= 64"),
        ("[slots]\ncount = 65\n", "slots.count", "out of range"),
        ("[slots]\ncount = 4.0\n", "slots.count", "an integer"),
        ("[slots]\ncount = true\n", "slots.count", "an integer"),
        ("[slots]\nbase_port = 0\n", "slots.base_port", "1 <= value <= 65535"),
        ("[slots]\nbase_port = 65534\ncount = 3\n", "slots.count", "exceeds 65535"),
        ('[slots]\nhost = "localhost"\n', "slots.host", "not an IP literal"),
        ('[slots]\nhost = "127.0.0.1:5"\n', "slots.host", "not an IP literal"),
        ('[slots]\nhost = "192.168.1.2"\n', "slots.host", "allow_non_loopback"),
        ('[inbound]\nlisten = "0.0.0.0:16300"\n', "inbound.listen", "allow_non_loopback"),
        ('[inbound]\nlisten = "127.0.0.1"\n', "inbound.listen", "missing ':port'"),
        ('[inbound]\nallow_non_loopback = "yes"\n', "inbound.allow_non_loopback", "true or false"),
        ('[tor]\nsocks = "localhost:9050"\n', "tor.socks", "never resolves DNS"),
        ('[tor]\nsocks = "127.0.0.1:0"\n', "tor.socks", "out of range"),
        ('[tor]\nsocks = "::1:9050"\n', "tor.socks", "brackets"),
        (f'[tor]\nsocks = "{ONION}:9050"\n', "tor.socks", "IP literal"),
        ('[tor]\nonion_socks = "127.0.0.1"\n', "tor.onion_socks", "missing ':port'"),
        ('[tor]\ncontrol = "unix:"\n', "tor.control", "absolute path"),
        ('[tor]\ncontrol = "unix:relative/sock"\n', "tor.control", "absolute path"),
        ('[tor]\ncontrol = "tor.local:9051"\n', "tor.control", "IPv4 address"),
        ("[tor]\nonion_virtual_port = 70000\n", "tor.onion_virtual_port", "0 <= value <= 65535"),
        ("[tor]\nbootstrap_timeout = 0\n", "tor.bootstrap_timeout", "1 <= value"),
        ("[tor]\nbootstrap_timeout = nan\n", "tor.bootstrap_timeout", "a number"),
        ("[tor]\nbootstrap_timeout = inf\n", "tor.bootstrap_timeout", "a number"),
        ("[tor]\nmanaged = 1\n", "tor.managed", "true or false"),
        ('[peers]\nconnect = "1.2.3.4"\n', "peers.connect", "a list of strings"),
        ("[peers]\nconnect = [1]\n", "peers.connect", "a list of strings"),
        ('[peers]\nconnect = ["seed.kaspa.org:16111"]\n', "peers.connect", "never resolves"),
        ('[peers]\nconnect = ["' + "a" * 56 + '.onion"]\n', "peers.connect", "version byte"),
        ('[peers]\nconnect = ["1.2.3.4:x"]\n', "peers.connect", "not a number"),
        ('[peers]\nconnect = ["1.2.3.4", "1.2.3.4:16111"]\n', "peers.connect", "duplicates"),
        ("[relay]\nmax_message_bytes = 100\n", "relay.max_message_bytes", "16384 <= value"),
        (
            "[relay]\nmax_message_bytes = 2000000\nmax_rewrite_bytes = 3000000\n",
            "relay.max_rewrite_bytes",
            "exceeds relay.max_message_bytes",
        ),
        ('[relay]\nown_onion = "abc.onion"\n', "relay.own_onion", "wrong length"),
        ("[pool]\nsize = 33\n", "pool.size", "0 <= value <= 32"),
        ("[pool]\nslot_wait = 10\n", "pool.slot_wait", "1 <= value < 10"),
        ("[pool]\nslot_wait = 0\n", "pool.slot_wait", "1 <= value < 10"),
        ("[pool]\ndial_timeout = -1\n", "pool.dial_timeout", "5 <= value"),
        ('[metrics]\nlisten = "9464"\n', "metrics.listen", "not an IPv4 address"),
    ],
)
def test_value_errors(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    err = file_error(tmp_path, text, key)
    assert fragment in str(err)


# --- cross-field validation -------------------------------------------------------------------


def test_allow_direct_only_in_hybrid(tmp_path: Path) -> None:
    err = file_error(tmp_path, "[peers]\nallow_direct = true\n", "peers.allow_direct")
    assert "hybrid" in str(err)
    cfg = load(tmp_path, 'mode = "hybrid"\n[peers]\nallow_direct = true\n')
    assert cfg.peers.allow_direct


def test_allow_direct_blames_override_source(tmp_path: Path) -> None:
    path = write(tmp_path, 'mode = "hybrid"\n[peers]\nallow_direct = true\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={**ENV, "KTB_MODE": "tor-only"})
    assert info.value.key == "peers.allow_direct"
    assert info.value.source == str(path)
    assert "mode from env KTB_MODE" in str(info.value)


def test_listen_onion_requires_control(tmp_path: Path) -> None:
    # Blames the key the operator wrote; names the other one and where it came from.
    err = file_error(tmp_path, '[tor]\ncontrol = ""\n', "tor.control")
    assert "tor.listen_onion from default" in str(err)
    err = file_error(tmp_path, '[tor]\ncontrol = ""\nlisten_onion = true\n', "tor.listen_onion")
    assert "tor.control from" in str(err)
    cfg = load(tmp_path, '[tor]\ncontrol = ""\nlisten_onion = false\n')
    assert cfg.tor.control is None


def test_managed_requires_control(tmp_path: Path) -> None:
    file_error(
        tmp_path, '[tor]\nmanaged = true\ncontrol = ""\nlisten_onion = false\n', "tor.managed"
    )


def test_password_and_password_file_exclusive(tmp_path: Path) -> None:
    err = file_error(
        tmp_path,
        '[tor]\ncontrol_password = "x"\ncontrol_password_file = "/etc/pw"\n',
        "tor.control_password",
    )
    assert "only one of" in str(err)


def test_password_env_and_file_in_config_exclusive(tmp_path: Path) -> None:
    path = write(tmp_path, '[tor]\ncontrol_password_file = "/etc/pw"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={**ENV, "KTB_TOR_CONTROL_PASSWORD": "x"})
    assert info.value.source == "env KTB_TOR_CONTROL_PASSWORD"
    assert str(path) in str(info.value)


def test_port_collisions(tmp_path: Path) -> None:
    err = file_error(tmp_path, '[inbound]\nlisten = "127.0.0.1:16202"\n', "inbound.listen")
    assert "collides" in str(err)
    err = file_error(tmp_path, '[metrics]\nlisten = "0.0.0.0:16300"\n', "metrics.listen")
    assert "inbound.listen = 127.0.0.1:16300 collides with metrics.listen" in str(err)
    err = file_error(tmp_path, "[slots]\nbase_port = 16108\n", "slots.base_port")
    assert "kaspad.p2p" in str(err)
    err = file_error(tmp_path, 'network = "kaspa-testnet-10"\n[slots]\ncount = 12\n', "slots.count")
    assert "16211" in str(err) and "slots.base_port from default" in str(err)
    err = file_error(tmp_path, '[inbound]\nlisten = "127.0.0.1:9050"\n', "inbound.listen")
    assert "tor.socks" in str(err)
    # Different hosts do not collide.
    cfg = load(tmp_path, '[inbound]\nlisten = "127.0.0.2:16200"\n')
    assert cfg.inbound.listen.port == 16200


def test_warnings(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[tor]\ncontrol_password = "x"\n')
    assert any("control_password" in w for w in cfg.warnings)
    cfg = load(tmp_path, "[relay]\nadvertise_address = true\n")
    assert any("advertise_address" in w for w in cfg.warnings)
    cfg = load(tmp_path, None, env={"KTB_TOR_CONTROL_PASSWORD": "x"})
    assert cfg.warnings == ()


def test_read_control_password(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    cfg = load(tmp_path, f'[tor]\ncontrol_password_file = "{pw}"\n')
    assert cfg.tor.read_control_password() == "s3cret"
    assert load(tmp_path, None).tor.read_control_password() is None
    assert (
        load(tmp_path, None, env={"KTB_TOR__CONTROL_PASSWORD": "p"}).tor.read_control_password()
        == "p"
    )
    pw.write_text("")
    with pytest.raises(ConfigError, match="empty") as info:
        cfg.tor.read_control_password()
    assert info.value.key == "tor.control_password_file" and info.value.source == str(pw)
    pw.unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        cfg.tor.read_control_password()


# --- precedence ---------------------------------------------------------------------------------


def test_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, "[slots]\ncount = 5\nbase_port = 17000\n[pool]\nsize = 3\n")
    cfg = load_config(path, env=ENV)
    assert (cfg.slots.count, cfg.slots.base_port, cfg.pool.size) == (5, 17000, 3)
    cfg = load_config(path, env={**ENV, "KTB_SLOTS__COUNT": "6", "KTB_POOL__SIZE": "4"})
    assert (cfg.slots.count, cfg.slots.base_port, cfg.pool.size) == (6, 17000, 4)
    cfg = load_config(
        path,
        env={**ENV, "KTB_SLOTS__COUNT": "6", "KTB_POOL__SIZE": "4"},
        overrides={"slots.count": 7, "pool.size": None},
    )
    assert (cfg.slots.count, cfg.slots.base_port, cfg.pool.size) == (7, 17000, 4)
    assert cfg.sources["slots.count"] == "--slots-count"
    assert cfg.sources["pool.size"] == "env KTB_POOL__SIZE"
    assert cfg.sources["slots.base_port"] == str(path)
    assert cfg.sources["network"] == "default"


def test_env_none_uses_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTB_POOL__SIZE", "9")
    assert load_config(None).pool.size == 9


def test_data_dir_override_accepts_path(tmp_path: Path) -> None:
    cfg = load_config(None, env=ENV, overrides={"data_dir": tmp_path})
    assert cfg.data_dir == tmp_path
    assert cfg.tor.onion_key_file == tmp_path / "kaspa-mainnet" / "onion_ed25519_v3.key"


def test_override_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env=ENV, overrides={"slots.count": "8"})
    assert info.value.source == "--slots-count" and info.value.key == "slots.count"
    with pytest.raises(ConfigError, match=r"did you mean 'slots\.count'") as info:
        load_config(None, env=ENV, overrides={"slots.cout": 8})
    assert info.value.key == "slots.cout"
    with pytest.raises(ConfigError) as info:
        load_config(None, env=ENV, overrides={"pool.slot_wait": 12})
    assert info.value.source == "--pool-slot-wait"
    cfg = load_config(None, env=ENV, overrides={"pool.slot_wait": 3, "peers.connect": ["1.2.3.4"]})
    assert cfg.pool.slot_wait == 3.0 and isinstance(cfg.pool.slot_wait, float)
    assert cfg.peers.connect == (HostPort("1.2.3.4", 16111, "ipv4"),)


# --- environment parsing ------------------------------------------------------------------------


def test_project_variables_are_not_misspelt_keys() -> None:
    """KTB_KASPAD (the rig's kaspad binary, exported by scripts/test.sh) is one edit away from
    KTB_KASPAD__P2P: a bridge started in that environment must still start, while a real
    near-miss stays an error."""
    env = {**ENV, "KTB_KASPAD": "/x/kaspad", "KTB_KASPAD_VERSION": "2.1.0",
           "KTB_KASPAD_PROTO_DIR": "/x", "KTB_CACHE_DIR": "/c", "KTB_IN_NETNS": "1"}
    assert load_config(None, env=env).kaspad.p2p.port == 16111
    with pytest.raises(ConfigError, match="did you mean KTB_KASPAD__P2P"):
        load_config(None, env={**ENV, "KTB_KASPAD_P2P": "127.0.0.1:1"})


def test_env_var_name() -> None:
    assert env_var_name("slots.count") == "KTB_SLOTS__COUNT"
    assert env_var_name("tor.socks") == "KTB_TOR__SOCKS"
    assert env_var_name("data_dir") == "KTB_DATA_DIR"


def test_env_parsing_types() -> None:
    env = {
        **ENV,
        "KTB_NETWORK": "kaspa-devnet",
        "KTB_SLOTS__COUNT": " 8 ",
        "KTB_POOL__SLOT_WAIT": "2.5",
        "KTB_TOR__BOOTSTRAP_TIMEOUT": "30",
        "KTB_TOR__LISTEN_ONION": "off",
        "KTB_RELAY__ADVERTISE_ADDRESS": "YES",
        "KTB_MODE": "hybrid",
        "KTB_PEERS__ALLOW_DIRECT": "1",
        "KTB_PEERS__CONNECT": f"1.2.3.4:5, [::1]:6 ,{ONION}",
        "KTB_TOR__SOCKS": "127.0.0.1:9150",
        "KTB_DATA_DIR": "~/kb",
    }
    cfg = load_config(None, env=env)
    assert cfg.network == "kaspa-devnet"
    assert cfg.slots.count == 8
    assert cfg.pool.slot_wait == 2.5
    assert cfg.tor.bootstrap_timeout == 30.0
    assert cfg.tor.listen_onion is False
    assert cfg.relay.advertise_address is True
    assert cfg.peers.allow_direct is True
    assert cfg.peers.connect == (
        HostPort("1.2.3.4", 5, "ipv4"),
        HostPort("::1", 6, "ipv6"),
        HostPort(ONION, 16611, "onion"),
    )
    assert cfg.tor.socks.port == 9150
    assert cfg.data_dir == Path("/home/tester/kb")


def test_env_empty_list() -> None:
    cfg = load_config(None, env={**ENV, "KTB_PEERS__CONNECT": ""})
    assert cfg.peers.connect == ()


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("KTB_SLOTS__COUNT", "eight", "slots.count"),
        ("KTB_SLOTS__COUNT", "8.0", "slots.count"),
        ("KTB_SLOTS__COUNT", "100", "slots.count"),
        ("KTB_POOL__SLOT_WAIT", "soon", "pool.slot_wait"),
        ("KTB_POOL__SLOT_WAIT", "nan", "pool.slot_wait"),
        ("KTB_TOR__LISTEN_ONION", "maybe", "tor.listen_onion"),
        ("KTB_PEERS__CONNECT", "1.2.3.4,,5.6.7.8", "peers.connect"),
        ("KTB_PEERS__CONNECT", "example.com", "peers.connect"),
        ("KTB_NETWORK", "kaspa-testnet-11", "network"),
        ("KTB_TOR__SOCKS", "localhost:9050", "tor.socks"),
    ],
)
def test_env_errors_name_the_variable(name: str, value: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={**ENV, name: value})
    assert info.value.source == f"env {name}"
    assert info.value.key == key
    assert f"env {name}" in str(info.value)


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("KTB_TOR_SOCKS", "KTB_TOR__SOCKS"),
        ("KTB_SLOTS_COUNT", "KTB_SLOTS__COUNT"),
        ("KTB_NETWROK", "KTB_NETWORK"),
        ("KTB_SLOTS__CONT", "KTB_SLOTS__COUNT"),
        ("KTB_NOPE__X", None),
    ],
)
def test_unknown_env_vars(name: str, suggestion: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={**ENV, name: "1"})
    assert info.value.source == f"env {name}"
    if suggestion:
        assert f"did you mean {suggestion}?" in str(info.value)


def test_unrelated_ktb_vars_ignored() -> None:
    cfg = load_config(None, env={**ENV, "KTB_IN_NETNS": "1", "KTB_CONFIG": "/x", "OTHER": "y"})
    assert cfg == load_config(None, env=ENV)


def test_password_env_alias() -> None:
    cfg = load_config(None, env={**ENV, "KTB_TOR_CONTROL_PASSWORD": "pw"})
    assert cfg.tor.control_password == "pw"
    assert cfg.sources["tor.control_password"] == "env KTB_TOR_CONTROL_PASSWORD"
    with pytest.raises(ConfigError, match="only one of"):
        load_config(
            None,
            env={**ENV, "KTB_TOR_CONTROL_PASSWORD": "a", "KTB_TOR__CONTROL_PASSWORD": "b"},
        )


# --- parse_hostport ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("1.2.3.4:5", None, HostPort("1.2.3.4", 5, "ipv4")),
        ("1.2.3.4", 7, HostPort("1.2.3.4", 7, "ipv4")),
        ("[::1]:80", None, HostPort("::1", 80, "ipv6")),
        ("[::1]", 9, HostPort("::1", 9, "ipv6")),
        ("[2001:DB8:0:0::1]:1", None, HostPort("2001:db8::1", 1, "ipv6")),
        (ONION.upper() + ":65535", None, HostPort(ONION, 65535, "onion")),
        (ONION, 16111, HostPort(ONION, 16111, "onion")),
    ],
)
def test_parse_hostport_ok(text: str, default: int | None, expected: HostPort) -> None:
    assert parse_hostport(text, default) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 1.2.3.4:5",
        "1.2.3.4:5 ",
        "1.2.3.4",
        "1.2.3.4:",
        "1.2.3.4:0",
        "1.2.3.4:65536",
        "1.2.3.4:+5",
        "1.2.3.4:5_0",
        "1.2.3.4:\u0665",
        "1.2.3:5",
        "01.2.3.4:5",
        "example.com:5",
        "localhost:5",
        "::1",
        "::1:5",
        "[::1",
        "[::1]5",
        "[1.2.3.4]:5",
        "[fe80::1%eth0]:5",
        "[::1]:",
        ONION[:-7] + ".onion:5",
        "a" * 56 + ".onion:5",
    ],
)
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hostport(text)


def test_parse_hostport_bad_onion_is_onion_error() -> None:
    with pytest.raises(OnionAddressError):
        parse_hostport("a" * 56 + ".onion:5")


ports = st.integers(min_value=1, max_value=65535)


@given(st.ip_addresses(v=4), ports)
def test_hostport_roundtrip_ipv4(ip: ipaddress.IPv4Address, port: int) -> None:
    hp = parse_hostport(f"{ip}:{port}")
    assert hp == HostPort(str(ip), port, "ipv4")
    assert parse_hostport(str(hp)) == hp
    assert parse_hostport(str(ip), port) == hp
    assert hp.ip == ip


@given(st.ip_addresses(v=6), ports)
def test_hostport_roundtrip_ipv6(ip: ipaddress.IPv6Address, port: int) -> None:
    hp = parse_hostport(f"[{ip.exploded}]:{port}")
    assert hp == HostPort(str(ip), port, "ipv6")
    assert str(hp) == f"[{ip}]:{port}"
    assert parse_hostport(str(hp)) == hp
    assert parse_hostport(f"[{ip}]", port) == hp


@given(st.binary(min_size=32, max_size=32), ports, st.booleans())
def test_hostport_roundtrip_onion(pubkey: bytes, port: int, upper: bool) -> None:
    onion = OnionAddress.from_pubkey(pubkey)
    text = f"{onion.host.upper() if upper else onion.host}:{port}"
    hp = parse_hostport(text)
    assert hp == HostPort(onion.host, port, "onion")
    assert parse_hostport(str(hp)) == hp
    assert hp.onion == onion
    assert hp.ip is None and not hp.is_loopback


@given(st.text(max_size=80), st.one_of(st.none(), ports))
def test_parse_hostport_total(text: str, default: int | None) -> None:
    # Never raises anything but ValueError; whatever it accepts round-trips.
    try:
        hp = parse_hostport(text, default)
    except ValueError:
        return
    assert parse_hostport(str(hp)) == hp
    assert 1 <= hp.port <= 65535


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('data_dir = "~"\n', Path("/home/tester")),
        ('data_dir = "/srv/ktb"\n', Path("/srv/ktb")),
        ('data_dir = "rel/dir"\n', Path("rel/dir")),
    ],
)
def test_data_dir_expansion(tmp_path: Path, text: str, expected: Path) -> None:
    assert load(tmp_path, text).data_dir == expected


def test_unix_control_tilde(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[tor]\ncontrol = "unix:~/tor/control"\n')
    assert cfg.tor.control == UnixSocket(Path("/home/tester/tor/control"))


def test_unknown_user_in_path(tmp_path: Path) -> None:
    file_error(tmp_path, 'data_dir = "~no-such-user-ktb/x"\n', "data_dir")


# --------------------------------------------------------------------------------------------
# Issue G item 9: secrets are never echoed; intervals and sizes have sane bounds
# --------------------------------------------------------------------------------------------

SECRET = "hunter2-s3cr3t-PW"


@pytest.mark.parametrize(
    "how",
    ["file-int", "file-list", "file-table-value", "override-int", "flag-next-token"],
)
def test_a_mistyped_control_password_is_never_echoed(tmp_path: Path, how: str) -> None:
    """A config type error on tor.control_password names the key and the source, but never the
    value: from the file, from a programmatic override, and from the command line."""
    from bridge.config import parse_flags

    with pytest.raises(ConfigError) as info:
        if how == "file-int":  # an unquoted numeric password
            load(tmp_path, "[tor]\ncontrol_password = 12345678901234567\n")
        elif how == "file-list":
            load(tmp_path, f'[tor]\ncontrol_password = ["{SECRET}"]\n')
        elif how == "file-table-value":
            load(tmp_path, f'[tor]\ncontrol_password = {{ pw = "{SECRET}" }}\n')
        elif how == "override-int":
            load(tmp_path, overrides={"tor.control_password": 12345678901234567})
        else:  # a flag missing its value must not swallow the next option as its value
            parse_flags(["--slots-count", f"--tor-control-password={SECRET}"])
    text = str(info.value)
    assert SECRET not in text and "12345678901234567" not in text, text
    assert info.value.key in ("tor.control_password", "slots.count")


def test_secret_keys() -> None:
    from bridge.config import flag_help, is_secret_key

    assert is_secret_key("tor.control_password")
    assert not is_secret_key("tor.control_password_file")  # a path to a secret
    assert not is_secret_key("tor.onion_key_file")
    assert not is_secret_key("tor.cookie_file")
    assert [k for k in KNOWN_KEYS if is_secret_key(k)] == ["tor.control_password"]
    assert not any("password" in flag and "file" not in flag for flag, _ in flag_help())


def test_secret_env_and_flag_values_are_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every generic error path a secret's value could take: an unparsable environment value,
    an out-of-range number, a value not among the choices (the password key made numeric / a
    choice here, as a future secret key could be)."""
    from bridge.config.keys import KEYS, Bounds, Key
    from bridge.config.raw import Builder

    monkeypatch.setitem(KEYS, "tor.control_password",
                        Key("tor.control_password", "int", 0, "", bounds=Bounds(lo=1, hi=2)))
    with pytest.raises(ConfigError) as info:
        load_config(None, env={**ENV, "KTB_TOR__CONTROL_PASSWORD": SECRET})
    assert SECRET not in str(info.value) and "not shown" in str(info.value)
    builder = Builder({"tor.control_password": (987654321, "env X")}, None)
    with pytest.raises(ConfigError) as info:
        builder.int_("tor.control_password")
    assert "987654321" not in str(info.value) and "out of range" in str(info.value)
    monkeypatch.setitem(KEYS, "tor.control_password",
                        Key("tor.control_password", "str", "", "", choices=("a", "b")))
    builder = Builder({"tor.control_password": (SECRET, "env X")}, None)
    with pytest.raises(ConfigError) as info:
        builder.choice("tor.control_password")
    assert SECRET not in str(info.value) and "allowed: a, b" in str(info.value)


def test_doctor_does_not_echo_a_mistyped_password(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = write(tmp_path, "[tor]\ncontrol_password = 12345678901234567\n")
    res = subprocess.run([sys.executable, "-m", "bridge", "doctor", "-c", str(cfg)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "tor.control_password" in res.stdout + res.stderr
    assert "12345678901234567" not in res.stdout + res.stderr


@pytest.mark.parametrize(
    ("key", "too_small", "smallest", "off"),
    [
        # how often the bridge asks a remote for addresses: kaspad asks once per connection
        # (mainnet, the default network; simnet/devnet: below)
        ("peers.refresh_interval", 0.001, 60.0, 0.0),
        # a watchdog that wakes every timeout/8 per relay
        ("relay.stall_timeout", 0.001, 5.0, 0.0),
        # timeouts: below these every dial / handover / preface / bootstrap wait fails at once
        ("pool.dial_timeout", 0.001, 5.0, None),
        ("pool.slot_wait", 0.001, 1.0, None),
        ("inbound.handshake_timeout", 0.001, 1.0, None),
        ("tor.bootstrap_timeout", 0.001, 1.0, None),
    ],
)
def test_intervals_and_timeouts_have_a_floor(key: str, too_small: float, smallest: float,
                                             off: float | None) -> None:
    """An absurdly small interval (a flood: 0.001 s = 1000 RequestAddresses/s per relay) or
    timeout (a busy loop of failures) is refused with the allowed range; the floor itself and
    0 where it means "off" are accepted, also from the environment."""
    env = env_var_name(key)
    with pytest.raises(ConfigError) as info:
        load_config(None, env={**ENV, env: str(too_small)})
    assert info.value.key == key and f"{smallest:g} <= value" in str(info.value)
    with pytest.raises(ConfigError):
        load_config(None, env={**ENV, env: str(smallest * 0.99)})
    section, leaf = key.split(".")
    assert getattr(getattr(load_config(None, env={**ENV, env: str(smallest)}), section),
                   leaf) == smallest
    if off is not None:
        assert "or 0 (off)" in str(info.value)
        assert getattr(getattr(load_config(None, env={**ENV, env: "0"}), section), leaf) == 0
    else:
        with pytest.raises(ConfigError):
            load_config(None, env={**ENV, env: "0"})


@pytest.mark.parametrize(("network", "floor"), [
    ("kaspa-mainnet", 60.0), ("kaspa-testnet-10", 60.0), ("kaspa-simnet", 1.0),
    ("kaspa-devnet", 1.0)])
def test_refresh_interval_floor_by_network(network: str, floor: float) -> None:
    """Other people's nodes (mainnet, testnet) are asked at most once a minute; the operator's
    own test nodes (simnet, devnet: the rig, the discovery tests) down to once a second."""
    env = {**ENV, "KTB_NETWORK": network}
    for too_small in (0.001, floor * 0.99):
        with pytest.raises(ConfigError) as info:
            load_config(None, env={**env, "KTB_PEERS__REFRESH_INTERVAL": str(too_small)})
        assert info.value.key == "peers.refresh_interval"
        assert f"{floor:g} <= value" in str(info.value)
    cfg = load_config(None, env={**env, "KTB_PEERS__REFRESH_INTERVAL": str(floor)})
    assert cfg.peers.refresh_interval == floor


def test_refresh_interval_zero_is_off_in_the_bridge_options() -> None:
    from bridge.runtime.wiring import bridge_options

    assert bridge_options(load_config(None, env=ENV)).refresh_interval == 600.0
    off = load_config(None, env={**ENV, "KTB_PEERS__REFRESH_INTERVAL": "0"})
    assert bridge_options(off).refresh_interval is None


@pytest.mark.parametrize(
    ("key", "too_big", "largest"),
    [
        # decoded on the event loop: real Version/Addresses messages are under 64 KiB
        ("relay.max_rewrite_bytes", (16 << 20) + 1, 16 << 20),
        # a "minimum rate" above what a Tor circuit carries drops every honest peer
        ("relay.min_message_rate", (1 << 20) + 1, 1 << 20),
    ],
)
def test_sizes_and_rates_have_a_ceiling(key: str, too_big: int, largest: int) -> None:
    env = env_var_name(key)
    with pytest.raises(ConfigError) as info:
        load_config(None, env={**ENV, env: str(too_big)})
    assert info.value.key == key and f"value <= {largest}" in str(info.value)
    section, leaf = key.split(".")
    assert getattr(getattr(load_config(None, env={**ENV, env: str(largest)}), section),
                   leaf) == largest


def test_slot_cap_and_upstream_timeouts_reach_the_bridge() -> None:
    """The slot listener's connection cap and request timeout, and the upstream HTTP/2
    handshake/idle-write timeout (issue G defects 4 and 5) are config keys wired into
    BridgeOptions; 0 keeps the bridge's own default cap (4 per slot port, at least 8)."""
    import dataclasses

    import trio

    from bridge.runtime.bridge import Bridge, BridgeOptions
    from bridge.runtime.wiring import bridge_options

    async def cap(options: BridgeOptions) -> int:  # the cap the slot listener enforces
        return Bridge(dataclasses.replace(options, book_path=None)).max_slot_connections

    default = bridge_options(load_config(None, env=ENV))
    assert default.max_slot_connections is None
    assert (default.slot_request_timeout, default.h2_handshake_timeout) == (5.0, 30.0)
    assert trio.run(cap, default) == load_config(None, env=ENV).slots.connection_cap == 16
    env = {**ENV, "KTB_SLOTS__MAX_CONNECTIONS": "6", "KTB_SLOTS__REQUEST_TIMEOUT": "2.5",
           "KTB_POOL__HANDSHAKE_TIMEOUT": "45"}
    opts = bridge_options(load_config(None, env=env))
    assert (opts.max_slot_connections, opts.slot_request_timeout,
            opts.h2_handshake_timeout) == (6, 2.5, 45.0)
    assert trio.run(cap, opts) == 6


@pytest.mark.parametrize(
    ("env", "key", "fragment"),
    [
        ({"KTB_SLOTS__MAX_CONNECTIONS": "3"}, "slots.max_connections", "below slots.count 4"),
        ({"KTB_SLOTS__MAX_CONNECTIONS": "4097"}, "slots.max_connections", "value <= 4096"),
        ({"KTB_SLOTS__MAX_CONNECTIONS": "-1"}, "slots.max_connections",
         "or 0 (4 per slot port, at least 8)"),
        ({"KTB_SLOTS__REQUEST_TIMEOUT": "0.001"}, "slots.request_timeout", "1 <= value <= 60"),
        ({"KTB_POOL__HANDSHAKE_TIMEOUT": "0.001"}, "pool.handshake_timeout", "5 <= value"),
    ],
)
def test_slot_cap_and_upstream_timeout_bounds(env: dict[str, str], key: str,
                                              fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={**ENV, **env})
    assert info.value.key == key and fragment in str(info.value)
