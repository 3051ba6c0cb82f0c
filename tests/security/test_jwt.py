"""Token attacks on the hub API and on the edge's offline device-token check.

The same forgeries go to both verifiers: ``alg: none``, HS256 "signed" with the hub's public
key PEM, RS256/ES256 tokens under the hub's ``kid`` (algorithm confusion), a key embedded in the
header (``jwk``/``jku``), expired, not yet valid, wrong audience, wrong issuer, unknown ``kid``,
``kid`` path and injection tricks, a tampered payload, a revoked ``jti``, a token of a disabled
tenant, and each kind of token used as the other (a device token is no API token and an API
token is no device token). The hub API answers 401 and the edge 401/403, and the edge stores
nothing.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.signing import b64url
from edge.config import HttpKeySettings
from hub.auth import DEVICE_AUDIENCE, TokenAuthority
from tests.test_edge_http_support import claims as good_claims
from tests.test_edge_http_support import http_edge, http_settings, raw_token
from tests.test_edge_support import stored

from .conftest import ATTACKER, VICTIM, ApiWorld, AttackRecorder

URL = "/api/v1/devices"


def _ed_by_hand(header: dict[str, Any], claims: dict[str, Any], key: Ed25519PrivateKey) -> str:
    """An EdDSA JWT with any header at all (PyJWT refuses to write some of them)."""
    head = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{head}.{b64url(key.sign(head.encode()))}"


def _claims(auth: TokenAuthority, audience: str, **over: Any) -> dict[str, Any]:
    """Good claims of the victim tenant's admin (or device) for ``audience``, changed by
    ``over`` (a value of ``None`` removes the claim)."""
    sub = "dev-1" if audience == DEVICE_AUDIENCE else "admin@acme"
    base = {"iss": auth.issuer, "aud": audience, "tenant": VICTIM, "role": "admin"}
    return good_claims(sub, **{**base, **over})


def _signed(auth: TokenAuthority, claims: dict[str, Any], kid: Any = "") -> str:
    """Signed with the hub's own key (the forgery is in the claims or the kid)."""
    return jwt.encode(
        claims, auth._key, algorithm="EdDSA", headers={"kid": auth.kid if kid == "" else kid}
    )


def _tamper(token: str, **over: Any) -> str:
    head, payload, sig = token.split(".")
    doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    doc.update(over)
    return f"{head}.{b64url(json.dumps(doc).encode())}.{sig}"


def forgeries(auth: TokenAuthority, audience: str) -> dict[str, str]:
    """Tokens that must not let their bearer in, for a verifier of ``audience``."""
    now = int(time.time())
    pem = auth.public_key_pem()
    raw_pub = auth._public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    good = _claims(auth, audience)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    mallory = Ed25519PrivateKey.generate()
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(mallory.public_key()))
    kid = auth.kid
    return {
        "alg none": raw_token({"alg": "none", "typ": "JWT", "kid": kid}, good, None),
        "alg None": raw_token({"alg": "None", "kid": kid}, good, None),
        "alg none with the real signature": raw_token({"alg": "none", "kid": kid}, good, None)
        + _signed(auth, good).split(".")[2],
        "HS256 with the public key PEM": raw_token({"alg": "HS256", "kid": kid}, good, pem),
        "HS256 with the raw public key": raw_token({"alg": "HS256", "kid": kid}, good, raw_pub),
        "HS512 with the public key PEM": raw_token({"alg": "HS512", "kid": kid}, good, pem),
        "RS256 by an attacker's RSA key": jwt.encode(
            good, rsa_key, algorithm="RS256", headers={"kid": kid}
        ),
        "ES256 by an attacker's EC key": jwt.encode(
            good, ec_key, algorithm="ES256", headers={"kid": kid}
        ),
        "EdDSA by an attacker's key": jwt.encode(
            good, mallory, algorithm="EdDSA", headers={"kid": kid}
        ),
        "attacker key embedded as jwk": jwt.encode(
            good, mallory, algorithm="EdDSA", headers={"kid": kid, "jwk": jwk}
        ),
        "attacker key by jku": jwt.encode(
            good,
            mallory,
            algorithm="EdDSA",
            headers={"kid": kid, "jku": "http://127.0.0.1:9/keys.json"},
        ),
        "expired": _signed(auth, {**good, "exp": now - 3600, "iat": now - 7200, "nbf": now - 7200}),
        "not yet valid": _signed(auth, {**good, "nbf": now + 3600, "iat": now + 3600}),
        "no exp": _signed(auth, _claims(auth, audience, exp=None)),
        "wrong audience": _signed(auth, {**good, "aud": "somewhere-else"}),
        "audience list without ours": _signed(auth, {**good, "aud": ["a", "b"]}),
        "no audience": _signed(auth, _claims(auth, audience, aud=None)),
        "wrong issuer": _signed(auth, {**good, "iss": "mallory"}),
        "unknown kid": _signed(auth, good, kid="0123456789abcdef"),
        "no kid": jwt.encode(good, auth._key, algorithm="EdDSA"),
        "kid path traversal": _signed(auth, good, kid="../../../../dev/null"),
        "kid absolute path": _signed(auth, good, kid="/etc/passwd"),
        "kid SQL injection": _signed(auth, good, kid="x' UNION SELECT 'secret' --"),
        "kid not a string": _ed_by_hand({"alg": "EdDSA", "kid": [kid]}, good, auth._key),
        "kid with our kid as a prefix": _signed(auth, good, kid=kid + "/../x"),
        "tampered payload (tenant)": _tamper(_signed(auth, good), tenant=ATTACKER),
        "tampered payload (sub)": _tamper(_signed(auth, good), sub="dev-2"),
        "tampered signature": _signed(auth, good)[:-6] + "AAAAAA",
        "garbage": "not.a.jwt",
        "empty segments": "..",
        "huge": "a" * 5000,
    }


# --------------------------------------------------------------------------- hub API


async def _api_status(world: ApiWorld, token: str) -> tuple[int, dict[str, Any]]:
    resp = await world.client.get(URL, headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.json()


async def test_forged_tokens_are_refused_by_the_api(
    world: ApiWorld, attack: AttackRecorder
) -> None:
    status, _ = await _api_status(world, world.token(VICTIM, "viewer"))
    assert status == 200  # the harness works: a good token gets in
    for name, token in forgeries(world.auth, world.auth.audience).items():
        with attack("jwt", f"hub API: {name}"):
            status, body = await _api_status(world, token)
            assert (status, body["error"]) == (401, "unauthorized"), (name, status, body)


async def test_revoked_disabled_and_misused_tokens_are_refused_by_the_api(
    world: ApiWorld, attack: AttackRecorder
) -> None:
    auth, registry = world.auth, world.registry
    revoked = auth.issue(VICTIM, "admin", 600)
    assert (await _api_status(world, revoked))[0] == 200  # verified and cached first
    claims = auth.verify(revoked)
    registry.revoke_token(claims.jti, VICTIM, claims.expires * 1_000_000)
    with attack("jwt", "hub API: revoked jti (cached before the revocation)"):
        assert await _api_status(world, revoked) == (
            401,
            {"error": "unauthorized", "detail": "token revoked"},
        )

    registry.ensure_tenant("initech")
    disabled = auth.issue("initech", "admin", 600)
    assert (await _api_status(world, disabled))[0] == 200
    registry.set_tenant_disabled("initech", True)
    with attack("jwt", "hub API: token of a disabled tenant"):
        status, body = await _api_status(world, disabled)
        assert (status, body["detail"]) == (401, "tenant disabled")

    device = auth.issue_device(VICTIM, "dev-1", 600)
    with attack("jwt", "hub API: a device token as an API token"):
        assert (await _api_status(world, device))[0] == 401
    with attack("jwt", "hub API: a device token given an API role claim"):
        forged = _signed(auth, _claims(auth, DEVICE_AUDIENCE, role="admin"))
        assert (await _api_status(world, forged))[0] == 401
    with attack("jwt", "hub API: a token of another hub (same issuer and audience)"):
        other = TokenAuthority(
            registry.path.with_name("other-hub.pem"), issuer=auth.issuer, audience=auth.audience
        )
        assert (await _api_status(world, other.issue(VICTIM, "admin", 600)))[0] == 401
    with attack("jwt", "hub API: unknown role claim"):
        assert (await _api_status(world, _signed(auth, _claims(auth, auth.audience, role="root"))))[
            0
        ] == 401
    with attack("jwt", "hub API: platform-admin role with a tenant"):
        token = _signed(auth, _claims(auth, auth.audience, role="platform-admin"))
        assert (await _api_status(world, token))[0] == 401


# --------------------------------------------------------------------------- the edge


async def test_forged_tokens_are_refused_by_the_edge(
    world: ApiWorld, attack: AttackRecorder, tmp_path: Path
) -> None:
    """The edge's HTTP source, configured as an operator would (the hub's public key under the
    hub's kid, the hub's issuer), against the same forgeries, plus an API token as a device
    token and a device token of another tenant."""
    auth = world.auth
    pem = tmp_path / "hub.pem"
    pem.write_bytes(auth.public_key_pem())
    revocations = tmp_path / "revoked.txt"
    revoked = auth.issue_device(VICTIM, "dev-9", 600)
    revoked_jti = jwt.decode(revoked, options={"verify_signature": False})["jti"]
    revocations.write_text(f"jti {revoked_jti}\n")
    settings = http_settings(
        (HttpKeySettings(auth.kid, pem),),
        issuer=auth.issuer,
        revoked_file=str(revocations),
    )
    attacks = forgeries(auth, DEVICE_AUDIENCE)
    attacks |= {
        "an API token as a device token": auth.issue(VICTIM, "admin", 600),
        "a device token of another tenant": auth.issue_device(ATTACKER, "dev-1", 600),
        "a revoked device token (jti)": revoked,
    }
    async with http_edge(tmp_path, settings) as edge, aiohttp.ClientSession() as session:
        good = auth.issue_device(VICTIM, "dev-1", 600)
        async with session.post(
            edge.readings_url,
            json={"ts": int(time.time()), "t": 1.0},
            headers={"Authorization": f"Bearer {good}"},
        ) as resp:
            assert resp.status == 202  # the harness works: a good token gets in
        for name, token in attacks.items():
            with attack("jwt", f"edge: {name}"):
                async with session.post(
                    edge.readings_url,
                    json={"ts": int(time.time()), "t": 2.0},
                    headers={"Authorization": f"Bearer {token}"},
                ) as resp:
                    assert resp.status in (401, 403), (name, resp.status, await resp.text())
    values = [r.value for r in stored(edge.buffer.path)]
    assert values == [1.0]  # only the good token's reading
