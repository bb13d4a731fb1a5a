"""A small tmpfs in a private mount namespace: real ENOSPC and real EROFS, nothing on the host.

A helper process (``unshare -m --propagation private sleep infinity``) holds a mount namespace in
which a tmpfs of ``size`` bytes is mounted on ``mountpoint``. The host's mount table never sees
it, and when the helper dies (test end, or this process dying: PR_SET_PDEATHSIG) the namespace
and its tmpfs vanish with it.

* This process reaches the files through ``/proc/<helper>/root/<mountpoint>`` (:meth:`path`) —
  fine for plain file operations. SQLite resolves symlinks in the paths it opens (and
  ``/proc/<pid>/root`` is one), so anything that opens the address book must *run inside* the
  namespace: :meth:`spawn` starts a command there (``nsenter -m``; the network namespace stays
  this process's).
* :meth:`fill` fills the filesystem up (writes until ENOSPC), :meth:`free` frees it again;
  :meth:`remount` switches it read-only / read-write.

Needs root (CAP_SYS_ADMIN) and ``unshare``/``nsenter``/``mount`` (util-linux): :func:`available`
tells why not, for a skip.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bridge.tor.proc import spawn

FILLER = ".filler"


def available() -> str | None:
    """None when private tmpfs mounts work here, else the reason they do not."""
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` (util-linux) is not installed"
    if os.geteuid() != 0:
        return "mounting a tmpfs in a private mount namespace needs root"
    try:
        res = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t",
                              "tmpfs", "-o", "size=64k", "tmpfs", "/mnt"],
                             capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -m failed: {exc}"
    if res.returncode != 0:
        return ("the kernel/container forbids a private mount namespace with a tmpfs: "
                + res.stderr.decode(errors="replace").strip())
    return None


class PrivateTmpfs:
    def __init__(self, mountpoint: Path, size: int) -> None:
        self.mountpoint = Path(mountpoint).resolve()
        self.size = size
        self.helper: subprocess.Popen[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> PrivateTmpfs:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.helper = spawn(["unshare", "-m", "--propagation", "private", "sleep", "infinity"],
                            stdin=subprocess.DEVNULL)
        mine = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{self.helper.pid}/ns/mnt") == mine:
            if self.helper.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"unshare -m did not start (rc={self.helper.poll()})")
            time.sleep(0.02)
        self.ns_run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0700", "tmpfs",
                     str(self.mountpoint)])
        return self

    def stop(self) -> None:
        if self.helper is not None and self.helper.poll() is None:
            self.helper.send_signal(signal.SIGKILL)
            self.helper.wait(10)

    def __enter__(self) -> PrivateTmpfs:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- access ---------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.helper is not None
        return self.helper.pid

    def path(self, inside: Path | str = "") -> Path:
        """The host-side path of ``mountpoint/inside`` (through ``/proc/<pid>/root``)."""
        full = self.mountpoint / inside
        return Path(f"/proc/{self.pid}/root") / full.relative_to("/")

    def ns_argv(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "--", *argv]

    def ns_run(self, argv: Sequence[str]) -> None:
        res = subprocess.run(self.ns_argv(argv), capture_output=True, timeout=30, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} (in the mount namespace) failed: "
                               f"{res.stderr.decode(errors='replace').strip()}")

    def spawn(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the mount namespace (dies with this process)."""
        return spawn(self.ns_argv(argv), **kw)

    # -- faults ---------------------------------------------------------------------------
    def fill(self) -> int:
        """Write a filler file until the filesystem is full; returns the bytes written."""
        written = 0
        fd = os.open(self.path(FILLER), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            chunk = bytes(64 * 1024)
            while True:
                try:
                    n = os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        break
                    chunk = chunk[: len(chunk) // 2]
                    continue
                written += n
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(FILLER).unlink()

    def free_bytes(self) -> int:
        st = os.statvfs(self.path())
        return st.f_bavail * st.f_frsize

    def remount(self, *, read_only: bool) -> None:
        self.ns_run(["mount", "-o", f"remount,{'ro' if read_only else 'rw'}",
                     str(self.mountpoint)])
