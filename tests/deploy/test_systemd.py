"""deploy/systemd/kaspa-tor-bridge.service and ``kaspad-flags --systemd`` (issue 12, "systemd").

The unit's hardening is checked key by key, then the unit is verified by the installed systemd
(``systemd-analyze verify``, with ExecStart pointing at this Python, since verify needs an
existing binary) and its exposure score (``systemd-analyze security --offline=yes``) must stay
"OK". The kaspad drop-in is verified on top of a kaspad.service of its own: without the
``ExecStart=`` reset, verify rejects it (two ExecStart= in a simple service), and systemd's own
reading of it must show kaspad confined to loopback in tor-only mode.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bridge.cli.main import app
from bridge.cli.systemd import DROPIN_PATH, exec_quote, kaspad_dropin
from bridge.config import Config, load_config
from bridge.runtime.wiring import kaspad_flags

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "kaspa-tor-bridge.service"
EXAMPLES = sorted((ROOT / "config").glob("*.toml"))
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
#: The highest acceptable "overall exposure level" of the unit (systemd calls < 2 "OK").
MAX_EXPOSURE = 2.0


def _settings(text: str) -> dict[str, list[str]]:
    """``Section.Key`` → values, in order (systemd allows repeated keys); continuation lines
    joined."""
    out: dict[str, list[str]] = {}
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def _cfg(tmp_path: Path, text: str = "") -> Config:
    path = tmp_path / "bridge.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, env={"HOME": str(tmp_path)})


def test_unit_is_hardened() -> None:
    s = _settings(UNIT.read_text(encoding="utf-8"))
    one = {k: v[-1] for k, v in s.items()}
    expected = {
        "Service.DynamicUser": "yes", "Service.StateDirectory": "kaspa-tor-bridge",
        "Service.ProtectSystem": "strict", "Service.ProtectHome": "yes",
        "Service.NoNewPrivileges": "yes", "Service.PrivateTmp": "yes",
        "Service.PrivateDevices": "yes",
        "Service.RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "Service.IPAddressDeny": "any", "Service.IPAddressAllow": "localhost",
        "Service.CapabilityBoundingSet": "", "Service.MemoryDenyWriteExecute": "yes",
        "Service.LockPersonality": "yes", "Service.Restart": "on-failure",
        # the daemon does not speak sd_notify (no NOTIFY_SOCKET anywhere in bridge/)
        "Service.Type": "simple",
        "Service.Environment": "KTB_DATA_DIR=%S/kaspa-tor-bridge",
    }
    assert {k: one.get(k) for k in expected} == expected
    assert s["Service.SystemCallFilter"][0] == "@system-service"
    # the config file in /etc, the bridge's own entry point
    assert one["Service.ExecStart"].split() == [
        "/opt/kaspa-tor-bridge/bin/kaspa-tor-bridge", "run", "--config",
        "/etc/kaspa-tor-bridge/bridge.toml"]
    assert one["Install.WantedBy"] == "multi-user.target"


def test_daemon_really_has_no_sd_notify() -> None:
    """If the bridge ever learns sd_notify, Type= must become notify (this test then fails)."""
    hits = [p for p in (ROOT / "bridge").rglob("*.py")
            if "NOTIFY_SOCKET" in p.read_text(encoding="utf-8")]
    assert hits == []


def _verify(*units: Path, unit_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    env = {"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0"}
    if unit_path is not None:
        env["SYSTEMD_UNIT_PATH"] = f"{unit_path}:"  # trailing ":" keeps the built-in path
    return subprocess.run([ANALYZE, "verify", *map(str, units)], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def _runnable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart's binary replaced by this Python (verify needs it to exist)."""
    text = UNIT.read_text(encoding="utf-8")
    assert "ExecStart=/opt/kaspa-tor-bridge/bin/kaspa-tor-bridge " in text
    text = text.replace("ExecStart=/opt/kaspa-tor-bridge/bin/kaspa-tor-bridge ",
                        f"ExecStart={sys.executable} -m bridge ")
    out = tmp_path / "kaspa-tor-bridge.service"
    out.write_text(text, encoding="utf-8")
    return out


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    unit = _runnable_unit(tmp_path)
    res = _verify(unit)
    # verify exits 0 on unknown keys and bad values too: any message about the unit is a fault
    assert res.returncode == 0 and str(unit) not in res.stdout + res.stderr, res
    # the check can fail: a misspelt key is reported
    bad = tmp_path / "bad" / "kaspa-tor-bridge.service"
    bad.parent.mkdir()
    bad.write_text(unit.read_text(encoding="utf-8").replace("ProtectHome=", "ProtectHomes="),
                   encoding="utf-8")
    res = _verify(bad)
    assert "Unknown key" in res.stdout + res.stderr, res


@needs_analyze
def test_unit_security_exposure(tmp_path: Path) -> None:
    assert ANALYZE is not None
    unit = _runnable_unit(tmp_path)
    res = subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for kaspa-tor-bridge\.service: ([0-9.]+)", res.stdout)
    assert m, res
    assert float(m.group(1)) <= MAX_EXPOSURE, res.stdout


def _exec_start(dropin: str) -> list[str]:
    values = _settings(dropin)["Service.ExecStart"]
    assert values[0] == "", "the drop-in must reset the unit's ExecStart first"
    assert len(values) == 2
    return values[1].split()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_dropin_runs_kaspad_with_the_bridge_flags(path: Path) -> None:
    cfg = load_config(path, env={"HOME": "/nonexistent"})
    text = kaspad_dropin(cfg, kaspad_bin="/usr/bin/kaspad", config_path=path)
    assert text.startswith(f"# {DROPIN_PATH}\n")
    s = _settings(text)
    assert _exec_start(text) == ["/usr/bin/kaspad", *kaspad_flags(cfg)]
    assert s["Unit.After"] == ["kaspa-tor-bridge.service"]
    assert s["Unit.Wants"] == ["kaspa-tor-bridge.service"]
    if cfg.mode == "tor-only":
        assert s["Service.IPAddressDeny"] == ["any"]
        assert s["Service.IPAddressAllow"] == ["localhost"]
    else:  # hybrid: kaspad keeps its own clearnet networking
        assert "Service.IPAddressDeny" not in s


def test_dropin_allows_non_loopback_bridge_addresses(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, '[slots]\nhost = "10.1.2.3"\nallow_non_loopback = true\n'
                         '[kaspad]\np2p = "10.1.2.4:16111"\n')
    s = _settings(kaspad_dropin(cfg))
    assert s["Service.IPAddressAllow"] == ["localhost 10.1.2.3 10.1.2.4"]


def test_exec_quote() -> None:
    assert exec_quote("--addpeer=[::1]:16200") == "--addpeer=[::1]:16200"
    assert exec_quote("/opt/k d/kaspad") == '"/opt/k d/kaspad"'
    assert exec_quote("50%") == '"50%%"'
    assert exec_quote('a"$x') == '"a\\"$$x"'
    with pytest.raises(ValueError, match="absolute"):
        kaspad_dropin(load_config(None, env={"HOME": "/x"}), kaspad_bin="kaspad")


def test_cli_prints_the_dropin(tmp_path: Path) -> None:
    cfg_path = ROOT / "config" / "tor-only.toml"
    out = CliRunner().invoke(app, ["kaspad-flags", "-c", str(cfg_path), "--systemd",
                                   "--kaspad-bin", "/usr/bin/kaspad"],
                             env={"HOME": "/nonexistent"})
    assert out.exit_code == 0, out.output
    cfg = load_config(cfg_path, env={"HOME": "/nonexistent"})
    assert out.output == kaspad_dropin(cfg, kaspad_bin="/usr/bin/kaspad", config_path=cfg_path)
    bad = CliRunner().invoke(app, ["kaspad-flags", "--systemd", "--kaspad-bin", "kaspad"])
    assert bad.exit_code == 2


@needs_analyze
def test_dropin_verifies_on_a_kaspad_unit(tmp_path: Path) -> None:
    assert ANALYZE is not None
    units = tmp_path / "units"
    (units / "kaspad.service.d").mkdir(parents=True)
    (units / "kaspad.service").write_text(
        "[Unit]\nDescription=kaspad\n\n[Service]\nExecStart=/bin/false --appdir=/x\n"
        "Restart=on-failure\n", encoding="utf-8")
    _runnable_unit(units)  # the bridge's unit, for After=/Wants=
    cfg = load_config(ROOT / "config" / "tor-only.toml", env={"HOME": "/nonexistent"})
    dropin = units / "kaspad.service.d" / "50-kaspa-tor-bridge.conf"
    dropin.write_text(kaspad_dropin(cfg, kaspad_bin=shutil.which("true") or "/bin/true"),
                      encoding="utf-8")
    res = _verify(units / "kaspad.service", unit_path=units)
    assert res.returncode == 0 and str(units) not in res.stdout + res.stderr, res
    # systemd reads the drop-in: kaspad confined to loopback
    sec = subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager",
                          str(units / "kaspad.service")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "SYSTEMD_UNIT_PATH": f"{units}:"},
                         timeout=60, check=False)
    assert "IP address allow list with only localhost entries" in sec.stdout, sec
    # without the ExecStart= reset the drop-in would add a second command: verify refuses it
    dropin.write_text(dropin.read_text(encoding="utf-8").replace("ExecStart=\n", ""),
                      encoding="utf-8")
    res = _verify(units / "kaspad.service", unit_path=units)
    assert res.returncode != 0 or "more than one ExecStart" in res.stdout + res.stderr, res
