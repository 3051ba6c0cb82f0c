"""What every module of the hub API shares: the route table entry, who may call it, errors,
and the reading of request bodies.

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
from hub.natsauth import AuthorizationManager
from hub.registry import Registry, RegistryError
from hub.status import StatusListener
from hub.store import Store

__all__ = [
    "ANY_ROLE",
    "AUTH",
    "CA_PEM",
    "CLAIMS",
    "INGEST",
    "MAX_BODY_BYTES",
    "NATS_AUTHORIZATION",
    "PLATFORM_ADMIN",
    "REGISTRY",
    "STATUS",
    "STORE",
    "FieldError",
    "Handler",
    "Route",
    "claims",
    "error",
    "guard",
    "int_field",
    "json_body",
    "number_field",
    "refusal",
    "status_of",
    "text_field",
]

STORE: Final = web.AppKey("store", Store)
AUTH: Final = web.AppKey("auth", TokenAuthority)
REGISTRY: Final = web.AppKey("registry", Registry)
INGEST: Final = web.AppKey("ingest", IngestStats)
STATUS: Final = web.AppKey("status", StatusListener)
NATS_AUTHORIZATION: Final = web.AppKey("nats_authorization", AuthorizationManager)
"""The manager of the NATS authorization when ``[nats] manage_authorization`` is on."""
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


class FieldError(ValueError):
    """A body field that is missing or of the wrong kind: the API's error middleware answers
    400 ``bad-parameter`` with the message (``<field>: <what is expected>``)."""


def text_field(
    doc: dict[str, Any], name: str, *, default: str | None = None, limit: int = 128
) -> str:
    """``doc[name]``: a string of 1..``limit`` printable characters (``default`` if absent;
    required if the default is ``None``)."""
    value = doc.get(name, default)
    if value is None:
        raise FieldError(f"{name}: required")
    if not isinstance(value, str) or not 1 <= len(value) <= limit or not value.isprintable():
        raise FieldError(f"{name}: a string of 1..{limit} printable characters")
    return value


def int_field(
    doc: dict[str, Any],
    name: str,
    default: int | None = None,
    lo: int | None = None,
    hi: int | None = None,
) -> int:
    """``doc[name]``: an integer (not a boolean), ``default`` if absent (required if that is
    ``None``), within ``lo``..``hi`` where they are given."""
    value = doc.get(name, default)
    if value is None:
        raise FieldError(f"{name}: required")
    if type(value) is not int or (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f" {lo}..{hi}" if lo is not None and hi is not None else ""
        raise FieldError(f"{name}: an integer{span}")
    return value


def number_field(doc: dict[str, Any], name: str, default: float) -> float:
    """``doc[name]``: a number (integer or float, not a boolean), ``default`` if absent."""
    value = doc.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(f"{name}: a number")
    return float(value)


_REFUSAL_STATUS: Final = {
    "bad-name": 400,
    "bad-key": 400,
    "bad-ttl": 400,
    "stale-proof": 400,
    "bad-token": 401,
    "bad-proof": 401,
    "tenant-disabled": 403,
    "not-found": 404,
    "unknown-tenant": 404,
    "exists": 409,
    "edge-exists": 409,
    "key-in-use": 409,
    "token-used": 409,
    "token-expired": 410,
}


def status_of(exc: RegistryError) -> int:
    """The HTTP status of a registry refusal (400 for a reason not listed)."""
    return _REFUSAL_STATUS.get(exc.reason, 400)


def refusal(exc: RegistryError) -> web.Response:
    """A registry refusal in the API's error shape; its ``error`` is the registry's reason.
    The error middleware answers this for every :class:`RegistryError` a handler lets out."""
    return error(status_of(exc), exc.reason, exc.problem)
