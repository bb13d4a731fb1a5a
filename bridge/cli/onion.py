"""``kaspa-tor-bridge onion show|backup|import``: the onion service key, handled safely.

* ``show`` prints the address derived from the key file, never the key.
* ``backup`` copies the key file to a new 0600 file (atomic, refuses to overwrite unless
  ``force``).
* ``import`` validates a key (the bridge's ``ED25519-V3:<base64>`` blob — also rusty-kaspa's
  ``p2p_onion.key`` format — or Tor's own ``hs_ed25519_secret_key``), refuses a source that group
  or others can read, and installs it atomically at ``tor.onion_key_file``. An existing
  *different* key is only replaced with ``force``, and is then kept next to it as
  ``<name>.replaced-<UTC time>`` (0600) so a slip is recoverable.

Every error is an :class:`OnionCommandError` whose message says how to fix it; no message ever
contains key material.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.core.errors import BridgeError, Fault
from bridge.tor.errors import OnionKeyError
from bridge.tor.keys import OnionKey, load_key, read_private_file, save_key

#: Tor's HiddenServiceDir/hs_ed25519_secret_key: a 32-byte header, then the 64-byte key.
TOR_SECRET_HEADER = b"== ed25519v1-secret: type0 ==\x00\x00\x00"
MAX_KEY_FILE = 4096


class OnionCommandError(BridgeError):
    fault = Fault.LOCAL
    action = "nothing changed"


@dataclass(frozen=True)
class KeyInfo:
    path: Path
    address: str  # "<56>.onion"


def _address(key: OnionKey) -> str:
    return f"{key.service_id}.onion"


def _load_existing(path: Path) -> OnionKey:
    try:
        key = load_key(path)
    except OnionKeyError as exc:
        raise OnionCommandError(str(exc)) from None
    if key is None:
        raise OnionCommandError(
            f"no onion key at {path} yet: the bridge creates it the first time it publishes its "
            "onion (tor.listen_onion = true), or install one with `kaspa-tor-bridge onion "
            "import FILE`; set tor.onion_key_file if the key lives elsewhere")
    return key


def show(key_file: Path) -> KeyInfo:
    """The onion address of the key at ``key_file``."""
    return KeyInfo(key_file, _address(_load_existing(key_file)))


def _write_new_0600(dest: Path, data: bytes, *, force: bool) -> None:
    """Write ``data`` to ``dest`` atomically as 0600; without ``force`` never replace a file."""
    directory = dest.parent
    if not directory.is_dir():
        raise OnionCommandError(f"directory {directory} does not exist; create it first")
    if dest.exists() or dest.is_symlink():
        if not force:
            raise OnionCommandError(f"{dest} already exists; choose another file or pass "
                                    "--force to overwrite it")
        if not dest.is_file() or dest.is_symlink():
            raise OnionCommandError(f"{dest} exists and is not a regular file; refusing")
    tmp = directory / f".{dest.name}.tmp.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, dest)
        else:
            os.link(tmp, dest)  # atomic and never clobbers: fails if dest appeared meanwhile
            tmp.unlink()
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except FileExistsError:
        raise OnionCommandError(f"{dest} already exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise OnionCommandError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def backup(key_file: Path, dest: Path, *, force: bool = False) -> KeyInfo:
    """Copy the key at ``key_file`` to ``dest`` (0600). Returns the backed-up address."""
    key = _load_existing(key_file)
    dest = Path(dest)
    if dest.resolve() == Path(key_file).resolve():
        raise OnionCommandError(f"{dest} is the key file itself; back it up somewhere else")
    _write_new_0600(dest, (key.to_blob() + "\n").encode("ascii"), force=force)
    return KeyInfo(dest, _address(key))


def parse_key_bytes(data: bytes) -> OnionKey:
    """A key from a file's bytes: our blob (or bare base64), or Tor's binary secret key file."""
    if data.startswith(TOR_SECRET_HEADER):
        raw = data[len(TOR_SECRET_HEADER):]
        if len(raw) != 64:
            raise ValueError(f"Tor secret key file holds {len(raw)} key bytes, expected 64")
        key = OnionKey(raw)
    else:
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("not an ED25519-V3 key blob or a Tor hs_ed25519_secret_key "
                             "file") from None
        key = OnionKey.from_blob(text)
    scalar = key.expanded[:32]
    # Tor (and RFC 8032) expanded keys are clamped: low 3 bits clear, bit 254 set, bit 255 clear
    if scalar[0] & 7 or scalar[31] & 0x80 or not scalar[31] & 0x40:
        raise ValueError("the key is not a clamped ed25519 secret scalar (corrupt or not an "
                         "onion service key)")
    return key


def read_source(source: Path) -> OnionKey:
    """Read and validate a key file to import; refuses one that group/others can access."""
    source = Path(source)
    try:
        data = read_private_file(source, max_size=MAX_KEY_FILE)
    except OnionKeyError as exc:
        raise OnionCommandError(str(exc)) from None
    if data is None:
        raise OnionCommandError(f"cannot open {source}: No such file or directory")
    try:
        return parse_key_bytes(data)
    except ValueError as exc:
        raise OnionCommandError(f"{source} is not a usable onion key: {exc}") from None


@dataclass(frozen=True)
class ImportResult:
    address: str
    key_file: Path
    replaced: str | None = None  # address of the key that was replaced
    replaced_backup: Path | None = None
    unchanged: bool = False


def import_key(source: Path, key_file: Path, *, force: bool = False) -> ImportResult:
    """Install the key from ``source`` at ``key_file``."""
    key = read_source(source)
    key_file = Path(key_file)
    try:
        current = load_key(key_file)
    except OnionKeyError as exc:
        if not force:
            raise OnionCommandError(f"the existing key file is unusable ({exc}); pass --force "
                                    "to replace it") from None
        current = None
    if current is not None and current.expanded == key.expanded:
        return ImportResult(_address(key), key_file, unchanged=True)
    old_backup: Path | None = None
    if key_file.exists():
        if not force:
            old = _address(current) if current is not None else "an unreadable key"
            raise OnionCommandError(
                f"{key_file} already holds a different key ({old}); importing would change "
                "this node's onion address. Back it up (`onion backup --to FILE`), then pass "
                "--force to replace it")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        old_backup = key_file.with_name(f"{key_file.name}.replaced-{stamp}")
        try:
            _write_new_0600(old_backup, key_file.read_bytes(), force=False)
        except OSError as exc:
            raise OnionCommandError(f"cannot keep a copy of the old key: {exc}") from None
    try:
        save_key(key_file, key)
    except OnionKeyError as exc:
        raise OnionCommandError(str(exc)) from None
    return ImportResult(_address(key), key_file,
                        replaced=_address(current) if current is not None else None,
                        replaced_backup=old_backup)
