"""The daemon's log lines: UTC dates in text lines, identical lines collapsed (issue 12)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys

from bridge.runtime.logs import JsonFormatter, RepeatFilter, text_formatter
from bridge.runtime.stats import ErrorLogHandler, RecentErrors


def _record(msg: str, *args: object, level: int = logging.WARNING,
            name: str = "bridge.tor") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_identical_lines_are_collapsed_and_counted() -> None:
    now = [0.0]
    f = RepeatFilter(window=60, clock=lambda: now[0])
    line = "tor control 127.0.0.1:9051: connection refused; retrying in %.0fs"
    assert f.filter(_record(line, 2.0))
    passed = 0
    for i in range(1, 30):
        now[0] = i * 2.0  # every 2 s for a minute
        passed += f.filter(_record(line, 2.0))
    assert passed == 2  # the first three of a window pass (a test counting a few still can)
    assert f.filter(_record("another line"))  # other lines are not held back
    now[0] = 61.0
    rec = _record(line, 2.0)
    assert f.filter(rec)
    note = "(repeated 27 more times in the last 61 s)"
    assert text_formatter().format(rec).endswith(f"retrying in 2s {note}")
    assert json.loads(JsonFormatter().format(rec))["msg"].endswith(f"retrying in 2s {note}")
    # the record itself is left as logged: other handlers (the recent-errors ring of /status)
    # see the line, not the count
    assert rec.getMessage() == line % 2.0
    ring = RecentErrors()
    ErrorLogHandler(ring).handle(rec)
    assert [r.message for r in ring.records()] == [line % 2.0]
    now[0] = 62.0
    assert f.filter(_record(line, 2.0)) and f.filter(_record(line, 2.0))  # a new window
    assert not f.filter(_record(line, 2.0))


def test_level_and_logger_are_part_of_the_key_and_memory_is_bounded() -> None:
    f = RepeatFilter(window=60, max_keys=4, clock=lambda: 0.0)
    assert f.filter(_record("x", level=logging.WARNING))
    assert f.filter(_record("x", level=logging.ERROR))
    assert f.filter(_record("x", name="bridge.pool"))
    for i in range(100):
        f.filter(_record(f"line {i}"))
    assert len(f._seen) == 4


def test_text_lines_carry_a_utc_date() -> None:
    line = text_formatter().format(_record("hello"))
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ WARNING bridge.tor: hello$", line), line


def test_version_option() -> None:
    from bridge import __version__

    res = subprocess.run([sys.executable, "-m", "bridge", "--version"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == f"kaspa-tor-bridge {__version__}"
    res = subprocess.run([sys.executable, "-m", "bridge", "--help"], capture_output=True,
                         text=True, timeout=60, env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"})
    assert "Operator" in res.stdout and "Test rig and demo" in res.stdout
    operator = res.stdout.split("Operator", 1)[1].split("Test rig and demo", 1)[0]
    assert "run" in operator and "doctor" in operator and "demo" not in operator
