"""The options of :class:`bridge.runtime.bridge.Bridge`: which ports it listens on, what it dials
and how, its limits and deadlines, the address book and the seeders (:class:`BridgeOptions`).

Values only; :mod:`bridge.runtime.wiring` builds them from the configuration. Import them through
:mod:`bridge.runtime.bridge`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bridge.core.kaspa import MAINNET
from bridge.core.peers import Target
from bridge.core.policy import OnionPeer, PolicySettings
from bridge.core.relay import RelaySettings
from bridge.net.pool import DialPolicy
from bridge.net.runner import StallPolicy

#: kaspad's client gives up if response HEADERS take over 10 s (protocol.md §3.1); answer by 9.
KASPAD_RESPONSE_DEADLINE = 9.0
#: kaspad closes a peer whose Version takes over 4 s (protocol.md §3.1)
KASPAD_VERSION_TIMEOUT = 4.0


@dataclass(frozen=True, slots=True)
class SyncFirstOptions:
    """``peers.sync_first``: direct IP upstreams while kaspad syncs, Tor only once it is synced
    (:mod:`bridge.runtime.bridge_sync`)."""

    #: kaspad's gRPC RPC (``kaspad.rpc``)
    rpc: tuple[str, int]
    #: kaspad's ``networkId`` for the configured network ("mainnet", "testnet-10", "simnet")
    network_id: str
    #: seconds after the start when the bridge switches anyway (None: never)
    timeout: float | None = 86400.0
    #: seconds between two GetServerInfo requests
    poll_interval: float = 5.0
    #: seconds an RPC connection or answer may take
    rpc_timeout: float = 10.0
    #: at the switch, the next direct slot relay is closed at least this many seconds after
    #: the previous one, and once the previous slot has a Tor upstream again (kaspad retries a
    #: closed --addpeer within 30 s, protocol.md §10.2) or ``stagger_max`` seconds have passed:
    #: kaspad never loses all its slot peers at once
    stagger: float = 10.0
    stagger_max: float = 120.0
    #: written at the switch; when it exists at start the bridge starts on Tor only (the switch
    #: is one way across restarts too). None: not kept
    state_file: Path | None = None


@dataclass(slots=True)
class BridgeOptions:
    kaspad_p2p: tuple[str, int]
    candidates: list[Target]
    slot_host: str = "127.0.0.1"
    slot_ports: list[int] = field(default_factory=lambda: [16200])
    inbound: tuple[str, int] | None = ("127.0.0.1", 16300)
    dial: DialPolicy = field(default_factory=lambda: DialPolicy(proxy=None))
    pool_size: int = 2
    slot_wait: float = 6.0
    #: seconds for a warm upstream's HTTP/2 handshake, and for its remote to take each write
    #: of the pool while the connection is idle (a remote that stops reading is closed)
    h2_handshake_timeout: float = 30.0
    #: inbound connections relayed to kaspad at once (each holds a kaspad connection); more are
    #: answered UNAVAILABLE. Keep it below kaspad's inbound limit (--maxinpeers, default 128).
    max_inbound: int = 64
    #: inbound connections that have not opened their stream yet (idle HTTP/2, e.g. a remote
    #: bridge's warm pool); when full, the oldest is closed to admit a new one.
    max_pending: int = 64
    #: seconds an inbound connection has to send its HTTP/2 preface
    inbound_handshake_timeout: float = 10.0
    #: seconds an inbound peer has from opening its stream to its Version passing; kaspad is
    #: dialed only then. kaspad's own limit for a peer's Version (protocol.md §3.1); the
    #: bridge answers the stream at once, so the peer's clock starts as it would with kaspad
    inbound_version_timeout: float = KASPAD_VERSION_TIMEOUT
    #: an inbound peer that sends nothing for this long after opening its stream waits for
    #: kaspad's Version first (another bridge's slot relay does): kaspad is dialed then
    inbound_silent_window: float = 1.0
    #: inbound connections accepted per second after ``inbound_accept_burst`` (None: unpaced).
    #: Anyone can connect to the onion, and every new connection costs HTTP/2 set-up and a
    #: frame budget's worth of work before it can be closed; pacing accepts keeps a flood of
    #: new connections from starving the relays already running (the rest wait in the
    #: kernel's accept queue; Tor's own onion-service DoS defences sit in front of that)
    inbound_accept_rate: float | None = 20.0
    inbound_accept_burst: int = 64
    #: kaspad's 10 s response-HEADERS deadline, with margin (protocol.md §3.1). A slot's remote must
    #: have answered *and* sent its Version by then (the bridge checks it before kaspad sees it)
    response_deadline: float = KASPAD_RESPONSE_DEADLINE
    #: a slot whose upstream was dropped as a duplicate (node id connected already) takes
    #: another only while this many seconds remain before ``response_deadline`` (time for the
    #: new remote to answer); None: never, kaspad is answered UNAVAILABLE and retries
    refill_margin: float | None = 3.0
    #: seconds a local connection to a slot port has to send its gRPC request (kaspad sends
    #: it at once); one that has not is closed, blamed on the local side, without taking an
    #: upstream
    slot_request_timeout: float = 5.0
    #: local connections to the slot ports at once (None: 4 per slot port, at least 8); more
    #: are closed at once and counted in ``closed_count.slot_full``
    max_slot_connections: int | None = None
    #: a started message from a remote peer must keep flowing (None: never checked)
    stall: StallPolicy | None = field(default_factory=StallPolicy)
    relay: RelaySettings = field(default_factory=RelaySettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    own_onion: OnionPeer | None = None
    network: str = MAINNET.name
    #: which peer networks are dialed (onlynet): "onion", "ipv4", "ipv6"
    onlynet: frozenset[str] = frozenset({"onion", "ipv4", "ipv6"})
    #: persistent address book (SQLite); None: config candidates + gossip kept in memory
    book_path: Path | None = None
    #: seconds between the bridge's own RequestAddresses to ADDRv2 upstreams (None: never)
    refresh_interval: float | None = 600.0
    #: DNS seeders harvested through Tor ("name", port): the exit resolves the name
    seeders: list[tuple[str, int]] = field(default_factory=list)
    #: re-harvest the seeders while the book has fewer usable peers than this
    seed_below: int = 16
    seed_interval: float = 1800.0
    #: sync first, then Tor (None: the dial policy never changes)
    sync_first: SyncFirstOptions | None = None
