"""Batch signing: every batch an edge publishes carries an Ed25519 signature of the edge's key.

The signature covers what the hub acts on: the tenant and edge the batch claims to come from,
its sequence number (the de-duplication key), the codec version and the exact body bytes. It
travels as base64url without padding in the ``Cairn-Sig`` header.

Signed message (:func:`signing_payload`), all integers big-endian::

    b"cairn-batch-v1\\x00"           domain separation: nothing else Cairn signs starts so
    u32 len(tenant) || tenant       UTF-8
    u32 len(edge)   || edge         UTF-8
    u64 seq
    u32 codec
    u64 len(body)   || sha256(body) 32 bytes

Every field has a fixed size or a length prefix, so two different tuples never give the same
message.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contract.errors import ConfigError, SignatureError
from contract.names import (
    HDR_CODEC,
    HDR_COUNT,
    HDR_EDGE,
    HDR_MSG_ID,
    HDR_SEQ,
    HDR_SIGNATURE,
    msg_id,
)

__all__ = [
    "KEY_CONFIG_NAME",
    "SIGNATURE_DOMAIN",
    "b64url",
    "batch_headers",
    "generate_key",
    "load_or_create_key",
    "private_key_pem",
    "public_key_bytes",
    "sign_batch",
    "signing_payload",
    "verify_batch",
]

_log = logging.getLogger(__name__)

SIGNATURE_DOMAIN: Final = b"cairn-batch-v1\x00"
"""The first bytes of every signed batch message."""
KEY_CONFIG_NAME: Final = "identity_key"
"""The name :class:`ConfigError` carries when the key file cannot be used."""

_KEY_MODE: Final = 0o600
_SIGNATURE_LEN: Final = 64
_PUBLIC_KEY_LEN: Final = 32
_U32_MAX: Final = 2**32 - 1
_U64_MAX: Final = 2**64 - 1


def generate_key() -> Ed25519PrivateKey:
    """A new random Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def b64url(raw: bytes) -> str:
    """base64url without padding: how signatures, public keys and proofs travel in headers
    and JSON."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """The private key as an unencrypted PKCS#8 PEM (what key files hold; keep it 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(KEY_CONFIG_NAME, f"{path}: cannot read key file: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(KEY_CONFIG_NAME, f"{path}: not a PEM PKCS8 private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(KEY_CONFIG_NAME, f"{path}: not an Ed25519 key")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        _log.warning("key file %s had mode %o; setting it to %o", path, mode, _KEY_MODE)
        path.chmod(_KEY_MODE)
    return key


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The private key stored at ``path``, made and stored first if there is none.

    The file is PEM (PKCS8, unencrypted) with mode 0600. Creation is atomic: the key is
    written and fsynced under a temporary name, then hard-linked into place, so a crash never
    leaves a partial key and two processes racing to create it end up with the same key.
    Raises :class:`ConfigError` if the file exists but is not an Ed25519 private key or
    cannot be read or written.
    """
    if path.exists():
        return _load(path)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigError(KEY_CONFIG_NAME, f"{path}: cannot create key file: {exc}") from exc
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, _KEY_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(private_key_pem(generate_key()))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            _log.info("key file %s appeared while creating it; using that one", path)
        else:
            _fsync_dir(path.parent)
            _log.info("created a new identity key in %s", path)
    except OSError as exc:
        raise ConfigError(KEY_CONFIG_NAME, f"{path}: cannot create key file: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return _load(path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key of ``key`` (what the hub registers at enrollment)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _field(text: str, name: str) -> bytes:
    if not isinstance(text, str):
        raise SignatureError(f"{name} must be a str, not {type(text).__name__}")
    try:
        raw = text.encode()
    except UnicodeEncodeError as exc:
        raise SignatureError(f"{name} is not encodable as UTF-8") from exc
    if len(raw) > _U32_MAX:
        raise SignatureError(f"{name} is too long")
    return struct.pack(">I", len(raw)) + raw


def _uint(value: int, name: str, top: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        raise SignatureError(f"{name} must be an integer in 0..{top}, not {value!r}")
    return value


def signing_payload(tenant: str, edge: str, seq: int, codec: int, body: bytes) -> bytes:
    """The exact message signed for a batch (see the module docstring)."""
    return b"".join(
        (
            SIGNATURE_DOMAIN,
            _field(tenant, "tenant"),
            _field(edge, "edge"),
            struct.pack(">Q", _uint(seq, "seq", _U64_MAX)),
            struct.pack(">I", _uint(codec, "codec", _U32_MAX)),
            struct.pack(">Q", len(body)),
            hashlib.sha256(body).digest(),
        )
    )


def sign_batch(
    key: Ed25519PrivateKey, tenant: str, edge: str, seq: int, codec: int, body: bytes
) -> str:
    """The ``Cairn-Sig`` header value of a batch: base64url, no padding (86 characters)."""
    signature = key.sign(signing_payload(tenant, edge, seq, codec, body))
    return b64url(signature)


def batch_headers(
    key: Ed25519PrivateKey,
    tenant: str,
    edge: str,
    seq: int,
    codec: int,
    body: bytes,
    *,
    count: int | None = None,
    msg: str | None = None,
) -> dict[str, str]:
    """The NATS headers of a signed batch, as the edge's forwarder publishes it: its
    ``Nats-Msg-Id`` (:func:`contract.names.msg_id` with the signature, unless ``msg`` says
    otherwise), edge, seq, codec, reading count (when given) and ``Cairn-Sig``."""
    signature = sign_batch(key, tenant, edge, seq, codec, body)
    headers = {
        HDR_MSG_ID: msg or msg_id(edge, seq, tenant=tenant, signature=signature),
        HDR_EDGE: edge,
        HDR_SEQ: str(seq),
        HDR_CODEC: str(codec),
    }
    if count is not None:
        headers[HDR_COUNT] = str(count)
    headers[HDR_SIGNATURE] = signature
    return headers


@functools.lru_cache(maxsize=4096)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    if len(raw) != _PUBLIC_KEY_LEN:
        raise SignatureError(f"public key of {len(raw)} bytes (expected {_PUBLIC_KEY_LEN})")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise SignatureError("malformed public key") from exc


def _decode_signature(signature: str) -> bytes:
    if not isinstance(signature, str):
        raise SignatureError(f"signature must be a str, not {type(signature).__name__}")
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SignatureError("signature is not base64url") from exc
    if len(raw) != _SIGNATURE_LEN:
        raise SignatureError(f"signature of {len(raw)} bytes (expected {_SIGNATURE_LEN})")
    # Only the one canonical spelling: no padding, no stray characters, no spare bits.
    if b64url(raw) != signature:
        raise SignatureError("signature is not canonical base64url without padding")
    return raw


def verify_batch(
    public_key: bytes,
    tenant: str,
    edge: str,
    seq: int,
    codec: int,
    body: bytes,
    signature: str,
) -> None:
    """Check a batch's ``Cairn-Sig``; raise :class:`SignatureError` unless it is valid.

    ``public_key`` is the raw 32-byte key the edge enrolled with.
    """
    if not isinstance(public_key, (bytes, bytearray, memoryview)):
        raise SignatureError(f"public key must be bytes, not {type(public_key).__name__}")
    raw = _decode_signature(signature)
    key = _public_key(bytes(public_key))
    try:
        key.verify(raw, signing_payload(tenant, edge, seq, codec, body))
    except InvalidSignature as exc:
        raise SignatureError(f"signature of batch {edge}:{seq} does not verify") from exc
