"""Typed access to the layered raw values: ``{dotted key: (value, source)}`` -> checked values.

:class:`Builder` checks each value against its key's declaration (choices, bounds) and turns
text into paths and addresses; every error names the key and where its value came from, and
never shows a secret's value.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

from bridge.config.keys import KEYS, describe_allowed, shown
from bridge.config.types import HostPort, parse_hostport
from bridge.core.errors import ConfigError, OnionAddressError

__all__ = ["Builder", "Raw"]

#: {dotted key: (typed value, source)}
Raw: TypeAlias = dict[str, tuple[object, str]]


class Builder:
    """Typed, bounds-checked access to the raw values; errors that name key and source."""

    def __init__(self, raw: Raw, home: str | None) -> None:
        self.raw = raw
        self.home = home
        self.warnings: list[str] = []

    def src(self, key: str) -> str:
        return self.raw[key][1]

    def err(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, source=self.src(key), key=key)

    def err_any(self, keys: Sequence[str], message: str) -> ConfigError:
        """A cross-field error: blames the first of ``keys`` not left at its default."""
        blame = next((k for k in keys if self.src(k) != "default"), keys[0])
        where = ", ".join(f"{k} from {self.src(k)}" for k in keys if k != blame)
        return self.err(blame, f"{message} ({where})" if where else message)

    def value(self, key: str) -> object:
        return self.raw[key][0]

    def str_(self, key: str) -> str:
        v = self.value(key)
        assert isinstance(v, str)
        return v

    def int_(self, key: str) -> int:
        v = self.value(key)
        assert isinstance(v, int)
        self._range(key, v)
        return v

    def float_(self, key: str) -> float:
        v = self.value(key)
        assert isinstance(v, float)
        self._range(key, v)
        return v

    def bool_(self, key: str) -> bool:
        v = self.value(key)
        assert isinstance(v, bool)
        return v

    def list_(self, key: str) -> tuple[str, ...]:
        v = self.value(key)
        assert isinstance(v, tuple)
        return v

    def choice(self, key: str) -> str:
        v = self.str_(key)
        spec = KEYS[key]
        if v not in spec.choices:
            close = difflib.get_close_matches(v, spec.choices, n=1, cutoff=0.6)
            did = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.err(key, f"invalid value {shown(key, v)}{did}; allowed: "
                           f"{', '.join(spec.choices)}")
        return v

    def _range(self, key: str, v: float) -> None:
        spec = KEYS[key]
        if spec.bounds is not None and not spec.bounds.allows(v):
            raise self.err(key, f"value {shown(key, v)} out of range: expected "
                           f"{describe_allowed(spec)}")

    def path(self, key: str, *, optional: bool) -> Path | None:
        v = self.str_(key)
        if not v:
            if optional:
                return None
            raise self.err(key, "must not be empty")
        if "\x00" in v:
            raise self.err(key, "path contains a NUL character")
        return self.expand(key, v)

    def expand(self, key: str, v: str) -> Path:
        """``~`` and ``~/x`` use HOME (from ``env``); ``~user/x`` the password database."""
        if v == "~" or v.startswith("~/"):
            if not self.home:
                raise self.err(key, f"cannot expand {v!r}: HOME is not set")
            return Path(self.home) / v[2:] if v != "~" else Path(self.home)
        try:
            return Path(v).expanduser()
        except RuntimeError:
            raise self.err(key, f"cannot expand {v!r}: unknown user") from None

    def hostport(
        self,
        key: str,
        *,
        default_port: int | None,
        allow_onion: bool = False,
        text: str | None = None,
    ) -> HostPort:
        v = self.str_(key) if text is None else text
        try:
            hp = parse_hostport(v, default_port)
        except OnionAddressError as e:
            raise self.err(key, str(e)) from None
        except ValueError as e:
            form = "'<ip>:<port>' or '[<ipv6>]:<port>'"
            if allow_onion:
                form += " or '<56 base32 chars>.onion:<port>'"
            raise self.err(key, f"{e}; expected {form}") from None
        if hp.kind == "onion" and not allow_onion:
            raise self.err(key, f"{v!r}: must be an IP literal, not an onion address")
        return hp
