"""The hub REST API over real HTTP: authentication, tenant scoping, queries, errors."""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer

from contract.codec import decode_batch, encode_batch
from contract.model import Reading
from contract.signing import b64url
from hub.api import ROUTES, make_app
from hub.auth import TokenAuthority
from hub.registry import Registry
from hub.store import SqliteStore
from tests.test_edge_http_support import raw_token


@pytest.fixture
def auth(tmp_path: Path) -> TokenAuthority:
    return TokenAuthority(tmp_path / "key.pem", issuer="cairn-hub", audience="cairn-api")


@pytest.fixture
async def client(tmp_path: Path, auth: TokenAuthority) -> AsyncIterator[TestClient]:
    store = SqliteStore(tmp_path / "store.sqlite3")
    for tenant, device in (("acme", "d1"), ("other", "secret-device")):
        readings = [Reading(device, "temp", 1_000_000 * i, 20.0 + i) for i in range(30)]
        readings.append(Reading(device, "gps", 5, {"lat": 1.5, "lon": 2.5}))
        readings.append(Reading(device, "err", 6, math.nan))
        body = encode_batch(readings)
        store.ingest(tenant, "e1", 1, 1, body, decode_batch(body))
    registry = Registry(tmp_path / "registry.sqlite3")
    async with TestClient(TestServer(make_app(store, auth, registry=registry))) as c:
        yield c
    registry.close()
    store.close()


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_every_route_needs_a_token(client: TestClient) -> None:
    for route in ROUTES:
        if route.role is None:
            continue
        url = re.sub(r"\{\w+\}", "d1", route.path)  # every path parameter
        resp = await client.request(route.method, url)
        assert resp.status == 401, url
        body = await resp.json()
        assert body["error"] == "unauthorized"
        assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_bad_tokens_are_refused(
    client: TestClient, auth: TokenAuthority, tmp_path: Path
) -> None:
    good = auth.issue("acme", "operator", 3600)
    assert (await client.get("/api/v1/devices", headers=_h(good))).status == 200
    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["tenant"] = "other"
    forged_payload = b64url(json.dumps(claims).encode())
    other_key = TokenAuthority(tmp_path / "other.pem", issuer="cairn-hub", audience="cairn-api")
    now = int(time.time())
    base = {
        "iss": "cairn-hub",
        "aud": "cairn-api",
        "sub": "x",
        "tenant": "acme",
        "role": "operator",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "j",
    }
    none_token = jwt.encode(base, None, algorithm="none")  # type: ignore[arg-type]
    # The classic key-confusion forgery: HMAC with the verifier's public key as the secret.
    hs_token = raw_token(
        {"alg": "HS256", "typ": "JWT", "kid": auth.kid}, base, auth.public_key_pem()
    )
    bad = {
        "tampered payload": f"{head}.{forged_payload}.{sig}",
        "tampered signature": f"{head}.{payload}.{sig[:-4]}AAAA",
        "expired": jwt.encode(
            {**base, "exp": now - 3600, "iat": now - 7200, "nbf": now - 7200},
            auth._key,
            algorithm="EdDSA",
            headers={"kid": auth.kid},
        ),
        "not yet valid": jwt.encode(
            {**base, "nbf": now + 3600}, auth._key, algorithm="EdDSA", headers={"kid": auth.kid}
        ),
        "wrong audience": jwt.encode(
            {**base, "aud": "elsewhere"}, auth._key, algorithm="EdDSA", headers={"kid": auth.kid}
        ),
        "wrong issuer": jwt.encode(
            {**base, "iss": "mallory"}, auth._key, algorithm="EdDSA", headers={"kid": auth.kid}
        ),
        "other key": other_key.issue("acme", "operator", 600),
        "alg none": none_token,
        "HS256 with the public key": hs_token,
        "garbage": "not-a-jwt",
    }
    for what, token in bad.items():
        resp = await client.get("/api/v1/devices", headers=_h(token))
        assert resp.status == 401, what
        assert (await resp.json())["error"] == "unauthorized", what


async def test_queries_return_the_tenants_data_only(
    client: TestClient, auth: TokenAuthority
) -> None:
    token = auth.issue("acme", "viewer", 600)
    devices = await (await client.get("/api/v1/devices", headers=_h(token))).json()
    assert [d["device"] for d in devices["devices"]] == ["d1"]
    assert {s["sensor"] for s in devices["devices"][0]["sensors"]} == {"temp", "gps", "err"}

    resp = await client.get("/api/v1/devices/secret-device/readings?sensor=temp", headers=_h(token))
    assert resp.status == 404  # another tenant's device does not exist for acme

    latest = await (await client.get("/api/v1/latest", headers=_h(token))).json()
    by_sensor = {x["sensor"]: x["value"] for x in latest["latest"]}
    assert by_sensor == {"temp": 49.0, "gps": {"lat": 1.5, "lon": 2.5}, "err": "NaN"}
    assert all(x["device"] == "d1" for x in latest["latest"])


async def test_readings_range_and_cursor(client: TestClient, auth: TokenAuthority) -> None:
    token = auth.issue("acme", "operator", 600)
    url = "/api/v1/devices/d1/readings?sensor=temp&from=5000000&to=1970-01-01T00:00:25Z&limit=7"
    values: list[float] = []
    pages = 0
    while url:
        body = await (await client.get(url, headers=_h(token))).json()
        values += [r["value"] for r in body["readings"]]
        pages += 1
        cursor = body["next_cursor"]
        url = (
            "/api/v1/devices/d1/readings?sensor=temp&from=5000000&to=25000000&limit=7"
            f"&cursor={cursor}"
            if cursor
            else ""
        )
    assert values == [20.0 + i for i in range(5, 25)]
    assert pages == 3
    first = body["readings"][0] if body["readings"] else None
    assert first is None or first["time"].endswith("Z")


async def test_bad_parameters_are_400_with_json(client: TestClient, auth: TokenAuthority) -> None:
    token = auth.issue("acme", "operator", 600)
    for query in (
        "sensor=temp&from=yesterday",
        "sensor=temp&limit=0",
        "sensor=temp&limit=x",
        "sensor=temp&cursor=%%%",
        "",
        "sensor=temp&limit=100000",
        "sensor=temp&from=99999999999999999999999",
        "sensor=temp&to=-99999999999999999999999",
    ):
        resp = await client.get(f"/api/v1/devices/d1/readings?{query}", headers=_h(token))
        assert resp.status == 400, query
        assert (await resp.json())["error"] == "bad-parameter", query
    resp = await client.get("/api/v1/nothing-here", headers=_h(token))
    assert resp.status == 404
    assert "error" in await resp.json()


async def test_openapi_lists_every_route(client: TestClient, auth: TokenAuthority) -> None:
    token = auth.issue("acme", "operator", 600)
    spec = await (await client.get("/api/v1/openapi.json", headers=_h(token))).json()
    assert set(spec["paths"]) == {r.path for r in ROUTES}


async def test_latest_of_one_device(client: TestClient, auth: TokenAuthority) -> None:
    token = auth.issue_token("acme", "viewer")
    body = await (await client.get("/api/v1/latest?device=d1", headers=_h(token))).json()
    assert {(x["device"], x["sensor"]) for x in body["latest"]} == {
        ("d1", "temp"),
        ("d1", "gps"),
        ("d1", "err"),
    }
    for device in ("nope", "secret-device"):  # unknown, or another tenant's
        resp = await client.get(f"/api/v1/latest?device={device}", headers=_h(token))
        assert resp.status == 404
        assert (await resp.json())["error"] == "not-found"


async def test_readings_with_iso_times_and_offsets(
    client: TestClient, auth: TokenAuthority
) -> None:
    token = auth.issue_token("acme", "operator", subject="ops@acme", ttl=60)
    assert auth.verify_token(token).subject == "ops@acme"
    url = (
        "/api/v1/devices/d1/readings?sensor=temp"
        "&from=1970-01-01T02:00:03%2B02:00&to=1970-01-01T00:00:06"
    )
    body = await (await client.get(url, headers=_h(token))).json()
    assert [(r["ts"], r["value"], r["time"]) for r in body["readings"]] == [
        (3_000_000, 23.0, "1970-01-01T00:00:03.000000Z"),
        (4_000_000, 24.0, "1970-01-01T00:00:04.000000Z"),
        (5_000_000, 25.0, "1970-01-01T00:00:05.000000Z"),
    ]
    assert body["next_cursor"] is None
