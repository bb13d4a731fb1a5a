"""Onion key file handling, address derivation, permission diagnostics, redaction, backoff."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.tor.control import (
    ControlAuth,
    ControlEndpoint,
    explain_unreadable,
    parse_bootstrap_phase,
)
from bridge.tor.errors import OnionKeyError
from bridge.tor.keys import OnionKey, default_key_path, load_key, save_key
from bridge.tor.supervisor import Backoff, OnionSpec


def _rfc8032_key() -> OnionKey:
    sk = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    h = bytearray(hashlib.sha512(sk).digest())
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return OnionKey(bytes(h))


def test_public_key_matches_rfc8032_vector() -> None:
    k = _rfc8032_key()
    assert k.public_key.hex() == \
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert len(k.service_id) == 56 and k.service_id.endswith("d")
    assert k.blob_content() not in repr(k) and k.service_id in repr(k)


def test_blob_roundtrip_and_errors() -> None:
    k = _rfc8032_key()
    assert OnionKey.from_blob(k.to_blob()) == k
    assert OnionKey.from_blob(k.blob_content()) == k
    with pytest.raises(ValueError, match="RSA1024"):
        OnionKey.from_blob("RSA1024:abcd")
    with pytest.raises(ValueError, match="base64"):
        OnionKey.from_blob("ED25519-V3:!!!")
    with pytest.raises(ValueError, match="32 bytes"):
        OnionKey.from_blob("ED25519-V3:" + "A" * 43 + "=")


def test_save_and_load(tmp_path: Path) -> None:
    path = default_key_path(tmp_path / "data", "simnet")
    assert path == tmp_path / "data" / "simnet" / "onion_ed25519_v3.key"
    assert load_key(path) is None
    k = _rfc8032_key()
    old = os.umask(0)
    try:
        save_key(path, k)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == k.to_blob() + "\n"
    assert load_key(path) == k
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no tmp leftovers
    save_key(path, k)  # overwrite atomically
    assert load_key(path) == k


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_refuses_group_or_world_accessible_key(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k"
    save_key(path, _rfc8032_key())
    path.chmod(mode)
    with pytest.raises(OnionKeyError) as ei:
        load_key(path)
    msg = str(ei.value)
    assert str(path) in msg and "chmod 600" in msg and f"{mode:04o}" in msg


def test_malformed_key_file_does_not_echo(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("ED25519-V3:c2VjcmV0LXNlY3JldA==\n")
    path.chmod(0o600)
    with pytest.raises(OnionKeyError, match="malformed") as ei:
        load_key(path)
    assert "c2VjcmV0" not in str(ei.value)


def test_explain_unreadable_names_owner_mode_and_missing_permission() -> None:
    # pytest's tmp dirs live under a 0700 directory; use a world-searchable one in /tmp
    base = Path(tempfile.mkdtemp(prefix="ktb-perm-"))
    try:
        _check_explain(base)
    finally:
        shutil.rmtree(base)


def _check_explain(base: Path) -> None:
    base.chmod(0o755)
    d = base / "tor"
    d.mkdir()
    d.chmod(0o755)
    cookie = d / "control_auth_cookie"
    cookie.write_bytes(os.urandom(32))
    cookie.chmod(0o600)
    # as an unrelated user: the file lacks read permission for "others"
    msg = explain_unreadable(cookie, uid=54321, gids=[54321])
    assert str(cookie) in msg and "mode 0600" in msg and "lacks read permission" in msg
    assert "uid 54321" in msg and "owner" in msg and "group" in msg
    d.chmod(0o700)
    msg = explain_unreadable(cookie, uid=54321, gids=[54321])
    assert f"directory {d}" in msg and "search (x)" in msg
    d.chmod(0o755)
    assert "does not exist" in explain_unreadable(d / "nope", uid=54321, gids=[])


def test_redaction_of_stem_trace_logs(caplog: pytest.LogCaptureFixture) -> None:
    import bridge.tor.control  # noqa: F401  (installs the filter)

    k = _rfc8032_key()
    caplog.set_level(1, logger="stem")
    lg = logging.getLogger("stem")
    lg.log(5, 'Sent to tor: AUTHENTICATE "hunter2"')
    lg.log(5, "Sent to tor: ADD_ONION ED25519-V3:%s Port=1,2", k.blob_content())
    lg.log(5, "Received from tor: 250-PrivateKey=ED25519-V3:%s", k.blob_content())
    assert "hunter2" not in caplog.text and k.blob_content() not in caplog.text
    assert caplog.text.count("<redacted>") == 3


def test_password_never_in_repr() -> None:
    assert "pw" not in repr(ControlAuth(password="pw", password_env=None))


def test_endpoint_parse() -> None:
    assert ControlEndpoint.parse("127.0.0.1:9051") == ControlEndpoint.tcp("127.0.0.1", 9051)
    assert ControlEndpoint.parse("9151").port == 9151
    assert ControlEndpoint.parse("unix:/run/tor/control").socket_path == Path("/run/tor/control")
    assert str(ControlEndpoint.parse("/run/tor/control")) == "unix:/run/tor/control"


def test_parse_bootstrap_phase() -> None:
    st_ = parse_bootstrap_phase(
        'WARN BOOTSTRAP PROGRESS=14 TAG=handshake SUMMARY="Handshaking with a relay" '
        'WARNING="Connection refused" REASON=CONNECTREFUSED COUNT=3 RECOMMENDATION=warn')
    assert (st_.progress, st_.tag, st_.summary, st_.warning) == (
        14, "handshake", "Handshaking with a relay", "Connection refused")
    assert not st_.done


@given(st.integers(min_value=0, max_value=1000))
def test_backoff_bounded_and_jittered(attempt: int) -> None:
    b = Backoff(initial=0.25, factor=2, cap=5, jitter=0.5)
    d = b.delay(attempt, random.Random(attempt))
    assert 0 < d <= 5
    assert d >= min(5, 0.25 * 2 ** min(attempt, 64)) * 0.5


def test_onion_spec_defaults(tmp_path: Path) -> None:
    assert OnionSpec.for_network(tmp_path, "mainnet", ("127.0.0.1", 1)).virt_port == 16111
    s = OnionSpec.for_network(tmp_path, "simnet", ("127.0.0.1", 1))
    assert s.virt_port == 16511 and s.key_path == tmp_path / "simnet" / "onion_ed25519_v3.key"
