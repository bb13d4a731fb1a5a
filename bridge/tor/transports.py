"""Pluggable transports for a bridge-managed tor (censored networks).

Where Tor itself is blocked, tor reaches the network through *bridges*: unlisted relays, usually
behind a pluggable transport that disguises the traffic (obfs4 looks like random bytes,
snowflake goes through WebRTC proxies, webtunnel looks like HTTPS). tor runs the transport as a
child process (``ClientTransportPlugin <name> exec <binary>``) and dials each ``Bridge`` line
through it. The lines themselves are parsed by :mod:`bridge.core.bridges`; this module finds the
transport binaries and renders the torrc lines that :mod:`bridge.tor.managed` writes.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence

from bridge.core.bridges import BridgeLine, BridgeLineError

#: the binaries that provide each transport, first found wins (Debian packages: obfs4proxy,
#: lyrebird (obfs4proxy's successor), snowflake-client, webtunnel)
TRANSPORT_BINARIES: dict[str, tuple[str, ...]] = {
    "obfs4": ("lyrebird", "obfs4proxy"),
    "meek_lite": ("lyrebird", "obfs4proxy"),
    "webtunnel": ("lyrebird", "webtunnel-client"),
    "snowflake": ("snowflake-client",),
}
#: the Debian package of each transport's binaries (named in the error when none is found)
DEBIAN_PACKAGES: dict[str, str] = {"obfs4": "obfs4proxy", "meek_lite": "obfs4proxy",
                                   "webtunnel": "webtunnel", "snowflake": "snowflake-client"}


def find_transport_binary(transport: str, override: str | None = None) -> str | None:
    """The executable for ``transport``: ``override`` if given (a path or a name on PATH),
    else the first of :data:`TRANSPORT_BINARIES` found on ``PATH``; None if none is."""
    if override:
        return shutil.which(override)
    for name in TRANSPORT_BINARIES.get(transport, ()):
        found = shutil.which(name)
        if found:
            return found
    return None


def torrc_lines(bridges: Sequence[BridgeLine], plugins: dict[str, str]) -> list[str]:
    """``UseBridges``, one ``ClientTransportPlugin`` per transport in use (``plugins`` maps a
    transport to its binary) and one ``Bridge`` per line. Empty without bridges."""
    if not bridges:
        return []
    used = sorted({b.transport for b in bridges if b.transport})
    missing = [t for t in used if t not in plugins]
    if missing:
        raise BridgeLineError(f"no binary for transport {', '.join(missing)}")
    lines = ["UseBridges 1"]
    lines += [f"ClientTransportPlugin {t} exec {plugins[t]}" for t in used]
    lines += [f"Bridge {b.torrc_value()}" for b in bridges]
    return lines
