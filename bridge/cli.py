"""``kaspa-tor-bridge`` command line: parses and wires, nothing else."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import trio
import typer

from bridge.app import kaspad_flags
from bridge.config import Config, flag_help, load_config, parse_flags
from bridge.errors import BridgeError, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Run an unmodified rusty-kaspa kaspad over Tor.")
rig_app = typer.Typer(no_args_is_help=True, help="A private Tor network on loopback (test rig).")
app.add_typer(rig_app, name="rig")
onion_app = typer.Typer(no_args_is_help=True, help="The onion service key: show, back up, import.")
app.add_typer(onion_app, name="onion")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file",
                                                envvar="KTB_CONFIG")]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                               "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    import stem.util.log  # noqa: F401 - stem sets its logger to TRACE on import: override after

    logging.getLogger("stem").setLevel(logging.WARNING)


def _load(config: Path | None, overrides: dict[str, Any]) -> Config:
    try:
        return load_config(config, overrides=overrides)
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _run_epilog() -> str:
    lines = ["Every configuration key is also a flag (and an environment variable KTB_…); "
             "precedence: flag > environment > file > default. Lists repeat the flag.", ""]
    lines += [f"  {flag}  {what}" for flag, what in flag_help()]
    return "\n\n".join(lines)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             epilog=_run_epilog())
def run(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Run the bridge daemon."""
    try:
        overrides = parse_flags(ctx.args)
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc
    cfg = _load(config, overrides)
    setup_logging(cfg.log_level, cfg.log_format)
    from bridge.daemon import Daemon

    try:
        trio.run(Daemon(cfg).run)
    except BridgeError as exc:
        logging.getLogger("bridge").error("%s", exc.describe())
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        pass


@app.command("kaspad-flags")
def kaspad_flags_cmd(
    config: ConfigOpt = None,
    compose: Annotated[bool, typer.Option(
        help="print as a docker-compose `command:` list")] = False,
) -> None:
    """Print the flags kaspad needs to use this bridge (copy-paste ready)."""
    cfg = _load(config, {})
    flags = kaspad_flags(cfg)
    if compose:
        typer.echo("command:")
        for f in flags:
            typer.echo(f"  - {json.dumps(f)}")
    else:
        typer.echo("kaspad " + " ".join(shlex.quote(f) for f in flags))


@app.command()
def status(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON snapshot")] = False,
    watch: Annotated[bool, typer.Option(help="refresh until Ctrl-C")] = False,
    interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 2.0,
) -> None:
    """Live view of the running daemon (read from its metrics.listen endpoint)."""
    from bridge.status import StatusUnavailable, fetch, render

    cfg = _load(config, {})
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


@app.command()
def doctor(
    config: ConfigOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds per network check")] = 10.0,
) -> None:
    """Check Tor control/auth, Tor SOCKS, kaspad, files and config; say how to fix each."""
    from bridge.doctor import Check, report, run_checks

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        report([Check("config", "fail", str(exc), "fix the named key")], typer.echo)
        raise typer.Exit(1) from exc
    setup_logging("critical")
    checks = trio.run(partial(run_checks, cfg, timeout=timeout))
    raise typer.Exit(0 if report(checks, typer.echo) else 1)


def _onion_key_file(config: Path | None, key_file: Path | None) -> Path:
    return key_file if key_file is not None else _load(config, {}).tor.onion_key_file


KeyFileOpt = Annotated[Path | None, typer.Option(
    "--key-file", help="the key file (default: tor.onion_key_file of the config)")]


@onion_app.command("show")
def onion_show(config: ConfigOpt = None, key_file: KeyFileOpt = None) -> None:
    """Print the onion address of the key file (never the key)."""
    from bridge.onion_cmd import show

    try:
        info = show(_onion_key_file(config, key_file))
    except BridgeError as exc:
        typer.echo(f"onion show: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(info.address)


@onion_app.command("backup")
def onion_backup(
    to: Annotated[Path, typer.Option("--to", help="backup file to create (mode 0600)")],
    config: ConfigOpt = None, key_file: KeyFileOpt = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
) -> None:
    """Copy the onion key to a new 0600 file."""
    from bridge.onion_cmd import backup

    try:
        info = backup(_onion_key_file(config, key_file), to, force=force)
    except BridgeError as exc:
        typer.echo(f"onion backup: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"backed up the key of {info.address} to {info.path} (mode 0600); keep it "
               "secret: whoever has it can impersonate this node's onion")


@onion_app.command("import")
def onion_import(
    source: Annotated[Path, typer.Argument(help="key file: ED25519-V3 blob or Tor's "
                                           "hs_ed25519_secret_key")],
    config: ConfigOpt = None, key_file: KeyFileOpt = None,
    force: Annotated[bool, typer.Option(help="replace an existing, different key")] = False,
) -> None:
    """Install an onion key (validated; the source must not be readable by others)."""
    from bridge.onion_cmd import import_key

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


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="seconds to keep the peers talking")] = 10.0,
    workdir: Annotated[Path | None, typer.Option(help="where Tor keeps its files")] = None,
) -> None:
    """Self-contained demo: private Tor network, two emulated kaspad nodes behind two bridges,
    onion services, onion gossip; prints a summary and tears everything down."""
    setup_logging("warning")
    from bridge.demo import run_demo

    try:
        ok = run_demo(duration=duration, workdir=workdir, echo=typer.echo)
    except BridgeError as exc:
        typer.echo(f"demo failed: {exc.describe()}", err=True)
        raise typer.Exit(1) from exc
    raise typer.Exit(0 if ok else 1)


@rig_app.command("up")
def rig_up(
    dir: Annotated[Path, typer.Option("--dir", help="state directory")],
    clients: int = 1,
    onion_hosts: int = 1,
    detach: Annotated[bool, typer.Option(help="return once up; stop with `rig down`")] = False,
) -> None:
    """Start the private Tor network (foreground until Ctrl-C unless --detach)."""
    from bridge.rig.__main__ import summary, up

    t0 = time.monotonic()
    net = up(dir, clients=clients, onion_hosts=onion_hosts, detach=detach)
    typer.echo(summary(net))
    typer.echo(f"up in {time.monotonic() - t0:.1f}s")
    if detach:
        return
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        net.stop()


@rig_app.command("down")
def rig_down(dir: Annotated[Path, typer.Option("--dir")]) -> None:
    """Stop a detached private Tor network."""
    from bridge.rig.__main__ import down

    down(dir)


@rig_app.command("status")
def rig_status(dir: Annotated[Path, typer.Option("--dir")],
               as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the private Tor network's processes and bootstrap state."""
    from bridge.rig.__main__ import summary
    from bridge.rig.tornet import TorNetwork

    net = TorNetwork.attach(dir)
    if as_json:
        typer.echo(json.dumps(net.status(), indent=2))
    else:
        typer.echo(summary(net))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
