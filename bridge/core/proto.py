"""The protobuf wire-format subset the bridge needs, with byte-exact round trips.

Messages are kept as a list of :class:`Field` values that remember their original bytes, so a
message that is decoded and re-encoded without changes comes out identical, unknown fields
included. Only the fields the rewrite policy touches are interpreted (protocol.md §4).

Bounded decoding (issue 10, defects 2, 3 and 6; docs/fuzzing.md, "Costs"). Whatever a peer sends,
the work done here is bounded by the shape of real messages, not by the size of the input: an
envelope has at most :data:`MAX_ENVELOPE_FIELDS` fields, a Version :data:`MAX_VERSION_FIELDS`, a
NetAddress :data:`MAX_NET_ADDRESS_FIELDS`, and :func:`decode_addresses` counts the entries by their
tags before it builds any (:class:`TooManyAddresses`). A message made of millions of tiny fields
(a gzip bomb inflates to that) fails after a few dozen of them instead of building millions of
objects. The byte caps for what the bridge inflates are :data:`MAX_VERSION_BYTES` and
:data:`MAX_ADDRESSES_BYTES`.

Repeated fields follow protobuf: the last occurrence of a scalar wins (:func:`first`), and two
occurrences of an embedded message merge (``Version.address`` is decoded from all of them
concatenated), so what the bridge checks is what kaspad decodes.
"""

from __future__ import annotations

from bridge.core.envelope import (
    ADDRESSES,
    BLOCK,
    INV_RELAY_BLOCK,
    KNOWN_PAYLOADS,
    PAYLOAD_NAMES,
    PING,
    PONG,
    READY,
    REJECT,
    REQUEST_ADDRESSES,
    REQUEST_ID,
    RESPONSE_ID,
    VERACK,
    VERSION,
    Envelope,
    EnvelopeScanner,
    NeedMore,
    payload_name,
    payload_tag,
    peek_payload_tag,
)
from bridge.core.messages import (
    NA_IP,
    NA_ONION,
    NA_PORT,
    NA_TIMESTAMP,
    SERVICE_ADDRV2,
    V_ADDRESS,
    V_ID,
    V_NETWORK,
    V_PROTOCOL,
    V_SERVICES,
    V_TIMESTAMP,
    V_USER_AGENT,
    NetAddress,
    TooManyAddresses,
    Version,
    count_addresses,
    decode_addresses,
    encode_addresses,
)
from bridge.core.wire import (
    I32,
    I64,
    LEN,
    MAX_ADDRESSES,
    MAX_ADDRESSES_BYTES,
    MAX_ADDRESSES_SEND,
    MAX_ENVELOPE_FIELDS,
    MAX_NET_ADDRESS_BYTES,
    MAX_NET_ADDRESS_FIELDS,
    MAX_VARINT_BYTES,
    MAX_VERSION_BYTES,
    MAX_VERSION_FIELDS,
    VARINT,
    Field,
    TooManyFields,
    Truncated,
    decode_varint,
    encode_fields,
    encode_varint,
    first,
    iter_fields,
    make_len_field,
    make_varint_field,
    parse,
    replace_field,
)

__all__ = [
    "ADDRESSES",
    "BLOCK",
    "I32",
    "I64",
    "INV_RELAY_BLOCK",
    "KNOWN_PAYLOADS",
    "LEN",
    "MAX_ADDRESSES",
    "MAX_ADDRESSES_BYTES",
    "MAX_ADDRESSES_SEND",
    "MAX_ENVELOPE_FIELDS",
    "MAX_NET_ADDRESS_BYTES",
    "MAX_NET_ADDRESS_FIELDS",
    "MAX_VARINT_BYTES",
    "MAX_VERSION_BYTES",
    "MAX_VERSION_FIELDS",
    "NA_IP",
    "NA_ONION",
    "NA_PORT",
    "NA_TIMESTAMP",
    "PAYLOAD_NAMES",
    "PING",
    "PONG",
    "READY",
    "REJECT",
    "REQUEST_ADDRESSES",
    "REQUEST_ID",
    "RESPONSE_ID",
    "SERVICE_ADDRV2",
    "VARINT",
    "VERACK",
    "VERSION",
    "V_ADDRESS",
    "V_ID",
    "V_NETWORK",
    "V_PROTOCOL",
    "V_SERVICES",
    "V_TIMESTAMP",
    "V_USER_AGENT",
    "Envelope",
    "EnvelopeScanner",
    "Field",
    "NeedMore",
    "NetAddress",
    "TooManyAddresses",
    "TooManyFields",
    "Truncated",
    "Version",
    "count_addresses",
    "decode_addresses",
    "decode_varint",
    "encode_addresses",
    "encode_fields",
    "encode_varint",
    "first",
    "iter_fields",
    "make_len_field",
    "make_varint_field",
    "parse",
    "payload_name",
    "payload_tag",
    "peek_payload_tag",
    "replace_field",
]


