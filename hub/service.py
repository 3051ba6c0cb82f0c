"""The hub process: store + JetStream ingest + REST API, stopped in order by SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from contract.errors import ConfigError
from hub import api_admin
from hub.api import make_app
from hub.api_identity import NATS_URL
from hub.apibase import NATS_AUTHORIZATION
from hub.auth import TokenAuthority
from hub.config import HubConfig
from hub.devrevocations import DeviceRevocationPublisher
from hub.ingest import Ingestor
from hub.natsauth import authorization_manager
from hub.natsid import hub_nats_identity
from hub.pki import api_tls
from hub.registry import Registry
from hub.status import StatusListener
from hub.store import SqliteStore

__all__ = ["authority", "open_registry", "run_hub"]

_log = logging.getLogger(__name__)


def authority(config: HubConfig) -> TokenAuthority:
    """The hub's token authority (its signing key is made on first use)."""
    return TokenAuthority(
        config.hub.key_path,
        issuer=config.auth.issuer,
        audience=config.auth.audience,
        leeway_s=config.auth.leeway_s,
        default_ttl_s=config.auth.token_ttl_s,
    )


def open_registry(config: HubConfig) -> Registry:
    """The hub's registry of tenants, edges, keys and secrets."""
    return Registry(config.hub.registry_path, retired_grace_s=config.auth.retired_key_grace_s)


class _Stopped(Exception):  # noqa: N818 - a signal to leave the task group, not an error
    pass


async def _stopped(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _Stopped


async def run_hub(config: HubConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run store, ingest and API until ``stop`` is set or SIGTERM/SIGINT arrives.

    Ingest runs as a task of one task group with the stop watcher; the API serves from the
    same event loop. A stop cancels ingest (batches stored but not yet acknowledged come
    again and are skipped), closes the API, then the store.
    """
    state = config.hub.state_dir
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("hub.state_dir", f"cannot create {state}: {exc.strerror}") from exc
    pki, ssl_context = api_tls(config)
    auth = authority(config)
    registry = open_registry(config)
    store = SqliteStore(config.hub.store_path, config.store.synchronous.value)
    ingestor = Ingestor(config, store, registry)
    nats_identity = hub_nats_identity(config)
    listener = StatusListener(config.nats.url, store, nats_identity)  # clock, edges' status
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = make_app(
        store,
        auth,
        ingestor.stats,
        listener,
        registry=registry,
        ca_pem=pki.ca_cert.read_bytes() if pki is not None else None,
    )
    app[NATS_URL] = config.nats.public_url or config.nats.url  # told to edges at enrollment
    api_admin.configure(app, config.auth.api_key_token_ttl_s)
    nats_authorization = None
    if config.nats.manage_authorization:
        # Its first sync reloads the server only if the registry changed since the file was
        # written (`cairn-hub nats-auth write` before the server's start).
        nats_authorization = authorization_manager(config, registry)
        app[NATS_AUTHORIZATION] = nats_authorization
    runner = web.AppRunner(app, access_log=None)
    revocations = DeviceRevocationPublisher(
        config.nats.url,
        registry,
        auth,
        resend_s=config.auth.device_revocations_resend_s,
        identity=nats_identity,
    )
    await runner.setup()
    try:
        host, port = config.api_host_port
        try:
            await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        except OSError as exc:
            raise ConfigError(
                "api.listen", f"cannot listen on {host}:{port}: {exc.strerror}"
            ) from exc
        bound = runner.addresses[0][1] if runner.addresses else port
        port_file = state / "api.port"
        port_file.with_suffix(".tmp").write_text(f"{bound}\n")
        port_file.with_suffix(".tmp").replace(port_file)  # readers never see half a number
        scheme = "https" if ssl_context is not None else "http"
        _log.info("hub API on %s://%s:%s/api/v1, store %s", scheme, host, bound, store.path)
        if pki is not None:
            _log.info("hub CA %s (pin %s)", pki.ca_cert, pki.pin)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(ingestor.run(), name="hub-ingest")
                tg.create_task(listener.run(), name="hub-status")
                tg.create_task(revocations.run(), name="hub-device-revocations")
                if nats_authorization is not None:
                    tg.create_task(nats_authorization.run(), name="hub-nats-authorization")
                tg.create_task(_stopped(stop), name="hub-stop")
        except* _Stopped:
            pass
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        store.close()
        registry.close()
        _log.info("hub stopped")
