"""``kaspa-tor-bridge doctor``: checks the pieces the bridge needs, and says how to fix each.

Checks (all on the configured loopback endpoints; nothing outside them is contacted):

* **config** — the warnings of the loaded config, a non-loopback ``metrics.listen``, a control
  password written in a config file, no upstream peers;
* **data dir / key file** — ``<data_dir>/<network>`` owned by us and not group/world
  accessible; the onion key file loads (0600, well-formed) and its address;
* **tor control** — reachable, speaks the control protocol, authentication works (names the
  method), bootstrap progress;
* **tor SOCKS** — a SOCKS5 handshake and a CONNECT to a deliberately *invalid* onion name: Tor
  rejects it locally and answers with a SOCKS reply, which proves the port is Tor's SOCKS port
  without opening any circuit;
* **kaspad P2P** — TCP connect to ``kaspad.p2p`` and an HTTP/2 preface exchange;
* **daemon** — if ``metrics.listen`` is set and the bridge runs, its ``/health``.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trio

from bridge.config import Config, HostPort, UnixSocket
from bridge.core.errors import BridgeError
from bridge.core.relay import RelaySettings, new_upstream_connection
from bridge.net.probe import seeder_targets
from bridge.tor.control import ControlAuth, ControlEndpoint, TorControl
from bridge.tor.errors import (
    AuthenticationError,
    ControlPortUnreachable,
    ControlTimeout,
    CookieRejected,
    CookieUnreadable,
    ManagedTorError,
    NotAControlPort,
    OnionKeyError,
    PasswordRejected,
    PasswordRequired,
    TorControlError,
)
from bridge.tor.keys import load_key
from bridge.tor.managed import ManagedTorConfig, transport_plugins

Status = Literal["ok", "warn", "fail", "skip"]

#: Valid base32, but not a v3 onion (bad version/checksum): Tor refuses it without a circuit.
PROBE_ONION = "kaspatorbridgedoctorprobe" + "a" * 31 + ".onion"
SOCKS_REPLIES = {
    0x00: "succeeded", 0x01: "general failure", 0x02: "not allowed by ruleset",
    0x03: "network unreachable", 0x04: "host unreachable", 0x05: "connection refused",
    0x06: "TTL expired", 0x07: "command not supported", 0x08: "address type not supported",
    0xF0: "onion service descriptor not found", 0xF1: "onion service descriptor invalid",
    0xF6: "onion address invalid",
}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


class _Fail(Exception):
    def __init__(self, detail: str, fix: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


# ------------------------------------------------------------------------------ local checks


def _private(host: str) -> bool:
    """A private (RFC 1918, ULA, link-local) IP address: a container or LAN network."""
    try:
        return ipaddress.ip_address(host).is_private
    except ValueError:
        return False


def check_config(cfg: Config) -> list[Check]:
    out: list[Check] = []
    for w in cfg.warnings:
        out.append(Check("config", "warn", w))
    m = cfg.metrics.listen
    if m is not None and not m.is_loopback:
        out.append(Check("config", "fail", f"metrics.listen = {m} is not loopback; the daemon "
                         "refuses to start", "set metrics.listen = \"127.0.0.1:9464\"; for a "
                         "Prometheus on another host set metrics.public_listen (address-free "
                         "/metrics only)"))
    src = cfg.sources.get("tor.control_password", "default")
    if cfg.tor.control_password and not src.startswith("env") and not src.startswith("--"):
        out.append(Check("config", "warn", f"the tor control password is written in {src}",
                         "use the KTB_TOR_CONTROL_PASSWORD environment variable or "
                         "tor.control_password_file (mode 0600) instead"))
    pw = cfg.tor.control_password_file
    if pw is not None:
        try:
            mode = stat.S_IMODE(pw.stat().st_mode)
        except OSError as exc:
            out.append(Check("config", "fail", f"control password file {pw}: {exc.strerror}",
                             "create it (first line = the password) or fix "
                             "tor.control_password_file"))
        else:
            if mode & 0o077:
                out.append(Check("config", "warn", f"control password file {pw} has mode "
                                 f"{mode:04o}", f"chmod 600 {pw}"))
    seeding = (cfg.mode == "tor-only" and cfg.peers.dns_seed
               and bool(seeder_targets(cfg.network)))
    if not cfg.peers.connect and not seeding:
        why = ("peers.dns_seed = false" if cfg.mode == "tor-only" and not cfg.peers.dns_seed
               else f"{cfg.network} has no DNS seeders" if cfg.mode == "tor-only"
               else "hybrid mode does not seed through Tor")
        out.append(Check("config", "warn", f"peers.connect is empty and {why}: the slots get "
                         "upstream candidates only from the address book (peers learned "
                         "earlier)",
                         "add at least one peer (\"<56 chars>.onion:port\") to peers.connect"))
    p2p = cfg.kaspad.p2p
    if cfg.mode == "tor-only" and not p2p.is_loopback and not _private(p2p.host):
        out.append(Check("config", "warn", f"kaspad.p2p = {p2p} is a public address in "
                         "tor-only mode: kaspad would be reachable without Tor",
                         "run kaspad with --listen=127.0.0.1:<port> (see `kaspa-tor-bridge "
                         "kaspad-flags`), or on a private network with no route out (as the "
                         "compose stack does)"))
    if not out:
        out.append(Check("config", "ok", f"{cfg.network}, mode {cfg.mode}, "
                         f"{cfg.slots.count} slots, {len(cfg.peers.connect)} configured peers"))
    return out


def check_files(cfg: Config) -> list[Check]:
    out: list[Check] = []
    d = cfg.network_dir
    if not d.exists():
        parent = next((p for p in d.parents if p.exists()), Path("/"))
        if os.access(parent, os.W_OK | os.X_OK):
            out.append(Check("data dir", "ok", f"{d} does not exist yet; the bridge creates it"))
        else:
            out.append(Check("data dir", "fail", f"{d} does not exist and {parent} is not "
                             "writable by this user", f"mkdir -m 700 -p {d} (as a user that "
                             "may) and chown it to the bridge's user, or change data_dir"))
    else:
        st = d.stat()
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISDIR(st.st_mode):
            out.append(Check("data dir", "fail", f"{d} is not a directory", "fix data_dir"))
        elif st.st_uid != os.geteuid():
            out.append(Check("data dir", "fail", f"{d} is owned by uid {st.st_uid}, the bridge "
                             f"runs as uid {os.geteuid()}", f"chown -R $(id -u) {d}"))
        elif mode & 0o077:
            out.append(Check("data dir", "warn", f"{d} has mode {mode:04o}; it holds the onion "
                             "key and the address book", f"chmod 700 {d}"))
        else:
            out.append(Check("data dir", "ok", f"{d} (mode {mode:04o})"))
    kf = cfg.tor.onion_key_file
    try:
        key = load_key(kf)
    except OnionKeyError as exc:
        out.append(Check("onion key", "fail", str(exc),
                         f"chmod 600 {kf}, or restore it from a backup with "
                         "`kaspa-tor-bridge onion import FILE --force`"))
    else:
        if key is None:
            what = ("created on first start" if cfg.tor.listen_onion
                    else "not used (tor.listen_onion = false)")
            out.append(Check("onion key", "ok", f"no key at {kf} yet: {what}"))
        else:
            out.append(Check("onion key", "ok", f"{kf} (0600) → {key.service_id}.onion"))
    return out


def check_bridges(cfg: Config) -> list[Check]:
    """tor.bridges: the transport binaries a managed tor will run are installed."""
    if not cfg.tor.bridges:
        return []
    mcfg = ManagedTorConfig(cfg.network_dir, bridges=cfg.tor.bridges,
                            transport_binary=cfg.tor.transport_binary)
    try:
        plugins = transport_plugins(mcfg)
    except ManagedTorError as exc:
        return [Check("tor bridges", "fail", str(exc),
                      "install the transport (Debian: see the message) or set "
                      "tor.transport_binary")]
    used = ", ".join(f"{t} via {b}" for t, b in plugins.items()) or "plain bridges"
    return [Check("tor bridges", "ok", f"{len(cfg.tor.bridges)} bridge(s): {used}")]


# ------------------------------------------------------------------------------ network checks


def _control_fix(exc: TorControlError, cfg: Config) -> str:
    ep = cfg.tor.control
    if isinstance(exc, ControlPortUnreachable):
        return (f"start tor with `ControlPort {ep}` (or `ControlSocket` for unix:) in its torrc, "
                "or point tor.control at tor's control port")
    if isinstance(exc, NotAControlPort):
        return "tor.control points at something else (the SocksPort?); use tor's ControlPort"
    if isinstance(exc, CookieUnreadable):
        return ("let the bridge's user read the cookie: add it to tor's group (Debian: "
                "`usermod -aG debian-tor <user>`) with `CookieAuthFileGroupReadable 1`, or set "
                "tor.cookie_file to a copy it can read, or use a control password")
    if isinstance(exc, CookieRejected):
        return "the cookie is stale or from another tor; point tor.cookie_file at the live one"
    if isinstance(exc, PasswordRejected):
        return ("the password must match tor's HashedControlPassword (`tor --hash-password "
                "PASSWORD`); set KTB_TOR_CONTROL_PASSWORD or tor.control_password_file")
    if isinstance(exc, PasswordRequired | AuthenticationError):
        return ("configure the control password (KTB_TOR_CONTROL_PASSWORD or "
                "tor.control_password_file), or enable CookieAuthentication 1 in torrc")
    if isinstance(exc, ControlTimeout):
        return "something listens there but does not answer like tor; check tor.control"
    return "check tor's log and the tor.control setting"


async def check_tor_control(cfg: Config, timeout: float
                            ) -> tuple[list[Check], list[tuple[str, int]]]:
    """Returns the checks and the SOCKS listeners tor reports (for ``tor.socks = "auto"``)."""
    ep_cfg = cfg.tor.control
    if ep_cfg is None:
        return [Check("tor control", "skip", "tor.control is empty: Tor is not monitored and no "
                      "onion is published")], []
    endpoint = (ControlEndpoint.unix(ep_cfg.path) if isinstance(ep_cfg, UnixSocket)
                else ControlEndpoint.tcp(ep_cfg.host, ep_cfg.port))
    try:
        password = cfg.tor.read_control_password()
    except BridgeError as exc:
        return [Check("tor control", "fail", str(exc), "fix tor.control_password_file")], []
    auth = ControlAuth(password=password, cookie_path=cfg.tor.cookie_file)
    try:
        ctl = await TorControl.connect(endpoint, auth, timeout=timeout, events=(),
                                       call_timeout=timeout)
    except TorControlError as exc:
        if cfg.tor.managed:
            return [Check("tor control", "warn", f"{exc} (tor.managed = true: the bridge starts "
                          "its own tor, so this only answers while the bridge runs)")], []
        return [Check("tor control", "fail", str(exc), _control_fix(exc, cfg))], []
    out: list[Check] = []
    listeners: list[tuple[str, int]] = []
    try:
        version = await ctl.version()
        out.append(Check("tor control", "ok", f"{endpoint}: authenticated with "
                         f"{ctl.auth_method}; tor {version}"))
        boot = await ctl.bootstrap_status()
        if boot.done:
            out.append(Check("tor bootstrap", "ok", f"{boot.progress}% ({boot.summary})"))
        else:
            out.append(Check("tor bootstrap", "warn", f"{boot.progress}% {boot.tag}: "
                             f"{boot.summary}" + (f" — {boot.warning}" if boot.warning else ""),
                             "wait for it; if it is stuck, check tor's log (clock, network, "
                             "bridges)"))
        if cfg.tor.socks is None:
            listeners = await ctl.socks_listeners()
    except TorControlError as exc:
        out.append(Check("tor control", "fail", f"authenticated, then: {exc}",
                         "check tor's log"))
    finally:
        await ctl.close()
    return out, listeners


def _why(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    cause: BaseException | None = exc.__cause__
    while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]  # trio: "all attempts failed" from a group of OSErrors
    if not isinstance(cause, OSError):
        cause = exc
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return str(exc)


async def _read_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = await stream.receive_some(n - len(buf))
        if not data:
            raise _Fail("the SOCKS port closed the connection mid-handshake",
                        "is tor.socks really tor's SocksPort?")
        buf += data
    return bytes(buf)


async def socks_probe(host: str, port: int, timeout: float) -> str:
    """SOCKS5 greeting (+ username/password, as the bridge uses) and a CONNECT to
    :data:`PROBE_ONION`. Returns a description of Tor's reply; raises :class:`_Fail`."""
    where = f"{host}:{port}"
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        why = _why(exc)
        raise _Fail(f"cannot connect to the SOCKS port {where}: {why}",
                    f"start tor with `SocksPort {where}` or fix tor.socks") from None
    async with stream:
        try:
            with trio.fail_after(timeout):
                await stream.send_all(b"\x05\x02\x00\x02")
                ver, method = await _read_exactly(stream, 2)
                if ver != 5:
                    raise _Fail(f"{where} answered the SOCKS5 greeting with {bytes([ver])!r}: "
                                "not a SOCKS5 proxy", "tor.socks must be tor's SocksPort (not "
                                "the control port or an HTTP proxy)")
                if method == 0xFF:
                    raise _Fail(f"{where} accepts none of the offered SOCKS auth methods",
                                "use a plain tor SocksPort")
                if method == 0x02:
                    user, pw = b"ktb-doctor", secrets.token_hex(8).encode()
                    await stream.send_all(b"\x01" + bytes([len(user)]) + user
                                          + bytes([len(pw)]) + pw)
                    _, st = await _read_exactly(stream, 2)
                    if st != 0:
                        raise _Fail(f"{where} rejected SOCKS username/password auth",
                                    "tor accepts any credentials; is this really tor?")
                name = PROBE_ONION.encode()
                await stream.send_all(b"\x05\x01\x00\x03" + bytes([len(name)]) + name
                                      + (16111).to_bytes(2, "big"))
                ver, rep = await _read_exactly(stream, 2)
        except trio.TooSlowError:
            raise _Fail(f"{where} accepted the connection but sent no SOCKS reply within "
                        f"{timeout:.0f}s", "check that tor.socks is tor's SocksPort and that "
                        "tor is not frozen") from None
        except (trio.BrokenResourceError, OSError) as exc:
            raise _Fail(f"{where}: connection failed during the SOCKS handshake: {exc!r}",
                        "check tor.socks") from None
    if ver != 5:
        raise _Fail(f"{where} sent a malformed SOCKS reply", "check tor.socks")
    return (f"SOCKS5 handshake ok; a probe CONNECT to an invalid onion got reply {rep:#04x} "
            f"({SOCKS_REPLIES.get(rep, 'unknown')}) without leaving this machine")


async def check_socks(cfg: Config, discovered: list[tuple[str, int]],
                      timeout: float) -> list[Check]:
    endpoints: list[tuple[str, HostPort | tuple[str, int]]] = []
    if cfg.tor.socks is not None:
        endpoints.append(("tor socks", cfg.tor.socks))
    elif discovered:
        endpoints.append(("tor socks", discovered[0]))
    else:
        return [Check("tor socks", "skip" if cfg.tor.managed else "fail",
                      "tor.socks = \"auto\" and tor reported no SocksPort"
                      + (" (managed tor: only while the bridge runs)" if cfg.tor.managed
                         else ""),
                      None if cfg.tor.managed else "give tor a SocksPort or set tor.socks")]
    if cfg.tor.onion_socks is not None:
        endpoints.append(("tor onion socks", cfg.tor.onion_socks))
    out: list[Check] = []
    for name, ep in endpoints:
        host, port = (ep.host, ep.port) if isinstance(ep, HostPort) else ep
        try:
            out.append(Check(name, "ok", f"{host}:{port}: " + await socks_probe(host, port,
                                                                               timeout)))
        except _Fail as f:
            out.append(Check(name, "fail", f.detail, f.fix))
    return out


async def check_kaspad(cfg: Config, timeout: float) -> list[Check]:
    from bridge.net.h2io import h2_client_handshake

    p2p = cfg.kaspad.p2p
    fix_listen = (f"start kaspad with --listen={p2p} (see `kaspa-tor-bridge kaspad-flags`) or "
                  "fix kaspad.p2p")
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(p2p.host, p2p.port)
    except (OSError, trio.TooSlowError) as exc:
        why = _why(exc)
        return [Check("kaspad p2p", "fail", f"cannot connect to kaspad at {p2p}: {why}",
                      fix_listen)]
    async with stream:
        try:
            await h2_client_handshake(stream, new_upstream_connection(RelaySettings()), timeout)
        except (BridgeError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            what = "no HTTP/2 SETTINGS in time" if isinstance(exc, trio.TooSlowError) else str(exc)
            return [Check("kaspad p2p", "fail", f"{p2p} accepts connections but is not kaspad's "
                          f"P2P (gRPC/HTTP/2) port: {what}",
                          "kaspad.p2p must be kaspad's P2P --listen port, not its RPC port")]
    checks = [Check("kaspad p2p", "ok", f"{p2p}: TCP connect and HTTP/2 preface exchange ok")]
    return checks + await check_kaspad_version(cfg, timeout)


async def check_kaspad_version(cfg: Config, timeout: float) -> list[Check]:
    """Handshake with kaspad like a peer and read its Version: right network, and no routable
    address advertised (that would be --externalip or a public listener)."""
    import ipaddress

    from bridge.net.probe import HarvestTimeouts, harvest

    p2p = cfg.kaspad.p2p
    try:
        res = await harvest(p2p.host, p2p.port, proxy=None, network=cfg.network,
                            connect=lambda: trio.open_tcp_stream(p2p.host, p2p.port),
                            timeouts=HarvestTimeouts(dial=timeout, addresses=timeout))
    except (BridgeError, trio.TooSlowError, OSError) as exc:
        what = exc.describe() if isinstance(exc, BridgeError) else _why(exc)
        return [Check("kaspad version", "warn", f"no kaspad handshake on {p2p}: {what}",
                      "check that kaspad.p2p is kaspad's P2P port and network is "
                      f"{cfg.network}")]
    peer = res.peer
    checks = [Check("kaspad version", "ok", f"{peer.user_agent} on {peer.network}, protocol "
                    f"{peer.protocol_version}")]
    if peer.address is not None:
        host, port = peer.address
        try:
            routable = ipaddress.ip_address(host).is_global
        except ValueError:
            routable = False
        if routable:
            checks.append(Check(
                "kaspad address", "fail" if cfg.mode == "tor-only" else "warn",
                f"kaspad advertises the routable address {host}:{port} in its Version",
                "remove --externalip and use --listen=127.0.0.1:… (see `kaspa-tor-bridge "
                "kaspad-flags`); the bridge strips it from Tor peers, but kaspad also "
                "advertises it wherever it connects directly"))
    return checks


async def check_kaspad_rpc(cfg: Config, timeout: float) -> list[Check]:
    """peers.sync_first: kaspad's RPC answers GetServerInfo for the configured network."""
    if not cfg.peers.sync_first:
        return []
    from bridge.core.kaspa import get_network
    from bridge.net.kaspad_rpc import RpcUnavailable, server_info

    rpc = cfg.kaspad.rpc
    fix = (f"start kaspad with its RPC on {rpc} (--rpclisten={rpc}; kaspad's default is "
           "127.0.0.1:<network RPC port>) or fix kaspad.rpc; until the bridge gets an answer it "
           "keeps syncing over direct IP peers, at most peers.sync_first_timeout")
    try:
        info = await server_info(rpc.host, rpc.port, timeout=timeout)
    except RpcUnavailable as exc:
        return [Check("kaspad rpc", "fail", str(exc), fix)]
    want = get_network(cfg.network).short_name
    if info.error or info.network_id != want:
        what = (f"answered with an error: {info.error}" if info.error else
                f"is a kaspad of {info.network_id!r}, not {want!r}")
        return [Check("kaspad rpc", "fail", f"kaspad's RPC at {rpc} {what}", fix)]
    return [Check("kaspad rpc", "ok", f"{rpc}: kaspad {info.server_version} on {want}, "
                  f"{'synced' if info.is_synced else 'not synced yet'} (peers.sync_first)")]


async def check_daemon(cfg: Config, timeout: float) -> list[Check]:
    m = cfg.metrics.listen
    if m is None:
        return [Check("bridge daemon", "skip", "metrics.listen is not set: cannot ask a "
                      "running bridge for its health")]
    from bridge.runtime.status import StatusUnavailable, fetch

    try:
        data = await trio.to_thread.run_sync(lambda: fetch(m.host, m.port, "/health", timeout))
    except StatusUnavailable:
        return [Check("bridge daemon", "skip", f"no bridge answers on {m} (not running?)")]
    if data.get("status") == "ok":
        return [Check("bridge daemon", "ok", f"{m}: /health ok")]
    return [Check("bridge daemon", "warn", f"{m}: unhealthy: "
                  + "; ".join(str(r) for r in data.get("reasons", [])),
                  "see `kaspa-tor-bridge status`")]


async def run_checks(cfg: Config, *, timeout: float = 10.0) -> list[Check]:
    checks = check_config(cfg) + check_files(cfg) + check_bridges(cfg)
    control, discovered = await check_tor_control(cfg, timeout)
    checks += control
    checks += await check_socks(cfg, discovered, timeout)
    checks += await check_kaspad(cfg, timeout)
    checks += await check_kaspad_rpc(cfg, timeout)
    checks += await check_daemon(cfg, timeout)
    return checks


def report(checks: list[Check], echo: Callable[[str], object]) -> bool:
    """Print the checks; ``True`` when none failed."""
    marks = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]", "skip": "[skip]"}
    for c in checks:
        echo(f"{marks[c.status]} {c.name}: {c.detail}")
        if c.fix and c.status in ("fail", "warn"):
            echo(f"       fix: {c.fix}")
    failed = sum(1 for c in checks if c.status == "fail")
    warned = sum(1 for c in checks if c.status == "warn")
    echo(f"{len(checks)} checks: {failed} failed, {warned} warnings")
    return failed == 0
