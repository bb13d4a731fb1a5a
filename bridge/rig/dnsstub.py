"""A tiny UDP DNS stub for the private Tor network's exits.

Tor ignores ``/etc/hosts`` and the machine's ``resolv.conf`` may point at an unreachable resolver,
so the exits get ``ServerDNSResolvConfFile`` naming this stub. It answers ``A`` queries for
``*.test`` (and ``test`` itself) with ``127.0.0.1``, other query types for those names with an
empty NOERROR answer, and everything else with NXDOMAIN. Tor randomises the letter case of query
names (``ServerDNSRandomizeCase``); matching is case-insensitive and the question is echoed as is.

Run it as ``python3 -m bridge.rig.dnsstub --port 0``: it prints ``PORT <n>`` on stdout once bound.
"""

from __future__ import annotations

import argparse
import signal
import socket
import struct
import sys

TEST_SUFFIX = "test"
ANSWER_V4 = bytes([127, 0, 0, 1])
_QTYPE_A = 1
_QCLASS_IN = 1
_RCODE_NXDOMAIN = 3
_RCODE_FORMERR = 1
_RCODE_NOTIMP = 4


def _parse_qname(packet: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    while True:
        if offset >= len(packet):
            raise ValueError("truncated name")
        length = packet[offset]
        offset += 1
        if length == 0:
            return ".".join(labels), offset
        if length & 0xC0:
            raise ValueError("compressed name in question")
        label = packet[offset : offset + length]
        if len(label) != length:
            raise ValueError("truncated label")
        labels.append(label.decode("ascii", errors="replace"))
        offset += length


def is_test_name(name: str) -> bool:
    """True for ``test`` and every ``*.test`` name (case-insensitive, trailing dot allowed)."""
    n = name.rstrip(".").lower()
    return n == TEST_SUFFIX or n.endswith("." + TEST_SUFFIX)


def build_response(query: bytes) -> bytes | None:
    """The response to one DNS query packet, or None if it is too broken to answer."""
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000:  # a response, not a query
        return None
    opcode = (flags >> 11) & 0xF
    rd = flags & 0x0100
    base_flags = 0x8000 | 0x0400 | rd | 0x0080  # QR, AA, copy RD, RA

    def error(rcode: int, question: bytes = b"", qd: int = 0) -> bytes:
        return struct.pack("!HHHHHH", ident, base_flags | rcode, qd, 0, 0, 0) + question

    if opcode != 0:
        return error(_RCODE_NOTIMP)
    if qdcount != 1:
        return error(_RCODE_FORMERR)
    try:
        name, end = _parse_qname(query, 12)
    except ValueError:
        return error(_RCODE_FORMERR)
    if end + 4 > len(query):
        return error(_RCODE_FORMERR)
    qtype, qclass = struct.unpack("!HH", query[end : end + 4])
    question = query[12 : end + 4]
    if not is_test_name(name):
        return error(_RCODE_NXDOMAIN, question, 1)
    if qtype != _QTYPE_A or qclass != _QCLASS_IN:
        return error(0, question, 1)  # name exists, no records of that type
    answer = struct.pack("!HHHIH", 0xC00C, _QTYPE_A, _QCLASS_IN, 60, 4) + ANSWER_V4
    return struct.pack("!HHHHHH", ident, base_flags, 1, 1, 0, 0) + question + answer


def serve(sock: socket.socket) -> None:
    """Answer queries on a bound UDP socket forever."""
    while True:
        try:
            data, addr = sock.recvfrom(4096)
        except InterruptedError:  # pragma: no cover - PEP 475 retries, belt and braces
            continue
        reply = build_response(data)
        if reply is not None:
            try:
                sock.sendto(reply, addr)
            except OSError:
                pass


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bridge.rig.dnsstub", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="UDP port (0: pick a free one)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sock = bind(args.host, args.port)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    try:
        serve(sock)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
