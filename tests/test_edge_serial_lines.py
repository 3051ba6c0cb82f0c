"""The serial line framer and parsers: exact examples, then hypothesis properties and fuzzing.

The properties run the parsers through :meth:`SerialSource.feed` (framing, parsing, counting,
queueing: everything but the port and the commit), so "no exception escapes" and "the counters
add up" are checked on the path a real port's bytes take.
"""

from __future__ import annotations

import itertools
import json
import math
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.errors import PayloadError
from contract.model import FLAG_CLOCK_SUSPECT, FLAG_EDGE_STAMPED, Reading
from edge.config import LineFormat, SerialSettings
from edge.sources.lines import (
    CsvParser,
    IgnoredLine,
    JsonLineParser,
    KeyValueParser,
    LineFramer,
    NmeaParser,
    nmea_checksum,
)
from edge.sources.serial import SerialSource, make_parser
from edge.stats import EdgeStats

NOW = 1_780_000_000_000_000  # 2026-05-28, the edge clock of these tests
T_S = NOW // 1_000_000 - 60
T_US = T_S * 1_000_000


def nmea(body: str) -> bytes:
    return f"${body}*{nmea_checksum(body):02X}".encode()


GGA = nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
RMC = nmea("GNRMC,123519.50,A,4807.038,S,01131.000,W,022.4,084.4,280526,003.1,W,A")
GSV = nmea("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00")


# --------------------------------------------------------------------------- framer


def test_framer_keeps_partial_lines_and_strips_cr() -> None:
    f = LineFramer(16)
    assert f.feed(b"a=1\r\nb=") == ([b"a=1"], 0)
    assert f.buffered == 2
    assert f.feed(b"2") == ([], 0)
    assert f.feed(b"\n\n\r\nc=3\n") == ([b"b=2", b"c=3"], 0)


def test_framer_counts_an_overlong_line_once_and_resynchronises() -> None:
    f = LineFramer(8)
    assert f.feed(b"ok\n0123456789") == ([b"ok"], 1)  # cut while it grows...
    assert f.feed(b"abcdef" * 100) == ([], 0)  # ...skipped while it lasts...
    assert f.feed(b"end\nnext\n") == ([b"next"], 0)  # ...and over at its newline
    assert f.feed(b"012345678\n01234567\n") == ([b"01234567"], 1)  # whole in one chunk
    assert f.feed(b"01234567\r") == ([], 0)  # exactly max + CR: kept, not overlong
    assert f.feed(b"\n") == ([b"01234567"], 0)


def _reference_lines(data: bytes, max_line: int) -> tuple[list[bytes], int]:
    """What the framer must give for ``data`` fed at once (complete lines only)."""
    lines, overlong = [], 0
    for part in data.split(b"\n")[:-1]:
        line = part.removesuffix(b"\r")
        if len(line) > max_line:
            overlong += 1
        elif line:
            lines.append(line)
    tail = data.split(b"\n")[-1]
    if len(tail.removesuffix(b"\r")) > max_line:
        overlong += 1  # counted as soon as it is known to be too long
    return lines, overlong


@given(
    data=st.binary(max_size=400).map(lambda b: b.replace(b"\x00", b"\n")),
    cuts=st.lists(st.integers(0, 400), max_size=12),
    max_line=st.integers(1, 40),
)
def test_framer_gives_the_same_lines_however_the_bytes_are_split(
    data: bytes, cuts: list[int], max_line: int
) -> None:
    f = LineFramer(max_line)
    lines: list[bytes] = []
    overlong = 0
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        got, n = f.feed(data[a:b])
        lines += got
        overlong += n
    assert (lines, overlong) == _reference_lines(data, max_line)
    assert f.buffered <= max_line + 1


# --------------------------------------------------------------------------- parsers


def test_json_lines_are_the_mqtt_json_payload() -> None:
    p = JsonLineParser("dev")
    assert p(b'{"ts": %d, "temp": 21.5, "door": true}' % T_S, NOW) == [
        Reading("dev", "temp", T_US, 21.5),
        Reading("dev", "door", T_US, True),
    ]
    assert p(b'{"rpm": 1200}', NOW) == [Reading("dev", "rpm", NOW, 1200, FLAG_EDGE_STAMPED)]
    for line, reason in [
        (b"{", "bad-json"),
        (b'{"a": NaN}', "bad-json"),
        (b"42", "bad-shape"),
        (b"{}", "no-readings"),
        (b'{"a": 1, "ts": "yesterday"}', "bad-timestamp"),
        (b'{"\\u0001": 1}', "bad-name"),
        (b'{"a": "\xff"}', "bad-utf8"),
    ]:
        with pytest.raises(PayloadError) as err:
            p(line, NOW)
        assert err.value.reason == reason, line


def test_csv_with_a_header_line_and_a_new_header_after_a_device_restart() -> None:
    p = CsvParser("dev")
    with pytest.raises(PayloadError, match="no-header"):
        p(b"1,2,3", NOW)  # the port opened mid-stream: no header seen yet
    with pytest.raises(IgnoredLine):
        p(b"ts, temp ,hum", NOW)
    assert p(b'%d,21.5,"40"' % T_S, NOW) == [
        Reading("dev", "temp", T_US, 21.5),
        Reading("dev", "hum", T_US, 40),
    ]
    assert p(b"%d,,41" % T_S, NOW) == [Reading("dev", "hum", T_US, 41)]  # empty: no reading
    with pytest.raises(IgnoredLine):
        p(b"ts,temp,hum,co2", NOW)
    assert len(p(b"%d,1,2,400" % T_S, NOW)) == 3
    for line, reason in [
        (b"1,2", "bad-shape"),
        (b'1,"2,3', "bad-csv"),
        (b"1,nan,2,3", "bad-value"),
        (b"1,99999999999999999999,2,3", "bad-value"),
        (b"soon,1,2,3", "bad-timestamp"),
        (b"1,,,", "no-readings"),
        (b"1,\xfe,2,3", "bad-utf8"),
    ]:
        with pytest.raises(PayloadError) as err:
            p(line, NOW)
        assert err.value.reason == reason, line


def test_csv_with_a_column_map() -> None:
    p = CsvParser("dev", columns=("", "time", "level"), ts_field="time", delimiter=";")
    assert p(b"x;2026-05-28T00:00:00Z;3.5", NOW) == [
        Reading("dev", "level", 1_779_926_400_000_000, 3.5)
    ]
    # With a column map a line of names is data (a string value), not a header.
    assert p(b"a;1;ok", NOW) == [Reading("dev", "level", 1_000_000, "ok", FLAG_CLOCK_SUSPECT)]


def test_key_value_pairs() -> None:
    p = KeyValueParser("dev")
    assert p(b"temp=21.5 hum=40,ok=true;mode=eco ts=%d" % T_S, NOW) == [
        Reading("dev", "temp", T_US, 21.5),
        Reading("dev", "hum", T_US, 40),
        Reading("dev", "ok", T_US, True),
        Reading("dev", "mode", T_US, "eco"),
    ]
    for line, reason in [
        (b"temp 21.5", "bad-shape"),
        (b"a=1 a=2", "bad-shape"),
        (b"=1", "bad-name"),
        (b"ts=1", "no-readings"),
        (b"a=inf", "bad-value"),
        (b"a=\xc3", "bad-utf8"),
    ]:
        with pytest.raises(PayloadError) as err:
            p(line, NOW)
        assert err.value.reason == reason, line


def test_nmea_gga_and_rmc() -> None:
    p = NmeaParser("gps1")
    day = datetime(2026, 5, 28, tzinfo=UTC).timestamp()
    t = int(day + 12 * 3600 + 35 * 60 + 19) * 1_000_000
    lat, lon = 48 + 7.038 / 60, 11 + 31 / 60
    assert p(GGA, NOW) == [
        Reading("gps1", "gps/lat", t, pytest.approx(lat)),  # type: ignore[arg-type]
        Reading("gps1", "gps/lon", t, pytest.approx(lon)),  # type: ignore[arg-type]
        Reading("gps1", "gps/alt", t, 545.4),
        Reading("gps1", "gps/fix", t, 1),
        Reading("gps1", "gps/sats", t, 8),
        Reading("gps1", "gps/hdop", t, 0.9),
    ]
    rmc = p(RMC, NOW)
    assert [(r.sensor, r.ts) for r in rmc] == [
        (f"gps/{k}", t + 500_000) for k in ("lat", "lon", "speed", "course", "valid")
    ]
    assert rmc[0].value == pytest.approx(-lat)
    assert rmc[1].value == pytest.approx(-lon)
    assert rmc[2].value == pytest.approx(22.4 * 1852 / 3600)
    assert rmc[3].value == 84.4
    assert rmc[4].value is True
    # No fix yet: quality 0 and the satellites in view, no position; RMC void: only valid=false.
    just_after_midnight = int(day + 600) * 1_000_000
    no_fix = p(nmea("GPGGA,235959,,,,,0,03,,,M,,M,,"), just_after_midnight)
    assert [(r.sensor, r.value) for r in no_fix] == [("gps/fix", 0), ("gps/sats", 3)]
    assert no_fix[0].ts == int(day - 1) * 1_000_000  # time of day put on the nearest date
    assert no_fix[0].flags == 0
    void = p(nmea("GPRMC,,V,,,,,,,,,,N"), NOW)
    assert [(r.sensor, r.value, r.flags) for r in void] == [("gps/valid", False, FLAG_EDGE_STAMPED)]
    old = p(nmea("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"), NOW)
    assert old[0].ts == int(datetime(1994, 3, 23, 12, 35, 19, tzinfo=UTC).timestamp()) * 10**6
    assert old[0].flags == FLAG_CLOCK_SUSPECT


def test_nmea_rejections_and_ignored_sentences() -> None:
    p = NmeaParser("gps1", prefix="rx")
    with pytest.raises(IgnoredLine) as ignored:
        p(GSV, NOW)
    assert ignored.value.kind == "nmea-GSV"
    with pytest.raises(IgnoredLine) as ignored:
        p(nmea("PUBX,00,123519"), NOW)
    assert ignored.value.kind == "nmea-PUBX"
    flipped = GGA.replace(b"4807", b"4808")
    for line, reason in [
        (flipped, "bad-checksum"),
        (GGA[:-3], "bad-checksum"),
        (GGA[:-2] + b"G1", "bad-checksum"),
        (b"GPGGA,1*00", "bad-nmea"),
        (nmea("GPGGA,123519,9107.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"), "bad-nmea"),
        (nmea("GPGGA,123519,4807.038,X,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"), "bad-nmea"),
        (nmea("GPGGA,256019,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"), "bad-nmea"),
        (nmea("GPGGA,123519,4807.038,N"), "bad-nmea"),
        (nmea("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,320326,003.1,W"), "bad-nmea"),
        (nmea("GPRMC,123519,Q,,,,,,,,,"), "bad-nmea"),
        (nmea("gpgga,1"), "bad-nmea"),
        (b"$GPGGA,\xff*00", "bad-utf8"),
    ]:
        with pytest.raises(PayloadError) as err:
            p(line, NOW)
        assert err.value.reason == reason, line


# --------------------------------------------------------------------------- properties


class _NoSink:
    """The properties never run the submit loop: readings stay in the source's backlog."""

    async def submit(self, *_a: object, **_k: object) -> None:  # pragma: no cover
        raise AssertionError

    def submit_nowait(self, *_a: object) -> bool:  # pragma: no cover
        raise AssertionError

    async def redelivered(self, _digest: bytes) -> bool:  # pragma: no cover
        raise AssertionError

    async def drain(self) -> None:  # pragma: no cover
        raise AssertionError


def _source(parser: LineFormat, **kw: object) -> tuple[SerialSource, EdgeStats]:
    stats = EdgeStats()
    s = SerialSettings(port="/dev/null", device="dev", parser=parser, **kw)  # type: ignore[arg-type]
    return SerialSource(s, _NoSink(), stats), stats


names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(lambda n: n != "ts")
numbers = st.one_of(
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False, width=32).filter(lambda x: x == x),
)


@st.composite
def good_line(draw: st.DrawFn, parser: LineFormat) -> tuple[bytes, list[tuple[str, object]]]:
    """A line that must be kept, with the (sensor, value) pairs it must give."""
    if parser is LineFormat.NMEA:
        sats = draw(st.integers(0, 40))
        return nmea(f"GNGGA,120000,,,,,0,{sats:02d},,,M,,M,,"), [
            ("gps/fix", 0),
            ("gps/sats", sats),
        ]
    if parser is LineFormat.CSV:
        vals = draw(st.lists(numbers, min_size=3, max_size=3))
        text = ",".join(repr(v) for v in vals)
        return text.encode(), [(c, float(repr(v))) for c, v in zip("abc", vals, strict=True)]
    pairs = draw(st.dictionaries(names, numbers, min_size=1, max_size=4))
    if parser is LineFormat.JSON:
        return json.dumps(pairs).encode(), list(pairs.items())
    return " ".join(f"{k}={v!r}" for k, v in pairs.items()).encode(), [
        (k, float(repr(v)) if isinstance(v, float) else v) for k, v in pairs.items()
    ]


@st.composite
def bad_line(draw: st.DrawFn, parser: LineFormat) -> bytes:
    """A line that must be refused (never kept, never an exception)."""
    kind = draw(st.sampled_from(["utf8", "structure"]))
    if kind == "utf8":
        junk = draw(st.binary(max_size=40)).replace(b"\n", b"")
        return junk + b"\xff" + junk
    if parser is LineFormat.NMEA:
        good = nmea(f"GPGGA,120000,,,,,0,{draw(st.integers(0, 40)):02d},,,M,,M,,")
        wrong = (nmea_checksum(good[1:-3].decode()) + draw(st.integers(1, 255))) % 256
        return good[:-2] + f"{wrong:02X}".encode()
    if parser is LineFormat.CSV:
        return ",".join(["1"] * draw(st.sampled_from([1, 2, 4, 5]))).encode()
    if parser is LineFormat.JSON:
        return b"{" + draw(st.text(max_size=20)).replace("\n", "").encode() + b"]"
    return draw(names).encode() + b" " + draw(names).encode()


PARSERS = [LineFormat.JSON, LineFormat.CSV, LineFormat.KEYVALUE, LineFormat.NMEA]


@pytest.mark.parametrize("parser", PARSERS)
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_good_lines_among_bad_ones_are_all_kept_and_the_counters_add_up(
    parser: LineFormat, data: st.DataObject
) -> None:
    kw = {"columns": ("a", "b", "c")} if parser is LineFormat.CSV else {}
    source, stats = _source(parser, **kw)
    items = data.draw(
        st.lists(st.one_of(good_line(parser), bad_line(parser)), min_size=1, max_size=30)
    )
    stream = b"".join((i[0] if isinstance(i, tuple) else i) + b"\r\n" for i in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        source.feed(stream[a:b])
    expected = [pair for i in items if isinstance(i, tuple) for pair in i[1]]
    kept = [r for line in source._backlog for r in line]
    got = [(r.sensor, r.value) for r in kept]
    assert len(got) == len(expected)
    for (gs, gv), (es, ev) in zip(got, expected, strict=True):
        assert gs == es
        assert gv == ev or (isinstance(ev, float) and math.isclose(gv, ev))  # type: ignore[arg-type]
    src = stats.sources["serial"]
    bad = sum(1 for i in items if not isinstance(i, tuple))
    assert src.messages == len(items)
    assert sum(src.rejected.values()) == bad == stats.counters["messages-rejected"]
    assert not src.ignored


@pytest.mark.parametrize("parser", PARSERS)
@settings(max_examples=300, deadline=None)
@given(stream=st.binary(max_size=600), cut=st.integers(0, 600))
def test_random_bytes_never_raise_and_every_line_is_accounted_for(
    parser: LineFormat, stream: bytes, cut: int
) -> None:
    source, stats = _source(parser, max_line_bytes=64)
    source.feed(stream[:cut])
    source.feed(stream[cut:] + b"\n")
    src = stats.sources.get("serial")
    if src is None:
        return  # nothing but blank lines
    kept = len(source._backlog)
    assert src.messages == kept + sum(src.rejected.values()) + sum(src.ignored.values())
    assert src.rejected.keys() <= {
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
    }


@st.composite
def mangled_nmea(draw: st.DrawFn) -> bytes:
    """A GGA or RMC with a field replaced by something random, checksum correct."""
    body = draw(
        st.sampled_from(
            [
                "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
                "GNRMC,123519.50,A,4807.038,S,01131.000,W,022.4,084.4,280526,003.1,W,A",
            ]
        )
    )
    fields = body.split(",")
    i = draw(st.integers(1, len(fields) - 1))
    fields[i] = draw(st.text(alphabet=st.characters(codec="ascii"), max_size=12)).replace("*", "")
    return nmea(",".join(fields).replace("\n", "").replace("\r", ""))


@settings(max_examples=300, deadline=None)
@given(line=mangled_nmea())
def test_mangled_nmea_fields_give_readings_or_a_reason(line: bytes) -> None:
    parse = make_parser(SerialSettings(port="x", device="gps", parser=LineFormat.NMEA))
    reason = None
    readings: list[Reading] = []
    try:
        readings = parse(line, NOW)
    except PayloadError as exc:
        reason = exc.reason
    assert reason in {None, "bad-nmea", "no-readings", "bad-checksum", "bad-timestamp"}
    for r in readings:
        assert not isinstance(r.value, float) or math.isfinite(r.value)


@settings(max_examples=200, deadline=None)
@given(
    header=st.lists(names, min_size=1, max_size=5, unique=True),
    rows=st.lists(st.lists(st.text(max_size=8), min_size=0, max_size=6), max_size=10),
)
def test_csv_rows_of_any_shape_give_readings_or_a_reason(
    header: list[str], rows: list[list[str]]
) -> None:
    p = CsvParser("dev")
    with pytest.raises(IgnoredLine):
        p(",".join(header).encode(), NOW)
    for row in rows:
        line = ",".join(row).replace("\n", "").replace("\r", "").encode()
        try:
            readings = p(line, NOW)
        except (PayloadError, IgnoredLine):
            continue
        assert {r.sensor for r in readings} <= set(p.columns or ())
