"""Line-oriented device output -> readings: the framer and the parsers of the serial source.

:class:`LineFramer` cuts a byte stream into lines (``\\n``, an optional ``\\r`` before it is
dropped): partial lines are kept until their end arrives; a line longer than ``max_line`` bytes
is counted once and skipped up to the next newline (the stream resynchronises there); blank
lines are skipped.

Each parser turns one line (bytes, without its terminator) into readings of one device, or
raises :class:`~contract.errors.PayloadError`; a bad line is refused whole, its neighbours are
not affected. The parsers (``[[serial]].parser``):

``json``
    One JSON object per line, ``{"ts": T, "temp": 21.5, ...}``: exactly the ``json`` MQTT
    payload (:func:`edge.sources.payloads.parse_json_payload`: same rules, same reasons).

``csv``
    Comma (or ``delimiter``) separated values, quoted fields allowed. The column names come from
    ``columns`` (``""`` skips a column) or, without it, from a header line: a line none of
    whose fields is a number and all of which are valid, distinct names; a new header line
    (the device restarted) replaces the old one. The column named ``ts_field`` is the
    timestamp, the others are sensors; an empty field is a missing value (no reading).

``keyvalue``
    ``temp=21.5 hum=40 ts=1700000000``: pairs separated by spaces, tabs, ``,`` or ``;``.

``nmea``
    NMEA 0183 from a GPS receiver (any talker: GP, GN, GL...); the checksum is required and
    verified. GGA gives ``<prefix>/lat``, ``/lon`` (degrees, south and west negative), ``/alt``
    (metres above mean sea level), ``/fix`` (fix quality, 0 = none), ``/sats`` and ``/hdop``;
    RMC gives ``/lat``, ``/lon``, ``/speed`` (m/s), ``/course`` (degrees true) and ``/valid``
    (status A). RMC's date and time stamp its readings; GGA's time of day is put on the edge's
    date (the one nearest the edge clock). Other sentence types are not errors: they are
    counted as ignored (:class:`IgnoredLine`).

Values of ``csv`` and ``keyvalue``: an integer (int64), a finite decimal number, ``true`` or
``false``, else the text itself. Timestamps follow :func:`edge.sources.payloads.parse_timestamp`
(Unix time with its unit told by magnitude, or ISO 8601 with an offset).

Reasons (counter keys), beside those of :mod:`edge.sources.payloads`: ``too-long`` (framer),
``bad-csv``, ``no-header``, ``bad-value`` (NaN, infinity, an integer out of int64),
``bad-checksum`` (missing or wrong), ``bad-nmea`` (a sentence that is not NMEA or whose fields
are malformed).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import reduce
from operator import xor
from typing import Final, Protocol

from contract.errors import PayloadError
from contract.model import FLAG_EDGE_STAMPED, Reading, Value, valid_name
from edge.sources.payloads import parse_json_payload, parse_timestamp

__all__ = [
    "REASONS",
    "CsvParser",
    "IgnoredLine",
    "JsonLineParser",
    "KeyValueParser",
    "LineFramer",
    "LineParser",
    "NmeaParser",
    "nmea_checksum",
    "text_value",
]

REASONS: Final = (
    "too-long",
    "bad-utf8",
    "bad-json",
    "bad-shape",
    "bad-timestamp",
    "bad-name",
    "no-readings",
    "bad-csv",
    "no-header",
    "bad-value",
    "bad-checksum",
    "bad-nmea",
)
"""Every reason a serial line is refused for."""

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
_PAIR_SPLIT: Final = re.compile(r"[\s,;]+")
_DETAIL: Final = 80


class IgnoredLine(Exception):  # noqa: N818 - not an error: a line with nothing to keep
    """A well-formed line that carries no readings we keep (an NMEA GSV sentence, a header).

    ``kind`` is its counter key (``GSV``, ``header``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(kind)


# --------------------------------------------------------------------------- framing


class LineFramer:
    """Bytes in, complete lines out; overlong lines counted and skipped (see module doc)."""

    def __init__(self, max_line: int) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        self._partial = b""
        self._skipping = False

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        """The complete lines ``data`` ends (in order) and how many overlong lines it cut."""
        if self._partial:
            data = self._partial + data
            self._partial = b""
        parts = data.split(b"\n")
        tail = parts.pop()
        lines: list[bytes] = []
        overlong = 0
        limit = self.max_line
        for part in parts:
            if self._skipping:  # the end of a line already counted as too long
                self._skipping = False
                continue
            if part[-1:] == b"\r":
                part = part[:-1]  # noqa: PLW2901
            if len(part) > limit:
                overlong += 1
            elif part:
                lines.append(part)
        if self._skipping:
            return lines, overlong
        if len(tail) > limit + 1 or (len(tail) == limit + 1 and tail[-1:] != b"\r"):
            overlong += 1
            self._skipping = True
        else:
            self._partial = tail
        return lines, overlong

    def reset(self) -> None:
        """Forget a partial line (the port was closed: its end will never come)."""
        self._partial = b""
        self._skipping = False

    @property
    def buffered(self) -> int:
        """Bytes of the partial line kept."""
        return len(self._partial)


# --------------------------------------------------------------------------- parsers


class LineParser(Protocol):
    """Turns one line into the readings of ``device`` (``now``: the edge clock, us)."""

    def __call__(self, line: bytes, now: int) -> list[Reading]: ...


def _text(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("bad-utf8", f"line is not UTF-8 (byte {exc.start})") from exc


def _check_name(name: str, what: str) -> None:
    if not valid_name(name):
        raise PayloadError("bad-name", f"{what} {name[:_DETAIL]!r} is not a valid name")


def text_value(text: str, what: str) -> Value:
    """The value a ``csv`` or ``keyvalue`` field holds (see the module doc)."""
    if _INT_RE.fullmatch(text):
        n = int(text)
        if not _INT64_MIN <= n <= _INT64_MAX:
            raise PayloadError("bad-value", f"{what[:_DETAIL]!r}: integer out of int64 range")
        return n
    if text in {"true", "false"}:
        return text == "true"
    try:
        x = float(text)
    except ValueError:
        return text
    if not math.isfinite(x):
        raise PayloadError("bad-value", f"{what[:_DETAIL]!r}: {text[:_DETAIL]!r} is not finite")
    return x


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _timestamp(text: str, now: int) -> tuple[int, int]:
    raw: object = text
    if _INT_RE.fullmatch(text):
        raw = int(text)
    elif _is_number(text):
        raw = float(text)
    return parse_timestamp(raw, now)


def _readings(
    device: str, pairs: Sequence[tuple[str, str]], ts_field: str, now: int
) -> list[Reading]:
    ts, flags = now, FLAG_EDGE_STAMPED
    values: list[tuple[str, Value]] = []
    for key, text in pairs:
        if key == ts_field:
            ts, flags = _timestamp(text, now)
        elif text:
            values.append((key, text_value(text, key)))
    if not values:
        raise PayloadError("no-readings", "the line holds no sensor values")
    return [Reading(device, key, ts, value, flags) for key, value in values]


class JsonLineParser:
    """``json``: one JSON object of sensor values per line."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __call__(self, line: bytes, now: int) -> list[Reading]:
        return parse_json_payload(line, self.device, now)


class KeyValueParser:
    """``keyvalue``: ``key=value`` pairs."""

    def __init__(self, device: str, ts_field: str = "ts") -> None:
        self.device = device
        self.ts_field = ts_field

    def __call__(self, line: bytes, now: int) -> list[Reading]:
        text = _text(line).strip()
        pairs: list[tuple[str, str]] = []
        seen: set[str] = set()
        for token in _PAIR_SPLIT.split(text):
            if not token:
                continue
            key, sep, value = token.partition("=")
            if not sep:
                raise PayloadError("bad-shape", f"{token[:_DETAIL]!r} is not key=value")
            _check_name(key, "sensor key")
            if key in seen:
                raise PayloadError("bad-shape", f"key {key[:_DETAIL]!r} appears twice")
            seen.add(key)
            pairs.append((key, value))
        return _readings(self.device, pairs, self.ts_field, now)


class CsvParser:
    """``csv``: delimited values, columns named by ``columns`` or by a header line."""

    def __init__(
        self,
        device: str,
        columns: Sequence[str] = (),
        ts_field: str = "ts",
        delimiter: str = ",",
    ) -> None:
        self.device = device
        self.ts_field = ts_field
        self.delimiter = delimiter
        self.fixed = bool(columns)
        self.columns: tuple[str, ...] | None = tuple(columns) if columns else None

    def _fields(self, text: str) -> list[str]:
        try:
            rows = list(csv.reader([text], delimiter=self.delimiter, strict=True))
        except csv.Error as exc:
            raise PayloadError("bad-csv", str(exc)[:200]) from exc
        if len(rows) != 1:  # pragma: no cover - one line without a newline is one row
            raise PayloadError("bad-csv", "not one row")
        return [f.strip() for f in rows[0]]

    def _header(self, fields: list[str]) -> bool:
        if any(not f or _is_number(f) or not valid_name(f) for f in fields):
            return False
        return len(set(fields)) == len(fields)

    def __call__(self, line: bytes, now: int) -> list[Reading]:
        fields = self._fields(_text(line))
        if not self.fixed and self._header(fields):
            self.columns = tuple(fields)
            raise IgnoredLine("header")
        columns = self.columns
        if columns is None:
            raise PayloadError("no-header", "a data line before any header line")
        if len(fields) != len(columns):
            raise PayloadError("bad-shape", f"{len(fields)} fields, the columns are {len(columns)}")
        pairs = [(c, f) for c, f in zip(columns, fields, strict=True) if c]
        return _readings(self.device, pairs, self.ts_field, now)


# --------------------------------------------------------------------------- NMEA 0183

_KNOT_MS: Final = 1852 / 3600
_NMEA_MAX: Final = 82 * 2
"""NMEA 0183 says 82 characters; receivers with proprietary extensions go past it."""
_DAY_US: Final = 86_400 * 1_000_000
_HEX: Final = frozenset("0123456789ABCDEFabcdef")
_TALKER_TYPE: Final = re.compile(r"[A-Z][A-Z0-9]{3,5}")


def nmea_checksum(body: str) -> int:
    """XOR of the characters between ``$`` and ``*``."""
    return reduce(xor, body.encode("ascii"), 0)


def _nmea_field(what: str) -> PayloadError:
    return PayloadError("bad-nmea", what)


def _coord(value: str, hemi: str, degrees: int, what: str) -> float | None:
    """``ddmm.mmmm`` (``dddmm.mmmm`` for longitude) and N/S/E/W -> signed degrees."""
    if not value and not hemi:
        return None
    neg = {"lat": {"N": False, "S": True}, "lon": {"E": False, "W": True}}[what].get(hemi)
    m = re.fullmatch(r"([0-9]{%d})([0-9]{2}(?:\.[0-9]+)?)" % degrees, value)  # noqa: UP031
    if neg is None or m is None:
        raise _nmea_field(f"{what} {value[:20]!r},{hemi[:5]!r} is not a position")
    deg, minutes = int(m.group(1)), float(m.group(2))
    result = deg + minutes / 60
    if minutes >= 60 or result > (90 if what == "lat" else 180):
        raise _nmea_field(f"{what} {value!r} is out of range")
    return -result if neg else result


def _number(value: str, what: str, lo: float = -math.inf, hi: float = math.inf) -> float | None:
    if not value:
        return None
    if not re.fullmatch(r"[+-]?[0-9]+(?:\.[0-9]*)?", value):
        raise _nmea_field(f"{what} {value[:20]!r} is not a number")
    x = float(value)
    if not lo <= x <= hi:
        raise _nmea_field(f"{what} {value[:20]!r} is out of range")
    return x


def _integer(value: str, what: str, hi: int) -> int | None:
    if not value:
        return None
    if not value.isascii() or not value.isdigit() or int(value) > hi:
        raise _nmea_field(f"{what} {value[:20]!r} is not an integer 0..{hi}")
    return int(value)


def _time_of_day_us(value: str) -> int | None:
    """``hhmmss[.sss]`` -> microseconds since midnight."""
    if not value:
        return None
    m = re.fullmatch(r"([0-9]{2})([0-9]{2})([0-9]{2}(?:\.[0-9]{1,6})?)", value)
    if m is None:
        raise _nmea_field(f"time {value[:20]!r} is not hhmmss.ss")
    h, mi, s = int(m.group(1)), int(m.group(2)), float(m.group(3))
    if h > 23 or mi > 59 or s >= 61:  # 60: a leap second
        raise _nmea_field(f"time {value!r} is out of range")
    return (h * 3600 + mi * 60) * 1_000_000 + round(s * 1_000_000)


def _date_us(value: str, now: int) -> int:
    """``ddmmyy`` -> microseconds since the epoch of that midnight, in the century that puts
    it nearest the edge clock ``now`` (``230394`` is 1994, not 2094)."""
    m = re.fullmatch(r"([0-9]{2})([0-9]{2})([0-9]{2})", value)
    if m is None:
        raise _nmea_field(f"date {value[:20]!r} is not ddmmyy")
    this_year = (
        datetime.fromtimestamp(now / 1e6, UTC).year if 0 < now < 253_402_300_799_000_000 else 2000
    )
    yy = int(m.group(3))
    year = min(
        (
            c + yy
            for c in (
                this_year // 100 * 100 - 100,
                this_year // 100 * 100,
                this_year // 100 * 100 + 100,
            )
        ),
        key=lambda y: abs(y - this_year),
    )
    try:
        day = datetime(year, int(m.group(2)), int(m.group(1)), tzinfo=UTC)
    except ValueError as exc:
        raise _nmea_field(f"date {value[:20]!r} is not ddmmyy") from exc
    return int(day.timestamp()) * 1_000_000


class NmeaParser:
    """``nmea``: GGA and RMC sentences of a GPS receiver (see the module doc)."""

    def __init__(self, device: str, prefix: str = "gps") -> None:
        self.device = device
        self.prefix = prefix
        self._sentences: dict[str, Callable[[list[str], int], list[Reading]]] = {
            "GGA": self._gga,
            "RMC": self._rmc,
        }

    def __call__(self, line: bytes, now: int) -> list[Reading]:
        text = _text(line).strip()
        if not text.startswith("$"):
            raise PayloadError("bad-nmea", f"{text[:_DETAIL]!r} does not start with '$'")
        if len(text) > _NMEA_MAX:
            raise PayloadError("bad-nmea", f"sentence of {len(text)} characters")
        body, star, given = text[1:].rpartition("*")
        if not star:
            raise PayloadError("bad-checksum", "no checksum (*hh) at the end of the sentence")
        if len(given) != 2 or not set(given) <= _HEX:
            raise PayloadError("bad-checksum", f"checksum {given[:8]!r} is not two hex digits")
        if not body.isascii():
            raise PayloadError("bad-nmea", "sentence is not ASCII")
        computed = nmea_checksum(body)
        if computed != int(given, 16):
            raise PayloadError(
                "bad-checksum", f"checksum {given} given, {computed:02X} computed: {text[:40]!r}"
            )
        fields = body.split(",")
        address = fields[0]
        if not _TALKER_TYPE.fullmatch(address):
            raise PayloadError("bad-nmea", f"address field {address[:10]!r}")
        kind = address[-3:] if not address.startswith("P") else address
        handler = self._sentences.get(kind) if len(address) == 5 else None
        if handler is None:
            raise IgnoredLine(f"nmea-{kind}")
        return handler(fields, now)

    def _stamp(self, ts: int | None, now: int) -> tuple[int, int]:
        if ts is None:
            return now, FLAG_EDGE_STAMPED
        return parse_timestamp(ts, now)

    def _emit(self, ts: int, flags: int, values: list[tuple[str, Value | None]]) -> list[Reading]:
        readings = [
            Reading(self.device, f"{self.prefix}/{name}", ts, value, flags)
            for name, value in values
            if value is not None
        ]
        if not readings:
            raise PayloadError("no-readings", "the sentence holds no values")
        return readings

    def _gga(self, f: list[str], now: int) -> list[Reading]:
        # $GPGGA,time,lat,N,lon,E,quality,sats,hdop,alt,M,geoid,M,age,station*cs
        if len(f) < 15:
            raise _nmea_field(f"GGA with {len(f)} fields (15 expected)")
        tod = _time_of_day_us(f[1])
        ts: int | None = None
        if tod is not None:
            midnight = now - now % _DAY_US
            candidates = (midnight - _DAY_US + tod, midnight + tod, midnight + _DAY_US + tod)
            ts = min(candidates, key=lambda c: abs(c - now))
        ts_us, flags = self._stamp(ts, now)
        quality = _integer(f[6], "fix quality", 9)
        lat = _coord(f[2], f[3], 2, "lat")
        lon = _coord(f[4], f[5], 3, "lon")
        alt = _number(f[9], "altitude", -100_000, 1_000_000)
        if alt is not None and f[10] not in {"M", ""}:
            raise _nmea_field(f"altitude unit {f[10][:5]!r} (M expected)")
        has_fix = quality is None or quality > 0
        return self._emit(
            ts_us,
            flags,
            [
                ("lat", lat if has_fix else None),
                ("lon", lon if has_fix else None),
                ("alt", alt if has_fix else None),
                ("fix", quality),
                ("sats", _integer(f[7], "satellites", 99)),
                ("hdop", _number(f[8], "hdop", 0, 100)),
            ],
        )

    def _rmc(self, f: list[str], now: int) -> list[Reading]:
        # $GPRMC,time,status,lat,N,lon,E,speed(kn),course,date,magvar,E[,mode[,nav]]*cs
        if len(f) < 12:
            raise _nmea_field(f"RMC with {len(f)} fields (12 expected)")
        if f[2] not in {"A", "V"}:
            raise _nmea_field(f"RMC status {f[2][:5]!r} (A or V expected)")
        valid = f[2] == "A"
        tod = _time_of_day_us(f[1])
        ts = _date_us(f[9], now) + tod if tod is not None and f[9] else None
        ts_us, flags = self._stamp(ts, now)
        lat = _coord(f[3], f[4], 2, "lat")
        lon = _coord(f[5], f[6], 3, "lon")
        speed = _number(f[7], "speed", 0, 100_000)
        course = _number(f[8], "course", 0, 360)
        return self._emit(
            ts_us,
            flags,
            [
                ("lat", lat if valid else None),
                ("lon", lon if valid else None),
                ("speed", speed * _KNOT_MS if valid and speed is not None else None),
                ("course", course if valid else None),
                ("valid", valid),
            ],
        )
