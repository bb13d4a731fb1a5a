"""Tor v3 onion addresses (rend-spec-v3 §6, "Encoding onion addresses").

``onion_address = base32(PUBKEY | CHECKSUM | VERSION) + ".onion"`` where
``CHECKSUM = SHA3_256(".onion checksum" | PUBKEY | VERSION)[:2]`` and ``VERSION = b"\\x03"``.

Parsing is strict: length, alphabet, version byte *and* checksum are all verified (the rusty-kaspa
fork only checks the shape, e.g. it accepts ``"a" * 56 + ".onion"``; we do not). The Ed25519
public key is not checked to be a valid curve point.

Sans-IO: pure functions over ``str``/``bytes``.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from bridge.core.errors import OnionAddressError

__all__ = [
    "ONION_SUFFIX",
    "PUBKEY_LEN",
    "SERVICE_ID_LEN",
    "VERSION",
    "OnionAddress",
    "OnionPeer",
    "is_onion_host",
    "onion_checksum",
]

ONION_SUFFIX = ".onion"
VERSION = b"\x03"
PUBKEY_LEN = 32
CHECKSUM_LEN = 2
RAW_LEN = PUBKEY_LEN + CHECKSUM_LEN + len(VERSION)  # 35
SERVICE_ID_LEN = 56  # 35 bytes * 8 bits / 5 bits per base32 character
_CHECKSUM_PREFIX = b".onion checksum"

_B32_LOWER = "abcdefghijklmnopqrstuvwxyz234567"
_B32_CHARS = frozenset(_B32_LOWER + _B32_LOWER.upper())

_SHOW_MAX = 80


def _show(text: str) -> str:
    """``repr`` of (a prefix of) untrusted input, for error messages."""
    if len(text) > _SHOW_MAX:
        return repr(text[:_SHOW_MAX]) + f"... ({len(text)} chars)"
    return repr(text)


def _has_onion_suffix(text: str) -> bool:
    tail = text[-len(ONION_SUFFIX) :]
    # isascii(): no Unicode case-folding surprises (e.g. characters whose lower() is ASCII).
    return tail.isascii() and tail.lower() == ONION_SUFFIX


def is_onion_host(text: str) -> bool:
    """Cheap check: does ``text`` end with ``.onion`` (any case)? Does not validate the address."""
    return _has_onion_suffix(text)


def onion_checksum(pubkey: bytes, version: bytes = VERSION) -> bytes:
    """The 2-byte checksum of rend-spec-v3 §6."""
    return hashlib.sha3_256(_CHECKSUM_PREFIX + pubkey + version).digest()[:CHECKSUM_LEN]


@dataclass(frozen=True, slots=True)
class OnionAddress:
    """A validated Tor v3 onion address, identified by its 32-byte Ed25519 public key."""

    pubkey: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.pubkey, (bytes, bytearray, memoryview)):
            raise OnionAddressError(
                f"onion public key must be bytes, got {type(self.pubkey).__name__}"
            )
        pubkey = bytes(self.pubkey)
        if len(pubkey) != PUBKEY_LEN:
            raise OnionAddressError(
                f"onion public key must be {PUBKEY_LEN} bytes, got {len(pubkey)}"
            )
        object.__setattr__(self, "pubkey", pubkey)

    @classmethod
    def from_pubkey(cls, pubkey: bytes) -> OnionAddress:
        return cls(pubkey)

    @classmethod
    def parse(cls, text: str) -> OnionAddress:
        """Parse ``"<56 chars>.onion"`` or a bare ``"<56 chars>"`` service id, in any case.

        Raises :class:`OnionAddressError` naming the check that failed.
        """
        if not isinstance(text, str):
            raise OnionAddressError(f"onion address must be a string, got {type(text).__name__}")
        if text != text.strip():
            raise OnionAddressError(
                f"invalid onion address {_show(text)}: surrounding whitespace is not allowed"
            )
        service_id = text[: -len(ONION_SUFFIX)] if _has_onion_suffix(text) else text
        if len(service_id) != SERVICE_ID_LEN:
            raise OnionAddressError(
                f"invalid onion address {_show(text)}: wrong length: expected "
                f"{SERVICE_ID_LEN} base32 characters (plus optional '.onion'), "
                f"got {len(service_id)}"
            )
        for i, ch in enumerate(service_id):
            if ch not in _B32_CHARS:
                raise OnionAddressError(
                    f"invalid onion address {_show(text)}: character {ch!r} at position {i} "
                    "is not in the base32 alphabet (a-z, 2-7)"
                )
        raw = base64.b32decode(service_id.upper())
        if len(raw) != RAW_LEN:  # cannot happen for 56 alphabet characters; kept as a guard
            raise OnionAddressError(
                f"invalid onion address {_show(text)}: decoded length {len(raw)}, "
                f"expected {RAW_LEN}"
            )
        pubkey = raw[:PUBKEY_LEN]
        checksum = raw[PUBKEY_LEN : PUBKEY_LEN + CHECKSUM_LEN]
        version = raw[PUBKEY_LEN + CHECKSUM_LEN :]
        if version != VERSION:
            raise OnionAddressError(
                f"invalid onion address {_show(text)}: version byte is {version[0]:#04x}, "
                f"expected {VERSION[0]:#04x} (only v3 onion services are supported)"
            )
        expected = onion_checksum(pubkey, version)
        if checksum != expected:
            raise OnionAddressError(
                f"invalid onion address {_show(text)}: checksum mismatch "
                f"(encoded {checksum.hex()}, computed {expected.hex()}); "
                "the address is mistyped or corrupted"
            )
        return cls(pubkey)

    def raw35(self) -> bytes:
        """``pubkey | checksum | version`` (35 bytes): the fork's address-store key bytes."""
        return self.pubkey + onion_checksum(self.pubkey) + VERSION

    @property
    def service_id(self) -> str:
        """The 56 lower-case base32 characters without ``.onion`` (as ADD_ONION returns it)."""
        return base64.b32encode(self.raw35()).decode("ascii").lower()

    @property
    def host(self) -> str:
        """Lower-case ``"<56 chars>.onion"``."""
        return self.service_id + ONION_SUFFIX

    def __str__(self) -> str:
        return self.host

    def __repr__(self) -> str:
        return f"OnionAddress({self.host!r})"


@dataclass(frozen=True, slots=True)
class OnionPeer:
    """An onion service endpoint a peer told us about (gossip) or that we publish."""

    address: OnionAddress
    port: int
