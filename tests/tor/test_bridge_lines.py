"""Bridge lines as users paste them (sans-IO parsing) and the managed tor's torrc for them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.config import load_config
from bridge.core.bridges import BridgeLine, BridgeLineError
from bridge.core.errors import ConfigError
from bridge.tor.errors import ManagedTorError
from bridge.tor.managed import ManagedTorConfig, render_torrc, transport_plugins
from bridge.tor.transports import torrc_lines

FP = "D9BD5FBE66417E72573BAB45B36EF7D8BD036543"
OBFS4 = f"obfs4 192.0.2.1:443 {FP} cert=AbC+/xyz iat-mode=0"
SNOWFLAKE = (f"snowflake 192.0.2.3:80 {FP.lower()} fingerprint={FP} "
             "url=https://snowflake-broker.example/ fronts=a.example,b.example "
             "ice=stun:stun.example:3478 utls-imitate=hellorandomizedalpn")


def test_lines_as_pasted() -> None:
    b = BridgeLine.parse("Bridge " + OBFS4)
    assert (b.transport, b.address, b.fingerprint) == ("obfs4", "192.0.2.1:443", FP)
    assert b.args == ("cert=AbC+/xyz", "iat-mode=0") and b.torrc_value() == OBFS4
    s = BridgeLine.parse(SNOWFLAKE)
    assert s.transport == "snowflake" and s.fingerprint == FP and len(s.args) == 5
    v = BridgeLine.parse(f"[2001:db8::1]:9001 {FP}")
    assert v.transport is None and v.address == "[2001:db8::1]:9001"
    # a line without a transport name takes the configured one
    t = BridgeLine.parse(f"192.0.2.1:443 {FP} cert=x iat-mode=0", transport="obfs4")
    assert t.torrc_value() == f"obfs4 192.0.2.1:443 {FP} cert=x iat-mode=0"


@pytest.mark.parametrize("line, why", [
    ("", "empty"),
    (f"obfs4 bridge.example.com:443 {FP}", "not <ip>:<port>"),
    (f"obfs5 192.0.2.1:443 {FP}", "unknown transport 'obfs5'"),
    ("obfs4", "no <ip>:<port>"),
    (f"obfs4 192.0.2.1:70000 {FP}", "bad port"),
    (f"obfs4 192.0.2.1:443 {FP} nonsense", "neither a 40-hex-digit fingerprint"),
    (f"192.0.2.1:443 {FP} cert=x", "transport arguments without a transport"),
])
def test_bad_lines_say_why(line: str, why: str) -> None:
    with pytest.raises(BridgeLineError, match=why):
        BridgeLine.parse(line)


def test_a_line_of_another_transport_than_configured_is_refused() -> None:
    wrong = re.escape("uses 'obfs4' but tor.transport is 'snowflake'")
    with pytest.raises(BridgeLineError, match=wrong):
        BridgeLine.parse(OBFS4, transport="snowflake")


def test_secrets_are_not_echoed() -> None:
    with pytest.raises(BridgeLineError) as exc:
        BridgeLine.parse(f"obfs4 bridge.example:1 {FP} cert=SECRETCERT")
    assert "SECRETCERT" not in str(exc.value)
    assert "SECRETCERT" not in BridgeLine.parse(OBFS4.replace("AbC+/xyz", "SECRETCERT")).redacted()


def test_torrc_lines() -> None:
    lines = torrc_lines([BridgeLine.parse(OBFS4), BridgeLine.parse(SNOWFLAKE)],
                        {"obfs4": "/usr/bin/obfs4proxy", "snowflake": "/usr/bin/snowflake-client"})
    assert lines == ["UseBridges 1", "ClientTransportPlugin obfs4 exec /usr/bin/obfs4proxy",
                     "ClientTransportPlugin snowflake exec /usr/bin/snowflake-client",
                     f"Bridge {OBFS4}", f"Bridge {BridgeLine.parse(SNOWFLAKE).torrc_value()}"]
    assert torrc_lines([], {}) == []


def test_managed_tor_names_a_missing_transport_binary(tmp_path: Path) -> None:
    cfg = ManagedTorConfig(tmp_path, bridges=(BridgeLine.parse(OBFS4),),
                           transport_binary="/nonexistent/obfs4proxy")
    with pytest.raises(ManagedTorError, match="needs '/nonexistent/obfs4proxy' on PATH"):
        transport_plugins(cfg)
    ok = ManagedTorConfig(tmp_path, bridges=(BridgeLine.parse(OBFS4),),
                          transport_binary="/bin/true")
    assert "ClientTransportPlugin obfs4 exec /bin/true" in render_torrc(ok)


def _cfg(tmp_path: Path, tor: str) -> Path:
    p = tmp_path / "b.toml"
    p.write_text(f'network = "kaspa-simnet"\ndata_dir = "{tmp_path}"\n[tor]\n{tor}\n')
    return p


def test_config_keys(tmp_path: Path) -> None:
    cfg = load_config(_cfg(tmp_path, f'managed = true\ncontrol = "127.0.0.1:9051"\n'
                                     f'bridges = ["{OBFS4}"]'), env={})
    assert cfg.tor.bridges == (BridgeLine.parse(OBFS4),)
    with pytest.raises(ConfigError, match=re.escape("tor.bridges only applies to a managed tor")):
        load_config(_cfg(tmp_path, f'bridges = ["{OBFS4}"]'), env={})
    with pytest.raises(ConfigError, match=r"b\.toml.*tor\.bridges.*not <ip>:<port>"):
        load_config(_cfg(tmp_path, 'managed = true\ncontrol = "127.0.0.1:9051"\n'
                                   'bridges = ["obfs4 bridge.example:443"]'), env={})
    with pytest.raises(ConfigError, match=re.escape("tor.transport = 'obfs4' needs tor.bridges")):
        load_config(_cfg(tmp_path, 'transport = "obfs4"'), env={})


def test_doctor_checks_the_transport_binary(tmp_path: Path) -> None:
    from bridge.cli.doctor import check_bridges

    base = 'managed = true\ncontrol = "127.0.0.1:9051"\n' + f'bridges = ["{OBFS4}"]\n'
    bad = load_config(_cfg(tmp_path, base + 'transport_binary = "/nonexistent/obfs4proxy"'),
                      env={})
    (check,) = check_bridges(bad)
    assert check.status == "fail" and "/nonexistent/obfs4proxy" in check.detail
    good = load_config(_cfg(tmp_path, base + 'transport_binary = "/bin/true"'), env={})
    (check,) = check_bridges(good)
    assert check.status == "ok" and "obfs4 via /bin/true" in check.detail
    assert check_bridges(load_config(_cfg(tmp_path, ""), env={})) == []


def test_compose_tor_image_has_the_transports_and_a_valid_example() -> None:
    """The compose tor image ships the transports its bridges example uses, and the example's
    Bridge lines are lines the bridge itself accepts."""
    deploy = Path(__file__).resolve().parents[2] / "deploy" / "tor"
    docker = (deploy / "Dockerfile").read_text()
    assert "obfs4proxy" in docker and "snowflake-client" in docker
    example = (deploy / "bridges.conf.example").read_text().splitlines()
    bridges = [ln.removeprefix("Bridge ") for ln in example if ln.startswith("Bridge ")]
    assert bridges and all(BridgeLine.parse(b).transport == "obfs4" for b in bridges)
    plugins = {ln.split()[1]: ln.split()[3] for ln in example
               if ln.startswith("ClientTransportPlugin ")}
    assert plugins == {"obfs4": "/usr/bin/obfs4proxy", "snowflake": "/usr/bin/snowflake-client"}


def test_every_transport_has_binaries_and_a_package() -> None:
    """The transport names the config accepts (core) and the tables the managed tor runs them
    from (tor) list the same transports."""
    from bridge.core.bridges import TRANSPORTS
    from bridge.tor.transports import DEBIAN_PACKAGES, TRANSPORT_BINARIES

    assert set(TRANSPORT_BINARIES) == set(TRANSPORTS) == set(DEBIAN_PACKAGES)
