"""A device's readings -> the bytes of one wire format, and what the edge should store of them.

One :class:`Encoder` per format of the fleet file's transports (:data:`FORMATS`). Given one
device at one instant -- its id, the timestamp its clock reports, the instant's index and the
``(sensor key, value)`` pairs it emits -- :meth:`Encoder.encode` returns the messages to send,
each a :class:`Wire`: a destination (an MQTT topic, a device id, a BLE address), the payload,
and the readings the edge should store when it decodes that payload (``items``, in the edge's
names: the ledger's ground truth of that transport).

Formats and their ground truth:

``json`` (MQTT, serial ``jsonl``, HTTP, WebSocket)
    ``{"ts": <us>, "<key>": value, ...}``: every value exact (JSON keeps floats' shortest repr),
    the device's timestamp exact.
``value`` (MQTT)
    ``{"ts": <us>, "value": value}`` on one topic per sensor: exact.
``senml`` (MQTT)
    A SenML pack (RFC 8428): ``bt`` the timestamp in seconds (a double: the edge rounds it back
    to the exact microsecond), ``v``/``vb``/``vs`` per record. Documents are flattened
    (``gps/lat``, ``acc/0``): SenML records carry scalars. Exact.
``csv`` (serial)
    A header line (``ts`` and the flattened sensor names) when the port opens, then one line per
    instant, an empty field for a reading not emitted. Exact (floats in shortest repr).
``nmea`` (serial)
    One RMC sentence per fix of a ``gps`` stream: time ``hhmmss.ffffff`` and date (the exact
    timestamp), latitude/longitude in degrees and minutes with 6 decimals of minutes, speed in
    knots with 3 decimals, course with 2. The edge stores ``<prefix>/lat``, ``/lon``,
    ``/speed`` (m/s), ``/course`` and ``/valid`` (always ``true``): compared in quanta of the
    wire's resolution.
``bthome`` (BLE)
    BTHome v2 service data: a packet id (the instant's index mod 256, which is what tells the
    edge a repeat from a new measurement), then one object per sensor in ascending object id.
    Each sensor maps to a BTHome measurement (:data:`BTHOME`: temperature 0.01 C, humidity
    0.01 %, pressure 0.01 hPa...); a value outside the object's range is clamped, as a sensor
    saturates. The edge stamps the arrival time: compared without timestamps, values in quanta
    of the object's factor.
``ruuvi`` (BLE)
    RuuviTag data format 5: temperature 0.005 C, humidity 0.0025 %, pressure 0.01 hPa,
    acceleration x/y/z 0.001 g, voltage 0.001 V (1.6..3.646 V), the measurement sequence (the
    instant's index mod 65535, also stored by the edge); fields a device type does not map are
    "not available". Compared like ``bthome``.

:meth:`Encoder.key` is the comparison per format: ``(device, sensor, ts or None, value key)``
where the value key is the canonical JSON of an exact value, or the integer number of quanta
(``round(value / step)``) of a quantised one.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from contract.errors import ConfigError
from contract.model import Value
from simulator.fleet import canonical_value

__all__ = [
    "BTHOME",
    "BTHOME_UUID",
    "FORMATS",
    "RUUVI_COMPANY_ID",
    "RUUVI_FIELDS",
    "RUUVI_TARGETS",
    "BTHomeEncoder",
    "CsvEncoder",
    "Encoder",
    "Item",
    "JsonEncoder",
    "NmeaEncoder",
    "RuuviEncoder",
    "SenmlEncoder",
    "ValueEncoder",
    "Wire",
    "ble_address",
    "flatten",
    "nmea_checksum",
]

Item = tuple[str, str, int, Value]
"""``(device, sensor, ts, value)`` as the edge should store it (ts: the device's)."""

BTHOME_UUID: Final = "0000fcd2-0000-1000-8000-00805f9b34fb"
RUUVI_COMPANY_ID: Final = 0x0499
_KNOT_MS: Final = 1852 / 3600

_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _dumps(doc: object) -> bytes:
    return _JSON.encode(doc).encode()


@dataclass(frozen=True, slots=True)
class Wire:
    """One message: where it goes, its bytes, and the readings the edge should make of it."""

    dest: str
    payload: bytes
    items: list[Item]


@dataclass
class Encoder:
    """Base of the formats: exact values, the device's timestamps (see the module doc)."""

    name: str = "json"
    stamped: bool = True
    """The edge keeps the device's timestamp (``False``: it stamps the arrival, as for BLE)."""
    steps: dict[str, float] = field(default_factory=dict)
    """Sensor (edge name) -> the wire's resolution, for the quantised ones."""

    def encode(
        self, device: str, ts: int, seq: int, present: Sequence[tuple[str, Value]]
    ) -> list[Wire]:
        raise NotImplementedError

    def preamble(self, keys: Sequence[str]) -> bytes:
        """Bytes a connection starts with (a CSV header); none by default."""
        del keys
        return b""

    def key(self, device: str, sensor: str, ts: int, value: Value) -> tuple[Hashable, ...]:
        """The comparison key of a reading in this format (see the module doc)."""
        step = self.steps.get(sensor)
        vkey: Hashable
        if step is not None and isinstance(value, int | float) and not isinstance(value, bool):
            vkey = round(value / step)
        else:
            vkey = canonical_value(value)
        return (device, sensor, ts if self.stamped else None, vkey)


def flatten(key: str, value: Value) -> list[tuple[str, Value]]:
    """Scalars of a value: a document's components as ``key/name``, an array's as ``key/i``."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in flatten(f"{key}/{k}", v)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in flatten(f"{key}/{i}", v)]
    return [(key, value)]


# --- exact formats -------------------------------------------------------------------------


@dataclass
class JsonEncoder(Encoder):
    """``{"ts": <us>, key: value...}``, one message per device and instant; ``dest`` is
    ``topic`` formatted with the device (``{device}``), or the device id."""

    topic: str = "{device}"
    newline: bool = False

    def encode(
        self, device: str, ts: int, seq: int, present: Sequence[tuple[str, Value]]
    ) -> list[Wire]:
        del seq  # no counter in this format
        doc: dict[str, Value] = {"ts": ts}
        doc.update(present)
        payload = _dumps(doc) + (b"\n" if self.newline else b"")
        items = [(device, k, ts, v) for k, v in present]
        return [Wire(self.topic.format(device=device), payload, items)]


@dataclass
class ValueEncoder(Encoder):
    """``{"ts": <us>, "value": v}`` on ``topic`` (``{device}`` and ``{sensor}``) per reading."""

    topic: str = "sensors/{device}/{sensor}"

    def encode(
        self, device: str, ts: int, seq: int, present: Sequence[tuple[str, Value]]
    ) -> list[Wire]:
        del seq  # no counter in this format
        return [
            Wire(
                self.topic.format(device=device, sensor=k),
                _dumps({"ts": ts, "value": v}),
                [(device, k, ts, v)],
            )
            for k, v in present
        ]


@dataclass
class SenmlEncoder(Encoder):
    """A SenML pack per device and instant on ``topic``; documents flattened."""

    topic: str = "senml/{device}"

    def encode(
        self, device: str, ts: int, seq: int, present: Sequence[tuple[str, Value]]
    ) -> list[Wire]:
        del seq  # no counter in this format
        records: list[dict[str, object]] = []
        items: list[Item] = []
        for key, value in present:
            for name, v in flatten(key, value):
                rec: dict[str, object] = {"n": name}
                if isinstance(v, bool):
                    rec["vb"] = v
                elif isinstance(v, str):
                    rec["vs"] = v
                else:
                    rec["v"] = v
                records.append(rec)
                items.append((device, name, ts, v))
        if not records:
            return []
        records[0] = {"bt": ts / 1e6, **records[0]}
        return [Wire(self.topic.format(device=device), _dumps(records), items)]


def _csv_text(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


@dataclass
class CsvEncoder(Encoder):
    """A line ``ts,v1,v2...`` per instant (an empty field for a missing value), after a header
    line naming the flattened columns (:meth:`preamble`); ``columns`` fixes their order."""

    columns: tuple[str, ...] = ()

    def preamble(self, keys: Sequence[str]) -> bytes:
        del keys  # the columns are fixed
        return (",".join(("ts", *self.columns)) + "\n").encode()

    def encode(
        self, device: str, ts: int, seq: int, present: Sequence[tuple[str, Value]]
    ) -> list[Wire]:
        del seq  # no counter in this format
        values = dict(p for key, value in present for p in flatten(key, value))
        if not values:
            return []
        fields = [str(ts)] + [_csv_text(values[c]) if c in values else "" for c in self.columns]
        items = [(device, c, ts, values[c]) for c in self.columns if c in values]
        return [Wire(device, (",".join(fields) + "\n").encode(), items)]


# --- NMEA ----------------------------------------------------------------------------------


def nmea_checksum(body: str) -> int:
    """XOR of the characters between ``$`` and ``*`` (NMEA 0183)."""
    out = 0
    for b in body.encode("ascii"):
        out ^= b
    return out


def _nmea_coord(value: float, degrees: int, hemis: str) -> tuple[str, str, int]:
    """``(ddmm.mmmmmm, hemisphere, micro-minutes)`` of a signed coordinate."""
    micro = round(abs(value) * 60_000_000)  # millionths of a minute
    deg, rest = divmod(micro, 60_000_000)
    text = f"{deg:0{degrees}d}{rest // 1_000_000:02d}.{rest % 1_000_000:06d}"
    return text, hemis[0] if value >= 0 else hemis[1], micro


@dataclass
class NmeaEncoder(Encoder):
    """A ``$GPRMC`` sentence per fix of the stream ``sensor`` (a ``gps`` generator)."""

    sensor: str = "gps"
    prefix: str = "gps"

    def __post_init__(self) -> None:
        p = self.prefix
        self.steps = {f"{p}/lat": 1 / 60e6, f"{p}/lon": 1 / 60e6, f"{p}/speed": _KNOT_MS / 1000}
        self.steps[f"{p}/course"] = 0.01

    def encode(
        self, device: str, ts: int, seq: int, present: Sequence[tuple[str, Value]]
    ) -> list[Wire]:
        del seq  # no counter in this format
        fix = dict(present).get(self.sensor)
        if not isinstance(fix, dict):
            return []
        lat, lon = float(fix["lat"]), float(fix["lon"])  # type: ignore[arg-type,unused-ignore]
        speed, heading = float(fix["speed"]), float(fix["heading"])  # type: ignore[arg-type,unused-ignore]
        lat_t, ns, lat_q = _nmea_coord(lat, 2, "NS")
        lon_t, ew, lon_q = _nmea_coord(lon, 3, "EW")
        knots_q = max(0, round(speed / _KNOT_MS * 1000))
        course_q = round(heading * 100) % 36000
        day, micros = divmod(ts, 86_400_000_000)
        date = datetime.fromtimestamp(day * 86_400, UTC)
        secs, us = divmod(micros, 1_000_000)
        hh, rem = divmod(secs, 3600)
        mm, ss = divmod(rem, 60)
        body = (
            f"GPRMC,{hh:02d}{mm:02d}{ss:02d}.{us:06d},A,{lat_t},{ns},{lon_t},{ew},"
            f"{knots_q // 1000}.{knots_q % 1000:03d},{course_q // 100}.{course_q % 100:02d},"
            f"{date:%d%m%y},,"
        )
        line = f"${body}*{nmea_checksum(body):02X}\r\n".encode()
        p = self.prefix
        items: list[Item] = [
            (device, f"{p}/lat", ts, (lat_q if lat >= 0 else -lat_q) / 60e6),
            (device, f"{p}/lon", ts, (lon_q if lon >= 0 else -lon_q) / 60e6),
            (device, f"{p}/speed", ts, knots_q / 1000 * _KNOT_MS),
            (device, f"{p}/course", ts, course_q / 100),
            (device, f"{p}/valid", ts, True),
        ]
        return [Wire(device, line, items)]


# --- BLE -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BTHomeObject:
    """One BTHome v2 measurement: object id, bytes, signed, factor (``None``: a boolean)."""

    id: int
    length: int
    signed: bool
    factor: float | None


BTHOME: Final[Mapping[str, BTHomeObject]] = {
    "battery": BTHomeObject(0x01, 1, signed=False, factor=1),
    "temperature": BTHomeObject(0x02, 2, signed=True, factor=0.01),
    "humidity": BTHomeObject(0x03, 2, signed=False, factor=0.01),
    "pressure": BTHomeObject(0x04, 3, signed=False, factor=0.01),
    "illuminance": BTHomeObject(0x05, 3, signed=False, factor=0.01),
    "dew_point": BTHomeObject(0x08, 2, signed=True, factor=0.01),
    "voltage": BTHomeObject(0x0C, 2, signed=False, factor=0.001),
    "generic": BTHomeObject(0x0F, 1, signed=False, factor=None),
    "power": BTHomeObject(0x10, 1, signed=False, factor=None),
    "opening": BTHomeObject(0x11, 1, signed=False, factor=None),
    "carbon_dioxide": BTHomeObject(0x12, 2, signed=False, factor=1),
    "count": BTHomeObject(0x3E, 4, signed=False, factor=1),
    "rotation": BTHomeObject(0x3F, 2, signed=True, factor=0.1),
    "speed": BTHomeObject(0x44, 2, signed=False, factor=0.01),
    "energy": BTHomeObject(0x4D, 4, signed=False, factor=0.001),
}
"""BTHome measurement (the edge's sensor key, as bthome-ble names it) -> its object."""


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9))


def _quanta(value: Value, step: float, lo: int, hi: int) -> int:
    x = float(value)  # type: ignore[arg-type]
    if not math.isfinite(x):
        return lo
    return min(hi, max(lo, round(x / step)))


def ble_address(type_name: str, index: int) -> str:
    """A device's BLE address: a static random address from its type and index (unique per
    type up to 2**32 devices)."""
    high = (zlib.crc32(type_name.encode()) & 0x3FFF) | 0xC000
    raw = struct.pack(">HI", high, index)
    return ":".join(f"{b:02X}" for b in raw)


@dataclass
class BTHomeEncoder(Encoder):
    """BTHome v2 service data; ``fields`` maps sensor keys to :data:`BTHOME` names."""

    fields: dict[str, str] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    """Device id -> BLE address."""

    def __post_init__(self) -> None:
        self.name = "bthome"
        self.stamped = False
        self.steps = {n: o.factor for n in self.fields.values() if (o := BTHOME[n]).factor}

    def encode(
        self, device: str, ts: int, seq: int, present: Sequence[tuple[str, Value]]
    ) -> list[Wire]:
        objs: list[tuple[int, bytes]] = []
        items: list[Item] = []
        for key, value in present:
            name = self.fields.get(key)
            if name is None:
                continue
            obj = BTHOME[name]
            if obj.factor is None:
                q = 1 if value else 0
                items.append((device, name, ts, bool(q)))
            else:
                bits = obj.length * 8
                lo, hi = (
                    (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
                    if obj.signed
                    else (0, (1 << bits) - 1)
                )
                q = _quanta(value, obj.factor, lo, hi)
                decoded: Value = round(q * obj.factor, _decimals(obj.factor))
                if obj.factor >= 1:
                    decoded = q
                items.append((device, name, ts, decoded))
            objs.append((obj.id, q.to_bytes(obj.length, "little", signed=obj.signed)))
        if not objs:
            return []
        body = bytes([0x40, 0x00, seq & 0xFF]) + b"".join(
            bytes([oid]) + raw for oid, raw in sorted(objs)
        )
        adv = {"address": self.addresses[device], "service_data": {BTHOME_UUID: body.hex()}}
        return [Wire(device, _dumps(adv), items)]


RUUVI_FIELDS: Final = (
    "temperature",
    "humidity",
    "pressure",
    "acceleration_x",
    "acceleration_y",
    "acceleration_z",
    "voltage",
)
"""RuuviTag format 5 fields a sensor can map to (``acceleration`` takes a 3-vector)."""
RUUVI_TARGETS: Final = (*RUUVI_FIELDS, "acceleration")
"""What a ruuvi transport's ``fields`` may name (``acceleration``: a 3-axis stream)."""
_RUUVI: Final = {  # field -> (step, lowest and highest quanta sent)
    "temperature": (0.005, -32767, 32767),
    "humidity": (0.0025, 0, 65534),
    "pressure": (0.01, 50000, 115534),  # hPa * 100, raw = that - 50000
    "acceleration_x": (0.001, -32767, 32767),
    "acceleration_y": (0.001, -32767, 32767),
    "acceleration_z": (0.001, -32767, 32767),
    "voltage": (0.001, 1600, 3646),  # mV, raw = that - 1600
}
_DF5: Final = struct.Struct(">BhHHhhhHBH6s")


@dataclass
class RuuviEncoder(Encoder):
    """RuuviTag data format 5 manufacturer data; ``fields`` maps sensor keys to
    :data:`RUUVI_FIELDS` (or ``acceleration`` for a 3-component stream)."""

    fields: dict[str, str] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = "ruuvi"
        self.stamped = False
        self.steps = {f: _RUUVI[f][0] for f in RUUVI_FIELDS}

    def encode(
        self, device: str, ts: int, seq: int, present: Sequence[tuple[str, Value]]
    ) -> list[Wire]:
        q: dict[str, int] = {}
        items: list[Item] = []
        for key, value in present:
            target = self.fields.get(key)
            if target is None:
                continue
            pairs: list[tuple[str, Value]]
            if target == "acceleration":
                comps = list(value.values()) if isinstance(value, dict) else value
                assert isinstance(comps, list)
                pairs = list(
                    zip(("acceleration_x", "acceleration_y", "acceleration_z"), comps, strict=False)
                )
            else:
                pairs = [(target, value)]
            for f, v in pairs:
                step, lo, hi = _RUUVI[f]
                q[f] = _quanta(v, step, lo, hi)
                items.append((device, f, ts, _ruuvi_value(f, q[f])))
        if not q:
            return []
        sequence = seq % 0xFFFF
        items.append((device, "measurement_sequence", ts, sequence))
        mac = bytes.fromhex(self.addresses[device].replace(":", ""))
        volt = q.get("voltage")
        power = ((volt - 1600) << 5 if volt is not None else 0x7FF << 5) | 0x1F
        data = _DF5.pack(
            5,
            q.get("temperature", -0x8000),
            q.get("humidity", 0xFFFF),
            q["pressure"] - 50000 if "pressure" in q else 0xFFFF,
            q.get("acceleration_x", -0x8000),
            q.get("acceleration_y", -0x8000),
            q.get("acceleration_z", -0x8000),
            power,
            0xFF,
            sequence,
            mac,
        )
        adv = {
            "address": self.addresses[device],
            "manufacturer_data": {str(RUUVI_COMPANY_ID): data.hex()},
        }
        return [Wire(device, _dumps(adv), items)]


def _ruuvi_value(f: str, q: int) -> Value:
    if f == "temperature":
        return round(q * 0.005, 3)
    if f == "humidity":
        return round(q * 0.0025, 4)
    if f == "pressure":
        return round(q / 100, 2)
    return q / 1000


FORMATS: Final = {
    "mqtt": ("json", "value", "senml"),
    "serial": ("jsonl", "csv", "nmea"),
    "http": ("json",),
    "ws": ("json",),
    "ble": ("bthome", "ruuvi"),
}
"""Transport kind -> its formats (the first is the default)."""


def check_fields(where: str, fmt: str, fields: Mapping[str, str]) -> None:
    """``ConfigError`` for a BLE field mapping naming no measurement of ``fmt``."""
    known = tuple(BTHOME) if fmt == "bthome" else RUUVI_TARGETS
    for key, target in fields.items():
        if target not in known:
            raise ConfigError(
                f"{where}.fields.{key}",
                f"{target!r} is not a {fmt} measurement (known: {', '.join(known)})",
            )
    targets = list(fields.values())
    for t in targets:
        if targets.count(t) > 1:
            raise ConfigError(f"{where}.fields", f"two sensors map to {t!r}")
