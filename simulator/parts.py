"""Composable simulator parts: generators, filters and joins over blocks of instants.

A *stream* is one sensor of one device: a generator, then filters, or a join of earlier
streams, then filters. Evaluating a stream over the instants ``[start, start + n)`` gives a
:class:`Column`: one or more float *components* (a scalar has one, a GPS fix four, a 3-axis
vector three), which instants are emitted (dropouts are not) and ground-truth labels (outlier
spikes, stuck-at faults). Everything is random access: the value at instant ``i`` depends only
on the stream's seed path, the filter's place in the chain and ``i`` (per-instant draws are cut
in chunks of :data:`~simulator.generators.CHUNK` instants, as in ``simulator.generators``), so
a stream is an endless iterator that can be resumed or regenerated anywhere.

Seed paths: a stream's generator uses ``path = (fleet seed, type code, device index, stream
code)`` through :func:`simulator.generators.generate` (the eight kinds there) or the same
``_Series`` machinery (the kinds here); filter ``f`` draws from ``(*path, FILTER, f, purpose,
chunk)``. Codes are CRC-32s of names, so adding a device type, a device or a stream changes
no other stream.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from contract.errors import ConfigError
from contract.model import Value
from simulator.generators import (
    _HOUR,
    _REF_S,
    _TWO_PI,
    _WALK,
    CHUNK,
    KINDS,
    _rng,
    _Series,
    generate,
    instant_ts,
    kind_info,
)

__all__ = [
    "FILTERS",
    "GENERATORS",
    "JOINS",
    "LABEL_OUTLIER",
    "LABEL_STUCK",
    "Column",
    "Stream",
    "label_names",
    "uniform_at",
]

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_U8 = npt.NDArray[np.uint8]
_B = npt.NDArray[np.bool_]

LABEL_OUTLIER: Final = 0x01
"""Ground truth: an injected spike (``outliers`` filter)."""
LABEL_STUCK: Final = 0x02
"""Ground truth: the sensor is stuck (``stuck`` filter)."""
_LABEL_NAMES: Final = ((LABEL_OUTLIER, "outlier"), (LABEL_STUCK, "stuck"))

_FILTER: Final = 0xF117E4
_EARTH_R: Final = 6_371_000.0


def label_names(bits: int) -> list[str]:
    """``["outlier", "stuck"]``-style names of a label bit set."""
    return [name for bit, name in _LABEL_NAMES if bits & bit]


def code(name: str) -> int:
    """The seed-path word of a name (device type, stream)."""
    return zlib.crc32(name.encode())


def uniform_at(words: Sequence[int], idx: _I64, k: int = 1) -> _F64:
    """Uniforms in [0, 1), shape ``(len(idx), k)``: row ``j`` belongs to index ``idx[j]``.

    Index ``i`` takes draws ``k*(i % CHUNK) .. +k`` of the stream ``(*words, i // CHUNK)``:
    the same whatever else is asked for. ``idx`` need not be sorted or contiguous.
    """
    out = np.empty((len(idx), k), dtype=np.float64)
    if len(idx) == 0:
        return out
    chunks = idx // CHUNK
    for c in np.unique(chunks).tolist():
        sel = chunks == c
        offsets = idx[sel] - c * CHUNK
        # the first m rows of random((CHUNK, k)) are random((m, k)): draw only what is needed
        draws = _rng(*words, int(c)).random((int(offsets.max()) + 1, k))
        out[sel] = draws[offsets]
    return out


def normal_at(words: Sequence[int], idx: _I64, k: int = 1) -> _F64:
    """Standard normals, as :func:`uniform_at` (Box-Muller on two uniforms per value)."""
    u = uniform_at(words, idx, 2 * k)
    r = np.sqrt(-2.0 * np.log1p(-u[:, :k]))  # 1 - u in (0, 1]
    return r * np.cos(_TWO_PI * u[:, k:])


# --- columns ------------------------------------------------------------------------------


@dataclass
class Column:
    """A stream over ``n`` instants: components, what is emitted, labels, how to build values."""

    names: tuple[str, ...]
    """Component names: ``("value",)`` for a scalar."""
    x: _F64
    """Shape ``(n, len(names))``; booleans are 0.0/1.0."""
    types: tuple[str, ...]
    """Per component: ``"float"``, ``"int"`` or ``"bool"``."""
    decimals: tuple[int, ...]
    """Per float component: values are rounded to this many decimals when formatted."""
    emitted: _B
    labels: _U8
    layout: Any = None
    """How values are built from formatted components: ``None`` (a scalar), ``"object"`` (a
    dict by component name), ``"list"``, or a list of ``(field, layout, width)`` (a document of
    several streams)."""

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def copy(self) -> Column:
        return Column(
            self.names,
            self.x.copy(),
            self.types,
            self.decimals,
            self.emitted.copy(),
            self.labels.copy(),
            self.layout,
        )

    def formatted(self) -> list[list[Value]]:
        """Per component, the Python values (exactly quantised floats, ints, bools)."""
        out: list[list[Value]] = []
        for j, (typ, dec) in enumerate(zip(self.types, self.decimals, strict=True)):
            col = self.x[:, j]
            if typ == "bool":
                out.append((col > 0.5).tolist())
            elif typ == "int":
                out.append((np.rint(col) + 0.0).astype(np.int64).tolist())
            else:
                scale = 10.0**dec
                out.append(((np.rint(col * scale) + 0.0) / scale).tolist())
        return out

    def values(self) -> list[Value]:
        """The value at each instant (also at instants that are not emitted)."""
        comps = self.formatted()
        return [_build(self.layout, [c[i] for c in comps]) for i in range(self.n)]


def _build(layout: Any, parts: list[Value]) -> Value:
    if layout is None:
        return parts[0]
    if layout == "list":
        return parts
    if isinstance(layout, tuple):  # ("object", names)
        return dict(zip(layout[1], parts, strict=True))
    out: dict[str, Value] = {}
    pos = 0
    for name, sub, width in layout:
        out[name] = _build(sub, parts[pos : pos + width])
        pos += width
    return out


# --- generators ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    """Where and when a stream is evaluated."""

    path: tuple[int, ...]
    start: int
    n: int
    start_us: int
    rate_hz: float

    def ts_us(self) -> _I64:
        return instant_ts(self.start_us, self.rate_hz, np.arange(self.start, self.start + self.n))

    def at(self, start: int, n: int) -> Ctx:
        return Ctx(self.path, start, n, self.start_us, self.rate_hz)


_Gen = Callable[[Ctx, Mapping[str, Any]], Column]


def _column(
    names: tuple[str, ...], x: _F64, types: tuple[str, ...], decimals: tuple[int, ...]
) -> Column:
    n = x.shape[0]
    layout = None if len(names) == 1 else ("object", names)
    return Column(names, x, types, decimals, np.ones(n, np.bool_), np.zeros(n, np.uint8), layout)


def _basic(kind: str) -> _Gen:
    info = kind_info(kind)

    def gen(ctx: Ctx, _params: Mapping[str, Any]) -> Column:
        values = generate(
            kind, ctx.path, ctx.start, ctx.n, start_us=ctx.start_us, rate_hz=ctx.rate_hz
        )
        x = np.asarray(values, dtype=np.float64).reshape(-1, 1)
        return _column(("value",), x, (info.type,), (info.decimals or 0,))

    return gen


def _series(kind: str, ctx: Ctx) -> _Series:
    return _Series(kind, ctx.path, ctx.start, ctx.n, ctx.ts_us())


def _route(ctx: Ctx, params: Mapping[str, Any]) -> _F64:
    """Waypoints ``(m, 2)`` of lat/lon: given, or a seeded loop around ``center``."""
    if "route" in params:
        return np.asarray(params["route"], dtype=np.float64)
    lat0, lon0 = params.get("center", (48.8566, 2.3522))
    radius = float(params.get("radius_m", 2000.0))
    rng = _rng(*ctx.path, code("gps-route"))
    m = 7
    angles = np.sort(rng.random(m)) * _TWO_PI
    radii = radius * (0.5 + 0.5 * rng.random(m))
    north = radii * np.cos(angles)
    east = radii * np.sin(angles)
    lat = lat0 + np.degrees(north / _EARTH_R)
    lon = lon0 + np.degrees(east / (_EARTH_R * math.cos(math.radians(lat0))))
    return np.stack([lat, lon], axis=1)


def _gps(ctx: Ctx, params: Mapping[str, Any]) -> Column:
    """A vehicle driving round a closed route at a varying speed: lat, lon, speed, heading."""
    s = _series("gps", ctx)
    pts = _route(ctx, params)
    lat0 = float(pts[:, 0].mean())
    cos0 = math.cos(math.radians(lat0))
    loop = np.concatenate([pts, pts[:1]])
    ny = np.radians(loop[:, 0] - lat0) * _EARTH_R
    ex = np.radians(loop[:, 1] - loop[0, 1]) * _EARTH_R * cos0
    seg = np.hypot(np.diff(ex), np.diff(ny))
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    length = float(cum[-1])
    v = float(params.get("speed_mps", 12.0)) * (0.8 + 0.4 * s.u[0])
    a = 0.5  # speed swings between 0.5 v and 1.5 v
    period = 300.0 + 900.0 * s.u[1]
    phase = s.u[2]

    def dist(t: _F64) -> _F64:
        arg = _TWO_PI * np.mod(t / period + phase, 1.0)
        return v * (t - _REF_S) - v * a * period / _TWO_PI * np.cos(arg)

    t = s.t
    speed = v * (1.0 + a * np.sin(_TWO_PI * np.mod(t / period + phase, 1.0)))
    d = np.mod(dist(t) + s.u[3] * length, length)
    k = np.clip(np.searchsorted(cum, d, side="right") - 1, 0, len(seg) - 1)
    f = (d - cum[k]) / seg[k]
    x = ex[k] + f * (ex[k + 1] - ex[k])
    y = ny[k] + f * (ny[k + 1] - ny[k])
    lat = lat0 + np.degrees(y / _EARTH_R)
    lon = loop[0, 1] + np.degrees(x / (_EARTH_R * cos0))
    heading = np.mod(np.degrees(np.arctan2(ex[k + 1] - ex[k], ny[k + 1] - ny[k])), 360.0)
    out = np.stack([lat, lon, speed, heading], axis=1)
    return _column(
        ("lat", "lon", "speed", "heading"),
        out,
        ("float",) * 4,
        (6, 6, 2, 1),
    )


def _accel(ctx: Ctx, params: Mapping[str, Any]) -> Column:
    """3-axis accelerometer in g: gravity through a slowly tilting body, plus vibration."""
    s = _series("accel", ctx)
    vib = float(params.get("vibration_g", 0.01))
    pitch = 0.15 * s.walk(_WALK, _HOUR, 60) + 0.1 * (s.u[0] - 0.5)
    roll = 0.15 * s.walk(_WALK + 100, _HOUR, 60) + 0.1 * (s.u[1] - 0.5)
    g = np.stack(
        [np.sin(pitch), -np.sin(roll) * np.cos(pitch), np.cos(roll) * np.cos(pitch)], axis=1
    )
    return _column(("x", "y", "z"), g + vib * s.noise(3), ("float",) * 3, (3, 3, 3))


def _gyro(ctx: Ctx, params: Mapping[str, Any]) -> Column:
    """3-axis gyroscope in deg/s: a small bias per axis, a slow wander and noise."""
    s = _series("gyro", ctx)
    sigma = float(params.get("noise_dps", 0.1))
    bias = np.array([s.u[0], s.u[1], s.u[2]]) - 0.5
    wander = np.stack([s.walk(_WALK + 10 * j, _HOUR, 60) for j in range(3)], axis=1)
    return _column(
        ("x", "y", "z"), bias + 0.5 * wander + sigma * s.noise(3), ("float",) * 3, (2, 2, 2)
    )


def _battery(ctx: Ctx, params: Mapping[str, Any]) -> Column:
    """A rechargeable cell: discharges over hours (steeply at the end), recovers on charge."""
    s = _series("battery", ctx)
    full = float(params.get("full_v", 4.2))
    empty = float(params.get("empty_v", 3.3))
    scale = 0.8 + 0.4 * s.u[0]
    dis = float(params.get("discharge_h", 20.0)) * _HOUR * scale
    chg = float(params.get("charge_h", 2.0)) * _HOUR * scale
    cycle = dis + chg
    pos = np.mod(s.t / cycle + s.u[1], 1.0) * cycle
    span = full - empty
    xd = np.clip(pos / dis, 0.0, 1.0)
    discharging = full - span * (0.3 * xd + 0.7 * xd**6)
    q = np.clip((pos - dis) / chg, 0.0, 1.0)
    charging = empty + span * (1.0 - np.exp(-4.0 * q)) / (1.0 - math.exp(-4.0))
    v = np.where(pos < dis, discharging, charging) + 0.002 * s.noise(1)[:, 0]
    return _column(("value",), v.reshape(-1, 1), ("float",), (3,))


GENERATORS: Final[dict[str, tuple[_Gen, frozenset[str], str]]] = {
    **{k: (_basic(k), frozenset(), kind_info(k).description) for k in KINDS},
    "gps": (
        _gps,
        frozenset({"route", "center", "radius_m", "speed_mps"}),
        "vehicle on a closed route: {lat, lon, speed (m/s), heading (deg)}",
    ),
    "accel": (_accel, frozenset({"vibration_g"}), "3-axis accelerometer {x, y, z} in g"),
    "gyro": (_gyro, frozenset({"noise_dps"}), "3-axis gyroscope {x, y, z} in deg/s"),
    "battery": (
        _battery,
        frozenset({"full_v", "empty_v", "discharge_h", "charge_h"}),
        "rechargeable cell (V): discharges, recovers on charge",
    ),
}
"""Generator name -> (function, its parameters, description)."""


# --- filters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """One filter of a stream's chain (validated parameters)."""

    kind: str
    params: Mapping[str, Any]
    components: tuple[str, ...] | None = None
    """Only these components (``None``: every numeric one; dropout/stuck: the whole stream)."""


def _numeric(col: Column, flt: Filter) -> list[int]:
    return [
        j
        for j, name in enumerate(col.names)
        if col.types[j] != "bool" and (flt.components is None or name in flt.components)
    ]


def _noise(col: Column, flt: Filter, words: tuple[int, ...], idx: _I64) -> None:
    sel = _numeric(col, flt)
    z = normal_at((*words, 1), idx, len(col.names))
    col.x[:, sel] += float(flt.params["sigma"]) * z[:, sel]


def _outliers(col: Column, flt: Filter, words: tuple[int, ...], idx: _I64) -> None:
    sel = _numeric(col, flt)
    u = uniform_at((*words, 2), idx, 3)
    hit = u[:, 0] < float(flt.params["probability"])
    sign = np.where(u[:, 1] < 0.5, -1.0, 1.0)
    size = float(flt.params["magnitude"]) * (1.0 + u[:, 2]) * sign
    rows = np.flatnonzero(hit)
    col.x[np.ix_(rows, np.asarray(sel, dtype=np.int64))] += size[rows, None]
    col.labels[hit] |= LABEL_OUTLIER


def _dropout(col: Column, flt: Filter, words: tuple[int, ...], idx: _I64) -> None:
    u = uniform_at((*words, 3), idx, 1)[:, 0]
    col.emitted &= u >= float(flt.params["probability"])


def _quantise(col: Column, flt: Filter, _words: tuple[int, ...], _idx: _I64) -> None:
    step = flt.params["step"]
    sel = _numeric(col, flt)
    col.x[:, sel] = np.rint(col.x[:, sel] / float(step)) * float(step)
    types, decs = list(col.types), list(col.decimals)
    for j in sel:
        types[j] = "int" if isinstance(step, int) else "float"
        decs[j] = 0 if isinstance(step, int) else _decimals_of(float(step))
    col.types, col.decimals = tuple(types), tuple(decs)


def _decimals_of(step: float) -> int:
    for d in range(10):
        if abs(round(step, d) - step) < 1e-12:
            return d
    return 9


FILTERS: Final[dict[str, tuple[frozenset[str], str]]] = {
    "noise": (frozenset({"sigma"}), "adds gaussian noise of standard deviation `sigma`"),
    "outliers": (
        frozenset({"probability", "magnitude"}),
        "adds a spike of +-`magnitude` x (1..2) with `probability` per reading, labelled outlier",
    ),
    "dropout": (frozenset({"probability"}), "drops a reading with `probability` (not emitted)"),
    "stuck": (
        frozenset({"probability", "duration_s", "value"}),
        "in episodes of `duration_s`, each stuck with `probability`: holds the value at the "
        "episode's start (or `value`), labelled stuck",
    ),
    "quantise": (
        frozenset({"step"}),
        "rounds to a multiple of `step` (an integer step gives integer values)",
    ),
}
"""Filter kind -> (its parameters, description)."""

_REQUIRED: Final[dict[str, frozenset[str]]] = {
    "noise": frozenset({"sigma"}),
    "outliers": frozenset({"probability", "magnitude"}),
    "dropout": frozenset({"probability"}),
    "stuck": frozenset({"probability", "duration_s"}),
    "quantise": frozenset({"step"}),
}

_APPLY: Final = {"noise": _noise, "outliers": _outliers, "dropout": _dropout, "quantise": _quantise}


# --- joins --------------------------------------------------------------------------------


def _join_document(cols: list[Column], keys: list[str], _p: Mapping[str, Any]) -> Column:
    layout = [(k, c.layout, len(c.names)) for k, c in zip(keys, cols, strict=True)]
    names = tuple(
        f"{k}.{n}" if len(c.names) > 1 else k
        for k, c in zip(keys, cols, strict=True)
        for n in c.names
    )
    return _joined(cols, names, np.concatenate([c.x for c in cols], axis=1), layout)


def _join_vector(cols: list[Column], keys: list[str], _p: Mapping[str, Any]) -> Column:
    return _joined(cols, tuple(keys), np.concatenate([c.x for c in cols], axis=1), "list")


def _join_magnitude(cols: list[Column], _keys: list[str], p: Mapping[str, Any]) -> Column:
    x = np.sqrt(sum((c.x**2).sum(axis=1) for c in cols)).reshape(-1, 1)
    return _joined(cols, ("value",), x, None, int(p.get("decimals", 3)))


def _join_mean(cols: list[Column], _keys: list[str], p: Mapping[str, Any]) -> Column:
    x = np.mean(np.concatenate([c.x for c in cols], axis=1), axis=1).reshape(-1, 1)
    return _joined(cols, ("value",), x, None, int(p.get("decimals", 2)))


def _join_dewpoint(cols: list[Column], _keys: list[str], p: Mapping[str, Any]) -> Column:
    temp, hum = cols[0].x[:, 0], np.clip(cols[1].x[:, 0], 1e-3, 100.0)
    b, c = 17.62, 243.12  # Magnus coefficients over water, degC
    gamma = np.log(hum / 100.0) + b * temp / (c + temp)
    x = (c * gamma / (b - gamma)).reshape(-1, 1)
    return _joined(cols, ("value",), x, None, int(p.get("decimals", 2)))


def _joined(
    cols: list[Column],
    names: tuple[str, ...],
    x: _F64,
    layout: Any,
    decimals: int | None = None,
) -> Column:
    """A join's column: derived (one float with ``decimals``) or the inputs side by side."""
    emitted = np.logical_and.reduce([c.emitted for c in cols])
    labels = np.bitwise_or.reduce([c.labels for c in cols])
    if decimals is not None:
        types: tuple[str, ...] = ("float",)
        decs: tuple[int, ...] = (decimals,)
    else:
        types = tuple(t for c in cols for t in c.types)
        decs = tuple(d for c in cols for d in c.decimals)
    return Column(names, x, types, decs, emitted, labels, layout)


_Join = Callable[[list[Column], list[str], Mapping[str, Any]], Column]

JOINS: Final[dict[str, tuple[_Join, tuple[int, int], frozenset[str], str]]] = {
    "document": (
        _join_document,
        (1, 32),
        frozenset(),
        "one JSON object {input key: input value} (e.g. a GPS fix from lat, lon, speed)",
    ),
    "vector": (_join_vector, (2, 32), frozenset(), "a JSON array of scalar inputs [x, y, z]"),
    "magnitude": (
        _join_magnitude,
        (1, 32),
        frozenset({"decimals"}),
        "sqrt of the sum of squares of every input component",
    ),
    "mean": (_join_mean, (1, 32), frozenset({"decimals"}), "the mean of the inputs' components"),
    "dewpoint": (
        _join_dewpoint,
        (2, 2),
        frozenset({"decimals"}),
        "dew point (degC, Magnus) from inputs [temperature, humidity]",
    ),
}
"""Join kind -> (function, (min, max) inputs, parameters, description). A joined instant is
emitted when every input is, and carries the union of the inputs' labels."""


# --- streams ------------------------------------------------------------------------------


@dataclass
class Stream:
    """One sensor of a device type: a generator or a join, then filters."""

    key: str
    generator: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    join: str | None = None
    inputs: tuple[str, ...] = ()
    filters: tuple[Filter, ...] = ()
    emit: bool = True

    @property
    def code(self) -> int:
        return code(self.key)

    def evaluate(
        self, ctx: Ctx, inputs: Mapping[str, Column] | None = None, upto: int | None = None
    ) -> Column:
        """This stream over ``ctx``'s instants (``ctx.path`` ends with the device index).

        ``inputs`` holds the evaluated input streams of a join over the same instants;
        ``upto`` stops after that many filters (a stuck filter needs earlier values).
        """
        path = (*ctx.path, self.code)
        here = Ctx(path, ctx.start, ctx.n, ctx.start_us, ctx.rate_hz)
        if self.generator is not None:
            col = GENERATORS[self.generator][0](here, self.params)
        else:
            assert self.join is not None
            assert inputs is not None
            cols = [inputs[k] for k in self.inputs]
            col = JOINS[self.join][0](cols, list(self.inputs), self.params)
        idx = np.arange(ctx.start, ctx.start + ctx.n, dtype=np.int64)
        chain = self.filters if upto is None else self.filters[:upto]
        for f, flt in enumerate(chain):
            words = (*path, _FILTER, f)
            if flt.kind == "stuck":
                self._stuck(col, flt, f, words, ctx)
            else:
                _APPLY[flt.kind](col, flt, words, idx)
        return col

    def _stuck(
        self,
        col: Column,
        flt: Filter,
        f: int,
        words: tuple[int, ...],
        ctx: Ctx,
    ) -> None:
        episode = max(1, round(float(flt.params["duration_s"]) * ctx.rate_hz))
        idx = np.arange(ctx.start, ctx.start + ctx.n, dtype=np.int64)
        blocks = idx // episode
        first = int(blocks[0]) if ctx.n else 0
        ublocks = np.unique(blocks)
        stuck = uniform_at((*words, 4), ublocks)[:, 0] < float(flt.params["probability"])
        fixed = flt.params.get("value")
        for b, is_stuck in zip(ublocks.tolist(), stuck.tolist(), strict=True):
            if not is_stuck:
                continue
            sel = blocks == b
            head = b * episode
            if fixed is not None:
                col.x[sel] = float(fixed)
                col.labels[sel] |= LABEL_STUCK
                continue
            if b == first and head < ctx.start:  # the episode began before this block
                prior = self.evaluate(ctx.at(head, 1), None, upto=f)
                held_x, held_label = prior.x[0], int(prior.labels[0])
            else:
                j = head - ctx.start
                held_x, held_label = col.x[j].copy(), int(col.labels[j])
            col.x[sel] = held_x
            col.labels[sel] = held_label | LABEL_STUCK


def check_filter(where: str, raw: object) -> Filter:
    """A filter from its TOML table; ``ConfigError`` naming the key otherwise."""
    if not isinstance(raw, dict):
        raise ConfigError(where, 'must be a table like { kind = "noise", sigma = 0.1 }')
    kind = raw.get("kind")
    if kind not in FILTERS:
        raise ConfigError(f"{where}.kind", f"must be one of {', '.join(FILTERS)}, not {kind!r}")
    allowed = FILTERS[kind][0] | {"kind", "components"}
    for k in raw:
        if k not in allowed:
            raise ConfigError(
                f"{where}.{k}",
                f"unknown key for a {kind} filter (known: {', '.join(sorted(allowed))})",
            )
    for k in _REQUIRED[kind]:
        if k not in raw:
            raise ConfigError(f"{where}.{k}", f"a {kind} filter needs it")
    params = {k: v for k, v in raw.items() if k not in {"kind", "components"}}
    for k, v in params.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigError(f"{where}.{k}", f"must be a number, not {v!r}")
    if "probability" in params and not 0.0 <= params["probability"] <= 1.0:
        raise ConfigError(f"{where}.probability", f"must be in 0..1, not {params['probability']}")
    for k in ("sigma", "magnitude"):
        if k in params and not 0.0 <= params[k] <= 1e9:
            raise ConfigError(f"{where}.{k}", f"must be in 0..1e9, not {params[k]}")
    if "step" in params and not 0 < params["step"] <= 1e9:
        raise ConfigError(f"{where}.step", f"must be in (0, 1e9], not {params['step']}")
    if "duration_s" in params and not 0 < params["duration_s"] <= 30 * 86_400:
        raise ConfigError(
            f"{where}.duration_s", f"must be in (0, 30 days], not {params['duration_s']}"
        )
    comps = raw.get("components")
    if comps is not None and kind in {"dropout", "stuck"}:
        raise ConfigError(f"{where}.components", f"a {kind} filter acts on the whole reading")
    if comps is not None and (
        not isinstance(comps, list) or not comps or not all(isinstance(c, str) for c in comps)
    ):
        raise ConfigError(f"{where}.components", "must be a non-empty list of component names")
    return Filter(kind, params, tuple(comps) if comps is not None else None)
