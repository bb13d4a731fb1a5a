"""The core's HTTP/2 plumbing, in one place: the connection factory, the client preface, the frame
scanner and guard, an :class:`Endpoint` (an h2 connection plus its frame guard and budget) and
HTTP/2 error names. Used by the relay (:mod:`bridge.core.relay`) and the probe
(:mod:`bridge.core.probe`). Sans-IO.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from bridge.core import fastpath
from bridge.core.budget import BudgetSettings, FrameBudget

__all__ = ["H2_CLOSED", "P2P_PATH", "PREFACE", "Endpoint", "FrameScanner", "RelaySettings",
           "errname", "frame_guard", "h2_connection", "new_upstream_connection", "safe"]

#: the kaspad P2P gRPC stream, the only one the bridge relays or opens
P2P_PATH = b"/protowire.P2P/MessageStream"
#: the HTTP/2 client connection preface (RFC 9113 §3.4)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_CLOSED = h2.connection.ConnectionState.CLOSED


@dataclass(frozen=True, slots=True)
class RelaySettings:
    max_message_bytes: int = 1 << 30
    #: HTTP/2 stream and connection window we advertise to kaspad (bounds memory per peer).
    window: int = 512 * 1024
    #: ... and to the remote peer, across Tor: 2 MiB, kaspad's own client stream window, so the
    #: bridge never offers a remote less than kaspad itself would. (A Tor circuit's round trip
    #: under load is long; one bench.tor_bench run suggested 512 KiB limited throughput, a
    #: second did not reproduce it.) Bytes held for one peer stay bounded by
    #: window + remote_window.
    remote_window: int = 2 * 1024 * 1024
    max_frame: int = 16384
    #: what each HTTP/2 connection may cost (control frames, unread replies, header blocks)
    budget: BudgetSettings = field(default_factory=BudgetSettings)


def h2_connection(client: bool, settings: RelaySettings, window: int) -> h2.connection.H2Connection:
    cfg = h2.config.H2Configuration(
        client_side=client, header_encoding=None, validate_inbound_headers=True,
        normalize_inbound_headers=True,
    )
    conn = h2.connection.H2Connection(cfg)
    values = {
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16384,
        h2.settings.SettingCodes.MAX_FRAME_SIZE: settings.max_frame,
    }
    if client:
        values[h2.settings.SettingCodes.ENABLE_PUSH] = 0
    else:
        values[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 1
    conn.local_settings = h2.settings.Settings(client=client, initial_values=values)
    # h2 applies our MAX_FRAME_SIZE only when the peer's SETTINGS ACK is processed, and its
    # frame buffer keeps the old limit for the rest of that receive_data() call: an ACK followed
    # by a large frame in one read would be rejected. The peer may use the new size as soon as
    # it has sent its ACK, so accept it from the start (frame_guard enforces the same limit).
    conn.max_inbound_frame_size = settings.max_frame
    conn.initiate_connection()
    if window > 65535:
        conn.increment_flow_control_window(window - 65535)
    return conn


class FrameScanner:
    """Walks HTTP/2 frame headers as bytes arrive and calls ``on_header(length, type, flags)``
    for each (after ``skip`` leading bytes, e.g. the client preface). ``on_header`` returning
    True stops the scan."""

    def __init__(self, on_header: Callable[[int, int, int], bool | None], *,
                 skip: int = 0) -> None:
        self.on_header = on_header
        self.skip = skip
        self.header = bytearray()
        self.stopped = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.stopped:
            if self.skip:
                n = min(self.skip, len(view))
                view = view[n:]
                self.skip -= n
                continue
            need = 9 - len(self.header)
            self.header += view[:need]
            view = view[need:]
            if len(self.header) < 9:
                return
            length = int.from_bytes(self.header[:3], "big")
            ftype, flags = self.header[3], self.header[4]
            self.header.clear()
            self.skip = length
            if self.on_header(length, ftype, flags):
                self.stopped = True


def frame_guard(*, skip_preface: bool, max_frame: int,
                budget: FrameBudget | None = None) -> FrameScanner:
    """Rejects an oversized frame from its 9-byte header, and charges every frame to
    ``budget`` (:mod:`bridge.core.budget`), before h2 has spent anything on it.

    h2 buffers a whole frame before it validates the frame's length, so a peer announcing a
    16 MiB frame would make us hold 16 MiB.
    """
    def check(length: int, ftype: int, flags: int) -> None:
        if length > max_frame:
            raise h2.exceptions.FrameTooLargeError(
                f"frame length {length} exceeds the maximum {max_frame}")
        if budget is not None:
            budget.frame(length, ftype, flags)

    return FrameScanner(check, skip=len(PREFACE) if skip_preface else 0)


class Endpoint:
    """An h2 connection plus its frame guard and budget (:mod:`bridge.core.budget`): feed it
    bytes with :meth:`receive_data`. :class:`~bridge.core.budget.Flood` is raised when the peer
    goes over its budget."""

    def __init__(self, client: bool, settings: RelaySettings, *, remote: bool = False) -> None:
        self.conn = h2_connection(client, settings,
                        settings.remote_window if remote else settings.window)
        self.budget = FrameBudget(settings.budget)
        self.guard = frame_guard(skip_preface=not client, max_frame=settings.max_frame,
                                 budget=self.budget)
        #: bytes the shell took from h2 and has not written to the socket yet
        self.unwritten = 0
        #: bytes the shell has written to the socket (it reports them, see :meth:`wrote`)
        self.written = 0
        self._written_seen = 0
        #: the DATA fast path's frame state (:mod:`bridge.core.fastpath`), None when it is off
        self.fast = fastpath.Inbound() if fastpath.ENABLED else None

    @property
    def queued(self) -> int:
        """Bytes in h2's own outbound queue (ACKs, WINDOW_UPDATEs, DATA, GOAWAY, ...)."""
        return len(self.conn._data_to_send)

    @property
    def unsent(self) -> int:
        """Bytes produced for this peer and not yet written to its socket."""
        return self.queued + self.unwritten

    def writing(self, n: int) -> None:
        """The shell took ``n`` bytes of :meth:`data_to_send` and is writing them."""
        self.unwritten += n

    def wrote(self, n: int) -> None:
        """The shell wrote ``n`` bytes to the socket."""
        self.unwritten = max(0, self.unwritten - n)
        self.written += n

    def receive_data(self, data: bytes) -> list[h2.events.Event]:
        if self.unsent == 0 or self.written != self._written_seen:
            # the peer reads what we send it: the replies it asks for do not pile up
            self._written_seen = self.written
            self.budget.output_progressed()
        if self.fast is not None:
            return fastpath.receive(self, data)
        self.guard.feed(data)
        return self.conn.receive_data(data)

    def data_to_send(self) -> bytes:
        """What h2 has queued for this peer (the shell writes it and reports it, see
        :meth:`writing`/:meth:`wrote`)."""
        return self.conn.data_to_send()


def new_upstream_connection(settings: RelaySettings, *, remote: bool = True) -> Endpoint:
    """A client-side endpoint with the preface queued: to a remote peer (the warm pool) or,
    with ``remote=False``, to kaspad (an inbound relay)."""
    return Endpoint(True, settings, remote=remote)


def errname(code: int | None) -> str:
    if code is None:
        return "no error code"
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"error {code}"


def safe(fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError, KeyError):
        pass
