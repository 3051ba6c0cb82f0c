"""What every module of the hub API shares: the route table entry, who may call it, errors.

A :class:`Route` names the least role that may call it (``viewer`` < ``operator`` < ``admin``
of the caller's tenant), :data:`PLATFORM_ADMIN` for the routes that manage tenants, or
``None`` for the few routes that take no bearer token (enrollment, key rotation, the token
exchange: each proves itself another way). :func:`guard` wraps a handler with exactly that
check, so a route cannot be registered without one. Every tenant route reads its tenant from
the verified token, never from the request, so another tenant's resource is indistinguishable
from one that does not exist (404).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from contract.errors import AuthError
from hub.auth import PLATFORM_ADMIN, ROLE_RANK, Claims, TokenAuthority
from hub.ingest import IngestStats
from hub.registry import Registry
from hub.status import StatusListener
from hub.store import Store

__all__ = [
    "ANY_ROLE",
    "AUTH",
    "CA_PEM",
    "CLAIMS",
    "INGEST",
    "MAX_BODY_BYTES",
    "PLATFORM_ADMIN",
    "REGISTRY",
    "STATUS",
    "STORE",
    "Handler",
    "Route",
    "claims",
    "error",
    "guard",
    "json_body",
]

STORE: Final = web.AppKey("store", Store)
AUTH: Final = web.AppKey("auth", TokenAuthority)
REGISTRY: Final = web.AppKey("registry", Registry)
INGEST: Final = web.AppKey("ingest", IngestStats)
STATUS: Final = web.AppKey("status", StatusListener)
CLAIMS: Final = web.RequestKey("claims", Claims)
CA_PEM: Final = web.AppKey("ca_pem", bytes)
"""The hub CA certificate (PEM) when the hub runs with TLS; absent otherwise."""

ANY_ROLE: Final = "any"
"""``Route.role`` of routes any valid token may call, a tenant role or platform-admin
(``GET /api/v1/whoami``)."""

MAX_BODY_BYTES: Final = 64 * 1024
"""Largest request body the API reads (aiohttp answers 413 above it)."""
_MAX_JSON_DEPTH: Final = 32

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    """One entry of the API's route table (the attack tests iterate over all of them)."""

    method: str
    path: str
    handler: Handler
    summary: str
    role: str | None
    """Least tenant role that may call it, :data:`PLATFORM_ADMIN`, :data:`ANY_ROLE`, or
    ``None``: no token."""
    params: tuple[dict[str, Any], ...] = ()
    """OpenAPI parameter objects (path parameters are added from ``path``)."""
    body: dict[str, Any] | None = None
    """JSON schema of the request body, if it takes one."""
    responses: dict[str, str] = field(default_factory=dict)
    """Extra documented status codes -> description."""


def error(status: int, slug: str, detail: str) -> web.Response:
    """The API's one error shape: ``{"error": slug, "detail": text}``."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": slug, "detail": detail}, status=status, headers=headers)


def claims(request: web.Request) -> Claims:
    """The verified claims of the caller (only on routes with a role)."""
    value: Claims = request[CLAIMS]
    return value


def _authenticate(request: web.Request) -> Claims | web.Response:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return error(401, "unauthorized", "missing bearer token")
    try:
        verified = request.app[AUTH].verify(token.strip())
    except AuthError as exc:
        return error(401, "unauthorized", str(exc))
    registry = request.app[REGISTRY]
    if registry.is_revoked(verified.jti):
        return error(401, "unauthorized", "token revoked")
    if verified.role != PLATFORM_ADMIN and not registry.tenant_usable(verified.tenant):
        return error(401, "unauthorized", "tenant disabled")
    return verified


def allowed(role: str, needed: str) -> bool:
    """Whether a token of ``role`` may call a route that needs ``needed``."""
    if needed == ANY_ROLE:
        return role == PLATFORM_ADMIN or role in ROLE_RANK
    if needed == PLATFORM_ADMIN:
        return role == PLATFORM_ADMIN
    return ROLE_RANK.get(role, 0) >= ROLE_RANK[needed]


def guard(route: Route) -> Handler:
    """``route.handler`` behind the check its ``role`` asks for."""
    needed = route.role
    if needed not in (None, PLATFORM_ADMIN, ANY_ROLE) and needed not in ROLE_RANK:
        raise ValueError(f"route {route.path}: unknown role {needed!r}")

    async def guarded(request: web.Request) -> web.StreamResponse:
        if needed is not None:
            verified = _authenticate(request)
            if isinstance(verified, web.Response):
                return verified
            if not allowed(verified.role, needed):
                return error(403, "forbidden", f"needs role {needed}")
            request[CLAIMS] = verified
        return await route.handler(request)

    return guarded


def _depth(doc: Any, limit: int) -> int:
    stack: list[tuple[Any, int]] = [(doc, 1)]
    deepest = 0
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > limit:
            return depth
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; ``HTTPBadRequest`` (a 400 in the API's shape) if it is not
    one, is nested deeper than 32 levels, or is not UTF-8. Size is capped by the app."""
    try:
        raw = await request.read()
        doc = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise web.HTTPBadRequest(reason="body is not JSON") from None
    if not isinstance(doc, dict):
        raise web.HTTPBadRequest(reason="body must be a JSON object")
    if _depth(doc, _MAX_JSON_DEPTH) > _MAX_JSON_DEPTH:
        raise web.HTTPBadRequest(reason="body nested too deeply")
    return doc
