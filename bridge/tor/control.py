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

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import stem
import stem.connection
import stem.control
import stem.response
import stem.socket
import trio

from bridge.core.peers import hostport
from bridge.tor.control_connect import (
    _close_in_background,
    _connect_sync,
    explain_unreadable,
)
from bridge.tor.control_values import (
    DEFAULT_EVENTS,
    DEFAULT_MAX_LINE,
    PASSWORD_ENV_DEFAULT,
    AddedOnion,
    BootstrapStatus,
    ControlAuth,
    ControlEndpoint,
    OnionDefenses,
    TorEvent,
    _convert_event,
    _refuses_pow,
    _reply_text,
    parse_bootstrap_phase,
)
from bridge.tor.errors import (
    BootstrapTimeout,
    ControlCommandFailed,
    ControlConnectionLost,
    ControlProtocolError,
    ControlTimeout,
    OnionPublishError,
    TorControlError,
)
from bridge.tor.keys import OnionKey

__all__ = [
    "DEFAULT_EVENTS",
    "DEFAULT_MAX_LINE",
    "PASSWORD_ENV_DEFAULT",
    "AddedOnion",
    "BootstrapStatus",
    "ControlAuth",
    "ControlEndpoint",
    "OnionDefenses",
    "TorControl",
    "TorEvent",
    "explain_unreadable",
    "parse_bootstrap_phase",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


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
        tgt = hostport(host, port)
        if key is None:
            ktype, kcontent = "NEW", "ED25519-V3"
        else:
            ktype, kcontent = "ED25519-V3", key.blob_content()
        want_pow = defenses is not None and defenses.pow
        streams = defenses.max_streams if defenses is not None else 0
        flags = ["Detach"] if detached else []
        if streams and defenses is not None and defenses.max_streams_close_circuit:
            flags.append("MaxStreamsCloseCircuit")

        def command(with_pow: bool) -> str:
            parts = [f"ADD_ONION {ktype}:{kcontent}"]
            if flags:
                parts.append("Flags=" + ",".join(flags))
            if streams:
                parts.append(f"MaxStreams={streams}")
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
        return AddedOnion(sid, new_key, pow=pow_on, max_streams=streams)

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
