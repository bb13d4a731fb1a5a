"""What the probe (:class:`bridge.core.probe.ProbeClient`) does at the Kaspa P2P level: our
Version, the peer's handshake messages and their validation in kaspad's order (protocol.md §5.1),
the flow messages after the handshake and the one Addresses reply it harvests (§7.1, §4.4).

Functions taking the client as ``self``; :class:`~bridge.core.probe.ProbeClient` binds them as
its methods. Not here: HTTP/2, gRPC framing and closing (:mod:`bridge.core.probe`). Sans-IO.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from bridge.core import proto
from bridge.core.errors import OnionAddressError as _OnionError
from bridge.core.errors import ProtocolError, SelfConnection
from bridge.core.onion import OnionAddress
from bridge.core.probe_events import (
    AddressesReceived,
    Event,
    HandshakeDone,
    HarvestedIp,
    HarvestedOnion,
    IncompatiblePeer,
    PeerRejected,
    PeerVersionInfo,
    PeerViolation,
    Phase,
    ProbeError,
)
from bridge.core.probe_wire import (
    _HANDSHAKE_TAGS,
    MAX_ADDRESSES_RECEIVE,
    MAX_ADDRESSES_SEND,
    MAX_REJECT_REASON,
    MAX_USER_AGENT_LEN,
    _entry_problem,
    _response_id_for,
)

if TYPE_CHECKING:  # probe binds these functions as ProbeClient's methods
    from bridge.core.probe import ProbeClient


def _version_payload(self: ProbeClient) -> bytes:
    # Tag order as prost writes it (protocol.md §4.3); no address, disableRelayTx=false omitted.
    fields = [proto.make_varint_field(proto.V_PROTOCOL, self.protocol_version)]
    if self.services:
        fields.append(proto.make_varint_field(proto.V_SERVICES, self.services))
    if self.now_ms:
        fields.append(proto.make_varint_field(proto.V_TIMESTAMP, self.now_ms))
    fields.append(proto.make_len_field(proto.V_ID, self.node_id))
    if self.user_agent:
        fields.append(proto.make_len_field(proto.V_USER_AGENT, self.user_agent.encode()))
    fields.append(proto.make_len_field(proto.V_NETWORK, self.network.encode()))
    return proto.encode_fields(fields)


def _on_message(self: ProbeClient, plain: bytes, events: list[Event]) -> None:
    st = self._st
    tag = proto.payload_tag(plain)
    if tag is None:
        raise PeerViolation("message with an empty payload (kaspad: NoRouteForMessageType)")
    env = proto.Envelope.decode(plain)
    self.received.append(tag)
    name = proto.payload_name(tag)
    if tag == proto.REJECT:
        f = proto.first(proto.parse(env.payload), 1)
        reason = (f.as_bytes.decode("utf-8", "replace") if f is not None else "")
        raise PeerRejected(reason[:MAX_REJECT_REASON])
    if tag not in proto.KNOWN_PAYLOADS:
        raise PeerViolation(f"unknown message type {name} (kaspad: NoRouteForMessageType)")
    rid = proto.first(env.others, proto.RESPONSE_ID)
    if rid is not None and rid.as_int:
        raise PeerViolation(f"{name} with response_id {rid.as_int}, but we sent no request "
                            "with an id (kaspad: NoRouteForMessageType)")
    if st.addresses_done:
        return  # we are closing; nothing more matters
    if not st.got_ready:
        if tag == proto.VERSION:
            if st.peer_version is not None:
                raise PeerViolation("second Version during the handshake")
            st.peer_version = self._parse_version(env.payload)
            self._send(proto.VERACK, b"")  # before validation, as kaspad does
            self._maybe_validate(events)
        elif tag == proto.VERACK:
            if st.got_verack:
                raise PeerViolation("second Verack during the handshake")
            st.got_verack = True
            self._maybe_validate(events)
        elif tag == proto.READY:
            st.got_ready = True
            self._maybe_done(events)
        elif st.validated:
            # Our flows are registered once we validated (kaspad queues these until the
            # Ready exchange is over).
            st.queued.append(env)
        else:
            raise PeerViolation(f"unexpected {name} during the handshake "
                                "(kaspad: NoRouteForMessageType)")
        return
    self._flow_message(tag, env, events)


def _parse_version(self: ProbeClient, payload: bytes) -> PeerVersionInfo:
    try:
        v = proto.Version.decode(payload)
    except ProtocolError as exc:
        raise PeerViolation(f"undecodable Version: {exc}") from exc
    address: tuple[str, int] | None = None
    na = v.address
    if na is not None:
        problem = _entry_problem(na)
        if problem is not None:
            self._version_address_error = problem
        onion = na.onion
        ip = na.ip
        if onion is not None:
            address = (onion, na.port)
        elif ip is not None and len(ip) in (4, 16):
            address = (str(ipaddress.ip_address(ip)), na.port)
    ts = proto.first(v.fields, proto.V_TIMESTAMP)
    ts_ms = ts.as_int if ts is not None else 0
    if ts_ms >= 1 << 63:
        ts_ms -= 1 << 64
    return PeerVersionInfo(
        protocol_version=v.protocol_version, services=v.services, timestamp_ms=ts_ms,
        node_id=v.node_id, user_agent=v.user_agent[:MAX_USER_AGENT_LEN],
        network=v.network, address=address,
    )


def _version_problem(self: ProbeClient, payload_version: PeerVersionInfo) -> tuple[ProbeError |
                                                                      SelfConnection,
                                                                      str | None] | None:
    """kaspad's checks in its order (protocol.md §5.1 step 4): (error, Reject text)."""
    pv = payload_version
    if len(pv.node_id) != 16:
        text = f"Identity error: invalid peer id length {len(pv.node_id)}"
        return PeerViolation(f"peer's Version.id has {len(pv.node_id)} bytes, "
                             "expected 16"), text
    if self._version_address_error is not None:
        text = self._version_address_error
        return PeerViolation(f"peer's Version.address is illegal: {text}"), text
    if pv.node_id == self.node_id or pv.node_id in self.forbidden_ids:
        return SelfConnection("peer has our own node id (a loopback through Tor)"), \
            "LOOPBACK_CONNECTION"
    if pv.network != self.network:
        text = f"Network mismatch - local: {self.network}, remote: {pv.network}"
        return IncompatiblePeer(f"peer is on {pv.network!r}, not {self.network!r}"), text
    if pv.protocol_version < self.min_protocol_version:
        text = (f"P2P protocol version mismatch - local: {self.protocol_version}, "
                f"remote: {pv.protocol_version}")
        return IncompatiblePeer(f"peer speaks protocol version {pv.protocol_version}, "
                                f"below our minimum {self.min_protocol_version}"), text
    return None


def _maybe_validate(self: ProbeClient, events: list[Event]) -> None:
    st = self._st
    if st.validated or st.peer_version is None or not st.got_verack:
        return
    problem = self._version_problem(st.peer_version)
    if problem is not None:
        error, reject = problem
        self._fail(error, events, reject=reject)
        return
    st.validated = True
    self.peer = st.peer_version
    self._send(proto.READY, b"")
    st.phase = Phase.READY
    self._maybe_done(events)


def _maybe_done(self: ProbeClient, events: list[Event]) -> None:
    st = self._st
    if not (st.validated and st.got_ready) or st.requested or st.finished:
        return
    assert st.peer_version is not None
    events.append(HandshakeDone(st.peer_version))
    st.requested = True
    st.phase = Phase.ADDRESSES
    # ReceiveAddressesFlow: RequestAddresses{includeAllSubnetworks:false} -> "3200"
    self._send(proto.REQUEST_ADDRESSES, b"")
    queued, st.queued = st.queued, []
    for env in queued:
        self._flow_message(env.tag, env, events)
        if st.finished or st.addresses_done:
            return


def _flow_message(self: ProbeClient, tag: int, env: proto.Envelope, events: list[Event]) -> None:
    name = proto.payload_name(tag)
    if tag == proto.ADDRESSES:
        self._on_addresses(env, events)
    elif tag == proto.REQUEST_ADDRESSES:
        self._send(proto.ADDRESSES, self._reply_payload(), response_id=_response_id_for(env))
    elif tag == proto.PING:
        f = proto.first(proto.parse(env.payload), 1)
        nonce = f.as_int if f is not None else 0
        pong = proto.make_varint_field(1, nonce).raw if nonce else b""
        self._send(proto.PONG, pong, response_id=_response_id_for(env))
    elif tag in _HANDSHAKE_TAGS:
        raise PeerViolation(f"{name} after the handshake (kaspad: route closed, disconnect)")
    elif tag == proto.PONG:
        raise PeerViolation("Pong although we never sent a Ping "
                            "(kaspad: nonce mismatch between ping and pong)")
    else:
        # InvRelayBlock(sink) at start-up, InvTransactions, or a request kaspad would route
        # to a flow: nothing kaspad disconnects on, and nothing a harvest needs.
        self.ignored.append(tag)


def _reply_payload(self: ProbeClient) -> bytes:
    st = self._st
    addrv2 = st.peer_version is not None and st.peer_version.addrv2
    entries = [e for e in self.reply_addresses if addrv2 or e.onion is None]
    return proto.encode_addresses(entries[:MAX_ADDRESSES_SEND])


def _on_addresses(self: ProbeClient, env: proto.Envelope, events: list[Event]) -> None:
    st = self._st
    if not st.requested or st.addresses_done:
        raise PeerViolation("Addresses we did not ask for (kaspad: route closed, disconnect)")
    entries = proto.decode_addresses(env.payload)
    if len(entries) > MAX_ADDRESSES_RECEIVE:
        raise PeerViolation(f"Addresses has {len(entries)} entries; kaspad disconnects above "
                            f"{MAX_ADDRESSES_RECEIVE}")
    assert st.peer_version is not None
    addrv2 = st.peer_version.addrv2
    ips: list[HarvestedIp] = []
    onions: list[HarvestedOnion] = []
    dropped: list[str] = []
    seen: set[tuple[str, int]] = set()
    for i, na in enumerate(entries):
        try:
            problem = _entry_problem(na)
        except ProtocolError as exc:
            problem = str(exc)
        if problem is not None:
            # kaspad's conversion is all-or-nothing: one bad entry fails the message.
            raise PeerViolation(f"Addresses entry {i}: {problem} (kaspad disconnects)")
        onion = na.onion
        if onion is not None:
            if not addrv2:
                dropped.append(f"entry {i}: onion from a peer without ADDRv2")
                continue
            try:
                addr = OnionAddress.parse(onion)
            except _OnionError as exc:
                dropped.append(f"entry {i}: {exc}")
                continue
            key = (addr.host, na.port)
            if key not in seen:
                seen.add(key)
                onions.append(HarvestedOnion(addr, na.port))
            continue
        ip_bytes = na.ip
        assert ip_bytes is not None
        ip = ipaddress.ip_address(ip_bytes)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback or ip.is_unspecified:
            dropped.append(f"entry {i}: {ip} is loopback/unspecified (kaspad ignores it)")
            continue
        key = (str(ip), na.port)
        if key not in seen:
            seen.add(key)
            ips.append(HarvestedIp(ip, na.port))
    result = AddressesReceived(tuple(ips), tuple(onions), tuple(dropped))
    self.result = result
    st.addresses_done = True
    events.append(result)
    self._finish(events, "addresses harvested", cancel=False)
