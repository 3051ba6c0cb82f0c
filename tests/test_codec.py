"""The batch codec: exact round trip, rejection of bad input, size, and a frozen format."""

from __future__ import annotations

import contextlib
import math
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.codec import (
    CODEC_VERSION,
    MAGIC,
    MAX_BODY_BYTES,
    MAX_READINGS,
    Batch,
    decode_batch,
    encode_batch,
)
from contract.errors import CodecError
from contract.model import FLAG_CLOCK_SUSPECT, FLAG_EDGE_STAMPED, Reading, Value

# --------------------------------------------------------------------------- helpers

FLEET_START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
FLEET_SENSORS = (
    # name, level, daily swing, noise sigma, decimals
    ("temperature", 20.0, 2.0, 0.05, 2),
    ("humidity", 45.0, 5.0, 0.3, 1),
    ("pressure", 1013.0, 3.0, 0.05, 1),
)


def fleet_readings(
    count: int, *, seed: int = 7, devices: int = 50, jitter_us: int = 0
) -> list[Reading]:
    """A deterministic simulated fleet: ``devices`` x 3 sensors at 1 Hz, in arrival order.

    Each device reports at its own phase within the second; values are a level, a slow daily
    swing and gaussian noise, quantised like real sensors (0.01 degC, 0.1 %, 0.1 hPa).
    ``jitter_us`` adds uniform timestamp jitter of up to +-``jitter_us`` microseconds.
    """
    rng = np.random.default_rng(seed)
    n_series = devices * len(FLEET_SENSORS)
    steps = -(-count // n_series)
    phase = rng.integers(0, 1_000_000, size=devices)
    k = np.arange(steps)
    values: dict[tuple[int, int], list[float]] = {}
    for d in range(devices):
        for s, (_, level, swing, noise, decimals) in enumerate(FLEET_SENSORS):
            day = 2 * np.pi * (k + rng.integers(0, 86_400)) / 86_400.0
            series = level + rng.normal(0, 1) + swing * np.sin(day) + rng.normal(0, noise, steps)
            values[d, s] = np.round(series, decimals).tolist()
    jitter = rng.integers(-jitter_us, jitter_us + 1, size=(steps, n_series))
    out: list[Reading] = []
    for step in range(steps):
        for d in range(devices):
            for s, (sensor, *_) in enumerate(FLEET_SENSORS):
                if len(out) == count:
                    return out
                ts = FLEET_START_US + int(phase[d]) + step * 1_000_000
                ts += int(jitter[step, d * len(FLEET_SENSORS) + s])
                out.append(Reading(f"dev-{d:03d}", sensor, ts, values[d, s][step]))
    return out


def same_value(a: object, b: object) -> bool:
    """Equal and of the same type, floats bit for bit (any NaN equals any NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a):
            return math.isnan(b)
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def grouped(readings: list[Reading]) -> dict[tuple[str, str], list[Reading]]:
    """What a batch must give back: per series in first-seen order, input order within."""
    groups: dict[tuple[str, str], list[Reading]] = {}
    for r in readings:
        groups.setdefault((r.device, r.sensor), []).append(r)
    return groups


def assert_round_trip(readings: list[Reading]) -> Batch:
    batch = decode_batch(encode_batch(readings))
    expected = grouped(readings)
    assert batch.version == CODEC_VERSION
    assert batch.count == len(readings)
    assert [(s.device, s.sensor) for s in batch.series] == list(expected)
    for column, rows in zip(batch.series, expected.values(), strict=True):
        assert column.ts.dtype == np.int64
        assert column.flags.dtype == np.uint8
        assert column.ts.tolist() == [r.ts for r in rows]
        assert column.flags.tolist() == [r.flags for r in rows]
        assert len(column.values) == len(rows)
        for got, want in zip(column.values, [r.value for r in rows], strict=True):
            assert same_value(got, want), (column.device, column.sensor, got, want)
    return batch


def frame(body: bytes, *, checksum: bool = True) -> bytes:
    """A version 1 batch around a hand-made body."""
    cctx = zstandard.ZstdCompressor(write_checksum=checksum)
    return MAGIC + b"\x01" + cctx.compress(body)


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def assert_rejected(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_batch(data)


# --------------------------------------------------------------------------- strategies

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_doc = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
).filter(lambda d: isinstance(d, (dict, list)))

decimal_floats = st.builds(
    lambda m, k: m / 10**k, st.integers(-(10**12), 10**12), st.integers(0, 9)
)
values: st.SearchStrategy[Value] = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
    decimal_floats,
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308]),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**64), 2**64),
    st.integers(-(10**40), 10**40),
    st.booleans(),
    st.text(),
    json_doc,
)
any_ts = st.integers(-(2**63), 2**63 - 1)


@st.composite
def batches(draw: st.DrawFn) -> list[Reading]:
    """Readings over a few series with unicode names, any timestamps and mixed value types."""
    names = st.text(max_size=12) | st.sampled_from(
        ["imu/accel/x", "dev/1", "t\u00e9mp\u00e9rature"]
    )
    pool = draw(st.lists(st.tuples(names, names), min_size=1, max_size=5, unique=True))
    regular = draw(st.booleans())
    base = draw(st.integers(-(2**62), 2**62))
    step = draw(st.integers(-(10**7), 10**7))
    jitter = draw(st.integers(0, 2_000))
    kind = draw(st.sampled_from(["any", "decimal", "int", "walk"]))
    walk_step = draw(st.integers(-(10**6), 10**6))
    value_strategy = {
        "any": values,
        "decimal": decimal_floats,
        "int": st.integers(-(2**63), 2**63 - 1),
        "walk": values,
    }[kind]
    count = draw(st.integers(0, 60))
    out = []
    for i in range(count):
        device, sensor = draw(st.sampled_from(pool))
        ts = base + i * step + draw(st.integers(-jitter, jitter)) if regular else draw(any_ts)
        # "walk": mostly a steady climb (delta coding), now and then any other value.
        value = (i * walk_step) / 100 if kind == "walk" and i % 7 else draw(value_strategy)
        out.append(Reading(device, sensor, ts, value, draw(st.integers(0, 255))))
    return out


# --------------------------------------------------------------------------- round trip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_round_trip_property(readings: list[Reading]) -> None:
    assert_round_trip(readings)


def test_empty_batch_round_trips() -> None:
    batch = assert_round_trip([])
    assert batch.series == ()
    assert batch.count == 0
    assert batch.t_min is None
    assert batch.t_max is None


EDGE_VALUES: list[Value] = [
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
    -0.0,
    0.0,
    5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    0.1 + 0.2,
    1 / 3,
    20.25,
    2**53 + 0.0,
    2**63 - 1,
    -(2**63),
    2**63,
    -(2**63) - 1,
    10**30,
    0,
    True,
    False,
    "",
    "caf\u00e9 \U0001f321",
    {"lat": 47.37, "lon": 8.54, "fix": [True, None]},
    [],
    {},
    [1, -0.0, "x", {"deep": [[[]]]}],
]


def test_every_kind_of_value_in_one_series() -> None:
    readings = [Reading("dev", "mixed", 1000 + i, v) for i, v in enumerate(EDGE_VALUES)]
    batch = assert_round_trip(readings)
    (column,) = batch.series
    assert [type(v) for v in column.values] == [type(v) for v in EDGE_VALUES]


@pytest.mark.parametrize("value", EDGE_VALUES, ids=repr)
def test_each_kind_of_value_alone(value: Value) -> None:
    assert_round_trip([Reading("d", "s", 7, value), Reading("d", "s", 8, value)])


def test_bool_stays_bool_and_int_stays_int() -> None:
    readings = [Reading("d", "s", i, v) for i, v in enumerate([True, 1, False, 0, 1.0, 0.0])]
    batch = assert_round_trip(readings)
    assert [type(v) for v in batch.series[0].values] == [bool, int, bool, int, float, float]


def test_ints_and_decimals_share_a_series() -> None:
    # JSON payloads give int for "21" and float for "21.5": one series, both kinds.
    values: list[Value] = [21, 21.5, 22, 21.75, -3, 10**17, 0.1]
    assert_round_trip([Reading("d", "temp", i, v) for i, v in enumerate(values)])


def test_delta_coded_series_after_a_series_without_numbers() -> None:
    readings = [Reading("d", "text", 0, "a"), Reading("d", "flag", 0, value=True)]
    readings += [Reading("d", "climb", i, 1000 * i + 0.5) for i in range(50)]
    readings += [Reading("d", "count", i, 10**12 + 7 * i) for i in range(50)]
    assert_round_trip(readings)


def test_timestamps_any_order_duplicates_negative_extremes() -> None:
    stamps = [5, 5, -1, 2**63 - 1, -(2**63), 0, 5, -(2**63), 2**63 - 1, 1_000_000]
    assert_round_trip([Reading("d", "s", t, 1.5) for t in stamps])


def test_flags_round_trip() -> None:
    flags = [0, FLAG_EDGE_STAMPED, FLAG_CLOCK_SUSPECT, FLAG_EDGE_STAMPED | FLAG_CLOCK_SUSPECT, 255]
    assert_round_trip([Reading("d", "s", i, 1.0, f) for i, f in enumerate(flags)])


def test_unicode_and_path_names() -> None:
    names = [("caf\u00e9", "imu/accel/x"), ("\u6e29\u5ea6\u8a08", "a/b/c/d"), ("", "")]
    readings = [Reading(d, s, i, float(i)) for i, (d, s) in enumerate(names * 3)]
    assert_round_trip(readings)


def test_series_order_is_first_appearance_and_order_within_is_input_order() -> None:
    readings = [
        Reading("b", "x", 3, 1.0),
        Reading("a", "x", 1, 2.0),
        Reading("b", "x", 2, 3.0),
        Reading("a", "y", 9, 4.0),
        Reading("b", "x", 1, 5.0),
    ]
    batch = assert_round_trip(readings)
    assert [(s.device, s.sensor, s.ts.tolist()) for s in batch.series] == [
        ("b", "x", [3, 2, 1]),
        ("a", "x", [1]),
        ("a", "y", [9]),
    ]
    assert batch.t_min == 1
    assert batch.t_max == 9
    assert list(batch.readings()) == [
        readings[0],
        readings[2],
        readings[4],
        readings[1],
        readings[3],
    ]


def test_fleet_round_trips_exactly() -> None:
    readings = fleet_readings(3_000, jitter_us=500)
    batch = assert_round_trip(readings)
    assert len(batch.series) == 150


def test_numpy_scalars_are_accepted_as_plain_values() -> None:
    readings = [
        Reading("d", "s", 1, np.float64(2.5)),
        Reading("d", "s", 2, np.int32(7)),  # type: ignore[arg-type]
        Reading("d", "s", 3, np.bool_(1)),  # type: ignore[arg-type]
    ]
    values = decode_batch(encode_batch(readings)).series[0].values
    assert [(type(v), v) for v in values] == [(float, 2.5), (int, 7), (bool, True)]


def test_threads_encode_independently() -> None:
    inputs = [fleet_readings(500, seed=seed, jitter_us=seed) for seed in range(8)]
    expected = [encode_batch(r) for r in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(encode_batch, inputs * 4))
    assert got == expected * 4


# --------------------------------------------------------------------------- size


def test_fleet_batch_is_at_most_two_bytes_per_reading() -> None:
    readings = fleet_readings(10_000)
    size = len(encode_batch(readings))
    assert size / len(readings) <= 2.0, size


def test_jittered_fleet_batch_is_at_most_two_bytes_per_reading() -> None:
    # +-100 us of timestamp jitter is ~7.6 bits of real entropy per reading.
    readings = fleet_readings(10_000, jitter_us=100)
    size = len(encode_batch(readings))
    assert size / len(readings) <= 2.0, size


# --------------------------------------------------------------------------- encode errors


@pytest.mark.parametrize(
    "reading",
    [
        Reading("d", "s", 2**63, 1.0),
        Reading("d", "s", -(2**63) - 1, 1.0),
        Reading("d", "s", 1.5, 1.0),  # type: ignore[arg-type]
        Reading("d", "s", 1, 1.0, 256),
        Reading("d", "s", 1, 1.0, -1),
        Reading("d", "s", 1, None),  # type: ignore[arg-type]
        Reading("d", "s", 1, (1, 2)),  # type: ignore[arg-type]
        Reading("d", "s", 1, b"bytes"),  # type: ignore[arg-type]
        Reading("d", "s", 1, {"bad": math.nan}),
        Reading("d", "s", 1, [math.inf]),
        Reading("d", "s", 1, {"set": {1, 2}}),
        Reading("d", "s", 1, "\ud800"),
        Reading("\udfff", "s", 1, 1.0),
        Reading("d", 5, 1, 1.0),  # type: ignore[arg-type]
        Reading("d", "s", 1, 10**5000),
    ],
)
def test_encode_rejects_what_the_format_cannot_carry(reading: Reading) -> None:
    with pytest.raises(CodecError):
        encode_batch([Reading("d", "ok", 0, 1.0), reading])


def test_encode_rejects_too_many_readings() -> None:
    reading = Reading("d", "s", 0, 1.0)
    with pytest.raises(CodecError, match="readings"):
        encode_batch(reading for _ in range(MAX_READINGS + 1))


# --------------------------------------------------------------------------- decode errors

SMALL = [
    Reading("dev-1", "temp", 1_000_000, 21.5),
    Reading("dev-1", "temp", 2_000_000, 21.75, FLAG_EDGE_STAMPED),
    Reading("dev-2", "door", 1_500_000, value=True),
    Reading("dev-2", "label", 1_500_001, "front"),
    Reading("dev-2", "gps", 1_500_002, {"lat": 47.5}),
    Reading("dev-1", "temp", 3_000_000, math.nan),
    Reading("dev-2", "count", 1_500_003, 12),
]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"C",
        b"CRN",
        b"CRN\x01",
        b"CRN\x01\x00",
        b"XRN\x01" + zstandard.compress(b"\x00\x00\x00\x00"),
        b"\x01" + zstandard.compress(b"[]"),  # the old placeholder format
        b"CRN\x00" + zstandard.compress(b""),
        b"CRN\x02" + zstandard.compress(b""),
        b"CRN\xff",
    ],
)
def test_decode_rejects_garbage(data: bytes) -> None:
    assert_rejected(data)


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(CodecError):
        decode_batch("CRN\x01")  # type: ignore[arg-type]


def test_unknown_version_is_named() -> None:
    data = bytearray(encode_batch(SMALL))
    data[3] = 9
    with pytest.raises(CodecError, match="unknown codec version 9"):
        decode_batch(bytes(data))


def test_every_truncation_is_rejected() -> None:
    data = encode_batch(SMALL)
    for end in range(len(data)):
        assert_rejected(data[:end])


def test_trailing_bytes_are_rejected() -> None:
    data = encode_batch(SMALL)
    assert_rejected(data + b"\x00")
    assert_rejected(data + data)


def test_every_bit_flip_is_rejected_or_decodes() -> None:
    data = encode_batch(SMALL)
    rejected = 0
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            decode_batch(bytes(flipped))
        except CodecError:
            rejected += 1
    # The zstd checksum catches flips in the payload; only a few header bits are harmless.
    assert rejected >= len(data) * 8 * 0.95


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_are_rejected(data: bytes) -> None:
    assert_rejected(data)
    assert_rejected(MAGIC + bytes([CODEC_VERSION]) + data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bodies_in_valid_frames_give_codec_error_or_a_batch(body: bytes) -> None:
    try:
        batch = decode_batch(frame(body))
    except CodecError:
        return
    assert batch.count == sum(len(s) for s in batch.series)


@settings(max_examples=200, deadline=None)
@given(batches(), st.data())
def test_mutated_bodies_give_codec_error_or_a_batch(readings: list[Reading], data: Any) -> None:
    body = bytearray(zstandard.ZstdDecompressor().decompress(encode_batch(readings)[4:]))
    for _ in range(data.draw(st.integers(1, 4))):
        if not body:
            break
        at = data.draw(st.integers(0, len(body) - 1))
        body[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    with contextlib.suppress(CodecError):
        decode_batch(frame(bytes(body[:cut])))


def directory(n: int, *, count: int | None = None, kind: int = 0) -> bytes:
    """Header and series directory of a one-series body of ``n`` readings.

    Every column but count and kind is all zero (width 0). Reading columns follow.
    """
    out = varint(n) + varint(1) + varint(1) + varint(1)
    out += b"\x01\x01d" + b"\x01\x01s"  # names "d" and "s"
    out += b"\x00" + b"\x00"  # device_step, sensor
    out += b"\x08" + (n if count is None else count).to_bytes(8, "little")
    out += b"\x01" + bytes([kind])
    return out + b"\x00" * 6  # ts_order, anchor, step, scale, value_mode, value_base


def test_hand_made_body_decodes() -> None:
    # Proves the hand-made bodies below are right but for the one thing each one forges.
    body = directory(3) + b"\x00" * 6
    batch = decode_batch(frame(body))
    assert [(s.device, s.sensor, s.ts.tolist(), s.values) for s in batch.series] == [
        ("d", "s", [0, 0, 0], [0.0, 0.0, 0.0])
    ]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (varint(2**40) + varint(1) + varint(1) + varint(1), "readings"),
        (varint(MAX_READINGS + 1) + varint(1) + varint(1) + varint(1), "readings"),
        (varint(3) + varint(4) + varint(1) + varint(1), "series"),
        (varint(3) + varint(1) + varint(2) + varint(1), "devices"),
        (b"\xff" * 11, "varint"),
        (directory(3, count=2) + b"\x00" * 6, "counts"),
        (directory(3, count=2**63) + b"\x00" * 6, "count"),
        (directory(3, kind=7) + b"\x00" * 6, "kind"),
        (directory(3) + b"\x09" + b"\x00" * 5, "width"),
        (directory(3) + b"\x08" + b"\x00" * 5, "truncated"),
        (directory(3) + b"\x00" * 6 + b"\x00", "unexpected bytes"),
        (directory(3, kind=5) + b"\x00" * 5 + b"\x01\x03\x03\x03", "truncated"),
        (directory(3, kind=5) + b"\x00" * 5 + b"\x08" + b"\xff" * 24, "blob_length"),
        (directory(1, kind=5) + b"\x00" * 5 + b"\x01\x01\xff", "malformed"),
        (directory(1, kind=6) + b"\x00" * 5 + b"\x01\x03NaN", "NaN"),
        (directory(1, kind=6) + b"\x00" * 5 + b"\x01\x04true", "bool"),
        (directory(1, kind=6) + b"\x00" * 5 + b'\x01\x03"x"', "str"),
        (directory(1, kind=6) + b"\x00" * 5 + b"\x01\x05" + b"[" * 5, "malformed"),
    ],
)
def test_forged_bodies_are_rejected(body: bytes, problem: str) -> None:
    with pytest.raises(CodecError, match=problem):
        decode_batch(frame(body))


def test_deeply_nested_document_is_rejected_not_crashing() -> None:
    text = b"[" * 100_000 + b"]" * 100_000
    body = directory(1, kind=6) + b"\x00" * 5 + b"\x03" + len(text).to_bytes(3, "little") + text
    assert_rejected(frame(body))


def test_forged_content_size_is_rejected_before_allocation() -> None:
    # A frame header claiming 2**40 bytes of content (single segment, 8-byte size field).
    header = b"\x28\xb5\x2f\xfd" + b"\xe4" + (2**40).to_bytes(8, "little")
    assert_rejected(MAGIC + b"\x01" + header + b"\x01\x00\x00")
    big = zstandard.ZstdCompressor(write_checksum=True).compress(b"\x00" * (MAX_BODY_BYTES + 1))
    assert_rejected(MAGIC + b"\x01" + big)


def test_frames_without_checksum_or_content_size_are_rejected() -> None:
    body = directory(3) + b"\x00" * 6
    assert_rejected(frame(body, checksum=False))
    no_size = zstandard.ZstdCompressor(write_checksum=True, write_content_size=False)
    assert_rejected(MAGIC + b"\x01" + no_size.compress(body))


def test_num_int_must_be_a_multiple_of_its_scale() -> None:
    # kind NUM_INT, scale 1, value base 5: m = 5 is not a multiple of 10.
    body = directory(1, kind=1)[:-6] + b"\x00\x00\x00\x01\x01\x00\x01\x0a" + b"\x00" * 6
    with pytest.raises(CodecError, match="multiple"):
        decode_batch(frame(body))


# --------------------------------------------------------------------------- frozen format

# A fixed batch and its version 1 body. If this test fails, the format changed: that needs a
# new version (and the old decoder kept), never an edit of these bytes.
KNOWN_READINGS = [
    Reading("dev-1", "temp", 1_700_000_000_000_000, 21.5),
    Reading("dev-1", "temp", 1_700_000_001_000_000, 21.25),
    Reading("dev-1", "temp", 1_700_000_002_000_000, 21.0, FLAG_EDGE_STAMPED),
    Reading("dev-2", "door", 1_700_000_000_500_000, value=True),
    Reading("dev-2", "door", 1_700_000_003_500_000, value=False),
    Reading("dev-2", "mixed", 1_700_000_000_600_000, 7),
    Reading("dev-2", "mixed", 1_700_000_000_700_000, math.inf),
    Reading("dev-2", "mixed", 1_700_000_000_800_000, "ok"),
    Reading("dev-2", "mixed", 1_700_000_000_900_000, {"a": [1, None]}),
    Reading("dev-1", "temp", 1_700_000_002_999_999, -0.5, FLAG_CLOCK_SUSPECT),
]
KNOWN_BODY = bytes.fromhex(
    "0a0302030105056465762d316465762d320104040574656d70646f6f726d6978656401000200010001020104"
    "02040100ffff000700404080420d3c0f033000004800001400000c000003808040848d0d1e5b030102000001"
    "01000102cc000e100000010000000100000000000001000001020000000000000104030102050602003131cb"
    "00000000100008000000000000f07f01020e6f6b7b2261223a5b312c6e756c6c5d7d"
)
KNOWN_BATCH = bytes.fromhex(
    "43524e0128b52ffd24a6a5040062c81f2a8055e9734726b0648cc4c8f29460af6b757537a27f3fbe9aa6df41"
    "aaff913204e5c412aba2b6b79429059d8865652a8957352809c5a14c49ef09b0079e42ef59034ebfedbe3d49"
    "06d0fbb7f55b2122d00762d8da05fb6043ecc51a1cd10383d0026799dfb45def5bfd283793eb3267b45c12e3"
    "5a3be32934323af7d5250407002a316646e202800aa03280da8d4150e8af0de85f"
)


def test_known_answer_body() -> None:
    body = zstandard.ZstdDecompressor().decompress(encode_batch(KNOWN_READINGS)[4:])
    assert body.hex() == KNOWN_BODY.hex()


def test_known_answer_batch_decodes() -> None:
    assert_round_trip(KNOWN_READINGS)
    batch = decode_batch(KNOWN_BATCH)
    got = list(batch.readings())
    want = [r for rows in grouped(KNOWN_READINGS).values() for r in rows]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g.device, g.sensor, g.ts, g.flags) == (w.device, w.sensor, w.ts, w.flags)
        assert same_value(g.value, w.value)


def test_header_is_magic_and_version() -> None:
    data = encode_batch(KNOWN_READINGS)
    assert data[:4] == b"CRN\x01"
    assert data[4:8] == b"\x28\xb5\x2f\xfd"  # one zstd frame follows
