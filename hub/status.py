"""The hub's side of the edges' clock and status: core NATS, no JetStream.

- ``cairn.clock``: the hub answers each request with its wall time, ``{"now_us": ...}``; the
  edges estimate their offset from it (:mod:`edge.clock`).
- ``cairn.status.<tenant>.<edge>``: each edge's status document (the one its admin API
  serves), published every ``status_interval_s``. The latest per edge is kept in the store
  (``edge_status``) and shown by ``GET /api/v1/edges``. A document whose ``tenant``/``edge``
  do not match its subject, that is not a JSON object, or that is larger than
  :data:`MAX_STATUS_BYTES` is dropped, counted per reason (``rejected``) and logged (the first
  of each reason, then at most once a minute).

Both subscriptions are in queue groups, so several hub processes answer each request once and
store each document once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from typing import Any, Final

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from contract.backoff import Backoff
from contract.names import CLOCK_SUBJECT, STATUS_SUBJECTS, parse_status_subject
from contract.natsconn import NatsIdentity, connect_nats
from hub.store import Store

__all__ = ["MAX_STATUS_BYTES", "StatusListener"]

_log = logging.getLogger(__name__)

MAX_STATUS_BYTES: Final = 256 * 1024
_QUEUE: Final = "cairn-hub"
_LOG_EVERY_S: Final = 60.0


class _Rejected(Exception):  # noqa: N818 - a control-flow signal
    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def check_status(subject: str, data: bytes) -> tuple[str, str, dict[str, Any]]:
    """(tenant, edge, document) of a status message, or :class:`_Rejected` with the reason."""
    parsed = parse_status_subject(subject)
    if parsed is None:
        raise _Rejected("bad-subject", f"not a status subject: {subject!r}")
    tenant, edge = parsed
    if len(data) > MAX_STATUS_BYTES:
        raise _Rejected("too-large", f"{len(data)} bytes (at most {MAX_STATUS_BYTES})")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Rejected("bad-json", str(exc)) from exc
    if not isinstance(doc, dict):
        raise _Rejected("bad-json", "not a JSON object")
    if doc.get("tenant") != tenant or doc.get("edge") != edge:
        raise _Rejected(
            "subject-mismatch",
            f"document of tenant {doc.get('tenant')!r} edge {doc.get('edge')!r} "
            f"on the subject of tenant {tenant!r} edge {edge!r}",
        )
    return tenant, edge, doc


class StatusListener:
    """Answers clock requests and stores the edges' status documents (see the module doc)."""

    def __init__(self, url: str, store: Store, identity: NatsIdentity | None = None) -> None:
        self._url = url
        self._identity = identity
        self._store = store
        self.stored = 0
        self.clock_requests = 0
        self.rejected: Counter[str] = Counter()
        self._logged: dict[str, float] = {}
        self.connected = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "statuses_stored": self.stored,
            "clock_requests": self.clock_requests,
            "statuses_rejected": dict(sorted(self.rejected.items())),
        }

    async def run(self) -> None:
        """Subscribe and serve until cancelled."""
        nc: NatsClient = await connect_nats(
            self._url, "cairn-hub-status", Backoff(0.1, 5.0), lambda _p: None, self._identity
        )
        self.connected = True
        try:
            await nc.subscribe(CLOCK_SUBJECT, queue=_QUEUE, cb=self._on_clock)
            await nc.subscribe(STATUS_SUBJECTS, queue=_QUEUE, cb=self._on_status)
            await nc.flush()
            _log.info("answering %s and storing %s", CLOCK_SUBJECT, STATUS_SUBJECTS)
            await asyncio.Event().wait()
        finally:
            self.connected = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)

    async def _on_clock(self, msg: Msg) -> None:
        self.clock_requests += 1
        if msg.reply:
            await msg.respond(json.dumps({"now_us": time.time_ns() // 1000}).encode())

    async def _on_status(self, msg: Msg) -> None:
        try:
            tenant, edge, doc = check_status(msg.subject, msg.data)
        except _Rejected as rej:
            self._reject(msg.subject, rej)
            return
        try:
            await asyncio.to_thread(
                self._store.put_edge_status, tenant, edge, time.time_ns() // 1000, doc
            )
        except Exception as exc:  # the store, not the document: log it, keep serving
            self._reject(msg.subject, _Rejected("store-error", f"{type(exc).__name__}: {exc}"))
            return
        self.stored += 1

    def _reject(self, subject: str, rej: _Rejected) -> None:
        self.rejected[rej.reason] += 1
        now = time.monotonic()
        if now - self._logged.get(rej.reason, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._logged[rej.reason] = now
            _log.warning(
                "dropped a status document on %s (%d so far): %s",
                subject,
                self.rejected[rej.reason],
                rej,
            )
