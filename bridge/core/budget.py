"""What one HTTP/2 peer may make the bridge do: the per-connection budget, in one place.

Every HTTP/2 connection of a relay (kaspad's, a remote peer's, a warm upstream, anyone dialing
the onion) gets a :class:`FrameBudget`, fed the 9-byte header of each frame *before* ``h2``
sees the frame (:class:`bridge.core.relay.Endpoint`). It bounds what a frame costs that carries
no payload to relay, and what an unfinished header block may pin:

* **Frames without payload** (PING, SETTINGS, PRIORITY, RST_STREAM, WINDOW_UPDATE, GOAWAY,
  HEADERS, CONTINUATION, PUSH_PROMISE, empty or padded DATA, unknown types) spend one token of a
  bucket of :attr:`BudgetSettings.burst` tokens. Tokens come back with useful work: one per
  :attr:`BudgetSettings.earn_bytes` bytes of gRPC payload relayed from or to that connection,
  :attr:`BudgetSettings.per_data_frame` WINDOW_UPDATEs are free per DATA frame sent to it (a
  receiver may answer each one with a stream and a connection update),
  and :attr:`BudgetSettings.per_second` per second of time the shell passes in
  (:meth:`FrameBudget.tick`; the core has no clock). An empty bucket closes the connection with
  GOAWAY ENHANCE_YOUR_CALM (:class:`Flood`). This is the shape mature servers settled on after the
  2019 HTTP/2 DoS advisories (ping, settings, reset, empty-frame and priority floods) and 2023's
  rapid reset: a burst allowance that refills with time or useful traffic. An honest peer never
  comes near it: kaspad sends no HTTP/2 PING at all (neither keep-alive nor BDP pings, protocol.md
  §2.4), one SETTINGS, one connection WINDOW_UPDATE (§2.4), then WINDOW_UPDATEs in proportion
  to the DATA it receives, which earns their tokens.
* **Replies nobody reads.** ``h2`` answers every PING and SETTINGS on its own, into its outbound
  queue. A peer that never reads can make that queue grow one byte per byte it sends. Two bounds:
  the relay hands a peer no more relayed DATA while :attr:`BudgetSettings.max_unsent_data` bytes
  wait to be written to it, the shell stops reading a side while more than
  :attr:`BudgetSettings.max_unsent` bytes beyond that wait (``h2``'s queue plus what the shell
  holds, see :meth:`bridge.core.relay.Relay.reading_paused`), and a peer that sends more than
  :attr:`BudgetSettings.max_unread_replies` reply-forcing frames while none of our output to it
  is being written is closed (ENHANCE_YOUR_CALM), as nghttp2 does with its retained-ACK limit.
* **Header blocks.** A HEADERS frame without END_HEADERS keeps ``h2`` buffering CONTINUATIONs
  (up to 64 frames, about 2 MiB with copies, per connection: issue 10, defect 9). The block is
  limited to :attr:`BudgetSettings.max_header_block` bytes (kaspad's headers are under 1 KiB; the
  bridge advertises MAX_HEADER_LIST_SIZE 16384) and :attr:`BudgetSettings.max_continuations`
  CONTINUATION frames, and it may stay unfinished for :attr:`BudgetSettings.header_timeout`
  seconds of the shell's time.
* **SETTINGS frames** of more than :attr:`BudgetSettings.max_settings` entries are refused (each
  entry is processed and validated by ``h2``; a real peer sends at most six).

Nothing here touches a socket, a clock or a thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.core.errors import ProtocolError

#: HTTP/2 error code ENHANCE_YOUR_CALM (RFC 9113 §7)
ENHANCE_YOUR_CALM = 0xB

# frame types (RFC 9113 §6) and flags
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
_ACK = 0x1
_END_HEADERS = 0x4
_PADDED = 0x8
#: bound on WINDOW_UPDATEs owed to a peer (see FrameBudget.earn)
_MAX_OWED = 1 << 20
_NAMES = {DATA: "DATA", HEADERS: "HEADERS", PRIORITY: "PRIORITY", RST_STREAM: "RST_STREAM",
          SETTINGS: "SETTINGS", PUSH_PROMISE: "PUSH_PROMISE", PING: "PING", GOAWAY: "GOAWAY",
          WINDOW_UPDATE: "WINDOW_UPDATE", CONTINUATION: "CONTINUATION"}


class Flood(ProtocolError):
    """A peer made the bridge work, answer or hold memory beyond its budget without relaying
    anything in proportion (control-frame floods, replies it never reads, endless header
    blocks)."""

    action = "GOAWAY ENHANCE_YOUR_CALM; connection closed"
    h2_code = ENHANCE_YOUR_CALM


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    """Limits per HTTP/2 connection. The defaults are far above anything kaspad does (see the
    module docstring) and far below what costs the bridge memory or CPU."""

    #: tokens for frames without payload (the bucket's size; a new connection starts full).
    #: Also bounds the work of one read: h2 spends 20-200 us on each such frame, so a read
    #: full of them stalls the event loop 20 ms at most.
    burst: int = 100
    #: one token back per this many bytes of gRPC payload relayed from or to the connection
    earn_bytes: int = 1024
    #: WINDOW_UPDATEs the peer may send per DATA frame we sent it, outside the bucket (stream
    #: and connection)
    per_data_frame: int = 2
    #: tokens back per second of the shell's time
    per_second: float = 10.0
    #: relayed DATA handed to a peer's h2 connection and not yet written to its socket: the
    #: relay hands over no more (the source is not acknowledged, its window closes), so what is
    #: held for a peer is bounded by this and our own windows, not by the window the peer grants
    max_unsent_data: int = 256 * 1024
    #: the shell stops reading a side while more bytes than this *beyond* ``max_unsent_data``
    #: wait to be written to it (replies h2 queued on its own: PING/SETTINGS ACKs, ...). Relayed
    #: DATA alone never pauses a reader: two bridges facing each other, both with a full queue
    #: of DATA for the other, would each stop reading the other and deadlock.
    max_unsent: int = 256 * 1024
    #: reply-forcing frames (PING, SETTINGS) received while our output to that peer is stuck
    max_unread_replies: int = 1000
    #: bytes of one header block (HEADERS + CONTINUATIONs, HPACK-compressed)
    max_header_block: int = 16 * 1024
    #: CONTINUATION frames in one header block
    max_continuations: int = 8
    #: seconds a header block may stay unfinished
    header_timeout: float = 10.0
    #: entries in one SETTINGS frame
    max_settings: int = 32


class FrameBudget:
    """The budget of one HTTP/2 connection's inbound frames (see the module docstring)."""

    def __init__(self, settings: BudgetSettings | None = None) -> None:
        self.settings = settings or BudgetSettings()
        self.tokens = float(self.settings.burst)
        #: frames that spent a token, by type name (for tests and logs)
        self.spent: dict[str, int] = {}
        #: bytes of the unfinished header block, or None
        self.block: int | None = None
        self.continuations = 0
        #: the shell's time at which the current header block was first seen unfinished
        self.block_since: float | None = None
        #: reply-forcing frames since our output to this peer last made progress
        self.unread_replies = 0
        #: WINDOW_UPDATEs the peer may send for DATA frames we sent it (see :meth:`earn`)
        self.window_updates_owed = 0
        self._now: float | None = None

    # -- earning ------------------------------------------------------------------------------

    def earn(self, payload_bytes: int, *, frames_sent: int = 0) -> None:
        """Useful gRPC payload relayed from or to this connection; ``frames_sent`` DATA frames
        of it were sent to the peer. Each of those allows the peer
        :attr:`BudgetSettings.per_data_frame` WINDOW_UPDATEs outside the bucket: a receiver may
        acknowledge every DATA frame with a stream and a connection WINDOW_UPDATE (gRPC's C
        core does, for small messages, and may send them in a batch later), which is not a
        flood. (Kept apart from the bucket so a batch of them is not cut at ``burst``.)"""
        if payload_bytes > 0:
            self.tokens = min(float(self.settings.burst),
                              self.tokens + payload_bytes / self.settings.earn_bytes)
        if frames_sent > 0:
            self.window_updates_owed = min(
                self.window_updates_owed + frames_sent * self.settings.per_data_frame,
                _MAX_OWED)

    def tick(self, now: float) -> None:
        """The shell's clock (seconds, monotonic). Refills tokens; raises :class:`Flood` when
        a header block has been unfinished for longer than ``header_timeout``."""
        if self._now is not None and now > self._now:
            self.tokens = min(float(self.settings.burst),
                              self.tokens + (now - self._now) * self.settings.per_second)
        self._now = now
        if self.block is None:
            self.block_since = None
            return
        if self.block_since is None:
            self.block_since = now
        elif now - self.block_since >= self.settings.header_timeout:
            raise Flood(f"left a header block unfinished for {now - self.block_since:.1f}s "
                        f"(limit {self.settings.header_timeout:.0f}s)")

    @property
    def header_block_open(self) -> bool:
        return self.block is not None

    @property
    def deadline(self) -> float | None:
        """The shell's time by which :meth:`tick` must be called again (an unfinished header
        block's limit), or None."""
        if self.block is None or self.block_since is None:
            return None
        return self.block_since + self.settings.header_timeout

    def output_progressed(self) -> None:
        """Our output to this peer is being written (it reads): replies are not piling up."""
        self.unread_replies = 0

    # -- spending -----------------------------------------------------------------------------

    def frame(self, length: int, ftype: int, flags: int) -> None:
        """One inbound frame header. Raises :class:`Flood` when the frame is over budget."""
        s = self.settings
        if ftype in (HEADERS, PUSH_PROMISE):
            self.block = None if flags & _END_HEADERS else length
            self.continuations = 0
            self.block_since = None
            if length > s.max_header_block:
                raise Flood(f"sent a {length}-byte header block "
                            f"(limit {s.max_header_block})")
        elif ftype == CONTINUATION and self.block is not None:
            self.block += length
            self.continuations += 1
            if self.block > s.max_header_block:
                raise Flood(f"sent a header block of more than {s.max_header_block} bytes "
                            "(CONTINUATION)")
            if self.continuations > s.max_continuations:
                raise Flood(f"sent more than {s.max_continuations} CONTINUATION frames in one "
                            "header block")
            if flags & _END_HEADERS:
                self.block = None
                self.block_since = None
        if ftype == DATA and length > 0 and not flags & _PADDED:
            return  # payload: paid for by flow control, and it earns tokens once relayed
        if ftype == SETTINGS and length > 6 * s.max_settings:
            raise Flood(f"sent a SETTINGS frame of {length // 6} entries "
                        f"(limit {s.max_settings})")
        if ftype in (PING, SETTINGS) and not flags & _ACK:
            self.unread_replies += 1
            if self.unread_replies > s.max_unread_replies:
                raise Flood(f"sent {self.unread_replies} PING/SETTINGS frames whose answers it "
                            "does not read")
        if ftype == WINDOW_UPDATE and self.window_updates_owed > 0:
            self.window_updates_owed -= 1  # acknowledges DATA we sent: paid for
            return
        name = _NAMES.get(ftype, f"type-{ftype}")
        if ftype == DATA:
            name = "empty DATA" if length == 0 else "padded DATA"
        self.spent[name] = self.spent.get(name, 0) + 1
        self.tokens -= 1
        if self.tokens < 0:
            raise Flood(f"sent too many frames without payload ({_top(self.spent)}); "
                        f"budget {s.burst} + {s.per_second:g}/s + 1 per "
                        f"{s.earn_bytes} bytes relayed")


def _top(spent: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(spent.items(), key=lambda kv: -kv[1])[:3])


__all__ = ["ENHANCE_YOUR_CALM", "BudgetSettings", "Flood", "FrameBudget"]
