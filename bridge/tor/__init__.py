"""Tor integration: a typed trio adapter over stem's control port, onion keys, a self-healing
supervisor, and an optional bridge-managed tor process.

Typical use::

    sup = TorSupervisor(ControlEndpoint.parse("127.0.0.1:9051"), ControlAuth(),
                        onion=OnionSpec.for_network(data_dir, "mainnet", ("127.0.0.1", 16111)))
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        await sup.wait_usable()            # before dialing upstream through SOCKS
        print(sup.status.onion_address)
        ...
        await sup.stop()                   # DEL_ONION (bounded), close
        n.cancel_scope.cancel()
"""

from bridge.tor.control import (
    BootstrapStatus,
    ControlAuth,
    ControlEndpoint,
    TorControl,
    TorEvent,
    explain_unreadable,
)
from bridge.tor.errors import (
    AuthenticationError,
    BootstrapTimeout,
    ControlCommandFailed,
    ControlConnectionLost,
    ControlPortUnreachable,
    ControlProtocolError,
    ControlTimeout,
    CookieRejected,
    CookieUnreadable,
    ManagedTorError,
    NotAControlPort,
    NoUsableAuthMethod,
    OnionKeyError,
    OnionPublishError,
    PasswordRejected,
    PasswordRequired,
    TorControlError,
    TorUnavailable,
)
from bridge.tor.keys import KEY_FILE_NAME, OnionKey, default_key_path, load_key, save_key
from bridge.tor.managed import ManagedTor, ManagedTorConfig
from bridge.tor.supervisor import (
    Backoff,
    OnionSpec,
    TorState,
    TorStatus,
    TorSupervisor,
)

__all__ = [
    "KEY_FILE_NAME",
    "AuthenticationError",
    "Backoff",
    "BootstrapStatus",
    "BootstrapTimeout",
    "ControlAuth",
    "ControlCommandFailed",
    "ControlConnectionLost",
    "ControlEndpoint",
    "ControlPortUnreachable",
    "ControlProtocolError",
    "ControlTimeout",
    "CookieRejected",
    "CookieUnreadable",
    "ManagedTor",
    "ManagedTorConfig",
    "ManagedTorError",
    "NoUsableAuthMethod",
    "NotAControlPort",
    "OnionKey",
    "OnionKeyError",
    "OnionPublishError",
    "OnionSpec",
    "PasswordRejected",
    "PasswordRequired",
    "TorControl",
    "TorControlError",
    "TorEvent",
    "TorState",
    "TorStatus",
    "TorSupervisor",
    "TorUnavailable",
    "default_key_path",
    "explain_unreadable",
    "load_key",
    "save_key",
]
