"""The daemon's status snapshot (``/status``, ``kaspa-tor-bridge status``) and its rendering.

:func:`build_snapshot` turns the live :class:`~bridge.daemon.Daemon` into plain JSON data, read
at request time. :func:`health` is the verdict ``/health`` serves. :func:`render` draws a
snapshot with rich; it only uses the JSON (the CLI renders what it fetched over HTTP).

The snapshot is for the local operator: it names upstream peers (onion or IP) and the bridge's
own onion. It is only served on loopback (see :mod:`bridge.runtime.observe`). It never contains the
control password or the onion key.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from bridge import __version__

if TYPE_CHECKING:
    from rich.console import RenderableType

    from bridge.runtime.bridge import RelayInfo
    from bridge.runtime.daemon import Daemon

SNAPSHOT_VERSION = 1
REWRITE_KEYS = ("onions_added", "onions_removed", "invalid_removed", "dropped",
                "versions_rewritten")
DIRECTIONS = ("from_kaspad", "from_remote")
KINDS = ("slot", "inbound")


@dataclass
class Totals:
    """Counters of relays that already closed (live relays are added at read time)."""

    bytes: dict[tuple[str, str], int] = field(
        default_factory=lambda: {(k, d): 0 for k in KINDS for d in DIRECTIONS})
    messages: dict[tuple[str, str], int] = field(
        default_factory=lambda: {(k, d): 0 for k in KINDS for d in DIRECTIONS})
    rewrites: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REWRITE_KEYS, 0))
    closed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    def add(self, info: RelayInfo) -> None:
        st = info.relay.stats()
        kind = info.kind if info.kind in KINDS else "slot"
        for d in DIRECTIONS:
            self.bytes[(kind, d)] += st[f"bytes_{d}"]
            self.messages[(kind, d)] += st[f"messages_{d}"]
        for k, v in info.relay.policy.counters.items():
            self.rewrites[k] = self.rewrites.get(k, 0) + v
        self.closed[kind] += 1

    def with_live(self, live: Iterable[RelayInfo]) -> Totals:
        out = Totals(dict(self.bytes), dict(self.messages), dict(self.rewrites),
                     dict(self.closed))
        for info in live:
            st = info.relay.stats()
            kind = info.kind if info.kind in KINDS else "slot"
            for d in DIRECTIONS:
                out.bytes[(kind, d)] += st[f"bytes_{d}"]
                out.messages[(kind, d)] += st[f"messages_{d}"]
            for k, v in info.relay.policy.counters.items():
                out.rewrites[k] = out.rewrites.get(k, 0) + v
        return out


@dataclass
class RecentErrors:
    """A bounded ring of recent problems (wall-clock time, source, message)."""

    limit: int = 20
    #: (last time, source, message, repeats): a repeat of the newest entry only bumps it
    items: deque[tuple[float, str, str, int]] = field(default_factory=deque)

    def add(self, source: str, message: str, at: float | None = None) -> None:
        now = time.time() if at is None else at
        message = message[:500]
        if self.items and self.items[-1][1:3] == (source, message):
            self.items[-1] = (now, source, message, self.items[-1][3] + 1)
            return
        self.items.append((now, source, message, 1))
        while len(self.items) > self.limit:
            self.items.popleft()

    def as_list(self) -> list[dict[str, Any]]:
        return [{"at": round(t, 3), "source": s, "message": m, "count": n}
                for t, s, m, n in self.items]


def _printable(text: str, limit: int = 64) -> str:
    """A remote-controlled string made safe for a terminal and bounded."""
    out = "".join(c if c.isprintable() else "?" for c in text)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def relay_label(info: RelayInfo) -> str:
    """The privacy-safe name of one connection: ``slot:<port>`` or ``inbound#<id>``."""
    return f"slot:{info.local_port}" if info.kind == "slot" else f"inbound#{info.id}"


def health(daemon: Daemon) -> tuple[bool, list[str]]:
    """``(healthy, reasons)``: listeners up and, when the mode needs Tor, Tor usable and (with
    ``tor.listen_onion``) the onion published. ``reasons`` lists what is wrong."""
    reasons: list[str] = []
    cfg = daemon.cfg
    bridge = daemon.bridge
    if bridge is None or not bridge.started.is_set():
        reasons.append("listeners not up yet")
    sup = daemon.supervisor
    if sup is not None:
        st = sup.status
        needs_tor = cfg.mode == "tor-only" or cfg.tor.listen_onion
        if needs_tor and not st.usable:
            what = f"tor not usable (state {st.state.value}"
            if st.bootstrap is not None:
                what += f", bootstrap {st.bootstrap.progress}%"
            reasons.append(what + ")")
        if cfg.tor.listen_onion and not st.onion_published:
            reasons.append("onion service not published")
    return not reasons, reasons


def _relay_view(info: RelayInfo, now: float) -> dict[str, Any]:
    st = info.relay.stats()
    remote = info.relay.policy.remote
    closed = info.relay.closed
    return {
        "id": info.id,
        "kind": info.kind,
        "label": relay_label(info),
        "local_port": info.local_port,
        "peer": str(info.target) if info.target is not None else None,
        "user_agent": _printable(remote.user_agent) if remote.user_agent else None,
        "handshake": bool(remote.node_id),
        "age": round(max(0.0, now - info.started), 1),
        "bytes_from_kaspad": st["bytes_from_kaspad"],
        "bytes_from_remote": st["bytes_from_remote"],
        "messages_from_kaspad": st["messages_from_kaspad"],
        "messages_from_remote": st["messages_from_remote"],
        "buffered": st["buffered"],
        "rewrites": dict(info.relay.policy.counters),
        "closing": closed.reason if closed is not None else None,
    }


def _tor_view(daemon: Daemon) -> dict[str, Any]:
    sup = daemon.supervisor
    if sup is None:
        return {"enabled": False}
    st = sup.status
    boot = st.bootstrap
    return {
        "enabled": True,
        "control": str(sup.endpoint),
        "state": st.state.value,
        "usable": st.usable,
        "bootstrap": None if boot is None else {
            "progress": boot.progress, "tag": boot.tag, "summary": boot.summary,
            "warning": boot.warning},
        "onion_published": st.onion_published,
        "onion_address": st.onion_address,
        "onion_port": st.onion_port,
        "socks_listeners": [f"{h}:{p}" for h, p in st.socks_listeners],
        "version": st.tor_version,
        "auth_method": st.auth_method,
        "connects": st.connects,
        "reconnects": st.reconnects,
        "restarts_seen": st.restarts_seen,
        "connection_losses": st.connection_losses,
        "attempts_failed": st.attempts_failed,
        "last_error": st.last_error,
        "last_error_at": st.last_error_at,
        "last_recovery_seconds": st.last_recovery_seconds,
        "hs_desc_uploaded": st.hs_desc_uploaded,
        "hs_desc_upload_failures": st.hs_desc_upload_failures,
        "circuits_failed": st.circuits_failed,
        "client_warnings": list(st.client_warnings),
    }


def build_snapshot(daemon: Daemon, *, totals: Totals | None = None,
                   errors: RecentErrors | None = None,
                   started_at: float | None = None) -> dict[str, Any]:
    """The JSON ``/status`` serves. Cheap: reads in-memory state only."""
    cfg = daemon.cfg
    now = trio.current_time()
    ok, reasons = health(daemon)
    bridge = daemon.bridge
    gossip = daemon.gossip
    own = gossip.own_onion if gossip is not None else None
    snap: dict[str, Any] = {
        "snapshot_version": SNAPSHOT_VERSION,
        "bridge_version": __version__,
        "time": round(time.time(), 3),
        "uptime": None if started_at is None else round(time.time() - started_at, 1),
        "network": cfg.network,
        "mode": cfg.mode,
        "health": {"ok": ok, "reasons": reasons},
        "tor": _tor_view(daemon),
        "own_onion": f"{own.address.host}:{own.port}" if own is not None else None,
        "known_onions": len(gossip.onions) if gossip is not None else 0,
    }
    relays = list(bridge.relays.values()) if bridge is not None else []
    slots: list[dict[str, Any]] = []
    inbound: list[dict[str, Any]] = []
    ports = (bridge.slot_ports if bridge is not None and bridge.slot_ports
             else list(cfg.slots.ports))
    for port in ports:
        on_port = [_relay_view(r, now) for r in relays if r.kind == "slot" and r.local_port == port]
        slots.append({"port": port, "relays": on_port})
    inbound = [_relay_view(r, now) for r in relays if r.kind == "inbound"]
    snap["listeners"] = {
        "up": bridge is not None and bridge.started.is_set(),
        "slot_host": cfg.slots.host,
        "slot_ports": ports,
        "inbound": (f"{cfg.inbound.listen.host}:{bridge.inbound_port}"
                    if bridge is not None and bridge.inbound_port else None),
        "kaspad_p2p": str(cfg.kaspad.p2p),
    }
    snap["slots"] = slots
    snap["slots_filled"] = sum(1 for s in slots if any(r["peer"] for r in s["relays"]))
    snap["inbound"] = inbound
    if bridge is not None:
        pool = bridge.pool
        cands = bridge.selector.snapshot()
        snap["pool"] = {"size": pool.size, "ready": pool.ready_count, "stats": dict(pool.stats)}
        snap["dial"] = {"dials": bridge.dialer.dials, "failures": dict(bridge.dialer.failures)}
        snap["closed"] = dict(bridge.closed_count)
        snap["inbound_stats"] = {**bridge.inbound_stats, "active": bridge.inbound_active,
                                 "max_active": bridge.options.max_inbound,
                                 "max_pending": bridge.options.max_pending}
        book = bridge.book
        snap["book"] = None if book is None else {
            "path": str(book.path), "errors": book.errors, "failing": book.failing,
            "last_error": book.last_error,
            # learned entries refused (not public, over their source's quota) or evicted, and
            # the writer's batches (stored, dropped while it was behind, failed)
            "entries": dict(book.stats), "batches": dict(bridge.book_stats)}
        snap["candidates"] = {
            "total": len(cands),
            "in_use": sum(1 for c in cands.values() if c.get("in_use")),
            "backing_off": sum(1 for c in cands.values()
                               if float(c.get("retry_at") or 0) > now),
        }
    else:
        snap["pool"] = {"size": cfg.pool.size, "ready": 0, "stats": {}}
        snap["dial"] = {"dials": 0, "failures": {}}
        snap["closed"] = {}
        snap["candidates"] = {"total": 0, "in_use": 0, "backing_off": 0}
    t = (totals or Totals()).with_live(relays)
    snap["totals"] = {
        "bytes": {f"{k}_{d}": v for (k, d), v in t.bytes.items()},
        "messages": {f"{k}_{d}": v for (k, d), v in t.messages.items()},
        "rewrites": dict(t.rewrites),
    }
    errs = errors.as_list() if errors is not None else []
    sup = daemon.supervisor
    if sup is not None and sup.status.last_error and not any(
            e["message"] == sup.status.last_error for e in errs):
        errs.append({"at": sup.status.last_error_at, "source": "tor",
                     "message": sup.status.last_error})
    snap["recent_errors"] = errs[-20:]
    return snap


# ------------------------------------------------------------------------------ rendering


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _short_peer(peer: str) -> str:
    """``<first 16>…<last 4>.onion:port`` for the table (``--json`` has the full address)."""
    host, sep, port = peer.rpartition(":")
    if host.endswith(".onion") and len(host) > 30:
        host = host[:16] + "…" + host[-10:]
    return f"{host}{sep}{port}" if sep else peer


def render(snap: Mapping[str, Any]) -> RenderableType:
    """A rich view of a snapshot (JSON as served by ``/status``)."""
    from rich import box
    from rich.console import Group
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    def esc(v: object) -> str:
        return escape(str(v))

    health_ok = bool(snap.get("health", {}).get("ok"))
    head = Text()
    head.append(f"kaspa-tor-bridge {snap.get('bridge_version', '?')}  ", style="bold")
    head.append(f"{snap.get('network')}  mode {snap.get('mode')}  up {_age(snap.get('uptime'))}  ")
    head.append("HEALTHY" if health_ok else "UNHEALTHY", style="bold green" if health_ok
                else "bold red")
    reasons = snap.get("health", {}).get("reasons") or []
    if reasons:
        head.append(": " + "; ".join(str(r) for r in reasons), style="red")

    tor = snap.get("tor", {})
    tor_t = Table.grid(padding=(0, 2))
    tor_t.add_column(style="bold")
    tor_t.add_column()
    if not tor.get("enabled"):
        tor_t.add_row("tor", "not monitored (tor.control is empty)")
    else:
        boot = tor.get("bootstrap") or {}
        prog = boot.get("progress")
        bar = ""
        if isinstance(prog, int):
            filled = prog // 5
            bar = "[" + "#" * filled + "." * (20 - filled) + f"] {prog}%"
        usable = "yes" if tor.get("usable") else "no"
        tor_t.add_row("state", f"{esc(tor.get('state'))}  usable={usable}"
                      f"  control {esc(tor.get('control'))} ({esc(tor.get('auth_method') or '-')})"
                      f"  tor {esc(tor.get('version') or '?')}")
        tag, summary = str(boot.get("tag") or ""), str(boot.get("summary") or "")
        words = summary if summary.lower() == tag.lower() else f"{tag}: {summary}"
        if boot.get("warning"):
            words += f" (warning: {boot.get('warning')})"
        tor_t.add_row("bootstrap", f"{bar} {esc(words)}" if boot else "-")
        tor_t.add_row("restarts", f"reconnects {tor.get('reconnects', 0)}  tor restarts "
                      f"{tor.get('restarts_seen', 0)}  losses {tor.get('connection_losses', 0)}"
                      f"  failed attempts {tor.get('attempts_failed', 0)}")
    own = snap.get("own_onion")
    published = tor.get("onion_published")
    tor_t.add_row("own onion", (esc(own) + ("  (published)" if published else
                                            "  (not published)" if tor.get("enabled") else ""))
                  if own else "-")
    tor_t.add_row("gossip", f"onion peers learned: {snap.get('known_onions', 0)}")
    pool = snap.get("pool", {})
    ps = pool.get("stats", {})
    cands = snap.get("candidates", {})
    tor_t.add_row("warm pool", f"{pool.get('ready', 0)}/{pool.get('size', 0)} ready  "
                  f"(dialed {ps.get('dialed', 0)}, failed {ps.get('failed', 0)}, "
                  f"taken {ps.get('taken', 0)}, dropped {ps.get('dropped', 0)}, "
                  f"duplicates {ps.get('duplicates', 0)})  candidates "
                  f"{cands.get('total', 0)} ({cands.get('backing_off', 0)} backing off)")
    fails = snap.get("dial", {}).get("failures", {})
    tor_t.add_row("dial failures", ", ".join(f"{k.lower()} {v}" for k, v in sorted(fails.items()))
                  or "none")
    closed = snap.get("closed", {})
    tor_t.add_row("closed relays", ", ".join(f"{k} {v}" for k, v in closed.items()) or "-")
    ib = snap.get("inbound_stats")
    if ib:
        tor_t.add_row("inbound", f"{ib.get('active', 0)}/{ib.get('max_active', 0)} relayed  "
                      f"(accepted {ib.get('accepted', 0)}, evicted idle {ib.get('evicted', 0)}, "
                      f"refused full {ib.get('refused_full', 0)}, "
                      f"refused duplicate {ib.get('refused_duplicate', 0)})")
    book = snap.get("book")
    if book and book.get("failing"):
        tor_t.add_row("address book", Text(f"writes failing ({book.get('errors', 0)} errors): "
                                           f"{book.get('last_error')}", style="red"))
    elif book:
        tor_t.add_row("address book", f"ok ({book.get('errors', 0)} errors so far)")
    rw = snap.get("totals", {}).get("rewrites", {})
    tor_t.add_row("rewrites", ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in rw.items()))

    peers = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    peers.add_column("conn", no_wrap=True)
    peers.add_column("peer", no_wrap=True)
    peers.add_column("agent", no_wrap=True, max_width=16, overflow="ellipsis")
    # out = kaspad → peer, in = peer → kaspad
    for col in ("age", "bytes out", "bytes in", "msgs o/i"):
        peers.add_column(col, justify="right", no_wrap=True)

    def row(label: str, r: Mapping[str, Any] | None, empty: str) -> None:
        if r is None:
            peers.add_row(label, Text(empty, style="dim"), "", "", "", "", "")
            return
        peer = r.get("peer") or ("(tor peer)" if r.get("kind") == "inbound" else "(waiting)")
        peers.add_row(label, esc(_short_peer(str(peer))), esc(r.get("user_agent") or "-"),
                      _age(r.get("age")),
                      _bytes(int(r.get("bytes_from_kaspad", 0))),
                      _bytes(int(r.get("bytes_from_remote", 0))),
                      f"{r.get('messages_from_kaspad', 0)}/{r.get('messages_from_remote', 0)}")

    for slot in snap.get("slots", []):
        rs = slot.get("relays") or []
        if not rs:
            row(f"slot:{slot.get('port')}", None, "empty: kaspad not connected")
        for r in rs:
            row(str(r.get("label")), r, "")
    inbound = snap.get("inbound") or []
    for r in inbound:
        row(str(r.get("label")), r, "")
    if not inbound:
        row("inbound", None, f"none; listening on "
            f"{snap.get('listeners', {}).get('inbound') or '-'}")

    errs = snap.get("recent_errors") or []
    err_t = Text(overflow="fold")
    for i, e in enumerate(errs[-8:]):
        if i:
            err_t.append("\n")
        at = e.get("at")
        stamp = (time.strftime("%H:%M:%S", time.localtime(at)) if isinstance(at, int | float)
                 else "--:--:--")
        n = e.get("count")
        times = f" ({n} times)" if isinstance(n, int) and n > 1 else ""
        err_t.append(f"{stamp} {e.get('source')}: {e.get('message')}{times}")
    if not errs:
        err_t.append("none", style="dim")

    filled = snap.get("slots_filled", 0)
    return Group(
        head,
        Panel(tor_t, title="tor / onion / pool", title_align="left"),
        Panel(peers, title=f"peers: slots {filled}/{len(snap.get('slots', []))} filled, "
              f"{len(inbound)} inbound", title_align="left"),
        Panel(err_t, title="recent warnings and errors", title_align="left"),
    )


def render_text(snap: Mapping[str, Any], width: int = 110) -> str:
    """The rendered screen as plain text (no colours)."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False,
                      legacy_windows=False)
    console.print(render(snap))
    return buf.getvalue()


# ------------------------------------------------------------------------------ client


class StatusUnavailable(Exception):
    """The daemon's status endpoint cannot be read; the message says where and why."""


def fetch(host: str, port: int, path: str = "/status", timeout: float = 5.0) -> dict[str, Any]:
    """GET ``path`` from the daemon's loopback endpoint (never through an HTTP proxy)."""
    import http.client

    where = f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read(16 << 20)
    except (OSError, http.client.HTTPException) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or repr(exc)
        raise StatusUnavailable(
            f"cannot reach the bridge at {where} ({why}). Is `kaspa-tor-bridge run` running "
            "with this configuration? The status command reads the daemon's metrics.listen "
            "endpoint, so metrics.listen must be set (e.g. \"127.0.0.1:9464\") in the config "
            "the daemon was started with.") from None
    finally:
        conn.close()
    if resp.status not in (200, 503):
        raise StatusUnavailable(f"{where} answered HTTP {resp.status}; is that the bridge?")
    try:
        data = json.loads(body)
    except ValueError:
        raise StatusUnavailable(f"{where} did not answer JSON; is that the bridge?") from None
    if not isinstance(data, dict):
        raise StatusUnavailable(f"{where} answered unexpected JSON")
    return data
