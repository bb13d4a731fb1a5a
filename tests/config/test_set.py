"""``--set section.key=value``: the generic override of the commands that take only ``-c``
(kaspad-flags, status, doctor), validated by the key declarations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config import KNOWN_KEYS, is_secret_key, load_config, parse_set, set_help
from bridge.core.errors import ConfigError

BRIDGE = [sys.executable, "-m", "bridge"]
SECRET = "hunter2-s3cr3t-PW"


def test_parse_set_parses_by_the_declarations() -> None:
    out = parse_set(["slots.count=8", "tor.listen_onion=off", "pool.slot_wait=2.5",
                     "peers.connect=1.2.3.4,5.6.7.8", "peers.connect=[::1]:9", "mode=hybrid",
                     "slots.count=6"])
    assert out == {"slots.count": 6, "tor.listen_onion": False, "pool.slot_wait": 2.5,
                   "peers.connect": ("1.2.3.4", "5.6.7.8", "[::1]:9"), "mode": "hybrid"}
    cfg = load_config(None, env={"HOME": "/h", "KTB_SLOTS__COUNT": "3"},
                      overrides=parse_set(["slots.count=5", "data_dir=/srv/ktb"]))
    assert cfg.slots.count == 5 and cfg.data_dir == Path("/srv/ktb")  # over the environment
    cfg = load_config(None, env={"HOME": "/h"}, overrides=parse_set(["slots.count=5"]),
                      overrides_source="--set")
    assert cfg.sources["slots.count"] == "--set" and cfg.sources["pool.size"] == "default"


@pytest.mark.parametrize(("items", "key", "fragment"), [
    (["slots.cont=8"], "slots.cont", "did you mean 'slots.count'"),
    (["slots.count"], "slots.count", "expected 'section.key=value'"),
    (["slots.count=eight"], "slots.count", "expected an integer with 1 <= value <= 64"),
    (["tor.listen_onion=maybe"], "tor.listen_onion", "true/false"),
])
def test_parse_set_errors_name_set_and_the_key(items: list[str], key: str,
                                                fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_set(items)
    assert info.value.source == "--set" and info.value.key == key
    assert fragment in str(info.value)


@pytest.mark.parametrize("item", [f"tor.control_password={SECRET}",
                                  f"tor.control_password:{SECRET}", f"{SECRET}"])
def test_parse_set_never_takes_or_echoes_a_password(item: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_set([item])
    assert SECRET not in str(info.value)


def test_set_help_lists_every_key_but_the_secret() -> None:
    assert [k for k, _ in set_help()] == [k for k in KNOWN_KEYS if not is_secret_key(k)]
    assert dict(set_help())["slots.count"] == "an integer with 1 <= value <= 64"


def _bridge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BRIDGE, *args], capture_output=True, text=True, timeout=120,
                          env={"HOME": "/tmp", "PATH": "/usr/bin:/bin", "COLUMNS": "200"})


def test_kaspad_flags_takes_set() -> None:
    res = _bridge("kaspad-flags", "--set", "network=kaspa-simnet", "--set", "slots.count=2")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["kaspad", "--simnet", "--addpeer=127.0.0.1:16200",
                                  "--addpeer=127.0.0.1:16201", "--outpeers=0", "--nodnsseed",
                                  "--listen=127.0.0.1:16511", "--disable-upnp"]
    res = _bridge("kaspad-flags", "--set", "slots.cnt=2")
    assert res.returncode == 2 and "did you mean 'slots.count'" in res.stderr
    res = _bridge("kaspad-flags", "--set", "peers.allow_direct=true")  # a cross-key error
    assert res.returncode == 2
    assert "--set: peers.allow_direct: peers.allow_direct = true is only allowed" in res.stderr


@pytest.mark.parametrize("command", ["kaspad-flags", "status", "doctor"])
def test_help_lists_the_keys_set_takes(command: str) -> None:
    res = _bridge(command, "--help")
    assert res.returncode == 0, res.stderr
    assert "--set" in res.stdout
    for key in ("slots.count", "peers.refresh_interval", "metrics.listen"):
        assert key in res.stdout, key
    assert "tor.control_password " not in res.stdout


def test_status_and_doctor_take_set(tmp_path: Path) -> None:
    res = _bridge("status", "--set", "metrics.listen=")
    assert res.returncode == 1 and "metrics.listen is not set" in res.stderr
    res = _bridge("status", "--set", "pool.size=99")
    assert res.returncode == 2 and "pool.size" in res.stderr and "out of range" in res.stderr
    res = _bridge("doctor", "--set", "pool.size=99")
    assert res.returncode == 1 and "pool.size" in res.stdout and "out of range" in res.stdout
    res = _bridge("doctor", "--set", f"tor.control_password={SECRET}")
    assert res.returncode == 1 and SECRET not in res.stdout + res.stderr
