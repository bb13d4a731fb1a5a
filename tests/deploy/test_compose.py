"""deploy/docker-compose.yml for real: local images, the stack up, onion published, relaying.

What runs (all images built here, no registry):

1. ``deploy/base/build-base.sh``: debootstrap + ``docker import`` → ``ktb-base:bookworm``
   (skipped when the image carries the current recipe hash).
2. A wheelhouse of the Python dependencies made on the host with ``pip wheel`` (cached under
   ``~/.cache/kaspa-tor-bridge/wheelhouse/<hash of the requirements>``): the images install
   from it with ``--no-index``, so builds need no PyPI access from inside docker.
3. ``docker build`` of the tor, bridge and rig images with a minimal, deterministic build
   context (tar stream: pyproject, README, bridge/, deploy files, wheels; no caches), so the
   layer cache is reused whenever those inputs are unchanged.
4. The stack with ``deploy/docker-compose.test.yml``: kaspad replaced by the grpcio emulator
   (fed the production ``command:``), tor-egress made internal, and the private Tor network
   (``bridge.rig.tornet``) running in the tor container's network namespace; the stack's tor
   (production image and torrc) joins it through a drop-in file.
5. Assertions: kaspad's ``command:`` is what ``kaspad-flags --compose`` prints for the bridge's
   environment; network layout (only tor on the egress network, kaspa-internal internal); the
   bridge publishes its onion and stores the key in the onion-key volume; a remote emulator +
   bridge pair reaches the stack's onion through the private network and completes the kaspad
   handshake with the stack's kaspad (inbound path), and the stack's kaspad reaches the remote
   onion through its slot (outbound path); the remote bridge learns the stack's onion from
   gossip; kaspad cannot reach the egress network; after a bridge restart the same onion is
   published again.

Needs root (debootstrap) and a docker engine with docker-compose or ``docker compose``; skipped
when docker is unavailable unless ``CI`` is set. Steps 1-2 download (Debian mirror, PyPI) and are
done by ``deploy/prepare.sh`` before the suite enters its loopback-only namespace; the test only
checks their results. At runtime every container is on internal networks.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.app import kaspad_flags
from bridge.config import load_config
from tests.deploy.images import wheelhouse_path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROJECT = "ktb-compose-test"
NET_PREFIX = os.environ.get("KTB_COMPOSE_TEST_NET_PREFIX", "172.29.117")
IMAGES = {"TOR_IMAGE": "kaspa-tor-bridge-tor:test", "BRIDGE_IMAGE": "kaspa-tor-bridge:test",
          "RIG_IMAGE": "kaspa-tor-bridge-rig:test"}
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
                if child.name == "__pycache__" or child.suffix == ".pyc":
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


def _build_images(timings: dict[str, float]) -> None:
    # The downloads (debootstrap from Debian, pip wheel from PyPI) are done beforehand, outside
    # the test's loopback-only namespace, by deploy/prepare.sh (scripts/test.sh runs it).
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
        self.env = {**os.environ, **IMAGES, "NET_PREFIX": NET_PREFIX, "BASE_IMAGE": BASE_IMAGE,
                    "BRIDGE_PEERS": "", "BRIDGE_LOG_LEVEL": "info", "BRIDGE_LOG_FORMAT": "text"}
        self.env.pop("DOCKER_DEFAULT_PLATFORM", None)
        self.base = [*compose, "-p", PROJECT, "-f", str(DEPLOY / "docker-compose.yml")]
        self.cmd = [*self.base, "-f", str(DEPLOY / "docker-compose.test.yml")]

    def compose(self, *args: str, check: bool = True, timeout: float = 300,
                production: bool = False) -> str:
        argv = [*(self.base if production else self.cmd), *args]
        return _run(argv, env=self.env, check=check, timeout=timeout).stdout

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
    s = Stack(compose)
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
        report = ", ".join(f"{k}={v:.1f}s" for k, v in timings.items())
        print(f"\ncompose test timings: {report}")
        out = os.environ.get("KTB_COMPOSE_TIMINGS")
        if out:
            Path(out).write_text(json.dumps(timings, indent=1))


def _scenario(stack: Stack, timings: dict[str, float]) -> None:
    _build_images(timings)

    # the private Tor network in tor's namespace; the stack's tor joins it
    t0 = time.monotonic()
    stack.compose("up", "-d", "--no-build", "tor", "tornet")
    def tor_healthy() -> bool:
        if stack.health("tornet") not in ("running", "created"):
            raise AssertionError(f"the private Tor network died:\n{stack.logs('tornet')}")
        return stack.health("tor") == "healthy"

    stack.wait("tor to bootstrap on the private network (healthy)", tor_healthy, 180)
    timings["tornet_and_tor_healthy"] = time.monotonic() - t0

    # the remote pair: emulator R behind bridge R, published as an onion
    stack.exec("tornet", "sh", "-c", "nohup python3 /ktb-test/rig_node.py peer "
               "--shared /rig-shared >/rig-shared/peer.log 2>&1 &")
    peer = stack.wait("the remote bridge's onion", lambda: (
        (p := stack.json_file("tornet", "/rig-shared/peer.json")) and p.get("onion_r") and p), 90)
    stack.env["BRIDGE_PEERS"] = f"{peer['onion_r']}:16111"

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

    # kaspad's command (the production one: the override changes only image and entrypoint) is
    # exactly what `kaspad-flags --compose` prints for the bridge's environment; only tor is on
    # the egress network; kaspa-internal is internal.
    def inspect(service: str, fmt: str) -> Any:
        return json.loads(_run(["docker", "inspect", "-f", fmt, stack.container(service)]).stdout)

    bridge_env = dict(e.split("=", 1) for e in inspect("bridge", "{{json .Config.Env}}"))
    cfg = load_config(None, env={k: v for k, v in bridge_env.items() if k.startswith("KTB_")}
                      | {"HOME": "/nonexistent"})
    assert inspect("kaspad", "{{json .Config.Cmd}}") == kaspad_flags(cfg)
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
    prod = stack.compose("config", production=True)
    assert "kaspanet/rusty-kaspad" in prod

    onion = stack.wait("the bridge's 'own onion' log line", own_onion, 60)
    assert onion.endswith(".onion:16111"), onion
    stack.exec("bridge", "test", "-s", "/var/lib/kaspa-tor-bridge/keys/onion_ed25519_v3.key")
    mode = stack.exec("bridge", "stat", "-c", "%a", "/var/lib/kaspa-tor-bridge/keys/"
                      "onion_ed25519_v3.key").strip()
    assert mode == "600", mode

    # inbound: remote D -> its bridge -> private Tor -> the stack's onion -> bridge -> kaspad
    t2 = time.monotonic()
    stack.exec("tornet", "sh", "-c", f"echo {onion} > /rig-shared/stack-onion")
    peer = stack.wait("the remote node's handshake through the stack's onion", lambda: (
        (p := stack.json_file("tornet", "/rig-shared/peer.json"))
        and (p.get("phase") == "failed" or p.get("d_handshake") is not None) and p), 150)
    assert peer.get("d_handshake") is True, f"remote dial failed: {peer}\n{stack.logs()}"
    timings["inbound_handshake"] = time.monotonic() - t2

    # outbound: the stack's kaspad -> slot -> bridge -> tor -> remote onion -> emulator R
    def sessions() -> dict[str, Any] | None:
        k = stack.json_file("kaspad", "/tmp/kaspad.json")
        p = stack.json_file("tornet", "/rig-shared/peer.json")
        if not k or not p:
            return None
        k_in = [s for s in k["sessions"] if s["direction"] == "inbound" and s["handshake"]]
        k_out = [s for s in k["sessions"] if s["direction"] == "outbound" and s["handshake"]]
        r_in = [s for s in p.get("r_sessions", []) if s["handshake"]]
        stack_onion = onion.split(":")[0]
        learned = stack_onion in p.get("learned_d", [])
        if k_in and k_out and r_in and learned:
            return {"k": k, "p": p}
        return None

    state = stack.wait("handshakes both ways and onion gossip", sessions, 120, every=1.0)
    # kaspad's dials before the bridge listened time out ("connect to … not completed"); kaspad
    # retries those. Anything else kaspad would disconnect on is a failure.
    violations = [v for s in state["k"]["sessions"] + state["p"]["r_sessions"]
                  + state["p"]["d_sessions"] for v in s["violations"]
                  if not v.startswith("connect to ")]
    assert violations == [], violations
    for s in state["k"]["sessions"]:  # onions never reach kaspad
        assert "onion" not in (s["remote_addresses"] or [])

    # isolation: kaspad (kaspa-internal only) cannot reach tor's address on the egress network
    tor_ips = json.loads(_run(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}",
                               stack.container("tor")]).stdout)
    egress_ip = next(v["IPAddress"] for k, v in tor_ips.items() if k.endswith("tor-egress"))
    probe = stack.exec("kaspad", "python3", "-c", (
        "import socket,sys\n"
        f"s=socket.socket(); s.settimeout(3)\n"
        f"try: s.connect(({egress_ip!r}, 9050)); print('CONNECTED')\n"
        "except ConnectionRefusedError: print('REFUSED')\n"
        "except OSError as e: print('BLOCKED', e)\n"), check=False).strip()
    assert probe.startswith("BLOCKED"), f"kaspad reached the egress network: {probe}"

    # the onion key survives a restart of the bridge: same address published again
    t3 = time.monotonic()
    stack.compose("restart", "-t", "10", "bridge")
    stack.wait("the bridge to republish after restart", lambda: stack.logs("bridge").count(
        f"own onion: {onion}") >= 2, 90)
    timings["bridge_restart_republish"] = time.monotonic() - t3
    assert "created a new onion identity" not in stack.logs("bridge").split(
        "own onion:")[-1]
