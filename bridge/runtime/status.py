"""The ``/status`` JSON (``kaspa-tor-bridge status``) and the status screen, from a snapshot.

:func:`to_json` turns a :class:`~bridge.runtime.stats.Snapshot` into the JSON ``/status``
serves; :func:`render` draws that JSON with rich (the CLI renders what it fetched over HTTP, so
the screen only uses the JSON). ``/metrics`` is rendered from the same Snapshot
(:mod:`bridge.runtime.observe`), so the two cannot drift.

The JSON is for the local operator: it names upstream peers (onion or IP) and the bridge's
own onion. It is only served on loopback (see :mod:`bridge.runtime.observe`). It never contains the
control password or the onion key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bridge.runtime.stats import (
    DIRECTIONS,
    KINDS,
    MAX_RECENT_ERRORS,
    SNAPSHOT_VERSION,
    RelayStats,
    Snapshot,
    Totals,
)
from bridge.tor.supervisor import TorStats

if TYPE_CHECKING:
    from rich.console import RenderableType


def _relay_json(r: RelayStats) -> dict[str, Any]:
    return {
        "id": r.id,
        "kind": r.kind,
        "label": r.label,
        "local_port": r.local_port,
        "peer": r.peer,
        "user_agent": r.user_agent,
        "handshake": r.handshake,
        "age": r.age,
        **dict(r.traffic.items()),
        "buffered": r.buffered,
        "rewrites": dict(r.rewrites.items()),
        "closing": r.closing,
        "direct": r.direct,
    }


def _tor_json(tor: TorStats | None) -> dict[str, Any]:
    if tor is None:
        return {"enabled": False}
    st = tor.status
    boot = st.bootstrap
    return {
        "enabled": True,
        "control": tor.control,
        "state": st.state.value,
        "usable": st.usable,
        "bootstrap": None if boot is None else {
            "progress": boot.progress, "tag": boot.tag, "summary": boot.summary,
            "warning": boot.warning},
        "onion_published": st.onion_published,
        "onion_address": st.onion_address,
        "onion_port": st.onion_port,
        "onion_pow": st.onion_pow,
        "onion_max_streams": st.onion_max_streams,
        "managed": tor.managed,
        "bridges": list(tor.bridges),
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
        "events_dropped": st.events_dropped,
        "client_warnings": list(st.client_warnings),
    }


def to_json(snap: Snapshot) -> dict[str, Any]:
    """The JSON ``/status`` serves."""
    out: dict[str, Any] = {
        "snapshot_version": SNAPSHOT_VERSION,
        "bridge_version": snap.bridge_version,
        "time": round(snap.time, 3),
        "uptime": None if snap.uptime is None else round(snap.uptime, 1),
        "network": snap.network,
        "mode": snap.mode,
        "health": {"ok": snap.health.ok, "reasons": list(snap.health.reasons)},
        "tor": _tor_json(snap.tor),
        "own_onion": snap.own_onion,
        "known_onions": snap.known_onions,
    }
    lst = snap.listeners
    out["listeners"] = {"up": lst.up, "slot_host": lst.slot_host,
                        "slot_ports": list(lst.slot_ports), "inbound": lst.inbound,
                        "kaspad_p2p": lst.kaspad_p2p}
    relays = snap.relays
    out["slots"] = [{"port": port, "relays": [_relay_json(r) for r in relays
                                              if r.kind == "slot" and r.local_port == port]}
                    for port in lst.slot_ports]
    out["slots_filled"] = snap.slots_filled
    out["inbound"] = [_relay_json(r) for r in relays if r.kind == "inbound"]
    b = snap.bridge
    if b is not None:
        out["pool"] = {"size": b.pool.size, "ready": b.pool.ready_now,
                       "stats": dict(b.pool.events.items())}
        out["dial"] = {"dials": b.dial.dials,
                       "failures": {k.upper(): v for k, v in b.dial.failures.items() if v}}
        out["closed"] = dict(b.closed.items())
        out["inbound_stats"] = {**dict(b.inbound.events.items()), "active": b.inbound.active,
                                "max_active": b.inbound.max_active,
                                "max_pending": b.inbound.max_pending}
        book = b.book
        out["book"] = None if book is None else {
            "path": book.path, "errors": book.errors, "failing": book.failing,
            "last_error": book.last_error,
            # learned entries refused (not public, over their source's quota) or evicted, and
            # the writer's batches (stored, dropped while it was behind, failed)
            "entries": dict(book.learned.items()), "batches": dict(b.book_writer.items())}
        sy = b.sync
        out["sync_first"] = None if sy is None else {
            "phase": sy.phase, "kaspad_synced": sy.kaspad_synced, "reason": sy.reason,
            "switched_ago": sy.switched_ago, "last_answer_ago": sy.last_answer_ago,
            "rpc": sy.rpc, "rpc_problem": sy.rpc_problem, "switch_in": sy.switch_in,
            "closed_direct_relays": sy.closed_direct_relays,
            "closed_direct_warm": sy.closed_direct_warm}
        c = b.candidates
        out["candidates"] = {"total": c.total, "in_use": c.in_use, "backing_off": c.backing_off}
        totals = b.totals
    else:
        out["pool"] = {"size": snap.pool_size, "ready": 0, "stats": {}}
        out["dial"] = {"dials": 0, "failures": {}}
        out["closed"] = {}
        out["sync_first"] = None
        out["candidates"] = {"total": 0, "in_use": 0, "backing_off": 0}
        totals = Totals()
    out["totals"] = {
        "bytes": {f"{k}_{d}": getattr(totals.traffic(k), f"bytes_{d}")
                  for k in KINDS for d in DIRECTIONS},
        "messages": {f"{k}_{d}": getattr(totals.traffic(k), f"messages_{d}")
                     for k in KINDS for d in DIRECTIONS},
        "rewrites": dict(totals.rewrites.items()),
    }
    out["recent_errors"] = [
        {"at": None if e.at is None else round(e.at, 3), "source": e.source,
         "message": e.message, "count": e.count}
        for e in snap.recent_errors[-MAX_RECENT_ERRORS:]]
    return out


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


def _sync_line(sync: Mapping[str, Any]) -> str:
    """``peers.sync_first``'s phase for the status screen."""
    if sync.get("phase") == "tor":
        return (f"Tor only since {_age(sync.get('switched_ago'))} ago: {sync.get('reason')}; "
                f"closed {sync.get('closed_direct_relays', 0)} direct slot relays, "
                f"{sync.get('closed_direct_warm', 0)} direct warm connections")
    synced = sync.get("kaspad_synced")
    state = ("kaspad syncing" if synced is False else "kaspad synced" if synced
             else f"kaspad's sync state unknown: {sync.get('rpc_problem')}")
    limit = sync.get("switch_in")
    return (f"SYNCING over direct IP peers ({state}; RPC {sync.get('rpc')}); Tor only once "
            "kaspad reports synced"
            + (f", at the latest in {_age(limit)}" if limit is not None else ""))


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
    if tor.get("bridges"):
        tor_t.add_row("tor bridges", esc("; ".join(tor["bridges"])))
    if published:
        pow_on, streams = tor.get("onion_pow"), tor.get("onion_max_streams")
        tor_t.add_row("onion DoS", ("proof-of-work on" if pow_on else
                                    "proof-of-work OFF (this tor lacks it)" if pow_on is False
                                    else "proof-of-work off (tor.onion_pow = false)")
                      + f"  streams per circuit: {streams or 'unlimited'}")
    sync = snap.get("sync_first")
    if sync:
        tor_t.add_row("sync first", _sync_line(sync))
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
        if r.get("direct"):
            peer = f"{peer} (direct)"
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
