"""A scripted SOCKS5 server on trio: a stand-in for Tor's SocksPort in relay tests.

It speaks RFC 1928 CONNECT with the no-auth and RFC 1929 username/password methods, records every
CONNECT request exactly as received (address type, host, port, credentials), routes it through a
test-supplied ``route(host, port)`` to a loopback listener (or fails it with a SOCKS reply code),
and splices bytes both ways. It never resolves names: domain targets (onion hosts included) only go
where ``route`` says.

Like Tor, when the client offers both methods it picks username/password (Tor does so because
IsolateSOCKSAuth keys circuits on the credentials); with ``require_auth`` it refuses clients that
do not offer it. Replies carry BND.ADDR 0.0.0.0:0, as Tor's do.

Failure injection:

* ``delay_reply``: seconds to wait after the CONNECT request before routing/replying.
* ``script(record)``: awaited after the request is parsed (and after ``delay_reply``); it may
  sleep itself, and returns an action string or None (= behave normally):

  - ``"stall"``: never reply; hold the connection open until the client goes away.
  - ``"close"``: close the connection without replying (mid-handshake close).
  - ``"reset"``: abort the connection with a TCP RST instead of replying.
  - ``"garbage"``: send bytes that are not a SOCKS reply, then close.
  - ``"reply:N"``: fail the request with reply code N without consulting ``route``.
  - ``"close-after:N"`` / ``"reset-after:N"``: reply success, splice, then close (FIN) or reset
    (RST) both sides once N bytes in total have been relayed (both directions counted).

``ConnectRecord.reply`` is the reply code sent, 0 for success, -1 when no reply was sent.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from bridge.aio import Signal

SOCKS_VERSION = 5
METHOD_NO_AUTH = 0x00
METHOD_USER_PASS = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF
CMD_CONNECT = 1
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4
REP_SUCCESS = 0
REP_GENERAL_FAILURE = 1
REP_HOST_UNREACHABLE = 4
REP_CONNECTION_REFUSED = 5
REP_COMMAND_NOT_SUPPORTED = 7
REP_ATYP_NOT_SUPPORTED = 8
NO_REPLY = -1

Route = Callable[[str, int], "tuple[str, int] | int"]


@dataclass
class ConnectRecord:
    atyp: str  # "ipv4" | "domain" | "ipv6" (or "unknown:<n>")
    host: str
    port: int
    username: str | None
    password: str | None
    reply: int  # SOCKS reply code sent (0 = success, -1 = none sent)
    method: int = METHOD_NO_AUTH  # auth method selected
    command: int = CMD_CONNECT
    target: tuple[str, int] | None = None  # where route() sent it
    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client


Script = Callable[[ConnectRecord], Awaitable[str | None]]


class _Abort(Exception):
    """Ends one client connection quietly."""


class _Reader:
    """Exact-size reads over a trio stream, keeping any surplus for the splice."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise _Abort("client closed during SOCKS handshake")
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def _rst(stream: trio.SocketStream) -> None:
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


def _reply(code: int) -> bytes:
    return bytes([SOCKS_VERSION, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0])


class ScriptedSocks5Server:
    def __init__(
        self,
        route: Route,
        *,
        require_auth: bool = False,
        delay_reply: float = 0.0,
        script: Script | None = None,
    ) -> None:
        self.route = route
        self.require_auth = require_auth
        self.delay_reply = delay_reply
        self.script = script
        self.port: int = 0
        self.records: list[ConnectRecord] = []
        self.connections = 0  # TCP connections accepted
        self.active = 0  # connections currently open
        self.errors: list[str] = []  # protocol problems seen from clients
        self._record_event = Signal()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on 127.0.0.1:0; ``port = await nursery.start(server.serve)``."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        sockname = listeners[0].socket.getsockname()
        self.port = sockname[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def wait_records(self, n: int) -> list[ConnectRecord]:
        """Wait (use with trio.fail_after) until at least n CONNECT requests were recorded."""
        while len(self.records) < n:
            await self._record_event.wait()
        return list(self.records)

    def _add_record(self, rec: ConnectRecord) -> None:
        self.records.append(rec)
        self._record_event.notify()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        self.active += 1
        try:
            await self._session(client)
        except _Abort as e:
            if str(e):
                self.errors.append(str(e))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            self.active -= 1
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(client)

    async def _session(self, client: trio.SocketStream) -> None:
        r = _Reader(client)
        ver, nmethods = await r.read(2)
        if ver != SOCKS_VERSION:
            raise _Abort(f"not SOCKS5 (version byte {ver})")
        methods = set(await r.read(nmethods))
        if METHOD_USER_PASS in methods:
            method = METHOD_USER_PASS
        elif METHOD_NO_AUTH in methods and not self.require_auth:
            method = METHOD_NO_AUTH
        else:
            await client.send_all(bytes([SOCKS_VERSION, METHOD_NONE_ACCEPTABLE]))
            raise _Abort(f"no acceptable auth method in {sorted(methods)}")
        await client.send_all(bytes([SOCKS_VERSION, method]))
        username = password = None
        if method == METHOD_USER_PASS:
            (auth_ver,) = await r.read(1)
            if auth_ver != 1:
                raise _Abort(f"bad RFC 1929 version {auth_ver}")
            (ulen,) = await r.read(1)
            username = (await r.read(ulen)).decode("utf-8", "backslashreplace")
            (plen,) = await r.read(1)
            password = (await r.read(plen)).decode("utf-8", "backslashreplace")
            await client.send_all(b"\x01\x00")

        ver, cmd, _rsv, atyp_b = await r.read(4)
        if ver != SOCKS_VERSION:
            raise _Abort(f"bad request version {ver}")
        if atyp_b == ATYP_IPV4:
            atyp, host = "ipv4", str(ipaddress.IPv4Address(await r.read(4)))
        elif atyp_b == ATYP_IPV6:
            atyp, host = "ipv6", str(ipaddress.IPv6Address(await r.read(16)))
        elif atyp_b == ATYP_DOMAIN:
            (n,) = await r.read(1)
            atyp, host = "domain", (await r.read(n)).decode("utf-8", "backslashreplace")
        else:
            self._add_record(
                ConnectRecord(
                    f"unknown:{atyp_b}",
                    "",
                    0,
                    username,
                    password,
                    REP_ATYP_NOT_SUPPORTED,
                    method,
                    cmd,
                )
            )
            await client.send_all(_reply(REP_ATYP_NOT_SUPPORTED))
            raise _Abort(f"unsupported address type {atyp_b}")
        (port,) = struct.unpack(">H", await r.read(2))
        rec = ConnectRecord(atyp, host, port, username, password, NO_REPLY, method, cmd)
        self._add_record(rec)

        if cmd != CMD_CONNECT:
            rec.reply = REP_COMMAND_NOT_SUPPORTED
            await client.send_all(_reply(rec.reply))
            raise _Abort(f"unsupported command {cmd}")
        if self.delay_reply > 0:
            await trio.sleep(self.delay_reply)
        action = await self.script(rec) if self.script is not None else None
        limit: int | None = None
        limit_mode = ""
        if action == "stall":
            await _drain_until_closed(client)
            return
        if action == "close":
            raise _Abort("")
        if action == "reset":
            _rst(client)
            raise _Abort("")
        if action == "garbage":
            await client.send_all(b"HTTP/1.0 400 Bad Request\r\n\r\n\x00\xff")
            raise _Abort("")
        if action is not None and action.startswith("reply:"):
            rec.reply = int(action.split(":", 1)[1])
            await client.send_all(_reply(rec.reply))
            raise _Abort("")
        if action is not None and action.startswith(("close-after:", "reset-after:")):
            limit_mode, _, count = action.partition(":")
            limit = int(count)
        elif action is not None:
            raise ValueError(f"unknown script action {action!r}")

        routed = self.route(host, port)
        if isinstance(routed, int):
            rec.reply = routed
            await client.send_all(_reply(routed))
            raise _Abort("")
        rec.target = routed
        sock = trio.socket.socket(socket.AF_INET6 if ":" in routed[0] else socket.AF_INET)
        try:
            await sock.connect(routed)
            upstream = trio.SocketStream(sock)
        except ConnectionRefusedError:
            sock.close()
            rec.reply = REP_CONNECTION_REFUSED
        except OSError:
            sock.close()
            rec.reply = REP_HOST_UNREACHABLE
        else:
            rec.reply = REP_SUCCESS
        if rec.reply != REP_SUCCESS:
            await client.send_all(_reply(rec.reply))
            raise _Abort("")
        try:
            await client.send_all(_reply(REP_SUCCESS))
            await self._splice(client, upstream, bytes(r.buf), rec, limit, limit_mode)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(upstream)

    async def _splice(
        self,
        client: trio.SocketStream,
        upstream: trio.SocketStream,
        early: bytes,
        rec: ConnectRecord,
        limit: int | None,
        limit_mode: str,
    ) -> None:
        async with trio.open_nursery() as nursery:

            def account(n: int, up: bool) -> bool:
                if up:
                    rec.bytes_up += n
                else:
                    rec.bytes_down += n
                if limit is not None and rec.bytes_up + rec.bytes_down >= limit:
                    if limit_mode == "reset-after":
                        _rst(client)
                        _rst(upstream)
                    nursery.cancel_scope.cancel()
                    return False
                return True

            async def pump(src: trio.SocketStream, dst: trio.SocketStream, up: bool) -> None:
                try:
                    while True:
                        data = await src.receive_some(65536)
                        if not data:
                            break
                        if limit is not None:
                            room = limit - rec.bytes_up - rec.bytes_down
                            data = data[: max(room, 0)]
                        await dst.send_all(data)
                        if not account(len(data), up):
                            return
                    try:
                        await dst.send_eof()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        nursery.cancel_scope.cancel()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    nursery.cancel_scope.cancel()

            if early:
                await upstream.send_all(early)
                if not account(len(early), True):
                    return
            nursery.start_soon(pump, client, upstream, True)
            nursery.start_soon(pump, upstream, client, False)


async def _drain_until_closed(client: trio.SocketStream) -> None:
    while True:
        try:
            data = await client.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        if not data:
            return
