"""Seeded fleets: determinism, independent series, random access, signals that look right."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import pytest

from contract.errors import ConfigError
from contract.model import Reading
from simulator.fleet import (
    SENSOR_KINDS,
    Fleet,
    FleetSpec,
    canonical_value,
    reading_key,
)
from simulator.generators import CHUNK, KINDS, generate, kind_info

# A change in any generator, constant, seeding path or timestamp rule changes this digest.
# If the change is deliberate, update it (and say so in the commit message).
REFERENCE_DIGEST = "39541dea6b6805c4420f47e08e66c93d2a6f9d310a6f1c6cc0971899dafe4e1d"


def _reference_readings(fleet: Fleet) -> list[Reading]:
    return list(fleet.readings(0, 300)) + list(fleet.readings(1_000_000, 20))


def _digest(readings: list[Reading]) -> str:
    blob = json.dumps([[r.device, r.sensor, r.ts, r.value] for r in readings]).encode()
    return hashlib.sha256(blob).hexdigest()


def test_same_seed_gives_identical_readings_and_a_pinned_digest() -> None:
    spec = FleetSpec(seed=7, devices=4, sensors=8, rate_hz=0.5)
    first = _reference_readings(Fleet(spec))
    second = _reference_readings(Fleet(FleetSpec(seed=7, devices=4, sensors=8, rate_hz=0.5)))
    assert len(first) == 4 * 8 * 320
    assert first == second
    assert _digest(first) == REFERENCE_DIGEST


def test_a_different_seed_gives_different_readings() -> None:
    a = Fleet(FleetSpec(seed=1, devices=2, sensors=8, rate_hz=1 / 60))
    b = Fleet(FleetSpec(seed=2, devices=2, sensors=8, rate_hz=1 / 60))
    for s, kind in enumerate(SENSOR_KINDS):
        n = 3 * 1440  # three days: day and night, several switch cycles
        assert a.values(0, s, 0, n) != b.values(0, s, 0, n), kind


def test_each_device_has_its_own_stream() -> None:
    fleet = Fleet(FleetSpec(seed=3, devices=3, sensors=8, rate_hz=1 / 60))
    for s, kind in enumerate(fleet.sensor_kinds):
        n = 3 * 1440  # three days: day and night, several switch cycles
        streams = [tuple(fleet.values(d, s, 0, n)) for d in range(3)]
        assert len(set(streams)) == 3, kind


def test_adding_devices_and_sensors_leaves_the_others_unchanged() -> None:
    small = Fleet(FleetSpec(seed=5, devices=3, sensors=3))
    big = Fleet(FleetSpec(seed=5, devices=9, sensors=11))
    assert big.device_ids[:3] == small.device_ids
    assert big.sensor_keys[:3] == small.sensor_keys
    keep = {(d, s) for d in small.device_ids for s in small.sensor_keys}
    from_big = [r for r in big.readings(0, 40) if (r.device, r.sensor) in keep]
    assert from_big == list(small.readings(0, 40))


def test_sensor_keys_and_device_ids() -> None:
    fleet = Fleet(FleetSpec(devices=3, sensors=10, device_prefix="room"))
    assert fleet.device_ids == ["room-0000", "room-0001", "room-0002"]
    assert fleet.sensor_keys == [
        "temp",
        "hum",
        "pres",
        "co2",
        "lux",
        "batt",
        "switch",
        "energy",
        "temp2",
        "hum2",
    ]
    assert fleet.sensor_kinds[8:] == ["temperature", "humidity"]


@pytest.mark.parametrize("kind", KINDS)
def test_values_at_an_instant_do_not_depend_on_where_generation_started(kind: str) -> None:
    # Pieces start on both sides of noise chunk borders (every 1,024 instants) and of time
    # epoch borders (1 h walks and energy, 3 h pressure walk, 6 h switch chain).
    path = (11, 2, KINDS.index(kind))
    for rate in (1.0, 0.25):
        args: dict[str, Any] = {"start_us": 1_767_225_600_000_000 + 17, "rate_hz": rate}
        borders = [int(hours * 3600 * rate) for hours in (1, 2, 3, 6)]
        starts = [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 5, 8_990]
        starts += [b - 1 for b in borders] + borders
        whole = generate(kind, path, 0, max(starts) + CHUNK + 3, **args)
        for start in starts:
            for n in (1, 7, CHUNK + 3):
                piece = generate(kind, path, start, n, **args)
                assert piece == whole[start : start + n], (kind, rate, start, n)
        # one at a time, in reverse: nothing carried over from earlier calls
        tail = [generate(kind, path, i, 1, **args)[0] for i in range(8_999, 8_950, -1)]
        assert tail == whole[8_951:9_000][::-1]


def test_readings_in_pieces_equal_readings_in_one_go() -> None:
    fleet = Fleet(FleetSpec(seed=9, devices=5, sensors=8, rate_hz=7.3))
    whole = list(fleet.readings(0, 60))
    pieces = list(fleet.readings(0, 25)) + list(fleet.readings(25, 35))
    assert pieces == whole
    assert [fleet.ts(i) for i in range(60)] == fleet.timestamps(0, 60)
    assert sorted({r.ts for r in whole}) == fleet.timestamps(0, 60)


def test_timestamps_follow_the_rate_exactly() -> None:
    fleet = Fleet(FleetSpec(rate_hz=3.0, start_us=1_000_000))
    assert fleet.timestamps(0, 4) == [1_000_000, 1_333_333, 1_666_667, 2_000_000]
    assert fleet.ts(3_000_000) == 1_000_000 + 1_000_000_000_000
    fast = Fleet(FleetSpec(rate_hz=1_000_000.0))
    stamps = fast.timestamps(10**9, 1000)
    assert np.all(np.diff(stamps) == 1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("devices", 0),
        ("sensors", 0),
        ("rate_hz", 0.0),
        ("rate_hz", math.inf),
        ("seed", -1),
        ("start_us", -5),
        ("device_prefix", "a/b"),
        ("device_prefix", ""),
    ],
)
def test_bad_specs_name_the_key(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        FleetSpec(**{field: value})  # type: ignore[arg-type]
    assert err.value.key == field


def test_reading_key_is_exact_and_typed() -> None:
    def key(value: object = None) -> tuple[str, str, int, str]:
        return reading_key(Reading("d", "s", 1, value))  # type: ignore[arg-type]

    assert key(0.1) == key(0.1)
    assert key(0.1) != key(0.1 + 2**-56)  # a different float, not a rounding of it
    assert len({key(1), key(1.0), key(value=True)}) == 3
    assert key(math.nan) == key(float("nan"))
    assert key({"b": 1, "a": [1, 2]}) == key({"a": [1, 2], "b": 1})
    assert canonical_value(-0.0) != canonical_value(0.0)
    assert reading_key(Reading("d", "s", 1, 2.5, flags=3)) == key(2.5)


# --- statistics over a long run -----------------------------------------------------------

_DAYS = 30
_RATE = 1 / 60  # one reading a minute
_N = _DAYS * 1440
_DEVICES = 10


@pytest.fixture(scope="module")
def month() -> dict[str, list[list[Any]]]:
    """30 days, once a minute, 10 devices x the 8 kinds: ``{kind: [values per device]}``."""
    fleet = Fleet(FleetSpec(seed=21, devices=_DEVICES, sensors=8, rate_hz=_RATE))
    return {
        kind: [fleet.values(d, s, 0, _N) for d in range(_DEVICES)]
        for s, kind in enumerate(fleet.sensor_kinds)
    }


def _utc_hours() -> Any:
    fleet = Fleet(FleetSpec(rate_hz=_RATE))
    return (np.array(fleet.timestamps(0, _N)) // 3_600_000_000) % 24


@pytest.mark.parametrize("kind", KINDS)
def test_values_have_their_type_and_exact_quantisation(
    month: dict[str, list[list[Any]]], kind: str
) -> None:
    info = kind_info(kind)
    values = [v for series in month[kind][:3] for v in series]
    assert {type(v).__name__ for v in values} == {info.type}
    if info.decimals is not None:
        assert all(round(v, info.decimals) == v for v in values)
        longest = max(len(repr(v).partition(".")[2]) for v in values)
        assert longest <= max(info.decimals, 1)  # repr shows "21.0" for a whole float
        assert all(json.loads(json.dumps(v)) == v for v in values)


def test_temperature_has_a_daily_cycle_and_stays_plausible(
    month: dict[str, list[list[Any]]],
) -> None:
    hours = _utc_hours()
    for series in month["temperature"]:
        t = np.array(series)
        assert t.min() >= 0.0
        assert t.max() <= 36.0
        assert 10.0 <= t.mean() <= 26.0
        profile = np.array([t[hours == h].mean() for h in range(24)])
        assert profile.max() - profile.min() >= 3.0  # daily amplitude >= 2 degC
        assert np.abs(np.diff(t)).max() < 1.0  # minute to minute: no jumps


def test_humidity_is_bounded_and_anti_correlated_with_temperature(
    month: dict[str, list[list[Any]]],
) -> None:
    for temp, hum in zip(month["temperature"], month["humidity"], strict=True):
        h = np.array(hum)
        assert h.min() >= 0.0
        assert h.max() <= 100.0
        assert 30.0 <= h.mean() <= 70.0
        assert np.corrcoef(np.array(temp), h)[0, 1] < -0.5


def test_pressure_walks_slowly_around_1013(month: dict[str, list[list[Any]]]) -> None:
    for series in month["pressure"]:
        p = np.array(series)
        assert p.min() >= 985.0
        assert p.max() <= 1041.0
        assert abs(p.mean() - 1013.0) <= 8.0
        steps = np.abs(np.diff(p))
        assert steps.max() <= 1.0  # a walk, not a jumpy noise
        assert p.max() - p.min() >= 5.0  # and it does wander


def test_co2_and_lux_follow_the_day(month: dict[str, list[list[Any]]]) -> None:
    hours = _utc_hours()
    # UTC 22:00-23:00 is 21:00-02:00 local for every device (solar offsets -1..+3 h).
    night = (hours == 22) | (hours == 23)
    for co2, lux in zip(month["co2"], month["lux"], strict=True):
        c = np.array(co2)
        assert c.min() >= 380
        assert c.max() <= 1500
        assert c[night].mean() < c[~night].max() - 100  # occupied by day
        light = np.array(lux)
        assert light.min() >= 0.0
        assert np.all(light[night] == 0.0)
        assert light.max() > 50.0


def test_battery_discharges_slowly_and_is_replaced(month: dict[str, list[list[Any]]]) -> None:
    for series in month["voltage"]:
        v = np.array(series)
        assert v.min() >= 2.75
        assert v.max() <= 3.36
        jumps = np.flatnonzero(np.diff(v) > 0.2)  # a new battery
        assert len(jumps) <= 2  # a battery lasts 20 days or more
        for lo, hi in zip([0, *(jumps + 1)], [*(jumps + 1), len(v)], strict=True):
            if hi - lo >= 2 * 1440:
                first_day, last_day = v[lo : lo + 1440].mean(), v[hi - 1440 : hi].mean()
                assert last_day < first_day


def test_switch_dwells_in_each_state(month: dict[str, list[list[Any]]]) -> None:
    fleet = Fleet(FleetSpec(seed=21, devices=5, sensors=8, rate_hz=1.0))
    for d in range(5):
        on = np.array(fleet.values(d, 6, 0, 2 * 86_400))
        changes = np.flatnonzero(np.diff(on.astype(np.int8))) + 1
        dwell = np.diff(changes)
        state = on[changes[:-1]]
        assert len(dwell) >= 50
        assert dwell.min() >= 5  # minimum dwell time, seconds
        assert 40 <= dwell[state].mean() <= 1200  # mean on: 60..900 s
        assert 80 <= dwell[~state].mean() <= 2400  # mean off: 120..1800 s
    for series in month["switch"]:
        assert 0.02 <= np.mean(series) <= 0.9


def test_energy_counter_is_monotonic_and_counts(month: dict[str, list[list[Any]]]) -> None:
    for series in month["counter"]:
        c = np.array(series, dtype=np.int64)
        assert np.all(np.diff(c) >= 0)
        per_day = (c[-1] - c[0]) / _DAYS
        assert 1_000 <= per_day <= 60_000  # Wh per day
