"""The hub's NATS authorization against a real nats-server: each edge's nkey may publish only on
its own subjects and subscribe only to its own; the hub's user can do what ingest, status and
commands need; revoking an edge cuts its connection within a second and adding one lets it in."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NatsClient

from contract.codec import encode_batch
from contract.errors import ConfigError
from contract.model import Reading
from contract.names import (
    CLOCK_SUBJECT,
    HDR_CODEC,
    HDR_EDGE,
    HDR_MSG_ID,
    HDR_SEQ,
    HDR_SIGNATURE,
    STREAM_NAME,
    command_subject,
    inbox_prefix,
    msg_id,
    status_subject,
    telemetry_subject,
)
from contract.natsconn import NatsIdentity
from contract.nkeyid import nkey_public, nkey_seed
from contract.signing import generate_key, public_key_bytes, sign_batch
from hub.auth import TokenAuthority
from hub.config import HubConfig, HubSettings, NatsSettings, TlsSettings, config_from_dict
from hub.devrevocations import DeviceRevocationPublisher
from hub.ingest import Ingestor, ensure_stream
from hub.natsauth import (
    HUB_INBOX_PREFIX,
    AuthorizationManager,
    NatsReloader,
    hub_nkey_public,
    hub_nkey_seed,
)
from hub.natsid import hub_nats_identity
from hub.registry import Registry, rotation_message
from hub.status import StatusListener
from hub.store import SqliteStore
from simulator.servers import NatsServer
from tests.polling import until

T1, T2 = "acme", "globex"


@dataclass
class _World:
    server: NatsServer
    registry: Registry
    manager: AuthorizationManager
    state: Path
    admin_seed: str
    keys: dict[tuple[str, str], Ed25519PrivateKey] = field(default_factory=dict)

    def enroll(self, tenant: str, edge: str) -> Ed25519PrivateKey:
        key = self.keys[(tenant, edge)] = generate_key()
        self.registry.register(tenant, edge, public_key_bytes(key))
        return key

    def identity(self, tenant: str, edge: str) -> NatsIdentity:
        return NatsIdentity(
            nkey_seed=nkey_seed(self.keys[(tenant, edge)]), inbox_prefix=inbox_prefix(tenant, edge)
        )

    def hub_identity(self) -> NatsIdentity:
        return NatsIdentity(nkey_seed=hub_nkey_seed(self.state), inbox_prefix=HUB_INBOX_PREFIX)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[_World]:
    state = tmp_path / "hub"
    registry = Registry(state / "registry.sqlite3", poll_s=0.1)
    admin = generate_key()  # an operator's tool: the extra users file gives it every right
    extra = tmp_path / "extra-users.conf"
    extra.write_text(f'{{ nkey: "{nkey_public(public_key_bytes(admin))}" }}\n')
    server = NatsServer(tmp_path / "nats", authorization_include=state / "nats-authz.conf")
    manager = AuthorizationManager(
        registry,
        state / "nats-authz.conf",
        hub_nkey_public(state),
        reloader=NatsReloader(server.pid_file),
        extra_users_file=extra,
    )
    w = _World(server, registry, manager, state, nkey_seed(admin).decode())
    for tenant, edge in [(T1, "a"), (T1, "b"), (T2, "a")]:
        w.enroll(tenant, edge)
    manager.sync(reload=False)  # before the server starts: it reads the file then
    server.start()
    task = asyncio.create_task(manager.run())
    try:
        yield w
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.stop()
        registry.close()


class _Client:
    """A NATS connection that records the server's errors (permission violations)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.disconnected = asyncio.Event()
        self.nc: NatsClient | None = None

    async def connect(self, url: str, identity: NatsIdentity | None, **kw: Any) -> NatsClient:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc).lower())

        async def on_disconnect() -> None:
            self.disconnected.set()

        self.nc = await nats.connect(
            url,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            connect_timeout=5,
            **(identity.options() if identity else {}),
            **kw,
        )
        return self.nc

    def violations(self, what: str) -> list[str]:
        return [e for e in self.errors if f"permissions violation for {what}" in e]


async def login_refused(url: str, identity: NatsIdentity | None) -> bool:
    """Whether the server refuses a fresh login with ``identity`` (``False``: it admits it).
    A login cut short by a reload of the server is tried again."""
    for _attempt in range(5):
        try:
            nc = await nats.connect(
                url,
                allow_reconnect=False,
                connect_timeout=5,
                **(identity.options() if identity else {}),
            )
        except nats.errors.Error as exc:
            if "authorization violation" in str(exc).lower():
                return True
            raise
        except ConnectionResetError:
            continue  # the server reloaded while this login was in flight
        await nc.close()
        return False
    raise AssertionError("every login was cut short")


async def test_an_edge_may_publish_and_subscribe_only_on_its_own_subjects(world: _World) -> None:
    url = world.server.url
    admin = _Client()
    anc = await admin.connect(url, NatsIdentity(nkey_seed=world.admin_seed.encode()))
    seen: list[str] = []

    probes: list[str] = []

    async def record(msg: Any) -> None:
        (probes if msg.subject == "cairn.probe" else seen).append(msg.subject)

    await anc.subscribe("cairn.>", cb=record)
    await anc.flush()

    async def listening() -> bool:  # a brand-new subscription may miss a message: probe it
        if not probes:
            await anc.publish("cairn.probe", b"")
        return bool(probes)

    await until(listening, "the observer's subscription")
    await ensure_stream(anc.jetstream(timeout=5), NatsSettings())

    edge = _Client()
    enc = await edge.connect(url, world.identity(T1, "a"))
    forbidden = [
        telemetry_subject(T1, "b"),  # another edge of its tenant
        telemetry_subject(T2, "a"),  # the same edge name in another tenant
        status_subject(T1, "b"),
        command_subject(T1, "b"),
        command_subject(T1, "a"),  # its own commands come from the hub, not from itself
        "cairn.telemetry.acme.a.extra",
    ]
    for subject in forbidden:
        await enc.publish(subject, b"forged")
    allowed = [telemetry_subject(T1, "a"), status_subject(T1, "a")]
    for subject in allowed:
        await enc.publish(subject, b"mine")
    await enc.flush()
    await until(lambda: len(edge.violations("publish")) == len(forbidden), "the refusals")
    await until(lambda: set(allowed) <= set(seen), "the allowed messages")
    # The server sends each refusal and delivers in order: nothing forbidden got through.
    assert sorted(seen) == sorted(allowed)
    assert len(edge.violations("publish")) == len(forbidden)
    for subject in forbidden:
        assert any(f'"{subject}"' in v for v in edge.violations("publish")), subject

    # JetStream: its own subject is stored; another edge's is refused, and not stored.
    ejs = enc.jetstream(timeout=5)
    ack = await ejs.publish(telemetry_subject(T1, "a"), b"batch")
    assert ack.stream == STREAM_NAME
    with pytest.raises(nats.errors.TimeoutError):
        await enc.jetstream(timeout=1).publish(telemetry_subject(T1, "b"), b"forged batch")
    info = await anc.jetstream(timeout=5).stream_info(STREAM_NAME)
    assert info.state.messages == 2  # the core publish above and this one, both its own

    # Subscriptions: another edge's commands, everyone's telemetry and others' inboxes refused.
    before = len(edge.violations("subscription"))
    refused_subs = [command_subject(T1, "b"), "cairn.telemetry.>", f"{inbox_prefix(T1, 'b')}.>"]
    for subject in refused_subs:
        await enc.subscribe(subject)
    await enc.flush()
    await until(
        lambda: len(edge.violations("subscription")) == before + len(refused_subs),
        "the refused subscriptions",
    )
    # Its own command subject works: a command from the hub's side arrives. (Sent until it
    # does: on this machine a message to a subscription made a moment before is now and then
    # not delivered, even by a server without authorization.)
    got: list[bytes] = []

    async def on_command(msg: Any) -> None:
        got.append(msg.data)

    await enc.subscribe(command_subject(T1, "a"), cb=on_command)
    await enc.flush()

    async def delivered() -> bool:
        if not got:
            await anc.publish(command_subject(T1, "a"), b"cmd")
        return bool(got)

    await until(delivered, "a command on the edge's own command subject", 10)
    assert set(got) == {b"cmd"}
    assert len(edge.violations("subscription")) == before + len(refused_subs)
    await enc.close()
    await anc.close()


async def test_unknown_keys_and_anonymous_logins_are_refused(world: _World) -> None:
    stranger = NatsIdentity(nkey_seed=nkey_seed(generate_key()), inbox_prefix="_INBOX.x")
    assert await login_refused(world.server.url, stranger)
    assert await login_refused(world.server.url, None)
    assert not await login_refused(world.server.url, world.identity(T1, "a"))


async def test_the_hub_user_can_do_what_ingest_status_and_commands_need(
    world: _World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = world.server.url
    config = HubConfig(
        hub=HubSettings(state_dir=world.state),
        nats=NatsSettings(url=url, manage_authorization=True),
        tls=TlsSettings(nats=False, api=False),
    )
    identity = hub_nats_identity(config)  # what the hub's parts log in with
    assert identity == world.hub_identity()
    store = SqliteStore(tmp_path / "store.sqlite3")
    auth = TokenAuthority(tmp_path / "jwt.pem", issuer="cairn-hub", audience="cairn-api")
    ingestor = Ingestor(config, store, world.registry)
    status = StatusListener(url, store, identity)
    # resend_s: a message to a fresh subscription is now and then not delivered on this
    # machine (with or without authorization); the next resend is.
    commands = DeviceRevocationPublisher(url, world.registry, auth, resend_s=0.5, identity=identity)
    edge = _Client()
    enc = await edge.connect(url, world.identity(T1, "a"))
    cmds = await enc.subscribe(command_subject(T1, "a"))  # before the hub sends the first
    await enc.flush()
    tasks = [asyncio.create_task(c.run()) for c in (ingestor, status, commands)]
    try:
        await until(lambda: ingestor.stats.connected and status.connected, "the hub connected")
        # A signed batch through JetStream (the hub made the stream) into the store.
        body = encode_batch([Reading("d1", "temp", 1_000_000, 21.5)])
        headers = {
            HDR_MSG_ID: msg_id("a", 1),
            HDR_EDGE: "a",
            HDR_SEQ: "1",
            HDR_CODEC: "1",
            HDR_SIGNATURE: sign_batch(world.keys[(T1, "a")], T1, "a", 1, 1, body),
        }

        async def published() -> bool:
            try:
                await enc.jetstream(timeout=2).publish(
                    telemetry_subject(T1, "a"), body, headers=headers
                )
            except nats.errors.Error:
                return False  # no stream yet
            return True

        await until(published, "the edge's batch in the stream")
        await until(lambda: ingestor.stats.batches_stored == 1, "the batch stored")
        assert ingestor.stats.quarantined == {}
        # Its status document is stored; its clock request answered.
        doc = json.dumps({"tenant": T1, "edge": "a", "uptime_s": 1}).encode()
        answers: list[int] = []

        async def status_stored() -> bool:  # the listener subscribes after `connected`
            if status.stored == 0:
                await enc.publish(status_subject(T1, "a"), doc)
            return status.stored > 0

        async def clock_answered() -> bool:
            try:
                answer = await enc.request(CLOCK_SUBJECT, b"", timeout=1)
            except nats.errors.Error:
                return False
            answers.append(json.loads(answer.data)["now_us"])
            return True

        await until(status_stored, "the status stored")
        await until(clock_answered, "the clock answered")
        assert abs(answers[0] - time.time_ns() // 1000) < 10_000_000
        assert status.rejected == {}
        # A command to the edge (device-token revocations are sent to every active edge).
        msg = await cmds.next_msg(timeout=20)
        assert msg.data.count(b".") == 2  # a signed JWT
        assert commands.errors == {}
        assert ingestor.stats.last_error is None
        violations = [r for r in caplog.records if "violation" in r.getMessage().lower()]
        violations += [r for r in caplog.records if "violation" in str(r.exc_info).lower()]
        assert violations == []  # nats-py logs the errors of the status and command parts
        assert edge.errors == []
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await enc.close()
        store.close()


@pytest.mark.parametrize("by", ["this process", "another process"])
async def test_revoking_an_edge_cuts_its_connection_within_a_second(world: _World, by: str) -> None:
    url = world.server.url
    edge = _Client()
    other = _Client()
    enc = await edge.connect(
        url, world.identity(T1, "a"), max_reconnect_attempts=-1, reconnect_time_wait=0.1
    )
    await other.connect(url, world.identity(T1, "b"))
    reloads = world.manager.reloader.reloads
    start = time.monotonic()
    if by == "this process":
        world.registry.revoke_edge(T1, "a")
    else:  # the CLI: another connection to the same registry file
        cli = Registry(world.registry.path)
        cli.revoke_edge(T1, "a")
        cli.close()
    await asyncio.wait_for(edge.disconnected.wait(), 10)
    cut_s = time.monotonic() - start
    print(f"revoked by {by}: connection cut after {cut_s:.3f} s")
    assert cut_s < 5
    assert world.manager.reloader.reloads == reloads + 1
    # Its reconnects are refused, so is a fresh login; the other edge stays connected.
    await until(lambda: any("authorization violation" in e for e in edge.errors), "a refusal")
    assert not enc.is_connected
    assert await login_refused(url, world.identity(T1, "a"))
    assert other.nc is not None
    assert other.nc.is_connected
    await other.nc.flush(timeout=5)
    assert not other.disconnected.is_set()
    await enc.close()
    await other.nc.close()


async def test_an_edge_added_can_log_in_after_the_reload(world: _World) -> None:
    url = world.server.url
    newcomer = generate_key()
    identity = NatsIdentity(nkey_seed=nkey_seed(newcomer), inbox_prefix=inbox_prefix(T2, "new"))
    assert await login_refused(url, identity)
    start = time.monotonic()
    world.registry.register(T2, "new", public_key_bytes(newcomer))

    async def admitted() -> bool:
        return not await login_refused(url, identity)

    await until(admitted, "the new edge admitted", 10)
    print(f"new edge admitted after {time.monotonic() - start:.3f} s")


async def test_a_rotated_key_logs_in_until_its_grace_ends(world: _World) -> None:
    url = world.server.url
    world.manager.login_grace_s = 1.0
    old = world.keys[(T1, "a")]
    new = generate_key()
    signed_at = int(time.time())
    proof = old.sign(rotation_message(T1, "a", public_key_bytes(new), signed_at))
    world.registry.rotate_key(T1, "a", public_key_bytes(new), signed_at, proof)
    new_identity = NatsIdentity(nkey_seed=nkey_seed(new), inbox_prefix=inbox_prefix(T1, "a"))
    old_identity = world.identity(T1, "a")

    async def admitted() -> bool:
        return not await login_refused(url, new_identity)

    await until(admitted, "the new key admitted", 10)
    assert not await login_refused(url, old_identity)  # within the grace
    await until(lambda: login_refused(url, old_identity), "the old key refused after its grace", 10)
    await until(admitted, "the new key still admitted", 10)  # (a login during a reload is cut)


async def test_a_reload_that_fails_is_counted_and_tried_again(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.sqlite3")
    server = NatsServer(tmp_path / "nats", authorization_include=tmp_path / "authz.conf")
    reloader = NatsReloader(tmp_path / "missing.pid")
    manager = AuthorizationManager(
        registry, tmp_path / "authz.conf", hub_nkey_public(tmp_path), reloader=reloader
    )
    try:
        assert manager.sync()
        assert (tmp_path / "authz.conf").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "nats-hub.pem").stat().st_mode & 0o777 == 0o600
        assert manager.as_dict()["nats_reload_errors"] == {"no-pid-file": 1}
        assert manager.as_dict()["nats_reload_pending"]
        (tmp_path / "missing.pid").write_text("not a pid\n")
        assert not manager.sync()  # unchanged text: not written again, but the reload retried
        assert reloader.errors == {"no-pid-file": 1, "bad-pid-file": 1}
        server.start()
        reloader.pid_file = server.pid_file
        key = generate_key()
        identity = NatsIdentity(nkey_seed=nkey_seed(key), inbox_prefix=inbox_prefix(T1, "z"))
        assert await login_refused(server.url, identity)
        registry.register(T1, "z", public_key_bytes(key))
        assert manager.sync()
        assert reloader.reloads == 1
        assert not manager.as_dict()["nats_reload_pending"]
        assert manager.writes == 2

        async def admitted() -> bool:
            return not await login_refused(server.url, identity)

        await until(admitted, "the edge admitted after the reload", 10)
        assert not manager.sync()
        assert manager.writes == 2
        assert reloader.reloads == 1
    finally:
        server.stop()
        registry.close()


def test_the_nats_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    raw = {
        "hub": {"state_dir": "state"},
        "nats": {"manage_authorization": True, "pid_file": "run/nats.pid"},
    }
    config = config_from_dict(raw, base=tmp_path)
    assert config.nats.manage_authorization
    assert config.nats.pid_file == str(tmp_path / "run" / "nats.pid")
    assert config.nats.extra_users_file == ""
    assert config.authorization_path == tmp_path / "state" / "nats-authorization.conf"
    raw["nats"]["authorization_file"] = "/etc/nats/cairn.conf"
    assert config_from_dict(raw, base=tmp_path).authorization_path == Path("/etc/nats/cairn.conf")
    with pytest.raises(ConfigError, match=r"nats\.retired_key_login_s"):
        config_from_dict({"nats": {"retired_key_login_s": -1}}, base=tmp_path)


def test_cli_writes_the_file_before_the_server_starts(tmp_path: Path) -> None:
    """``cairn-hub nats-auth write``: the file a fresh nats-server includes (0600, the hub's
    user and the registry's edges), unchanged the second time; refused when the hub keeps
    no authorization; ``--reload`` without a server says why in one line."""
    from tests.test_hub_cli import hub_cli

    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nstate_dir = "state"\n')
    off = hub_cli("nats-auth", "write", "--config", str(config))
    assert off.returncode != 0
    assert "nats.manage_authorization" in off.stderr
    assert "Traceback" not in off.stderr
    config.write_text(
        '[hub]\nstate_dir = "state"\n[nats]\nmanage_authorization = true\npid_file = "nats.pid"\n'
    )
    registry = Registry(tmp_path / "state" / "registry.sqlite3")
    edge = generate_key()
    registry.register(T1, "a", public_key_bytes(edge))
    registry.close()
    done = hub_cli("nats-auth", "write", "--config", str(config))
    assert done.returncode == 0, done.stderr
    path = tmp_path / "state" / "nats-authorization.conf"
    assert done.stdout.splitlines()[0] == f"wrote {path} (1 edge users)"
    hub_key = hub_nkey_public(tmp_path / "state")
    assert done.stdout.splitlines()[1].split() == ["hub-nkey", hub_key]
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert hub_key in text
    assert nkey_public(public_key_bytes(edge)) in text
    again = hub_cli("nats-auth", "write", "--config", str(config))
    assert again.stdout.startswith(f"unchanged {path}")
    shown = hub_cli("nats-auth", "show", "--config", str(config))
    assert shown.stdout.split() == ["authorization-file", str(path), "hub-nkey", hub_key]
    path.unlink()
    reload = hub_cli("nats-auth", "write", "--reload", "--config", str(config))
    assert reload.returncode != 0
    assert "nats.pid_file" in reload.stderr
    assert "does not exist" in reload.stderr
    assert "Traceback" not in reload.stderr
    assert path.exists()  # written all the same
