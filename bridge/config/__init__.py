"""Configuration: TOML file + ``KTB_*`` env + CLI overrides -> frozen, validated dataclasses.

Precedence (highest first): ``overrides`` (CLI flags, dotted keys such as ``"slots.count"``) >
environment (``KTB_`` + upper-cased dotted key with ``.`` -> ``__``, e.g. ``KTB_SLOTS__COUNT=8``) >
the TOML file > built-in defaults.

Every problem raises :class:`~bridge.errors.ConfigError` naming the source (file path,
``env KTB_...`` or ``--flag``), the dotted key and the allowed values. Unknown keys are rejected
with a suggestion. This module reads the config file (and, on request, the control password file)
but does no networking and never resolves hostnames: every address is an IP literal or a v3 onion.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TypeAlias

from bridge.core.errors import ConfigError, OnionAddressError
from bridge.core.onion import OnionAddress, is_onion_host

__all__ = [
    "ENV_PREFIX",
    "KNOWN_KEYS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MODES",
    "NETWORK_P2P_PORTS",
    "Config",
    "HostKind",
    "HostPort",
    "InboundConfig",
    "KaspadConfig",
    "MetricsConfig",
    "PeersConfig",
    "PoolConfig",
    "RelayConfig",
    "SlotsConfig",
    "TorConfig",
    "UnixSocket",
    "as_dict",
    "defaults",
    "env_var_name",
    "is_secret_key",
    "load_config",
    "network_p2p_port",
    "parse_hostport",
]

# --------------------------------------------------------------------------------------------
# Networks and addresses
# --------------------------------------------------------------------------------------------

#: Default P2P port of each Kaspa network (rusty-kaspa ``consensus/core/src/config/params.rs``).
NETWORK_P2P_PORTS: Final[Mapping[str, int]] = {
    "kaspa-mainnet": 16111,
    "kaspa-testnet-10": 16211,
    "kaspa-simnet": 16511,
    "kaspa-devnet": 16611,
}
MODES: Final = ("tor-only", "hybrid")
#: Networks of other people's nodes (see the bounds notes above the schema).
PUBLIC_NETWORKS: Final = frozenset({"kaspa-mainnet", "kaspa-testnet-10"})
#: The shortest peers.refresh_interval on a public network, in seconds.
PUBLIC_REFRESH_FLOOR: Final = 60.0
LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
ONION_KEY_FILE_NAME: Final = "onion_ed25519_v3.key"  # same as bridge.tor.keys.KEY_FILE_NAME


ONLYNET_CHOICES: Final[tuple[str, ...]] = ("onion", "ipv4", "ipv6")
_SEEDER_RE: Final = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}", re.IGNORECASE)


def network_p2p_port(network: str) -> int:
    """Default P2P port of ``network``; ``ValueError`` for an unknown network."""
    try:
        return NETWORK_P2P_PORTS[network]
    except KeyError:
        allowed = ", ".join(NETWORK_P2P_PORTS)
        raise ValueError(f"unknown network {network!r}; allowed: {allowed}") from None


HostKind: TypeAlias = Literal["onion", "ipv4", "ipv6"]
_PORT_RE = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True, slots=True)
class HostPort:
    """A numeric endpoint: an IP literal or a v3 onion host, and a port.

    ``host`` is normalised: lower-case ``<56>.onion``, dotted IPv4, compressed IPv6 *without*
    brackets. ``str()`` gives the form ``parse_hostport`` accepts (IPv6 in brackets).
    """

    host: str
    port: int
    kind: HostKind

    def __str__(self) -> str:
        if self.kind == "ipv6":
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return None if self.kind == "onion" else ipaddress.ip_address(self.host)

    @property
    def onion(self) -> OnionAddress | None:
        return OnionAddress.parse(self.host) if self.kind == "onion" else None

    @property
    def is_loopback(self) -> bool:
        ip = self.ip
        return ip is not None and ip.is_loopback


@dataclass(frozen=True, slots=True)
class UnixSocket:
    """A Unix-domain socket path (``tor.control = "unix:/run/tor/control"``)."""

    path: Path

    def __str__(self) -> str:
        return f"unix:{self.path}"


def _parse_port(text: str) -> int:
    if not _PORT_RE.fullmatch(text):
        raise ValueError(f"port {text!r} is not a number between 1 and 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1..65535")
    return port


def parse_hostport(text: str, default_port: int | None = None) -> HostPort:
    """Parse ``"1.2.3.4:port"``, ``"[::1]:port"`` or ``"<56>.onion:port"``.

    The port may be omitted when ``default_port`` is given. Hostnames other than ``.onion`` are
    rejected (the bridge never resolves DNS), as are unbracketed IPv6, IPv6 scope ids and
    surrounding whitespace. Raises ``ValueError`` (``OnionAddressError`` for a bad onion).
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {type(text).__name__}")
    if not text:
        raise ValueError("empty address")
    if text != text.strip():
        raise ValueError(f"{text!r}: surrounding whitespace is not allowed")
    host: str
    kind: HostKind
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']' after IPv6 address")
        inner, rest = text[1:end], text[end + 1 :]
        if rest == "":
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise ValueError(f"{text!r}: expected ':port' after ']'")
        if "%" in inner:
            raise ValueError(f"{text!r}: IPv6 scope ids are not supported")
        try:
            host = str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise ValueError(f"{text!r}: {inner!r} is not an IPv6 address") from None
        kind = "ipv6"
    else:
        if text.count(":") > 1:
            raise ValueError(f"{text!r}: IPv6 addresses must be in brackets, e.g. '[::1]:16111'")
        name, sep, after = text.partition(":")
        port_text = after if sep else None
        if is_onion_host(name):
            host = OnionAddress.parse(name).host  # OnionAddressError says what is wrong
            kind = "onion"
        else:
            try:
                host = str(ipaddress.IPv4Address(name))
            except ValueError:
                raise ValueError(
                    f"{text!r}: {name!r} is not an IPv4 address or a v3 .onion address "
                    "(hostnames are not allowed: the bridge never resolves DNS)"
                ) from None
            kind = "ipv4"
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{text!r}: missing ':port'")
        port = default_port
    elif port_text == "":
        raise ValueError(f"{text!r}: empty port after ':'")
    else:
        port = _parse_port(port_text)
    return HostPort(host=host, port=port, kind=kind)


# --------------------------------------------------------------------------------------------
# Config dataclasses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KaspadConfig:
    p2p: HostPort  # kaspad's --listen address; inbound onion connections are relayed here


@dataclass(frozen=True, slots=True)
class SlotsConfig:
    host: str  # IP literal (normalised, IPv6 without brackets)
    base_port: int
    count: int
    allow_non_loopback: bool = False
    #: local connections to the slot ports served at once; 0 = 4 per slot port, at least 8
    #: (kaspad makes one per --addpeer; more are other local processes)
    max_connections: int = 0
    #: seconds a local slot connection has to send its gRPC request (kaspad sends it at once)
    request_timeout: float = 5.0

    @property
    def connection_cap(self) -> int:
        """``max_connections`` with 0 resolved (the rule of bridge.runtime.bridge's default)."""
        return self.max_connections or max(8, 4 * self.count)

    @property
    def ports(self) -> range:
        return range(self.base_port, self.base_port + self.count)

    def endpoints(self) -> tuple[HostPort, ...]:
        kind: HostKind = "ipv6" if ":" in self.host else "ipv4"
        return tuple(HostPort(self.host, p, kind) for p in self.ports)


@dataclass(frozen=True, slots=True)
class InboundConfig:
    listen: HostPort
    allow_non_loopback: bool = False
    max_connections: int = 64  # relayed to kaspad at once; more are answered UNAVAILABLE
    max_pending: int = 64  # idle (no stream yet); the oldest is closed for a newcomer
    handshake_timeout: float = 10.0  # seconds for an inbound peer's HTTP/2 preface
    #: new connections accepted per second after a burst (0: unpaced); the rest wait in the
    #: kernel's accept queue, so a connection flood cannot crowd out relays already running
    accept_rate: float = 20.0
    accept_burst: int = 64


@dataclass(frozen=True, slots=True)
class TorConfig:
    socks: HostPort | None  # None: "auto", asked from tor over the control port
    onion_socks: HostPort | None  # None: use ``socks`` for .onion targets too
    control: HostPort | UnixSocket | None
    control_password: str = field(repr=False)
    control_password_file: Path | None
    cookie_file: Path | None
    listen_onion: bool
    onion_virtual_port: int  # resolved: never 0
    onion_key_file: Path  # resolved: <data_dir>/<network>/onion_ed25519_v3.key by default
    bootstrap_timeout: float
    managed: bool
    extra_torrc: tuple[str, ...] = ()  # extra torrc lines for a managed tor

    @property
    def socks_for_onion(self) -> HostPort | None:
        return self.onion_socks if self.onion_socks is not None else self.socks

    def read_control_password(self) -> str | None:
        """The control password: ``control_password`` or the first line of the password file.

        ``None`` when neither is configured. Reads the file on every call (not cached in the
        config); a trailing newline is stripped.
        """
        if self.control_password:
            return self.control_password
        if self.control_password_file is None:
            return None
        try:
            text = self.control_password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"cannot read control password file: {e.__class__.__name__}: {e.strerror or e}"
                if isinstance(e, OSError)
                else "control password file is not UTF-8",
                source=str(self.control_password_file),
                key="tor.control_password_file",
            ) from None
        password = text.splitlines()[0] if text else ""
        if not password:
            raise ConfigError(
                "control password file is empty",
                source=str(self.control_password_file),
                key="tor.control_password_file",
            )
        return password


@dataclass(frozen=True, slots=True)
class PeersConfig:
    connect: tuple[HostPort, ...]
    allow_direct: bool
    onlynet: frozenset[str] = frozenset({"onion", "ipv4", "ipv6"})
    refresh_interval: float = 600.0  # 0 = the bridge never asks peers for addresses itself
    dns_seed: bool = True  # harvest DNS seeders through Tor (tor-only mode)
    seeders: tuple[tuple[str, int], ...] = ()  # () = the network's seeders


@dataclass(frozen=True, slots=True)
class RelayConfig:
    max_message_bytes: int
    max_rewrite_bytes: int
    advertise_address: bool
    own_onion: OnionAddress | None
    stall_timeout: float = 60.0  # 0 = a started message is never checked for progress
    min_message_rate: float = 1024.0  # bytes/s a started message must average


@dataclass(frozen=True, slots=True)
class PoolConfig:
    size: int
    slot_wait: float
    dial_timeout: float
    #: seconds for an upstream's HTTP/2 handshake once dialed, and for each write to an idle
    #: warm connection (a remote that stops reading is closed after it)
    handshake_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: HostPort | None  # None: metrics off


@dataclass(frozen=True, slots=True)
class Config:
    network: str
    mode: Literal["tor-only", "hybrid"]
    data_dir: Path
    log_format: Literal["text", "json"]
    log_level: str
    kaspad: KaspadConfig
    slots: SlotsConfig
    inbound: InboundConfig
    tor: TorConfig
    peers: PeersConfig
    relay: RelayConfig
    pool: PoolConfig
    metrics: MetricsConfig
    #: Where each dotted key's effective value came from ("default", file path, "env KTB_..",
    #: "--flag"). Not part of equality.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: Non-fatal remarks for the runtime to log at startup.
    warnings: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def p2p_port(self) -> int:
        """The network's default P2P port."""
        return network_p2p_port(self.network)

    @property
    def network_dir(self) -> Path:
        """``<data_dir>/<network>`` (created by the runtime, not here)."""
        return self.data_dir / self.network


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------

_Kind = Literal["str", "path", "int", "float", "bool", "list"]


@dataclass(frozen=True, slots=True)
class _Spec:
    kind: _Kind
    default: object
    choices: tuple[str, ...] = ()
    lo: float | None = None  # inclusive unless lo_open
    hi: float | None = None  # inclusive unless hi_open
    lo_open: bool = False
    hi_open: bool = False
    #: when set, 0 is also allowed below ``lo``, meaning this (``peers.refresh_interval = 0``:
    #: "off")
    zero: str = ""


# Bounds. A key that sets how often the bridge does something, or how long it waits, has a lower
# bound that keeps a typo or a unit mistake (0.001 meant as "1 ms"?) from turning into a flood or
# a busy loop, and sizes have upper bounds that keep the cost of one message bounded:
# - peers.refresh_interval >= 60 s (or 0, off) on the public networks (mainnet, testnet):
#   kaspad itself sends RequestAddresses once per connection (rusty-kaspa protocol/flows v5
#   address.rs, ReceiveAddressesFlow) and answers every request, so 0.001 was 1000 requests/s
#   to someone else's node and as many Addresses decoded here; a peer's address book changes
#   over minutes, not seconds. Simnet and devnet peers are the operator's own test nodes: >= 1 s
#   (the rig and the discovery tests refresh every 2 s).
# - relay.stall_timeout >= 5 s (or 0, off): the watchdog wakes every timeout/8 per relay, and a
#   Tor circuit pauses for seconds; below that honest peers would be dropped as stalled.
# - relay.min_message_rate <= 1 MiB/s: a floor above what a Tor circuit carries would drop every
#   honest peer (the default is 1 KiB/s).
# - relay.max_rewrite_bytes <= 16 MiB: the bridge holds and decodes such messages (Version,
#   Addresses) on the event loop; real ones are under 64 KiB.
# - pool.dial_timeout >= 5 s: a Tor circuit to an onion takes seconds; less fails every dial and
#   backs off every peer. pool.slot_wait >= 1 s: less refuses kaspad before any upstream could be
#   handed over. inbound.handshake_timeout >= 1 s: a preface over Tor takes a round trip.
# - tor.bootstrap_timeout >= 1 s: the supervisor logs a warning at every expiry while tor
#   bootstraps (0.001 was a warning flood).
_SCHEMA: Final[Mapping[str, _Spec]] = {
    "network": _Spec("str", "kaspa-mainnet", choices=tuple(NETWORK_P2P_PORTS)),
    "mode": _Spec("str", "tor-only", choices=MODES),
    "data_dir": _Spec("path", "~/.kaspa-tor-bridge"),
    "log_format": _Spec("str", "text", choices=LOG_FORMATS),
    "log_level": _Spec("str", "info", choices=LOG_LEVELS),
    "kaspad.p2p": _Spec("str", ""),  # "" = 127.0.0.1:<network P2P port>
    "slots.host": _Spec("str", "127.0.0.1"),
    "slots.base_port": _Spec("int", 16200, lo=1, hi=65535),
    "slots.count": _Spec("int", 4, lo=1, hi=64),
    "slots.allow_non_loopback": _Spec("bool", False),
    "slots.max_connections": _Spec("int", 0, lo=1, hi=4096, zero="4 per slot port, at least 8"),
    "slots.request_timeout": _Spec("float", 5.0, lo=1, hi=60),
    "inbound.listen": _Spec("str", "127.0.0.1:16300"),
    "inbound.allow_non_loopback": _Spec("bool", False),
    "inbound.max_connections": _Spec("int", 64, lo=1, hi=4096),
    "inbound.max_pending": _Spec("int", 64, lo=1, hi=4096),
    "inbound.handshake_timeout": _Spec("float", 10.0, lo=1, hi=3600),
    "inbound.accept_rate": _Spec("float", 20.0, lo=0, hi=100000),
    "inbound.accept_burst": _Spec("int", 64, lo=1, hi=4096),
    "tor.socks": _Spec("str", "127.0.0.1:9050"),
    "tor.onion_socks": _Spec("str", ""),
    "tor.control": _Spec("str", "127.0.0.1:9051"),
    "tor.control_password": _Spec("str", ""),
    "tor.control_password_file": _Spec("path", ""),
    "tor.cookie_file": _Spec("path", ""),
    "tor.listen_onion": _Spec("bool", True),
    "tor.onion_virtual_port": _Spec("int", 0, lo=0, hi=65535),
    "tor.onion_key_file": _Spec("path", ""),
    "tor.bootstrap_timeout": _Spec("float", 120.0, lo=1, hi=86400),
    "tor.managed": _Spec("bool", False),
    "tor.extra_torrc": _Spec("list", ()),
    "peers.connect": _Spec("list", ()),
    "peers.allow_direct": _Spec("bool", False),
    "peers.onlynet": _Spec("list", ()),  # () = by mode: tor-only all three, hybrid onion
    "peers.refresh_interval": _Spec("float", 600.0, lo=1, hi=86400, zero="off"),
    "peers.dns_seed": _Spec("bool", True),
    "peers.seeders": _Spec("list", ()),  # () = the network's DNS seeders
    "relay.max_message_bytes": _Spec("int", 1 << 30, lo=16384, hi=1 << 30),
    "relay.max_rewrite_bytes": _Spec("int", 4 << 20, lo=1024, hi=16 << 20),
    "relay.advertise_address": _Spec("bool", False),
    "relay.own_onion": _Spec("str", ""),
    "relay.stall_timeout": _Spec("float", 60.0, lo=5, hi=3600, zero="off"),
    "relay.min_message_rate": _Spec("float", 1024.0, lo=0, hi=1 << 20),
    "pool.size": _Spec("int", 2, lo=0, hi=32),
    "pool.slot_wait": _Spec("float", 6.0, lo=1, hi=10, hi_open=True),
    "pool.dial_timeout": _Spec("float", 60.0, lo=5, hi=3600),
    "pool.handshake_timeout": _Spec("float", 30.0, lo=5, hi=600),
    "metrics.listen": _Spec("str", ""),
}

#: Every dotted key the schema knows, in schema order.
KNOWN_KEYS: Final[tuple[str, ...]] = tuple(_SCHEMA)
_SECTIONS: Final[tuple[str, ...]] = tuple(
    dict.fromkeys(k.split(".")[0] for k in _SCHEMA if "." in k)
)
_TOP_LEVEL: Final[tuple[str, ...]] = tuple(k for k in _SCHEMA if "." not in k)

ENV_PREFIX: Final = "KTB_"
_PASSWORD_ENV_ALIAS: Final = "KTB_TOR_CONTROL_PASSWORD"
_BOOL_WORDS: Final[Mapping[str, bool]] = {
    "true": True, "false": False, "1": True, "0": False,
    "yes": True, "no": False, "on": True, "off": False,
}  # fmt: skip


def env_var_name(key: str) -> str:
    """``"slots.count"`` -> ``"KTB_SLOTS__COUNT"``."""
    return ENV_PREFIX + key.upper().replace(".", "__")


_ENV_TO_KEY: Final[Mapping[str, str]] = {env_var_name(k): k for k in _SCHEMA}
# "KTB_TOR_SOCKS" (single underscore) -> key, to catch a common mistake.
_ENV_SINGLE_UNDERSCORE: Final[Mapping[str, str]] = {
    n.replace("__", "_"): k for n, k in _ENV_TO_KEY.items() if "__" in n
}


def _flag_name(key: str) -> str:
    return "--" + key.replace(".", "-").replace("_", "-")


def _describe_allowed(spec: _Spec) -> str:
    if spec.choices:
        return "one of " + ", ".join(repr(c) for c in spec.choices)
    kind = {
        "str": "a string",
        "path": "a path string",
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "list": "a list of strings",
    }[spec.kind]
    if spec.lo is not None or spec.hi is not None:
        lo = "" if spec.lo is None else f"{_fmt_num(spec.lo)} {'<' if spec.lo_open else '<='} "
        hi = "" if spec.hi is None else f" {'<' if spec.hi_open else '<='} {_fmt_num(spec.hi)}"
        kind += f" with {lo}value{hi}"
        if spec.zero:
            kind += f", or 0 ({spec.zero})"
    return kind


#: Words that make a key's value a secret (its leaf name contains one): never echoed in an error,
#: a warning or ``--help``, whatever its source (file, environment, command line). A ``*_file``
#: key holds a path to a secret, which is not itself secret (it is named in errors).
_SECRET_WORDS: Final = ("password", "passwd", "passphrase", "secret", "token", "key")


def is_secret_key(key: str) -> bool:
    """Whether ``key``'s value must never be shown (``tor.control_password``; a future
    ``*secret*``/``*token*``/``*key*`` value), see :data:`_SECRET_WORDS`."""
    leaf = key.rsplit(".", 1)[-1].lower()
    return not leaf.endswith("_file") and any(w in leaf for w in _SECRET_WORDS)


def _shown(key: str, value: object) -> str:
    """``repr(value)`` for an error message, or a placeholder for a secret key's value."""
    return "<the value, not shown: it is secret>" if is_secret_key(key) else repr(value)


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _suggest(key: str) -> str:
    """ " (did you mean 'x'?)" or ""."""
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in _SCHEMA if k.rsplit(".", 1)[-1] == leaf and k != key]
    if same_leaf:
        return f" (did you mean {same_leaf[0]!r}?)"
    candidates = [*_SCHEMA, *_SECTIONS]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close and "." in key:
        section = key.split(".", 1)[0]
        in_section = [k.split(".", 1)[1] for k in _SCHEMA if k.startswith(section + ".")]
        leaf_close = difflib.get_close_matches(leaf, in_section, n=1, cutoff=0.6)
        close = [f"{section}.{leaf_close[0]}"] if leaf_close else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_key_error(key: str, source: str) -> ConfigError:
    section = key.split(".", 1)[0] if "." in key else None
    if section in _SECTIONS:
        known = ", ".join(k.split(".", 1)[1] for k in _SCHEMA if k.startswith(f"{section}."))
        where = f"known keys in [{section}]: {known}"
    else:
        where = (
            "known top-level keys: "
            + ", ".join(_TOP_LEVEL)
            + "; sections: "
            + ", ".join(f"[{s}]" for s in _SECTIONS)
        )
    return ConfigError(f"unknown key{_suggest(key)}; {where}", source=source, key=key)


# --------------------------------------------------------------------------------------------
# Layers: each yields {dotted key: (typed value, source)}
# --------------------------------------------------------------------------------------------

_Raw: TypeAlias = dict[str, tuple[object, str]]


def _check_type(key: str, value: object, source: str) -> object:
    """Type-check a native (TOML / override) value; returns the normalised value."""
    spec = _SCHEMA[key]

    def bad() -> ConfigError:
        got = f"{type(value).__name__} {_shown(key, value)}"
        return ConfigError(f"expected {_describe_allowed(spec)}, got {got}", source=source, key=key)

    if spec.kind == "str":
        if not isinstance(value, str):
            raise bad()
        return value
    if spec.kind == "path":
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise bad()
        return value
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if spec.kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad()
        if not math.isfinite(value):
            raise bad()
        return float(value)
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    # list
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise bad()
    items = list(value)
    if not all(isinstance(item, str) for item in items):
        raise bad()
    return tuple(items)


def _from_file(path: Path) -> _Raw:
    source = str(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config file not found", source=source) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e.strerror or e}", source=source) from None
    except UnicodeDecodeError:
        raise ConfigError("config file is not valid UTF-8", source=source) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}", source=source) from None
    raw: _Raw = {}
    for name, value in data.items():
        if name in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"must be a table ([{name}]), got {type(value).__name__}",
                    source=source,
                    key=name,
                )
            for sub, subvalue in value.items():
                key = f"{name}.{sub}"
                if key not in _SCHEMA:
                    raise _unknown_key_error(key, source)
                raw[key] = (_check_type(key, subvalue, source), source)
        elif name in _SCHEMA:
            if isinstance(value, dict):
                raise ConfigError(
                    f"must be a value, not a table; expected {_describe_allowed(_SCHEMA[name])}",
                    source=source,
                    key=name,
                )
            raw[name] = (_check_type(name, value, source), source)
        else:
            raise _unknown_key_error(name, source)
    return raw


def _parse_env_value(key: str, text: str, source: str) -> object:
    spec = _SCHEMA[key]

    def bad(why: str = "") -> ConfigError:
        return ConfigError(
            f"cannot parse {_shown(key, text)}{why}: expected {_describe_allowed(spec)}",
            source=source,
            key=key,
        )

    if spec.kind in ("str", "path"):
        return text
    stripped = text.strip()
    if spec.kind == "int":
        if not re.fullmatch(r"[+-]?[0-9]+", stripped):
            raise bad()
        return int(stripped)
    if spec.kind == "float":
        try:
            number = float(stripped)
        except ValueError:
            raise bad() from None
        if not math.isfinite(number):
            raise bad()
        return number
    if spec.kind == "bool":
        word = stripped.lower()
        if word not in _BOOL_WORDS:
            raise bad(" (use true/false, 1/0, yes/no or on/off)")
        return _BOOL_WORDS[word]
    # list: comma-separated, items stripped, empty string = empty list
    if not stripped:
        return ()
    items = tuple(item.strip() for item in stripped.split(","))
    if any(not item for item in items):
        raise bad(" (empty list item)")
    return items


#: The project's own ``KTB_*`` variables that are not configuration keys (the test script, the
#: kaspad install script and rig, the caches): never taken for a misspelt key.
NON_CONFIG_ENV = frozenset({
    "KTB_IN_NETNS", "KTB_KASPAD", "KTB_KASPAD_VERSION", "KTB_KASPAD_PROFILE",
    "KTB_KASPAD_PROTO_DIR", "KTB_KASPAD_LOG", "KTB_SKIP_KASPAD", "KTB_CACHE_DIR",
})


def _from_env(env: Mapping[str, str]) -> _Raw:
    raw: _Raw = {}
    names = sorted(n for n in env if n.startswith(ENV_PREFIX) and n not in NON_CONFIG_ENV)
    if _PASSWORD_ENV_ALIAS in env and env_var_name("tor.control_password") in env:
        raise ConfigError(
            f"set only one of {_PASSWORD_ENV_ALIAS} and {env_var_name('tor.control_password')}",
            source=f"env {_PASSWORD_ENV_ALIAS}",
            key="tor.control_password",
        )
    for name in names:
        key = _ENV_TO_KEY.get(name)
        if key is None and name == _PASSWORD_ENV_ALIAS:
            key = "tor.control_password"
        if key is None:
            hint = _ENV_SINGLE_UNDERSCORE.get(name)
            close = None if hint else difflib.get_close_matches(name, list(_ENV_TO_KEY), 1, 0.8)
            if hint is not None or "__" in name or close:
                suggestion = env_var_name(hint) if hint else (close[0] if close else None)
                did = f" (did you mean {suggestion}?)" if suggestion else ""
                raise ConfigError(
                    f"unknown configuration variable{did}; variables are {ENV_PREFIX} + the "
                    "upper-cased dotted key with '.' replaced by '__', e.g. KTB_SLOTS__COUNT",
                    source=f"env {name}",
                )
            continue  # some other KTB_ variable (e.g. KTB_IN_NETNS of the test script)
        source = f"env {name}"
        raw[key] = (_parse_env_value(key, env[name], source), source)
    return raw


FLAG_TO_KEY: Final[Mapping[str, str]] = {_flag_name(k): k for k in _SCHEMA}


def flag_help() -> list[tuple[str, str]]:
    """``(flag, what it takes)`` for every key, for the CLI's help text (not the control
    password: never on the command line)."""
    return [(_flag_name(k), _describe_allowed(s)) for k, s in _SCHEMA.items()
            if not is_secret_key(k)]


def parse_flags(args: Sequence[str]) -> dict[str, object]:
    """Command-line flags for every config key: ``--slots-count 8``, ``--slots-count=8``,
    ``--tor-listen-onion`` / ``--no-tor-listen-onion`` for booleans; list keys repeat
    (``--peers-connect A --peers-connect B``) or take a comma-separated list. Returns
    overrides for :func:`load_config`; errors name the flag."""
    out: dict[str, object] = {}
    lists: dict[str, list[object]] = {}
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        name, eq, value = token.partition("=")
        negated = name.startswith("--no-") and name[:2] + name[5:] in FLAG_TO_KEY
        key = FLAG_TO_KEY.get("--" + name[5:] if negated else name)
        if key is None or not name.startswith("--"):
            close = difflib.get_close_matches(name, list(FLAG_TO_KEY), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown option {name}{hint}", source="command line")
        if is_secret_key(key):
            raise ConfigError(
                "a password on the command line is visible to every user (ps); use the "
                f"{_PASSWORD_ENV_ALIAS} environment variable or tor.control_password_file",
                source="command line", key=key)
        spec = _SCHEMA[key]
        if spec.kind == "bool" and not eq:
            out[key] = not negated
            continue
        if negated:
            raise ConfigError(f"{name} takes no value", source="command line", key=key)
        if not eq:
            # The next token is the value, unless it is another option (never parsed as this
            # one's value: "--slots-count --tor-control-password=x" must not echo the password)
            if i >= len(args) or args[i].startswith("--"):
                raise ConfigError(f"{name} needs a value: {_describe_allowed(spec)}",
                                  source="command line", key=key)
            value = args[i]
            i += 1
        parsed = _parse_env_value(key, value, name)
        if spec.kind == "list":
            assert isinstance(parsed, tuple)
            lists.setdefault(key, []).extend(parsed)
        else:
            out[key] = parsed
    for key, items in lists.items():
        out[key] = tuple(items)
    return out


def _from_overrides(overrides: Mapping[str, object]) -> _Raw:
    raw: _Raw = {}
    for key, value in overrides.items():
        if value is None:  # an unset CLI option
            continue
        source = _flag_name(key)
        if key not in _SCHEMA:
            raise _unknown_key_error(key, source)
        raw[key] = (_check_type(key, value, source), source)
    return raw


# --------------------------------------------------------------------------------------------
# Build + validate
# --------------------------------------------------------------------------------------------


class _Builder:
    def __init__(self, raw: _Raw, home: str | None) -> None:
        self.raw = raw
        self.home = home
        self.warnings: list[str] = []

    def src(self, key: str) -> str:
        return self.raw[key][1]

    def err(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, source=self.src(key), key=key)

    def err_any(self, keys: Sequence[str], message: str) -> ConfigError:
        """A cross-field error: blames the first of ``keys`` not left at its default."""
        blame = next((k for k in keys if self.src(k) != "default"), keys[0])
        where = ", ".join(f"{k} from {self.src(k)}" for k in keys if k != blame)
        return self.err(blame, f"{message} ({where})" if where else message)

    def value(self, key: str) -> object:
        return self.raw[key][0]

    def str_(self, key: str) -> str:
        v = self.value(key)
        assert isinstance(v, str)
        return v

    def int_(self, key: str) -> int:
        v = self.value(key)
        assert isinstance(v, int)
        self._range(key, v)
        return v

    def float_(self, key: str) -> float:
        v = self.value(key)
        assert isinstance(v, float)
        self._range(key, v)
        return v

    def bool_(self, key: str) -> bool:
        v = self.value(key)
        assert isinstance(v, bool)
        return v

    def list_(self, key: str) -> tuple[str, ...]:
        v = self.value(key)
        assert isinstance(v, tuple)
        return v

    def choice(self, key: str) -> str:
        v = self.str_(key)
        spec = _SCHEMA[key]
        if v not in spec.choices:
            close = difflib.get_close_matches(v, spec.choices, n=1, cutoff=0.6)
            did = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.err(key, f"invalid value {_shown(key, v)}{did}; allowed: "
                           f"{', '.join(spec.choices)}")
        return v

    def _range(self, key: str, v: float) -> None:
        spec = _SCHEMA[key]
        if spec.zero and v == 0:
            return
        too_low = spec.lo is not None and (v <= spec.lo if spec.lo_open else v < spec.lo)
        too_high = spec.hi is not None and (v >= spec.hi if spec.hi_open else v > spec.hi)
        if too_low or too_high:
            raise self.err(key, f"value {_shown(key, v)} out of range: expected "
                           f"{_describe_allowed(spec)}")

    def path(self, key: str, *, optional: bool) -> Path | None:
        v = self.str_(key)
        if not v:
            if optional:
                return None
            raise self.err(key, "must not be empty")
        if "\x00" in v:
            raise self.err(key, "path contains a NUL character")
        return self.expand(key, v)

    def expand(self, key: str, v: str) -> Path:
        """``~`` and ``~/x`` use HOME (from ``env``); ``~user/x`` the password database."""
        if v == "~" or v.startswith("~/"):
            if not self.home:
                raise self.err(key, f"cannot expand {v!r}: HOME is not set")
            return Path(self.home) / v[2:] if v != "~" else Path(self.home)
        try:
            return Path(v).expanduser()
        except RuntimeError:
            raise self.err(key, f"cannot expand {v!r}: unknown user") from None

    def hostport(
        self,
        key: str,
        *,
        default_port: int | None,
        allow_onion: bool = False,
        text: str | None = None,
    ) -> HostPort:
        v = self.str_(key) if text is None else text
        try:
            hp = parse_hostport(v, default_port)
        except OnionAddressError as e:
            raise self.err(key, str(e)) from None
        except ValueError as e:
            form = "'<ip>:<port>' or '[<ipv6>]:<port>'"
            if allow_onion:
                form += " or '<56 base32 chars>.onion:<port>'"
            raise self.err(key, f"{e}; expected {form}") from None
        if hp.kind == "onion" and not allow_onion:
            raise self.err(key, f"{v!r}: must be an IP literal, not an onion address")
        return hp


def _conflicts(a: HostPort, b: HostPort) -> bool:
    if a.port != b.port:
        return False
    ia, ib = a.ip, b.ip
    if ia is None or ib is None:
        return False
    return ia == ib or ia.is_unspecified or ib.is_unspecified


def _build(raw: _Raw, home: str | None) -> Config:
    b = _Builder(raw, home)

    network = b.choice("network")
    p2p_port = network_p2p_port(network)
    mode: Literal["tor-only", "hybrid"] = "hybrid" if b.choice("mode") == "hybrid" else "tor-only"
    log_format: Literal["text", "json"] = "json" if b.choice("log_format") == "json" else "text"
    log_level = b.choice("log_level")
    data_dir = b.path("data_dir", optional=False)
    assert data_dir is not None

    # [kaspad]
    p2p_text = b.str_("kaspad.p2p") or f"127.0.0.1:{p2p_port}"
    kaspad = KaspadConfig(p2p=b.hostport("kaspad.p2p", default_port=p2p_port, text=p2p_text))

    # [slots]
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
    slots_non_loopback = b.bool_("slots.allow_non_loopback")
    if not slots_ip.is_loopback and not slots_non_loopback:
        raise b.err(
            "slots.host",
            f"{slots_host_text!r} is not a loopback address: slots relay into Tor and must not be "
            "reachable from other hosts; set slots.allow_non_loopback = true to override",
        )
    slot_cap = b.int_("slots.max_connections")
    if 0 < slot_cap < count:
        raise b.err_any(
            ("slots.max_connections", "slots.count"),
            f"slots.max_connections {slot_cap} is below slots.count {count}: kaspad makes one "
            "connection per slot port and some would be refused")
    slots = SlotsConfig(
        host=str(slots_ip),
        base_port=base_port,
        count=count,
        allow_non_loopback=slots_non_loopback,
        max_connections=slot_cap,
        request_timeout=b.float_("slots.request_timeout"),
    )

    # [inbound]
    inbound_listen = b.hostport("inbound.listen", default_port=None)
    inbound_non_loopback = b.bool_("inbound.allow_non_loopback")
    if not inbound_listen.is_loopback and not inbound_non_loopback:
        raise b.err(
            "inbound.listen",
            f"{inbound_listen} is not a loopback address: only the local Tor should reach it; "
            "set inbound.allow_non_loopback = true to override",
        )
    inbound = InboundConfig(listen=inbound_listen, allow_non_loopback=inbound_non_loopback,
                            max_connections=b.int_("inbound.max_connections"),
                            max_pending=b.int_("inbound.max_pending"),
                            handshake_timeout=b.float_("inbound.handshake_timeout"),
                            accept_rate=b.float_("inbound.accept_rate"),
                            accept_burst=b.int_("inbound.accept_burst"))

    # [tor]
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
            f"prefer {_PASSWORD_ENV_ALIAS} or tor.control_password_file"
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
    tor = TorConfig(
        socks=socks,
        onion_socks=onion_socks,
        control=control,
        control_password=password,
        control_password_file=password_file,
        cookie_file=cookie_file,
        listen_onion=listen_onion,
        onion_virtual_port=virtual_port,
        onion_key_file=key_file,
        bootstrap_timeout=b.float_("tor.bootstrap_timeout"),
        managed=managed,
        extra_torrc=extra_torrc,
    )

    # [peers]
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
    peers = PeersConfig(connect=tuple(connect), allow_direct=allow_direct, onlynet=onlynet,
                        refresh_interval=refresh,
                        dns_seed=b.bool_("peers.dns_seed"), seeders=tuple(seeders))

    # [relay]
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
    relay = RelayConfig(
        max_message_bytes=max_message,
        max_rewrite_bytes=max_rewrite,
        advertise_address=advertise,
        own_onion=own_onion,
        stall_timeout=b.float_("relay.stall_timeout"),
        min_message_rate=b.float_("relay.min_message_rate"),
    )

    # [pool]
    pool = PoolConfig(
        size=b.int_("pool.size"),
        slot_wait=b.float_("pool.slot_wait"),
        dial_timeout=b.float_("pool.dial_timeout"),
        handshake_timeout=b.float_("pool.handshake_timeout"),
    )

    # [metrics]
    metrics_listen = (
        b.hostport("metrics.listen", default_port=None) if b.str_("metrics.listen") else None
    )
    metrics = MetricsConfig(listen=metrics_listen)

    # Port collisions between what the bridge listens on and what others listen on.
    listeners: list[tuple[str, HostPort]] = [("slots.base_port", e) for e in slots.endpoints()]
    listeners.append(("inbound.listen", inbound_listen))
    if metrics_listen is not None:
        listeners.append(("metrics.listen", metrics_listen))
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


def load_config(
    path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Load and validate the configuration.

    ``path``: TOML file, or ``None`` for defaults only. ``env`` defaults to ``os.environ``;
    only ``KTB_*`` variables are looked at (unknown ``KTB_X__Y`` names and near-misses of known
    names are errors, other ``KTB_*`` names are ignored). ``overrides`` maps dotted keys to native
    values (``None`` = not given) and wins over everything; errors name them as ``--dotted-key``.
    """
    if env is None:
        env = os.environ
    raw: _Raw = {k: (_SCHEMA[k].default, "default") for k in _SCHEMA}
    if path is not None:
        raw.update(_from_file(Path(path)))
    raw.update(_from_env(env))
    raw.update(_from_overrides(overrides or {}))
    # Normalise numeric defaults/values so the builder sees exact types.
    for key, (value, source) in raw.items():
        if _SCHEMA[key].kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            raw[key] = (float(value), source)
        elif _SCHEMA[key].kind == "list" and isinstance(value, list):
            raw[key] = (tuple(value), source)
    return _build(raw, env.get("HOME", os.environ.get("HOME")))


def defaults() -> dict[str, object]:
    """The built-in default of every dotted key (``kaspad.p2p`` "" = derived from network)."""
    out: dict[str, object] = {}
    for key, spec in _SCHEMA.items():
        value = spec.default
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


# Dataclass helper used by tests and the CLI's "config show".
def as_dict(config: Config) -> dict[str, object]:
    """A plain nested dict of ``config`` (addresses and paths as strings)."""

    def conv(v: object) -> object:
        if isinstance(v, HostPort | UnixSocket | Path | OnionAddress):
            return str(v)
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    out: dict[str, object] = {}
    for f in dataclasses.fields(config):
        if f.name in ("sources", "warnings"):
            continue
        v = getattr(config, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, HostPort):
            out[f.name] = {
                sf.name: (
                    "***"
                    if is_secret_key(f"{f.name}.{sf.name}") and getattr(v, sf.name)
                    else conv(getattr(v, sf.name))
                )
                for sf in dataclasses.fields(v)
            }
        else:
            out[f.name] = conv(v)
    return out
