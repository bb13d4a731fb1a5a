"""Fixtures of the real-kaspad tier (marker ``kaspad``).

``kaspad_bin``: the kaspad binary (``KTB_KASPAD``, else the cached pinned build that
``scripts/kaspad.sh`` makes; ``scripts/test.sh`` runs it before the suite). Missing: skipped, or
a failure when ``CI`` is set.

``kaspad_rig`` (module scope): two real simnet kaspads, each behind its own bridge daemon (the real
CLI in a child process), reaching each other only through onions of the session's private Tor
network (node0 dials node1's onion through its slot). Each node's onion is hosted by its own tor
(the session network's onion hosts 1 and 2; onion host 0 stays with the emulator tests).

Every test of the tier ends with :func:`assert_no_violations`: kaspad's own log must show no
disconnect or ban caused by what a bridge sent; the failure message carries the kaspad log lines
that matter.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.rig.kaspad import find_kaspad
from bridge.rig.nodes import KaspadRig
from bridge.rig.tornet import TorNetwork

HERE = Path(__file__).resolve().parent

#: figures the tier measured, printed at the end of the session (restart recovery times, ...)
MEASURED: dict[str, float | str] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.kaspad)
            item.add_marker(pytest.mark.tor)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASURED:
        terminalreporter.write_sep("-", "real kaspad tier: measured")
        for k, v in MEASURED.items():
            terminalreporter.write_line(f"{k}: {v}")


@pytest.fixture(scope="session")
def kaspad_bin() -> Path:
    found = find_kaspad()
    if found is None:
        msg = ("no kaspad binary: run scripts/kaspad.sh (cargo install into the cache) or set "
               "KTB_KASPAD=/path/to/kaspad")
        if os.environ.get("CI"):
            pytest.fail(f"{msg}; CI is set, so this is an error, not a skip", pytrace=False)
        pytest.skip(msg)
    return found


@pytest.fixture(scope="module")
def kaspad_rig(kaspad_bin: Path, tornet: TorNetwork,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[KaspadRig]:
    hosts = tornet.onion_hosts[1:] or tornet.onion_hosts
    rig = KaspadRig(tmp_path_factory.mktemp("kaspad-rig"), nodes=2, kaspad=kaspad_bin,
                    topology="ring", tor=tornet, onion_hosts=hosts, echo=print)
    try:
        rig.start(timeout=180.0)
    except BaseException:
        diag = rig.diagnose()
        rig.stop()
        pytest.fail(f"the two-node kaspad rig did not come up:\n{diag}", pytrace=False)
    MEASURED["two nodes: peering after start (s)"] = round(rig.timings["peering_s"], 2)
    try:
        yield rig
    finally:
        rig.stop()


def assert_no_violations(rig: KaspadRig) -> None:
    bad = rig.violations()
    assert not bad, ("kaspad logged disconnects/bans caused by what a bridge sent:\n"
                     + "\n".join(f"{n}: {ln}" for n, lines in bad.items() for ln in lines[-20:])
                     + "\n" + rig.diagnose())
