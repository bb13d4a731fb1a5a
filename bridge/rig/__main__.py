"""``python3 -m bridge.rig up|down|status``: the private Tor network as a command.

``up --dir D`` starts a network under ``D``, writes ``D/rig-state.json`` (ports, pids, cookie
paths, timings) and stays in the foreground until SIGINT/SIGTERM (then stops everything), or
returns at once with ``--detach`` (stop it later with ``down --dir D``). Run it in a network
namespace with only loopback, e.g. ``unshare -n sh -c 'ip link set lo up; python3 -m bridge.rig
up --dir /tmp/rig'``; note that a detached network lives in that namespace.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType

from bridge.rig.tornet import InstanceStatus, RigError, TorNetwork


def up(
    workdir: Path,
    *,
    authorities: int = 3,
    relays: int = 3,
    clients: int = 1,
    onion_hosts: int = 1,
    control_password: str | None = None,
    base_port: int | None = None,
    voting_interval: int = 10,
    timeout: float = 90.0,
    detach: bool = False,
) -> TorNetwork:
    """Start a network (processes outlive this one with ``detach``)."""
    net = TorNetwork(
        workdir,
        authorities=authorities,
        relays=relays,
        clients=clients,
        onion_hosts=onion_hosts,
        exit_relays=1 if relays > 0 else 0,
        control_password=control_password,
        base_port=base_port,
        voting_interval=voting_interval,
        die_with_parent=not detach,
    )
    net.start(timeout=timeout)
    return net


def down(workdir: Path) -> None:
    """Stop a network recorded in ``workdir``'s state file."""
    TorNetwork.attach(workdir).stop()


def summary(net: TorNetwork, status: dict[str, InstanceStatus] | None = None) -> str:
    lines = [f"private Tor network in {net.workdir} (state: {net.state_path})"]
    for st in (status if status is not None else net.status()).values():
        ports = [f"control={st['control_port']}"]
        if st["socks_port"] is not None:
            ports.append(f"socks={st['socks_port']}")
        if st["or_port"] is not None:
            ports.append(f"or={st['or_port']}")
        state = "up" if st["alive"] else "DOWN"
        boot = f"{st['bootstrap']}%" if st["bootstrap"] is not None else "-"
        lines.append(f"  {st['name']:<8} {st['role']:<10} pid={st['pid']} {state:<4} "
                     f"bootstrap={boot:<4} {' '.join(ports)}")
    if net.timings:
        lines.append("  timings: " + ", ".join(f"{k}={v:.1f}s" for k, v in net.timings.items()))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m bridge.rig", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="start a private network")
    u.add_argument("--dir", type=Path, required=True)
    u.add_argument("--authorities", type=int, default=3)
    u.add_argument("--relays", type=int, default=3, help="non-authority relays (first is an exit)")
    u.add_argument("--clients", type=int, default=1)
    u.add_argument("--onion-hosts", type=int, default=1)
    u.add_argument("--control-password", default=None)
    u.add_argument("--base-port", type=int, default=None)
    u.add_argument("--voting-interval", type=int, default=10)
    u.add_argument("--timeout", type=float, default=90.0)
    u.add_argument("--detach", action="store_true", help="leave it running and return")
    d = sub.add_parser("down", help="stop a network started with up --detach")
    d.add_argument("--dir", type=Path, required=True)
    s = sub.add_parser("status", help="show pids, liveness and bootstrap of every tor")
    s.add_argument("--dir", type=Path, required=True)
    s.add_argument("--json", action="store_true")
    return p


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "up":
            if not args.detach:
                signal.signal(signal.SIGTERM, _raise_interrupt)
            try:
                net = up(args.dir, authorities=args.authorities, relays=args.relays,
                         clients=args.clients, onion_hosts=args.onion_hosts,
                         control_password=args.control_password, base_port=args.base_port,
                         voting_interval=args.voting_interval, timeout=args.timeout,
                         detach=args.detach)
            except KeyboardInterrupt:
                return 130
            print(summary(net), flush=True)
            if args.detach:
                return 0
            print("running; SIGINT/SIGTERM stops it", flush=True)
            try:
                while True:
                    signal.pause()
            except KeyboardInterrupt:
                pass
            finally:
                net.stop()
            return 0
        if args.cmd == "down":
            down(args.dir)
            return 0
        net = TorNetwork.attach(args.dir)
        status = net.status()
        if args.json:
            print(json.dumps({"state": net.state(), "status": status}, indent=2))
        else:
            print(summary(net, status))
        return 0 if all(st["alive"] for st in status.values()) else 1
    except RigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
