"""deploy/docker-compose.yml for real: local images, a real kaspad, onion published, blocks relayed.

What runs (all images built here, no registry):

1. ``deploy/base/build-base.sh``: debootstrap + ``docker import`` → ``ktb-base:bookworm``
   (skipped when the image carries the current recipe hash).
2. A wheelhouse of the Python dependencies made on the host with ``pip wheel`` (cached under
   ``~/.cache/kaspa-tor-bridge/wheelhouse/<hash of the requirements>``): the images install
   from it with ``--no-index``, so builds need no PyPI access from inside docker.
3. The real rusty-kaspa kaspad of ``scripts/kaspad.sh`` (``cargo install`` of the pinned
   version into ``~/.cache/kaspa-tor-bridge``; ``KTB_KASPAD`` names another binary).
4. ``docker build`` of the tor, bridge and rig images with a minimal, deterministic build
   context (tar stream: pyproject, README, bridge/, deploy files, wheels; no caches), and of a
   kaspad image with the upstream image's layout (``tests/deploy/kaspad.Dockerfile``: the local
   base + the cached binary), so the layer cache is reused whenever those inputs are unchanged.
5. The stack on simnet with ``deploy/docker-compose.test.yml``: the production kaspad service
   (entrypoint binary, ``init``, volume, ``command:``, health check command) running that image,
   its entrypoint extended only by RPC and unsynced-mining flags; tor-egress made internal; the
   private Tor network (``bridge.rig.tornet``) running in the tor container's network namespace,
   which the stack's tor (production image and torrc) joins through a drop-in file.
6. Assertions: kaspad's command is what ``kaspad-flags`` prints for the bridge's environment;
   the health check is the production one and kaspad becomes healthy with it; network layout
   (only tor on the egress network, kaspa-internal internal); the bridge publishes its onion and
   stores the key in the onion-key volume; two remote real kaspads, each behind its own bridge in
   the private network, connect with the stack's kaspad: R is dialed by the stack's kaspad
   through its slot and R's onion (outbound path), D dials the stack's onion (inbound path); a
   block submitted over RPC to the stack's kaspad reaches R and D, a block of D reaches the
   stack's kaspad and R; the remote bridge learns the stack's onion from gossip; kaspad's log
   shows no protocol violation; kaspad cannot reach the egress network; after a bridge restart
   the same onion is published again.

Needs root (debootstrap) and a docker engine with docker-compose or ``docker compose``; skipped
when docker or the kaspad binary is unavailable unless ``CI`` is set. Steps 1-3 download (Debian
mirror, PyPI, crates.io) and are done by ``scripts/test.sh`` (``scripts/kaspad.sh``,
``deploy/prepare.sh``) before the suite enters its loopback-only namespace; the test only checks
their results. At runtime every container is on internal networks.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.config import load_config
from bridge.rig.kaspad import VIOLATION_RE, KaspadError, find_kaspad, find_protos
from bridge.runtime.wiring import kaspad_flags
from tests.deploy.images import wheelhouse_path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DEPLOY_TEST = Path(__file__).resolve().parent
PROJECT = "ktb-compose-test"
NET_PREFIX = os.environ.get("KTB_COMPOSE_TEST_NET_PREFIX", "172.29.117")
IMAGES = {"TOR_IMAGE": "kaspa-tor-bridge-tor:test", "BRIDGE_IMAGE": "kaspa-tor-bridge:test",
          "RIG_IMAGE": "kaspa-tor-bridge-rig:test", "KASPAD_IMAGE": "kaspa-tor-bridge-kaspad:test"}
#: The network of the test stack: simnet (kaspad makes blocks on request, no proof of work).
SIMNET = {"KASPA_NETWORK": "kaspa-simnet", "KASPAD_NETWORK_FLAGS": "--simnet",
          "KASPAD_P2P_PORT": "16511"}
SIMNET_RPC_PORT = 16510
#: What the test adds to the production entrypoint (deploy/docker-compose.test.yml).
TEST_KASPAD_FLAGS = [f"--rpclisten={NET_PREFIX}.4:{SIMNET_RPC_PORT}", "--unsaferpc",
                     "--enable-unsynced-mining"]
BASE_IMAGE = os.environ.get("KTB_BASE_IMAGE", "ktb-base:bookworm")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so this is an error, not a skip", pytrace=False)
    pytest.skip(reason)


def _run(argv: list[str], *, timeout: float = 600, check: bool = True, env: dict[str, str] | None
         = None, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(argv, capture_output=True, timeout=timeout, env=env, input=input)
    out = subprocess.CompletedProcess(argv, p.returncode, p.stdout.decode(errors="replace"),
                                      p.stderr.decode(errors="replace"))
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:6])} … exited {p.returncode}:\n"
                             f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def _compose_cmd() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        try:
            if subprocess.run([*cmd, "version"], capture_output=True, timeout=30).returncode == 0:
                return cmd
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


# -- images -------------------------------------------------------------------------------------


def _context(wheels: Path) -> bytes:
    """A deterministic build context: same inputs → same bytes → docker's layer cache hits."""
    buf = io.BytesIO()

    def add(src: Path, arc: str) -> None:
        if src.is_dir():
            for child in sorted(src.iterdir()):
                if child.name in ("__pycache__", "_gen") or child.suffix == ".pyc":
                    continue
                add(child, f"{arc}/{child.name}")
            return
        info = tarfile.TarInfo(arc)
        data = src.read_bytes()
        info.size, info.mtime, info.mode = len(data), 0, 0o755 if os.access(src, os.X_OK) else 0o644
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in ("pyproject.toml", "README.md", "bridge", "deploy/Dockerfile",
                    "deploy/bridge-health"):
            add(ROOT / rel, rel)
        add(wheels / "base", "deploy/wheels/base")
        add(wheels / "rig", "deploy/wheels/rig")
    return buf.getvalue()


def _kaspad_context(binary: Path) -> bytes:
    """kaspad.Dockerfile and the binary (as ``kaspad``): nothing else is sent to docker.

    The debug build carries ~500 MB of debug info: it is left out (``strip --strip-debug``,
    deterministic, about a second) so the image stays small; the code is the same.
    """
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="ktb-kaspad-ctx-") as tmp:
        stripped = Path(tmp) / "kaspad"
        if shutil.which("strip") is None or subprocess.run(
                ["strip", "--strip-debug", "-o", str(stripped), str(binary)],
                capture_output=True, timeout=120).returncode != 0:
            stripped = binary
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for arc, src, mode in (("Dockerfile", DEPLOY_TEST / "kaspad.Dockerfile", 0o644),
                                   ("kaspad", stripped, 0o755)):
                info = tarfile.TarInfo(arc)
                info.size, info.mtime, info.mode = src.stat().st_size, 0, mode
                with open(src, "rb") as f:
                    tar.addfile(info, f)
    return buf.getvalue()


def _kaspad_binary() -> tuple[Path, Path]:
    """The cached real kaspad (scripts/kaspad.sh, or KTB_KASPAD) and its RPC protos."""
    binary = find_kaspad()
    if binary is None:
        _unavailable("no kaspad binary: run `bash scripts/kaspad.sh` (builds the pinned "
                     "rusty-kaspa kaspad once; scripts/test.sh does) or set "
                     "KTB_KASPAD=/path/to/kaspad")
    assert binary is not None
    try:
        protos = find_protos(binary)
    except KaspadError as exc:
        _unavailable(str(exc))
        raise
    return binary.resolve(), protos.resolve()


def _build_images(timings: dict[str, float], kaspad: Path) -> None:
    # The downloads (debootstrap from Debian, pip wheel from PyPI, cargo install from crates.io)
    # are done beforehand, outside the test's loopback-only namespace, by scripts/test.sh.
    if _image_id(BASE_IMAGE) is None or not (wheelhouse_path() / "complete").exists():
        _unavailable(f"base image {BASE_IMAGE} or the wheelhouse is missing: run "
                     "`bash deploy/prepare.sh` first (scripts/test.sh does)")
    wheels = wheelhouse_path()
    t0 = time.monotonic()
    before = {tag: _image_id(tag) for tag in IMAGES.values()}
    arg = ["--build-arg", f"BASE_IMAGE={BASE_IMAGE}"]
    _run(["docker", "build", "-q", *arg, "-t", IMAGES["TOR_IMAGE"], str(DEPLOY / "tor")])
    ctx = _context(wheels)
    for target, tag in (("bridge", IMAGES["BRIDGE_IMAGE"]), ("rig", IMAGES["RIG_IMAGE"])):
        _run(["docker", "build", "-q", *arg, "-f", "deploy/Dockerfile", "--target", target,
              "-t", tag, "-"], input=ctx)
    t1 = time.monotonic()
    _run(["docker", "build", "-q", *arg, "-t", IMAGES["KASPAD_IMAGE"], "-"],
         input=_kaspad_context(kaspad))
    timings["kaspad_image"] = time.monotonic() - t1
    timings["images"] = time.monotonic() - t0
    for tag, old_id in before.items():  # drop what a rebuild replaced (kept while in use)
        if old_id and old_id != _image_id(tag):
            _run(["docker", "rmi", old_id], check=False)


def _image_id(tag: str) -> str | None:
    p = _run(["docker", "image", "inspect", "-f", "{{.Id}}", tag], check=False)
    return p.stdout.strip() or None if p.returncode == 0 else None


# -- the stack ----------------------------------------------------------------------------------


class Stack:
    def __init__(self, compose: list[str]) -> None:
        self.env = {**os.environ, **IMAGES, **SIMNET, "NET_PREFIX": NET_PREFIX,
                    "BASE_IMAGE": BASE_IMAGE, "BRIDGE_PEERS": "", "BRIDGE_LOG_LEVEL": "info",
                    "BRIDGE_LOG_FORMAT": "text", "KTB_TEST_KASPAD_BIN": "/nonexistent",
                    "KTB_TEST_KASPAD_PROTO": "/nonexistent"}
        self.env.pop("DOCKER_DEFAULT_PLATFORM", None)
        self.base = [*compose, "-p", PROJECT, "-f", str(DEPLOY / "docker-compose.yml")]
        self.cmd = [*self.base, "-f", str(DEPLOY / "docker-compose.test.yml")]
        self.kaspad = Path("/nonexistent")

    def compose(self, *args: str, check: bool = True, timeout: float = 300,
                production: bool = False) -> str:
        argv = [*(self.base if production else self.cmd), *args]
        env = self.env
        if production:  # the compose file as an operator gets it: only the addresses changed
            env = {k: v for k, v in env.items() if k not in IMAGES and k not in SIMNET}
        return _run(argv, env=env, check=check, timeout=timeout).stdout

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).strip()
        assert cid, f"no container for {service}"
        return cid

    def exec(self, service: str, *argv: str, check: bool = True) -> str:
        return _run(["docker", "exec", self.container(service), *argv], check=check).stdout

    def health(self, service: str) -> str:
        out = _run(["docker", "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}"
                    "{{else}}{{.State.Status}}{{end}}", self.container(service)]).stdout
        return out.strip()

    def logs(self, *services: str) -> str:
        return self.compose("logs", "--no-color", "--tail=60", *services, check=False)

    def wait(self, what: str, predicate: Any, timeout: float, every: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                                     f"{self.logs()}")
            time.sleep(every)

    def json_file(self, service: str, path: str) -> dict[str, Any] | None:
        out = self.exec(service, "cat", path, check=False)
        try:
            data: dict[str, Any] = json.loads(out)
            return data
        except ValueError:
            return None


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    if shutil.which("docker") is None:
        _unavailable("docker is not installed")
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"docker info failed: {exc}")
    if info.returncode != 0:
        _unavailable(f"docker engine not reachable: {info.stderr.decode(errors='replace')[:200]}")
    compose = _compose_cmd()
    if compose is None:
        _unavailable("neither `docker compose` nor `docker-compose` is available")
    if os.geteuid() != 0:
        _unavailable("building the base image needs root (debootstrap)")
    assert compose is not None
    binary, protos = _kaspad_binary()
    s = Stack(compose)
    s.kaspad = binary
    s.env.update(KTB_TEST_KASPAD_BIN=str(binary), KTB_TEST_KASPAD_PROTO=str(protos))
    s.compose("down", "-v", "--remove-orphans", check=False)
    try:
        yield s
    finally:
        s.compose("down", "-v", "--remove-orphans", "-t", "5", check=False)


def test_compose_stack(stack: Stack) -> None:
    timings: dict[str, float] = {}
    t_start = time.monotonic()
    try:
        _scenario(stack, timings)
    finally:
        timings["total"] = time.monotonic() - t_start
        report = ", ".join(f"{k}={v:.3g}s" for k, v in timings.items())
        print(f"\ncompose test timings: {report}")
        out = os.environ.get("KTB_COMPOSE_TIMINGS")
        if out:
            Path(out).write_text(json.dumps(timings, indent=1))


def _scenario(stack: Stack, timings: dict[str, float]) -> None:
    _build_images(timings, stack.kaspad)

    # the private Tor network in tor's namespace; the stack's tor joins it
    t0 = time.monotonic()
    stack.compose("up", "-d", "--no-build", "tor", "tornet")
    def tor_healthy() -> bool:
        if stack.health("tornet") not in ("running", "created"):
            raise AssertionError(f"the private Tor network died:\n{stack.logs('tornet')}")
        return stack.health("tor") == "healthy"

    stack.wait("tor to bootstrap on the private network (healthy)", tor_healthy, 180)
    timings["tornet_and_tor_healthy"] = time.monotonic() - t0

    # the remote side: real kaspad R behind bridge R, published as an onion
    stack.exec("tornet", "sh", "-c", "nohup python3 /ktb-test/rig_node.py peer "
               "--shared /rig-shared >/rig-shared/peer.log 2>&1 &")
    def remote_published() -> dict[str, Any] | None:
        p = stack.json_file("tornet", "/rig-shared/peer.json")
        if p and p.get("phase") == "failed":
            raise AssertionError(f"the remote side failed: {p}\n"
                                 f"{stack.exec('tornet', 'tail', '-40', '/rig-shared/peer.log')}")
        return p if p and p.get("onion_r") else None

    peer = stack.wait("the remote bridge's onion", remote_published, 180)
    timings["remote_r_published"] = time.monotonic() - t0
    stack.env["BRIDGE_PEERS"] = f"{peer['onion_r']}:{SIMNET['KASPAD_P2P_PORT']}"

    t1 = time.monotonic()
    stack.compose("up", "-d", "--no-build")
    stack.wait("bridge and kaspad healthy", lambda: stack.health("bridge") == "healthy"
               and stack.health("kaspad") == "healthy", 180)
    timings["bridge_kaspad_healthy"] = time.monotonic() - t1
    timings["stack_up"] = time.monotonic() - t0

    def own_onion() -> str | None:
        for line in reversed(stack.logs("bridge").splitlines()):
            if "own onion: " in line:
                return line.split("own onion: ", 1)[1].split()[0]
        return None

    # kaspad's command (the production one: the override changes only the entrypoint's flags
    # and the health checks' timing) is exactly what `kaspad-flags` prints for the bridge's
    # environment; the health check that made kaspad healthy is the production command; only
    # tor is on the egress network; kaspa-internal is internal.
    def inspect(service: str, fmt: str) -> Any:
        return json.loads(_run(["docker", "inspect", "-f", fmt, stack.container(service)]).stdout)

    bridge_env = dict(e.split("=", 1) for e in inspect("bridge", "{{json .Config.Env}}"))
    cfg = load_config(None, env={k: v for k, v in bridge_env.items() if k.startswith("KTB_")}
                      | {"HOME": "/nonexistent"})
    assert cfg.network == "kaspa-simnet", cfg.network
    assert inspect("kaspad", "{{json .Config.Cmd}}") == kaspad_flags(cfg)
    assert inspect("kaspad", "{{json .Config.Entrypoint}}") == [
        "/app/kaspad", "--yes", "--nologfiles", "--appdir=/home/kaspa/.rusty-kaspa",
        *TEST_KASPAD_FLAGS]
    assert inspect("kaspad", "{{json .HostConfig.Init}}") is True
    assert inspect("kaspad", "{{json .Config.Image}}") == IMAGES["KASPAD_IMAGE"]
    assert inspect("kaspad", "{{json .Config.User}}") == "kaspa"  # the image's user
    assert inspect("kaspad", "{{json .Config.Healthcheck.Test}}") == [
        "CMD-SHELL", f"nc -z -w 5 {NET_PREFIX}.4 {SIMNET['KASPAD_P2P_PORT']} || exit 1"]
    nets = {svc: {n.removeprefix(PROJECT.replace("-", "") + "_").removeprefix(PROJECT + "_")
                  for n in inspect(svc, "{{json .NetworkSettings.Networks}}")}
            for svc in ("tor", "bridge", "kaspad")}
    assert nets == {"tor": {"kaspa-internal", "tor-egress"}, "bridge": {"kaspa-internal"},
                    "kaspad": {"kaspa-internal"}}, nets
    internal = _run(["docker", "network", "inspect", "-f", "{{.Internal}}",
                     f"{PROJECT.replace('-', '')}_kaspa-internal"], check=False).stdout.strip() \
        or _run(["docker", "network", "inspect", "-f", "{{.Internal}}",
                 f"{PROJECT}_kaspa-internal"]).stdout.strip()
    assert internal == "true"
    # the compose file as shipped: the upstream image at a pinned version, mainnet ports
    prod = stack.compose("config", production=True)
    assert "image: kaspanet/rusty-kaspad:v" in prod, prod
    assert f"--listen={NET_PREFIX}.4:16111" in prod and f"{NET_PREFIX}.4 16111" in prod
    assert "--simnet" not in prod and "KTB_NETWORK: kaspa-mainnet" in prod

    onion = stack.wait("the bridge's 'own onion' log line", own_onion, 60)
    assert onion.endswith(f".onion:{SIMNET['KASPAD_P2P_PORT']}"), onion
    stack.exec("bridge", "test", "-s", "/var/lib/kaspa-tor-bridge/keys/onion_ed25519_v3.key")
    mode = stack.exec("bridge", "stat", "-c", "%a", "/var/lib/kaspa-tor-bridge/keys/"
                      "onion_ed25519_v3.key").strip()
    assert mode == "600", mode

    # D: a second remote kaspad + bridge that dials the stack's onion (the inbound path)
    t2 = time.monotonic()
    stack.exec("tornet", "sh", "-c", f"echo {onion} > /rig-shared/stack-onion")
    stack.wait("the remote kaspad D to start (its bridge warm to the stack's onion)",
               lambda: remote_published() and (p := stack.json_file(
                   "tornet", "/rig-shared/peer.json")) and p.get("d_rpc") and p, 240)
    timings["remote_d_up"] = time.monotonic() - t2

    # blocks over kaspad's RPC: stack -> R (outbound) and D (inbound); D -> stack -> R
    t3 = time.monotonic()
    relay = _run(["docker", "exec", stack.container("tornet"), "python3",
                  "/ktb-test/rig_node.py", "relay", "--shared", "/rig-shared",
                  "--stack", f"{NET_PREFIX}.4:{SIMNET_RPC_PORT}", "--timeout", "240"],
                 check=False, timeout=420)
    try:
        result: dict[str, Any] = json.loads(relay.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {"ok": False, "error": f"no result: {relay.stdout[-2000:]}{relay.stderr[-2000:]}"}
    timings["relay_total"] = time.monotonic() - t3
    print(f"\nrelay: {json.dumps(result)}")
    if not result.get("ok"):
        raise AssertionError(f"blocks were not relayed: {result}\n{stack.logs()}\n"
                             f"{stack.exec('tornet', 'tail', '-40', '/rig-shared/peer.log')}")
    timings["kaspad_links"] = result["links_seconds"]
    for key in ("stack_to_r", "stack_to_d", "d_to_stack", "d_to_r"):
        timings[f"block_{key}"] = result[f"{key}_ms"] / 1000.0
    # every peer of the stack's kaspad is the bridge (slots outbound, relayed inbound)
    assert {p["address"].rsplit(":", 1)[0] for p in result["peers"]["stack"]} \
        == {f"{NET_PREFIX}.3"}, result["peers"]["stack"]
    # blockCount does not count genesis: the two blocks made here, on every node
    assert all(n >= 2 for n in result["block_count"].values()), result

    # the remote bridge D learned the stack's onion from the stack bridge's gossip
    stack_onion = onion.split(":")[0]
    stack.wait("the stack's onion in D's gossip", lambda: stack_onion in (
        stack.json_file("tornet", "/rig-shared/peer.json") or {}).get("learned_d", []), 60)

    # kaspad's own log: nothing it would drop or ban a peer for
    logs = _run(["docker", "logs", stack.container("kaspad")])
    kaspad_log = logs.stdout + logs.stderr
    violations = [ln for ln in kaspad_log.splitlines() if VIOLATION_RE.search(ln)]
    assert violations == [], violations[:20]

    # isolation: kaspad (kaspa-internal only) cannot reach tor's address on the egress network
    tor_ips = json.loads(_run(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}",
                               stack.container("tor")]).stdout)
    egress_ip = next(v["IPAddress"] for k, v in tor_ips.items() if k.endswith("tor-egress"))
    probe = _run(["docker", "exec", stack.container("kaspad"), "sh", "-c",
                  f"nc -v -z -w 3 {egress_ip} 9050 2>&1; echo rc=$?"], check=False).stdout
    assert "rc=0" not in probe and "refused" not in probe.lower(), \
        f"kaspad reached the egress network: {probe}"

    # the onion key survives a restart of the bridge: same address published again
    t4 = time.monotonic()
    stack.compose("restart", "-t", "10", "bridge")
    stack.wait("the bridge to republish after restart", lambda: stack.logs("bridge").count(
        f"own onion: {onion}") >= 2, 90)
    timings["bridge_restart_republish"] = time.monotonic() - t4
    assert "created a new onion identity" not in stack.logs("bridge").split(
        "own onion:")[-1]
