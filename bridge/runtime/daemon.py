"""The running bridge: Tor supervision + listeners + warm pool, with graceful shutdown.

Data directory: the bridge keeps its address book (``<data_dir>/peers.sqlite``) and, with
``tor.listen_onion``, its onion key there. Startup checks that the directory (and the onion key's
directory when the key does not exist yet) can be written — a small file is written, fsynced and
removed — and aborts with a :class:`StartupError` naming the directory and the cause (read-only
filesystem, disk full, permissions). This holds even when the onion key already exists: a
read-only data directory is a deployment mistake (e.g. a volume mounted ``:ro``), and running on
would silently lose every peer learned and every backoff. Once running, a disk that fills up or
turns read-only no longer stops anything: the address book logs the first failed write and
carries on (see :mod:`bridge.store.book`), and relaying is unaffected.

The daemon knows nothing of the metrics/status server: it gathers its components' ``stats()``
into a :class:`~bridge.runtime.stats.Snapshot` (:meth:`Daemon.snapshot`), and the wiring layer
(:mod:`bridge.runtime.service`) builds the server over it and hands it in as
:attr:`Daemon.observe`, which the daemon starts before its listeners.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import trio

from bridge import __version__
from bridge.config import Config, HostPort, UnixSocket
from bridge.core.errors import BridgeError, Fault
from bridge.core.histogram import WARM_BUCKETS, Histogram
from bridge.core.onion import OnionAddress
from bridge.core.policy import GossipState, OnionPeer
from bridge.net.pool import Dialer
from bridge.net.socks import ProxyEndpoint
from bridge.runtime.bridge import Bridge
from bridge.runtime.stats import (
    MAX_RECENT_ERRORS,
    ErrorLogHandler,
    ErrorRecord,
    Health,
    Listeners,
    RecentErrors,
    Snapshot,
    health,
)
from bridge.runtime.wiring import bridge_options
from bridge.tor.control import ControlAuth, ControlEndpoint, OnionDefenses
from bridge.tor.managed import ManagedTor, ManagedTorConfig
from bridge.tor.supervisor import OnionSpec, TorStatus, TorSupervisor

log = logging.getLogger("bridge")


#: Name prefix of the data-dir write test's file (a random suffix follows).
WRITE_TEST_PREFIX = ".kaspa-tor-bridge-write-test."
#: Seconds between the "still waiting for tor" lines while the daemon starts (one line says what
#: it waits for; tor's bootstrap can take minutes, so not every attempt is worth a line).
TOR_REPORT_EVERY = 15.0


class StartupError(BridgeError):
    action = "startup aborted"


#: File descriptors the bridge holds besides its connections: listeners, the Tor control
#: connection, the address book (SQLite and its WAL), the metrics server and its clients, a
#: managed tor's pipes, the logs.
FD_OVERHEAD = 64


def fd_need(cfg: Config) -> int:
    """The most file descriptors ``cfg``'s bounds let the bridge hold at once: two per relayed
    inbound peer (the remote's and kaspad's), one per pending inbound connection, two per slot
    connection (kaspad's and its upstream), the warm pool and a dial per waiting slot."""
    inbound = 2 * cfg.inbound.max_connections + cfg.inbound.max_pending
    slots = 2 * cfg.slots.connection_cap + cfg.pool.size + cfg.slots.count
    return inbound + slots + FD_OVERHEAD


def ensure_fd_limit(need: int) -> str | None:
    """Raise the soft RLIMIT_NOFILE towards ``need`` (up to the hard limit, as Go's runtime
    does for every program): the default soft limit (often 1024) is below what
    ``inbound.max_connections`` and ``inbound.max_pending`` allow (up to 4096 each), and a bridge
    out of descriptors fails every accept and dial (EMFILE). Returns a warning when the hard
    limit is still too low, else ``None``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return None
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    if soft >= need:
        return None
    return (f"the open-files limit is {soft} (hard limit {hard}), but inbound.max_connections, "
            f"inbound.max_pending, slots.max_connections and pool.size allow up to {need} open "
            "files: connections beyond the limit fail (EMFILE); raise the limit (ulimit -n, "
            "systemd LimitNOFILE=, docker --ulimit nofile=) or lower those keys")


class SideService(Protocol):
    """A server the daemon runs alongside (the metrics/status server): ``await
    nursery.start(service.run)`` returns once it listens; a :class:`BridgeError` from it
    aborts the startup."""

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        ...


@dataclass
class Daemon:
    cfg: Config
    bridge: Bridge | None = None
    supervisor: TorSupervisor | None = None
    gossip: GossipState | None = None
    handle_signals: bool = True
    #: the metrics/status server when metrics.listen is set (built by
    #: :func:`bridge.runtime.service.build_daemon`)
    observe: SideService | None = None
    #: the address-free /metrics server when metrics.public_listen is set (idem)
    public_observe: SideService | None = None

    def __post_init__(self) -> None:
        self.started_at = time.time()  # reset when run() starts: the uptime's origin
        #: recent warnings and errors (relay errors from the bridge, warnings from the logs)
        self.errors = RecentErrors()
        self._stop = trio.Event()
        self._tor_was_usable = False
        self._serving = False
        self._scope: trio.CancelScope | None = None  # the daemon's own nursery, once open
        #: the name of the signal that stopped the daemon, if one did
        self.stopped_by: str | None = None
        #: trio time run() started; seconds from it to the first warm upstream
        self._run_at: float | None = None
        self.first_warm_seconds: float | None = None
        #: trio time Tor last became usable, until the next warm upstream (then observed
        #: into :attr:`tor_to_warm`)
        self._tor_usable_at: float | None = None
        self.tor_to_warm = Histogram(WARM_BUCKETS)

    def request_stop(self) -> None:
        self._stop.set()

    async def _signals(self, signals: AsyncIterator[int]) -> None:
        """Act on the signals an operator (or a service manager) sends, from the very start of
        :meth:`run`: SIGINT/SIGTERM stop the bridge in order when it is serving, abort a startup
        still in progress (nothing is left half-started), and a second one during the shutdown
        stops at once. SIGHUP is logged and ignored: tor reloads on SIGHUP, so operators and
        tools send it expecting a reload and an unchanged service; the bridge cannot reload
        (listeners, Tor connection and pool are built from the startup configuration), and
        going down instead would cut kaspad off the network (see README, "Operating it")."""
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                log.warning("%s: ignored: the bridge does not reload its configuration; it keeps "
                            "running with the configuration it started with (restart it to apply "
                            "changes; SIGTERM or SIGINT stops it)", name)
            elif self._stop.is_set():
                log.warning("%s again: stopping at once", name)
                self._cancel_all()
            elif not self._serving:
                log.info("%s during startup: startup aborted, shutting down", name)
                self.stopped_by = name
                self._stop.set()
                self._cancel_all()
            else:
                log.info("%s: shutting down", name)
                self.stopped_by = name
                self._stop.set()

    def _cancel_all(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    def health(self) -> Health:
        """Listeners up and, when the mode needs Tor, Tor usable and (with
        ``tor.listen_onion``) the onion published."""
        cfg = self.cfg
        sync = self.bridge.sync if self.bridge is not None else None
        return health(listeners_up=self.bridge is not None and self.bridge.started.is_set(),
                      tor=self.supervisor.status if self.supervisor is not None else None,
                      needs_tor=(cfg.mode == "tor-only" or cfg.tor.listen_onion
                                 or (sync is not None and sync.gate.switched)),
                      needs_onion=cfg.tor.listen_onion)

    def snapshot(self) -> Snapshot:
        """The components' stats, now: what /status, /metrics and `status` show. Cheap: reads
        in-memory state only."""
        cfg = self.cfg
        bridge = self.bridge
        sup = self.supervisor
        tor = sup.stats() if sup is not None else None
        if tor is not None and cfg.tor.managed:
            tor = replace(tor, managed=True,
                          bridges=tuple(b.redacted() for b in cfg.tor.bridges))
        own = self.gossip.own_onion if self.gossip is not None else None
        bstats = bridge.stats() if bridge is not None else None
        ports = (bstats.slot_ports if bstats is not None and bstats.slot_ports
                 else tuple(cfg.slots.ports))
        errors = self.errors.records()
        if tor is not None and tor.status.last_error and not any(
                e.message == tor.status.last_error for e in errors):
            errors += (ErrorRecord(tor.status.last_error_at, "tor", tor.status.last_error),)
        now = time.time()
        return Snapshot(
            bridge_version=__version__, time=now, uptime=now - self.started_at,
            network=cfg.network, mode=cfg.mode, health=self.health(), tor=tor,
            own_onion=f"{own.address.host}:{own.port}" if own is not None else None,
            known_onions=len(self.gossip.onions) if self.gossip is not None else 0,
            listeners=Listeners(
                up=bstats is not None and bstats.up, slot_host=cfg.slots.host,
                slot_ports=ports,
                inbound=(f"{cfg.inbound.listen.host}:{bstats.inbound_port}"
                         if bstats is not None and bstats.inbound_port else None),
                kaspad_p2p=str(cfg.kaspad.p2p)),
            pool_size=cfg.pool.size, bridge=bstats,
            recent_errors=errors[-MAX_RECENT_ERRORS:],
            listen_onion=cfg.tor.listen_onion, first_warm_seconds=self.first_warm_seconds,
            tor_to_warm=self.tor_to_warm.snapshot() if sup is not None else None)

    def _on_warm(self) -> None:
        """An upstream became warm: the first since the start, the first since Tor became
        usable (again) with none warm."""
        now = trio.current_time()
        if self.first_warm_seconds is None and self._run_at is not None:
            self.first_warm_seconds = now - self._run_at
            log.info("first warm upstream %.1fs after the start", self.first_warm_seconds)
        if self._tor_usable_at is not None:
            self.tor_to_warm.observe(now - self._tor_usable_at)
            self._tor_usable_at = None

    def _on_tor_change(self, st: TorStatus) -> None:
        """Keep the gossip state's own onion in step with what Tor publishes; forgive peer
        backoffs when our Tor comes back (failures while it was down were ours)."""
        if st.usable and not self._tor_was_usable and st.reconnects and self.bridge is not None:
            log.info("tor is usable again: clearing peer backoffs")
            self.bridge.pool.forgive_all()
        if st.usable and not self._tor_was_usable and (
                self.bridge is None or not self.bridge.pool.ready_count):
            # (with upstreams still warm, e.g. only the control connection was lost, there is
            # nothing to wait for)
            self._tor_usable_at = trio.current_time()
        self._tor_was_usable = st.usable
        if self.gossip is None or not st.onion_address:
            return
        addr = OnionAddress.parse(st.onion_address)
        port = st.onion_port or self.cfg.tor.onion_virtual_port
        if self.gossip.own_onion is None or self.gossip.own_onion.address != addr:
            self.gossip.own_onion = OnionPeer(addr, port)
            if self.bridge is not None:
                self.bridge.selector.own_onion = addr
            log.info("own onion: %s:%d (gossiped to ADDRv2 peers)", addr.host, port)

    def _check_data_dir(self) -> None:
        """Fail fast, naming the path, when the data directory cannot be written."""
        cfg = self.cfg
        dirs = [cfg.data_dir]
        key = cfg.tor.onion_key_file
        if cfg.tor.listen_onion and not key.exists() and key.parent != cfg.data_dir:
            dirs.append(key.parent)
        for d in dirs:
            # A random name, created exclusively and never through a symlink (mkstemp: O_EXCL |
            # O_NOFOLLOW, mode 0600): a predictable name opened with O_TRUNC would let whoever
            # can write the directory plant a symlink there and have the bridge wipe its target.
            probe: Path | None = None
            try:
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix=WRITE_TEST_PREFIX, dir=d)
                probe = Path(name)
                try:
                    os.write(fd, bytes(4096))
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                why = {errno.EROFS: "its filesystem is mounted read-only",
                       errno.ENOSPC: "the disk is full",
                       errno.EDQUOT: "the disk quota is exhausted",
                       errno.EACCES: f"permission denied for uid {os.getuid()}",
                       errno.EPERM: f"permission denied for uid {os.getuid()}",
                       }.get(exc.errno or 0, "it cannot be written")
                raise StartupError(
                    f"data directory {d} is not usable: {why} ({exc.strerror or exc}); the "
                    "bridge keeps its address book and onion key there and must be able to "
                    "write it (data_dir)", fault=Fault.LOCAL) from exc
            finally:
                if probe is not None:
                    try:
                        probe.unlink()
                    except OSError:
                        pass

    def _managed(self) -> ManagedTor | None:
        tor = self.cfg.tor
        if not tor.managed:
            return None
        control_port = tor.control.port if isinstance(tor.control, HostPort) else None
        return ManagedTor(ManagedTorConfig(
            data_dir=self.cfg.network_dir, socks_port=tor.socks.port if tor.socks else "auto",
            control_port=control_port, extra_torrc=tor.extra_torrc, bridges=tor.bridges,
            transport_binary=tor.transport_binary))

    def _socks_from_tor(self) -> ProxyEndpoint | None:
        """The SOCKS listener tor reported (``tor.socks = "auto"`` or a managed tor)."""
        sup = self.supervisor
        if sup is None or not sup.status.socks_listeners:
            return None
        host, port = sup.status.socks_listeners[0]
        return ProxyEndpoint(host, port)

    def _supervisor(self, managed: ManagedTor | None) -> TorSupervisor | None:
        tor = self.cfg.tor
        if managed is not None:
            endpoint, auth = managed.endpoint, managed.auth
        elif tor.control is None:
            return None
        else:
            if isinstance(tor.control, UnixSocket):
                endpoint = ControlEndpoint.unix(tor.control.path)
            else:
                endpoint = ControlEndpoint.tcp(tor.control.host, tor.control.port)
            auth = ControlAuth(password=tor.read_control_password(), cookie_path=tor.cookie_file)
        onion = None
        if tor.listen_onion:
            listen = self.cfg.inbound.listen
            defenses = OnionDefenses(pow=tor.onion_pow,
                                     pow_queue_rate=tor.onion_pow_queue_rate or None,
                                     pow_queue_burst=tor.onion_pow_queue_burst or None,
                                     max_streams=tor.onion_max_streams)
            onion = OnionSpec(tor.onion_key_file, (listen.host, listen.port),
                              tor.onion_virtual_port, defenses)
        # _start reports the wait for tor (wait_ready) when the bridge cannot start without it
        must_have_tor = self.cfg.mode == "tor-only" or tor.listen_onion
        return TorSupervisor(endpoint, auth, onion=onion, bootstrap_timeout=tor.bootstrap_timeout,
                             on_change=self._on_tor_change, quiet_start=must_have_tor)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start, serve until stopped, shut down in order. With ``handle_signals`` the signals
        are handled from the first moment (see :meth:`_signals`): a SIGINT or SIGTERM during
        startup ends this call normally, with :attr:`stopped_by` set, and no error."""
        if not self.handle_signals:
            await self._run(None, task_status)
            return
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            await self._run(signals, task_status)

    async def _run(self, signals: AsyncIterator[int] | None,
                   task_status: trio.TaskStatus[None]) -> None:
        cfg = self.cfg
        for w in cfg.warnings:
            log.warning("config: %s", w)
        fd_warning = ensure_fd_limit(fd_need(cfg))
        if fd_warning is not None:
            log.warning("%s", fd_warning)
        if cfg.metrics.listen is not None and self.observe is None:
            raise StartupError("metrics.listen is set but this daemon has no metrics server: "
                               "build it with bridge.runtime.service.build_daemon")
        if cfg.metrics.public_listen is not None and self.public_observe is None:
            raise StartupError("metrics.public_listen is set but this daemon has no public "
                               "metrics server: build it with "
                               "bridge.runtime.service.build_daemon")
        self.started_at = time.time()
        self._run_at = trio.current_time()
        # warnings from here on are kept for /status (the config's were logged just above)
        handler = ErrorLogHandler(self.errors)
        logger = logging.getLogger("bridge")
        logger.addHandler(handler)
        try:
            await self._start(signals, task_status)
        finally:
            logger.removeHandler(handler)

    async def _start(self, signals: AsyncIterator[int] | None,
                     task_status: trio.TaskStatus[None]) -> None:
        cfg = self.cfg
        observe = self.observe
        self._check_data_dir()
        options = bridge_options(cfg)
        self.gossip = GossipState(own_onion=options.own_onion)
        managed = self._managed()
        self.supervisor = sup = self._supervisor(managed)
        must_have_tor = cfg.mode == "tor-only" or cfg.tor.listen_onion
        if managed is not None:
            # the managed tor's SOCKS port is asked from it once it runs
            options.dial = replace(options.dial, proxy=None, onion_proxy=None)
        startup_error: StartupError | None = None
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            if signals is not None:
                nursery.start_soon(self._signals, signals)
            if managed is not None:
                await nursery.start(managed.run)
                log.info("managed tor running (data in %s)", managed.cfg.tor_dir)
            gate = None
            if sup is not None:
                async def gate() -> None:
                    await sup.wait_usable()
            self.bridge = Bridge(options, gossip=self.gossip, dialer=Dialer(
                options.dial, gate, socks_provider=self._socks_from_tor), errors=self.errors)
            self.bridge.pool.on_ready = self._on_warm
            # before the listeners: /status shows startup too
            for side in (observe, self.public_observe):
                if side is None or startup_error is not None:
                    continue
                try:
                    await nursery.start(side.run)
                except BridgeError as exc:
                    startup_error = StartupError(str(exc), fault=exc.fault)
                    nursery.cancel_scope.cancel()
            # Listeners first: the onion service must point at a bound inbound port.
            if startup_error is None:
                await nursery.start(self.bridge.run)
            if sup is not None and startup_error is None:
                await nursery.start(sup.run)
                if must_have_tor:
                    try:
                        await sup.wait_ready(cfg.tor.bootstrap_timeout,
                                             onion=cfg.tor.listen_onion,
                                             report_every=TOR_REPORT_EVERY,
                                             timeout_name="tor.bootstrap_timeout")
                    except BridgeError as exc:
                        startup_error = StartupError(
                            f"{exc}; in {cfg.mode} mode"
                            f"{' with listen_onion' if cfg.tor.listen_onion else ''} the bridge "
                            "cannot start without Tor", fault=Fault.TOR)
                        startup_error.__cause__ = exc
                        nursery.cancel_scope.cancel()
            if startup_error is None:
                await self._serve(nursery, sup, managed, task_status)
        if startup_error is not None:
            raise startup_error

    async def _serve(self, nursery: trio.Nursery, sup: TorSupervisor | None,
                     managed: ManagedTor | None, task_status: trio.TaskStatus[None]) -> None:
        """Up and running: wait for a stop request, then shut down in order (onion removed
        from Tor first, bounded), and cancel everything."""
        self._serving = True
        task_status.started()
        await self._stop.wait()
        if sup is not None:
            with trio.move_on_after(5):
                await sup.stop()
        # A managed tor is stopped by its own task when cancelled, after the supervisor's.
        nursery.cancel_scope.cancel()
