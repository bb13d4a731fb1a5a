"""Child processes that die with the bridge (bridge.tor.proc.spawn)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bridge.tor.proc import spawn

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_spawned_child_dies_with_its_parent() -> None:
    code = ("from bridge.tor.proc import spawn; p = spawn(['sleep', '100']); "
            "print(p.pid, flush=True); import time; time.sleep(30)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # setpriv execs sleep
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "sleep":
                    break
            time.sleep(0.02)
        assert _alive(pid)
        parent.kill()  # no clean shutdown: the kernel's death signal must do it
        parent.wait()
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the child outlived its parent"
    finally:
        if _alive(pid):
            os.kill(pid, 9)


def test_a_missing_program_is_an_oserror() -> None:
    with pytest.raises(FileNotFoundError):
        spawn(["/nonexistent/tor", "-f", "x"])
    with pytest.raises(FileNotFoundError):
        spawn(["no-such-program-ktb"])
