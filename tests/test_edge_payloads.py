"""Payload parsers and topic patterns: every format, every rejection reason, and fuzzing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.codec import decode_batch, encode_batch
from contract.errors import PayloadError
from contract.model import FLAG_CLOCK_SUSPECT, FLAG_EDGE_STAMPED, Reading
from edge.sources.payloads import (
    MAX_PAYLOAD_BYTES,
    REASONS,
    parse_json_payload,
    parse_timestamp,
    parse_value_payload,
)
from edge.sources.topics import TopicMatch, TopicPattern, filters_overlap

NOW = 1_750_000_000_000_000  # 2025-06-15, the "edge clock" of these tests
T_S = 1_749_999_000  # a plausible device time, in seconds
T_US = T_S * 1_000_000


def value(payload: bytes | str) -> list[Reading]:
    raw = payload.encode() if isinstance(payload, str) else payload
    return parse_value_payload(raw, "dev-1", "temp", now=NOW)


def jsonp(payload: bytes | str) -> list[Reading]:
    raw = payload.encode() if isinstance(payload, str) else payload
    return parse_json_payload(raw, "dev-1", now=NOW)


def reason(call: object, *args: object) -> str:
    with pytest.raises(PayloadError) as info:
        call(*args)  # type: ignore[operator]
    return info.value.reason


# --------------------------------------------------------------------------- value format


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("21.5", 21.5),
        ("-3", -3),
        ("0", 0),
        ("true", True),
        ("false", False),
        ('"open"', "open"),
        ('"grüß 😀"', "grüß 😀"),
        ('{"lat": 47.1, "lon": 8.5}', {"lat": 47.1, "lon": 8.5}),
        ("[1, 2, 3]", [1, 2, 3]),
        ('{"value": 1, "unit": "C"}', {"value": 1, "unit": "C"}),  # not the ts form: a document
        ("123456789012345678901234567890", 123456789012345678901234567890),
    ],
)
def test_value_scalars_and_documents_are_edge_stamped(payload: str, expected: object) -> None:
    assert value(payload) == [Reading("dev-1", "temp", NOW, expected, FLAG_EDGE_STAMPED)]  # type: ignore[arg-type]


def test_value_with_timestamp() -> None:
    assert value(f'{{"ts": {T_S}, "value": 21.5}}') == [Reading("dev-1", "temp", T_US, 21.5, 0)]
    assert value('{"value": [1, 2]}') == [Reading("dev-1", "temp", NOW, [1, 2], FLAG_EDGE_STAMPED)]
    assert value(f'{{"value": {{"a": null}}, "ts": {T_S}}}') == [
        Reading("dev-1", "temp", T_US, {"a": None}, 0)
    ]


def test_value_sensor_may_be_a_path() -> None:
    assert parse_value_payload(b"1", "d", "imu/accel/x", now=NOW)[0].sensor == "imu/accel/x"


# --------------------------------------------------------------------------- json format


def test_json_object_gives_one_reading_per_key() -> None:
    got = jsonp(
        f'{{"ts": {T_S}, "temp": 21.5, "hum": 40, "door": true, "mode": "eco",'
        ' "gps": {"lat": 1.5, "lon": 2}, "vec": [1, 2]}'
    )
    assert got == [
        Reading("dev-1", "temp", T_US, 21.5),
        Reading("dev-1", "hum", T_US, 40),
        Reading("dev-1", "door", T_US, True),
        Reading("dev-1", "mode", T_US, "eco"),
        Reading("dev-1", "gps", T_US, {"lat": 1.5, "lon": 2}),
        Reading("dev-1", "vec", T_US, [1, 2]),
    ]


def test_json_without_ts_is_edge_stamped() -> None:
    assert jsonp('{"imu/accel/x": 0.5}') == [
        Reading("dev-1", "imu/accel/x", NOW, 0.5, FLAG_EDGE_STAMPED)
    ]


def test_json_array_gives_several_instants() -> None:
    got = jsonp(f'[{{"ts": {T_S}, "a": 1}}, {{"ts": {T_S + 1}, "a": 2, "b": 3}}, {{"a": 4}}]')
    assert got == [
        Reading("dev-1", "a", T_US, 1),
        Reading("dev-1", "a", T_US + 1_000_000, 2),
        Reading("dev-1", "b", T_US + 1_000_000, 3),
        Reading("dev-1", "a", NOW, 4, FLAG_EDGE_STAMPED),
    ]


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (T_S, T_US),  # seconds
        (T_S + 0.25, T_US + 250_000),  # seconds with a fraction
        (T_S * 1000 + 7, T_US + 7_000),  # milliseconds
        (T_S * 1000 + 7.5, T_US + 7_500),  # fractional milliseconds
        (T_US + 3, T_US + 3),  # microseconds
        (T_US * 1000 + 999, T_US),  # nanoseconds (truncated to us)
        (99_999_999_999, 99_999_999_999_000_000),  # just below 1e11: still seconds
        (100_000_000_000, 100_000_000_000_000),  # 1e11: milliseconds
        ("2025-06-15T01:30:00Z", int(datetime(2025, 6, 15, 1, 30, tzinfo=UTC).timestamp()) * 10**6),
        (
            "2025-06-15T03:30:00.123456+02:00",
            int(datetime(2025, 6, 15, 1, 30, tzinfo=UTC).timestamp()) * 10**6 + 123_456,
        ),
        (
            "2025-06-15T01:30:00.5+00:00",
            int(datetime(2025, 6, 15, 1, 30, tzinfo=UTC).timestamp()) * 10**6 + 500_000,
        ),
    ],
)
def test_timestamp_units(raw: object, expected: int) -> None:
    ts, flags = parse_timestamp(raw, now=expected)  # flags: see the next test
    assert ts == expected
    assert flags == 0


def test_implausible_timestamps_are_kept_and_flagged() -> None:
    year = 365 * 24 * 3600 * 10**6
    hour = 3600 * 10**6
    assert parse_timestamp(NOW - year + 10**6, NOW) == (NOW - year + 10**6, 0)
    assert parse_timestamp(NOW - year - 10**6, NOW) == (NOW - year - 10**6, FLAG_CLOCK_SUSPECT)
    assert parse_timestamp(NOW + hour - 10**6, NOW) == (NOW + hour - 10**6, 0)
    assert parse_timestamp(NOW + hour + 10**6, NOW) == (NOW + hour + 10**6, FLAG_CLOCK_SUSPECT)
    assert parse_timestamp(0, NOW) == (0, FLAG_CLOCK_SUSPECT)
    assert value('{"ts": 1, "value": 2}') == [
        Reading("dev-1", "temp", 1_000_000, 2, FLAG_CLOCK_SUSPECT)
    ]


@pytest.mark.parametrize(
    "raw",
    [
        True,
        None,
        "yesterday",
        "2025-06-15T01:30:00",
        "2025-06-15",
        {"s": 1},
        [1],
        10**40,
        -(10**40),
        "9" * 80,
    ],
)
def test_bad_timestamps(raw: object) -> None:
    assert reason(parse_timestamp, raw, NOW) == "bad-timestamp"
    assert reason(value, json.dumps({"ts": raw, "value": 1})) == "bad-timestamp"
    assert reason(jsonp, json.dumps({"ts": raw, "a": 1})) == "bad-timestamp"


# --------------------------------------------------------------------------- rejections


def test_every_reason_is_reachable() -> None:
    cases = {
        "too-large": (value, b"1" * (MAX_PAYLOAD_BYTES + 1)),
        "bad-utf8": (value, b"\xff\xfe"),
        "bad-json": (value, b"{nope"),
        "bad-shape": (value, b"null"),
        "bad-timestamp": (value, b'{"ts": "soon", "value": 1}'),
        "bad-name": (jsonp, b'{"": 1}'),
        "no-readings": (jsonp, b"{}"),
    }
    assert set(cases) == set(REASONS)
    for expected, (call, payload) in cases.items():
        assert reason(call, payload) == expected, expected


@pytest.mark.parametrize(
    ("call", "payload", "expected"),
    [
        (value, b"\xc3\x28", "bad-utf8"),
        (
            value,
            b'"\\ud800"',
            "bad-utf8",
        ),  # a lone surrogate: not encodable, the codec would refuse it
        (jsonp, b'{"a": ["\\udfff"]}', "bad-utf8"),
        (jsonp, b'{"\\ud800": 1}', "bad-utf8"),
        (value, b"", "bad-json"),
        (value, b"on", "bad-json"),
        (value, b"NaN", "bad-json"),
        (value, b"[1, Infinity]", "bad-json"),
        (value, b"1e400", "bad-json"),
        (jsonp, b'{"a": [1e400]}', "bad-json"),
        (jsonp, b'{"a": 1, "a": 2}', "bad-json"),
        (value, b"[" * 100_000, "bad-json"),
        (value, b"1 2", "bad-json"),
        (value, b'{"ts": 1}', "bad-shape"),
        (value, b'{"ts": 1, "value": null}', "bad-shape"),
        (jsonp, b"21.5", "bad-shape"),
        (jsonp, b'"x"', "bad-shape"),
        (jsonp, b"[1, 2]", "bad-shape"),
        (jsonp, b'[{"a": 1}, 2]', "bad-shape"),
        (jsonp, b'{"a": null}', "bad-shape"),
        (jsonp, b'{"a//b": 1}', "bad-name"),
        (jsonp, b'{"/a": 1}', "bad-name"),
        (jsonp, b'{"a\\u0001": 1}', "bad-name"),
        (jsonp, ('{"' + "k" * 129 + '": 1}').encode(), "bad-name"),
        (jsonp, b'{"ts": 5}', "no-readings"),
        (jsonp, b"[]", "no-readings"),
        (jsonp, b'[{"ts": 5}, {}]', "no-readings"),
    ],
)
def test_rejections(call: object, payload: bytes, expected: str) -> None:
    assert reason(call, payload) == expected


def test_a_bad_key_rejects_the_whole_message() -> None:
    assert reason(jsonp, b'{"good": 1, "also": 2, "bad//": 3}') == "bad-name"


def test_device_and_sensor_names_from_the_topic_are_checked() -> None:
    assert reason(parse_value_payload, b"1", "", "temp") == "bad-name"
    assert reason(parse_value_payload, b"1", "d", "a//b") == "bad-name"
    assert reason(parse_json_payload, b'{"a": 1}', "d\x00") == "bad-name"


def test_payload_of_exactly_the_limit_is_accepted() -> None:
    payload = b'"' + b"x" * (MAX_PAYLOAD_BYTES - 2) + b'"'
    assert len(value(payload)[0].value) == MAX_PAYLOAD_BYTES - 2  # type: ignore[arg-type]


# --------------------------------------------------------------------------- fuzzing

_json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_json_doc = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
_instant = st.dictionaries(
    st.sampled_from(["ts", "a", "b/c", "", "x//y", "temp"]) | st.text(max_size=4),
    _json_leaf | _json_doc | st.sampled_from([T_S, "2025-06-15T01:30:00Z", "bad"]),
    max_size=5,
)


def _check_outcome(call: object, payload: bytes) -> None:
    try:
        readings = call(payload)  # type: ignore[operator]
    except PayloadError as exc:
        reason = exc.reason
        assert reason in REASONS
        return
    assert readings
    # What the parsers accept, the codec must carry (else the batcher would have to refuse it).
    assert list(decode_batch(encode_batch(readings)).readings()) == _grouped(readings)


def _grouped(readings: list[Reading]) -> list[Reading]:
    order: dict[tuple[str, str], list[Reading]] = {}
    for r in readings:
        order.setdefault((r.device, r.sensor), []).append(r)
    return [r for group in order.values() for r in group]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(payload: bytes) -> None:
    _check_outcome(value, payload)
    _check_outcome(jsonp, payload)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_json_doc | _instant | st.lists(_instant, max_size=3))
def test_fuzz_json_structures(doc: object) -> None:
    payload = json.dumps(doc).encode()
    _check_outcome(value, payload)
    _check_outcome(jsonp, payload)


@settings(max_examples=200)
@given(st.one_of(st.integers(), st.floats(), st.text(max_size=40), st.booleans(), st.none()))
def test_fuzz_timestamps(raw: object) -> None:
    try:
        ts, flags = parse_timestamp(raw, NOW)
    except PayloadError as exc:
        reason = exc.reason
        assert reason == "bad-timestamp"
    else:
        assert -(2**63) <= ts < 2**63
        assert flags in {0, FLAG_CLOCK_SUSPECT}


# --------------------------------------------------------------------------- topics


def test_topic_patterns() -> None:
    p = TopicPattern.parse("sensors/{device}/{sensor}")
    assert p.filter == "sensors/+/#"
    assert p.match("sensors/d1/temp") == TopicMatch("d1", "temp")
    assert p.match("sensors/d1/imu/accel/x") == TopicMatch("d1", "imu/accel/x")
    assert p.match("sensors/d1") is None
    assert p.match("other/d1/temp") is None
    q = TopicPattern.parse("site.a/{sensor}/{device}/data")
    assert q.filter == "site.a/+/+/data"
    assert q.match("site.a/t/d/data") == TopicMatch("d", "t")
    assert q.match("siteXa/t/d/data") is None  # the dot is literal
    assert q.match("site.a/t/d/x/data") is None
    j = TopicPattern.parse("devices/{device}")
    assert (j.filter, j.has_sensor) == ("devices/+", False)
    assert j.match("devices/d9") == TopicMatch("d9", None)


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "sensors/{sensor}",
        "{device}/{device}",
        "a/{device}x",
        "a/+/{device}",
        "a/#/{device}",
        "{device}/{sensor}/{sensor}",
        "a/{dev}/{device}",
    ],
)
def test_bad_topic_patterns(pattern: str) -> None:
    with pytest.raises(ValueError):
        TopicPattern.parse(pattern)


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("sensors/+/#", "devices/+", False),
        ("sensors/+/#", "sensors/+", True),  # '#' matches its parent level too
        ("sensors/+/#", "sensors/d1/temp", True),
        ("a/+", "a/+/b", False),
        ("a/+/c", "a/b/+", True),
        ("a/b", "a/c", False),
        ("#", "x/y", True),
    ],
)
def test_filters_overlap(a: str, b: str, overlap: bool) -> None:
    assert filters_overlap(a, b) is overlap
    assert filters_overlap(b, a) is overlap
