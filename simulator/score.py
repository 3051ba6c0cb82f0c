"""Scoring anomaly detection against the simulator's ground truth, and a reference detector.

The simulator knows which readings it emitted and which it spiked (``cairn-sim truth``: the
``outliers`` filter labels them ``outlier``). A detector's verdict is a set of flagged readings,
each named by its series and timestamp (``{"device": ..., "sensor": ..., "ts": ...}``, or
``{"series": "device/sensor", "ts": ...}``, one JSON object per line); :func:`score` compares it
with the labels: true positives, false positives (flags of unlabelled readings, and of readings
never emitted, counted apart as ``unknown``), false negatives, precision, recall and F1.

:func:`detect` is a simple reference detector, a baseline for anything better. Per series and
per numeric component (a GPS fix's lat/lon/speed, a vector's axes; booleans, strings and
headings, which turn at every corner, are skipped), a reading is flagged when it is far from
both

- the median of its window (itself and ``window`` readings on each side; robust to steps): by
  more than ``threshold`` x the robust sigma of that residual around it (1.4826 x the median
  absolute deviation over ``4 x window`` readings on each side), and
- the line through its two neighbours (robust to curves and trends): by more than 0.75 x
  ``threshold`` x that residual's robust sigma.

No scale is taken below the series' resolution (its smallest step) or half its typical step
(a moving position steps by its speed; the line's scale not below 2/3 of the step, as a corner
bends it). It looks at both sides: an offline detector over a stored stream.

The hub has no anomaly detection yet; when it has, its flags go through :func:`score` as any
other detector's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from contract.errors import ConfigError
from contract.model import Value
from simulator.fleetfile import TruthRecord, load_fleet_file

__all__ = [
    "Score",
    "add_detect_args",
    "add_score_args",
    "detect",
    "detect_main",
    "read_flags",
    "read_truth",
    "score",
    "score_main",
]

Flag = tuple[str, str, int]
"""``(device, sensor, ts)`` of a flagged reading."""

_F64 = npt.NDArray[np.float64]
_MAD_SIGMA: Final = 1.4826
_PROG: Final = "cairn-sim"
DEFAULT_WINDOW: Final = 5
DEFAULT_THRESHOLD: Final = 6.0


@dataclass(frozen=True)
class Score:
    """A detector's flags against the ground-truth labels."""

    label: str
    readings: int
    """Emitted readings."""
    positives: int
    """Readings labelled ``label``."""
    flagged: int
    tp: int
    fp: int
    """Flags of readings not labelled (``unknown`` included)."""
    fn: int
    unknown: int
    """Flags naming no emitted reading."""

    @property
    def precision(self) -> float:
        """``tp / flagged`` (0 when nothing is flagged)."""
        return self.tp / self.flagged if self.flagged else 0.0

    @property
    def recall(self) -> float:
        """``tp / positives`` (1 when there is nothing to find)."""
        return self.tp / self.positives if self.positives else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    def text(self) -> str:
        return (
            f"{self.label}: {self.positives:,} labelled of {self.readings:,} readings, "
            f"{self.flagged:,} flagged: {self.tp:,} true, {self.fp:,} false "
            f"({self.unknown:,} of readings never emitted), {self.fn:,} missed; "
            f"precision {self.precision:.3f}, recall {self.recall:.3f}, F1 {self.f1:.3f}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


def score(truth: Iterable[TruthRecord], flags: Iterable[Flag], label: str = "outlier") -> Score:
    """Compare ``flags`` with the readings of ``truth`` labelled ``label``."""
    emitted: set[Flag] = set()
    positives: set[Flag] = set()
    for r in truth:
        key = (r.device, r.sensor, r.ts)
        emitted.add(key)
        if label in r.labels:
            positives.add(key)
    flagged = set(flags)
    tp = len(flagged & positives)
    return Score(
        label=label,
        readings=len(emitted),
        positives=len(positives),
        flagged=len(flagged),
        tp=tp,
        fp=len(flagged) - tp,
        fn=len(positives) - tp,
        unknown=len(flagged - emitted),
    )


class _BadFlagError(Exception):
    """A flag line that names no reading."""


def _flag_of(doc: object) -> Flag:
    if not isinstance(doc, dict):
        raise _BadFlagError("not a JSON object")
    ts = doc.get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise _BadFlagError("needs an integer 'ts' (microseconds)")
    if "series" in doc:
        series = doc["series"]
        if not isinstance(series, str) or "/" not in series:
            raise _BadFlagError("'series' must be 'device/sensor'")
        device, _, sensor = series.partition("/")
    else:
        raw_device, raw_sensor = doc.get("device"), doc.get("sensor")
        if not isinstance(raw_device, str) or not isinstance(raw_sensor, str):
            raise _BadFlagError("needs 'device' and 'sensor' strings, or 'series'")
        device, sensor = raw_device, raw_sensor
    if not device or not sensor:
        raise _BadFlagError("empty device or sensor")
    return device, sensor, ts


def read_flags(lines: Iterable[str], source: str = "flags") -> tuple[set[Flag], int]:
    """Flags from JSON lines; returns them and the number of bad lines (each reported on
    stderr with its line number; blank lines are skipped)."""
    flags: set[Flag] = set()
    bad = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            flags.add(_flag_of(json.loads(line)))
        except (ValueError, _BadFlagError) as exc:  # json.JSONDecodeError is a ValueError
            bad += 1
            print(f"{_PROG}: {source}:{n}: skipped: {exc}", file=sys.stderr)
    return flags, bad


def read_truth(lines: Iterable[str], source: str = "truth") -> Iterator[TruthRecord]:
    """Truth records from ``cairn-sim truth`` output (``ConfigError`` on a bad line)."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            yield TruthRecord(
                doc["device"],
                doc["sensor"],
                int(doc["ts"]),
                int(doc.get("true_ts", doc["ts"])),
                doc["value"],
                tuple(doc.get("labels", ())),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError("truth", f"{source}:{n} is not a truth record: {exc}") from None


# --- the reference detector -----------------------------------------------------------------


def _components(value: Value, prefix: str = "") -> Iterator[tuple[str, float]]:
    """``(name, number)`` of every numeric leaf of a value (booleans and strings left out)."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int | float):
        yield prefix, float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _components(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _components(v, f"{prefix}[{i}]")


def _window_median(x: _F64, h: int, *, with_self: bool) -> _F64:
    """The median of the ``h`` values on each side of each point, and of the point itself if
    ``with_self`` (NaN where there is nothing)."""
    n = len(x)
    padded = np.concatenate([np.full(h, np.nan), x, np.full(h, np.nan)])
    view = np.lib.stride_tricks.sliding_window_view(padded, 2 * h + 1)[:n].copy()
    if not with_self:
        view[:, h] = np.nan
    out: _F64 = np.full(n, np.nan)
    ok = ~np.all(np.isnan(view), axis=1)
    if ok.any():
        out[ok] = np.nanmedian(view[ok], axis=1)
    return out


def _outlying(resid: _F64, h: int, threshold: float, floor: _F64) -> npt.NDArray[np.bool_]:
    """Where a residual exceeds ``threshold`` x its neighbours' robust sigma (at least
    ``floor``)."""
    centred = resid - _window_median(resid, h, with_self=False)
    scale = _MAD_SIGMA * _window_median(np.abs(centred), h, with_self=False)
    scale = np.fmax(np.nan_to_num(scale, nan=0.0), floor)
    with np.errstate(invalid="ignore"):
        hit: npt.NDArray[np.bool_] = (np.abs(centred) > threshold * scale) & (scale > 0)
    return hit


def _flag_component(x: _F64, h: int, threshold: float) -> npt.NDArray[np.bool_]:
    """Spikes of one component: a reading far from the median of its window (robust to
    steps) and far from the line through its two neighbours (robust to curves)."""
    steps = np.diff(np.unique(x[~np.isnan(x)]))
    resolution = float(steps.min()) if len(steps) else 0.0
    wide = 4 * h  # the scales are estimated over a wider window than the medians
    # a moving value (a vehicle's position) steps by about its speed: half the typical step
    # is the least scale, so a corner is not a spike
    moves: _F64 = np.full(len(x), np.nan)
    moves[1:] = np.abs(np.diff(x))
    floor = np.fmax(np.nan_to_num(0.5 * _window_median(moves, wide, with_self=True)), resolution)
    from_median = x - _window_median(x, h, with_self=True)
    from_line: _F64 = np.full(len(x), np.nan)
    from_line[1:-1] = x[1:-1] - (x[:-2] + x[2:]) / 2.0
    # the line vetoes curves and trends: a lower threshold over noise, a higher floor
    return _outlying(from_median, wide, threshold, floor) & _outlying(
        from_line, wide, 0.75 * threshold, floor / 0.75
    )


def detect(
    truth: Iterable[TruthRecord],
    *,
    window: int = DEFAULT_WINDOW,
    threshold: float = DEFAULT_THRESHOLD,
) -> list[Flag]:
    """The reference detector's flags over a stream of readings (see the module doc)."""
    if window < 1:
        raise ConfigError("window", "must be at least 1 reading on each side")
    if not (math.isfinite(threshold) and threshold > 0):
        raise ConfigError("threshold", f"must be a positive number, not {threshold}")
    series: dict[tuple[str, str], list[tuple[int, Value]]] = {}
    for r in truth:
        series.setdefault((r.device, r.sensor), []).append((r.ts, r.value))
    flags: list[Flag] = []
    for (device, sensor), points in series.items():
        points.sort(key=lambda p: p[0])
        columns: dict[str, list[float]] = {}
        for k, (_ts, value) in enumerate(points):
            for name, v in _components(value):
                col = columns.setdefault(name, [math.nan] * len(points))
                col[k] = v
        hit = np.zeros(len(points), dtype=bool)
        for name, col in columns.items():
            if name.rsplit(".", 1)[-1] == "heading":
                continue  # a vehicle's heading turns at corners: not a spike to find
            hit |= _flag_component(np.array(col, dtype=np.float64), window, threshold)
        flags.extend((device, sensor, points[k][0]) for k in np.flatnonzero(hit).tolist())
    return flags


# --- command line -------------------------------------------------------------------------


def _add_truth_source(
    p: argparse.ArgumentParser, *, positional: bool, start: Callable[[str], int]
) -> None:
    if positional:
        p.add_argument("fleet_file", help="the fleet file (TOML)")
    else:
        p.add_argument(
            "--fleet", dest="fleet_file", help="the fleet file (TOML) whose truth to use"
        )
        p.add_argument("--truth", help="or: a file of `cairn-sim truth` output")
    p.add_argument("--seconds", type=float, help="seconds of fleet time from instant 0")
    p.add_argument(
        "--start", type=start, default=None, help="timestamp of instant 0 (default: the file's)"
    )


def add_score_args(p: argparse.ArgumentParser, start: Callable[[str], int] = int) -> None:
    """``cairn-sim score``'s arguments (``start`` parses ``--start``)."""
    _add_truth_source(p, positional=False, start=start)
    p.add_argument("--flags", required=True, help="flagged readings, JSON lines ('-': stdin)")
    p.add_argument("--label", default="outlier", help="the label to score against (outlier)")
    p.add_argument("--json", action="store_true", help="print the score as one JSON object")


def add_detect_args(p: argparse.ArgumentParser, start: Callable[[str], int] = int) -> None:
    """``cairn-sim detect``'s arguments (``start`` parses ``--start``)."""
    _add_truth_source(p, positional=True, start=start)
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="neighbours on each side")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="x robust sigma")
    p.add_argument("-o", "--output", help="write the flags here (default: stdout)")
    p.add_argument("--score", action="store_true", help="print the score instead of the flags")


def _truth(args: argparse.Namespace) -> list[TruthRecord]:
    truth_file = getattr(args, "truth", None)
    if truth_file is not None:
        if args.fleet_file is not None:
            raise ConfigError("truth", "give --fleet or --truth, not both")
        try:
            with Path(truth_file).open(encoding="utf-8") as fh:
                return list(read_truth(fh, truth_file))
        except OSError as exc:
            raise ConfigError("truth", f"cannot read {truth_file}: {exc}") from None
    if args.fleet_file is None:
        raise ConfigError("fleet", "give --fleet FLEETFILE --seconds N, or --truth FILE")
    if args.seconds is None or not (math.isfinite(args.seconds) and args.seconds > 0):
        raise ConfigError("seconds", "give --seconds, a positive number of seconds")
    fleet = load_fleet_file(args.fleet_file)
    if args.start is not None:
        fleet = fleet.with_start(args.start)
    return list(fleet.truth(args.seconds))


def score_main(args: argparse.Namespace) -> int:
    """``cairn-sim score``: print a detector's precision, recall and F1."""
    truth = _truth(args)
    try:
        if args.flags == "-":
            flags, bad = read_flags(sys.stdin, "stdin")
        else:
            with Path(args.flags).open(encoding="utf-8") as fh:
                flags, bad = read_flags(fh, args.flags)
    except OSError as exc:
        raise ConfigError("flags", f"cannot read {args.flags}: {exc}") from None
    result = score(truth, flags, args.label)
    if args.json:
        print(json.dumps({**result.as_dict(), "bad_lines": bad}))
    else:
        print(f"{_PROG}: {result.text()}" + (f"; {bad} bad flag lines skipped" if bad else ""))
    return 0


def detect_main(args: argparse.Namespace) -> int:
    """``cairn-sim detect``: the reference detector's flags (or score) over a fleet's stream."""
    truth = _truth(args)
    flags = detect(truth, window=args.window, threshold=args.threshold)
    if args.score:
        print(f"{_PROG}: reference detector (window {args.window}, threshold {args.threshold:g})")
        for label in ("outlier", "stuck"):
            print(f"{_PROG}: {score(truth, flags, label).text()}")
        return 0
    lines = "".join(
        json.dumps({"device": d, "sensor": s, "ts": ts}, separators=(",", ":")) + "\n"
        for d, s, ts in flags
    )
    if args.output:
        Path(args.output).write_text(lines, encoding="utf-8")
        print(f"{_PROG}: {len(flags):,} flags written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(lines)
    return 0
