"""The forwarder: committed batches -> NATS JetStream, each marked sent only on its ack.

It publishes the unsent rows of the buffer to ``cairn.telemetry.<tenant>.<edge>``, each with
``Nats-Msg-Id: <tenant>.<edge>:<seq>:<signature prefix>`` (JetStream's de-duplication key,
:func:`contract.names.msg_id`) and the ``Cairn-*`` headers,
signed with the edge key, keeping up to ``max_in_flight`` publishes outstanding. A batch is
marked sent when JetStream acknowledges it, also when the ack says it was a duplicate (an
earlier attempt got through). A failed or timed-out publish is retried after a jittered backoff
with the same ``Nats-Msg-Id``, so a retry of a publish that was stored after all is dropped by
JetStream, not stored twice (and by the hub's (edge, seq) key beyond JetStream's window).

**Live first.** A batch committed less than ``live_window_s`` ago (monotonic clock, from the
batcher's commit notifications) is *live*; older unsent batches, and everything already in the
buffer when the forwarder starts, are the *backlog*. Live batches go first, in seq order; the
backlog drains alongside, in seq order, with at most ``backlog_share`` of the in-flight window
and of the byte rate while live batches wait, and all of it when none wait. The hub accepts any
order. Nothing here depends on the wall clock: a clock jump changes neither order nor timing.

**Uplink** (:mod:`edge.uplink`): optional byte rate and per-UTC-day byte budget; every publish
attempt is charged. **Clock** (:mod:`edge.clock`): the hub's time is asked for on
``cairn.clock`` every ``clock_interval_s``. **Status**: the status document is published on
``cairn.status.<tenant>.<edge>`` (core NATS, fire and forget) every ``status_interval_s``.

The forwarder sleeps on an :class:`asyncio.Event` that the batcher sets on every commit and a
finishing publish sets too (no polling), and after a restart starts again from the unsent rows.
It never creates the stream (the hub does): while the stream is missing, publishes fail and are
retried with backoff. Connection: the first connect is retried with jittered, capped backoff for
as long as it takes; after that nats-py reconnects by itself, forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contract.backoff import Backoff
from contract.names import (
    CLOCK_SUBJECT,
    command_subject,
    status_subject,
    telemetry_subject,
)
from contract.natsconn import NatsIdentity, connect_nats
from contract.signing import batch_headers
from edge.buffer import Buffer, StoredBatch
from edge.clock import ClockEstimate
from edge.config import ForwarderSettings
from edge.identity import KeyHolder, rekey_connection
from edge.stats import EdgeStats
from edge.uplink import Uplink, message_bytes

__all__ = ["MAX_TRACKED_COMMITS", "Forwarder"]

_log = logging.getLogger(__name__)

MAX_TRACKED_COMMITS: Final = 100_000
"""Commits remembered for the live window at most (older ones count as backlog)."""


StatusSource = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(slots=True)
class _Item:
    batch: StoredBatch
    headers: dict[str, str]
    nbytes: int


@dataclass(slots=True)
class _Drain:
    """Live-first bookkeeping, for the status document."""

    live_from: int = 1
    live_in_flight: int = 0
    backlog_in_flight: int = 0
    live_waiting: int = 0
    backlog_waiting: int = 0

    def in_flight(self) -> int:
        return self.live_in_flight + self.backlog_in_flight

    def as_json(self) -> dict[str, Any]:
        return {
            "live_from_seq": self.live_from,
            "live_in_flight": self.live_in_flight,
            "backlog_in_flight": self.backlog_in_flight,
            "live_queued": self.live_waiting,
            "backlog_queued": self.backlog_waiting,
        }


class Forwarder:
    """Publishes the buffer's unsent batches to JetStream (see the module docstring)."""

    def __init__(
        self,
        settings: ForwarderSettings,
        buffer: Buffer,
        tenant: str,
        edge_id: str,
        key: Ed25519PrivateKey | KeyHolder,
        stats: EdgeStats,
        *,
        status: StatusSource | None = None,
        identity: NatsIdentity | None = None,
    ) -> None:
        self._settings = settings
        self._buffer = buffer
        self._tenant = tenant
        self._edge = edge_id
        self._key = key
        self._identity = identity
        """How to log in to NATS (:func:`edge.identity.nats_identity`; None: anonymous)."""
        if isinstance(key, KeyHolder):
            key.add_listener(self._rekey)
        self._stats = stats
        self._state = stats.forwarder
        self._subject = telemetry_subject(tenant, edge_id)
        self._wake = asyncio.Event()
        self._acked: list[StoredBatch] = []
        self._acked_event = asyncio.Event()
        self._nc: NatsClient | None = None
        self._failing = False
        self._link_back = asyncio.Event()
        self.status_source = status
        """Called every ``status_interval_s`` for the document to publish (None: nothing)."""
        self.command_handler: Callable[[Msg], Awaitable[None]] | None = None
        """Called with each message on the edge's command subject (``edge.commands``; None:
        not subscribed). The subscription lives as long as the connection, across reconnects."""
        self._last_seq = buffer.stats().last_seq  # everything up to here is backlog
        self._commits: deque[tuple[float, int]] = deque(maxlen=MAX_TRACKED_COMMITS)
        self._claimed: set[int] = set()  # queued, in flight, or acked and not yet marked sent
        self._drain = _Drain(live_from=self._last_seq + 1)
        self._committed = False  # a commit since the last look for live rows
        self._uplink = Uplink(
            buffer.path.parent,
            settings.uplink_bytes_per_s,
            settings.uplink_bytes_per_day,
            settings.backlog_share,
        )
        self.clock = ClockEstimate(settings.clock_warn_offset_s)
        self.status_published = 0

    def notify(self, seq: int = 0) -> None:
        """Batch ``seq`` was committed: it is live for ``live_window_s``; look for it now."""
        if seq > self._last_seq:
            self._last_seq = seq
            self._commits.append((time.monotonic(), seq))
        self._committed = True
        self._wake.set()

    def status_json(self) -> dict[str, Any]:
        """The ``drain``, ``uplink`` and ``clock`` parts of the edge's status document."""
        self._drain.live_from = self._live_from()
        return {
            "drain": self._drain.as_json(),
            "uplink": self._uplink.as_json(),
            "clock": self.clock.as_json(),
        }

    async def run(self) -> None:
        """Connect, then publish for ever (until cancelled; the connection is closed then)."""
        nc = await self._connect()
        try:
            if self.command_handler is not None:
                await nc.subscribe(
                    command_subject(self._tenant, self._edge), cb=self.command_handler
                )
            js = nc.jetstream(timeout=self._settings.ack_timeout_s)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._mark_loop(), name="forwarder-mark-sent")
                tg.create_task(self._publish_loop(js, tg), name="forwarder-publish")
                if self._settings.clock_interval_s > 0:
                    tg.create_task(self._clock_loop(nc), name="forwarder-clock")
                if self._settings.status_interval_s > 0 and self.status_source is not None:
                    tg.create_task(self._status_loop(nc), name="forwarder-status")
        finally:
            self._state.connected = False
            self._nc = None
            self._uplink.close()
            try:
                await asyncio.wait_for(asyncio.shield(nc.close()), 5)
            except Exception as exc:
                _log.debug("closing the NATS connection: %s", exc)

    # ------------------------------------------------------------ clock, status

    async def _clock_loop(self, nc: NatsClient) -> None:
        async def request() -> bytes:
            msg = await nc.request(CLOCK_SUBJECT, b"", timeout=self._settings.ack_timeout_s)
            self._uplink.charge(len(CLOCK_SUBJECT) + len(msg.data))
            return bytes(msg.data)

        interval = self._settings.clock_interval_s
        retry = Backoff(min(1.0, interval), interval)  # no answer yet (hub not up): ask sooner
        while True:
            if nc.is_connected and await self.clock.measure(request) is not None:
                retry.reset()
                await self._pause(interval)
            else:
                await self._pause(retry.next())

    async def _status_loop(self, nc: NatsClient) -> None:
        subject = status_subject(self._tenant, self._edge)
        assert self.status_source is not None
        while True:
            if nc.is_connected:
                try:
                    doc = await self.status_source()
                    data = json.dumps(doc, separators=(",", ":")).encode()
                    await nc.publish(subject, data)
                    self._uplink.charge(len(subject) + len(data))
                    self.status_published += 1
                except Exception as exc:
                    _log.warning("cannot publish the status document: %s", exc)
            await self._pause(self._settings.status_interval_s)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less: until the link is back after an outage (then the hub
        gets a fresh status, and the clock is measured again, at once)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._link_back.wait(), seconds)

    # -------------------------------------------------------------- connection

    async def _connect(self) -> NatsClient:
        def failed(problem: str) -> None:
            self._state.last_error = problem

        nc = await connect_nats(
            self._settings.nats_url,
            f"cairn-edge-{self._edge}",
            Backoff(self._settings.backoff_initial_s, self._settings.backoff_max_s),
            failed,
            self._identity,
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
        self._retry_now()

    def _retry_now(self) -> None:
        """The link works again (a reconnect, or an ack after failures): publishes waiting
        out their backoff try again now, instead of holding their slots in the window for up
        to ``backoff_max_s`` while fresh batches wait."""
        self._link_back.set()
        self._link_back = asyncio.Event()

    async def _on_closed(self) -> None:
        self._state.connected = False

    # ------------------------------------------------------------- publishing

    def _live_from(self) -> int:
        """The first live seq: the oldest commit within ``live_window_s`` (monotonic clock),
        or the one after the newest commit seen when none is that recent."""
        horizon = time.monotonic() - self._settings.live_window_s
        while self._commits and self._commits[0][0] < horizon:
            self._commits.popleft()
        return self._commits[0][1] if self._commits else self._last_seq + 1

    async def _fetch(
        self, queue: deque[_Item], after: int, below: int | None, page: int
    ) -> tuple[int, bool]:
        """Unclaimed unsent rows after ``after`` (and below ``below``) into ``queue``; returns
        the new cursor (the last row read, claimed or not) and whether the page was full."""
        if below is None:
            rows = await self._buffer.unsent_async(after, page)
        else:
            rows = await self._buffer.unsent_below_async(after, below, page)
        for batch in rows:
            if batch.seq not in self._claimed:
                self._claimed.add(batch.seq)
                headers = self._headers(batch)
                queue.append(
                    _Item(batch, headers, message_bytes(self._subject, headers, batch.body))
                )
        return (rows[-1].seq if rows else after), len(rows) == page

    async def _publish_loop(self, js: JetStreamContext, tg: asyncio.TaskGroup) -> None:
        """Live first: fill two queues from the buffer, the live batches (seq >= live_from)
        and the backlog (older), and start a publish whenever the window and the uplink
        allow. While live batches wait, the backlog gets at most ``backlog_share`` of the
        window (and of the byte rate); when none wait, all of it. Both go in seq order."""
        limit = self._settings.max_in_flight
        backlog_slots = max(1, int(self._settings.backlog_share * limit))
        page = max(2 * limit, 32)
        live: deque[_Item] = deque()
        backlog: deque[_Item] = deque()
        live_cursor = backlog_cursor = 0
        live_more = True  # rows may wait past live_cursor (a full page, or a commit since)
        backlog_read_below = 0  # the backlog below this was read to its end
        while True:
            self._wake.clear()  # before reading: a commit or an ack from now on wakes us again
            live_from = self._live_from()
            self._drain.live_from = live_from
            while live and live[0].batch.seq < live_from:  # aged while waiting: now backlog
                self._claimed.discard(live.popleft().batch.seq)
            if not live and (live_more or self._committed):
                self._committed = False
                live_cursor, live_more = await self._fetch(
                    live, max(live_cursor, live_from - 1), None, page
                )
            if not backlog and backlog_cursor + 1 < live_from and backlog_read_below < live_from:
                backlog_cursor, more = await self._fetch(backlog, backlog_cursor, live_from, page)
                backlog_read_below = 0 if more else live_from
            self._drain.live_waiting = len(live)
            self._drain.backlog_waiting = len(backlog)
            if (not live and not backlog) or self._drain.in_flight() >= limit:
                await self._wake.wait()
                continue
            candidates: list[tuple[deque[_Item], bool]] = []
            if backlog and (not live or self._drain.backlog_in_flight < backlog_slots):
                candidates.append((backlog, True))
            if live:
                candidates.append((live, False))
            wait = 0.0
            for queue, is_backlog in candidates:
                item = queue[0]
                limited = is_backlog and bool(live)
                delay = self._uplink.wait_s(item.nbytes, backlog_limited=limited)
                if delay == 0.0:
                    queue.popleft()
                    self._uplink.charge(item.nbytes, backlog=limited)
                    self._dispatch(js, tg, item, is_backlog)
                    break
                wait = delay if wait == 0.0 else min(wait, delay)
            else:
                if wait:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
                else:
                    await self._wake.wait()

    def _dispatch(
        self, js: JetStreamContext, tg: asyncio.TaskGroup, item: _Item, is_backlog: bool
    ) -> None:
        if is_backlog:
            self._drain.backlog_in_flight += 1
        else:
            self._drain.live_in_flight += 1
        self._state.in_flight += 1
        tg.create_task(self._publish(js, item, is_backlog), name=f"publish-{item.batch.seq}")

    async def _gate(self, nbytes: int) -> None:
        """Wait until the uplink lets a retry of ``nbytes`` go, and charge it."""
        while True:
            delay = self._uplink.wait_s(nbytes)
            if delay <= 0:
                break
            await asyncio.sleep(delay)  # a timed wait for tokens, nothing to be woken by
        self._uplink.charge(nbytes)

    async def _publish(self, js: JetStreamContext, item: _Item, is_backlog: bool) -> None:
        batch, headers, nbytes = item.batch, item.headers, item.nbytes
        backoff = Backoff(self._settings.backoff_initial_s, self._settings.backoff_max_s)
        gone = False
        try:
            first = True
            while True:
                if not first:
                    await self._gate(nbytes)
                self._buffer.pin(batch.seq)  # from now on the budget does not drop it
                if not self._still_unsent(batch.seq):
                    gone = True  # the buffer's budget dropped it meanwhile (counted there)
                    break
                first = False
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
                    with contextlib.suppress(TimeoutError):  # or sooner, once the link is back
                        await asyncio.wait_for(self._link_back.wait(), delay)
                    continue
                if self._failing:
                    self._failing = False
                    _log.info("publishing again (batch %d acknowledged)", batch.seq)
                    self._retry_now()
                if ack.duplicate:
                    _log.debug("batch %d was already in the stream (seq %d)", batch.seq, ack.seq)
                break
        finally:
            self._state.in_flight -= 1
            if is_backlog:
                self._drain.backlog_in_flight -= 1
            else:
                self._drain.live_in_flight -= 1
            self._wake.set()
        if gone:
            self._claimed.discard(batch.seq)
            self._buffer.unpin([batch.seq])
            self._stats.count("publish-skipped-dropped")
            _log.debug("batch %d left the buffer unsent (dropped): not published", batch.seq)
            return
        self._acked.append(batch)
        self._acked_event.set()

    def _still_unsent(self, seq: int) -> bool:
        """Look the batch up before each attempt: the buffer's disk budget (``drop-oldest``)
        or age limit may have deleted it since it was read, and a batch counted as dropped
        must not reach the hub. (A primary-key read of the WAL: microseconds, never waits
        for a writer, so it runs on the loop.)"""
        try:
            return self._buffer.is_unsent(seq)
        except Exception as exc:  # cannot tell: publish (the hub stores a batch once anyway)
            _log.debug("cannot check batch %d in the buffer: %s", seq, exc)
            return True

    def _rekey(self, key: Ed25519PrivateKey) -> None:
        """The edge key was rotated: the next NATS login uses the new one."""
        if self._nc is not None and rekey_connection(self._nc, key):
            _log.info("the next NATS login uses the rotated key")

    def _headers(self, batch: StoredBatch) -> dict[str, str]:
        # Signed now, with the key of now: a backlog made before a rotation is signed
        # with the new key when it is finally sent.
        key = self._key.current() if isinstance(self._key, KeyHolder) else self._key
        return batch_headers(
            key, self._tenant, self._edge, batch.seq, batch.codec, batch.body, count=batch.count
        )

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
            self._claimed.difference_update(b.seq for b in acked)
            self._buffer.unpin(b.seq for b in acked)
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
