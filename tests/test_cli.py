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
    from bridge.core.errors import ConfigError

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


def _start_logged(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([*BRIDGE, *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, f"no {text!r} in:\n{log.read_text()}"
        time.sleep(0.1)


def _no_traceback(out: str) -> None:
    for word in ("Traceback", "ExceptionGroup", "KeyboardInterrupt"):
        assert word not in out, out


def test_ctrl_c_during_startup_stops_cleanly_without_a_traceback(tmp_path: Path) -> None:
    """Issue G item 9: SIGINT while the daemon waits for Tor at startup used to surface as a
    BaseExceptionGroup traceback (trio wraps the KeyboardInterrupt that arrives inside a
    nursery). Now the daemon handles its signals from its first moment: the startup is
    aborted, logged in one line, and the process exits 0 — a stop the operator asked for, as
    tor does on SIGINT (130 is kept for commands interrupted before they could finish)."""
    closed, socks, slot, inbound = free_ports(4)
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
socks = "127.0.0.1:{socks}"
control = "127.0.0.1:{closed}"
bootstrap_timeout = 120.0
''')
    log = tmp_path / "out.log"
    proc = _start_logged(["run", "-c", str(cfg)], log)
    try:
        _wait_for(log, "cannot connect to tor control port", proc)  # startup: waiting for Tor
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
        assert time.monotonic() - t0 < 20  # not the 120 s bootstrap timeout
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    _no_traceback(out)
    assert rc == 0, out
    assert "SIGINT during startup: startup aborted" in out, out


def test_sighup_is_logged_and_ignored_then_sigterm_stops_cleanly(tmp_path: Path) -> None:
    """Issue G item 9: SIGHUP used to kill the daemon without its clean shutdown. tor reloads on
    SIGHUP, so an operator (or `systemctl reload`, a logrotate hook) sends it expecting the
    service to stay up; the bridge cannot reload, so it says so and keeps serving. SIGTERM then
    stops it in order, exit 0."""
    slot, inbound = free_ports(2)
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'''
network = "kaspa-simnet"
mode = "hybrid"
data_dir = "{tmp_path / 'data'}"
[slots]
base_port = {slot}
count = 1
[inbound]
listen = "127.0.0.1:{inbound}"
[tor]
control = ""
listen_onion = false
[peers]
dns_seed = false
[pool]
size = 0
''')
    log = tmp_path / "out.log"
    proc = _start_logged(["run", "-c", str(cfg)], log)
    try:
        _wait_for(log, "bridge up", proc)
        proc.send_signal(signal.SIGHUP)
        _wait_for(log, "SIGHUP: ignored", proc, timeout=20)
        time.sleep(1.0)
        assert proc.poll() is None, log.read_text()
        import socket

        with socket.create_connection(("127.0.0.1", slot), timeout=5):
            pass  # still serving its slot
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    _no_traceback(out)
    assert rc == 0, out
    assert "does not reload its configuration" in out and "SIGTERM: shutting down" in out, out


def test_ctrl_c_during_doctor_exits_130_without_a_traceback(tmp_path: Path) -> None:
    """Commands other than `run` that run trio (doctor here; demo, rig and onion share the
    same wrapper) end on Ctrl-C with one line and the shell's 130, never a traceback."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))  # a "tor control port" that never answers
    control = listener.getsockname()[1]
    socks, slot, inbound = free_ports(3)
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
socks = "127.0.0.1:{socks}"
control = "127.0.0.1:{control}"
''')
    log = tmp_path / "out.log"
    proc = _start_logged(["doctor", "-c", str(cfg), "--timeout", "60"], log)
    try:
        listener.settimeout(90)
        conn, _ = listener.accept()  # doctor is inside its trio checks now
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
        conn.close()
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    _no_traceback(out)
    assert rc == 130, out
    assert "interrupted" in out, out
