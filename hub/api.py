"""The hub's REST API (aiohttp), versioned under ``/api/v1``, JSON in and out.

The route table (:data:`ROUTES`) is the data routes here plus those of :mod:`hub.api_identity`
and :mod:`hub.api_admin`; each names the least role that may call it
(:class:`hub.apibase.Route`). Every tenant route reads its tenant from the verified token.
Errors are JSON ``{"error": slug, "detail": text}``; bad input is a 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from contract.model import Reading, Value
from hub import api_admin, api_identity
from hub.apibase import (
    AUTH,
    CA_PEM,
    INGEST,
    MAX_BODY_BYTES,
    NATS_AUTHORIZATION,
    REGISTRY,
    STATUS,
    STORE,
    FieldError,
    Route,
    claims,
    error,
    guard,
    refusal,
)
from hub.auth import TokenAuthority
from hub.ingest import IngestStats
from hub.registry import Registry, RegistryError
from hub.status import StatusListener
from hub.store import Store, StoreError

__all__ = ["ROUTES", "make_app", "openapi_spec"]

DEFAULT_LIMIT: Final = 1000
MAX_LIMIT: Final = 10_000
_MIN_US: Final = -(2**63)
_MAX_US: Final = 2**63 - 1


def _iso(ts_us: int) -> str:
    try:
        dt = datetime.fromtimestamp(ts_us / 1_000_000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_value(v: Value) -> Any:
    """JSON has no NaN or infinities: send them as the strings JavaScript would print."""
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return v


def _time_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            raise StoreError(f"{name}: integer microseconds or ISO-8601 time") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
        value = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if not _MIN_US <= value <= _MAX_US:
        raise StoreError(f"{name}: out of range (64-bit microseconds since the epoch)")
    return value


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Bad input is a 4xx in the API's shape, never a 500 with a traceback."""
    try:
        return await handler(request)
    except (StoreError, FieldError) as exc:
        return error(400, "bad-parameter", str(exc))
    except RegistryError as exc:
        return refusal(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug = {413: "too-large", 404: "not-found", 405: "method-not-allowed"}.get(
            exc.status, "bad-request" if exc.status == 400 else "error"
        )
        return error(exc.status, slug, exc.reason)


async def _devices(request: web.Request) -> web.Response:
    tenant = claims(request).tenant
    devices = await asyncio.to_thread(request.app[STORE].devices, tenant)
    return web.json_response(
        {
            "devices": [
                {
                    "device": d.device,
                    "sensors": [
                        {
                            "sensor": s.sensor,
                            "count": s.count,
                            "last_ts": s.last_ts,
                            "last_time": _iso(s.last_ts) if s.last_ts is not None else None,
                        }
                        for s in d.sensors
                    ],
                }
                for d in devices
            ]
        }
    )


def _reading_json(r: Reading) -> dict[str, Any]:
    return {"ts": r.ts, "time": _iso(r.ts), "value": _json_value(r.value), "flags": r.flags}


async def _readings(request: web.Request) -> web.Response:
    tenant = claims(request).tenant
    store = request.app[STORE]
    device = request.match_info["device"]
    sensor = request.query.get("sensor")
    if not sensor:
        return error(400, "bad-parameter", "sensor: required")
    start = _time_param(request, "from", _MIN_US)
    end = _time_param(request, "to", _MAX_US)
    try:
        limit = int(request.query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        return error(400, "bad-parameter", "limit: an integer")
    if not 1 <= limit <= MAX_LIMIT:
        return error(400, "bad-parameter", f"limit: between 1 and {MAX_LIMIT}")
    cursor = request.query.get("cursor") or None
    if not await asyncio.to_thread(store.has_series, tenant, device, sensor):
        return error(404, "not-found", "no such device and sensor")
    page, next_cursor = await asyncio.to_thread(
        store.readings, tenant, device, sensor, start, end, limit, cursor
    )
    return web.json_response(
        {
            "device": device,
            "sensor": sensor,
            "readings": [_reading_json(r) for r in page],
            "next_cursor": next_cursor,
        }
    )


async def _latest(request: web.Request) -> web.Response:
    tenant = claims(request).tenant
    device = request.query.get("device") or None
    store = request.app[STORE]
    if device is not None and not await asyncio.to_thread(store.has_series, tenant, device):
        return error(404, "not-found", "no such device")
    rows = await asyncio.to_thread(store.latest, tenant, device)
    return web.json_response(
        {
            "latest": [
                {
                    "device": x.device,
                    "sensor": x.sensor,
                    "ts": x.ts,
                    "time": _iso(x.ts),
                    "value": _json_value(x.value),
                    "flags": x.flags,
                }
                for x in rows
            ]
        }
    )


def _num(doc: Any, *path: str) -> Any:
    """``doc[path[0]][path[1]]...`` if it is there and a number or bool or string, else None."""
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc if isinstance(doc, int | float | str | bool) else None


def _counted(doc: Any, word: str) -> dict[str, Any]:
    """The edge's ``readings-<word>`` total and its per-source counts by reason
    (``word``: ``dropped`` or ``refused``), from a status document."""
    counters = doc.get("counters") if isinstance(doc, dict) else None
    total = counters.get(f"readings-{word}") if isinstance(counters, dict) else None
    by_source: dict[str, dict[str, int]] = {}
    sources = doc.get("sources") if isinstance(doc, dict) else None
    if isinstance(sources, dict):
        for name, src in sources.items():
            counts = src.get(word) if isinstance(src, dict) else None
            if isinstance(counts, dict):
                by_source[name] = {k: v for k, v in counts.items() if type(v) is int}
    return {"total": total if type(total) is int else None, "sources": by_source}


def _status_summary(doc: Any, received_us: int) -> dict[str, Any]:
    """What an operator looks at first, from the latest status document of an edge."""
    return {
        "time": _iso(received_us),
        "age_s": round((datetime.now(tz=UTC).timestamp() * 1e6 - received_us) / 1e6, 1),
        "connected": _num(doc, "forwarder", "connected"),
        "clock_offset_ms": _num(doc, "clock", "offset_ms"),
        "clock_rtt_ms": _num(doc, "clock", "rtt_ms"),
        "clock_warning": _num(doc, "clock", "warning"),
        "buffer_batches_unsent": _num(doc, "buffer", "batches_unsent"),
        "buffer_readings_unsent": _num(doc, "buffer", "readings_unsent"),
        "oldest_unsent_us": _num(doc, "buffer", "oldest_unsent_us"),
        "dropped": _counted(doc, "dropped"),
        "refused": _counted(doc, "refused"),
        "uplink": doc.get("uplink") if isinstance(doc.get("uplink"), dict) else None,
    }


async def _edges(request: web.Request) -> web.Response:
    tenant = claims(request).tenant
    rows = await asyncio.to_thread(request.app[STORE].edges, tenant)
    rows = await asyncio.to_thread(api_identity.merge_identity, request.app[REGISTRY], tenant, rows)
    for r in rows:
        r["last_time"] = _iso(r["last_us"]) if r["last_us"] is not None else None
        doc = r.pop("status")
        status_us = r.pop("status_us")
        r["status"] = None if doc is None else _status_summary(doc, status_us)
        if request.query.get("document") in {"1", "true"}:
            r["status_document"] = doc
    return web.json_response({"edges": rows})


async def _stats(request: web.Request) -> web.Response:
    tenant = claims(request).tenant
    stats = await asyncio.to_thread(request.app[STORE].stats, tenant)
    body = {
        **stats,
        "ingest": request.app[INGEST].as_dict(),
        "status": request.app[STATUS].as_dict(),
    }
    manager = request.app.get(NATS_AUTHORIZATION)
    if manager is not None:  # [nats] manage_authorization
        body["nats_authorization"] = manager.as_dict()
    return web.json_response(body)


async def _openapi(_request: web.Request) -> web.Response:
    return web.json_response(openapi_spec())


_READINGS_PARAMS: Final = (
    {"name": "sensor", "in": "query", "required": True, "schema": {"type": "string"}},
    {"name": "from", "in": "query", "schema": {"type": "string"}},
    {"name": "to", "in": "query", "schema": {"type": "string"}},
    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
)

DATA_ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/api/v1/devices", _devices, "Devices of the tenant and their sensors", "viewer"),
    Route(
        "GET",
        "/api/v1/devices/{device}/readings",
        _readings,
        "Readings of one sensor in a range",
        "viewer",
        params=_READINGS_PARAMS,
    ),
    Route(
        "GET",
        "/api/v1/latest",
        _latest,
        "Latest value of every sensor",
        "viewer",
        params=({"name": "device", "in": "query", "schema": {"type": "string"}},),
    ),
    Route(
        "GET",
        "/api/v1/edges",
        _edges,
        "Edges of the tenant: counts, latest status, enrollment",
        "viewer",
        params=({"name": "document", "in": "query", "schema": {"type": "string"}},),
    ),
    Route("GET", "/api/v1/stats", _stats, "Stored readings and ingest counters", "viewer"),
    Route("GET", "/api/v1/openapi.json", _openapi, "This API's OpenAPI document", None),
)

ROUTES: Final[tuple[Route, ...]] = DATA_ROUTES + api_identity.ROUTES + api_admin.ROUTES
"""Every route of the API: the attack tests iterate over this table."""


def _path_params(path: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{(\w+)\}", path)
    ]


def _operation(route: Route) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": {"application/json": {}}},
        "400": {"description": "Bad parameter"},
        "404": {"description": "Not found"},
        "413": {"description": "Body too large"},
    }
    if route.role is not None:
        responses["401"] = {"description": "Missing, invalid or revoked token"}
        responses["403"] = {"description": f"Needs role {route.role}"}
    for code, text in route.responses.items():
        responses[code] = {"description": text}
    op: dict[str, Any] = {
        "summary": route.summary,
        "parameters": _path_params(route.path) + list(route.params),
        "responses": responses,
    }
    if route.role is None:
        op["security"] = []
    else:
        op["x-cairn-role"] = route.role
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": route.body}},
        }
    return op


def openapi_spec() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.0.3",
        "info": {"title": "Cairn hub API", "version": "1"},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            }
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


def make_app(
    store: Store,
    auth: TokenAuthority,
    ingest: IngestStats | None = None,
    status: StatusListener | None = None,
    *,
    registry: Registry,
    ca_pem: bytes | None = None,
) -> web.Application:
    """The API application; ``store``, ``auth`` and ``registry`` are shared with the rest of
    the hub."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
    app[STORE] = store
    app[AUTH] = auth
    app[INGEST] = ingest or IngestStats()
    app[STATUS] = status or StatusListener("", store)
    app[REGISTRY] = registry
    if ca_pem is not None:
        app[CA_PEM] = ca_pem
    for route in ROUTES:
        app.router.add_route(route.method, route.path, guard(route))
    return app
