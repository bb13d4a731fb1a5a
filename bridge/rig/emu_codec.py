"""Protobuf message helpers of the kaspad emulator (:mod:`bridge.rig.emulator`): serializing,
naming a message's payload, building NetAddress, Version and (half-compressible) Block messages,
and the fork's onion-shape check.

Stateless; the sessions that send and check these messages are :mod:`bridge.rig.emu_session`.
Import these through :mod:`bridge.rig.emulator`.
"""

from __future__ import annotations

import base64
import ipaddress
import random
import time
from typing import Any

from bridge.rig.emu_config import ADDR_V2, EmulatorConfig
from bridge.rig.proto_gen import pb

# ---------------------------------------------------------------------------------------------
# Message helpers


def _ser(m: Any) -> bytes:
    """Serializer for the stream: a KaspadMessage, or raw bytes sent verbatim (escape hatch)."""
    if isinstance(m, bytes | bytearray | memoryview):
        return bytes(m)
    out: bytes = m.SerializeToString()
    return out


def _identity(b: bytes) -> bytes:
    return b


def payload_kind(m: Any) -> str | None:
    kind: str | None = m.WhichOneof("payload")
    return kind


def net_address(addr: bytes | str, port: int) -> Any:
    """Build a pb.NetAddress: ``addr`` is raw ip bytes (any length, so illegal ones can be
    built), an onion host ``"<56 chars>.onion"`` (field 5), or an IP literal string."""
    if isinstance(addr, str):
        if addr.lower().endswith(".onion"):
            return pb.NetAddress(onion=addr, port=port)
        return pb.NetAddress(ip=ipaddress.ip_address(addr).packed, port=port)
    return pb.NetAddress(ip=bytes(addr), port=port)


def _is_onion(addr: bytes | str) -> bool:
    return isinstance(addr, str) and addr.lower().endswith(".onion")


def version_message(config: EmulatorConfig) -> Any:
    services = config.services
    if services is None:
        services = ADDR_V2 if config.addrv2 else 0
    v = pb.VersionMessage(
        protocolVersion=config.protocol_version,
        services=services,
        timestamp=int(time.time() * 1000),
        id=config.node_id,
        userAgent=config.user_agent,
        network=config.network,
    )
    if config.advertised_address is not None:
        v.address.CopyFrom(net_address(*config.advertised_address))
    return pb.KaspadMessage(version=v)


def make_block_message(
    size: int,
    *,
    request_id: int = 0,
    response_id: int = 0,
    seed: int = 0,
    fill: str = "mixed",
    tx_payload: int = 60_000,
) -> Any:
    """A wire-realistic KaspadMessage{block} whose serialization is exactly ``size`` bytes.

    The block has a header and transactions whose payloads carry the bulk. ``fill``: "mixed"
    (default: half pseudo-random, half zeros, so gzip shrinks it about 2x and grpcio sends it
    with compressed-flag 1 -- note grpc-core sends flag 0 whenever gzip would not shrink the
    message), "random" (incompressible: flag 0 from grpcio) or "zeros". ``size`` must be at
    least ~200 bytes.
    """
    if fill not in ("mixed", "random", "zeros"):
        raise ValueError(f"fill must be mixed, random or zeros, not {fill!r}")
    rnd = random.Random(seed)

    def filler(n: int) -> bytes:
        if fill == "zeros":
            return bytes(n)
        if fill == "random":
            return rnd.randbytes(n)
        return rnd.randbytes(n // 2) + bytes(n - n // 2)

    header = pb.BlockHeader(
        version=1,
        hashMerkleRoot=pb.Hash(bytes=filler(32)),
        acceptedIdMerkleRoot=pb.Hash(bytes=filler(32)),
        utxoCommitment=pb.Hash(bytes=filler(32)),
        timestamp=int(time.time() * 1000),
        bits=0x207FFFFF,
        nonce=rnd.getrandbits(64),
        daaScore=1234,
        blueWork=filler(8),
        pruningPoint=pb.Hash(bytes=filler(32)),
        blueScore=1234,
    )
    header.parents.add().parentHashes.add(bytes=filler(32))
    msg = pb.KaspadMessage(response_id=response_id, request_id=request_id)
    msg.block.header.CopyFrom(header)
    if msg.ByteSize() > size:
        raise ValueError(f"size {size} is below the minimum block message size {msg.ByteSize()}")
    while size - msg.ByteSize() > tx_payload + 200:
        msg.block.transactions.add(version=0, payload=filler(tx_payload))
    last = msg.block.transactions.add(version=0, payload=b"")
    for _ in range(8):  # varint length prefixes may grow; converge on the exact size
        diff = size - msg.ByteSize()
        if diff == 0:
            return msg
        new_len = len(last.payload) + diff
        if new_len < 0:
            break
        last.payload = filler(new_len)
    if msg.ByteSize() != size:  # pragma: no cover - only for pathological sizes
        raise ValueError(f"cannot build a block message of exactly {size} bytes")
    return msg


def check_onion(host: str) -> str | None:
    """The fork's onion validation (protocol.md §11.3). Returns an error string or None."""
    h = host.lower()
    if not h.endswith(".onion"):
        return f"invalid onion address {host!r}: missing .onion suffix"
    label = h[: -len(".onion")]
    if len(label) != 56:
        return f"invalid onion address {host!r}: host part has {len(label)} chars, expected 56"
    try:
        raw = base64.b32decode(label.upper())
    except ValueError:
        return f"invalid onion address {host!r}: not base32"
    if len(raw) != 35:  # pragma: no cover - 56 base32 chars always give 35 bytes
        return f"invalid onion address {host!r}: decodes to {len(raw)} bytes"
    return None


def _fmt_secs(t: float) -> str:
    return f"{int(t)}s" if float(t).is_integer() else f"{t}s"


def _parse_grpc_peer(peer: str) -> str:
    # grpcio context.peer(): "ipv4:127.0.0.1:5555" / "ipv6:[::1]:5555" / "unix:..."
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.index("]")]
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return rest
