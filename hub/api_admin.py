"""Routes of the hub API for tenants, API keys, tokens and device tokens.

Who may call what (the table in docs/operator.md is generated from the route table):

- ``platform-admin`` manages tenants (list, create, disable, enable) and reads no tenant's data;
- the ``admin`` of a tenant makes, lists and revokes the tenant's API keys and revokes tokens;
- an ``operator`` issues and revokes device tokens for the tenant's devices;
- any valid token may ask ``GET /api/v1/whoami``;
- ``POST /api/v1/token`` takes no bearer token: it exchanges ``Authorization: ApiKey <key>``
  for a bearer token that lives ``auth.api_key_token_ttl_s`` seconds.

Every tenant route takes its tenant from the verified token, never from the request: another
tenant's API key or token is answered exactly like one that does not exist (404). Revocations
go to the registry's deny list (by ``jti``), which :func:`hub.apibase.guard` consults on every
request, so a revoked token is refused from the next request on; revoked device tokens reach
the tenant's edges through :mod:`hub.devrevocations`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from contract.errors import AuthError
from hub.apibase import (
    ANY_ROLE,
    AUTH,
    PLATFORM_ADMIN,
    REGISTRY,
    Route,
    claims,
    error,
    int_field,
    json_body,
    text_field,
)
from hub.auth import DEVICE_AUDIENCE, DEVICE_TTL_MAX_S, ROLE_RANK, TENANT_ROLES, TokenAuthority
from hub.registry import ApiKey, RegistryError

__all__ = [
    "API_KEY_TTL",
    "DEFAULT_API_KEY_TTL_S",
    "DEFAULT_DEVICE_TTL_S",
    "REVOKED_JTI_KEPT_S",
    "ROUTES",
    "TokenFacts",
    "configure",
    "token_facts",
]

DEFAULT_API_KEY_TTL_S: Final = 900
DEFAULT_DEVICE_TTL_S: Final = 30 * 86_400
API_KEY_TTL: Final = web.AppKey("api_key_token_ttl_s", int)
"""Lifetime of the tokens ``POST /api/v1/token`` issues (``auth.api_key_token_ttl_s``)."""
_MAX_NAME: Final = 128
_MAX_TOKEN: Final = 4096
REVOKED_JTI_KEPT_S: Final = 366 * 86_400
"""A jti revoked without its token stays on the deny list this long (the longest lifetime
of any token the hub issues), plus the leeway."""


def configure(app: web.Application, api_key_token_ttl_s: int) -> None:
    """Settings of these routes that the config holds (called before the app starts)."""
    app[API_KEY_TTL] = api_key_token_ttl_s


def _now_us() -> int:
    return time.time_ns() // 1000


def _iso(us: int | None) -> str | None:
    if us is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(us // 1_000_000))


# ------------------------------------------------------------------ tokens the hub signed


class TokenFacts:
    """What a token this hub signed says (signature checked; expiry not: a revocation of an
    expired token is harmless)."""

    __slots__ = ("device", "expires_us", "jti", "tenant")

    def __init__(self, jti: str, tenant: str, expires_us: int, device: str | None) -> None:
        self.jti = jti
        self.tenant = tenant
        self.expires_us = expires_us
        self.device = device


_PUBLIC_KEYS: dict[str, Ed25519PublicKey] = {}


def _public_key(auth: TokenAuthority) -> Ed25519PublicKey:
    key = _PUBLIC_KEYS.get(auth.kid)
    if key is None:
        loaded = serialization.load_pem_public_key(auth.public_key_pem())
        assert isinstance(loaded, Ed25519PublicKey)
        key = _PUBLIC_KEYS[auth.kid] = loaded
    return key


def token_facts(auth: TokenAuthority, token: str, *, device: bool) -> TokenFacts:
    """jti, tenant and expiry of an API token (``device`` False) or device token this hub
    signed; :class:`AuthError` if it is not one."""
    if not isinstance(token, str) or len(token) > _MAX_TOKEN:
        raise AuthError("not a token")
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != "EdDSA" or header.get("kid") != auth.kid:
            raise AuthError("not signed by this hub")
        raw = jwt.decode(
            token,
            _public_key(auth),
            algorithms=["EdDSA"],
            audience=DEVICE_AUDIENCE if device else auth.audience,
            issuer=auth.issuer,
            options={"verify_exp": False, "require": ["exp", "jti", "sub", "tenant"]},
        )
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise AuthError("not a token of this hub") from exc
    jti, tenant, exp, sub = raw.get("jti"), raw.get("tenant"), raw.get("exp"), raw.get("sub")
    if not isinstance(jti, str) or not isinstance(tenant, str) or type(exp) is not int:
        raise AuthError("token without jti, tenant or exp")
    return TokenFacts(
        jti, tenant, exp * 1_000_000, sub if device and isinstance(sub, str) else None
    )


# ------------------------------------------------------------------ handlers: tenants


def _tenant_json(row: dict[str, Any]) -> dict[str, Any]:
    created = row["created_us"]
    return {
        "tenant": row["tenant"],
        "disabled": row["disabled"],
        "created_us": created,
        "created": _iso(created if isinstance(created, int) else None),
    }


async def _tenants(request: web.Request) -> web.Response:
    rows = await asyncio.to_thread(request.app[REGISTRY].tenants)
    return web.json_response({"tenants": [_tenant_json(r) for r in rows]})


async def _tenant_create(request: web.Request) -> web.Response:
    name = text_field(await json_body(request), "tenant", limit=64)
    registry = request.app[REGISTRY]
    await asyncio.to_thread(registry.create_tenant, name)
    [row] = [r for r in registry.tenants() if r["tenant"] == name]
    return web.json_response(_tenant_json(row), status=201)


async def _tenant_set(request: web.Request, *, disabled: bool) -> web.Response:
    name = request.match_info["tenant"]
    registry = request.app[REGISTRY]
    await asyncio.to_thread(registry.set_tenant_disabled, name, disabled)
    [row] = [r for r in registry.tenants() if r["tenant"] == name]
    return web.json_response(_tenant_json(row))


async def _tenant_disable(request: web.Request) -> web.Response:
    return await _tenant_set(request, disabled=True)


async def _tenant_enable(request: web.Request) -> web.Response:
    return await _tenant_set(request, disabled=False)


async def _whoami(request: web.Request) -> web.Response:
    who = claims(request)
    return web.json_response(
        {
            "subject": who.subject,
            "tenant": who.tenant,
            "role": who.role,
            "jti": who.jti,
            "expires": who.expires,
        }
    )


# ------------------------------------------------------------------ handlers: API keys


def _key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "role": key.role,
        "created_us": key.created_us,
        "created": _iso(key.created_us),
        "revoked_us": key.revoked_us,
        "revoked": _iso(key.revoked_us),
    }


async def _key_create(request: web.Request) -> web.Response:
    caller = claims(request)
    doc = await json_body(request)
    name = text_field(doc, "name", limit=_MAX_NAME)
    role = text_field(doc, "role", default="viewer", limit=16)
    if role not in TENANT_ROLES:
        return error(400, "bad-parameter", f"role: one of {', '.join(TENANT_ROLES)}")
    if ROLE_RANK[role] > ROLE_RANK.get(caller.role, 0):
        return error(403, "forbidden", f"a {caller.role} cannot make {role} keys")
    registry = request.app[REGISTRY]
    text, key = await asyncio.to_thread(registry.create_api_key, caller.tenant, role, name)
    return web.json_response({**_key_json(key), "key": text}, status=201)


async def _keys(request: web.Request) -> web.Response:
    tenant = claims(request).tenant
    keys = await asyncio.to_thread(request.app[REGISTRY].api_keys, tenant)
    return web.json_response({"api_keys": [_key_json(k) for k in keys]})


async def _key_revoke(request: web.Request) -> web.Response:
    tenant = claims(request).tenant
    ident = request.match_info["key_id"]
    registry = request.app[REGISTRY]
    await asyncio.to_thread(registry.revoke_api_key, tenant, ident)
    [key] = [k for k in registry.api_keys(tenant) if k.id == ident]
    return web.json_response(_key_json(key))


async def _exchange(request: web.Request) -> web.Response:
    scheme, _, text = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "apikey" or not text.strip():
        return error(401, "unauthorized", "send 'Authorization: ApiKey <key>'")
    registry = request.app[REGISTRY]
    try:
        key = await asyncio.to_thread(registry.api_key, text.strip())
    except RegistryError:
        return error(401, "unauthorized", "API key not recognised")
    if not registry.tenant_usable(key.tenant):
        return error(401, "unauthorized", "tenant disabled")
    auth = request.app[AUTH]
    ttl = request.app.get(API_KEY_TTL, DEFAULT_API_KEY_TTL_S)
    try:
        token = auth.issue(key.tenant, key.role, ttl, subject=f"apikey:{key.id}")
    except AuthError as exc:  # a key row that no longer fits the rules (edited by hand)
        return error(401, "unauthorized", str(exc))
    verified = auth.verify(token)
    return web.json_response(
        {
            "token": token,
            "token_type": "Bearer",
            "expires_in": ttl,
            "expires": verified.expires,
            "jti": verified.jti,
            "tenant": key.tenant,
            "role": key.role,
        }
    )


# ------------------------------------------------------------------ handlers: revocation


async def _revoke(request: web.Request, *, device: bool) -> web.Response:
    """Put a token of the caller's tenant on the deny list, given the token or its jti."""
    caller = claims(request)
    auth = request.app[AUTH]
    doc = await json_body(request)
    if ("token" in doc) == ("jti" in doc):
        return error(400, "bad-parameter", "send exactly one of token, jti")
    if "token" in doc:
        token: str | None = text_field(doc, "token", limit=_MAX_TOKEN)
        jti = None
    else:
        jti = text_field(doc, "jti", limit=128)
        token = None
    kind = "device" if device else "api"
    if token is not None:
        try:
            facts = token_facts(auth, token, device=device)
        except AuthError:
            facts = None
        if facts is None or facts.tenant != caller.tenant:
            return error(404, "not-found", f"no such {kind} token")
        jti, expires_us, subject = facts.jti, facts.expires_us, facts.device
    else:
        assert jti is not None
        expires_us = _now_us() + REVOKED_JTI_KEPT_S * 1_000_000
        subject = None
    expires_us += auth.leeway_s * 1_000_000
    registry = request.app[REGISTRY]
    await asyncio.to_thread(registry.revoke_token, jti, caller.tenant, expires_us, kind, subject)
    return web.json_response(
        {"revoked": jti, "kind": kind, "device": subject, "until_us": expires_us}
    )


async def _token_revoke(request: web.Request) -> web.Response:
    return await _revoke(request, device=False)


async def _device_revoke(request: web.Request) -> web.Response:
    return await _revoke(request, device=True)


async def _device_issue(request: web.Request) -> web.Response:
    caller = claims(request)
    doc = await json_body(request)
    device = text_field(doc, "device", limit=128)
    ttl = int_field(doc, "ttl_s", DEFAULT_DEVICE_TTL_S, 1, DEVICE_TTL_MAX_S)
    auth = request.app[AUTH]
    try:
        token = auth.issue_device(caller.tenant, device, ttl)
    except AuthError as exc:
        return error(400, "bad-parameter", str(exc))
    facts = token_facts(auth, token, device=True)
    return web.json_response(
        {
            "token": token,
            "device": device,
            "jti": facts.jti,
            "kid": auth.kid,
            "expires": facts.expires_us // 1_000_000,
        },
        status=201,
    )


async def _device_revoked(request: web.Request) -> web.Response:
    tenant = claims(request).tenant
    rows = await asyncio.to_thread(request.app[REGISTRY].revoked_device_tokens, tenant)
    return web.json_response(
        {"revoked": [{"jti": j, "device": d, "until_us": e} for j, d, e in rows]}
    )


# ------------------------------------------------------------------ the table

_TENANT_BODY: Final = {
    "type": "object",
    "required": ["tenant"],
    "properties": {"tenant": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}},
}
_KEY_BODY: Final = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": _MAX_NAME},
        "role": {"type": "string", "enum": list(TENANT_ROLES)},
    },
}
_REVOKE_BODY: Final = {
    "type": "object",
    "properties": {
        "token": {"type": "string", "maxLength": _MAX_TOKEN},
        "jti": {"type": "string", "minLength": 1, "maxLength": 128},
    },
}
_DEVICE_BODY: Final = {
    "type": "object",
    "required": ["device"],
    "properties": {
        "device": {"type": "string", "minLength": 1, "maxLength": 128},
        "ttl_s": {"type": "integer", "minimum": 1, "maximum": DEVICE_TTL_MAX_S},
    },
}
_APIKEY_PARAM: Final = (
    {"name": "Authorization", "in": "header", "required": True, "schema": {"type": "string"}},
)

ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/api/v1/whoami", _whoami, "The caller's tenant, role and token", ANY_ROLE),
    Route("GET", "/api/v1/tenants", _tenants, "Every tenant", PLATFORM_ADMIN),
    Route(
        "POST",
        "/api/v1/tenants",
        _tenant_create,
        "Create a tenant",
        PLATFORM_ADMIN,
        body=_TENANT_BODY,
        responses={"201": "Created", "409": "Exists already"},
    ),
    Route(
        "POST",
        "/api/v1/tenants/{tenant}/disable",
        _tenant_disable,
        "Disable a tenant: its tokens, API keys and edges are refused",
        PLATFORM_ADMIN,
    ),
    Route(
        "POST",
        "/api/v1/tenants/{tenant}/enable",
        _tenant_enable,
        "Enable a disabled tenant again",
        PLATFORM_ADMIN,
    ),
    Route("GET", "/api/v1/api-keys", _keys, "API keys of the tenant (never the secret)", "admin"),
    Route(
        "POST",
        "/api/v1/api-keys",
        _key_create,
        "Make an API key (the key is in this answer only)",
        "admin",
        body=_KEY_BODY,
        responses={"201": "Created"},
    ),
    Route(
        "POST",
        "/api/v1/api-keys/{key_id}/revoke",
        _key_revoke,
        "Revoke an API key: it is exchanged for no more tokens",
        "admin",
    ),
    Route(
        "POST",
        "/api/v1/token",
        _exchange,
        "Exchange an API key (header Authorization: ApiKey KEY) for a short-lived bearer token",
        None,
        params=_APIKEY_PARAM,
        responses={"401": "Missing, unknown or revoked API key, or tenant disabled"},
    ),
    Route(
        "POST",
        "/api/v1/tokens/revoke",
        _token_revoke,
        "Revoke an API token of the tenant (by token or jti), from the next request on",
        "admin",
        body=_REVOKE_BODY,
    ),
    Route(
        "POST",
        "/api/v1/device-tokens",
        _device_issue,
        "Issue a device token for HTTP/WebSocket ingestion at the tenant's edges",
        "operator",
        body=_DEVICE_BODY,
        responses={"201": "Created"},
    ),
    Route(
        "POST",
        "/api/v1/device-tokens/revoke",
        _device_revoke,
        "Revoke a device token (by token or jti); the tenant's edges refuse it within seconds",
        "operator",
        body=_REVOKE_BODY,
    ),
    Route(
        "GET",
        "/api/v1/device-tokens/revoked",
        _device_revoked,
        "The tenant's revoked device tokens that have not expired yet",
        "operator",
    ),
)
