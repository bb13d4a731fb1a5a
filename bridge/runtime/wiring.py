"""Wiring: a validated :class:`~bridge.config.Config` → the running daemon's parts."""

from __future__ import annotations

from bridge.config import Config, HostPort
from bridge.core.kaspa import get_network
from bridge.core.peers import Target
from bridge.core.policy import OnionPeer, PolicySettings
from bridge.core.relay import RelaySettings
from bridge.net.pool import DialPolicy
from bridge.net.runner import StallPolicy
from bridge.net.socks import ProxyEndpoint
from bridge.runtime.bridge import BridgeOptions
from bridge.runtime.bridge_options import SyncFirstOptions

#: in <data_dir>/<network>/: kaspad was synced once, the bridge stays on Tor only
SYNC_FIRST_STATE_FILE = "sync_first.switched"


def _proxy(hp: HostPort | None) -> ProxyEndpoint | None:
    return ProxyEndpoint(hp.host, hp.port) if hp is not None else None


def bridge_options(cfg: Config) -> BridgeOptions:
    own = (OnionPeer(cfg.relay.own_onion, cfg.tor.onion_virtual_port)
           if cfg.relay.own_onion is not None else None)
    return BridgeOptions(
        kaspad_p2p=(cfg.kaspad.p2p.host, cfg.kaspad.p2p.port),
        candidates=[Target(p.host, p.port) for p in cfg.peers.connect],
        slot_host=cfg.slots.host,
        slot_ports=list(cfg.slots.ports),
        inbound=(cfg.inbound.listen.host, cfg.inbound.listen.port),
        dial=DialPolicy(
            proxy=_proxy(cfg.tor.socks),
            onion_proxy=_proxy(cfg.tor.socks_for_onion),
            # tor-only: IP peers through Tor exits. hybrid: only onion traffic goes through Tor;
            # IP peers (if peers.onlynet has them) are dialed directly.
            ip_via_tor=cfg.mode == "tor-only",
            allow_direct=cfg.mode == "hybrid" and cfg.peers.allow_direct,
            timeout=cfg.pool.dial_timeout,
        ),
        network=cfg.network,
        onlynet=cfg.peers.onlynet,
        book_path=cfg.data_dir / "peers.sqlite",
        refresh_interval=cfg.peers.refresh_interval or None,
        # DNS seeding through Tor only when kaspad does not seed itself: tor-only mode, and
        # sync_first (kaspad runs with the tor-only flags)
        seeders=(list(cfg.peers.seeders or get_network(cfg.network).seeder_targets())
                 if (cfg.mode == "tor-only" or cfg.peers.sync_first) and cfg.peers.dns_seed
                 else []),
        pool_size=cfg.pool.size,
        slot_wait=cfg.pool.slot_wait,
        h2_handshake_timeout=cfg.pool.handshake_timeout,
        slot_request_timeout=cfg.slots.request_timeout,
        max_slot_connections=cfg.slots.max_connections or None,
        relay=RelaySettings(max_message_bytes=cfg.relay.max_message_bytes),
        max_inbound=cfg.inbound.max_connections,
        max_pending=cfg.inbound.max_pending,
        inbound_handshake_timeout=cfg.inbound.handshake_timeout,
        inbound_accept_rate=cfg.inbound.accept_rate or None,
        inbound_accept_burst=cfg.inbound.accept_burst,
        stall=(StallPolicy(cfg.relay.stall_timeout, cfg.relay.min_message_rate)
               if cfg.relay.stall_timeout > 0 else None),
        policy=PolicySettings(advertise_address=cfg.relay.advertise_address, via_tor=True,
                              max_rewrite_bytes=cfg.relay.max_rewrite_bytes),
        own_onion=own,
        sync_first=(SyncFirstOptions(
            rpc=(cfg.kaspad.rpc.host, cfg.kaspad.rpc.port),
            network_id=get_network(cfg.network).short_name,
            timeout=cfg.peers.sync_first_timeout or None,
            state_file=cfg.network_dir / SYNC_FIRST_STATE_FILE) if cfg.peers.sync_first
            else None),
    )


def kaspad_flags(cfg: Config) -> list[str]:
    """The flags an unmodified kaspad needs to use this bridge (protocol.md §10.1).

    ``--addpeer`` (not ``--connect``, which would disable kaspad's listener and so the onion
    inbound) per slot. In tor-only mode kaspad must not reach the network itself, nor with
    ``peers.sync_first`` (its clearnet sync goes through the bridge's slots, which switch to Tor
    once it is synced; peers of its own would stay on clearnet).
    """
    flags = list(get_network(cfg.network).kaspad_flags)
    flags += [f"--addpeer={ep}" for ep in cfg.slots.endpoints()]
    if cfg.mode == "tor-only" or cfg.peers.sync_first:
        flags += ["--outpeers=0", "--nodnsseed", f"--listen={cfg.kaspad.p2p}", "--disable-upnp"]
    # hybrid: kaspad keeps its own clearnet networking (default listen 0.0.0.0, which also
    # serves the onion inbound relayed to kaspad.p2p on loopback).
    return flags
