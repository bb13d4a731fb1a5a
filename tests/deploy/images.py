"""Inputs of the compose test's images that must be downloaded: the wheelhouse.

``python3 -m tests.deploy.images`` builds it (``deploy/prepare.sh`` calls this outside the test
suite's loopback-only namespace); the test only reads :func:`wheelhouse_path`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def requirements() -> tuple[list[str], list[str]]:
    p = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return (["setuptools>=68", "wheel", *p["project"]["dependencies"]],
            list(p["project"]["optional-dependencies"]["rig"]))


def wheelhouse_path() -> Path:
    """Cached by a hash of the requirements (complete when it holds a ``complete`` file)."""
    base, rig = requirements()
    key = hashlib.sha256(json.dumps([base, rig]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("KTB_WHEELHOUSE_CACHE",
                                Path.home() / ".cache" / "kaspa-tor-bridge" / "wheelhouse"))
    return cache / key


def build_wheelhouse() -> Path:
    house = wheelhouse_path()
    if (house / "complete").exists():
        return house
    shutil.rmtree(house, ignore_errors=True)
    base, rig = requirements()
    for name, reqs in (("base", base), ("rig", rig)):
        (house / name).mkdir(parents=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                        "-w", str(house / name), *reqs], check=True, timeout=600)
    (house / "complete").write_text("ok\n")
    return house


if __name__ == "__main__":
    print(build_wheelhouse())
