"""What the core's state machines tell the shell: plain, frozen values, in the style of h2's
``receive_data()`` and h11's ``next_event()``.

:meth:`Relay.receive() <bridge.core.relay.Relay.receive>` and the relay's other shell-facing
methods return a list of :data:`RelayEvent`; the rewrite policy (:mod:`bridge.core.policy`)
produces the :class:`Note`, :class:`HandshakeSeen`, :class:`OnionsLearned` and
:class:`AddressesLearned` among them, and :class:`~bridge.core.probe.ProbeClient` ends its run
with the same :class:`Closed`. The core never writes a log line or the address book itself: the
shell (:mod:`bridge.net.runner`) logs the notes and hands what was learned to the book writer.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.core.errors import BridgeError
from bridge.core.onion import OnionPeer

__all__ = ["AddressesLearned", "Closed", "Dropped", "HandshakeSeen", "Note", "OnionsLearned",
           "PolicyEvent", "RelayEvent"]


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is over (the last event of a run). ``error`` is set when it ended because
    somebody misbehaved."""

    reason: str
    error: BridgeError | None = None


@dataclass(frozen=True, slots=True)
class Dropped:
    """An upstream the relay let go before kaspad saw it (its node id was connected already).
    ``goodbye`` are the last bytes for that upstream's socket (RST_STREAM CANCEL, GOAWAY); the
    shell sends them, closes that socket and attaches another upstream or refuses."""

    error: BridgeError
    goodbye: bytes


@dataclass(frozen=True, slots=True)
class Note:
    """A line for the log (``warning``: at warning level, else info)."""

    text: str
    warning: bool = False


@dataclass(frozen=True, slots=True)
class HandshakeSeen:
    """A Version passed the policy: ``kaspad`` (our own node's) or the remote's."""

    kaspad: bool
    node_id: bytes
    services: int
    protocol_version: int
    network: str
    user_agent: str


@dataclass(frozen=True, slots=True)
class OnionsLearned:
    """Onions one message taught us (one Addresses, or a Version's own address), all from
    ``source``. They are in :class:`~bridge.core.policy.GossipState` already; the shell stores
    them in the address book (one batch per event)."""

    peers: tuple[OnionPeer, ...]
    source: str


@dataclass(frozen=True, slots=True)
class AddressesLearned:
    """The IP entries (``(ip, port)``, each once) kaspad would accept from one Addresses message,
    either direction, for the address book."""

    endpoints: tuple[tuple[str, int], ...]
    source: str


#: what :class:`~bridge.core.policy.ConnectionPolicy` produces
PolicyEvent = Note | HandshakeSeen | OnionsLearned | AddressesLearned
#: what :class:`~bridge.core.relay.Relay` returns
RelayEvent = Closed | Dropped | Note | HandshakeSeen | OnionsLearned | AddressesLearned
