"""BLE advertisements -> sensor values: pure functions, :class:`PayloadError` on bad data.

Everything above the radio works on an :class:`Advertisement` (address, name, RSSI, manufacturer
data, service data, arrival time), so tests feed recorded advertisement bytes through the same
code as the scanner. Three decoders (``[[ble]].decoder``), a table (:data:`DECODERS`) of three
functions each:

``bthome``
    BTHome v2 (service data of UUID ``0xFCD2``), parsed by the maintained ``bthome-ble`` package
    (one fresh parser per advertisement: stateless, so this module decides about duplicates).
    Sensor keys are bthome-ble's: ``temperature``, ``humidity``, ``battery``; repeated objects
    of one kind are ``temperature_1``, ``temperature_2``; binary sensors are booleans
    (``opening``), events strings (``button`` = ``"press"``) or, with properties, documents
    (``dimmer`` = ``{"event": "rotate_left", "steps": 3}``); a BTHome timestamp object is Unix
    seconds. ``packet_id`` is not a reading: it only marks repeats. As in bthome-ble, objects
    after an unknown object id are skipped and those before it kept.
``ruuvi``
    RuuviTag data format 5 (RAWv2; manufacturer id ``0x0499``), decoded here per Ruuvi's
    published spec: ``temperature`` (C), ``humidity`` (%), ``pressure`` (hPa),
    ``acceleration_x|y|z`` (g), ``voltage`` (V), ``tx_power`` (dBm), ``movement_counter``,
    ``measurement_sequence``. A field holding the spec's "not available" pattern gives no
    reading; a frame of another length is refused.
``raw``
    No decoding: each manufacturer data entry is a reading ``manufacturer/<id, 4 hex digits>``
    and each service data entry ``service/<uuid>`` (16-bit UUIDs of the Bluetooth base UUID
    shortened to 4 hex digits), the value being the bytes as a lowercase hex string.

Each decoder has ``relevant`` (does the advertisement carry its kind of data at all? if not it
is ignored, not refused: most advertisements in the air are someone else's), ``data`` (the
bytes it decodes, compared to tell an identical repeat) and ``decode``. Rejection reasons
(:data:`REASONS`): ``bad-bthome``, ``encrypted``, ``bad-ruuvi``, ``unsupported-format``,
``bad-value``, ``no-readings``.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from contract.errors import PayloadError
from contract.model import Value

if TYPE_CHECKING:
    from bthome_ble import BTHomeBluetoothDeviceData

__all__ = [
    "BTHOME_UUID",
    "DECODERS",
    "REASONS",
    "RUUVI_COMPANY_ID",
    "Advertisement",
    "BleDecoder",
    "Decoded",
    "Decoder",
    "decode_bthome",
    "decode_raw",
    "decode_ruuvi",
]

BTHOME_UUID: Final = "0000fcd2-0000-1000-8000-00805f9b34fb"
"""Service data UUID of BTHome v2 (16-bit ``0xFCD2`` in the Bluetooth base UUID)."""
RUUVI_COMPANY_ID: Final = 0x0499
"""Ruuvi Innovations' Bluetooth SIG company identifier (manufacturer data key)."""
REASONS: Final = (
    "bad-bthome",
    "encrypted",
    "bad-ruuvi",
    "unsupported-format",
    "bad-value",
    "no-readings",
)
"""Every reason the decoders give."""

_BASE_UUID_TAIL: Final = "-0000-1000-8000-00805f9b34fb"
_LOG_INTERVAL_S: Final = 60.0


class BleDecoder(StrEnum):
    """What a ``[[ble]]`` source makes of the advertisements it keeps."""

    BTHOME = "bthome"
    """BTHome v2 service data, parsed by bthome-ble."""
    RUUVI = "ruuvi"
    """RuuviTag data format 5 manufacturer data."""
    RAW = "raw"
    """Manufacturer and service data kept as hex strings, for later decoding."""


@dataclass(frozen=True, slots=True)
class Advertisement:
    """One received advertisement: what the scanner hands the source (and tests build)."""

    address: str
    """Bluetooth address as the OS reports it (``A4:C1:38:8D:18:B2``; a UUID on macOS)."""
    name: str | None
    """Local name from the advertisement, if any."""
    rssi: int
    """Received signal strength, dBm."""
    manufacturer_data: Mapping[int, bytes]
    """Company id -> bytes after the id."""
    service_data: Mapping[str, bytes]
    """128-bit service UUID (lowercase) -> bytes."""
    timestamp: int
    """Arrival time, microseconds since the epoch (the readings' ``ts``)."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """What a decoder found: sensor values, and whether the data carries a repeat counter."""

    values: dict[str, Value]
    counted: bool
    """The data carries a packet id / sequence number, so an identical repeat is the same
    measurement sent again (``raw`` data counts as such too: see the module docstring)."""


@dataclass(frozen=True, slots=True)
class Decoder:
    """One row of :data:`DECODERS`."""

    relevant: Callable[[Advertisement], bool]
    data: Callable[[Advertisement], bytes]
    decode: Callable[[Advertisement], Decoded]


# --------------------------------------------------------------------------- BTHome


class _RateLimit(logging.Filter):
    """Lets each message template of bthome-ble through once a minute: a device sending odd
    packets must not flood the log (our own counters and log lines say what happened)."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[object, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        last = self._last.get(record.msg)
        if last is not None and now - last < _LOG_INTERVAL_S:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[record.msg] = now
        return True


_parser_class: type[BTHomeBluetoothDeviceData] | None = None


def _bthome_parser() -> BTHomeBluetoothDeviceData:
    """A fresh bthome-ble parser (imported on first use: an edge without BLE never loads it)."""
    global _parser_class  # noqa: PLW0603 - a lazily imported class, set once
    if _parser_class is None:
        from bthome_ble import BTHomeBluetoothDeviceData  # noqa: PLC0415 - lazy, see above

        logging.getLogger("bthome_ble").addFilter(_RateLimit())
        logging.getLogger("bthome_ble.parser").addFilter(_RateLimit())
        _parser_class = BTHomeBluetoothDeviceData
    return _parser_class()


def _bthome_relevant(adv: Advertisement) -> bool:
    return BTHOME_UUID in adv.service_data


def _bthome_data(adv: Advertisement) -> bytes:
    return adv.service_data.get(BTHOME_UUID, b"")


def decode_bthome(adv: Advertisement) -> Decoded:
    """The sensor values of a BTHome v2 advertisement."""
    from bleak.backends.device import BLEDevice  # noqa: PLC0415 - lazy with bthome-ble
    from habluetooth import BluetoothServiceInfoBleak  # noqa: PLC0415

    data = _bthome_data(adv)
    if not data:
        raise PayloadError("bad-bthome", "empty BTHome service data")
    version = data[0] >> 5
    if version != 2:
        raise PayloadError("bad-bthome", f"BTHome version {version} (only v2 is decoded)")
    if data[0] & 0x01:
        raise PayloadError("encrypted", "encrypted BTHome data (no bindkey support)")
    info = BluetoothServiceInfoBleak(
        name=adv.name or adv.address,
        address=adv.address,
        rssi=adv.rssi,
        manufacturer_data=dict(adv.manufacturer_data),
        service_data={BTHOME_UUID: data},
        service_uuids=[BTHOME_UUID],
        source="cairn",
        device=BLEDevice(adv.address, adv.name, None),
        advertisement=None,
        connectable=False,
        time=adv.timestamp / 1e6,
        tx_power=None,
    )
    update = _bthome_parser().update(info)
    values: dict[str, Value] = {}
    counted = False
    for key, sensor in update.entity_values.items():
        name = _bthome_key(key.key, key.device_id)
        if name == "packet_id":
            counted = True
            continue
        if name == "signal_strength" or sensor.native_value is None:
            continue
        values[name] = _bthome_value(name, sensor.native_value)
    for key, binary in update.binary_entity_values.items():
        if binary.native_value is not None:
            values[_bthome_key(key.key, key.device_id)] = bool(binary.native_value)
    for key, event in update.events.items():
        props = {k: v for k, v in (event.event_properties or {}).items() if v is not None}
        for v in props.values():
            if isinstance(v, float) and not math.isfinite(v):
                raise PayloadError("bad-value", f"event {key.key}: non-finite property")
        name = _bthome_key(key.key, key.device_id)
        values[name] = {"event": event.event_type, **props} if props else event.event_type
    if not values:
        raise PayloadError("bad-bthome", f"no measurement in BTHome data {data.hex()}")
    return Decoded(values, counted)


def _bthome_key(key: str, device_id: str | None) -> str:
    return key if device_id is None else f"{key}_{device_id}"


def _bthome_value(name: str, value: object) -> Value:
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadError("bad-value", f"{name}: {value} is not a finite number")
        return value
    if isinstance(value, datetime):
        return int(value.timestamp())
    if isinstance(value, Decimal):
        return _bthome_value(name, float(value))
    raise PayloadError("bad-value", f"{name}: unsupported value {type(value).__name__}")


# --------------------------------------------------------------------------- RuuviTag


_DF5: Final = struct.Struct(">BhHHhhhHBH6s")
"""Data format 5: format, temperature, humidity, pressure, acceleration x/y/z, power info,
movement counter, measurement sequence, MAC (24 bytes, big-endian)."""
_DF5_FORMAT: Final = 5


def _ruuvi_relevant(adv: Advertisement) -> bool:
    return RUUVI_COMPANY_ID in adv.manufacturer_data


def _ruuvi_data(adv: Advertisement) -> bytes:
    return adv.manufacturer_data.get(RUUVI_COMPANY_ID, b"")


def decode_ruuvi(adv: Advertisement) -> Decoded:
    """The sensor values of a RuuviTag data format 5 advertisement."""
    data = _ruuvi_data(adv)
    if not data:
        raise PayloadError("bad-ruuvi", "empty Ruuvi manufacturer data")
    if data[0] != _DF5_FORMAT:
        raise PayloadError(
            "unsupported-format", f"Ruuvi data format {data[0]} (only format 5 is decoded)"
        )
    if len(data) != _DF5.size:
        raise PayloadError(
            "bad-ruuvi", f"data format 5 is {_DF5.size} bytes, got {len(data)}: {data.hex()}"
        )
    _, temp, hum, pres, ax, ay, az, power, movement, seq, _mac = _DF5.unpack(data)
    values: dict[str, Value] = {}
    if temp != -0x8000:
        values["temperature"] = round(temp * 0.005, 3)
    if hum != 0xFFFF:
        values["humidity"] = round(hum * 0.0025, 4)
    if pres != 0xFFFF:
        values["pressure"] = round((pres + 50_000) / 100, 2)
    for axis, raw in (("x", ax), ("y", ay), ("z", az)):
        if raw != -0x8000:
            values[f"acceleration_{axis}"] = raw / 1000
    battery, tx = power >> 5, power & 0x1F
    if battery != 0x7FF:
        values["voltage"] = (battery + 1600) / 1000
    if tx != 0x1F:
        values["tx_power"] = tx * 2 - 40
    if movement != 0xFF:
        values["movement_counter"] = movement
    counted = seq != 0xFFFF
    if counted:
        values["measurement_sequence"] = seq
    if not values:
        raise PayloadError("no-readings", f"every field is 'not available': {data.hex()}")
    return Decoded(values, counted)


# --------------------------------------------------------------------------- raw


def _short_uuid(uuid: str) -> str:
    u = uuid.lower()
    if u.startswith("0000") and u.endswith(_BASE_UUID_TAIL) and len(u) == 36:
        return u[4:8]
    return u


def _raw_relevant(adv: Advertisement) -> bool:
    return bool(adv.manufacturer_data) or bool(adv.service_data)


def _raw_data(adv: Advertisement) -> bytes:
    parts: list[bytes] = []
    for cid, payload in sorted(adv.manufacturer_data.items()):
        parts += [b"M", cid.to_bytes(2, "little"), len(payload).to_bytes(4, "little"), payload]
    for uuid, payload in sorted(adv.service_data.items()):
        raw = uuid.encode("utf-8", "surrogateescape")
        parts += [b"S", len(raw).to_bytes(2, "little"), raw]
        parts += [len(payload).to_bytes(4, "little"), payload]
    return b"".join(parts)


def decode_raw(adv: Advertisement) -> Decoded:
    """Manufacturer and service data as hex strings, one reading per entry."""
    values: dict[str, Value] = {}
    for cid, payload in adv.manufacturer_data.items():
        if not 0 <= cid <= 0xFFFF:
            raise PayloadError("bad-value", f"manufacturer id {cid} out of range")
        values[f"manufacturer/{cid:04x}"] = payload.hex()
    for uuid, payload in adv.service_data.items():
        short = _short_uuid(uuid)
        if not short or any(not (c.isalnum() or c == "-") for c in short):
            raise PayloadError("bad-value", f"service UUID {uuid!r} is not a UUID")
        values[f"service/{short}"] = payload.hex()
    if not values:
        raise PayloadError("no-readings", "no manufacturer or service data")
    return Decoded(values, counted=True)


DECODERS: Final[dict[BleDecoder, Decoder]] = {
    BleDecoder.BTHOME: Decoder(_bthome_relevant, _bthome_data, decode_bthome),
    BleDecoder.RUUVI: Decoder(_ruuvi_relevant, _ruuvi_data, decode_ruuvi),
    BleDecoder.RAW: Decoder(_raw_relevant, _raw_data, decode_raw),
}
"""Decoder per ``[[ble]].decoder`` value."""
