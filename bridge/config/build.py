"""Building: typed raw values -> the validated :class:`~bridge.config.model.Config`.

Bounds come from each key's declaration (:mod:`bridge.config.keys`); what is checked here is
what one declaration cannot say: addresses, paths, and the keys against each other (mode and
allow_direct, listeners that collide, the public networks' refresh floor, ...). A cross-key
error blames the key the operator set and names the others with their sources.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Final, Literal

from bridge.config.keys import ONLYNET_CHOICES
from bridge.config.model import (
    Config,
    InboundConfig,
    KaspadConfig,
    MetricsConfig,
    PeersConfig,
    PoolConfig,
    RelayConfig,
    SlotsConfig,
    TorConfig,
)
from bridge.config.raw import Builder, Raw
from bridge.config.types import HostPort, UnixSocket
from bridge.core.bridges import BridgeLine, BridgeLineError
from bridge.core.errors import OnionAddressError
from bridge.core.kaspa import PUBLIC_NETWORKS, get_network, network_p2p_port
from bridge.core.onion import OnionAddress

#: The shortest peers.refresh_interval on a public network, in seconds.
PUBLIC_REFRESH_FLOOR: Final = 60.0
ONION_KEY_FILE_NAME: Final = "onion_ed25519_v3.key"  # same as bridge.tor.keys.KEY_FILE_NAME
PASSWORD_ENV_ALIAS: Final = "KTB_TOR_CONTROL_PASSWORD"
_SEEDER_RE: Final = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}", re.IGNORECASE)


def _conflicts(a: HostPort, b: HostPort) -> bool:
    if a.port != b.port:
        return False
    ia, ib = a.ip, b.ip
    if ia is None or ib is None:
        return False
    return ia == ib or ia.is_unspecified or ib.is_unspecified


def build(raw: Raw, home: str | None) -> Config:
    """The validated :class:`Config` of ``raw`` (``home``: for ``~`` in paths)."""
    b = Builder(raw, home)

    network = b.choice("network")
    p2p_port = network_p2p_port(network)
    mode: Literal["tor-only", "hybrid"] = "hybrid" if b.choice("mode") == "hybrid" else "tor-only"
    log_format: Literal["text", "json"] = "json" if b.choice("log_format") == "json" else "text"
    log_level = b.choice("log_level")
    data_dir = b.path("data_dir", optional=False)
    assert data_dir is not None

    # [kaspad]
    p2p_text = b.str_("kaspad.p2p") or f"127.0.0.1:{p2p_port}"
    rpc_port = get_network(network).rpc_port
    rpc_text = b.str_("kaspad.rpc") or f"127.0.0.1:{rpc_port}"
    kaspad = KaspadConfig(p2p=b.hostport("kaspad.p2p", default_port=p2p_port, text=p2p_text),
                          rpc=b.hostport("kaspad.rpc", default_port=rpc_port, text=rpc_text))

    slots = _slots(b)
    inbound = _inbound(b)
    tor = _tor(b, network, p2p_port, data_dir)
    peers = _peers(b, network, mode, p2p_port)
    relay = _relay(b, mode)
    pool = _pool(b)
    metrics = _metrics(b)
    _check_collisions(b, kaspad, slots, inbound, tor, metrics)

    return Config(
        network=network,
        mode=mode,
        data_dir=data_dir,
        log_format=log_format,
        log_level=log_level,
        kaspad=kaspad,
        slots=slots,
        inbound=inbound,
        tor=tor,
        peers=peers,
        relay=relay,
        pool=pool,
        metrics=metrics,
        sources={k: s for k, (_, s) in raw.items()},
        warnings=tuple(b.warnings),
    )


def _slots(b: Builder) -> SlotsConfig:
    """[slots]"""
    slots_host_text = b.str_("slots.host")
    try:
        slots_ip = ipaddress.ip_address(slots_host_text)
        if "%" in slots_host_text:
            raise ValueError
    except ValueError:
        raise b.err(
            "slots.host",
            f"{slots_host_text!r} is not an IP literal (no port, IPv6 without brackets)",
        ) from None
    base_port = b.int_("slots.base_port")
    count = b.int_("slots.count")
    if base_port + count - 1 > 65535:
        raise b.err_any(
            ("slots.count", "slots.base_port"),
            f"slots.base_port {base_port} + slots.count {count} - 1 = {base_port + count - 1} "
            "exceeds 65535; lower slots.base_port or slots.count",
        )
    slots_non_loopback = _loopback_only(
        b, "slots.host", repr(slots_host_text), slots_ip.is_loopback,
        "slots relay into Tor and must not be reachable from other hosts")
    slot_cap = b.int_("slots.max_connections")
    if 0 < slot_cap < count:
        raise b.err_any(
            ("slots.max_connections", "slots.count"),
            f"slots.max_connections {slot_cap} is below slots.count {count}: kaspad makes one "
            "connection per slot port and some would be refused")
    return SlotsConfig(
        host=str(slots_ip),
        base_port=base_port,
        count=count,
        allow_non_loopback=slots_non_loopback,
        max_connections=slot_cap,
        request_timeout=b.float_("slots.request_timeout"),
    )


def _loopback_only(b: Builder, key: str, shown_value: str, is_loopback: bool, why: str) -> bool:
    """``<section>.allow_non_loopback``; an error for a non-loopback ``key`` without it."""
    allow_key = key.split(".", 1)[0] + ".allow_non_loopback"
    allowed = b.bool_(allow_key)
    if not is_loopback and not allowed:
        raise b.err(key, f"{shown_value} is not a loopback address: {why}; set {allow_key} = "
                    "true to override")
    return allowed


def _inbound(b: Builder) -> InboundConfig:
    """[inbound]"""
    inbound_listen = b.hostport("inbound.listen", default_port=None)
    inbound_non_loopback = _loopback_only(b, "inbound.listen", str(inbound_listen),
                                          inbound_listen.is_loopback,
                                          "only the local Tor should reach it")
    return InboundConfig(listen=inbound_listen, allow_non_loopback=inbound_non_loopback,
                         max_connections=b.int_("inbound.max_connections"),
                         max_pending=b.int_("inbound.max_pending"),
                         handshake_timeout=b.float_("inbound.handshake_timeout"),
                         accept_rate=b.float_("inbound.accept_rate"),
                         accept_burst=b.int_("inbound.accept_burst"))


def _tor(b: Builder, network: str, p2p_port: int, data_dir: Path) -> TorConfig:
    """[tor]"""
    # "auto": ask tor over the control port (GETINFO net/listeners/socks)
    socks = (None if b.str_("tor.socks") == "auto"
             else b.hostport("tor.socks", default_port=None))
    onion_socks = (
        b.hostport("tor.onion_socks", default_port=None) if b.str_("tor.onion_socks") else None
    )
    control_text = b.str_("tor.control")
    control: HostPort | UnixSocket | None
    if not control_text:
        control = None
    elif control_text.startswith("unix:"):
        unix_path = b.expand("tor.control", control_text[len("unix:") :] or ".")
        if not control_text[len("unix:") :] or not unix_path.is_absolute():
            raise b.err(
                "tor.control", f"{control_text!r}: expected 'unix:<absolute path>' or '<ip>:<port>'"
            )
        control = UnixSocket(unix_path)
    else:
        control = b.hostport("tor.control", default_port=None)
    password = b.str_("tor.control_password")
    password_file = b.path("tor.control_password_file", optional=True)
    if password and password_file is not None:
        raise b.err_any(
            ("tor.control_password", "tor.control_password_file"),
            "set only one of tor.control_password and tor.control_password_file",
        )
    password_src = b.src("tor.control_password")
    if password and password_src != "default" and not password_src.startswith(("env ", "--")):
        b.warnings.append(
            f"{password_src}: tor.control_password is stored in the config file; "
            f"prefer {PASSWORD_ENV_ALIAS} or tor.control_password_file"
        )
    cookie_file = b.path("tor.cookie_file", optional=True)
    listen_onion = b.bool_("tor.listen_onion")
    managed = b.bool_("tor.managed")
    if socks is None and control is None:
        raise b.err_any(
            ("tor.socks", "tor.control"),
            'tor.socks = "auto" needs tor.control (the SOCKS port is asked from tor)',
        )
    extra_torrc = tuple(str(x) for x in b.list_("tor.extra_torrc"))
    if extra_torrc and not managed:
        raise b.err_any(("tor.extra_torrc", "tor.managed"),
                        "tor.extra_torrc only applies to a managed tor (tor.managed = true)")
    transport = b.str_("tor.transport") or None
    try:
        bridges = tuple(BridgeLine.parse(line, transport=transport)
                        for line in b.list_("tor.bridges"))
    except BridgeLineError as exc:
        raise b.err("tor.bridges", str(exc)) from None
    if bridges and not managed:
        raise b.err_any(("tor.bridges", "tor.managed"),
                        "tor.bridges only applies to a managed tor (tor.managed = true); for "
                        "your own tor, put the Bridge lines and UseBridges 1 in its torrc")
    if transport and not bridges:
        raise b.err_any(("tor.transport", "tor.bridges"),
                        f"tor.transport = {transport!r} needs tor.bridges (the {transport} "
                        "bridges to use)")
    if listen_onion and control is None:
        raise b.err_any(
            ("tor.listen_onion", "tor.control"),
            "tor.listen_onion = true needs tor.control (the onion service is published over "
            "the control port); set tor.control or tor.listen_onion = false",
        )
    if managed and control is None:
        raise b.err_any(
            ("tor.managed", "tor.control"),
            "tor.managed = true needs tor.control (the bridge drives its own tor over it)",
        )
    virtual_port = b.int_("tor.onion_virtual_port") or p2p_port
    key_file = b.path("tor.onion_key_file", optional=True)
    if key_file is None:
        key_file = data_dir / network / ONION_KEY_FILE_NAME
    return TorConfig(
        socks=socks,
        onion_socks=onion_socks,
        control=control,
        control_password=password,
        control_password_file=password_file,
        cookie_file=cookie_file,
        listen_onion=listen_onion,
        onion_virtual_port=virtual_port,
        onion_key_file=key_file,
        onion_pow=b.bool_("tor.onion_pow"),
        onion_pow_queue_rate=b.int_("tor.onion_pow_queue_rate"),
        onion_pow_queue_burst=b.int_("tor.onion_pow_queue_burst"),
        onion_max_streams=b.int_("tor.onion_max_streams"),
        bootstrap_timeout=b.float_("tor.bootstrap_timeout"),
        managed=managed,
        extra_torrc=extra_torrc,
        bridges=bridges,
        transport=transport,
        transport_binary=b.str_("tor.transport_binary") or None,
    )


def _peers(b: Builder, network: str, mode: str, p2p_port: int) -> PeersConfig:
    """[peers]"""
    connect: list[HostPort] = []
    seen: dict[HostPort, str] = {}
    for item in b.list_("peers.connect"):
        hp = b.hostport("peers.connect", default_port=p2p_port, allow_onion=True, text=item)
        if hp in seen:
            raise b.err("peers.connect", f"{item!r} duplicates {seen[hp]!r} (both are {hp})")
        seen[hp] = item
        connect.append(hp)
    allow_direct = b.bool_("peers.allow_direct")
    if allow_direct and mode != "hybrid":
        raise b.err_any(
            ("peers.allow_direct", "mode"),
            f"peers.allow_direct = true is only allowed with mode = 'hybrid', mode is {mode!r}",
        )
    sync_first = b.bool_("peers.sync_first")
    if sync_first and mode != "hybrid":
        raise b.err_any(
            ("peers.sync_first", "mode"),
            f"peers.sync_first = true is only allowed with mode = 'hybrid' (kaspad syncs over "
            f"IP peers dialed directly, then the bridge switches to Tor), mode is {mode!r}; in "
            "tor-only mode nothing is ever dialed outside Tor")
    if sync_first and not allow_direct and b.src("peers.allow_direct") != "default":
        raise b.err_any(
            ("peers.allow_direct", "peers.sync_first"),
            "peers.sync_first = true dials IP peers directly while kaspad syncs, but "
            "peers.allow_direct = false forbids it; remove one of them")
    allow_direct = allow_direct or sync_first
    onlynet_raw = tuple(str(x) for x in b.list_("peers.onlynet"))
    for item in onlynet_raw:
        if item not in ONLYNET_CHOICES:
            raise b.err("peers.onlynet",
                        f"{item!r} is not a peer network; allowed: {', '.join(ONLYNET_CHOICES)}")
    # default: tor-only dials everything (IP via exits); hybrid dials onion, plus IP peers
    # directly when allow_direct is set
    onlynet = frozenset(onlynet_raw) or frozenset(
        ONLYNET_CHOICES if mode == "tor-only" or allow_direct else ("onion",))
    if mode == "hybrid" and onlynet - {"onion"} and not allow_direct:
        raise b.err_any(
            ("peers.onlynet", "mode", "peers.allow_direct"),
            "in hybrid mode the bridge carries only onion traffic through Tor; IP networks in "
            "peers.onlynet need peers.allow_direct = true (dialed directly, not via Tor)",
        )
    if sync_first and not onlynet - {"onion"}:
        raise b.err_any(
            ("peers.onlynet", "peers.sync_first"),
            "peers.sync_first = true syncs kaspad over IP peers, but peers.onlynet has no IP "
            "network (add \"ipv4\" and/or \"ipv6\")")
    for hp in connect:
        if hp.kind not in onlynet:
            raise b.err("peers.connect",
                        f"{hp} is an {hp.kind} peer but peers.onlynet allows only "
                        f"{', '.join(sorted(onlynet))}")
    seeders: list[tuple[str, int]] = []
    for item in b.list_("peers.seeders"):
        text = str(item)
        host, sep, port_text = text.rpartition(":")
        if not sep or not _SEEDER_RE.fullmatch(host) or not port_text.isdigit() \
                or not 0 < int(port_text) <= 65535:
            raise b.err("peers.seeders", f"{text!r}: expected '<dns name>:<port>' (the name "
                        "is resolved by a Tor exit, never locally)")
        seeders.append((host.lower(), int(port_text)))
    refresh = b.value("peers.refresh_interval")  # the public networks' floor first
    assert isinstance(refresh, float)
    if 0 < refresh < PUBLIC_REFRESH_FLOOR and network in PUBLIC_NETWORKS:
        raise b.err_any(
            ("peers.refresh_interval", "network"),
            f"value {refresh!r} out of range: on {network} the bridge asks other people's nodes "
            f"for addresses, at most every {PUBLIC_REFRESH_FLOOR:g} s (kaspad itself asks once "
            f"per connection): expected {PUBLIC_REFRESH_FLOOR:g} <= value <= 86400, or 0 (off); "
            "simnet and devnet allow down to 1 s")
    refresh = b.float_("peers.refresh_interval")
    return PeersConfig(connect=tuple(connect), allow_direct=allow_direct, onlynet=onlynet,
                       refresh_interval=refresh,
                       dns_seed=b.bool_("peers.dns_seed"), seeders=tuple(seeders),
                       sync_first=sync_first,
                       sync_first_timeout=b.float_("peers.sync_first_timeout"))


def _relay(b: Builder, mode: str) -> RelayConfig:
    """[relay]"""
    max_message = b.int_("relay.max_message_bytes")
    max_rewrite = b.int_("relay.max_rewrite_bytes")
    if max_rewrite > max_message:
        raise b.err_any(
            ("relay.max_rewrite_bytes", "relay.max_message_bytes"),
            f"relay.max_rewrite_bytes {max_rewrite} exceeds relay.max_message_bytes {max_message}",
        )
    own_onion_text = b.str_("relay.own_onion")
    try:
        own_onion = OnionAddress.parse(own_onion_text) if own_onion_text else None
    except OnionAddressError as e:
        raise b.err("relay.own_onion", f"{e}; expected '<56 base32 chars>.onion' or ''") from None
    advertise = b.bool_("relay.advertise_address")
    if advertise and mode == "tor-only":
        b.warnings.append(
            "relay.advertise_address = true in tor-only mode: kaspad's own address is sent to "
            "Tor peers and links this node's IP to its onion"
        )
    return RelayConfig(
        max_message_bytes=max_message,
        max_rewrite_bytes=max_rewrite,
        advertise_address=advertise,
        own_onion=own_onion,
        stall_timeout=b.float_("relay.stall_timeout"),
        min_message_rate=b.float_("relay.min_message_rate"),
    )


def _pool(b: Builder) -> PoolConfig:
    """[pool]"""
    return PoolConfig(
        size=b.int_("pool.size"),
        slot_wait=b.float_("pool.slot_wait"),
        dial_timeout=b.float_("pool.dial_timeout"),
        handshake_timeout=b.float_("pool.handshake_timeout"),
    )


def _metrics(b: Builder) -> MetricsConfig:
    """[metrics]"""
    metrics_listen = (
        b.hostport("metrics.listen", default_port=None) if b.str_("metrics.listen") else None
    )
    public = (b.hostport("metrics.public_listen", default_port=None)
              if b.str_("metrics.public_listen") else None)
    return MetricsConfig(listen=metrics_listen, public_listen=public)


def _check_collisions(b: Builder, kaspad: KaspadConfig, slots: SlotsConfig,
                      inbound: InboundConfig, tor: TorConfig, metrics: MetricsConfig) -> None:
    """Port collisions between what the bridge listens on and what others listen on."""
    inbound_listen, metrics_listen = inbound.listen, metrics.listen
    socks, onion_socks, control = tor.socks, tor.onion_socks, tor.control
    listeners: list[tuple[str, HostPort]] = [("slots.base_port", e) for e in slots.endpoints()]
    listeners.append(("inbound.listen", inbound_listen))
    if metrics_listen is not None:
        listeners.append(("metrics.listen", metrics_listen))
    if metrics.public_listen is not None:
        listeners.append(("metrics.public_listen", metrics.public_listen))
    others: list[tuple[str, HostPort]] = [("kaspad.p2p", kaspad.p2p)]
    if socks is not None:
        others.append(("tor.socks", socks))
    if onion_socks is not None:
        others.append(("tor.onion_socks", onion_socks))
    if isinstance(control, HostPort):
        others.append(("tor.control", control))
    for i, (key_a, a) in enumerate(listeners):
        for key_b, other in listeners[i + 1 :] + others:
            if key_a == key_b == "slots.base_port":
                continue
            if _conflicts(a, other):
                keys_a: tuple[str, ...] = (key_a,)
                what = f"{key_a} = {a}"
                if key_a == "slots.base_port":
                    keys_a = ("slots.base_port", "slots.count")
                    last = slots.base_port + slots.count - 1
                    what = (
                        f"slot port {a.port} (slots are {slots.host} ports "
                        f"{slots.base_port}..{last})"
                    )
                raise b.err_any((*keys_a, key_b), f"{what} collides with {key_b} = {other}")
