"""Uplink budgets for metered links: a byte rate (token bucket) and a byte budget per UTC day.

Every published message is charged with its size on the wire as the forwarder sees it: body,
headers (in NATS's ``NATS/1.0`` header block) and subject (:func:`message_bytes`).

- **Rate** (``uplink_bytes_per_s``): a token bucket on the monotonic clock holding one second's
  worth of bytes. A message larger than that goes when the bucket is full and leaves it in
  debt, so a big batch is never stuck. While live batches wait, the backlog also passes a
  second bucket running at ``backlog_share`` of the rate.
- **Day budget** (``uplink_bytes_per_day``): bytes charged since 00:00 UTC. When the next
  message would exceed it, forwarding pauses until the next UTC day. Today's count is kept in
  ``uplink-day.json`` in the data folder (written at most once a second and on close; a crash
  forgets at most the last second of traffic). The day comes from the wall clock; if the clock
  steps back to an earlier day, the count of the later day is kept (a clock jump never grants
  a second budget).

0 means unlimited for both. Nothing here orders batches: it only says *when* one may go.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

__all__ = ["DAY_FILE", "DayBudget", "TokenBucket", "Uplink", "message_bytes"]

_log = logging.getLogger(__name__)

DAY_FILE: Final = "uplink-day.json"
_SAVE_EVERY_S: Final = 1.0
_RATE_WINDOW_S: Final = 5.0


def message_bytes(subject: str, headers: Mapping[str, str], body: bytes) -> int:
    """Bytes of a published message: subject, the ``NATS/1.0`` header block and the body."""
    hdr = len("NATS/1.0\r\n\r\n") + sum(len(k) + len(v) + 4 for k, v in headers.items())
    return len(subject.encode()) + hdr + len(body)


class TokenBucket:
    """``rate`` bytes per second, holding at most ``capacity`` (monotonic clock)."""

    def __init__(
        self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._level = capacity
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._at) * self.rate)
        self._at = now

    def wait_s(self, n: int) -> float:
        """Seconds until ``n`` bytes may go (0 if now). More than ``capacity`` needs it full."""
        self._refill()
        need = min(float(n), self.capacity)
        return 0.0 if self._level >= need else (need - self._level) / self.rate

    def take(self, n: int) -> None:
        """Charge ``n`` bytes (the level may go below zero: a debt paid back by waiting)."""
        self._refill()
        self._level -= n


def _utc_day(wall_s: float) -> date:
    return datetime.fromtimestamp(wall_s, tz=UTC).date()


class DayBudget:
    """Bytes sent per UTC day against a limit, persisted in ``path`` (see the module doc)."""

    def __init__(
        self,
        path: Path,
        limit: int,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.limit = limit
        self._wall = wall
        self._clock = clock
        self.day = _utc_day(wall())
        self.used = 0
        self._dirty = False
        self._saved_at = clock()
        self._load()

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            day = date.fromisoformat(raw["day"])
            used = int(raw["bytes"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _log.warning(
                "uplink: ignoring unreadable %s (%s); counting today from 0", self.path, exc
            )
            return
        if day >= self.day:  # today's count, or a later day's if the clock went back
            self.day, self.used = day, max(0, used)

    def _roll(self) -> None:
        today = _utc_day(self._wall())
        if today > self.day:
            if self.used:
                _log.info("uplink: %s UTC ended with %d bytes sent", self.day, self.used)
            self.day, self.used, self._dirty = today, 0, True

    def charge(self, n: int) -> None:
        self._roll()
        self.used += n
        self._dirty = True
        if self._clock() - self._saved_at >= _SAVE_EVERY_S:
            self.save()

    def allows(self, n: int) -> bool:
        """Whether ``n`` more bytes fit today's budget (always, when unlimited). A message
        larger than the whole budget goes alone, first thing in a day, rather than never."""
        self._roll()
        return self.limit <= 0 or self.used + n <= self.limit or (self.used == 0 and n > 0)

    def seconds_to_next_day(self) -> float:
        start = datetime.combine(self.day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        return max(0.0, start.timestamp() - self._wall())

    def save(self) -> None:
        """Write today's count (atomically: a reader never sees half a file)."""
        if not self._dirty:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"day": self.day.isoformat(), "bytes": self.used}))
            tmp.replace(self.path)
        except OSError as exc:
            _log.warning("uplink: cannot save %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        self._dirty = False
        self._saved_at = self._clock()


class Uplink:
    """The forwarder's gate: may a message of ``n`` bytes go now, and if not, for how long
    to wait. ``backlog`` messages while live ones wait also pass the backlog's share."""

    def __init__(
        self,
        data_dir: Path,
        bytes_per_s: int,
        bytes_per_day: int,
        backlog_share: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self.bytes_per_s = bytes_per_s
        self._bucket = TokenBucket(bytes_per_s, bytes_per_s, clock) if bytes_per_s else None
        rate = bytes_per_s * backlog_share
        self._backlog = TokenBucket(rate, rate, clock) if bytes_per_s else None
        self.day = DayBudget(data_dir / DAY_FILE, bytes_per_day, wall, clock)
        self.paused_by_budget = False
        self.total = 0
        self._recent: deque[tuple[float, int]] = deque()

    def wait_s(self, n: int, *, backlog_limited: bool = False) -> float:
        """0 if a message of ``n`` bytes may go now, else seconds to wait before asking again."""
        if not self.day.allows(n):
            if not self.paused_by_budget:
                _log.warning(
                    "uplink: the day's budget of %d bytes is spent (%d sent on %s UTC); "
                    "forwarding pauses until the next UTC day",
                    self.day.limit,
                    self.day.used,
                    self.day.day,
                )
            self.paused_by_budget = True
            return max(0.01, min(self.day.seconds_to_next_day(), 60.0))
        if self.paused_by_budget:
            _log.info("uplink: a new day's budget; forwarding again")
            self.paused_by_budget = False
        wait = self._bucket.wait_s(n) if self._bucket else 0.0
        if backlog_limited and self._backlog is not None:
            wait = max(wait, self._backlog.wait_s(n))
        return wait

    def charge(self, n: int, *, backlog: bool = False) -> None:
        """Count ``n`` bytes as sent (into the buckets, the day and the measured rate)."""
        if self._bucket is not None:
            self._bucket.take(n)
        if backlog and self._backlog is not None:
            self._backlog.take(n)
        self.day.charge(n)
        self.total += n
        now = self._clock()
        self._recent.append((now, n))
        while self._recent and now - self._recent[0][0] >= _RATE_WINDOW_S:
            self._recent.popleft()

    def rate(self) -> float:
        """Bytes per second over the last few seconds."""
        now = self._clock()
        while self._recent and now - self._recent[0][0] >= _RATE_WINDOW_S:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / _RATE_WINDOW_S

    def close(self) -> None:
        self.day.save()

    def as_json(self) -> dict[str, Any]:
        self.day.allows(0)  # roll the day over if it has changed
        return {
            "day": self.day.day.isoformat(),
            "bytes_today": self.day.used,
            "bytes_per_day": self.day.limit,
            "bytes_per_s": self.bytes_per_s,
            "rate_bytes_per_s": round(self.rate(), 1),
            "bytes_total": self.total,
            "paused_by_budget": self.paused_by_budget,
        }
