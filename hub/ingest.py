"""JetStream -> store: the hub's durable pull consumer.

For each delivered batch: take (tenant, edge) from the subject, check the headers, verify the
``Cairn-Sig`` signature against the keys the registry holds for that edge (before a byte of the
body is decoded: a batch from an unknown or revoked edge, of a disabled tenant, or with a bad
signature is rejected with that reason), decode the body, store it in one transaction (a known
(tenant, edge, seq) is a no-op), and acknowledge only after the commit. A batch that fails a
check is quarantined with the reason, counted, and terminated (``term``) so JetStream does not
redeliver it; it never stops the loop. A crash between commit and ack makes JetStream redeliver,
and the store's (tenant, edge, seq) key turns that redelivery into a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from contract.backoff import Backoff
from contract.codec import CODEC_VERSION, Batch, decode_batch
from contract.errors import CodecError, SignatureError
from contract.names import (
    CONSUMER_NAME,
    HDR_CODEC,
    HDR_EDGE,
    HDR_SEQ,
    HDR_SIGNATURE,
    STREAM_NAME,
    STREAM_SUBJECTS,
    parse_telemetry_subject,
)
from contract.natsconn import connect_nats
from contract.signing import verify_batch
from hub.config import HubConfig, NatsSettings
from hub.natsid import hub_nats_identity
from hub.registry import Registry, RegistryError
from hub.store import IngestResult, Store

__all__ = ["IngestStats", "Ingestor", "ensure_stream"]

_log = logging.getLogger(__name__)

_KNOWN_CODECS: Final = frozenset({CODEC_VERSION})
_FETCH_TIMEOUT_S: Final = 1.0
_LOG_EVERY_S: Final = 60.0


@dataclass
class IngestStats:
    """What the ingest loop has done since start (the store keeps the durable totals)."""

    connected: bool = False
    batches_stored: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "batches_stored": self.batches_stored,
            "readings_stored": self.readings_stored,
            "duplicates": self.duplicates,
            "quarantined": dict(self.quarantined),
            "last_error": self.last_error,
        }


class _Rejected(Exception):  # noqa: N818 - a control-flow signal, not an error of the API
    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


_Prepared = tuple[str, str, int, int, Batch]
"""(tenant, edge, seq, codec, decoded batch) of a batch that passed every check."""


def _check(subject: str, headers: dict[str, str]) -> tuple[str, str, int, int]:
    parsed = parse_telemetry_subject(subject)
    if parsed is None:
        raise _Rejected("bad-subject", f"not a telemetry subject: {subject!r}")
    tenant, edge = parsed
    if headers.get(HDR_EDGE) != edge:
        raise _Rejected(
            "edge-mismatch", f"{HDR_EDGE} {headers.get(HDR_EDGE)!r} on subject of {edge!r}"
        )
    try:
        seq = int(headers.get(HDR_SEQ, ""))
        codec = int(headers.get(HDR_CODEC, ""))
    except ValueError as exc:
        raise _Rejected("bad-header", f"{HDR_SEQ}/{HDR_CODEC} must be integers") from exc
    if seq < 0:
        raise _Rejected("bad-header", f"{HDR_SEQ} must not be negative")
    if codec not in _KNOWN_CODECS:
        raise _Rejected("unknown-codec", f"codec version {codec} is not one this hub reads")
    return tenant, edge, seq, codec


def _authenticate(
    registry: Registry, tenant: str, edge: str, seq: int, codec: int, body: bytes, sig: str
) -> None:
    """Raise :class:`_Rejected` unless ``sig`` is a valid signature of this batch by a key the
    edge may sign with now (enrolled, not revoked, tenant enabled; a key retired by a rotation
    within the grace period still counts). Nothing of the body is decoded before this."""
    if not sig:
        raise _Rejected("unsigned", f"no {HDR_SIGNATURE} header")
    try:
        _verify(registry, tenant, edge, seq, codec, body, sig)
    except _Rejected:
        # Another process (the CLI) may have enrolled or rotated this edge since the
        # registry last looked: look again at once before a rejection that is final.
        if not registry.refresh(force=True):
            raise
        _verify(registry, tenant, edge, seq, codec, body, sig)


def _verify(
    registry: Registry, tenant: str, edge: str, seq: int, codec: int, body: bytes, sig: str
) -> None:
    try:
        keys = registry.verification_keys(tenant, edge)
    except RegistryError as exc:
        raise _Rejected(exc.reason, exc.problem) from None
    problem = "no key"
    for key in keys:
        try:
            verify_batch(key, tenant, edge, seq, codec, body, sig)
        except SignatureError as exc:
            problem = exc.problem
            continue
        return
    raise _Rejected("bad-signature", problem)


def _prepare(msg: Msg, registry: Registry) -> _Prepared | _Rejected:
    """Check a delivered batch, verify its signature, then decode it; nothing is stored yet."""
    try:
        headers = dict(msg.headers or {})
        tenant, edge, seq, codec = _check(msg.subject, headers)
        _authenticate(registry, tenant, edge, seq, codec, msg.data, headers.get(HDR_SIGNATURE, ""))
        try:
            batch = decode_batch(msg.data)
        except CodecError as exc:
            raise _Rejected("bad-body", str(exc)) from exc
        except Exception as exc:  # a decoder bug: keep the batch, keep the loop
            _log.exception("decoder failed on a batch of %s seq %s", edge, seq)
            raise _Rejected("bad-body", f"decoder failed: {type(exc).__name__}: {exc}") from exc
    except _Rejected as rej:
        return rej
    return tenant, edge, seq, codec, batch


def _prepare_all(msgs: list[Msg], registry: Registry) -> list[_Prepared | _Rejected]:
    return [_prepare(m, registry) for m in msgs]


async def ensure_stream(js: Any, settings: NatsSettings) -> None:
    """Create the telemetry stream, or bring the settings the hub owns up to date."""
    config = StreamConfig(
        name=STREAM_NAME,
        subjects=[STREAM_SUBJECTS],
        storage=StorageType.FILE,
        duplicate_window=settings.duplicate_window_s,
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        # It exists with another configuration: bring what we own up to date.
        await js.update_stream(config)


class Ingestor:
    """Pulls batches from the telemetry stream into the store."""

    def __init__(
        self,
        config: HubConfig,
        store: Store,
        registry: Registry,
        stats: IngestStats | None = None,
    ) -> None:
        self._settings = config.nats
        self._identity = hub_nats_identity(config)
        self._store = store
        self._registry = registry
        self.stats = stats or IngestStats()
        # All store writes happen in this one thread: SQLite has one writer anyway, and the
        # event loop keeps serving the API meanwhile.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-store-writer")
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-decoder")
        self._logged: dict[str, float] = {}

    async def run(self) -> None:
        """Connect, make sure stream and consumer exist, then ingest until cancelled."""
        nc = await self._connect()
        try:
            js = nc.jetstream(timeout=10)
            backoff = Backoff(0.1, 5.0)
            while True:
                try:
                    await ensure_stream(js, self._settings)
                    psub = await js.pull_subscribe(
                        STREAM_SUBJECTS,
                        durable=CONSUMER_NAME,
                        stream=STREAM_NAME,
                        config=ConsumerConfig(
                            ack_policy=AckPolicy.EXPLICIT,
                            deliver_policy=DeliverPolicy.ALL,
                            ack_wait=self._settings.ack_wait_s,
                            max_ack_pending=self._settings.max_ack_pending,
                        ),
                    )
                    backoff.reset()
                    try:
                        await self._pull_loop(psub)
                    finally:
                        with contextlib.suppress(Exception):
                            await psub.unsubscribe()
                except (nats.errors.Error, OSError, TimeoutError, sqlite3.Error) as exc:
                    # sqlite3.Error: the batches of this pull stay unacknowledged and come again.
                    delay = backoff.next()
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    _log.warning("ingest: %s; retrying in %.2f s", self.stats.last_error, delay)
                    await asyncio.sleep(delay)
        finally:
            self.stats.connected = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)
            self._writer.shutdown(wait=True)
            self._decoder.shutdown(wait=True)

    async def _connect(self) -> NatsClient:
        def failed(problem: str) -> None:
            self.stats.last_error = problem

        nc = await connect_nats(
            self._settings.url,
            "cairn-hub-ingest",
            Backoff(0.1, 5.0),
            failed,
            self._identity,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self.stats.connected = True
        _log.info("connected to NATS at %s", self._settings.url)
        return nc

    async def _on_error(self, exc: Exception) -> None:
        self.stats.last_error = f"nats: {exc or type(exc).__name__}"

    async def _on_disconnected(self) -> None:
        if self.stats.connected:
            _log.warning("disconnected from NATS; reconnecting")
        self.stats.connected = False

    async def _on_reconnected(self) -> None:
        self.stats.connected = True
        _log.info("reconnected to NATS")

    async def _pull_loop(self, psub: Any) -> None:
        """Fetch, check and decode a pull while the writer thread stores the previous one;
        ack each batch after its commit. (Decoding beside the commit gains ~20 % of drain
        rate: zstd, numpy and SQLite release the GIL for much of their work.)"""
        loop = asyncio.get_running_loop()
        storing: asyncio.Future[list[bool]] | None = None
        stored_msgs: list[Msg] = []
        while True:
            try:
                msgs = await psub.fetch(self._settings.fetch_batch, timeout=_FETCH_TIMEOUT_S)
            except nats.errors.TimeoutError:
                msgs = []
            prepared = await loop.run_in_executor(self._decoder, _prepare_all, msgs, self._registry)
            if storing is not None:
                await self._settle(stored_msgs, await storing)
                storing = None
            if msgs:
                storing = loop.run_in_executor(self._writer, self._store_all, msgs, prepared)
                stored_msgs = msgs

    @staticmethod
    async def _settle(msgs: list[Msg], outcomes: list[bool]) -> None:
        for msg, ok in zip(msgs, outcomes, strict=True):
            if ok:
                await msg.ack()
            else:
                await msg.term()

    def _store_all(self, msgs: list[Msg], prepared: list[_Prepared | _Rejected]) -> list[bool]:
        """Store one pull: the good batches in one transaction (group commit), the rejected
        ones in quarantine. ``False`` means quarantined (terminate, do not redeliver)."""
        good: list[tuple[Msg, _Prepared]] = []
        for msg, p in zip(msgs, prepared, strict=True):
            if isinstance(p, _Rejected):
                self._quarantine(msg, p)
            else:
                good.append((msg, p))
        items = [(t, e, s, c, m.data, b) for m, (t, e, s, c, b) in good]
        try:
            results = self._store.ingest_many(items) if items else []
        except sqlite3.Error:
            raise  # the database, not a batch: retried (the pull is not acknowledged)
        except Exception:
            # One of them cannot be stored: find it, one transaction each.
            stored = {id(m): self._store_one(m, p) for m, p in good}
        else:
            for (_msg, p), result in zip(good, results, strict=True):
                self._count(result, p[4])
            stored = {id(m): True for m, _p in good}
        return [stored.get(id(m), False) for m in msgs]

    def _store_one(self, msg: Msg, prepared: _Prepared) -> bool:
        tenant, edge, seq, codec, batch = prepared
        try:
            result = self._store.ingest(tenant, edge, seq, codec, msg.data, batch)
        except sqlite3.Error:
            raise
        except Exception as exc:  # this batch cannot be stored: keep it aside, keep the loop
            _log.exception("store refused batch %s:%s of tenant %s", edge, seq, tenant)
            self._quarantine(msg, _Rejected("store-refused", f"{type(exc).__name__}: {exc}"))
            return False
        self._count(result, batch)
        return True

    def _count(self, result: IngestResult, batch: Batch) -> None:
        if result is IngestResult.DUPLICATE:
            self.stats.duplicates += 1
        else:
            self.stats.batches_stored += 1
            self.stats.readings_stored += batch.count

    def _quarantine(self, msg: Msg, rej: _Rejected) -> None:
        headers = dict(msg.headers or {})
        self._store.quarantine(msg.subject, rej.reason, rej.detail, headers, msg.data)
        n = self.stats.quarantined.get(rej.reason, 0) + 1
        self.stats.quarantined[rej.reason] = n
        now = time.monotonic()
        if now - self._logged.get(rej.reason, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            # The first of a reason, then at most one line per reason a minute.
            self._logged[rej.reason] = now
            _log.warning("quarantined a batch on %s (%d so far): %s", msg.subject, n, rej)
