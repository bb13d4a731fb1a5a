"""flood_bench's probes: RSS of the target's process tree sampled in a thread (with the 4 GiB
cap), and the ``/health`` poller (latency of every 50 ms request).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import socket
import threading
import time

from bench.harness import report

SAMPLE_EVERY = 0.02
#: a case whose target passes this RSS is stopped (SIGKILL): the machine is shared
RSS_CAP_KIB = 4 * 1024 * 1024
HEALTH_EVERY = 0.05
HEALTH_TIMEOUT = 10.0


def tree_pids(pid: int) -> list[int]:
    out = [pid]
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                for c in f.read().split():
                    out += tree_pids(int(c))
    return out


class Sampler:
    """RSS (KiB) of a process and its children, sampled in a thread; peak since ``mark``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.capped = False
        self.peak = self.last = self.rss()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="rss")
        self.thread.start()

    def rss(self) -> int:
        total = 0
        for p in tree_pids(self.pid):
            with contextlib.suppress(OSError, RuntimeError):
                total += report.rss_kib(p)
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            v = self.rss()
            if v:
                self.last = v
                self.peak = max(self.peak, v)
            if v > RSS_CAP_KIB and not self.capped:
                self.capped = True
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
            time.sleep(SAMPLE_EVERY)

    def mark(self) -> int:
        self.peak = self.last = self.rss()
        return self.last

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)


def http_get(port: int, path: str, timeout: float) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0


class HealthPoller:
    """``GET /health`` started every HEALTH_EVERY s on schedule, each in a pool thread;
    (phase, latency s, status) per poll; status 0 = failed or timed out."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.phase = "base"
        self.samples: list[tuple[str, float, int]] = []
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="health")
        self.thread = threading.Thread(target=self._run, daemon=True, name="health")
        self.thread.start()

    def _one(self, phase: str, due: float) -> None:
        try:
            status = http_get(self.port, "/health", HEALTH_TIMEOUT)
        except OSError:
            status = 0
        self.samples.append((phase, time.monotonic() - due, status))

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            self._pool.submit(self._one, self.phase, due)
            due += HEALTH_EVERY
            time.sleep(max(0.0, due - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self._pool.shutdown(wait=True)

    def of(self, phase: str) -> list[float]:
        return [lat for p, lat, _ in self.samples if p == phase]
