"""The wiring of the running service: the daemon and, when ``metrics.listen`` is set, the
metrics/status server over it (and the address-free public /metrics server when
``metrics.public_listen`` is set).

This module owns the observe server so that neither :mod:`bridge.runtime.daemon` nor
:mod:`bridge.runtime.observe` knows the other: the server reads snapshots from any
:class:`~bridge.runtime.observe.SnapshotSource`, and the daemon runs whatever
:class:`~bridge.runtime.daemon.SideService` it is handed.
"""

from __future__ import annotations

from bridge.config import Config
from bridge.runtime.daemon import Daemon
from bridge.runtime.observe import ObserveServer


def build_daemon(cfg: Config, *, handle_signals: bool = True) -> Daemon:
    """The daemon for ``cfg``, with its metrics/status server when ``metrics.listen`` is set.
    Raises :class:`~bridge.runtime.observe.ObserveError` for a non-loopback
    ``metrics.listen``."""
    daemon = Daemon(cfg, handle_signals=handle_signals)
    if cfg.metrics.listen is not None:
        daemon.observe = ObserveServer(daemon, cfg.metrics.listen.host, cfg.metrics.listen.port)
    public = cfg.metrics.public_listen
    if public is not None:
        daemon.public_observe = ObserveServer(daemon, public.host, public.port, public=True)
    return daemon
