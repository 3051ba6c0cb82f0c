"""The reading: what every source produces and every store keeps.

A reading is ``(device, sensor, ts, value)`` plus a few flag bits. ``ts`` is an integer count of
microseconds since the Unix epoch, UTC: fine enough for kHz sensors, exact in an int64 until the
year 294,247. ``value`` is a number, a boolean, a string, or a small JSON document (a vector, a
GPS fix). ``sensor`` may be a path (``imu/accel/x``) so sensors nest.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "FLAG_CLOCK_SUSPECT",
    "FLAG_EDGE_STAMPED",
    "MAX_NAME_LEN",
    "Reading",
    "Value",
    "now_us",
    "valid_name",
]

Value = float | int | bool | str | dict[str, Any] | list[Any]
"""A reading's value. ``dict``/``list`` values are small JSON documents."""

FLAG_EDGE_STAMPED: Final = 0x01
"""The device sent no timestamp; the edge stamped the reading when it arrived."""
FLAG_CLOCK_SUSPECT: Final = 0x02
"""The device's timestamp was implausible (far from the edge's clock); kept, but flagged."""

MAX_NAME_LEN: Final = 128
"""Longest device id or sensor key, in characters."""

_BAD_NAME: Final = re.compile(r"[\x00-\x1f\x7f]|^/|/$|//")


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement of one sensor of one device."""

    device: str
    sensor: str
    ts: int
    """Microseconds since the Unix epoch, UTC."""
    value: Value
    flags: int = 0
    """Bit set of ``FLAG_*``."""


def now_us() -> int:
    """The current wall-clock time in microseconds since the epoch."""
    return time.time_ns() // 1000


def valid_name(name: str) -> bool:
    """Whether ``name`` may be a device id or sensor key.

    Non-empty, at most ``MAX_NAME_LEN`` characters, no control characters, no leading or
    trailing ``/`` and no empty path segment.
    """
    return 0 < len(name) <= MAX_NAME_LEN and _BAD_NAME.search(name) is None
