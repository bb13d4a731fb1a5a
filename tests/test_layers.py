"""The package layout is the architecture: ``core ← config ← net/tor/store ← runtime ← rig ← cli``
(``aio``, trio helpers shared by the I/O packages, sits beside ``config``).

A module may import its own package and any lower layer, never a higher one, and the three
I/O packages (``net``, ``tor``, ``store``) do not import each other: what one needs from
another is handed in by ``runtime``. ``bridge.core`` is sans-IO: no sockets, clocks, threads,
processes, files or event loops. Checked on the source (``ast``), so an import inside a function
counts as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "bridge"

#: package → layer; a module may import packages of a lower layer and its own package
LAYERS: dict[str, int] = {
    "bridge": 0,  # the package root: __version__ only
    "bridge.core": 0,
    "bridge.config": 1,
    "bridge.aio": 1,  # trio helpers shared by net, tor and store
    "bridge.net": 2, "bridge.tor": 2, "bridge.store": 2,
    "bridge.runtime": 3,
    "bridge.rig": 4,
    "bridge.cli": 5, "bridge.__main__": 6,
}

#: what the sans-IO core must not import (the shell's business)
NOT_IN_CORE = {"trio", "socket", "time", "asyncio", "sqlite3", "subprocess", "threading",
               "selectors", "stem", "python_socks", "signal", "select", "logging", "pathlib",
               "tempfile", "shutil", "io"}


def _package(module: str) -> str:
    """The layered package a dotted module name belongs to."""
    parts = module.split(".")
    if len(parts) >= 2 and ".".join(parts[:2]) in LAYERS:
        return ".".join(parts[:2])
    return "bridge"


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        if "_gen" in rel.parts:
            continue
        name = ".".join(rel.parts)
        out.append((name.removesuffix(".__init__"), path))
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (annotation-only: never executed)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
                (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
                or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")):
            for stmt in node.body:
                out |= {id(n) for n in ast.walk(stmt)}
    return out


def _imports(path: Path, module: str, *, runtime_only: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, relative ones resolved;
    ``runtime_only``: without those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    skip = _type_checking_only(tree) if runtime_only else set()
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")
                pkg = pkg if is_pkg else pkg[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            if base == "bridge":  # from bridge import x: x may be a subpackage
                found += [(node.lineno, f"bridge.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, base))
    return found


def test_every_package_has_a_layer() -> None:
    for name, _ in _modules():
        parts = name.split(".")
        if len(parts) > 1 and (ROOT / parts[1]).is_dir():
            assert ".".join(parts[:2]) in LAYERS, f"{name}: its package has no layer in LAYERS"


def test_imports_follow_the_layers() -> None:
    bad = []
    for name, path in _modules():
        own = _package(name)
        for line, target in _imports(path, name):
            if target != "bridge" and not target.startswith("bridge."):
                continue
            theirs = _package(target)
            if theirs == own or (theirs == "bridge" and target in ("bridge", "bridge.__init__")):
                continue
            if theirs == "bridge" and target not in LAYERS:
                continue  # bridge.__version__ and the like
            if LAYERS[theirs] > LAYERS[own]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {own} (layer "
                           f"{LAYERS[own]}) imports {target} (layer {LAYERS[theirs]})")
            elif LAYERS[theirs] == LAYERS[own]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {own} imports {target} "
                           "of the same layer (hand it in from bridge.runtime)")
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_core_is_sans_io() -> None:
    bad = []
    for name, path in _modules():
        if _package(name) != "bridge.core":
            continue
        for line, target in _imports(path, name):
            if target.split(".")[0] in NOT_IN_CORE:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: imports {target}")
    assert not bad, "bridge.core must stay sans-IO:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, expected", [
    ("from bridge.net.pool import Dialer\n", "bridge.net.pool"),
    ("from ..net import pool\n", "bridge.net"),
    ("import trio\n", "trio"),
    ("from bridge import runtime\n", "bridge.runtime"),
])
def test_the_import_scanner_sees_each_form(tmp_path: Path, source: str,
                                           expected: str) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    " + source)
    assert [t for _, t in _imports(f, "bridge.core.m")] == [expected]


def test_no_import_cycle_among_bridge_modules() -> None:
    """No module reaches itself through its imports, e.g. no ``daemon ↔ observe ↔ status``.
    Every executed import counts, also inside functions; imports under ``if TYPE_CHECKING:``
    do not (they are never executed: a class may be annotated with the type of its owner in a
    helper module; the layering test above still checks their direction)."""
    names = {name for name, _ in _modules()}
    graph: dict[str, set[str]] = {}
    for name, path in _modules():
        deps = set()
        for _, target in _imports(path, name, runtime_only=True):
            # "from bridge.x import y": y may be a module of the package bridge.x
            while target and target not in names:
                target = target.rpartition(".")[0]
            if target and target != name and target != "bridge":
                deps.add(target)
        graph[name] = deps
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_annotation_only_imports_are_not_runtime_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("from typing import TYPE_CHECKING\nimport bridge.net.pool\n"
                 "if TYPE_CHECKING:\n    from bridge.runtime import daemon\n")
    assert [t for _, t in _imports(f, "bridge.core.m", runtime_only=True)] == [
        "typing", "bridge.net.pool"]
    assert "bridge.runtime" in [t for _, t in _imports(f, "bridge.core.m")]
