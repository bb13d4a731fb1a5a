"""Issue 12 (CLI conventions): every configuration key is a real option of ``run``,
``kaspad-flags``, ``doctor`` and ``status``, generated from the declarations — in ``--help``
with its default, offered by shell completion (with a key's allowed values), and winning over
the environment and the file. Run as the real program (``python -m bridge``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config.keys import KEYS, flag_name
from bridge.rig.tornet import free_ports

BRIDGE = [sys.executable, "-m", "bridge"]
COMMANDS = ("run", "kaspad-flags", "doctor", "status")
#: the environment of the runs: no KTB_* variable of the caller leaks in
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("KTB_")}


def _run(args: list[str], env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BRIDGE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**BASE_ENV, **(env or {})})


def _help(command: str) -> str:
    # wide enough that rich keeps "[default: …]" on one line
    res = _run([command, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_every_key_with_its_default(command: str) -> None:
    text = _help(command)
    # one row per option: its first line and the lines its help wraps onto
    rows: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        cells = line.strip("│ ").split()
        if cells and cells[0].startswith("-"):
            current = cells[0]
            rows[current] = ""
        elif not cells or line.startswith(("╰", "╭")):
            current = None
        if current is not None:
            rows[current] += " " + " ".join(cells)
    for key in KEYS.values():
        if key.secret:
            assert flag_name(key.name) not in rows  # never offered on the command line
        else:
            assert flag_name(key.name) in rows, (key.name, text)

    def default_of(flag: str) -> str:
        found = re.search(r"\[default: ([^\]]*)\]", rows[flag])
        assert found is not None, rows[flag]
        return found.group(1)

    assert default_of("--slots-count") == str(KEYS["slots.count"].default)
    assert default_of("--tor-socks") == KEYS["tor.socks"].default
    assert default_of("--mode") == KEYS["mode"].default
    assert default_of("--tor-bootstrap-timeout") == str(KEYS["tor.bootstrap_timeout"].default)
    assert default_of("--tor-listen-onion") == "tor-listen-onion"  # true
    assert default_of("--peers-connect") == "(none)"  # an empty list
    assert default_of("--metrics-listen") == "(empty)"
    assert "[tor-only|hybrid]" in rows["--mode"]  # the allowed values
    assert "--no-tor-listen-onion" in rows["--tor-listen-onion"]
    # the keys are grouped by section, apart from the command's own options
    assert "Configuration: tor.*" in text and "Configuration: top level" in text
    assert "--set" in text


def _completion_var() -> tuple[str, str]:
    """The variable and value bash's completion script (``--show-completion bash``, what
    ``--install-completion`` installs) sets to ask the program for completions."""
    res = _run(["--show-completion", "bash"])
    assert res.returncode == 0, res.stderr
    found = re.search(r"(_KASPA_TOR_BRIDGE_COMPLETE)=(\w+)", res.stdout)
    assert found is not None, res.stdout
    return found.group(1), found.group(2)


def _complete(var: tuple[str, str], words: list[str], monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What bash completion offers for the last of ``words`` (the word being typed), asked of
    the command line in this process the way the shell asks the program."""
    import typer

    from bridge.cli.main import app

    monkeypatch.setenv(var[0], var[1])
    monkeypatch.setenv("COMP_WORDS", " ".join(["kaspa-tor-bridge", *words]))
    monkeypatch.setenv("COMP_CWORD", str(len(words)))
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        typer.main.get_command(app).main(args=[], prog_name="kaspa-tor-bridge")
    assert done.value.code in (0, None)
    return capsys.readouterr().out.split()


def test_shell_completion_offers_the_keys_and_their_values(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    var = _completion_var()
    # the real program, as the installed script asks it
    res = _run([], env={var[0]: var[1], "COMP_WORDS": "kaspa-tor-bridge doctor --tor-s",
                        "COMP_CWORD": "2"})
    assert res.returncode == 0 and res.stdout.split() == ["--tor-socks"], res

    def complete(*words: str) -> list[str]:
        return _complete(var, list(words), monkeypatch, capsys)

    for command in COMMANDS:
        assert complete(command, "--tor-s") == ["--tor-socks"], command
        offered = complete(command, "--slots-")
        assert {flag_name(k) for k in KEYS if k.startswith("slots.")} <= set(offered), offered
    assert complete("run", "--mode", "") == ["tor-only", "hybrid"]
    assert complete("doctor", "--log-level", "w") == ["warning"]
    assert complete("status", "--network", "kaspa-s") == ["kaspa-simnet"]
    assert complete("kaspad-flags", "--no-tor-l") == ["--no-tor-listen-onion"]
    # the control password is refused on the command line, so never offered
    assert complete("run", "--tor-control-pass") == ["--tor-control-password-file"]
    # the operator commands, not the rig's, have the keys
    assert complete("demo", "--tor-s") == []


def test_kaspad_flags_option_wins_over_env_and_file_and_set(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[slots]\ncount = 2\nbase_port = 17000\n")
    env = {"KTB_SLOTS__COUNT": "3"}

    def slots(*args: str) -> int:
        res = _run(["kaspad-flags", "-c", str(cfg), *args], env=env)
        assert res.returncode == 0, res.stderr
        return res.stdout.count("--addpeer=")

    assert slots() == 3  # environment over file
    assert slots("--slots-count", "5") == 5  # option over environment
    assert slots("--slots-count=6") == 6
    assert slots("--set", "slots.count=4") == 4
    assert slots("--set", "slots.count=4", "--slots-count", "1") == 1  # the option wins
    env.pop("KTB_SLOTS__COUNT")
    assert slots() == 2  # file over default
    res = _run(["kaspad-flags", "-c", str(cfg), "--network", "kaspa-simnet", "--no-dns"])
    assert res.returncode == 2 and "No such option: --no-dns" in res.stderr


def test_status_option_wins_over_env_and_file(tmp_path: Path) -> None:
    a, b, c = free_ports(3)  # nothing listens on them: status says which one it tried
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[metrics]\nlisten = "127.0.0.1:{a}"\n')

    def tried(*args: str, env: dict[str, str] | None = None) -> str:
        res = _run(["status", "-c", str(cfg), *args], env=env)
        assert res.returncode == 1, res
        found = re.search(r"cannot reach the bridge at \S*?127\.0\.0\.1:(\d+)", res.stderr)
        assert found is not None, res.stderr
        return found.group(1)

    env = {"KTB_METRICS__LISTEN": f"127.0.0.1:{b}"}
    assert tried() == str(a)
    assert tried(env=env) == str(b)
    assert tried("--metrics-listen", f"127.0.0.1:{c}", env=env) == str(c)


def test_doctor_reports_a_bad_option_as_a_failed_config_check() -> None:
    res = _run(["doctor", "--slots-count", "0"])
    assert res.returncode == 1
    assert "[FAIL] config" in res.stdout and "--slots-count" in res.stdout, res.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_option_errors_name_the_flag_and_never_echo_a_password(command: str) -> None:
    secret = "hunter2-s3cr3t"
    res = _run([command, "--tor-control-password", secret])
    out = res.stdout + res.stderr
    assert res.returncode in (1, 2) and "visible to every user" in out, out
    assert secret not in out
    # a flag missing its value must not take the next option (and its secret) as its value
    res = _run([command, "--slots-count", f"--tor-control-password={secret}"])
    out = res.stdout + res.stderr
    assert res.returncode in (1, 2) and "--slots-count needs a value" in out, out
    assert secret not in out


def test_run_option_wins_and_the_wait_for_tor_is_said_once(tmp_path: Path) -> None:
    """``run`` with no tor on the control port: the option's port (not the environment's) is
    the one waited for, in one line with the timeout; no line per connection attempt; then the
    bridge gives up with one error line after tor.bootstrap_timeout (issue 12 item 6)."""
    env_port, flag_port, slot, inbound = free_ports(4)
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'network = "kaspa-simnet"\ndata_dir = "{tmp_path / "data"}"\n'
                   f'[slots]\nbase_port = {slot}\ncount = 1\n'
                   f'[inbound]\nlisten = "127.0.0.1:{inbound}"\n')
    res = _run(["run", "-c", str(cfg), "--tor-control", f"127.0.0.1:{flag_port}",
                "--tor-bootstrap-timeout", "4"],
               env={"KTB_TOR__CONTROL": f"127.0.0.1:{env_port}", "PYTHONUNBUFFERED": "1"})
    lines = res.stderr.splitlines()
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    waiting = [ln for ln in lines if "waiting for tor" in ln]
    assert len(waiting) == 1, res.stderr
    assert f"control port at 127.0.0.1:{flag_port}" in waiting[0]
    assert "up to 4 s (tor.bootstrap_timeout)" in waiting[0]
    assert not re.search(rf":{env_port}\b", res.stderr), res.stderr
    # the attempts (every 0.25 to 5 s) are not lines; the waiting line and the final error are
    assert sum("cannot connect to tor control port" in ln for ln in lines) == 2, res.stderr
    assert "ERROR" in lines[-1] and "cannot start without Tor" in lines[-1], res.stderr


def test_no_command_option_shadows_a_key_option() -> None:
    """The generated options and a command's own (``--json``, ``--timeout``, ``--compose`` …)
    never share a name: one of them would silently never be reached."""
    import typer

    from bridge.cli.keyopts import option_names
    from bridge.cli.main import app

    group = typer.main.get_command(app)
    keys = set(option_names())
    for name in COMMANDS:
        command = group.commands[name]  # type: ignore[attr-defined]
        seen: list[str] = []
        for param in command.params:
            seen += [*param.opts, *param.secondary_opts]
        assert len(seen) == len(set(seen)), (name, seen)
        assert keys <= set(seen), (name, keys - set(seen))
