"""deploy/docker-compose.yml read as a file (issue 12, item 4; no docker needed).

The live stack is tested by ``test_compose.py`` (slow, docker, real kaspad). Here the compose
files are parsed and interpolated the way compose does, for the recipe of every network in the
project's network table (``deploy/.env.example``, the same table as ``deploy/README.md``):
kaspad's command is what ``kaspad-flags`` prints for the bridge's environment, its health check
probes the port kaspad listens on, which is the network's P2P port; images are pinned (no
``:latest``; kaspad at the project's kaspad version); ``init: true`` with ``/app/kaspad``;
kaspad's RPC is not published unless ``docker-compose.rpc.yml`` is added, and then only on
127.0.0.1. When ``docker-compose`` is installed, its own ``config`` output is compared with this
interpolation.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import NETWORK_P2P_PORTS, Config, load_config
from bridge.rig.kaspad import KASPAD_VERSION
from bridge.runtime.wiring import kaspad_flags

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
RPC_OVERRIDE = DEPLOY / "docker-compose.rpc.yml"
PREFIX = "172.29.116"

_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}"
                  r"|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``value`` with compose's variable substitution (``$$``, ``${X}``, ``${X:-d}``,
    ``${X-d}``, ``${X:?e}``, ``${X?e}``, ``$X``) applied to every string in it."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        got = env.get(name)
        if op == ":-":
            return got if got else arg
        if op == "-":
            return got if got is not None else arg
        if op in (":?", "?") and (got is None or (op == ":?" and not got)):
            raise KeyError(f"{name}: {arg}")
        return got or ""

    return _VAR.sub(sub, value)


def load(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    data = interpolate(yaml.safe_load(path.read_text(encoding="utf-8")), env)
    assert isinstance(data, dict)
    return data


def env_recipes() -> dict[str, tuple[str, str]]:
    """network → (KASPAD_NETWORK_FLAGS, KASPAD_P2P_PORT), from .env.example's table."""
    out = {}
    for line in (DEPLOY / ".env.example").read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"#\s+[\w-]+:\s+(kaspa-[\w-]+)\s+(.*?)\s+(\d+)", line)
        if m:
            flags = "" if m.group(2) == "(empty)" else m.group(2)
            out[m.group(1)] = (flags, m.group(3))
    return out


def readme_recipes() -> dict[str, tuple[str, str]]:
    """The same table in deploy/README.md."""
    out = {}
    for line in (DEPLOY / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("`kaspa-"):
            flags = cells[2].strip("`") if cells[2].startswith("`") else ""
            out[cells[1].strip("`")] = (flags, cells[3].strip("`"))
    return out


def bridge_config(compose: dict[str, Any]) -> Config:
    env = {k: str(v) for k, v in compose["services"]["bridge"]["environment"].items()}
    return load_config(None, env={**env, "HOME": "/nonexistent"})


def test_every_network_has_a_recipe() -> None:
    assert set(env_recipes()) == set(NETWORK_P2P_PORTS), "a network without a compose recipe"
    assert readme_recipes() == env_recipes()


@pytest.mark.parametrize("network", sorted(NETWORK_P2P_PORTS))
def test_recipe_kaspad_command_and_health_check_follow_the_network(network: str) -> None:
    flags, port = env_recipes()[network]
    compose = load(COMPOSE, {"KASPA_NETWORK": network, "KASPAD_NETWORK_FLAGS": flags,
                             "KASPAD_P2P_PORT": port})
    cfg = bridge_config(compose)
    assert cfg.network == network
    assert int(port) == NETWORK_P2P_PORTS[network] == cfg.kaspad.p2p.port
    kaspad = compose["services"]["kaspad"]
    command = shlex.split(kaspad["command"])
    assert command == kaspad_flags(cfg)
    listen = [a.split("=", 1)[1] for a in command if a.startswith("--listen=")]
    assert listen == [f"{PREFIX}.4:{port}"]
    # the health check probes exactly the address kaspad listens on
    test = kaspad["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    m = re.fullmatch(r"nc -z -w \d+ (\S+) (\d+) \|\| exit 1", test[1])
    assert m, test
    assert f"{m.group(1)}:{m.group(2)}" == listen[0]


def test_images_are_pinned() -> None:
    for env in ({}, {k: v for k, v in _dotenv().items()}):
        compose = load(COMPOSE, env)
        for name, svc in compose["services"].items():
            image = svc["image"]
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest", (name, image)
        assert compose["services"]["kaspad"]["image"] == f"kaspanet/rusty-kaspad:v{KASPAD_VERSION}"
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix in {"", ".yml", ".example", ".md", ".sh"}:
            assert ":latest" not in path.read_text(encoding="utf-8", errors="replace"), path


def _dotenv() -> dict[str, str]:
    out = {}
    for line in (DEPLOY / ".env.example").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#") and "=" in line:
            k, _, v = line.partition("=")
            out[k] = v
    return out


def test_kaspad_entrypoint_fits_both_image_layouts() -> None:
    kaspad = load(COMPOSE, {})["services"]["kaspad"]
    # Docker's init as PID 1 (not the image's /sbin/tini or none), the binary by its path
    assert kaspad["init"] is True
    assert kaspad["entrypoint"][0] == "/app/kaspad"
    assert "tini" not in " ".join(kaspad["entrypoint"])


def test_rpc_is_not_published_by_default() -> None:
    compose = load(COMPOSE, {})
    for name, svc in compose["services"].items():
        assert "ports" not in svc and "expose" not in svc, name
    kaspad = compose["services"]["kaspad"]
    assert not any("rpclisten" in a for a in [*kaspad["entrypoint"], kaspad["command"]])
    assert set(kaspad["networks"]) == {"kaspa-internal"}
    assert compose["networks"]["kaspa-internal"]["internal"] is True


def test_rpc_override_publishes_on_loopback_only() -> None:
    base = load(COMPOSE, {})["services"]["kaspad"]
    rpc = load(RPC_OVERRIDE, {})
    kaspad = rpc["services"]["kaspad"]
    # only --rpclisten added to the production entrypoint; kaspad stays internal
    assert kaspad["entrypoint"] == [*base["entrypoint"], f"--rpclisten={PREFIX}.4:16110"]
    assert set(kaspad) == {"entrypoint"}
    fwd = rpc["services"]["kaspad-rpc"]
    assert fwd["command"][-1] == f"TCP:{PREFIX}.4:16110"
    assert fwd["command"][0].startswith("TCP-LISTEN:16110,")
    assert fwd["ports"] == ["127.0.0.1:16110:16110"]
    assert load(RPC_OVERRIDE, {"KASPAD_RPC_HOST_PORT": "16210"})["services"]["kaspad-rpc"][
        "ports"] == ["127.0.0.1:16210:16110"]
    addr = fwd["networks"]["kaspa-internal"]["ipv4_address"]
    assert addr == f"{PREFIX}.5"  # .2 tor, .3 bridge, .4 kaspad
    assert "internal" not in (rpc["networks"]["rpc-publish"] or {})
    assert load(COMPOSE, {})["services"]["kaspad"]["networks"] == {
        "kaspa-internal": {"ipv4_address": f"{PREFIX}.4"}}


def test_interpolation() -> None:
    env = {"A": "1", "E": ""}
    assert interpolate("$$A ${A} ${A:-x} ${E:-x} ${E-x} ${N-y} $A", env) == "$A 1 1 x  y 1"
    with pytest.raises(KeyError):
        interpolate("${N:?set it}", env)


COMPOSE_BIN = shutil.which("docker-compose")


@pytest.mark.skipif(COMPOSE_BIN is None, reason="docker-compose is not installed")
@pytest.mark.parametrize("network", ["kaspa-mainnet", "kaspa-testnet-10"])
def test_docker_compose_agrees(tmp_path: Path, network: str) -> None:
    """compose's own rendering (no engine needed) gives the same kaspad service."""
    assert COMPOSE_BIN is not None
    flags, port = env_recipes()[network]
    env = {"KASPA_NETWORK": network, "KASPAD_NETWORK_FLAGS": flags, "KASPAD_P2P_PORT": port}
    empty = tmp_path / "empty.env"
    empty.write_text("", encoding="utf-8")
    res = subprocess.run([COMPOSE_BIN, "--env-file", str(empty), "-f", str(COMPOSE), "-f",
                          str(RPC_OVERRIDE), "config"], capture_output=True, text=True,
                         env={"PATH": os.environ.get("PATH", ""), **env}, timeout=120,
                         check=False)
    if res.returncode != 0 and "Traceback" in res.stderr:
        pytest.skip(f"docker-compose config does not run here: {res.stderr[-300:]}")
    assert res.returncode == 0, res.stderr
    theirs = yaml.safe_load(res.stdout)["services"]
    ours = load(COMPOSE, env)["services"]["kaspad"]
    assert shlex.split(theirs["kaspad"]["command"]) == shlex.split(ours["command"])
    assert theirs["kaspad"]["healthcheck"]["test"] == ours["healthcheck"]["test"]
    assert theirs["kaspad-rpc"]["ports"] in (["127.0.0.1:16110:16110/tcp"],
                                             ["127.0.0.1:16110:16110"])
