"""The attack suite's shared parts: the attack recorder, a hub API with two tenants, samples.

Every attack runs inside ``with attack(cls, name):`` (the ``attack`` fixture). The block holds
the assertions that the attack was refused; if one fails, the attack worked and the test
fails. At the end of the run the summary prints what was tried per class, e.g.
``security: batch 19 tried / 19 refused; jwt 40/40; ...``.

The API world (:class:`ApiWorld`): a real SQLite store and registry with two tenants,
``acme`` (the victim, whose ids carry markers that must never show up in another tenant's
answers) and ``globex`` (the attacker), a token of every role of each, a platform-admin token,
and the app :func:`hub.api.make_app` builds from the route table :data:`hub.api.ROUTES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from contract.codec import decode_batch, encode_batch
from contract.model import Reading
from contract.signing import generate_key, public_key_bytes
from hub.api import ROUTES, make_app
from hub.apibase import Route
from hub.auth import PLATFORM_ADMIN, PLATFORM_TENANT, ROLE_RANK, TENANT_ROLES, TokenAuthority
from hub.registry import Registry
from hub.store import SqliteStore

CLASSES = ("batch", "jwt", "authz", "input", "fuzz")

VICTIM = "acme"
ATTACKER = "globex"
VICTIM_DEVICE = "acme-secret-dev"
VICTIM_EDGE = "acme-secret-edge"
VICTIM_SENSOR = "acme-secret-sensor"
MARKERS = (VICTIM_DEVICE, VICTIM_EDGE, VICTIM_SENSOR)
"""Strings only the victim tenant's data contains: another tenant's answers never show them."""


# --------------------------------------------------------------------------- the recorder


@dataclass
class _Tally:
    tried: int = 0
    refused: int = 0
    worked: list[str] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)


class AttackRecorder:
    """Counts attacks per class; an attack counts as refused when its block raised nothing."""

    def __init__(self) -> None:
        self.tallies: dict[str, _Tally] = {}

    def tally(self, cls: str) -> _Tally:
        if cls not in CLASSES:
            raise ValueError(f"unknown attack class {cls!r}")
        return self.tallies.setdefault(cls, _Tally())

    @contextlib.contextmanager
    def __call__(self, cls: str, name: str) -> Iterator[None]:
        tally = self.tally(cls)
        tally.tried += 1
        try:
            yield
        except BaseException:
            tally.worked.append(name)
            raise
        tally.refused += 1

    def note(self, cls: str, key: str, n: int) -> None:
        """Add ``n`` to a number shown beside the class (fuzz cases, server errors...)."""
        notes = self.tally(cls).notes
        notes[key] = notes.get(key, 0) + n

    def summary(self) -> str:
        parts = []
        for cls in CLASSES:
            t = self.tallies.get(cls)
            if t is None:
                continue
            if cls == "fuzz":
                text = (
                    f"fuzz {t.notes.get('cases', 0)} cases"
                    f" {t.notes.get('server errors', 0)} server errors"
                )
            else:
                text = f"{cls} {t.tried} tried / {t.refused} refused"
            extra = [f"{k} {v}" for k, v in t.notes.items() if cls != "fuzz"]
            if extra:
                text += f" ({', '.join(extra)})"
            if t.worked:
                text += f" WORKED: {', '.join(t.worked[:5])}"
            parts.append(text)
        return "security: " + "; ".join(parts)


RECORDER = AttackRecorder()


@pytest.fixture
def attack() -> AttackRecorder:
    """``with attack("jwt", "alg none"): <assert it was refused>``."""
    return RECORDER


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RECORDER.tallies:
        terminalreporter.write_sep("-", "attack suite")
        terminalreporter.write_line(RECORDER.summary())


# --------------------------------------------------------------------------- database snapshots


def snapshot(*paths: Path) -> dict[str, set[tuple[Any, ...]]]:
    """Every row of every table of these SQLite files, read through a connection of its own."""
    rows: dict[str, set[tuple[Any, ...]]] = {}
    for path in paths:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = [
                r[0]
                for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%'"
                )
            ]
            for table in tables:
                rows[f"{path.name}:{table}"] = set(con.execute(f'SELECT * FROM "{table}"'))
        finally:
            con.close()
    return rows


def lost_rows(
    before: dict[str, set[tuple[Any, ...]]], after: dict[str, set[tuple[Any, ...]]]
) -> dict[str, set[tuple[Any, ...]]]:
    """Rows of ``before`` that are gone or changed in ``after`` (what an attack destroyed)."""
    lost = {t: rows - after.get(t, set()) for t, rows in before.items()}
    return {t: rows for t, rows in lost.items() if rows}


def victim_rows(snap: dict[str, set[tuple[Any, ...]]]) -> dict[str, set[tuple[Any, ...]]]:
    """The rows of a snapshot that belong to the victim tenant (a column says ``acme``)."""
    return {t: {r for r in rows if VICTIM in r} for t, rows in snap.items()}


# --------------------------------------------------------------------------- the API world

SAMPLES: dict[str, str] = {
    "tenant": VICTIM,
    "device": VICTIM_DEVICE,
    "device_id": VICTIM_DEVICE,
    "edge": VICTIM_EDGE,
    "edge_id": VICTIM_EDGE,
    "sensor": VICTIM_SENSOR,
}
"""Path and query parameter values, by parameter name, naming the victim's things; the world
adds the victim's API key, enrollment and token ids under the names a route may use."""


@dataclass
class Parts:
    """What a hub API is made of, seeded: store, registry, token authority, tokens, samples."""

    store: SqliteStore
    registry: Registry
    auth: TokenAuthority
    store_path: Path
    registry_path: Path
    tokens: dict[tuple[str, str], str]
    samples: dict[str, str]

    def token(self, tenant: str, role: str) -> str:
        return self.tokens[(tenant, role)]

    def snapshot(self) -> dict[str, set[tuple[Any, ...]]]:
        return snapshot(self.store_path, self.registry_path)

    def close(self) -> None:
        self.registry.close()
        self.store.close()


@dataclass
class ApiWorld(Parts):
    """The parts and a test client of their API."""

    client: TestClient


def _seed_store(store: SqliteStore) -> None:
    for tenant, device, sensor, edge in (
        (VICTIM, VICTIM_DEVICE, VICTIM_SENSOR, VICTIM_EDGE),
        (VICTIM, "d1", "temp", VICTIM_EDGE),
        (ATTACKER, "g1", "temp", "g-edge"),
    ):
        readings = [Reading(device, sensor, 1_000_000 * i, 20.0 + i) for i in range(10)]
        body = encode_batch(readings)
        store.ingest(tenant, edge, 1 + len(store.tenants()), 1, body, decode_batch(body))
    store.put_edge_status(VICTIM, VICTIM_EDGE, 1, {"forwarder": {"connected": True}})


def _seed_registry(registry: Registry) -> dict[str, str]:
    """Tenants, edges, an API key, an enrollment and a revoked token of each tenant; the ids of
    the victim's, by the parameter names a route may give them."""
    found: dict[str, str] = {}
    for tenant, edge in ((VICTIM, VICTIM_EDGE), (ATTACKER, "g-edge")):
        registry.register(tenant, edge, public_key_bytes(generate_key()))
        enrollment = registry.create_enrollment(tenant, f"{edge}-next", 3600, "seed")
        _text, key = registry.create_api_key(tenant, "viewer", f"{tenant}-key")
        if tenant == VICTIM:
            found |= {
                "enrollment": enrollment.id,
                "enrollment_id": enrollment.id,
                "token_id": enrollment.id,
                "key_id": key.id,
                "api_key": key.id,
                "api_key_id": key.id,
                "id": key.id,
            }
    jti = "acme-revoked-jti"
    registry.revoke_token(jti, VICTIM, 2**62, "device", "dev-1")
    found["jti"] = jti
    return found


def make_parts(folder: Path) -> Parts:
    store_path = folder / "store.sqlite3"
    registry_path = folder / "registry.sqlite3"
    store = SqliteStore(store_path)
    _seed_store(store)
    registry = Registry(registry_path)
    auth = TokenAuthority(folder / "api-key.pem", issuer="cairn-hub", audience="cairn-api")
    samples = dict(SAMPLES) | _seed_registry(registry)
    tokens = {(t, r): auth.issue(t, r, 3600) for t in (VICTIM, ATTACKER) for r in TENANT_ROLES}
    tokens[(PLATFORM_TENANT, PLATFORM_ADMIN)] = auth.issue(PLATFORM_TENANT, PLATFORM_ADMIN, 3600)
    return Parts(store, registry, auth, store_path, registry_path, tokens, samples)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[ApiWorld]:
    p = make_parts(tmp_path)
    app = make_app(p.store, p.auth, registry=p.registry)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield ApiWorld(**vars(p), client=client)
    finally:
        p.close()


class LiveHub:
    """The hub API on 127.0.0.1 in a thread of its own (for blocking clients: schemathesis)."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def __enter__(self) -> Self:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    async def _start(self) -> str:
        p = self.parts
        self._runner = web.AppRunner(make_app(p.store, p.auth, registry=p.registry))
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        try:
            if self._runner is not None:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


@pytest.fixture
def live_hub(tmp_path: Path) -> Iterator[LiveHub]:
    parts = make_parts(tmp_path)
    try:
        with LiveHub(parts) as hub:
            yield hub
    finally:
        parts.close()


# --------------------------------------------------------------------------- routes


def path_params(route: Route) -> list[str]:
    return re.findall(r"\{(\w+)\}", route.path)


def query_params(route: Route) -> list[dict[str, Any]]:
    return [p for p in route.params if p.get("in") == "query"]


def fill_path(route: Route, values: dict[str, str]) -> str:
    """``route.path`` with each ``{name}`` replaced by ``values[name]`` (already URL-safe)."""
    path = route.path
    for name in path_params(route):
        path = path.replace("{" + name + "}", values[name])
    return path


def sample_value(schema: dict[str, Any], name: str = "") -> Any:
    """A small value that fits ``schema`` (enough to get past a handler's first checks)."""
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: sample_value(v, k) for k, v in props.items()}
    if kind == "array":
        return [sample_value(schema.get("items", {}), name)]
    if kind == "integer":
        return int(schema.get("minimum", 60) if schema.get("minimum", 0) > 60 else 60)
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return False
    return f"probe-{name or 'value'}"[:64]


def sample_body(route: Route) -> dict[str, Any] | None:
    if route.body is None:
        return None
    body = sample_value(route.body)
    return body if isinstance(body, dict) else {}


def role_token(world: ApiWorld, tenant: str, role: str | None) -> dict[str, str]:
    """The Authorization header a caller of ``role`` (in ``tenant``) sends; none if public."""
    if role is None:
        return {}
    if role == PLATFORM_ADMIN:
        return {"Authorization": f"Bearer {world.token(PLATFORM_TENANT, PLATFORM_ADMIN)}"}
    # A tenant role, or a role any token satisfies (then: the tenant's admin).
    return {
        "Authorization": f"Bearer {world.token(tenant, role if role in ROLE_RANK else 'admin')}"
    }


def strongest(route: Route) -> str | None:
    """The strongest role that may call ``route`` (admin for tenant routes)."""
    if route.role is None or route.role == PLATFORM_ADMIN:
        return route.role
    return "admin"


ALL_ROUTES: tuple[Route, ...] = ROUTES
