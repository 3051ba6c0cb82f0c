"""The forwarder: committed batches -> NATS JetStream, each marked sent only on its ack.

It publishes the unsent rows of the buffer in ``seq`` order to
``cairn.telemetry.<tenant>.<edge>``, each with ``Nats-Msg-Id: <edge>:<seq>`` (JetStream's
de-duplication key) and the ``Cairn-*`` headers, signed with the edge key, keeping up to
``max_in_flight`` publishes outstanding. A batch is marked sent when JetStream acknowledges
it, also when the ack says it was a duplicate (an earlier attempt got through). A failed or
timed-out publish is retried after a jittered backoff with the same ``Nats-Msg-Id``, so a retry
of a publish that was stored after all is dropped by JetStream, not stored twice.

The forwarder sleeps on an :class:`asyncio.Event` that the batcher sets on every commit (no
polling), and after a restart starts again from the unsent rows. It never creates the stream
(the hub does): while the stream is missing, publishes fail and are retried with backoff.
Connection: the first connect is retried with jittered, capped backoff for as long as it takes;
after that nats-py reconnects by itself, forever.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats
import nats.errors
import nats.js.errors
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from contract.backoff import Backoff
from contract.names import (
    HDR_CODEC,
    HDR_COUNT,
    HDR_EDGE,
    HDR_MSG_ID,
    HDR_SEQ,
    HDR_SIGNATURE,
    msg_id,
    telemetry_subject,
)
from contract.natsconn import connect_nats
from contract.signing import sign_batch
from edge.buffer import Buffer, StoredBatch
from edge.config import ForwarderSettings
from edge.stats import EdgeStats

__all__ = ["Forwarder"]

_log = logging.getLogger(__name__)


class Forwarder:
    """Publishes the buffer's unsent batches to JetStream (see the module docstring)."""

    def __init__(
        self,
        settings: ForwarderSettings,
        buffer: Buffer,
        tenant: str,
        edge_id: str,
        key: Ed25519PrivateKey,
        stats: EdgeStats,
    ) -> None:
        self._settings = settings
        self._buffer = buffer
        self._tenant = tenant
        self._edge = edge_id
        self._key = key
        self._stats = stats
        self._state = stats.forwarder
        self._subject = telemetry_subject(tenant, edge_id)
        self._wake = asyncio.Event()
        self._acked: list[StoredBatch] = []
        self._acked_event = asyncio.Event()
        self._nc: NatsClient | None = None
        self._failing = False

    def notify(self, seq: int = 0) -> None:  # noqa: ARG002 - the batcher's on_commit signature
        """A batch was committed: look for unsent rows now."""
        self._wake.set()

    async def run(self) -> None:
        """Connect, then publish for ever (until cancelled; the connection is closed then)."""
        nc = await self._connect()
        try:
            js = nc.jetstream(timeout=self._settings.ack_timeout_s)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._mark_loop(), name="forwarder-mark-sent")
                tg.create_task(self._publish_loop(js, tg), name="forwarder-publish")
        finally:
            self._state.connected = False
            self._nc = None
            try:
                await asyncio.wait_for(asyncio.shield(nc.close()), 5)
            except Exception as exc:
                _log.debug("closing the NATS connection: %s", exc)

    # -------------------------------------------------------------- connection

    async def _connect(self) -> NatsClient:
        def failed(problem: str) -> None:
            self._state.last_error = problem

        nc = await connect_nats(
            self._settings.nats_url,
            f"cairn-edge-{self._edge}",
            Backoff(self._settings.backoff_initial_s, self._settings.backoff_max_s),
            failed,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
        )
        self._nc = nc
        self._state.connected = True
        _log.info(
            "connected to NATS at %s; publishing on %s", self._settings.nats_url, self._subject
        )
        return nc

    async def _on_error(self, exc: Exception) -> None:
        self._state.last_error = f"nats: {exc or type(exc).__name__}"
        _log.debug("NATS error: %s", exc)

    async def _on_disconnected(self) -> None:
        if self._state.connected:
            _log.warning("disconnected from NATS; reconnecting")
        self._state.connected = False

    async def _on_reconnected(self) -> None:
        self._state.connected = True
        _log.info("reconnected to NATS")
        self._wake.set()

    async def _on_closed(self) -> None:
        self._state.connected = False

    # ------------------------------------------------------------- publishing

    async def _publish_loop(self, js: JetStreamContext, tg: asyncio.TaskGroup) -> None:
        window = asyncio.Semaphore(self._settings.max_in_flight)
        cursor = 0
        page = max(self._settings.max_in_flight, 16)
        while True:
            self._wake.clear()  # before reading: a commit from now on wakes us again
            batches = await self._buffer.unsent_async(cursor, page)
            if not batches:
                await self._wake.wait()
                continue
            for batch in batches:
                await window.acquire()
                cursor = batch.seq
                self._state.in_flight += 1
                tg.create_task(self._publish(js, batch, window), name=f"publish-{batch.seq}")

    async def _publish(
        self, js: JetStreamContext, batch: StoredBatch, window: asyncio.Semaphore
    ) -> None:
        headers = self._headers(batch)
        backoff = Backoff(self._settings.backoff_initial_s, self._settings.backoff_max_s)
        try:
            while True:
                try:
                    ack = await js.publish(
                        self._subject,
                        batch.body,
                        timeout=self._settings.ack_timeout_s,
                        headers=dict(headers),
                    )
                except Exception as exc:
                    self._stats.count("publish-errors")
                    self._state.last_error = _describe(exc)
                    delay = backoff.next()
                    # One WARNING per streak of failures (while NATS is up: a lost connection
                    # is logged by the connection callbacks), the rest at DEBUG.
                    quiet = self._failing or not self._state.connected
                    self._failing = True
                    _log.log(
                        logging.DEBUG if quiet else logging.WARNING,
                        "publish of batch %d failed (%s); retrying in %.2f s (and on)",
                        batch.seq,
                        self._state.last_error,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                if self._failing:
                    self._failing = False
                    _log.info("publishing again (batch %d acknowledged)", batch.seq)
                if ack.duplicate:
                    _log.debug("batch %d was already in the stream (seq %d)", batch.seq, ack.seq)
                break
        finally:
            self._state.in_flight -= 1
            window.release()
        self._acked.append(batch)
        self._acked_event.set()

    def _headers(self, batch: StoredBatch) -> dict[str, str]:
        signature = sign_batch(
            self._key, self._tenant, self._edge, batch.seq, batch.codec, batch.body
        )
        return {
            HDR_MSG_ID: msg_id(self._edge, batch.seq),
            HDR_EDGE: self._edge,
            HDR_SEQ: str(batch.seq),
            HDR_CODEC: str(batch.codec),
            HDR_COUNT: str(batch.count),
            HDR_SIGNATURE: signature,
        }

    async def _mark_loop(self) -> None:
        """Mark acked batches sent, all those acked meanwhile in one transaction."""
        backoff = Backoff(self._settings.backoff_initial_s, self._settings.backoff_max_s)
        while True:
            await self._acked_event.wait()
            self._acked_event.clear()
            acked, self._acked = self._acked, []
            while True:
                try:
                    await self._buffer.mark_sent_async([b.seq for b in acked])
                except Exception:
                    delay = backoff.next()
                    _log.exception(
                        "cannot mark %d batches sent; retrying in %.2f s", len(acked), delay
                    )
                    await asyncio.sleep(delay)
                    continue
                backoff.reset()
                break
            self._stats.count("batches-forwarded", len(acked))
            self._stats.count("readings-forwarded", sum(b.count for b in acked))
            self._state.batches_sent += len(acked)
            self._state.readings_sent += sum(b.count for b in acked)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return "no JetStream stream for the subject (is the hub up?)"
    if isinstance(exc, (nats.errors.TimeoutError, TimeoutError)):
        return "timed out waiting for the JetStream ack"
    text: Any = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
