"""A whole Cairn on one machine, as real processes: Mosquitto, nats-server, hub, edge.

The demo, the end-to-end and crash tests and the benchmark all build on this. Every process
gets its own folder under ``root`` (config, log, state); ports are free loopback ports chosen
once, so a process killed and started again comes back on the same address.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from aiohttp import web

from contract.natsconn import NatsIdentity
from contract.nkeyid import nkey_public, nkey_seed
from contract.signing import load_or_create_key, public_key_bytes
from hub.api import make_app
from hub.api_identity import NATS_URL
from hub.config import AUTHORIZATION_FILE, load_config
from hub.natsauth import authorization_manager
from hub.pki import api_tls, ensure_pki, site_tls_files
from hub.registry import Registry
from hub.service import authority, open_registry
from hub.store import SqliteStore
from simulator.servers import Mosquitto, NatsServer, free_port, wait_for_port

__all__ = ["Lab", "LabSettings", "ManagedProcess"]


@dataclass(frozen=True)
class LabSettings:
    """What differs between a demo, a test and a benchmark."""

    tenant: str = "demo"
    edge_id: str = "edge-1"
    flush_interval_ms: int = 200
    max_batch_readings: int = 10000
    max_in_flight: int = 16
    receive_maximum: int = 20000
    edge_log_level: str = "INFO"
    hub_log_level: str = "INFO"
    extra_edge_toml: str = ""
    topics: tuple[tuple[str, str], ...] = (
        ("sensors/{device}/{sensor}", "value"),
        ("devices/{device}", "json"),
    )
    env: dict[str, str] = field(default_factory=dict)
    extra_buffer_toml: str = ""
    """Lines added to the edge's ``[buffer]`` section (e.g. ``max_bytes = ...``)."""
    extra_forwarder_toml: str = ""
    """Lines added to the edge's ``[forwarder]`` section (e.g. ``backoff_max_s = 1.0``)."""
    extra_hub_toml: str = ""
    """Sections added to the hub's config (e.g. ``[auth]`` ``retired_key_grace_s = 3``)."""
    tls: bool = True
    """TLS on NATS and the hub API, with the CA the hub makes (``[tls]`` of the hub): the
    edge enrolls over HTTPS trusting that CA and reaches NATS over TLS."""
    mqtt_tls: bool = False
    """Mosquitto listens with TLS (``mqtts://``, a site CA of its own under
    ``root/mosquitto/tls``): the edge's MQTT source and senders given
    :attr:`Lab.mqtt_tls_context` verify it."""
    nats_authorization: bool = True
    """The hub keeps the NATS server's authorization (``[nats] manage_authorization``): the
    edge logs in with its key and may speak only for itself, anonymous logins are refused.
    Tests and tools log in as the lab's observer (:attr:`Lab.nats_identity`), a user with
    every right listed in ``[nats] extra_users_file``."""


class ManagedProcess:
    """A Cairn service run as ``python -m <module> run --config FILE``, log to a file."""

    def __init__(self, name: str, module: str, config: Path, log: Path, log_level: str) -> None:
        self.name = name
        self.module = module
        self.config = config
        self.log = log
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.prefix: list[str] = []
        """A command run in front of Python (e.g. ``["fiu-run", "-x"]``: fault injection)."""

    def start(self) -> Self:
        if self.running:
            raise RuntimeError(f"{self.name} already running")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.prefix,
                    sys.executable,
                    "-m",
                    self.module,
                    "--log-level",
                    self.log_level,
                    "run",
                    "--config",
                    str(self.config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} not started")
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush or say goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait for an orderly exit; returns the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _get_json(
    url: str,
    token: str | None = None,
    timeout: float = 5.0,
    context: ssl.SSLContext | None = None,
) -> Any:
    req = urllib.request.Request(url)  # noqa: S310 - loopback URLs built here
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310
        return json.loads(resp.read())


@contextlib.contextmanager
def _hub_api_only(config_path: Path) -> Iterator[None]:
    """The hub's REST API alone (no ingest, no NATS), in a thread, on the configured port."""
    config = load_config(config_path)
    config.hub.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    pki, ssl_context = api_tls(config)
    loop = asyncio.new_event_loop()
    store = SqliteStore(config.hub.store_path)
    registry = open_registry(config)
    ca = pki.ca_cert.read_bytes() if pki is not None else None
    app = make_app(store, authority(config), registry=registry, ca_pem=ca)
    app[NATS_URL] = config.nats.public_url or config.nats.url
    runner = web.AppRunner(app, access_log=None)
    host, port = config.api_host_port

    async def serve() -> None:
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()

    ready = concurrent.futures.Future[None]()

    def run() -> None:  # a thread of its own: the caller may be inside an event loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        loop.run_forever()

    thread = threading.Thread(target=run, name="lab-hub-api", daemon=True)
    thread.start()
    try:
        ready.result(30)
        yield
    finally:
        if thread.is_alive():
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        loop.close()
        registry.close()
        store.close()


class Lab:
    """Mosquitto + NATS + hub + edge, each a real process, under one folder."""

    def __init__(self, root: Path, settings: LabSettings | None = None) -> None:
        self.root = root
        self.settings = settings or LabSettings()
        root.mkdir(parents=True, exist_ok=True)
        site_tls = (
            site_tls_files(root / "mosquitto" / "tls", "mosquitto")
            if self.settings.mqtt_tls
            else None
        )
        self.mosquitto = Mosquitto(root / "mosquitto", tls=site_tls)
        pki = root / "hub" / "state" / "pki"
        self.ca_file = pki / "ca.pem"
        """The hub's CA (made by :meth:`start`), which the edge, NATS clients and API clients
        trust when ``settings.tls`` is on."""
        tls = (self.ca_file, pki / "nats.pem", pki / "nats.key") if self.settings.tls else None
        self.authorization_file = root / "hub" / "state" / AUTHORIZATION_FILE
        """The NATS authorization the hub writes and the server includes (when
        ``settings.nats_authorization`` is on)."""
        self.nats = NatsServer(
            root / "nats",
            tls=tls,
            authorization_include=(
                self.authorization_file if self.settings.nats_authorization else None
            ),
        )
        self._observer_key = root / "lab-observer.pem"
        self._observer_users = root / "lab-observer-users.conf"
        self.api_port = free_port()
        self.admin_port = free_port()
        (root / "hub").mkdir(exist_ok=True)
        (root / "edge").mkdir(exist_ok=True)
        self.hub = ManagedProcess(
            "hub",
            "hub",
            root / "hub" / "hub.toml",
            root / "hub" / "hub.log",
            self.settings.hub_log_level,
        )
        self.edge = ManagedProcess(
            "edge",
            "edge",
            root / "edge" / "edge.toml",
            root / "edge" / "edge.log",
            self.settings.edge_log_level,
        )
        self.hub.env = dict(self.settings.env)
        self.edge.env = dict(self.settings.env)
        self._token: str | None = None
        self._api_ssl: ssl.SSLContext | None = None
        self.edge_nats_url: str | None = None
        """Where the edge finds NATS, if not at ``nats.url`` (a fault proxy in between)."""

    # ----------------------------------------------------------------- configs
    def _write_configs(self) -> None:
        s = self.settings
        self.hub.config.write_text(
            "[hub]\n"
            'state_dir = "state"\n'
            "[nats]\n"
            f'url = "{self.nats.url}"\n' + self._nats_authorization_toml() + ""
            "[api]\n"
            f'listen = "127.0.0.1:{self.api_port}"\n'
            "[tls]\n"
            f"api = {str(s.tls).lower()}\n"
            f"nats = {str(s.tls).lower()}\n" + s.extra_hub_toml
        )
        topics = ",\n  ".join(f'{{ pattern = "{p}", format = "{f}" }}' for p, f in s.topics)
        self.edge.config.write_text(
            "[edge]\n"
            f'id = "{s.edge_id}"\n'
            f'tenant = "{s.tenant}"\n'
            'data_dir = "state"\n'
            "[buffer]\n"
            f"flush_interval_ms = {s.flush_interval_ms}\n"
            f"max_batch_readings = {s.max_batch_readings}\n"
            f"{s.extra_buffer_toml}"
            "[forwarder]\n"
            f'nats_url = "{self.edge_nats_url or self.nats.url}"\n'
            f"max_in_flight = {s.max_in_flight}\n"
            f"{s.extra_forwarder_toml}"
            "[admin]\n"
            f'listen = "127.0.0.1:{self.admin_port}"\n'
            "[[mqtt]]\n"
            'name = "mqtt"\n'
            f'url = "{self.mosquitto.url}"\n'
            + (f'ca_file = "{self.mosquitto.tls[0]}"\n' if self.mosquitto.tls else "")
            + f"receive_maximum = {s.receive_maximum}\n"
            f"topics = [\n  {topics},\n]\n" + s.extra_edge_toml
        )

    def _nats_authorization_toml(self) -> str:
        if not self.settings.nats_authorization:
            return ""
        return (
            "manage_authorization = true\n"
            f'authorization_file = "{self.authorization_file}"\n'
            f'pid_file = "{self.nats.pid_file}"\n'
            f'extra_users_file = "{self._observer_users}"\n'
        )

    # --------------------------------------------------------------- lifecycle
    def start(self, *, edge: bool = True, hub: bool = True) -> Self:
        self.mosquitto.start()
        self.prepare_pki()
        self.prepare_nats_authorization()
        self.nats.start()
        self._write_configs()
        if hub:
            self.start_hub()
        if edge:
            self.start_edge()
        return self

    def prepare_pki(self) -> None:
        """The hub's CA and server certificates, made before NATS starts (as a deployer does
        with ``cairn-hub pki init``) so the server can present its certificate."""
        if self.settings.tls:
            self._write_configs()
            ensure_pki(load_config(self.hub.config))

    def prepare_nats_authorization(self) -> None:
        """The authorization file, written before NATS starts (as a deployer does with
        ``cairn-hub nats-auth write``): the server refuses to start without the file it
        includes. The lab's observer (every right) is its extra user."""
        if not self.settings.nats_authorization:
            return
        observer = nkey_public(public_key_bytes(load_or_create_key(self._observer_key)))
        self._observer_users.write_text(f'{{ nkey: "{observer}" }}  # the lab\'s observer\n')
        self._write_configs()
        self.sync_nats_authorization(reload=False)

    def sync_nats_authorization(self, *, reload: bool = True) -> None:
        """Bring the authorization file up to date with the registry and (``reload``, if the
        file changed and NATS runs) make the server reload it: what the running hub does by
        itself, for when the hub does not run."""
        if not self.settings.nats_authorization:
            return
        config = load_config(self.hub.config)
        config.hub.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        registry = open_registry(config)
        try:
            running = self.nats.proc is not None and self.nats.proc.poll() is None
            authorization_manager(config, registry).sync(reload=reload and running)
        finally:
            registry.close()

    def start_hub(self, timeout: float = 30.0) -> None:
        self.hub.start()
        self._wait_listening(self.hub, self.api_port, timeout)

    def enroll_edge(self) -> None:
        """Enroll the edge the way an operator does, unless it is enrolled already: an
        enrollment token from the hub's registry, then ``cairn-edge enroll`` against the hub
        API (the edge makes its key). While the hub is not running, its API alone serves the
        enrollment (no ingest: JetStream is left as it was)."""
        state = self.root / "edge" / "state"
        if (state / "enrollment.json").exists() and self._hub_knows_edge_key():
            return
        with contextlib.ExitStack() as stack:
            if not self.hub.running:
                stack.enter_context(_hub_api_only(self.hub.config))
            registry = Registry(self.root / "hub" / "state" / "registry.sqlite3")
            try:
                registry.ensure_tenant(self.settings.tenant)
                record = registry.edge(self.settings.tenant, self.settings.edge_id)
                if record is not None and not record.revoked:
                    registry.revoke_edge(self.settings.tenant, self.settings.edge_id)
                token = registry.create_enrollment(
                    self.settings.tenant, self.settings.edge_id, 300, created_by="lab"
                ).token
            finally:
                registry.close()
            trust = ["--ca", str(self.ca_file)] if self.settings.tls else []
            self._edge_cli("enroll", "--hub", self.hub_url, "--token", token, "--force", *trust)
        if not self.hub.running:  # a running hub's own manager admits the edge
            self.sync_nats_authorization()

    def rotate_edge_key(self) -> str:
        """``cairn-edge rotate-key`` (the hub must be running); the new key's fingerprint."""
        out = self._edge_cli("rotate-key")
        return out.split("new key ", 1)[1].split(";", 1)[0]

    def _edge_cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "edge", args[0], "--config", str(self.edge.config), *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **self.edge.env},
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"cairn-edge {args[0]} failed: {done.stderr.strip()}")
        return done.stdout

    def _hub_knows_edge_key(self) -> bool:
        key_path = self.root / "edge" / "state" / "edge.key"
        registry_path = self.root / "hub" / "state" / "registry.sqlite3"
        if not key_path.exists() or not registry_path.exists():
            return False
        registry = Registry(registry_path)
        try:
            record = registry.edge(self.settings.tenant, self.settings.edge_id)
            active = record.active_key if record is not None else None
            local = public_key_bytes(load_or_create_key(key_path))
            return active is not None and active.public_key == local
        finally:
            registry.close()

    def start_edge(self, timeout: float = 30.0) -> None:
        self.enroll_edge()
        self.edge.start()
        self._wait_listening(self.edge, self.admin_port, timeout)
        # Listening on the admin port comes after the buffer is open; wait for MQTT too,
        # so that a test publishing right away reaches a subscribed session.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.edge_status()
            if all(src.get("connected") for src in st.get("sources", {}).values()):
                return
            time.sleep(0.05)
        raise TimeoutError(f"edge MQTT source not connected after {timeout}s:\n{self.edge.tail()}")

    def _wait_listening(self, proc: ManagedProcess, port: int, timeout: float) -> None:
        try:
            wait_for_port(port, timeout, proc.proc)
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"{proc.name} did not come up: {exc}\n{proc.tail()}") from exc

    def stop(self) -> None:
        self.edge.stop()
        self.hub.stop()
        self.nats.stop()
        self.mosquitto.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- queries
    @property
    def hub_url(self) -> str:
        """The hub API's base URL (``https://`` when TLS is on)."""
        return f"{'https' if self.settings.tls else 'http'}://127.0.0.1:{self.api_port}"

    @property
    def api_url(self) -> str:
        return f"{self.hub_url}/api/v1"

    @property
    def api_ssl_context(self) -> ssl.SSLContext | None:
        """Trusts the hub's CA (``None`` when TLS is off): for clients of :attr:`api_url`."""
        if not self.settings.tls:
            return None
        if self._api_ssl is None:  # made once: the CA stays (polls call this often)
            self._api_ssl = ssl.create_default_context(cafile=str(self.ca_file))
        return self._api_ssl

    @property
    def mqtt_tls_context(self) -> ssl.SSLContext | None:
        """Trusts the site broker's CA (``None`` when Mosquitto runs without TLS): pass it as
        ``send_fleet(..., tls=lab.mqtt_tls_context)``."""
        if self.mosquitto.tls is None:
            return None
        return ssl.create_default_context(cafile=str(self.mosquitto.tls[0]))

    @property
    def nats_identity(self) -> NatsIdentity:
        """How a test or tool connects to the lab's NATS as a trusted client:
        ``nats.connect(lab.nats.url, **lab.nats_identity.options())``."""
        ca_file = str(self.ca_file) if self.settings.tls else None
        if not self.settings.nats_authorization:
            return NatsIdentity(ca_file=ca_file)
        return NatsIdentity(
            ca_file=ca_file, nkey_seed=nkey_seed(load_or_create_key(self._observer_key))
        )

    def token(self, role: str = "operator") -> str:
        """A hub API token for the lab's tenant, minted with ``cairn-hub token create``."""
        if self._token is None or role != "operator":
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "hub",
                    "token",
                    "create",
                    "--config",
                    str(self.hub.config),
                    "--tenant",
                    self.settings.tenant,
                    "--role",
                    role,
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            if role != "operator":
                return out
            self._token = out
        return self._token

    def api(self, path: str) -> Any:
        return _get_json(self.api_url + path, self.token(), context=self.api_ssl_context)

    def edge_status(self) -> Any:
        try:
            return _get_json(f"http://127.0.0.1:{self.admin_port}/api/v1/status")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return {}

    def hub_stats(self) -> Any:
        try:
            return self.api("/stats")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return {}

    @property
    def hub_store_path(self) -> Path:
        return self.root / "hub" / "state" / "store.sqlite3"

    @property
    def edge_buffer_path(self) -> Path:
        return self.root / "edge" / "state" / "buffer.sqlite3"
