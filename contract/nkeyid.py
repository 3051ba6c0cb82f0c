"""An edge's Ed25519 identity key is also its NATS nkey: the encodings, in one place.

The edge signs batches with its Ed25519 key; NATS authenticates the same key as a user nkey
(``U...`` public key, ``SU...`` seed). Both sides (the hub writing the server's authorization,
the edge logging in) convert with these two functions, so they cannot disagree.
"""

from __future__ import annotations

import base64

import nkeys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from contract.errors import SignatureError

__all__ = ["nkey_public", "nkey_seed"]

_KEY_BYTES = 32


def nkey_public(public_key: bytes) -> str:
    """The NATS user public key (``U`` + base32) of a raw 32-byte Ed25519 public key."""
    if len(public_key) != _KEY_BYTES:
        raise SignatureError(f"an Ed25519 public key is {_KEY_BYTES} bytes, got {len(public_key)}")
    # The nkeys encoding of a public key: prefix byte, key, CRC-16 (little-endian), base32.
    prefixed = bytes([nkeys.PREFIX_BYTE_USER]) + public_key
    raw = prefixed + bytes(nkeys.crc16_checksum(prefixed))
    return base64.b32encode(raw).decode().rstrip("=")


def nkey_seed(key: Ed25519PrivateKey) -> bytes:
    """The NATS user seed (``SU...``) of an Ed25519 private key (``nkeys_seed_str`` of nats-py)."""
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    seed: bytes = nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_USER)
    return seed
