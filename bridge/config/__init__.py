"""Configuration: TOML file + ``KTB_*`` env + CLI overrides -> frozen, validated dataclasses.

Precedence (highest first): ``overrides`` (CLI flags, dotted keys such as ``"slots.count"``) >
environment (``KTB_`` + upper-cased dotted key with ``.`` -> ``__``, e.g. ``KTB_SLOTS__COUNT=8``) >
the TOML file > built-in defaults.

Every problem raises :class:`~bridge.core.errors.ConfigError` naming the source (file path,
``env KTB_...`` or ``--flag``), the dotted key and the allowed values. Unknown keys are rejected
with a suggestion. This package reads the config file (and, on request, the control password
file) but does no networking and never resolves hostnames: every address is an IP literal or a
v3 onion.

The modules: :mod:`~bridge.config.keys` declares every key once (type, default, bounds, doc;
its environment variable, flag, ``--help`` line and ``config/reference.toml`` entry are derived
from it), :mod:`~bridge.config.types` holds the value types (:class:`HostPort`, ...),
:mod:`~bridge.config.model` the frozen dataclasses, :mod:`~bridge.config.load` the file and
environment layers, :mod:`~bridge.config.flags` the command-line ones,
:mod:`~bridge.config.raw` typed access to the layered values, :mod:`~bridge.config.build` the
validation across keys, and :mod:`~bridge.config.reference` renders the reference file. The
networks come from :mod:`bridge.core.kaspa`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from bridge.config.build import ONION_KEY_FILE_NAME, PUBLIC_REFRESH_FLOOR
from bridge.config.flags import (
    FLAG_TO_KEY,
    flag_help,
    parse_flags,
    parse_options,
    parse_set,
    set_help,
)
from bridge.config.keys import (
    ENV_PREFIX,
    KEYS,
    KNOWN_KEYS,
    LOG_FORMATS,
    LOG_LEVELS,
    MODES,
    ONLYNET_CHOICES,
    Bounds,
    Key,
    describe_allowed,
    env_var_name,
    is_secret_key,
)
from bridge.config.load import NON_CONFIG_ENV, as_dict, defaults, load_config
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
from bridge.config.types import HostKind, HostPort, UnixSocket, parse_hostport
from bridge.core.kaspa import NETWORKS, PUBLIC_NETWORKS, network_p2p_port

#: Default P2P port of each Kaspa network (a view of :data:`bridge.core.kaspa.NETWORKS`).
NETWORK_P2P_PORTS: Final[Mapping[str, int]] = {n.name: n.p2p_port for n in NETWORKS.values()}

__all__ = [
    "ENV_PREFIX",
    "FLAG_TO_KEY",
    "KEYS",
    "KNOWN_KEYS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MODES",
    "NETWORK_P2P_PORTS",
    "NON_CONFIG_ENV",
    "ONION_KEY_FILE_NAME",
    "ONLYNET_CHOICES",
    "PUBLIC_NETWORKS",
    "PUBLIC_REFRESH_FLOOR",
    "Bounds",
    "Config",
    "HostKind",
    "HostPort",
    "InboundConfig",
    "KaspadConfig",
    "Key",
    "MetricsConfig",
    "PeersConfig",
    "PoolConfig",
    "RelayConfig",
    "SlotsConfig",
    "TorConfig",
    "UnixSocket",
    "as_dict",
    "defaults",
    "describe_allowed",
    "env_var_name",
    "flag_help",
    "is_secret_key",
    "load_config",
    "network_p2p_port",
    "parse_flags",
    "parse_hostport",
    "parse_options",
    "parse_set",
    "set_help",
]
