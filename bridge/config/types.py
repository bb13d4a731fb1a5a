"""Value types of the configuration: numeric endpoints (:class:`HostPort`), Unix sockets, and
the parsing of ``host:port`` text. No DNS: every host is an IP literal or a v3 onion."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

from bridge.core.onion import OnionAddress, is_onion_host

HostKind: TypeAlias = Literal["onion", "ipv4", "ipv6"]
_PORT_RE = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True, slots=True)
class HostPort:
    """A numeric endpoint: an IP literal or a v3 onion host, and a port.

    ``host`` is normalised: lower-case ``<56>.onion``, dotted IPv4, compressed IPv6 *without*
    brackets. ``str()`` gives the form ``parse_hostport`` accepts (IPv6 in brackets).
    """

    host: str
    port: int
    kind: HostKind

    def __str__(self) -> str:
        if self.kind == "ipv6":
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return None if self.kind == "onion" else ipaddress.ip_address(self.host)

    @property
    def onion(self) -> OnionAddress | None:
        return OnionAddress.parse(self.host) if self.kind == "onion" else None

    @property
    def is_loopback(self) -> bool:
        ip = self.ip
        return ip is not None and ip.is_loopback


@dataclass(frozen=True, slots=True)
class UnixSocket:
    """A Unix-domain socket path (``tor.control = "unix:/run/tor/control"``)."""

    path: Path

    def __str__(self) -> str:
        return f"unix:{self.path}"


def _parse_port(text: str) -> int:
    if not _PORT_RE.fullmatch(text):
        raise ValueError(f"port {text!r} is not a number between 1 and 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1..65535")
    return port


def parse_hostport(text: str, default_port: int | None = None) -> HostPort:
    """Parse ``"1.2.3.4:port"``, ``"[::1]:port"`` or ``"<56>.onion:port"``.

    The port may be omitted when ``default_port`` is given. Hostnames other than ``.onion`` are
    rejected (the bridge never resolves DNS), as are unbracketed IPv6, IPv6 scope ids and
    surrounding whitespace. Raises ``ValueError`` (``OnionAddressError`` for a bad onion).
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {type(text).__name__}")
    if not text:
        raise ValueError("empty address")
    if text != text.strip():
        raise ValueError(f"{text!r}: surrounding whitespace is not allowed")
    host: str
    kind: HostKind
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']' after IPv6 address")
        inner, rest = text[1:end], text[end + 1 :]
        if rest == "":
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise ValueError(f"{text!r}: expected ':port' after ']'")
        if "%" in inner:
            raise ValueError(f"{text!r}: IPv6 scope ids are not supported")
        try:
            host = str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise ValueError(f"{text!r}: {inner!r} is not an IPv6 address") from None
        kind = "ipv6"
    else:
        if text.count(":") > 1:
            raise ValueError(f"{text!r}: IPv6 addresses must be in brackets, e.g. '[::1]:16111'")
        name, sep, after = text.partition(":")
        port_text = after if sep else None
        if is_onion_host(name):
            host = OnionAddress.parse(name).host  # OnionAddressError says what is wrong
            kind = "onion"
        else:
            try:
                host = str(ipaddress.IPv4Address(name))
            except ValueError:
                raise ValueError(
                    f"{text!r}: {name!r} is not an IPv4 address or a v3 .onion address "
                    "(hostnames are not allowed: the bridge never resolves DNS)"
                ) from None
            kind = "ipv4"
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{text!r}: missing ':port'")
        port = default_port
    elif port_text == "":
        raise ValueError(f"{text!r}: empty port after ':'")
    else:
        port = _parse_port(port_text)
    return HostPort(host=host, port=port, kind=kind)
