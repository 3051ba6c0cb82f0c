"""Batch codec (PLACEHOLDER: JSON + zstd; the real columnar codec replaces this file).

The API below is fixed; the encoding is not.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import zstandard

from contract.errors import CodecError
from contract.model import Reading, Value

__all__ = ["CODEC_VERSION", "Batch", "SeriesColumn", "decode_batch", "encode_batch"]

CODEC_VERSION: Final = 1


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
        return sum(len(s) for s in self.series)

    def readings(self) -> Iterator[Reading]:
        for s in self.series:
            for t, v, f in zip(s.ts.tolist(), s.values, s.flags.tolist(), strict=True):
                yield Reading(s.device, s.sensor, t, v, f)


def encode_batch(readings: Iterable[Reading]) -> bytes:
    rows = [[r.device, r.sensor, r.ts, r.value, r.flags] for r in readings]
    return bytes([CODEC_VERSION]) + zstandard.compress(json.dumps(rows).encode())


def decode_batch(data: bytes) -> Batch:
    if not data or data[0] != CODEC_VERSION:
        raise CodecError("unknown version")
    rows = json.loads(zstandard.decompress(data[1:]))
    groups: dict[tuple[str, str], list[list[object]]] = {}
    for row in rows:
        groups.setdefault((row[0], row[1]), []).append(row)
    series = tuple(
        SeriesColumn(
            d,
            s,
            np.array([r[2] for r in rs], dtype=np.int64),
            [r[3] for r in rs],  # type: ignore[misc]
            np.array([r[4] for r in rs], dtype=np.uint8),
        )
        for (d, s), rs in groups.items()
    )
    return Batch(CODEC_VERSION, series)
