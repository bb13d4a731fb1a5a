"""/metrics, /health and /status on the loopback observability server.

What is rendered from a snapshot is tested from hand-built snapshots (no daemon, no Tor); the
server, a live relay's series and the secrets end to end with real daemons."""

from __future__ import annotations

import json
import logging
import platform
import re
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from bridge import __version__
from bridge.core.counters import Counters
from bridge.core.errors import BridgeError, Fault
from bridge.core.relay import Closed
from bridge.net.pool import DialStats, FaultCounts
from bridge.rig.tornet import TorNetwork, free_ports
from bridge.runtime.bridge import Bridge, BridgeOptions, RelayInfo
from bridge.runtime.daemon import Daemon, StartupError
from bridge.runtime.observe import ObserveError, ObserveServer
from bridge.runtime.service import build_daemon
from bridge.runtime.stats import Health, Snapshot, health
from bridge.runtime.status import render_text
from bridge.store.book import BookStats
from bridge.tor.control import BootstrapStatus
from bridge.tor.keys import load_key
from bridge.tor.supervisor import TOR_COUNTERS, TorState, TorStatus
from tests.conftest import TORNET_CONTROL_PASSWORD
from tests.integration.conftest import ONION_B
from tests.observe_rig import (
    address_rich_snapshot,
    aget,
    daemon_config,
    make_bridge_stats,
    make_snapshot,
    relay_stats,
    start_pair,
    wait_for,
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return m[(name, tuple(sorted(labels.items())))]


class Source:
    """A snapshot source for the server: a fixed snapshot, and its health."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def snapshot(self) -> Snapshot:
        return self.snap

    def health(self) -> Health:
        return self.snap.health


def get(server: ObserveServer, path: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET answered by the server (sans-IO)."""
    raw = server.respond(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    ctype = next(ln.split(":", 1)[1].strip() for ln in lines
                 if ln.lower().startswith("content-type:"))
    return int(lines[0].split(" ")[1]), ctype, body


def served(snap: Snapshot) -> tuple[dict[str, Any], dict[tuple[str, tuple[tuple[str, str], ...]],
                                                          float]]:
    """(/status JSON, /metrics samples) a server over ``snap`` answers."""
    server = ObserveServer(Source(snap), "127.0.0.1", 0)
    status, _, body = get(server, "/status")
    assert status == 200
    mstatus, ctype, mbody = get(server, "/metrics")
    assert mstatus == 200 and ctype.startswith("text/plain; version=0.0.4")
    return json.loads(body), samples(mbody.decode())


async def test_metrics_follow_a_live_relay_and_keep_totals_after_it_closes(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    pair = await start_pair(nursery, tmp_path)
    a = pair.a
    assert a.bridge is not None and a.observe is not None
    try:
        await wait_for(lambda: a.bridge is not None and a.bridge.pool.ready_count >= 1)
        slot = a.bridge.slot_ports[0]
        sa = pair.emu_a.dial("127.0.0.1", slot)
        assert await trio.to_thread.run_sync(sa.wait_handshake, 10.0), repr(sa)
        ok = await trio.to_thread.run_sync(
            lambda: sa.wait_for(lambda s: s.remote_addresses is not None, 5))
        assert ok

        status, headers, body = await aget(pair.metrics_port, "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        text = body.decode()
        m = samples(text)
        assert value(m, "ktb_listeners_up") == 1
        assert value(m, "ktb_healthy") == 1
        assert value(m, "ktb_slots") == 2 and value(m, "ktb_slots_filled") == 1
        assert value(m, "ktb_tor_monitored") == 0
        assert value(m, "ktb_dials_total") >= 1
        assert value(m, "ktb_pool_events_total", event="taken") == 1
        assert value(m, "ktb_relays_live", kind="slot") == 1
        assert value(m, "ktb_relays_live", kind="inbound") == 0
        live_from_kaspad = value(m, "ktb_relay_bytes_total", kind="slot",
                                 direction="from_kaspad")
        assert live_from_kaspad > 0
        relayed = value(m, "ktb_relay_messages_total", kind="slot", direction="from_remote")
        assert relayed >= 2  # Version, Verack, ...
        # every message handed on was timed (the daemon records the observations)
        assert value(m, "ktb_relay_message_latency_seconds_count", kind="slot",
                     direction="from_remote") == relayed
        assert value(m, "ktb_relay_message_latency_seconds_bucket", kind="slot",
                     direction="from_remote", le="+Inf") == relayed
        assert value(m, "ktb_dial_duration_seconds_count", route="tor", outcome="ok") >= 1
        assert value(m, "ktb_dial_duration_seconds_sum", route="tor", outcome="ok") > 0
        assert 0 < value(m, "ktb_first_warm_upstream_seconds") < 10
        assert ("ktb_tor_usable_to_warm_seconds_count", ()) not in m  # no Tor monitored
        assert value(m, "process_resident_memory_bytes") > 0
        assert value(m, "process_open_fds") > 0
        assert value(m, "ktb_build_info", version=__version__,
                     python=platform.python_version(), network="kaspa-simnet",
                     mode="tor-only") == 1
        # no per-connection series: no label names a connection
        assert "peer=" not in text and "inbound#" not in text and f"slot:{slot}" not in text
        for action in ("onions_added", "onions_removed", "invalid_removed", "dropped"):
            assert ("ktb_rewrites_total", (("action", action),)) in m
        for reason in ("tor", "local", "remote"):
            assert ("ktb_dial_failures_total", (("reason", reason),)) in m
        for event in ("accepted", "evicted", "refused_full"):
            assert ("ktb_inbound_events_total", (("event", event),)) in m
        assert value(m, "ktb_book_errors_total") == 0 and value(m, "ktb_book_failing") == 0
        # privacy: no remote address, no onion in any label or value
        assert ONION_B.host not in text and ".onion" not in text
        b_port = pair.b.bridge.inbound_port if pair.b.bridge else None
        assert f":{b_port}" not in text
        # (label values: the digits of a port may well occur inside a process_* value)
        assert not [v for _, labels in m for _, v in labels
                    if str(pair.socks.port) in v or str(b_port) in v]

        status, _, body = await aget(pair.metrics_port, "/status")
        snap = json.loads(body)
        assert status == 200
        relays = snap["slots"][0]["relays"]
        assert relays[0]["peer"] == f"{ONION_B.host}:16511" and relays[0]["handshake"]
        assert snap["slots_filled"] == 1 and snap["slots"][1]["relays"] == []
        assert snap["pool"]["size"] == 1 and snap["tor"] == {"enabled": False}

        # close kaspad's side: the live count goes down, the totals keep its bytes
        sa.close()
        await wait_for(lambda: a.bridge is not None and not a.bridge.relays)
        m2 = samples((await aget(pair.metrics_port, "/metrics"))[2].decode())
        assert value(m2, "ktb_relays_live", kind="slot") == 0
        assert value(m2, "ktb_relay_bytes_total", kind="slot",
                     direction="from_kaspad") >= live_from_kaspad
        assert sum(value(m2, "ktb_relays_closed_total", outcome=o)
                   for o in ("ok", "error", "refused")) == 1
        for action in ("onions_added", "onions_removed", "invalid_removed", "dropped",
                       "versions_rewritten"):
            assert value(m2, "ktb_rewrites_total", action=action) >= value(
                m, "ktb_rewrites_total", action=action)
    finally:
        a.request_stop()
        pair.b.request_stop()
        await trio.to_thread.run_sync(pair.emu_a.stop)
        await trio.to_thread.run_sync(pair.emu_b.stop)


def test_health_reports_tor_and_onion() -> None:
    """/health and the Tor series from snapshots of a tor-only daemon whose Tor bootstraps."""
    booting = TorStatus(state=TorState.BOOTSTRAPPING,
                        bootstrap=BootstrapStatus(42, "loading_descriptors", "Loading"))
    verdict = health(listeners_up=True, tor=booting, needs_tor=True, needs_onion=False)
    assert verdict == Health(False, ("tor not usable (state bootstrapping, bootstrap 42%)",))
    snap = make_snapshot(bridge=make_bridge_stats(), tor=booting, health=verdict)
    server = ObserveServer(Source(snap), "127.0.0.1", 0)
    status, ctype, body = get(server, "/health")
    assert status == 503 and ctype == "application/json"
    assert json.loads(body) == {"status": "unhealthy",
                                "reasons": ["tor not usable (state bootstrapping, "
                                            "bootstrap 42%)"]}
    _, m = served(snap)
    assert value(m, "ktb_tor_bootstrap_progress") == 42
    assert value(m, "ktb_tor_usable") == 0
    assert value(m, "ktb_tor_state", state="bootstrapping") == 1
    assert value(m, "ktb_tor_state", state="ready") == 0
    assert value(m, "ktb_healthy") == 0
    ready = TorStatus(state=TorState.READY, usable=True, restarts_seen=2, reconnects=3)
    verdict = health(listeners_up=True, tor=ready, needs_tor=True, needs_onion=False)
    assert verdict == Health(True)  # listen_onion is off: no onion needed
    snap = make_snapshot(bridge=make_bridge_stats(), tor=ready, health=verdict)
    server = ObserveServer(Source(snap), "127.0.0.1", 0)
    status, _, body = get(server, "/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    _, m = served(snap)
    assert value(m, "ktb_tor_restarts_total") == 2
    assert value(m, "ktb_tor_reconnects_total") == 3
    assert health(listeners_up=True, tor=ready, needs_tor=True, needs_onion=True) == Health(
        False, ("onion service not published",))


#: counters that are not in a Counters set, by the class holding them
OTHER_COUNTERS: dict[type, tuple[str, ...]] = {
    TorStatus: TOR_COUNTERS, DialStats: ("dials",), BookStats: ("errors",)}


def _counters(obj: object, path: str = "") -> list[tuple[str, int]]:
    """(path, value) of every counter in a snapshot: the fields of each Counters set, Tor's
    counters, dial attempts and address book errors."""
    out: list[tuple[str, int]] = []
    if isinstance(obj, Counters):
        return [(f"{path}.{k}", v) for k, v in obj.items()]
    out += [(f"{path}.{k}", getattr(obj, k)) for k in OTHER_COUNTERS.get(type(obj), ())]
    if isinstance(obj, tuple):
        for i, item in enumerate(obj):
            out += _counters(item, f"{path}[{i}]")
    elif is_dataclass(obj):
        for f in fields(obj):
            out += _counters(getattr(obj, f.name), f"{path}.{f.name}")
    return out


def _numbered(obj: Any, start: list[int]) -> Any:
    """``obj`` with every counter set to a value of its own (1001, 1002, ...)."""
    if isinstance(obj, Counters):
        values = {}
        for k, _ in obj.items():
            start[0] += 1
            values[k] = start[0]
        return replace(obj, **values)
    if isinstance(obj, tuple):
        return tuple(_numbered(item, start) for item in obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        values = {f.name: _numbered(getattr(obj, f.name), start) for f in fields(obj)}
        for k in OTHER_COUNTERS.get(type(obj), ()):
            start[0] += 1
            values[k] = start[0]
        return replace(obj, **values)
    return obj


def _json_numbers(obj: Any) -> set[float]:
    if isinstance(obj, dict):
        return set().union(*(_json_numbers(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_json_numbers(v) for v in obj)) if obj else set()
    return {obj} if isinstance(obj, int | float) and not isinstance(obj, bool) else set()


def test_every_counter_shows_in_status_and_metrics() -> None:
    """/status and /metrics are rendered from one snapshot: every counter in it (each with a
    value of its own here) appears in both, so they cannot disagree on a fact."""
    relays = (relay_stats(1, "slot", 16200, peer="192.0.2.1:16111"),
              relay_stats(2, "inbound", 16300))
    snap = make_snapshot(bridge=make_bridge_stats(relays=relays),
                         tor=TorStatus(state=TorState.READY, usable=True))
    snap = _numbered(snap, [1000])
    counters = _counters(snap)
    assert len(counters) > 60  # pool, dial, closed, inbound, book, writer, relays, totals, tor
    assert len({v for _, v in counters}) == len(counters)
    status, m = served(snap)
    in_json = _json_numbers(status)
    in_metrics = set(m.values())
    # a live connection's own counters are /status only: /metrics has no per-connection
    # series (their sums are the totals, which are counters of their own here)
    per_connection = [(p, v) for p, v in counters if p.startswith(".bridge.relays[")]
    assert per_connection and all(v not in in_metrics for _, v in per_connection)
    missing = [(p, v) for p, v in counters if v not in in_json
               or (v not in in_metrics and (p, v) not in per_connection)]
    assert not missing, f"counters missing from /status or /metrics: {missing}"
    # the refresh counter in particular (it was missing from /metrics)
    assert value(m, "ktb_rewrites_total", action="refreshes") == \
        status["totals"]["rewrites"]["refreshes"]


def test_metrics_from_a_snapshot() -> None:
    """Series names and labels (what operators scrape), from a hand-built snapshot."""
    slot = relay_stats(1, "slot", 16200, peer=f"{ONION_B.host}:16511")
    snap = make_snapshot(bridge=make_bridge_stats(
        relays=(slot, relay_stats(2, "inbound", 16300)), dials=3,
        failures=FaultCounts(kaspad=2)), known_onions=4, own_onion=f"{ONION_B.host}:16511")
    _, m = served(snap)
    assert value(m, "ktb_slots") == 2 and value(m, "ktb_slots_filled") == 1
    assert value(m, "ktb_inbound_connections") == 1
    assert value(m, "ktb_gossip_known_onions") == 4
    assert value(m, "ktb_tor_monitored") == 0 and value(m, "ktb_listeners_up") == 1
    assert value(m, "ktb_uptime_seconds") == 3725.0
    assert value(m, "ktb_dials_total") == 3
    for reason, n in (("tor", 0), ("local", 0), ("remote", 0), ("kaspad", 2)):
        assert value(m, "ktb_dial_failures_total", reason=reason) == n
    assert value(m, "ktb_candidates") == 3 and value(m, "ktb_candidates_backing_off") == 1
    assert value(m, "ktb_build_info", version="0.0.test", python=platform.python_version(),
                 network="kaspa-simnet", mode="tor-only") == 1
    assert value(m, "ktb_info", version="0.0.test", network="kaspa-simnet",
                 mode="tor-only") == 1  # deprecated, kept for one release
    # aggregates instead of one series per connection (peer="slot:<port>"/"inbound#<id>")
    assert not [k for k in m if any(label == "peer" for label, _ in k[1])]
    assert value(m, "ktb_relays_live", kind="slot") == 1
    assert value(m, "ktb_relays_live", kind="inbound") == 1
    # every histogram is exported with all its label sets, also before any observation
    for kind in ("slot", "inbound"):
        for direction in ("from_kaspad", "from_remote"):
            assert value(m, "ktb_relay_message_latency_seconds_count", kind=kind,
                         direction=direction) == 0
    for route in ("tor", "direct"):
        for outcome in ("ok", "failed"):
            assert value(m, "ktb_dial_duration_seconds_bucket", route=route, outcome=outcome,
                         le="+Inf") == 0
    # before the bridge exists: no pool series, zero totals
    _, m0 = served(make_snapshot(health=Health(False, ("listeners not up yet",))))
    assert value(m0, "ktb_listeners_up") == 0 and ("ktb_pool_size", ()) not in m0
    assert value(m0, "ktb_relay_bytes_total", kind="slot", direction="from_kaspad") == 0


async def test_http_server_is_strict(tmp_path: Path, nursery: trio.Nursery) -> None:
    (metrics,) = free_ports(1)
    d = build_daemon(daemon_config(tmp_path, **{"metrics.listen": f"127.0.0.1:{metrics}"}),
                     handle_signals=False)
    await nursery.start(d.run)
    try:
        status, _, body = await aget(metrics, "/health")
        assert status == 200 and json.loads(body) == {"status": "ok"}
        assert (await aget(metrics, "/nope"))[0] == 404
        assert (await aget(metrics, "/metrics", method="POST"))[0] == 405
        # DNS rebinding: a page from evil.example resolving to 127.0.0.1
        assert (await aget(metrics, "/status", host="evil.example"))[0] == 403
        assert (await aget(metrics, "/status", host="localhost"))[0] == 200
        st, _, body = await aget(metrics, "/health", method="HEAD")
        assert st == 200 and body == b""
        assert (await aget(metrics, "/", raw=b"garbage\r\n\r\n"))[0] == 400
        big = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
        assert (await aget(metrics, "/", raw=big))[0] == 431
    finally:
        d.request_stop()


async def test_non_loopback_metrics_listen_is_refused(tmp_path: Path) -> None:
    cfg = daemon_config(tmp_path, **{"metrics.listen": "0.0.0.0:9464"})
    with pytest.raises(ObserveError, match="not a loopback address"):
        build_daemon(cfg, handle_signals=False)
    d = Daemon(cfg, handle_signals=False)
    with pytest.raises(ObserveError):
        ObserveServer(d, "192.0.2.1", 9464)


async def test_daemon_without_its_metrics_server_does_not_start(tmp_path: Path) -> None:
    """metrics.listen set on a daemon built without the server: a loud startup error, not a
    daemon silently without /metrics."""
    d = Daemon(daemon_config(tmp_path, **{"metrics.listen": "127.0.0.1:9464"}),
               handle_signals=False)
    with pytest.raises(StartupError, match="build_daemon"):
        await d.run()


async def test_busy_metrics_port_aborts_startup(tmp_path: Path) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    d = build_daemon(daemon_config(tmp_path, **{"metrics.listen": f"127.0.0.1:{port}"}),
                     handle_signals=False)
    with pytest.raises(Exception, match=r"cannot listen on metrics\.listen"):
        await d.run()
    listener.close()


async def test_a_closed_relay_is_kept_in_the_totals_and_its_error_in_recent_errors() -> None:
    """The bridge folds a closed relay's counters into its totals and its error into the
    recent errors (what RelayLedger did by replacing ``Bridge.relays``)."""

    class R:
        policy = type("P", (), {"counters": {"onions_added": 2, "refreshes": 1},
                                "remote": type("Peer", (), {"user_agent": "", "node_id": b""})()})()
        closed = Closed("boom", BridgeError("peer misbehaved", fault=Fault.REMOTE))

        def stats(self) -> dict[str, int]:
            return {"bytes_from_kaspad": 10, "bytes_from_remote": 20, "messages_from_kaspad": 1,
                    "messages_from_remote": 2, "buffered": 0}

    bridge = Bridge(BridgeOptions(kaspad_p2p=("127.0.0.1", 1), candidates=[]))
    info = RelayInfo(7, "inbound", 16300, None, R(), 0.0)  # type: ignore[arg-type]
    bridge.relays[7] = info
    live = bridge.stats()
    assert live.totals.inbound.bytes_from_remote == 20 and len(live.relays) == 1
    del bridge.relays[7]
    bridge._retire(info)
    st = bridge.stats()
    assert st.relays == ()
    assert st.totals.inbound.bytes_from_remote == 20 and st.totals.slot.bytes_from_remote == 0
    assert st.totals.rewrites.onions_added == 2 and st.totals.rewrites.refreshes == 1
    errors = bridge.errors.records()
    assert errors[0].source == "inbound#7"
    assert "peer misbehaved" in errors[0].message


@pytest.mark.tor
async def test_logs_and_endpoints_never_show_password_or_key(
        tornet: TorNetwork, tmp_path: Path, nursery: trio.Nursery,
        caplog: pytest.LogCaptureFixture) -> None:
    """A daemon authenticating with a control password and publishing its onion, logging at
    DEBUG (stem at DEBUG too): neither the password nor the key blob appears in the logs, in
    /status or in /metrics."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="stem")
    metrics, public = free_ports(2)
    cfg = daemon_config(tmp_path, **{
        "tor.control": f"127.0.0.1:{tornet.onion_host.control_port}",
        "tor.control_password": TORNET_CONTROL_PASSWORD, "tor.listen_onion": True,
        "tor.socks": f"127.0.0.1:{tornet.client.socks_port}", "tor.bootstrap_timeout": 60.0,
        "metrics.listen": f"127.0.0.1:{metrics}",
        "metrics.public_listen": f"127.0.0.1:{public}"})
    d = build_daemon(cfg, handle_signals=False)
    await nursery.start(d.run)
    try:
        assert d.supervisor is not None and d.supervisor.status.onion_published
        key = load_key(cfg.tor.onion_key_file)
        assert key is not None
        st, _, status_body = await aget(metrics, "/status")
        assert st == 200
        snap = json.loads(status_body)
        print(render_text(snap))  # the screen `status` shows (pytest -s)
        assert snap["tor"]["auth_method"] == "HASHEDPASSWORD"
        assert snap["own_onion"].startswith(key.service_id)
        assert snap["health"] == {"ok": True, "reasons": []}
        hst, _, _ = await aget(metrics, "/health")
        assert hst == 200
        metrics_body = (await aget(metrics, "/metrics"))[2]
        m = samples(metrics_body.decode())
        assert value(m, "ktb_tor_onion_published") == 1
        assert value(m, "ktb_tor_bootstrap_progress") == 100
        assert value(m, "ktb_tor_listen_onion") == 1
        assert ("ktb_tor_usable_to_warm_seconds_count", ()) in m  # Tor is monitored
        # the public endpoint: the same address-free metrics, no /status, no onion anywhere
        pst, _, public_body = await aget(public, "/metrics")
        assert pst == 200 and b"ktb_tor_onion_published 1.0" in public_body
        assert (await aget(public, "/status"))[0] == 404
        for text in (metrics_body, public_body):
            assert key.service_id.encode() not in text and b".onion" not in text
    finally:
        d.request_stop()
        await wait_for(lambda: d.supervisor is not None
                       and d.supervisor.status.state is TorState.STOPPED, 10)
    logs = caplog.text
    assert "authenticated with HASHEDPASSWORD" in logs  # the logs were captured
    secrets_ = [TORNET_CONTROL_PASSWORD, key.blob_content(), key.blob_content()[:40]]
    for secret in secrets_:
        assert secret not in logs
        assert secret.encode() not in status_body
        assert secret.encode() not in metrics_body
    assert key.service_id.encode() not in metrics_body  # the onion is not in metrics either


async def test_time_to_warm_upstream_after_start_and_after_tor_comes_back(
        tmp_path: Path) -> None:
    """The daemon's warm-up timings: the first warm upstream after the start (once), and the
    next one after Tor became usable, at startup and again after each loss."""
    d = Daemon(daemon_config(tmp_path), handle_signals=False)
    d._run_at = trio.current_time()
    d._on_tor_change(TorStatus(state=TorState.READY, usable=True))
    await trio.sleep(0.2)
    d._on_warm()
    assert d.first_warm_seconds is not None and 0.2 <= d.first_warm_seconds < 2
    first = d.tor_to_warm.snapshot()
    assert first.count == 1 and 0.2 <= first.sum < 2
    await trio.sleep(0.1)
    d._on_warm()  # another warm upstream while Tor stayed up: nothing new
    assert d.tor_to_warm.snapshot().count == 1 and d.first_warm_seconds < 2
    d._on_tor_change(TorStatus(state=TorState.DOWN, usable=False))
    d._on_tor_change(TorStatus(state=TorState.READY, usable=True, reconnects=1))
    await trio.sleep(0.1)
    d._on_warm()
    again = d.tor_to_warm.snapshot()
    assert again.count == 2 and again.sum - first.sum >= 0.1


# ------------------------------------------------------------------ the public /metrics

#: every address a rich snapshot holds (peers, own onion, Tor's listeners, errors, warnings)
ADDRESSES = (ONION_B.host, "192.0.2.1", "2001:db8::7", "198.51.100.23", "203.0.113.9",
             "10.11.12.13", "127.0.0.1")
#: its ports (looked for in label values: their digits may occur inside a process_* value)
PORTS = ("9051", "9050", "16511", "16300", "16200", "16201")


def test_public_metrics_are_address_free_and_serve_nothing_else() -> None:
    """metrics.public_listen: /metrics holds no address or onion of a snapshot full of them
    (the loopback /status does), /health is bare, everything else is 404, whatever the Host."""
    snap = address_rich_snapshot()
    private = ObserveServer(Source(snap), "127.0.0.1", 0)
    status_body = get(private, "/status")[2].decode()
    for addr in (ONION_B.host, "192.0.2.1", "2001:db8::7", "10.11.12.13", "203.0.113.9"):
        assert addr in status_body  # the snapshot does hold them
    public = ObserveServer(Source(snap), "192.0.2.50", 0, public=True)  # not loopback: fine
    for host in ("127.0.0.1", "evil.example", "192.0.2.50:9465"):
        raw = public.respond(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert raw.startswith(b"HTTP/1.1 200 ")
    code, ctype, body = get(public, "/metrics")
    assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
    text = body.decode()
    m = samples(text)
    assert value(m, "ktb_tor_onion_published") == 1 and value(m, "ktb_relays_live",
                                                               kind="slot") == 2
    assert value(m, "ktb_dial_duration_seconds_count", route="tor", outcome="ok") == 2
    assert value(m, "ktb_tor_usable_to_warm_seconds_bucket", le="60.0") == 2
    assert value(m, "process_resident_memory_bytes") > 0
    for addr in ADDRESSES:
        assert addr not in text, f"{addr} leaks into the public /metrics"
    assert not [(k, v) for k in m for _, v in k[1] if any(p in v for p in PORTS)]
    # no label value looks like an address or a connection (samples of the snapshot's
    # families; python_info's version is a dotted number, not an address)
    for (name, labels), _ in m.items():
        for label, val in labels:
            assert not re.search(r"\.onion|\d+\.\d+\.\d+\.\d+|:\d|#\d", val), (name, label)
    for path in ("/status", "/", "/status?x=1", "/nope"):
        assert get(public, path)[0] == 404
    code, ctype, body = get(public, "/health")
    assert code == 200 and json.loads(body) == {"status": "ok"}
    sick = ObserveServer(Source(replace(snap, health=Health(False, (
        f"tor not usable; own onion {ONION_B.host}",)))), "0.0.0.0", 0, public=True)
    code, _, body = get(sick, "/health")
    assert code == 503 and json.loads(body) == {"status": "unhealthy"}
    assert get(private, "/status")[0] == 200  # the loopback server keeps /status


async def test_public_listen_serves_only_metrics_beside_the_loopback_server(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    metrics, public = free_ports(2)
    cfg = daemon_config(tmp_path, **{"metrics.listen": f"127.0.0.1:{metrics}",
                                     "metrics.public_listen": f"127.0.0.1:{public}"})
    d = build_daemon(cfg, handle_signals=False)
    await nursery.start(d.run)
    try:
        status, headers, body = await aget(public, "/metrics", host="bridge.example")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        m = samples(body.decode())
        assert value(m, "ktb_listeners_up") == 1 and value(m, "process_open_fds") > 0
        assert (await aget(public, "/status"))[0] == 404
        assert (await aget(public, "/status", host="localhost"))[0] == 404
        st, _, body = await aget(public, "/health")
        assert st == 200 and json.loads(body) == {"status": "ok"}
        assert (await aget(metrics, "/status"))[0] == 200
    finally:
        d.request_stop()


async def test_public_listen_beyond_loopback_is_accepted(tmp_path: Path) -> None:
    cfg = daemon_config(tmp_path, **{"metrics.public_listen": "0.0.0.0:9465"})
    d = build_daemon(cfg, handle_signals=False)
    assert isinstance(d.public_observe, ObserveServer) and d.public_observe.public
    assert d.observe is None
    with pytest.raises(Exception, match="public_listen"):
        daemon_config(tmp_path, **{"metrics.listen": "127.0.0.1:9465",
                                   "metrics.public_listen": "0.0.0.0:9465"})
