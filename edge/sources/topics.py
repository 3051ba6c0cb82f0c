"""Topic patterns: where a source finds the device and the sensor of a message in its topic.

A pattern is a ``/``-separated list of segments; each segment is a literal or one of the
placeholders ``{device}`` and ``{sensor}``. ``{device}`` matches exactly one topic level.
``{sensor}`` matches one level, or, when it is the last segment of the pattern, the whole rest
of the topic (so ``sensors/{device}/{sensor}`` gives sensor ``imu/accel/x`` for the topic
``sensors/d1/imu/accel/x``). The MQTT subscription filter is derived from the pattern:
placeholders become ``+``, a trailing ``{sensor}`` becomes ``#``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

__all__ = ["DEVICE", "SENSOR", "TopicMatch", "TopicPattern", "filters_overlap"]

DEVICE: Final = "{device}"
SENSOR: Final = "{sensor}"
_FORBIDDEN: Final = frozenset("+#{}\x00")


@dataclass(frozen=True, slots=True)
class TopicMatch:
    """What a topic says: the device, and the sensor when the pattern has one."""

    device: str
    sensor: str | None


@dataclass(frozen=True, slots=True)
class TopicPattern:
    """One parsed pattern; build it with :meth:`parse`."""

    pattern: str
    filter: str
    """The MQTT subscription filter (``+``/``#`` wildcards)."""
    has_sensor: bool
    _regex: re.Pattern[str] = field(repr=False, compare=False)
    _device_group: int = field(repr=False, compare=False)
    _sensor_group: int = field(repr=False, compare=False)

    @classmethod
    def parse(cls, pattern: str) -> TopicPattern:
        """Parse ``pattern``; raises ``ValueError`` with a one-line reason if it is not valid."""
        if not pattern:
            raise ValueError("pattern is empty")
        segments = pattern.split("/")
        if segments.count(DEVICE) != 1:
            raise ValueError("pattern must contain {device} exactly once, as a whole level")
        if segments.count(SENSOR) > 1:
            raise ValueError("pattern may contain {sensor} at most once")
        regex: list[str] = []
        filt: list[str] = []
        groups: dict[str, int] = {}
        for i, seg in enumerate(segments):
            if seg in {DEVICE, SENSOR}:
                groups[seg] = len(groups) + 1
                if seg == SENSOR and i == len(segments) - 1:
                    regex.append("(.+)")
                    filt.append("#")
                else:
                    regex.append("([^/]+)")
                    filt.append("+")
            elif any(c in _FORBIDDEN for c in seg):
                raise ValueError(
                    f"level {seg!r} must be a literal or a whole {{device}}/{{sensor}} placeholder"
                    " (no '+', '#', braces)"
                )
            else:
                regex.append(re.escape(seg))
                filt.append(seg)
        return cls(
            pattern=pattern,
            filter="/".join(filt),
            has_sensor=SENSOR in groups,
            _regex=re.compile("/".join(regex)),
            _device_group=groups[DEVICE],
            _sensor_group=groups.get(SENSOR, 0),
        )

    def match(self, topic: str) -> TopicMatch | None:
        """The device and sensor ``topic`` names, or ``None`` if it does not fit the pattern."""
        m = self._regex.fullmatch(topic)
        if m is None:
            return None
        sensor = m.group(self._sensor_group) if self._sensor_group else None
        return TopicMatch(m.group(self._device_group), sensor)


def filters_overlap(a: str, b: str) -> bool:
    """Whether some topic matches both MQTT filters ``a`` and ``b``."""
    sa, sb = a.split("/"), b.split("/")
    for i in range(max(len(sa), len(sb))):
        x = sa[i] if i < len(sa) else None
        y = sb[i] if i < len(sb) else None
        if x == "#" or y == "#":
            return True  # '#' also matches its parent level, so the shorter side fits too
        if x is None or y is None:
            return False
        if x != y and "+" not in {x, y}:
            return False
    return True
