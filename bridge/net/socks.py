"""Upstream dialing through a SOCKS5 proxy (Tor), with per-connection stream isolation.

Hostnames are always sent to the proxy unresolved (``rdns=True``): the bridge never performs a DNS
lookup. Each connection gets fresh random credentials so that Tor (IsolateSOCKSAuth, on by default)
builds it its own circuit.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

import trio
from python_socks import ProxyError, ProxyTimeoutError, ProxyType
from python_socks.async_.trio import Proxy

from bridge.core.errors import BridgeError, Fault


@dataclass(frozen=True)
class ProxyEndpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class DialError(BridgeError):
    """An upstream connection could not be established."""

    action = "upstream candidate skipped"

    def __init__(self, message: str, *, fault: Fault, socks_code: int | None = None):
        super().__init__(message, fault=fault)
        self.socks_code = socks_code


# SOCKS5 reply codes (RFC 1928) that mean "the remote end is at fault / unreachable" rather than
# "our proxy is broken".
_REMOTE_CODES = {3, 4, 5, 6}


def fresh_credentials() -> tuple[str, str]:
    """Random SOCKS5 username/password: a new Tor circuit per connection."""
    return secrets.token_hex(8), secrets.token_hex(16)


async def open_socks_stream(
    proxy: ProxyEndpoint,
    host: str,
    port: int,
    *,
    timeout: float,
    credentials: tuple[str, str] | None = None,
) -> trio.SocketStream:
    """Dial ``host:port`` through the SOCKS5 ``proxy``.

    ``credentials`` defaults to fresh random ones (stream isolation). ``host`` may be an IP
    literal or a hostname/onion, which is passed to the proxy unresolved.
    """
    user, password = credentials if credentials is not None else fresh_credentials()
    try:
        ipaddress.ip_address(proxy.host)
    except ValueError as exc:  # never resolve the proxy's own name either
        raise DialError(
            f"SOCKS proxy host must be an IP literal, got {proxy.host!r}", fault=Fault.LOCAL
        ) from exc
    p = Proxy(ProxyType.SOCKS5, proxy.host, proxy.port, username=user, password=password, rdns=True)
    try:
        sock = await p.connect(dest_host=host, dest_port=port, timeout=timeout)
    except ProxyTimeoutError as exc:
        raise DialError(f"SOCKS dial to {host}:{port} timed out after {timeout}s",
                        fault=Fault.REMOTE) from exc
    except ProxyError as exc:
        code = getattr(exc, "error_code", None)
        fault = Fault.REMOTE if code in _REMOTE_CODES else Fault.TOR
        raise DialError(f"SOCKS proxy {proxy} refused {host}:{port}: {exc}", fault=fault,
                        socks_code=code) from exc
    except OSError as exc:
        raise DialError(f"SOCKS proxy {proxy} unreachable: {exc}", fault=Fault.TOR) from exc
    return trio.SocketStream(sock)
