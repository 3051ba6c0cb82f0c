"""``cairn-sim run``'s live display: rates per transport, a progress bar, or plain log lines.

Senders report into a plain interface, a ``dict`` of transport kind (``"mqtt"``, ``"http"``...)
-> :class:`TransportCounts`, whose counters they increment as readings leave (``sent``), are
acknowledged (``acked``) or fail (``errors``); a bounded run also fills a :class:`Progress`
(instants done of instants to do). :class:`Display` samples both about once a second and draws:

- on a terminal, a block of lines rewritten in place: one line per transport with its
  readings/s sent and acknowledged, its errors and totals, then a progress bar with an ETA;
- otherwise (a log, a pipe), one plain line every ``log_every`` seconds.

The rendering functions (:func:`render_rows`, :func:`progress_bar`, :func:`eta_text`,
:func:`render_plain`) are pure: tested without a terminal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TextIO

__all__ = [
    "Display",
    "Progress",
    "Rates",
    "TransportCounts",
    "eta_text",
    "progress_bar",
    "render_plain",
    "render_rows",
]

_BAR_WIDTH: Final = 30
_CLEAR: Final = "\x1b[K"


@dataclass
class TransportCounts:
    """Readings of one transport kind so far (the senders increment these)."""

    sent: int = 0
    """Readings handed to the transport."""
    acked: int = 0
    """Readings the receiver acknowledged (MQTT PUBACK, HTTP 2xx...)."""
    errors: int = 0
    """Readings that failed (refused, error responses)."""


@dataclass
class Progress:
    """A bounded run: ``done`` of ``total`` instants (summed over device types)."""

    total: int
    done: int = 0


@dataclass(frozen=True)
class Rates:
    """Per second over the last sampling interval."""

    sent: float
    acked: float
    errors: float


def _num(n: float) -> str:
    """``1,234`` below ten thousand, then ``12.3k``, ``4.56M``."""
    if abs(n) < 10_000:
        return f"{n:,.0f}"
    if abs(n) < 1e6:
        return f"{n / 1e3:.1f}k"
    return f"{n / 1e6:.2f}M"


def render_rows(counts: Mapping[str, TransportCounts], rates: Mapping[str, Rates]) -> list[str]:
    """One line per transport kind (sorted), then a total line when there are several."""
    lines = []
    for kind in sorted(counts):
        c = counts[kind]
        r = rates.get(kind, Rates(0.0, 0.0, 0.0))
        lines.append(
            f"  {kind:<7} {_num(r.sent):>7}/s sent  {_num(r.acked):>7}/s acked  "
            f"{_num(r.errors):>5}/s errors   total {c.sent:,} sent, {c.acked:,} acked, "
            f"{c.errors:,} errors"
        )
    if len(counts) > 1:
        sent = sum(r.sent for r in rates.values())
        acked = sum(r.acked for r in rates.values())
        errors = sum(r.errors for r in rates.values())
        lines.append(
            f"  {'all':<7} {_num(sent):>7}/s sent  {_num(acked):>7}/s acked  "
            f"{_num(errors):>5}/s errors   total {sum(c.sent for c in counts.values()):,} sent, "
            f"{sum(c.acked for c in counts.values()):,} acked, "
            f"{sum(c.errors for c in counts.values()):,} errors"
        )
    return lines


def progress_bar(done: int, total: int, width: int = _BAR_WIDTH) -> str:
    """``[#########.....................]  30% 300/1,000`` (``done`` clipped to ``total``)."""
    frac = 1.0 if total <= 0 else min(1.0, max(0.0, done / total))
    filled = math.floor(frac * width)
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {math.floor(frac * 100):3d}% {done:,}/{total:,}"
    )


def eta_text(done: int, total: int, elapsed: float) -> str:
    """Time left at the average pace so far: ``ETA 1:02:03``, ``ETA 4:05``, or ``ETA -``."""
    if done <= 0 or elapsed <= 0 or total <= 0:
        return "ETA -"
    left = max(0.0, (total - done) * elapsed / done)
    s = round(left)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"ETA {h}:{m:02d}:{sec:02d}" if h else f"ETA {m}:{sec:02d}"


def render_plain(
    elapsed: float,
    counts: Mapping[str, TransportCounts],
    rates: Mapping[str, Rates],
    progress: Progress | None,
) -> str:
    """One log line: elapsed time, each transport's rates and totals, progress when bounded."""
    parts = [f"{elapsed:7.1f}s"]
    for kind in sorted(counts):
        c, r = counts[kind], rates.get(kind, Rates(0.0, 0.0, 0.0))
        parts.append(
            f"{kind} {r.sent:,.0f}/s sent {r.acked:,.0f}/s acked "
            f"({c.acked:,} acked, {c.errors:,} errors)"
        )
    if progress is not None:
        pct = (
            100.0
            if progress.total <= 0
            else 100.0 * min(progress.done, progress.total) / progress.total
        )
        parts.append(f"{pct:.0f}% {eta_text(progress.done, progress.total, elapsed)}")
    return "  ".join(parts)


class Display:
    """Samples the counters on each :meth:`tick` and draws them (see the module doc)."""

    def __init__(
        self,
        out: TextIO,
        counts: Mapping[str, TransportCounts],
        progress: Progress | None = None,
        *,
        live: bool,
        log_every: float = 10.0,
    ) -> None:
        self.out = out
        self.counts = counts
        self.progress = progress
        self.live = live
        self.log_every = log_every
        self._last: dict[str, tuple[int, int, int]] = {}
        self._last_t = 0.0
        self._drawn = 0
        self._logged = 0

    def rates(self, elapsed: float) -> dict[str, Rates]:
        """Rates since the previous call (or since 0 on the first), and remember this sample."""
        dt = elapsed - self._last_t
        out = {}
        for kind, c in self.counts.items():
            s0, a0, e0 = self._last.get(kind, (0, 0, 0))
            if dt > 0:
                out[kind] = Rates((c.sent - s0) / dt, (c.acked - a0) / dt, (c.errors - e0) / dt)
            else:
                out[kind] = Rates(0.0, 0.0, 0.0)
            self._last[kind] = (c.sent, c.acked, c.errors)
        self._last_t = elapsed
        return out

    def lines(self, elapsed: float, rates: Mapping[str, Rates]) -> list[str]:
        """The terminal block: a head line, a line per transport, the progress bar."""
        lines = [f"{elapsed:7.1f}s"]
        lines.extend(render_rows(self.counts, rates))
        p = self.progress
        if p is not None:
            lines.append(f"  {progress_bar(p.done, p.total)}  {eta_text(p.done, p.total, elapsed)}")
        return lines

    def tick(self, elapsed: float, *, final: bool = False) -> None:
        """Sample and draw (a terminal: every call; a log: every ``log_every`` seconds)."""
        if self.live:
            lines = self.lines(elapsed, self.rates(elapsed))
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self.out.write(up + "".join(f"{line}{_CLEAR}\n" for line in lines))
            self.out.flush()
            self._drawn = len(lines)
            return
        if final or elapsed < self.log_every * (self._logged + 1):
            return
        self._logged = math.floor(elapsed / self.log_every)
        rates = self.rates(elapsed)
        self.out.write(render_plain(elapsed, self.counts, rates, self.progress) + "\n")
        self.out.flush()
