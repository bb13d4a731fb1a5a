"""Child processes that die with the bridge (tor for a managed Tor and for the test rig)."""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import shutil
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
    The signal is set by util-linux's ``setpriv --pdeathsig`` in the child, which then execs the
    program: no Python runs between fork and exec. (A ``preexec_fn`` does, and in a process
    with other threads, grpcio's in the test rig, such a child once died of a segfault before
    it could exec.) Without ``setpriv`` the ``preexec_fn`` is the fallback.
    """
    if not die_with_parent or not sys.platform.startswith("linux"):
        return subprocess.Popen(argv, start_new_session=True, **kw)
    global _spawner
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        program = shutil.which(argv[0]) if os.sep not in argv[0] else argv[0]
        if program is None or not os.access(program, os.X_OK):
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        cmd = [setpriv, "--pdeathsig", "TERM", "--", program, *argv[1:]]
        pre: Callable[[], None] | None = None
    else:
        cmd, pre = list(argv), _pdeathsig_preexec()
    with _spawner_lock:
        if _spawner is None:
            _spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ktb-spawn")
        spawner = _spawner
    return spawner.submit(
        lambda: subprocess.Popen(cmd, start_new_session=True, preexec_fn=pre, **kw)
    ).result()


def _pdeathsig_preexec() -> Callable[[], None]:
    global _prctl
    if _prctl is None:
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl = _prctl
    parent = os.getpid()

    def pre() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)

    return pre
