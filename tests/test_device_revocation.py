"""Device-token revocation from the hub to the edge: a real nats-server, the real hub (API,
registry, revocation publisher) and a real edge with its HTTP source. A device token works;
revoked at the hub, the edge refuses it within seconds while other devices' tokens still work;
an edge that was offline catches up; a forged or replayed list changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import nats
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.names import command_subject
from contract.signing import load_or_create_key, public_key_bytes
from edge import commands as edge_commands
from edge.commands import BLOCK_BEGIN, BLOCK_END, EdgeCommands, replace_block
from edge.config import load_config as load_edge_config
from edge.service import run_edge
from edge.stats import EdgeStats
from hub import devrevocations
from hub.auth import PLATFORM_ADMIN, TokenAuthority
from hub.cli import main as hub_main
from hub.config import HubConfig
from hub.config import load_config as load_hub_config
from hub.registry import Registry
from hub.service import authority, run_hub
from simulator.servers import NatsServer
from tests.polling import until
from tests.test_edge_support import http_json, write_config

pytestmark = pytest.mark.timeout(120)

DEADLINE_S = 5.0
"""The edge must refuse a revoked token this soon after the hub's answer."""
OWN_LINE = "device vandal-9  # revoked by hand by the site admin"


@dataclass
class Site:
    hub: HubConfig
    auth: TokenAuthority
    api: str
    edge_dir: Path
    revoked_file: Path
    nats_url: str


async def _json(
    session: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with session.request(method, url, json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def _post_reading(session: aiohttp.ClientSession, listen: str, token: str) -> int:
    body = {"ts": int(time.time()), "temp": 21.5}
    headers = {"Authorization": f"Bearer {token}"}
    async with session.post(f"http://{listen}/api/v1/readings", json=body, headers=headers) as r:
        await r.read()
        return r.status


async def _refused(session: aiohttp.ClientSession, listen: str, token: str) -> bool:
    """Whether the edge refuses ``token`` (a predicate for :func:`until`)."""
    return await _post_reading(session, listen, token) == 403


@contextlib.asynccontextmanager
async def _hub(tmp_path: Path, nats_url: str) -> AsyncIterator[Site]:
    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    (hub_dir / "hub.toml").write_text(
        f'[hub]\nstate_dir = "state"\n[nats]\nurl = "{nats_url}"\n'
        '[api]\nlisten = "127.0.0.1:0"\n[auth]\ndevice_revocations_resend_s = 2\n'
        "[tls]\napi = false\nnats = false\n"  # TLS: tests/test_pki.py and the Lab tests
    )
    config = load_hub_config(hub_dir / "hub.toml")
    auth = authority(config)
    edge_dir = tmp_path / "edge"
    edge_dir.mkdir()
    (edge_dir / "hub.pem").write_bytes(auth.public_key_pem())
    revoked_file = edge_dir / "revoked.txt"
    revoked_file.write_text(f"# the site admin's own list\n{OWN_LINE}\n")
    # The edge is enrolled: its key is in the hub's registry.
    key = load_or_create_key(edge_dir / "state" / "edge.key")
    registry = Registry(config.hub.registry_path)
    registry.register("acme", "edge-t", public_key_bytes(key))
    registry.close()
    stop = asyncio.Event()
    task = asyncio.create_task(run_hub(config, stop=stop))
    port_file = config.hub.state_dir / "api.port"
    await until(port_file.exists, "the hub's api.port")
    try:
        yield Site(
            config,
            auth,
            f"http://127.0.0.1:{int(port_file.read_text())}/api/v1",
            edge_dir,
            revoked_file,
            nats_url,
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def _edge(site: Site) -> AsyncIterator[tuple[str, str]]:
    """A running edge: (HTTP source's listen address, admin status URL)."""
    path = write_config(
        site.edge_dir,
        nats_url=site.nats_url,
        extra=(
            f'[[http]]\nlisten = "127.0.0.1:0"\nissuer = "cairn-hub"\n'
            f'keys = [{{ kid = "{site.auth.kid}", file = "hub.pem" }}]\n'
            'revoked_file = "revoked.txt"\n'
        ),
    )
    config = load_edge_config(path)
    port_file = config.edge.admin_port_path
    port_file.unlink(missing_ok=True)
    stop = asyncio.Event()
    task = asyncio.create_task(run_edge(config, stop=stop, handle_signals=False))
    await until(port_file.exists, "the edge's admin.port")
    status_url = f"http://127.0.0.1:{int(port_file.read_text())}/api/v1/status"

    async def ready() -> bool:
        doc = await asyncio.to_thread(http_json, status_url)
        return bool(doc["sources"].get("http", {}).get("connected")) and bool(
            doc["forwarder"]["connected"]
        )

    try:
        await until(ready, "the edge's HTTP source and NATS link")
        doc = await asyncio.to_thread(http_json, status_url)
        yield doc["sources"]["http"]["listen"], status_url
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _counter(status_url: str, key: str) -> int:
    doc = await asyncio.to_thread(http_json, status_url)
    return int(doc["counters"].get(key, 0))


async def test_a_device_token_revoked_at_the_hub_is_refused_by_the_edge_within_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with NatsServer(tmp_path / "nats").start() as server:
        async with _hub(tmp_path, server.url) as site, aiohttp.ClientSession() as s:
            operator = site.auth.issue("acme", "operator", 600)
            tokens = {}
            for device in ("pump-1", "pump-2", "pump-3"):
                status, made = await _json(
                    s, "POST", f"{site.api}/device-tokens", operator, {"device": device}
                )
                assert status == 201, made
                tokens[device] = made
            async with _edge(site) as (listen, status_url):
                for made in tokens.values():
                    assert await _post_reading(s, listen, made["token"]) == 202
                # The edge has the hub's (empty) list: the link works end to end.
                await until(lambda: BLOCK_BEGIN in site.revoked_file.read_text(), "first list")

                status, doc = await _json(
                    s,
                    "POST",
                    f"{site.api}/device-tokens/revoke",
                    operator,
                    {"token": tokens["pump-1"]["token"]},
                )
                assert status == 200, doc
                seconds = await until(
                    lambda: _refused(s, listen, tokens["pump-1"]["token"]),
                    "the revoked token refused by the edge",
                    DEADLINE_S,
                )
                with capsys.disabled():
                    print(f"\nrevoke at the hub -> refused by the edge: {seconds:.2f} s")
                assert await _post_reading(s, listen, tokens["pump-2"]["token"]) == 202
                assert await _post_reading(s, listen, tokens["pump-3"]["token"]) == 202
                text = site.revoked_file.read_text()
                assert OWN_LINE in text  # the site admin's line is kept
                assert f"jti {tokens['pump-1']['jti']}  # device pump-1" in text
                assert await _counter(status_url, "device-revocations-applied") >= 2

                # A forged list (another key) and a replayed old list change nothing.
                forger = TokenAuthority(
                    tmp_path / "forger.pem", issuer="cairn-hub", audience="cairn-api"
                )
                empty = devrevocations.revocation_claims("cairn-hub", "acme", "edge-t", [], 60)
                old = devrevocations.revocation_claims("cairn-hub", "acme", "edge-t", [], 60)
                old["issued_us"] -= 3_600_000_000
                nc = await nats.connect(site.nats_url)
                rejected = await _counter(status_url, "commands-rejected")
                for data in (
                    forger.sign(empty).encode(),
                    site.auth.sign(old).encode(),
                    jwt.encode(empty, None, algorithm="none").encode(),  # type: ignore[arg-type]
                    b"\xff not a token",
                ):
                    await nc.publish(command_subject("acme", "edge-t"), data)
                await nc.flush()
                await nc.close()

                async def all_rejected() -> bool:
                    return await _counter(status_url, "commands-rejected") >= rejected + 4

                await until(all_rejected, "the four bad lists rejected")
                assert await _post_reading(s, listen, tokens["pump-1"]["token"]) == 403
                assert f"jti {tokens['pump-1']['jti']}" in site.revoked_file.read_text()

            # Offline: the edge is down while pump-2 is revoked from the command line.
            assert (
                hub_main(
                    [
                        "token",
                        "revoke",
                        "--config",
                        str(site.hub.path),
                        "--token",
                        tokens["pump-2"]["token"],
                    ]
                )
                == 0
            )
            async with _edge(site) as (listen, _status_url):
                seconds = await until(
                    lambda: _refused(s, listen, tokens["pump-2"]["token"]),
                    "the restarted edge to catch up",
                    10,
                )
                with capsys.disabled():
                    print(f"edge back online -> caught up: {seconds:.2f} s")
                assert await _post_reading(s, listen, tokens["pump-1"]["token"]) == 403
                assert await _post_reading(s, listen, tokens["pump-3"]["token"]) == 202

            # The platform admin's view is unaffected: revocations are per tenant.
            root = site.auth.issue("*", PLATFORM_ADMIN, 600)
            status, doc = await _json(s, "GET", f"{site.api}/device-tokens/revoked", root)
            assert status == 403


async def test_a_revocation_made_while_nats_is_down_arrives_when_it_is_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with NatsServer(tmp_path / "nats").start() as server:
        async with _hub(tmp_path, server.url) as site, aiohttp.ClientSession() as s:
            operator = site.auth.issue("acme", "operator", 600)
            _, made = await _json(
                s, "POST", f"{site.api}/device-tokens", operator, {"device": "pump-1"}
            )
            async with _edge(site) as (listen, _status_url):
                assert await _post_reading(s, listen, made["token"]) == 202
                await until(lambda: BLOCK_BEGIN in site.revoked_file.read_text(), "first list")
                server.stop()
                status, _ = await _json(
                    s, "POST", f"{site.api}/device-tokens/revoke", operator, {"jti": made["jti"]}
                )
                assert status == 200  # the hub's API does not need NATS
                assert made["jti"] not in site.revoked_file.read_text()
                server.start()
                seconds = await until(
                    lambda: _refused(s, listen, made["token"]), "refusal after NATS came back", 15
                )
                with capsys.disabled():
                    print(f"\nNATS back -> refused by the edge: {seconds:.2f} s")


# ------------------------------------------------------------------ the edge's side, alone


def test_the_hub_and_the_edge_agree_on_the_command_audience() -> None:
    assert edge_commands.COMMAND_AUDIENCE == devrevocations.COMMAND_AUDIENCE
    assert edge_commands.DEVICE_REVOCATIONS == devrevocations.DEVICE_REVOCATIONS


def test_the_managed_block_is_replaced_and_the_rest_kept() -> None:
    block = [BLOCK_BEGIN, "jti a", BLOCK_END]
    assert replace_block("", block) == "\n".join(block) + "\n"
    text = f"jti mine\n{BLOCK_BEGIN}\njti old\n{BLOCK_END}\ndevice x\n"
    assert replace_block(text, block) == f"jti mine\n{BLOCK_BEGIN}\njti a\n{BLOCK_END}\ndevice x\n"
    broken = f"jti mine\n{BLOCK_BEGIN}\njti old\n"  # no end line: the block runs to the end
    assert replace_block(broken, block) == f"jti mine\n{BLOCK_BEGIN}\njti a\n{BLOCK_END}\n"


def _commands(tmp_path: Path, auth: TokenAuthority) -> tuple[EdgeCommands, EdgeStats, Path]:
    (tmp_path / "hub.pem").write_bytes(auth.public_key_pem())
    revoked = tmp_path / "revoked.txt"
    if not revoked.exists():
        revoked.write_text("")
    path = write_config(
        tmp_path,
        extra=(
            f'[[http]]\nlisten = "127.0.0.1:0"\n'
            f'keys = [{{ kid = "{auth.kid}", file = "hub.pem" }}]\n'
            'revoked_file = "revoked.txt"\n'
        ),
    )
    stats = EdgeStats()
    return EdgeCommands(load_edge_config(path), stats), stats, revoked


@dataclass
class _Msg:
    data: bytes


async def test_commands_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    auth = TokenAuthority(tmp_path / "key.pem", issuer="cairn-hub", audience="cairn-api")
    commands, stats, revoked = _commands(tmp_path, auth)
    assert commands.enabled

    def signed(**over: Any) -> _Msg:
        claims = devrevocations.revocation_claims(
            "cairn-hub", "acme", "edge-t", [("j1", "d1", 2_000_000_000_000_000)], 60
        )
        claims.update(over)
        return _Msg(auth.sign(claims).encode())

    cases = {
        "wrong-edge": signed(edge="edge-u"),
        "wrong-edge ": signed(tenant="other"),
        "bad-signature": signed(aud="cairn-edge"),
        "expired": signed(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        "malformed": signed(revoked=[["j 1", None, 5]]),
        "malformed ": signed(revoked=[["j1", None, "5"]]),
        "unknown-command": signed(cmd="reboot"),
        "unknown-key": _Msg(
            jwt.encode(
                {"a": 1}, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": "zz"}
            ).encode()
        ),
    }
    for reason, msg in cases.items():
        await commands.handle(msg)  # type: ignore[arg-type]
        assert stats.counters[f"commands-rejected-{reason.strip()}"] >= 1, reason
    assert stats.counters["commands-rejected"] == len(cases)
    assert revoked.read_text() == ""
    await commands.handle(signed())  # type: ignore[arg-type]
    assert "jti j1  # device d1, until " in revoked.read_text()
    assert stats.counters["device-revocations-applied"] == 1
    mtime = revoked.stat().st_mtime_ns
    await commands.handle(signed())  # type: ignore[arg-type]  # unchanged: not rewritten
    assert revoked.stat().st_mtime_ns == mtime
    # After a restart the edge remembers how new its list is (from the file): an older list,
    # a replay, is refused and changes nothing.
    restarted, stats2, _ = _commands(tmp_path, auth)
    assert 0 < restarted.issued_us <= commands.issued_us  # (an unchanged list is not written)
    await restarted.handle(signed(issued_us=restarted.issued_us - 1, revoked=[]))  # type: ignore[arg-type]
    assert stats2.counters["commands-rejected-stale"] == 1
    assert "jti j1" in revoked.read_text()
