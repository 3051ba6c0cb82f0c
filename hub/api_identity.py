"""Routes of the hub API for enrollment, edge keys and revocation.

- ``POST /api/v1/enrollment-tokens`` (admin): a one-time, expiring enrollment token for an
  edge of the caller's tenant, shown once, with the pin of the hub's CA (if it has one).
- ``POST /api/v1/enroll`` (no bearer token: the enrollment token is the proof): spends the
  token to register the edge's Ed25519 public key; answers what the edge needs to run.
- ``GET /api/v1/ca.pem`` (public): the hub's CA certificate, for ``cairn-edge enroll --ca-pin``.
- ``GET /api/v1/edges/{edge}`` (viewer): the edge's identity (keys, revocation) and counts;
  another tenant's edge is a 404 exactly like a missing one.
- ``POST /api/v1/edges/{edge}/revoke`` (admin): every key of the edge stops verifying at once.
- ``POST /api/v1/edges/{edge}/rotate`` (no bearer token: the edge's *current* key signs
  :func:`hub.registry.rotation_message`): activates a new key, the old one is retired.

The list ``GET /api/v1/edges`` lives with the data routes (:mod:`hub.api`) and takes the
identity fields from :func:`merge_identity`. Every registry refusal is a 4xx whose ``error``
is the registry's reason (``token-used``, ``token-expired``...), never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any, Final

from aiohttp import web

from contract.capin import certificate_fingerprint
from contract.names import (
    command_subject,
    edge_permissions,
    inbox_prefix,
    status_subject,
    telemetry_subject,
)
from contract.nkeyid import nkey_public
from hub.apibase import (
    AUTH,
    CA_PEM,
    REGISTRY,
    STORE,
    FieldError,
    Route,
    claims,
    error,
    int_field,
    json_body,
    number_field,
    refusal,
    text_field,
)
from hub.auth import DEVICE_AUDIENCE, TokenAuthority
from hub.registry import (
    EdgeRecord,
    Registry,
    RegistryError,
    decode_public_key,
    encode_public_key,
)

__all__ = [
    "DEFAULT_ENROLL_TTL_S",
    "NATS_URL",
    "ROUTES",
    "edge_json",
    "enrollment_answer",
    "merge_identity",
]

NATS_URL: Final = web.AppKey("nats_public_url", str)
"""The NATS URL edges are told at enrollment (``nats.public_url``, else ``nats.url``)."""

DEFAULT_ENROLL_TTL_S: Final = 3600
"""Lifetime of an enrollment token unless the request says otherwise (one hour)."""
_MAX_TOKEN: Final = 1024
"""Longest enrollment token read (``ce1.<id>.<secret>``, a CA pin may follow)."""


def edge_json(record: EdgeRecord) -> dict[str, Any]:
    """An edge's identity as the API and ``cairn-hub edges show`` print it (no secrets)."""
    active = record.active_key
    return {
        "tenant": record.tenant,
        "edge": record.edge,
        "enrolled_us": record.created_us,
        "revoked": record.revoked,
        "revoked_us": record.revoked_us,
        "key": active.fingerprint if active else None,
        "nkey": nkey_public(active.public_key) if active else None,
        "keys": [
            {
                "fingerprint": k.fingerprint,
                "public_key": encode_public_key(k.public_key),
                "added_us": k.added_us,
                "retired_us": k.retired_us,
                "revoked_us": k.revoked_us,
            }
            for k in record.keys
        ],
    }


def merge_identity(
    registry: Registry, tenant: str | None, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The store's edge rows (counts, status) with each edge's identity fields added
    (``enrolled``, ``revoked``, ``key``), plus enrolled edges that have sent nothing yet."""
    records = {(r.tenant, r.edge): r for r in registry.edges(tenant)}
    out: list[dict[str, Any]] = []
    for row in rows:
        record = records.pop((row["tenant"], row["edge"]), None)
        out.append({**row, **_identity_fields(record)})
    out.extend(
        {
            "tenant": record.tenant,
            "edge": record.edge,
            "first_us": None,
            "last_us": None,
            "batches": 0,
            "readings": 0,
            "last_seq": None,
            "status": None,
            "status_us": None,
            **_identity_fields(record),
        }
        for record in records.values()
    )
    out.sort(key=lambda r: (r["tenant"], r["edge"]))
    return out


def _identity_fields(record: EdgeRecord | None) -> dict[str, Any]:
    if record is None:
        return {"enrolled": False, "revoked": False, "key": None}
    active = record.active_key
    return {
        "enrolled": True,
        "revoked": record.revoked,
        "key": active.fingerprint if active else None,
    }


def _ca_pin(app: web.Application) -> str | None:
    pem = app.get(CA_PEM)
    return certificate_fingerprint(pem) if pem else None


def enrollment_answer(
    record: EdgeRecord, nats_url: str | None, auth: TokenAuthority, ca_pem: bytes | None
) -> dict[str, Any]:
    """What an edge receives when it enrolls: who it is, where and how it talks to the hub,
    and the keys it trusts (the hub's token key for device tokens, the CA for TLS)."""
    tenant, edge = record.tenant, record.edge
    active = record.active_key
    assert active is not None  # just enrolled
    return {
        "edge": edge,
        "tenant": tenant,
        "nats_url": nats_url,
        "key": active.fingerprint,
        "nkey": nkey_public(active.public_key),
        "subjects": {
            "telemetry": telemetry_subject(tenant, edge),
            "status": status_subject(tenant, edge),
            "command": command_subject(tenant, edge),
            "inbox_prefix": inbox_prefix(tenant, edge),
        },
        "permissions": edge_permissions(tenant, edge),
        "token_key": {
            "kid": auth.kid,
            "public_key_pem": auth.public_key_pem().decode("ascii"),
            "issuer": auth.issuer,
            "device_audience": DEVICE_AUDIENCE,
        },
        "ca_pem": ca_pem.decode("ascii") if ca_pem else None,
        "ca_pin": certificate_fingerprint(ca_pem) if ca_pem else None,
    }


async def _create_token(request: web.Request) -> web.Response:
    caller = claims(request)
    body = await json_body(request)
    edge = text_field(body, "edge")
    ttl_s = number_field(body, "ttl_s", DEFAULT_ENROLL_TTL_S)
    registry = request.app[REGISTRY]

    def create() -> Any:
        # The token was issued by this hub for this tenant: the tenant is real.
        registry.ensure_tenant(caller.tenant)
        return registry.create_enrollment(caller.tenant, edge, ttl_s, created_by=caller.subject)

    enrollment = await asyncio.to_thread(create)
    return web.json_response(
        {
            "token": enrollment.token,
            "id": enrollment.id,
            "tenant": enrollment.tenant,
            "edge": enrollment.edge,
            "expires_us": enrollment.expires_us,
            "ca_pin": _ca_pin(request.app),
        },
        status=201,
    )


async def _enroll(request: web.Request) -> web.Response:
    body = await json_body(request)
    token = text_field(body, "token", limit=_MAX_TOKEN)
    public_key = decode_public_key(text_field(body, "public_key"))
    record = await asyncio.to_thread(request.app[REGISTRY].enroll, token, public_key)
    answer = enrollment_answer(
        record, request.app.get(NATS_URL), request.app[AUTH], request.app.get(CA_PEM)
    )
    return web.json_response(answer, status=201)


async def _ca(request: web.Request) -> web.Response:
    pem = request.app.get(CA_PEM)
    if not pem:
        return error(404, "no-ca", "this hub runs without a CA (plain HTTP and NATS)")
    return web.Response(body=pem, content_type="application/x-pem-file")


async def _edge(request: web.Request) -> web.Response:
    tenant = claims(request).tenant
    name = request.match_info["edge"]
    record = await asyncio.to_thread(request.app[REGISTRY].edge, tenant, name)
    rows = await asyncio.to_thread(request.app[STORE].edges, tenant)
    row = next((r for r in rows if r["edge"] == name), None)
    if record is None and row is None:
        return error(404, "not-found", "no such edge")
    doc: dict[str, Any] = (
        edge_json(record)
        if record is not None
        else {"tenant": tenant, "edge": name, "enrolled_us": None, "revoked": False, "keys": []}
    )
    doc["enrolled"] = record is not None
    if row is not None:
        doc.update({k: row[k] for k in ("first_us", "last_us", "batches", "readings", "last_seq")})
        doc["status_us"] = row["status_us"]
    return web.json_response(doc)


async def _revoke(request: web.Request) -> web.Response:
    tenant = claims(request).tenant
    name = request.match_info["edge"]
    registry = request.app[REGISTRY]
    await asyncio.to_thread(registry.revoke_edge, tenant, name)
    record = await asyncio.to_thread(registry.edge, tenant, name)
    assert record is not None
    return web.json_response(edge_json(record))


def _b64url(text: str, name: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise FieldError(f"{name}: base64url expected") from None


async def _rotate(request: web.Request) -> web.Response:
    name = request.match_info["edge"]
    body = await json_body(request)
    tenant = text_field(body, "tenant")
    new_key_text = text_field(body, "public_key")
    proof = _b64url(text_field(body, "proof"), "proof")
    signed_at = int_field(body, "signed_at_s")
    registry = request.app[REGISTRY]
    try:
        new_key = decode_public_key(new_key_text)
        record = await asyncio.to_thread(
            registry.rotate_key, tenant, name, new_key, signed_at, proof
        )
    except RegistryError as exc:
        if exc.reason in {"not-found", "revoked", "bad-proof"}:
            # One answer: a caller without the edge's key learns nothing about the edge.
            return error(
                401,
                "bad-proof",
                "not signed by the active key of an enrolled, unrevoked edge of that tenant",
            )
        return refusal(exc)
    return web.json_response(edge_json(record))


_STR: Final = {"type": "string", "minLength": 1}

ROUTES: Final[tuple[Route, ...]] = (
    Route(
        "POST",
        "/api/v1/enrollment-tokens",
        _create_token,
        "Create a one-time enrollment token for an edge of the caller's tenant",
        "admin",
        body={
            "type": "object",
            "required": ["edge"],
            "properties": {"edge": _STR, "ttl_s": {"type": "number"}},
        },
        responses={"201": "The token (shown once) and the hub CA's pin", "409": "Edge enrolled"},
    ),
    Route(
        "POST",
        "/api/v1/enroll",
        _enroll,
        "Enroll an edge: spend an enrollment token, register the edge's public key",
        None,
        body={
            "type": "object",
            "required": ["token", "public_key"],
            "properties": {"token": _STR, "public_key": _STR},
        },
        responses={
            "201": "Enrolled: edge id, tenant, NATS URL, subjects, hub keys",
            "401": "Unknown enrollment token",
            "403": "The tenant is disabled",
            "409": "Token used already, edge enrolled, or key enrolled before",
            "410": "Token expired",
        },
    ),
    Route("GET", "/api/v1/ca.pem", _ca, "The hub's CA certificate (PEM)", None),
    Route("GET", "/api/v1/edges/{edge}", _edge, "One edge: its keys, revocation, counts", "viewer"),
    Route(
        "POST",
        "/api/v1/edges/{edge}/revoke",
        _revoke,
        "Revoke an edge: its batches and NATS logins are refused from now on",
        "admin",
    ),
    Route(
        "POST",
        "/api/v1/edges/{edge}/rotate",
        _rotate,
        "Rotate an edge's key (proven by a signature of its current key)",
        None,
        body={
            "type": "object",
            "required": ["tenant", "public_key", "signed_at_s", "proof"],
            "properties": {
                "tenant": _STR,
                "public_key": _STR,
                "signed_at_s": {"type": "integer"},
                "proof": _STR,
            },
        },
        responses={"401": "Not signed by the edge's active key", "409": "Key enrolled before"},
    ),
)
