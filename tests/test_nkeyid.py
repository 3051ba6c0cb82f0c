"""The edge's Ed25519 key as a NATS nkey: the hub's and the edge's encodings agree with nkeys."""

from __future__ import annotations

import nkeys
import pytest

from contract.errors import SignatureError
from contract.nkeyid import nkey_public, nkey_seed
from contract.signing import generate_key, public_key_bytes


def test_seed_and_public_key_are_one_nats_identity() -> None:
    key = generate_key()
    pair = nkeys.from_seed(bytearray(nkey_seed(key)))
    assert pair.public_key.decode() == nkey_public(public_key_bytes(key))
    assert nkey_public(public_key_bytes(key)).startswith("U")
    # A signature made by the Cairn key verifies under the NATS key pair (same Ed25519 key).
    assert pair.verify(b"nonce", key.sign(b"nonce"))


def test_a_public_key_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(SignatureError, match="32 bytes"):
        nkey_public(b"short")
