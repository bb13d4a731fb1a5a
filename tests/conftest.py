"""Project-wide fixtures.

``tornet`` (session scope): ONE private Tor network (3 authorities, 3 relays, 1 client, 3 onion
hosts; clients/onion hosts also accept the password :data:`TORNET_CONTROL_PASSWORD`), started the
first time a test requests it and stopped at session end. ``tornet.onion_host`` (the first) serves
the emulator tests; the real-kaspad tier (``tests/kaspad``) gives each node its own of the others.
Mark such tests ``@pytest.mark.tor`` (tests requesting ``tornet`` get the marker automatically,
so ``-m "not tor"`` deselects them). Without a ``tor`` binary they are skipped, unless ``CI`` is
set: then they fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from bridge.rig import RigError, TorNetwork, find_tor
from bridge.rig.emulator import EmulatorConfig, KaspadEmulator

TORNET_CONTROL_PASSWORD = "kaspa-tor-bridge-rig"
_TORNET_KEY = pytest.StashKey[TorNetwork]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tornet" in getattr(item, "fixturenames", ()) and item.get_closest_marker("tor") is None:
            item.add_marker(pytest.mark.tor)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    net = config.stash.get(_TORNET_KEY, None)
    if net is not None and net.timings:
        terminalreporter.write_sep("-", "private Tor network timings (s)")
        terminalreporter.write_line(
            ", ".join(f"{k}={v:.2f}" for k, v in net.timings.items()) + f"  [{net.workdir}]")


@pytest.fixture
def emulators() -> Iterator[Callable[..., KaspadEmulator]]:
    """``make(**EmulatorConfig fields)`` -> a grpcio kaspad emulator, stopped after the test."""
    made: list[KaspadEmulator] = []

    def make(**kw: object) -> KaspadEmulator:
        emu = KaspadEmulator(EmulatorConfig(**kw))  # type: ignore[arg-type]
        made.append(emu)
        return emu

    yield make
    for emu in made:
        emu.stop()


@pytest.fixture(scope="session")
def tornet(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorNetwork]:
    if find_tor() is None:
        msg = "the `tor` binary is not installed (scripts/setup.sh installs Debian's tor)"
        if os.environ.get("CI"):
            pytest.fail(f"{msg}; CI is set, so this is an error, not a skip", pytrace=False)
        pytest.skip(msg)
    # One retry: on a loaded 2-core box a tor of the network once aborted during its start
    # (rc=-6); a second network from scratch is cheaper than a failed session. Both errors
    # are reported if the second start fails too.
    errors: list[str] = []
    for _attempt in range(2):
        workdir = tmp_path_factory.mktemp("tornet")
        net = TorNetwork(workdir, onion_hosts=3, control_password=TORNET_CONTROL_PASSWORD)
        request.config.stash[_TORNET_KEY] = net
        try:
            net.start(timeout=float(os.environ.get("KTB_TORNET_TIMEOUT", "90")))
            break
        except RigError as exc:
            net.stop()
            where = "" if exc.log_dir is not None else f" (logs: {workdir})"
            errors.append(f"{exc}{where}")
        except BaseException:
            net.stop()
            raise
    else:
        pytest.fail("private Tor network failed to start, twice: " + " / ".join(errors),
                    pytrace=False)
    try:
        yield net
    finally:
        net.stop()
