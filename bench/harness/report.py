"""Shared bits of the benchmarks' reports: generated sections of ``docs/benchmarks.md``.

``relay_bench`` writes the head of the file (throughput, latency, profile and the hand-written
analysis block between ``<!-- analysis:begin -->`` / ``<!-- analysis:end -->``). Every other
benchmark owns one section delimited by ``<!-- bench:NAME:begin -->`` / ``<!-- bench:NAME:end
-->``: it replaces only that section (or appends it), and ``relay_bench`` keeps all of them when
it regenerates its part. Inside a section, a hand-written block between ``<!-- notes:NAME:begin
-->`` / ``<!-- notes:NAME:end -->`` is kept when the section is regenerated.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

_SECTION = re.compile(r"<!-- bench:([\w-]+):begin -->.*?<!-- bench:\1:end -->", re.S)


def begin(name: str) -> str:
    return f"<!-- bench:{name}:begin -->"


def end(name: str) -> str:
    return f"<!-- bench:{name}:end -->"


def other_sections(text: str) -> list[str]:
    """Every ``bench:NAME`` section in ``text``, in order, markers included."""
    return [m.group(0) for m in _SECTION.finditer(text)]


def write_section(path: Path, name: str, body: str) -> None:
    """Replace section ``name`` of ``path`` by ``body`` (markers added), or append it. The
    section's hand-written notes block is kept (an empty one is added the first time)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pat = re.compile(re.escape(begin(name)) + r".*?" + re.escape(end(name)), re.S)
    nb, ne = f"<!-- notes:{name}:begin -->", f"<!-- notes:{name}:end -->"
    old = pat.search(text)
    notes = f"{nb}\n_(hand-written notes on these figures; kept when regenerated)_\n{ne}"
    if old is not None and nb in old.group(0) and ne in old.group(0):
        o = old.group(0)
        notes = o[o.index(nb):o.index(ne) + len(ne)]
    block = f"{begin(name)}\n{body.rstrip()}\n\n{notes}\n{end(name)}"
    if old is not None:
        text = pat.sub(lambda _m: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``?`` when it has none)."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def machine_line() -> str:
    model = cpu_model()
    import h2
    import trio

    return (f"CPU: {model}, nproc = {os.cpu_count()}; kernel {platform.release()}; Python "
            f"{platform.python_version()}, trio {trio.__version__}, h2 {h2.__version__}")


def rss_kib(pid: int) -> int:
    """Resident set size of one process (VmRSS), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]
