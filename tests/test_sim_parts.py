"""Simulator parts: new generators look right over long runs, filters do exactly what they say
(outlier labels = injected spikes), joins combine, everything is random access and seeded."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from simulator.fleetfile import DeviceType, parse_fleet
from simulator.parts import LABEL_OUTLIER, LABEL_STUCK, Column

_DAY = 86_400


def _type(sensors: str, *, count: int = 1, interval_s: float = 60.0, extra: str = "") -> DeviceType:
    text = f"""
seed = 5
[[device_types]]
name = "t"
count = {count}
interval_s = {interval_s}
{extra}
{sensors}
"""
    return parse_fleet(text).device_types[0]


def _sensor(key: str, generator: str, params: str = "", filters: str = "") -> str:
    out = f'[[device_types.sensors]]\nkey = "{key}"\ngenerator = "{generator}"\n{params}\n'
    if filters:
        out += f"filters = [{filters}]\n"
    return out


def _col(t: DeviceType, key: str, n: int, device: int = 0, start: int = 0) -> Column:
    return t.device_columns(device, start, n)[key]


# --- generators over long runs -----------------------------------------------------------


def _haversine_m(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * 6_371_000.0 * np.arcsin(np.sqrt(a))


def test_gps_drives_round_its_route_at_its_speed() -> None:
    params = "center = [52.0, 5.0]\nradius_m = 2000.0\nspeed_mps = 10.0"
    t = _type(_sensor("gps", "gps", params), count=3, interval_s=1.0)
    n = 6 * 3600  # six hours at 1 Hz: many laps
    for d in range(3):
        x = _col(t, "gps", n, device=d).x
        lat, lon, speed, heading = x[:, 0], x[:, 1], x[:, 2], x[:, 3]
        # within the route's radius of the centre (waypoints at 0.5..1 x radius)
        assert _haversine_m(52.0, 5.0, lat, lon).max() <= 2000.0 + 1.0
        # speed between 0.5 and 1.5 x a cruise speed of 0.8..1.2 x speed_mps
        assert speed.min() >= 4.0 - 1e-9
        assert speed.max() <= 18.0 + 1e-9
        assert 8.0 <= speed.mean() <= 12.0
        assert np.all((heading >= 0.0) & (heading < 360.0))
        # distance between consecutive fixes = the speed (m/s x 1 s) up to corner cutting
        step = _haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:])
        mid = (speed[:-1] + speed[1:]) / 2
        assert np.median(np.abs(step - mid)) < 0.05
        assert np.all(step <= mid + 0.05)
        # the heading is the direction of travel
        bearing = np.degrees(
            np.arctan2(
                np.radians(lon[1:] - lon[:-1]) * math.cos(math.radians(52.0)),
                np.radians(lat[1:] - lat[:-1]),
            )
        )
        diff = np.abs((bearing - heading[:-1] + 180.0) % 360.0 - 180.0)
        assert np.median(diff) < 1.0


def test_gps_follows_a_given_route() -> None:
    route = "route = [[45.0, 7.0], [45.01, 7.0], [45.01, 7.01]]\nspeed_mps = 5.0"
    t = _type(_sensor("gps", "gps", route), interval_s=5.0)
    x = _col(t, "gps", 20_000).x
    assert x[:, 0].min() >= 45.0 - 1e-6
    assert x[:, 0].max() <= 45.01 + 1e-6
    assert x[:, 1].min() >= 7.0 - 1e-6
    assert x[:, 1].max() <= 7.01 + 1e-6
    # north, east, then back south-west: three headings only
    assert set(np.round(x[:, 3]).tolist()) <= {0.0, 90.0, 180.0 + 35.0, 180.0 + 36.0, 360.0}


def test_accelerometer_measures_one_g_and_gyro_small_rates() -> None:
    t = _type(
        _sensor("acc", "accel", "vibration_g = 0.02") + _sensor("gyro", "gyro"),
        count=4,
        interval_s=10.0,
    )
    n = 3 * _DAY // 10
    for d in range(4):
        cols = t.device_columns(d, 0, n)
        acc, gyro = cols["acc"].x, cols["gyro"].x
        g = np.linalg.norm(acc, axis=1)
        assert abs(g.mean() - 1.0) < 0.01
        assert g.std() < 0.06
        assert acc[:, 2].mean() > 0.9  # lying flat-ish: gravity on z
        assert np.abs(acc[:, :2].mean(axis=0)).max() < 0.3
        assert np.abs(gyro.mean(axis=0)).max() < 1.5
        assert gyro.std(axis=0).min() > 0.05
        assert np.abs(gyro).max() < 5.0


def test_battery_drains_and_recovers_on_charge() -> None:
    params = "full_v = 4.2\nempty_v = 3.3\ndischarge_h = 10.0\ncharge_h = 2.0"
    t = _type(_sensor("b", "battery", params), count=3, interval_s=60.0)
    n = 5 * 1440  # five days a minute apart: several 12 h (x 0.8..1.2) cycles
    for d in range(3):
        v = _col(t, "b", n, device=d).x[:, 0]
        assert v.min() >= 3.3 - 0.01
        assert v.max() <= 4.2 + 0.01
        assert v.max() - v.min() > 0.8
        smooth = np.convolve(v, np.ones(15) / 15, mode="valid")
        rising = np.diff(smooth) > 0
        # charging is the rising part: 2 h of every 12 (1/6), not counting noise
        assert 0.10 < rising.mean() < 0.25
        # count charges: a new one starts where the voltage turns up after a long fall
        starts = np.flatnonzero(np.diff(rising.astype(int)) == 1)
        big = [s for s in starts if smooth[s] < 3.6]
        assert 8 <= len(big) <= 13  # 5 days / (12 h x 0.8..1.2)


# --- filters ------------------------------------------------------------------------------


def _pair(filters: str, generator: str = "temperature", n: int = 20_000) -> tuple[Column, Column]:
    """The same stream without and with ``filters`` (same key: same seed path)."""
    plain = _type(_sensor("s", generator))
    filtered = _type(_sensor("s", generator, filters=filters))
    return _col(plain, "s", n), _col(filtered, "s", n)


def test_noise_has_its_standard_deviation() -> None:
    plain, noisy = _pair('{ kind = "noise", sigma = 0.5 }')
    d = noisy.x[:, 0] - plain.x[:, 0]
    assert abs(d.mean()) < 0.02
    assert abs(d.std() - 0.5) < 0.02
    assert noisy.labels.max() == 0


def test_outlier_labels_are_exactly_the_injected_spikes() -> None:
    plain, spiked = _pair('{ kind = "outliers", probability = 0.01, magnitude = 5.0 }', n=50_000)
    d = spiked.x[:, 0] - plain.x[:, 0]
    injected = set(np.flatnonzero(d != 0.0).tolist())
    labelled = set(np.flatnonzero(spiked.labels & LABEL_OUTLIER).tolist())
    assert injected == labelled
    assert 0.01 * 50_000 * 0.8 < len(labelled) < 0.01 * 50_000 * 1.2
    assert np.all(np.abs(d[list(labelled)]) >= 5.0)
    assert np.all(np.abs(d[list(labelled)]) <= 10.0)
    assert 0.4 < (d > 0).sum() / len(labelled) < 0.6  # up and down
    assert spiked.emitted.all()


def test_outliers_then_quantise_keep_their_labels_and_the_values_on_the_grid() -> None:
    t = _type(
        _sensor(
            "s",
            "temperature",
            filters='{ kind = "outliers", probability = 0.02, magnitude = 3.0 }, '
            '{ kind = "quantise", step = 0.25 }',
        )
    )
    plain = _col(_type(_sensor("s", "temperature")), "s", 10_000)
    col = _col(t, "s", 10_000)
    values = np.array(col.values())
    assert np.all(values * 4 == np.rint(values * 4))
    far = np.abs(values - plain.x[:, 0]) > 2.5
    assert set(np.flatnonzero(far).tolist()) == set(
        np.flatnonzero(col.labels & LABEL_OUTLIER).tolist()
    )


def test_dropouts_drop_about_their_share() -> None:
    _plain, dropped = _pair('{ kind = "dropout", probability = 0.1 }', n=50_000)
    share = 1.0 - dropped.emitted.mean()
    assert 0.09 < share < 0.11


def test_stuck_episodes_hold_a_value_and_are_labelled() -> None:
    # one reading a minute, episodes of an hour, 20 % of them stuck
    plain, stuck = _pair('{ kind = "stuck", probability = 0.2, duration_s = 3600 }', n=60 * 500)
    labels = (stuck.labels & LABEL_STUCK).astype(bool).reshape(-1, 60)
    per_episode = labels.all(axis=1)
    assert np.array_equal(per_episode, labels.any(axis=1))  # whole episodes
    assert 0.14 < per_episode.mean() < 0.26
    x = stuck.x[:, 0].reshape(-1, 60)
    p = plain.x[:, 0].reshape(-1, 60)
    for e in np.flatnonzero(per_episode):
        assert np.all(x[e] == p[e, 0])  # held at the episode's first value
    for e in np.flatnonzero(~per_episode):
        assert np.array_equal(x[e], p[e])


def test_stuck_at_a_fixed_value() -> None:
    _plain, stuck = _pair(
        '{ kind = "stuck", probability = 0.5, duration_s = 600, value = -40.0 }', n=5_000
    )
    held = (stuck.labels & LABEL_STUCK).astype(bool)
    assert 0.3 < held.mean() < 0.7
    assert np.all(stuck.x[held, 0] == -40.0)
    assert np.all(stuck.x[~held, 0] != -40.0)


def test_quantise_with_an_integer_step_gives_integers() -> None:
    t = _type(_sensor("p", "pressure", filters='{ kind = "quantise", step = 5 }'))
    values = _col(t, "p", 2_000).values()
    assert {type(v) for v in values} == {int}
    assert all(v % 5 == 0 for v in values)  # type: ignore[operator]


def test_filters_on_some_components_only() -> None:
    t = _type(
        _sensor("g", "gps", filters='{ kind = "noise", sigma = 1.0, components = ["speed"] }')
    )
    plain = _col(_type(_sensor("g", "gps")), "g", 1_000)
    noisy = _col(t, "g", 1_000)
    same = noisy.x == plain.x
    assert same[:, [0, 1, 3]].all()
    assert not same[:, 2].any()


# --- clocks -------------------------------------------------------------------------------


def test_device_clocks_drift_jitter_and_stay_increasing() -> None:
    clock = "clock = { offset_s = 5.0, drift_ppm = 100, jitter_ms = 100 }"
    t = _type(_sensor("s", "temperature"), count=20, interval_s=1.0, extra=clock)
    n = 20_000
    blk = t.block(0, n)
    nominal = blk.nominal_us.astype(np.float64)
    slopes = []
    for ts in blk.ts_us:
        assert np.all(np.diff(ts) > 0)
        err = ts - nominal
        assert np.abs(err).max() <= 5e6 + 100e-6 * n * 1e6 + 3 * 100e3
        slope, intercept = np.polyfit(nominal - nominal[0], err, 1)
        assert abs(slope) <= 100e-6 + 5e-6
        assert abs(intercept) <= 5e6 + 1e4
        resid = err - (slope * (nominal - nominal[0]) + intercept)
        assert 80e3 < resid.std() < 120e3
        slopes.append(slope)
    assert len({round(s * 1e9) for s in slopes}) == 20  # each device its own drift


# --- joins --------------------------------------------------------------------------------


def test_joins_build_documents_vectors_and_derived_values() -> None:
    sensors = (
        _sensor("t", "temperature")
        + _sensor("h", "humidity")
        + _sensor("p", "pressure")
        + _sensor("a", "accel", filters='{ kind = "dropout", probability = 0.3 }')
        + '[[device_types.sensors]]\nkey = "doc"\njoin = "document"\ninputs = ["t", "a"]\n'
        + '[[device_types.sensors]]\nkey = "vec"\njoin = "vector"\ninputs = ["t", "h", "p"]\n'
        + '[[device_types.sensors]]\nkey = "mag"\njoin = "magnitude"\ninputs = ["a"]\n'
        + '[[device_types.sensors]]\nkey = "dew"\njoin = "dewpoint"\ninputs = ["t", "h"]\n'
        + '[[device_types.sensors]]\nkey = "avg"\njoin = "mean"\ninputs = ["t", "p"]\n'
    )
    t = _type(sensors)
    cols = t.device_columns(0, 0, 500)
    v = {k: c.values() for k, c in cols.items()}
    for i in range(500):
        assert v["doc"][i] == {"t": v["t"][i], "a": v["a"][i]}
        assert v["vec"][i] == [v["t"][i], v["h"][i], v["p"][i]]
        a = v["a"][i]
        assert isinstance(a, dict)
        assert abs(v["mag"][i] - math.sqrt(sum(c * c for c in a.values()))) < 2e-3  # type: ignore[operator]
        assert abs(v["avg"][i] - (v["t"][i] + v["p"][i]) / 2) < 6e-3  # type: ignore[operator]
        assert v["dew"][i] <= v["t"][i]  # type: ignore[operator]
    # a join is emitted where all its inputs are
    assert np.array_equal(cols["doc"].emitted, cols["a"].emitted)
    assert np.array_equal(cols["mag"].emitted, cols["a"].emitted)
    assert cols["vec"].emitted.all()
    assert 0.2 < 1 - cols["doc"].emitted.mean() < 0.4


# --- random access and seeding ------------------------------------------------------------

_EVERYTHING = (
    _sensor(
        "t",
        "temperature",
        filters='{ kind = "noise", sigma = 0.1 }, '
        '{ kind = "outliers", probability = 0.05, magnitude = 3.0 }, '
        '{ kind = "stuck", probability = 0.3, duration_s = 700 }, '
        '{ kind = "quantise", step = 0.1 }',
    )
    + _sensor("h", "humidity")
    + _sensor("g", "gps", filters='{ kind = "dropout", probability = 0.2 }')
    + _sensor("a", "accel")
    + _sensor("y", "gyro")
    + _sensor("b", "battery", filters='{ kind = "stuck", probability = 0.5, duration_s = 30 }')
    + _sensor("sw", "switch")
    + _sensor("e", "counter")
    + '[[device_types.sensors]]\nkey = "dew"\njoin = "dewpoint"\ninputs = ["t", "h"]\n'
)


def _everything(count: int = 2) -> DeviceType:
    return _type(_EVERYTHING, count=count, interval_s=7.0, extra="clock = { jitter_ms = 100 }")


@pytest.mark.parametrize("start", [0, 1, 99, 100, 1023, 1024, 1500, 5_000])
def test_pieces_equal_the_whole(start: int) -> None:
    # borders: noise chunks (1,024 instants), stuck episodes (100 and 4 instants), walks (1 h)
    t = _everything()
    whole = t.device_columns(1, 0, 6_200)
    for n in (1, 3, 700):
        piece = t.device_columns(1, start, n)
        for key, col in piece.items():
            ref = whole[key]
            sl = slice(start, start + n)
            assert col.values() == ref.values()[sl], (key, start, n)
            assert np.array_equal(col.emitted, ref.emitted[sl]), key
            assert np.array_equal(col.labels, ref.labels[sl]), key
    stamps = t.block(0, 6_200).ts_us[1]
    assert np.array_equal(t.block(start, 50).ts_us[1], stamps[start : start + 50])


def test_each_device_its_own_streams() -> None:
    t = _everything(count=3)
    cols = [t.device_columns(d, 0, 2_000) for d in range(3)]
    for key in cols[0]:
        streams = {repr(c[key].values()) for c in cols}
        assert len(streams) == 3, key
