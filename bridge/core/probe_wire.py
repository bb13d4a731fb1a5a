"""The probe's wire constants and framing helpers: kaspad's and the Tor fork's defaults, hyper's
client HTTP/2 settings, tonic-style gzip, KaspadMessage framing and the after-close frame scan.

Stateless functions the :class:`~bridge.core.probe.ProbeClient` state machine
(:mod:`bridge.core.probe`) calls; no handshake logic here.
"""

from __future__ import annotations

import base64
import struct
import zlib

from bridge.core import proto
from bridge.core.h2conn import PREFACE, FrameScanner

DEFAULT_PROTOCOL_VERSION = 8  # the Tor fork (protocol.md §5.3)
DEFAULT_MIN_PROTOCOL_VERSION = 7  # the fork accepts 7 (v7 flows) on every network
DEFAULT_USER_AGENT = "/kaspad:1.0.1/kaspad:1.0.1/"  # fork 1.0.1 (protocol.md §5.2)
TONIC_USER_AGENT = "tonic/0.12.3"  # the fork's tonic (protocol.md §2.5)
MAX_ADDRESSES_RECEIVE = proto.MAX_ADDRESSES  # kaspad disconnects above this (protocol.md §7.1)
MAX_ADDRESSES_SEND = proto.MAX_ADDRESSES_SEND
MAX_USER_AGENT_LEN = 256
MAX_REJECT_REASON = 2048
IGNORABLE_REJECTS = frozenset({"LOOPBACK_CONNECTION", "DUPLICATE_CONNECTION"})
#: Largest peer message the probe buffers (compressed and inflated). Addresses of 2500 entries is
#: under 100 KB; a block never comes since we never ask for one.
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
_HANDSHAKE_TAGS = frozenset({proto.VERSION, proto.VERACK, proto.READY})

# hyper 1.x client defaults (protocol.md §2.4): stream window 2 MiB, connection window 5 MiB.
_STREAM_WINDOW = 2 * 1024 * 1024
_CONN_WINDOW = 5 * 1024 * 1024
_MAX_FRAME = 16384
_PREFACE = PREFACE


# ---------------------------------------------------------------------------------------------
# Helpers


def kaspad_gzip(payload: bytes) -> bytes:
    """gzip like flate2's GzEncoder (tonic): mtime 0, XFL 0, OS byte 255 ("unknown").

    zlib's own gzip wrapper writes OS=3 (Unix); the deflate stream itself is zlib's, not
    miniz_oxide's, so the compressed bytes still differ from kaspad's for larger messages.
    """
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = c.compress(payload) + c.flush()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    trailer = struct.pack("<II", zlib.crc32(payload) & 0xFFFFFFFF, len(payload) & 0xFFFFFFFF)
    return header + body + trailer


def _settings_frame() -> bytes:
    body = b"".join(struct.pack(">HI", k, v) for k, v in (
        (0x2, 0), (0x4, _STREAM_WINDOW), (0x5, _MAX_FRAME), (0x6, 16384)))
    return len(body).to_bytes(3, "big") + b"\x04\x00" + b"\x00\x00\x00\x00" + body


def _window_update_frame(increment: int) -> bytes:
    return b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + increment.to_bytes(4, "big")


def _fork_onion_shape_error(host: str) -> str | None:
    """The fork's own onion check (protocol.md §11.3): what kaspad would disconnect on."""
    h = host.lower()
    if not h.endswith(".onion"):
        return f"onion {host[:80]!r} does not end in .onion"
    label = h[: -len(".onion")]
    if len(label) != 56:
        return f"onion {host[:80]!r} has {len(label)} base32 characters, expected 56"
    try:
        base64.b32decode(label.upper())
    except ValueError:
        return f"onion {host[:80]!r} is not base32"
    return None


def _entry_problem(na: proto.NetAddress) -> str | None:
    """What kaspad's conversion fails on for one NetAddress (protocol.md §4.4, §11.2)."""
    onion = na.onion
    if onion is not None:
        err = _fork_onion_shape_error(onion)
        if err is not None:
            return err
    else:
        ip = na.ip
        if ip is None or len(ip) not in (4, 16):
            return f"IP has illegal length {0 if ip is None else len(ip)}"
    if na.port > 0xFFFF:
        return f"port {na.port} does not fit in u16"
    return None


def _message(tag: int, payload: bytes, *, response_id: int = 0) -> bytes:
    out = proto.make_len_field(tag, payload).raw
    if response_id:
        out += proto.make_varint_field(proto.RESPONSE_ID, response_id).raw
    return out


def _response_id_for(env: proto.Envelope) -> int:
    """kaspad's ``make_response!``: the reply carries the request's request_id as response_id."""
    f = proto.first(env.others, proto.REQUEST_ID)
    return f.as_int if f is not None and f.wire_type == proto.VARINT else 0


def _fmt_secs(t: float) -> str:
    return f"{int(t)}s" if float(t).is_integer() else f"{t}s"


# ---------------------------------------------------------------------------------------------


def _tail_scanner() -> FrameScanner:
    """Frame-header scan of what arrives after we closed (h2 refuses input once it sent
    GOAWAY): stops at the peer's END_STREAM, RST_STREAM or GOAWAY. Best effort: it starts at the
    next chunk, so a frame h2 had half-buffered can make it miss the end (the shell then just
    waits out its grace period) or see it early (the shell closes a little early)."""
    def end(_length: int, ftype: int, flags: int) -> bool:
        return ftype in (0x3, 0x7) or (ftype in (0x0, 0x1) and bool(flags & 0x1))

    return FrameScanner(end)


def _status(h: dict[bytes, bytes]) -> str:
    status = h.get(b"grpc-status", b"?").decode("ascii", "replace")
    msg = h.get(b"grpc-message", b"").decode("utf-8", "replace")
    return f"grpc-status {status}" + (f": {msg}" if msg else "")
