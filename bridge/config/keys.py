"""The configuration keys: one :class:`Key` declaration per key, grouped by section.

Everything else is derived from :data:`KEYS`: which keys a file, the environment and the command
line may set, how a value is type-checked and parsed, its bounds, its default, its environment
variable (``KTB_`` + upper-cased dotted key with ``.`` -> ``__``), its command-line flag
(``--slots-count``), the ``--help`` text and ``config/reference.toml``
(:mod:`bridge.config.reference`). The dataclasses of :mod:`bridge.config.model` have exactly one
field per key (checked by ``tests/config/test_keys.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from bridge.core.bridges import TRANSPORTS
from bridge.core.kaspa import MAINNET, NETWORKS

__all__ = [
    "ENV_PREFIX",
    "KEYS",
    "KNOWN_KEYS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MODES",
    "ONLYNET_CHOICES",
    "SECTION_DOCS",
    "Bounds",
    "Key",
    "describe_allowed",
    "env_var_name",
    "flag_name",
    "is_secret_key",
    "shown",
]

MODES: Final = ("tor-only", "hybrid")
LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
ONLYNET_CHOICES: Final[tuple[str, ...]] = ("onion", "ipv4", "ipv6")
ENV_PREFIX: Final = "KTB_"

Kind = Literal["str", "path", "int", "float", "bool", "list"]


@dataclass(frozen=True, slots=True)
class Bounds:
    """Allowed range of a number: ``lo <= value <= hi`` (``<`` where open)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    #: when set, 0 is also allowed below ``lo``, meaning this (``peers.refresh_interval = 0``:
    #: "off")
    zero: str = ""

    def allows(self, v: float) -> bool:
        if self.zero and v == 0:
            return True
        too_low = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
        too_high = self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi)
        return not (too_low or too_high)


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key: dotted name, value kind, built-in default, documentation."""

    name: str
    kind: Kind
    default: object
    doc: str
    choices: tuple[str, ...] = ()
    bounds: Bounds | None = None

    @property
    def env(self) -> str:
        return env_var_name(self.name)

    @property
    def flag(self) -> str:
        return flag_name(self.name)

    @property
    def secret(self) -> bool:
        return is_secret_key(self.name)

    @property
    def section(self) -> str:
        """``"slots"``, or ``""`` for a top-level key."""
        return self.name.rsplit(".", 1)[0] if "." in self.name else ""

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[-1]


def env_var_name(key: str) -> str:
    """``"slots.count"`` -> ``"KTB_SLOTS__COUNT"``."""
    return ENV_PREFIX + key.upper().replace(".", "__")


def flag_name(key: str) -> str:
    """``"slots.base_port"`` -> ``"--slots-base-port"``."""
    return "--" + key.replace(".", "-").replace("_", "-")


#: Words that make a key's value a secret (its leaf name contains one): never echoed in an error,
#: a warning or ``--help``, whatever its source (file, environment, command line). A ``*_file``
#: key holds a path to a secret, which is not itself secret (it is named in errors).
_SECRET_WORDS: Final = ("password", "passwd", "passphrase", "secret", "token", "key")


def is_secret_key(key: str) -> bool:
    """Whether ``key``'s value must never be shown (``tor.control_password``; a future
    ``*secret*``/``*token*``/``*key*`` value), see :data:`_SECRET_WORDS`."""
    leaf = key.rsplit(".", 1)[-1].lower()
    return not leaf.endswith("_file") and any(w in leaf for w in _SECRET_WORDS)


def shown(key: str, value: object) -> str:
    """``repr(value)`` for an error message, or a placeholder for a secret key's value."""
    return "<the value, not shown: it is secret>" if is_secret_key(key) else repr(value)


def fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def describe_allowed(key: Key) -> str:
    """What ``key`` takes, for errors and ``--help``: "an integer with 1 <= value <= 64"."""
    if key.choices:
        return "one of " + ", ".join(repr(c) for c in key.choices)
    kind = {
        "str": "a string",
        "path": "a path string",
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "list": "a list of strings",
    }[key.kind]
    b = key.bounds
    if b is not None and (b.lo is not None or b.hi is not None):
        lo = "" if b.lo is None else f"{fmt_num(b.lo)} {'<' if b.lo_open else '<='} "
        hi = "" if b.hi is None else f" {'<' if b.hi_open else '<='} {fmt_num(b.hi)}"
        kind += f" with {lo}value{hi}"
        if b.zero:
            kind += f", or 0 ({b.zero})"
    return kind


_PORTS = ", ".join(f"{n.short_name} {n.p2p_port}" for n in NETWORKS.values())
_RPC_PORTS = ", ".join(f"{n.short_name} {n.rpc_port}" for n in NETWORKS.values())

#: What each section is for (the comment above it in ``config/reference.toml``).
SECTION_DOCS: Final[Mapping[str, str]] = {
    "": "Network, mode, where the bridge keeps its files, logging.",
    "kaspad": "The local kaspad.",
    "slots": "The ports kaspad dials (--addpeer): base_port .. base_port+count-1 on host, each an "
             "outgoing peer slot that the bridge fills with an upstream peer reached over Tor. "
             "kaspad makes one connection per slot port and sends its request at once; other "
             "local connections (port scans, health checks, a hostile local process) never take "
             "an upstream.",
    "inbound": "Where the onion service points. Bounds on what Tor peers can hold (each relayed "
               "peer costs a kaspad inbound connection; keep max_connections below kaspad's "
               "--maxinpeers, default 128).",
    "tor": "The Tor client: SOCKS and control ports, the onion service, a bridge-managed tor.",
    "peers": "Upstream peers: candidates, which networks to dial, address discovery.",
    "relay": "The splice between kaspad and a remote peer.",
    "pool": "Warm upstream connections.",
    "metrics": "The /health, /status and /metrics HTTP endpoint.",
}

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
_DECLARATIONS: Final = (
    # top level
    Key("network", "str", MAINNET.name, "The Kaspa network kaspad runs on.",
        choices=tuple(NETWORKS)),
    Key("mode", "str", "tor-only",
        "tor-only: every upstream connection goes through Tor and kaspad never reaches the "
        "network itself. hybrid: kaspad keeps its own clearnet networking; the bridge adds onion "
        "peers (and, with peers.allow_direct, IP peers dialed directly).", choices=MODES),
    Key("data_dir", "path", "~/.kaspa-tor-bridge",
        "Where the bridge keeps its files (per-network subdirectories are created by the "
        "bridge; the address book is data_dir/peers.sqlite)."),
    Key("log_format", "str", "text", "Log line format (json suits journald / log shippers).",
        choices=LOG_FORMATS),
    Key("log_level", "str", "info", "Lowest level logged.", choices=LOG_LEVELS),
    # [kaspad]
    Key("kaspad.p2p", "str", "",
        "kaspad's --listen address: inbound onion connections are relayed here. "
        f"Empty = 127.0.0.1:<network P2P port> ({_PORTS}); the port may be omitted."),
    Key("kaspad.rpc", "str", "",
        "kaspad's gRPC RPC address (--rpclisten), asked whether kaspad is synced when "
        "peers.sync_first = true (GetServerInfo; nothing else). Empty = 127.0.0.1:<network RPC "
        f"port> ({_RPC_PORTS}); the port may be omitted."),
    # [slots]
    Key("slots.host", "str", "127.0.0.1",
        "IP literal the slot ports listen on (no port; IPv6 without brackets). Must be loopback "
        "unless allow_non_loopback = true."),
    Key("slots.base_port", "int", 16200, "First slot port.", bounds=Bounds(1, 65535)),
    Key("slots.count", "int", 4, "Number of slot ports (kaspad --addpeer targets).",
        bounds=Bounds(1, 64)),
    Key("slots.allow_non_loopback", "bool", False,
        "Allow a non-loopback slots.host (slots relay into Tor: anyone who reaches them "
        "does)."),
    Key("slots.max_connections", "int", 0,
        "Local slot connections served at once (kaspad makes one per --addpeer; more are "
        "other local processes); more are closed at once. At least slots.count.",
        bounds=Bounds(1, 4096, zero="4 per slot port, at least 8")),
    Key("slots.request_timeout", "float", 5.0,
        "Seconds a local slot connection has to send its gRPC request (kaspad sends it at "
        "once) before it is closed.", bounds=Bounds(1, 60)),
    # [inbound]
    Key("inbound.listen", "str", "127.0.0.1:16300",
        "Where the onion service points: '<ip>:<port>'. Must be loopback unless "
        "allow_non_loopback = true."),
    Key("inbound.allow_non_loopback", "bool", False,
        "Allow a non-loopback inbound.listen (only the local Tor should reach it)."),
    Key("inbound.max_connections", "int", 64,
        "Peers relayed to kaspad at once; more are answered UNAVAILABLE.",
        bounds=Bounds(1, 4096)),
    Key("inbound.max_pending", "int", 64,
        "Idle connections (no stream opened yet, e.g. a remote bridge's warm pool); when full "
        "the oldest is closed for a newcomer.", bounds=Bounds(1, 4096)),
    Key("inbound.handshake_timeout", "float", 10.0,
        "Seconds a new connection has to send its HTTP/2 preface.", bounds=Bounds(1, 3600)),
    Key("inbound.accept_rate", "float", 20.0,
        "New connections accepted per second after a burst of accept_burst (0: unpaced); the "
        "rest wait in the kernel's accept queue, so a flood of new connections cannot starve "
        "the relays already running.", bounds=Bounds(0, 100000)),
    Key("inbound.accept_burst", "int", 64, "Connections accepted at once before pacing.",
        bounds=Bounds(1, 4096)),
    # [tor]
    Key("tor.socks", "str", "127.0.0.1:9050",
        "Tor SocksPort: '<ip>:<port>', never a hostname; \"auto\" = ask tor over the control "
        "port."),
    Key("tor.onion_socks", "str", "",
        "A separate SOCKS port for .onion targets; \"\" = the same as tor.socks."),
    Key("tor.control", "str", "127.0.0.1:9051",
        "Tor ControlPort: '<ip>:<port>' or 'unix:<absolute path>'; \"\" = none (then no onion "
        "service and no tor.socks = \"auto\")."),
    Key("tor.control_password", "str", "",
        "Password for a HashedControlPassword (cookie authentication is used when Tor offers "
        "it). Prefer the KTB_TOR_CONTROL_PASSWORD environment variable or "
        "tor.control_password_file; never on the command line; not both with the file."),
    Key("tor.control_password_file", "path", "",
        "File whose first line is the control password."),
    Key("tor.cookie_file", "path", "",
        "Override the cookie path Tor reports in PROTOCOLINFO."),
    Key("tor.listen_onion", "bool", True,
        "Publish kaspad's P2P port as a v3 onion service (needs tor.control)."),
    Key("tor.onion_virtual_port", "int", 0,
        "Port of the onion service; 0 = the network's P2P port.", bounds=Bounds(0, 65535)),
    Key("tor.onion_key_file", "path", "",
        "The onion service's key; \"\" = <data_dir>/<network>/onion_ed25519_v3.key."),
    Key("tor.onion_pow", "bool", True,
        "Proof-of-work defence at the onion's introduction points (tor >= 0.4.8): when the "
        "onion is flooded, clients must solve a puzzle whose effort tor raises with the load; "
        "nothing is asked while there is no attack. A tor without it publishes the onion "
        "without it (logged, shown in status)."),
    Key("tor.onion_pow_queue_rate", "int", 0,
        "Introductions per second tor handles from its PoW queue; 0 = tor's default (250).",
        bounds=Bounds(0, 2**31 - 1)),
    Key("tor.onion_pow_queue_burst", "int", 0,
        "Introductions tor keeps queued at most; 0 = tor's default (2500).",
        bounds=Bounds(0, 2**31 - 1)),
    Key("tor.onion_max_streams", "int", 16,
        "Streams one rendezvous circuit may open to the onion (a peer needs one per "
        "connection); a circuit asking for more is closed. 0 = no limit.",
        bounds=Bounds(0, 65535)),
    Key("tor.bootstrap_timeout", "float", 120.0,
        "Seconds the bridge waits at startup for Tor (its control port, bootstrap and the "
        "onion's publication) before giving up (tor-only mode or tor.listen_onion; it says once "
        "what it waits for, then shows progress every 15 s); later, while tor re-bootstraps, "
        "seconds between warnings.",
        bounds=Bounds(1, 86400)),
    Key("tor.managed", "bool", False,
        "The bridge launches and stops its own tor (data directory under "
        "<data_dir>/<network>/), bound to tor.socks and tor.control; needs tor.control."),
    Key("tor.extra_torrc", "list", (),
        "Extra torrc lines for a managed tor."),
    Key("tor.bridges", "list", (),
        "Tor bridges a managed tor enters the network through, where Tor is blocked: lines as "
        "bridges.torproject.org gives them, e.g. 'obfs4 192.0.2.1:443 <fingerprint> cert=... "
        "iat-mode=0' (an IP address, never a hostname). Needs tor.managed; for your own tor put "
        "Bridge lines in its torrc."),
    Key("tor.transport", "str", "",
        "The pluggable transport of tor.bridges; \"\" = as each line names it. Lines that do "
        "not name one use this one.", choices=("", *TRANSPORTS)),
    Key("tor.transport_binary", "str", "",
        "The transport's executable (a path or a name on PATH); \"\" = the first found of "
        "lyrebird/obfs4proxy (obfs4, meek_lite), snowflake-client, lyrebird/webtunnel-client."),
    # [peers]
    Key("peers.connect", "list", (),
        "Upstream candidates: '<56 chars>.onion:port', '1.2.3.4:port', '[2001:db8::1]:port'; "
        "the port defaults to the network's P2P port. Hostnames other than .onion are rejected "
        "(the bridge never resolves DNS). IP peers are reached through Tor exits in tor-only "
        "mode."),
    Key("peers.allow_direct", "bool", False,
        "Dial IP peers directly, not through Tor (only with mode = \"hybrid\")."),
    Key("peers.onlynet", "list", (),
        "Which peer networks the bridge dials: \"onion\", \"ipv4\", \"ipv6\". [] = by mode: "
        "tor-only dials all three (IP peers via Tor exits); hybrid dials onion only, plus IP "
        "peers directly (never via Tor) when allow_direct = true."),
    Key("peers.refresh_interval", "float", 600.0,
        "Seconds between the bridge's own address requests to ADDRv2 peers (active "
        "discovery). At least 60 on mainnet and testnet (kaspad itself asks once per "
        "connection); simnet and devnet (your own test nodes) from 1.",
        bounds=Bounds(1, 86400, zero="off")),
    Key("peers.dns_seed", "bool", True,
        "DNS seeding without local DNS (tor-only mode): each seeder name is dialed through Tor "
        "as a one-shot peer; the exit resolves it, the bridge harvests that node's addresses "
        "and closes."),
    Key("peers.seeders", "list", (),
        "Seeders as '<dns name>:<port>'; [] = the network's DNS seeders."),
    Key("peers.sync_first", "bool", False,
        "Sync first, then Tor (hybrid mode only; implies allow_direct): while kaspad does its "
        "initial sync the slots get IP peers dialed directly; once kaspad's RPC (kaspad.rpc) "
        "reports it synced, the bridge switches for good to Tor only (onion peers, IP peers via "
        "Tor exits), closing the direct connections one by one. Run kaspad with the tor-only "
        "flags (kaspad-flags prints them) so that it has no clearnet peers of its own."),
    Key("peers.sync_first_timeout", "float", 86400.0,
        "Seconds after the start when the bridge switches to Tor anyway if kaspad has not "
        "reported synced (or its RPC cannot be reached) by then.",
        bounds=Bounds(60, 30 * 86400, zero="no limit: only kaspad's answer switches")),
    # [relay]
    Key("relay.max_message_bytes", "int", 1 << 30,
        "gRPC message cap (kaspad's own limit is 1 GiB).", bounds=Bounds(16384, 1 << 30)),
    Key("relay.max_rewrite_bytes", "int", 4 << 20,
        "Cap for messages the bridge decodes (Version, Addresses), decoded on the event loop; "
        "at most relay.max_message_bytes.", bounds=Bounds(1024, 16 << 20)),
    Key("relay.advertise_address", "bool", False,
        "Keep kaspad's own address in outgoing Version messages (would link this node's "
        "clearnet IP to its onion)."),
    Key("relay.own_onion", "str", "",
        "An extra onion to gossip as ours ('<56 chars>.onion'); normally the published one."),
    Key("relay.stall_timeout", "float", 60.0,
        "A message a remote peer has started must keep arriving at relay.min_message_rate "
        "bytes/s on average over this many seconds (unless the bridge itself is holding it "
        "back), else that peer is closed as stalled.", bounds=Bounds(5, 3600, zero="off")),
    Key("relay.min_message_rate", "float", 1024.0,
        "Bytes/s a started message must average (more than a Tor circuit carries would drop "
        "honest peers).", bounds=Bounds(0, 1 << 20)),
    # [pool]
    Key("pool.size", "int", 2,
        "Warm upstream connections kept ready (0 = dial when kaspad connects).",
        bounds=Bounds(0, 32)),
    Key("pool.slot_wait", "float", 6.0,
        "Seconds a slot waits for an upstream before answering UNAVAILABLE (below kaspad's "
        "10 s response-headers timeout).", bounds=Bounds(1, 10, hi_open=True)),
    Key("pool.dial_timeout", "float", 60.0, "Seconds per upstream dial through Tor.",
        bounds=Bounds(5, 3600)),
    Key("pool.handshake_timeout", "float", 30.0,
        "Seconds for an upstream's HTTP/2 handshake once dialed, and for each write to an idle "
        "warm connection (a remote that stops reading is closed after it).",
        bounds=Bounds(5, 600)),
    # [metrics]
    Key("metrics.listen", "str", "",
        "'<ip>:<port>' of the /health, /status and /metrics endpoint, e.g. "
        "\"127.0.0.1:9464\"; \"\" = off."),
    Key("metrics.public_listen", "str", "",
        "'<ip>:<port>' of a second endpoint serving only the address-free /metrics and a bare "
        "/health (200/503, no reasons), which may be beyond loopback for a Prometheus on "
        "another host, e.g. \"0.0.0.0:9465\"; /status is never served there. \"\" = off."),
)

#: Every key by dotted name, in declaration order (a dict: tests may patch an entry).
KEYS: Final[dict[str, Key]] = {k.name: k for k in _DECLARATIONS}
#: Every dotted key, in declaration order.
KNOWN_KEYS: Final[tuple[str, ...]] = tuple(KEYS)
#: Section names, in declaration order.
SECTIONS: Final[tuple[str, ...]] = tuple(dict.fromkeys(k.section for k in _DECLARATIONS
                                                       if k.section))
#: Top-level keys.
TOP_LEVEL: Final[tuple[str, ...]] = tuple(k.name for k in _DECLARATIONS if not k.section)
