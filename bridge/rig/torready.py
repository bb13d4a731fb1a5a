"""When the private Tor network (:class:`bridge.rig.tornet.TorNetwork`) is usable: each tor's
bootstrap progress, the authorities' microdesc consensus, every relay knowing every other relay
(with ``SIGNAL RELOAD`` nudges for laggards) and the control ports coming up.

Functions taking the network as ``self``; :class:`~bridge.rig.tornet.TorNetwork` binds them as its
methods. Not here: layout and torrc (:mod:`bridge.rig.torrc`), starting and stopping processes.
"""

from __future__ import annotations

import contextlib
import http.client
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from bridge.rig.control import ControlError
from bridge.rig.torproc import (
    RigError,
    TorInstance,
    _tail,
)

if TYPE_CHECKING:  # tornet binds these functions as TorNetwork's methods
    from bridge.rig.tornet import TorNetwork

_CONSENSUS_PATH: Final = "/tor/status-vote/current/consensus-microdesc"


def bootstrap_progress(self: TorNetwork, inst: TorInstance) -> int | None:
    """``PROGRESS`` of ``GETINFO status/bootstrap-phase``, None if the port is not up."""
    try:
        with inst.controller(timeout=3.0) as ctl:
            return ctl.bootstrap_progress()
    except (OSError, ControlError):
        return None


def consensus_nicknames(self: TorNetwork) -> dict[str, list[str]]:
    """Nickname → flags of the current microdesc consensus (empty if none yet)."""
    for auth in self.authorities:
        proc = self._procs.get(auth.name)
        if proc is None or not proc.alive():
            continue
        try:
            conn = http.client.HTTPConnection("127.0.0.1", auth.dir_port, timeout=3.0)
            try:
                conn.request("GET", _CONSENSUS_PATH)
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace")
                if resp.status != 200:
                    continue
            finally:
                conn.close()
        except (OSError, http.client.HTTPException):
            continue
        nicks: dict[str, list[str]] = {}
        last = ""
        for line in body.splitlines():
            if line.startswith("r "):
                last = line.split()[1]
                nicks[last] = []
            elif line.startswith("s ") and last:
                nicks[last] = line.split()[1:]
        return nicks
    return {}


def _wait_consensus(self: TorNetwork, deadline: float) -> None:
    want = {i.name for i in self.relays}
    have: dict[str, list[str]] = {}
    while True:
        for inst in self.relays:
            self._check_alive(inst)
        have = self.consensus_nicknames()
        if want <= have.keys():
            return
        if time.monotonic() > deadline:
            raise RigError(
                f"relays missing from the consensus: {sorted(want - have.keys())} "
                f"(listed: {sorted(have)})", log_dir=self.workdir)
        time.sleep(0.5)


def _wait_bootstrapped(self: TorNetwork, insts: Iterable[TorInstance], deadline: float) -> None:
    pending = list(insts)
    last: dict[str, int | None] = {}
    while pending:
        for inst in list(pending):
            self._check_alive(inst)
            p = self.bootstrap_progress(inst)
            last[inst.name] = p
            if p == 100:
                pending.remove(inst)
        if not pending:
            return
        if time.monotonic() > deadline:
            detail = ", ".join(f"{i.name}={last.get(i.name)}%" for i in pending)
            raise RigError(f"not bootstrapped in time: {detail}; last log lines of "
                           f"{pending[0].name}:\n{_tail(pending[0].log_path)}",
                           log_dir=self.workdir)
        time.sleep(0.2)


def known_relays(self: TorNetwork, inst: TorInstance) -> set[str] | None:
    """Nicknames in ``inst``'s current consensus (``GETINFO ns/all``); None if unreachable."""
    try:
        with inst.controller(timeout=3.0) as ctl:
            ns = ctl.getinfo("ns/all")
    except (OSError, ControlError):
        return None
    return {line.split()[1] for line in ns.splitlines() if line.startswith("r ")}


def _relay_ready(self: TorNetwork, inst: TorInstance) -> bool:
    known = self.known_relays(inst)
    return known is not None and {i.name for i in self.relays} <= known


def _nudge_relays(self: TorNetwork, relays: Iterable[TorInstance]) -> list[TorInstance]:
    """Make relays whose consensus does not list every relay fetch it now; returns those.

    Non-authority relays ask for a consensus before the first vote, get 404s and back off
    (measured: up to 30 s after the network is otherwise ready; meanwhile an exit refuses
    streams from middles it does not know). SIGNAL RELOAD resets the download failure
    counters and fetches at once (measured: all relays up to date within 1-2 s). (Bootstrap
    100 % is not the criterion: in a network of 3 relays a relay cannot build circuits,
    as it does not use itself.)
    """
    lagging: list[TorInstance] = []
    for inst in relays:
        if self._relay_ready(inst):
            continue
        lagging.append(inst)
        with contextlib.suppress(OSError, ControlError), inst.controller(timeout=3.0) as ctl:
            ctl.command("SIGNAL RELOAD")
    return lagging


def _wait_relays(self: TorNetwork, deadline: float, nudge_every: float = 3.0) -> None:
    pending = self.relays
    while pending:
        for inst in pending:
            self._check_alive(inst)
        pending = self._nudge_relays(pending)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RigError("relays whose consensus lacks other relays: "
                           + ", ".join(i.name for i in pending), log_dir=self.workdir)
        step_end = min(deadline, time.monotonic() + nudge_every)
        while pending and time.monotonic() < step_end:
            time.sleep(0.2)
            pending = [i for i in pending if not self._relay_ready(i)]


def _wait_control(self: TorNetwork, inst: TorInstance, deadline: float) -> None:
    while self.bootstrap_progress(inst) is None:
        self._check_alive(inst)
        if time.monotonic() > deadline:
            raise RigError(f"control port of {inst.name} not up in time",
                           log_dir=self.workdir)
        time.sleep(0.1)
