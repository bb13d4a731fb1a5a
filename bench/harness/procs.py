"""Processes and ports seen from ``/proc``: CPU and run-queue wait of a process (tree), whether a
port listens, a free port. Shared by every benchmark.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

#: the checkout the benchmarks run from (children get it as cwd or PYTHONPATH)
REPO = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> tuple[float, float]:
    """(utime + stime, stime) of one process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[12]) / CLK_TCK


def tree_cpu(pid: int) -> tuple[float, float]:
    """CPU of a process and its live children (socat forks one child per connection)."""
    total, sys_ = 0.0, 0.0
    with contextlib.suppress(OSError):
        total, sys_ = proc_cpu(pid)
    with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{pid}/children") as f:
        for child in f.read().split():
            t, k = tree_cpu(int(child))
            total += t
            sys_ += k
    return total, sys_


def sched_wait(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (schedstat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[1])
    return total / 1e9


def tree_wait(pid: int) -> float:
    total = 0.0
    with contextlib.suppress(OSError):
        total += sched_wait(pid)
    with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{pid}/children") as f:
        for child in f.read().split():
            total += tree_wait(int(child))
    return total


def listening(port: int) -> bool:
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if int(parts[1].split(":")[1], 16) == port and parts[3] == "0A":
                return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
