"""The command line, run as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from python_socks import ProxyError, ProxyTimeoutError, ProxyType
from python_socks.sync import Proxy

from bridge.rig.tornet import TorNetwork, free_ports
from bridge.tor.keys import load_key

BRIDGE = [sys.executable, "-m", "bridge"]


def test_kaspad_flags_tor_only() -> None:
    out = subprocess.run([*BRIDGE, "kaspad-flags", "-c", "config/tor-only.toml"],
                         capture_output=True, text=True, check=True).stdout
    flags = out.split()
    assert flags[0] == "kaspad"
    assert [f for f in flags if f.startswith("--addpeer=")] == [
        f"--addpeer=127.0.0.1:{p}" for p in range(16200, 16204)]
    for f in ("--outpeers=0", "--nodnsseed", "--listen=127.0.0.1:16111", "--disable-upnp"):
        assert f in flags
    assert not any(f.startswith("--connect") for f in flags)  # would disable kaspad's listener


def test_bad_config_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[pool]\nslot_wait = 12.0\n')
    res = subprocess.run([*BRIDGE, "run", "-c", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert str(bad) in res.stderr and "pool.slot_wait" in res.stderr


@pytest.mark.tor
def test_run_publishes_onion_and_removes_it_on_sigterm(tornet: TorNetwork,
                                                        tmp_path: Path) -> None:
    slot, inbound = free_ports(2)
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'''
network = "kaspa-simnet"
data_dir = "{tmp_path / 'data'}"
[slots]
base_port = {slot}
count = 1
[inbound]
listen = "127.0.0.1:{inbound}"
[tor]
socks = "127.0.0.1:{tornet.client.socks_port}"
control = "127.0.0.1:{tornet.onion_host.control_port}"
bootstrap_timeout = 60.0
''')
    proc = subprocess.Popen([*BRIDGE, "run", "-c", str(cfg)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    key_path = tmp_path / "data" / "kaspa-simnet" / "onion_ed25519_v3.key"
    proxy = Proxy(ProxyType.SOCKS5, "127.0.0.1", tornet.client.socks_port or 0, rdns=True,
                  username="t", password=os.urandom(8).hex())

    def reachable(host: str) -> bool:
        try:
            proxy.connect(dest_host=host, dest_port=16511, timeout=10).close()
            return True
        except (ProxyError, ProxyTimeoutError, OSError):
            return False

    try:
        deadline = time.monotonic() + 60
        while not key_path.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no onion key was written"
            time.sleep(0.2)
        key = load_key(key_path)
        assert key is not None
        host = f"{key.service_id}.onion"
        assert key_path.stat().st_mode & 0o777 == 0o600
        assert key_path.parent.stat().st_mode & 0o777 == 0o700
        while not reachable(host):  # published: Tor routes to the bridge's inbound listener
            assert time.monotonic() < deadline, "the bridge's onion never became reachable"
            time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - t0 < 10
        assert not reachable(host)  # DEL_ONION: gone at once, not after descriptor expiry
    finally:
        if proc.poll() is None:
            proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in err, err
    assert "removed" in err, err  # DEL_ONION confirmed in the log
    assert "back this file up" in err, err  # the operator is told to back the key up
    assert "stem: " not in err  # stem's chatter (every socket close) stays out of the log


def test_every_key_is_a_flag_with_flag_over_env_over_file(tmp_path: Path) -> None:
    from bridge.config import FLAG_TO_KEY, KNOWN_KEYS, load_config, parse_flags
    from bridge.errors import ConfigError

    assert set(FLAG_TO_KEY.values()) == set(KNOWN_KEYS)
    with pytest.raises(ConfigError, match="visible to every user"):
        parse_flags(["--tor-control-password", "hunter2"])
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("[slots]\ncount = 2\nbase_port = 17000\n[pool]\nsize = 3\n")
    env = {"HOME": str(tmp_path), "KTB_SLOTS__COUNT": "3", "KTB_POOL__SIZE": "5"}
    flags = parse_flags(["--slots-count", "4", "--no-tor-listen-onion",
                         "--peers-connect=127.0.0.1:1", "--peers-connect", "127.0.0.2:2"])
    cfg = load_config(cfg_file, env=env, overrides=flags)
    assert cfg.slots.count == 4  # flag wins over env and file
    assert cfg.pool.size == 5  # env wins over file
    assert cfg.slots.base_port == 17000  # file wins over default
    assert cfg.tor.listen_onion is False
    assert [str(p) for p in cfg.peers.connect] == ["127.0.0.1:1", "127.0.0.2:2"]


def test_unknown_flag_is_named_with_a_suggestion() -> None:
    res = subprocess.run([*BRIDGE, "run", "--slots-cnt", "3"], capture_output=True, text=True)
    assert res.returncode == 2
    assert "--slots-cnt" in res.stderr and "--slots-count" in res.stderr
