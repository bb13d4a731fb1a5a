"""Self-healing Tor supervision for the bridge.

:class:`TorSupervisor` keeps one authenticated control connection. When it is lost (tor killed,
stopped cleanly, restarted, frozen), it reconnects with bounded, jittered exponential backoff,
re-authenticates, waits for bootstrap and re-publishes the **same** onion service from the key
file. The rest of the bridge reads :attr:`TorSupervisor.status` and awaits
:meth:`TorSupervisor.wait_usable` before dialing upstream.

Onion lifetime choice: the service is added **without** ``Flags=Detach``. It lives exactly as long
as the supervisor's control connection, so

* if the bridge crashes or is killed, Tor drops the service at once: no descriptor keeps pointing
  peers at a dead listener, and no orphan blocks the next start with "Onion address collision";
* if the connection drops but Tor survives, the service is gone too and the supervisor re-adds it
  on reconnect (same key → same address) — the same path as a Tor restart, so one code path heals
  both.

A leftover *detached* service with our address (e.g. added by kaspad's TorManager with
``Flags=Detach``, or an older bridge) is removed with ``DEL_ONION`` and re-added as ours; one held
by another live control connection cannot be removed and is reported as
:class:`OnionPublishError`. On graceful shutdown ``DEL_ONION`` is sent with a bounded timeout.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from bridge.aio import Signal
from bridge.core.errors import BridgeError
from bridge.core.kaspa import MAINNET, find_network
from bridge.tor.control import (
    DEFAULT_EVENTS,
    AddedOnion,
    BootstrapStatus,
    ControlAuth,
    ControlEndpoint,
    OnionDefenses,
    TorControl,
    TorEvent,
)
from bridge.tor.errors import (
    AuthenticationError,
    BootstrapTimeout,
    ControlCommandFailed,
    ControlConnectionLost,
    OnionKeyError,
    OnionPublishError,
    TorControlError,
    TorUnavailable,
)
from bridge.tor.keys import OnionKey, load_key, save_key

log = logging.getLogger(__name__)


class TorState(enum.Enum):
    CONNECTING = "connecting"
    BOOTSTRAPPING = "bootstrapping"
    PUBLISHING = "publishing onion"
    READY = "ready"
    DOWN = "down"
    STOPPED = "stopped"


@dataclass(frozen=True)
class OnionSpec:
    """Publish ``<id>.onion:virt_port`` → ``target`` with the key at ``key_path``."""

    key_path: Path
    target: tuple[str, int]
    virt_port: int = MAINNET.p2p_port
    #: Tor's DoS defences for the service (None: ask for none, tor's defaults)
    defenses: OnionDefenses | None = None

    @classmethod
    def for_network(cls, data_dir: Path, network: str, target: tuple[str, int],
                    virt_port: int | None = None,
                    defenses: OnionDefenses | None = None) -> OnionSpec:
        from bridge.tor.keys import default_key_path

        known = find_network(network)  # "simnet" or "kaspa-simnet"; default: mainnet's port
        default_port = (known or MAINNET).p2p_port
        return cls(default_key_path(data_dir, network), target,
                   virt_port if virt_port is not None else default_port, defenses)


@dataclass(frozen=True)
class Backoff:
    """Delay before reconnect attempt ``n`` (0-based): min(cap, initial * factor**n), times a
    random factor in [1 - jitter, 1]."""

    initial: float = 0.25
    factor: float = 2.0
    cap: float = 5.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        base = min(self.cap, self.initial * math.pow(self.factor, min(attempt, 64)))
        r = (rng or random).random()
        return base * (1.0 - self.jitter * r)


@dataclass(frozen=True)
class TorStatus:
    """A snapshot for the rest of the bridge (and the status command / logs)."""

    state: TorState = TorState.CONNECTING
    usable: bool = False  # connected + bootstrapped: SOCKS dialing works
    onion_published: bool = False  # the onion service is up on the current connection
    bootstrap: BootstrapStatus | None = None
    onion_address: str | None = None  # "<56 chars>.onion"
    onion_port: int | None = None
    #: proof-of-work defence on the published onion: True on, False asked for but this tor
    #: lacks it, None not asked for (tor.onion_pow = false) or nothing published yet
    onion_pow: bool | None = None
    onion_max_streams: int | None = None  # streams per rendezvous circuit (0: no limit)
    socks_listeners: tuple[tuple[str, int], ...] = ()
    tor_version: str | None = None
    tor_pid: int | None = None
    auth_method: str | None = None
    connects: int = 0  # successful connections (first one included)
    reconnects: int = 0  # successful connections after a loss
    restarts_seen: int = 0  # tor came back with a different PID
    connection_losses: int = 0
    attempts_failed: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    down_since: float | None = None  # monotonic (trio clock) when the loss was noticed
    last_recovery_seconds: float | None = None  # loss noticed → READY (onion re-added)
    recovery_times: tuple[float, ...] = ()
    hs_desc_uploaded: int = 0
    hs_desc_upload_failures: int = 0
    last_hs_desc_failure: str | None = None
    circuits_failed: int = 0
    last_circuit_failure: str | None = None
    client_warnings: tuple[str, ...] = field(default=())  # last few STATUS_CLIENT WARN/ERR
    events_dropped: int = 0


#: the :class:`TorStatus` fields that count events (``/status`` and ``/metrics`` show each)
TOR_COUNTERS = ("connects", "reconnects", "restarts_seen", "connection_losses", "attempts_failed",
                "hs_desc_uploaded", "hs_desc_upload_failures", "circuits_failed",
                "events_dropped")


@dataclass(frozen=True, slots=True)
class TorStats:
    """What :meth:`TorSupervisor.stats` reports: the control endpoint and the status."""

    control: str
    status: TorStatus
    managed: bool = False  # the bridge runs this tor itself (tor.managed)
    bridges: tuple[str, ...] = ()  # its Tor bridges, redacted (BridgeLine.redacted)


ControlFactory = Callable[[ControlEndpoint, ControlAuth], Awaitable[TorControl]]


class TorSupervisor:
    """Keeps Tor usable. Run :meth:`run` in a nursery (``await nursery.start(sup.run)`` returns
    once the first connection attempt is made, whatever its outcome)."""

    def __init__(
        self,
        endpoint: ControlEndpoint,
        auth: ControlAuth | None = None,
        *,
        onion: OnionSpec | None = None,
        backoff: Backoff | None = None,
        bootstrap_timeout: float = 120.0,
        publish_timeout: float = 60.0,
        health_interval: float = 5.0,
        health_timeout: float = 10.0,
        remove_timeout: float = 3.0,
        stable_after: float = 5.0,
        events: tuple[str, ...] = DEFAULT_EVENTS,
        connect: ControlFactory | None = None,
        on_change: Callable[[TorStatus], object] | None = None,
        rng: random.Random | None = None,
        quiet_start: bool = False,
    ):
        self.endpoint = endpoint
        self.auth = auth or ControlAuth()
        self.onion = onion
        self.backoff = backoff or Backoff()
        self.bootstrap_timeout = bootstrap_timeout
        self.publish_timeout = publish_timeout
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.remove_timeout = remove_timeout
        #: a connection usable for this long resets the reconnect backoff
        self.stable_after = stable_after
        self._events = events
        self._connect = connect or self._default_connect
        self._on_change = on_change
        self._rng = rng or random.Random()
        self._status = TorStatus()
        self._changed = Signal()
        self._control: TorControl | None = None
        self._key: OnionKey | None = None
        self._service_id: str | None = None
        self._last_pid: int | None = None
        self._stopping = False
        self._circ_log_at = 0.0
        self._circ_suppressed = 0
        self._reached_usable = False
        self._usable_at = 0.0
        #: while :meth:`wait_ready` reports the startup (from the start with ``quiet_start``,
        #: for a caller that calls it next), the per-attempt lines go to debug
        self._quiet = quiet_start

    async def _default_connect(self, ep: ControlEndpoint, auth: ControlAuth) -> TorControl:
        return await TorControl.connect(ep, auth, events=self._events,
                                        call_timeout=self.health_timeout)

    # ------------------------------------------------------------------ public state
    @property
    def status(self) -> TorStatus:
        return self._status

    def stats(self) -> TorStats:
        return TorStats(str(self.endpoint), self._status)

    @property
    def control(self) -> TorControl | None:
        """The live control connection (None while down). Do not keep it across awaits."""
        return self._control

    @property
    def onion_address(self) -> str | None:
        return self._status.onion_address

    async def wait_usable(self, timeout: float | None = None, *,
                          onion: bool = False) -> TorStatus:
        """Return once Tor is connected and bootstrapped (what the upstream dialer needs); with
        ``onion=True`` also wait until the onion service is (re-)published. With ``timeout``,
        raise :class:`TorUnavailable` after that many seconds."""
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while not self._ready(onion):
                await self._changed.wait()
            return self._status
        raise self._unavailable(timeout, onion)

    def _ready(self, onion: bool) -> bool:
        return self._status.usable and (self._status.onion_published or not onion)

    def _unavailable(self, timeout: float | None, onion: bool) -> TorUnavailable:
        st = self._status
        return TorUnavailable(
            f"tor not usable{' (onion)' if onion else ''} after {timeout}s "
            f"(state {st.state.value}"
            + (f", bootstrap {st.bootstrap.progress}%" if st.bootstrap else "")
            + (f"; last error: {st.last_error}" if st.last_error else "") + ")")

    async def wait_ready(self, timeout: float, *, onion: bool = False,
                         report_every: float = 15.0, grace: float = 1.0,
                         timeout_name: str = "timeout") -> TorStatus:
        """:meth:`wait_usable` for the daemon's startup, said once rather than every attempt.

        Tor ready within ``grace`` seconds: one line, "tor ready after 0.3 s". Otherwise one
        line saying what the bridge waits for (tor's control port, its bootstrap, the onion's
        publication) and for how long (``timeout``, named ``timeout_name``), then at most one
        progress line every ``report_every`` seconds (bootstrap percent, or seconds waited), a
        line when the phase changes or a new error appears (each error text once), and "tor
        ready after 12.3 s". Meanwhile the supervisor's per-attempt lines go to debug. Raises
        :class:`TorUnavailable` after ``timeout`` (the caller says what that means)."""
        t0 = trio.current_time()
        deadline = t0 + timeout
        self._quiet = True
        try:
            with trio.move_on_after(min(grace, timeout)):
                while not self._ready(onion):
                    await self._changed.wait()
            if not self._ready(onion):
                phase = self._phase()
                errors = {self._status.last_error}
                phases = {phase}
                log.log(logging.WARNING if phase == "control" else logging.INFO,
                        "waiting for %s; up to %s s (%s), progress every %s s",
                        self._waiting_for(phase), _num(timeout), timeout_name,
                        _num(report_every))
                next_report = trio.current_time() + report_every
                while not self._ready(onion):
                    now = trio.current_time()
                    if now >= deadline:
                        raise self._unavailable(timeout, onion)
                    with trio.move_on_after(min(next_report, deadline) - now):
                        await self._changed.wait()
                    if self._ready(onion):
                        break
                    now = trio.current_time()
                    st = self._status
                    if st.last_error not in errors:
                        errors.add(st.last_error)
                        log.warning("tor: %s", st.last_error)
                    if self._phase() != phase:
                        phase = self._phase()
                        if phase not in phases:  # each phase once: a flapping tor is no flood
                            phases.add(phase)
                            log.info("now waiting for %s", self._waiting_for(phase))
                    elif now >= next_report and now < deadline:
                        log.info("still waiting for %s: %.0f s of %s s", self._progress(phase),
                                 now - t0, _num(timeout))
                    if now >= next_report:
                        next_report = now + report_every
            log.info("tor ready after %.1f s%s", trio.current_time() - t0,
                     f" (onion {self._status.onion_address} published)" if onion else "")
            return self._status
        finally:
            self._quiet = False

    def _phase(self) -> str:
        state = self._status.state
        if state in (TorState.CONNECTING, TorState.DOWN, TorState.STOPPED):
            return "control"
        return "onion" if state is TorState.PUBLISHING else "bootstrap"

    def _waiting_for(self, phase: str) -> str:
        st = self._status
        if phase == "control":
            why = f" ({st.last_error})" if st.last_error else ""
            return f"tor's control port at {self.endpoint}{why}"
        if phase == "onion":
            return "tor to publish the onion service"
        return f"tor to bootstrap{_bootstrap_text(st.bootstrap)}"

    def _progress(self, phase: str) -> str:
        if phase == "control":
            return (f"tor's control port at {self.endpoint} "
                    f"({self._status.attempts_failed} attempts failed)")
        return self._waiting_for(phase)

    async def wait_changed(self) -> TorStatus:
        await self._changed.wait()
        return self._status

    def _set(self, **kw: object) -> None:
        self._status = replace(self._status, **kw)  # type: ignore[arg-type]
        self._changed.notify()
        if self._on_change is not None:
            try:
                self._on_change(self._status)
            except Exception:
                log.exception("tor status callback failed")

    def _error(self, exc: BaseException) -> None:
        msg = exc.describe() if isinstance(exc, BridgeError) else f"{type(exc).__name__}: {exc}"
        self._set(last_error=msg, last_error_at=time.time())

    # ------------------------------------------------------------------ main loop
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        attempt = 0
        started = False
        try:
            while not self._stopping:
                if self._status.down_since is None:
                    self._set(down_since=trio.current_time())
                self._set(state=TorState.CONNECTING, usable=False, onion_published=False)
                try:
                    ctl = await self._connect(self.endpoint, self.auth)
                except (TorControlError, OnionKeyError) as exc:
                    self._attempt_failed(exc, attempt)
                    if not started:
                        started = True
                        task_status.started()
                    await trio.sleep(self.backoff.delay(attempt, self._rng))
                    attempt += 1
                    continue
                if not started:
                    started = True
                    task_status.started()
                self._reached_usable = False
                try:
                    await self._serve(ctl)
                except (TorControlError, OnionKeyError) as exc:
                    self._error(exc)
                finally:
                    self._control = None
                    with trio.CancelScope(shield=True):
                        await ctl.close(timeout=1.0)
                # a connection that worked resets the backoff; one that failed before Tor was
                # usable (e.g. stuck or refusing) keeps growing it
                stable = self._reached_usable and \
                    trio.current_time() - self._usable_at >= self.stable_after
                attempt = 0 if stable else attempt + 1
                if not self._stopping:
                    self._set(state=TorState.DOWN, usable=False, onion_published=False,
                              connection_losses=self._status.connection_losses + 1,
                              down_since=self._status.down_since or trio.current_time())
                    log.warning("tor control %s lost (%s); reconnecting", self.endpoint,
                                self._status.last_error or "connection closed")
                    await trio.sleep(self.backoff.delay(attempt, self._rng))
        finally:
            self._set(state=TorState.STOPPED, usable=False)

    def _attempt_failed(self, exc: BaseException, attempt: int) -> None:
        self._error(exc)
        self._set(attempts_failed=self._status.attempts_failed + 1)
        level = logging.WARNING
        if attempt > 0 and not isinstance(exc, (AuthenticationError, OnionKeyError)):
            level = logging.INFO if attempt < 5 else logging.WARNING
        if self._quiet:  # wait_ready says it once, with progress
            level = logging.DEBUG
        log.log(level, "tor: %s", self._status.last_error)

    async def _serve(self, ctl: TorControl) -> None:
        self._control = ctl
        pid = await ctl.pid()
        version = await ctl.version()
        restarted = self._last_pid is not None and pid is not None and pid != self._last_pid
        first = self._status.connects == 0
        self._last_pid = pid
        self._set(connects=self._status.connects + 1,
                  reconnects=self._status.reconnects + (0 if first else 1),
                  restarts_seen=self._status.restarts_seen + (1 if restarted else 0),
                  tor_pid=pid, tor_version=version, auth_method=ctl.auth_method,
                  state=TorState.BOOTSTRAPPING)
        if restarted:
            log.warning("tor restarted (pid %s); re-bootstrapping and re-publishing", pid)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._consume_events, ctl)
                await self._serve_body(ctl, first, version)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as eg:
            cancelled, rest = eg.split(trio.Cancelled)
            if rest is None:
                raise
            leaves = _leaves(rest)
            if cancelled is not None and all(
                    isinstance(e, (TorControlError, OnionKeyError)) for e in leaves):
                # We are being cancelled (shutdown) and tor went away meanwhile: only the
                # cancellation matters, or the error would escape past the cancel scope.
                raise cancelled from None
            if len(leaves) == 1:
                raise leaves[0] from None
            raise

    async def _serve_body(self, ctl: TorControl, first: bool, version: str) -> None:
        def progress(st: BootstrapStatus) -> None:
            self._set(bootstrap=st)
            log.log(logging.DEBUG if self._quiet else logging.INFO,
                    "tor bootstrap %d%% (%s)%s", st.progress, st.summary,
                    f" — warning: {st.warning}" if st.warning else "")

        while True:
            try:
                await ctl.wait_bootstrapped(self.bootstrap_timeout, progress)
                break
            except BootstrapTimeout as exc:  # keep waiting on this connection
                self._error(exc)
                log.log(logging.DEBUG if self._quiet else logging.WARNING, "tor: %s", exc)
        try:
            listeners = tuple(await ctl.socks_listeners())
        except ControlCommandFailed:
            listeners = ()
        self._reached_usable = True
        self._usable_at = trio.current_time()
        self._set(socks_listeners=listeners, usable=True,
                  state=TorState.PUBLISHING if self.onion is not None else TorState.READY)
        if self.onion is not None:
            attempt = 0
            while True:  # publication problems do not drop a working connection
                try:
                    await self._publish(ctl)
                    break
                except (OnionPublishError, OnionKeyError) as exc:
                    self._error(exc)
                    log.warning("onion service not published: %s; retrying", exc)
                    await trio.sleep(self.backoff.delay(attempt + 2, self._rng))
                    attempt += 1
        recovery = None
        if self._status.down_since is not None and not first:
            recovery = trio.current_time() - self._status.down_since
        self._set(state=TorState.READY, usable=True, down_since=None,
                  last_recovery_seconds=recovery if recovery is not None
                  else self._status.last_recovery_seconds,
                  recovery_times=((*self._status.recovery_times, recovery))[-20:]
                  if recovery is not None else self._status.recovery_times)
        if recovery is not None:
            log.warning("tor usable again after %.2fs%s", recovery,
                        f"; onion {self._status.onion_address} re-published"
                        if self.onion else "")
        else:
            log.info("tor usable (%s, socks %s)", version, listeners)
        await self._health(ctl)

    async def _health(self, ctl: TorControl) -> None:
        """Until the connection is lost: cheap periodic GETINFO to detect a frozen tor."""
        while True:
            with trio.move_on_after(self.health_interval):
                await ctl.lost.wait()
            if ctl.lost.is_set():
                raise ControlConnectionLost(f"tor control {self.endpoint}: connection closed")
            st = await ctl.bootstrap_status(timeout=self.health_timeout)
            if st != self._status.bootstrap:
                self._set(bootstrap=st)

    # ------------------------------------------------------------------ onion
    def _load_or_none(self) -> OnionKey | None:
        assert self.onion is not None
        if self._key is None:
            self._key = load_key(self.onion.key_path)
            if self._key is not None:
                log.info("onion key loaded from %s (address %s.onion); back this file up: it "
                         "is the node's onion identity", self.onion.key_path,
                         self._key.service_id)
        return self._key

    async def _publish(self, ctl: TorControl) -> None:
        spec = self.onion
        assert spec is not None
        key = self._load_or_none()
        try:
            added = await self._add(ctl, key)
        except OnionPublishError as exc:
            if key is None or "collision" not in str(exc).lower():
                raise
            _cur, detached = await ctl.onions()
            if key.service_id not in detached:
                raise OnionPublishError(
                    f"onion {key.service_id}.onion is already published by another live control "
                    "connection (kaspad's TorManager with the same key?); stop it first") from None
            log.warning("removing a leftover detached copy of %s.onion and re-adding it as "
                        "ours", key.service_id)
            await ctl.remove_onion(key.service_id)
            added = await self._add(ctl, key)
        sid, new_key = added.service_id, added.key
        if new_key is not None:
            try:
                save_key(spec.key_path, new_key)
            except OnionKeyError:
                with trio.move_on_after(self.remove_timeout):
                    await ctl.remove_onion(sid)
                raise
            self._key = new_key
            log.warning("created a new onion identity %s.onion; key saved to %s — back this "
                        "file up (losing it changes the node's onion address)", sid,
                        spec.key_path)
        elif key is not None and sid != key.service_id:
            raise OnionPublishError(f"tor published {sid}.onion, expected "
                                    f"{key.service_id}.onion from {spec.key_path}")
        self._service_id = sid
        asked = spec.defenses is not None and spec.defenses.pow
        self._set(onion_address=f"{sid}.onion", onion_port=spec.virt_port,
                  onion_published=True, onion_pow=added.pow if asked else None,
                  onion_max_streams=added.max_streams)
        log.info("onion service %s.onion:%d -> %s:%d published (proof-of-work defence %s, "
                 "streams per circuit %s)", sid, spec.virt_port, *spec.target,
                 "on" if added.pow else "off", added.max_streams or "unlimited")

    async def _add(self, ctl: TorControl, key: OnionKey | None) -> AddedOnion:
        spec = self.onion
        assert spec is not None
        return await ctl.add_onion_with_defenses(spec.virt_port, spec.target, key,
                                                 spec.defenses, detached=False,
                                                 timeout=self.publish_timeout)

    # ------------------------------------------------------------------ events
    async def _consume_events(self, ctl: TorControl) -> None:
        async for ev in ctl.events:
            self._on_event(ev)
            if ctl.events_dropped != self._status.events_dropped:
                self._set(events_dropped=ctl.events_dropped)

    def _on_event(self, ev: TorEvent) -> None:
        if ev.kind == "STATUS_CLIENT":
            args = " ".join(f"{k}={v}" for k, v in ev.fields.items() if k != "severity")
            if ev.action == "BOOTSTRAP":
                return  # reported by the bootstrap poller
            if ev.severity in ("WARN", "ERR"):
                log.warning("tor client status %s %s", ev.action, args)
                warn = f"{ev.action} {args}".strip()
                self._set(client_warnings=(*self._status.client_warnings, warn)[-10:])
            else:
                log.info("tor client status %s %s", ev.action, args)
        elif ev.kind == "HS_DESC":
            if ev.action == "FAILED" and self._is_ours(ev.fields.get("address")):
                reason = ev.fields.get("reason") or "unknown"
                log.warning("onion descriptor upload for %s.onion to %s failed: %s",
                            ev.fields.get("address"), ev.fields.get("directory"), reason)
                self._set(hs_desc_upload_failures=self._status.hs_desc_upload_failures + 1,
                          last_hs_desc_failure=f"{ev.fields.get('directory')}: {reason}")
            elif ev.action == "UPLOADED":
                self._set(hs_desc_uploaded=self._status.hs_desc_uploaded + 1)
        elif ev.kind == "CIRC" and ev.action == "FAILED":
            reason = ev.fields.get("reason") or "unknown"
            rr = ev.fields.get("remote_reason")
            text = f"circuit {ev.fields.get('id')} ({ev.fields.get('purpose')}) failed: " \
                   f"{reason}" + (f"/{rr}" if rr else "")
            self._set(circuits_failed=self._status.circuits_failed + 1,
                      last_circuit_failure=text)
            now = time.monotonic()
            if now - self._circ_log_at >= 5.0:
                extra = f" (+{self._circ_suppressed} more since last report)" \
                    if self._circ_suppressed else ""
                log.info("tor %s%s", text, extra)
                self._circ_log_at, self._circ_suppressed = now, 0
            else:
                self._circ_suppressed += 1

    def _is_ours(self, address: str | None) -> bool:
        return address is not None and (self._service_id is None or address == self._service_id)

    # ------------------------------------------------------------------ shutdown
    async def stop(self) -> None:
        """Remove the onion (DEL_ONION, bounded by ``remove_timeout``) and close the control
        connection. The caller then cancels the nursery running :meth:`run`."""
        self._stopping = True
        ctl, sid = self._control, self._service_id
        if ctl is not None and sid is not None and not ctl.lost.is_set():
            with trio.move_on_after(self.remove_timeout) as cs:
                try:
                    await ctl.remove_onion(sid, timeout=self.remove_timeout)
                    log.info("onion service %s.onion removed", sid)
                except TorControlError as exc:
                    log.info("DEL_ONION %s.onion failed (%s); closing the control connection "
                             "removes it anyway", sid, exc)
            if cs.cancelled_caught:
                log.info("DEL_ONION timed out after %.1fs; closing the control connection "
                         "removes the service anyway", self.remove_timeout)
        if ctl is not None:
            await ctl.close(timeout=self.remove_timeout)
        self._set(state=TorState.STOPPED, usable=False, onion_published=False)


def _num(x: float) -> str:
    return f"{x:g}"


def _bootstrap_text(st: BootstrapStatus | None) -> str:
    if st is None:
        return ""
    warning = f"; warning: {st.warning}" if st.warning else ""
    return f" ({st.progress}%: {st.summary}{warning})"


def _leaves(eg: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in eg.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out
