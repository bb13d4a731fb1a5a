"""relay_bench's rig: the receivers of both load generators and, per path, what sits between
sender and receiver (nothing, socat, nghttpx, one bridge, two bridges).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.harness.bridgeproc import BridgeProc
from bench.harness.gens import EmuGen, RawGen
from bench.harness.tools import Nghttpx, Socat

PATHS = ("direct", "socat", "nghttpx", "bridge", "2 bridges")
#: opt-in diagnostic variant (raw only): one bridge whose child process replaces hyperframe's
#: Frame.__repr__ by a constant (h2 4.4 computes repr(frame) for every received frame).
PATH_CHEAP = "bridge, cheap frame repr"
#: opt-in (raw only): one bridge whose child runs with BRIDGE_FASTPATH=0, i.e. without the DATA
#: fast path and zlib-ng (bridge/core/fastpath.py): the "before" beside the as-shipped bridge
PATH_BEFORE = "bridge, BRIDGE_FASTPATH=0"


@dataclass
class Rig:
    gens: dict[str, Any]
    socats: dict[str, Socat]
    nghttpxs: dict[str, Nghttpx]
    bridges: dict[str, list[BridgeProc]]  # "<gen>/<path>" -> bridge processes

    def port(self, gen: str, path: str) -> int:
        if path == "direct":
            port: int = self.gens[gen].port
            return port
        if path == "socat":
            return self.socats[gen].port
        if path == "nghttpx":
            return self.nghttpxs[gen].port
        slot = self.bridges[f"{gen}/{path}"][0].slot
        assert slot is not None
        return slot

    def relay_procs(self, gen: str, path: str) -> list[Any]:
        if path == "socat":
            return [self.socats[gen]]
        if path == "nghttpx":
            return [self.nghttpxs[gen]]
        return list(self.bridges.get(f"{gen}/{path}", []))

    def prepare(self, gen: str, path: str) -> None:
        for b in self.bridges.get(f"{gen}/{path}", []):
            if b.slot is not None:
                b.wait_ready()


def start_rig(gens: list[str], cheap_repr: bool = False, before: bool = False) -> Rig:
    made: dict[str, Any] = {}
    socats: dict[str, Socat] = {}
    nghttpxs: dict[str, Nghttpx] = {}
    bridges: dict[str, list[BridgeProc]] = {}
    for g in gens:
        made[g] = EmuGen() if g == "emu" else RawGen()
        port = made[g].port
        socats[g] = Socat(port)
        nghttpxs[g] = Nghttpx(port)
        bridges[f"{g}/bridge"] = [BridgeProc({"role": "A", "target": ["127.0.0.1", port]})]
        b = BridgeProc({"role": "B", "kaspad": ["127.0.0.1", port]})
        a = BridgeProc({"role": "A", "target": ["127.0.0.1", b.inbound]})
        bridges[f"{g}/2 bridges"] = [a, b]
        if cheap_repr and g == "raw":
            bridges[f"{g}/{PATH_CHEAP}"] = [BridgeProc(
                {"role": "A", "target": ["127.0.0.1", port], "cheap_repr": True})]
        if before and g == "raw":
            bridges[f"{g}/{PATH_BEFORE}"] = [BridgeProc(
                {"role": "A", "target": ["127.0.0.1", port], "env": {"BRIDGE_FASTPATH": "0"}})]
    return Rig(made, socats, nghttpxs, bridges)


def stop_rig(rig: Rig) -> None:
    for procs in rig.bridges.values():
        for b in procs:
            b.stop()
    for s in rig.socats.values():
        s.stop()
    for n in rig.nghttpxs.values():
        n.stop()
    for g in rig.gens.values():
        g.stop()
