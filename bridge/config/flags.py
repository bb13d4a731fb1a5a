"""Command-line overrides, derived from the key declarations: a flag per key (``--slots-count
8``, ``--no-tor-listen-onion``; real options of the commands, :mod:`bridge.cli.keyopts`, whose
values :func:`parse_options` parses; :func:`parse_flags` parses the same from a plain argument
list) and the generic ``--set slots.count=8``. All return overrides for
:func:`~bridge.config.load.load_config`; values are parsed like the environment's, and a secret
is never taken from the command line (it would be visible to every user in ``ps``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final

from bridge.config.build import PASSWORD_ENV_ALIAS
from bridge.config.keys import KEYS, describe_allowed, flag_name, is_secret_key
from bridge.config.load import parse_text_value, unknown_key_error
from bridge.core.errors import ConfigError

__all__ = ["FLAG_TO_KEY", "flag_help", "parse_flags", "parse_options", "parse_set", "set_help"]

FLAG_TO_KEY: Final[Mapping[str, str]] = {flag_name(k): k for k in KEYS}
#: A value that is really the next option: "--slots-count --tor-control-password=x" hands the
#: command-line parser "--tor-control-password=x" as the count.
_AN_OPTION: Final = re.compile(r"--[a-z]")


def flag_help() -> list[tuple[str, str]]:
    """``(flag, what it takes)`` for every key, for the CLI's help text (not the control
    password: never on the command line)."""
    return [(flag_name(k), describe_allowed(s)) for k, s in KEYS.items()
            if not is_secret_key(k)]


def _refuse_secret(key: str, source: str) -> None:
    if is_secret_key(key):
        raise ConfigError(
            "a password on the command line is visible to every user (ps); use the "
            f"{PASSWORD_ENV_ALIAS} environment variable or tor.control_password_file",
            source=source, key=key)


def _collect(pairs: Iterable[tuple[str, object]]) -> dict[str, object]:
    """Overrides from ``(key, parsed value)`` in command-line order: a list key's values add
    up, any other key's last value wins."""
    out: dict[str, object] = {}
    lists: dict[str, list[object]] = {}
    for key, parsed in pairs:
        if KEYS[key].kind == "list":
            assert isinstance(parsed, tuple)
            lists.setdefault(key, []).extend(parsed)
        else:
            out[key] = parsed
    for key, items in lists.items():
        out[key] = tuple(items)
    return out


def parse_flags(args: Sequence[str]) -> dict[str, object]:
    """Command-line flags for every config key: ``--slots-count 8``, ``--slots-count=8``,
    ``--tor-listen-onion`` / ``--no-tor-listen-onion`` for booleans; list keys repeat
    (``--peers-connect A --peers-connect B``) or take a comma-separated list. Returns
    overrides for :func:`load_config`; errors name the flag."""
    return _collect(_flag_values(args))


def _flag_values(args: Sequence[str]) -> Iterator[tuple[str, object]]:
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        name, eq, value = token.partition("=")
        negated = name.startswith("--no-") and name[:2] + name[5:] in FLAG_TO_KEY
        key = FLAG_TO_KEY.get("--" + name[5:] if negated else name)
        if key is None or not name.startswith("--"):
            close = difflib.get_close_matches(name, list(FLAG_TO_KEY), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown option {name}{hint}", source="command line")
        _refuse_secret(key, "command line")
        spec = KEYS[key]
        if spec.kind == "bool" and not eq:
            yield key, not negated
            continue
        if negated:
            raise ConfigError(f"{name} takes no value", source="command line", key=key)
        if not eq:
            # The next token is the value, unless it is another option (never parsed as this
            # one's value: "--slots-count --tor-control-password=x" must not echo the password)
            if i >= len(args) or args[i].startswith("--"):
                raise ConfigError(f"{name} needs a value: {describe_allowed(spec)}",
                                  source="command line", key=key)
            value = args[i]
            i += 1
        yield key, parse_text_value(key, value, name)


def parse_options(options: Mapping[str, object]) -> dict[str, object]:
    """Overrides from the per-key options as the command-line parser returns them: {dotted key:
    a bool (``--x/--no-x``), a string, or a list key's strings (the option repeated; each may
    be a comma-separated list)}. Values parse like the environment's; errors name the flag and
    never show a value that is really another option (it could carry a secret)."""
    pairs: list[tuple[str, object]] = []
    for key, raw in options.items():
        if key not in KEYS:
            raise unknown_key_error(key, "command line")
        _refuse_secret(key, "command line")
        flag = flag_name(key)
        if isinstance(raw, bool):
            pairs.append((key, raw))
            continue
        texts: list[object] = list(raw) if isinstance(raw, list | tuple) else [raw]
        for text in texts:
            if not isinstance(text, str):
                raise ConfigError(f"{flag}: expected text, got {type(text).__name__}",
                                  source="command line", key=key)
            if _AN_OPTION.match(text):
                raise ConfigError(f"{flag} needs a value: {describe_allowed(KEYS[key])}",
                                  source="command line", key=key)
            pairs.append((key, parse_text_value(key, text, flag)))
    return _collect(pairs)


def set_help() -> list[tuple[str, str]]:
    """``(dotted key, what it takes)`` for every key ``--set`` accepts (not the secret ones)."""
    return [(k, describe_allowed(s)) for k, s in KEYS.items() if not is_secret_key(k)]


def parse_set(items: Sequence[str]) -> dict[str, object]:
    """``--set section.key=value`` options (repeatable; the value is parsed like the key's
    environment variable; a list key repeats or takes a comma-separated list). Returns
    overrides for :func:`load_config`; errors name ``--set`` and the key, never a secret."""
    return _collect(_set_values(items))


def _set_values(items: Sequence[str]) -> Iterator[tuple[str, object]]:
    source = "--set"
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:  # the text is not shown: it could be a mistyped secret
            raise ConfigError("expected 'section.key=value', e.g. --set slots.count=8",
                              source=source, key=key if key in KEYS else None)
        if key not in KEYS:
            raise unknown_key_error(key, source)
        _refuse_secret(key, source)
        yield key, parse_text_value(key, value, source)
