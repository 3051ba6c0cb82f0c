"""Batch signing: sign, verify, tampering, key files."""

from __future__ import annotations

import base64
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.codec import CODEC_VERSION, encode_batch
from contract.errors import ConfigError, SignatureError
from contract.model import Reading
from contract.signing import (
    SIGNATURE_DOMAIN,
    generate_key,
    load_or_create_key,
    public_key_bytes,
    sign_batch,
    signing_payload,
    verify_batch,
)

BODY = encode_batch([Reading("dev-1", "temp", 1_700_000_000_000_000, 21.5)])
FIELDS: dict[str, Any] = {
    "tenant": "acme",
    "edge": "edge-7",
    "seq": 42,
    "codec": CODEC_VERSION,
    "body": BODY,
}


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return generate_key()


def sign(key: Ed25519PrivateKey, **fields: Any) -> str:
    f = FIELDS | fields
    return sign_batch(key, f["tenant"], f["edge"], f["seq"], f["codec"], f["body"])


def verify(public: bytes, signature: str, **fields: Any) -> None:
    f = FIELDS | fields
    verify_batch(public, f["tenant"], f["edge"], f["seq"], f["codec"], f["body"], signature)


def test_sign_then_verify(key: Ed25519PrivateKey) -> None:
    signature = sign(key)
    verify(public_key_bytes(key), signature)
    assert len(signature) == 86
    assert "=" not in signature
    assert set(signature) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert sign(key) == signature  # Ed25519 is deterministic


def test_public_key_is_raw_32_bytes(key: Ed25519PrivateKey) -> None:
    raw = public_key_bytes(key)
    assert len(raw) == 32
    assert public_key_bytes(key.public_key()) == raw


@pytest.mark.parametrize(
    "tampered",
    [
        {"tenant": "acme2"},
        {"tenant": "Acme"},
        {"edge": "edge-8"},
        {"seq": 43},
        {"seq": 0},
        {"codec": CODEC_VERSION + 1},
        {"body": BODY + b"\x00"},
        {"body": BODY[:-1]},
        {"body": bytes([BODY[0] ^ 1]) + BODY[1:]},
        {"body": b""},
    ],
    ids=lambda d: next(iter(d)),
)
def test_every_field_is_covered(key: Ed25519PrivateKey, tampered: dict[str, Any]) -> None:
    signature = sign(key)
    with pytest.raises(SignatureError, match="does not verify"):
        verify(public_key_bytes(key), signature, **tampered)


def test_tampered_signature_is_rejected(key: Ed25519PrivateKey) -> None:
    signature = sign(key)
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    for i in (0, 31, 32, 63):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(bad)).rstrip(b"=").decode()
        with pytest.raises(SignatureError):
            verify(public_key_bytes(key), forged)


def test_wrong_key_is_rejected(key: Ed25519PrivateKey) -> None:
    signature = sign(key)
    with pytest.raises(SignatureError, match="does not verify"):
        verify(public_key_bytes(generate_key()), signature)


@pytest.mark.parametrize(
    "public",
    [b"", b"\x00" * 31, b"\x00" * 33, "not bytes"],
    ids=["empty", "short", "long", "str"],
)
def test_malformed_public_key_is_rejected(key: Ed25519PrivateKey, public: Any) -> None:
    with pytest.raises(SignatureError):
        verify(public, sign(key))


def test_malformed_signatures_are_rejected(key: Ed25519PrivateKey) -> None:
    good = sign(key)
    public = public_key_bytes(key)
    raw = base64.urlsafe_b64decode(good + "==")
    for bad in [
        "",
        "x",
        good[:-1],
        good + "A",
        good + "==",  # padding is not the canonical spelling
        base64.b64encode(raw).decode().rstrip("="),  # standard alphabet, may hold + or /
        good[:-1] + chr(ord(good[-1]) + 1),  # different spare bits in the last character
        good[:10] + "!" + good[11:],
        "A" * 86,
    ]:
        if bad == good:
            continue
        with pytest.raises(SignatureError):
            verify(public, bad)
    with pytest.raises(SignatureError):
        verify(public, raw)  # type: ignore[arg-type]


def test_payload_is_unambiguous() -> None:
    a = signing_payload("ab", "c", 1, 1, b"x")
    b = signing_payload("a", "bc", 1, 1, b"x")
    assert a != b
    assert a.startswith(SIGNATURE_DOMAIN)


def test_payload_known_answer() -> None:
    # Frozen: changing the signed message breaks every deployed edge's signatures.
    payload = signing_payload("t", "e", 258, 1, b"abc")
    assert payload.hex() == (
        "636169726e2d62617463682d763100"  # b"cairn-batch-v1\0"
        "0000000174"  # tenant
        "0000000165"  # edge
        "0000000000000102"  # seq
        "00000001"  # codec
        "0000000000000003"  # len(body)
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256(b"abc")
    )


@pytest.mark.parametrize(
    "bad",
    [{"seq": -1}, {"seq": 2**64}, {"seq": True}, {"codec": -1}, {"codec": 2**32}, {"edge": 7}],
    ids=repr,
)
def test_out_of_range_fields_are_refused(key: Ed25519PrivateKey, bad: dict[str, Any]) -> None:
    with pytest.raises(SignatureError):
        sign(key, **bad)


# --------------------------------------------------------------------------- key files


def test_key_file_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "state" / "edge.key"
    first = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    second = load_or_create_key(path)
    assert public_key_bytes(second) == public_key_bytes(first)
    assert sorted(p.name for p in path.parent.iterdir()) == ["edge.key"]  # no temp files
    signature = sign(second)
    verify(public_key_bytes(first), signature)


def test_permissive_key_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "edge.key"
    original = load_or_create_key(path)
    path.chmod(0o644)
    again = load_or_create_key(path)
    assert public_key_bytes(again) == public_key_bytes(original)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "content",
    [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
    ids=["empty", "text", "bad-pem"],
)
def test_malformed_key_file_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "edge.key"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"edge\.key"):
        load_or_create_key(path)
    assert path.read_bytes() == content  # never overwritten


def test_non_ed25519_key_file_is_a_config_error(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "edge.key"
    other = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_or_create_key(path)


def test_racing_creators_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "edge.key"
    results: list[bytes] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        results.append(public_key_bytes(load_or_create_key(path)))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert len(set(results)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edge.key"]


def test_unwritable_folder_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError):
        load_or_create_key(blocker / "edge.key")
