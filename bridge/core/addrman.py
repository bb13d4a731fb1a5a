"""Eclipse resistance for what the bridge learns from peers (sans-IO, clock-free; issue G).

A bridge published as an onion service is reachable by anyone, and any peer it dials may be
hostile. What peers gossip must therefore never be able to take over the address book (and, with
it, every upstream the node behind the bridge gets: an eclipse attack), nor make the bridge dial
the operator's own host or LAN. The ideas follow Bitcoin Core's address manager ("addrman": a
*new* table of heard-of addresses bucketed by the network group of the peer that told us, a
*tried* table of addresses we connected to, which gossip never evicts) in the simpler form of
per-group quotas, which a SQLite table with one index can enforce cheaply.

Source groups (:func:`source_group`). Every learned address is charged to the group of *who told
us*, derived from the source string ``bridge.core.policy`` writes:

* ``gossip:peer <host:port>`` / ``version:peer <host:port>`` (an upstream a slot dialed): the
  spread group of that host (``selection.group_of``: the IPv4 /16, the IPv6 /32, or the onion);
  so all remotes in one /16 share one quota, and so do all connections to one onion;
* ``gossip:inbound peer #N`` / ``version:inbound peer #N`` (a connection to our onion service):
  ``inbound``. Inbound connections are anonymous and anyone can open as many as they like, so
  ALL of them together are one group;
* ``gossip:kaspad`` (the local node's own Addresses, which its address manager already
  filters): ``kaspad``, with a larger quota (:func:`group_quota`);
* ``seed`` and ``config``: their own groups (never evicted by gossip; see the book);
* anything else (no parsable peer): ``other``, one shared quota.

Quotas: a group may hold at most ``max_new // 16`` untried entries (``kaspad``: half of the new
table). When the new table is full, a newcomer whose group is under its quota takes the place of
the worst entry of the *largest* group, and only if that group is larger than its own; a newcomer
whose group is at its quota replaces only a *terrible* entry of its own group (many failures, or
not seen for 30 days), else it is dropped: the incumbent wins, as in addrman's buckets. Entries
that were connected successfully (*tried*) are never evicted by gossip; they have their own bound
(at most ``max_tried // 16`` per address group, the worst of that group goes first).

Non-public addresses (:func:`is_public_ip`): gossip, Version messages and seeders never put
loopback, private or otherwise non-routable IPs in the book, and selection never dials one that
the operator did not configure (issue G defect 7).
"""

from __future__ import annotations

import bisect
import functools
import heapq
import ipaddress
from typing import Final

from bridge.core.onion import is_onion_host

__all__ = [
    "HORIZON",
    "INBOUND",
    "KASPAD",
    "OTHER",
    "TERRIBLE_FAILURES",
    "GroupCounts",
    "group_quota",
    "is_public_host",
    "is_public_ip",
    "source_group",
]

INBOUND: Final = "inbound"
KASPAD: Final = "kaspad"
OTHER: Final = "other"
#: an untried entry that failed this many times in a row may be replaced by a newcomer
TERRIBLE_FAILURES: Final = 3
#: ... as may one not heard of for this long (seconds; addrman's horizon is 30 days too)
HORIZON: Final = 30 * 24 * 3600.0
#: a source group's share of the new table is 1/QUOTA_DIVISOR (kaspad: one half)
QUOTA_DIVISOR: Final = 16

# Ranges Python 3.11's ``is_global`` lets through that are not usable public unicast addresses.
_NOT_PUBLIC: Final = tuple(ipaddress.ip_network(n) for n in (
    "192.0.0.0/24",    # IETF protocol assignments (3.11 treats .9/.10 as global)
    "192.88.99.0/24",  # deprecated 6to4 relay anycast
    "fec0::/10",       # deprecated site-local: routed inside a site only
    "3fff::/20",       # documentation (RFC 9637, newer than 3.11's tables)
))
_6TO4: Final = ipaddress.IPv6Network("2002::/16")


# Every IPv4 block that is not public unicast (is_global's private list, 100.64/10, the exceptions
# above, multicast, 240/4), as sorted integer ranges: one bisect per address instead of ~20
# network objects (a 2500-entry Addresses message is checked entry by entry).
_V4_BLOCKS: Final = sorted(
    (int(n.network_address), int(n.broadcast_address)) for n in (
        ipaddress.IPv4Network(b) for b in (
            "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
            "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24",
            "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
            "224.0.0.0/4", "240.0.0.0/4")))
_V4_STARTS: Final = [a for a, _ in _V4_BLOCKS]


def group_of(host: str) -> str:
    """The spread group of a host: IPv4 /16, IPv6 /32, or the onion itself."""
    if is_onion_host(host):
        return "onion:" + host.lower()
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        a, b = ip.packed[:2]
        return f"ipv4:{a}.{b}"
    return "ipv6:" + ip.packed[:4].hex()


def _v4_public(value: int) -> bool:
    i = bisect.bisect_right(_V4_STARTS, value) - 1
    return i < 0 or value > _V4_BLOCKS[i][1]


def is_public_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Is ``ip`` a public unicast address a gossiped peer may have?

    ``ipaddress``'s ``is_global`` (which already excludes 0/8, 10/8, 100.64/10 CGNAT, 127/8,
    169.254/16, 172.16/12, 192.168/16, 198.18/15, the documentation nets, 240/4, ::1, fc00::/7,
    fe80::/10, 2001:db8::/32, Teredo, ORCHID ...) with these exceptions: multicast and everything
    ``is_reserved`` (this catches the NAT64 prefix 64:ff9b::/96, IPv4-compatible ::/96 and
    unassigned IPv6 space) are refused; so are 192.0.0.0/24, 192.88.99.0/24, fec0::/10 and
    3fff::/20; IPv4-mapped IPv6 and 6to4 (2002::/16) addresses are judged by the IPv4 address
    they embed (a 6to4 address of 127.0.0.1 reaches the host itself).
    """
    if isinstance(ip, ipaddress.IPv4Address):
        return _v4_public(int(ip))
    if ip.ipv4_mapped is not None:
        return is_public_ip(ip.ipv4_mapped)
    if ip in _6TO4:
        return is_public_ip(ipaddress.IPv4Address(ip.packed[2:6]))
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return False
    return not any(ip in net for net in _NOT_PUBLIC if net.version == ip.version)


@functools.lru_cache(maxsize=16384)
def is_public_host(host: str) -> bool:
    """:func:`is_public_ip` for a host string; onions are public, anything unparsable is not.
    Cached (selection asks for every book entry on every pick)."""
    if is_onion_host(host):
        return True
    try:
        if "." in host and ":" not in host:
            return _v4_public(int(ipaddress.IPv4Address(host)))
        return is_public_ip(ipaddress.ip_address(host))
    except ValueError:
        return False


def _host_of(authority: str) -> str | None:
    """``host`` of ``host:port`` or ``[v6]:port`` (as ``Target.__str__`` writes it)."""
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        return host if sep and rest.startswith(":") else None
    host, sep, _port = authority.rpartition(":")
    return host if sep and host and ":" not in host else None


def source_group(source: str) -> str:
    """The quota group of a source string (see the module docstring)."""
    kind, _, detail = source.partition(":")
    if kind in ("seed", "config"):
        return kind
    if kind == "inbound-version" or detail.startswith("inbound"):
        return INBOUND
    if detail == "kaspad":
        return KASPAD
    if detail.startswith("peer "):
        host = _host_of(detail[5:].strip())
        if host:
            try:
                return group_of(host)
            except ValueError:
                return OTHER
    return OTHER


def group_quota(group: str, max_new: int) -> int:
    """How many untried entries one source group may hold in a new table of ``max_new``."""
    if group == KASPAD:
        return max(1, max_new // 2)
    return max(1, max_new // QUOTA_DIVISOR)


class GroupCounts:
    """Untried entries per source group, with the total and the largest group kept cheap
    (a lazily updated max-heap): deciding for each of 2500 newcomers stays O(log groups)."""

    def __init__(self, counts: dict[str, int] | None = None) -> None:
        self.counts: dict[str, int] = {g: n for g, n in (counts or {}).items() if n > 0}
        self.total = sum(self.counts.values())
        self._heap: list[tuple[int, str]] = []
        self._rebuild()

    def _rebuild(self) -> None:
        self._heap = [(-n, g) for g, n in self.counts.items()]
        heapq.heapify(self._heap)

    def get(self, group: str) -> int:
        return self.counts.get(group, 0)

    def add(self, group: str, n: int = 1) -> None:
        new = self.counts.get(group, 0) + n
        self.total += n
        if new <= 0:
            self.counts.pop(group, None)
        else:
            self.counts[group] = new
            heapq.heappush(self._heap, (-new, group))
        if len(self._heap) > 2 * len(self.counts) + 64:
            self._rebuild()

    def largest(self) -> tuple[str, int] | None:
        """The group holding most entries (ties: the least name), or ``None`` when empty."""
        while self._heap:
            n, g = self._heap[0]
            if self.counts.get(g) == -n:
                return g, -n
            heapq.heappop(self._heap)  # stale
        return None

    def victim_group(self, group: str, quota: int, capacity: int) -> str | None:
        """Where a newcomer of ``group`` takes its place from: ``None`` (there is room),
        another group (the largest, when the table is full and that group is larger than the
        newcomer's own would be), or ``group`` itself (at its quota, or nobody larger: the
        caller evicts from its own group only what its rules allow, else drops the newcomer).
        The caller applies the outcome with :meth:`add`."""
        own = self.get(group)
        if own >= quota:
            return group
        if self.total < capacity:
            return None
        top = self.largest()
        if top is not None and top[0] != group and top[1] > own + 1:
            return top[0]
        return group
