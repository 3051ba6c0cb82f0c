"""What an edge signs with its current key to rotate to a new one, and how keys are named.

Both sides need the same bytes: the edge signs (``cairn-edge rotate-key``), the hub verifies
(:meth:`hub.registry.Registry.rotate_key`).
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["ROTATION_DOMAIN", "key_fingerprint", "rotation_message", "sign_rotation"]

ROTATION_DOMAIN: Final = b"cairn-rotate-v1\x00"
"""First bytes of the message an edge signs with its old key to rotate to a new one."""


def key_fingerprint(public_key: bytes) -> str:
    """A short, stable name of a public key for logs and listings: ``sha256:<16 hex>``."""
    return "sha256:" + hashlib.sha256(public_key).hexdigest()[:16]


def rotation_message(tenant: str, edge: str, new_key: bytes, signed_at_s: int) -> bytes:
    """What an edge signs with its *old* key to activate ``new_key`` (length-prefixed fields)."""
    fields = [tenant.encode(), edge.encode(), new_key]
    return (
        ROTATION_DOMAIN
        + b"".join(struct.pack(">I", len(f)) + f for f in fields)
        + struct.pack(">q", signed_at_s)
    )


def sign_rotation(
    old: Ed25519PrivateKey, tenant: str, edge: str, new_key: bytes, signed_at_s: int
) -> bytes:
    """The proof for a rotation: a signature of the old key over :func:`rotation_message`."""
    return old.sign(rotation_message(tenant, edge, new_key, signed_at_s))
