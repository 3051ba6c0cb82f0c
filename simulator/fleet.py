"""Seeded sensor fleets: who the devices are, what they measure, and when.

A fleet is ``devices x sensors`` series sampled at ``rate_hz`` instants per second from
``start_us``. Sensor ``j`` of every device has kind ``SENSOR_KINDS[j % 8]`` and key
``SENSOR_KEYS[kind]`` (with a suffix ``2``, ``3``... for the second, third... sensor of the same
kind). Series ``(device i, sensor j)`` is seeded by the path ``(seed, i, j)``: adding devices or
sensors leaves every other series unchanged, and any reading can be regenerated from the spec
(``simulator.generators`` explains how).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np

from contract.errors import ConfigError
from contract.model import Reading, Value, valid_name
from simulator.generators import CHUNK, KINDS, generate, instant_ts

__all__ = [
    "SENSOR_KEYS",
    "SENSOR_KINDS",
    "Fleet",
    "FleetSpec",
    "canonical_value",
    "reading_key",
]

SENSOR_KINDS: Final[tuple[str, ...]] = KINDS
"""("temperature", "humidity", "pressure", "co2", "lux", "voltage", "switch", "counter")."""

SENSOR_KEYS: Final[dict[str, str]] = {
    "temperature": "temp",
    "humidity": "hum",
    "pressure": "pres",
    "co2": "co2",
    "lux": "lux",
    "voltage": "batt",
    "switch": "switch",
    "counter": "energy",
}
"""The sensor key (as sent over MQTT) of the first sensor of each kind."""

_MAX_DEVICES: Final = 1_000_000
_MAX_SENSORS: Final = 1_000
_MAX_RATE_HZ: Final = 1_000_000.0  # one instant per microsecond: timestamps stay distinct
_MAX_BLOCK_VALUES: Final = 1 << 20
_FORBIDDEN_IN_PREFIX: Final = frozenset("/+#")


@dataclass(frozen=True)
class FleetSpec:
    """Everything that determines a fleet's readings (nothing else does)."""

    seed: int = 1
    """Fleet seed, >= 0: same seed (and other fields) -> same readings."""
    devices: int = 50
    """Number of devices, 1..1,000,000."""
    sensors: int = 3
    """Sensors per device, 1..1,000; sensor ``j`` has kind ``SENSOR_KINDS[j % 8]``."""
    rate_hz: float = 1.0
    """Instants per second per device (each sensor reads once per instant), 0 < rate <= 1e6."""
    start_us: int = 1_767_225_600_000_000
    """Timestamp of instant 0 in microseconds since the epoch (default 2026-01-01T00:00:00Z)."""
    device_prefix: str = "dev"
    """Device ids are ``f"{prefix}-{i:04d}"``."""

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise ConfigError("seed", f"must be in 0..2**63-1, not {self.seed}")
        if not 1 <= self.devices <= _MAX_DEVICES:
            raise ConfigError("devices", f"must be in 1..{_MAX_DEVICES:,}, not {self.devices}")
        if not 1 <= self.sensors <= _MAX_SENSORS:
            raise ConfigError("sensors", f"must be in 1..{_MAX_SENSORS:,}, not {self.sensors}")
        if not (math.isfinite(self.rate_hz) and 0 < self.rate_hz <= _MAX_RATE_HZ):
            raise ConfigError("rate_hz", f"must be in (0, {_MAX_RATE_HZ:g}], not {self.rate_hz}")
        if not 0 <= self.start_us < 2**62:
            raise ConfigError("start_us", f"must be in 0..2**62-1, not {self.start_us}")
        probe = f"{self.device_prefix}-{self.devices - 1:04d}"
        if (
            not self.device_prefix
            or not valid_name(probe)
            or _FORBIDDEN_IN_PREFIX & set(self.device_prefix)
        ):
            raise ConfigError(
                "device_prefix", f"{self.device_prefix!r} does not make valid device ids"
            )


def _sensor_key(j: int) -> str:
    key = SENSOR_KEYS[SENSOR_KINDS[j % len(SENSOR_KINDS)]]
    rank = j // len(SENSOR_KINDS)
    return key if rank == 0 else f"{key}{rank + 1}"


class Fleet:
    """A fleet built from its spec: device ids, sensor keys, timestamps and values."""

    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        self.device_ids: list[str] = [f"{spec.device_prefix}-{i:04d}" for i in range(spec.devices)]
        self.sensor_keys: list[str] = [_sensor_key(j) for j in range(spec.sensors)]
        self.sensor_kinds: list[str] = [
            SENSOR_KINDS[j % len(SENSOR_KINDS)] for j in range(spec.sensors)
        ]

    def __repr__(self) -> str:
        return f"Fleet({self.spec!r})"

    def ts(self, instant: int) -> int:
        """Timestamp of ``instant`` in us: ``start_us + round(instant * 1e6 / rate_hz)``."""
        return self.spec.start_us + round(instant * 1e6 / self.spec.rate_hz)

    def timestamps(self, start: int, n: int) -> list[int]:
        """``[self.ts(i) for i in range(start, start + n)]``, vectorised."""
        instants = np.arange(start, start + n, dtype=np.int64)
        return instant_ts(self.spec.start_us, self.spec.rate_hz, instants).tolist()  # type: ignore[no-any-return]

    def instants_in(self, seconds: float) -> int:
        """How many instants ``seconds`` of fleet time hold (at least 1)."""
        return max(1, math.ceil(seconds * self.spec.rate_hz))

    def values(self, device: int, sensor: int, start: int, n: int) -> list[Value]:
        """Values of one series at instants ``[start, start + n)``."""
        if not (0 <= device < self.spec.devices and 0 <= sensor < self.spec.sensors):
            raise IndexError(f"no series ({device}, {sensor}) in {self!r}")
        return generate(
            self.sensor_kinds[sensor],
            (self.spec.seed, device, sensor),
            start,
            n,
            start_us=self.spec.start_us,
            rate_hz=self.spec.rate_hz,
        )

    def block(self, start: int, n: int) -> list[list[list[Value]]]:
        """``block[device][sensor]`` = ``values(device, sensor, start, n)`` for every series."""
        return [
            [self.values(d, s, start, n) for s in range(self.spec.sensors)]
            for d in range(self.spec.devices)
        ]

    def block_size(self) -> int:
        """Instants per block such that one block holds about a million values at most."""
        per_instant = self.spec.devices * self.spec.sensors
        return max(1, min(CHUNK, _MAX_BLOCK_VALUES // per_instant))

    def readings(self, start: int, n: int) -> Iterator[Reading]:
        """Every reading of instants ``[start, start + n)``, by instant, device, sensor."""
        step = self.block_size()
        for b0 in range(start, start + n, step):
            bn = min(step, start + n - b0)
            values = self.block(b0, bn)
            stamps = self.timestamps(b0, bn)
            for k, ts in enumerate(stamps):
                for d, device in enumerate(self.device_ids):
                    row = values[d]
                    for s, sensor in enumerate(self.sensor_keys):
                        yield Reading(device, sensor, ts, row[s][k])


def canonical_value(value: object) -> str:
    """The value as canonical JSON: exact floats (shortest repr), sorted keys, NaN as ``NaN``.

    ``1`` and ``1.0`` and ``True`` are three different values here, as they are in JSON.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def reading_key(r: Reading) -> tuple[str, str, int, str]:
    """A hashable identity of a reading for set comparison: ``(device, sensor, ts, JSON value)``.

    Flags are not part of it (the edge may add some); every NaN is the same value.
    """
    return (r.device, r.sensor, r.ts, canonical_value(r.value))
