"""`kaspa-tor-bridge onion show|backup|import` on temporary directories."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli.onion import (
    TOR_SECRET_HEADER,
    OnionCommandError,
    backup,
    import_key,
    parse_key_bytes,
    show,
)
from bridge.tor.keys import OnionKey, load_key, save_key

BRIDGE = [sys.executable, "-m", "bridge"]


def make_key(seed: int = 1) -> OnionKey:
    raw = bytearray(os.urandom(64) if seed < 0 else bytes((seed * 7 + i) % 256 for i in range(64)))
    raw[0] &= 0xF8
    raw[31] = (raw[31] & 0x7F) | 0x40
    return OnionKey(bytes(raw))


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_show_backup_import_roundtrip(tmp_path: Path) -> None:
    key = make_key()
    kf = tmp_path / "data" / "kaspa-simnet" / "onion_ed25519_v3.key"
    save_key(kf, key)
    assert show(kf).address == f"{key.service_id}.onion"

    dest = tmp_path / "backup.key"
    info = backup(kf, dest)
    assert info.address == f"{key.service_id}.onion" and mode(dest) == 0o600
    assert load_key(dest) == key
    with pytest.raises(OnionCommandError, match="already exists"):
        backup(kf, dest)
    backup(kf, dest, force=True)
    assert mode(dest) == 0o600 and not list(tmp_path.glob(".backup.key.tmp*"))

    # import into a fresh data dir
    kf2 = tmp_path / "other" / "onion_ed25519_v3.key"
    res = import_key(dest, kf2)
    assert res.address == f"{key.service_id}.onion" and load_key(kf2) == key
    assert mode(kf2) == 0o600 and mode(kf2.parent) == 0o700
    # same key again: nothing to do
    assert import_key(dest, kf2).unchanged


def test_import_refuses_a_different_key_unless_forced(tmp_path: Path) -> None:
    old, new = make_key(1), make_key(2)
    kf = tmp_path / "k" / "onion_ed25519_v3.key"
    save_key(kf, old)
    src = tmp_path / "new.key"
    save_key(src, new)
    with pytest.raises(OnionCommandError) as err:
        import_key(src, kf)
    assert old.service_id in str(err.value) and "--force" in str(err.value)
    assert load_key(kf) == old
    res = import_key(src, kf, force=True)
    assert load_key(kf) == new and res.replaced == f"{old.service_id}.onion"
    assert res.replaced_backup is not None and load_key(res.replaced_backup) == old
    assert mode(res.replaced_backup) == 0o600


def test_import_refuses_readable_source_and_garbage(tmp_path: Path) -> None:
    key = make_key()
    src = tmp_path / "k.key"
    src.write_text(key.to_blob() + "\n")
    os.chmod(src, 0o644)
    kf = tmp_path / "d" / "onion_ed25519_v3.key"
    with pytest.raises(OnionCommandError, match=r"0644.*chmod 600"):
        import_key(src, kf)
    assert not kf.exists()
    os.chmod(src, 0o600)
    src.write_text("ED25519-V3:not base64!!\n")
    with pytest.raises(OnionCommandError, match="not valid base64"):
        import_key(src, kf)
    src.write_text("RSA1024:AAAA\n")
    with pytest.raises(OnionCommandError, match="unsupported key type"):
        import_key(src, kf)
    unclamped = bytearray(key.expanded)
    unclamped[0] |= 1
    src.write_bytes(OnionKey(bytes(unclamped)).to_blob().encode())
    with pytest.raises(OnionCommandError, match="clamped"):
        import_key(src, kf)
    # error messages never carry key material
    try:
        src.write_text(key.to_blob()[:-4] + "\n")
        import_key(src, kf)
    except OnionCommandError as exc:
        assert key.blob_content()[:20] not in str(exc)
    assert not kf.exists()


def test_import_tor_hs_secret_key_file(tmp_path: Path) -> None:
    key = make_key(3)
    src = tmp_path / "hs_ed25519_secret_key"
    src.write_bytes(TOR_SECRET_HEADER + key.expanded)
    os.chmod(src, 0o600)
    kf = tmp_path / "d" / "onion_ed25519_v3.key"
    assert import_key(src, kf).address == f"{key.service_id}.onion"
    assert parse_key_bytes(TOR_SECRET_HEADER + key.expanded) == key


def test_show_without_key_and_with_loose_permissions(tmp_path: Path) -> None:
    kf = tmp_path / "none.key"
    with pytest.raises(OnionCommandError, match=r"no onion key .* yet"):
        show(kf)
    save_key(kf, make_key())
    os.chmod(kf, 0o640)
    with pytest.raises(OnionCommandError, match="chmod 600"):
        show(kf)


def test_cli(tmp_path: Path) -> None:
    key = make_key(4)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'network = "kaspa-simnet"\ndata_dir = "{tmp_path / "data"}"\n')
    env = dict(os.environ, HOME=str(tmp_path))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BRIDGE, "onion", *args, "-c", str(cfg)], capture_output=True,
                              text=True, env=env, timeout=60)

    res = cli("show")
    assert res.returncode == 1 and "no onion key" in res.stderr
    src = tmp_path / "src.key"
    save_key(src, key)
    res = cli("import", str(src))
    assert res.returncode == 0, res.stderr
    assert key.service_id in res.stdout and "restart the bridge" in res.stdout
    res = cli("show")
    assert res.returncode == 0 and res.stdout.strip() == f"{key.service_id}.onion"
    assert key.blob_content() not in res.stdout + res.stderr
    out = tmp_path / "b.key"
    res = cli("backup", "--to", str(out))
    assert res.returncode == 0 and mode(out) == 0o600
    res = cli("backup", "--to", str(out))
    assert res.returncode == 1 and "--force" in res.stderr
    res = cli("import", str(tmp_path / "missing.key"))
    assert res.returncode == 1 and "cannot open" in res.stderr
