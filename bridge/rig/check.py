"""``kaspa-tor-bridge rig check``: bring up N real kaspad nodes behind bridges over a private Tor
network, mine, measure, tear down; succeed only when every block reached every node.

The JSON report (``--json``)::

    {"ok": true, "nodes": 3, "topology": "ring", "blocks": 50, "bps": 10.0,
     "delivered": 150, "expected": 150, "missing": {},
     "propagation_ms": {"p50": …, "p99": …, "max": …, "n": …},
     "per_node": [{"name": "node0", "received": 50, "propagation_ms": {…},
                   "peers": [{"address": …, "outbound": …, "user_agent": …, "protocol": 10}]}],
     "ibd_s": 9.5, "ibd_blocks": 600,           # with --ibd: a late node syncs through Tor
     "kaspad": "kaspad 2.1.0", "timings": {"tor_s": …, "peering_s": …, "mine_s": …},
     "violations": {}}                          # kaspad log lines blaming what the bridge sent

Propagation is measured from the block-added notification of the node that mined the block to
the block-added notification of each other node (both on this machine's monotonic clock).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.rig.kaspad import KaspadError, kaspad_version
from bridge.rig.nodes import KaspadRig, mine, wait_synced

Echo = Callable[[str], Any]


def run_check(*, nodes: int, kaspad: Path, blocks: int, bps: float, topology: str = "ring",
              ibd: bool = False, ibd_blocks: int = 600, workdir: Path | None = None,
              via: str = "tor",
              settle: float = 120.0, echo: Echo = print) -> dict[str, Any]:
    """Run the whole check and return the report (``report["ok"]`` says whether it passed)."""
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="ktb-check-"))
    report: dict[str, Any] = {"ok": False, "nodes": nodes, "topology": topology, "via": via,
                              "blocks": blocks, "bps": bps, "kaspad": kaspad_version(kaspad),
                              "workdir": str(root)}
    t0 = time.monotonic()
    rig = KaspadRig(root, nodes=nodes, kaspad=kaspad, topology=topology, via=via,
                    late=1 if ibd else 0, echo=echo)
    try:
        rig.start(timeout=240.0)
        echo(f"mining {blocks} blocks at {bps:g} blocks/s on every node in turn …")
        rep = mine(rig, blocks=blocks, bps=bps, settle=settle, echo=echo)
        report.update(delivered=rep.delivered, expected=rep.expected, missing=rep.missing,
                      rejected=rep.rejected, achieved_bps=rep.achieved_bps,
                      propagation_ms=rep.propagation_ms, per_node=rep.per_node)
        rig.timings["mine_s"] = rep.mine_s
        echo(f"  delivered {rep.delivered}/{rep.expected} (node x block); propagation "
             f"p50 {rep.propagation_ms['p50']} ms, p99 {rep.propagation_ms['p99']} ms, "
             f"max {rep.propagation_ms['max']} ms")
        ok = rep.ok()
        if ibd:
            # kaspad starts IBD only when a new peer is far enough ahead; for a short gap it
            # fetches the missing blocks as orphans instead. So node0's chain is first extended to
            # ibd_blocks (made at up to 100 blocks/s, not counted in the deliveries above).
            with rig.nodes[0].kaspad.rpc(timeout=10.0) as r:
                have = int(r.dag_info().blockCount)
            if have < ibd_blocks:
                echo(f"extending node0's chain to {ibd_blocks} blocks for the IBD …")
                mine(rig, blocks=ibd_blocks - have, bps=100.0, on_nodes=[0], watch_nodes=[0],
                     settle=30.0)
            echo("starting a late node that syncs from node0 through bridge + Tor (IBD) …")
            t1 = time.monotonic()
            late = rig.add_late_node(dials=(0,))
            rig.wait_links([(late.index, 0)], timeout=180.0)
            synced = wait_synced(rig, late, rig.nodes[0], timeout=300.0, echo=echo)
            report["ibd_s"] = round(time.monotonic() - t1, 2)
            report["ibd_sync_after_peering_s"] = round(synced, 2)
            with late.kaspad.rpc(timeout=10.0) as r:
                report["ibd_blocks"] = int(r.dag_info().blockCount)
            echo(f"  late node synced {report['ibd_blocks']} blocks in {report['ibd_s']:.1f}s "
                 f"from its start ({synced:.1f}s after peering)")
        report["violations"] = rig.violations()
        if report["violations"]:
            echo("kaspad logged protocol violations: " + repr(report["violations"]))
            ok = False
        report["ok"] = ok
    except KaspadError as exc:
        report["error"] = str(exc)
        echo(f"check failed: {exc}")
    finally:
        report["timings"] = {k: round(v, 2) for k, v in rig.timings.items()}
        report["timings"]["total_s"] = round(time.monotonic() - t0, 2)
        rig.stop()
        echo("torn down")
    return report
