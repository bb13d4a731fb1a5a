"""`kaspa-tor-bridge status`: the snapshot, its rendering, and the command against a daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import trio

from bridge.rig.tornet import free_ports
from bridge.runtime.daemon import Daemon
from bridge.runtime.status import build_snapshot, health, render_text
from tests.integration.conftest import ONION_B
from tests.observe_rig import daemon_config, start_pair, wait_for

BRIDGE = [sys.executable, "-m", "bridge"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="110", TERM="dumb")
    return subprocess.run([*BRIDGE, *args], capture_output=True, text=True, env=env, timeout=60)


async def test_status_command_against_a_running_daemon(tmp_path: Path,
                                                       nursery: trio.Nursery) -> None:
    pair = await start_pair(nursery, tmp_path)
    a = pair.a
    try:
        await wait_for(lambda: a.bridge is not None and a.bridge.pool.ready_count >= 1)
        assert a.bridge is not None
        slot = a.bridge.slot_ports[0]
        sa = pair.emu_a.dial("127.0.0.1", slot)
        assert await trio.to_thread.run_sync(sa.wait_handshake, 10.0), repr(sa)
        await trio.to_thread.run_sync(
            lambda: sa.wait_for(lambda s: s.remote_addresses is not None, 5))
        # an inbound peer on B shows up in B's snapshot (B has no metrics server: in-process)
        snap_b = build_snapshot(pair.b)
        assert len(snap_b["inbound"]) == 1 and snap_b["inbound"][0]["label"].startswith(
            "inbound#")
        ib = snap_b["inbound_stats"]
        assert ib["accepted"] >= 1 and ib["active"] == 1 and ib["refused_full"] == 0
        assert ib["max_active"] == pair.b.cfg.inbound.max_connections

        res = await trio.to_thread.run_sync(
            lambda: run_cli("status", "-c", str(pair.config_file), "--json"))
        assert res.returncode == 0, res.stderr
        snap = json.loads(res.stdout)
        assert snap["snapshot_version"] == 1 and snap["network"] == "kaspa-simnet"
        assert snap["health"] == {"ok": True, "reasons": []}
        relay = snap["slots"][0]["relays"][0]
        assert relay["peer"] == f"{ONION_B.host}:16511"
        assert relay["bytes_from_kaspad"] > 0 and relay["messages_from_remote"] > 0
        assert snap["listeners"]["slot_ports"] == a.bridge.slot_ports
        book = snap["book"]
        assert book is not None and book["errors"] == 0 and book["failing"] == 0

        res = await trio.to_thread.run_sync(lambda: run_cli("status", "-c",
                                                            str(pair.config_file)))
        assert res.returncode == 0, res.stderr
        screen = res.stdout
        (tmp_path / "status-screen.txt").write_text(screen)
        for needle in ("HEALTHY", f"slot:{slot}", ONION_B.host[:16], "warm pool",
                       f"slot:{a.bridge.slot_ports[1]}", "empty: kaspad not connected",
                       "none; listening on", "recent warnings and errors", "ok (0 errors so far)",
                       "relayed  (accepted"):
            assert needle in screen, (needle, screen)
    finally:
        a.request_stop()
        pair.b.request_stop()
        await trio.to_thread.run_sync(pair.emu_a.stop)
        await trio.to_thread.run_sync(pair.emu_b.stop)


def test_status_when_daemon_is_not_running(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'network = "kaspa-simnet"\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    res = run_cli("status", "-c", str(cfg))
    assert res.returncode == 1
    assert f"http://127.0.0.1:{port}/status" in res.stderr
    assert "metrics.listen must be set" in res.stderr
    cfg.write_text('network = "kaspa-simnet"\n')
    res = run_cli("status", "-c", str(cfg), "--json")
    assert res.returncode == 1 and "metrics.listen is not set" in res.stderr


async def test_snapshot_and_render_while_tor_is_missing(tmp_path: Path,
                                                        nursery: trio.Nursery) -> None:
    """A rendered screen for a daemon with errors: render never crashes on partial data."""
    d = Daemon(daemon_config(tmp_path), handle_signals=False)
    assert health(d) == (False, ["listeners not up yet"])
    await nursery.start(d.run)
    try:
        snap = build_snapshot(d)
        snap["recent_errors"] = [{"at": 0, "source": "pool",
                                  "message": "upstream x not ready: [tor] [red]markup[/red]"}]
        text = render_text(snap)
        assert "not monitored" in text and "[red]markup[/red]" in text
        assert "UNHEALTHY" not in text
        render_text({})  # an empty/foreign snapshot renders too
    finally:
        d.request_stop()


def test_recent_errors_collapse_repeats_and_stay_bounded() -> None:
    from bridge.runtime.status import RecentErrors

    errs = RecentErrors(limit=3)
    for _ in range(5):
        errs.add("pool", "same")
    errs.add("tor", "other")
    assert [(e["message"], e["count"]) for e in errs.as_list()] == [("same", 5), ("other", 1)]
    for i in range(10):
        errs.add("x", f"m{i}")
    assert [e["message"] for e in errs.as_list()] == ["m7", "m8", "m9"]
    errs.add("x", "y" * 2000)
    assert len(errs.as_list()[-1]["message"]) == 500
