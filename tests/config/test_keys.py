"""The declaration table (bridge.config.keys) is the one list of keys: the dataclasses, the
defaults, the bounds, the environment variables and config/reference.toml all follow it."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest

from bridge.config import Config, load_config
from bridge.config.keys import (
    _DECLARATIONS,
    KEYS,
    KNOWN_KEYS,
    SECTION_DOCS,
    SECTIONS,
    Bounds,
    Key,
    describe_allowed,
)
from bridge.config.model import SECTIONS as MODEL_SECTIONS
from bridge.config.reference import GENERATED, render_reference
from bridge.core.errors import ConfigError

REFERENCE = Path(__file__).resolve().parents[2] / "config" / "reference.toml"
#: simnet: no public-network refresh floor in the way of the bounds sweep
ENV: Mapping[str, str] = {"HOME": "/home/tester", "KTB_NETWORK": "kaspa-simnet"}
NOT_KEYS = {"sources", "warnings"}


def _dataclass_keys() -> list[str]:
    out: list[str] = []
    for f in dataclasses.fields(Config):
        if f.name in NOT_KEYS:
            continue
        if f.name in MODEL_SECTIONS:
            out += [f"{f.name}.{sf.name}" for sf in dataclasses.fields(MODEL_SECTIONS[f.name])]
        else:
            out.append(f.name)
    return out


def test_every_dataclass_field_has_exactly_one_declaration_and_vice_versa() -> None:
    fields = _dataclass_keys()
    names = [k.name for k in _DECLARATIONS]
    assert len(names) == len(set(names)), "a key declared twice"
    assert len(fields) == len(set(fields))
    assert sorted(fields) == sorted(names)
    # and in the same order, so reference.toml reads like the dataclasses
    assert fields == names
    assert set(MODEL_SECTIONS) == set(SECTIONS)


def test_no_dataclass_field_carries_a_second_default() -> None:
    for cls in (Config, *MODEL_SECTIONS.values()):
        for f in dataclasses.fields(cls):
            if f.name in NOT_KEYS:
                continue
            assert f.default is dataclasses.MISSING, f"{cls.__name__}.{f.name}"
            assert f.default_factory is dataclasses.MISSING, f"{cls.__name__}.{f.name}"


@pytest.mark.parametrize("key", KNOWN_KEYS)
def test_each_declaration_is_consistent(key: str) -> None:
    k = KEYS[key]
    assert k.doc and k.doc[-1] in ".)", key
    assert k.section in SECTION_DOCS
    kinds = {"str": str, "path": str, "int": int, "float": float, "bool": bool, "list": tuple}
    assert type(k.default) is kinds[k.kind], key
    if k.choices:
        assert k.default in k.choices
    if k.bounds is not None:
        assert k.kind in ("int", "float")
        assert isinstance(k.default, int | float) and k.bounds.allows(k.default), key
    assert k.env == "KTB_" + key.upper().replace(".", "__")
    assert k.flag == "--" + key.replace(".", "-").replace("_", "-")


def test_defaults_come_from_the_declarations() -> None:
    cfg = load_config(None, env={"HOME": "/home/tester"})
    assert set(cfg.sources.values()) == {"default"}
    for key in ("slots.count", "pool.slot_wait", "relay.stall_timeout", "tor.managed",
                "inbound.accept_burst", "slots.base_port"):
        section, leaf = key.split(".")
        assert getattr(getattr(cfg, section), leaf) == KEYS[key].default


def _just_outside(k: Key, lo: bool) -> float:
    assert k.bounds is not None
    edge = k.bounds.lo if lo else k.bounds.hi
    assert edge is not None
    if (k.bounds.lo_open if lo else k.bounds.hi_open):
        return edge
    step = 1 if k.kind == "int" else max(abs(edge) * 0.01, 0.001)
    return edge - step if lo else edge + step


BOUNDED = [k.name for k in _DECLARATIONS if k.bounds is not None]


@pytest.mark.parametrize("key", BOUNDED)
def test_bounds_are_enforced_from_the_declaration(key: str) -> None:
    """Just outside each declared bound is refused, naming the key and the declared range;
    the bounds themselves are not refused as out of range (a cross-key rule may still apply,
    e.g. slots.base_port 65535 with 4 slots)."""
    k = KEYS[key]
    assert k.bounds is not None
    for lo in (True, False):
        edge = k.bounds.lo if lo else k.bounds.hi
        if edge is None or (lo and k.bounds.zero and edge <= 0):
            continue
        bad = _just_outside(k, lo)
        if k.bounds.zero and bad == 0:
            continue
        text = str(int(bad)) if k.kind == "int" else repr(float(bad))
        with pytest.raises(ConfigError) as info:
            load_config(None, env={**ENV, k.env: text})
        assert info.value.key == key and "out of range" in str(info.value)
        assert describe_allowed(k) in str(info.value)
        if (k.bounds.lo_open if lo else k.bounds.hi_open):
            continue
        edge_text = str(int(edge)) if k.kind == "int" else repr(float(edge))
        try:
            load_config(None, env={**ENV, k.env: edge_text})
        except ConfigError as e:
            assert "out of range" not in str(e), e


def test_a_changed_declaration_changes_what_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The builder has no bounds of its own: narrowing a declaration refuses the default."""
    assert load_config(None, env=ENV).slots.count == 4
    monkeypatch.setitem(KEYS, "slots.count", dataclasses.replace(KEYS["slots.count"],
                                                                  bounds=Bounds(1, 3)))
    with pytest.raises(ConfigError, match=r"slots\.count: value 4 out of range: expected an "
                       r"integer with 1 <= value <= 3"):
        load_config(None, env=ENV)


def test_bounds_allows() -> None:
    b = Bounds(1, 10, hi_open=True, zero="off")
    assert [b.allows(v) for v in (0, 0.5, 1, 9.99, 10, -1)] == [True, False, True, True,
                                                                False, False]
    assert not Bounds(1, 2).allows(0) and Bounds(lo=0).allows(math.inf)


def test_every_key_is_in_reference_toml_with_its_default() -> None:
    data = tomllib.loads(REFERENCE.read_text(encoding="utf-8"))
    flat: dict[str, object] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{sub}": v for sub, v in value.items()})
        else:
            flat[name] = value
    assert list(flat) == list(KNOWN_KEYS)
    for key, value in flat.items():
        default = KEYS[key].default
        assert value == (list(default) if isinstance(default, tuple) else default), key
        assert KEYS[key].doc.split()[0] in REFERENCE.read_text(), key


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_files_are_up_to_date(name: str) -> None:
    """Regenerate with: python3 -m bridge.cli.examples (the declarations' text plus the kaspad
    command line of tests/test_examples.py)."""
    from bridge.cli.examples import load_example, update_text

    path = REFERENCE.parent / name
    text = path.read_text(encoding="utf-8")
    assert text == update_text(render_reference(GENERATED[name]), load_example(path))
    lines = text.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.startswith("# kaspad's command line"))
    end = next(i for i, line in enumerate(lines) if line.startswith("# (end of the generated"))
    without_block = "".join(lines[:first] + lines[end + 2:])
    assert without_block.startswith("".join(f"# {line}".rstrip() + "\n"
                                            for line in GENERATED[name].splitlines()))


def test_reference_toml_loads_to_the_defaults() -> None:
    home = {"HOME": "/home/tester"}
    cfg = load_config(REFERENCE, env=home)
    assert cfg == load_config(None, env=home) and cfg.warnings == ()


def test_reference_cli_writes_the_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "ref.toml"
    res = subprocess.run([sys.executable, "-m", "bridge.config.reference", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert out.read_text(encoding="utf-8") == render_reference()
    res = subprocess.run([sys.executable, "-m", "bridge.config.reference", "--examples",
                          str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for name, header in GENERATED.items():
        assert (tmp_path / name).read_text(encoding="utf-8") == render_reference(header)
    res = subprocess.run([sys.executable, "-m", "bridge.config.reference", "--bogus"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "usage" in res.stderr


@pytest.mark.parametrize("path", sorted(REFERENCE.parent.glob("*.toml")), ids=lambda p: p.name)
def test_hand_written_examples_list_the_declared_choices(path: Path) -> None:
    """An example's inline "a | b | c" comment on a key is the key's declared choices."""
    section = ""
    checked = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            section = line.strip("[] ")
            continue
        code, _, comment = line.partition("#")
        if "=" not in code or " | " not in comment:
            continue
        leaf = code.split("=", 1)[0].strip()
        key = f"{section}.{leaf}" if section else leaf
        listed = tuple(w.strip() for w in comment.split("(")[0].split("|"))
        assert listed == KEYS[key].choices, (path.name, key)
        checked += 1
    if path.name in ("hybrid.toml", "managed-tor.toml"):
        assert checked >= 2
