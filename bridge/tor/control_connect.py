"""Opening and authenticating a Tor control connection for :mod:`bridge.tor.control`: the stem
logger's secret redaction, the length-bounded control sockets, the blocking connect-and-
authenticate step run in a worker thread, and the permission explanations for unreadable
cookie files.

Not the adapter itself (commands, events, deadlines live in :class:`bridge.tor.control.TorControl`).
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re
import socket
import stat
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import stem
import stem.connection
import stem.control
import stem.response
import stem.socket

from bridge.tor.control_values import ControlAuth, ControlEndpoint
from bridge.tor.errors import (
    AuthenticationError,
    ControlConnectionLost,
    ControlPortUnreachable,
    ControlProtocolError,
    CookieRejected,
    CookieUnreadable,
    NotAControlPort,
    NoUsableAuthMethod,
    PasswordRejected,
    PasswordRequired,
)


# --------------------------------------------------------------------------- redaction
class _RedactSecrets(logging.Filter):
    _patterns = (
        (re.compile(r"(AUTHENTICATE\s+)\S.*", re.I), r"\1<redacted>"),
        (re.compile(r"(ED25519-V3:)[A-Za-z0-9+/=]{20,}"), r"\1<redacted>"),
        (re.compile(r"(PrivateKey=\S+?:)\S+"), r"\1<redacted>"),
        (re.compile(r"(AUTHCHALLENGE\s+\S+\s+)\S+"), r"\1<redacted>"),
    )

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # pragma: no cover - a broken record is not ours to fix
            return True
        new = msg
        for pat, repl in self._patterns:
            new = pat.sub(repl, new)
        if new != msg:
            record.msg, record.args = new, ()
        return True


_stem_logger = logging.getLogger("stem")
if not any(isinstance(f, _RedactSecrets) for f in _stem_logger.filters):
    _stem_logger.addFilter(_RedactSecrets())


# --------------------------------------------------------------------------- permissions
def explain_unreadable(path: Path, *, uid: int | None = None,
                       gids: Iterable[int] | None = None) -> str:
    """Say why ``path`` cannot be read by ``uid``/``gids``: which component, its owner, group
    and mode, and which permission is missing."""
    uid = os.geteuid() if uid is None else uid
    gid_set = set(os.getgroups()) | {os.getegid()} if gids is None else set(gids)
    who = f"uid {uid} ({_user(uid)}), groups {','.join(_group(g) for g in sorted(gid_set))}"
    path = Path(path)
    parts = [*reversed(path.parents), path] if path.is_absolute() else [path]
    for i, comp in enumerate(parts):
        try:
            st = comp.stat()
        except FileNotFoundError:
            return (f"{comp} does not exist" if comp == path else
                    f"{comp} does not exist (needed for {path})") + \
                   " — is tor running with CookieAuthentication 1, and is this its cookie path?"
        except PermissionError:
            continue  # reported on the parent below
        is_last = i == len(parts) - 1
        need, verb = (4, "read") if is_last else (1, "search (x)")
        if uid == 0:
            continue
        if st.st_uid == uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid in gid_set:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        if not bits & need:
            kind = "file" if is_last else "directory"
            return (f"{kind} {comp} (owner {_user(st.st_uid)}, group {_group(st.st_gid)}, "
                    f"mode {stat.S_IMODE(st.st_mode):04o}) lacks {verb} permission for {who}"
                    + ("; e.g. run the bridge in tor's group and set CookieAuthFileGroupReadable 1"
                       if is_last else ""))
    if path.is_dir():
        return f"{path} is a directory, not a cookie file"
    return f"{path} could not be read by {who}"


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name}({uid})"
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name}({gid})"
    except KeyError:
        return str(gid)


# --------------------------------------------------------------------------- bounded reads
class _LineTooLong(ValueError):
    pass


class _BoundedFile:
    """File wrapper whose ``readline`` refuses lines longer than ``limit`` bytes."""

    def __init__(self, raw: Any, limit: int, owner: _BoundedSocket):
        self._raw, self._limit, self._owner = raw, limit, owner

    def readline(self, size: int = -1) -> bytes:
        line: bytes = self._raw.readline(self._limit + 1)
        if len(line) > self._limit and not line.endswith(b"\n"):
            self._owner.overflow = True
            raise _LineTooLong(f"reply line longer than {self._limit} bytes")
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _BoundedSocket:
    """Proxy for a socket whose ``makefile`` yields a :class:`_BoundedFile`."""

    def __init__(self, sock: socket.socket, limit: int):
        self._sock, self._limit = sock, limit
        self.overflow = False

    def makefile(self, *args: Any, **kwargs: Any) -> _BoundedFile:
        return _BoundedFile(self._sock.makefile(*args, **kwargs), self._limit, self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _BoundedControlPort(stem.socket.ControlPort):  # type: ignore[misc]
    def __init__(self, address: str, port: int, limit: int):
        self._limit = limit
        self.bounded: _BoundedSocket | None = None
        super().__init__(address, port, connect=True)

    def _make_socket(self) -> Any:
        self.bounded = _BoundedSocket(super()._make_socket(), self._limit)
        return self.bounded


class _BoundedControlSocketFile(stem.socket.ControlSocketFile):  # type: ignore[misc]
    def __init__(self, path: str, limit: int):
        self._limit = limit
        self.bounded: _BoundedSocket | None = None
        super().__init__(path, connect=True)

    def _make_socket(self) -> Any:
        self.bounded = _BoundedSocket(super()._make_socket(), self._limit)
        return self.bounded


def _close_in_background(holder: Iterable[Any]) -> None:
    items = list(holder)
    if not items:
        return

    def run() -> None:
        for c in items:
            try:
                c.close()
            except Exception:
                pass

    threading.Thread(target=run, name="tor-control-close", daemon=True).start()


def _connect_sync(endpoint: ControlEndpoint, auth: ControlAuth, password: str | None,
                  pw_source: str, max_line: int, holder: list[Any]) -> tuple[Any, Any, str]:
    # 1. transport
    try:
        if endpoint.socket_path is not None:
            sock: Any = _BoundedControlSocketFile(str(endpoint.socket_path), max_line)
        else:
            sock = _BoundedControlPort(endpoint.host, int(endpoint.port or 0), max_line)
    except stem.SocketError as exc:
        detail = str(exc)
        if endpoint.socket_path is not None and not endpoint.socket_path.exists():
            detail = f"{endpoint.socket_path} does not exist"
        raise ControlPortUnreachable(
            f"cannot connect to tor control port {endpoint}: {detail} — is tor running with "
            f"ControlPort {_torrc_value(endpoint)}?") from None
    holder.append(sock)
    ctrl = stem.control.Controller(sock)
    holder.append(ctrl)

    # 2. PROTOCOLINFO
    try:
        pi = stem.connection.get_protocolinfo(ctrl)
    except (stem.ProtocolError, stem.SocketError, stem.SocketClosed) as exc:
        overflow = sock.bounded is not None and sock.bounded.overflow
        ctrl.close()
        if overflow:
            raise ControlProtocolError(
                f"{endpoint}: PROTOCOLINFO reply line exceeded {max_line} bytes") from None
        raise NotAControlPort(
            f"{endpoint} accepted the connection but did not answer PROTOCOLINFO like a Tor "
            f"control port ({exc}); is this the SocksPort/ORPort or another service?"
        ) from None
    methods = {m.upper() for m in (str(x) for x in pi.auth_methods)}
    if auth.cookie_path is not None:
        pi.cookie_path = str(auth.cookie_path)
    cookie_path = pi.cookie_path
    if password is not None and "PASSWORD" in methods:
        # An explicitly configured password must work: no silent fallback to the cookie.
        pi.auth_methods = (stem.connection.AuthMethod.PASSWORD,)
        methods = {"PASSWORD"}

    # With no password and no NULL auth, the cookie is the only way in: say precisely why it is
    # unusable (stem would report a missing password first when HASHEDPASSWORD is also offered).
    if password is None and "NULL" not in methods and "NONE" not in methods \
            and methods & {"COOKIE", "SAFECOOKIE"} and cookie_path:
        why = _cookie_problem(Path(cookie_path))
        if why is not None:
            ctrl.close()
            alt = (" (tor also accepts a control password; configure one instead)"
                   if "PASSWORD" in methods else "")
            raise CookieUnreadable(
                f"tor at {endpoint}: cookie file {cookie_path} unusable: {why}{alt}",
                path=str(cookie_path))

    # 3. AUTHENTICATE (stem tries NULL, PASSWORD, SAFECOOKIE, COOKIE as offered)
    try:
        ctrl.authenticate(password=password, protocolinfo_response=pi)
    except stem.connection.IncorrectSocketType as exc:
        ctrl.close()
        raise NotAControlPort(f"{endpoint} is not a Tor control port: {exc}") from None
    except stem.connection.IncorrectPassword:
        ctrl.close()
        raise PasswordRejected(
            f"tor at {endpoint} rejected the control password taken from {pw_source}") from None
    except stem.connection.MissingPassword:
        ctrl.close()
        hint = ""
        if cookie_path and ("COOKIE" in methods or "SAFECOOKIE" in methods):
            hint = f" (cookie auth is offered too, but {cookie_path} was not usable)"
        raise PasswordRequired(
            f"tor at {endpoint} requires HASHEDPASSWORD authentication and no password is "
            f"configured (config value, env {auth.password_env or '-'}, or password file)"
            + hint) from None
    except (stem.connection.UnreadableCookieFile, stem.connection.IncorrectCookieSize) as exc:
        ctrl.close()
        path = str(getattr(exc, "cookie_path", cookie_path))
        why = (str(exc) if isinstance(exc, stem.connection.IncorrectCookieSize)
               else explain_unreadable(Path(path)))
        raise CookieUnreadable(f"tor at {endpoint}: cookie file {path} unusable: {why}",
                               path=path) from None
    except OSError as exc:  # stem's size check can raise PermissionError directly
        ctrl.close()
        path = str(cookie_path)
        raise CookieUnreadable(
            f"tor at {endpoint}: cookie file {path} unusable: "
            f"{explain_unreadable(Path(path))} ({exc.strerror})", path=path) from None
    except stem.connection.IncorrectCookieValue:
        ctrl.close()
        raise CookieRejected(
            f"tor at {endpoint} rejected the cookie read from {cookie_path}: it belongs to "
            "another tor instance or is stale (tor rewrites it at every start)") from None
    except stem.connection.NoAuthCookie:
        ctrl.close()
        raise NoUsableAuthMethod(
            f"tor at {endpoint} offers only cookie auth but did not say where the cookie is; "
            "configure the cookie path") from None
    except stem.connection.AuthenticationFailure as exc:
        ctrl.close()
        overflow = sock.bounded is not None and sock.bounded.overflow
        if overflow:
            raise ControlProtocolError(
                f"{endpoint}: an AUTHENTICATE reply line exceeded {max_line} bytes") from None
        raise AuthenticationError(
            f"authentication to tor at {endpoint} failed (offered: "
            f"{', '.join(sorted(methods)) or 'nothing'}): {exc}") from None
    except (stem.SocketError, stem.SocketClosed, stem.ProtocolError) as exc:
        ctrl.close()
        raise ControlConnectionLost(f"{endpoint}: connection lost while authenticating: {exc}"
                                    ) from None
    method = _which_method(methods, password)
    return ctrl, sock, method


def _cookie_problem(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read(64)
    except OSError as exc:
        return f"{explain_unreadable(path)} ({exc.strerror})"
    if len(data) != 32:
        return f"it is {len(data)} bytes, a Tor auth cookie is 32"
    return None


def _torrc_value(endpoint: ControlEndpoint) -> str:
    if endpoint.socket_path is not None:
        return f"unix:{endpoint.socket_path}"
    return f"{endpoint.host}:{endpoint.port}"


def _which_method(methods: set[str], password: str | None) -> str:
    for m, ok in (("NONE", True), ("PASSWORD", password is not None),
                  ("SAFECOOKIE", True), ("COOKIE", True)):
        if m in methods and ok:
            return {"NONE": "NULL", "PASSWORD": "HASHEDPASSWORD"}.get(m, m)
    return "unknown"
