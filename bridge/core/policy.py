"""The rewrite policy: what may cross the bridge in each direction, and how it is changed.

Sans-IO and clock-free. One :class:`ConnectionPolicy` per relayed connection decides, from a
message's payload type alone, whether it passes byte for byte, must be decoded and rewritten (or
kept by the bridge), or ends the connection (facts §3.2, §4.1, §8, §10). Only Version and
Addresses are ever rewritten. The only message the bridge sends of its own is RequestAddresses to
an ADDRv2 remote after the handshake; its reply is kept, never forwarded to kaspad.

Directions: ``TO_REMOTE`` is kaspad → Tor peer, ``TO_KASPAD`` is Tor peer → kaspad.

Duplicate connections (:mod:`bridge.core.nodes`): when a remote's Version passes, its node id is
claimed in the bridge-wide :class:`~bridge.core.nodes.NodeRegistry` (``GossipState.nodes``) for
this connection. If another relay already has that id connected to kaspad, the Version is not
let through: :class:`~bridge.errors.DuplicatePeer` is raised instead, and the relay (a slot:
drop that upstream and take another; an inbound relay: close it politely) and the shell decide
what to do. The claim is released by the shell when the relay ends (``nodes.release(policy)``).
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from bridge.core import addrman, grpc, proto
from bridge.core.errors import (
    DecodeError,
    DuplicatePeer,
    Fault,
    OnionAddressError,
    PolicyViolation,
    SelfConnection,
)
from bridge.core.nodes import NodeRegistry
from bridge.core.onion import OnionAddress
from bridge.core.peers import Target

MAX_ADDRESSES_SEND = 1000  # kaspad's SendAddressesFlow cap (facts §4.1)
MAX_ADDRESSES_RECEIVE = proto.MAX_ADDRESSES  # kaspad disconnects above this
#: The largest inflated KaspadMessage of each rewritten type the bridge decodes, sized to real
#: messages (a Version is under 1 KiB; an Addresses is at most 2500 entries of about 100 bytes):
#: a bigger one is refused before it is inflated further (issue 10, defect 2).
REWRITE_LIMITS: dict[int, int] = {proto.VERSION: proto.MAX_VERSION_BYTES,
                                  proto.ADDRESSES: proto.MAX_ADDRESSES_BYTES}


class Direction(enum.Enum):
    TO_REMOTE = "kaspad→remote"
    TO_KASPAD = "remote→kaspad"

    __hash__ = object.__hash__  # identity, as Side's (a dict key on the relay's hot path)


class Action(enum.Enum):
    PASS = "pass"  # forward byte for byte
    REWRITE = "rewrite"  # buffer whole, call ConnectionPolicy.rewrite


@dataclass(frozen=True, slots=True)
class OnionPeer:
    address: OnionAddress
    port: int


@dataclass(slots=True)
class GossipState:
    """State shared by every connection of one bridge: our onion, kaspad's id, known onions.

    ``onions`` (what the bridge gossips onward to ADDRv2 peers) is bounded by ``capacity`` with
    the quotas of :mod:`bridge.core.addrman`: each onion is charged to the source group of whoever
    told us first (re-learning it from someone else changes nothing), a group holds at most
    ``capacity // 16`` onions (its own oldest goes for a newcomer), and when the set is full a
    newcomer takes the place of the oldest onion of the largest group, if that group is larger
    than its own; else of its own group's oldest, if it has any; else it is not kept. So one
    remote, one /16 or all inbound connections together cannot evict what others told us (issue
    G defect 3). The address book applies the same quotas to what it stores.
    """

    own_onion: OnionPeer | None = None
    kaspad_node_id: bytes | None = None
    capacity: int = 4096
    rng: random.Random = field(default_factory=random.Random)
    #: onion -> the source that told us first, insertion-ordered
    onions: OrderedDict[OnionPeer, str] = field(default_factory=OrderedDict)
    #: called with (peer, source) for every onion learned — the address book hooks in here
    on_learn: Callable[[OnionPeer, str], None] | None = None
    #: called with ([(ip, port)], source) for the IP entries of every Addresses seen
    on_learn_ips: Callable[[list[tuple[str, int]], str], None] | None = None
    #: node ids connected to kaspad through this bridge (duplicate-connection check)
    nodes: NodeRegistry = field(default_factory=NodeRegistry)
    #: source group -> its onions, oldest first (see the class docstring)
    _by_group: dict[str, OrderedDict[OnionPeer, None]] = field(default_factory=dict)
    _group_of: dict[OnionPeer, str] = field(default_factory=dict)
    _counts: addrman.GroupCounts = field(default_factory=addrman.GroupCounts)

    def learn(self, peer: OnionPeer, source: str) -> bool:
        if self.own_onion is not None and peer.address == self.own_onion.address:
            return False
        new = peer not in self.onions
        if new and self._admit(peer, addrman.source_group(source)):
            self.onions[peer] = source
        if self.on_learn is not None:
            self.on_learn(peer, source)
        return new

    def _admit(self, peer: OnionPeer, group: str) -> bool:
        if len(self._group_of) != len(self.onions):  # onions was edited directly: re-index
            self._reindex()
        quota = addrman.group_quota(group, self.capacity)
        victim = self._counts.victim_group(group, quota, self.capacity)
        if victim is not None:
            members = self._by_group.get(victim)
            if not members:
                return False  # full, and nobody larger to take the place of
            self._drop(next(iter(members)))  # the oldest of that group
        self._by_group.setdefault(group, OrderedDict())[peer] = None
        self._group_of[peer] = group
        self._counts.add(group)
        return True

    def _drop(self, peer: OnionPeer) -> None:
        self.onions.pop(peer, None)
        group = self._group_of.pop(peer)
        members = self._by_group[group]
        del members[peer]
        if not members:
            del self._by_group[group]
        self._counts.add(group, -1)

    def _reindex(self) -> None:
        self._by_group.clear()
        self._group_of.clear()
        for p, src in self.onions.items():
            g = addrman.source_group(src)
            self._by_group.setdefault(g, OrderedDict())[p] = None
            self._group_of[p] = g
        self._counts = addrman.GroupCounts({g: len(m) for g, m in self._by_group.items()})

    def sample(self, k: int, exclude: Collection[OnionAddress] = ()) -> list[OnionPeer]:
        pool = [p for p in self.onions if p.address not in exclude]
        if k >= len(pool):
            self.rng.shuffle(pool)
            return pool
        return self.rng.sample(pool, k)


@dataclass(frozen=True, slots=True)
class PolicySettings:
    #: Let kaspad's Version.address through to Tor peers. Off: an IP next to an onion is a leak.
    advertise_address: bool = False
    #: The connection goes through Tor (always true for the onion inbound and tor-only slots).
    via_tor: bool = True
    #: Upper bound on a message the bridge decodes; the per-type caps of ``REWRITE_LIMITS``
    #: (64 KiB for a Version, ~320 KiB for an Addresses) apply below it.
    max_rewrite_bytes: int = 4 * 1024 * 1024


@dataclass(slots=True)
class PeerInfo:
    """What one side said about itself in its Version."""

    node_id: bytes = b""
    services: int = 0
    protocol_version: int = 0
    network: str = ""
    user_agent: str = ""

    @property
    def addrv2(self) -> bool:
        return bool(self.services & proto.SERVICE_ADDRV2)


class _Handshake(enum.IntEnum):
    START = 0
    VERSION = 1
    VERACK = 2
    READY = 3


_HANDSHAKE_ORDER = {proto.VERSION: _Handshake.VERSION, proto.VERACK: _Handshake.VERACK,
                    proto.READY: _Handshake.READY}


class ConnectionPolicy:
    """Per-connection policy state machine (one instance per kaspad⇄remote stream)."""

    def __init__(self, shared: GossipState, settings: PolicySettings,
                 remote_label: str = "remote", *, conn_label: str = "") -> None:
        self.shared = shared
        self.settings = settings
        self.remote_label = remote_label
        #: the connection's own log label ("slot:16200#3", "inbound#7"), for duplicate reports
        self.conn_label = conn_label
        #: the remote's own onion when we dialed it by onion: never gossiped back to it
        self.remote_onion: OnionAddress | None = None
        #: the target we dialed (slots); None for an inbound peer
        self.remote_target: Target | None = None
        self.kaspad = PeerInfo()
        self.remote = PeerInfo()
        self._stage = {Direction.TO_REMOTE: _Handshake.START, Direction.TO_KASPAD: _Handshake.START}
        self._kaspad_got_addresses = 0
        #: who asked the remote for addresses, in wire order: "kaspad" or "bridge". The remote
        #: answers RequestAddresses in order (facts §4.1), so replies are matched FIFO.
        self._asked: deque[str] = deque()
        self._consume = False  # the Addresses being collected is the bridge's, not kaspad's
        self.counters: dict[str, int] = {
            "onions_added": 0, "onions_removed": 0, "invalid_removed": 0, "dropped": 0,
            "versions_rewritten": 0,
        }
        self.notes: list[str] = []  # human-readable log lines for the shell to emit (info)
        self.warnings: list[str] = []  # ... at warning level
        #: what each sender may make the bridge inflate (see bridge.core.grpc.InflateBudget)
        self.inflate_budgets = {d: grpc.InflateBudget() for d in Direction}

    def rewrite_limit(self, tag: int) -> int:
        """The largest inflated message of type ``tag`` the bridge decodes for a rewrite."""
        return min(REWRITE_LIMITS.get(tag, self.settings.max_rewrite_bytes),
                   self.settings.max_rewrite_bytes)

    def rewrite_wire_limit(self, tag: int, compressed: bool) -> int:
        """... and the largest such message on the wire (gzip may add a few bytes)."""
        limit = self.rewrite_limit(tag)
        return grpc.gzip_bound(limit) if compressed else limit

    # -- classification --------------------------------------------------------------------

    def classify(self, direction: Direction, tag: int) -> Action:
        """Decide from the payload type alone. Raises PolicyViolation to end the connection."""
        stage = self._stage[direction]
        from_remote = direction is Direction.TO_KASPAD
        if tag not in proto.KNOWN_PAYLOADS:
            raise self._violation(direction, f"unknown message type {tag}")
        if tag == proto.REJECT:
            return Action.PASS
        if tag in _HANDSHAKE_ORDER:
            want = _HANDSHAKE_ORDER[tag]
            if want != stage + 1:
                raise self._violation(
                    direction,
                    f"{proto.payload_name(tag)} out of order (handshake stage {stage.name})",
                )
            self._stage[direction] = want
            return Action.REWRITE if tag == proto.VERSION else Action.PASS
        if stage != _Handshake.READY:
            raise self._violation(
                direction, f"{proto.payload_name(tag)} before the handshake completed"
            )
        if tag == proto.ADDRESSES:
            self._consume = False
            if from_remote:
                asker = self._asked.popleft() if self._asked else None
                if asker != "kaspad" or self._kaspad_got_addresses:
                    # The bridge's own request, or unsolicited: kaspad accepts one solicited
                    # Addresses per connection (§4.1) and would disconnect on another, so the
                    # bridge keeps it (harvests it) and kaspad never sees it.
                    self._consume = True
                    if asker is None:
                        self.counters["dropped"] += 1
                        self.notes.append(f"{self.remote_label}: unsolicited Addresses kept "
                                          "from kaspad")
                else:
                    self._kaspad_got_addresses += 1
            return Action.REWRITE
        if tag == proto.REQUEST_ADDRESSES and not from_remote:
            self._asked.append("kaspad")
        return Action.PASS

    def reset_remote(self) -> None:
        """The remote was replaced before its Version reached kaspad (a slot dropped a duplicate
        upstream and takes another): forget what the old remote said. kaspad's side is kept
        (its Version, if sent, goes to the new remote)."""
        self.remote = PeerInfo()
        self._stage[Direction.TO_KASPAD] = _Handshake.START
        self.remote_onion = None
        self.remote_target = None
        self.inflate_budgets[Direction.TO_KASPAD] = grpc.InflateBudget()

    @property
    def handshake_done(self) -> bool:
        return all(s == _Handshake.READY for s in self._stage.values())

    def can_refresh(self) -> bool:
        """May the bridge ask the remote for addresses itself (an ADDRv2 peer, after the
        handshake)? The reply is consumed by the bridge, never forwarded to kaspad."""
        return self.handshake_done and self.remote.addrv2

    def bridge_asked(self) -> None:
        """The bridge's own RequestAddresses went out to the remote (call at emission)."""
        self._asked.append("bridge")
        self.counters["refreshes"] = self.counters.get("refreshes", 0) + 1

    def _violation(self, direction: Direction, what: str) -> PolicyViolation:
        if direction is Direction.TO_KASPAD:
            return PolicyViolation(f"{self.remote_label} sent {what}; kaspad would disconnect",
                                   fault=Fault.REMOTE)
        return PolicyViolation(f"kaspad sent {what}", fault=Fault.KASPAD)

    # -- rewriting -------------------------------------------------------------------------

    def rewrite(self, direction: Direction, message: bytes) -> bytes | None:
        """Rewrite one whole, decompressed KaspadMessage. ``None`` means drop it."""
        try:
            env = proto.Envelope.decode(message)  # bounded: a few fields at most
            if len(message) > self.rewrite_limit(env.tag):
                raise DecodeError(f"{proto.payload_name(env.tag)} of {len(message)} bytes (the "
                                  f"limit is {self.rewrite_limit(env.tag)})")
            if env.tag == proto.VERSION:
                env.payload = self._rewrite_version(direction, env.payload)
            elif env.tag == proto.ADDRESSES:
                env.payload = self._rewrite_addresses(direction, env.payload)
                if self._consume:
                    self._consume = False
                    return None
            else:  # pragma: no cover - classify() only asks for these two
                return message
        except proto.TooManyAddresses as exc:
            if direction is Direction.TO_KASPAD:
                raise PolicyViolation(f"{self.remote_label} sent {exc.what}",
                                      fault=Fault.REMOTE) from exc
            raise PolicyViolation(f"kaspad sent {exc.what}", fault=Fault.KASPAD) from exc
        except DecodeError as exc:
            if direction is Direction.TO_KASPAD:
                raise PolicyViolation(f"{self.remote_label} sent an undecodable message: {exc}",
                                      fault=Fault.REMOTE) from exc
            raise PolicyViolation(f"kaspad sent an undecodable message: {exc}",
                                  fault=Fault.KASPAD) from exc
        return env.encode()

    def _rewrite_version(self, direction: Direction, payload: bytes) -> bytes:
        v = proto.Version.decode(payload)
        info = PeerInfo(v.node_id, v.services, v.protocol_version, v.network, v.user_agent)
        if direction is Direction.TO_REMOTE:
            self.kaspad = info
            self.shared.kaspad_node_id = info.node_id
            self._check_self()
            v.services = v.services | proto.SERVICE_ADDRV2
            addr = v.address
            ip = addr.ip if addr is not None else None
            if ip is not None and len(ip) in (4, 16) and ipaddress.ip_address(ip).is_global:
                self.warnings.append(
                    f"kaspad advertises the routable address {ipaddress.ip_address(ip)} in its "
                    "Version: it was started with --externalip or listens on a public "
                    "interface; check its flags (`kaspa-tor-bridge kaspad-flags`)"
                    + ("" if self.settings.advertise_address else
                       "; the bridge removes it from what Tor peers see"))
            if addr is not None and (
                (self.settings.via_tor and not self.settings.advertise_address)
                or not addr.kaspad_accepts()
            ):
                v.address = None
                self.notes.append("removed kaspad's Version.address (not advertised over Tor)")
            self.counters["versions_rewritten"] += 1
            return v.encode()
        self.remote = info
        if len(info.node_id) != 16:
            raise DecodeError(f"Version.id is {len(info.node_id)} bytes, kaspad requires 16")
        self._check_self()
        addr = v.address
        self._claim(info.node_id, addr)
        if addr is not None and not addr.kaspad_accepts():
            onion = addr.onion
            if onion is not None and info.addrv2:
                self._learn(onion, addr.port, f"version:{self.remote_label}")
            v.address = None
            self.counters["invalid_removed" if onion is None else "onions_removed"] += 1
        return v.encode()

    def _claim(self, node_id: bytes, addr: proto.NetAddress | None) -> None:
        """Register the remote's node id as connected to kaspad through this connection, or
        raise :class:`DuplicatePeer` when another relay has it connected already."""
        target = self.remote_target
        if target is None and addr is not None:
            target = _advertised_target(addr)  # an inbound peer: where it says it listens
        holder = self.shared.nodes.claim(self, node_id, label=self.conn_label or self.remote_label,
                                         target=target)
        if holder is not None:
            raise DuplicatePeer(
                f"{self.remote_label} is node {node_id.hex()}, already connected to kaspad "
                f"through {holder}; kaspad would drop this newer connection",
                node_id=node_id, holder=str(holder))

    def _check_self(self) -> None:
        own = self.shared.kaspad_node_id
        if own and self.remote.node_id == own:
            raise SelfConnection(
                f"{self.remote_label} is our own kaspad (same node id): loopback connection",
                fault=Fault.REMOTE)

    def _learn(self, host: str, port: int, source: str) -> bool:
        try:
            peer = OnionPeer(OnionAddress.parse(host), port)
        except OnionAddressError:
            return False
        if not 0 < port <= 0xFFFF:
            return False
        return self.shared.learn(peer, source)

    def _learn_ips(self, entries: list[proto.NetAddress], direction: Direction) -> None:
        """Passive harvest of IP entries (both directions) for the address book; each
        endpoint once per message."""
        if self.shared.on_learn_ips is None:
            return
        ips: dict[tuple[str, int], None] = {}
        for e in entries:
            ip = e.ip
            port = e.port
            if ip is not None and 0 < port <= 0xFFFF and e.kaspad_accepts():
                text = (f"{ip[0]}.{ip[1]}.{ip[2]}.{ip[3]}" if len(ip) == 4
                        else str(ipaddress.IPv6Address(ip)))
                ips[text, port] = None
        if ips:
            who = "kaspad" if direction is Direction.TO_REMOTE else self.remote_label
            self.shared.on_learn_ips(list(ips), f"gossip:{who}")

    def _rewrite_addresses(self, direction: Direction, payload: bytes) -> bytes:
        # The entries are counted from their tags before any is decoded (more than kaspad's
        # 2500 raises TooManyAddresses), and all are decoded and checked before anything is
        # learned: nothing of a refused message reaches GossipState or the address book
        # (issue 10, defect 3).
        entries = proto.decode_addresses(payload, MAX_ADDRESSES_RECEIVE)
        if direction is Direction.TO_KASPAD:
            kept = []
            gossiped: list[tuple[str, int]] = []
            invalid = 0
            for e in entries:
                if e.kaspad_accepts():
                    kept.append(e)
                    continue
                onion = e.onion
                if onion is not None:
                    gossiped.append((onion, e.port))
                else:
                    invalid += 1
            self._learn_ips(kept, direction)
            self.counters["onions_removed"] += len(gossiped)
            self.counters["invalid_removed"] += invalid
            if self.remote.addrv2:
                for host, port in dict.fromkeys(gossiped):
                    self._learn(host, port, f"gossip:{self.remote_label}")
            return proto.encode_addresses(kept)
        self._learn_ips(entries, direction)
        # kaspad -> remote
        if not self.remote.addrv2:
            kept = [e for e in entries if e.onion is None]
            self.counters["onions_removed"] += len(entries) - len(kept)
            return proto.encode_addresses(kept)
        own = self.shared.own_onion
        onions: list[OnionPeer] = [own] if own is not None else []
        budget = MAX_ADDRESSES_SEND - len(entries)
        if own is not None and budget < 1:
            entries = entries[: MAX_ADDRESSES_SEND - 1]
            budget = 1
        exclude = {a for a in (own.address if own else None, self.remote_onion) if a is not None}
        onions += self.shared.sample(max(0, budget - len(onions)), exclude=exclude)
        onions = onions[: max(0, budget)]
        out = list(entries) + [proto.NetAddress.from_onion(p.address.host, p.port) for p in onions]
        self.counters["onions_added"] += len(onions)
        return proto.encode_addresses(out)


def _advertised_target(addr: proto.NetAddress) -> Target | None:
    """The endpoint a Version.address names (onion or IP literal), if it is a valid one."""
    if not 0 < addr.port <= 0xFFFF:
        return None
    onion = addr.onion
    if onion is not None:
        try:
            return Target(OnionAddress.parse(onion).host, addr.port)
        except OnionAddressError:
            return None
    ip = addr.ip
    if ip is None or len(ip) not in (4, 16):
        return None
    parsed = ipaddress.ip_address(ip)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    if parsed.is_unspecified or parsed.is_multicast:
        return None
    return Target(str(parsed), addr.port)
