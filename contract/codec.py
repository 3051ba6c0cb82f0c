"""The batch codec: many readings -> one compact, versioned byte string, and back.

An edge seals the readings of one flush into one batch; the hub decodes every batch it ever
receives, so :func:`decode_batch` keeps a decoder for every version ever shipped (``_DECODERS``)
and :func:`encode_batch` writes the newest, :data:`CODEC_VERSION`.

Format, version 1
=================

All integers are little-endian. Integer arithmetic below is modulo 2**64 (two's complement int64,
wrapping), so every int64 input round-trips, whatever its range.

Envelope::

    batch  = "CRN" (0x43 0x52 0x4E)  version:u8 (= 0x01)  frame
    frame  = exactly one zstd frame (RFC 8878) and nothing after it. The frame header must carry
             the content size (<= 64 MiB, MAX_BODY_BYTES) and the frame must carry a content
             checksum; decoders reject other frames. Its content is ``body``.

Primitives::

    varint     unsigned LEB128, at most 10 bytes, value < 2**64
    zigzag(x)  (x << 1) ^ (x >> 63) for int64 x, as uint64;  unzigzag(u) = (u >> 1) ^ -(u & 1)
    ucol[n]    a column of n unsigned integers: width w:u8 (0..8), then w byte planes of n bytes
               each: plane j holds byte j (j = 0 least significant) of every value, in order.
               Values must be < 2**(8*w); w = 0 means n zeros and takes no further bytes.
               (Encoders use the smallest w; decoders accept any w <= 8.)
    strings[n] ucol[n] of UTF-8 byte lengths, then the n UTF-8 strings concatenated.

Body (R readings in S series, series in order of first appearance in the input, readings of a
series in input order; "series-major" means all readings of series 0, then of series 1, ...)::

    varint R                 readings, <= 1,000,000 (MAX_READINGS)
    varint S                 series, 0 if R = 0 else 1..R
    varint D                 distinct device names, 0 if S = 0 else 1..S
    varint N                 distinct sensor names, 0 if S = 0 else 1..S
    strings[D]               device names, all different (encoders: order of first use)
    strings[N]               sensor names, all different (encoders: order of first use)
    -- series directory: one entry per series, column by column --
    ucol[S] device_step      zigzag(dev[s] - dev[s-1]), dev[-1] = 0; 0 <= dev[s] < D
    ucol[S] sensor           index into the sensor names, < N; no two series have the same
                             (device, sensor)
    ucol[S] count            readings of the series, >= 1, sum = R
    ucol[S] kind             the value tag of every reading of the series (0..6, see below),
                             or 255 (MIXED: each reading has its own tag in ``tag``)
    ucol[S] ts_order         0, 1 or 2 (see timestamps)
    ucol[S] ts_anchor_step   zigzag(a[s] - a[s-1]), a[-1] = 0
    ucol[S] ts_step          zigzag(p[s])
    ucol[S] scale            k[s] in 0..9 (see values)
    ucol[S] value_mode       0 = offset, 1 = delta (see values)
    ucol[S] value_base       zigzag(b[s])
    -- reading columns, series-major --
    ucol[R] ts_residual      zigzag(r[i])
    ucol[R] flags            each <= 255
    ucol[M] tag              M = sum of count[s] over MIXED series: the tags of their readings
    ucol[V] num_residual     zigzag; V = readings tagged NUM_FLOAT or NUM_INT
    ucol[F] f64_bits         IEEE 754 binary64 bit patterns; F = readings tagged F64
    ucol[B] blob_length      B = readings tagged STR or JSON
    bytes                    the B blobs concatenated (sum of blob_length bytes)
    (end of body: trailing bytes are an error)

The entries of ``tag``, ``num_residual``, ``f64_bits`` and ``blob_length`` belong, in order, to
the readings that have them, taken in series-major order. A reading's tag is its series' kind,
or for a MIXED series its entry in ``tag``.

Timestamps (int64 microseconds since the epoch). For reading j (0-based) of series s with the
series' residuals r[0..n-1] (its slice of ts_residual)::

    order 0: e = r
    order 1: e[j] = r[0] + ... + r[j]                       (prefix sum)
    order 2: e = prefix sum of (prefix sum of r)
    ts[j] = a[s] + j * p[s] + e[j]

Any a, p and r that give back the timestamps are valid. This encoder fits p as the series'
least-squares slope and picks per series the order with the smallest residuals (mean zigzag):
order 0 with a = the fitted intercept, orders 1 and 2 with a = the first timestamp. Regular
1 Hz readings give all-zero residuals (columns of width 0, no bytes at all); jittered ones
usually order 0 (the residual is the jitter itself); clocks that drift or jump order 2
(delta-of-delta).

Value tags::

    0 NUM_FLOAT  float  m / 10**k[s] (binary64 division of float64(m) by the exact 10**k)
    1 NUM_INT    int    m / 10**k[s] (exact: m must be a multiple of 10**k[s])
    2 F64        float  from the next f64_bits entry (any float: NaN, inf, -0.0, subnormals)
    3 FALSE      bool   False, no payload
    4 TRUE       bool   True, no payload
    5 STR        str    the next blob, UTF-8
    6 JSON       dict or list (a JSON document), or an int the numeric path cannot carry (a
                 big int): the blob as JSON text in UTF-8 (no NaN or Infinity)

Per series, the NUM_FLOAT/NUM_INT readings (in order) take the next entries u[0..v-1] of
num_residual; with x[j] = unzigzag(u[j])::

    value_mode 0 (offset): m[j] = b[s] + x[j]
    value_mode 1 (delta):  m[j] = b[s] + x[0] + ... + x[j]

This encoder picks per series the smallest scale k at which the most of its numbers are exact
(for a float v: m = round(v * 10**k), |m| < 2**53 and m / 10**k == v bit for bit, so -0.0, NaN
and inf never are; for an int: v * 10**k within int64) and sends the others as F64 (floats) or
JSON (ints); then per series value_mode 0 (b = mid-range of m) or 1 (b = m[0]), whichever
gives the smaller residuals. Each byte plane of a large column (>= 512 values) goes into a zstd
block of its own, so that each gets its own entropy tables; decoders need not care.

Limits: a decoder raises :class:`~contract.errors.CodecError` for anything not valid under this
description, never another exception, and checks every count against MAX_READINGS and the bytes
that remain before it allocates. Readers of other languages: ``tests/test_codec.py`` holds a
known-answer body (``KNOWN_BODY``) with the readings it encodes.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import zstandard

from contract.errors import CodecError
from contract.model import Reading, Value

__all__ = [
    "CODEC_VERSION",
    "MAGIC",
    "MAX_BODY_BYTES",
    "MAX_READINGS",
    "ZSTD_LEVEL",
    "Batch",
    "SeriesColumn",
    "decode_batch",
    "encode_batch",
]

_log = logging.getLogger(__name__)

CODEC_VERSION: Final = 1
"""The version :func:`encode_batch` writes (the byte after :data:`MAGIC`)."""
MAGIC: Final = b"CRN"
"""The first bytes of every batch, of every version."""
MAX_READINGS: Final = 1_000_000
"""Most readings in one batch (both directions refuse more)."""
MAX_BODY_BYTES: Final = 64 * 1024 * 1024
"""Largest decompressed body of one batch (both directions refuse more)."""

ZSTD_LEVEL: Final = 3
"""zstd level of new batches (measured: levels 1-19 differ by < 4% in size here)."""
_MIN_BLOCK: Final = 512

_U8 = npt.NDArray[np.uint8]
_U64 = npt.NDArray[np.uint64]
_I64 = npt.NDArray[np.int64]
_F64 = npt.NDArray[np.float64]
_Bool = npt.NDArray[np.bool_]

# Value tags (see the module docstring).
_NUM_FLOAT: Final = 0
_NUM_INT: Final = 1
_F64_TAG: Final = 2
_FALSE: Final = 3
_TRUE: Final = 4
_STR: Final = 5
_JSON: Final = 6
_MIXED: Final = 255
_N_TAGS: Final = 7

_MAX_SCALE: Final = 9
_POW10_F: Final = np.array([10.0**k for k in range(_MAX_SCALE + 1)], dtype=np.float64)
_POW10_I: Final = np.array([10**k for k in range(_MAX_SCALE + 1)], dtype=np.int64)
_INT_LIMIT: Final = np.array([(2**63 - 1) // 10**k for k in range(_MAX_SCALE + 1)], dtype=np.int64)
_FLOAT_LIMIT: Final = 2.0**53


@dataclass(frozen=True, slots=True)
class SeriesColumn:
    """All readings of one (device, sensor) in a batch, in the order they were encoded."""

    device: str
    sensor: str
    ts: npt.NDArray[np.int64]
    values: list[Value]
    flags: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, slots=True)
class Batch:
    """A decoded batch: one column set per series."""

    version: int
    series: tuple[SeriesColumn, ...]

    @property
    def count(self) -> int:
        """Number of readings."""
        return sum(len(s) for s in self.series)

    @property
    def t_min(self) -> int | None:
        """The earliest timestamp in the batch (``None`` if it is empty)."""
        return min((int(s.ts.min()) for s in self.series), default=None)

    @property
    def t_max(self) -> int | None:
        """The latest timestamp in the batch (``None`` if it is empty)."""
        return max((int(s.ts.max()) for s in self.series), default=None)

    def readings(self) -> Iterator[Reading]:
        """Every reading, series by series."""
        for s in self.series:
            for t, v, f in zip(s.ts.tolist(), s.values, s.flags.tolist(), strict=True):
                yield Reading(s.device, s.sensor, t, v, f)


# --------------------------------------------------------------------------- zstd contexts

_tls = threading.local()


def _cctx() -> zstandard.ZstdCompressor:
    cctx: zstandard.ZstdCompressor | None = getattr(_tls, "cctx", None)
    if cctx is None:
        cctx = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, write_checksum=True, write_content_size=True
        )
        _tls.cctx = cctx
    return cctx


def _dctx() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_tls, "dctx", None)
    if dctx is None:
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_BODY_BYTES)
        _tls.dctx = dctx
    return dctx


# --------------------------------------------------------------------------- vector helpers


def _zigzag(x: _I64) -> _U64:
    return ((x << 1) ^ (x >> 63)).view(np.uint64)


def _unzigzag(u: _U64) -> _I64:
    return ((u >> np.uint64(1)) ^ (np.uint64(0) - (u & np.uint64(1)))).view(np.int64)


def _seg_cumsum(x: _I64, starts: _I64, counts: _I64) -> _I64:
    """Prefix sums restarting at every segment start (segments, some empty, cover ``x``)."""
    c = np.cumsum(x)
    before = np.concatenate((np.zeros(1, dtype=np.int64), c))[starts]
    return c - np.repeat(before, counts)


def _seg_diff(x: _I64, first: _Bool) -> _I64:
    """``x[i] - x[i-1]``, and ``x[i]`` itself where a segment starts."""
    d = np.empty_like(x)
    if len(x):
        d[0] = x[0]
        np.subtract(x[1:], x[:-1], out=d[1:])
        d[first] = x[first]
    return d


def _seg_sums(x: npt.NDArray[Any], starts: _I64, ends: _I64) -> npt.NDArray[Any]:
    """Sum of ``x[starts[s]:ends[s]]`` per segment (empty segments allowed), along the last axis."""
    c = np.zeros((*x.shape[:-1], x.shape[-1] + 1), dtype=x.dtype)
    np.cumsum(x, axis=-1, out=c[..., 1:])
    return c[..., ends] - c[..., starts]


def _round_or_zero(x: _F64) -> _I64:
    """``x`` rounded to int64 where it is finite and well inside int64, else 0."""
    good = np.isfinite(x) & (np.abs(x) < 2.0**62)
    return np.where(good, np.rint(np.where(good, x, 0.0)), 0.0).astype(np.int64)


def _cost(x: _I64) -> _F64:
    """Size of each zigzagged value, to compare encodings by their mean (their L1 norm).

    Entropy grows with the log of a distribution's spread, so the encoding with the smaller
    mean magnitude is the cheaper one, both for dense noise and for rare large jumps.
    """
    return _zigzag(x).astype(np.float64)


# --------------------------------------------------------------------------- byte writer


def _varint(out: bytearray | _Body, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


class _Body(bytearray):
    """The body being written, with the offsets where its byte statistics change."""

    def __init__(self) -> None:
        super().__init__()
        self.cuts: list[int] = []

    def compress(self) -> bytes:
        """One zstd frame; a new block (with its own entropy tables) at each large section.

        zstd codes all literals of a block with one Huffman table, so a byte plane of random
        jitter next to one of near-constant high bytes would spoil both: each plane of a
        large column gets its own block instead.
        """
        cobj = _cctx().compressobj(size=len(self))
        parts: list[bytes] = []
        done = 0
        view = memoryview(self)
        for cut in self.cuts:
            if cut > done:
                parts.append(cobj.compress(view[done:cut]))
                parts.append(cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
                done = cut
        parts.append(cobj.compress(view[done:]))
        parts.append(cobj.flush())
        view.release()
        return b"".join(parts)


def _ucol(out: _Body, values: npt.NDArray[Any]) -> None:
    """Append ``values`` (unsigned, any integer dtype) as a ucol."""
    u = np.ascontiguousarray(values, dtype="<u8")
    n = len(u)
    top = int(u.max()) if n else 0
    width = (top.bit_length() + 7) // 8
    out.append(width)
    if width:
        start = len(out)
        out += u.view(np.uint8).reshape(n, 8)[:, :width].T.tobytes()
        if n >= _MIN_BLOCK:
            out.cuts.extend(range(start, start + width * n + 1, n))


def _strings(out: _Body, items: Sequence[bytes]) -> None:
    _ucol(out, np.array([len(b) for b in items], dtype=np.uint64))
    out += b"".join(items)


def _utf8(text: object) -> bytes:
    if not isinstance(text, str):
        raise CodecError(f"expected a str, got {type(text).__name__}")
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise CodecError(f"string is not encodable as UTF-8: {exc}") from exc


# --------------------------------------------------------------------------- encoder

_KIND_OF_TYPE: Final[dict[type, int]] = {
    float: 0,
    int: 1,
    bool: 2,
    str: 3,
    dict: 4,
    list: 4,
}
_K_FLOAT, _K_INT, _K_BOOL, _K_STR, _K_DOC = 0, 1, 2, 3, 4


def _normalise(value: object) -> Value:
    """Plain Python value of a type outside ``_KIND_OF_TYPE`` (numpy scalars, subclasses)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    raise CodecError(f"unsupported value type {type(value).__name__}")


def _json_blob(value: Value) -> bytes:
    try:
        return json.dumps(
            value, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode()
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError) as exc:
        raise CodecError(f"value is not a JSON document: {exc}") from exc


def _int64_array(items: list[Any], what: str) -> _I64:
    """``items`` as int64, refusing anything that is not an integer in range."""
    arr = np.array(items)
    if arr.dtype != np.int64:
        raise CodecError(f"{what} must be integers in int64 range")
    return arr


@dataclass(frozen=True, slots=True)
class _Numbers:
    """The float and int values of a batch, as candidates for the decimal path."""

    is_float: _Bool
    fv: _F64
    fbits: _I64
    is_int: _Bool
    """Ints inside int64 (the others can only go as JSON)."""
    iv: _I64

    def exact(self, p: _F64 | np.float64, limit: _I64 | np.int64) -> _Bool:
        """Which numbers are exact at scale ``p`` (= 10**k): ``m / p == v`` bit for bit."""
        x = self.fv * p
        back = (np.rint(x) + 0.0) / p  # + 0.0: float64(int m) is never -0.0
        ok_f = self.is_float & (np.abs(x) < _FLOAT_LIMIT) & (back.view(np.int64) == self.fbits)
        ok_i = self.is_int & (self.iv >= -limit) & (self.iv <= limit)
        ok: _Bool = ok_f | ok_i
        return ok


class _Encoder:
    """One batch being encoded (vectorised over all readings, series-major)."""

    def __init__(self, readings: Iterable[Reading]) -> None:
        groups: dict[tuple[str, str], list[Reading]] = {}
        for r in readings:
            key = (r.device, r.sensor)
            group = groups.get(key)
            if group is None:
                groups[key] = [r]
            else:
                group.append(r)
        self.keys = list(groups)
        self.rows: list[Reading] = [r for g in groups.values() for r in g]
        self.n = len(self.rows)
        if self.n > MAX_READINGS:
            raise CodecError(f"{self.n} readings in one batch (at most {MAX_READINGS})")
        self.counts = np.array([len(g) for g in groups.values()], dtype=np.int64)
        self.starts = np.zeros(len(self.counts), dtype=np.int64)
        if len(self.counts):
            np.cumsum(self.counts[:-1], out=self.starts[1:])
        self.sid = np.repeat(np.arange(len(self.counts), dtype=np.int64), self.counts)
        self.first = np.zeros(self.n, dtype=np.bool_)
        self.first[self.starts] = True
        self.out = _Body()

    def encode(self) -> bytes:
        n_series = len(self.keys)
        devices: dict[str, int] = {}
        sensors: dict[str, int] = {}
        dev_idx = np.array([devices.setdefault(d, len(devices)) for d, _ in self.keys], np.int64)
        sen_idx = np.array([sensors.setdefault(s, len(sensors)) for _, s in self.keys], np.int64)
        out = self.out
        _varint(out, self.n)
        _varint(out, n_series)
        _varint(out, len(devices))
        _varint(out, len(sensors))
        _strings(out, [_utf8(d) for d in devices])
        _strings(out, [_utf8(s) for s in sensors])

        ts_order, ts_anchor, ts_step, ts_res = self._timestamps()
        flags = self._flags()
        tags, scale, m, f64_bits, blobs = self._values()
        kind = self._kinds(tags)
        v_mode, v_base, v_res = self._numbers(m, tags)
        mixed = np.repeat(kind == _MIXED, self.counts)

        _ucol(out, _zigzag(np.diff(dev_idx, prepend=0)))
        _ucol(out, sen_idx)
        _ucol(out, self.counts)
        _ucol(out, kind)
        _ucol(out, ts_order)
        _ucol(out, _zigzag(np.diff(ts_anchor, prepend=0)))
        _ucol(out, _zigzag(ts_step))
        _ucol(out, scale)
        _ucol(out, v_mode)
        _ucol(out, _zigzag(v_base))
        _ucol(out, _zigzag(ts_res))
        _ucol(out, flags)
        _ucol(out, tags[mixed])
        _ucol(out, _zigzag(v_res))
        _ucol(out, f64_bits)
        _strings(out, blobs)
        if len(out) > MAX_BODY_BYTES:
            raise CodecError(f"batch body of {len(out)} bytes (at most {MAX_BODY_BYTES})")
        return MAGIC + bytes([CODEC_VERSION]) + out.compress()

    # ---- timestamps

    def _timestamps(self) -> tuple[_U8, _I64, _I64, _I64]:
        """Per series order, anchor and step, and the residual per reading."""
        if not self.n:
            empty = np.zeros(0, dtype=np.int64)
            return np.zeros(0, dtype=np.uint8), empty, empty, empty
        ts = _int64_array([r.ts for r in self.rows], "timestamps")
        counts, starts = self.counts, self.starts
        ends = starts + counts
        first_ts = ts[starts]
        j = np.arange(self.n, dtype=np.int64) - np.repeat(starts, counts)
        with np.errstate(all="ignore"):
            # Step: least-squares slope of ts over j (an estimate; any step decodes exactly).
            rel = (ts - np.repeat(first_ts, counts)).astype(np.float64)
            jf = j.astype(np.float64)
            n_f = counts.astype(np.float64)
            sj, st, sjj, sjt = _seg_sums(np.stack((jf, rel, jf * jf, jf * rel)), starts, ends)
            den = n_f * sjj - sj * sj
            slope = np.where(den > 0, (n_f * sjt - sj * st) / np.where(den > 0, den, 1.0), 0.0)
            step = _round_or_zero(slope)
            e = ts - np.repeat(first_ts, counts) - j * np.repeat(step, counts)
            # Order 0 is centred on the series (anchor = intercept); orders 1, 2 start at 0.
            shift = _round_or_zero(_seg_sums(e.astype(np.float64), starts, ends) / n_f)
            e0 = e - np.repeat(shift, counts)
            r1 = _seg_diff(e, self.first)
            r2 = _seg_diff(r1, self.first)
        costs = np.stack([_cost(e0), _cost(r1), _cost(r2)])
        order = np.argmin(_seg_sums(costs, starts, ends), axis=0).astype(np.uint8)
        anchor = np.where(order == 0, first_ts + shift, first_ts)
        per_reading = np.repeat(order, counts)
        res = np.where(per_reading == 0, e0, np.where(per_reading == 1, r1, r2))
        return order, anchor, step, res

    def _flags(self) -> _U8:
        if not self.n:
            return np.zeros(0, dtype=np.uint8)
        flags = _int64_array([r.flags for r in self.rows], "flags")
        if int(flags.min()) < 0 or int(flags.max()) > 255:
            raise CodecError("flags must be in 0..255")
        return flags.astype(np.uint8)

    # ---- values

    def _values(self) -> tuple[_U8, _U8, _I64, _U64, list[bytes]]:
        """Tag per reading, scale per series, scaled ints (NUM_*), F64 bits, blobs."""
        n = self.n
        vals: list[Any] = [r.value for r in self.rows]
        types = set(map(type, vals))
        if not types <= _KIND_OF_TYPE.keys():
            vals = [v if type(v) in _KIND_OF_TYPE else _normalise(v) for v in vals]
            types = set(map(type, vals))
        if types <= {float}:
            kinds = np.zeros(n, dtype=np.uint8)
            fv = np.array(vals, dtype=np.float64)
            cand = np.arange(n, dtype=np.int64)
            c_float = np.ones(n, dtype=np.bool_)
            iv = np.zeros(n, dtype=np.int64)
            in_range = c_float
        else:
            kinds = np.array([_KIND_OF_TYPE[type(v)] for v in vals], dtype=np.uint8)
            cand = np.flatnonzero(kinds <= _K_INT)
            c_float = kinds[cand] == _K_FLOAT
            fv = np.zeros(len(cand), dtype=np.float64)
            iv = np.zeros(len(cand), dtype=np.int64)
            in_range = np.ones(len(cand), dtype=np.bool_)
            fv[c_float] = [vals[i] for i in cand[c_float].tolist()]
            ints = [vals[i] for i in cand[~c_float].tolist()]
            try:
                iv[~c_float] = ints
            except OverflowError:
                fits = [-(2**63) <= v < 2**63 for v in ints]
                iv[~c_float] = [v if f else 0 for v, f in zip(ints, fits, strict=True)]
                in_range[~c_float] = fits

        nums = _Numbers(c_float, fv, fv.view(np.int64), ~c_float & in_range, iv)
        scale, m, ok = self._decimal(self.sid[cand], nums)
        tags = np.full(n, _JSON, dtype=np.uint8)
        tags[cand[c_float & ok]] = _NUM_FLOAT
        tags[cand[~c_float & ok]] = _NUM_INT
        tags[cand[c_float & ~ok]] = _F64_TAG
        f64_bits = fv[c_float & ~ok].view(np.uint64)

        if types - {float, int}:
            is_bool = kinds == _K_BOOL
            if is_bool.any():
                pos = np.flatnonzero(is_bool)
                truth = np.array([vals[i] for i in pos.tolist()], dtype=np.bool_)
                tags[pos] = np.where(truth, _TRUE, _FALSE)
            tags[kinds == _K_STR] = _STR
        blob_pos = np.flatnonzero(tags >= _STR)
        blobs = [
            _utf8(vals[i]) if t == _STR else _json_blob(vals[i])
            for i, t in zip(blob_pos.tolist(), tags[blob_pos].tolist(), strict=True)
        ]
        return tags, scale, m[ok], f64_bits, blobs

    def _decimal(self, sid: _I64, nums: _Numbers) -> tuple[_U8, _I64, _Bool]:
        """Per series the scale k making most of its numbers exact; scaled ints; which are."""
        n_series = len(self.counts)
        c_counts = np.bincount(sid, minlength=n_series).astype(np.int64)
        c_ends = np.cumsum(c_counts)
        c_starts = c_ends - c_counts
        best_cnt = np.full(n_series, -1, dtype=np.int64)
        best_k = np.zeros(n_series, dtype=np.uint8)
        with np.errstate(all="ignore"):
            for k in range(_MAX_SCALE + 1):
                ok = nums.exact(_POW10_F[k], _INT_LIMIT[k])
                cnt = _seg_sums(ok.astype(np.int64), c_starts, c_ends)
                better = cnt > best_cnt
                best_cnt[better] = cnt[better]
                best_k[better] = k
                if (best_cnt == c_counts).all():
                    break
            k_each = best_k[sid]
            p = _POW10_F[k_each]
            ok = nums.exact(p, _INT_LIMIT[k_each])
            m = np.where(nums.is_float & ok, np.rint(nums.fv * p), 0.0).astype(np.int64)
            ints = ~nums.is_float
            m[ints] = nums.iv[ints] * _POW10_I[k_each[ints]]
        return best_k, m, ok

    def _kinds(self, tags: _U8) -> _U8:
        if not self.n:
            return np.zeros(0, dtype=np.uint8)
        lo = np.minimum.reduceat(tags, self.starts)
        hi = np.maximum.reduceat(tags, self.starts)
        return np.where(lo == hi, lo, np.uint8(_MIXED)).astype(np.uint8)

    def _numbers(self, m: _I64, tags: _U8) -> tuple[_U8, _I64, _I64]:
        """Per series value mode and base, and the residual per scaled int."""
        n_series = len(self.counts)
        v_sid = self.sid[tags <= _NUM_INT]
        v_counts = np.bincount(v_sid, minlength=n_series).astype(np.int64)
        v_ends = np.cumsum(v_counts)
        v_starts = v_ends - v_counts
        has = v_counts > 0
        base_off = np.zeros(n_series, dtype=np.int64)
        base_delta = np.zeros(n_series, dtype=np.int64)
        if len(m):
            lo = np.minimum.reduceat(m, v_starts[has])
            hi = np.maximum.reduceat(m, v_starts[has])
            base_off[has] = lo // 2 + hi // 2
            base_delta[has] = m[v_starts[has]]
        first = np.zeros(len(m), dtype=np.bool_)
        first[v_starts[has]] = True
        x0 = m - np.repeat(base_off, v_counts)
        x1 = _seg_diff(m, first)
        x1[first] = 0
        costs = np.stack([_cost(x0), _cost(x1)])
        mode = np.argmin(_seg_sums(costs, v_starts, v_ends), axis=0).astype(np.uint8)
        base = np.where(mode == 0, base_off, base_delta)
        res = np.where(np.repeat(mode, v_counts) == 0, x0, x1)
        return mode, base, res


def encode_batch(readings: Iterable[Reading]) -> bytes:
    """Encode ``readings`` as one batch of the current version (:data:`CODEC_VERSION`).

    Readings are grouped per (device, sensor) in order of first appearance; within a series
    they keep their order. Raises :class:`CodecError` for what the format cannot carry (more
    than :data:`MAX_READINGS`, a ``ts`` outside int64, ``flags`` outside 0..255, a value of
    another type, a document that is not JSON, a string that is not UTF-8 encodable).
    """
    return _Encoder(readings).encode()


# --------------------------------------------------------------------------- decoder


class _Reader:
    """Bounds-checked reads from a decompressed body."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    def _need(self, size: int, what: str) -> None:
        if size > len(self.body) - self.pos:
            raise CodecError(f"truncated body: {what} needs {size} bytes")

    def varint(self, what: str) -> int:
        value = 0
        for shift in range(0, 70, 7):
            self._need(1, what)
            byte = self.body[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                if value >= 2**64:
                    raise CodecError(f"{what}: varint out of range")
                return value
        raise CodecError(f"{what}: varint longer than 10 bytes")

    def ucol(self, n: int, what: str) -> _U64:
        self._need(1, what)
        width = self.body[self.pos]
        self.pos += 1
        if width > 8:
            raise CodecError(f"{what}: column width {width} > 8")
        if width == 0:
            return np.zeros(n, dtype=np.uint64)
        size = width * n
        self._need(size, what)
        planes = np.frombuffer(self.body, np.uint8, count=size, offset=self.pos).reshape(width, n)
        self.pos += size
        if width == 1:
            narrow: _U64 = planes[0].astype(np.uint64)
            return narrow
        wide = np.zeros((n, 8), dtype=np.uint8)
        wide[:, :width] = planes.T
        return wide.view("<u8").reshape(n).astype(np.uint64, copy=False)

    def small(self, n: int, limit: int, what: str) -> _I64:
        """A ucol whose values must all be <= ``limit``, as int64."""
        col = self.ucol(n, what)
        if n and int(col.max()) > limit:
            raise CodecError(f"{what}: value {int(col.max())} > {limit}")
        return col.astype(np.int64)

    @property
    def remaining(self) -> int:
        return len(self.body) - self.pos

    def raw(self, size: int, what: str) -> bytes:
        self._need(size, what)
        chunk = self.body[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def strings(self, n: int, what: str) -> list[str]:
        lengths = self.small(n, self.remaining, what).tolist()
        blob = self.raw(sum(lengths), what)
        out: list[str] = []
        at = 0
        for length in lengths:
            out.append(blob[at : at + length].decode())
            at += length
        return out

    def end(self) -> None:
        if self.pos != len(self.body):
            raise CodecError(f"{len(self.body) - self.pos} unexpected bytes after the body")


def _reject_constant(name: str) -> Any:
    raise CodecError(f"{name} in a JSON document")


def _json_value(text: bytes) -> Value:
    value = json.loads(text, parse_constant=_reject_constant)
    if isinstance(value, (dict, list)) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise CodecError(f"JSON blob holds a {type(value).__name__}, not a document or an int")


@dataclass(frozen=True, slots=True)
class _DirectoryV1:
    """The series directory of a version 1 body, validated."""

    n: int
    dev_names: list[str]
    sen_names: list[str]
    dev: _I64
    sen: _I64
    counts: _I64
    starts: _I64
    kind: _I64
    ts_order: _I64
    anchor: _I64
    step: _I64
    scale: _I64
    v_mode: _I64
    v_base: _I64


def _body_v1(frame: memoryview) -> bytes:
    params = zstandard.get_frame_parameters(frame)
    size = params.content_size
    if size in {zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR}:
        raise CodecError("zstd frame without a content size")
    if size > MAX_BODY_BYTES:
        raise CodecError(f"body of {size} bytes (at most {MAX_BODY_BYTES})")
    if not params.has_checksum:
        raise CodecError("zstd frame without a checksum")
    body = _dctx().decompress(frame, max_output_size=MAX_BODY_BYTES, allow_extra_data=False)
    if len(body) != size:
        raise CodecError("body size differs from the frame header")
    return body


def _directory_v1(rd: _Reader) -> _DirectoryV1:
    n = rd.varint("reading count")
    n_series = rd.varint("series count")
    n_dev = rd.varint("device count")
    n_sen = rd.varint("sensor count")
    if n > MAX_READINGS:
        raise CodecError(f"{n} readings (at most {MAX_READINGS})")
    if n_series > n or (n and not n_series):
        raise CodecError(f"{n_series} series for {n} readings")
    for count, what in ((n_dev, "devices"), (n_sen, "sensors")):
        if count > n_series or (n_series and not count):
            raise CodecError(f"{count} {what} for {n_series} series")
    dev_names = rd.strings(n_dev, "device names")
    sen_names = rd.strings(n_sen, "sensor names")
    if len(set(dev_names)) != n_dev or len(set(sen_names)) != n_sen:
        raise CodecError("repeated name in a name table")

    dev = np.cumsum(_unzigzag(rd.ucol(n_series, "device_step")))
    if n_series and (int(dev.min()) < 0 or int(dev.max()) >= n_dev):
        raise CodecError("device index out of range")
    sen = rd.small(n_series, n_sen - 1, "sensor")
    if len(set(zip(dev.tolist(), sen.tolist(), strict=True))) != n_series:
        raise CodecError("repeated series")
    counts = rd.small(n_series, MAX_READINGS, "count")
    if int(counts.sum()) != n or (n_series and int(counts.min()) < 1):
        raise CodecError("series counts do not add up to the reading count")
    kind = rd.small(n_series, _MIXED, "kind")
    if ((kind >= _N_TAGS) & (kind != _MIXED)).any():
        raise CodecError("unknown series kind")
    return _DirectoryV1(
        n=n,
        dev_names=dev_names,
        sen_names=sen_names,
        dev=dev,
        sen=sen,
        counts=counts,
        starts=np.cumsum(counts) - counts,
        kind=kind,
        ts_order=rd.small(n_series, 2, "ts_order"),
        anchor=np.cumsum(_unzigzag(rd.ucol(n_series, "ts_anchor_step"))),
        step=_unzigzag(rd.ucol(n_series, "ts_step")),
        scale=rd.small(n_series, _MAX_SCALE, "scale"),
        v_mode=rd.small(n_series, 1, "value_mode"),
        v_base=_unzigzag(rd.ucol(n_series, "value_base")),
    )


def _timestamps_v1(d: _DirectoryV1, res: _I64) -> _I64:
    counts, starts, order = d.counts, d.starts, d.ts_order
    e = res
    top = int(order.max(initial=0))
    if top:
        order_each = np.repeat(order, counts)
        e1 = _seg_cumsum(res, starts, counts)
        e2 = _seg_cumsum(e1, starts, counts) if top > 1 else e1
        e = np.where(order_each == 0, res, np.where(order_each == 1, e1, e2))
    j = np.arange(len(res), dtype=np.int64) - np.repeat(starts, counts)
    return np.repeat(d.anchor, counts) + j * np.repeat(d.step, counts) + e


def _numbers_v1(d: _DirectoryV1, is_num: _Bool, res: _I64) -> tuple[_I64, _I64]:
    """The scaled ints ``m`` of the NUM_* readings, and the scale k of each."""
    n_series = len(d.counts)
    v_sid = np.repeat(np.arange(n_series, dtype=np.int64), d.counts)[is_num]
    m = res
    if int(d.v_mode.max(initial=0)):
        v_counts = np.bincount(v_sid, minlength=n_series).astype(np.int64)
        v_starts = np.cumsum(v_counts) - v_counts
        m = np.where(d.v_mode[v_sid] == 1, _seg_cumsum(res, v_starts, v_counts), res)
    return m + d.v_base[v_sid], d.scale[v_sid]


def _decode_v1(data: memoryview) -> Batch:
    rd = _Reader(_body_v1(data[len(MAGIC) + 1 :]))
    d = _directory_v1(rd)
    n = d.n
    ts_res = _unzigzag(rd.ucol(n, "ts_residual"))
    flags = rd.small(n, 255, "flags").astype(np.uint8)
    tags = np.repeat(d.kind, d.counts).astype(np.uint8)
    mixed = np.repeat(d.kind == _MIXED, d.counts)
    tags[mixed] = rd.small(int(mixed.sum()), _N_TAGS - 1, "tag")
    is_num = tags <= _NUM_INT
    num_res = _unzigzag(rd.ucol(int(is_num.sum()), "num_residual"))
    is_f64 = tags == _F64_TAG
    f64 = rd.ucol(int(is_f64.sum()), "f64_bits").view(np.float64)
    is_blob = tags >= _STR
    lengths = rd.small(int(is_blob.sum()), rd.remaining, "blob_length").tolist()
    blob = rd.raw(sum(lengths), "blobs")
    rd.end()

    ts = _timestamps_v1(d, ts_res)
    m, k = _numbers_v1(d, is_num, num_res)
    num_tags = tags[is_num]
    values: list[Any] | npt.NDArray[np.object_]
    if len(m) == n and (num_tags == _NUM_FLOAT).all():
        values = (m.astype(np.float64) / _POW10_F[k]).tolist()
    else:
        values = np.empty(n, dtype=np.object_)
        is_float = num_tags == _NUM_FLOAT
        num_pos = np.flatnonzero(is_num)
        values[num_pos[is_float]] = m[is_float].astype(np.float64) / _POW10_F[k[is_float]]
        m_int = m[~is_float]
        p_int = _POW10_I[k[~is_float]]
        if (m_int % p_int).any():
            raise CodecError("NUM_INT value that is not a multiple of its scale")
        values[num_pos[~is_float]] = m_int // p_int
        values[is_f64] = f64
        values[tags == _FALSE] = False
        values[tags == _TRUE] = True
        at = 0
        blob_pos = np.flatnonzero(is_blob)
        for i, tag, length in zip(blob_pos.tolist(), tags[blob_pos].tolist(), lengths, strict=True):
            chunk = blob[at : at + length]
            at += length
            values[i] = chunk.decode() if tag == _STR else _json_value(chunk)

    series: list[SeriesColumn] = []
    for dv, sn, a, c in zip(
        d.dev.tolist(), d.sen.tolist(), d.starts.tolist(), d.counts.tolist(), strict=True
    ):
        b = a + c
        vals = values[a:b] if isinstance(values, list) else values[a:b].tolist()
        series.append(SeriesColumn(d.dev_names[dv], d.sen_names[sn], ts[a:b], vals, flags[a:b]))
    return Batch(1, tuple(series))


_Decoder = Callable[[memoryview], Batch]
_DECODERS: Final[dict[int, _Decoder]] = {1: _decode_v1}
"""Every batch version this code can read, by version byte. Never remove an entry."""


def decode_batch(data: bytes) -> Batch:
    """Decode a batch of any shipped version; :class:`CodecError` for anything else."""
    try:
        view = memoryview(data)
    except TypeError as exc:
        raise CodecError(f"a batch is bytes, not {type(data).__name__}") from exc
    if len(view) < len(MAGIC) + 1 or bytes(view[: len(MAGIC)]) != MAGIC:
        raise CodecError("not a Cairn batch (bad magic)")
    version = view[len(MAGIC)]
    decoder = _DECODERS.get(version)
    if decoder is None:
        raise CodecError(f"unknown codec version {version}")
    try:
        return decoder(view)
    except CodecError:
        raise
    except Exception as exc:  # zstd, unicode, json, numpy: any malformed input
        _log.debug("rejected version %s batch of %s bytes: %r", version, len(view), exc)
        raise CodecError(f"malformed version {version} batch: {exc}") from exc
