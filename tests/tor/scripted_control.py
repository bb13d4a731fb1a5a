"""A tiny scripted Tor control port (trio TCP server) for what real tor won't do on demand.

It speaks just enough of the control protocol for stem and :class:`bridge.tor.control.TorControl`:
PROTOCOLINFO, AUTHENTICATE (NULL / password / cookie), GETINFO, GETCONF, SETEVENTS, ADD_ONION,
DEL_ONION. Misbehaviour is scripted per command through :attr:`ScriptedControl.overrides`: raw
bytes to send instead of the normal reply, optionally in small chunks with pauses (partial
lines), optionally followed by closing the socket (mid-reply close).
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from bridge.tor.keys import OnionKey


@dataclass
class Override:
    data: bytes = b""
    close: bool = False  # close the connection after sending ``data``
    chunk: int = 0  # send in chunks of this size (0 = all at once)
    pause: float = 0.0  # pause between chunks
    silent: bool = False  # send nothing, keep the connection open
    times: int | None = None  # apply this many times, then behave normally


@dataclass
class ScriptedControl:
    auth_methods: str = "NULL"  # e.g. "HASHEDPASSWORD" or "COOKIE,SAFECOOKIE"
    password: str | None = None
    cookie_path: str | None = None
    version: str = "0.4.9.11"
    pid: int = 4242
    bootstrap: list[int] = field(default_factory=lambda: [100])  # progress per GETINFO call
    overrides: dict[str, Override] = field(default_factory=dict)
    port: int = 0
    connections: int = 0
    commands: list[str] = field(default_factory=list)
    onions: dict[str, str] = field(default_factory=dict)  # service id -> target
    hook: Callable[[str], None] | None = None
    #: False: ADD_ONION with a proof-of-work keyword is refused as tor < 0.4.8 refuses it
    pow_supported: bool = True
    _streams: list[trio.SocketStream] = field(default_factory=list)
    _boot_idx: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def push_event(self, line: str) -> None:
        """Send ``650 <line>`` to every connected client."""
        for s in list(self._streams):
            try:
                await s.send_all(f"650 {line}\r\n".encode())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def drop_all(self) -> None:
        for s in list(self._streams):
            await s.aclose()

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self._streams.append(stream)
        buf = b""
        authed = False
        try:
            while True:
                while b"\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                line, buf = buf.split(b"\r\n", 1)
                cmd = line.decode("utf-8", "replace")
                self.commands.append(cmd.split(" ")[0] if cmd.startswith("AUTH") else cmd)
                if self.hook:
                    self.hook(cmd)
                verb = cmd.split(" ", 1)[0].upper()
                ov = self._override(cmd)
                if ov is not None:
                    if ov.silent:
                        await trio.sleep_forever()
                    await self._send(stream, ov.data, ov.chunk, ov.pause)
                    if ov.close:
                        return
                    continue
                reply, close = self._reply(verb, cmd, authed)
                if verb == "AUTHENTICATE" and reply.startswith(b"250"):
                    authed = True
                await stream.send_all(reply)
                if close:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            if stream in self._streams:
                self._streams.remove(stream)
            await stream.aclose()

    def _override(self, cmd: str) -> Override | None:
        for prefix, ov in self.overrides.items():
            if cmd.upper().startswith(prefix.upper()):
                if ov.times is not None:
                    if ov.times <= 0:
                        continue
                    ov.times -= 1
                return ov
        return None

    @staticmethod
    async def _send(stream: trio.SocketStream, data: bytes, chunk: int, pause: float) -> None:
        if chunk <= 0:
            await stream.send_all(data)
            return
        for i in range(0, len(data), chunk):
            await stream.send_all(data[i:i + chunk])
            if pause:
                await trio.sleep(pause)

    def _reply(self, verb: str, cmd: str, authed: bool) -> tuple[bytes, bool]:
        if verb == "PROTOCOLINFO":
            cookie = f' COOKIEFILE="{self.cookie_path}"' if self.cookie_path else ""
            return (f"250-PROTOCOLINFO 1\r\n250-AUTH METHODS={self.auth_methods}{cookie}\r\n"
                    f'250-VERSION Tor="{self.version}"\r\n250 OK\r\n').encode(), False
        if verb == "AUTHENTICATE":
            arg = cmd[len("AUTHENTICATE"):].strip()
            if "NULL" in self.auth_methods:
                return b"250 OK\r\n", False
            if self.password is not None and arg == f'"{self.password}"':
                return b"250 OK\r\n", False
            if self.cookie_path and arg and os.path.exists(self.cookie_path):
                with open(self.cookie_path, "rb") as f:
                    if arg.lower() == f.read().hex():
                        return b"250 OK\r\n", False
            return (b"515 Authentication failed: Password did not match "
                    b"HashedControlPassword value from configuration\r\n"), True
        if not authed:
            return b"514 Authentication required.\r\n", True
        if verb == "GETINFO":
            key = cmd.split(" ", 1)[1] if " " in cmd else ""
            return self._getinfo(key), False
        if verb == "GETCONF":
            key = cmd.split(" ", 1)[1] if " " in cmd else ""
            return f"250 {key}\r\n".encode(), False
        if verb in ("SETEVENTS", "SETCONF", "SIGNAL", "TAKEOWNERSHIP"):
            return b"250 OK\r\n", False
        if verb == "ADD_ONION":
            return self._add_onion(cmd), False
        if verb == "DEL_ONION":
            sid = cmd.split(" ", 1)[1].strip()
            if self.onions.pop(sid, None) is None:
                return f"552 Unknown Onion Service id {sid}\r\n".encode(), False
            return b"250 OK\r\n", False
        return f'510 Unrecognized command "{verb}"\r\n'.encode(), False

    def _getinfo(self, key: str) -> bytes:
        if key == "version":
            val = self.version
        elif key == "process/pid":
            val = str(self.pid)
        elif key == "status/bootstrap-phase":
            p = self.bootstrap[min(self._boot_idx, len(self.bootstrap) - 1)]
            self._boot_idx += 1
            tag = "done" if p >= 100 else "conn"
            summary = "Done" if p >= 100 else "Connecting to a relay"
            val = f'NOTICE BOOTSTRAP PROGRESS={p} TAG={tag} SUMMARY="{summary}"'
        elif key == "net/listeners/socks":
            val = '"127.0.0.1:9050"'
        elif key in ("onions/current", "onions/detached"):
            val = " ".join(self.onions) if key == "onions/current" else ""
            return f"250-{key}={val}\r\n250 OK\r\n".encode()
        else:
            return f'552 Unrecognized key "{key}"\r\n'.encode()
        return f"250-{key}={val}\r\n250 OK\r\n".encode()

    def _add_onion(self, cmd: str) -> bytes:
        parts = cmd.split(" ")
        pow_kw = next((p.split("=")[0] for p in parts if p.startswith("PoW")), None)
        if pow_kw is not None and not self.pow_supported:
            return (f'512 Bad arguments to ADD_ONION: Unrecognized keyword argument '
                    f'"{pow_kw}"\r\n').encode()
        ktype, _, kcontent = parts[1].partition(":")
        target = next((p[5:] for p in parts if p.startswith("Port=")), "")
        if ktype == "NEW":
            h = bytearray(secrets.token_bytes(64))
            h[0] &= 248
            h[31] &= 127
            h[31] |= 64
            key = OnionKey(bytes(h))
            sid = key.service_id
            if sid in self.onions:
                return b"550 Onion address collision\r\n"
            self.onions[sid] = target
            b64 = base64.b64encode(key.expanded).decode()
            return (f"250-ServiceID={sid}\r\n250-PrivateKey=ED25519-V3:{b64}\r\n"
                    "250 OK\r\n").encode()
        key = OnionKey.from_blob(kcontent)
        sid = key.service_id
        if sid in self.onions:
            return b"550 Onion address collision\r\n"
        self.onions[sid] = target
        return f"250-ServiceID={sid}\r\n250 OK\r\n".encode()
