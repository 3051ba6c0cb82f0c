"""The edge's estimate of its clock offset to the hub, over NATS request/reply.

Every ``clock_interval_s`` the edge sends a request on ``cairn.clock``; the hub answers with
its wall time ``{"now_us": ...}``. The round trip is measured on the monotonic clock and the
edge's wall time at the midpoint is its wall time at sending plus half the round trip, so a
wall-clock step during a request cannot distort it::

    offset = hub_now - (edge_wall_at_send + rtt / 2)      (positive: the edge is behind)

Of the last :data:`SAMPLES` answers the one with the shortest round trip gives the estimate
(its midpoint assumption has the least room to be wrong, as in NTP). A WARNING is logged when
``|offset|`` first exceeds ``clock_warn_offset_s`` (and again every hour while it does), an
INFO when it is back within it.

The offset is reported, not applied: the edge stamps and checks readings with its own clock
(see docs/site-admin.md, "Clock"). Nothing in the forwarder orders or times anything by the
wall clock: batch order is ``seq``, timeouts and backoff use the monotonic clock.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

__all__ = ["SAMPLES", "ClockEstimate", "Sample", "parse_hub_time"]

_log = logging.getLogger(__name__)

SAMPLES: Final = 5
_REWARN_S: Final = 3600.0

Sample = tuple[int, int]
"""(offset_us, rtt_us) of one request."""


def parse_hub_time(data: bytes) -> int:
    """``now_us`` from a hub's answer; ValueError if it is not one."""
    raw = json.loads(data)
    if not isinstance(raw, dict) or type(raw.get("now_us")) is not int:
        raise ValueError(f"not a clock answer: {data[:64]!r}")
    value: int = raw["now_us"]
    return value


class ClockEstimate:
    """The offset estimate and its status (see the module docstring)."""

    def __init__(
        self,
        warn_offset_s: float,
        wall_us: Callable[[], int] = lambda: time.time_ns() // 1000,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.warn_us = int(warn_offset_s * 1_000_000)
        self._wall_us = wall_us
        self._mono = mono
        self._samples: deque[Sample] = deque(maxlen=SAMPLES)
        self._last_at: float | None = None
        self._warned_at: float | None = None
        self.requests = 0
        self.failures = 0
        self.last_error: str | None = None

    async def measure(self, request: Callable[[], Awaitable[bytes]]) -> Sample | None:
        """Ask once (``request`` sends it and returns the answer's data); None on failure."""
        self.requests += 1
        sent_wall = self._wall_us()
        start = self._mono()
        try:
            data = await request()
            hub_us = parse_hub_time(data)
        except Exception as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            _log.debug("clock request failed: %s", self.last_error)
            return None
        rtt_us = round((self._mono() - start) * 1_000_000)
        return self.add(hub_us - (sent_wall + rtt_us // 2), rtt_us)

    def add(self, offset_us: int, rtt_us: int) -> Sample:
        sample = (offset_us, rtt_us)
        self._samples.append(sample)
        self._last_at = self._mono()
        self.last_error = None
        self._check()
        return sample

    @property
    def best(self) -> Sample | None:
        """The sample with the shortest round trip of the last few."""
        return min(self._samples, key=lambda s: s[1]) if self._samples else None

    def _check(self) -> None:
        best = self.best
        if best is None:
            return
        now = self._mono()
        if abs(best[0]) > self.warn_us:
            if self._warned_at is None or now - self._warned_at >= _REWARN_S:
                _log.warning(
                    "the edge clock is %+.3f s off the hub's (round trip %.1f ms; warning above "
                    "%.3f s): check NTP on this box",
                    -best[0] / 1e6,
                    best[1] / 1e3,
                    self.warn_us / 1e6,
                )
                self._warned_at = now
        elif self._warned_at is not None:
            _log.info("the edge clock is within %.3f s of the hub's again", self.warn_us / 1e6)
            self._warned_at = None

    def as_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "offset_ms": None if best is None else round(best[0] / 1000, 3),
            "rtt_ms": None if best is None else round(best[1] / 1000, 3),
            "age_s": None if self._last_at is None else round(self._mono() - self._last_at, 1),
            "warning": best is not None and abs(best[0]) > self.warn_us,
            "requests": self.requests,
            "failures": self.failures,
            "last_error": self.last_error,
        }
