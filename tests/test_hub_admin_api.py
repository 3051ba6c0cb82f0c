"""Tenants, API keys, token revocation and device tokens over the real hub API (aiohttp on a
loopback port, a real registry file), and the roles table in docs/operator.md.

``python -m tests.test_hub_admin_api --write`` regenerates the roles table (the same as
``scripts/roles_table.py``).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer

from hub import api_admin
from hub.api import ROUTES, make_app
from hub.apibase import ANY_ROLE, PLATFORM_ADMIN
from hub.auth import DEVICE_AUDIENCE, TokenAuthority
from hub.registry import Registry, RegistryError
from hub.store import SqliteStore
from scripts import roles_table
from tests.polling import until

TENANT_ROLES = ("viewer", "operator", "admin")


@pytest.fixture
def auth(tmp_path: Path) -> TokenAuthority:
    return TokenAuthority(tmp_path / "key.pem", issuer="cairn-hub", audience="cairn-api")


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "registry.sqlite3")
    reg.create_tenant("acme")
    reg.create_tenant("other")
    return reg


@pytest.fixture
async def client(
    tmp_path: Path, auth: TokenAuthority, registry: Registry
) -> AsyncIterator[TestClient]:
    store = SqliteStore(tmp_path / "store.sqlite3")
    app = make_app(store, auth, registry=registry)
    api_admin.configure(app, 120)
    async with TestClient(TestServer(app)) as c:
        yield c
    registry.close()
    store.close()


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _call(
    client: TestClient, method: str, path: str, token: str | None = None, body: Any = None
) -> tuple[int, Any]:
    headers = _h(token) if token else {}
    resp = await client.request(method, path, json=body, headers=headers)
    doc = await resp.json(content_type=None)
    return resp.status, doc


async def test_api_key_is_shown_once_stored_hashed_and_exchanged(
    client: TestClient, auth: TokenAuthority, tmp_path: Path
) -> None:
    admin = auth.issue("acme", "admin", 600)
    status, made = await _call(
        client, "POST", "/api/v1/api-keys", admin, {"name": "ci pipeline", "role": "operator"}
    )
    assert status == 201, made
    key = made["key"]
    assert key.startswith("ck1.")
    assert made["role"] == "operator"
    assert made["name"] == "ci pipeline"
    secret = key.split(".")[2]
    # Stored hashed: the secret is nowhere in the registry file, its SHA-256 is.
    raw = (tmp_path / "registry.sqlite3").read_bytes()
    wal = tmp_path / "registry.sqlite3-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert secret.encode() not in raw
    con = sqlite3.connect(tmp_path / "registry.sqlite3")
    [(digest,)] = con.execute("SELECT secret_hash FROM api_keys WHERE id = ?", (made["id"],))
    con.close()
    assert digest == hashlib.sha256(secret.encode()).digest()
    # The listing never shows the key again.
    status, listed = await _call(client, "GET", "/api/v1/api-keys", admin)
    assert status == 200
    [row] = listed["api_keys"]
    assert row["id"] == made["id"]
    assert "key" not in row
    assert row["revoked_us"] is None
    # Exchange: a short-lived bearer token of the key's tenant and role.
    resp = await client.post("/api/v1/token", headers={"Authorization": f"ApiKey {key}"})
    assert resp.status == 200
    doc = await resp.json()
    assert (doc["tenant"], doc["role"], doc["expires_in"], doc["token_type"]) == (
        "acme",
        "operator",
        120,
        "Bearer",
    )
    claims = auth.verify(doc["token"])
    assert (claims.tenant, claims.role, claims.subject) == (
        "acme",
        "operator",
        f"apikey:{row['id']}",
    )
    assert (
        110
        <= claims.expires - jwt.decode(doc["token"], options={"verify_signature": False})["iat"]
        <= 120
    )
    status, who = await _call(client, "GET", "/api/v1/whoami", doc["token"])
    assert (status, who["tenant"], who["role"]) == (200, "acme", "operator")
    # Wrong schemes and wrong keys: 401, one answer for all.
    for header in (
        {},
        {"Authorization": f"Bearer {key}"},
        {"Authorization": "ApiKey "},
        {"Authorization": f"ApiKey {key[:-2]}xx"},
        {"Authorization": "ApiKey ck1.nope.nope"},
        {"Authorization": "ApiKey '; DROP TABLE api_keys; --"},
    ):
        resp = await client.post("/api/v1/token", headers=header)
        assert resp.status == 401, header
        assert (await resp.json())["error"] == "unauthorized"


async def test_revoked_api_key_gets_no_token(client: TestClient, auth: TokenAuthority) -> None:
    admin = auth.issue("acme", "admin", 600)
    _, made = await _call(client, "POST", "/api/v1/api-keys", admin, {"name": "k"})
    assert made["role"] == "viewer"  # the default
    ok = await client.post("/api/v1/token", headers={"Authorization": f"ApiKey {made['key']}"})
    assert ok.status == 200
    status, revoked = await _call(client, "POST", f"/api/v1/api-keys/{made['id']}/revoke", admin)
    assert status == 200
    assert revoked["revoked_us"] is not None
    resp = await client.post("/api/v1/token", headers={"Authorization": f"ApiKey {made['key']}"})
    assert resp.status == 401
    assert (await resp.json())["detail"] == "API key not recognised"


async def test_revoked_token_is_refused_at_the_next_request(
    client: TestClient, auth: TokenAuthority
) -> None:
    admin = auth.issue("acme", "admin", 600)
    by_token = auth.issue("acme", "viewer", 600)
    by_jti = auth.issue("acme", "viewer", 600)
    for tok in (by_token, by_jti):
        assert (await _call(client, "GET", "/api/v1/devices", tok))[0] == 200
    status, doc = await _call(client, "POST", "/api/v1/tokens/revoke", admin, {"token": by_token})
    assert status == 200
    assert doc["kind"] == "api"
    status, body = await _call(client, "GET", "/api/v1/devices", by_token)
    assert (status, body["detail"]) == (401, "token revoked")
    assert (await _call(client, "GET", "/api/v1/devices", by_jti))[0] == 200
    jti = auth.verify(by_jti).jti
    status, doc = await _call(client, "POST", "/api/v1/tokens/revoke", admin, {"jti": jti})
    assert (status, doc["revoked"]) == (200, jti)
    assert (await _call(client, "GET", "/api/v1/devices", by_jti))[0] == 401
    # An admin may revoke its own token; it is refused from then on.
    assert (await _call(client, "POST", "/api/v1/tokens/revoke", admin, {"token": admin}))[0] == 200
    assert (await _call(client, "GET", "/api/v1/whoami", admin))[0] == 401


async def test_a_revocation_by_another_process_is_refused_within_a_second(
    client: TestClient, auth: TokenAuthority, tmp_path: Path
) -> None:
    """``cairn-hub token revoke`` writes the same registry file from another process; the
    running hub notices within the registry's ``poll_s`` (0.5 s)."""
    token = auth.issue("acme", "viewer", 600)
    assert (await _call(client, "GET", "/api/v1/devices", token))[0] == 200
    other = Registry(tmp_path / "registry.sqlite3")  # another connection: another process
    other.revoke_token(auth.verify(token).jti, "acme", (int(time.time()) + 600) * 1_000_000)
    other.close()

    async def refused() -> bool:
        return (await _call(client, "GET", "/api/v1/devices", token))[0] == 401

    await until(refused, "the token refused within a second", 1.0)


async def test_roles_are_enforced(client: TestClient, auth: TokenAuthority) -> None:
    tokens = {role: auth.issue("acme", role, 600) for role in TENANT_ROLES}
    for role in ("viewer", "operator"):
        status, doc = await _call(client, "POST", "/api/v1/api-keys", tokens[role], {"name": "x"})
        assert (status, doc["error"]) == (403, "forbidden"), role
        assert (await _call(client, "GET", "/api/v1/api-keys", tokens[role]))[0] == 403
        assert (await _call(client, "POST", "/api/v1/tokens/revoke", tokens[role], {"jti": "x"}))[
            0
        ] == 403
    status, _ = await _call(
        client, "POST", "/api/v1/device-tokens", tokens["viewer"], {"device": "d1"}
    )
    assert status == 403
    status, _ = await _call(
        client, "POST", "/api/v1/device-tokens", tokens["operator"], {"device": "d1"}
    )
    assert status == 201
    status, doc = await _call(
        client, "POST", "/api/v1/api-keys", tokens["admin"], {"name": "x", "role": PLATFORM_ADMIN}
    )
    assert (status, doc["error"]) == (400, "bad-parameter")
    for role in TENANT_ROLES:
        status, who = await _call(client, "GET", "/api/v1/whoami", tokens[role])
        assert (status, who["role"], who["tenant"]) == (200, role, "acme")
        assert (await _call(client, "GET", "/api/v1/tenants", tokens[role]))[0] == 403


async def test_another_tenants_keys_and_tokens_are_not_found(
    client: TestClient, auth: TokenAuthority
) -> None:
    acme = auth.issue("acme", "admin", 600)
    other = auth.issue("other", "admin", 600)
    _, theirs = await _call(client, "POST", "/api/v1/api-keys", other, {"name": "theirs"})
    _, mine = await _call(client, "POST", "/api/v1/api-keys", acme, {"name": "mine"})
    status, listed = await _call(client, "GET", "/api/v1/api-keys", acme)
    assert [k["id"] for k in listed["api_keys"]] == [mine["id"]]
    status, doc = await _call(client, "POST", f"/api/v1/api-keys/{theirs['id']}/revoke", acme)
    missing = await _call(client, "POST", "/api/v1/api-keys/000000000000/revoke", acme)
    assert (status, doc) == missing == (404, {"error": "not-found", "detail": "no such API key"})
    ok = await client.post("/api/v1/token", headers={"Authorization": f"ApiKey {theirs['key']}"})
    assert ok.status == 200  # still valid: acme could not touch it
    # Another tenant's token, API or device: the same 404 as a token that is not ours.
    their_token = auth.issue("other", "viewer", 600)
    status, doc = await _call(client, "POST", "/api/v1/tokens/revoke", acme, {"token": their_token})
    assert (status, doc["error"]) == (404, "not-found")
    assert (await _call(client, "GET", "/api/v1/devices", their_token))[0] == 200
    status, junk = await _call(client, "POST", "/api/v1/tokens/revoke", acme, {"token": "a.b.c"})
    assert (status, junk) == (404, doc)
    their_device = auth.issue_device("other", "d1", 600)
    op = auth.issue("acme", "operator", 600)
    status, doc = await _call(
        client, "POST", "/api/v1/device-tokens/revoke", op, {"token": their_device}
    )
    assert (status, doc["detail"]) == (404, "no such device token")
    # An API token is not a device token and the other way round.
    status, _ = await _call(client, "POST", "/api/v1/device-tokens/revoke", op, {"token": op})
    assert status == 404
    mine_device = auth.issue_device("acme", "d1", 600)
    status, _ = await _call(client, "POST", "/api/v1/tokens/revoke", acme, {"token": mine_device})
    assert status == 404


async def test_platform_admin_manages_tenants_and_reads_no_data(
    client: TestClient, auth: TokenAuthority
) -> None:
    root = auth.issue("*", PLATFORM_ADMIN, 600)
    status, doc = await _call(client, "GET", "/api/v1/tenants", root)
    assert status == 200
    assert [(t["tenant"], t["disabled"]) for t in doc["tenants"]] == [
        ("acme", False),
        ("other", False),
    ]
    status, made = await _call(client, "POST", "/api/v1/tenants", root, {"tenant": "beta"})
    assert (status, made["tenant"], made["disabled"]) == (201, "beta", False)
    status, doc = await _call(client, "POST", "/api/v1/tenants", root, {"tenant": "beta"})
    assert (status, doc["error"]) == (409, "exists")
    for bad in ({"tenant": "a.b"}, {"tenant": ""}, {"tenant": 5}, {}, {"tenant": "x" * 65}):
        assert (await _call(client, "POST", "/api/v1/tenants", root, bad))[0] == 400, bad
    status, who = await _call(client, "GET", "/api/v1/whoami", root)
    assert (status, who["role"], who["tenant"]) == (200, PLATFORM_ADMIN, "*")
    # Every tenant route refuses it with 403.
    tenant_routes = [r for r in ROUTES if r.role in TENANT_ROLES]
    assert len(tenant_routes) >= 10
    for route in tenant_routes:
        path = route.path.replace("{device}", "d1").replace("{key_id}", "x").replace("{edge}", "e1")
        status, doc = await _call(client, route.method, path, root)
        assert (status, doc["error"]) == (403, "forbidden"), route.path
    # Disable: the tenant's tokens and keys are refused (401) until it is enabled again.
    admin = auth.issue("beta", "admin", 600)
    _, key = await _call(client, "POST", "/api/v1/api-keys", admin, {"name": "svc"})
    status, doc = await _call(client, "POST", "/api/v1/tenants/beta/disable", root)
    assert (status, doc["disabled"]) == (200, True)
    status, doc = await _call(client, "GET", "/api/v1/whoami", admin)
    assert (status, doc["detail"]) == (401, "tenant disabled")
    resp = await client.post("/api/v1/token", headers={"Authorization": f"ApiKey {key['key']}"})
    assert (resp.status, (await resp.json())["detail"]) == (401, "tenant disabled")
    assert (await _call(client, "POST", "/api/v1/tenants/beta/enable", root))[0] == 200
    assert (await _call(client, "GET", "/api/v1/whoami", admin))[0] == 200
    for action in ("disable", "enable"):
        status, doc = await _call(client, "POST", f"/api/v1/tenants/nope/{action}", root)
        assert (status, doc["error"]) == (404, "not-found")


async def test_device_tokens_issue_and_revoke(client: TestClient, auth: TokenAuthority) -> None:
    op = auth.issue("acme", "operator", 600)
    status, made = await _call(
        client, "POST", "/api/v1/device-tokens", op, {"device": "pump-1", "ttl_s": 3600}
    )
    assert status == 201
    raw = jwt.decode(
        made["token"],
        auth._public,
        algorithms=["EdDSA"],
        audience=DEVICE_AUDIENCE,
        issuer="cairn-hub",
    )
    assert (raw["sub"], raw["tenant"], raw["jti"], raw["exp"] - raw["iat"]) == (
        "pump-1",
        "acme",
        made["jti"],
        3600,
    )
    assert made["kid"] == auth.kid == jwt.get_unverified_header(made["token"])["kid"]
    status, doc = await _call(
        client, "POST", "/api/v1/device-tokens/revoke", op, {"token": made["token"]}
    )
    assert (status, doc["revoked"], doc["kind"], doc["device"]) == (
        200,
        made["jti"],
        "device",
        "pump-1",
    )
    assert doc["until_us"] == (raw["exp"] + auth.leeway_s) * 1_000_000
    status, doc = await _call(client, "POST", "/api/v1/device-tokens/revoke", op, {"jti": "j-2"})
    assert status == 200
    status, listed = await _call(client, "GET", "/api/v1/device-tokens/revoked", op)
    assert [(r["jti"], r["device"]) for r in listed["revoked"]] == sorted(
        [(made["jti"], "pump-1"), ("j-2", None)]
    )
    other = auth.issue("other", "operator", 600)
    assert (await _call(client, "GET", "/api/v1/device-tokens/revoked", other))[1] == {
        "revoked": []
    }


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/device-tokens", {"device": "a//b"}),
        ("/api/v1/device-tokens", {"device": "/etc/passwd"}),
        ("/api/v1/device-tokens", {"device": "d", "ttl_s": 0}),
        ("/api/v1/device-tokens", {"device": "d", "ttl_s": 10**12}),
        ("/api/v1/device-tokens", {"device": "d", "ttl_s": "60"}),
        ("/api/v1/device-tokens", {"device": "d", "ttl_s": True}),
        ("/api/v1/device-tokens", {"device": ["d"]}),
        ("/api/v1/device-tokens", [1, 2]),
        ("/api/v1/device-tokens", "null"),
        ("/api/v1/api-keys", {"name": ""}),
        ("/api/v1/api-keys", {"name": "a\nb"}),
        ("/api/v1/api-keys", {"name": "n", "role": "root"}),
        ("/api/v1/api-keys", {"name": "x" * 200}),
        ("/api/v1/tokens/revoke", {}),
        ("/api/v1/tokens/revoke", {"jti": "a", "token": "b"}),
        ("/api/v1/tokens/revoke", {"jti": ""}),
        ("/api/v1/tokens/revoke", {"jti": "x" * 129}),
        ("/api/v1/tokens/revoke", {"jti": {"$ne": 1}}),
        ("/api/v1/device-tokens/revoke", {"token": 7}),
        ("/api/v1/tenants", {"tenant": "a'; DROP TABLE tenants; --"}),
    ],
)
async def test_bad_input_is_a_400(
    client: TestClient, auth: TokenAuthority, path: str, body: Any
) -> None:
    token = auth.issue("*", PLATFORM_ADMIN, 600) if path == "/api/v1/tenants" else None
    token = token or auth.issue("acme", "admin", 600)
    status, doc = await _call(client, "POST", path, token, body)
    assert status == 400, (path, body, doc)
    assert doc["error"] in {"bad-parameter", "bad-request", "bad-name"}


async def test_bodies_that_are_not_json_are_a_400(client: TestClient, auth: TokenAuthority) -> None:
    admin = auth.issue("acme", "admin", 600)
    for data in (b"{", b"\xff\xfe", b"[" * 100 + b"]" * 100, b'{"a":' * 40 + b"1" + b"}" * 40):
        resp = await client.post("/api/v1/api-keys", data=data, headers=_h(admin))
        assert resp.status == 400, data[:20]
    resp = await client.post("/api/v1/api-keys", data=b"x" * 70_000, headers=_h(admin))
    assert resp.status == 413


def test_every_route_has_a_known_role() -> None:
    roles = {r.role for r in ROUTES}
    assert roles <= {None, ANY_ROLE, PLATFORM_ADMIN, *TENANT_ROLES}
    mine = {(r.method, r.path) for r in api_admin.ROUTES}
    assert ("POST", "/api/v1/token") in mine
    assert ("GET", "/api/v1/whoami") in mine


def test_the_roles_table_in_the_docs_is_generated_from_the_route_table() -> None:
    text = roles_table.DOC.read_text()
    assert roles_table.current(text) == roles_table.render(), (
        "the roles table in docs/operator.md is stale: run"
        " `.venv/bin/python scripts/roles_table.py` (or python -m tests.test_hub_admin_api --write)"
    )
    for route in ROUTES:
        assert f"| {route.method} | `{route.path}` |" in text, route.path


def test_cli_tenants_api_keys_and_token_revoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hub.cli import main
    from hub.config import load_config
    from hub.service import authority

    (tmp_path / "hub.toml").write_text('[hub]\nstate_dir = "state"\n')
    conf = ["--config", str(tmp_path / "hub.toml")]

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv[:2]) + conf + list(argv[2:]))
        out, err = capsys.readouterr()
        return code, out, err

    assert run("tenants", "list") == (0, "", "")
    assert run("tenants", "create", "acme")[0] == 0
    assert run("tenants", "create", "beta")[0] == 0
    code, _, err = run("tenants", "create", "acme")
    assert (code, err) == (2, "cairn-hub: tenant 'acme' exists already\n")
    assert run("tenants", "disable", "beta")[0] == 0
    assert run("tenants", "list")[1] == "acme\nbeta\tdisabled\n"
    assert run("tenants", "enable", "beta")[0] == 0
    assert run("tenants", "list")[1] == "acme\nbeta\n"
    code, _, err = run("tenants", "disable", "nope")
    assert (code, err) == (2, "cairn-hub: no tenant 'nope'\n")

    code, out, err = run(
        "api-keys", "create", "--tenant", "acme", "--role", "operator", "--name", "ci"
    )
    assert code == 0
    key = out.strip()
    assert key.startswith("ck1.")
    assert "shown this once" in err
    code, _, err = run("api-keys", "create", "--tenant", "acmee", "--role", "viewer", "--name", "x")
    assert code == 2
    assert "no tenant 'acmee'" in err
    code, out, _ = run("api-keys", "list", "--tenant", "acme")
    [row] = [json.loads(line) for line in out.splitlines()]
    assert (row["name"], row["role"], row["revoked_us"]) == ("ci", "operator", None)
    assert key.split(".")[2] not in out
    config = load_config(tmp_path / "hub.toml")
    reg = Registry(config.hub.registry_path)
    assert reg.api_key(key).id == row["id"]
    assert run("api-keys", "revoke", "--tenant", "beta", row["id"])[0] == 2  # not beta's
    assert run("api-keys", "revoke", "--tenant", "acme", row["id"])[0] == 0
    with pytest.raises(RegistryError):
        reg.api_key(key)

    code, out, _ = run("token", "issue", "--tenant", "acme", "--role", "viewer")
    assert code == 0
    api_token = out.strip()
    auth = authority(config)
    jti = auth.verify(api_token).jti
    device = auth.issue_device("acme", "pump-1", 600)
    assert run("token", "revoke", "--token", api_token)[0] == 0
    assert run("token", "revoke", "--token", device)[0] == 0
    assert run("token", "revoke", "--jti", "abc", "--tenant", "acme", "--device-token")[0] == 0
    code, _, err = run("token", "revoke", "--jti", "abc")
    assert (code, err) == (2, "cairn-hub: --jti needs --tenant\n")
    code, _, err = run("token", "revoke", "--token", "a.b.c")
    assert (code, err) == (2, "cairn-hub: --token: not a token this hub signed\n")
    reg.refresh(force=True)
    assert reg.is_revoked(jti)
    device_jti = jwt.decode(device, options={"verify_signature": False})["jti"]
    assert sorted((j, d) for j, d, _ in reg.revoked_device_tokens("acme")) == sorted(
        [(device_jti, "pump-1"), ("abc", None)]
    )
    reg.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        print("rewrote" if roles_table.write() else "unchanged", roles_table.DOC)
