"""Hostile input on every route of the hub API, generated from its route table.

For every route, called with a token strong enough to reach its handler: a body over 64 KiB ->
413 (routes that take a body; the others must not fail on one either); JSON nested deeper than
the cap -> 400; SQL metacharacters, path traversal (``../``, ``%2e%2e``, ``%00``), very long
and odd unicode values in every path and query parameter -> a 4xx or a 2xx, never a 5xx; and
afterwards every row of the store and the registry is still there, unchanged.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from hub.apibase import MAX_BODY_BYTES

from .conftest import (
    ALL_ROUTES,
    VICTIM,
    ApiWorld,
    AttackRecorder,
    fill_path,
    lost_rows,
    path_params,
    query_params,
    role_token,
    sample_body,
    strongest,
)

PAYLOADS: tuple[str, ...] = (
    "' OR '1'='1",
    "1; DROP TABLE readings; --",
    "acme' --",
    '" OR ""="',
    "%' OR 1=1 --",
    "1 UNION SELECT name, sql FROM sqlite_master --",
    "../../../../etc/passwd",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2f",
    "..\\..\\windows\\win.ini",
    "a\x00b",
    "%00",
    "x" * 10_000,
    "\uff21\uff43\uff4d\uff45\u202e\u0000\ufeff\U0001f642",  # fullwidth "Acme", RTL, BOM
    "\ud800",
    "*",
    "acme/../globex",
    "${jndi:ldap://127.0.0.1/a}",
    "-1",
    "99999999999999999999999999",
)
"""Values put in every path and query parameter (each URL-encoded, so it reaches the handler
as this text; the raw ``%2e%2e`` spellings test a decoding done twice)."""

RAW_SEGMENTS: tuple[str, ...] = (
    "%2e%2e",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fstats",
    "%00",
    "%ff%fe",
    "%c0%ae%c0%ae",
)
"""Path segments sent as they are (decoded once by the server: ``..``, NUL, bad UTF-8)."""


def _victim_path(world: ApiWorld, route: object) -> dict[str, str]:
    return {n: _quote(world.samples.get(n, "x")) for n in path_params(route)}  # type: ignore[arg-type]


def _base_path(world: ApiWorld, route: object) -> dict[str, str]:
    """Path values that reach the handler: the victim's ids for reads; for a route that changes
    something, ids that do not exist (its legitimate effect on real rows is not an attack)."""
    names = path_params(route)  # type: ignore[arg-type]
    if route.method == "GET":  # type: ignore[attr-defined]
        return _victim_path(world, route)
    return dict.fromkeys(names, "no-such-thing-42")


def _quote(value: str) -> str:
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def _headers(world: ApiWorld, route: object) -> dict[str, str]:
    return role_token(world, VICTIM, strongest(route))  # type: ignore[arg-type]


async def _status(
    world: ApiWorld, method: str, url: str, headers: dict[str, str], data: bytes | None
) -> tuple[int, str]:
    resp = await world.client.request(
        method, url, headers={**headers, "Content-Type": "application/json"}, data=data
    )
    return resp.status, await resp.text()


async def test_oversized_bodies_are_413(world: ApiWorld, attack: AttackRecorder) -> None:
    before = world.snapshot()
    big = json.dumps({"pad": "x" * (MAX_BODY_BYTES + 1024)}).encode()
    for route in ALL_ROUTES:
        # A route that takes a body refuses it before acting: aim it at the victim's ids.
        values = _victim_path(world, route) if route.body else _base_path(world, route)
        url = fill_path(route, values)
        with attack("input", f"{route.method} {route.path}: body over 64 KiB"):
            status, text = await _status(world, route.method, url, _headers(world, route), big)
            if route.body is not None:
                assert status == 413, (route.path, status, text)
                assert json.loads(text)["error"] == "too-large"
            else:
                assert status < 500, (route.path, status, text)
    assert lost_rows(before, world.snapshot()) == {}


def _nested(depth: int) -> bytes:
    return ('{"a":' * depth + "1" + "}" * depth).encode()


async def test_deep_json_is_400(world: ApiWorld, attack: AttackRecorder) -> None:
    before = world.snapshot()
    bodies = {
        "nested 33 deep": _nested(33),
        "nested 20000 deep (recursion)": b"[" * 20_000 + b"]" * 20_000,
        "nested 5000 objects": _nested(5000),
    }
    for route in ALL_ROUTES:
        if route.body is None:
            continue
        url = fill_path(route, _victim_path(world, route))
        for what, body in bodies.items():
            with attack("input", f"{route.method} {route.path}: {what}"):
                status, text = await _status(world, route.method, url, _headers(world, route), body)
                assert status == 400, (route.path, what, status, text)
    assert lost_rows(before, world.snapshot()) == {}


async def test_hostile_parameters_never_5xx_and_data_intact(
    world: ApiWorld, attack: AttackRecorder
) -> None:
    before = world.snapshot()
    for route in ALL_ROUTES:
        headers = _headers(world, route)
        body = sample_body(route)
        data = None if body is None else json.dumps(body).encode()
        base_path = _base_path(world, route)
        base_query = {
            p["name"]: world.samples.get(p["name"], "1")
            for p in query_params(route)
            if p.get("required")
        }
        targets = [("path", n) for n in path_params(route)]
        targets += [("query", p["name"]) for p in query_params(route)]
        for where, name in targets:
            raw = RAW_SEGMENTS if where == "path" else ()
            for payload in (*PAYLOADS, *raw):
                values = dict(base_path)
                query = dict(base_query)
                if where == "path":
                    values[name] = payload if payload in raw else _quote(payload)
                else:
                    query[name] = payload
                url = fill_path(route, values)
                if query:
                    url += "?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in query.items())
                what = f"{route.method} {route.path}: {where} {name}={payload[:24]!r}"
                with attack("input", what):
                    status, text = await _status(world, route.method, url, headers, data)
                    assert status < 500, (what, status, text[:300])
                    assert "Traceback" not in text, what
    assert lost_rows(before, world.snapshot()) == {}


BAD_BODIES: dict[str, tuple[bytes, str]] = {
    "empty body": (b"", "application/json"),
    "not JSON": (b"{'a': 1", "application/json"),
    "invalid UTF-8": (b'{"a": "\xff\xfe"}', "application/json"),
    "UTF-16 with a BOM": ('{"a": 1}'.encode("utf-16"), "application/json"),
    "a JSON array": (b"[1, 2, 3]", "application/json"),
    "a JSON string": (b'"hello"', "application/json"),
    "null": (b"null", "application/json"),
    "NaN and Infinity": (b'{"a": NaN, "b": Infinity}', "application/json"),
    "a number of 100000 digits": (b'{"a": ' + b"9" * 100_000 + b"}", "application/json"),
    "a float beyond double": (b'{"a": 1e999999}', "application/json"),
    "wrong types everywhere": (b'{"a": {"b": [null, true, 1.5, {}]}}', "application/json"),
    "form-encoded": (b"a=1&b=2", "application/x-www-form-urlencoded"),
}
"""Bodies a route that takes JSON must answer with a 4xx (or, for a schema-free field, a 2xx)."""


async def test_bad_bodies_never_5xx_and_data_intact(
    world: ApiWorld, attack: AttackRecorder
) -> None:
    before = world.snapshot()
    for route in ALL_ROUTES:
        if route.body is None:
            continue
        url = fill_path(route, _base_path(world, route))
        headers = _headers(world, route)
        for what, (body, content_type) in BAD_BODIES.items():
            with attack("input", f"{route.method} {route.path}: {what}"):
                resp = await world.client.request(
                    route.method, url, headers={**headers, "Content-Type": content_type}, data=body
                )
                text = await resp.text()
                assert resp.status < 500, (route.path, what, resp.status, text[:300])
                if what not in ("wrong types everywhere", "NaN and Infinity"):
                    assert 400 <= resp.status < 500, (route.path, what, resp.status, text[:300])
    assert lost_rows(before, world.snapshot()) == {}


async def test_oversized_headers_and_methods_never_5xx(
    world: ApiWorld, attack: AttackRecorder
) -> None:
    for route in ALL_ROUTES:
        url = fill_path(route, _base_path(world, route))
        for what, headers in (
            ("a 100 KB bearer token", {"Authorization": "Bearer " + "a" * 100_000}),
            ("a 7 KB bearer token", {"Authorization": "Bearer " + "a" * 7_000}),
            ("a NUL in the bearer token", {"Authorization": "Bearer a\x00b"}),
            ("two Authorization schemes", {"Authorization": "Bearer x, Basic eA=="}),
        ):
            with attack("input", f"{route.method} {route.path}: {what}"):
                try:
                    resp = await world.client.request(route.method, url, headers=headers)
                except ValueError:  # the client itself refuses to send it: nothing got through
                    continue
                if route.role is None:  # a public route need not look at the header
                    assert resp.status < 500, (route.path, what, resp.status)
                else:
                    assert 400 <= resp.status < 500, (route.path, what, resp.status)
        with attack("input", f"{route.method} {route.path}: method TRACE"):
            resp = await world.client.request("TRACE", url)
            assert resp.status in (401, 404, 405), (route.path, resp.status)
