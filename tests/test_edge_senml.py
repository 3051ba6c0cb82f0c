"""SenML JSON (RFC 8428): the RFC's own examples, every field, every rejection, and fuzzing."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.codec import decode_batch, encode_batch
from contract.errors import PayloadError
from contract.model import FLAG_CLOCK_SUSPECT, FLAG_EDGE_STAMPED, Reading
from edge.sources.payloads import MAX_PAYLOAD_BYTES, REASONS
from edge.sources.senml import RELATIVE_TIME_LIMIT_S, parse_senml_payload

NOW = 1_750_000_000_000_000  # 2025-06-15, the edge clock of these tests
URN = "urn:dev:ow:10e2073a01080063"


def senml(doc: object, device: str | None = "dev-1") -> list[Reading]:
    return parse_senml_payload(json.dumps(doc).encode(), device, now=NOW)


def reason(doc: object | bytes, device: str | None = "dev-1") -> str:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with pytest.raises(PayloadError) as info:
        parse_senml_payload(raw, device, now=NOW)
    assert info.value.reason in REASONS
    return info.value.reason


# --------------------------------------------------------------------------- RFC 8428 section 5


def test_rfc_single_datapoint() -> None:
    """5.1.1: no time at all means "now"; the unit is dropped."""
    doc = [{"n": URN, "u": "Cel", "v": 23.1}]
    assert senml(doc) == [Reading("dev-1", URN, NOW, 23.1, FLAG_EDGE_STAMPED)]


def test_rfc_multiple_datapoints_with_the_device_from_the_name() -> None:
    """5.1.2: the base name is the device, split at the last ':'."""
    doc = [
        {"bn": URN + ":", "n": "voltage", "u": "V", "v": 120.1},
        {"n": "current", "u": "A", "v": 1.2},
    ]
    assert senml(doc, device=None) == [
        Reading(URN, "voltage", NOW, 120.1, FLAG_EDGE_STAMPED),
        Reading(URN, "current", NOW, 1.2, FLAG_EDGE_STAMPED),
    ]
    # With the device from the topic, the whole resolved name is the sensor key.
    assert [r.sensor for r in senml(doc)] == [URN + ":voltage", URN + ":current"]


def test_rfc_multiple_measurements_base_time_plus_offsets() -> None:
    """5.1.3: bt + t, times in seconds with fractions; bver 5 is understood."""
    bt = 1.276020076001e09
    doc = [
        {"bn": URN + ":", "bt": bt, "bu": "A", "bver": 5, "n": "voltage", "u": "V", "v": 120.1},
        {"n": "current", "t": -5, "v": 1.2},
        {"n": "current", "t": -4, "v": 1.3},
        {"n": "current", "t": -3, "v": 1.4},
        {"n": "current", "t": -2, "v": 1.5},
        {"n": "current", "t": -1, "v": 1.6},
        {"n": "current", "v": 1.7},
    ]
    got = senml(doc, device=None)
    base = 1_276_020_076_001_000
    assert [(r.sensor, r.ts, r.value) for r in got] == [
        ("voltage", base, 120.1),
        ("current", base - 5_000_000, 1.2),
        ("current", base - 4_000_000, 1.3),
        ("current", base - 3_000_000, 1.4),
        ("current", base - 2_000_000, 1.5),
        ("current", base - 1_000_000, 1.6),
        ("current", base, 1.7),
    ]
    # 2010 is more than a year before the edge clock: kept, flagged.
    assert {r.flags for r in got} == {FLAG_CLOCK_SUSPECT}
    assert {r.device for r in got} == {URN}


def test_rfc_collection_of_resources() -> None:
    """5.1.6."""
    doc = [
        {"bn": URN + ":", "bt": 1.320078429e09, "n": "temperature", "v": 27.2, "u": "Cel"},
        {"n": "humidity", "v": 80, "u": "%RH"},
    ]
    ts = 1_320_078_429_000_000
    assert senml(doc, device=None) == [
        Reading(URN, "temperature", ts, 27.2, FLAG_CLOCK_SUSPECT),
        Reading(URN, "humidity", ts, 80, FLAG_CLOCK_SUSPECT),
    ]


# --------------------------------------------------------------------------- fields


def test_value_kinds() -> None:
    doc = [
        {"n": "temp", "v": 21.5},
        {"n": "door", "vb": True},
        {"n": "state", "vs": "open ü"},
        {"n": "blob", "vd": "aGVsbG8"},
    ]
    assert [r.value for r in senml(doc)] == [21.5, True, "open ü", "aGVsbG8"]


def test_base_value_and_base_sum_are_added() -> None:
    doc = [
        {"bn": "meter/", "bv": 1000, "bs": 50, "n": "energy", "v": 5, "s": 7},
        {"n": "power", "v": -1.5},
        {"n": "flow", "s": 3},
    ]
    got = senml(doc)
    assert [(r.sensor, r.value) for r in got] == [
        ("meter/energy", 1005),
        ("meter/energy/sum", 57),
        ("meter/power", 998.5),
        ("meter/flow", 53),
    ]


def test_base_fields_change_midway() -> None:
    t1 = 1_749_999_000
    doc = [
        {"bn": "a/", "bt": t1, "n": "x", "v": 1},
        {"n": "y", "t": 2, "v": 2},
        {"bn": "b/", "bt": t1 + 10, "n": "x", "v": 3},
    ]
    got = senml(doc, device=None)
    assert [(r.device, r.sensor, r.ts, r.flags) for r in got] == [
        ("a", "x", t1 * 1_000_000, 0),
        ("a", "y", (t1 + 2) * 1_000_000, 0),
        ("b", "x", (t1 + 10) * 1_000_000, 0),
    ]


@pytest.mark.parametrize(
    ("t", "expected_ts"),
    [
        (0, NOW),
        (-5, NOW - 5_000_000),
        (2.5, NOW + 2_500_000),
        (RELATIVE_TIME_LIMIT_S - 1, NOW + (RELATIVE_TIME_LIMIT_S - 1) * 1_000_000),
    ],
)
def test_relative_times_are_relative_to_now(t: float, expected_ts: int) -> None:
    (r,) = senml([{"n": "temp", "t": t, "v": 1}])
    assert r.ts == expected_ts
    assert r.flags & FLAG_EDGE_STAMPED


def test_the_relative_limit_is_absolute_time() -> None:
    (r,) = senml([{"n": "temp", "t": RELATIVE_TIME_LIMIT_S, "v": 1}])
    assert r.ts == RELATIVE_TIME_LIMIT_S * 1_000_000
    assert r.flags == FLAG_CLOCK_SUSPECT  # 1978


def test_name_mode_splits_at_the_first_slash_without_a_colon() -> None:
    (r,) = senml([{"n": "boiler-3/temp/in", "v": 60}], device=None)
    assert (r.device, r.sensor) == ("boiler-3", "temp/in")


def test_unknown_fields_are_ignored_but_must_understand_ones_refused() -> None:
    assert senml([{"n": "t", "v": 1, "foo": [1]}])[0].value == 1
    assert reason([{"n": "t", "v": 1, "foo_": 1}]) == "bad-shape"


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("doc", "device", "expected"),
    [
        (b"x" * (MAX_PAYLOAD_BYTES + 1), "dev-1", "too-large"),
        (b"\xff[]", "dev-1", "bad-utf8"),
        (b"[{", "dev-1", "bad-json"),
        (b'[{"n": "t", "v": NaN}]', "dev-1", "bad-json"),
        (b'[{"n": "t", "v": 1e400}]', "dev-1", "bad-json"),
        (b'[{"n": "t", "v": 1, "v": 2}]', "dev-1", "bad-json"),
        ([{"n": "t", "bv": 1e308, "v": 1e308}], "dev-1", "bad-json"),
        ({"n": "t", "v": 1}, "dev-1", "bad-shape"),
        ([1], "dev-1", "bad-shape"),
        ([{"n": "t"}], "dev-1", "bad-shape"),
        ([{"n": "t", "v": 1, "vs": "x"}], "dev-1", "bad-shape"),
        ([{"n": "t", "v": "1"}], "dev-1", "bad-shape"),
        ([{"n": "t", "v": True}], "dev-1", "bad-shape"),
        ([{"n": "t", "vb": 1}], "dev-1", "bad-shape"),
        ([{"n": "t", "vs": 1}], "dev-1", "bad-shape"),
        ([{"n": "t", "vd": "a+b/"}], "dev-1", "bad-shape"),
        ([{"n": "t", "vd": "abcde"}], "dev-1", "bad-shape"),
        ([{"n": 5, "v": 1}], "dev-1", "bad-shape"),
        ([{"bn": None, "n": "t", "v": 1}], "dev-1", "bad-shape"),
        ([{"n": "t", "u": 1, "v": 1}], "dev-1", "bad-shape"),
        ([{"n": "t", "ut": "x", "v": 1}], "dev-1", "bad-shape"),
        ([{"n": "t", "s": "1"}], "dev-1", "bad-shape"),
        ([{"bver": 11, "n": "t", "v": 1}], "dev-1", "bad-shape"),
        ([{"bver": 1.5, "n": "t", "v": 1}], "dev-1", "bad-shape"),
        ([{"n": "t", "t": "now", "v": 1}], "dev-1", "bad-shape"),
        ([{"n": "t", "t": 1e300, "v": 1}], "dev-1", "bad-timestamp"),
        ([{"n": "t", "t": -1e300, "v": 1}], "dev-1", "bad-timestamp"),
        ([{"v": 1}], "dev-1", "bad-name"),
        ([{"n": "-t", "v": 1}], "dev-1", "bad-name"),
        ([{"n": "t e", "v": 1}], "dev-1", "bad-name"),
        ([{"n": "t/", "v": 1}], "dev-1", "bad-name"),
        ([{"n": "a//b", "v": 1}], "dev-1", "bad-name"),
        ([{"n": "x" * 200, "v": 1}], "dev-1", "bad-name"),
        ([{"n": "t", "v": 1}], "bad\x00device", "bad-name"),
        ([{"n": "temp", "v": 1}], None, "bad-name"),
        ([{"n": "dev:", "v": 1}], None, "bad-name"),
        ([], "dev-1", "no-readings"),
    ],
)
def test_rejections(doc: object, device: str | None, expected: str) -> None:
    assert reason(doc, device) == expected


def test_a_bad_record_refuses_the_whole_pack() -> None:
    assert reason([{"n": "a", "v": 1}, {"n": "b"}]) == "bad-shape"


# --------------------------------------------------------------------------- fuzzing

_names = st.sampled_from(["", "t", "a/", "dev:", "x:y", "-", "a//b", "urn:dev:1:", "é", "b/c"])
_anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    _names,
    st.lists(st.integers(), max_size=2),
)
_record = st.dictionaries(
    st.sampled_from(
        [
            "bn",
            "bt",
            "bu",
            "bv",
            "bs",
            "bver",
            "n",
            "u",
            "v",
            "vs",
            "vb",
            "vd",
            "s",
            "t",
            "ut",
            "x_",
        ]
    ),
    _anything,
    max_size=6,
)
_fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(payload: bytes, device: str | None) -> list[Reading] | str:
    """The readings, or the rejection reason; a reason outside REASONS or any other exception
    fails the test; what is accepted must survive the batch codec."""
    try:
        readings = parse_senml_payload(payload, device, now=NOW)
    except PayloadError as exc:
        reason = exc.reason
        assert reason in REASONS
        return reason
    assert readings
    assert all(isinstance(r.ts, int) and -(2**63) <= r.ts < 2**63 for r in readings)
    decoded = list(decode_batch(encode_batch(readings)).readings())
    assert Counter(map(repr, decoded)) == Counter(map(repr, readings))
    return readings


@_fuzz
@given(st.binary(max_size=200), st.sampled_from(["dev-1", None]))
def test_fuzz_random_bytes(payload: bytes, device: str | None) -> None:
    _check(payload, device)


@_fuzz
@given(st.lists(_record, max_size=4), st.sampled_from(["dev-1", None]))
def test_fuzz_structures(doc: list[dict[str, object]], device: str | None) -> None:
    _check(json.dumps(doc).encode(), device)


_good_pack = st.lists(
    st.fixed_dictionaries(
        {"n": st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True), "v": st.integers(-9, 9)}
    ),
    min_size=1,
    max_size=3,
)
_bad_payload = st.one_of(
    st.binary(max_size=30).map(lambda b: b"\x00" + b),  # never JSON
    st.lists(_record, min_size=1, max_size=2).map(lambda d: json.dumps([*d, {"n": "x"}]).encode()),
)


@_fuzz
@given(st.lists(st.one_of(_good_pack, _bad_payload), max_size=8))
def test_fuzz_good_packs_among_bad_ones_are_all_kept(stream: list[object]) -> None:
    """Counters add up, and every reading of every good pack is kept, whatever surrounds it."""
    kept: list[tuple[str, object]] = []
    rejected: Counter[str] = Counter()
    expected: list[tuple[str, object]] = []
    for i, item in enumerate(stream):
        device = f"dev-{i}"
        if isinstance(item, list):
            expected += [(f"{device}/{rec['n']}", rec["v"]) for rec in item]
            payload = json.dumps(item).encode()
        else:
            assert isinstance(item, bytes)
            payload = item
        outcome = _check(payload, device)
        if isinstance(outcome, str):
            rejected[outcome] += 1
        else:
            kept += [(f"{r.device}/{r.sensor}", r.value) for r in outcome]
    assert sum(rejected.values()) == sum(isinstance(item, bytes) for item in stream)
    assert kept == expected
