"""Which remote nodes are connected to our kaspad through this bridge (sans-IO, clock-free).

kaspad refuses a second connection to a peer it already has: its hub keys peers by
``(Version.id, remote IP)``, completes the handshake of the newer connection and then closes it
at once. Every connection the bridge relays reaches kaspad from 127.0.0.1, so for kaspad two
bridged connections carrying the same node id are duplicates whatever remote (onion or IP, slot
or onion inbound) they go to. Without a check of its own, a bridge that learned (by gossip) the
onion of a node already connected would hand it to a slot again and again, and kaspad would drop
it every time ("kaspad reset the stream (CANCEL)" on a slot, ``NO_ERROR`` on an inbound relay),
forever, because kaspad retries its ``--addpeer`` slot about every 30 s.

:class:`NodeRegistry` is the bridge-wide record of that (one per bridge, held by
:class:`bridge.core.policy.GossipState`):

* **connected**: the node id of every remote whose Version has been let through to kaspad on a
  live relay (slot or inbound), with who holds it (the relay's label) and the :class:`Target`
  it was reached at (a slot's dialed target; for an inbound peer, the address its Version
  advertised, if any). :meth:`claim` registers an id, or returns the holder when another relay
  has it already: the newer connection is the duplicate, as for kaspad. :meth:`release` is
  called when the relay ends.
* **seen**: the node id last seen at each target (bounded, oldest forgotten first), kept after
  the connection ends. :meth:`busy_targets` are the targets whose remembered id is connected
  now: the warm pool does not pick them and does not hand them to a slot.

The policy (:mod:`bridge.core.policy`) claims the id when the remote's Version passes; the
relay and the shell (:mod:`bridge.net`) decide what happens to a refused duplicate. An
advertised address is only a claim of the remote; at worst it keeps the bridge from dialing that
target while the claimer stays connected. The authoritative check is always the Version a slot's
upstream actually shows.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from bridge.core.peers import Target

__all__ = ["Holder", "NodeRegistry"]


@dataclass(frozen=True, slots=True)
class Holder:
    """A node id connected to kaspad, and through what."""

    node_id: bytes
    label: str  # the relay holding it, e.g. "slot:16200#3 (peer x.onion:16111)" / "inbound#7"
    target: Target | None  # where it was reached / what it advertised (None: unknown)

    def __str__(self) -> str:
        where = f" at {self.target}" if self.target is not None else ""
        return f"{self.label}{where}"


@dataclass(slots=True)
class NodeRegistry:
    """Node ids connected to kaspad through this bridge; node id last seen at each target."""

    #: how many target -> node id memories are kept (oldest forgotten first)
    capacity: int = 4096
    _connected: dict[bytes, Holder] = field(default_factory=dict)
    _owner_of: dict[bytes, object] = field(default_factory=dict)
    _held_by: dict[int, tuple[object, bytes]] = field(default_factory=dict)
    _seen: OrderedDict[Target, bytes] = field(default_factory=OrderedDict)
    _targets_of: dict[bytes, set[Target]] = field(default_factory=dict)
    #: claims refused because the id was connected already
    refused: int = 0

    # -- connected ids -----------------------------------------------------------------------

    def claim(self, owner: object, node_id: bytes, *, label: str,
              target: Target | None = None) -> Holder | None:
        """Register ``node_id`` as connected through ``owner`` (any object, compared by
        identity; one id per owner). Returns ``None`` when registered, or the current
        :class:`Holder` when another owner has that id connected already (nothing changes then,
        except :attr:`refused`)."""
        if target is not None:
            self.remember(target, node_id)
        other = self._owner_of.get(node_id)
        if other is not None and other is not owner:
            self.refused += 1
            return self._connected[node_id]
        self.release(owner)
        self._connected[node_id] = Holder(node_id, label, target)
        self._owner_of[node_id] = owner
        self._held_by[id(owner)] = (owner, node_id)
        return None

    def release(self, owner: object) -> Holder | None:
        """``owner``'s connection ended: its id is no longer connected. Returns what it held."""
        held = self._held_by.pop(id(owner), None)
        if held is None:
            return None
        node_id = held[1]
        self._owner_of.pop(node_id, None)
        return self._connected.pop(node_id, None)

    def holder(self, node_id: bytes) -> Holder | None:
        return self._connected.get(node_id)

    def connected(self) -> list[Holder]:
        return list(self._connected.values())

    def __len__(self) -> int:
        return len(self._connected)

    # -- targets -----------------------------------------------------------------------------

    def remember(self, target: Target, node_id: bytes) -> None:
        """``node_id`` was seen at ``target`` (a Version from there)."""
        old = self._seen.get(target)
        if old is not None and old != node_id:
            self._unlink(target, old)
        self._seen[target] = node_id
        self._seen.move_to_end(target)
        self._targets_of.setdefault(node_id, set()).add(target)
        while len(self._seen) > self.capacity:
            t, nid = self._seen.popitem(last=False)
            self._unlink(t, nid)

    def _unlink(self, target: Target, node_id: bytes) -> None:
        ts = self._targets_of.get(node_id)
        if ts is not None:
            ts.discard(target)
            if not ts:
                del self._targets_of[node_id]

    def node_at(self, target: Target) -> bytes | None:
        """The node id last seen at ``target`` (None: never seen, or forgotten)."""
        return self._seen.get(target)

    def in_use(self, target: Target) -> Holder | None:
        """The holder of the node last seen at ``target``, if that node is connected now."""
        nid = self._seen.get(target)
        return self._connected.get(nid) if nid is not None else None

    def busy_targets(self) -> set[Target]:
        """Targets not to dial now: their remembered node id is connected (through any relay),
        and the targets the connected ids were reached at or advertised."""
        out: set[Target] = set()
        for nid, h in self._connected.items():
            out |= self._targets_of.get(nid, set())
            if h.target is not None:
                out.add(h.target)
        return out

    def snapshot(self) -> dict[str, object]:
        return {"connected": len(self._connected), "remembered": len(self._seen),
                "refused": self.refused}
