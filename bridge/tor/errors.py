"""Typed errors of the Tor control layer.

Each message says what is wrong and whose side it is on (``Fault.TOR`` for the daemon / its ports,
``Fault.LOCAL`` for this machine's configuration: files, permissions, passwords).
"""

from __future__ import annotations

from bridge.core.errors import BridgeError, Fault


class TorControlError(BridgeError):
    """Anything that went wrong talking to Tor's control port."""

    fault = Fault.TOR
    action = "control connection closed; the supervisor reconnects"


class ControlPortUnreachable(TorControlError):
    """Nothing accepts connections at the configured control endpoint."""


class NotAControlPort(TorControlError):
    """Something listens there, but it does not speak the Tor control protocol."""

    fault = Fault.LOCAL
    action = "check the control port setting"


class ControlConnectionLost(TorControlError):
    """The control connection closed (Tor stopped, restarted or hung up on us)."""


class ControlProtocolError(TorControlError):
    """Tor (or whatever is on the port) sent a malformed or oversized reply."""


class ControlTimeout(TorControlError):
    """A control request got no reply in time (Tor frozen or overloaded)."""


class ControlCommandFailed(TorControlError):
    """Tor answered a command with an error status (5xx)."""

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.code = code


class AuthenticationError(TorControlError):
    """Authentication to the control port failed."""

    fault = Fault.LOCAL
    action = "startup aborted / retried with backoff; operator action needed"


class CookieUnreadable(AuthenticationError):
    """The auth cookie file cannot be read (missing, permissions, wrong size)."""

    def __init__(self, message: str, *, path: str):
        super().__init__(message)
        self.path = path


class CookieRejected(AuthenticationError):
    """Tor rejected the cookie's content (a stale cookie from another tor instance?)."""


class PasswordRejected(AuthenticationError):
    """Tor rejected the configured control password."""


class PasswordRequired(AuthenticationError):
    """Tor only accepts a password here and none is configured."""


class NoUsableAuthMethod(AuthenticationError):
    """PROTOCOLINFO offered nothing this bridge can use."""


class BootstrapTimeout(TorControlError):
    """Tor did not reach 100 % bootstrap in time."""

    action = "keep waiting / retry; check Tor's log"

    def __init__(self, message: str, *, progress: int, tag: str):
        super().__init__(message)
        self.progress = progress
        self.tag = tag


class OnionKeyError(BridgeError):
    """The onion service key file is unsafe, unreadable or malformed."""

    fault = Fault.LOCAL
    action = "onion service not published; fix the key file"


class OnionPublishError(TorControlError):
    """ADD_ONION failed (collision with another controller, bad target, ...)."""


class ManagedTorError(BridgeError):
    """The bridge-launched tor child failed to start or died."""

    fault = Fault.LOCAL
    action = "managed tor restarted with backoff"


class TorUnavailable(TorControlError):
    """Tor did not become usable (connected, bootstrapped, onion up) within the wait."""

    action = "upstream dial deferred"
