"""Deterministic, random-access sensor signals, vectorised with numpy.

A *series* is named by a path of non-negative integers, by convention ``(fleet seed, device
index, sensor index)``: the last element names the sensor within its device, the others name the
device. The value of a series at instant ``i`` (timestamp ``ts_us(i)``) is a pure function of
``(kind, path, i, ts_us(i))``. It never depends on how many instants, devices or sensors were
generated before, in this process or any other, so a fleet can run forever and whatever it sent
can be regenerated from its seed instead of being stored.

Where the randomness comes from (all through ``numpy.random.SeedSequence``, PCG64):

- **static parameters** (mean, amplitude, periods, dwell times...): 16 uniforms per series drawn
  from ``(*path, kind, STATIC)``, and 16 per device from ``(*path[:-1], DEVICE, STATIC)`` (the
  device's solar-time offset, shared by its sensors so that temperature and humidity of one
  device move together);
- **per-instant noise**: instant indices are cut in chunks of ``CHUNK`` (1,024); chunk ``c``
  draws from ``(*path, kind, NOISE, c)``, interleaved instant by instant, so instant ``i`` needs
  only the draws of its own chunk up to ``i`` (cheap random access, no state carried over).
  1,024 rather than a larger chunk keeps a one-instant call under ~100 us per series, which
  matters when a paced fleet of 20,000 series generates instant by instant;
- **slow processes in time**: wall time (seconds since the Unix epoch) is cut in epochs of a
  fixed length per process; epoch ``e`` draws from ``(*path, kind, purpose, e)``:

  * random walks are a *Brownian bridge* on a sub-grid of the epoch, pinned to 0 at both ends,
    added to a smooth seeded path (a sum of sinusoids with random periods of days and random
    phases). The walk therefore starts every epoch on the smooth path and is continuous across
    epoch borders, while looking like a random walk at any scale below the epoch;
  * the energy counter integrates a smooth power profile in closed form at the epoch borders and
    spreads each epoch's energy along a *gamma bridge* (non-decreasing from 0 to 1): monotonic
    everywhere, continuous at the borders, bursty inside;
  * the on/off switch draws its state at each epoch border from the stationary distribution and
    runs a two-state Markov chain (shifted exponential dwell times) inside the epoch, conditioned
    by rejection on ending in the next border's state: no jump at borders.

Quantisation is real: float values are ``m / 10**k`` for an integer ``m`` (so ``round(v, k) ==
v`` and ``repr``/JSON shows at most ``k`` decimals), integer kinds are ``int``, the switch is
``bool``. Changing any formula or constant here changes every fleet's data; the tests pin a
digest of a reference fleet so that such a change is deliberate.
"""

from __future__ import annotations

import functools
import itertools
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from contract.model import Value

__all__ = [
    "CHUNK",
    "KINDS",
    "KindInfo",
    "generate",
    "instant_ts",
    "kind_info",
]

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]

CHUNK: Final = 1024
"""Instants per noise chunk: the unit of random access for per-instant noise."""

_DAY: Final = 86_400.0
_HOUR: Final = 3_600.0
_TWO_PI: Final = 2.0 * math.pi
_REF_S: Final = 1_577_836_800.0
"""2020-01-01T00:00:00Z: the energy counter integrates from here (keeps numbers small)."""

# Purposes: the third-to-last SeedSequence word, so that streams never overlap.
_STATIC: Final = 1
_NOISE: Final = 2
_WALK: Final = 3
_ENERGY: Final = 4
_SWITCH_STATE: Final = 5
_SWITCH_CHAIN: Final = 6
_DEVICE: Final = 0xDE71CE

_N_UNIFORMS: Final = 16
_SWITCH_MIN_DWELL_S: Final = 5.0
_SWITCH_EPOCH_S: Final = 6 * _HOUR
_SWITCH_MAX_TRIES: Final = 500


@dataclass(frozen=True)
class KindInfo:
    """What a kind of sensor produces."""

    kind: str
    unit: str
    type: str
    """``"float"``, ``"int"`` or ``"bool"``: the Python type of every value."""
    decimals: int | None
    """Floats: every value ``v`` satisfies ``round(v, decimals) == v``."""
    description: str


def _code(kind: str) -> int:
    return zlib.crc32(kind.encode())


def _rng(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(words))))


@functools.lru_cache(maxsize=1 << 17)
def _uniforms(path: tuple[int, ...], code: int) -> tuple[float, ...]:
    """The static uniforms of a series (or, with ``code=_DEVICE``, of a device)."""
    return tuple(_rng(*path, code, _STATIC).random(_N_UNIFORMS).tolist())


def instant_ts(start_us: int, rate_hz: float, instants: _I64) -> _I64:
    """``start_us + round(i * 1e6 / rate_hz)`` for each instant, as ``Fleet.ts`` computes it."""
    offsets = np.rint(instants.astype(np.float64) * 1e6 / rate_hz).astype(np.int64)
    return np.int64(start_us) + offsets


class _Series:
    """One call's view of one series: its instants, their times, and its random sources."""

    def __init__(self, kind: str, path: tuple[int, ...], start: int, n: int, ts_us: _I64) -> None:
        self.kind = kind
        self.code = _code(kind)
        self.path = path
        self.start = start
        self.n = n
        self.t: _F64 = ts_us.astype(np.float64) / 1e6
        self.u = _uniforms(path, self.code)
        dev = _uniforms(path[:-1], _DEVICE)
        self.solar_offset_h = -1.0 + 4.0 * dev[0]

    def noise(self, k: int) -> _F64:
        """Standard normal noise, shape ``(n, k)``, row ``j`` belonging to instant ``start + j``."""
        out = np.empty((self.n, k), dtype=np.float64)
        i, end, pos = self.start, self.start + self.n, 0
        while i < end:
            c = i // CHUNK
            lo = i - c * CHUNK
            hi = min(end - c * CHUNK, CHUNK)
            draws = _rng(*self.path, self.code, _NOISE, c).standard_normal((hi, k))
            out[pos : pos + hi - lo] = draws[lo:hi]
            pos += hi - lo
            i = (c + 1) * CHUNK
        return out

    def local_hour(self) -> _F64:
        """Local solar hour of day in [0, 24) (the device's offset from UTC)."""
        return np.mod(self.t / _HOUR + self.solar_offset_h, 24.0)

    def sinusoids(
        self, first: int, periods_days: tuple[float, float], amps: tuple[float, float]
    ) -> _F64:
        """A smooth seeded path: three sinusoids with random periods, amplitudes and phases."""
        out = np.zeros(self.n, dtype=np.float64)
        for j in range(3):
            u_p, u_a, u_ph = self.u[first + j], self.u[first + 3 + j], self.u[first + 6 + j]
            period = (periods_days[0] + (periods_days[1] - periods_days[0]) * u_p) * _DAY
            amp = amps[0] + (amps[1] - amps[0]) * u_a
            out += amp * np.sin(_TWO_PI * np.mod(self.t / period + u_ph, 1.0))
        return out

    def epoch_slices(self, epoch_s: float) -> list[tuple[int, int, int]]:
        """``(epoch, lo, hi)``: the instants ``[lo, hi)`` of this call that fall in ``epoch``."""
        epochs = np.floor(self.t / epoch_s).astype(np.int64)
        cuts = np.flatnonzero(np.diff(epochs)) + 1
        bounds = [0, *cuts.tolist(), self.n]
        return [(int(epochs[lo]), lo, hi) for lo, hi in itertools.pairwise(bounds)]

    def walk(self, purpose: int, epoch_s: float, steps: int) -> _F64:
        """A Brownian bridge per epoch (0 at both ends, unit variance of the free walk's end)."""
        out = np.empty(self.n, dtype=np.float64)
        grid = np.arange(steps + 1, dtype=np.float64)
        for e, lo, hi in self.epoch_slices(epoch_s):
            steps_n = _rng(*self.path, self.code, purpose, e).standard_normal(steps)
            w = np.concatenate(([0.0], np.cumsum(steps_n))) / math.sqrt(steps)
            bridge = w - grid / steps * w[-1]
            x = (self.t[lo:hi] - e * epoch_s) / epoch_s * steps
            out[lo:hi] = np.interp(x, grid, bridge)
        return out

    def gamma_bridge(self, purpose: int, epoch_s: float, steps: int, shape: float) -> _F64:
        """Per epoch: the fraction of the epoch's increments done by each instant, 0 -> 1."""
        out = np.empty(self.n, dtype=np.float64)
        grid = np.arange(steps + 1, dtype=np.float64)
        for e, lo, hi in self.epoch_slices(epoch_s):
            g = _rng(*self.path, self.code, purpose, e).gamma(shape, size=steps)
            cum = np.concatenate(([0.0], np.cumsum(g)))
            frac = cum / cum[-1]
            x = (self.t[lo:hi] - e * epoch_s) / epoch_s * steps
            out[lo:hi] = np.interp(x, grid, frac)
        return out


# --- the kinds ----------------------------------------------------------------------------


def _temperature(s: _Series) -> _F64:
    u = s.u
    mean = 12.0 + 12.0 * u[0]
    amp = 2.0 + 4.0 * u[1]
    sigma = 0.02 + 0.06 * u[2]
    daily = amp * np.cos(_TWO_PI * (s.local_hour() - 15.0) / 24.0)  # warmest at 15:00
    drift = s.sinusoids(3, (2.0, 12.0), (0.3, 1.0))
    walk = 0.4 * s.walk(_WALK, _HOUR, 60)
    return mean + daily + drift + walk + sigma * s.noise(1)[:, 0]


def _humidity(s: _Series) -> _F64:
    u = s.u
    mean = 35.0 + 30.0 * u[0]
    amp = 6.0 + 10.0 * u[1]
    sigma = 0.1 + 0.2 * u[2]
    daily = -amp * np.cos(_TWO_PI * (s.local_hour() - 15.0) / 24.0)  # driest when warmest
    drift = s.sinusoids(3, (2.0, 12.0), (0.3, 1.0))
    walk = 2.0 * s.walk(_WALK, _HOUR, 60)
    return np.clip(mean + daily + drift + walk + sigma * s.noise(1)[:, 0], 0.0, 100.0)


def _pressure(s: _Series) -> _F64:
    weather = s.sinusoids(0, (1.5, 7.0), (1.5, 5.0))
    walk = 1.5 * s.walk(_WALK, 3 * _HOUR, 180)
    return 1013.0 + weather + walk + 0.05 * s.noise(1)[:, 0]


def _co2(s: _Series) -> _F64:
    u = s.u
    base = 410.0 + 30.0 * u[0]
    peak = 150.0 + 650.0 * u[1]
    sigma = 3.0 + 5.0 * u[2]
    h = s.local_hour()
    occupied = (h >= 8.0) & (h < 18.0)
    occupancy = np.where(occupied, np.sin(math.pi * (h - 8.0) / 10.0) ** 2, 0.0)
    walk = 40.0 * s.walk(_WALK, _HOUR, 60)
    return np.maximum(base + peak * occupancy + walk + sigma * s.noise(1)[:, 0], 380.0)


def _lux(s: _Series) -> _F64:
    u = s.u
    outdoor = u[0] < 0.3
    peak = 10_000.0 + 50_000.0 * u[1] if outdoor else 200.0 + 800.0 * u[1]
    h = s.local_hour()
    sun = np.where((h >= 6.0) & (h < 18.0), np.sin(math.pi * (h - 6.0) / 12.0), 0.0)
    cloud = np.clip(0.75 + 0.35 * s.walk(_WALK, _HOUR, 60), 0.2, 1.0)
    x = peak * np.maximum(sun, 0.0) ** 1.5 * cloud * (1.0 + 0.02 * s.noise(1)[:, 0])
    return np.maximum(x, 0.0)


def _voltage(s: _Series) -> _F64:
    u = s.u
    life_days = 20.0 + 70.0 * u[0]
    full = 3.25 + 0.1 * u[2]
    age = np.mod(s.t / _DAY / life_days + u[1], 1.0)  # 0 = new battery, 1 = replaced next
    return full - 0.15 * age - 0.3 * age**8 + 0.002 * s.noise(1)[:, 0]


def _counter(s: _Series) -> _F64:
    u = s.u
    base_w = 50.0 + 350.0 * u[0]
    day_w = 100.0 + 1900.0 * u[1]
    offset = math.floor(1_000_000.0 * u[2])
    peak_s = (19.0 - s.solar_offset_h) * _HOUR  # evening peak, local time
    omega = _TWO_PI / _DAY

    def energy_wh(t: _F64) -> _F64:
        # closed-form integral of base + day * (1 + cos(omega (t - peak))) / 2 from _REF_S
        x = t - _REF_S
        return (base_w * x + day_w / 2.0 * (x + np.sin(omega * (t - peak_s)) / omega)) / _HOUR

    epoch_s = _HOUR
    e0 = np.floor(s.t / epoch_s) * epoch_s
    lo, hi = energy_wh(e0), energy_wh(e0 + epoch_s)
    frac = s.gamma_bridge(_ENERGY, epoch_s, 360, 0.3)
    return offset + np.floor(lo + (hi - lo) * frac)


@functools.lru_cache(maxsize=1 << 14)
def _switch_epoch(path: tuple[int, ...], code: int, e: int) -> tuple[bool, tuple[float, ...]]:
    """The switch in epoch ``e``: its state at the epoch's start and its transition offsets (s)."""
    u = _uniforms(path, code)
    mean_on = 60.0 + 840.0 * u[0]
    mean_off = 120.0 + 1680.0 * u[1]
    p_on = mean_on / (mean_on + mean_off)

    def state(epoch: int) -> bool:
        return bool(_rng(*path, code, _SWITCH_STATE, epoch).random() < p_on)

    first, last = state(e), state(e + 1)
    rng = _rng(*path, code, _SWITCH_CHAIN, e)
    scale_first = (mean_on if first else mean_off) - _SWITCH_MIN_DWELL_S
    scale_other = (mean_off if first else mean_on) - _SWITCH_MIN_DWELL_S
    m = int(2 * _SWITCH_EPOCH_S / (mean_on + mean_off)) * 2 + 32
    scales = np.where(np.arange(m) % 2 == 0, scale_first, scale_other)
    times: _F64 = np.empty(0)
    for _try in range(_SWITCH_MAX_TRIES):
        ends = np.cumsum(_SWITCH_MIN_DWELL_S + rng.exponential(1.0, m) * scales)
        while ends[-1] < _SWITCH_EPOCH_S:  # rare: the batch of dwells was too short
            more = np.cumsum(_SWITCH_MIN_DWELL_S + rng.exponential(1.0, m) * scales)
            ends = np.concatenate((ends, ends[-1] + more))
        times = ends[ends < _SWITCH_EPOCH_S]
        if (first ^ (len(times) % 2 == 1)) == last:
            break
    else:  # pragma: no cover - never seen; keeps the chain continuous regardless
        times = times[:-1] if len(times) else np.array([_SWITCH_EPOCH_S - _SWITCH_MIN_DWELL_S])
    return first, tuple(times.tolist())


def _switch(s: _Series) -> npt.NDArray[np.bool_]:
    out = np.empty(s.n, dtype=np.bool_)
    for e, lo, hi in s.epoch_slices(_SWITCH_EPOCH_S):
        first, times = _switch_epoch(s.path, s.code, e)
        flips = np.searchsorted(np.asarray(times), s.t[lo:hi] - e * _SWITCH_EPOCH_S, side="right")
        out[lo:hi] = (flips % 2 == 1) ^ first
    return out


_Fn = Callable[[_Series], npt.NDArray[np.float64] | npt.NDArray[np.bool_]]

_KINDS: Final[dict[str, tuple[KindInfo, _Fn]]] = {
    info.kind: (info, fn)
    for info, fn in (
        (
            KindInfo("temperature", "degC", "float", 2, "daily cycle + slow drift + walk + noise"),
            _temperature,
        ),
        (
            KindInfo("humidity", "%RH", "float", 1, "anti-correlated with the daily cycle"),
            _humidity,
        ),
        (KindInfo("pressure", "hPa", "float", 1, "slow random walk around 1013 hPa"), _pressure),
        (KindInfo("co2", "ppm", "int", None, "outdoor baseline + office-hours occupancy"), _co2),
        (KindInfo("lux", "lx", "float", 0, "daylight under drifting clouds, dark at night"), _lux),
        (KindInfo("voltage", "V", "float", 3, "battery slowly discharging, replaced"), _voltage),
        (KindInfo("switch", "", "bool", None, "on/off Markov chain with dwell times"), _switch),
        (KindInfo("counter", "Wh", "int", None, "monotonic energy meter"), _counter),
    )
}

KINDS: Final[tuple[str, ...]] = tuple(_KINDS)
"""Every kind ``generate`` knows, in a fixed order."""


def kind_info(kind: str) -> KindInfo:
    """The unit, type and quantisation of ``kind`` (``KeyError`` for an unknown kind)."""
    return _KINDS[kind][0]


def generate(
    kind: str,
    path: Sequence[int],
    start: int,
    n: int,
    *,
    start_us: int,
    rate_hz: float,
) -> list[Value]:
    """The values of series ``path`` of ``kind`` at instants ``[start, start + n)``.

    Instant ``i`` has timestamp ``start_us + round(i * 1e6 / rate_hz)`` microseconds.
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown sensor kind {kind!r} (known: {', '.join(KINDS)})")
    if start < 0 or n < 0:
        raise ValueError("instants must be non-negative")
    if n == 0:
        return []
    info, fn = _KINDS[kind]
    ts_us = instant_ts(start_us, rate_hz, np.arange(start, start + n, dtype=np.int64))
    series = _Series(kind, tuple(int(p) for p in path), start, n, ts_us)
    x = fn(series)
    if info.type == "bool":
        return x.astype(np.bool_).tolist()  # type: ignore[no-any-return]
    m = np.rint(x * 10.0**info.decimals if info.decimals else x) + 0.0  # + 0.0: never -0.0
    if info.type == "int":
        return m.astype(np.int64).tolist()  # type: ignore[no-any-return]
    return (m / 10.0 ** (info.decimals or 0)).tolist()  # type: ignore[no-any-return]
