"""Harvest addresses from one peer through Tor: the trio shell around :mod:`bridge.core.probe`.

``harvest("seeder1.kaspad.net", 16111, proxy=..., network="kaspa-mainnet")`` hands the hostname
to the SOCKS proxy unresolved (the Tor exit resolves it and connects to one of the nodes it
lists), runs a one-shot kaspad handshake, asks for addresses once, and closes. The bridge process
itself never performs a DNS lookup (:func:`bridge.net.socks.open_socks_stream` always uses rdns
and the proxy must be an IP literal).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Final

import trio

from bridge.core import proto
from bridge.core.errors import SelfConnection
from bridge.core.kaspa import NETWORKS, get_network
from bridge.core.peers import Target
from bridge.core.probe import (
    DEFAULT_MIN_PROTOCOL_VERSION,
    DEFAULT_PROTOCOL_VERSION,
    DEFAULT_USER_AGENT,
    AddressesReceived,
    Closed,
    Failed,
    HandshakeDone,
    HarvestedIp,
    HarvestedOnion,
    PeerVersionInfo,
    Phase,
    ProbeClient,
    ProbeError,
)
from bridge.net import h2io
from bridge.net.socks import ProxyEndpoint, open_socks_stream

log = logging.getLogger("bridge.probe")

#: DNS seeders of each network (a view of :data:`bridge.core.kaspa.NETWORKS`).
DNS_SEEDERS: Final[dict[str, tuple[str, ...]]] = {
    n.name: n.dns_seeders for n in NETWORKS.values()}


def seeder_targets(network: str) -> list[tuple[str, int]]:
    """``(hostname, default P2P port)`` of every DNS seeder of ``network`` (none on
    simnet/devnet). Raises ``ValueError`` for an unknown network."""
    return get_network(network).seeder_targets()


@dataclass(frozen=True, slots=True)
class HarvestTimeouts:
    """Seconds. ``headers``/``version``/``ready`` are kaspad's own budgets (protocol.md §3.1, §5.1);
    ``dial`` covers the SOCKS handshake including Tor's circuit and the exit's DNS lookup."""

    dial: float = 60.0
    headers: float = 10.0
    version: float = 4.0
    ready: float = 8.0
    addresses: float = 30.0
    #: after our END_STREAM/GOAWAY: how long to wait for the peer to close before we do
    close_grace: float = 1.0

    def for_phase(self, phase: Phase) -> float:
        return {Phase.HEADERS: self.headers, Phase.VERSION: self.version,
                Phase.READY: self.ready, Phase.ADDRESSES: self.addresses}.get(phase, 0.0)


@dataclass(frozen=True, slots=True)
class HarvestResult:
    host: str  # what we dialed (a seeder name, an onion or an IP literal)
    port: int
    peer: PeerVersionInfo
    ips: tuple[HarvestedIp, ...]
    onions: tuple[HarvestedOnion, ...]
    dropped: tuple[str, ...] = ()
    elapsed: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds spent per phase

    @property
    def targets(self) -> list[Target]:
        """Everything harvested, onions first, as dialable targets."""
        return ([Target(o.host, o.port) for o in self.onions]
                + [Target(i.host, i.port) for i in self.ips])

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        """``(host, port)`` pairs, e.g. for ``AddressBook.learn_many``."""
        return [(t.host, t.port) for t in self.targets]


def _authority(host: str, port: int) -> str:
    h = f"[{host}]" if ":" in host else host
    return f"{h}:{port}"


async def harvest(
    host: str,
    port: int,
    *,
    proxy: ProxyEndpoint | None,
    network: str,
    connect: Callable[[], Awaitable[trio.SocketStream]] | None = None,
    timeouts: HarvestTimeouts | None = None,
    protocol_version: int = DEFAULT_PROTOCOL_VERSION,
    min_protocol_version: int = DEFAULT_MIN_PROTOCOL_VERSION,
    user_agent: str = DEFAULT_USER_AGENT,
    node_id: bytes | None = None,
    reply_addresses: Sequence[proto.NetAddress] = (),
    forbidden_ids: Collection[bytes] = (),
) -> HarvestResult:
    """Dial ``host:port`` through ``proxy`` (fresh credentials: its own Tor circuit), handshake
    as kaspad, collect one Addresses reply and close.

    Raises :class:`bridge.net.socks.DialError` when the SOCKS dial fails,
    :class:`bridge.core.probe.ProbeError` (``PeerRejected``, ``PeerViolation``,
    ``IncompatiblePeer``, ``PeerClosed``, ``ProbeTimeout``) or
    :class:`bridge.core.errors.SelfConnection` afterwards; each carries ``fault``.
    """
    t = timeouts or HarvestTimeouts()
    started = trio.current_time()
    if connect is not None:  # e.g. `doctor` talking to the local kaspad directly
        with trio.fail_after(t.dial):
            stream = await connect()
    elif proxy is not None:
        stream = await open_socks_stream(proxy, host, port, timeout=t.dial)
    else:
        raise ValueError("harvest needs a proxy or a connect function")
    client = ProbeClient(
        network, now_ms=int(time.time() * 1000),
        node_id=node_id if node_id is not None else os.urandom(16),
        authority=_authority(host, port), protocol_version=protocol_version,
        min_protocol_version=min_protocol_version, user_agent=user_agent,
        reply_addresses=reply_addresses, forbidden_ids=forbidden_ids,
    )
    phases: dict[str, float] = {"dial": trio.current_time() - started}
    peer: PeerVersionInfo | None = None
    result: AddressesReceived | None = None
    error: ProbeError | SelfConnection | None = None
    try:
        await h2io.send(stream, client.initiate())
        phase = client.phase
        phase_start = trio.current_time()
        closed = False
        while not closed:
            budget = t.for_phase(phase)
            data = await h2io.receive(stream, deadline=phase_start + budget, eof_on_error=True)
            if data is None:
                events = client.timeout(budget)
            elif not data:
                events = client.connection_lost()
            else:
                events = client.receive(data)
            try:
                await h2io.flush(stream, client)
            except h2io.STREAM_ERRORS:
                if not client.finished:
                    events += client.connection_lost()
            for ev in events:
                if isinstance(ev, HandshakeDone):
                    peer = ev.peer
                elif isinstance(ev, AddressesReceived):
                    result = ev
                elif isinstance(ev, Failed):
                    error = ev.error
                elif isinstance(ev, Closed):
                    closed = True
            if client.phase is not phase:
                now = trio.current_time()
                phases[phase.name.lower()] = now - phase_start
                phase, phase_start = client.phase, now
        await _linger(stream, client, t.close_grace)
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
    if error is not None:
        log.info("harvest from %s:%d failed: %s", host, port, error.describe())
        raise error
    assert result is not None and peer is not None
    elapsed = trio.current_time() - started
    log.info("harvested %d IP and %d onion addresses from %s:%d (%s) in %.1fs", len(result.ips),
             len(result.onions), host, port, peer.user_agent, elapsed)
    return HarvestResult(host, port, peer, result.ips, result.onions, result.dropped,
                         elapsed, phases)


async def _linger(stream: trio.SocketStream, client: ProbeClient, grace: float) -> None:
    """Let the peer read our last frames and end its side first (its trailers, RST_STREAM or
    GOAWAY), so that closing does not discard anything (no RST on unread data)."""
    with trio.move_on_after(grace):
        while not client.peer_gone:
            data = await h2io.receive(stream, eof_on_error=True)
            if not data:
                return
            client.receive(data)


__all__ = ["DNS_SEEDERS", "HarvestResult", "HarvestTimeouts", "harvest", "seeder_targets"]
