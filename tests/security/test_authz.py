"""Authorization attacks on every route of the hub API, generated from its route table.

For each :data:`hub.api.ROUTES` entry (so a route added later is attacked too): no token -> 401;
each tenant role below the route's least role -> 403; platform-admin on a tenant route (and a
tenant role on a platform route) -> 403; another tenant's token on the victim's resource -> the
same 403/404 answer as for a resource that does not exist, and none of the victim's ids in any
answer. Public routes (declared role ``None``) take no token: they are listed and skipped here
by that declared role. Afterwards none of the victim's rows has changed.
"""

from __future__ import annotations

import json
from typing import Any

from hub.api import openapi_spec
from hub.auth import PLATFORM_ADMIN, ROLE_RANK, TENANT_ROLES

from .conftest import (
    ALL_ROUTES,
    ATTACKER,
    MARKERS,
    VICTIM,
    ApiWorld,
    AttackRecorder,
    fill_path,
    path_params,
    query_params,
    role_token,
    sample_body,
    victim_rows,
)

NOT_THERE = "no-such-thing-42"


def _label(route: Any) -> str:
    return f"{route.method} {route.path}"


def _url(route: Any, values: dict[str, str], query: dict[str, str] | None = None) -> str:
    path = fill_path(route, {n: values.get(n, NOT_THERE) for n in path_params(route)})
    if query:
        from urllib.parse import urlencode

        path += "?" + urlencode(query)
    return path


def _required_query(route: Any, world: ApiWorld) -> dict[str, str]:
    return {
        p["name"]: world.samples.get(p["name"], "1")
        for p in query_params(route)
        if p.get("required")
    }


async def _call(world: ApiWorld, route: Any, url: str, headers: dict[str, str]) -> tuple[int, str]:
    body = sample_body(route)
    resp = await world.client.request(
        route.method, url, headers=headers, data=None if body is None else json.dumps(body)
    )
    return resp.status, await resp.text()


def test_public_routes_are_declared_not_guessed() -> None:
    """A route takes no token exactly when its declared role is ``None``, and the OpenAPI
    document says so (``security: []``), so clients and the fuzzer agree with the guard."""
    spec = openapi_spec()
    for route in ALL_ROUTES:
        operation = spec["paths"][route.path][route.method.lower()]
        assert (operation.get("security") == []) == (route.role is None), _label(route)


async def test_no_token_is_401_on_every_guarded_route(
    world: ApiWorld, attack: AttackRecorder
) -> None:
    for route in ALL_ROUTES:
        if route.role is None:  # public by declaration: proves itself another way
            attack.note("authz", "public routes skipped", 1)
            continue
        url = _url(route, world.samples, _required_query(route, world))
        for name, headers in (
            ("no header", {}),
            ("empty bearer", {"Authorization": "Bearer "}),
            ("basic scheme", {"Authorization": "Basic YWRtaW46YWRtaW4="}),
            ("token without scheme", {"Authorization": world.token(VICTIM, "admin")}),
        ):
            with attack("authz", f"{_label(route)}: {name}"):
                status, text = await _call(world, route, url, headers)
                assert status == 401, (_label(route), name, status, text)
                assert json.loads(text)["error"] == "unauthorized"


async def test_roles_below_the_route_are_403(world: ApiWorld, attack: AttackRecorder) -> None:
    before = victim_rows(world.snapshot())
    for route in ALL_ROUTES:
        if route.role is None:
            continue
        url = _url(route, world.samples, _required_query(route, world))
        if route.role == PLATFORM_ADMIN:
            weaker = list(TENANT_ROLES)  # no tenant role manages tenants
        elif route.role not in ROLE_RANK:
            # A role every valid token has (``whoami``): nobody to refuse but the tokenless.
            attack.note("authz", "routes open to any token", 1)
            continue
        else:
            weaker = [r for r in TENANT_ROLES if ROLE_RANK[r] < ROLE_RANK[route.role]]
            # platform-admin manages tenants and reads no tenant's data
            with attack("authz", f"{_label(route)}: platform-admin"):
                status, text = await _call(world, route, url, role_token(world, "", PLATFORM_ADMIN))
                assert status == 403, (_label(route), "platform-admin", status, text)
        for role in weaker:
            with attack("authz", f"{_label(route)}: {role}"):
                status, text = await _call(world, route, url, role_token(world, VICTIM, role))
                assert status == 403, (_label(route), role, status, text)
                assert json.loads(text)["error"] == "forbidden"
    assert victim_rows(world.snapshot()) == before


def _normalise(text: str, values: dict[str, str]) -> str:
    for value in sorted(set(values.values()), key=len, reverse=True):
        text = text.replace(value, "<param>")
    return text


async def test_another_tenant_learns_nothing(world: ApiWorld, attack: AttackRecorder) -> None:
    """The attacker's strongest token on the victim's ids answers exactly as on ids that do not
    exist (403 or 404 when the id is in the path), and no answer holds a victim's id."""
    before = victim_rows(world.snapshot())
    for route in ALL_ROUTES:
        if route.role in (None, PLATFORM_ADMIN):
            continue  # public, or platform-wide: no tenant to cross
        headers = role_token(world, ATTACKER, "admin")
        names = path_params(route) + [p["name"] for p in query_params(route)]
        victim = {n: world.samples[n] for n in names if n in world.samples}
        ghost = dict.fromkeys(victim, NOT_THERE)
        query = _required_query(route, world)
        vq = {**query, **{n: v for n, v in victim.items() if n not in path_params(route)}}
        gq = {**query, **{n: v for n, v in ghost.items() if n not in path_params(route)}}
        with attack("authz", f"{_label(route)}: tenant {ATTACKER} on {VICTIM}'s ids"):
            status, text = await _call(world, route, _url(route, victim, vq), headers)
            if victim:
                g_status, g_text = await _call(world, route, _url(route, ghost, gq), headers)
                assert status == g_status, (_label(route), status, g_status, text, g_text)
                assert _normalise(text, victim) == _normalise(g_text, ghost), _label(route)
                if any(n in victim for n in path_params(route)):
                    assert status in (403, 404), (_label(route), status, text)
            leaked = [m for m in MARKERS if m in _normalise(text, victim)]
            assert not leaked, (_label(route), leaked, text[:300])
    assert victim_rows(world.snapshot()) == before
