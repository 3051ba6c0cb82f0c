"""The hub process: store + JetStream ingest + REST API, stopped in order by SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from contract.errors import ConfigError
from hub.api import make_app
from hub.auth import TokenAuthority
from hub.config import HubConfig
from hub.ingest import Ingestor
from hub.store import SqliteStore

__all__ = ["authority", "run_hub"]

_log = logging.getLogger(__name__)


def authority(config: HubConfig) -> TokenAuthority:
    """The hub's token authority (its signing key is made on first use)."""
    return TokenAuthority(
        config.hub.key_path,
        issuer=config.auth.issuer,
        audience=config.auth.audience,
        leeway_s=config.auth.leeway_s,
    )


async def run_hub(config: HubConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set or SIGTERM/SIGINT arrives."""
    state = config.hub.state_dir
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("hub.state_dir", f"cannot create {state}: {exc.strerror}") from exc
    auth = authority(config)
    store = SqliteStore(config.hub.store_path, config.store.synchronous.value)
    ingestor = Ingestor(config.nats, store)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(make_app(store, auth, ingestor.stats), access_log=None)
    await runner.setup()
    try:
        host, port = config.api_host_port
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        (state / "api.port").write_text(f"{bound}\n")
        _log.info("hub API on http://%s:%s/api/v1, store %s", host, bound, store.path)
        ingest = asyncio.create_task(ingestor.run(), name="hub-ingest")
        waiter = asyncio.create_task(stop.wait(), name="hub-stop")
        done, _ = await asyncio.wait({ingest, waiter}, return_when=asyncio.FIRST_COMPLETED)
        ingest.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ingest
        waiter.cancel()
        if ingest in done and not ingest.cancelled() and ingest.exception() is not None:
            raise ingest.exception()  # type: ignore[misc]
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        store.close()
        _log.info("hub stopped")
