"""``kaspa-tor-bridge`` command line: parses and wires, nothing else."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import trio
import typer

from bridge.app import kaspad_flags
from bridge.config import Config, load_config
from bridge.errors import BridgeError, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Run an unmodified rusty-kaspa kaspad over Tor.")
rig_app = typer.Typer(no_args_is_help=True, help="A private Tor network on loopback (test rig).")
app.add_typer(rig_app, name="rig")

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


@app.command()
def run(
    config: ConfigOpt = None,
    network: Annotated[str | None, typer.Option(help="kaspa-mainnet, kaspa-testnet-10, …")] = None,
    mode: Annotated[str | None, typer.Option(help="tor-only | hybrid")] = None,
    peer: Annotated[list[str] | None, typer.Option(
        "--peer", help="upstream peer <onion>:port or ip:port (repeatable)")] = None,
    socks: Annotated[str | None, typer.Option(help="Tor SOCKS5 ip:port")] = None,
    control: Annotated[str | None, typer.Option(help="Tor control ip:port or unix:/path")] = None,
    log_level: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Run the bridge daemon."""
    cfg = _load(config, {"network": network, "mode": mode, "peers.connect": peer,
                         "tor.socks": socks, "tor.control": control, "log_level": log_level})
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
