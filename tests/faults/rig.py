"""Loopback fault-injection rigs: real bridges, grpcio kaspad emulators, the scripted SOCKS server
(playing Tor) and scripted remotes; plus leak probes (fds, trio tasks, TCP sockets).

Slot rig (outbound)::

    emulator K (kaspad) -> bridge slot -> [SOCKS] -> hostile remote H | good remotes G1, G2

G1/G2 are emulators reached directly (Tor-fork kaspads with their own onion services). The pool
dials candidates in the order [H, G1, G2], so with ``pool_size=2`` H and G1 are warmed first and
G2 is what a slot gets once H is gone.
"""

from __future__ import annotations

import os
import queue
import resource
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field

import trio

from bridge.core.onion import OnionAddress
from bridge.core.peers import Target
from bridge.core.policy import OnionPeer
from bridge.net.pool import DialPolicy
from bridge.net.runner import StallPolicy
from bridge.net.socks import ProxyEndpoint
from bridge.rig.emulator import EmulatorConfig, KaspadEmulator, PeerSession
from bridge.runtime.bridge import Bridge, BridgeOptions
from tests.peers.socks_server import ScriptedSocks5Server

ONION_H = OnionAddress.from_pubkey(bytes(range(1, 33)))
ONION_G1 = OnionAddress.from_pubkey(bytes(range(40, 72)))
ONION_G2 = OnionAddress.from_pubkey(bytes(range(80, 112)))
ONION_SELF = OnionAddress.from_pubkey(bytes(range(120, 152)))
PORT = 16511

#: Scaled-down deadlines so each case takes seconds: kaspad (the emulator) waits 4 s for response
#: HEADERS (real kaspad: 10 s), the bridge answers by 3 s (real: 9 s); its other deadlines scale
#: the same way. The ordering (bridge < kaspad) is what matters and is kept.
KASPAD_HEADERS_TIMEOUT = 4.0
RESPONSE_DEADLINE = 3.0
H2_HANDSHAKE_TIMEOUT = 2.0
STALL = StallPolicy(timeout=2.0, min_rate=256.0)


def kaspad_config(**kw: object) -> EmulatorConfig:
    cfg: dict[str, object] = {"response_headers_timeout": KASPAD_HEADERS_TIMEOUT}
    cfg.update(kw)
    return EmulatorConfig(**cfg)  # type: ignore[arg-type]


@dataclass
class SlotRig:
    socks: ScriptedSocks5Server
    bridge: Bridge
    kaspad: KaspadEmulator
    good: dict[Target, KaspadEmulator]
    routes: dict[str, int] = field(default_factory=dict)
    h: Target | None = None  # the hostile remote

    def block_h(self) -> None:
        """H unreachable from now on: no new connection to it."""
        self.routes.pop(ONION_H.host, None)
        if self.h is not None:
            self.bridge.selector.defer(self.h, trio.current_time(), 3600)

    def leaked(self) -> list[tuple[str, int, int]]:
        """The bridge's sockets in CLOSE_WAIT (slot connections, upstream connections)."""
        upstream = [self.socks.port, *(t.port for t in self.good)]
        if self.h is not None:
            upstream.append(self.h.port)
        return close_wait(self.bridge.slot_ports, upstream)

    def target_of(self, session: PeerSession) -> Target | None:
        """The remote a kaspad session's slot connection was relayed to (while it is live)."""
        port = int(session.remote.rsplit(":", 1)[1])
        for info in self.bridge.relays.values():
            if info.local_port == port and info.target is not None:
                return info.target
        return None


async def start_slot_rig(nursery: trio.Nursery, make_emulator: Callable[..., KaspadEmulator],
                         hostile_port: int | None, *, slots: int = 2, pool_size: int = 2,
                         direct: bool = False, **options: object) -> SlotRig:
    """``direct``: remotes are IP peers dialed directly (hybrid mode with allow_direct), so the
    bridge sees their TCP behaviour (e.g. a RST) first hand rather than through Tor."""
    routes: dict[str, int] = {}

    def route(host: str, port: int) -> tuple[str, int] | int:
        if host in routes:
            return ("127.0.0.1", routes[host])
        return 4

    socks = ScriptedSocks5Server(route, require_auth=True)
    socks_port = await nursery.start(socks.serve)
    good: dict[Target, KaspadEmulator] = {}
    for onion in (ONION_G1, ONION_G2):
        emu = make_emulator(addrv2=True)
        port = await trio.to_thread.run_sync(emu.start_server)
        routes[onion.host] = port
        good[Target("127.0.0.1", port) if direct else Target(onion.host, PORT)] = emu
    candidates = list(good)
    h = None
    if hostile_port is not None:
        routes[ONION_H.host] = hostile_port
        h = Target("127.0.0.1", hostile_port) if direct else Target(ONION_H.host, PORT)
        candidates.insert(0, h)
    dial = (DialPolicy(proxy=None, allow_direct=True, ip_via_tor=False, timeout=10) if direct
            else DialPolicy(proxy=ProxyEndpoint("127.0.0.1", socks_port), timeout=10))
    opts: dict[str, object] = {
        "kaspad_p2p": ("127.0.0.1", 1), "candidates": candidates, "slot_ports": [0] * slots,
        "inbound": None, "dial": dial,
        "pool_size": pool_size, "own_onion": OnionPeer(ONION_SELF, PORT),
        "h2_handshake_timeout": H2_HANDSHAKE_TIMEOUT, "response_deadline": RESPONSE_DEADLINE,
        "stall": STALL, "slot_wait": 3.0, "refresh_interval": None,
    }
    opts.update(options)
    bridge = Bridge(BridgeOptions(**opts))  # type: ignore[arg-type]
    await nursery.start(bridge.run)
    kaspad = make_emulator(response_headers_timeout=KASPAD_HEADERS_TIMEOUT)
    return SlotRig(socks, bridge, kaspad, good, routes, h)


# -- probes ---------------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def task_names(exclude: str = "ScriptedRemote.serve") -> list[str]:
    out: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        if exclude and exclude in task.name:
            return
        out.append(task.name)
        for n in task.child_nurseries:
            for t in n.child_tasks:
                walk(t)
    walk(trio.lowlevel.current_root_task())
    return sorted(out)


def task_count(exclude: str = "ScriptedRemote.serve") -> int:
    """Live trio tasks in this run (walks the task tree from the root), leaving out the subtrees
    of tasks whose name contains ``exclude`` (the scripted remote: its connections end on their
    own schedule)."""
    def walk(task: trio.lowlevel.Task) -> int:
        if exclude and exclude in task.name:
            return 0
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)
    return walk(trio.lowlevel.current_root_task())


_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
               "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
               "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def tcp_sockets(port: int | None = None) -> list[tuple[str, int, int]]:
    """(state, local port, remote port) of every IPv4 TCP socket of this network namespace with
    ``port`` at either end (None: all), except LISTEN and TIME_WAIT (which hold no fd)."""
    out = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            lport = int(parts[1].split(":")[1], 16)
            rport = int(parts[2].split(":")[1], 16)
            state = _TCP_STATES.get(parts[3], parts[3])
            if (port is None or port in (lport, rport)) and state not in ("LISTEN", "TIME_WAIT"):
                out.append((state, lport, rport))
    return out


def close_wait(local: Collection[int], remote: Collection[int] = ()
               ) -> list[tuple[str, int, int]]:
    """Sockets whose peer closed but which were never closed (leaked fds), among those with a
    local port in ``local`` (accepted on a listener) or a remote port in ``remote`` (dialed).
    Only the bridge's own sockets are looked at: grpc (the emulators) keeps some of its own in
    CLOSE_WAIT for a while."""
    return [s for s in tcp_sockets() if s[0] == "CLOSE_WAIT"
            and (s[1] in local or s[2] in remote)]


def raise_nofile(need: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to at least ``need`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


async def until(cond: Callable[[], bool], timeout: float, what: str | Callable[[], str],
                step: float = 0.05) -> float:
    """Poll ``cond`` until true; returns the time it took. Fails the test after ``timeout``
    (``what`` may be a callable, to describe the state at that moment)."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while not cond():
            await trio.sleep(step)
        return trio.current_time() - start
    text = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for: {text}")


async def in_thread(fn: Callable[[], object]) -> object:
    return await trio.to_thread.run_sync(fn)


Waiter = Callable[[], Awaitable[None]]


# -- inbound (onion) rig --------------------------------------------------------------------


@dataclass
class InboundRig:
    bridge: Bridge
    kaspad: KaspadEmulator  # behind the inbound listener (kaspad's P2P port)
    kaspad_port: int
    good: KaspadEmulator | None  # the remote the bridge's slot is relayed to (direct dial)

    @property
    def inbound(self) -> int:
        assert self.bridge.inbound_port is not None
        return self.bridge.inbound_port


async def start_inbound_rig(nursery: trio.Nursery, make_emulator: Callable[..., KaspadEmulator],
                            *, slot: bool = False, **options: object) -> InboundRig:
    """A bridge whose inbound listener (the onion service's target) relays to an emulated
    kaspad; with ``slot``, also one slot relayed (directly, no Tor) to a good remote."""
    kaspad = make_emulator()
    kport = await trio.to_thread.run_sync(kaspad.start_server)
    good = None
    candidates: list[Target] = []
    if slot:
        good = make_emulator(addrv2=True)
        gport = await trio.to_thread.run_sync(good.start_server)
        candidates = [Target("127.0.0.1", gport)]
    opts: dict[str, object] = {
        "kaspad_p2p": ("127.0.0.1", kport), "candidates": candidates,
        "slot_ports": [0] if slot else [], "inbound": ("127.0.0.1", 0),
        "dial": DialPolicy(proxy=None, allow_direct=True, timeout=10),
        "pool_size": 1 if slot else 0, "own_onion": OnionPeer(ONION_SELF, PORT),
        "response_deadline": RESPONSE_DEADLINE, "stall": STALL, "slot_wait": 3.0,
        "refresh_interval": None, "inbound_handshake_timeout": 2.0,
    }
    opts.update(options)
    bridge = Bridge(BridgeOptions(**opts))  # type: ignore[arg-type]
    await nursery.start(bridge.run)
    return InboundRig(bridge, kaspad, kport, good)


async def block_arrives(emulators: Iterable[KaspadEmulator], block_id: int,
                        timeout: float = 10.0) -> None:
    """Wait until a block with ``block_id`` reaches one of ``emulators``' sessions."""
    emus = list(emulators)

    def arrived() -> bool:
        for emu in emus:
            for peer in emu.sessions:
                try:
                    got = peer.wait_received("block", 0.05)
                except queue.Empty:
                    continue
                if got.request_id == block_id:
                    return True
        return False

    with trio.fail_after(timeout):
        while not await trio.to_thread.run_sync(arrived):
            await trio.sleep(0.05)
