"""A private Tor network on loopback: directory authorities, relays, clients and onion hosts.

Follows ``docs/tor-test-network.md``: keys are generated on the fly with
``tor-gencert`` and ``tor --list-fingerprint``, start is staged (authorities and relays first,
then, once every relay is listed in the microdescriptor consensus, the clients and onion hosts,
which are polled with ``GETINFO status/bootstrap-phase`` until ``PROGRESS=100``). Exits resolve
names through a loopback DNS stub (:mod:`bridge.rig.dnsstub`: ``*.test`` → 127.0.0.1).

Run it inside a network namespace with only loopback (``unshare -n``): exits accept ``*:*`` (the
microdescriptor policy summary must not be reject-all) and rely on the namespace for containment;
as a second fence, exit connections are bound to 127.0.0.1 (``OutboundBindAddressExit``).

Beyond that doc: non-authority relays ask for a consensus before the first vote, get 404s and
back off, so they could stay without one for up to 30 s after clients were ready; meanwhile an
exit refuses streams from middles it does not know ("Attempt by ... to open a stream from unknown
relay"; ~1 in 10 early exit streams failed). Hence ``SIGNAL RELOAD`` to lagging relays once the
consensus is out (they then fetch it within 1-2 s), readiness includes every relay's consensus
listing all relays, and exits run
with ``RefuseUnknownExits 0`` as a second guard.

Usage::

    net = TorNetwork(tmp / "tornet", control_password="pw")
    net.start()                       # ~12-20 s; raises RigError naming the log directory
    socks = net.client.socks_port     # SOCKS5 through the network; "*.test" resolves to 127.0.0.1
    ctl = net.onion_host.control_port # ADD_ONION here (cookie net.onion_host.cookie_path)
    net.restart(net.onion_host, hard=True)
    net.stop()

Processes are children of the process that calls :meth:`TorNetwork.start` and, unless
``die_with_parent=False``, receive SIGTERM when it dies (``PR_SET_PDEATHSIG``, armed from a
long-lived spawner thread so that starting from a worker thread is safe) and are stopped from an
``atexit`` hook as well.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import bridge.rig.torready as torready
from bridge.rig.torproc import (
    AUTHORITY,
    CLIENT,
    EXIT,
    ONION_HOST,
    RELAY,
    ROLES,
    InstanceStatus,
    RigError,
    TorInstance,
    _Proc,
    _spawn,
    _tail,
    find_binary,
    find_tor,
    free_ports,
    is_reserved,
    reserve,
)
from bridge.rig.torrc import (
    NetworkConfig,
    _Authority,
    generate_authority_keys,
    layout,
    render_torrc,
)

__all__ = [
    "AUTHORITY",
    "CLIENT",
    "EXIT",
    "ONION_HOST",
    "RELAY",
    "ROLES",
    "STATE_FILE",
    "InstanceStatus",
    "NetworkConfig",
    "RigError",
    "TorInstance",
    "TorNetwork",
    "find_binary",
    "find_tor",
    "free_ports",
    "is_reserved",
    "reserve",
]

STATE_FILE: Final = "rig-state.json"


_live_networks: weakref.WeakSet[TorNetwork] = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    for net in list(_live_networks):
        with contextlib.suppress(Exception):
            net.stop()


# --------------------------------------------------------------------------------------------
# the network


class TorNetwork:
    """A private Tor network under ``workdir`` (one sub-directory per tor).

    Counts are configurable; the first ``exit_authorities`` authorities and the first
    ``exit_relays`` relays are exits. ``extra_torrc`` maps a role (or an instance name) to extra
    torrc lines. Ports come from a bind-to-0 probe unless ``base_port`` is given (then
    consecutive ports from there). ``die_with_parent=False`` leaves the processes running after
    this Python process exits (the CLI's ``--detach``).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        authorities: int = 3,
        relays: int = 3,
        clients: int = 1,
        onion_hosts: int = 1,
        exit_authorities: int = 1,
        exit_relays: int = 1,
        control_password: str | None = None,
        base_port: int | None = None,
        voting_interval: int = 10,
        extra_torrc: dict[str, list[str]] | None = None,
        tor_binary: str | None = None,
        die_with_parent: bool = True,
    ) -> None:
        if authorities < 1:
            raise ValueError("need at least one directory authority")
        if authorities + relays < 3:
            raise ValueError("need at least 3 relays in total (authorities count) for circuits")
        if not 0 <= exit_authorities <= authorities or not 0 <= exit_relays <= relays:
            raise ValueError("more exits than relays of that kind")
        if exit_authorities + exit_relays < 1:
            raise ValueError("need at least one exit")
        if clients < 0 or onion_hosts < 0:
            raise ValueError("negative instance count")
        if voting_interval < 10:
            raise ValueError("voting_interval below 10 s is not supported by tor")
        self.workdir = Path(workdir).resolve()
        self.config = NetworkConfig(
            authorities=authorities,
            relays=relays,
            clients=clients,
            onion_hosts=onion_hosts,
            exit_authorities=exit_authorities,
            exit_relays=exit_relays,
            control_password=control_password,
            base_port=base_port,
            voting_interval=voting_interval,
            extra_torrc=dict(extra_torrc or {}),
        )
        tor = tor_binary or find_tor()
        if tor is None:
            raise RigError("the `tor` binary was not found (apt-get install tor)")
        self.tor_binary = tor
        self.die_with_parent = die_with_parent
        self.timings: dict[str, float] = {}
        self.dns_port: int | None = None
        self._procs: dict[str, _Proc] = {}
        self._dns: _Proc | None = None
        self._started = False
        self._lock = threading.RLock()
        self.instances: list[TorInstance] = self._layout()

    # -- layout ---------------------------------------------------------------------------

    def _layout(self) -> list[TorInstance]:
        return layout(self.config, self.workdir)

    def by_role(self, *roles: str) -> list[TorInstance]:
        return [i for i in self.instances if i.role in roles]

    @property
    def authorities(self) -> list[TorInstance]:
        return self.by_role(AUTHORITY)

    @property
    def relays(self) -> list[TorInstance]:
        """Every relay, authorities included."""
        return [i for i in self.instances if i.is_relay]

    @property
    def exits(self) -> list[TorInstance]:
        return [i for i in self.instances if i.exit]

    @property
    def clients(self) -> list[TorInstance]:
        return self.by_role(CLIENT)

    @property
    def onion_hosts(self) -> list[TorInstance]:
        return self.by_role(ONION_HOST)

    @property
    def client(self) -> TorInstance:
        """The first client (convenience)."""
        return self.clients[0]

    @property
    def onion_host(self) -> TorInstance:
        """The first onion host (convenience)."""
        return self.onion_hosts[0]

    def instance(self, name: str) -> TorInstance:
        for i in self.instances:
            if i.name == name:
                return i
        raise KeyError(name)

    @property
    def state_path(self) -> Path:
        return self.workdir / STATE_FILE

    # -- preparation ----------------------------------------------------------------------

    def _run(self, argv: list[str], *, stdin: bytes = b"", timeout: float = 30.0) -> str:
        try:
            res = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout,
                                 check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RigError(f"{argv[0]} failed: {exc}") from exc
        if res.returncode != 0:
            raise RigError(f"{' '.join(argv)} exited {res.returncode}: "
                           f"{res.stderr.decode(errors='replace').strip()}")
        return res.stdout.decode(errors="replace")

    def _keygen(self) -> dict[str, _Authority]:
        return generate_authority_keys(self)

    def _hash_password(self) -> str | None:
        pw = self.config.control_password
        if pw is None:
            return None
        out = self._run([self.tor_binary, "--quiet", "--hash-password", pw])
        for line in out.splitlines():
            if line.startswith("16:"):
                return line.strip()
        raise RigError(f"tor --hash-password printed no hash: {out!r}")

    def _torrc(self, inst: TorInstance, dirauth_lines: list[str], hashed: str | None,
               resolv: Path) -> list[str]:
        return render_torrc(self.config, inst, dirauth_lines, hashed, resolv)

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for inst in self.instances:
            inst.home.mkdir(parents=True, exist_ok=True)
            inst.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            inst.data_dir.chmod(0o700)
        auths = self._keygen()
        hashed = self._hash_password()
        dirauth = [
            f"DirAuthority {a.name} orport={a.or_port} no-v2 v3ident={auths[a.name].v3ident} "
            f"127.0.0.1:{a.dir_port} {auths[a.name].fingerprint}"
            for a in self.authorities
        ]
        resolv = self.workdir / "resolv.conf"
        for inst in self.instances:
            body = self._torrc(inst, dirauth, hashed, resolv)
            inst.torrc.write_text("\n".join(body) + "\n")

    # -- processes ------------------------------------------------------------------------

    def _start_dns(self) -> None:
        port = 0
        if self.config.base_port is not None:
            port = self.config.base_port + 999
        log = (self.workdir / "dnsstub.log").open("ab")
        try:
            popen = _spawn([sys.executable, "-m", "bridge.rig.dnsstub", "--port", str(port)],
                           die_with_parent=self.die_with_parent, stdout=subprocess.PIPE,
                           stderr=log, stdin=subprocess.DEVNULL, cwd=str(_project_root()))
        finally:
            log.close()
        assert popen.stdout is not None
        line = popen.stdout.readline().decode().split()
        popen.stdout.close()
        if len(line) != 2 or line[0] != "PORT":
            popen.kill()
            popen.wait()
            raise RigError(f"DNS stub failed to start: {_tail(self.workdir / 'dnsstub.log')}",
                           log_dir=self.workdir)
        self.dns_port = int(line[1])
        self._dns = _Proc(popen.pid, "bridge.rig.dnsstub", popen)
        (self.workdir / "resolv.conf").write_text(f"nameserver 127.0.0.1:{self.dns_port}\n")

    def _launch(self, inst: TorInstance) -> None:
        out = (inst.home / "stdout.log").open("ab")
        try:
            popen = _spawn([self.tor_binary, "-f", str(inst.torrc), "--defaults-torrc",
                            str(self.workdir / "empty-torrc")],
                           die_with_parent=self.die_with_parent, stdin=subprocess.DEVNULL,
                           stdout=out, stderr=subprocess.STDOUT)
        finally:
            out.close()
        self._procs[inst.name] = _Proc(popen.pid, str(inst.torrc), popen)

    def _check_alive(self, inst: TorInstance) -> None:
        proc = self._procs.get(inst.name)
        if proc is None or not proc.alive():
            rc = proc.returncode if proc is not None else None
            raise RigError(
                f"tor {inst.name} ({inst.role}) exited (rc={rc}); last log lines:\n"
                f"{_tail(inst.log_path)}\n--- stdout:\n{_tail(inst.home / 'stdout.log')}",
                log_dir=self.workdir,
            )

    # -- readiness (bridge.rig.torready) ------------------------------------------------

    bootstrap_progress = torready.bootstrap_progress
    consensus_nicknames = torready.consensus_nicknames
    _wait_consensus = torready._wait_consensus
    _wait_bootstrapped = torready._wait_bootstrapped
    known_relays = torready.known_relays
    _relay_ready = torready._relay_ready
    _nudge_relays = torready._nudge_relays
    _wait_relays = torready._wait_relays
    _wait_control = torready._wait_control

    # -- public lifecycle -----------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Generate keys, start everything staged; return once the network is usable.

        Stages: keys; authorities + relays; wait until the microdesc consensus lists every
        relay; nudge relays still without a consensus (SIGNAL RELOAD); clients + onion hosts;
        wait for them to report ``PROGRESS=100`` and for every relay's consensus to list all
        relays.

        On failure everything started so far is stopped and :class:`RigError` names the logs.
        """
        with self._lock:
            if self._started:
                raise RigError("network already started")
            self._started = True
            if self.die_with_parent:  # a detached network must outlive this process
                _live_networks.add(self)
            t0 = time.monotonic()
            deadline = t0 + timeout
            try:
                self._prepare()
                self._start_dns()
                t1 = time.monotonic()
                self.timings["keygen"] = t1 - t0
                for inst in self.relays:
                    self._launch(inst)
                self._write_state()
                self._wait_consensus(deadline)
                t2 = time.monotonic()
                self.timings["relays_in_consensus"] = t2 - t1
                self._nudge_relays(self.relays)
                late = self.clients + self.onion_hosts
                for inst in late:
                    self._launch(inst)
                self._write_state()
                self._wait_bootstrapped(late, deadline)
                t3 = time.monotonic()
                self.timings["clients_bootstrapped"] = t3 - t2
                self._wait_relays(deadline)
                self.timings["relays_up_to_date"] = time.monotonic() - t2
                t3 = time.monotonic()
                self.timings["launch_to_ready"] = t3 - t1
                self.timings["total"] = t3 - t0
                self._write_state()
            except BaseException:
                self.stop()
                raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every process (SIGTERM, SIGKILL after ``timeout``). Idempotent."""
        with self._lock:
            procs = list(self._procs.values())
            if self._dns is not None:
                procs.append(self._dns)
            for p in procs:
                p.send(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for p in procs:
                if not p.wait(max(0.0, deadline - time.monotonic())):
                    p.send(signal.SIGKILL)
                    p.wait(5.0)
            self._procs.clear()
            self._dns = None
            _live_networks.discard(self)
            if self._started and self.workdir.exists():
                with contextlib.suppress(OSError):
                    self._write_state()

    def stop_instance(self, inst: TorInstance, *, hard: bool, timeout: float = 10.0) -> None:
        """SIGKILL (``hard``) or SIGTERM one tor and wait until it is gone."""
        with self._lock:
            proc = self._procs.pop(inst.name, None)
            if proc is None:
                return
            proc.send(signal.SIGKILL if hard else signal.SIGTERM)
            if not proc.wait(timeout):
                proc.send(signal.SIGKILL)
                proc.wait(5.0)
            self._write_state()

    def start_instance(self, inst: TorInstance, *, wait: bool = True,
                       timeout: float = 60.0) -> None:
        """Start one tor again with its torrc, data directory and ports.

        With ``wait``, returns once a client/onion host is at 100 % (a relay: once its control
        port answers).
        """
        with self._lock:
            proc = self._procs.get(inst.name)
            if proc is not None and proc.alive():
                raise RigError(f"{inst.name} is already running")
            self._launch(inst)
            self._write_state()
        if wait:
            deadline = time.monotonic() + timeout
            if inst.role in (CLIENT, ONION_HOST):
                self._wait_bootstrapped([inst], deadline)
            else:
                self._wait_control(inst, deadline)

    def restart(self, inst: TorInstance, *, hard: bool, timeout: float = 60.0) -> float:
        """Stop (SIGKILL if ``hard``) and start again; returns seconds until ready again."""
        t0 = time.monotonic()
        self.stop_instance(inst, hard=hard)
        self.start_instance(inst, wait=True, timeout=timeout)
        return time.monotonic() - t0

    def pid(self, inst: TorInstance) -> int | None:
        proc = self._procs.get(inst.name)
        return proc.pid if proc is not None and proc.alive() else None

    def status(self) -> dict[str, InstanceStatus]:
        """Per instance: pid, whether it is alive, bootstrap percentage (None if unreachable)."""
        out: dict[str, InstanceStatus] = {}
        for inst in self.instances:
            proc = self._procs.get(inst.name)
            alive = proc is not None and proc.alive()
            out[inst.name] = InstanceStatus(
                name=inst.name,
                role=inst.role,
                pid=proc.pid if proc is not None else None,
                alive=alive,
                bootstrap=self.bootstrap_progress(inst) if alive else None,
                control_port=inst.control_port,
                socks_port=inst.socks_port,
                or_port=inst.or_port,
            )
        return out

    @property
    def running(self) -> bool:
        return any(p.alive() for p in self._procs.values())

    # -- state file -----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "version": 1,
            "workdir": str(self.workdir),
            "tor_binary": self.tor_binary,
            "config": asdict(self.config),
            "dns": {"port": self.dns_port,
                    "pid": self._dns.pid if self._dns is not None else None},
            "timings": self.timings,
            "instances": [
                {**inst.to_json(), "pid": self.pid(inst)} for inst in self.instances
            ],
        }

    def _write_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.state(), f, indent=2)
            f.write("\n")
        tmp.replace(self.state_path)

    @classmethod
    def attach(cls, workdir: Path) -> TorNetwork:
        """A handle on a network started elsewhere (``up --detach``), from its state file."""
        path = Path(workdir).resolve() / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise RigError(f"no rig state file at {path}") from exc
        net = cls.__new__(cls)
        net.workdir = Path(state["workdir"])
        cfg = state["config"]
        net.config = NetworkConfig(**cfg)
        net.tor_binary = state["tor_binary"]
        net.die_with_parent = False
        net.timings = dict(state.get("timings", {}))
        net.dns_port = state["dns"]["port"]
        net._lock = threading.RLock()
        net._started = True
        net.instances = [TorInstance.from_json({k: v for k, v in d.items() if k != "pid"})
                         for d in state["instances"]]
        net._procs = {}
        for d in state["instances"]:
            if d.get("pid"):
                net._procs[d["name"]] = _Proc(int(d["pid"]), d["torrc"])
        dpid = state["dns"].get("pid")
        net._dns = _Proc(int(dpid), "bridge.rig.dnsstub") if dpid else None
        return net


def _project_root() -> Path:
    """Directory from which ``python -m bridge.rig.dnsstub`` imports this package."""
    return Path(__file__).resolve().parents[2]
