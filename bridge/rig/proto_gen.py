"""Compile the test peers' kaspad protos at import time and expose the generated modules.

    from bridge.rig.proto_gen import pb, pb_grpc

``pb`` is the generated ``messages_pb2`` module, re-exporting the ``p2p.proto`` message types too,
so ``pb.KaspadMessage``, ``pb.VersionMessage``, ``pb.NetAddress`` ... all work. ``pb_grpc`` is
``messages_pb2_grpc`` (``P2PStub``, ``P2PServicer``, ``add_P2PServicer_to_server``).

Output goes to ``bridge/rig/_gen/v_<digest>/`` (gitignored), where the digest covers the proto
sources and the grpcio-tools/protobuf versions, so a stale build is never reused. Several processes
may import this at once (pytest-xdist, a lead's end-to-end run next to ours): each compiles into a
private temporary directory and publishes it with one atomic ``rename``; the loser of a race just
discards its copy. No lock file is needed.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

_HERE = Path(__file__).resolve().parent
PROTO_DIR = _HERE / "protos"
GEN_DIR = _HERE / "_gen"
_PROTOS = ("p2p.proto", "messages.proto")
_IMPORT_RE = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def _digest() -> str:
    import google.protobuf
    import grpc_tools

    h = hashlib.sha256()
    for name in _PROTOS:
        h.update(name.encode() + b"\0" + (PROTO_DIR / name).read_bytes() + b"\0")
    h.update(getattr(grpc_tools, "__version__", "?").encode())
    try:
        from importlib.metadata import version

        h.update(version("grpcio-tools").encode())
    except Exception:  # pragma: no cover - metadata missing in odd installs
        pass
    h.update(google.protobuf.__version__.encode())
    return h.hexdigest()[:16]


def _compile(dest: Path) -> None:
    from grpc_tools import protoc

    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={dest}",
        f"--pyi_out={dest}",
        f"--grpc_python_out={dest}",
        *(str(PROTO_DIR / n) for n in _PROTOS),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with exit code {rc}: {args}")
    # protoc emits top-level `import p2p_pb2 as p2p__pb2`; make them package-relative so the
    # modules live inside bridge.rig._gen.v_<digest> and never shadow anything on sys.path.
    for py in dest.glob("*.py"):
        text = py.read_text()
        fixed = _IMPORT_RE.sub(r"from . import \1 as \2", text)
        if fixed != text:
            py.write_text(fixed)
    (dest / "__init__.py").write_text("")


def _ensure_built() -> str:
    digest = _digest()
    pkg = f"v_{digest}"
    final = GEN_DIR / pkg
    if (final / "__init__.py").exists():
        return pkg
    GEN_DIR.mkdir(parents=True, exist_ok=True)
    init = GEN_DIR / "__init__.py"
    if not init.exists():
        # Written via rename too, so a concurrent importer never sees a half-written file.
        fd, tmp_init = tempfile.mkstemp(dir=GEN_DIR, prefix=".init-")
        os.close(fd)
        os.chmod(tmp_init, 0o644)
        os.replace(tmp_init, init)
    tmp = Path(tempfile.mkdtemp(dir=GEN_DIR, prefix=".tmp-"))
    try:
        tmp.chmod(0o755)
        _compile(tmp)
        try:
            os.rename(tmp, final)  # atomic publish; fails if another process won the race
        except OSError:
            if not (final / "__init__.py").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return pkg


def _load() -> tuple[ModuleType, ModuleType]:
    pkg = _ensure_built()
    base = f"{__package__ or 'bridge.rig'}._gen.{pkg}"
    return (
        importlib.import_module(f"{base}.messages_pb2"),
        importlib.import_module(f"{base}.messages_pb2_grpc"),
    )


pb, pb_grpc = _load()
p2p_pb = importlib.import_module(pb.__name__.rsplit(".", 1)[0] + ".p2p_pb2")

# messages_pb2 only imports p2p_pb2 under an alias; re-export its message classes on `pb` so
# callers can write pb.VersionMessage etc.
for _name, _desc in p2p_pb.DESCRIPTOR.message_types_by_name.items():
    if not hasattr(pb, _name):
        setattr(pb, _name, getattr(p2p_pb, _name))

__all__ = ["GEN_DIR", "PROTO_DIR", "p2p_pb", "pb", "pb_grpc"]
