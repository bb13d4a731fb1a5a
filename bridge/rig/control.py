"""Minimal synchronous Tor control-port client used by the rig for polling.

The rig only needs ``AUTHENTICATE`` (cookie or password) and ``GETINFO``; a raw socket keeps the
polling loop cheap (no stem reader thread per poll) and independent of stem's ownership quirks.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

_BOOTSTRAP_RE = re.compile(r"PROGRESS=(\d+)")


class ControlError(Exception):
    """The control port refused a command or spoke something unexpected."""


class ControlConnection:
    """One authenticated control connection (context manager)."""

    def __init__(
        self,
        port: int,
        *,
        cookie_path: Path | None = None,
        password: str | None = None,
        host: str = "127.0.0.1",
        timeout: float = 5.0,
    ) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""
        try:
            if password is not None:
                quoted = password.replace("\\", "\\\\").replace('"', '\\"')
                self._expect_ok(f'AUTHENTICATE "{quoted}"')
            elif cookie_path is not None:
                self._expect_ok("AUTHENTICATE " + cookie_path.read_bytes().hex())
            else:
                self._expect_ok("AUTHENTICATE")
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> ControlConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
        self._sock.close()

    def _readline(self) -> str:
        while b"\r\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ControlError("control connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line.decode("utf-8", errors="replace")

    def command(self, line: str) -> list[tuple[str, str]]:
        """Send one command; returns (status, text) per reply line, data blocks joined."""
        self._sock.sendall(line.encode() + b"\r\n")
        replies: list[tuple[str, str]] = []
        while True:
            raw = self._readline()
            if len(raw) < 4:
                raise ControlError(f"malformed reply line {raw!r}")
            status, sep, text = raw[:3], raw[3], raw[4:]
            if sep == "+":
                data: list[str] = []
                while True:
                    d = self._readline()
                    if d == ".":
                        break
                    data.append(d[1:] if d.startswith("..") else d)
                text = text + "\n" + "\n".join(data)
            replies.append((status, text))
            if sep == " ":
                return replies

    def _expect_ok(self, line: str) -> None:
        replies = self.command(line)
        if replies[-1][0] != "250":
            raise ControlError(f"{line.split()[0]} failed: {replies[-1][0]} {replies[-1][1]}")

    def getinfo(self, key: str) -> str:
        replies = self.command(f"GETINFO {key}")
        status, text = replies[-1]
        if status != "250":
            raise ControlError(f"GETINFO {key} failed: {status} {text}")
        prefix = key + "="
        for _, t in replies:
            if t.startswith(prefix):
                return t[len(prefix) :].lstrip("\n")
        raise ControlError(f"GETINFO {key}: no value in reply {replies!r}")

    def bootstrap_progress(self) -> int:
        phase = self.getinfo("status/bootstrap-phase")
        m = _BOOTSTRAP_RE.search(phase)
        if m is None:
            raise ControlError(f"unexpected bootstrap phase {phase!r}")
        return int(m.group(1))
