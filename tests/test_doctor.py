"""`kaspa-tor-bridge doctor`: clear failures when nothing runs, all green on a working setup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from bridge.cli.doctor import report, run_checks, socks_probe
from bridge.config import load_config
from bridge.rig.emulator import EmulatorConfig, KaspadEmulator
from bridge.rig.tornet import TorNetwork, free_ports
from bridge.tor.keys import save_key
from tests.conftest import TORNET_CONTROL_PASSWORD
from tests.integration.conftest import ONION_B
from tests.peers.socks_server import ScriptedSocks5Server
from tests.test_onion_cmd import make_key

BRIDGE = [sys.executable, "-m", "bridge"]


def test_nothing_running_fails_clearly(tmp_path: Path) -> None:
    socks, control, kaspad, metrics = free_ports(4)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'''network = "kaspa-simnet"
data_dir = "{tmp_path / 'data'}"
[kaspad]
p2p = "127.0.0.1:{kaspad}"
[tor]
socks = "127.0.0.1:{socks}"
control = "127.0.0.1:{control}"
[peers]
connect = ["{ONION_B.host}:16511"]
[metrics]
listen = "127.0.0.1:{metrics}"
''')
    res = subprocess.run([*BRIDGE, "doctor", "-c", str(cfg), "--timeout", "3"],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, HOME=str(tmp_path)))
    assert res.returncode == 1, res.stdout
    out = res.stdout
    assert f"[FAIL] tor control: cannot connect to tor control port 127.0.0.1:{control}" in out
    assert f"fix: start tor with `ControlPort 127.0.0.1:{control}`" in out
    assert f"[FAIL] tor socks: cannot connect to the SOCKS port 127.0.0.1:{socks}" in out
    assert f"[FAIL] kaspad p2p: cannot connect to kaspad at 127.0.0.1:{kaspad}" in out
    assert "--listen=" in out and "kaspad-flags" in out
    assert "[skip] bridge daemon" in out
    assert "3 failed" in out


def test_bad_files_and_config(tmp_path: Path) -> None:
    data = tmp_path / "data"
    kf = data / "kaspa-simnet" / "onion_ed25519_v3.key"
    save_key(kf, make_key())
    os.chmod(kf, 0o644)
    os.chmod(kf.parent, 0o755)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'network = "kaspa-simnet"\ndata_dir = "{data}"\n'
                   '[tor]\ncontrol_password = "hunter2"\n'
                   '[metrics]\nlisten = "0.0.0.0:9464"\n')
    res = subprocess.run([*BRIDGE, "doctor", "-c", str(cfg), "--timeout", "2"],
                         capture_output=True, text=True, timeout=60)
    out = res.stdout
    assert res.returncode == 1
    assert "[FAIL] onion key" in out and f"chmod 600 {kf}" in out
    assert "[warn] data dir" in out and f"chmod 700 {kf.parent}" in out
    assert "[FAIL] config: metrics.listen = 0.0.0.0:9464 is not loopback" in out
    assert "control password is written in" in out and "hunter2" not in out
    assert "[warn] config: peers.connect is empty" in out


def test_bad_config_is_a_failed_check(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[pool]\nsize = "x"\n')
    res = subprocess.run([*BRIDGE, "doctor", "-c", str(cfg)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1 and "[FAIL] config" in res.stdout and "pool.size" in res.stdout


async def test_socks_probe_wrong_service(nursery: trio.Nursery) -> None:
    """A SOCKS server that answers is recognised; an HTTP server is not taken for one."""
    socks = ScriptedSocks5Server(lambda h, p: 4)
    port = await nursery.start(socks.serve)
    assert "reply 0x04" in await socks_probe("127.0.0.1", port, 5)

    async def http(stream: trio.SocketStream) -> None:
        await stream.receive_some(100)
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    listeners = await nursery.start(trio.serve_tcp, http, 0)
    hport = listeners[0].socket.getsockname()[1]
    with pytest.raises(Exception, match="not a SOCKS5 proxy"):
        await socks_probe("127.0.0.1", hport, 5)


@pytest.mark.tor
async def test_all_green_on_the_private_tor_network(tornet: TorNetwork, tmp_path: Path) -> None:
    emu = KaspadEmulator(EmulatorConfig(network="kaspa-simnet"))
    port = await trio.to_thread.run_sync(emu.start_server)
    try:
        data = tmp_path / "data"
        (data / "kaspa-simnet").mkdir(parents=True, mode=0o700)
        os.chmod(data / "kaspa-simnet", 0o700)
        slot, inbound = free_ports(2)
        cfg = load_config(None, env={"HOME": str(tmp_path),
                                     "KTB_TOR_CONTROL_PASSWORD": TORNET_CONTROL_PASSWORD},
                          overrides={
            "network": "kaspa-simnet", "data_dir": str(data),
            "kaspad.p2p": f"127.0.0.1:{port}", "slots.base_port": slot,
            "inbound.listen": f"127.0.0.1:{inbound}",
            "tor.socks": f"127.0.0.1:{tornet.client.socks_port}",
            "tor.control": f"127.0.0.1:{tornet.client.control_port}",
            "peers.connect": [f"{ONION_B.host}:16511"]})
        checks = await run_checks(cfg, timeout=15)
        lines: list[str] = []
        assert report(checks, lines.append), "\n".join(lines)
        text = "\n".join(lines)
        print(text)
        assert not any(c.status in ("fail", "warn") for c in checks), text
        assert "authenticated with HASHEDPASSWORD" in text
        assert "tor bootstrap: 100%" in text
        assert "SOCKS5 handshake ok" in text
        assert "kaspad p2p: 127.0.0.1" in text and "HTTP/2 preface exchange ok" in text
        # the command: exit code 0
        toml = tmp_path / "c.toml"
        toml.write_text(f'''network = "kaspa-simnet"
data_dir = "{data}"
[kaspad]
p2p = "127.0.0.1:{port}"
[slots]
base_port = {slot}
[inbound]
listen = "127.0.0.1:{inbound}"
[tor]
socks = "127.0.0.1:{tornet.client.socks_port}"
control = "127.0.0.1:{tornet.client.control_port}"
[peers]
connect = ["{ONION_B.host}:16511"]
''')
        env = dict(os.environ, KTB_TOR_CONTROL_PASSWORD=TORNET_CONTROL_PASSWORD)
        res = await trio.to_thread.run_sync(lambda: subprocess.run(
            [*BRIDGE, "doctor", "-c", str(toml)], capture_output=True, text=True, timeout=120,
            env=env))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "0 failed, 0 warnings" in res.stdout
    finally:
        await trio.to_thread.run_sync(emu.stop)


@pytest.mark.parametrize(("advertised", "verdict"), [(bytes([8, 8, 4, 4]), "fail"),
                                                      (None, "ok")])
async def test_kaspad_advertising_a_routable_address_is_caught(
        tmp_path: Path, advertised: bytes | None, verdict: str) -> None:
    from bridge.cli.doctor import check_kaspad

    emu = KaspadEmulator(EmulatorConfig(
        advertised_address=(advertised, 16511) if advertised else None))
    try:
        port = await trio.to_thread.run_sync(emu.start_server)
        cfg = load_config(None, env={"HOME": str(tmp_path)}, overrides={
            "network": "kaspa-simnet", "kaspad.p2p": f"127.0.0.1:{port}"})
        checks = {c.name: c for c in await check_kaspad(cfg, 10.0)}
        assert checks["kaspad version"].status == "ok", checks
        assert "kaspa-simnet" in checks["kaspad version"].detail
        if verdict == "fail":
            assert checks["kaspad address"].status == "fail"
            assert "8.8.4.4" in checks["kaspad address"].detail
        else:
            assert "kaspad address" not in checks
        assert all(not s.violations for s in emu.sessions)  # a well-behaved peer for kaspad
    finally:
        await trio.to_thread.run_sync(emu.stop)


def test_config_warnings_follow_what_the_bridge_does(tmp_path: Path) -> None:
    """Issue 12 item 5: no "peers.connect is empty" warning where the bridge seeds through Tor
    (mainnet), and no "not loopback" warning for a private kaspad address (the compose stack's
    internal network); both still warn where they matter."""
    from bridge.cli.doctor import check_config

    def cfg(**over: object) -> list[str]:
        c = load_config(None, env={"HOME": str(tmp_path)}, overrides=over)
        return [f"{k.status} {k.detail}" for k in check_config(c)]

    assert not any("peers.connect is empty" in x for x in cfg(network="kaspa-mainnet"))
    assert any("peers.connect is empty and peers.dns_seed = false" in x
               for x in cfg(network="kaspa-mainnet", **{"peers.dns_seed": False}))
    assert any("peers.connect is empty and kaspa-simnet has no DNS seeders" in x
               for x in cfg(network="kaspa-simnet"))
    assert not any("kaspad.p2p" in x for x in cfg(**{"kaspad.p2p": "172.20.0.4:16111"}))
    assert any("kaspad.p2p = 1.2.3.4:16111 is a public address" in x
               for x in cfg(**{"kaspad.p2p": "1.2.3.4:16111"}))


async def test_doctor_asks_kaspads_rpc_when_sync_first_is_set() -> None:
    from bridge.cli.doctor import check_kaspad_rpc
    from bridge.config import Config
    from bridge.rig.emu_rpc import RpcEmulator

    rpc = RpcEmulator(network_id="simnet", synced=False)
    port = await trio.to_thread.run_sync(rpc.start)
    try:
        def cfg(network: str, rpc_port: int) -> Config:
            return load_config(None, env={"HOME": "/home/tester"}, overrides={
                "network": network, "mode": "hybrid", "peers.sync_first": True,
                "kaspad.rpc": f"127.0.0.1:{rpc_port}"})

        (ok,) = await check_kaspad_rpc(cfg("kaspa-simnet", port), 5.0)
        assert ok.status == "ok" and "not synced yet" in ok.detail and "2.1.0" in ok.detail
        (wrong,) = await check_kaspad_rpc(cfg("kaspa-mainnet", port), 5.0)
        assert wrong.status == "fail" and "'simnet', not 'mainnet'" in wrong.detail
        rpc.stop()
        (down,) = await check_kaspad_rpc(cfg("kaspa-simnet", port), 2.0)
        assert down.status == "fail" and "not reachable" in down.detail
        assert down.fix is not None and "--rpclisten" in down.fix
        no_sync = load_config(None, env={"HOME": "/home/tester"}, overrides={"mode": "hybrid"})
        assert await check_kaspad_rpc(no_sync, 1.0) == []
    finally:
        await trio.to_thread.run_sync(rpc.stop)
