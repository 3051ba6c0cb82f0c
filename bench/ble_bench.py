"""BLE source benchmark: advertisements/s and readings/s through decode + submit into a buffer.

Run from the repository root::

    .venv/bin/python bench/ble_bench.py [--advertisements 20000] [--devices 200] [--runs 3]

The radio is not part of it (this machine has no Bluetooth): advertisements go in through
:meth:`BleSource.on_advertisement`, the call the bleak adapter makes, with a scanner that only
starts. For each decoder, in the same run:

* ``decode only``: the decoder table alone on the same advertisements (the baseline);
* ``source -> buffer``: every advertisement through the source (allowlist, queue, dedupe,
  decode, one submit per worker turn) into a real :class:`~edge.batcher.Batcher` and SQLite
  :class:`~edge.buffer.Buffer` (the defaults: flush 200 ms, synchronous full), timed until the
  last one is committed;
* ``... each sent 3x``: the same with every advertisement heard three times in a row (as
  devices repeat each measurement), two of three counted as duplicates.

Each figure is min / median / max of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contract.model import now_us
from edge.batcher import Batcher
from edge.buffer import Buffer
from edge.config import BleSettings, BufferSettings, ScanningMode
from edge.sources.ble import AdvertisementCallback, BleSource
from edge.sources.ble_decoders import (
    BTHOME_UUID,
    DECODERS,
    RUUVI_COMPANY_ID,
    Advertisement,
    BleDecoder,
)
from edge.stats import EdgeStats


class _Scanner:
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def _factory(_s: BleSettings, _m: ScanningMode, _cb: AdvertisementCallback) -> _Scanner:
    return _Scanner()


def advertisements(decoder: BleDecoder, n: int, devices: int) -> list[Advertisement]:
    """``n`` distinct advertisements round-robin from ``devices`` devices, counters rising."""
    out = []
    t0 = now_us()
    for i in range(n):
        dev, k = i % devices, i // devices
        address = f"C0:00:00:00:{dev >> 8:02X}:{dev & 0xFF:02X}"
        if decoder is BleDecoder.BTHOME:
            # packet id, battery, temperature (0.01 C), humidity (0.01 %): a Xiaomi/ATC sensor
            data = struct.pack(
                "<BBBBBBhBH",
                0x40,
                0x00,
                k & 0xFF,
                0x01,
                90,
                0x02,
                2000 + k % 500,
                0x03,
                5000 + k % 900,
            )
            adv = Advertisement(address, "ATC", -60, {}, {BTHOME_UUID: data}, t0 + i)
        else:
            data = bytearray(bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"))
            struct.pack_into(">hH", data, 1, 4860 + k % 300, k & 0xFFFE)  # temperature, hum
            struct.pack_into(">H", data, 16, k % 0xFFFF)  # measurement sequence
            adv = Advertisement(address, "Ruuvi", -70, {RUUVI_COMPANY_ID: bytes(data)}, {}, t0 + i)
        out.append(adv)
    return out


def decode_only(decoder: BleDecoder, ads: list[Advertisement]) -> tuple[float, int]:
    """Seconds to decode ``ads`` and the readings they hold."""
    d = DECODERS[decoder]
    start = time.perf_counter()
    readings = sum(len(d.decode(a).values) for a in ads)
    return time.perf_counter() - start, readings


async def through_source(
    decoder: BleDecoder, ads: list[Advertisement], repeat: int
) -> tuple[float, int, int]:
    """Seconds from the first advertisement to the last commit; readings; duplicates."""
    with tempfile.TemporaryDirectory() as tmp:
        buffer = Buffer(Path(tmp) / "buffer.sqlite3")
        stats = EdgeStats()
        batcher = Batcher(buffer, BufferSettings(), stats)
        settings = BleSettings(decoder=decoder, queue_size=1_000_000, max_devices=100_000)
        source = BleSource(settings, batcher, stats, scanner_factory=_factory)
        try:
            async with source:
                tasks = [asyncio.create_task(batcher.run()), asyncio.create_task(source.run())]
                while not source.connected:  # noqa: ASYNC110 - a benchmark, not a test
                    await asyncio.sleep(0.01)
                start = time.perf_counter()
                for i, adv in enumerate(ads):
                    for _ in range(repeat):
                        source.on_advertisement(adv)
                    if i % 500 == 499:
                        await asyncio.sleep(0)  # the radio does not deliver all at once
                while source.status.stored < len(ads):  # noqa: ASYNC110 - polled end time
                    await asyncio.sleep(0.005)
                elapsed = time.perf_counter() - start
                await source.stop()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            return elapsed, source.status.accepted, source.status.duplicates
        finally:
            buffer.close()


def spread(values: list[float]) -> str:
    return f"{min(values):>10,.0f} / {statistics.median(values):>10,.0f} / {max(values):>10,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--advertisements", type=int, default=20_000)
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(
        f"{args.advertisements:,} distinct advertisements from {args.devices} devices;"
        f" min / median / max of {args.runs} runs"
    )
    print(f"{'decoder':<8} {'path':<28} {'advertisements/s':>36}   {'readings/s':>36}")
    for decoder in (BleDecoder.BTHOME, BleDecoder.RUUVI):
        ads = advertisements(decoder, args.advertisements, args.devices)
        rows: dict[str, tuple[list[float], list[float]]] = {}
        for _ in range(args.runs):
            s, n = decode_only(decoder, ads)
            a, r = rows.setdefault("decode only (baseline)", ([], []))
            a.append(len(ads) / s)
            r.append(n / s)
            s, n, dup = asyncio.run(through_source(decoder, ads, 1))
            assert dup == 0
            a, r = rows.setdefault("source -> buffer", ([], []))
            a.append(len(ads) / s)
            r.append(n / s)
            s, n, dup = asyncio.run(through_source(decoder, ads, 3))
            assert dup == 2 * len(ads), dup
            a, r = rows.setdefault("source -> buffer, each 3x", ([], []))
            a.append(3 * len(ads) / s)
            r.append(n / s)
        for path, (a, r) in rows.items():
            print(f"{decoder.value:<8} {path:<28} {spread(a)}   {spread(r)}")


if __name__ == "__main__":
    main()
