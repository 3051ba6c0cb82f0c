"""Device payloads -> readings: pure functions, :class:`PayloadError` on anything else.

Two formats here (``[[mqtt]].topics[].format``), and ``senml`` in :mod:`edge.sources.senml`:

``value``
    The topic names device and sensor. The payload is one JSON value: a number, ``true``/
    ``false``, a string, or a JSON document (object or array), stamped by the edge on arrival;
    or the object ``{"ts": T, "value": V}`` (exactly those keys, ``ts`` optional) to carry the
    device's timestamp. An object with ``ts`` and no ``value`` is refused (``bad-shape``).

``json``
    The topic names the device. The payload is an object ``{"ts": T, "temp": 21.5, ...}``: one
    reading per key except ``ts``, the key being the sensor; or an array of such objects, one
    instant each. Values are numbers, booleans, strings or JSON documents.

Timestamps (``T``): a number is Unix time whose magnitude picks the unit (< 1e11 seconds,
< 1e14 milliseconds, < 1e17 microseconds, else nanoseconds; fractions allowed); a string is
ISO 8601 with an offset (``2024-05-01T12:00:00.25Z``). Without ``ts`` the edge stamps
:func:`~contract.model.now_us` and sets ``FLAG_EDGE_STAMPED``; a ``ts`` more than a year before
or an hour after the edge clock is kept with ``FLAG_CLOCK_SUSPECT``.

Rejection reasons (``PayloadError.reason``, used as counter keys): ``too-large`` (over
:data:`MAX_PAYLOAD_BYTES`), ``bad-utf8``, ``bad-json`` (also NaN/Infinity, out-of-range numbers
and duplicate keys), ``bad-shape``, ``bad-timestamp``, ``bad-name`` (device or sensor fails
:func:`~contract.model.valid_name`), ``no-readings``. A bad message is refused whole.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from contract.errors import PayloadError
from contract.model import FLAG_CLOCK_SUSPECT, FLAG_EDGE_STAMPED, Reading, Value, now_us, valid_name

__all__ = [
    "CLOCK_FUTURE_US",
    "CLOCK_PAST_US",
    "MAX_PAYLOAD_BYTES",
    "REASONS",
    "check_name",
    "check_size",
    "load_json",
    "parse_json_payload",
    "parse_timestamp",
    "parse_value_payload",
]

MAX_PAYLOAD_BYTES: Final = 256 * 1024
"""Largest payload accepted; a bigger one is refused with ``too-large``."""
CLOCK_PAST_US: Final = 365 * 24 * 3600 * 1_000_000
"""A device timestamp older than this (relative to the edge clock) is flagged suspect."""
CLOCK_FUTURE_US: Final = 3600 * 1_000_000
"""A device timestamp further ahead than this is flagged suspect."""
REASONS: Final = (
    "too-large",
    "bad-utf8",
    "bad-json",
    "bad-shape",
    "bad-timestamp",
    "bad-name",
    "no-readings",
)
"""Every reason the parsers give."""

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_MAX_TS_TEXT: Final = 64
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
_TS: Final = "ts"
_VALUE: Final = "value"


def parse_value_payload(
    payload: bytes, device: str, sensor: str, now: int | None = None
) -> list[Reading]:
    """The one reading of a ``value`` payload published for ``device``/``sensor``."""
    check_size(payload)
    check_name(device, "device")
    check_name(sensor, "sensor")
    doc = load_json(payload)
    now = now_us() if now is None else now
    if isinstance(doc, dict) and _TS in doc and _VALUE not in doc:
        raise PayloadError("bad-shape", "an object with 'ts' needs a 'value' key")
    if isinstance(doc, dict) and _VALUE in doc and doc.keys() <= {_TS, _VALUE}:
        ts, flags = parse_timestamp(doc[_TS], now) if _TS in doc else (now, FLAG_EDGE_STAMPED)
        value = _value(doc[_VALUE], _VALUE)
    else:
        ts, flags = now, FLAG_EDGE_STAMPED
        value = _value(doc, "payload")
    return [Reading(device, sensor, ts, value, flags)]


def parse_json_payload(payload: bytes, device: str, now: int | None = None) -> list[Reading]:
    """The readings of a ``json`` payload published for ``device``."""
    check_size(payload)
    check_name(device, "device")
    doc = load_json(payload)
    now = now_us() if now is None else now
    if isinstance(doc, dict):
        instants: list[Any] = [doc]
    elif isinstance(doc, list):
        instants = doc
    else:
        raise PayloadError(
            "bad-shape",
            f"expected an object of sensor values or an array of them, got {_kind(doc)}",
        )
    readings: list[Reading] = []
    for i, instant in enumerate(instants):
        if not isinstance(instant, dict):
            raise PayloadError(
                "bad-shape", f"item {i} of the array is {_kind(instant)}, not an object"
            )
        if _TS in instant:
            ts, flags = parse_timestamp(instant[_TS], now)
        else:
            ts, flags = now, FLAG_EDGE_STAMPED
        for key, raw in instant.items():
            if key == _TS:
                continue
            check_name(key, "sensor key")
            readings.append(Reading(device, key, ts, _value(raw, key), flags))
    if not readings:
        raise PayloadError("no-readings", "the payload holds no sensor values")
    return readings


def parse_timestamp(raw: object, now: int) -> tuple[int, int]:
    """``(ts in microseconds, flags)`` of a device timestamp; ``now`` is the edge clock."""
    if isinstance(raw, bool) or raw is None:
        raise PayloadError(
            "bad-timestamp", f"ts must be a number or an ISO 8601 string, got {raw!r}"
        )
    if isinstance(raw, int):
        ts = _int_ts(raw)
    elif isinstance(raw, float):
        if not math.isfinite(raw):
            raise PayloadError("bad-timestamp", f"ts is not finite: {raw!r}")
        ts = _float_ts(raw)
    elif isinstance(raw, str):
        ts = _iso_ts(raw)
    else:
        raise PayloadError(
            "bad-timestamp", f"ts must be a number or an ISO 8601 string, got {_kind(raw)}"
        )
    if not _INT64_MIN <= ts <= _INT64_MAX:
        raise PayloadError("bad-timestamp", f"ts {raw!r} is out of range")
    suspect = ts < now - CLOCK_PAST_US or ts > now + CLOCK_FUTURE_US
    return ts, FLAG_CLOCK_SUSPECT if suspect else 0


# --------------------------------------------------------------------------- helpers


def check_size(payload: bytes) -> None:
    """``too-large`` past :data:`MAX_PAYLOAD_BYTES`."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            "too-large", f"{len(payload)} bytes (at most {MAX_PAYLOAD_BYTES} are accepted)"
        )


_KNOWN_GOOD: set[str] = set()
"""Names already checked: devices and sensors repeat in every message, so check each once."""
_KNOWN_GOOD_MAX: Final = 100_000


def check_name(name: str, what: str) -> None:
    """``bad-name`` unless ``name`` is a valid device id or sensor key (``what`` says which)."""
    if name in _KNOWN_GOOD:
        return
    if not valid_name(name):
        raise PayloadError("bad-name", f"{what} {name[:160]!r} is not a valid name")
    try:
        name.encode()
    except UnicodeEncodeError as exc:
        raise PayloadError("bad-utf8", f"{what} is not encodable as UTF-8") from exc
    if len(_KNOWN_GOOD) >= _KNOWN_GOOD_MAX:
        _KNOWN_GOOD.clear()
    _KNOWN_GOOD.add(name)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {dup[:80]!r}")
    return doc


def load_json(payload: bytes) -> Any:
    """The JSON document of ``payload``: strict (no NaN/Infinity, no duplicate keys)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("bad-utf8", f"payload is not UTF-8 (byte {exc.start})") from exc
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError as exc:
        raise PayloadError("bad-json", "nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, and the hooks above
        raise PayloadError("bad-json", str(exc)[:200]) from exc


def _value(raw: object, what: str) -> Value:
    if raw is None:
        raise PayloadError("bad-shape", f"{what[:80]!r} is null, not a value")
    if isinstance(raw, bool | int):
        return raw
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise PayloadError("bad-json", f"{what[:80]!r}: number out of range")
        return raw
    if isinstance(raw, str):
        try:
            raw.encode()
        except UnicodeEncodeError as exc:
            raise PayloadError(
                "bad-utf8", f"{what[:80]!r}: string is not encodable as UTF-8"
            ) from exc
        return raw
    if isinstance(raw, dict | list):
        try:
            json.dumps(raw, ensure_ascii=False, allow_nan=False).encode()
        except UnicodeEncodeError as exc:
            raise PayloadError(
                "bad-utf8", f"{what[:80]!r}: string is not encodable as UTF-8"
            ) from exc
        except (ValueError, RecursionError) as exc:
            raise PayloadError("bad-json", f"{what[:80]!r}: number out of range") from exc
        return raw
    raise PayloadError("bad-shape", f"{what[:80]!r} is {_kind(raw)}")  # pragma: no cover


def _int_ts(raw: int) -> int:
    magnitude = abs(raw)
    if magnitude < 10**11:
        return raw * 1_000_000
    if magnitude < 10**14:
        return raw * 1_000
    if magnitude < 10**17:
        return raw
    return raw // 1_000


def _float_ts(raw: float) -> int:
    magnitude = abs(raw)
    try:
        if magnitude < 1e11:
            return round(raw * 1e6)
        if magnitude < 1e14:
            return round(raw * 1e3)
        if magnitude < 1e17:
            return round(raw)
        return round(raw / 1e3)
    except OverflowError as exc:  # pragma: no cover - finite floats round fine
        raise PayloadError("bad-timestamp", f"ts {raw!r} is out of range") from exc


def _iso_ts(raw: str) -> int:
    if len(raw) > _MAX_TS_TEXT:
        raise PayloadError("bad-timestamp", f"ts string longer than {_MAX_TS_TEXT} characters")
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise PayloadError("bad-timestamp", f"ts {raw!r} is not ISO 8601") from exc
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise PayloadError("bad-timestamp", f"ts {raw!r} has no UTC offset (add Z or +hh:mm)")
    try:
        return (dt - _EPOCH) // _ONE_US
    except OverflowError as exc:
        raise PayloadError("bad-timestamp", f"ts {raw!r} is out of range") from exc


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )
