"""SenML JSON (RFC 8428) payloads -> readings: a pure function, :class:`PayloadError` otherwise.

A SenML pack is a JSON array of records. Base fields (``bn`` base name, ``bt`` base time,
``bu`` base unit, ``bv`` base value, ``bs`` base sum, ``bver`` version) apply to the record
that carries them and to every later record until a record sets them again (RFC 8428 4.4).
Regular fields: ``n`` name, ``u`` unit, ``v`` number, ``vs`` string, ``vb`` boolean, ``vd``
data (base64url), ``s`` sum, ``t`` time, ``ut`` update time.

Resolution (RFC 8428 4.6), one reading per value:

* name = ``bn + n``; it must be non-empty, use only ``A-Z a-z 0-9 - : . / _`` and start with a
  letter or a digit (RFC 8428 4.5.1), else ``bad-name``.
* value = ``bv + v`` (numbers), or ``vs`` (string), ``vb`` (boolean), ``vd`` (kept as its
  base64url text: a reading carries no bytes). Exactly one of ``v``/``vs``/``vb``/``vd`` per
  record, or none when the record has a sum. The sum ``bs + s`` is the value of a record
  without a value field; a record with both gives two readings, the sum under ``<name>/sum``.
* time = ``bt + t`` seconds (both default 0). A resolved time of 2**28 or more is Unix time;
  below 2**28 (about 8.5 years) it is relative to now (RFC 8428 4.5.3): ``0`` is now, ``-5``
  five seconds ago. Relative times are stamped by the edge clock and carry
  ``FLAG_EDGE_STAMPED``; absolute ones far from the edge clock carry ``FLAG_CLOCK_SUSPECT``
  (as in :mod:`edge.sources.payloads`).
* units (``u``/``bu``) and ``ut`` are checked (a string, a number) and dropped: the reading
  model has no unit; describe a sensor's unit once through the hub API.

Device and sensor (``device`` argument):

* a device given (MQTT ``senml_device = "topic"``, the ``{device}`` of the topic; HTTP, the
  device of the token): the whole resolved name is the sensor key.
* ``device=None`` (MQTT ``senml_device = "name"``): the resolved name is split at its **last**
  ``:`` when it has one (``urn:dev:ow:10e2073a01080063:temp`` -> device
  ``urn:dev:ow:10e2073a01080063``, sensor ``temp``), else at its **first** ``/``
  (``boiler-3/temp/in`` -> device ``boiler-3``, sensor ``temp/in``). A name without either,
  or with an empty side, is ``bad-name``.

Strictness: the pack is refused whole on the first bad record, with the reasons of
:data:`edge.sources.payloads.REASONS`: ``bad-shape`` for a non-array, a non-object record, a
field of the wrong type, a record with no or several value fields, an unknown field ending in
``_`` (RFC 8428 4.4: must be understood), or ``bver`` above 10; ``bad-json`` for numbers out of
range; ``bad-timestamp`` for a time out of range; ``no-readings`` for an empty array. Other
unknown fields are ignored, as the RFC asks.
"""

from __future__ import annotations

import math
import re
from typing import Final

from contract.errors import PayloadError
from contract.model import FLAG_CLOCK_SUSPECT, FLAG_EDGE_STAMPED, Reading, Value, now_us
from edge.sources.payloads import (
    CLOCK_FUTURE_US,
    CLOCK_PAST_US,
    check_name,
    check_size,
    load_json,
)

__all__ = ["RELATIVE_TIME_LIMIT_S", "SENML_VERSION", "SUM_SUFFIX", "parse_senml_payload"]

RELATIVE_TIME_LIMIT_S: Final = 2**28
"""Resolved times below this many seconds are relative to now (RFC 8428 4.5.3)."""
SENML_VERSION: Final = 10
"""The SenML version this parser understands (``bver`` above it is refused)."""
SUM_SUFFIX: Final = "/sum"
"""Appended to the sensor of a record's sum when the record also has a value."""

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-:./_]*")
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_VALUE_FIELDS: Final = ("v", "vs", "vb", "vd")
_INT64_MAX: Final = 2**63 - 1
_KNOWN: Final = frozenset(
    {"bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut"}
)


def parse_senml_payload(
    payload: bytes, device: str | None, now: int | None = None
) -> list[Reading]:
    """The readings of a SenML JSON pack; ``device=None`` takes devices from the names."""
    check_size(payload)
    if device is not None:
        check_name(device, "device")
    doc = load_json(payload)
    if not isinstance(doc, list):
        raise PayloadError("bad-shape", "a SenML pack is a JSON array of records")
    if not doc:
        raise PayloadError("no-readings", "the SenML pack is empty")
    now = now_us() if now is None else now
    bn, bt, bv, bs = "", 0.0, 0.0, 0.0
    readings: list[Reading] = []
    for i, rec in enumerate(doc):
        if not isinstance(rec, dict):
            raise PayloadError("bad-shape", f"record {i} is not an object")
        for key in rec:
            if key not in _KNOWN and key.endswith("_"):
                raise PayloadError(
                    "bad-shape", f"record {i}: field {key[:40]!r} must be understood (RFC 8428)"
                )
        if "bver" in rec:
            ver = rec["bver"]
            if not isinstance(ver, int) or isinstance(ver, bool) or not 1 <= ver <= SENML_VERSION:
                raise PayloadError(
                    "bad-shape", f"record {i}: bver {ver!r} (versions 1..{SENML_VERSION} only)"
                )
        if "bn" in rec:
            bn = _string(rec["bn"], "bn", i)
        if "bt" in rec:
            bt = _number(rec["bt"], "bt", i)
        if "bu" in rec:
            _string(rec["bu"], "bu", i)
        if "bv" in rec:
            bv = _number(rec["bv"], "bv", i)
        if "bs" in rec:
            bs = _number(rec["bs"], "bs", i)
        n = _string(rec["n"], "n", i) if "n" in rec else ""
        if "u" in rec:
            _string(rec["u"], "u", i)
        if "ut" in rec:
            _number(rec["ut"], "ut", i)
        name = bn + n
        if not _NAME_RE.fullmatch(name):
            raise PayloadError(
                "bad-name",
                f"record {i}: name {name[:160]!r} is empty or not of A-Z a-z 0-9 - : . / _ "
                "starting with a letter or digit",
            )
        dev, sensor = (device, name) if device is not None else _split(name, i)
        check_name(dev, "device")
        check_name(sensor, "sensor")
        ts, flags = _time(bt + (_number(rec["t"], "t", i) if "t" in rec else 0.0), now, i)
        fields = [f for f in _VALUE_FIELDS if f in rec]
        has_sum = "s" in rec
        if len(fields) > 1 or (not fields and not has_sum):
            raise PayloadError(
                "bad-shape",
                f"record {i} needs exactly one of v, vs, vb, vd (or only a sum s), "
                f"got {', '.join(fields) or 'none'}",
            )
        if fields:
            value = _value(fields[0], rec[fields[0]], bv, i)
            readings.append(Reading(dev, sensor, ts, value, flags))
        if has_sum:
            total = _finite(bs + _number(rec["s"], "s", i), "s", i)
            sum_sensor = sensor + SUM_SUFFIX if fields else sensor
            check_name(sum_sensor, "sensor")
            readings.append(Reading(dev, sum_sensor, ts, total, flags))
    return readings


def _split(name: str, i: int) -> tuple[str, str]:
    cut = name.rfind(":")
    if cut < 0:
        cut = name.find("/")
    if cut <= 0 or cut == len(name) - 1:
        raise PayloadError(
            "bad-name",
            f"record {i}: name {name[:160]!r} does not split into device and sensor "
            "(at its last ':' or first '/')",
        )
    return name[:cut], name[cut + 1 :]


def _string(raw: object, field: str, i: int) -> str:
    if not isinstance(raw, str):
        raise PayloadError("bad-shape", f"record {i}: {field} must be a string")
    return raw


def _number(raw: object, field: str, i: int) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise PayloadError("bad-shape", f"record {i}: {field} must be a number")
    return _finite(raw, field, i)


def _finite(raw: float, field: str, i: int) -> float:
    try:
        ok = math.isfinite(raw)
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        raise PayloadError("bad-json", f"record {i}: {field} is out of range")
    return raw


def _value(field: str, raw: object, bv: float, i: int) -> Value:
    if field == "v":
        number = _number(raw, "v", i)
        return _finite(bv + number, "v", i) if bv else number
    if field == "vb":
        if not isinstance(raw, bool):
            raise PayloadError("bad-shape", f"record {i}: vb must be true or false")
        return raw
    text = _string(raw, field, i)
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise PayloadError("bad-utf8", f"record {i}: {field} is not encodable as UTF-8") from exc
    if field == "vd" and (len(text) % 4 == 1 or not _B64URL_RE.fullmatch(text)):
        raise PayloadError("bad-shape", f"record {i}: vd is not base64url data")
    return text


def _time(seconds: float, now: int, i: int) -> tuple[int, int]:
    if not math.isfinite(seconds):
        raise PayloadError("bad-timestamp", f"record {i}: time is out of range")
    try:
        us = round(seconds * 1_000_000)
    except OverflowError as exc:  # pragma: no cover - finite floats round fine
        raise PayloadError("bad-timestamp", f"record {i}: time is out of range") from exc
    relative = seconds < RELATIVE_TIME_LIMIT_S
    ts = now + us if relative else us
    suspect = ts < now - CLOCK_PAST_US or ts > now + CLOCK_FUTURE_US
    flags = (FLAG_EDGE_STAMPED if relative else 0) | (FLAG_CLOCK_SUSPECT if suspect else 0)
    if not -_INT64_MAX - 1 <= ts <= _INT64_MAX:
        raise PayloadError("bad-timestamp", f"record {i}: time is out of range")
    return ts, flags
