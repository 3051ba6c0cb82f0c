"""``cairn-sim run FLEETFILE``: run a fleet file under the live display, closed or open loop.

The glue between the command line (``simulator.cli``), the senders (``simulator.fleetrun``),
the display (``simulator.display``) and open-loop pacing (``simulator.pacing``):
:func:`run_file_watched` sends a fleet file with a display of rates per transport (and a
progress bar when bounded), then prints what was acknowledged, and for an open-loop run
(``--target-rate R`` or ``--open-loop``) the rate it really achieved and its lag.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

from contract.errors import ConfigError
from simulator.display import Display, Progress, TransportCounts
from simulator.fleetfile import FleetFile
from simulator.fleetrun import send_fleet_file, spans
from simulator.pacing import LoadReport, OpenLoop, transport_lines, transport_rates
from simulator.send import Ledger
from simulator.transports import destination

__all__ = [
    "add_load_args",
    "check_load_args",
    "destinations",
    "per_second",
    "run_file_watched",
    "spans",
    "summary",
    "supervise",
]

_PROG: Final = "cairn-sim"


def add_load_args(run: argparse.ArgumentParser) -> None:
    """``run``'s open-loop options."""
    run.add_argument(
        "--target-rate",
        type=float,
        help="open-loop load (fleet file): send at this many readings/s, by the clock whatever "
        "the receiver's pace, and report the rate achieved and the lag",
    )
    run.add_argument(
        "--open-loop",
        action="store_true",
        help="open-loop load at the fleet file's own rates (times --speed)",
    )


def check_load_args(args: argparse.Namespace) -> None:
    """Refuse open-loop options that do not go together (``ConfigError``)."""
    rate = getattr(args, "target_rate", None)
    open_loop = getattr(args, "open_loop", False)
    if rate is None and not open_loop:
        return
    flag = "--target-rate" if rate is not None else "--open-loop"
    if args.fleet_file is None:
        raise ConfigError("target_rate", f"{flag} needs a fleet file")
    if args.fast:
        raise ConfigError(
            "fast", f"--fast does not go with {flag}: open loop is paced by the clock"
        )
    if rate is not None:
        if open_loop:
            raise ConfigError("open_loop", "--target-rate is open loop already; drop --open-loop")
        if args.speed != 1.0:
            raise ConfigError("speed", "--target-rate sets the time scale; drop --speed")
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError("target_rate", f"must be a positive number of readings/s, not {rate}")


def destinations(fleet: FleetFile, mqtt_url: str) -> str:
    """Where each transport goes, for the header: ``mqtt mqtt://..., serial /dev/...``."""
    seen: dict[tuple[str, str], None] = {}
    for t in fleet.device_types:
        seen[(t.transport.kind, destination(t, mqtt_url))] = None
    return ", ".join(f"{kind} {where}" for kind, where in seen)


async def run_file_watched(
    fleet: FleetFile, args: argparse.Namespace, *, ledger: Ledger | None = None
) -> int:
    """Send ``fleet`` as ``args`` say, under the live display; print the summary (and, open
    loop, the rate achieved overall and per transport). ``ledger``: filled, if given."""
    open_loop: OpenLoop | None = None
    if args.target_rate is not None:
        open_loop = OpenLoop.for_rate(fleet, args.target_rate)
    elif args.open_loop:
        open_loop = OpenLoop.at_speed(fleet, args.speed)
    which = spans(fleet, args.duration, args.count)
    bounded = all(s is not None for s in which.values())
    progress = Progress(sum(len(s) for s in which.values() if s is not None)) if bounded else None
    counters: dict[str, TransportCounts] = {
        t.transport.kind: TransportCounts() for t in fleet.device_types
    }
    ledger = ledger if ledger is not None else Ledger()
    sender = send_fleet_file(
        fleet,
        args.mqtt,
        seconds=args.duration,
        count=args.count,
        paced=not args.fast,
        speed=args.speed,
        ledger=ledger,
        client_id=args.client_id,
        counters=counters,
        done=progress,
        open_loop=open_loop,
    )
    devices = sum(t.count for t in fleet.device_types)
    if args.count is not None:
        what = f"{args.count:,} instants per device"
    elif args.duration is not None:
        what = f"{args.duration:g} s"
    else:
        what = "endless"
    if open_loop is not None:
        pace = f"open loop at {open_loop.target_rate:,.0f} readings/s (x{open_loop.speed:g})"
    else:
        pace = "fast" if args.fast else f"paced x{args.speed:g}"
    print(
        f"{_PROG}: {args.fleet_file}: {len(fleet.device_types)} device types, {devices:,} "
        f"devices, {what}, {pace}, to {destinations(fleet, args.mqtt)}",
        flush=True,
    )
    display = Display(sys.stdout, counters, progress, live=sys.stdout.isatty())
    interrupted, elapsed = await supervise(sender, display.tick)
    display.tick(elapsed, final=True)
    print(summary(ledger, elapsed, interrupted=interrupted))
    if open_loop is not None:
        report: LoadReport = open_loop.report(ledger.count, bounded=bounded and not interrupted)
        print(f"{_PROG}: {report.text()}")
        targets = {k: r * open_loop.speed for k, r in transport_rates(fleet).items()}
        for line in transport_lines(report, counters, targets):
            print(f"{_PROG}: {line}")
    return 0


async def supervise(
    coro: Coroutine[Any, Any, Ledger], tick: Callable[[float], None]
) -> tuple[bool, float]:
    """Run a sender as a task that SIGINT and SIGTERM cancel, calling ``tick(elapsed)`` about
    once a second while it runs; returns whether it was interrupted, and the seconds it ran."""
    started = time.monotonic()
    task = asyncio.create_task(coro, name="send-fleet")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    interrupted = False
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=1.0)
            if not task.done():
                tick(time.monotonic() - started)
        await task
    except asyncio.CancelledError:
        interrupted = True
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return interrupted, time.monotonic() - started


def summary(ledger: Ledger, elapsed: float, *, interrupted: bool) -> str:
    """The closing line: what was acknowledged, in how long, at what rates."""
    return (
        f"{_PROG}: {'interrupted; ' if interrupted else ''}{ledger.messages:,} messages, "
        f"{ledger.count:,} readings acknowledged in {elapsed:.1f}s "
        f"({per_second(ledger.messages, elapsed)} messages, "
        f"{per_second(ledger.count, elapsed)} readings)"
    )


def per_second(n: float, seconds: float) -> str:
    """``1,234/s``, or ``-`` for no time."""
    return f"{n / seconds:,.0f}/s" if seconds > 0 else "-"
