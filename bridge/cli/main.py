"""``kaspa-tor-bridge`` command line: parses and wires, nothing else."""

from __future__ import annotations

import functools
import json
import logging
import shlex
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import trio
import typer

from bridge.cli.keyopts import config_options
from bridge.config import Config, load_config, parse_options, parse_set
from bridge.core.errors import BridgeError, ConfigError
from bridge.runtime.logs import setup_logging
from bridge.runtime.wiring import kaspad_flags

app = typer.Typer(no_args_is_help=True,
                  help="Run an unmodified rusty-kaspa kaspad over Tor.")
rig_app = typer.Typer(no_args_is_help=True, help="Test rig: a private Tor network on loopback, "
                      "optionally with real kaspad nodes behind bridges.")
app.add_typer(rig_app, name="rig", rich_help_panel="Test rig and demo")
onion_app = typer.Typer(no_args_is_help=True, help="The onion service key: show, back up, import.")
app.add_typer(onion_app, name="onion", rich_help_panel="Operator")
kaspad_app = typer.Typer(no_args_is_help=True,
                         help="A real rusty-kaspa kaspad for the test rig: install, path.")
app.add_typer(kaspad_app, name="kaspad", rich_help_panel="Test rig and demo")


def _version(value: bool) -> None:
    if value:
        from bridge import __version__

        typer.echo(f"kaspa-tor-bridge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", help="print the version and exit", callback=_version,
        is_eager=True)] = False) -> None:
    """Run an unmodified rusty-kaspa kaspad over Tor."""

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file",
                                                envvar="KTB_CONFIG")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE",
    help="set a configuration key by its dotted name, e.g. --set slots.count=8 (repeatable; "
         "the same as the key's own option below, which wins when both are given)")]

#: The epilog of the commands that take every configuration key as an option.
KEYS_EPILOG = ("Every configuration key is an option (grouped by section above, with its "
               "default) and an environment variable: KTB_ + the upper-cased dotted key with "
               "'.' → '__', e.g. KTB_SLOTS__COUNT. Precedence: option (or --set) > environment "
               "> file (-c) > default. The control password is never an option: use "
               "KTB_TOR_CONTROL_PASSWORD or tor.control_password_file.")


def _overrides(set_items: list[str] | None,
               options: dict[str, object]) -> tuple[dict[str, object], dict[str, str]]:
    """The command line's overrides (``--set`` and the keys' own options, which win) and the
    source of the ones ``--set`` gave (for errors). Raises :class:`ConfigError`."""
    by_set = parse_set(set_items or [])
    by_option = parse_options(options)
    return {**by_set, **by_option}, {k: "--set" for k in by_set if k not in by_option}


def _load_cli(config: Path | None, set_items: list[str] | None,
              options: dict[str, object]) -> Config:
    """The configuration of a command with the key options; exit 2 on an error."""
    try:
        overrides, sources = _overrides(set_items, options)
        return load_config(config, overrides=overrides, overrides_source=sources)
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc


_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Exit status of a command interrupted by Ctrl-C (SIGINT) before it could finish: the shell's
#: convention (128 + SIGINT), so scripts can tell "interrupted" from "failed" (1, 2) and "done"
#: (0). ``run`` exits 0 instead when it stopped cleanly on a signal it handled (like tor).
EXIT_INTERRUPTED = 130


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def _collapse(exc: BaseException) -> BaseException:
    """What ``exc`` means to the user. Trio wraps whatever escapes a nursery in an exception
    group, so a Ctrl-C or a startup error arrives as a ``BaseExceptionGroup``: a
    ``KeyboardInterrupt`` anywhere in it means "interrupted"; a group holding a single error
    (besides cancellations) is that error; anything else stays as it is."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt):
            return leaf
    errors = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
    return errors[0] if len(errors) == 1 else exc


def _interruptible(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """A command that Ctrl-C ends with one line and :data:`EXIT_INTERRUPTED`, never a
    traceback (also when trio delivers the interrupt inside an exception group)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            if isinstance(_collapse(exc), KeyboardInterrupt):
                typer.echo("interrupted", err=True)
                raise typer.Exit(EXIT_INTERRUPTED) from None
            raise

    return wrapper


def _load(config: Path | None) -> Config:
    try:
        return load_config(config)
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command(rich_help_panel="Operator", epilog=KEYS_EPILOG)
@_interruptible
@config_options
def run(config: ConfigOpt = None, set_: SetOpt = None, *, options: dict[str, object]) -> None:
    """Run the bridge daemon.

    SIGTERM and SIGINT (Ctrl-C) stop it in order, also during startup (exit status 0); SIGHUP
    is logged and ignored (the bridge does not reload its configuration)."""
    cfg = _load_cli(config, set_, options)
    setup_logging(cfg.log_level, cfg.log_format)
    from bridge.runtime.service import build_daemon

    try:
        trio.run(build_daemon(cfg).run)
    except BaseException as exc:
        error = _collapse(exc)
        if isinstance(error, BridgeError):
            logging.getLogger("bridge").error("%s", error.describe())
            raise typer.Exit(1) from exc
        raise


@app.command("kaspad-flags", rich_help_panel="Operator", epilog=KEYS_EPILOG)
@config_options
def kaspad_flags_cmd(
    config: ConfigOpt = None,
    compose: Annotated[bool, typer.Option(
        help="print as a docker-compose `command:` list")] = False,
    set_: SetOpt = None,
    systemd: Annotated[bool, typer.Option(
        help="print a drop-in for kaspad.service (see deploy/systemd)")] = False,
    kaspad_bin: Annotated[str, typer.Option(
        help="kaspad binary in the --systemd drop-in")] = "/usr/local/bin/kaspad",
    *, options: dict[str, object],
) -> None:
    """Print the flags kaspad needs to use this bridge (copy-paste ready)."""
    cfg = _load_cli(config, set_, options)
    flags = kaspad_flags(cfg)
    if systemd:
        from bridge.cli.systemd import kaspad_dropin

        try:
            typer.echo(kaspad_dropin(cfg, kaspad_bin=kaspad_bin, config_path=config), nl=False)
        except ValueError as exc:
            typer.echo(f"kaspad-flags: {exc}", err=True)
            raise typer.Exit(2) from None
    elif compose:
        typer.echo("command:")
        for f in flags:
            typer.echo(f"  - {json.dumps(f)}")
    else:
        typer.echo("kaspad " + " ".join(shlex.quote(f) for f in flags))


@app.command(rich_help_panel="Operator", epilog=KEYS_EPILOG)
@config_options
def status(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON snapshot")] = False,
    watch: Annotated[bool, typer.Option(help="refresh until Ctrl-C")] = False,
    interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 2.0,
    set_: SetOpt = None,
    *, options: dict[str, object],
) -> None:
    """Live view of the running daemon (read from its metrics.listen endpoint)."""
    from bridge.runtime.status import StatusUnavailable, fetch, render

    cfg = _load_cli(config, set_, options)
    listen = cfg.metrics.listen
    if listen is None:
        where = f" in {config}" if config is not None else ""
        typer.echo(f"metrics.listen is not set{where}: the status command reads the running "
                   "daemon's status endpoint; set metrics.listen = \"127.0.0.1:9464\" (or "
                   "KTB_METRICS__LISTEN) and restart the daemon", err=True)
        raise typer.Exit(1)
    try:
        if as_json:
            typer.echo(json.dumps(fetch(listen.host, listen.port), indent=2))
            return
        from rich.console import Console
        from rich.live import Live

        console = Console()
        if not watch:
            console.print(render(fetch(listen.host, listen.port)))
            return
        with Live(render(fetch(listen.host, listen.port)), console=console,
                  auto_refresh=False) as live:
            while True:
                time.sleep(max(0.2, interval))
                live.update(render(fetch(listen.host, listen.port)), refresh=True)
    except StatusUnavailable as exc:
        typer.echo(f"status: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


@app.command(rich_help_panel="Operator", epilog=KEYS_EPILOG)
@_interruptible
@config_options
def doctor(
    config: ConfigOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds per network check")] = 10.0,
    set_: SetOpt = None,
    *, options: dict[str, object],
) -> None:
    """Check Tor control/auth, Tor SOCKS, kaspad, files and config; say how to fix each."""
    from bridge.cli.doctor import Check, report, run_checks

    try:
        overrides, sources = _overrides(set_, options)
        cfg = load_config(config, overrides=overrides, overrides_source=sources)
    except ConfigError as exc:
        report([Check("config", "fail", str(exc), "fix the named key")], typer.echo)
        raise typer.Exit(1) from exc
    setup_logging("critical")
    checks = trio.run(partial(run_checks, cfg, timeout=timeout))
    raise typer.Exit(0 if report(checks, typer.echo) else 1)


def _onion_key_file(config: Path | None, key_file: Path | None) -> Path:
    return key_file if key_file is not None else _load(config).tor.onion_key_file


KeyFileOpt = Annotated[Path | None, typer.Option(
    "--key-file", help="the key file (default: tor.onion_key_file of the config)")]


@onion_app.command("show")
@_interruptible
def onion_show(config: ConfigOpt = None, key_file: KeyFileOpt = None) -> None:
    """Print the onion address of the key file (never the key)."""
    from bridge.cli.onion import show

    try:
        info = show(_onion_key_file(config, key_file))
    except BridgeError as exc:
        typer.echo(f"onion show: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(info.address)


@onion_app.command("backup")
@_interruptible
def onion_backup(
    to: Annotated[Path, typer.Option("--to", help="backup file to create (mode 0600)")],
    config: ConfigOpt = None, key_file: KeyFileOpt = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
) -> None:
    """Copy the onion key to a new 0600 file."""
    from bridge.cli.onion import backup

    try:
        info = backup(_onion_key_file(config, key_file), to, force=force)
    except BridgeError as exc:
        typer.echo(f"onion backup: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"backed up the key of {info.address} to {info.path} (mode 0600); keep it "
               "secret: whoever has it can impersonate this node's onion")


@onion_app.command("import")
@_interruptible
def onion_import(
    source: Annotated[Path, typer.Argument(help="key file: ED25519-V3 blob or Tor's "
                                           "hs_ed25519_secret_key")],
    config: ConfigOpt = None, key_file: KeyFileOpt = None,
    force: Annotated[bool, typer.Option(help="replace an existing, different key")] = False,
) -> None:
    """Install an onion key (validated; the source must not be readable by others)."""
    from bridge.cli.onion import import_key

    try:
        res = import_key(source, _onion_key_file(config, key_file), force=force)
    except BridgeError as exc:
        typer.echo(f"onion import: {exc}", err=True)
        raise typer.Exit(1) from None
    if res.unchanged:
        typer.echo(f"{res.key_file} already holds this key ({res.address}); nothing changed")
        return
    typer.echo(f"installed the key of {res.address} at {res.key_file} (mode 0600)")
    if res.replaced:
        typer.echo(f"replaced {res.replaced}; its key was kept at {res.replaced_backup}")
    typer.echo("restart the bridge to publish it")


@app.command(rich_help_panel="Test rig and demo")
@_interruptible
def demo(
    duration: Annotated[float, typer.Option(help="seconds to keep the peers talking")] = 10.0,
    workdir: Annotated[Path | None, typer.Option(help="where Tor keeps its files")] = None,
) -> None:
    """Self-contained demo: private Tor network, two emulated kaspad nodes behind two bridges,
    onion services, onion gossip; prints a summary and tears everything down."""
    setup_logging("warning")
    from bridge.rig.demo import run_demo

    try:
        ok = run_demo(duration=duration, workdir=workdir, echo=typer.echo)
    except BaseException as exc:
        error = _collapse(exc)
        if isinstance(error, BridgeError):
            typer.echo(f"demo failed: {error.describe()}", err=True)
            raise typer.Exit(1) from exc
        raise
    raise typer.Exit(0 if ok else 1)


def _kaspad_path(kaspad: str) -> Path:
    from bridge.rig.kaspad import find_kaspad

    found = find_kaspad(kaspad)
    if found is None:
        hint = ("run `kaspa-tor-bridge kaspad install` (or scripts/kaspad.sh) first, or pass "
                "--kaspad /path/to/kaspad" if kaspad == "auto" else "not an executable file")
        typer.echo(f"kaspad: {kaspad}: {hint}", err=True)
        raise typer.Exit(2)
    return found


TopologyOpt = Annotated[str, typer.Option(help="which node dials which: ring | mesh | star")]
KaspadOpt = Annotated[str, typer.Option(
    "--kaspad", help="kaspad binary, or auto (KTB_KASPAD, the cached build, PATH)")]


@rig_app.command("up")
@_interruptible
def rig_up(
    dir: Annotated[Path, typer.Option("--dir", help="state directory")],
    clients: int = 1,
    onion_hosts: int = 1,
    nodes: Annotated[int, typer.Option(help="real kaspad nodes, each behind a bridge and "
                                       "reachable only as an onion (0: Tor network only)")] = 0,
    kaspad: KaspadOpt = "auto",
    topology: TopologyOpt = "ring",
    detach: Annotated[bool, typer.Option(help="return once up; stop with `rig down`")] = False,
) -> None:
    """Start the private Tor network, and with --nodes N also N kaspad nodes behind N bridges
    (foreground until Ctrl-C unless --detach)."""
    from bridge.rig.__main__ import summary, up

    t0 = time.monotonic()
    if nodes > 0:
        from bridge.rig.kaspad import KaspadError
        from bridge.rig.nodes import TOPOLOGIES, KaspadRig

        if topology not in TOPOLOGIES:
            typer.echo(f"--topology must be one of {', '.join(TOPOLOGIES)}", err=True)
            raise typer.Exit(2)
        rig = KaspadRig(dir, nodes=nodes, kaspad=_kaspad_path(kaspad), topology=topology,
                        die_with_parent=not detach, echo=typer.echo)
        try:
            rig.start()
        except KaspadError as exc:
            typer.echo(f"rig up failed: {exc}", err=True)
            rig.stop()
            raise typer.Exit(1) from None
        except BaseException:  # Ctrl-C: stop what was started, detached or not
            rig.stop()
            raise
        assert rig.tor is not None
        typer.echo(summary(rig.tor))
        _print_nodes(rig.status())
        typer.echo(f"up in {time.monotonic() - t0:.1f}s; state in {rig.state_path}")
        if not detach:
            _until_ctrl_c(rig.stop)
        return
    net = up(dir, clients=clients, onion_hosts=onion_hosts, detach=detach)
    typer.echo(summary(net))
    typer.echo(f"up in {time.monotonic() - t0:.1f}s")
    if not detach:
        _until_ctrl_c(net.stop)


def _until_ctrl_c(stop: Callable[[], None]) -> None:
    """Stay in the foreground until Ctrl-C, then ``stop()`` (also on any other exit)."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop()


def _print_nodes(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        peers = row.get("peers")
        ptxt = (", ".join(f"{p['address']}{' (out)' if p['outbound'] else ' (in)'}"
                          for p in peers) if peers is not None else row.get("error", "?"))
        typer.echo(f"  {row['name']:<6} kaspad {row['kaspad']:<4} bridge {row['bridge'] or '-':<4}"
                   f" blocks {row.get('blocks', '?'):<6} onion {row['onion'] or '-'}")
        typer.echo(f"         rpc 127.0.0.1:{row['rpc']}  peers: {ptxt or 'none'}")


@rig_app.command("mine")
@_interruptible
def rig_mine(
    dir: Annotated[Path, typer.Option("--dir", help="state directory of `rig up --nodes`")],
    bps: Annotated[float, typer.Option(help="blocks per second")] = 1.0,
    seconds: Annotated[float, typer.Option(help="how long to mine")] = 10.0,
    node: Annotated[list[int] | None, typer.Option(
        help="node index to mine on (repeat; default: every node in turn)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Make blocks on chosen nodes (GetBlockTemplate → SubmitBlock) and report propagation."""
    from dataclasses import asdict

    from bridge.rig.kaspad import KaspadError
    from bridge.rig.nodes import KaspadRig, mine

    if bps <= 0 or seconds <= 0:
        typer.echo("--bps and --seconds must be positive", err=True)
        raise typer.Exit(2)
    try:
        rig = KaspadRig.attach(dir)
        rep = mine(rig, bps=bps, seconds=seconds, on_nodes=node or None,
                   echo=(lambda _m: None) if as_json else typer.echo)
    except KaspadError as exc:
        typer.echo(f"rig mine: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(asdict(rep), indent=2))
    else:
        typer.echo(f"mined {rep.blocks} blocks ({rep.achieved_bps} blocks/s), delivered "
                   f"{rep.delivered}/{rep.expected}; propagation ms {rep.propagation_ms}")
    raise typer.Exit(0 if rep.ok() else 1)


@rig_app.command("check")
@_interruptible
def rig_check(
    nodes: Annotated[int, typer.Option(help="kaspad nodes behind bridges")] = 3,
    kaspad: KaspadOpt = "auto",
    blocks: Annotated[int, typer.Option(help="blocks to mine")] = 50,
    bps: Annotated[float, typer.Option(help="blocks per second")] = 10.0,
    topology: TopologyOpt = "ring",
    ibd: Annotated[bool, typer.Option(help="then start a late node and time its sync")] = False,
    ibd_blocks: Annotated[int, typer.Option(
        help="chain length the late node syncs (node0's chain is extended to it first; kaspad "
             "runs IBD only for a peer far enough ahead)")] = 600,
    dir: Annotated[Path | None, typer.Option("--dir", help="work directory (kept)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """One shot: private Tor network + N kaspad nodes + N bridges, mine, measure, tear down.
    Exits 0 only when every block reached every node."""
    from bridge.rig.check import run_check
    from bridge.rig.nodes import TOPOLOGIES

    if nodes < 2 or blocks < 1 or bps <= 0 or topology not in TOPOLOGIES:
        typer.echo("need --nodes >= 2, --blocks >= 1, --bps > 0 and --topology one of "
                   f"{', '.join(TOPOLOGIES)}", err=True)
        raise typer.Exit(2)
    binary = _kaspad_path(kaspad)
    echo = partial(typer.echo, err=True) if as_json else typer.echo
    report = run_check(nodes=nodes, kaspad=binary, blocks=blocks, bps=bps, topology=topology,
                       ibd=ibd, ibd_blocks=ibd_blocks, workdir=dir, echo=echo)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo("RESULT: " + ("OK — every block reached every node" if report["ok"]
                                 else f"FAILED ({report.get('error') or report.get('missing')})"))
    raise typer.Exit(0 if report["ok"] else 1)


@rig_app.command("down")
@_interruptible
def rig_down(dir: Annotated[Path, typer.Option("--dir")]) -> None:
    """Stop a detached rig (its kaspad nodes and bridges, then the Tor network)."""
    from bridge.rig.__main__ import down

    if (dir / "nodes.json").exists():
        from bridge.rig.nodes import KaspadRig

        KaspadRig.attach(dir).stop()
        return
    down(dir)


@rig_app.command("status")
@_interruptible
def rig_status(dir: Annotated[Path, typer.Option("--dir")],
               as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the private Tor network's processes and bootstrap state (and the nodes, if any)."""
    from bridge.rig.__main__ import summary
    from bridge.rig.tornet import TorNetwork

    if (dir / "nodes.json").exists():
        from bridge.rig.nodes import KaspadRig

        rig = KaspadRig.attach(dir)
        rows = rig.status()
        if as_json:
            typer.echo(json.dumps({"tor": rig.tor.status() if rig.tor else None,
                                   "nodes": rows}, indent=2))
        else:
            if rig.tor is not None:
                typer.echo(summary(rig.tor))
            _print_nodes(rows)
        return
    net = TorNetwork.attach(dir)
    if as_json:
        typer.echo(json.dumps(net.status(), indent=2))
    else:
        typer.echo(summary(net))


@kaspad_app.command("install")
@_interruptible
def kaspad_install() -> None:
    """Build the pinned kaspad from the Rust package registry into the cache (once; ~12-16 min
    on 2 cores) and print its path. KTB_KASPAD=/path uses that binary instead."""
    from bridge.rig.kaspad import KaspadError, install_kaspad

    try:
        path = install_kaspad(echo=partial(typer.echo, err=True))
    except KaspadError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(str(path))


@kaspad_app.command("path")
def kaspad_path() -> None:
    """Print the kaspad binary the rig would use (exit 1 when there is none)."""
    from bridge.rig.kaspad import find_kaspad

    found = find_kaspad()
    if found is None:
        typer.echo("no kaspad: run `kaspa-tor-bridge kaspad install`", err=True)
        raise typer.Exit(1)
    typer.echo(str(found))


def main() -> None:
    # One program name (usage lines, completion's _KASPA_TOR_BRIDGE_COMPLETE), also when run as
    # `python -m bridge`.
    app(prog_name="kaspa-tor-bridge")


if __name__ == "__main__":
    main()
