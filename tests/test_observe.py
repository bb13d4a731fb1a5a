"""/metrics, /health and /status on the loopback observability server.

What is rendered from a snapshot is tested from hand-built snapshots (no daemon, no Tor); the
server, a live relay's series and the secrets end to end with real daemons."""

from __future__ import annotations

import json
import logging
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

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
        label = f"slot:{slot}"
        live_from_kaspad = value(m, "ktb_peer_bytes_total", peer=label, kind="slot",
                                 direction="from_kaspad")
        assert live_from_kaspad > 0
        assert value(m, "ktb_peer_messages_total", peer=label, kind="slot",
                     direction="from_remote") >= 2  # Version, Verack, ...
        assert value(m, "ktb_relay_bytes_total", kind="slot",
                     direction="from_kaspad") == live_from_kaspad
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
        assert f":{b_port}" not in text and str(pair.socks.port) not in text

        status, _, body = await aget(pair.metrics_port, "/status")
        snap = json.loads(body)
        assert status == 200
        relays = snap["slots"][0]["relays"]
        assert relays[0]["peer"] == f"{ONION_B.host}:16511" and relays[0]["handshake"]
        assert snap["slots_filled"] == 1 and snap["slots"][1]["relays"] == []
        assert snap["pool"]["size"] == 1 and snap["tor"] == {"enabled": False}

        # close kaspad's side: the live series goes, the totals keep its bytes
        sa.close()
        await wait_for(lambda: a.bridge is not None and not a.bridge.relays)
        m2 = samples((await aget(pair.metrics_port, "/metrics"))[2].decode())
        assert ("ktb_peer_bytes_total", (("direction", "from_kaspad"), ("kind", "slot"),
                                         ("peer", label))) not in m2
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
    missing = [(p, v) for p, v in counters if v not in in_json or v not in in_metrics]
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
    assert value(m, "ktb_info", version="0.0.test", network="kaspa-simnet",
                 mode="tor-only") == 1
    assert ("ktb_peer_buffered_bytes", (("kind", "slot"), ("peer", "slot:16200"))) in m
    assert ("ktb_peer_bytes_total", (("direction", "from_remote"), ("kind", "inbound"),
                                     ("peer", "inbound#2"))) in m
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
    (metrics,) = free_ports(1)
    cfg = daemon_config(tmp_path, **{
        "tor.control": f"127.0.0.1:{tornet.onion_host.control_port}",
        "tor.control_password": TORNET_CONTROL_PASSWORD, "tor.listen_onion": True,
        "tor.socks": f"127.0.0.1:{tornet.client.socks_port}", "tor.bootstrap_timeout": 60.0,
        "metrics.listen": f"127.0.0.1:{metrics}"})
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
