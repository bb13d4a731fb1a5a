"""How the daemon logs: text lines with a UTC date, or JSON; repeated lines collapsed.

A daemon that waits for something (tor not running yet, a peer that keeps failing) tends to
log the same line every few seconds. :class:`RepeatFilter` lets the first three through, drops
further identical lines (same logger, level and text) for the rest of a ``window`` of seconds,
and lets the next one after it through with how many were dropped, e.g. ``... (repeated 11 more
times in the last 60 s)``. It
remembers at most ``max_keys`` lines (least recently seen dropped first), so its memory is
bounded whatever is logged. The count is not written into the record (other handlers, such as
the recent-errors ring of ``/status``, see the line as logged): it is an attribute that this
module's formatters append.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable

#: text lines: "2026-12-03T17:59:30Z INFO    bridge: bridge up ..." (UTC, ISO 8601)
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
TEXT_DATEFMT = "%Y-%m-%dT%H:%M:%SZ"
#: The record attribute :class:`RepeatFilter` sets: " (repeated 11 more times in the last 60 s)"
#: or "" (appended by the formatters below).
REPEAT_NOTE = "ktb_repeat_note"


def repeat_note(record: logging.LogRecord) -> str:
    note = getattr(record, REPEAT_NOTE, "")
    return note if isinstance(note, str) else ""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage() + repeat_note(record)}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # the message ends the line (a record with a traceback is never collapsed)
        return super().format(record) + repeat_note(record)


def text_formatter() -> logging.Formatter:
    fmt = _TextFormatter(TEXT_FORMAT, TEXT_DATEFMT)
    fmt.converter = time.gmtime
    return fmt


class RepeatFilter(logging.Filter):
    """Collapse identical log lines: per (logger, level, text), the first ``burst`` lines of a
    ``window`` pass, the rest are dropped and counted, and the first line after the window says
    how many were dropped."""

    def __init__(self, window: float = 60.0, burst: int = 3, max_keys: int = 512,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        #: key -> [start of its window, lines let through in it, lines dropped in it]
        self._seen: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        setattr(record, REPEAT_NOTE, "")
        if record.exc_info:
            return True  # tracebacks are never collapsed
        key = (record.name, record.levelno, record.getMessage())
        now = self.clock()
        state = self._seen.get(key)
        if state is not None and now - state[0] < self.window:
            self._seen.move_to_end(key)
            if state[1] < self.burst:
                state[1] += 1
                return True
            state[2] += 1
            return False
        if state is not None and state[2]:
            setattr(record, REPEAT_NOTE, f" (repeated {state[2]:.0f} more times in the last "
                                         f"{now - state[0]:.0f} s)")
        self._seen[key] = [now, 1, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        return True


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """The process's logging: one handler on stderr, text (UTC dates) or JSON, repeats
    collapsed."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else text_formatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    import stem.util.log  # noqa: F401 - stem sets its logger to TRACE on import: override after

    logging.getLogger("stem").setLevel(logging.WARNING)
