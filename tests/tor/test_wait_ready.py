"""Issue 12 item 6: while the bridge starts and tor is not running (or still bootstrapping) it
says once what it waits for, then shows slow progress, then one final line — instead of a line
per connection attempt (every 1 to 5 s until the bootstrap timeout). Against a scripted control
port / a port nothing listens on."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from bridge.tor.control import ControlAuth, ControlEndpoint
from bridge.tor.errors import TorUnavailable
from bridge.tor.supervisor import Backoff, OnionSpec, TorSupervisor
from tests.tor.scripted_control import ScriptedControl

NOAUTH = ControlAuth(password_env=None)
LOGGER = "bridge.tor.supervisor"


def _sup(port: int, tmp_path: Path | None = None) -> TorSupervisor:
    onion = None if tmp_path is None else OnionSpec(
        tmp_path / "simnet" / "onion_ed25519_v3.key", ("127.0.0.1", 1), 16511)
    return TorSupervisor(ControlEndpoint.tcp("127.0.0.1", port), NOAUTH, onion=onion,
                         backoff=Backoff(initial=0.05, cap=0.2), health_interval=0.2,
                         quiet_start=True)


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What an operator sees at the default level (info) from the supervisor."""
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno >= logging.INFO]


async def _closed_port() -> int:
    server = ScriptedControl()
    async with trio.open_nursery() as n:
        await n.start(server.serve)
        n.cancel_scope.cancel()
    return server.port  # nothing listens on it now


async def test_no_tor_one_waiting_line_slow_progress_and_a_final_error(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    port = await _closed_port()
    sup = _sup(port)
    t0 = trio.current_time()
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        with pytest.raises(TorUnavailable, match="refused"):
            await sup.wait_ready(3.0, report_every=0.5, grace=0.2,
                                 timeout_name="tor.bootstrap_timeout")
        n.cancel_scope.cancel()
    assert 2.9 <= trio.current_time() - t0 < 6
    lines = _lines(caplog)
    # many attempts were made (each one used to be a line) ...
    assert sup.status.attempts_failed >= 8, sup.status
    attempts = [r for r in caplog.records if r.levelno == logging.DEBUG
                and "cannot connect to tor control port" in r.getMessage()]
    assert len(attempts) == sup.status.attempts_failed
    # ... but one line says what the bridge waits for, where, why and for how long
    waiting = [ln for ln in lines if ln.startswith("waiting for")]
    assert len(waiting) == 1, lines
    assert f"tor's control port at 127.0.0.1:{port}" in waiting[0]
    assert "Connection refused" in waiting[0] and "is tor running" in waiting[0]
    assert "up to 3 s (tor.bootstrap_timeout)" in waiting[0]
    assert sum("cannot connect" in ln for ln in lines) == 1, lines
    # progress at the slow cadence: about one line per 0.5 s of the 3 s, never one per attempt
    progress = [ln for ln in lines if ln.startswith("still waiting for")]
    assert 3 <= len(progress) <= 6, lines
    assert all(f"127.0.0.1:{port}" in ln and "of 3 s" in ln for ln in progress), progress
    assert len(lines) == 1 + len(progress), lines
    # the supervisor logs its attempts normally again after the startup wait
    assert not sup._quiet


async def test_bootstrap_progress_then_tor_ready(scripted: ScriptedControl, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    # the bootstrap poll asks every 0.25 s: about 2 s at 5 %, 2 s at 50 %, then done
    scripted.bootstrap = [5] * 8 + [50] * 8 + [100]
    sup = _sup(scripted.port, tmp_path)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        t0 = trio.current_time()
        st = await sup.wait_ready(20.0, onion=True, report_every=1.0, grace=0.2)
        elapsed = trio.current_time() - t0
        assert st.onion_published
        await sup.stop()
        n.cancel_scope.cancel()
    lines = _lines(caplog)
    waiting = [ln for ln in lines if "waiting for" in ln]
    assert sum(ln.startswith("waiting for") for ln in lines) == 1, lines
    assert any("to bootstrap (5%: Connecting to a relay)" in ln for ln in waiting), lines
    assert any("(50%" in ln for ln in waiting), lines  # progress shows the percent
    # not one line per bootstrap step, nor per poll
    assert not any(ln.startswith("tor bootstrap") for ln in lines), lines
    assert len(waiting) <= 2 + elapsed / 1.0, lines
    ready = [ln for ln in lines if ln.startswith("tor ready after")]
    assert len(ready) == 1 and f"onion {st.onion_address} published" in ready[0], lines
    assert float(ready[0].split()[3]) == pytest.approx(elapsed, abs=0.2)


async def test_a_ready_tor_gets_one_line_and_no_waiting(scripted: ScriptedControl,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    sup = _sup(scripted.port)
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        await sup.wait_ready(10.0, grace=5.0)
        n.cancel_scope.cancel()
    lines = _lines(caplog)
    assert not any("waiting" in ln for ln in lines), lines
    assert sum(ln.startswith("tor ready after") for ln in lines) == 1, lines
