"""What the private Tor network (:mod:`bridge.rig.tornet`) writes before it starts any tor: its
:class:`NetworkConfig`, the instance layout (names, roles, ports, paths), the directory
authorities' keys and certificates (``tor-gencert``) and each instance's torrc lines.

Files and values only; starting, waiting and stopping are :class:`bridge.rig.tornet.TorNetwork`'s.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.rig.torproc import (
    AUTHORITY,
    CLIENT,
    EXIT,
    ONION_HOST,
    RELAY,
    RigError,
    TorInstance,
    find_binary,
    free_ports,
)

if TYPE_CHECKING:  # tornet imports this module
    from bridge.rig.tornet import TorNetwork


@dataclass
class _Authority:
    v3ident: str = ""
    fingerprint: str = ""


@dataclass
class NetworkConfig:
    authorities: int = 3
    relays: int = 3
    clients: int = 1
    onion_hosts: int = 1
    exit_authorities: int = 1
    exit_relays: int = 1
    control_password: str | None = None
    base_port: int | None = None
    voting_interval: int = 10
    extra_torrc: dict[str, list[str]] = field(default_factory=dict)


def layout(config: NetworkConfig, workdir: Path) -> list[TorInstance]:
    """Every instance of a network with ``config`` under ``workdir``, ports assigned."""
    c = config
    n_relays = c.authorities + c.relays
    n_ports = c.authorities * 3 + c.relays * 2 + c.clients * 2 + c.onion_hosts
    if c.base_port is not None:
        ports = iter(range(c.base_port, c.base_port + n_ports))
    else:
        ports = iter(free_ports(n_ports))
    out: list[TorInstance] = []

    def make(name: str, role: str, *, socks: bool, orport: bool, dirport: bool,
             exit_: bool) -> TorInstance:
        home = workdir / name
        data = home / "data"
        return TorInstance(
            name=name,
            role=role,
            data_dir=data,
            control_port=next(ports),
            socks_port=next(ports) if socks else None,
            or_port=next(ports) if orport else None,
            cookie_path=data / "control_auth_cookie",
            control_password=None if role in (AUTHORITY, RELAY, EXIT)
            else c.control_password,
            torrc=home / "torrc",
            log_path=home / "notice.log",
            dir_port=next(ports) if dirport else None,
            exit=exit_,
        )

    for i in range(c.authorities):
        out.append(make(f"auth{i}", AUTHORITY, socks=False, orport=True, dirport=True,
                        exit_=i < c.exit_authorities))
    for i in range(c.relays):
        is_exit = i < c.exit_relays
        out.append(make(f"exit{i}" if is_exit else f"relay{i - c.exit_relays}",
                        EXIT if is_exit else RELAY, socks=False, orport=True,
                        dirport=False, exit_=is_exit))
    for i in range(c.clients):
        out.append(make(f"client{i}", CLIENT, socks=True, orport=False, dirport=False,
                        exit_=False))
    for i in range(c.onion_hosts):
        out.append(make(f"onion{i}", ONION_HOST, socks=False, orport=False, dirport=False,
                        exit_=False))
    assert sum(1 for i in out if i.is_relay) == n_relays
    return out


def generate_authority_keys(net: TorNetwork) -> dict[str, _Authority]:
    """Identity, signing key and certificate (``tor-gencert``) and the relay fingerprint of
    every authority of ``net``."""
    gencert = find_binary("tor-gencert")
    if gencert is None:
        raise RigError("`tor-gencert` not found (it ships with Debian's tor package)")
    auths = net.authorities
    result: dict[str, _Authority] = {a.name: _Authority() for a in auths}
    empty = net.workdir / "empty-torrc"
    empty.write_text("")

    def gencert_one(a: TorInstance) -> None:
        keys = a.data_dir / "keys"
        keys.mkdir(mode=0o700, parents=True, exist_ok=True)
        net._run([gencert, "--create-identity-key", "--passphrase-fd", "0",
                   "-i", str(keys / "authority_identity_key"),
                   "-s", str(keys / "authority_signing_key"),
                   "-c", str(keys / "authority_certificate"),
                   "-m", "12", "-a", f"127.0.0.1:{a.dir_port}"], stdin=b"")
        for line in (keys / "authority_certificate").read_text().splitlines():
            if line.startswith("fingerprint "):
                result[a.name].v3ident = line.split()[1]
        if not result[a.name].v3ident:
            raise RigError(f"no fingerprint line in {keys / 'authority_certificate'}")

    def fingerprint_one(a: TorInstance) -> None:
        net._run([net.tor_binary, "--ignore-missing-torrc", "-f", str(empty),
                   "--defaults-torrc", str(empty), "--DataDirectory", str(a.data_dir),
                   "--ORPort", "1", "--Nickname", a.name, "--Log", "err stderr",
                   "--list-fingerprint"])
        fp = (a.data_dir / "fingerprint").read_text().split()
        if len(fp) != 2:
            raise RigError(f"unexpected {a.data_dir / 'fingerprint'}: {fp!r}")
        result[a.name].fingerprint = fp[1]

    with concurrent.futures.ThreadPoolExecutor(max(1, 2 * len(auths))) as pool:
        futures = [pool.submit(fn, a) for a in auths for fn in (gencert_one, fingerprint_one)]
        for fut in futures:
            fut.result()
    return result


def render_torrc(config: NetworkConfig, inst: TorInstance, dirauth_lines: list[str],
                 hashed: str | None, resolv: Path) -> list[str]:
    """The torrc lines of ``inst`` in a network with ``config``."""
    c = config
    lines = [
        "TestingTorNetwork 1",
        f"DataDirectory {inst.data_dir}",
        f"Nickname {inst.name}",
        "RunAsDaemon 0",
        f"Log notice file {inst.log_path}",
        "SafeLogging 0",
        f"ControlPort 127.0.0.1:{inst.control_port}",
        "CookieAuthentication 1",
        f"CookieAuthFile {inst.cookie_path}",
        "PathsNeededToBuildCircuits 0.67",
        "ShutdownWaitLength 0",
        f"ServerDNSResolvConfFile {resolv}",
        "ServerDNSDetectHijacking 0",
        "ServerDNSTestAddresses",
        *dirauth_lines,
    ]
    if inst.is_relay:
        lines += [
            "SocksPort 0",
            f"ORPort 127.0.0.1:{inst.or_port}",
            "Address 127.0.0.1",
            "OutboundBindAddress 127.0.0.1",
            "ContactInfo kaspa-tor-bridge test rig <rig@localhost>",
            "AssumeReachable 1",
        ]
        if inst.role != AUTHORITY:
            lines.append("DirCache 0")
        if inst.exit:
            lines += [
                "ExitRelay 1",
                # An exit whose consensus lags behind (relays start with the first, partial
                # one) refuses streams from middles it does not know yet ("open a stream
                # from unknown relay"), which made ~1 in 10 early exit streams fail.
                "RefuseUnknownExits 0",
                "ExitPolicyRejectPrivate 0",
                "OutboundBindAddressExit 127.0.0.1",
                "ExitPolicy accept 127.0.0.0/8:*",
                "ExitPolicy accept *:*",
                "ExitPolicy reject *:*",
            ]
        else:
            lines += ["ExitRelay 0", "ExitPolicy reject *:*"]
    if inst.role == AUTHORITY:
        iv = c.voting_interval
        delay = max(2, iv // 5)
        lines += [
            f"DirPort 127.0.0.1:{inst.dir_port}",
            "AuthoritativeDirectory 1",
            "V3AuthoritativeDirectory 1",
            f"TestingV3AuthInitialVotingInterval {iv}",
            f"TestingV3AuthInitialVoteDelay {delay}",
            f"TestingV3AuthInitialDistDelay {delay}",
            f"V3AuthVotingInterval {iv}",
            f"V3AuthVoteDelay {delay}",
            f"V3AuthDistDelay {delay}",
            "V3AuthNIntervalsValid 2",
        ]
    if inst.role == CLIENT:
        lines.append(f"SocksPort 127.0.0.1:{inst.socks_port}")
    if inst.role == ONION_HOST:
        lines.append("SocksPort 0")
    if inst.role in (CLIENT, ONION_HOST) and hashed is not None:
        lines.append(f"HashedControlPassword {hashed}")
    lines += c.extra_torrc.get(inst.role, []) + c.extra_torrc.get(inst.name, [])
    return lines
