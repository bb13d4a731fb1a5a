"""Typed errors. Every error says who is at fault and what the bridge does about it.

``Fault.REMOTE``: the peer on the other end of a connection sent something invalid; only that
connection is closed. ``Fault.KASPAD``: the local kaspad did something unexpected. ``Fault.LOCAL``:
configuration or environment of this machine (operator action needed). ``Fault.TOR``: the Tor
daemon or the SOCKS/control port.
"""

from __future__ import annotations

import enum


class Fault(enum.Enum):
    REMOTE = "remote peer"
    KASPAD = "local kaspad"
    LOCAL = "local configuration"
    TOR = "tor"


class BridgeError(Exception):
    """Base class of every error the bridge raises on purpose."""

    fault: Fault = Fault.LOCAL
    #: What the bridge sends back / does in response, for log lines.
    action: str = "connection closed"

    def __init__(self, message: str, *, fault: Fault | None = None, action: str | None = None):
        super().__init__(message)
        if fault is not None:
            self.fault = fault
        if action is not None:
            self.action = action

    def describe(self) -> str:
        return f"[{self.fault.value}] {self} ({self.action})"


class ProtocolError(BridgeError):
    """A peer violated HTTP/2, gRPC or the Kaspa P2P protocol."""

    fault = Fault.REMOTE


class FramingError(ProtocolError):
    """Bad gRPC length-prefixed framing (flag byte, length, compression)."""


class DecodeError(ProtocolError):
    """Bytes that do not decode as the expected protobuf message."""


class OnionAddressError(ValueError):
    """A string that is not a valid Tor v3 onion address."""


class PolicyViolation(ProtocolError):
    """A message that is well-formed but would make kaspad disconnect, or breaks bridge policy."""


class SelfConnection(PolicyViolation):
    """The remote peer is our own kaspad (same node id): a loopback through Tor."""

    action = "connection closed; peer marked as self and never dialed again"


class DuplicatePeer(BridgeError):
    """The remote's node id is already connected to kaspad through another relay of this bridge.

    kaspad would complete the handshake and then drop this newer connection at once (its
    duplicate check is on node id and remote IP, and every bridged peer is 127.0.0.1). Not the
    remote's fault: it is never penalised, only kept aside while the other connection lasts."""

    fault = Fault.REMOTE
    action = "not handed to kaspad; not penalised"

    def __init__(self, message: str, *, node_id: bytes = b"", holder: str = "") -> None:
        super().__init__(message)
        self.node_id = node_id
        self.holder = holder


class ConfigError(BridgeError):
    """Bad configuration: names the file and key."""

    fault = Fault.LOCAL
    action = "startup aborted"

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        where = ""
        if source and key:
            where = f"{source}: {key}: "
        elif source:
            where = f"{source}: "
        elif key:
            where = f"{key}: "
        super().__init__(where + message)
        self.source = source
        self.key = key


class UpstreamUnavailable(BridgeError):
    """No upstream peer could be dialed in time."""

    fault = Fault.TOR
    action = "slot answered with grpc-status UNAVAILABLE; kaspad will retry"
