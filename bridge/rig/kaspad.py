"""Real rusty-kaspa ``kaspad`` nodes for the test rig, the interop tests and the benchmarks.

* :func:`find_kaspad` / :func:`install_kaspad`: the binary. ``KTB_KASPAD`` names one; otherwise
  the pinned version is built once with ``cargo install`` into a cache by ``kaspad_install.sh``
  (shipped beside this module; ``scripts/kaspad.sh`` and ``kaspa-tor-bridge kaspad install`` run
  it).
* :func:`rpc_modules`: kaspad's own gRPC RPC messages, compiled with grpcio-tools at run time from
  the ``.proto`` files of the ``kaspa-grpc-core`` crate (copied next to the cached binary by the
  install script; else found in cargo's registry source directory). Nothing of rusty-kaspa is
  vendored here.
* :class:`KaspadRpc`: one bidirectional ``/protowire.RPC/MessageStream`` call, requests matched
  to responses by id, block-added notifications delivered to a callback.
* :class:`KaspadNode`: one simnet kaspad process (its own appdir, ports and log file).

Simnet skips proof of work and ``--enable-unsynced-mining`` lets a fresh node accept
``SubmitBlock``, so blocks are made with GetBlockTemplate → SubmitBlock (see docs/protocol.md,
"Simnet for tests").
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import itertools
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from bridge.core.kaspa import SIMNET
from bridge.tor.proc import spawn

#: The kaspad version the project pins (also in kaspad_install.sh).
KASPAD_VERSION = "2.1.0"
#: kaspad's simnet pay address for public key 0^32 (any valid simnet address works for mining).
SIMNET_PAY_ADDRESS = SIMNET.address_prefix + ":" + "q" * 53 + "ekcujlt2"
#: kaspad's own RPC method (bidirectional stream of KaspadRequest/KaspadResponse).
RPC_METHOD = "/protowire.RPC/MessageStream"

_HERE = Path(__file__).resolve().parent
INSTALL_SCRIPT = _HERE / "kaspad_install.sh"
GEN_DIR = _HERE / "_gen"


class KaspadError(RuntimeError):
    """A local kaspad could not be found, built, started or asked (names the log when useful)."""


def cache_dir() -> Path:
    base = os.environ.get("KTB_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kaspa-tor-bridge"


def cached_binary(version: str | None = None, profile: str | None = None) -> Path:
    v = version or os.environ.get("KTB_KASPAD_VERSION") or KASPAD_VERSION
    p = profile or os.environ.get("KTB_KASPAD_PROFILE") or "debug"
    return cache_dir() / f"kaspad-{v}-{p}" / "bin" / "kaspad"


def find_kaspad(path: str | os.PathLike[str] | None = None) -> Path | None:
    """``path`` (or ``auto``/None), ``KTB_KASPAD``, the cached pinned build, ``kaspad`` on PATH."""
    if path is not None and str(path) != "auto":
        p = Path(path)
        return p if p.is_file() and os.access(p, os.X_OK) else None
    env = os.environ.get("KTB_KASPAD")
    if env:
        p = Path(env)
        return p if p.is_file() and os.access(p, os.X_OK) else None
    cached = cached_binary()
    if cached.is_file():
        return cached
    found = shutil.which("kaspad")
    return Path(found) if found else None


def install_kaspad(*, echo: Callable[[str], Any] | None = None) -> Path:
    """Run the install script (builds once, ~12-16 min on 2 cores; instant when cached)."""
    proc = subprocess.run(["bash", str(INSTALL_SCRIPT)], stdout=subprocess.PIPE,
                          stderr=None if echo is None else subprocess.STDOUT, text=True,
                          check=False)
    out = proc.stdout.strip().splitlines()
    if echo is not None:
        for line in out[:-1]:
            echo(line)
    if proc.returncode != 0 or not out:
        raise KaspadError(f"{INSTALL_SCRIPT} failed with exit code {proc.returncode}")
    return Path(out[-1])


def kaspad_version(binary: Path) -> str:
    """What ``kaspad --version`` prints (e.g. ``kaspad 2.1.0``)."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=30, check=False)
    except OSError as exc:
        raise KaspadError(f"cannot run {binary}: {exc}") from exc
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
        else "unknown"


# -- RPC protos ------------------------------------------------------------------------------

def find_protos(binary: Path | None = None) -> Path:
    """The directory holding kaspad's ``rpc.proto`` and ``messages.proto``."""
    candidates: list[Path] = []
    env = os.environ.get("KTB_KASPAD_PROTO_DIR")
    if env:
        candidates.append(Path(env))
    if binary is not None:
        candidates.append(Path(binary).resolve().parent.parent / "proto")
    candidates.append(cached_binary().parent.parent / "proto")
    cargo_home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    found = sorted((cargo_home / "registry" / "src").glob("*/kaspa-grpc-core-*/proto"),
                   key=lambda p: _version_key(p.parent.name), reverse=True)
    candidates += found
    for c in candidates:
        if (c / "rpc.proto").is_file() and (c / "messages.proto").is_file():
            return c
    raise KaspadError("kaspad's RPC protos (rpc.proto, messages.proto of the kaspa-grpc-core "
                      "crate) were not found: run scripts/kaspad.sh, or set KTB_KASPAD_PROTO_DIR")


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


_PKG = "ktbrpc"
_rpc_lock = threading.Lock()
_rpc_cache: dict[Path, tuple[ModuleType, ModuleType]] = {}


def rpc_modules(binary: Path | None = None) -> tuple[ModuleType, ModuleType]:
    """``(messages_pb2, rpc_pb2)`` compiled from kaspad's protos.

    The files are copied under a private package name (``ktbrpc``) so they can share one process
    with the P2P protos of :mod:`bridge.rig.proto_gen` (both upstream files are called
    ``messages.proto`` in package ``protowire``); the wire format does not carry package names,
    and the method path is given explicitly (:data:`RPC_METHOD`).
    """
    src = find_protos(binary)
    with _rpc_lock:
        if src in _rpc_cache:
            return _rpc_cache[src]
        import google.protobuf

        h = hashlib.sha256()
        for name in ("rpc.proto", "messages.proto"):
            h.update((src / name).read_bytes())
        h.update(google.protobuf.__version__.encode())
        pkg = f"rpc_{h.hexdigest()[:16]}"
        final = GEN_DIR / pkg
        if not (final / _PKG / "messages_pb2.py").exists():
            GEN_DIR.mkdir(parents=True, exist_ok=True)
            if not (GEN_DIR / "__init__.py").exists():
                (GEN_DIR / "__init__.py").write_text("")
            tmp = Path(tempfile.mkdtemp(dir=GEN_DIR, prefix=".tmp-rpc-"))
            try:
                _compile_rpc(src, tmp)
                try:
                    os.rename(tmp, final)
                except OSError:
                    if not (final / _PKG / "messages_pb2.py").exists():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        base = f"bridge.rig._gen.{pkg}.{_PKG}"
        mods = (importlib.import_module(f"{base}.messages_pb2"),
                importlib.import_module(f"{base}.rpc_pb2"))
        _rpc_cache[src] = mods
        return mods


def _compile_rpc(src: Path, dest: Path) -> None:
    from grpc_tools import protoc

    work = dest / "_src" / _PKG
    work.mkdir(parents=True)
    for name in ("rpc.proto", "messages.proto"):
        text = (src / name).read_text()
        text = re.sub(r"^package\s+protowire\s*;", f"package {_PKG};", text, flags=re.M)
        text = re.sub(r'^import\s+"rpc\.proto"\s*;', f'import "{_PKG}/rpc.proto";', text,
                      flags=re.M)
        (work / name).write_text(text)
    out = dest / _PKG
    out.mkdir()
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{dest / '_src'}", f"-I{include}", f"--python_out={dest}",
            str(work / "rpc.proto"), str(work / "messages.proto")]
    rc = protoc.main(args)
    if rc != 0:
        raise KaspadError(f"grpc_tools.protoc failed on kaspad's RPC protos (exit {rc})")
    for py in out.glob("*.py"):
        text = py.read_text()
        py.write_text(re.sub(rf"^from {_PKG} import (\w+_pb2) as (\w+)$",
                             r"from . import \1 as \2", text, flags=re.M))
    (out / "__init__.py").write_text("")
    (dest / "__init__.py").write_text("")
    shutil.rmtree(dest / "_src")


# -- RPC client ------------------------------------------------------------------------------

class RpcError(KaspadError):
    """kaspad answered with an error, or did not answer in time."""


@dataclass(frozen=True)
class BlockAdded:
    """A block-added notification: the block's merkle root (our key) and when it arrived."""

    merkle_root: str
    hash: str
    at: float  # time.monotonic()


class KaspadRpc:
    """kaspad's gRPC RPC over one bidirectional stream (thread-safe, blocking).

    ``call("getInfoRequest")`` sends a KaspadRequest with that payload and returns the matching
    response payload message (by request id). With ``on_block`` every BlockAdded notification is
    handed to it from the reader thread (after ``notify_blocks()``).
    """

    def __init__(self, host: str, port: int, *, binary: Path | None = None,
                 timeout: float = 15.0,
                 on_block: Callable[[BlockAdded], None] | None = None) -> None:
        import grpc

        self.msgs, self.rpc = rpc_modules(binary)
        self.timeout = timeout
        self.on_block = on_block
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, queue.Queue[Any]] = {}
        self._out: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self._error: BaseException | None = None
        self._channel = grpc.insecure_channel(
            f"{host}:{port}", options=[("grpc.max_receive_message_length", 256 << 20),
                                       ("grpc.max_send_message_length", 256 << 20)])
        stream = self._channel.stream_stream(
            RPC_METHOD, request_serializer=self.msgs.KaspadRequest.SerializeToString,
            response_deserializer=self.msgs.KaspadResponse.FromString)
        self._call = stream(self._requests())
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"kaspad-rpc-{port}")
        self._reader.start()

    def _requests(self) -> Iterator[Any]:
        while True:
            item = self._out.get()
            if item is None:
                return
            yield item

    def _read(self) -> None:
        try:
            for resp in self._call:
                kind = resp.WhichOneof("payload")
                if kind == "blockAddedNotification":
                    if self.on_block is not None:
                        hdr = resp.blockAddedNotification.block.header
                        bhash = resp.blockAddedNotification.block.verboseData.hash or \
                            getattr(hdr, "hash", "")
                        self.on_block(BlockAdded(hdr.hashMerkleRoot, bhash, time.monotonic()))
                    continue
                with self._lock:
                    q = self._pending.pop(resp.id, None)
                if q is not None:
                    q.put(resp)
        except BaseException as exc:
            self._error = exc
        finally:
            with self._lock:
                pending, self._pending = self._pending, {}
            for q in pending.values():
                q.put(None)

    def call(self, kind: str, timeout: float | None = None, **fields: Any) -> Any:
        """Send request payload ``kind`` (e.g. ``getInfoRequest``) and return the response's
        payload message; raises :class:`RpcError` on an error field or a timeout."""
        if self._closed or self._error is not None:
            raise RpcError(f"RPC stream closed: {self._error!r}")
        rid = next(self._ids)
        req = self.msgs.KaspadRequest(id=rid)
        getattr(req, kind).SetInParent()
        for k, v in fields.items():
            target = getattr(req, kind)
            if isinstance(v, bytes):  # a serialized sub-message (kept byte for byte)
                getattr(target, k).MergeFromString(v)
            elif hasattr(v, "DESCRIPTOR"):
                getattr(target, k).CopyFrom(v)
            else:
                setattr(target, k, v)
        q: queue.Queue[Any] = queue.Queue()
        with self._lock:
            self._pending[rid] = q
        self._out.put(req)
        try:
            resp = q.get(timeout=timeout or self.timeout)
        except queue.Empty:
            with self._lock:
                self._pending.pop(rid, None)
            raise RpcError(f"no answer to {kind} within {timeout or self.timeout:.0f}s") from None
        if resp is None:
            raise RpcError(f"RPC stream closed while waiting for {kind}: {self._error!r}")
        payload = getattr(resp, resp.WhichOneof("payload"))
        if payload.HasField("error") and payload.error.message:
            raise RpcError(f"{kind}: {payload.error.message}")
        return payload

    # convenience wrappers ---------------------------------------------------------------

    def info(self) -> Any:
        return self.call("getInfoRequest")

    def peers(self) -> list[Any]:
        return list(self.call("getConnectedPeerInfoRequest").infos)

    def dag_info(self) -> Any:
        return self.call("getBlockDagInfoRequest")

    def notify_blocks(self) -> None:
        self.call("notifyBlockAddedRequest", command=0)

    def mine(self, extra_data: str = "") -> str:
        """One block: template, then submit it unchanged. Returns its merkle root (our key)."""
        tpl = self.call("getBlockTemplateRequest", payAddress=SIMNET_PAY_ADDRESS,
                        extraData=extra_data)
        res = self.call("submitBlockRequest", block=tpl.block.SerializeToString(),
                        allowNonDAABlocks=False)
        if res.rejectReason != 0:
            name = type(res).RejectReason.Name(res.rejectReason)
            raise RpcError(f"SubmitBlock rejected the block: {name}")
        return str(tpl.block.header.hashMerkleRoot)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._out.put(None)
        with contextlib.suppress(Exception):
            self._call.cancel()
        self._channel.close()

    def __enter__(self) -> KaspadRpc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- a node ----------------------------------------------------------------------------------

#: Log lines that say something about peers (kept for failure messages and checks).
PEER_LOG_RE = re.compile(
    r"disconnect|reject|ban|misbehav|protocol error|p2p|peer|connection|duplicate|timeout|"
    r"IBD|error|warn", re.IGNORECASE)
#: kaspad log lines that would mean the bridge sent something wrong (kaspad dropped a peer for
#: a protocol violation, or banned it).
VIOLATION_RE = re.compile(
    r"NoRouteForMessageType|no route for message|empty payload|ProtocolError|protocol error|"
    r"misbehav|banned|Ban |unexpected message|ConnectionClosed|IP has illegal length|"
    r"Network mismatch|version mismatch|timeout expired", re.IGNORECASE)


class LoggedChild:
    """A rig child process with a log file: start (appending to the log), alive, stop.

    Subclasses (dataclasses) provide ``proc``, ``pid``, ``log_path``, ``die_with_parent`` and
    ``starts``; ``marker`` must appear in ``/proc/<pid>/cmdline`` of a process recorded only by
    pid (a detached rig attached from another process), guarding against pid reuse.
    """

    marker: bytes = b""
    proc: subprocess.Popen[bytes] | None
    pid: int | None
    log_path: Path
    die_with_parent: bool
    starts: int

    def _spawn(self, argv: list[str], header: str, env: dict[str, str] | None = None) -> None:
        log = open(self.log_path, "ab")
        try:
            log.write(f"--- start {self.starts + 1}{header}\n".encode())
            log.flush()
            self.proc = spawn(argv, die_with_parent=self.die_with_parent,
                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              env=env)
        finally:
            log.close()
        self.pid = self.proc.pid
        self.starts += 1

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        if self.pid is None:
            return False
        try:
            return self.marker in Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return False

    def stop(self, *, hard: bool = False, timeout: float = 20.0) -> None:
        """SIGTERM (SIGKILL if ``hard``), SIGKILL after ``timeout``; reaps our child."""
        pid = self.proc.pid if self.proc is not None else self.pid
        if pid is None or not self.alive():
            if self.proc is not None:
                self.proc.poll()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class KaspadNode(LoggedChild):
    """One simnet kaspad process: ``--simnet --appdir --rpclisten --enable-unsynced-mining
    --unsaferpc --nologfiles --yes`` plus ``flags`` (e.g. what ``kaspad-flags`` prints)."""

    binary: Path
    appdir: Path
    rpc_port: int
    p2p_port: int
    flags: Sequence[str] = ()
    name: str = "kaspad"
    die_with_parent: bool = True
    proc: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    log_path: Path = field(init=False)
    starts: int = 0

    def __post_init__(self) -> None:
        self.binary = Path(self.binary)
        self.appdir = Path(self.appdir)
        self.log_path = self.appdir / "kaspad.log"

    def argv(self) -> list[str]:
        flags = [f for f in self.flags if f != "--simnet"]
        if not any(f.startswith("--listen") for f in flags):
            flags.append(f"--listen=127.0.0.1:{self.p2p_port}")
        return [str(self.binary), "--simnet", f"--appdir={self.appdir}",
                f"--rpclisten=127.0.0.1:{self.rpc_port}", "--enable-unsynced-mining",
                "--unsaferpc", "--nologfiles", "--yes", *flags]

    marker = b"kaspad"

    def start(self, *, wait: float = 60.0) -> None:
        self.appdir.mkdir(parents=True, exist_ok=True)
        self._spawn(self.argv(), f": {' '.join(self.argv())}",
                    env={**os.environ, "RUST_LOG": os.environ.get("KTB_KASPAD_LOG", "info")})
        if wait:
            self.wait_rpc(wait)

    def wait_rpc(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise KaspadError(f"{self.name} exited during start-up (code "
                                  f"{self.proc.returncode if self.proc else '?'}); log "
                                  f"{self.log_path}:\n{self.tail(20)}")
            try:
                with self.rpc(timeout=3.0) as r:
                    r.info()
                return
            except Exception as exc:
                last = exc
                time.sleep(0.3)
        raise KaspadError(f"{self.name}: RPC on 127.0.0.1:{self.rpc_port} not answering after "
                          f"{timeout:.0f}s ({last!r}); log {self.log_path}:\n{self.tail(20)}")

    def rpc(self, **kw: Any) -> KaspadRpc:
        return KaspadRpc("127.0.0.1", self.rpc_port, binary=self.binary, **kw)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def peer_log(self, limit: int = 60) -> list[str]:
        """The log lines about P2P peers, connections and errors (newest ``limit``); the RPC
        server's per-connection lines (``GRPC, …``: the rig's own RPC clients) are left out."""
        return [ln for ln in self.log_text().splitlines()
                if PEER_LOG_RE.search(ln) and "GRPC, " not in ln][-limit:]

    def violations(self) -> list[str]:
        """Log lines saying kaspad dropped or banned a peer for a protocol violation."""
        return [ln for ln in self.log_text().splitlines() if VIOLATION_RE.search(ln)]
