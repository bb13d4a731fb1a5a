"""What a :class:`~bridge.core.probe.ProbeClient` reports: its typed errors, its phases, the
events it returns and the harvested results.

Plain values only; the state machine that produces them is :mod:`bridge.core.probe`, and that is
where callers import them from.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from bridge.core import proto
from bridge.core.errors import BridgeError, Fault, ProtocolError, SelfConnection
from bridge.core.events import Closed
from bridge.core.onion import OnionAddress
from bridge.core.probe_wire import IGNORABLE_REJECTS

# ---------------------------------------------------------------------------------------------
# Errors


class ProbeError(BridgeError):
    """The harvest failed. ``fault`` says who is to blame."""

    fault = Fault.REMOTE
    action = "harvest aborted; connection closed"


class PeerViolation(ProbeError, ProtocolError):
    """The peer broke HTTP/2, gRPC or the Kaspa P2P protocol (what kaspad disconnects on)."""


class IncompatiblePeer(ProbeError):
    """A well-behaved peer we cannot talk to: other network, too old a protocol version."""

    action = "Reject sent; connection closed"


class PeerRejected(ProbeError):
    """The peer sent Reject (it refused us). ``reason`` is its text (at most 2048 bytes)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"peer rejected us: {reason!r}")
        self.reason = reason

    @property
    def ignorable(self) -> bool:
        """kaspad logs these quietly (duplicate/loopback connection, protocol.md §6.1)."""
        return self.reason in IGNORABLE_REJECTS


class PeerClosed(ProbeError):
    """The peer ended the call (stream end, RST_STREAM, GOAWAY or TCP close) before we were done."""


class ProbeTimeout(ProbeError):
    """The peer (or the Tor path to it) did not answer within a phase's budget."""

    def __init__(self, message: str, *, phase: Phase) -> None:
        super().__init__(message)
        self.phase = phase


# ---------------------------------------------------------------------------------------------
# Events and results


class Phase(enum.Enum):
    """What the probe waits for; the shell applies one timeout per phase."""

    HEADERS = "response HEADERS"
    VERSION = "Version and Verack"
    READY = "Ready"
    ADDRESSES = "Addresses"
    DONE = "nothing (done)"


@dataclass(frozen=True, slots=True)
class PeerVersionInfo:
    protocol_version: int
    services: int
    timestamp_ms: int
    node_id: bytes
    user_agent: str
    network: str
    address: tuple[str, int] | None  # Version.address as (host, port), if any

    @property
    def addrv2(self) -> bool:
        return bool(self.services & proto.SERVICE_ADDRV2)


@dataclass(frozen=True, slots=True)
class HarvestedIp:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    @property
    def host(self) -> str:
        return str(self.ip)


@dataclass(frozen=True, slots=True)
class HarvestedOnion:
    onion: OnionAddress
    port: int

    @property
    def host(self) -> str:
        return self.onion.host


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    peer: PeerVersionInfo


@dataclass(frozen=True, slots=True)
class AddressesReceived:
    ips: tuple[HarvestedIp, ...]
    onions: tuple[HarvestedOnion, ...]
    #: entries left out, each "entry N: why" (loopback/unspecified IPs that kaspad ignores too,
    #: onions from a non-ADDRv2 peer, onions failing the v3 checksum/version check)
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Failed:
    error: ProbeError | SelfConnection


Event = HandshakeDone | AddressesReceived | Failed | Closed
