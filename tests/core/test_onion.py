from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.errors import OnionAddressError
from bridge.core.onion import OnionAddress, is_onion_host, onion_checksum

# rend-spec-v3 §6 example address.
SPEC_ADDR = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion"
SPEC_ID = SPEC_ADDR.removesuffix(".onion")
SPEC_PUBKEY = bytes.fromhex("79bcc625184b05194975c28b66b66b0469f7f6556fb1ac3189a79b40dda32f1f")
B32 = "abcdefghijklmnopqrstuvwxyz234567"


def _encode(pubkey: bytes, checksum: bytes, version: bytes) -> str:
    return base64.b32encode(pubkey + checksum + version).decode().lower() + ".onion"


def test_spec_vector_independently_verified() -> None:
    raw = base64.b32decode(SPEC_ID.upper())
    assert len(raw) == 35
    pubkey, checksum, version = raw[:32], raw[32:34], raw[34:]
    assert version == b"\x03"
    assert checksum == hashlib.sha3_256(b".onion checksum" + pubkey + version).digest()[:2]
    assert pubkey == SPEC_PUBKEY


def test_spec_vector_parses() -> None:
    addr = OnionAddress.parse(SPEC_ADDR)
    assert addr.pubkey == SPEC_PUBKEY
    assert addr.host == SPEC_ADDR
    assert addr.service_id == SPEC_ID
    assert str(addr) == SPEC_ADDR
    assert addr.raw35() == base64.b32decode(SPEC_ID.upper())
    assert OnionAddress.from_pubkey(SPEC_PUBKEY) == addr


def test_bare_service_id_accepted() -> None:
    assert OnionAddress.parse(SPEC_ID) == OnionAddress.parse(SPEC_ADDR)


@pytest.mark.parametrize(
    "text", [SPEC_ADDR.upper(), SPEC_ID.upper(), SPEC_ID + ".ONION", SPEC_ADDR.title()]
)
def test_uppercase_accepted_and_normalised(text: str) -> None:
    addr = OnionAddress.parse(text)
    assert addr.host == SPEC_ADDR
    assert addr.service_id == SPEC_ID


def _reject(text: str, fragment: str) -> None:
    with pytest.raises(OnionAddressError) as info:
        OnionAddress.parse(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".onion",
        SPEC_ID[:-1] + ".onion",
        SPEC_ID + "a.onion",
        SPEC_ID[:16] + ".onion",  # v2-style length
        "www." + SPEC_ADDR,  # subdomains are not accepted
        SPEC_ADDR + ".onion",
    ],
)
def test_wrong_length(text: str) -> None:
    _reject(text, "wrong length")


@pytest.mark.parametrize("bad", ["0", "1", "8", "9", "=", "-", "é", "."])
def test_non_base32_char(bad: str) -> None:
    text = SPEC_ID[:10] + bad + SPEC_ID[11:] + ".onion"
    _reject(text, "not in the base32 alphabet")


@pytest.mark.parametrize("text", [" " + SPEC_ADDR, SPEC_ADDR + "\n", "\t" + SPEC_ID])
def test_surrounding_whitespace_rejected(text: str) -> None:
    _reject(text, "whitespace")


def test_unicode_lookalike_rejected() -> None:
    # "\u212a" (KELVIN SIGN).lower() == "k": must not be case-folded into a valid address.
    i = SPEC_ID.index("k")
    text = SPEC_ID[:i] + "\u212a" + SPEC_ID[i + 1 :] + ".onion"
    assert text.lower() == SPEC_ADDR
    _reject(text, "not in the base32 alphabet")
    _reject(SPEC_ID + ".\u0131\u212a", "wrong length")  # non-ASCII suffix is not ".onion"


def test_bad_checksum_single_char_flip() -> None:
    # Flip a character inside the pubkey part: checksum no longer matches.
    c = SPEC_ID[5]
    text = SPEC_ID[:5] + ("a" if c != "a" else "b") + SPEC_ID[6:] + ".onion"
    _reject(text, "checksum mismatch")


def test_bad_checksum_in_checksum_bytes() -> None:
    good = onion_checksum(SPEC_PUBKEY)
    bad = bytes([good[0] ^ 0x01, good[1]])
    _reject(_encode(SPEC_PUBKEY, bad, b"\x03"), "checksum mismatch")


@pytest.mark.parametrize("version", [0, 1, 2, 4, 0xFF])
def test_wrong_version(version: int) -> None:
    v = bytes([version])
    # Even with a checksum computed correctly over that version, only v3 is accepted.
    _reject(_encode(SPEC_PUBKEY, onion_checksum(SPEC_PUBKEY, v), v), "version byte")


def test_rusty_kaspa_fork_test_string_rejected() -> None:
    # The fork accepts this; it decodes to 35 zero bytes (version 0x00).
    with pytest.raises(OnionAddressError):
        OnionAddress.parse("a" * 56 + ".onion")
    _reject("a" * 56 + ".onion", "version byte")


def test_is_value_error() -> None:
    with pytest.raises(ValueError):
        OnionAddress.parse("nope")


@pytest.mark.parametrize("pubkey", [b"", b"\x00" * 31, b"\x00" * 33])
def test_from_pubkey_wrong_length(pubkey: bytes) -> None:
    with pytest.raises(OnionAddressError, match="32 bytes"):
        OnionAddress.from_pubkey(pubkey)


def test_from_pubkey_normalises_bytearray() -> None:
    addr = OnionAddress.from_pubkey(bytearray(SPEC_PUBKEY))  # type: ignore[arg-type]
    assert type(addr.pubkey) is bytes
    assert addr == OnionAddress.parse(SPEC_ADDR)
    assert hash(addr) == hash(OnionAddress.parse(SPEC_ADDR))


def test_exhaustive_single_substitutions_of_spec_vector() -> None:
    # Deterministic: every base32 substitution at every position of the spec address is rejected.
    for i, orig in enumerate(SPEC_ID):
        for c in B32:
            if c == orig:
                continue
            with pytest.raises(OnionAddressError):
                OnionAddress.parse(SPEC_ID[:i] + c + SPEC_ID[i + 1 :] + ".onion")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SPEC_ADDR, True),
        (SPEC_ADDR.upper(), True),
        ("foo.OnIoN", True),
        ("a" * 56 + ".onion", True),  # cheap check only: no validation
        (SPEC_ID, False),
        ("example.com", False),
        ("1.2.3.4", False),
        ("onion", False),
        (SPEC_ADDR + ".", False),
    ],
)
def test_is_onion_host(text: str, expected: bool) -> None:
    assert is_onion_host(text) is expected


@given(st.binary(min_size=32, max_size=32))
def test_roundtrip(pubkey: bytes) -> None:
    addr = OnionAddress.from_pubkey(pubkey)
    assert len(addr.service_id) == 56
    assert addr.host == addr.host.lower()
    assert addr.host.endswith(".onion")
    assert OnionAddress.parse(addr.host) == addr
    assert OnionAddress.parse(addr.service_id) == addr
    assert OnionAddress.parse(addr.host.upper()) == addr
    raw = addr.raw35()
    assert raw[:32] == pubkey and raw[34:] == b"\x03" and len(raw) == 35


_MUTATION_CHARS = st.sampled_from(B32 + B32.upper() + "01890=-. \n\u0131\u212a")


@given(
    st.binary(min_size=32, max_size=32),
    st.integers(min_value=0, max_value=61),
    _MUTATION_CHARS,
    st.sampled_from(["replace", "insert", "delete"]),
)
def test_single_char_mutation_rejected(pubkey: bytes, pos: int, ch: str, op: str) -> None:
    host = OnionAddress.from_pubkey(pubkey).host
    pos = min(pos, len(host) - 1)
    if op == "replace":
        mutated = host[:pos] + ch + host[pos + 1 :]
    elif op == "insert":
        mutated = host[:pos] + ch + host[pos:]
    else:
        mutated = host[:pos] + host[pos + 1 :]
    try:
        parsed = OnionAddress.parse(mutated)
    except OnionAddressError:
        # Only a case change of an ASCII letter must be accepted; non-ASCII look-alikes whose
        # lower() is ASCII (e.g. KELVIN SIGN -> "k") are rejected on purpose.
        assert not (mutated.isascii() and mutated.lower() == host)
        return
    if mutated.lower() == host:
        assert parsed.host == host
        return
    # The only way through is a 16-bit checksum collision (probability 2**-16 for a substitution
    # touching the pubkey part); then the mutated string must really be a valid, distinct address.
    assert parsed.host != host
    assert op == "replace" and pos <= 51
    assert parsed.host == mutated.lower()
