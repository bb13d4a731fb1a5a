"""Every example in ``config/`` shows the kaspad command that goes with it (issue 12, item 1).

The command in each example's header must be exactly what ``kaspa-tor-bridge kaspad-flags -c
<example>`` prints for that example (``bridge.runtime.wiring.kaspad_flags``); no other kaspad
command line and no ``--connect`` may appear in the examples (``--connect`` sets kaspad's
inbound limit to 0, which kills the onion inbound, and together with ``--addpeer`` it is a
startup error).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bridge.cli.examples import (
    BEGIN,
    END,
    EXAMPLES_DIR,
    kaspad_block,
    load_example,
    main,
    shown_command,
    update_text,
)
from bridge.cli.main import app
from bridge.runtime.wiring import kaspad_flags

EXAMPLES = sorted(EXAMPLES_DIR.glob("*.toml"))
KASPAD_LINE = re.compile(r"^#\s+kaspad\s+--")  # a command line, not prose


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"tor-only.toml", "hybrid.toml", "managed-tor.toml"}


def _header_command(text: str) -> str:
    """The generated block's command, parsed here independently of the module."""
    lines = text.splitlines()
    first = BEGIN.split("\n")[0]
    assert first in lines, "the header has no generated kaspad command line"
    start = lines.index(first) + len(BEGIN.split("\n"))
    body = lines[start:lines.index(END, start)]
    return " ".join(line.lstrip("#").strip().removesuffix("\\").strip() for line in body)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_header_shows_its_kaspad_command(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    cfg = load_example(path)
    expected = "kaspad " + " ".join(shlex.quote(f) for f in kaspad_flags(cfg))
    assert _header_command(text) == expected
    assert shown_command(text) == expected
    # and nothing else in the file looks like a kaspad command, or uses --connect=
    block = set(kaspad_block(cfg))
    stray = [line for line in text.splitlines()
             if line not in block and (KASPAD_LINE.match(line) or "--connect=" in line)]
    assert not stray, stray
    # the same line as the CLI prints
    out = CliRunner().invoke(app, ["kaspad-flags", "-c", str(path)], env={"HOME": "/nonexistent"})
    assert out.exit_code == 0, out.output
    assert out.output.strip() == expected


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_tor_only_examples_keep_kaspad_off_the_network(path: Path) -> None:
    cfg = load_example(path)
    flags = kaspad_flags(cfg)
    assert not any(f.startswith("--connect") for f in flags)
    assert sum(f.startswith("--addpeer=") for f in flags) == cfg.slots.count
    if cfg.mode == "tor-only":
        assert {"--outpeers=0", "--nodnsseed", "--disable-upnp"} <= set(flags)
        assert f"--listen={cfg.kaspad.p2p}" in flags


def test_hybrid_example_does_not_promise_kaspad_tor_features() -> None:
    text = (EXAMPLES_DIR / "hybrid.toml").read_text(encoding="utf-8")
    # an unmodified kaspad has neither an onion service nor Tor upstreams of its own
    assert "keeps its onion service" not in text
    assert "Tor upstreams" not in text


def test_update_text_inserts_and_replaces(tmp_path: Path) -> None:
    old = ("# kaspa-tor-bridge: a test example.\n#\n# Run kaspad with\n"
           "#   kaspad --connect=127.0.0.1:16200\n#\n# More text.\n\n"
           'mode = "tor-only"\n\n[slots]\ncount = 2\n')
    path = tmp_path / "x.toml"
    path.write_text(old, encoding="utf-8")
    cfg = load_example(path)
    assert shown_command(old) is None
    new = update_text(old, cfg)
    assert shown_command(new) == ("kaspad --addpeer=127.0.0.1:16200 --addpeer=127.0.0.1:16201 "
                                  "--outpeers=0 --nodnsseed --listen=127.0.0.1:16111 "
                                  "--disable-upnp")
    assert new.startswith("# kaspa-tor-bridge: a test example.\n#\n" + BEGIN + "\n")
    assert update_text(new, cfg) == new  # stable
    path.write_text(new.replace("count = 2", "count = 3"), encoding="utf-8")
    newer = update_text(path.read_text(encoding="utf-8"), load_example(path))
    assert "--addpeer=127.0.0.1:16202" in (shown_command(newer) or "")
    assert newer.count(END) == 1


def test_main_check_and_write(tmp_path: Path) -> None:
    for p in EXAMPLES:
        (tmp_path / p.name).write_text(p.read_text(encoding="utf-8"), encoding="utf-8")
    assert main(["--check", str(tmp_path)]) == 0
    stale = tmp_path / "hybrid.toml"
    stale.write_text(stale.read_text(encoding="utf-8").replace("count = 8", "count = 5"),
                     encoding="utf-8")
    assert main(["--check", str(tmp_path)]) == 1
    assert main([str(tmp_path)]) == 0
    assert main(["--check", str(tmp_path)]) == 0
