"""Every configuration key as a real option of a command (``run``, ``kaspad-flags``, ``doctor``,
``status``), generated from the declarations in :mod:`bridge.config.keys`.

:func:`config_options` adds one typer option per key to a command's signature: ``--slots-count``,
``--tor-listen-onion/--no-tor-listen-onion``, ``--peers-connect`` (repeatable), grouped in
``--help`` by section with the key's doc and built-in default, and known to shell completion
(``--install-completion``), which also offers a key's allowed values (``--mode`` → ``tor-only``,
``hybrid``). The command receives what was given on the command line as ``options`` ({dotted
key: raw value}), for :func:`bridge.config.parse_options`; an option that was not given is
absent, so the environment and the file keep their say (flag > environment > file > default).
The control password has a hidden option that only refuses it (never on the command line).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, TypeVar

import typer
from rich.markup import escape

from bridge.config.keys import KEYS, Key, describe_allowed, flag_name, is_secret_key

__all__ = ["PANEL_PREFIX", "config_options", "option_names"]

_R = TypeVar("_R")

#: Title of the help panel of a section's keys ("Configuration: tor.*").
PANEL_PREFIX: Final = "Configuration: "
_CTX: Final = "ktb_key_options_ctx"
_METAVARS: Final[Mapping[str, str]] = {
    "str": "TEXT", "path": "PATH", "int": "INTEGER", "float": "NUMBER", "list": "TEXT",
}  # fmt: skip


def _param(key: str) -> str:
    """The Python parameter name of a key's option (never a name a command uses itself)."""
    return "ktb_key__" + key.replace(".", "__")


def _completer(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def complete(incomplete: str) -> list[str]:
        return [c for c in choices if c and c.startswith(incomplete)]

    return complete


def _help(key: Key) -> str:
    """The key's doc, then in one parenthesis its range (if bounded) and the names the same key
    has in a file / ``--set`` and in the environment."""
    text = key.doc
    if key.kind == "list":
        text += " Repeat the option or give a comma-separated list."
    extra = []
    if key.bounds is not None:
        extra.append(describe_allowed(key).split(" with ", 1)[-1])
    extra.append(f"{key.name}, {key.env}")
    return escape(f"{text} ({'; '.join(extra)})")


def _option(key: Key) -> inspect.Parameter:
    panel = PANEL_PREFIX + escape(f"{key.section}.*" if key.section else "top level")
    flag = flag_name(key.name)
    info: Any
    annotation: Any
    if key.secret:  # only there to refuse it with a reason (bridge.config.flags)
        info = typer.Option(flag, hidden=True)
        return inspect.Parameter(_param(key.name), inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Annotated[str | None, info])
    # An empty default is shown as a word: typer shows nothing for "" and [].
    empty = key.default in ("", ())
    show: bool | str = ("none" if key.kind == "list" else "empty") if empty else True
    if key.kind == "bool":
        info = typer.Option(f"{flag}/--no-{flag[2:]}", help=_help(key), show_default=show,
                            rich_help_panel=panel)
        annotation = bool
    elif key.kind == "list":
        info = typer.Option(flag, help=_help(key), show_default=show, rich_help_panel=panel,
                            metavar=_METAVARS[key.kind])
        annotation = list[str]
    else:
        metavar = "[" + "|".join(c or '""' for c in key.choices) + "]" if key.choices else (
            _METAVARS[key.kind])
        info = typer.Option(flag, help=_help(key), show_default=show, rich_help_panel=panel,
                            metavar=metavar,
                            autocompletion=_completer(key.choices) if key.choices else None)
        annotation = str
    default = list(key.default) if isinstance(key.default, tuple) else key.default
    return inspect.Parameter(_param(key.name), inspect.Parameter.KEYWORD_ONLY,
                             default=default, annotation=Annotated[annotation, info])


def option_names() -> list[str]:
    """Every option :func:`config_options` adds (``--no-…`` included), for collision checks."""
    names = []
    for key in KEYS.values():
        names.append(flag_name(key.name))
        if key.kind == "bool" and not is_secret_key(key.name):
            names.append("--no-" + flag_name(key.name)[2:])
    return names


def config_options(fn: Callable[..., _R]) -> Callable[..., _R]:
    """Add every configuration key as an option of the typer command ``fn``, which takes the
    ones given on the command line as the keyword argument ``options`` ({dotted key: str, bool
    or list of str}). Apply below ``@app.command`` (and any ``functools.wraps`` decorator)."""
    sig = inspect.signature(fn, eval_str=True)  # the annotations typer reads
    if "options" not in sig.parameters:
        raise TypeError(f"{fn.__name__} takes no 'options' parameter")
    own = [p for name, p in sig.parameters.items() if name != "options"]
    generated = [_option(key) for key in KEYS.values()]
    ctx = inspect.Parameter(_CTX, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> _R:
        context: typer.Context = kwargs.pop(_CTX)
        options: dict[str, object] = {}
        for key in KEYS:
            value = kwargs.pop(_param(key))
            source = context.get_parameter_source(_param(key))
            # Only what the command line gave: a default must not hide the environment/file.
            if source is not None and source.name == "COMMANDLINE":
                options[key] = value
        return fn(*args, options=options, **kwargs)

    wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[*own, *generated, ctx])
    return wrapper
