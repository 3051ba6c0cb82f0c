"""Enrollment end to end: the hub API on a real port, ``cairn-edge enroll`` as a process.

The edge makes its key on the box and sends only the public half; a token works once and not
after it expired, with a clear message each time; edges are scoped to their tenant; a revoked
edge's batches are refused (with a real hub, NATS and edge in ``test_revoked_edge_batches_...``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.capin import certificate_fingerprint
from contract.errors import ConfigError
from contract.keyproof import sign_rotation
from contract.nkeyid import nkey_seed
from contract.signing import generate_key, load_or_create_key, public_key_bytes
from edge.config import load_config
from edge.identity import KeyHolder, nats_identity
from edge.sources.devtokens import DeviceTokenVerifier, load_key
from hub.api import make_app
from hub.api_identity import NATS_URL
from hub.auth import TokenAuthority
from hub.config import HubConfig, HubSettings
from hub.pki import HubPki, ensure_pki, server_ssl_context
from hub.registry import Registry, RegistryError
from hub.store import SqliteStore
from simulator.lab import Lab, LabSettings
from tests.e2e_helpers import async_wait_until
from tests.test_hub_cli import hub_cli as run_hub_cli

NATS = "nats://127.0.0.1:4999"


@dataclass
class Hub:
    url: str
    auth: TokenAuthority
    registry: Registry
    bodies: list[tuple[str, bytes]]
    """(path, raw body) of every request the hub received."""

    def headers(self, tenant: str, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.auth.issue(tenant, role, 600)}"}


async def _start_hub(
    tmp_path: Path, ca_pem: bytes | None = None, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Hub]:
    store = SqliteStore(tmp_path / "hub" / "store.sqlite3")
    auth = TokenAuthority(tmp_path / "hub" / "key.pem", issuer="cairn-hub", audience="cairn-api")
    registry = Registry(tmp_path / "hub" / "registry.sqlite3")
    bodies: list[tuple[str, bytes]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        bodies.append((request.path, await request.read()))
        response: web.StreamResponse = await handler(request)
        return response

    app = make_app(store, auth, registry=registry, ca_pem=ca_pem)
    app.middlewares.insert(0, record)
    app[NATS_URL] = NATS
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=ssl_context)
    try:
        yield Hub(str(server.make_url("")).rstrip("/"), auth, registry, bodies)
    finally:
        await server.close()
        registry.close()
        store.close()


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async for h in _start_hub(tmp_path):
        yield h


def _edge_dir(tmp_path: Path, name: str, extra: str = "") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "edge.toml").write_text(f'[edge]\ndata_dir = "state"\n{extra}')
    return folder


async def _edge_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "edge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _enroll(folder: Path, hub_url: str, token: str, *extra: str) -> Any:
    return await _edge_cli(
        "enroll", "--config", str(folder / "edge.toml"), "--hub", hub_url, "--token", token, *extra
    )


def _token(registry: Registry, tenant: str, edge: str, ttl_s: float = 600) -> str:
    registry.ensure_tenant(tenant)
    return registry.create_enrollment(tenant, edge, ttl_s).token


def _refusal(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command prints (no traceback)."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    *logged, line = done.stderr.strip().splitlines()
    assert all(" WARNING " in x for x in logged), logged  # "enrolling over plain HTTP"
    return line


async def test_enroll_makes_the_key_on_the_box_and_sends_only_its_public_half(
    hub: Hub, tmp_path: Path
) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            hub.url + "/api/v1/enrollment-tokens",
            json={"edge": "edge-7", "ttl_s": 600},
            headers=hub.headers("acme", "admin"),
        )
        assert resp.status == 201
        issued = await resp.json()
    assert issued["tenant"] == "acme"
    assert issued["edge"] == "edge-7"
    assert issued["ca_pin"] is None  # this hub has no CA
    folder = _edge_dir(tmp_path, "edge")
    done = await _enroll(folder, hub.url, issued["token"])
    assert done.returncode == 0, done.stderr
    assert "enrolled  edge edge-7 of tenant acme" in done.stdout

    state = folder / "state"
    assert (state / "edge.key").stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700
    assert not (state / "edge.key.new").exists()
    key = load_or_create_key(state / "edge.key")
    private_raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    [(_, body)] = [(p, b) for p, b in hub.bodies if p == "/api/v1/enroll"]
    sent = json.loads(body)
    assert set(sent) == {"token", "public_key"}
    assert base64.urlsafe_b64decode(sent["public_key"] + "==") == public_key_bytes(key)
    for spelling in (
        private_raw.hex().encode(),
        base64.urlsafe_b64encode(private_raw).rstrip(b"="),
        base64.b64encode(private_raw).rstrip(b"="),
        b"PRIVATE",
    ):
        assert spelling not in body

    record = hub.registry.edge("acme", "edge-7")
    assert record is not None
    assert record.active_key is not None
    assert record.active_key.public_key == public_key_bytes(key)
    enrollment = json.loads((state / "enrollment.json").read_text())
    assert (enrollment["edge"], enrollment["tenant"], enrollment["nats_url"]) == (
        "edge-7",
        "acme",
        NATS,
    )
    assert enrollment["permissions"]["publish"][0] == "cairn.telemetry.acme.edge-7"
    assert enrollment["token_key"]["kid"] == hub.auth.kid
    assert (state / "hub-token.pem").read_bytes() == hub.auth.public_key_pem()
    assert not (state / "ca.pem").exists()

    # The config names no edge: the enrollment does, and the NATS login is built from it.
    config = load_config(folder / "edge.toml")
    assert (config.edge.id, config.edge.tenant, config.forwarder.nats_url) == (
        "edge-7",
        "acme",
        NATS,
    )
    identity = nats_identity(config.enrollment, KeyHolder(config.edge.key_path))
    assert identity is not None
    opts = identity.options()
    assert opts["nkeys_seed_str"] == nkey_seed(key).decode()
    assert opts["inbox_prefix"] == "_INBOX.acme.edge-7"
    assert "tls" not in opts
    # A config that names another edge is refused, naming the key.
    (folder / "other.toml").write_text('[edge]\nid = "edge-8"\ndata_dir = "state"\n')
    with pytest.raises(ConfigError) as info:
        load_config(folder / "other.toml")
    assert info.value.key == "edge.id"
    assert "enrolled as 'edge-7'" in info.value.problem

    # An [[http]] source trusts the hub's device tokens without listing the key.
    (folder / "http.toml").write_text(
        '[edge]\ndata_dir = "state"\n[[http]]\nlisten = "127.0.0.1:0"\n'
    )
    http = load_config(folder / "http.toml").http[0]
    assert [(k.kid, k.file) for k in http.keys] == [(hub.auth.kid, state / "hub-token.pem")]
    verifier = DeviceTokenVerifier(
        [load_key(k.kid, k.file) for k in http.keys], "acme", issuer="cairn-hub"
    )
    claims = verifier.verify(hub.auth.issue_device("acme", "pump-1", 600))
    assert (claims.device, claims.tenant) == ("pump-1", "acme")

    # Enrolling again needs --force (and a new token).
    line = _refusal(await _enroll(folder, hub.url, issued["token"]))
    assert "enrolled already as 'edge-7'" in line
    assert load_or_create_key(state / "edge.key").public_key() is not None  # kept


async def test_a_token_works_once_and_not_after_it_expired(hub: Hub, tmp_path: Path) -> None:
    token = _token(hub.registry, "acme", "edge-1")
    first = await _enroll(_edge_dir(tmp_path, "a"), hub.url, token)
    assert first.returncode == 0, first.stderr
    second = _edge_dir(tmp_path, "b")
    line = _refusal(await _enroll(second, hub.url, token))
    assert line == (
        "cairn-edge: enrollment refused by the hub: enrollment token was used already;"
        " ask for a new one (token-used, HTTP 409)"
    )
    assert sorted(p.name for p in (second / "state").iterdir()) == []  # no key left behind

    expired = _token(hub.registry, "acme", "edge-2", ttl_s=0.001)
    line = _refusal(await _enroll(_edge_dir(tmp_path, "c"), hub.url, expired))
    assert line.endswith("enrollment token expired; ask for a new one (token-expired, HTTP 410)")

    line = _refusal(await _enroll(_edge_dir(tmp_path, "d"), hub.url, "ce1.0011.secret"))
    assert line.endswith("enrollment token not recognised (bad-token, HTTP 401)")

    line = _refusal(await _enroll(_edge_dir(tmp_path, "e"), "http://127.0.0.1:1", token))
    assert line.startswith("cairn-edge: cannot reach the hub at http://127.0.0.1:1/api/v1/enroll")

    import aiohttp

    async with aiohttp.ClientSession() as http:
        fresh = _token(hub.registry, "acme", "edge-3")
        for body, status, slug in (
            ({"token": fresh, "public_key": "AAAA"}, 400, "bad-key"),
            ({"token": fresh}, 400, "bad-parameter"),
            ({"token": 5, "public_key": "x"}, 400, "bad-parameter"),
        ):
            resp = await http.post(hub.url + "/api/v1/enroll", json=body)
            assert resp.status == status
            assert (await resp.json())["error"] == slug
        resp = await http.post(hub.url + "/api/v1/enroll", data=b"{not json")
        assert resp.status == 400
        # None of that spent the token.
        done = await _enroll(_edge_dir(tmp_path, "f"), hub.url, fresh)
        assert done.returncode == 0, done.stderr


async def test_edges_are_scoped_to_their_tenant_and_revocable(hub: Hub) -> None:
    import aiohttp

    hub.registry.register("acme", "e1", public_key_bytes(generate_key()))
    async with aiohttp.ClientSession() as http:

        async def call(method: str, path: str, tenant: str, role: str, **kw: Any) -> Any:
            resp = await http.request(
                method, hub.url + "/api/v1" + path, headers=hub.headers(tenant, role), **kw
            )
            return resp.status, await resp.json()

        status, doc = await call("GET", "/edges/e1", "acme", "viewer")
        assert status == 200
        assert (doc["edge"], doc["enrolled"], doc["revoked"]) == ("e1", True, False)
        assert doc["key"].startswith("sha256:")
        status, doc = await call("GET", "/edges", "acme", "viewer")
        assert [(e["edge"], e["enrolled"], e["batches"]) for e in doc["edges"]] == [("e1", True, 0)]

        # Another tenant's edge looks exactly like one that does not exist.
        missing = await call("GET", "/edges/nope", "other", "admin")
        assert missing[0] == 404
        assert await call("GET", "/edges/e1", "other", "admin") == missing
        assert (await call("GET", "/edges", "other", "admin"))[1] == {"edges": []}
        revoke_missing = await call("POST", "/edges/nope/revoke", "other", "admin")
        assert revoke_missing[0] == 404
        revoke_other = await call("POST", "/edges/e1/revoke", "other", "admin")
        assert revoke_other[0] == 404
        assert revoke_other[1]["error"] == revoke_missing[1]["error"] == "not-found"

        assert (await call("POST", "/edges/e1/revoke", "acme", "operator"))[0] == 403
        assert (await call("POST", "/enrollment-tokens", "acme", "operator", json={}))[0] == 403
        status, doc = await call("POST", "/enrollment-tokens", "acme", "admin", json={"edge": "e1"})
        assert (status, doc["error"]) == (409, "edge-exists")

        status, doc = await call("POST", "/edges/e1/revoke", "acme", "admin")
        assert (status, doc["revoked"], doc["key"]) == (200, True, None)
        with pytest.raises(RegistryError) as info:
            hub.registry.verification_keys("acme", "e1")
        assert info.value.reason == "revoked-edge"


async def test_rotation_needs_the_current_key(hub: Hub) -> None:
    import time

    import aiohttp

    old = generate_key()
    hub.registry.register("acme", "e1", public_key_bytes(old))
    new_public = public_key_bytes(generate_key())
    now = int(time.time())

    def body(signer: Ed25519PrivateKey, tenant: str = "acme", at: int = now) -> dict[str, Any]:
        proof = sign_rotation(signer, tenant, "e1", new_public, at)
        return {
            "tenant": tenant,
            "public_key": base64.urlsafe_b64encode(new_public).decode().rstrip("="),
            "signed_at_s": at,
            "proof": base64.urlsafe_b64encode(proof).decode().rstrip("="),
        }

    async with aiohttp.ClientSession() as http:

        async def rotate(doc: dict[str, Any], edge: str = "e1") -> tuple[int, Any]:
            resp = await http.post(f"{hub.url}/api/v1/edges/{edge}/rotate", json=doc)
            return resp.status, await resp.json()

        stranger = await rotate(body(generate_key()))
        assert stranger[0] == 401
        assert await rotate(body(old, tenant="other")) == stranger  # no hint it exists elsewhere
        assert await rotate(body(old), edge="nope") == stranger
        status, doc = await rotate(body(old, at=now - 3600))
        assert (status, doc["error"]) == (400, "stale-proof")
        status, doc = await rotate(body(old))
        assert status == 200
        assert doc["keys"][0]["public_key"] == body(old)["public_key"]
        assert doc["keys"][1]["retired_us"] is not None
        status, doc = await rotate(body(old))  # the same request again
        assert (status, doc["error"]) == (401, "bad-proof")  # the old key is no longer active


def _hub_pki(folder: Path) -> HubPki:
    """A CA and server certificates made the way a hub makes its own (:mod:`hub.pki`)."""
    return ensure_pki(HubConfig(hub=HubSettings(state_dir=folder)))


async def test_ca_pin_over_plain_http(tmp_path: Path) -> None:
    """The pin is checked against the CA the hub serves; a wrong pin sends nothing."""
    pem = _hub_pki(tmp_path / "pki").ca_cert.read_bytes()
    pin = certificate_fingerprint(pem)
    async for hub in _start_hub(tmp_path, ca_pem=pem):
        import aiohttp

        async with aiohttp.ClientSession() as http:
            resp = await http.get(hub.url + "/api/v1/ca.pem")
            assert (resp.status, await resp.read()) == (200, pem)
            resp = await http.post(
                hub.url + "/api/v1/enrollment-tokens",
                json={"edge": "e1"},
                headers=hub.headers("acme", "admin"),
            )
            assert (await resp.json())["ca_pin"] == pin
        token = _token(hub.registry, "acme", "e2")
        folder = _edge_dir(tmp_path, "edge")
        wrong = "sha256:" + "0" * 64
        line = _refusal(await _enroll(folder, hub.url, token, "--ca-pin", wrong))
        assert f"has fingerprint {pin}, not the pinned {wrong}" in line
        assert not any(p == "/api/v1/enroll" for p, _ in hub.bodies)  # nothing was sent
        # The same token still works, with the pin written as openssl prints it.
        colons = ":".join(pin[7:][i : i + 2] for i in range(0, 64, 2)).upper()
        done = await _enroll(folder, hub.url, token, "--ca-pin", colons)
        assert done.returncode == 0, done.stderr
        assert (folder / "state" / "ca.pem").read_bytes() == pem
        config = load_config(folder / "edge.toml")
        identity = nats_identity(config.enrollment, KeyHolder(config.edge.key_path))
        assert identity is not None
        assert identity.ca_file == str(folder / "state" / "ca.pem")
        # The pin may ride on the token: ce1.<id>.<secret>.<pin>.
        other = _edge_dir(tmp_path, "edge2")
        token2 = _token(hub.registry, "acme", "e3")
        line = _refusal(await _enroll(other, hub.url, f"{token2}.{wrong}"))
        assert "not the pinned" in line
        done = await _enroll(other, hub.url, f"{token2}.{pin}")
        assert done.returncode == 0, done.stderr


async def test_ca_pin_over_https(tmp_path: Path) -> None:
    """``--ca-pin``: fetch the CA unverified, check the pin, then verify the hub against it;
    ``--ca`` of another CA fails the TLS handshake before the token is sent."""
    made = _hub_pki(tmp_path / "pki")
    assert made.api is not None
    pem = made.ca_cert.read_bytes()
    context = server_ssl_context(made.api)
    async for hub in _start_hub(tmp_path, ca_pem=pem, ssl_context=context):
        assert hub.url.startswith("https://127.0.0.1:")
        token = _token(hub.registry, "acme", "e1")
        other_ca = _hub_pki(tmp_path / "other").ca_cert
        (tmp_path / "other-ca.pem").write_bytes(other_ca.read_bytes())
        folder = _edge_dir(tmp_path, "edge")
        line = _refusal(
            await _enroll(folder, hub.url, token, "--ca", str(tmp_path / "other-ca.pem"))
        )
        assert "CERTIFICATE_VERIFY_FAILED" in line
        line = _refusal(await _enroll(folder, hub.url, token))  # the system's trust store
        assert "CERTIFICATE_VERIFY_FAILED" in line
        assert not any(p == "/api/v1/enroll" for p, _ in hub.bodies)
        done = await _enroll(folder, hub.url, token, "--ca-pin", certificate_fingerprint(pem))
        assert done.returncode == 0, done.stderr
        assert (folder / "state" / "ca.pem").read_bytes() == pem
        # rotate-key talks to the hub over the same verified TLS.
        done = await _edge_cli("rotate-key", "--config", str(folder / "edge.toml"))
        assert done.returncode == 0, done.stderr
        record = hub.registry.edge("acme", "e1")
        assert record is not None
        assert record.active_key is not None
        key = load_or_create_key(folder / "state" / "edge.key")
        assert record.active_key.public_key == public_key_bytes(key)


@pytest.mark.slow
async def test_revoked_edge_batches_are_refused(tmp_path: Path) -> None:
    """A real hub, NATS, Mosquitto and edge (enrolled with ``cairn-edge enroll``): after
    ``cairn-hub edges revoke`` the edge's batches are quarantined as ``revoked-edge``.

    The NATS authorization is off here (as for an operator who keeps the server's
    authorization himself): the hub's own check stands behind it. With it on, the server
    cuts the edge off first (tests/test_natsauth_e2e.py)."""
    from simulator.fleet import Fleet, FleetSpec
    from simulator.send import send_fleet
    from tests.e2e_helpers import hub_count

    settings = LabSettings(tenant="t1", edge_id="edge-r", nats_authorization=False)
    with Lab(tmp_path / "lab", settings) as lab:
        lab.start()
        enrolled = json.loads((lab.root / "edge" / "state" / "enrollment.json").read_text())
        assert (enrolled["edge"], enrolled["tenant"]) == ("edge-r", "t1")
        assert enrolled["nats_url"] == lab.nats.url  # the hub's nats.url (no public_url set)
        fleet = Fleet(FleetSpec(seed=3, devices=2, sensors=1, rate_hz=1.0))
        ledger = await send_fleet(fleet, lab.mosquitto.url, instants=range(5), paced=False)
        await async_wait_until(lambda: hub_count(lab) == ledger.count, 60, "first readings")
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "hub", "edges", "revoke", "--config", str(lab.hub.config)]
            + ["--tenant", "t1", "--edge", "edge-r"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        await async_wait_until(lambda: lab.api("/edges/edge-r")["revoked"] is True, 10, "revoked")
        await send_fleet(fleet, lab.mosquitto.url, instants=range(5, 10), paced=False)

        def revoked_count() -> int:
            quarantined = lab.hub_stats().get("ingest", {}).get("quarantined", {})
            return int(quarantined.get("revoked-edge", 0))

        await async_wait_until(lambda: revoked_count() >= 1, 60, "a revoked-edge rejection")
        assert hub_count(lab) == ledger.count  # nothing of the revoked edge was stored


async def test_rotate_key_finishes_a_rotation_cut_short(hub: Hub, tmp_path: Path) -> None:
    """The hub accepted the new key but the box lost power before the rename: running
    ``rotate-key`` again offers the same key, learns it is in use, and completes the swap."""
    import time

    import aiohttp

    folder = _edge_dir(tmp_path, "edge")
    config = str(folder / "edge.toml")
    line = _refusal(await _edge_cli("rotate-key", "--config", config))
    assert line.startswith("cairn-edge: this edge is not enrolled (no ")

    done = await _enroll(folder, hub.url, _token(hub.registry, "acme", "e1"))
    assert done.returncode == 0, done.stderr
    state = folder / "state"
    old = load_or_create_key(state / "edge.key")
    new = generate_key()
    (state / "edge.key.new").write_bytes(
        new.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (state / "edge.key.new").chmod(0o600)
    now = int(time.time())
    new_public = public_key_bytes(new)
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            hub.url + "/api/v1/edges/e1/rotate",
            json={
                "tenant": "acme",
                "public_key": base64.urlsafe_b64encode(new_public).decode().rstrip("="),
                "signed_at_s": now,
                "proof": base64.urlsafe_b64encode(sign_rotation(old, "acme", "e1", new_public, now))
                .decode()
                .rstrip("="),
            },
        )
        assert resp.status == 200
    done = await _edge_cli("rotate-key", "--config", config)
    assert done.returncode == 0, done.stderr
    assert public_key_bytes(load_or_create_key(state / "edge.key")) == new_public
    assert not (state / "edge.key.new").exists()

    # A broken enrollment file stops the edge with one line naming the file.
    (state / "enrollment.json").write_text("{not json")
    with pytest.raises(ConfigError) as info:
        load_config(folder / "edge.toml")
    assert info.value.key == str(state / "enrollment.json")


def test_hub_cli_enroll_token_and_edges(tmp_path: Path) -> None:
    """``cairn-hub enroll-token`` prints the token and the CA pin; ``edges show`` and
    ``edges revoke`` work on the registry file; refusals are one line."""

    def hub_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_hub_cli(*args, "--config", str(tmp_path / "hub.toml"))

    (tmp_path / "hub.toml").write_text(
        '[hub]\nstate_dir = "plain"\n[tls]\napi = false\nnats = false\n'
    )
    done = hub_cli("enroll-token", "--tenant", "acme", "--edge", "e1", "--ttl", "60")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == "ca-pin  (none: the hub has no CA)"

    # TLS on (the default): the hub's CA is made if it is not there yet, and pinned.
    (tmp_path / "hub.toml").write_text('[hub]\nstate_dir = "state"\n')
    done = hub_cli("enroll-token", "--tenant", "acme", "--edge", "e1", "--ttl", "60")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("token   ce1.")
    token = lines[0].split()[1]
    pin = certificate_fingerprint((tmp_path / "state" / "pki" / "ca.pem").read_bytes())
    assert lines[1] == f"ca-pin  {pin}"
    assert f"--ca-pin {pin}" in done.stdout
    done = hub_cli("enroll-token", "--tenant", "acme", "--edge", "e2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == f"ca-pin  {pin}"  # the same CA

    registry = Registry(tmp_path / "state" / "registry.sqlite3")
    try:
        key = generate_key()
        registry.enroll(token, public_key_bytes(key))
    finally:
        registry.close()
    done = hub_cli("edges", "show", "--tenant", "acme", "--edge", "e1")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert (shown["edge"], shown["revoked"], len(shown["keys"])) == ("e1", False, 1)
    done = hub_cli("edges", "revoke", "--tenant", "acme", "--edge", "e1")
    assert (done.returncode, done.stdout) == (0, "revoked edge e1 of tenant acme\n")
    assert json.loads(hub_cli("edges", "show", "--tenant", "acme", "--edge", "e1").stdout)[
        "revoked"
    ]
    done = hub_cli("edges", "revoke", "--tenant", "other", "--edge", "e1")
    assert (done.returncode, done.stderr) == (2, "cairn-hub: no edge 'e1' in tenant 'other'\n")
    done = hub_cli("enroll-token", "--tenant", "acme", "--edge", "bad.name")
    assert done.returncode == 2
    assert done.stderr.startswith("cairn-hub: edge must match")


def test_hub_nats_public_url_is_checked(tmp_path: Path) -> None:
    from hub.config import load_config as load_hub_config

    path = tmp_path / "hub.toml"
    path.write_text('[nats]\npublic_url = "tls://hub.example.org:4222"\n')
    assert load_hub_config(path).nats.public_url == "tls://hub.example.org:4222"
    path.write_text('[nats]\npublic_url = "http://hub.example.org"\n')
    with pytest.raises(ConfigError) as info:
        load_hub_config(path)
    assert info.value.key == "nats.public_url"
