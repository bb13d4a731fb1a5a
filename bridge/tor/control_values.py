"""The values the Tor control adapter (:mod:`bridge.tor.control`) takes and returns: where and how
to connect (:class:`ControlEndpoint`, :class:`ControlAuth`), bootstrap status, events, onion
defences and the added onion, plus the parsing of Tor's replies and stem's events into them.

Pure data and parsing; no connection, no threads. Import these through :mod:`bridge.tor.control`.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.tor.errors import (
    AuthenticationError,
    ControlProtocolError,
)
from bridge.tor.keys import OnionKey

DEFAULT_MAX_LINE = 1 << 20  # 1 MiB per reply line
DEFAULT_EVENTS = ("STATUS_CLIENT", "HS_DESC", "CIRC")
PASSWORD_ENV_DEFAULT = "KTB_TOR_CONTROL_PASSWORD"


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class ControlEndpoint:
    """``host:port`` (TCP) or ``socket_path`` (Unix control socket)."""

    host: str = "127.0.0.1"
    port: int | None = 9051
    socket_path: Path | None = None

    @classmethod
    def tcp(cls, host: str, port: int) -> ControlEndpoint:
        return cls(host=host, port=port)

    @classmethod
    def unix(cls, path: str | Path) -> ControlEndpoint:
        return cls(host="", port=None, socket_path=Path(path))

    @classmethod
    def parse(cls, text: str) -> ControlEndpoint:
        """``127.0.0.1:9051``, ``9051``, ``unix:/run/tor/control`` or ``/run/tor/control``."""
        if text.startswith("unix:"):
            return cls.unix(text[5:])
        if text.startswith("/"):
            return cls.unix(text)
        host, _, port = text.rpartition(":")
        return cls.tcp(host or "127.0.0.1", int(port))

    def __str__(self) -> str:
        if self.socket_path is not None:
            return f"unix:{self.socket_path}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ControlAuth:
    """What to authenticate with. Whatever PROTOCOLINFO offers is used (NULL, HASHEDPASSWORD,
    SAFECOOKIE, COOKIE). The password comes from ``password`` (config value), else the env var
    ``password_env``, else ``password_file`` (first line). ``cookie_path`` overrides the cookie
    location PROTOCOLINFO reports (e.g. tor in another mount namespace)."""

    password: str | None = field(default=None, repr=False)
    password_env: str | None = PASSWORD_ENV_DEFAULT
    password_file: Path | None = None
    cookie_path: Path | None = None

    def resolve_password(self) -> tuple[str | None, str]:
        """(password or None, where it came from — for messages; never the value)."""
        if self.password is not None:
            return self.password, "the bridge configuration"
        if self.password_env and os.environ.get(self.password_env):
            return os.environ[self.password_env], f"environment variable {self.password_env}"
        if self.password_file is not None:
            try:
                text = Path(self.password_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise AuthenticationError(
                    f"control password file {self.password_file} unreadable: {exc.strerror}"
                ) from exc
            return text.splitlines()[0] if text else "", f"password file {self.password_file}"
        return None, "no password configured"


@dataclass(frozen=True)
class BootstrapStatus:
    progress: int
    tag: str
    summary: str
    warning: str | None = None

    @property
    def done(self) -> bool:
        return self.progress >= 100


@dataclass(frozen=True)
class TorEvent:
    """A control-port event, flattened to plain data on stem's thread."""

    kind: str  # STATUS_CLIENT, HS_DESC, CIRC, STREAM, ...
    action: str  # STATUS action / HS_DESC action / CIRC or STREAM status
    arrived_at: float
    fields: dict[str, str]
    raw: str

    @property
    def severity(self) -> str:
        return self.fields.get("severity", "")


# --------------------------------------------------------------------------- onion defences
@dataclass(frozen=True)
class OnionDefenses:
    """Tor's denial-of-service defences for an onion service, given with ADD_ONION.

    * **Proof of work** at the introduction point (tor >= 0.4.8, proposal 327): when the service
      is flooded with introductions, clients must solve a puzzle whose effort tor raises with
      the load; honest clients pay nothing while there is no attack. ``pow_queue_rate`` /
      ``pow_queue_burst``: introductions tor handles per second / at most queued (``None``: tor's
      defaults, 250 and 2500).
    * ``max_streams``: streams one rendezvous circuit may open (0 = no limit); a peer needs one
      per connection. With ``max_streams_close_circuit`` a circuit that asks for more is closed.
    """

    pow: bool = True
    pow_queue_rate: int | None = None
    pow_queue_burst: int | None = None
    max_streams: int = 0
    max_streams_close_circuit: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.max_streams <= 65535:
            raise ValueError(f"max_streams {self.max_streams}: must be 0..65535")
        for name in ("pow_queue_rate", "pow_queue_burst"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 2**31 - 1:
                raise ValueError(f"{name} {v}: must be 0..2147483647")

    def pow_keywords(self) -> list[str]:
        """The ADD_ONION keywords of the proof-of-work defence (empty when it is off)."""
        if not self.pow:
            return []
        out = ["PoWDefensesEnabled=1"]
        if self.pow_queue_rate is not None:
            out.append(f"PoWQueueRate={self.pow_queue_rate}")
        if self.pow_queue_burst is not None:
            out.append(f"PoWQueueBurst={self.pow_queue_burst}")
        return out


@dataclass(frozen=True)
class AddedOnion:
    """What ADD_ONION created: the service id, the key when tor made a NEW one, and the
    defences tor accepted (``pow`` False: not asked for, or tor does not support it)."""

    service_id: str
    key: OnionKey | None
    pow: bool = False
    max_streams: int = 0


def _reply_text(reply: Any) -> str:
    """A control reply's text without status codes (``Invalid PoWQueueRate``)."""
    return " ".join(str(text) for _code, _divider, text in reply.content())


def _refuses_pow(reply: Any) -> bool:
    """A tor reply refusing the proof-of-work keywords themselves (unknown keyword, or a tor
    built without the pow module), as opposed to a collision or a bad key."""
    code = str(reply.content()[0][0])
    return code.startswith("5") and "pow" in _reply_text(reply).lower()


# --------------------------------------------------------------------------- helpers
_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_bootstrap_phase(line: str) -> BootstrapStatus:
    """Parse ``NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"``."""
    kv = {k.upper(): (v[1:-1].replace('\\"', '"') if v.startswith('"') else v)
          for k, v in _KV.findall(line)}
    try:
        progress = int(kv.get("PROGRESS", ""))
    except ValueError:
        raise ControlProtocolError(f"unparsable bootstrap phase: {line[:200]!r}") from None
    return BootstrapStatus(progress, kv.get("TAG", ""), kv.get("SUMMARY", ""),
                           kv.get("WARNING"))


def _convert_event(event: Any) -> TorEvent:
    kind = str(getattr(event, "type", "UNKNOWN"))
    raw = str(event)
    fields: dict[str, str] = {}
    action = ""
    try:
        if kind in ("STATUS_CLIENT", "STATUS_GENERAL", "STATUS_SERVER"):
            action = str(event.action)
            fields = {str(k).lower(): str(v) for k, v in (event.arguments or {}).items()}
            fields["severity"] = str(event.runlevel)
        elif kind == "HS_DESC":
            action = str(event.action)
            fields = {"address": str(event.address), "directory": str(event.directory or ""),
                      "reason": str(event.reason or "")}
        elif kind in ("CIRC", "STREAM"):
            action = str(event.status)
            fields = {"id": str(event.id), "reason": str(event.reason or ""),
                      "remote_reason": str(getattr(event, "remote_reason", "") or "")}
            if kind == "STREAM":
                fields["circ_id"] = str(event.circ_id or "")
                fields["target"] = str(event.target or "")
                kw = getattr(event, "keyword_args", None) or {}
                fields["socks_username"] = str(kw.get("SOCKS_USERNAME", "") or "")
            else:
                fields["purpose"] = str(event.purpose or "")
    except Exception as exc:  # malformed event: keep the raw line
        fields["parse_error"] = str(exc)
    return TorEvent(kind, action, time.time(), fields, raw)
