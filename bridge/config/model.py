"""The validated configuration: frozen dataclasses, one per TOML section.

Every field of a section dataclass is the key ``<section>.<field>`` (top-level keys are fields
of :class:`Config`); its type, default, bounds and meaning are declared once in
:mod:`bridge.config.keys` (``tests/config/test_keys.py`` checks the two match). The fields hold
the *resolved* values: parsed addresses, expanded paths, defaults that depend on the network
filled in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bridge.config.types import HostKind, HostPort, UnixSocket
from bridge.core.bridges import BridgeLine
from bridge.core.errors import ConfigError
from bridge.core.kaspa import network_p2p_port
from bridge.core.onion import OnionAddress

__all__ = [
    "SECTIONS",
    "Config",
    "InboundConfig",
    "KaspadConfig",
    "MetricsConfig",
    "PeersConfig",
    "PoolConfig",
    "RelayConfig",
    "SlotsConfig",
    "TorConfig",
]


@dataclass(frozen=True, slots=True)
class KaspadConfig:
    p2p: HostPort
    rpc: HostPort


@dataclass(frozen=True, slots=True)
class SlotsConfig:
    host: str  # IP literal (normalised, IPv6 without brackets)
    base_port: int
    count: int
    allow_non_loopback: bool
    max_connections: int  # 0: see connection_cap
    request_timeout: float

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
    allow_non_loopback: bool
    max_connections: int
    max_pending: int
    handshake_timeout: float
    accept_rate: float  # 0: unpaced
    accept_burst: int


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
    onion_pow: bool
    onion_pow_queue_rate: int  # 0: tor's default
    onion_pow_queue_burst: int  # 0: tor's default
    onion_max_streams: int  # 0: no limit
    bootstrap_timeout: float
    managed: bool
    extra_torrc: tuple[str, ...]
    bridges: tuple[BridgeLine, ...]
    transport: str | None  # None: as each bridge line names it
    transport_binary: str | None  # None: looked up on PATH

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
    onlynet: frozenset[str]  # resolved: never empty
    refresh_interval: float  # 0: the bridge never asks peers for addresses itself
    dns_seed: bool
    seeders: tuple[tuple[str, int], ...]  # (): the network's seeders
    sync_first: bool
    sync_first_timeout: float  # 0: no limit


@dataclass(frozen=True, slots=True)
class RelayConfig:
    max_message_bytes: int
    max_rewrite_bytes: int
    advertise_address: bool
    own_onion: OnionAddress | None
    stall_timeout: float  # 0: a started message is never checked for progress
    min_message_rate: float


@dataclass(frozen=True, slots=True)
class PoolConfig:
    size: int
    slot_wait: float
    dial_timeout: float
    handshake_timeout: float


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: HostPort | None  # None: metrics off
    #: the address-free /metrics (+ bare /health) beyond loopback; None: off
    public_listen: HostPort | None


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


#: Section name → its dataclass (the fields of :class:`Config` that are sections).
SECTIONS: Mapping[str, type] = {
    "kaspad": KaspadConfig,
    "slots": SlotsConfig,
    "inbound": InboundConfig,
    "tor": TorConfig,
    "peers": PeersConfig,
    "relay": RelayConfig,
    "pool": PoolConfig,
    "metrics": MetricsConfig,
}
