"""Managed tor: the bridge launches tor itself, supervises it, and stops it on exit."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from bridge.rig import TorNetwork
from bridge.tor.managed import ManagedTor, ManagedTorConfig, render_torrc
from bridge.tor.supervisor import Backoff, TorSupervisor

pytestmark = pytest.mark.tor


def test_render_torrc(tmp_path: Path) -> None:
    text = render_torrc(ManagedTorConfig(tmp_path, socks_port=9999, extra_torrc=["Foo 1"]))
    assert f"DataDirectory {tmp_path / 'tor' / 'data'}" in text
    assert "SocksPort 127.0.0.1:9999" in text and "CookieAuthentication 1" in text
    assert f"ControlPort unix:{tmp_path / 'tor' / 'control.sock'}" in text
    assert text.endswith("Foo 1\n")


async def test_managed_tor_bootstraps_heals_and_stops(tornet: TorNetwork, tmp_path: Path
                                                      ) -> None:
    # join the private network: same authorities and testing options as the rig's client
    extra = [ln for ln in tornet.client.torrc.read_text().splitlines()
             if ln.split(" ", 1)[0] in ("TestingTorNetwork", "DirAuthority",
                                        "PathsNeededToBuildCircuits", "ShutdownWaitLength")]
    short = Path("/tmp") / f"ktb-managed-{os.getpid()}"  # Unix socket paths must be short
    cfg = ManagedTorConfig(short if len(str(tmp_path)) > 60 else tmp_path, extra_torrc=extra)
    managed = ManagedTor(cfg, backoff=Backoff(initial=0.1, cap=0.5))
    try:
        async with trio.open_nursery() as n:
            await n.start(managed.run)
            assert managed.proc is not None
            pid = managed.proc.pid
            sup = TorSupervisor(managed.endpoint, managed.auth,
                                backoff=Backoff(initial=0.1, cap=0.5), health_interval=0.5)
            await n.start(sup.run)
            st = await sup.wait_usable(timeout=60)
            assert st.auth_method in ("SAFECOOKIE", "COOKIE")
            assert len(st.socks_listeners) == 1 and st.socks_listeners[0][0] == "127.0.0.1"
            # tor dies: the watchdog restarts it, the supervisor reconnects
            os.kill(pid, signal.SIGKILL)
            with trio.fail_after(60):
                while not (sup.status.usable and sup.status.restarts_seen == 1):
                    await sup.wait_changed()
            assert managed.starts == 2 and managed.proc is not None
            pid2 = managed.proc.pid
            await sup.stop()
            n.cancel_scope.cancel()
        # stopped on exit
        with pytest.raises(ProcessLookupError):
            for _ in range(100):
                os.kill(pid2, 0)
                await trio.sleep(0.05)
    finally:
        if cfg.data_dir != tmp_path:
            import shutil

            shutil.rmtree(cfg.data_dir, ignore_errors=True)
