"""Fleet files (TOML): device types (generator -> filters -> joins), counts, rates, transports.

::

    seed = 42                              # fleet seed, 0..2**63-1 (default 1)
    start = "2026-01-01T00:00:00Z"         # instant 0 (default; `cairn-sim run` uses now)

    [[device_types]]
    name = "weather"                       # also the seed-path word of its devices
    count = 4                              # devices, 1..1,000,000
    rate_hz = 0.1                          # instants per second per device (or interval_s = 10)
    prefix = "wx"                          # device ids "wx-0000"... (default: name)
    transport = { kind = "mqtt", payload = "json" }
    clock = { drift_ppm = 40, jitter_ms = 5, offset_s = 2 }

    [[device_types.sensors]]
    key = "temp"
    generator = "temperature"
    filters = [{ kind = "noise", sigma = 0.05 }, { kind = "quantise", step = 0.1 }]

    [[device_types.sensors]]
    key = "dew"
    join = "dewpoint"
    inputs = ["temp", "hum"]

Device ``i`` of type ``T`` is seeded by ``(seed, crc32(T), i)``, its sensor ``K`` by
``(seed, crc32(T), i, crc32(K))``: adding a device type, a device or a sensor changes no
other stream. :meth:`DeviceType.block` evaluates every device over a block of instants;
:meth:`FleetFile.truth` lists exactly what the fleet emits, with ground-truth labels.

Transports: ``mqtt`` (``payload = "json"``: one object per device and instant on
``devices/{device}``; ``"value"``: ``{"ts", "value"}`` per reading on
``sensors/{device}/{sensor}``; ``"senml"``: a SenML pack on ``senml/{device}``; ``topic``
overrides the template, ``qos`` 0 or 1), ``serial``, ``http``, ``ws`` and ``ble``: see
``simulator.transports``, which checks their tables against the device type.
"""

from __future__ import annotations

import itertools
import json
import math
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from contract.errors import ConfigError
from contract.model import Reading, Value, valid_name
from simulator.fleet import canonical_value
from simulator.generators import CHUNK, instant_ts
from simulator.parts import (
    GENERATORS,
    JOINS,
    LABEL_OUTLIER,
    LABEL_STUCK,
    Column,
    Ctx,
    Stream,
    check_filter,
    code,
    label_names,
    normal_at,
    uniform_at,
)

__all__ = [
    "TRANSPORTS",
    "Block",
    "Clock",
    "DeviceType",
    "FleetFile",
    "Transport",
    "TruthRecord",
    "load_fleet_file",
    "parse_fleet",
    "preview_text",
]

TRANSPORTS: Final = ("mqtt", "serial", "http", "ws", "ble")
"""Transport kinds this simulator sends (all but MQTT JSON/value in ``simulator.transports``)."""
PLANNED_TRANSPORTS: Final[tuple[str, ...]] = ()
_MQTT_PAYLOADS: Final = ("json", "value", "senml")
_DEFAULT_START: Final = "2026-01-01T00:00:00Z"
_MAX_DEVICES: Final = 1_000_000
_MAX_RATE_HZ: Final = 10_000.0
_MAX_STREAMS: Final = 256
_CLOCK: Final = 0xC10C
_MAX_VALUES_PER_BLOCK: Final = 1 << 20

_I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Clock:
    """The devices' clocks: each gets a seeded offset and drift; each reading gets jitter."""

    offset_s: float = 0.0
    """Each device's clock is off by a seeded amount in [-offset_s, +offset_s]."""
    drift_ppm: float = 0.0
    """Each device's clock runs fast or slow by a seeded rate in [-drift_ppm, +drift_ppm]."""
    jitter_ms: float = 0.0
    """Per-reading gaussian jitter (standard deviation), clipped to 3 sigma."""


@dataclass(frozen=True)
class Transport:
    """How a device type's readings leave: ``kind`` and its options."""

    kind: str = "mqtt"
    payload: str = "json"
    topic: str = ""
    """Topic template (``{device}``, and ``{sensor}`` in value payloads); default by payload."""
    qos: int = 1
    options: Mapping[str, Any] | None = None
    """The table as written, for transports added later."""

    def topic_for(self, device: str, sensor: str = "") -> str:
        template = self.topic or (
            "devices/{device}" if self.payload == "json" else "sensors/{device}/{sensor}"
        )
        if self.payload == "senml" and not self.topic:
            template = "senml/{device}"
        return template.format(device=device, sensor=sensor)


@dataclass
class Block:
    """One device type over instants ``[start, start + n)``: every device's streams."""

    start: int
    n: int
    nominal_us: _I64
    """Shape ``(n,)``: the instants' true times."""
    ts_us: list[_I64]
    """Per device, shape ``(n,)``: the timestamps its clock reports."""
    columns: list[dict[str, Column]]
    """Per device: emitted streams by key (those with ``emit = false`` left out)."""
    values: list[dict[str, list[Value]]]
    """Per device: each emitted stream's values at every instant."""


@dataclass(frozen=True)
class TruthRecord:
    """One emitted reading and what the simulator knows about it."""

    device: str
    sensor: str
    ts: int
    """The timestamp sent (the device's clock)."""
    true_ts: int
    """The instant's true time."""
    value: Value
    labels: tuple[str, ...]

    @property
    def reading(self) -> Reading:
        return Reading(self.device, self.sensor, self.ts, self.value)

    @property
    def outlier(self) -> bool:
        return "outlier" in self.labels

    def json(self) -> str:
        return json.dumps(
            {
                "device": self.device,
                "sensor": self.sensor,
                "ts": self.ts,
                "true_ts": self.true_ts,
                "value": json.loads(canonical_value(self.value)),
                "labels": list(self.labels),
            },
            separators=(",", ":"),
        )


@dataclass
class DeviceType:
    """Devices of one kind: their streams, count, rate, clock and transport."""

    name: str
    count: int
    rate_hz: float
    prefix: str
    streams: tuple[Stream, ...]
    transport: Transport
    clock: Clock
    seed: int
    start_us: int

    @property
    def device_ids(self) -> list[str]:
        return [f"{self.prefix}-{i:04d}" for i in range(self.count)]

    @property
    def emitted_keys(self) -> list[str]:
        return [s.key for s in self.streams if s.emit]

    def device_id(self, i: int) -> str:
        return f"{self.prefix}-{i:04d}"

    def instants_in(self, seconds: float) -> int:
        return max(1, math.ceil(seconds * self.rate_hz))

    def block_size(self) -> int:
        """Instants per block: about a million values at most, and not beyond a noise chunk."""
        per_instant = self.count * max(1, len(self.streams))
        return max(1, min(CHUNK, _MAX_VALUES_PER_BLOCK // per_instant))

    def device_path(self, device: int) -> tuple[int, ...]:
        return (self.seed, code(self.name), device)

    def device_columns(self, device: int, start: int, n: int) -> dict[str, Column]:
        """Every stream of one device (also those not emitted) over ``[start, start + n)``."""
        ctx = Ctx(self.device_path(device), start, n, self.start_us, self.rate_hz)
        cols: dict[str, Column] = {}
        for stream in self.streams:
            cols[stream.key] = stream.evaluate(ctx, cols if stream.join else None)
        return cols

    def device_ts(self, device: int, nominal: _I64, start: int) -> _I64:
        """The timestamps device ``device``'s clock reports at the instants of ``nominal``."""
        c = self.clock
        if not (c.offset_s or c.drift_ppm or c.jitter_ms):
            return nominal
        words = (*self.device_path(device), _CLOCK)
        u = uniform_at(words, np.array([0], dtype=np.int64), 2)[0]
        offset_us = c.offset_s * 1e6 * (2.0 * u[0] - 1.0)
        drift = c.drift_ppm * 1e-6 * (2.0 * u[1] - 1.0)
        idx = np.arange(start, start + len(nominal), dtype=np.int64)
        jitter = np.clip(normal_at((*words, 1), idx)[:, 0], -3.0, 3.0) * c.jitter_ms * 1e3
        elapsed = (nominal - self.start_us).astype(np.float64)
        shift: _I64 = np.rint(offset_us + drift * elapsed + jitter).astype(np.int64)
        return nominal + shift

    def block(self, start: int, n: int) -> Block:
        """Every device over instants ``[start, start + n)``."""
        nominal = instant_ts(self.start_us, self.rate_hz, np.arange(start, start + n))
        stamps, columns, values = [], [], []
        keys = set(self.emitted_keys)
        for d in range(self.count):
            cols = {k: c for k, c in self.device_columns(d, start, n).items() if k in keys}
            columns.append(cols)
            values.append({k: c.values() for k, c in cols.items()})
            stamps.append(self.device_ts(d, nominal, start))
        return Block(start, n, nominal, stamps, columns, values)

    def endless(self, start: int = 0) -> Iterator[TruthRecord]:
        """What this type emits from instant ``start`` on, forever (an endless iterator)."""
        step = self.block_size()
        for b0 in itertools.count(start, step):
            yield from self.truth(b0, step)

    def truth(self, start: int, n: int) -> Iterator[TruthRecord]:
        """What this type emits at instants ``[start, start + n)``: by instant, device, sensor."""
        step = self.block_size()
        for b0 in range(start, start + n, step):
            bn = min(step, start + n - b0)
            blk = self.block(b0, bn)
            true_ts = blk.nominal_us.tolist()
            per_device = [
                (self.device_id(d), blk.ts_us[d].tolist(), blk.columns[d], blk.values[d])
                for d in range(self.count)
            ]
            for k in range(bn):
                for device, ts, cols, vals in per_device:
                    for key, col in cols.items():
                        if col.emitted[k]:
                            yield TruthRecord(
                                device,
                                key,
                                ts[k],
                                true_ts[k],
                                vals[key][k],
                                tuple(label_names(int(col.labels[k]))),
                            )


@dataclass
class FleetFile:
    """A parsed fleet file."""

    seed: int
    start_us: int
    device_types: tuple[DeviceType, ...]
    source: str = "<string>"

    def with_start(self, start_us: int) -> FleetFile:
        """The same fleet with instant 0 at ``start_us``."""
        types = tuple(
            DeviceType(
                t.name,
                t.count,
                t.rate_hz,
                t.prefix,
                t.streams,
                t.transport,
                t.clock,
                t.seed,
                start_us,
            )
            for t in self.device_types
        )
        return FleetFile(self.seed, start_us, types, self.source)

    def truth(self, seconds: float) -> Iterator[TruthRecord]:
        """Every reading emitted in the first ``seconds``, type by type."""
        for t in self.device_types:
            yield from t.truth(0, t.instants_in(seconds))

    def readings(self, seconds: float) -> list[Reading]:
        return [r.reading for r in self.truth(seconds)]

    def outliers(self, seconds: float) -> set[tuple[str, str, int]]:
        """``(device, sensor, ts)`` of every emitted reading labelled outlier."""
        return {(r.device, r.sensor, r.ts) for r in self.truth(seconds) if r.outlier}


# --- parsing ------------------------------------------------------------------------------


def load_fleet_file(path: str | Path) -> FleetFile:
    """Read and validate a fleet file; ``ConfigError`` naming the bad key otherwise."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("fleet_file", f"cannot read {p}: {exc}") from None
    fleet = parse_fleet(text)
    fleet.source = str(p)
    return fleet


def parse_fleet(text: str) -> FleetFile:
    """Parse fleet-file TOML text."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("fleet_file", f"not valid TOML: {exc}") from None
    _known(doc, "", {"seed", "start", "device_types"})
    seed = _int(doc.get("seed", 1), "seed", 0, 2**63 - 1)
    start_us = _start(doc.get("start", _DEFAULT_START))
    raw_types = doc.get("device_types")
    if not isinstance(raw_types, list) or not raw_types:
        raise ConfigError("device_types", "needs at least one [[device_types]] table")
    types: list[DeviceType] = []
    names: set[str] = set()
    prefixes: set[str] = set()
    for i, raw in enumerate(raw_types):
        t = _device_type(f"device_types[{i}]", raw, seed, start_us)
        if t.name in names:
            raise ConfigError(f"device_types[{i}].name", f"{t.name!r} is used twice")
        if t.prefix in prefixes:
            raise ConfigError(f"device_types[{i}].prefix", f"{t.prefix!r} is used twice")
        names.add(t.name)
        prefixes.add(t.prefix)
        types.append(t)
    return FleetFile(seed, start_us, tuple(types))


def _known(table: Mapping[str, Any], where: str, allowed: set[str] | frozenset[str]) -> None:
    for k in table:
        if k not in allowed:
            name = f"{where}.{k}" if where else k
            raise ConfigError(name, f"unknown key (known: {', '.join(sorted(allowed))})")


def _int(raw: object, where: str, lo: int, hi: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
        raise ConfigError(where, f"must be an integer in {lo:,}..{hi:,}, not {raw!r}")
    return raw


def _float(raw: object, where: str, lo: float, hi: float, *, open_lo: bool = False) -> float:
    ok = isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw)
    if not ok or not (lo < raw if open_lo else lo <= raw) or not raw <= hi:  # type: ignore[operator]
        bounds = f"({lo:g}, {hi:g}]" if open_lo else f"[{lo:g}, {hi:g}]"
        raise ConfigError(where, f"must be a number in {bounds}, not {raw!r}")
    return float(raw)  # type: ignore[arg-type]


def _str(raw: object, where: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(where, f"must be a non-empty string, not {raw!r}")
    return raw


def _start(raw: object) -> int:
    if isinstance(raw, datetime):
        dt = raw
    elif isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            raise ConfigError("start", f"{raw!r} is not an ISO 8601 time") from None
    else:
        raise ConfigError("start", f"must be an ISO 8601 time, not {raw!r}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def _name(raw: object, where: str) -> str:
    name = _str(raw, where)
    if not valid_name(name) or set(name) & set("/+#{} "):
        raise ConfigError(where, f"{name!r} is not a valid name (no / + # {{ }} or spaces)")
    return name


def _device_type(where: str, raw: object, seed: int, start_us: int) -> DeviceType:
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a table")
    _known(
        raw,
        where,
        {"name", "count", "rate_hz", "interval_s", "prefix", "transport", "clock", "sensors"},
    )
    if "name" not in raw:
        raise ConfigError(f"{where}.name", "every device type needs a name")
    name = _name(raw["name"], f"{where}.name")
    count = _int(raw.get("count", 1), f"{where}.count", 1, _MAX_DEVICES)
    if "rate_hz" in raw and "interval_s" in raw:
        raise ConfigError(f"{where}.interval_s", "give rate_hz or interval_s, not both")
    if "interval_s" in raw:
        interval = _float(raw["interval_s"], f"{where}.interval_s", 1e-4, 86_400.0)
        rate = 1.0 / interval
    else:
        rate = _float(raw.get("rate_hz", 1.0), f"{where}.rate_hz", 0.0, _MAX_RATE_HZ, open_lo=True)
        if rate < 1.0 / 86_400.0:
            raise ConfigError(f"{where}.rate_hz", "must be at least one reading a day")
    prefix = _name(raw.get("prefix", name), f"{where}.prefix")
    if not valid_name(f"{prefix}-{count - 1:04d}"):
        raise ConfigError(f"{where}.prefix", f"{prefix!r} makes device ids that are too long")
    transport = _transport(f"{where}.transport", raw.get("transport", {}))
    clock = _clock(f"{where}.clock", raw.get("clock", {}), rate)
    raw_streams = raw.get("sensors")
    if not isinstance(raw_streams, list) or not raw_streams:
        raise ConfigError(f"{where}.sensors", "needs at least one [[device_types.sensors]]")
    if len(raw_streams) > _MAX_STREAMS:
        raise ConfigError(f"{where}.sensors", f"at most {_MAX_STREAMS} sensors per device type")
    streams: list[Stream] = []
    for j, rs in enumerate(raw_streams):
        streams.append(_stream(f"{where}.sensors[{j}]", rs, {s.key: s for s in streams}))
    if not any(s.emit for s in streams):
        raise ConfigError(f"{where}.sensors", "no sensor is emitted (every one has emit = false)")
    dtype = DeviceType(name, count, rate, prefix, tuple(streams), transport, clock, seed, start_us)
    if transport.kind != "mqtt":
        from simulator.transports import check_transport  # noqa: PLC0415 - it imports this

        check_transport(f"{where}.transport", transport.options or {}, dtype)
    return dtype


def _transport(where: str, raw: object) -> Transport:
    if not isinstance(raw, dict):
        raise ConfigError(where, 'must be a table like { kind = "mqtt", payload = "json" }')
    kind = raw.get("kind", "mqtt")
    if kind in PLANNED_TRANSPORTS:
        raise ConfigError(
            f"{where}.kind", f"{kind!r} is not available yet (available: {', '.join(TRANSPORTS)})"
        )
    if kind not in TRANSPORTS:
        raise ConfigError(f"{where}.kind", f"must be one of {', '.join(TRANSPORTS)}, not {kind!r}")
    if kind != "mqtt":  # checked with its device type (simulator.transports.check_transport)
        return Transport(kind, str(raw.get("format", "")), "", 1, dict(raw))
    _known(raw, where, {"kind", "payload", "topic", "qos", "ca_file"})
    ca_file = raw.get("ca_file")
    if ca_file is not None and (not isinstance(ca_file, str) or not ca_file):
        raise ConfigError(f"{where}.ca_file", f"must be a file name, not {ca_file!r}")
    payload = raw.get("payload", "json")
    if payload not in _MQTT_PAYLOADS:
        raise ConfigError(
            f"{where}.payload", f"must be one of {', '.join(_MQTT_PAYLOADS)}, not {payload!r}"
        )
    topic = raw.get("topic", "")
    if not isinstance(topic, str) or set(topic) & set("+#"):
        raise ConfigError(f"{where}.topic", f"must be a topic template without + or #: {topic!r}")
    needed = ["{device}"] + (["{sensor}"] if payload == "value" else [])  # json, senml: device
    if topic and not all(n in topic for n in needed):
        raise ConfigError(
            f"{where}.topic", f"a {payload} topic must contain {' and '.join(needed)}"
        )
    if topic:
        try:
            topic.format(device="d", sensor="s")
        except (KeyError, IndexError, ValueError):
            raise ConfigError(f"{where}.topic", "only {device} and {sensor} may be used") from None
    qos = raw.get("qos", 1)
    if qos not in (0, 1) or isinstance(qos, bool):
        raise ConfigError(f"{where}.qos", f"must be 0 or 1, not {qos!r}")
    return Transport(kind, payload, topic, qos, dict(raw))


def _clock(where: str, raw: object, rate_hz: float) -> Clock:
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a table like { drift_ppm = 50, jitter_ms = 2 }")
    _known(raw, where, {"offset_s", "drift_ppm", "jitter_ms"})
    offset = _float(raw.get("offset_s", 0.0), f"{where}.offset_s", 0.0, 86_400.0)
    drift = _float(raw.get("drift_ppm", 0.0), f"{where}.drift_ppm", 0.0, 1_000.0)
    jitter = _float(raw.get("jitter_ms", 0.0), f"{where}.jitter_ms", 0.0, 60_000.0)
    # 3 sigma of jitter below 0.45 periods and a drift below 0.1 %: timestamps stay increasing
    if jitter and 3.0 * jitter * 1e-3 >= 0.45 / rate_hz:
        raise ConfigError(
            f"{where}.jitter_ms",
            f"3 x jitter must stay under 0.45 periods ({0.15e3 / rate_hz:g} ms at this rate)",
        )
    return Clock(offset, drift, jitter)


_STREAM_KEYS: Final = frozenset({"key", "generator", "join", "inputs", "filters", "emit"})


def _stream(where: str, raw: object, earlier: Mapping[str, Stream]) -> Stream:
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a table")
    key = _name(raw.get("key"), f"{where}.key")
    if key in earlier:
        raise ConfigError(f"{where}.key", f"{key!r} is used twice in this device type")
    if key == "ts":
        raise ConfigError(f"{where}.key", "'ts' is the timestamp's key in JSON payloads")
    emit = raw.get("emit", True)
    if not isinstance(emit, bool):
        raise ConfigError(f"{where}.emit", f"must be true or false, not {emit!r}")
    gen, join = raw.get("generator"), raw.get("join")
    if (gen is None) == (join is None):
        raise ConfigError(f"{where}.generator", "give exactly one of generator or join")
    params: dict[str, Any] = {}
    inputs: tuple[str, ...] = ()
    if gen is not None:
        if gen not in GENERATORS:
            raise ConfigError(
                f"{where}.generator", f"must be one of {', '.join(GENERATORS)}, not {gen!r}"
            )
        allowed = GENERATORS[gen][1]
        _known(raw, where, _STREAM_KEYS | allowed)
        params = {k: raw[k] for k in allowed if k in raw}
        _check_generator_params(where, gen, params)
    else:
        if join not in JOINS:
            raise ConfigError(f"{where}.join", f"must be one of {', '.join(JOINS)}, not {join!r}")
        _fn, (lo, hi), allowed, _d = JOINS[join]
        _known(raw, where, _STREAM_KEYS | allowed)
        params = {k: raw[k] for k in allowed if k in raw}
        if "decimals" in params:
            _int(params["decimals"], f"{where}.decimals", 0, 9)
        raw_inputs = raw.get("inputs")
        if not isinstance(raw_inputs, list) or not lo <= len(raw_inputs) <= hi:
            raise ConfigError(f"{where}.inputs", f"a {join} join takes {lo}..{hi} sensor keys")
        for k in raw_inputs:
            if k not in earlier:
                raise ConfigError(
                    f"{where}.inputs", f"{k!r} is not a sensor defined above in this device type"
                )
        inputs = tuple(raw_inputs)
        if len(set(inputs)) != len(inputs):
            raise ConfigError(f"{where}.inputs", "an input is named twice")
        if join in {"vector", "dewpoint"} and any(
            len(_names(earlier[k], earlier)) != 1 for k in inputs
        ):
            raise ConfigError(f"{where}.inputs", f"a {join} join takes scalar sensors only")
    raw_filters = raw.get("filters", [])
    if not isinstance(raw_filters, list):
        raise ConfigError(f"{where}.filters", "must be an array of filter tables")
    filters = tuple(check_filter(f"{where}.filters[{f}]", rf) for f, rf in enumerate(raw_filters))
    if join is not None and any(f.kind == "stuck" for f in filters):
        raise ConfigError(
            f"{where}.filters", "a stuck filter goes on a join's inputs, not on the join"
        )
    stream = Stream(key, gen, params, join, inputs, filters, emit)
    _check_components(where, stream, earlier)
    return stream


_GEN_COMPONENTS: Final = {
    "gps": ("lat", "lon", "speed", "heading"),
    "accel": ("x", "y", "z"),
    "gyro": ("x", "y", "z"),
}


def _names(s: Stream, earlier: Mapping[str, Stream]) -> tuple[str, ...]:
    """The component names of a stream's column (as ``parts`` names them)."""
    if s.generator is not None:
        return _GEN_COMPONENTS.get(s.generator, ("value",))
    if s.join == "document":
        out: list[str] = []
        for k in s.inputs:
            sub = _names(earlier[k], earlier)
            out.extend(k if len(sub) == 1 else f"{k}.{n}" for n in sub)
        return tuple(out)
    if s.join == "vector":
        return s.inputs
    return ("value",)


def _check_components(where: str, s: Stream, earlier: Mapping[str, Stream]) -> None:
    names = _names(s, earlier)
    numeric = names if s.generator != "switch" else ()
    for f, flt in enumerate(s.filters):
        if flt.kind not in {"noise", "outliers", "quantise"}:
            continue
        if not numeric:
            raise ConfigError(
                f"{where}.filters[{f}].kind",
                f"a {flt.kind} filter needs numbers; {s.key} is on/off",
            )
        for c in flt.components or ():
            if c not in names:
                raise ConfigError(
                    f"{where}.filters[{f}].components",
                    f"{s.key} has no component {c!r} (it has {', '.join(names)})",
                )


def _check_generator_params(where: str, gen: str, params: Mapping[str, Any]) -> None:
    for k, v in params.items():
        if k == "route":
            ok = (
                isinstance(v, list)
                and len(v) >= 2
                and all(
                    isinstance(p, list)
                    and len(p) == 2
                    and all(isinstance(c, int | float) and not isinstance(c, bool) for c in p)
                    and -85.0 <= p[0] <= 85.0
                    and -180.0 <= p[1] <= 180.0
                    for p in v
                )
            )
            if not ok or len({tuple(p) for p in v}) < 2:
                raise ConfigError(
                    f"{where}.route", "must list at least two distinct [lat, lon] waypoints"
                )
        elif k == "center":
            if not (
                isinstance(v, list)
                and len(v) == 2
                and all(isinstance(c, int | float) and not isinstance(c, bool) for c in v)
                and -85.0 <= v[0] <= 85.0
                and -180.0 <= v[1] <= 180.0
            ):
                raise ConfigError(f"{where}.center", "must be [lat, lon]")
        else:
            hi = {"radius_m": 1e6, "speed_mps": 1e3, "vibration_g": 10.0, "noise_dps": 1e3}.get(
                k, 1e3
            )
            _float(
                v,
                f"{where}.{k}",
                0.0,
                hi,
                open_lo=k in {"radius_m", "discharge_h", "charge_h", "full_v"},
            )
    if gen == "battery":
        full, empty = float(params.get("full_v", 4.2)), float(params.get("empty_v", 3.3))
        if not empty < full:
            raise ConfigError(f"{where}.empty_v", "must be below full_v")


def _iso(ts_us: int) -> str:
    seconds, micros = divmod(ts_us, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{micros:06d}Z"


def _describe(s: Stream) -> tuple[str, str]:
    source = s.generator or "" if s.join is None else f"{s.join}({', '.join(s.inputs)})"
    if s.params and s.generator is not None:
        source += " " + " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(s.params.items()))
    chain = " -> ".join(
        f.kind + "(" + ", ".join(f"{k}={v}" for k, v in f.params.items()) + ")" for f in s.filters
    )
    return source + ("" if s.emit else " [not emitted]"), chain


def preview_text(fleet: FleetFile, n: int) -> str:
    """The first ``n`` instants of the first device of each type, as text tables.

    A reading labelled outlier is marked ``*``, stuck ``~``; a dropped one shows ``-``.
    """
    out = [f"fleet file {fleet.source}: seed {fleet.seed}, from {_iso(fleet.start_us)}\n"]
    for t in fleet.device_types:
        c = t.clock
        clock = (
            f", clock offset <= {c.offset_s:g} s, drift <= {c.drift_ppm:g} ppm, "
            f"jitter {c.jitter_ms:g} ms"
            if (c.offset_s or c.drift_ppm or c.jitter_ms)
            else ""
        )
        tr = t.transport
        where = tr.topic or tr.topic_for("{device}", "{sensor}")
        if tr.kind != "mqtt":  # the other kinds: their format and where they send
            o = tr.options or {}
            fmt = o.get("format", "")
            where = str(o.get("port") or o.get("url") or o.get("socket") or "")
            where = f"{fmt} to {where}" if fmt else f"to {where}"
        else:
            where = f"{tr.payload} on {where}"
        out.append(
            f"\n{t.name}: {t.count} x {t.device_id(0)}... at {t.rate_hz:g} Hz, "
            f"{tr.kind} {where}{clock}\n"
        )
        rows = [("sensor", "source", "filters"), *((s.key, *_describe(s)) for s in t.streams)]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        out.extend(f"  {a:<{w0}}  {b:<{w1}}  {f}".rstrip() + "\n" for a, b, f in rows)
        blk = t.block(0, n)
        cols, vals = blk.columns[0], blk.values[0]
        table: list[list[str]] = [["ts", *cols]]
        for k in range(n):
            row = [_iso(int(blk.ts_us[0][k]))]
            for key, col in cols.items():
                if not col.emitted[k]:
                    row.append("-")
                    continue
                text = canonical_value(vals[key][k])
                labels = int(col.labels[k])
                row.append(
                    text
                    + ("*" if labels & LABEL_OUTLIER else "")
                    + ("~" if labels & LABEL_STUCK else "")
                )
            table.append(row)
        widths = [max(len(r[j]) for r in table) for j in range(len(table[0]))]
        out.append(f"\n  {t.device_id(0)}\n")
        out.extend(
            "  " + "  ".join(f"{v:<{w}}" for v, w in zip(r, widths, strict=True)).rstrip() + "\n"
            for r in table
        )
    return "".join(out)
