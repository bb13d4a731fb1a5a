"""/metrics, /health and /status on the loopback observability server."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from bridge.core.relay import Closed
from bridge.rig.tornet import TorNetwork, free_ports
from bridge.runtime.daemon import Daemon
from bridge.runtime.observe import ObserveError, ObserveServer, RelayLedger
from bridge.runtime.status import render_text
from bridge.tor.control import BootstrapStatus
from bridge.tor.keys import load_key
from bridge.tor.supervisor import TorState, TorStatus
from tests.conftest import TORNET_CONTROL_PASSWORD
from tests.integration.conftest import ONION_B
from tests.observe_rig import aget, daemon_config, start_pair, wait_for


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return m[(name, tuple(sorted(labels.items())))]


async def test_metrics_follow_a_live_relay_and_keep_totals_after_it_closes(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    pair = await start_pair(nursery, tmp_path)
    a = pair.a
    assert a.bridge is not None and a.observe is not None
    assert isinstance(a.bridge.relays, RelayLedger)
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


async def test_health_reports_tor_and_onion(tmp_path: Path, nursery: trio.Nursery) -> None:
    (metrics,) = free_ports(1)
    cfg = daemon_config(tmp_path, **{"metrics.listen": f"127.0.0.1:{metrics}"})
    d = Daemon(cfg, handle_signals=False)
    await nursery.start(d.run)
    try:
        status, _, body = await aget(metrics, "/health")
        assert status == 200 and json.loads(body) == {"status": "ok"}

        class FakeSupervisor:
            endpoint = "127.0.0.1:9051"
            status = TorStatus(state=TorState.BOOTSTRAPPING,
                               bootstrap=BootstrapStatus(42, "loading_descriptors", "Loading"))

        d.supervisor = FakeSupervisor()  # type: ignore[assignment]
        status, headers, body = await aget(metrics, "/health")
        assert status == 503 and headers["content-type"] == "application/json"
        assert json.loads(body) == {"status": "unhealthy",
                                    "reasons": ["tor not usable (state bootstrapping, "
                                                "bootstrap 42%)"]}
        m = samples((await aget(metrics, "/metrics"))[2].decode())
        assert value(m, "ktb_tor_bootstrap_progress") == 42
        assert value(m, "ktb_tor_usable") == 0
        assert value(m, "ktb_tor_state", state="bootstrapping") == 1
        assert value(m, "ktb_tor_state", state="ready") == 0
        assert value(m, "ktb_healthy") == 0
        FakeSupervisor.status = TorStatus(state=TorState.READY, usable=True, restarts_seen=2,
                                          reconnects=3)
        status, _, _ = await aget(metrics, "/health")
        assert status == 200  # listen_onion is off: no onion needed
        m = samples((await aget(metrics, "/metrics"))[2].decode())
        assert value(m, "ktb_tor_restarts_total") == 2
        assert value(m, "ktb_tor_reconnects_total") == 3
    finally:
        d.request_stop()


async def test_http_server_is_strict(tmp_path: Path, nursery: trio.Nursery) -> None:
    (metrics,) = free_ports(1)
    d = Daemon(daemon_config(tmp_path, **{"metrics.listen": f"127.0.0.1:{metrics}"}),
               handle_signals=False)
    await nursery.start(d.run)
    try:
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
    d = Daemon(daemon_config(tmp_path, **{"metrics.listen": "0.0.0.0:9464"}),
               handle_signals=False)
    with pytest.raises(ObserveError, match="not a loopback address"):
        await d.run()
    with pytest.raises(ObserveError):
        ObserveServer(d, "192.0.2.1", 9464)


async def test_busy_metrics_port_aborts_startup(tmp_path: Path) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    d = Daemon(daemon_config(tmp_path, **{"metrics.listen": f"127.0.0.1:{port}"}),
               handle_signals=False)
    with pytest.raises(Exception, match=r"cannot listen on metrics\.listen"):
        await d.run()
    listener.close()


def test_ledger_records_closed_relay_errors() -> None:
    from bridge.core.errors import BridgeError, Fault
    from bridge.runtime.status import RecentErrors, Totals

    class R:
        policy = type("P", (), {"counters": {"onions_added": 2}})()
        closed = Closed("boom", BridgeError("peer misbehaved", fault=Fault.REMOTE))

        def stats(self) -> dict[str, int]:
            return {"bytes_from_kaspad": 10, "bytes_from_remote": 20, "messages_from_kaspad": 1,
                    "messages_from_remote": 2, "buffered": 0}

    from bridge.runtime.bridge import RelayInfo

    info = RelayInfo(7, "inbound", 16300, None, R(), 0.0)  # type: ignore[arg-type]
    totals, errors = Totals(), RecentErrors()
    ledger = RelayLedger({7: info}, totals, errors)
    del ledger[7]
    assert totals.bytes[("inbound", "from_remote")] == 20
    assert totals.rewrites["onions_added"] == 2 and totals.closed["inbound"] == 1
    assert errors.as_list()[0]["source"] == "inbound#7"
    assert "peer misbehaved" in errors.as_list()[0]["message"]


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
    d = Daemon(cfg, handle_signals=False)
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
