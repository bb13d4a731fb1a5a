"""Loading: TOML file + ``KTB_*`` environment + overrides (command-line flags) -> :class:`Config`.

Precedence (highest first): ``overrides`` (CLI flags, dotted keys such as ``"slots.count"``) >
environment (``KTB_`` + upper-cased dotted key with ``.`` -> ``__``, e.g. ``KTB_SLOTS__COUNT=8``) >
the TOML file > built-in defaults. Each layer yields ``{dotted key: (typed value, source)}``,
type-checked against the key's declaration (:mod:`bridge.config.keys`); :mod:`bridge.config.build`
then checks bounds and the keys against each other and builds the dataclasses.

Every problem raises :class:`~bridge.core.errors.ConfigError` naming the source (file path,
``env KTB_...`` or ``--flag``), the dotted key and the allowed values; a secret's value is never
shown. Unknown keys are rejected with a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from bridge.config.build import PASSWORD_ENV_ALIAS, build
from bridge.config.keys import (
    ENV_PREFIX,
    KEYS,
    SECTIONS,
    TOP_LEVEL,
    describe_allowed,
    env_var_name,
    flag_name,
    is_secret_key,
    shown,
)
from bridge.config.model import Config
from bridge.config.raw import Raw
from bridge.config.types import HostPort, UnixSocket
from bridge.core.errors import ConfigError
from bridge.core.onion import OnionAddress

__all__ = [
    "NON_CONFIG_ENV",
    "as_dict",
    "defaults",
    "load_config",
    "parse_text_value",
    "unknown_key_error",
]

_BOOL_WORDS: Final[Mapping[str, bool]] = {
    "true": True, "false": False, "1": True, "0": False,
    "yes": True, "no": False, "on": True, "off": False,
}  # fmt: skip
_ENV_TO_KEY: Final[Mapping[str, str]] = {env_var_name(k): k for k in KEYS}
# "KTB_TOR_SOCKS" (single underscore) -> key, to catch a common mistake.
_ENV_SINGLE_UNDERSCORE: Final[Mapping[str, str]] = {
    n.replace("__", "_"): k for n, k in _ENV_TO_KEY.items() if "__" in n
}


def _suggest(key: str) -> str:
    """ " (did you mean 'x'?)" or ""."""
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in KEYS if k.rsplit(".", 1)[-1] == leaf and k != key]
    if same_leaf:
        return f" (did you mean {same_leaf[0]!r}?)"
    candidates = [*KEYS, *SECTIONS]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close and "." in key:
        section = key.split(".", 1)[0]
        in_section = [k.split(".", 1)[1] for k in KEYS if k.startswith(section + ".")]
        leaf_close = difflib.get_close_matches(leaf, in_section, n=1, cutoff=0.6)
        close = [f"{section}.{leaf_close[0]}"] if leaf_close else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key_error(key: str, source: str) -> ConfigError:
    section = key.split(".", 1)[0] if "." in key else None
    if section in SECTIONS:
        known = ", ".join(k.split(".", 1)[1] for k in KEYS if k.startswith(f"{section}."))
        where = f"known keys in [{section}]: {known}"
    else:
        where = (
            "known top-level keys: "
            + ", ".join(TOP_LEVEL)
            + "; sections: "
            + ", ".join(f"[{s}]" for s in SECTIONS)
        )
    return ConfigError(f"unknown key{_suggest(key)}; {where}", source=source, key=key)


# --------------------------------------------------------------------------------------------
# Layers: each yields {dotted key: (typed value, source)}
# --------------------------------------------------------------------------------------------


def _check_type(key: str, value: object, source: str) -> object:
    """Type-check a native (TOML / override) value; returns the normalised value."""
    spec = KEYS[key]

    def bad() -> ConfigError:
        got = f"{type(value).__name__} {shown(key, value)}"
        return ConfigError(f"expected {describe_allowed(spec)}, got {got}", source=source, key=key)

    if spec.kind == "str":
        if not isinstance(value, str):
            raise bad()
        return value
    if spec.kind == "path":
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise bad()
        return value
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if spec.kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad()
        if not math.isfinite(value):
            raise bad()
        return float(value)
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    # list
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise bad()
    items = list(value)
    if not all(isinstance(item, str) for item in items):
        raise bad()
    return tuple(items)


def _from_file(path: Path) -> Raw:
    source = str(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config file not found", source=source) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e.strerror or e}", source=source) from None
    except UnicodeDecodeError:
        raise ConfigError("config file is not valid UTF-8", source=source) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}", source=source) from None
    raw: Raw = {}
    for name, value in data.items():
        if name in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"must be a table ([{name}]), got {type(value).__name__}",
                    source=source,
                    key=name,
                )
            for sub, subvalue in value.items():
                key = f"{name}.{sub}"
                if key not in KEYS:
                    raise unknown_key_error(key, source)
                raw[key] = (_check_type(key, subvalue, source), source)
        elif name in KEYS:
            if isinstance(value, dict):
                raise ConfigError(
                    f"must be a value, not a table; expected {describe_allowed(KEYS[name])}",
                    source=source,
                    key=name,
                )
            raw[name] = (_check_type(name, value, source), source)
        else:
            raise unknown_key_error(name, source)
    return raw


def parse_text_value(key: str, text: str, source: str) -> object:
    spec = KEYS[key]

    def bad(why: str = "") -> ConfigError:
        return ConfigError(
            f"cannot parse {shown(key, text)}{why}: expected {describe_allowed(spec)}",
            source=source,
            key=key,
        )

    if spec.kind in ("str", "path"):
        return text
    stripped = text.strip()
    if spec.kind == "int":
        if not re.fullmatch(r"[+-]?[0-9]+", stripped):
            raise bad()
        return int(stripped)
    if spec.kind == "float":
        try:
            number = float(stripped)
        except ValueError:
            raise bad() from None
        if not math.isfinite(number):
            raise bad()
        return number
    if spec.kind == "bool":
        word = stripped.lower()
        if word not in _BOOL_WORDS:
            raise bad(" (use true/false, 1/0, yes/no or on/off)")
        return _BOOL_WORDS[word]
    # list: comma-separated, items stripped, empty string = empty list
    if not stripped:
        return ()
    items = tuple(item.strip() for item in stripped.split(","))
    if any(not item for item in items):
        raise bad(" (empty list item)")
    return items


#: The project's own ``KTB_*`` variables that are not configuration keys (the test script, the
#: kaspad install script and rig, the caches): never taken for a misspelt key.
NON_CONFIG_ENV = frozenset({
    "KTB_IN_NETNS", "KTB_KASPAD", "KTB_KASPAD_VERSION", "KTB_KASPAD_PROFILE",
    "KTB_KASPAD_PROTO_DIR", "KTB_KASPAD_LOG", "KTB_SKIP_KASPAD", "KTB_CACHE_DIR",
})


def _from_env(env: Mapping[str, str]) -> Raw:
    raw: Raw = {}
    names = sorted(n for n in env if n.startswith(ENV_PREFIX) and n not in NON_CONFIG_ENV)
    if PASSWORD_ENV_ALIAS in env and env_var_name("tor.control_password") in env:
        raise ConfigError(
            f"set only one of {PASSWORD_ENV_ALIAS} and {env_var_name('tor.control_password')}",
            source=f"env {PASSWORD_ENV_ALIAS}",
            key="tor.control_password",
        )
    for name in names:
        key = _ENV_TO_KEY.get(name)
        if key is None and name == PASSWORD_ENV_ALIAS:
            key = "tor.control_password"
        if key is None:
            hint = _ENV_SINGLE_UNDERSCORE.get(name)
            close = None if hint else difflib.get_close_matches(name, list(_ENV_TO_KEY), 1, 0.8)
            if hint is not None or "__" in name or close:
                suggestion = env_var_name(hint) if hint else (close[0] if close else None)
                did = f" (did you mean {suggestion}?)" if suggestion else ""
                raise ConfigError(
                    f"unknown configuration variable{did}; variables are {ENV_PREFIX} + the "
                    "upper-cased dotted key with '.' replaced by '__', e.g. KTB_SLOTS__COUNT",
                    source=f"env {name}",
                )
            continue  # some other KTB_ variable (e.g. KTB_IN_NETNS of the test script)
        source = f"env {name}"
        raw[key] = (parse_text_value(key, env[name], source), source)
    return raw


def _from_overrides(overrides: Mapping[str, object],
                    source_name: str | Mapping[str, str] | None) -> Raw:
    raw: Raw = {}
    for key, value in overrides.items():
        if value is None:  # an unset CLI option
            continue
        named = source_name.get(key) if isinstance(source_name, Mapping) else source_name
        source = named or flag_name(key)
        if key not in KEYS:
            raise unknown_key_error(key, source)
        raw[key] = (_check_type(key, value, source), source)
    return raw


def load_config(
    path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    overrides_source: str | Mapping[str, str] | None = None,
) -> Config:
    """Load and validate the configuration.

    ``path``: TOML file, or ``None`` for defaults only. ``env`` defaults to ``os.environ``;
    only ``KTB_*`` variables are looked at (unknown ``KTB_X__Y`` names and near-misses of known
    names are errors, other ``KTB_*`` names are ignored). ``overrides`` maps dotted keys to native
    values (``None`` = not given) and wins over everything; errors name them as ``--dotted-key``,
    or as ``overrides_source`` when given (``"--set"``; a mapping names some keys' source).
    """
    if env is None:
        env = os.environ
    raw: Raw = {k: (KEYS[k].default, "default") for k in KEYS}
    if path is not None:
        raw.update(_from_file(Path(path)))
    raw.update(_from_env(env))
    raw.update(_from_overrides(overrides or {}, overrides_source))
    # Normalise numeric defaults/values so the builder sees exact types.
    for key, (value, source) in raw.items():
        if KEYS[key].kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            raw[key] = (float(value), source)
        elif KEYS[key].kind == "list" and isinstance(value, list):
            raw[key] = (tuple(value), source)
    return build(raw, env.get("HOME", os.environ.get("HOME")))


def defaults() -> dict[str, object]:
    """The built-in default of every dotted key (``kaspad.p2p`` "" = derived from network)."""
    out: dict[str, object] = {}
    for key, spec in KEYS.items():
        value = spec.default
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


# Dataclass helper used by tests and the CLI's "config show".
def as_dict(config: Config) -> dict[str, object]:
    """A plain nested dict of ``config`` (addresses and paths as strings)."""

    def conv(v: object) -> object:
        if isinstance(v, HostPort | UnixSocket | Path | OnionAddress):
            return str(v)
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    out: dict[str, object] = {}
    for f in dataclasses.fields(config):
        if f.name in ("sources", "warnings"):
            continue
        v = getattr(config, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, HostPort):
            out[f.name] = {
                sf.name: (
                    "***"
                    if is_secret_key(f"{f.name}.{sf.name}") and getattr(v, sf.name)
                    else conv(getattr(v, sf.name))
                )
                for sf in dataclasses.fields(v)
            }
        else:
            out[f.name] = conv(v)
    return out
