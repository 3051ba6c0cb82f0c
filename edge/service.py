"""The edge service: buffer, batcher, sources, forwarder and admin API in one TaskGroup.

Start order: the data folder (0700), the identity key, the buffer (and the dedupe window from
its newest rows), then the flush loop, the forwarder, the sources and the admin API. SIGTERM or
SIGINT stops it in order: the sources first (what arrived is committed and acknowledged, then
they disconnect, keeping their broker sessions), then the last flush, then the forwarder and the
admin API; the buffer is closed last. Cancelling :func:`run_edge` instead is an abrupt stop
(nothing more is committed), like a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any, Final

from contract.errors import ConfigError
from edge.admin import AdminServer
from edge.batcher import Batcher
from edge.buffer import Buffer
from edge.commands import EdgeCommands
from edge.config import EdgeConfig
from edge.forwarder import Forwarder
from edge.identity import KeyHolder, nats_identity
from edge.sources.ble import BleSource
from edge.sources.http import HttpSource
from edge.sources.mqtt import MqttSource
from edge.sources.serial import SerialSource
from edge.stats import EdgeStats

__all__ = ["FINAL_FLUSH_TIMEOUT_S", "run_edge"]

_log = logging.getLogger(__name__)

FINAL_FLUSH_TIMEOUT_S: Final = 30.0
"""How long an orderly stop waits for the last commit (e.g. on a failing disk) before exiting;
what is not committed then was not acknowledged either, and the broker sends it again."""


async def run_edge(
    config: EdgeConfig, *, stop: asyncio.Event | None = None, handle_signals: bool = True
) -> None:
    """Run the edge until ``stop`` is set (or SIGTERM/SIGINT when ``handle_signals``)."""
    settings = config.edge
    try:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            "edge.data_dir", f"cannot create {settings.data_dir}: {exc.strerror}"
        ) from exc
    keys = KeyHolder(settings.key_path)
    buffer = Buffer(settings.buffer_path, config.buffer.synchronous.value, config.buffer.limits)
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await _serve(config, keys, buffer, stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        buffer.close()
        _log.info("edge %s stopped", settings.id)


async def _serve(config: EdgeConfig, keys: KeyHolder, buffer: Buffer, stop: asyncio.Event) -> None:
    settings = config.edge
    stats = EdgeStats()
    forwarder = Forwarder(
        config.forwarder,
        buffer,
        settings.tenant,
        settings.id,
        keys,
        stats,
        identity=nats_identity(config.enrollment, keys),
    )
    window = 2 * sum(m.receive_maximum for m in config.mqtt)
    batcher = Batcher(
        buffer, config.buffer, stats, on_commit=forwarder.notify, digest_window=window
    )
    loaded = batcher.load_digests()

    async def status() -> dict[str, Any]:
        buffer_stats = await asyncio.to_thread(buffer.stats)
        return {
            "edge": settings.id,
            "tenant": settings.tenant,
            "buffer": {**buffer_stats.as_json(), "state": batcher.state},
            **stats.as_json(),
            **forwarder.status_json(),
        }

    forwarder.status_source = status  # also published to the hub every status_interval_s
    commands = EdgeCommands(config, stats)  # the hub's device-token revocations
    if commands.enabled:
        forwarder.command_handler = commands.handle

    admin = AdminServer(config.admin, status, settings.admin_port_path)
    _log.info(
        "edge %s (tenant %s) starting: buffer %s (%d unsent batches), NATS %s, MQTT %s, admin %s",
        settings.id,
        settings.tenant,
        settings.buffer_path,
        buffer.stats().batches_unsent,
        config.forwarder.nats_url,
        ", ".join(f"{m.name}={m.url}" for m in config.mqtt) or "none",
        config.admin.listen or "off",
    )
    _log.debug("dedupe window: %d digests loaded (window %d)", loaded, window)
    async with contextlib.AsyncExitStack() as stack:
        sources: list[MqttSource | BleSource | SerialSource | HttpSource] = [
            await stack.enter_async_context(MqttSource(m, batcher, stats)) for m in config.mqtt
        ]
        sources += [
            await stack.enter_async_context(BleSource(b, batcher, stats)) for b in config.ble
        ]
        sources += [
            await stack.enter_async_context(SerialSource(s, batcher, stats)) for s in config.serial
        ]
        for s in config.serial:
            _log.info("serial source %s: %s, parser %s", s.name, s.port, s.parser.value)
        sources += [
            await stack.enter_async_context(HttpSource(h, batcher, stats, settings.tenant))
            for h in config.http
        ]
        listen = await admin.start() if config.admin.enabled else "off"
        stack.push_async_callback(admin.stop)
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(batcher.run(), name="batcher"),
                tg.create_task(forwarder.run(), name="forwarder"),
                tg.create_task(keys.watch(), name="key-watch"),
                *(tg.create_task(s.run(), name=f"source-{s.name}") for s in sources),
            ]
            _log.info("edge %s ready (admin API %s)", settings.id, listen)
            await stop.wait()
            _log.info("edge %s stopping", settings.id)
            for source in sources:
                await source.stop()
            try:
                async with asyncio.timeout(FINAL_FLUSH_TIMEOUT_S):
                    await batcher.close()
            except TimeoutError:
                _log.error(
                    "the last commit did not finish in %.0f s; %d readings stay unacknowledged",
                    FINAL_FLUSH_TIMEOUT_S,
                    batcher.queued_readings,
                )
            for task in tasks:
                task.cancel()
