"""Tor bridge lines, parsed and checked (sans-IO): what users paste into ``tor.bridges``.

A line is ``[transport] <ip>:<port> [fingerprint] [key=value ...]`` (as bridges.torproject.org and
a bridge's ``obfs4_bridgeline.txt`` give them; a leading ``Bridge`` is accepted): tor needs an IP
address (a bridge is never looked up by name), the fingerprint is 40 hex digits, and the
key=value arguments go to the transport (obfs4's ``cert=`` and ``iat-mode=``, snowflake's
``url=``, ``fronts=``, ``ice=`` ...). Running the transports is :mod:`bridge.tor.transports`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

#: the pluggable transports the bridge can run for a managed tor
TRANSPORTS: tuple[str, ...] = ("meek_lite", "obfs4", "snowflake", "webtunnel")

_FINGERPRINT = re.compile(r"^[0-9A-Fa-f]{40}$")
_ARG = re.compile(r"^[A-Za-z0-9_-]+=\S*$")


class BridgeLineError(ValueError):
    """A bridge line that tor would refuse or that the bridge cannot run (the message says why
    and shows the line without its secrets)."""


@dataclass(frozen=True)
class BridgeLine:
    """One ``Bridge`` line, parsed. ``transport`` is None for a plain (vanilla) bridge."""

    transport: str | None
    address: str  # "<ip>:<port>" or "[<ipv6>]:<port>"
    fingerprint: str | None
    args: tuple[str, ...]  # key=value arguments for the transport

    @classmethod
    def parse(cls, text: str, *, transport: str | None = None) -> BridgeLine:
        """Parse a line as users paste it (a leading ``Bridge`` is accepted). ``transport``:
        the configured transport, used for lines that do not name one; a line naming another
        one is refused."""
        words = text.split()
        if words and words[0].lower() == "bridge":
            words = words[1:]
        if not words:
            raise BridgeLineError("empty bridge line")
        named = None
        if not _looks_like_address(words[0]):
            named, words = words[0], words[1:]
            if named not in TRANSPORTS:
                raise BridgeLineError(
                    f"bridge line {_redacted(text)!r}: unknown transport {named!r} (known: "
                    f"{', '.join(TRANSPORTS)}; a plain bridge starts with "
                    "its <ip>:<port>)")
            if transport is not None and named != transport:
                raise BridgeLineError(
                    f"bridge line {_redacted(text)!r} uses {named!r} but tor.transport is "
                    f"{transport!r}")
        if not words:
            raise BridgeLineError(f"bridge line {_redacted(text)!r}: no <ip>:<port>")
        address, rest = words[0], words[1:]
        _check_address(address, text)
        fingerprint = None
        if rest and _FINGERPRINT.match(rest[0]):
            fingerprint, rest = rest[0].upper(), rest[1:]
        for arg in rest:
            if not _ARG.match(arg):
                raise BridgeLineError(
                    f"bridge line {_redacted(text)!r}: {_redacted(arg)!r} is neither a "
                    "40-hex-digit fingerprint nor a key=value transport argument")
        kind = named or transport
        if kind is None and rest:
            raise BridgeLineError(f"bridge line {_redacted(text)!r}: transport arguments "
                                  "without a transport")
        return cls(kind, address, fingerprint, tuple(rest))

    def torrc_value(self) -> str:
        """The value of the torrc ``Bridge`` option for this line."""
        parts = [self.transport] if self.transport else []
        parts.append(self.address)
        if self.fingerprint:
            parts.append(self.fingerprint)
        return " ".join([*parts, *self.args])

    def redacted(self) -> str:
        """The line for logs and status: transport arguments (``cert=`` is a secret of the
        bridge operator, shared with its users) shown by name only."""
        parts = [self.transport] if self.transport else []
        parts.append(self.address)
        if self.fingerprint:
            parts.append(self.fingerprint[:8] + "…")
        return " ".join([*parts, *(a.split("=", 1)[0] + "=…" for a in self.args)])


def _looks_like_address(word: str) -> bool:
    return bool(re.match(r"^(\[[0-9A-Fa-f:.]+\]|[0-9.]+):\d+$", word))


def _check_address(address: str, text: str) -> None:
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise BridgeLineError(f"bridge line {_redacted(text)!r}: {address!r} is not "
                              "<ip>:<port> (tor dials bridges by IP address)") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BridgeLineError(f"bridge line {_redacted(text)!r}: bad port in {address!r}")


def _redacted(text: str) -> str:
    return " ".join(w.split("=", 1)[0] + "=…" if "=" in w else w for w in text.split())[:200]


