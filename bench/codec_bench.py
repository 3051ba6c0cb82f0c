"""Batch codec benchmark: bytes per reading and readings/s, against JSON lines + zstd.

Run from the repository root::

    .venv/bin/python bench/codec_bench.py [--sizes 100 1000 10000] [--jitter 0 1000]

Data: the deterministic simulated fleet of ``tests/test_codec.py`` (50 devices x 3 sensors at
1 Hz, quantised temperature/humidity/pressure), optionally with +-jitter microseconds of
timestamp jitter. Speeds are the best of several timed rounds on one thread (one core).
Readings arrive interleaved, so a batch of 100 holds 100 series of one reading each: the worst
case for per-series and per-batch costs (~0.3 ms to encode, ~0.1 ms + ~1 us/series to decode).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contract.codec import ZSTD_LEVEL, decode_batch, encode_batch
from contract.model import Reading
from tests.test_codec import fleet_readings


def best_rate(
    fn: Callable[[], object], items: int, *, rounds: int = 5, min_s: float = 0.2
) -> float:
    """Items per second of ``fn``: best of ``rounds`` rounds of at least ``min_s`` each."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        reps = 0
        start = time.perf_counter()
        while True:
            fn()
            reps += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_s:
                break
        best = min(best, elapsed / reps)
    return items / best


_cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
_dctx = zstandard.ZstdDecompressor()


def json_lines_encode(readings: list[Reading]) -> bytes:
    lines = "\n".join(json.dumps([r.device, r.sensor, r.ts, r.value, r.flags]) for r in readings)
    return _cctx.compress(lines.encode())


def json_lines_decode(data: bytes) -> list[Reading]:
    rows = (json.loads(line) for line in _dctx.decompress(data).splitlines())
    return [Reading(d, s, t, v, f) for d, s, t, v, f in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1_000, 10_000])
    parser.add_argument("--jitter", type=int, nargs="+", default=[0, 1_000])
    args = parser.parse_args()

    header = (
        f"{'jitter':>7} {'readings':>8} | {'B/reading':>9} {'enc/s':>10} {'dec/s':>10} | "
        f"{'json B/r':>8} {'enc/s':>9} {'dec/s':>9} | {'size x':>6} {'enc x':>6} {'dec x':>6}"
    )
    print(f"codec v1 (zstd level {ZSTD_LEVEL}) vs JSON lines + zstd (same level)")
    print(header)
    print("-" * len(header))
    for jitter in args.jitter:
        for size in args.sizes:
            readings = fleet_readings(size, jitter_us=jitter)
            data = encode_batch(readings)
            assert decode_batch(data).count == size
            baseline = json_lines_encode(readings)
            assert len(json_lines_decode(baseline)) == size

            enc = best_rate(lambda r=readings: encode_batch(r), size)
            dec = best_rate(lambda d=data: decode_batch(d), size)
            j_enc = best_rate(lambda r=readings: json_lines_encode(r), size)
            j_dec = best_rate(lambda d=baseline: json_lines_decode(d), size)
            print(
                f"{jitter:>6}us {size:>8} | {len(data) / size:>9.3f} {enc:>10,.0f} {dec:>10,.0f} | "
                f"{len(baseline) / size:>8.2f} {j_enc:>9,.0f} {j_dec:>9,.0f} | "
                f"{len(baseline) / len(data):>6.1f} {enc / j_enc:>6.1f} {dec / j_dec:>6.1f}"
            )


if __name__ == "__main__":
    main()
