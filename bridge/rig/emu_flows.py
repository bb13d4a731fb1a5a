"""What an emulated kaspad peer (:class:`bridge.rig.emu_session.PeerSession`) does with each
message: the Version/Verack/Ready handshake with kaspad's validation order (protocol.md §5), the
address exchange (§7.1), ping/pong (§8) and the flows' violations.

Functions taking the session as ``self``; :class:`~bridge.rig.emu_session.PeerSession` binds them
as its methods. Not here: the stream, threads and timers (:mod:`bridge.rig.emu_session`).
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from google.protobuf import message as pb_message
from google.protobuf.unknown_fields import UnknownFieldSet

from bridge.rig.emu_codec import (
    _fmt_secs,
    _is_onion,
    check_onion,
    net_address,
    payload_kind,
)
from bridge.rig.emu_config import (
    ADDR_V2,
    IGNORABLE_REJECTS,
    MAX_ADDRESSES_RECEIVE,
    MAX_ADDRESSES_SEND,
    PONG_NONCE_MISMATCH,
)
from bridge.rig.proto_gen import pb

# ---------------------------------------------------------------------------------------------


if TYPE_CHECKING:  # emu_session binds these functions as PeerSession's methods
    from bridge.rig.emu_session import PeerSession


# -- message handling -------------------------------------------------------------------


def _on_raw(self: PeerSession, raw: bytes) -> None:
    self.stats.messages_in += 1
    self.stats.bytes_in += len(raw)
    try:
        m = pb.KaspadMessage.FromString(raw)
    except pb_message.DecodeError as e:
        self._fail(f"undecodable KaspadMessage ({len(raw)} bytes): {e}", None)
        return
    kind = payload_kind(m)
    if kind is None:
        unknown = sorted({f.field_number for f in UnknownFieldSet(m)})
        extra = f" (unknown payload field numbers {unknown})" if unknown else ""
        self._fail(f"received kaspad p2p message with empty payload{extra}", None)
        return
    if kind == "reject":
        reason = m.reject.reason
        self.closed_reason = f"reject: {reason}"
        if reason not in IGNORABLE_REJECTS:
            self._violation(f"unexpected Reject from peer: {reason!r}")
        self._shutdown(self.closed_reason, by_peer=True)
        return
    if m.response_id:
        with self._lock:
            live = m.response_id in self._pending_requests
        if not live:
            self._fail(
                f"{kind} with response_id {m.response_id} matches no pending request "
                "(kaspad: NoRouteForMessageType)",
                None,
            )
            return
    if not self._done:
        self._on_handshake_message(kind, m)
    else:
        self._on_flow_message(kind, m)


def _on_handshake_message(self: PeerSession, kind: str, m: Any) -> None:
    if kind == "version":
        if self.remote_version is not None:
            # kaspad leaves it queued on the Version route and drops it silently.
            self._violation("duplicate Version during handshake")
            return
        self.remote_version = m.version
        self._timers.pop("version", None)
        if "verack" not in self.config.suppress:
            self._enqueue(pb.KaspadMessage(verack=pb.VerackMessage()))
        self._maybe_validate()
    elif kind == "verack":
        if self._got_verack:
            self._violation("duplicate Verack during handshake")
            return
        self._got_verack = True
        self._timers.pop("verack", None)
        self._maybe_validate()
    elif kind == "ready":
        if self._got_ready:
            self._violation("duplicate Ready during handshake")
            return
        self._got_ready = True
        if self._sent_ready:
            self._complete_handshake()
    elif self._sent_ready:
        # Flows are registered once we sent Ready; kaspad queues these until flows launch.
        self._pending.append(m)
    else:
        self._fail(f"unexpected {kind} during handshake (kaspad: NoRouteForMessageType)", None)


def _check_net_address(self: PeerSession, a: Any, *, what: str) -> tuple[str | None, bool]:
    """Validate one NetAddress like kaspad's conversion. Returns (error, is_onion)."""
    which = a.WhichOneof("address")
    if which == "onion":
        if not self.config.addrv2:
            # An upstream decoder skips field 5 and sees an empty ip.
            return ("IP has illegal length 0", True)
        err = check_onion(a.onion)
        if err:
            return (err, True)
    elif which is None:
        if self.config.addrv2:
            return (f"{what}: NetAddress with neither ip nor onion (NoneValue)", False)
        return ("IP has illegal length 0", False)
    elif len(a.ip) not in (4, 16):
        return (f"IP has illegal length {len(a.ip)}", False)
    if a.port > 0xFFFF:
        return (f"{what}: port {a.port} does not fit in u16", which == "onion")
    return (None, which == "onion")


def _maybe_validate(self: PeerSession) -> None:
    if self._validated or self.remote_version is None or not self._got_verack:
        return
    self._validated = True
    cfg = self.config
    v = self.remote_version
    if len(v.id) != 16:
        self._fail(
            f"Version.id has {len(v.id)} bytes, expected 16",
            f"Identity error: invalid peer id length {len(v.id)}",
        )
        if cfg.strict:
            return
    if v.HasField("address"):
        err, is_onion = self._check_net_address(v.address, what="Version.address")
        if err is None and is_onion and not (cfg.addrv2 and v.services & ADDR_V2):
            err = "onion Version.address from a peer without ADDRv2"
        if err is not None:
            self._fail(f"illegal Version.address: {err}", err)
            if cfg.strict:
                return
    if self.emulator._is_duplicate(self, bytes(v.id)):
        self._fail("duplicate connection (same node id and IP)", "DUPLICATE_CONNECTION")
        if cfg.strict:
            return
    if bytes(v.id) == cfg.node_id:
        self._fail("loopback connection (peer has our own node id)", "LOOPBACK_CONNECTION")
        if cfg.strict:
            return
    if v.network != cfg.network:
        reason = f"Network mismatch - local: {cfg.network}, remote: {v.network}"
        self._fail(reason, reason)
        if cfg.strict:
            return
    if v.protocolVersion < cfg.min_peer_protocol_version:
        reason = (
            f"P2P protocol version mismatch - local: {cfg.protocol_version}, "
            f"remote: {v.protocolVersion}"
        )
        self._fail(reason, reason)
        if cfg.strict:
            return
    if "ready" not in cfg.suppress:
        self._enqueue(pb.KaspadMessage(ready=pb.ReadyMessage()))
    self._sent_ready = True
    rt = cfg.ready_timeout
    self._timers["ready"] = (
        time.monotonic() + rt,
        "Ready",
        f"timeout expired after {_fmt_secs(rt)}",
    )
    if self._got_ready:
        self._complete_handshake()


def _complete_handshake(self: PeerSession) -> None:
    cfg = self.config
    self._timers.pop("ready", None)
    if self.remote_version is not None:
        # Like kaspad's hub: a peer becomes known (for the duplicate check) once it is ready.
        self.emulator._register_identity(self, bytes(self.remote_version.id))
    self._done = True
    self._handshake_done.set()
    self._settled.set()
    if "request_addresses" not in cfg.suppress:
        self._enqueue(pb.KaspadMessage(requestAddresses=pb.RequestAddressesMessage()))
        self._awaiting_addresses = True
        at = cfg.addresses_timeout
        self._timers["addresses"] = (
            time.monotonic() + at,
            "Addresses",
            f"timeout expired after {_fmt_secs(at)}",
        )
    self._timers["ping"] = (time.monotonic() + cfg.ping_interval, "", None)
    pending, self._pending = self._pending, []
    for m in pending:
        if self._closed.is_set():
            break
        self._on_flow_message(payload_kind(m) or "", m)


def _send_ping(self: PeerSession) -> None:
    if "ping" in self.config.suppress:
        return
    nonce = secrets.randbits(64)
    self._ping_nonce = nonce
    self._ping_sent_at = time.monotonic()
    self.stats.pings_sent += 1
    self._enqueue(pb.KaspadMessage(ping=pb.PingMessage(nonce=nonce)))
    pt = self.config.pong_timeout
    self._timers["pong"] = (
        time.monotonic() + pt,
        "Pong",
        f"timeout expired after {_fmt_secs(pt)}",
    )


def _on_flow_message(self: PeerSession, kind: str, m: Any) -> None:
    cfg = self.config
    if kind in ("version", "verack", "ready"):
        self._fail(f"{kind} after handshake (kaspad: route closed, ConnectionClosed)", None)
    elif kind == "addresses":
        self._on_addresses(m)
    elif kind == "requestAddresses":
        if "addresses" in cfg.suppress:
            self.received.put(m)  # the test answers (or not) by hand
            return
        allow_onion = cfg.addrv2 and self.remote_supports_addrv2
        out = pb.KaspadMessage()
        out.addresses.SetInParent()
        if m.request_id:
            out.response_id = m.request_id
        n = 0
        for addr, port in cfg.addresses:
            if n >= MAX_ADDRESSES_SEND:
                break
            if _is_onion(addr) and not allow_onion:
                continue
            out.addresses.addressList.append(net_address(addr, port))
            n += 1
        self._enqueue(out)
    elif kind == "ping":
        if "pong" in cfg.suppress:
            self.received.put(m)  # the test answers (or not) by hand
            return
        reply = pb.KaspadMessage(pong=pb.PongMessage(nonce=m.ping.nonce))
        if m.request_id:
            reply.response_id = m.request_id
        self.stats.pings_answered += 1
        self._enqueue(reply)
    elif kind == "pong":
        if self._ping_nonce is None:
            self._fail(
                f"unsolicited Pong (nonce {m.pong.nonce}) with no Ping outstanding",
                PONG_NONCE_MISMATCH,
            )
        elif m.pong.nonce != self._ping_nonce:
            self._fail(
                f"{PONG_NONCE_MISMATCH} (sent {self._ping_nonce}, got {m.pong.nonce})",
                PONG_NONCE_MISMATCH,
            )
        else:
            self.stats.pongs_ok += 1
            self.stats.last_ping_rtt = time.monotonic() - self._ping_sent_at
            self._ping_nonce = None
            self._timers.pop("pong", None)
            self._timers["ping"] = (time.monotonic() + cfg.ping_interval, "", None)
    else:
        self.received.put(m)


def _on_addresses(self: PeerSession, m: Any) -> None:
    if not self._awaiting_addresses:
        what = (
            "second Addresses message"
            if self.remote_addresses is not None
            else ("unsolicited Addresses message")
        )
        self._fail(f"{what} (kaspad: route closed, ConnectionClosed)", None)
        return
    entries = list(m.addresses.addressList)
    if len(entries) > MAX_ADDRESSES_RECEIVE:
        reason = f"address count {len(entries)} exceeded {MAX_ADDRESSES_RECEIVE}"
        self._fail(f"Addresses: {reason}", reason)
        return
    for i, a in enumerate(entries):
        err, _ = self._check_net_address(a, what=f"Addresses[{i}]")
        if err is not None:
            self._fail(f"Addresses[{i}]: {err}", err)
            return
    self._awaiting_addresses = False
    self._timers.pop("addresses", None)
    self.remote_addresses = entries
