"""The hub's registry: enrollment once, expiry, rotation, revocation, API keys, deny list."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from contract.signing import generate_key, public_key_bytes
from hub.registry import (
    Registry,
    RegistryError,
    decode_public_key,
    encode_public_key,
    sign_rotation,
)


@pytest.fixture
def registry(tmp_path: Path):
    r = Registry(tmp_path / "registry.sqlite3")
    r.create_tenant("acme")
    yield r
    r.close()


def _reason(call) -> str:
    with pytest.raises(RegistryError) as info:
        call()
    return info.value.reason


def test_a_token_enrolls_once(registry: Registry) -> None:
    enrollment = registry.create_enrollment("acme", "e1", 60)
    key = public_key_bytes(generate_key())
    record = registry.enroll(enrollment.token, key)
    assert (record.tenant, record.edge, record.active_key.public_key) == ("acme", "e1", key)
    assert _reason(lambda: registry.enroll(enrollment.token, key)) == "token-used"
    other = public_key_bytes(generate_key())
    assert _reason(lambda: registry.enroll(enrollment.token, other)) == "token-used"
    assert registry.verification_keys("acme", "e1") == [key]
    assert registry.active_edges() == [("acme", "e1", key)]


def test_bad_expired_and_wrong_tokens(registry: Registry) -> None:
    key = public_key_bytes(generate_key())
    assert _reason(lambda: registry.enroll("ce1.nope.nope", key)) == "bad-token"
    assert _reason(lambda: registry.enroll("garbage", key)) == "bad-token"
    good = registry.create_enrollment("acme", "e1", 60)
    ident, _secret = good.token.split(".")[1:3]
    assert _reason(lambda: registry.enroll(f"ce1.{ident}.wrongsecret", key)) == "bad-token"
    short = registry.create_enrollment("acme", "e2", 0.001)
    time.sleep(0.01)  # the token's lifetime is what is tested, not synchronisation
    assert _reason(lambda: registry.enroll(short.token, key)) == "token-expired"
    assert _reason(lambda: registry.create_enrollment("ghost", "e1", 60)) == "unknown-tenant"
    assert _reason(lambda: registry.enroll(good.token, b"short")) == "bad-key"


def test_a_key_is_never_enrolled_twice(registry: Registry) -> None:
    key = public_key_bytes(generate_key())
    registry.register("acme", "e1", key)
    assert _reason(lambda: registry.register("acme", "e2", key)) == "key-in-use"
    assert _reason(lambda: registry.create_enrollment("acme", "e1", 60)) == "edge-exists"


def test_revocation_and_re_enrollment(registry: Registry) -> None:
    old = public_key_bytes(generate_key())
    registry.register("acme", "e1", old)
    registry.revoke_edge("acme", "e1")
    assert _reason(lambda: registry.verification_keys("acme", "e1")) == "revoked-edge"
    assert registry.active_edges() == []
    assert _reason(lambda: registry.verification_keys("acme", "e9")) == "unknown-edge"
    new = public_key_bytes(generate_key())
    registry.register("acme", "e1", new)  # a revoked edge may enroll again, with a new key
    assert registry.verification_keys("acme", "e1") == [new]
    assert _reason(lambda: registry.revoke_edge("acme", "nope")) == "not-found"


def test_rotation_keeps_the_old_key_for_the_grace_period(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite3", retired_grace_s=3600)
    old = generate_key()
    registry.register("acme", "e1", public_key_bytes(old))
    new = public_key_bytes(generate_key())
    now = int(time.time())
    proof = sign_rotation(old, "acme", "e1", new, now)
    assert _reason(lambda: registry.rotate_key("acme", "e1", new, now, b"x" * 64)) == "bad-proof"
    assert _reason(lambda: registry.rotate_key("acme", "e1", new, now - 3600, proof)) == (
        "stale-proof"
    )
    wrong = sign_rotation(generate_key(), "acme", "e1", new, now)
    assert _reason(lambda: registry.rotate_key("acme", "e1", new, now, wrong)) == "bad-proof"
    record = registry.rotate_key("acme", "e1", new, now, proof)
    assert record.active_key.public_key == new
    assert registry.verification_keys("acme", "e1") == [new, public_key_bytes(old)]
    assert registry.active_edges() == [("acme", "e1", new)]
    registry.close()
    strict = Registry(tmp_path / "r.sqlite3", retired_grace_s=0)
    time.sleep(0.001)  # past a zero grace period
    assert strict.verification_keys("acme", "e1") == [new]
    strict.close()


def test_a_disabled_tenant_verifies_nothing(registry: Registry) -> None:
    registry.register("acme", "e1", public_key_bytes(generate_key()))
    registry.set_tenant_disabled("acme", True)
    assert not registry.tenant_usable("acme")
    assert _reason(lambda: registry.verification_keys("acme", "e1")) == "tenant-disabled"
    assert registry.active_edges() == []
    assert registry.tenant_usable("unlisted")


def test_api_keys_are_stored_hashed(registry: Registry, tmp_path: Path) -> None:
    text, key = registry.create_api_key("acme", "operator", "ci")
    assert registry.api_key(text).role == "operator"
    secret = text.split(".")[2]
    raw = (tmp_path / "registry.sqlite3").read_bytes()
    assert secret.encode() not in raw
    assert _reason(lambda: registry.api_key(text[:-1] + "x")) == "bad-api-key"
    registry.revoke_api_key("acme", key.id)
    assert _reason(lambda: registry.api_key(text)) == "bad-api-key"


def test_deny_list_and_other_processes(tmp_path: Path) -> None:
    a = Registry(tmp_path / "r.sqlite3", poll_s=0)
    b = Registry(tmp_path / "r.sqlite3", poll_s=0)
    seen: list[int] = []
    a.add_listener(lambda: seen.append(1))
    assert not a.is_revoked("j1")
    b.revoke_token("j1", "acme", time.time_ns() // 1000 + 60_000_000)
    assert a.is_revoked("j1")  # noticed the other connection's commit
    assert seen
    b.revoke_token("j2", "acme", 1, kind="device", device="d1")  # expired: purged at once
    assert not a.is_revoked("j2")
    a.close()
    b.close()


def test_public_keys_travel_as_base64url() -> None:
    raw = public_key_bytes(generate_key())
    assert decode_public_key(encode_public_key(raw)) == raw
    with pytest.raises(RegistryError):
        decode_public_key("!!")
    with pytest.raises(RegistryError):
        decode_public_key(encode_public_key(b"\x00" * 31))
