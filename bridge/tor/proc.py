"""Child processes that die with the bridge (tor for a managed Tor and for the test rig)."""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

_PR_SET_PDEATHSIG = 1
_spawner: concurrent.futures.ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()
_prctl: Callable[..., int] | None = None


def spawn(argv: Sequence[str], *, die_with_parent: bool = True,
          **kw: Any) -> subprocess.Popen[bytes]:
    """``Popen`` in a new session that, on Linux, gets SIGTERM when this process dies.

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so the fork happens on one
    dedicated thread that lives as long as the interpreter (safe from ``trio.to_thread``).
    """
    if not die_with_parent or not sys.platform.startswith("linux"):
        return subprocess.Popen(argv, start_new_session=True, **kw)
    global _prctl, _spawner
    if _prctl is None:
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl = _prctl
    parent = os.getpid()

    def pre() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)

    with _spawner_lock:
        if _spawner is None:
            _spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ktb-spawn")
        spawner = _spawner
    return spawner.submit(
        lambda: subprocess.Popen(argv, start_new_session=True, preexec_fn=pre, **kw)
    ).result()
