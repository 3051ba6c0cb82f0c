"""``cairn-sim``: simulated sensor fleets over MQTT (also ``python -m simulator``).

Subcommands:

- ``run``: send a seeded fleet to an MQTT broker, paced (real time, or ``--speed`` times faster)
  or ``--fast``; prints a live line and a summary of what the broker acknowledged;
- ``run FLEETFILE``: the same for a fleet file (TOML: device types, see ``simulator.fleetfile``);
- ``preview``: print the first readings of a fleet (or of each device type of a fleet file);
- ``truth FLEETFILE``: every reading a fleet file emits in its first seconds, with ground-truth
  labels, as JSON lines;
- ``plot FLEETFILE``: a PNG of a fleet file's first hours, one panel per generator;
- ``score``, ``detect``: score a detector's flags against ground truth, run the reference
  detector (``simulator/score.py``);
- ``demo``, ``bench``: a whole Cairn on this machine, and its benchmark (``simulator/demo.py``,
  ``simulator/bench.py``; each defines ``add_<name>_args(parser)`` and ``main(args) -> int``,
  imported only when its subcommand is used).

Errors print one line, ``cairn-sim: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import math
import sys
import time
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from types import ModuleType
from typing import Any, Final, NoReturn

from contract.errors import CairnError, ConfigError
from simulator.fleet import Fleet, FleetSpec
from simulator.fleetfile import load_fleet_file, preview_text
from simulator.generators import kind_info
from simulator.score import add_detect_args, add_score_args, detect_main, score_main
from simulator.send import MODES, Ledger, send_fleet
from simulator.watch import (
    add_load_args,
    check_load_args,
    per_second,
    run_file_watched,
    summary,
    supervise,
)

__all__ = ["build_parser", "main"]

_PROG: Final = "cairn-sim"
_LOG_EVERY_S: Final = 10.0
_PLUGINS: Final = {
    "demo": "run a whole Cairn here: NATS, Mosquitto, hub, edge and a live fleet",
    "bench": "benchmark the whole path on this machine",
}


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line: ``cairn-sim: <problem> (see --help)``, status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{_PROG}: {message} (see {self.prog} --help)\n")


def _plugin(name: str) -> ModuleType | None:
    """``simulator.<name>`` if it is there, else ``None``."""
    try:
        return importlib.import_module(f"simulator.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"simulator.{name}":
            return None
        raise


def _start_us(text: str) -> int:
    if text == "now":
        return time.time_ns() // 1000
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not 'now', microseconds or an ISO 8601 time"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def _add_fleet_args(p: argparse.ArgumentParser, devices: int, sensors: int) -> None:
    p.add_argument(
        "fleet_file",
        nargs="?",
        help="a fleet file (TOML, see docs/simulator.md); without it, a fleet of --devices x "
        "--sensors",
    )
    p.set_defaults(fleet_defaults={"devices": devices, "sensors": sensors})
    p.add_argument("--devices", type=int, help=f"devices (default {devices})")
    p.add_argument("--sensors", type=int, help=f"sensors per device (default {sensors})")
    p.add_argument("--rate", type=float, help="instants per second per device (default 1)")
    p.add_argument("--seed", type=int, help="fleet seed (default 1)")
    p.add_argument("--prefix", help="device id prefix (default dev)")


_FLEET_OPTS: Final = {
    "devices": None,
    "sensors": None,
    "rate": 1.0,
    "seed": 1,
    "prefix": "dev",
    "mode": "json",
    "instants_per_message": 1,
    "qos": 1,
}
"""Options that shape a built-in fleet (a fleet file says these itself), with defaults."""


def _resolve_fleet_opts(args: argparse.Namespace) -> None:
    """Fill defaults; with a fleet file, refuse the options the file decides."""
    for name, default in _FLEET_OPTS.items():
        if not hasattr(args, name):
            continue
        given = getattr(args, name)
        if args.fleet_file is not None and given is not None:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(name, f"{flag} does not go with a fleet file: the file sets it")
        if given is None:
            value = args.fleet_defaults.get(name, default)
            setattr(args, name, value)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; ``demo``/``bench`` get their arguments only when ``argv`` names them."""
    parser = _Parser(prog=_PROG, description="Simulated sensor fleets for Cairn.")
    parser.add_argument(
        "--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default) or ERROR"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="send a seeded fleet to an MQTT broker")
    run.add_argument(
        "--mqtt",
        default="mqtt://127.0.0.1:1883",
        help="broker URL (mqtts://host:port for TLS: a fleet file's ca_file, or the system CAs)",
    )
    _add_fleet_args(run, devices=50, sensors=3)
    length = run.add_mutually_exclusive_group()
    length.add_argument("--count", type=int, help="instants to send (default: endless)")
    length.add_argument("--duration", type=float, help="seconds of fleet time to send")
    run.add_argument("--fast", action="store_true", help="as fast as the broker acks (no pacing)")
    run.add_argument("--speed", type=float, default=1.0, help="paced time scale (default 1)")
    run.add_argument("--mode", choices=MODES, help="payload layout (json)")
    run.add_argument(
        "--instants-per-message",
        type=int,
        help="json mode: instants per message, sent as a JSON array when > 1 (default 1)",
    )
    run.add_argument("--qos", type=int, choices=(0, 1), help="MQTT QoS (default 1)")
    run.add_argument("--client-id", default="cairn-sim", help="MQTT client id")
    add_load_args(run)
    run.add_argument(
        "--start",
        type=_start_us,
        default=None,
        help="timestamp of instant 0: 'now', ISO 8601 (UTC) or microseconds (default: now, "
        "or for --fast with a length, so that the last instant is now: an edge flags "
        "timestamps more than an hour ahead of its clock)",
    )

    preview = sub.add_parser("preview", help="print a fleet's first readings")
    _add_fleet_args(preview, devices=2, sensors=8)
    preview.add_argument("-n", type=int, default=5, help="instants per device (default 5)")
    preview.add_argument(
        "--start",
        type=_start_us,
        default=None,
        help="timestamp of instant 0 (default: the fleet file's start, or 2026-01-01T00:00:00Z)",
    )

    truth = sub.add_parser(
        "truth", help="print, as JSON lines, every reading a fleet file emits, with labels"
    )
    truth.add_argument("fleet_file", help="the fleet file (TOML)")
    truth.add_argument(
        "--seconds", type=float, required=True, help="seconds of fleet time from instant 0"
    )
    truth.add_argument(
        "--start", type=_start_us, default=None, help="timestamp of instant 0 (default: the file's)"
    )

    plot = sub.add_parser("plot", help="render a PNG of a fleet file's first hours")
    plot.add_argument("fleet_file", help="the fleet file (TOML)")
    plot.add_argument("-o", "--output", required=True, help="PNG file to write")
    plot.add_argument("--hours", type=float, default=24.0, help="hours to plot (default 24)")
    plot.add_argument(
        "--start", type=_start_us, default=None, help="timestamp of instant 0 (default: the file's)"
    )

    score_p = sub.add_parser(
        "score", help="precision/recall of a detector's flagged readings against ground truth"
    )
    add_score_args(score_p, _start_us)
    detect_p = sub.add_parser("detect", help="run the reference outlier detector over a fleet")
    add_detect_args(detect_p, _start_us)

    wanted = next((a for a in argv if a in {"run", "preview", "truth", "plot", *_PLUGINS}), None)
    for name, help_text in _PLUGINS.items():
        p = sub.add_parser(name, help=help_text)
        if name == wanted:
            module = _plugin(name)
            if module is not None:
                getattr(module, f"add_{name}_args")(p)
    return parser


def _spec(args: argparse.Namespace, start_us: int | None = None) -> FleetSpec:
    return FleetSpec(
        seed=args.seed,
        devices=args.devices,
        sensors=args.sensors,
        rate_hz=args.rate,
        start_us=args.start if start_us is None else start_us,
        device_prefix=args.prefix,
    )


def _iso(ts_us: int) -> str:
    seconds, micros = divmod(ts_us, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{micros:06d}Z"


def _preview(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ConfigError("n", "must be at least 1")
    _resolve_fleet_opts(args)
    if args.fleet_file is not None:
        fleet_file = load_fleet_file(args.fleet_file)
        if args.start is not None:
            fleet_file = fleet_file.with_start(args.start)
        print(preview_text(fleet_file, args.n), end="")
        return 0
    if args.start is None:
        args.start = _start_us("2026-01-01T00:00:00Z")
    fleet = Fleet(_spec(args))
    spec = fleet.spec
    print(
        f"fleet seed {spec.seed}: {spec.devices} devices x {spec.sensors} sensors "
        f"at {spec.rate_hz:g} Hz from {_iso(spec.start_us)}\n"
    )
    print(f"{'sensor':<10} {'kind':<12} {'unit':<5} values")
    for key, kind in zip(fleet.sensor_keys, fleet.sensor_kinds, strict=True):
        info = kind_info(kind)
        quantum = f" ({10.0**-info.decimals:g})" if info.decimals is not None else ""
        print(f"{key:<10} {kind:<12} {info.unit:<5} {info.type}{quantum}: {info.description}")
    stamps = [_iso(ts) for ts in fleet.timestamps(0, args.n)]
    for d, device in enumerate(fleet.device_ids):
        columns = [
            [
                str(v).lower() if isinstance(v, bool) else repr(v)
                for v in fleet.values(d, s, 0, args.n)
            ]
            for s in range(spec.sensors)
        ]
        widths = [
            max(len(k), *(len(v) for v in col))
            for k, col in zip(fleet.sensor_keys, columns, strict=True)
        ]
        print(f"\n{device}")
        print(
            f"{'ts':<27}  "
            + "  ".join(f"{k:>{w}}" for k, w in zip(fleet.sensor_keys, widths, strict=True))
        )
        for k, ts in enumerate(stamps):
            print(
                f"{ts:<27}  "
                + "  ".join(f"{col[k]:>{w}}" for col, w in zip(columns, widths, strict=True))
            )
    return 0


def _instants(args: argparse.Namespace) -> range | None:
    """The instants ``run`` sends: ``--count``, ``--duration`` x ``--rate``, or endless."""
    if args.count is not None:
        if args.count < 0:
            raise ConfigError("count", "must not be negative")
        return range(args.count)
    if args.duration is None:
        return None
    if not (math.isfinite(args.duration) and args.duration > 0):
        raise ConfigError("duration", "must be a positive number of seconds")
    if not (math.isfinite(args.rate) and args.rate > 0):
        raise ConfigError("rate_hz", f"must be a positive number, not {args.rate}")
    return range(max(1, math.ceil(args.duration * args.rate)))


async def _run(args: argparse.Namespace) -> int:
    _resolve_fleet_opts(args)
    check_load_args(args)
    if args.fleet_file is not None:
        return await _run_file(args)
    instants = _instants(args)
    if args.start is None:
        start = time.time_ns() // 1000
        spec = _spec(args, start)  # validates the rate before it is used here
        if args.fast and instants is not None:
            start -= round(max(0, len(instants) - 1) * 1e6 / spec.rate_hz)
        args.start = max(0, start)
    fleet = Fleet(_spec(args))
    ledger = Ledger()
    sender = send_fleet(
        fleet,
        args.mqtt,
        instants=instants,
        mode=args.mode,
        instants_per_message=args.instants_per_message,
        paced=not args.fast,
        speed=args.speed,
        qos=args.qos,
        ledger=ledger,
        client_id=args.client_id,
    )
    what = "endless" if instants is None else f"{len(instants):,} instants"
    head = (
        f"{fleet.spec.devices} devices x {fleet.spec.sensors} sensors, {what}, "
        f"{'fast' if args.fast else f'paced x{args.speed:g}'}, {args.mode} to {args.mqtt}"
    )
    return await _watch(sender, ledger, head)


async def _run_file(args: argparse.Namespace) -> int:
    fleet = load_fleet_file(args.fleet_file)
    if args.count is not None and args.count < 0:
        raise ConfigError("count", "must not be negative")
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise ConfigError("duration", "must be a positive number of seconds")
    if args.start is None:
        start = time.time_ns() // 1000
        if args.fast and (args.count is not None or args.duration is not None):
            longest = max(
                (args.count if args.count is not None else t.instants_in(args.duration)) - 1
                for t in fleet.device_types
            )
            start -= max(round(max(0, longest) * 1e6 / t.rate_hz) for t in fleet.device_types)
        args.start = max(0, start)
    fleet = fleet.with_start(args.start)
    return await run_file_watched(fleet, args)


async def _watch(coro: Coroutine[Any, Any, Ledger], ledger: Ledger, head: str) -> int:
    """Run a sender with a live status line (a log line every 10 s when not on a terminal)."""
    live = sys.stdout.isatty()
    print(f"{_PROG}: {head}", flush=True)
    lines = 0

    def tick(elapsed: float) -> None:
        nonlocal lines
        status = (
            f"{elapsed:7.1f}s  acked {ledger.messages:>11,} messages "
            f"{ledger.count:>12,} readings ({per_second(ledger.count, elapsed)})"
        )
        if live:  # one line, rewritten every second
            sys.stdout.write(f"\r{status}   ")
            sys.stdout.flush()
        elif elapsed >= _LOG_EVERY_S * (lines + 1):
            lines += 1  # a log, not a terminal: a line every 10 s
            print(status, flush=True)

    interrupted, elapsed = await supervise(coro, tick)
    if live:
        print()
    print(summary(ledger, elapsed, interrupted=interrupted))
    return 0


def _truth(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise ConfigError("seconds", "must be a positive number of seconds")
    fleet = load_fleet_file(args.fleet_file)
    if args.start is not None:
        fleet = fleet.with_start(args.start)
    out = sys.stdout
    for record in fleet.truth(args.seconds):
        out.write(record.json() + "\n")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from simulator.plot import plot_fleet  # noqa: PLC0415 - matplotlib only when plotting

    if not (math.isfinite(args.hours) and 0 < args.hours <= 24 * 31):
        raise ConfigError("hours", "must be in (0, 744]")
    fleet = load_fleet_file(args.fleet_file)
    if args.start is not None:
        fleet = fleet.with_start(args.start)
    panels = plot_fleet(fleet, args.output, hours=args.hours)
    print(f"{_PROG}: wrote {args.output} ({panels} panels, {args.hours:g} h)")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return asyncio.run(_run(args))
    if args.command == "preview":
        return _preview(args)
    if args.command == "truth":
        return _truth(args)
    if args.command == "plot":
        return _plot(args)
    if args.command in {"score", "detect"}:
        return score_main(args) if args.command == "score" else detect_main(args)
    module = _plugin(args.command)
    if module is None:
        raise _UnavailableError(args.command)
    return int(module.main(args))


class _UnavailableError(CairnError):
    def __init__(self, command: str) -> None:
        super().__init__(f"'{command}' is not available here (simulator/{command}.py is missing)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cairn-sim``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        print(f"{_PROG}: unknown log level {args.log_level!r}", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args)
    except CairnError as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
