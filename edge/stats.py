"""Counters of the running edge, and rate-limited logging of bad input.

Counter keys are short stable slugs (``readings-accepted``, ``redelivered-duplicate``,
rejection reasons such as ``bad-json``); the status API shows them as they are.

Bad input is logged so that a misbehaving device cannot flood the log: the first occurrence
of each (source, reason) at WARNING with the detail and a preview of the payload, then at most
one line per (source, reason) every :data:`LOG_INTERVAL_S` seconds with the count since the
last line. Every occurrence is counted.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "COUNTER_KEYS",
    "LOG_INTERVAL_S",
    "EdgeStats",
    "ForwarderState",
    "SourceStats",
    "payload_preview",
]

_log = logging.getLogger(__name__)

LOG_INTERVAL_S: Final = 60.0
"""Least time between two log lines about the same (source, reason)."""
_PREVIEW_BYTES: Final = 64

COUNTER_KEYS: Final = (
    "messages-received",
    "readings-accepted",
    "messages-rejected",
    "redelivered-duplicate",
    "batches-committed",
    "readings-committed",
    "commit-errors",
    "batches-forwarded",
    "readings-forwarded",
    "publish-errors",
    "readings-dropped",
    "readings-refused",
)
"""The edge-wide counters, always present in the status document (from 0)."""


def payload_preview(payload: bytes) -> str:
    """A short printable preview of ``payload`` (UTF-8 text if it is, else hex), truncated."""
    head = payload[:_PREVIEW_BYTES]
    more = f"... ({len(payload)} bytes)" if len(payload) > _PREVIEW_BYTES else ""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"hex {head.hex()}{more}"
    return f"{text!r}{more}"


@dataclass
class SourceStats:
    """What one source has seen since the edge started."""

    connected: bool = False
    messages: int = 0
    """Messages received (every message, accepted, rejected or duplicate)."""
    accepted: int = 0
    """Readings committed from this source's messages."""
    rejected: Counter[str] = field(default_factory=Counter)
    """Rejected messages per reason."""
    duplicates: int = 0
    """Redelivered messages acknowledged without committing them again."""
    dropped: Counter[str] = field(default_factory=Counter)
    """Committed readings deleted before they were sent, per reason (``full``: the disk
    budget under ``drop-oldest``; ``age``: ``buffer.max_age_s``)."""
    refused: Counter[str] = field(default_factory=Counter)
    """Readings turned away uncommitted, per reason (``full``: the budget under
    ``refuse-new``; ``disk-error``: the buffer cannot be written; ``closed``: shutting down)."""
    ignored: Counter[str] = field(default_factory=Counter)
    """Well-formed input with nothing to keep, per kind (a serial CSV header line, an NMEA
    sentence type other than GGA/RMC); not an error. In the status document only once seen."""

    def as_json(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "messages": self.messages,
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
            "redelivered-duplicate": self.duplicates,
            "dropped": dict(sorted(self.dropped.items())),
            "refused": dict(sorted(self.refused.items())),
        } | ({"ignored": dict(sorted(self.ignored.items()))} if self.ignored else {})


@dataclass
class ForwarderState:
    """What the forwarder is doing."""

    connected: bool = False
    batches_sent: int = 0
    """Batches acknowledged by JetStream since the edge started."""
    readings_sent: int = 0
    in_flight: int = 0
    last_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "batches_sent": self.batches_sent,
            "readings_sent": self.readings_sent,
            "in_flight": self.in_flight,
            "last_error": self.last_error,
        }


@dataclass
class _LogState:
    last: float
    since: int = 0


class EdgeStats:
    """All counters of one running edge (one event loop; not thread-safe by design)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.sources: dict[str, SourceStats] = {}
        self.forwarder = ForwarderState()
        self.counters: Counter[str] = Counter(dict.fromkeys(COUNTER_KEYS, 0))
        self._log_state: dict[tuple[str, str], _LogState] = {}

    def source(self, name: str) -> SourceStats:
        """The stats of source ``name`` (created on first use)."""
        stats = self.sources.get(name)
        if stats is None:
            stats = self.sources[name] = SourceStats()
        return stats

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] += n

    def received(self, source: str) -> None:
        self.source(source).messages += 1
        self.counters["messages-received"] += 1

    def accepted(self, source: str, readings: int) -> None:
        self.source(source).accepted += readings
        self.counters["readings-accepted"] += readings

    def duplicate(self, source: str) -> None:
        self.source(source).duplicates += 1
        self.counters["redelivered-duplicate"] += 1

    def ignored(self, source: str, kind: str) -> None:
        """Count a message with nothing to keep (not an error: not logged above DEBUG)."""
        self.source(source).ignored[kind] += 1

    def dropped(self, source: str, reason: str, readings: int, detail: str) -> None:
        """Count committed readings deleted unsent; log it, rate-limited per (source, reason)."""
        self.source(source).dropped[reason] += readings
        self.counters["readings-dropped"] += readings
        text = f"dropped {readings} unsent readings ({reason}): {detail}"
        self._log_limited(
            source,
            f"dropped-{reason}",
            text,
            lambda n, s: f"{n} more drops ({reason}) in the last {s:.0f} s; latest: {text}",
        )

    def refused(self, source: str, reason: str, readings: int, detail: str) -> None:
        """Count readings turned away uncommitted; log it, rate-limited per (source, reason)."""
        self.source(source).refused[reason] += readings
        self.counters["readings-refused"] += readings
        text = f"refused {readings} readings ({reason}): {detail}"
        self._log_limited(
            source,
            f"refused-{reason}",
            text,
            lambda n, s: f"{n} more refusals ({reason}) in the last {s:.0f} s; latest: {text}",
        )

    def rejected(
        self, source: str, reason: str, detail: str, payload: bytes, where: str = ""
    ) -> None:
        """Count a refused message and log it, rate-limited per (source, reason)."""
        self.source(source).rejected[reason] += 1
        self.counters["messages-rejected"] += 1
        on = f" on {where}" if where else ""
        self._log_limited(
            source,
            reason,
            f"refused a message ({reason}){on}: {detail}; payload {payload_preview(payload)}",
            lambda n, s: (
                f"refused {n} more messages ({reason}) in the last {s:.0f} s; latest{on}: {detail}"
            ),
        )

    def _log_limited(
        self, source: str, key: str, first: str, more: Callable[[int, float], str]
    ) -> None:
        """Log ``first`` the first time for (source, key), then at most one line every
        :data:`LOG_INTERVAL_S`: ``more(occurrences meanwhile, seconds since the last line)``."""
        now = self._clock()
        state = self._log_state.get((source, key))
        if state is None:
            self._log_state[source, key] = _LogState(now)
            _log.warning("source %s: %s", source, first)
            return
        state.since += 1
        if now - state.last >= LOG_INTERVAL_S:
            _log.warning("source %s: %s", source, more(state.since, now - state.last))
            state.last = now
            state.since = 0

    def as_json(self) -> dict[str, Any]:
        """The ``counters``, ``sources`` and ``forwarder`` parts of the status document."""
        return {
            "counters": dict(sorted(self.counters.items())),
            "sources": {name: s.as_json() for name, s in sorted(self.sources.items())},
            "forwarder": self.forwarder.as_json(),
        }
