"""External tools of the benchmarks: lookup (``find_tool``), the prerequisites check, and the two
reference relays (``socat`` and ``nghttpx``) as processes whose CPU can be read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from bench.harness.procs import free_port, listening, tree_cpu, tree_wait


class ToolProc:
    """A relay process (tree) listening on ``port``: its CPU and run-queue wait (forked children
    included: socat forks one per connection, nghttpx has a worker), and stop."""

    proc: subprocess.Popen[Any]
    pid: int
    port: int

    def _started(self, proc: subprocess.Popen[Any], port: int, what: str, timeout: float,
                 poll: float = 0.02) -> None:
        """Wait until ``proc`` listens on ``port`` (RuntimeError after ``timeout`` s or if it
        exits first)."""
        self.proc, self.port, self.pid = proc, port, proc.pid
        deadline = time.monotonic() + timeout
        while not listening(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start listening")
            time.sleep(poll)

    def cpu(self) -> tuple[float, float]:
        return tree_cpu(self.pid)

    def wait(self) -> float:
        return tree_wait(self.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Socat(ToolProc):
    def __init__(self, target_port: int) -> None:
        port = free_port()
        self._started(subprocess.Popen(
            ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
             f"TCP:127.0.0.1:{target_port}"], stdin=subprocess.DEVNULL), port, "socat", 5)


#: nghttpx windows: the same 512 KiB stream/connection windows the bridge advertises
#: (``RelaySettings.window``), on both sides, so neither relay gets a larger buffer.
NGHTTPX_WINDOW = 512 * 1024


def find_tool(name: str) -> str | None:
    """``name`` on PATH or in an sbin directory (Debian installs nghttpx to /usr/sbin)."""
    import shutil

    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return None


#: tool -> Debian package providing it (the benchmarks' prerequisites)
BENCH_TOOLS = {"socat": "socat", "nghttpx": "nghttp2-proxy", "tor": "tor"}


def check_tools(names: list[str]) -> None:
    """Exit with the install command if a prerequisite is missing. The benchmarks run in a
    network namespace without network access, so they cannot install anything themselves."""
    missing = [n for n in names if find_tool(n) is None]
    if missing:
        pkgs = " ".join(BENCH_TOOLS.get(n, n) for n in missing)
        sys.exit(f"missing {', '.join(missing)}: install with `apt-get install -y {pkgs}` (outside "
                 "the network namespace), or run `bash scripts/bench.sh`")


class Nghttpx(ToolProc):
    """nghttpx as an h2c -> h2c gRPC reverse proxy with one worker (the C reference)."""

    def __init__(self, target_port: int) -> None:
        port = free_port()
        w = str(NGHTTPX_WINDOW)
        self._started(subprocess.Popen(
            [nghttpx_exe(), "--conf=/dev/null", f"--frontend=127.0.0.1,{port};no-tls",
             f"--backend=127.0.0.1,{target_port};;proto=h2;no-tls", "--workers=1",
             f"--frontend-http2-window-size={w}", f"--frontend-http2-connection-window-size={w}",
             f"--backend-http2-window-size={w}", f"--backend-http2-connection-window-size={w}",
             "--no-via", "--log-level=WARN", "--errorlog-file=/dev/stderr",
             "--frontend-read-timeout=0", "--backend-read-timeout=0",
             "--frontend-keep-alive-timeout=3600", "--backend-keep-alive-timeout=3600",
             "--stream-read-timeout=0", "--stream-write-timeout=0"],
            stdin=subprocess.DEVNULL), port, "nghttpx", 10)


def nghttpx_exe() -> str:
    exe = find_tool("nghttpx")
    if exe is None:
        raise RuntimeError("nghttpx not found (apt-get install -y nghttp2-proxy)")
    return exe
