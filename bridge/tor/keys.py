"""Onion service (v3) keys: derivation of the address and a safe on-disk key file.

The file format is Tor's ``ADD_ONION`` key blob, ``ED25519-V3:<base64 of the 64-byte expanded
secret key>``, one line — the same blob rusty-kaspa's TorManager (tor-interface) stores in
``p2p_onion.key``, so a key can move between the two.  The file is created 0600 in a 0700
directory and written atomically (tmp + fsync + rename + fsync of the directory).  A key file
readable or writable by group/others is refused.  The key itself is never logged or put in an
exception message; ``OnionKey.__repr__`` only shows the address.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from bridge.tor.errors import OnionKeyError

log = logging.getLogger(__name__)

KEY_FILE_NAME = "onion_ed25519_v3.key"
_BLOB_PREFIX = "ED25519-V3:"

# --- Ed25519 (RFC 8032) scalar multiplication, just enough to derive a public key -------------
_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_BY = (4 * pow(5, _P - 2, _P)) % _P


def _recover_x(y: int, sign: int) -> int:
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P)
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = (x * pow(2, (_P - 1) // 4, _P)) % _P
    if x & 1 != sign:
        x = _P - x
    return x


_BX = _recover_x(_BY, 0)
_Point = tuple[int, int, int, int]  # extended coordinates X, Y, Z, T
_B: _Point = (_BX, _BY, 1, (_BX * _BY) % _P)


def _add(p: _Point, q: _Point) -> _Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s: int, p: _Point) -> _Point:
    q: _Point = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _compress(p: _Point) -> bytes:
    zinv = pow(p[2], _P - 2, _P)
    x, y = p[0] * zinv % _P, p[1] * zinv % _P
    return int.to_bytes(y | ((x & 1) << 255), 32, "little")


def onion_address_from_public_key(pub: bytes) -> str:
    """v3 address (56 chars, no ``.onion``): base32(pubkey | checksum[:2] | 0x03)."""
    if len(pub) != 32:
        raise ValueError("an ed25519 public key is 32 bytes")
    checksum = hashlib.sha3_256(b".onion checksum" + pub + b"\x03").digest()[:2]
    return base64.b32encode(pub + checksum + b"\x03").decode("ascii").lower()


@dataclass(frozen=True)
class OnionKey:
    """An expanded ed25519 secret key as Tor uses it (64 bytes: clamped scalar | prefix)."""

    expanded: bytes

    def __post_init__(self) -> None:
        if len(self.expanded) != 64:
            raise ValueError("an expanded ed25519 key is 64 bytes")

    def __repr__(self) -> str:  # never show the secret
        return f"OnionKey({self.service_id}.onion)"

    __str__ = __repr__

    @classmethod
    def from_blob(cls, blob: str) -> OnionKey:
        """Parse ``ED25519-V3:<base64>`` (or the bare base64). Errors never echo the input."""
        text = blob.strip()
        if text.startswith(_BLOB_PREFIX):
            text = text[len(_BLOB_PREFIX):]
        elif ":" in text:
            raise ValueError(f"unsupported key type {text.split(':', 1)[0]!r} (want ED25519-V3)")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("key is not valid base64") from exc
        if len(raw) != 64:
            raise ValueError(f"key decodes to {len(raw)} bytes, an ED25519-V3 key has 64")
        return cls(raw)

    def blob_content(self) -> str:
        """The base64 part, as ``ADD_ONION ED25519-V3:<content>`` wants it."""
        return base64.b64encode(self.expanded).decode("ascii")

    def to_blob(self) -> str:
        return _BLOB_PREFIX + self.blob_content()

    @property
    def public_key(self) -> bytes:
        scalar = int.from_bytes(self.expanded[:32], "little")
        return _compress(_mul(scalar, _B))

    @property
    def service_id(self) -> str:
        return onion_address_from_public_key(self.public_key)


def default_key_path(data_dir: Path, network: str) -> Path:
    """``<data_dir>/<network>/onion_ed25519_v3.key``."""
    return Path(data_dir) / network / KEY_FILE_NAME


MAX_KEY_FILE = 4096


def read_private_file(path: Path, *, max_size: int = MAX_KEY_FILE) -> bytes | None:
    """The bytes of a secret key file; ``None`` if it does not exist.

    Raises :class:`OnionKeyError` when it is not a regular file (symlinks are not followed),
    group/world accessible (a key others could read may be compromised), too large or
    unreadable.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OnionKeyError(f"onion key file {path} cannot be opened: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OnionKeyError(f"onion key file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise OnionKeyError(
                f"onion key file {path} has mode {mode:04o}: group/others can access the secret "
                f"key; refusing to use it. Run: chmod 600 {path}")
        if st.st_size > max_size:
            raise OnionKeyError(f"onion key file {path} is {st.st_size} bytes; not a key file")
        return os.read(fd, max_size)
    finally:
        os.close(fd)


def load_key(path: Path) -> OnionKey | None:
    """Load the key at ``path``; ``None`` if there is no file yet.

    Raises :class:`OnionKeyError` when the file is group/world accessible, not a regular file,
    unreadable or malformed.
    """
    path = Path(path)
    data = read_private_file(path)
    if data is None:
        return None
    try:
        return OnionKey.from_blob(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise OnionKeyError(f"onion key file {path} is malformed: {exc}") from None


def save_key(path: Path, key: OnionKey) -> None:
    """Write ``key`` atomically: dir 0700 (created if missing), file 0600, tmp+fsync+rename.

    On any failure (disk full, read-only filesystem, ...) the temporary file is removed and
    an existing file at ``path`` is left exactly as it was; :class:`OnionKeyError` names the
    path and the cause.
    """
    path = Path(path)
    directory = path.parent
    tmp: Path | None = None
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        dmode = stat.S_IMODE(directory.stat().st_mode)
        if dmode & 0o077:
            log.warning("onion key directory %s has mode %04o; 0700 is recommended",
                        directory, dmode)
        # unique per attempt: a leftover of a crashed writer never blocks a later save
        tmp = directory / f".{path.name}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o600)
        try:
            os.fchmod(fd, 0o600)  # regardless of umask
            data = memoryview((key.to_blob() + "\n").encode("ascii"))
            while data:  # a short write must not leave a truncated key
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        why = {errno.ENOSPC: "the disk is full", errno.EROFS: "the filesystem is read-only",
               errno.EDQUOT: "the disk quota is exhausted"}.get(exc.errno or 0)
        raise OnionKeyError(f"cannot write onion key file {path}: "
                            f"{why + ' — ' if why else ''}{exc}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
