"""TorControl / TorSupervisor against a scripted control port (no tor needed)."""

from __future__ import annotations

import logging
import os
import stat
import tracemalloc
from pathlib import Path

import pytest
import trio

from bridge.tor.control import ControlAuth, ControlEndpoint, OnionDefenses, TorControl
from bridge.tor.errors import (
    AuthenticationError,
    ControlConnectionLost,
    ControlPortUnreachable,
    ControlProtocolError,
    ControlTimeout,
    CookieUnreadable,
    NotAControlPort,
    OnionPublishError,
    PasswordRejected,
    PasswordRequired,
    TorUnavailable,
)
from bridge.tor.keys import load_key
from bridge.tor.supervisor import Backoff, OnionSpec, TorState, TorSupervisor
from tests.tor.scripted_control import Override, ScriptedControl

NOAUTH = ControlAuth(password_env=None)


def ep(s: ScriptedControl) -> ControlEndpoint:
    return ControlEndpoint.tcp("127.0.0.1", s.port)


async def test_null_auth_and_queries(scripted: ScriptedControl) -> None:
    async with await TorControl.connect(ep(scripted), NOAUTH) as c:
        assert c.auth_method == "NULL"
        st = await c.bootstrap_status()
        assert (st.progress, st.tag, st.summary) == (100, "done", "Done")
        assert await c.socks_listeners() == [("127.0.0.1", 9050)]
        assert await c.pid() == 4242


async def test_partial_lines_are_reassembled(scripted: ScriptedControl) -> None:
    reply = (b'250-status/bootstrap-phase=NOTICE BOOTSTRAP PROGRESS=42 TAG=conn '
             b'SUMMARY="Connecting"\r\n250 OK\r\n')
    scripted.overrides["GETINFO status/bootstrap-phase"] = Override(reply, chunk=3, pause=0.002)
    scripted.overrides["PROTOCOLINFO"] = Override(
        b'250-PROTOCOLINFO 1\r\n250-AUTH METHODS=NULL\r\n250-VERSION Tor="0.4.9.11"\r\n'
        b"250 OK\r\n", chunk=1, pause=0.001)
    async with await TorControl.connect(ep(scripted), NOAUTH) as c:
        st = await c.bootstrap_status()
        assert (st.progress, st.tag, st.summary) == (42, "conn", "Connecting")


async def test_100k_line_is_accepted(scripted: ScriptedControl) -> None:
    big = "x" * 100_000
    scripted.overrides["GETINFO config-text"] = Override(
        f"250-config-text={big}\r\n250 OK\r\n".encode(), chunk=4096)
    async with await TorControl.connect(ep(scripted), NOAUTH) as c:
        assert await c.getinfo("config-text") == big


async def test_oversized_line_gives_typed_error_and_bounded_memory(
        scripted: ScriptedControl) -> None:
    junk = b"250-version=" + b"y" * (16 << 20)  # 16 MiB, no line end
    scripted.overrides["GETINFO config-text"] = Override(junk, chunk=1 << 20)
    c = await TorControl.connect(ep(scripted), NOAUTH, max_line=64 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(ControlProtocolError, match="exceeded 65536 bytes"):
            await c.getinfo("config-text")
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak} bytes while refusing a 16 MiB line"
    with trio.fail_after(5):
        await c.lost.wait()
    await c.close()


async def test_wrong_password_515(scripted: ScriptedControl) -> None:
    scripted.auth_methods, scripted.password = "HASHEDPASSWORD", "right"
    with pytest.raises(PasswordRejected, match="taken from the bridge configuration") as ei:
        await TorControl.connect(ep(scripted), ControlAuth(password="wrong"))
    assert "wrong" not in str(ei.value)
    async with await TorControl.connect(ep(scripted), ControlAuth(password="right")) as c:
        assert c.auth_method == "HASHEDPASSWORD"


async def test_password_from_env_and_file(scripted: ScriptedControl, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    scripted.auth_methods, scripted.password = "HASHEDPASSWORD", "s3cret"
    monkeypatch.setenv("KTB_TEST_PW", "s3cret")
    async with await TorControl.connect(ep(scripted), ControlAuth(password_env="KTB_TEST_PW")):
        pass
    pwfile = tmp_path / "pw"
    pwfile.write_text("s3cret\n")
    async with await TorControl.connect(ep(scripted), ControlAuth(password_env=None,
                                                                  password_file=pwfile)):
        pass
    with pytest.raises(PasswordRequired, match="requires HASHEDPASSWORD"):
        await TorControl.connect(ep(scripted), NOAUTH)


async def test_null_auth_rejected_515(scripted: ScriptedControl) -> None:
    scripted.overrides["AUTHENTICATE"] = Override(b"515 Authentication failed\r\n", close=True)
    with pytest.raises(AuthenticationError):
        await TorControl.connect(ep(scripted), NOAUTH)


async def test_cookie_auth_and_unreadable_cookie(scripted: ScriptedControl,
                                                 tmp_path: Path) -> None:
    cookie = tmp_path / "control_auth_cookie"
    cookie.write_bytes(os.urandom(32))
    scripted.auth_methods, scripted.cookie_path = "COOKIE", str(cookie)
    async with await TorControl.connect(ep(scripted), NOAUTH) as c:
        assert c.auth_method == "COOKIE"
    missing = tmp_path / "nope" / "cookie"
    with pytest.raises(CookieUnreadable, match=f"{tmp_path / 'nope'} does not exist") as ei:
        await TorControl.connect(ep(scripted), ControlAuth(password_env=None,
                                                           cookie_path=missing))
    assert ei.value.path == str(missing)
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    with pytest.raises(CookieUnreadable, match="3 bytes"):
        await TorControl.connect(ep(scripted), ControlAuth(password_env=None, cookie_path=short))


@pytest.mark.parametrize("data,exc", [
    (b"250-status/bootstrap-phase=NOTICE BOOTSTRAP PROGR", ControlProtocolError),  # mid-line
    (b"250-status/bootstrap-phase=NOTICE BOOTSTRAP PROGRESS=5\r\n", ControlConnectionLost),
])
async def test_close_mid_reply(scripted: ScriptedControl, data: bytes,
                               exc: type[Exception]) -> None:
    scripted.overrides["GETINFO status/bootstrap-phase"] = Override(data, close=True)
    c = await TorControl.connect(ep(scripted), NOAUTH)
    with pytest.raises(exc):
        await c.bootstrap_status()
    with trio.fail_after(5):
        await c.lost.wait()
    with pytest.raises(ControlConnectionLost):
        await c.version()
    await c.close()


async def test_close_mid_protocolinfo(scripted: ScriptedControl) -> None:
    scripted.overrides["PROTOCOLINFO"] = Override(b"250-PROTOCOLINFO 1\r\n250-AU", close=True)
    with pytest.raises(NotAControlPort, match="did not answer PROTOCOLINFO"):
        await TorControl.connect(ep(scripted), NOAUTH)


async def test_not_a_control_port(scripted: ScriptedControl) -> None:
    scripted.overrides["PROTOCOLINFO"] = Override(
        b"HTTP/1.0 501 Tor is not an HTTP Proxy\r\n\r\n", close=True)
    with pytest.raises(NotAControlPort, match="SocksPort"):
        await TorControl.connect(ep(scripted), NOAUTH)


async def test_silent_port_times_out(scripted: ScriptedControl) -> None:
    scripted.overrides["PROTOCOLINFO"] = Override(silent=True)
    with trio.fail_after(10), pytest.raises(ControlTimeout, match=r"within 0\.5s"):
        await TorControl.connect(ep(scripted), NOAUTH, timeout=0.5)


async def test_silent_call_times_out_and_drops(scripted: ScriptedControl) -> None:
    scripted.overrides["GETINFO config-text"] = Override(silent=True)
    c = await TorControl.connect(ep(scripted), NOAUTH, call_timeout=0.5)
    with pytest.raises(ControlTimeout, match="GETINFO config-text"):
        await c.getinfo("config-text")
    assert c.lost.is_set()
    await c.close()


async def test_nothing_listening() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ControlPortUnreachable, match=f"127.0.0.1:{port}.*refused"):
        await TorControl.connect(ControlEndpoint.tcp("127.0.0.1", port), NOAUTH)


async def test_events_delivered_and_bounded(scripted: ScriptedControl) -> None:
    c = await TorControl.connect(ep(scripted), NOAUTH, event_buffer=3)
    await scripted.push_event("STATUS_CLIENT NOTICE CIRCUIT_ESTABLISHED")
    with trio.fail_after(5):
        ev = await c.events.receive()
    assert (ev.kind, ev.action, ev.severity) == ("STATUS_CLIENT", "CIRCUIT_ESTABLISHED",
                                                 "NOTICE")
    for i in range(20):
        await scripted.push_event(f"CIRC {i + 1} FAILED PURPOSE=GENERAL REASON=TIMEOUT")
    with trio.fail_after(5):
        while c.events_dropped < 17:
            await trio.sleep(0.02)
    got = [c.events.receive_nowait() for _ in range(3)]
    assert [e.action for e in got] == ["FAILED"] * 3
    assert got[0].fields["reason"] == "TIMEOUT"
    await c.close()


def _sup(s: ScriptedControl, tmp_path: Path, **kw: object) -> TorSupervisor:
    return TorSupervisor(
        ep(s), NOAUTH,
        onion=OnionSpec(tmp_path / "simnet" / "onion_ed25519_v3.key", ("127.0.0.1", 1), 16511),
        backoff=Backoff(initial=0.05, cap=0.2), health_interval=0.2, health_timeout=2,
        **kw)  # type: ignore[arg-type]


async def test_supervisor_publishes_persists_and_heals(scripted: ScriptedControl,
                                                       tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    scripted.bootstrap = [10, 50, 100]
    sup = _sup(scripted, tmp_path)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        st = await sup.wait_usable(timeout=10, onion=True)
        addr = st.onion_address
        assert addr is not None and addr.endswith(".onion") and st.onion_port == 16511
        key_path = tmp_path / "simnet" / "onion_ed25519_v3.key"
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
        key = load_key(key_path)
        assert key is not None and f"{key.service_id}.onion" == addr
        assert "back this file up" in caplog.text
        assert key.blob_content() not in caplog.text
        assert list(scripted.onions) == [addr[:-6]]
        # a clean connection drop (tor survives): same onion again, no restart counted
        scripted.onions.clear()
        await scripted.drop_all()
        with trio.fail_after(10):
            while not (sup.status.onion_published and sup.status.reconnects == 1):
                await sup.wait_changed()
        assert sup.status.onion_address == addr and sup.status.restarts_seen == 0
        assert list(scripted.onions) == [addr[:-6]]
        # tor "restarts": new pid, the onion is gone with the old process
        scripted.pid += 1
        scripted.onions.clear()
        await scripted.drop_all()
        with trio.fail_after(10):
            while not (sup.status.onion_published and sup.status.reconnects == 2):
                await sup.wait_changed()
        assert sup.status.restarts_seen == 1 and sup.status.onion_address == addr
        assert sup.status.last_recovery_seconds is not None
        assert len(sup.status.recovery_times) == 2
        await sup.stop()
        assert scripted.onions == {}  # DEL_ONION on graceful shutdown
        n.cancel_scope.cancel()
    assert sup.status.state is TorState.STOPPED


async def test_supervisor_waits_while_tor_down(tmp_path: Path) -> None:
    server = ScriptedControl()
    async with trio.open_nursery() as n:
        await n.start(server.serve)
        port = server.port
        n.cancel_scope.cancel()
    # nothing listens on `port` now
    server = ScriptedControl(port=port)
    sup = TorSupervisor(ControlEndpoint.tcp("127.0.0.1", port), NOAUTH,
                        backoff=Backoff(initial=0.05, cap=0.2), health_interval=0.2)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        with pytest.raises(TorUnavailable, match="refused"):
            await sup.wait_usable(timeout=0.5)
        assert sup.status.attempts_failed >= 2
        assert sup.status.state is not TorState.READY
        await n.start(server.serve)
        with trio.fail_after(5):
            await sup.wait_usable()
        await sup.stop()
        n.cancel_scope.cancel()


async def test_supervisor_surfaces_events(scripted: ScriptedControl, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sup = _sup(scripted, tmp_path)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        st = await sup.wait_usable(timeout=10, onion=True)
        sid = st.onion_address[:-6] if st.onion_address else ""
        await scripted.push_event(
            f"HS_DESC FAILED {sid} NO_AUTH $"
            f"{'A' * 40}~relay REASON=UPLOAD_REJECTED")
        await scripted.push_event("CIRC 7 FAILED PURPOSE=HS_SERVICE_INTRO REASON=TIMEOUT")
        await scripted.push_event("STATUS_CLIENT WARN DANGEROUS_SOCKS PROTOCOL=SOCKS5 "
                                  "ADDRESS=1.2.3.4:80")
        with trio.fail_after(5):
            while not (sup.status.hs_desc_upload_failures and sup.status.circuits_failed
                       and sup.status.client_warnings):
                await sup.wait_changed()
        assert "UPLOAD_REJECTED" in (sup.status.last_hs_desc_failure or "")
        assert "TIMEOUT" in (sup.status.last_circuit_failure or "")
        assert "descriptor upload" in caplog.text and "DANGEROUS_SOCKS" in caplog.text
        await sup.stop()
        n.cancel_scope.cancel()


async def test_supervisor_reconnects_when_tor_frozen(scripted: ScriptedControl,
                                                     tmp_path: Path) -> None:
    sup = TorSupervisor(ep(scripted), NOAUTH, backoff=Backoff(initial=0.05, cap=0.2),
                        health_interval=0.1, health_timeout=0.3)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        await sup.wait_usable(timeout=5)
        scripted.overrides["GETINFO status/bootstrap-phase"] = Override(silent=True, times=1)
        with trio.fail_after(10):
            while sup.status.reconnects < 1 or not sup.status.usable:
                await sup.wait_changed()
        assert "no reply" in (sup.status.last_error or "")
        await sup.stop()
        n.cancel_scope.cancel()


# -- onion DoS defences (issue 12) ------------------------------------------------------------

DEFENSES = OnionDefenses(pow=True, pow_queue_rate=100, pow_queue_burst=1000, max_streams=16)


def _defended(s: ScriptedControl, tmp_path: Path) -> TorSupervisor:
    return TorSupervisor(
        ep(s), NOAUTH,
        onion=OnionSpec(tmp_path / "simnet" / "onion_ed25519_v3.key", ("127.0.0.1", 1), 16511,
                        DEFENSES),
        backoff=Backoff(initial=0.05, cap=0.2), health_interval=0.2, health_timeout=2)


async def test_onion_is_published_with_pow_and_stream_limits(scripted: ScriptedControl,
                                                             tmp_path: Path) -> None:
    sup = _defended(scripted, tmp_path)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        st = await sup.wait_usable(timeout=10, onion=True)
        assert st.onion_pow is True and st.onion_max_streams == 16
        (cmd,) = [c for c in scripted.commands if c.startswith("ADD_ONION")]
        words = cmd.split(" ")
        assert "Flags=MaxStreamsCloseCircuit" in words and "MaxStreams=16" in words
        assert {"PoWDefensesEnabled=1", "PoWQueueRate=100", "PoWQueueBurst=1000"} <= set(words)
        await sup.stop()
        n.cancel_scope.cancel()


async def test_tor_without_pow_publishes_without_it_and_says_so(
        scripted: ScriptedControl, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Like Bitcoin Core: a tor that refuses the keyword (< 0.4.8) still gets the onion."""
    scripted.pow_supported = False
    caplog.set_level(logging.WARNING)
    sup = _defended(scripted, tmp_path)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        st = await sup.wait_usable(timeout=10, onion=True)
        assert st.onion_published and st.onion_pow is False and st.onion_max_streams == 16
        adds = [c for c in scripted.commands if c.startswith("ADD_ONION")]
        assert len(adds) == 2 and "PoWDefensesEnabled=1" in adds[0]
        assert not any(w.startswith("PoW") for w in adds[1].split(" "))
        assert "MaxStreams=16" in adds[1].split(" ")
        assert "does not support proof-of-work" in caplog.text
        await sup.stop()
        n.cancel_scope.cancel()


async def test_a_collision_is_not_taken_for_missing_pow(scripted: ScriptedControl,
                                                         tmp_path: Path) -> None:
    """Only a refusal that names the PoW keywords drops them; other errors stay errors."""
    scripted.overrides["ADD_ONION"] = Override(b"550 Onion address collision\r\n")
    async with await TorControl.connect(ep(scripted), NOAUTH) as ctl:
        with pytest.raises(OnionPublishError, match="collision"):
            await ctl.add_onion_with_defenses(16511, ("127.0.0.1", 1), None, DEFENSES)
    assert len([c for c in scripted.commands if c.startswith("ADD_ONION")]) == 1


def test_defenses_keywords_and_bounds() -> None:
    assert OnionDefenses(pow=False).pow_keywords() == []
    assert OnionDefenses().pow_keywords() == ["PoWDefensesEnabled=1"]
    with pytest.raises(ValueError, match="max_streams"):
        OnionDefenses(max_streams=70000)
    with pytest.raises(ValueError, match="pow_queue_rate"):
        OnionDefenses(pow_queue_rate=-1)


async def test_pow_not_asked_for_is_not_reported_as_missing(scripted: ScriptedControl,
                                                            tmp_path: Path) -> None:
    """tor.onion_pow = false: status says "not asked" (None), not "this tor lacks it"."""
    sup = TorSupervisor(
        ep(scripted), NOAUTH,
        onion=OnionSpec(tmp_path / "simnet" / "onion_ed25519_v3.key", ("127.0.0.1", 1), 16511,
                        OnionDefenses(pow=False, max_streams=16)),
        backoff=Backoff(initial=0.05, cap=0.2), health_interval=0.2, health_timeout=2)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        st = await sup.wait_usable(timeout=10, onion=True)
        assert st.onion_pow is None and st.onion_max_streams == 16
        (cmd,) = [c for c in scripted.commands if c.startswith("ADD_ONION")]
        assert not any(w.startswith("PoW") for w in cmd.split(" "))
        await sup.stop()
        n.cancel_scope.cancel()
