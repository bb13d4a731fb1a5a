"""The project's documents cite only what the repository carries (issue 11).

(a) No file names the outside reference notes the code was first written from; the project
    keeps its own, ``docs/protocol.md``.
(b) Every ``§N`` citation resolves: ``protocol.md §N`` (and the ``§M`` that follow it in the same
    list) must be a numbered heading of ``docs/protocol.md``; a bare ``§N`` in code means the same,
    and a bare ``§N`` inside a numbered document under ``docs/`` is one of its own headings.
    References into other specifications (``RFC 9113 §6``, ``rend-spec-v3 §6``) are not checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "docs" / "protocol.md"
SCANNED_DIRS = ("bridge", "tests", "bench", "scripts", "config", "deploy", "docs")
SKIP_PARTS = {"__pycache__", "_gen", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"}

# Built from pieces so that this file does not match itself.
FORBIDDEN = (
    "kaspa-p2p-" + "facts",
    "shared" + "/docs",
    "facts" + " §",
    "tor-private-" + "network",
)

_SEC = r"§(\d+(?:\.\d+)*)"
_HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s+\S", re.MULTILINE)
_QUALIFIED = re.compile(r"protocol\.md`?")
# what may sit between "protocol.md" and its §s, and between the §s of one list
_GAP = re.compile(r"(?:[\s,/#*;]|//|\band\b)*")
_NEXT_SEC = re.compile(_SEC)
_ANY_SEC = re.compile(_SEC)
# a § belonging to another specification: "RFC 9113 §6", "rend-spec-v3 §6"
_FOREIGN = re.compile(r"(?:RFC\s*\d+|rend-spec(?:-v\d+)?|spec)[,\s]*$", re.IGNORECASE)


def sections(text: str) -> set[str]:
    """The numbers of the numbered headings (``## 3. Handshake``, ``### 3.2 Order``)."""
    found = _HEADING.findall(text)
    dupes = sorted({n for n in found if found.count(n) > 1})
    assert not dupes, f"section numbers used twice: {dupes}"
    return set(found)


def citations(text: str) -> tuple[list[str], list[str]]:
    """(``protocol.md`` citations, other non-foreign bare ``§`` references) in ``text``."""
    qualified: list[str] = []
    taken: set[int] = set()
    for m in _QUALIFIED.finditer(text):
        pos = m.end()
        while True:
            gap = _GAP.match(text, pos)
            assert gap is not None
            sec = _NEXT_SEC.match(text, gap.end())
            if sec is None:
                break
            qualified.append(sec.group(1))
            taken.add(sec.start())
            pos = sec.end()
    bare = [m.group(1) for m in _ANY_SEC.finditer(text)
            if m.start() not in taken
            and not _FOREIGN.search(text[max(0, m.start() - 30):m.start()])]
    return qualified, bare


def scanned_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for d in SCANNED_DIRS:
        for p in sorted((ROOT / d).rglob("*")):
            if p.is_file() and not SKIP_PARTS.intersection(p.relative_to(ROOT).parts):
                files.append(p)
    out = []
    for p in files:
        try:
            p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # binary or vanished
        out.append(p)
    return out


def unresolved(path: Path, text: str, protocol_sections: set[str]) -> list[str]:
    qualified, bare = citations(text)
    own = sections(text) if path.parent == ROOT / "docs" and path.suffix == ".md" else set()
    # a numbered doc's bare § are its own; code's bare § continue a protocol.md citation
    bare_target = own if own else protocol_sections
    return ([f"protocol.md §{n}" for n in qualified if n not in protocol_sections]
            + [f"§{n}" for n in bare if n not in bare_target])


def test_citation_parser() -> None:
    """The checker finds what it must (so test (b) cannot pass by finding nothing)."""
    text = ("x (protocol.md §2.5, §5.1) and (docs/protocol.md\n  # §3/§4.4 step 4); "
            "RFC 9113 §6.5.2 and rend-spec-v3 §6 are foreign; bare (§7.1); `protocol.md` §2.4")
    assert citations(text) == (["2.5", "5.1", "3", "4.4", "2.4"], ["7.1"])
    assert sections("## 1. A\n### 1.2 B\n#### 1.2.1 C\n## Notes\n") == {"1", "1.2", "1.2.1"}
    assert unresolved(ROOT / "x.py", "(protocol.md §1, §99.9) and §98", {"1"}) == [
        "protocol.md §99.9", "§98"]


def test_no_reference_to_documents_outside_the_repository() -> None:
    hits = [f"{p.relative_to(ROOT)}:{n}: {bad!r}"
            for p in scanned_files()
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            for bad in FORBIDDEN if bad in line]
    assert hits == []


def test_every_protocol_citation_names_an_existing_section() -> None:
    protocol_sections = sections(PROTOCOL.read_text(encoding="utf-8"))
    assert {"2.2", "3.1", "5.1", "6", "7.1", "11.2"} <= protocol_sections
    problems: list[str] = []
    cited = 0
    for p in scanned_files():
        if p == Path(__file__).resolve():
            continue  # its examples cite missing sections on purpose
        text = p.read_text(encoding="utf-8")
        cited += len(citations(text)[0])
        problems += [f"{p.relative_to(ROOT)}: {c}" for c in unresolved(p, text, protocol_sections)]
    assert problems == []
    assert cited >= 40, f"only {cited} protocol.md citations found; is the parser broken?"


@pytest.mark.parametrize("doc", ["protocol.md", "tor-test-network.md"])
def test_project_docs_exist(doc: str) -> None:
    assert (ROOT / "docs" / doc).stat().st_size > 1000
