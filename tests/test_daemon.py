"""The daemon wiring: startup checks, managed tor, SOCKS discovery."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from bridge.config import load_config
from bridge.rig.demo import bridge_config
from bridge.rig.emulator import EmulatorConfig, KaspadEmulator
from bridge.rig.tornet import TorNetwork, free_ports
from bridge.runtime.daemon import Daemon, StartupError


def _cfg(tmp_path: Path, **over: object) -> object:
    slot, inbound = free_ports(2)
    base: dict[str, object] = {
        "network": "kaspa-simnet", "data_dir": str(tmp_path), "slots.base_port": slot,
        "slots.count": 1, "inbound.listen": f"127.0.0.1:{inbound}",
    }
    base.update(over)
    return load_config(None, env={"HOME": str(tmp_path)}, overrides=base)


async def test_tor_only_startup_aborts_when_tor_is_unreachable(tmp_path: Path) -> None:
    (closed,) = free_ports(1)
    cfg = _cfg(tmp_path, **{"tor.control": f"127.0.0.1:{closed}", "tor.bootstrap_timeout": 1.5})
    t0 = time.monotonic()
    with pytest.raises(StartupError) as err:
        await Daemon(cfg, handle_signals=False).run()  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 10
    text = str(err.value)
    assert "cannot start without Tor" in text and str(closed) in text


@pytest.mark.tor
async def test_managed_tor_with_discovered_socks_relays_to_an_onion(
        tornet: TorNetwork, tmp_path: Path) -> None:
    """tor.managed = true and tor.socks = "auto": the bridge launches its own tor (joined to the
    private network via tor.extra_torrc), asks it for its SOCKS port, publishes its onion and
    relays a kaspad slot connection to another bridge's onion."""
    extra = [ln for ln in tornet.client.torrc.read_text().splitlines()
             if ln.split(" ", 1)[0] in ("TestingTorNetwork", "DirAuthority",
                                        "PathsNeededToBuildCircuits", "ShutdownWaitLength")]
    emu_a = KaspadEmulator(EmulatorConfig())
    emu_b = KaspadEmulator(EmulatorConfig())
    socks = tornet.client.socks_port
    assert socks is not None
    try:
        port_a = await trio.to_thread.run_sync(emu_a.start_server)
        port_b = await trio.to_thread.run_sync(emu_b.start_server)
        async with trio.open_nursery() as nursery:
            b = Daemon(bridge_config(tmp_path, "b", socks_port=socks,
                                     control_port=tornet.onion_host.control_port,
                                     kaspad_port=port_b, peers=[]), handle_signals=False)
            await nursery.start(b.run)
            assert b.supervisor is not None
            onion_b = b.supervisor.onion_address
            (control,) = free_ports(1)
            cfg_a = _cfg(tmp_path / "a", **{
                "tor.managed": True, "tor.socks": "auto", "tor.control": f"127.0.0.1:{control}",
                "tor.extra_torrc": extra, "tor.bootstrap_timeout": 90.0,
                "kaspad.p2p": f"127.0.0.1:{port_a}", "peers.connect": [f"{onion_b}:16511"],
                "pool.size": 1})
            a = Daemon(cfg_a, handle_signals=False)  # type: ignore[arg-type]
            await nursery.start(a.run)
            assert a.supervisor is not None and a.bridge is not None
            assert a.supervisor.onion_address  # published through the managed tor
            proxy = a._socks_from_tor()
            assert proxy is not None and proxy.port not in (socks,)
            # Usually ready in a few seconds; once, late in a loaded full run (after the fault
            # tests had restarted the onion host 20 times), not within 60 s. Allow more, and
            # say what the pool saw if it still fails.
            with trio.move_on_after(150):
                while a.bridge.pool.ready_count < 1:
                    await trio.sleep(0.1)
            assert a.bridge.pool.ready_count >= 1, (
                f"no warm upstream to {onion_b}: pool {a.bridge.pool.events}, dial failures "
                f"{a.bridge.dialer.failures}, candidates {a.bridge.selector.snapshot()}, "
                f"tor {a.supervisor.status}")
            sa = emu_a.dial("127.0.0.1", a.bridge.slot_ports[0])
            assert await trio.to_thread.run_sync(sa.wait_handshake, 15.0), repr(sa)
            assert not sa.violations
            a.request_stop()
            b.request_stop()
    finally:
        await trio.to_thread.run_sync(emu_a.stop)
        await trio.to_thread.run_sync(emu_b.stop)


async def test_restart_keeps_the_address_book(tmp_path: Path) -> None:
    """Peers learned while running are still candidates after a restart (no Tor needed)."""
    onion = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion"
    over = {"tor.control": "", "tor.listen_onion": False, "mode": "hybrid",
            "peers.dns_seed": False, "pool.size": 0}
    cfg = _cfg(tmp_path, **over)
    first = Daemon(cfg, handle_signals=False)  # type: ignore[arg-type]
    async with trio.open_nursery() as n:
        await n.start(first.run)
        assert first.gossip is not None and first.bridge is not None
        from bridge.core.events import OnionsLearned
        from bridge.core.onion import OnionAddress, OnionPeer

        first.bridge.learned(OnionsLearned((OnionPeer(OnionAddress.parse(onion), 16511),),
                                           "gossip:test"))
        first.request_stop()
    second = Daemon(_cfg(tmp_path, **over), handle_signals=False)  # type: ignore[arg-type]
    async with trio.open_nursery() as n:
        await n.start(second.run)
        assert second.bridge is not None and second.bridge.book is not None
        hosts = {e.host for e in second.bridge.book.entries("kaspa-simnet")}
        assert onion in hosts
        assert f"{onion}:16511" in second.bridge.selector.snapshot()
        second.request_stop()


def test_data_dir_write_test_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    """Issue G item 8: the write test used a predictable name opened with O_CREAT|O_TRUNC, so a
    symlink planted at that name (by anyone who can write the data directory) made the bridge
    truncate the link's target at every start. Now: a random name, created exclusively, never
    through a symlink; the planted link and its target are left alone, nothing is left behind."""
    import os

    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious content\n")
    planted = data / f".kaspa-tor-bridge-write-test.{os.getpid()}"
    planted.symlink_to(victim)
    cfg = load_config(None, env={"HOME": str(tmp_path)}, overrides={
        "network": "kaspa-simnet", "mode": "hybrid", "data_dir": str(data),
        "tor.control": "", "tor.listen_onion": False})
    Daemon(cfg, handle_signals=False)._check_data_dir()
    assert victim.read_bytes() == b"precious content\n"
    assert planted.is_symlink()
    assert sorted(p.name for p in data.iterdir()) == [planted.name]  # the probe was removed


def test_open_files_limit_is_raised_to_what_the_bounds_allow(tmp_path: Path) -> None:
    """inbound.max_connections and max_pending allow 4096 each, far above a default soft
    open-files limit of 1024: the daemon raises its soft limit (up to the hard one) at startup
    and warns, naming the keys, when even the hard limit is too low. Checked in a real process
    with a lowered limit."""
    import subprocess
    import sys

    from bridge.runtime.daemon import FD_OVERHEAD, fd_need

    cfg = load_config(None, env={"HOME": str(tmp_path)}, overrides={
        "inbound.max_connections": 4096, "inbound.max_pending": 4096})
    need = fd_need(cfg)
    assert need == 2 * 4096 + 4096 + 2 * 16 + 2 + 4 + FD_OVERHEAD  # 16: 4 per slot port
    script = (
        "import resource, sys\n"
        "from bridge.runtime.daemon import ensure_fd_limit\n"
        "soft, hard = map(int, sys.argv[1:3])\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))\n"
        "print(repr(ensure_fd_limit(int(sys.argv[3]))))\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")

    def run(soft: int, hard: int) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", script, str(soft), str(hard), str(need)],
                             capture_output=True, text=True, check=True).stdout.splitlines()
        return out[0], int(out[1])

    warning, soft = run(256, need + 100)  # room under the hard limit: raised, no warning
    assert (warning, soft) == ("None", need)
    warning, soft = run(256, 1024)  # the hard limit is too low: raised to it, and a warning
    assert soft == 1024
    assert "inbound.max_connections" in warning and str(need) in warning
    warning, soft = run(need + 10, need + 10)  # enough already: left alone
    assert (warning, soft) == ("None", need + 10)
