"""A small typed, trio-friendly adapter over stem's blocking ``Controller``.

* Every stem call runs in a worker thread (``trio.to_thread.run_sync``) under a deadline; on a
  deadline the connection is torn down (so the abandoned thread ends) and :class:`ControlTimeout`
  is raised.
* stem delivers events on its own thread; they are converted to :class:`TorEvent` there and
  handed to trio with ``TrioToken.run_sync_soon`` (never blocks stem's thread) into a bounded
  memory channel; overflow is counted in ``events_dropped``, not buffered without limit.
* Reply lines are read through a length-limited file object: a line over ``max_line`` bytes
  closes the connection with :class:`ControlProtocolError` instead of growing memory.
* Passwords and onion keys are never logged: a filter on the ``stem`` logger redacts
  ``AUTHENTICATE`` arguments and key blobs even at stem's TRACE level.
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
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import stem
import stem.connection
import stem.control
import stem.response
import stem.socket
import trio

from bridge.tor.errors import (
    AuthenticationError,
    BootstrapTimeout,
    ControlCommandFailed,
    ControlConnectionLost,
    ControlPortUnreachable,
    ControlProtocolError,
    ControlTimeout,
    CookieRejected,
    CookieUnreadable,
    NotAControlPort,
    NoUsableAuthMethod,
    OnionPublishError,
    PasswordRejected,
    PasswordRequired,
    TorControlError,
)
from bridge.tor.keys import OnionKey

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_LINE = 1 << 20  # 1 MiB per reply line
DEFAULT_EVENTS = ("STATUS_CLIENT", "HS_DESC", "CIRC")
PASSWORD_ENV_DEFAULT = "KTB_TOR_CONTROL_PASSWORD"


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


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class ControlEndpoint:
    """``host:port`` (TCP) or ``socket_path`` (Unix control socket)."""

    host: str = "127.0.0.1"
    port: int | None = 9051
    socket_path: Path | None = None

    @classmethod
    def tcp(cls, host: str, port: int) -> ControlEndpoint:
        return cls(host=host, port=port)

    @classmethod
    def unix(cls, path: str | Path) -> ControlEndpoint:
        return cls(host="", port=None, socket_path=Path(path))

    @classmethod
    def parse(cls, text: str) -> ControlEndpoint:
        """``127.0.0.1:9051``, ``9051``, ``unix:/run/tor/control`` or ``/run/tor/control``."""
        if text.startswith("unix:"):
            return cls.unix(text[5:])
        if text.startswith("/"):
            return cls.unix(text)
        host, _, port = text.rpartition(":")
        return cls.tcp(host or "127.0.0.1", int(port))

    def __str__(self) -> str:
        if self.socket_path is not None:
            return f"unix:{self.socket_path}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ControlAuth:
    """What to authenticate with. Whatever PROTOCOLINFO offers is used (NULL, HASHEDPASSWORD,
    SAFECOOKIE, COOKIE). The password comes from ``password`` (config value), else the env var
    ``password_env``, else ``password_file`` (first line). ``cookie_path`` overrides the cookie
    location PROTOCOLINFO reports (e.g. tor in another mount namespace)."""

    password: str | None = field(default=None, repr=False)
    password_env: str | None = PASSWORD_ENV_DEFAULT
    password_file: Path | None = None
    cookie_path: Path | None = None

    def resolve_password(self) -> tuple[str | None, str]:
        """(password or None, where it came from — for messages; never the value)."""
        if self.password is not None:
            return self.password, "the bridge configuration"
        if self.password_env and os.environ.get(self.password_env):
            return os.environ[self.password_env], f"environment variable {self.password_env}"
        if self.password_file is not None:
            try:
                text = Path(self.password_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise AuthenticationError(
                    f"control password file {self.password_file} unreadable: {exc.strerror}"
                ) from exc
            return text.splitlines()[0] if text else "", f"password file {self.password_file}"
        return None, "no password configured"


@dataclass(frozen=True)
class BootstrapStatus:
    progress: int
    tag: str
    summary: str
    warning: str | None = None

    @property
    def done(self) -> bool:
        return self.progress >= 100


@dataclass(frozen=True)
class TorEvent:
    """A control-port event, flattened to plain data on stem's thread."""

    kind: str  # STATUS_CLIENT, HS_DESC, CIRC, STREAM, ...
    action: str  # STATUS action / HS_DESC action / CIRC or STREAM status
    arrived_at: float
    fields: dict[str, str]
    raw: str

    @property
    def severity(self) -> str:
        return self.fields.get("severity", "")


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


# --------------------------------------------------------------------------- the adapter
class TorControl:
    """One authenticated control connection. Create with :meth:`connect`.

    ``events`` receives :class:`TorEvent` for the event types given to :meth:`connect`;
    ``lost`` is set once the connection is gone (Tor stopped, socket closed, :meth:`close`).
    """

    def __init__(self, controller: Any, endpoint: ControlEndpoint, auth_method: str,
                 token: trio.lowlevel.TrioToken, event_buffer: int, call_timeout: float,
                 sock: Any):
        self._ctrl = controller
        self._sock = sock
        self.endpoint = endpoint
        self.auth_method = auth_method
        self.call_timeout = call_timeout
        self._token = token
        self.lost = trio.Event()
        self._send, self.events = trio.open_memory_channel[TorEvent](event_buffer)
        self.events_dropped = 0
        controller.add_status_listener(self._on_status, spawn=False)
        if not controller.is_alive():  # closed before the listener was in place
            self._mark_lost()

    # ---- construction
    @classmethod
    async def connect(
        cls,
        endpoint: ControlEndpoint,
        auth: ControlAuth | None = None,
        *,
        timeout: float = 15.0,
        call_timeout: float = 30.0,
        events: Sequence[str] = DEFAULT_EVENTS,
        event_buffer: int = 1000,
        max_line: int = DEFAULT_MAX_LINE,
    ) -> TorControl:
        """Connect, PROTOCOLINFO, authenticate (within ``timeout`` seconds) and subscribe to
        ``events``. Raises a :class:`TorControlError` subclass that names what is wrong."""
        auth = auth or ControlAuth()
        password, pw_source = auth.resolve_password()
        holder: list[Any] = []
        token = trio.lowlevel.current_trio_token()

        def work() -> tuple[Any, Any, str]:
            return _connect_sync(endpoint, auth, password, pw_source, max_line, holder)

        try:
            with trio.fail_after(timeout):
                ctrl, sock, method = await trio.to_thread.run_sync(work, abandon_on_cancel=True)
        except trio.TooSlowError:
            _close_in_background(holder)
            raise ControlTimeout(
                f"{endpoint}: no complete PROTOCOLINFO/AUTHENTICATE exchange within {timeout}s "
                "— something listens there but does not answer like a Tor control port "
                "(or tor is frozen)") from None
        except BaseException:
            _close_in_background(holder)
            raise
        self = cls(ctrl, endpoint, method, token, event_buffer, call_timeout, sock)
        if events:
            try:
                await self._call("SETEVENTS", lambda: ctrl.add_event_listener(
                    self._on_event, *[stem.control.EventType[e] for e in events]))
            except BaseException:
                await self.close()
                raise
        log.info("tor control %s: authenticated with %s", endpoint, method)
        return self

    # ---- stem callbacks (stem's threads)
    def _on_status(self, _ctrl: Any, state: Any, _ts: float) -> None:
        if state == stem.control.State.CLOSED:
            try:
                self._token.run_sync_soon(self._mark_lost)
            except trio.RunFinishedError:
                pass

    def _mark_lost(self) -> None:
        if not self.lost.is_set():
            self.lost.set()
            self._send.close()

    def _on_event(self, event: Any) -> None:
        ev = _convert_event(event)
        try:
            self._token.run_sync_soon(self._deliver, ev)
        except trio.RunFinishedError:
            pass

    def _deliver(self, ev: TorEvent) -> None:
        try:
            self._send.send_nowait(ev)
        except trio.WouldBlock:
            self.events_dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    # ---- plumbing
    async def _call(self, what: str, fn: Callable[[], T], timeout: float | None = None) -> T:
        timeout = self.call_timeout if timeout is None else timeout
        if self.lost.is_set():
            raise ControlConnectionLost(f"tor control {self.endpoint}: connection already closed")
        try:
            with trio.fail_after(timeout):
                return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)
        except trio.TooSlowError:
            self._abort()
            raise ControlTimeout(
                f"tor control {self.endpoint}: no reply to {what} within {timeout}s; "
                "connection dropped") from None
        except TorControlError:
            raise
        except stem.ProtocolError as exc:
            self._abort()
            raise self._protocol_error(what, exc) from None
        except stem.SocketClosed as exc:
            self._abort()
            if self._sock is not None and self._sock.bounded is not None \
                    and self._sock.bounded.overflow:
                raise self._protocol_error(what, exc) from None
            raise ControlConnectionLost(
                f"tor control {self.endpoint}: connection closed during {what} "
                "(tor stopped or restarted?)") from None
        except stem.SocketError as exc:
            self._abort()
            raise ControlConnectionLost(f"tor control {self.endpoint}: {what}: {exc}") from None
        except stem.ControllerError as exc:  # OperationFailed, InvalidRequest, ...
            code = getattr(exc, "code", None)
            raise ControlCommandFailed(
                f"tor control {self.endpoint}: {what} failed: {code or ''} {exc}".strip(),
                code=str(code) if code else None) from None
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            # stem choked on a reply it could not interpret: treat as a protocol error
            self._abort()
            raise self._protocol_error(what, exc) from None

    def _protocol_error(self, what: str, exc: Exception) -> ControlProtocolError:
        if self._sock is not None and self._sock.bounded is not None \
                and self._sock.bounded.overflow:
            return ControlProtocolError(
                f"tor control {self.endpoint}: {what}: a reply line exceeded "
                f"{self._sock.bounded._limit} bytes; connection dropped")
        return ControlProtocolError(f"tor control {self.endpoint}: {what}: malformed reply "
                                    f"({exc}); connection dropped")

    def _abort(self) -> None:
        """Drop the connection without waiting (unblocks any abandoned worker thread)."""
        self._mark_lost()
        _close_in_background([self._ctrl])

    # ---- queries
    async def getinfo(self, key: str, timeout: float | None = None) -> str:
        return str(await self._call(f"GETINFO {key}",
                                    lambda: self._ctrl.get_info(key), timeout))

    async def version(self) -> str:
        return await self.getinfo("version")

    async def pid(self) -> int | None:
        try:
            return int(await self.getinfo("process/pid"))
        except (ControlCommandFailed, ValueError):
            return None

    async def bootstrap_status(self, timeout: float | None = None) -> BootstrapStatus:
        """GETINFO status/bootstrap-phase → (progress %, tag, summary[, warning])."""
        line = await self.getinfo("status/bootstrap-phase", timeout)
        return parse_bootstrap_phase(line)

    async def wait_bootstrapped(
        self,
        timeout: float,
        on_progress: Callable[[BootstrapStatus], object] | None = None,
        poll: float = 0.25,
    ) -> BootstrapStatus:
        """Poll until 100 %; ``on_progress`` is called on every change. Raises
        :class:`BootstrapTimeout` (with the last progress/tag) after ``timeout`` seconds."""
        last: BootstrapStatus | None = None
        deadline = trio.current_time() + timeout
        while True:
            remaining = deadline - trio.current_time()
            st = await self.bootstrap_status(timeout=max(1.0, min(self.call_timeout, remaining)))
            if st != last:
                last = st
                if on_progress is not None:
                    on_progress(st)
            if st.done:
                return st
            if trio.current_time() + poll > deadline:
                raise BootstrapTimeout(
                    f"tor at {self.endpoint} still bootstrapping after {timeout}s: "
                    f"{st.progress}% {st.tag} ({st.summary})"
                    + (f"; warning: {st.warning}" if st.warning else ""),
                    progress=st.progress, tag=st.tag)
            await trio.sleep(poll)

    async def socks_listeners(self) -> list[tuple[str, int]]:
        """Tor's SOCKS listeners (GETINFO net/listeners/socks), e.g. [('127.0.0.1', 9050)]."""
        res = await self._call("GETINFO net/listeners/socks",
                               lambda: self._ctrl.get_socks_listeners())
        return [(str(h), int(p)) for h, p in res]

    # ---- onion services
    async def add_onion(
        self,
        virt_port: int,
        target: tuple[str, int],
        key: OnionKey | None,
        *,
        detached: bool = False,
        timeout: float = 60.0,
    ) -> tuple[str, OnionKey | None]:
        """ADD_ONION ``virt_port`` → ``target``. ``key=None`` asks Tor for a NEW ED25519-V3 key
        and returns it; otherwise returns ``(service_id, None)``."""
        added = await self.add_onion_with_defenses(virt_port, target, key, None,
                                                   detached=detached, timeout=timeout)
        return added.service_id, added.key

    async def add_onion_with_defenses(
        self,
        virt_port: int,
        target: tuple[str, int],
        key: OnionKey | None,
        defenses: OnionDefenses | None,
        *,
        detached: bool = False,
        timeout: float = 60.0,
    ) -> AddedOnion:
        """ADD_ONION with Tor's denial-of-service defences for the service (``defenses``).

        A tor that does not know the proof-of-work keywords (before 0.4.8, or built without its
        ``pow`` module) refuses the command naming them; it is then sent again without them and
        :attr:`AddedOnion.pow` says so. ``MaxStreams`` is older (0.2.7) and always sent."""
        host, port = target
        tgt = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if key is None:
            ktype, kcontent = "NEW", "ED25519-V3"
        else:
            ktype, kcontent = "ED25519-V3", key.blob_content()
        want_pow = defenses is not None and defenses.pow

        def command(with_pow: bool) -> str:
            flags = ["Detach"] if detached else []
            if defenses is not None and defenses.max_streams and \
                    defenses.max_streams_close_circuit:
                flags.append("MaxStreamsCloseCircuit")
            parts = [f"ADD_ONION {ktype}:{kcontent}"]
            if flags:
                parts.append("Flags=" + ",".join(flags))
            if defenses is not None and defenses.max_streams:
                parts.append(f"MaxStreams={defenses.max_streams}")
            parts.append(f"Port={virt_port},{tgt}")
            if with_pow and defenses is not None:
                parts += defenses.pow_keywords()
            return " ".join(parts)

        def work() -> tuple[Any, bool]:
            with_pow = want_pow
            reply = self._ctrl.msg(command(with_pow))
            if not reply.is_ok() and with_pow and _refuses_pow(reply):
                log.warning("tor at %s does not support proof-of-work defences for onion "
                            "services (%s): publishing without them; tor >= 0.4.8 with its "
                            "pow module has them", self.endpoint, _reply_text(reply))
                with_pow = False
                reply = self._ctrl.msg(command(with_pow))
            if not reply.is_ok():
                # e.g. "550 Onion address collision"; the connection itself is fine
                raise OnionPublishError(
                    f"tor at {self.endpoint} refused ADD_ONION for port {virt_port} -> "
                    f"{tgt}: {_reply_text(reply).replace(kcontent, '<key>')}")
            stem.response.convert("ADD_ONION", reply)
            return reply, with_pow

        try:
            resp, pow_on = await self._call("ADD_ONION", work, timeout + 5)
        except ControlCommandFailed as exc:
            raise OnionPublishError(str(exc).replace(kcontent, "<key>"), fault=None) from None
        sid = str(resp.service_id)
        new_key = None
        if key is None:
            if not resp.private_key or resp.private_key_type != "ED25519-V3":
                raise OnionPublishError(f"ADD_ONION NEW returned no ED25519-V3 key for {sid}")
            new_key = OnionKey.from_blob(str(resp.private_key))
        max_streams = defenses.max_streams if defenses is not None else 0
        return AddedOnion(sid, new_key, pow=pow_on, max_streams=max_streams)

    async def remove_onion(self, service_id: str, timeout: float | None = None) -> bool:
        """DEL_ONION; ``False`` if Tor did not know it."""
        return bool(await self._call(
            "DEL_ONION", lambda: self._ctrl.remove_ephemeral_hidden_service(service_id), timeout))

    async def onions(self) -> tuple[list[str], list[str]]:
        """(ours on this connection, detached) service ids."""
        cur = await self._call("GETINFO onions/current",
                               lambda: self._ctrl.get_info("onions/current", ""))
        det = await self._call("GETINFO onions/detached",
                               lambda: self._ctrl.get_info("onions/detached", ""))
        return str(cur).split(), str(det).split()

    # ---- teardown
    async def close(self, timeout: float = 5.0) -> None:
        """Close the connection (bounded: after ``timeout`` the close continues in the
        background)."""
        self._mark_lost()
        ctrl = self._ctrl
        with trio.move_on_after(timeout):
            await trio.to_thread.run_sync(ctrl.close, abandon_on_cancel=True)

    async def __aenter__(self) -> TorControl:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# --------------------------------------------------------------------------- onion defences
@dataclass(frozen=True)
class OnionDefenses:
    """Tor's denial-of-service defences for an onion service, given with ADD_ONION.

    * **Proof of work** at the introduction point (tor >= 0.4.8, proposal 327): when the service
      is flooded with introductions, clients must solve a puzzle whose effort tor raises with
      the load; honest clients pay nothing while there is no attack. ``pow_queue_rate`` /
      ``pow_queue_burst``: introductions tor handles per second / at most queued (``None``: tor's
      defaults, 250 and 2500).
    * ``max_streams``: streams one rendezvous circuit may open (0 = no limit); a peer needs one
      per connection. With ``max_streams_close_circuit`` a circuit that asks for more is closed.
    """

    pow: bool = True
    pow_queue_rate: int | None = None
    pow_queue_burst: int | None = None
    max_streams: int = 0
    max_streams_close_circuit: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.max_streams <= 65535:
            raise ValueError(f"max_streams {self.max_streams}: must be 0..65535")
        for name in ("pow_queue_rate", "pow_queue_burst"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 2**31 - 1:
                raise ValueError(f"{name} {v}: must be 0..2147483647")

    def pow_keywords(self) -> list[str]:
        """The ADD_ONION keywords of the proof-of-work defence (empty when it is off)."""
        if not self.pow:
            return []
        out = ["PoWDefensesEnabled=1"]
        if self.pow_queue_rate is not None:
            out.append(f"PoWQueueRate={self.pow_queue_rate}")
        if self.pow_queue_burst is not None:
            out.append(f"PoWQueueBurst={self.pow_queue_burst}")
        return out


@dataclass(frozen=True)
class AddedOnion:
    """What ADD_ONION created: the service id, the key when tor made a NEW one, and the
    defences tor accepted (``pow`` False: not asked for, or tor does not support it)."""

    service_id: str
    key: OnionKey | None
    pow: bool = False
    max_streams: int = 0


def _reply_text(reply: Any) -> str:
    """A control reply's text without status codes (``Invalid PoWQueueRate``)."""
    return " ".join(str(text) for _code, _divider, text in reply.content())


def _refuses_pow(reply: Any) -> bool:
    """A tor reply refusing the proof-of-work keywords themselves (unknown keyword, or a tor
    built without the pow module), as opposed to a collision or a bad key."""
    code = str(reply.content()[0][0])
    return code.startswith("5") and "pow" in _reply_text(reply).lower()


# --------------------------------------------------------------------------- helpers
_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_bootstrap_phase(line: str) -> BootstrapStatus:
    """Parse ``NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"``."""
    kv = {k.upper(): (v[1:-1].replace('\\"', '"') if v.startswith('"') else v)
          for k, v in _KV.findall(line)}
    try:
        progress = int(kv.get("PROGRESS", ""))
    except ValueError:
        raise ControlProtocolError(f"unparsable bootstrap phase: {line[:200]!r}") from None
    return BootstrapStatus(progress, kv.get("TAG", ""), kv.get("SUMMARY", ""),
                           kv.get("WARNING"))


def _convert_event(event: Any) -> TorEvent:
    kind = str(getattr(event, "type", "UNKNOWN"))
    raw = str(event)
    fields: dict[str, str] = {}
    action = ""
    try:
        if kind in ("STATUS_CLIENT", "STATUS_GENERAL", "STATUS_SERVER"):
            action = str(event.action)
            fields = {str(k).lower(): str(v) for k, v in (event.arguments or {}).items()}
            fields["severity"] = str(event.runlevel)
        elif kind == "HS_DESC":
            action = str(event.action)
            fields = {"address": str(event.address), "directory": str(event.directory or ""),
                      "reason": str(event.reason or "")}
        elif kind in ("CIRC", "STREAM"):
            action = str(event.status)
            fields = {"id": str(event.id), "reason": str(event.reason or ""),
                      "remote_reason": str(getattr(event, "remote_reason", "") or "")}
            if kind == "STREAM":
                fields["circ_id"] = str(event.circ_id or "")
                fields["target"] = str(event.target or "")
                kw = getattr(event, "keyword_args", None) or {}
                fields["socks_username"] = str(kw.get("SOCKS_USERNAME", "") or "")
            else:
                fields["purpose"] = str(event.purpose or "")
    except Exception as exc:  # malformed event: keep the raw line
        fields["parse_error"] = str(exc)
    return TorEvent(kind, action, time.time(), fields, raw)


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
