"""`kaspa-tor-bridge status`: the snapshot, its rendering, and the command against a daemon.

Rendering is tested from hand-built snapshots (:func:`tests.observe_rig.make_snapshot`); the
command and the snapshot of a live daemon end to end, with two real daemons (no Tor)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import trio

from bridge.rig.tornet import free_ports
from bridge.runtime.daemon import Daemon
from bridge.runtime.stats import (
    ErrorRecord,
    Health,
    InboundEvents,
    RecentErrors,
    RewriteStats,
    TrafficStats,
)
from bridge.runtime.status import render_text, to_json
from tests.integration.conftest import ONION_B
from tests.observe_rig import (
    SLOT_PORTS,
    daemon_config,
    make_bridge_stats,
    make_snapshot,
    relay_stats,
    start_pair,
    wait_for,
)

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
        snap_b = to_json(pair.b.snapshot())
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


def test_snapshot_of_a_daemon_that_is_not_running(tmp_path: Path) -> None:
    """Before its bridge exists the daemon reports what its configuration says, unhealthy."""
    d = Daemon(daemon_config(tmp_path), handle_signals=False)
    assert d.health() == Health(False, ("listeners not up yet",))
    snap = to_json(d.snapshot())
    assert snap["health"] == {"ok": False, "reasons": ["listeners not up yet"]}
    assert snap["tor"] == {"enabled": False} and snap["listeners"]["up"] is False
    assert [s["port"] for s in snap["slots"]] == list(d.cfg.slots.ports)
    assert snap["pool"] == {"size": d.cfg.pool.size, "ready": 0, "stats": {}}
    assert snap["dial"] == {"dials": 0, "failures": {}} and snap["closed"] == {}
    assert "book" not in snap and "inbound_stats" not in snap
    assert snap["totals"]["bytes"]["slot_from_kaspad"] == 0
    assert "UNHEALTHY: listeners not up yet" in render_text(snap)


def test_render_a_snapshot_with_errors_and_without_tor() -> None:
    """A rendered screen for a daemon with errors: render never crashes on partial data, and a
    remote-controlled string is shown, never interpreted as markup."""
    snap = to_json(make_snapshot(bridge=make_bridge_stats(), errors=(ErrorRecord(
        0, "pool", "upstream x not ready: [tor] [red]markup[/red]"),)))
    text = render_text(snap)
    assert "not monitored" in text and "[red]markup[/red]" in text
    assert "UNHEALTHY" not in text
    render_text({})  # an empty/foreign snapshot renders too


def test_status_screen_from_a_snapshot() -> None:
    """What `kaspa-tor-bridge status` draws for a bridge with one slot relayed to an onion
    peer, the second slot empty and no inbound peer."""
    onion = f"{ONION_B.host}:16511"
    slot = relay_stats(1, "slot", SLOT_PORTS[0], peer=onion, user_agent="/kaspad:1.0/",
                       traffic=TrafficStats(2048, 4096, 3, 5),
                       rewrites=RewriteStats(onions_added=2, refreshes=1))
    snap = to_json(make_snapshot(bridge=make_bridge_stats(
        relays=(slot,), inbound=InboundEvents(accepted=4, evicted=1)), own_onion=onion))
    assert snap["slots_filled"] == 1 and snap["slots"][1]["relays"] == []
    relay = snap["slots"][0]["relays"][0]
    assert relay["peer"] == onion and relay["label"] == f"slot:{SLOT_PORTS[0]}"
    assert relay["bytes_from_kaspad"] == 2048 and relay["messages_from_remote"] == 5
    assert relay["rewrites"]["onions_added"] == 2
    assert snap["totals"]["rewrites"]["refreshes"] == 1
    screen = render_text(snap)
    for needle in ("HEALTHY", f"slot:{SLOT_PORTS[0]}", ONION_B.host[:16], "warm pool",
                   f"slot:{SLOT_PORTS[1]}", "empty: kaspad not connected",
                   "none; listening on", "recent warnings and errors", "ok (0 errors so far)",
                   "relayed  (accepted 4, evicted idle 1", "2.0 KiB", "4.0 KiB", "3/5",
                   "onions added 2", "refreshes 1", "up 1h02m"):
        assert needle in screen, (needle, screen)
    assert "UNHEALTHY" not in screen


def test_status_json_keys_are_stable() -> None:
    """Operators and `status` read these keys: a rename must be deliberate."""
    snap = to_json(make_snapshot(bridge=make_bridge_stats(
        relays=(relay_stats(1, peer="192.0.2.1:16111"), relay_stats(2, "inbound", 16300)))))
    assert list(snap) == [
        "snapshot_version", "bridge_version", "time", "uptime", "network", "mode", "health",
        "tor", "own_onion", "known_onions", "listeners", "slots", "slots_filled", "inbound",
        "pool", "dial", "closed", "inbound_stats", "book", "sync_first", "candidates", "totals",
        "recent_errors"]
    assert list(snap["inbound"][0]) == [
        "id", "kind", "label", "local_port", "peer", "user_agent", "handshake", "age",
        "bytes_from_kaspad", "bytes_from_remote", "messages_from_kaspad",
        "messages_from_remote", "buffered", "rewrites", "closing", "direct"]
    assert list(snap["pool"]["stats"]) == ["dialed", "ready", "failed", "taken", "dropped",
                                           "duplicates", "not_reading"]
    assert list(snap["closed"]) == ["ok", "error", "refused", "slot_no_request", "slot_full",
                                    "accept_failed"]
    assert list(snap["inbound_stats"]) == ["accepted", "evicted", "refused_full",
                                           "refused_duplicate", "accept_paced", "active",
                                           "max_active", "max_pending"]
    assert list(snap["book"]) == ["path", "errors", "failing", "last_error", "entries",
                                  "batches"]
    assert list(snap["book"]["entries"]) == ["not_public", "dropped", "evicted"]
    assert list(snap["book"]["batches"]) == ["batches", "dropped_batches", "failed_batches"]
    assert list(snap["totals"]["bytes"]) == ["slot_from_kaspad", "slot_from_remote",
                                             "inbound_from_kaspad", "inbound_from_remote"]
    assert list(snap["totals"]["rewrites"]) == ["onions_added", "onions_removed",
                                                "invalid_removed", "dropped",
                                                "versions_rewritten", "refreshes"]
    assert list(snap["listeners"]) == ["up", "slot_host", "slot_ports", "inbound",
                                       "kaspad_p2p"]


def test_recent_errors_collapse_repeats_and_stay_bounded() -> None:
    errs = RecentErrors(limit=3)
    for _ in range(5):
        errs.add("pool", "same")
    errs.add("tor", "other")
    assert [(e.message, e.count) for e in errs.records()] == [("same", 5), ("other", 1)]
    for i in range(10):
        errs.add("x", f"m{i}")
    assert [e.message for e in errs.records()] == ["m7", "m8", "m9"]
    errs.add("x", "y" * 2000)
    assert len(errs.records()[-1].message) == 500


def test_onion_dos_defences_are_shown() -> None:
    """Issue 12: status and /metrics say whether the published onion has tor's proof-of-work
    defence and its stream limit; a tor that lacks PoW is shown as such, not as "on"."""
    from bridge.runtime.observe import metric_families
    from bridge.tor.supervisor import TorState, TorStatus

    onion = f"{ONION_B.host}:16511"
    for pow_on, text, gauge in ((True, "proof-of-work on", 1.0),
                                (False, "proof-of-work OFF (this tor lacks it)", 0.0),
                                (None, "proof-of-work off (tor.onion_pow = false)", 0.0)):
        tor = TorStatus(state=TorState.READY, usable=True, onion_published=True,
                        onion_address=ONION_B.host, onion_port=16511, onion_pow=pow_on,
                        onion_max_streams=16)
        snap = make_snapshot(bridge=make_bridge_stats(), tor=tor, own_onion=onion)
        js = to_json(snap)
        assert js["tor"]["onion_pow"] is pow_on and js["tor"]["onion_max_streams"] == 16
        screen = render_text(js)
        assert text in screen and "streams per circuit: 16" in screen, screen
        values = {s.name: s.value for fam in metric_families(snap) for s in fam.samples}
        assert values["ktb_tor_onion_pow"] == gauge


def test_managed_tor_bridges_are_shown_redacted() -> None:
    """Issue 12: a managed tor's bridges appear in status, without their cert= secrets."""
    from dataclasses import replace

    from bridge.core.bridges import BridgeLine
    from bridge.tor.supervisor import TorState, TorStatus

    line = BridgeLine.parse("obfs4 192.0.2.10:443 0123456789ABCDEF0123456789ABCDEF01234567 "
                            "cert=SECRETCERT iat-mode=0")
    snap = make_snapshot(bridge=make_bridge_stats(),
                         tor=TorStatus(state=TorState.READY, usable=True))
    assert snap.tor is not None
    snap = replace(snap, tor=replace(snap.tor, managed=True, bridges=(line.redacted(),)))
    js = to_json(snap)
    assert js["tor"]["managed"] is True and js["tor"]["bridges"] == [line.redacted()]
    screen = render_text(js)
    assert "tor bridges" in screen and "obfs4 192.0.2.10:443" in screen
    assert "SECRETCERT" not in screen and "SECRETCERT" not in json.dumps(js)


def test_sync_first_phase_in_status_json_screen_and_metrics() -> None:
    """peers.sync_first: the phase, kaspad's answer and the switch are shown everywhere."""
    from dataclasses import replace

    from prometheus_client import generate_latest

    from bridge.runtime.observe import make_registry
    from bridge.runtime.stats import SyncStats

    direct = replace(relay_stats(1, peer="192.0.2.1:16111"), direct=True)
    syncing = SyncStats(phase="syncing", kaspad_synced=False, reason="", switched_ago=None,
                        last_answer_ago=2.0, rpc="127.0.0.1:16110", rpc_problem="",
                        switch_in=3600.0)
    snap = make_snapshot(bridge=replace(make_bridge_stats(relays=(direct,)), sync=syncing))
    js = to_json(snap)
    assert js["sync_first"]["phase"] == "syncing" and js["sync_first"]["kaspad_synced"] is False
    assert js["slots"][0]["relays"][0]["direct"] is True
    screen = render_text(js, width=200)
    assert "SYNCING over direct IP peers (kaspad syncing; RPC 127.0.0.1:16110)" in screen
    assert "at the latest in 1h00m" in screen and "192.0.2.1:16111 (direct)" in screen

    class Source:
        def __init__(self, s: object) -> None:
            self.s = s

        def snapshot(self) -> object:
            return self.s

        def health(self) -> object:
            return self.s.health  # type: ignore[attr-defined]

    text = generate_latest(make_registry(Source(snap))).decode()  # type: ignore[arg-type]
    assert 'ktb_sync_phase{phase="syncing"} 1.0' in text
    assert 'ktb_sync_phase{phase="tor"} 0.0' in text
    assert "ktb_sync_kaspad_synced 0.0" in text and "ktb_slots_direct 1.0" in text

    switched = replace(syncing, phase="tor", kaspad_synced=True, switched_ago=65.0,
                       reason="kaspad reported synced", switch_in=None,
                       closed_direct_relays=2, closed_direct_warm=1)
    snap = make_snapshot(bridge=replace(make_bridge_stats(), sync=switched))
    screen = render_text(to_json(snap), width=200)
    assert ("Tor only since 1m05s ago: kaspad reported synced; closed 2 direct slot relays, "
            "1 direct warm connections") in screen
    text = generate_latest(make_registry(Source(snap))).decode()  # type: ignore[arg-type]
    assert 'ktb_sync_phase{phase="tor"} 1.0' in text and "ktb_slots_direct 0.0" in text
    unknown = replace(syncing, kaspad_synced=None, rpc_problem="kaspad's RPC is not reachable")
    screen = render_text(to_json(make_snapshot(bridge=replace(make_bridge_stats(),
                                                              sync=unknown))), width=200)
    assert "kaspad's sync state unknown: kaspad's RPC is not reachable" in screen
