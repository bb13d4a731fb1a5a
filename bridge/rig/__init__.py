"""Test rig: a private Tor network on loopback (see :mod:`bridge.rig.tornet`)."""

from bridge.rig.tornet import (
    AUTHORITY,
    CLIENT,
    EXIT,
    ONION_HOST,
    RELAY,
    InstanceStatus,
    RigError,
    TorInstance,
    TorNetwork,
    find_tor,
)

__all__ = [
    "AUTHORITY",
    "CLIENT",
    "EXIT",
    "ONION_HOST",
    "RELAY",
    "InstanceStatus",
    "RigError",
    "TorInstance",
    "TorNetwork",
    "find_tor",
]
