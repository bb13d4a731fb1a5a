"""Sync first, then Tor: when the bridge stops dialing clearnet (``peers.sync_first``), sans-IO.

With ``peers.sync_first = true`` (hybrid mode) the bridge fills kaspad's slots with IP peers
dialed directly while kaspad does its initial sync, and switches to Tor only (onion peers, IP
peers through Tor exits) once kaspad says it is synced. :class:`SyncGate` decides when, from
what kaspad's RPC answers (:mod:`bridge.core.kaspad_rpc`) and the clock the caller passes in:

* **one way**: once switched, nothing switches back, not even kaspad reporting "not synced"
  later (a privacy tool must never fall back to clearnet by itself);
* **only on knowledge**: the switch happens when kaspad *says* ``isSynced = true`` for the
  configured network. Unreachable RPC, an error answer, or a kaspad of another network keep
  the bridge in the sync phase (the clearnet phase lasts while kaspad syncs and no longer: a
  wrong guess either way is bad, but staying clearnet on a guess is the one a user cannot see);
* **bounded**: ``peers.sync_first_timeout`` seconds after the bridge started it switches anyway,
  whatever kaspad says or whether it answers (0: no limit). The clearnet phase of a node whose
  RPC the bridge cannot reach (wrong ``kaspad.rpc``) is bounded, and so is that of a node that
  never syncs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from bridge.core.kaspad_rpc import ServerInfo

__all__ = ["Phase", "SyncGate", "SyncState"]


class Phase(Enum):
    SYNCING = "syncing"  # direct IP upstreams allowed
    TOR = "tor"  # Tor upstreams only, for good


@dataclass(frozen=True, slots=True)
class SyncState:
    """What ``status`` shows about the sync-first switch."""

    phase: Phase
    #: kaspad's last answer: True/False, or None (never answered, or the RPC is unreachable now)
    kaspad_synced: bool | None
    #: why the bridge switched ("" while syncing)
    reason: str
    #: caller-clock time of the switch, and of kaspad's last answer
    switched_at: float | None
    last_answer_at: float | None
    #: why the RPC gave no usable answer last time ("" when it did)
    rpc_problem: str
    #: caller-clock time the bridge switches anyway (None: no limit, or switched)
    deadline: float | None


class SyncGate:
    """The switch's state machine. ``now`` is any monotonic clock (the caller's)."""

    def __init__(self, *, network_id: str, started: float, timeout: float | None) -> None:
        #: kaspad's ``networkId`` for the configured network ("mainnet", "testnet-10", ...)
        self.network_id = network_id
        self.deadline = started + timeout if timeout else None
        self.phase = Phase.SYNCING
        self.kaspad_synced: bool | None = None
        self.reason = ""
        self.switched_at: float | None = None
        self.last_answer_at: float | None = None
        self.rpc_problem = "no answer from kaspad's RPC yet"

    @property
    def switched(self) -> bool:
        return self.phase is Phase.TOR

    def _switch(self, now: float, reason: str) -> bool:
        if self.switched:
            return False
        self.phase = Phase.TOR
        self.reason = reason
        self.switched_at = now
        return True

    def answer(self, now: float, info: ServerInfo) -> bool:
        """kaspad answered GetServerInfo; True when the bridge switches to Tor now."""
        if info.error:
            self.kaspad_synced = None
            self.rpc_problem = f"kaspad's RPC answered with an error: {info.error}"
            return self.tick(now)
        if info.network_id and info.network_id != self.network_id:
            self.kaspad_synced = None
            self.rpc_problem = (f"the kaspad at kaspad.rpc runs {info.network_id!r}, not "
                                f"{self.network_id!r}: its sync state is not this node's")
            return self.tick(now)
        self.kaspad_synced = info.is_synced
        self.last_answer_at = now
        self.rpc_problem = ""
        if info.is_synced:
            return self._switch(now, "kaspad reported synced")
        return self.tick(now)

    def unreachable(self, now: float, why: str) -> bool:
        """kaspad's RPC gave no answer (``why``); True when the bridge switches to Tor now
        (only when the timeout expired)."""
        self.kaspad_synced = None
        self.rpc_problem = why
        return self.tick(now)

    def already_switched(self, now: float, reason: str) -> None:
        """The bridge switched in an earlier run (its state file): Tor only from the start."""
        self.rpc_problem = ""  # (kaspad is not asked)
        self._switch(now, reason)

    def tick(self, now: float) -> bool:
        """True when the timeout expired now (and the bridge switches to Tor)."""
        if self.deadline is not None and now >= self.deadline:
            return self._switch(now, "peers.sync_first_timeout expired before kaspad reported "
                                     "synced")
        return False

    def state(self) -> SyncState:
        return SyncState(phase=self.phase, kaspad_synced=self.kaspad_synced, reason=self.reason,
                         switched_at=self.switched_at, last_answer_at=self.last_answer_at,
                         rpc_problem=self.rpc_problem,
                         deadline=None if self.switched else self.deadline)
