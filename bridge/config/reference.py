"""``config/reference.toml`` (every key with its doc, allowed values and default) and the
``config/tor-only.toml`` example (the same keys under a tor-only header), rendered from the
declarations in :mod:`bridge.config.keys`.

``python3 -m bridge.config.reference`` prints the reference; ``... PATH`` writes it;
``... --examples DIR`` writes both generated files into ``DIR`` (``tests/config/test_keys.py``
checks that the committed ones are up to date). Every key is set to its default, so both files
load to the built-in defaults.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from bridge.config.build import PASSWORD_ENV_ALIAS
from bridge.config.keys import KEYS, SECTION_DOCS, SECTIONS, TOP_LEVEL, Key, describe_allowed

__all__ = ["GENERATED", "render_reference", "toml_value"]

WIDTH = 99

HEADER = """\
kaspa-tor-bridge: every configuration key, its meaning, allowed values and default."""

TOR_ONLY_HEADER = """\
kaspa-tor-bridge: tor-only mode (the default).

Every upstream connection of kaspad goes through Tor; kaspad's P2P port is published as a v3
onion service. `kaspa-tor-bridge kaspad-flags -c config/tor-only.toml` prints the flags kaspad
needs: one --addpeer per slot, and --outpeers=0 --nodnsseed --disable-upnp so that it never
reaches the network itself."""

_COMMON = """\
Generated from the declarations in bridge/config/keys.py by `python3 -m bridge.cli.examples`
(which adds the kaspad command line); do not edit (a test checks that it is up to date). Every
key below is set to its default, so this file loads to the built-in defaults; a config file only
needs the keys it changes.

Precedence (highest first): command-line flags (`kaspa-tor-bridge run --slots-count 8`, or
`--set slots.count=8`), then the environment (KTB_ + upper-cased dotted key with "." -> "__":
KTB_SLOTS__COUNT=8), then the config file (-c), then these defaults. Unknown keys are an error.
Addresses are IP literals or v3 onions: the bridge never resolves a hostname."""


def toml_value(value: object) -> str:
    """``value`` (a declared default) as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for the plain text defaults use
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH - 2, initial_indent="# ", subsequent_indent="# ",
                         break_on_hyphens=False)


def _key_lines(key: Key) -> list[str]:
    lines = _comment(key.doc)
    how = f"Takes {describe_allowed(key)}. Environment: {key.env}"
    if key.secret:
        how += f" (or {PASSWORD_ENV_ALIAS}); never a command-line flag."
    else:
        how += f"; flag: {key.flag}" + (f" / --no-{key.flag[2:]}." if key.kind == "bool" else ".")
    lines += _comment(how)
    lines.append(f"{key.leaf} = {toml_value(key.default)}")
    return lines


def render_reference(header: str = HEADER) -> str:
    """The text of ``config/reference.toml`` (with ``header``: of another generated file)."""
    out = [("# " + line).rstrip() for line in f"{header}\n\n{_COMMON}".splitlines()]
    out.append("")
    out += _comment(SECTION_DOCS[""])
    for name in TOP_LEVEL:
        out.append("")
        out += _key_lines(KEYS[name])
    for section in SECTIONS:
        out += ["", "", f"[{section}]"]
        out += _comment(SECTION_DOCS[section])
        for key in KEYS.values():
            if key.section == section:
                out.append("")
                out += _key_lines(key)
    return "\n".join(out) + "\n"


#: The generated files of ``config/`` and their headers.
GENERATED: Mapping[str, str] = {"reference.toml": HEADER, "tor-only.toml": TOR_ONLY_HEADER}


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "--examples":
        for name, header in GENERATED.items():
            (Path(argv[1]) / name).write_text(render_reference(header), encoding="utf-8")
        return 0
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print("usage: python3 -m bridge.config.reference [PATH | --examples DIR]",
              file=sys.stderr)
        return 2
    text = render_reference()
    if argv:
        Path(argv[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
