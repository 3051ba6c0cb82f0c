"""Open-loop load: sends scheduled by the clock, not by acknowledgements, and what it achieved.

``cairn-sim run FLEET --target-rate R`` (or ``--open-loop``) paces a fleet file with an
:class:`OpenLoop`, every transport alike (``simulator.fleetrun.send_device_type``). Every
message gets its own due time, fixed in advance: instant ``k`` of a device type is due at
``origin + (ts(k) - ts(0)) / speed``, and the messages of one instant are spread evenly over
the instant's period (device ``d`` of ``N`` at ``d / N`` of it), as real devices are not
synchronised. The origin is fixed by the first send once every device type is ready
(:meth:`OpenLoop.ready`: connected, first block made). ``speed`` is ``R`` over the fleet's own
rate (:func:`fleet_rate`: devices x rate x the readings the edge makes of one instant,
readings/s), or ``--speed``. :func:`transport_lines` says what each transport achieved.

Open loop means the schedule never moves: a slow receiver (acknowledgements arriving late, a
full in-flight window, a full socket) delays the sends but not the times they were due. A send
that leaves after its due time is *late* by that much (its lag), and the sends after it leave
at once until the sender has caught up. :class:`LoadStats` counts sends, readings, late sends and
the lag, and :meth:`LoadStats.report` says the rate really achieved: readings sent (and
acknowledged) per second of the schedule's window, or longer if the last send left after it.

The clock is an interface (:class:`MonoClock`: ``now()`` and ``sleep()``), so the tests drive the
schedule with a fake clock and no sleeps. :func:`metered` also feeds the live display's
per-transport counters (:class:`simulator.display.TransportCounts`), paced or not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar, cast

from contract.errors import ConfigError
from simulator.display import Progress, TransportCounts
from simulator.fleetfile import DeviceType, FleetFile
from simulator.send import Pacer
from simulator.transports import messages_per_instant, readings_per_device

__all__ = [
    "LoadReport",
    "LoadStats",
    "MonoClock",
    "OpenLoop",
    "OpenLoopPacer",
    "RealClock",
    "fleet_rate",
    "metered",
    "transport_lines",
    "transport_rates",
]

_TOLERANCE_S: Final = 0.005
"""A send due within this much is sent now (batched), and counts as on time."""

_M = TypeVar("_M", bound=tuple[Any, ...])
_P = TypeVar("_P", bound="_PartLike")


class MonoClock(Protocol):
    """A monotonic clock in seconds that can be slept on."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    """``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def fleet_rate(fleet: FleetFile) -> float:
    """The fleet's nominal readings per second, as the edge counts them: every device at its
    rate times the readings its transport makes of one instant (one per emitted sensor for
    MQTT JSON and value; a format that splits a GPS fix or a vector into numbers, or adds
    readings, makes more: :func:`~simulator.transports.readings_per_device`). Dropouts make
    the real rate a little lower."""
    return sum(transport_rates(fleet).values())


def transport_rates(fleet: FleetFile) -> dict[str, float]:
    """:func:`fleet_rate` per transport kind (``"mqtt"``, ``"serial"``...), in file order."""
    out: dict[str, float] = {}
    for t in fleet.device_types:
        kind = t.transport.kind
        out[kind] = out.get(kind, 0.0) + t.count * t.rate_hz * readings_per_device(t)
    return out


@dataclass(frozen=True)
class LoadReport:
    """What an open-loop run achieved."""

    target_rate: float
    """Readings per second the schedule asked for (nominal, see :func:`fleet_rate`)."""
    window_s: float
    """Seconds from the first due time to the end of the schedule or the last send (later)."""
    messages: int
    readings: int
    """Readings sent."""
    acked: int
    """Readings acknowledged."""
    late: int
    """Sends that left more than the tolerance (5 ms) after their due time."""
    lag_mean_s: float
    lag_max_s: float
    behind_s: float
    """The lag of the last send: how far behind the schedule the run ended."""

    @property
    def achieved_rate(self) -> float:
        """Readings sent per second."""
        return self.readings / self.window_s if self.window_s > 0 else 0.0

    @property
    def acked_rate(self) -> float:
        return self.acked / self.window_s if self.window_s > 0 else 0.0

    @property
    def ratio(self) -> float:
        """Achieved over target."""
        return self.achieved_rate / self.target_rate if self.target_rate > 0 else 0.0

    def text(self) -> str:
        late_pct = 100.0 * self.late / self.messages if self.messages else 0.0
        return (
            f"open loop: target {self.target_rate:,.0f} readings/s, achieved "
            f"{self.achieved_rate:,.0f}/s sent ({self.ratio:.1%} of target), "
            f"{self.acked_rate:,.0f}/s acknowledged over {self.window_s:.2f}s; "
            f"{self.late:,} of {self.messages:,} sends late ({late_pct:.1f}%), "
            f"lag mean {self.lag_mean_s * 1e3:.1f} ms, max {self.lag_max_s * 1e3:.1f} ms, "
            f"ended {self.behind_s * 1e3:.1f} ms behind"
        )


class LoadStats:
    """Sends, readings and lag of one open-loop run (all its device types)."""

    def __init__(self) -> None:
        self.messages = 0
        self.readings = 0
        self.late = 0
        self.lag_sum = 0.0
        self.lag_max = 0.0
        self.lag_last = 0.0
        self.first_due: float | None = None
        self.end_due = 0.0
        """The end of the schedule (the last instant's period included), when bounded."""
        self.last_send = 0.0

    def record(self, due: float, now: float, tolerance: float) -> None:
        lag = max(0.0, now - due)
        self.messages += 1
        self.lag_sum += lag
        self.lag_max = max(self.lag_max, lag)
        self.lag_last = lag
        self.last_send = now
        if lag > tolerance:
            self.late += 1

    def report(self, target_rate: float, acked: int, now: float, *, bounded: bool) -> LoadReport:
        """The report at ``now``: a bounded run's window ends with its schedule (or its last
        send, if later); an endless or interrupted one's at ``now``."""
        first = self.first_due if self.first_due is not None else now
        end = max(self.end_due, self.last_send) if bounded else now
        return LoadReport(
            target_rate=target_rate,
            window_s=max(0.0, end - first),
            messages=self.messages,
            readings=self.readings,
            acked=acked,
            late=self.late,
            lag_mean_s=self.lag_sum / self.messages if self.messages else 0.0,
            lag_max_s=self.lag_max,
            behind_s=self.lag_last,
        )


class OpenLoop:
    """The schedule of one open-loop run: a shared origin, a time scale and the stats.

    ``speed`` scales fleet time to wall time (``target_rate / fleet_rate(fleet)`` for a target
    rate). Device types ask for a pacer with :meth:`pacer`; the first send of any of them fixes
    the origin (after connecting and generating the first block of readings).
    """

    def __init__(
        self,
        speed: float,
        *,
        target_rate: float,
        clock: MonoClock | None = None,
        tolerance_s: float = _TOLERANCE_S,
    ) -> None:
        if not (speed > 0 and speed < float("inf")):
            raise ConfigError("target_rate", f"gives a time scale of {speed}; must be positive")
        self.speed = speed
        self.target_rate = target_rate
        self.clock: MonoClock = clock if clock is not None else RealClock()
        self.tolerance_s = tolerance_s
        self.stats = LoadStats()
        self._origin: tuple[float, int] | None = None
        self._end_ts: int | None = None
        self._expected = 0
        self._arrived = 0
        self._all_ready = asyncio.Event()

    @classmethod
    def for_rate(cls, fleet: FleetFile, rate: float, *, clock: MonoClock | None = None) -> OpenLoop:
        """An open loop that sends ``fleet`` at ``rate`` readings per second."""
        if not (rate > 0 and rate < float("inf")):
            raise ConfigError("target_rate", f"must be a positive number, not {rate}")
        return cls(rate / fleet_rate(fleet), target_rate=rate, clock=clock)

    @classmethod
    def at_speed(
        cls, fleet: FleetFile, speed: float, *, clock: MonoClock | None = None
    ) -> OpenLoop:
        """An open loop at the fleet file's own rates, ``speed`` times faster."""
        if not (speed > 0 and speed < float("inf")):
            raise ConfigError("speed", f"must be a positive number, not {speed}")
        return cls(speed, target_rate=fleet_rate(fleet) * speed, clock=clock)

    def wall(self, ts: int) -> float:
        """The clock time fleet timestamp ``ts`` is due at (fixes the origin on first use)."""
        if self._origin is None:
            self._origin = (self.clock.now(), ts)
        origin, first_ts = self._origin
        return origin + (ts - first_ts) / 1e6 / self.speed

    def pacer(self, first_ts: int) -> OpenLoopPacer:
        return OpenLoopPacer(self, first_ts)

    def expect(self, dtype: DeviceType, instants: range | None) -> None:
        """Note a device type that will send (:meth:`ready` waits for it) and the end of its
        bounded schedule (for the achieved rate's window)."""
        if instants is not None and len(instants) == 0:
            return
        self._expected += 1
        if instants is None:
            return
        end_ts = dtype.start_us + round(instants.stop * 1e6 / dtype.rate_hz)
        self._end_ts = end_ts if self._end_ts is None else max(self._end_ts, end_ts)

    async def ready(self) -> None:
        """A device type is connected and has its first readings made: wait until every
        expected type is, so that the schedule's origin (fixed by the first send) does not
        leave the slower ones behind from the start (a serial port the edge has not opened
        yet, a WebSocket still connecting)."""
        self._arrived += 1
        if self._arrived >= self._expected:
            self._all_ready.set()
        await self._all_ready.wait()

    def report(self, acked: int, *, bounded: bool) -> LoadReport:
        if self._end_ts is not None and self._origin is not None:
            self.stats.end_due = self.wall(self._end_ts)
        return self.stats.report(self.target_rate, acked, self.clock.now(), bounded=bounded)


class OpenLoopPacer(Pacer):
    """A :class:`~simulator.send.Pacer` on an :class:`OpenLoop`'s schedule that records lag."""

    def __init__(self, loop: OpenLoop, first_ts: int) -> None:  # no super(): its own origin
        self.loop = loop
        self.first_ts = first_ts
        self.speed = loop.speed
        self.origin = 0.0  # the loop's origin is fixed by the first wait (after connecting)
        self._begun = False

    async def wait(self, ts: int) -> None:
        loop = self.loop
        stats = loop.stats
        if not self._begun:  # the schedule's window opens at the first instant, even when the
            self._begun = True  # first message is due later (a batch of instants sent at once)
            begin = loop.wall(self.first_ts)
            if stats.first_due is None or begin < stats.first_due:
                stats.first_due = begin
        due = loop.wall(ts)
        now = loop.clock.now()
        if due - now > loop.tolerance_s:
            await loop.clock.sleep(due - now)
            now = loop.clock.now()
        stats.record(due, now, loop.tolerance_s)


class _PartLike(Protocol):
    start: int
    n: int
    counts: dict[int, int]
    """Readings per message, set when the message is generated (``Part.counts``)."""


def metered(
    dtype: DeviceType,
    parts: Iterator[tuple[_P, Iterator[_M]]],
    *,
    counts: TransportCounts | None = None,
    progress: Progress | None = None,
    open_loop: OpenLoop | None = None,
) -> Iterator[tuple[_P, Iterator[_M]]]:
    """A device type's parts, counted (sent readings into ``counts``, instants done into
    ``progress``) and, with ``open_loop``, every message given its own due time.

    A message is any tuple whose first item is its index in its part and whose last is its due
    timestamp (``None`` but on the first message of an instant): ``(msg, wire, due)`` from
    ``Part.wires`` for every transport. A part has ``start``, ``n`` and ``counts`` (readings
    per message, set as the message is generated), as ``simulator.transports.Part`` has.
    Acknowledged readings are counted by the sender's acknowledgement (``counts.acked``, in
    ``simulator.fleetrun.send_device_type``), not here.
    """
    per_instant = messages_per_instant(dtype)
    period_us = 1e6 / dtype.rate_hz
    slot_us = period_us / max(1, per_instant)
    stats = open_loop.stats if open_loop is not None else None

    def messages(part: _P, inner: Iterator[_M]) -> Iterator[_M]:
        base: int | None = None
        j = 0
        done = 0  # instants of this part counted into progress
        for m in inner:
            msg, due = m[0], m[-1]
            n = part.counts.get(msg, 0)
            if due is not None:
                base, j = due, 0
                if progress is not None:
                    upto = round((due - dtype.start_us) / period_us) - part.start + 1
                    progress.done += max(0, upto - done)
                    done = max(done, upto)
            if open_loop is not None and base is not None:
                m = cast("_M", (*m[:-1], base + round(j * slot_us)))  # noqa: PLW2901
            j += 1
            yield m
            if counts is not None:
                counts.sent += n
            if stats is not None:
                stats.readings += n
        if progress is not None:  # instants with nothing to send are done too
            progress.done += part.n - done

    for part, inner in parts:
        yield part, messages(part, inner)


def transport_lines(
    report: LoadReport, counts: Mapping[str, TransportCounts], targets: Mapping[str, float]
) -> list[str]:
    """What each transport achieved over the run's window: readings sent and acknowledged per
    second against its share of the target (``targets``: nominal readings/s per kind, times
    the run's speed), with the totals."""
    lines = []
    w = report.window_s
    for kind in sorted(counts):
        c = counts[kind]
        target = targets.get(kind, 0.0)
        sent = c.sent / w if w > 0 else 0.0
        acked = c.acked / w if w > 0 else 0.0
        ratio = f" ({sent / target:.1%} of target)" if target > 0 else ""
        lines.append(
            f"  {kind:<7} target {target:,.0f}/s, achieved {sent:,.0f}/s sent{ratio}, "
            f"{acked:,.0f}/s acknowledged; {c.sent:,} readings sent, {c.acked:,} acknowledged, "
            f"{c.errors:,} errors"
        )
    return lines
