"""Serial source benchmark: readings/s into the buffer through a real pty, per parser.

Run from the repository root::

    .venv/bin/python bench/serial_bench.py [--lines 50000] [--rounds 3] [--parsers json csv ...]

For each parser the same bytes (``--lines`` lines of a 3-sensor device, timestamped by the
device; NMEA: GGA+RMC pairs) are written to a pty's master by a writer thread, as fast as the
kernel takes them, and timed three ways in one run:

``pty raw``
    The baseline: an event-loop reader (``add_reader`` + ``os.read``, as the source does) that
    only counts bytes. What the pty and the loop can carry at all.
``parse``
    :class:`~edge.sources.serial.SerialSource` framing and parsing into its backlog, no commit.
``commit``
    The whole path: source -> batcher -> SQLite buffer (``synchronous = full``, flush every
    200 ms, 10,000-reading batches: the defaults), timed until the last reading is committed.

Prints min / median / max over ``--rounds`` (rates in readings/s; pty raw in MB/s and the
readings/s its bytes stand for). A real serial line is far slower than any of these (115,200
baud carries ~11 KB/s, ~200 lines/s): the figure says how much of a core a port costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pty
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.batcher import Batcher
from edge.buffer import Buffer
from edge.config import BufferSettings, LineFormat, SerialSettings
from edge.sources.lines import nmea_checksum
from edge.sources.serial import SerialSource
from edge.stats import EdgeStats

T0 = int(time.time()) - 3600


def _nmea(body: str) -> str:
    return f"${body}*{nmea_checksum(body):02X}\r\n"


def make_stream(parser: LineFormat, lines: int) -> tuple[bytes, int]:
    """(bytes, readings they hold) of ``lines`` lines in the format of ``parser``."""
    out: list[str] = []
    readings = 0
    if parser is LineFormat.CSV:
        out.append("ts,temp,hum,pressure\r\n")
    for i in range(lines):
        t = T0 + i // 10
        temp, hum, p = 20 + (i % 50) / 10, 40 + i % 20, 1000 + (i % 300) / 10
        if parser is LineFormat.JSON:
            out.append(f'{{"ts": {t}.{i % 10}, "temp": {temp}, "hum": {hum}, "pressure": {p}}}\n')
            readings += 3
        elif parser is LineFormat.CSV:
            out.append(f"{t}.{i % 10},{temp},{hum},{p}\r\n")
            readings += 3
        elif parser is LineFormat.KEYVALUE:
            out.append(f"ts={t}.{i % 10} temp={temp} hum={hum} pressure={p}\r\n")
            readings += 3
        else:
            hhmmss = time.strftime("%H%M%S", time.gmtime(t))
        if parser is LineFormat.NMEA:
            ddmmyy = time.strftime("%d%m%y", time.gmtime(t))
            if i % 2 == 0:
                out.append(
                    _nmea(
                        f"GPGGA,{hhmmss}.{i % 10}0,4807.{i % 1000:03d},N,01131.000,E,1,08,0.9,"
                        f"545.{i % 10},M,46.9,M,,"
                    )
                )
                readings += 6
            else:
                out.append(
                    _nmea(
                        f"GPRMC,{hhmmss}.{i % 10}0,A,4807.{i % 1000:03d},N,01131.000,E,022.4,"
                        f"084.4,{ddmmyy},003.1,W"
                    )
                )
                readings += 5
    return "".join(out).encode(), readings


def _writer(master: int, data: bytes) -> threading.Thread:
    def run() -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(master, view[: 1 << 16]) :]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class _Pty:
    def __init__(self, folder: Path) -> None:
        self.master, self.slave = pty.openpty()
        self.link = folder / "tty"
        self.link.unlink(missing_ok=True)
        self.link.symlink_to(os.ttyname(self.slave))

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)
        self.link.unlink(missing_ok=True)


async def raw_round(folder: Path, data: bytes) -> float:
    """Seconds to read ``data`` through a pty with add_reader + os.read, counting bytes."""
    import serial  # noqa: PLC0415 - the same open as the source, raw mode

    p = _Pty(folder)
    port = serial.Serial(str(p.link), 115200, timeout=0)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    got = 0

    def readable() -> None:
        nonlocal got
        got += len(os.read(port.fileno(), 1 << 16))
        if got >= len(data) and not done.done():
            done.set_result(None)

    loop.add_reader(port.fileno(), readable)
    start = time.perf_counter()
    thread = _writer(p.master, data)
    await done
    elapsed = time.perf_counter() - start
    loop.remove_reader(port.fileno())
    thread.join()
    port.close()
    p.close()
    return elapsed


async def source_round(
    folder: Path, parser: LineFormat, data: bytes, readings: int, *, commit: bool
) -> tuple[float, dict[str, object]]:
    """Seconds until the source has parsed (or committed) all ``readings`` of ``data``."""
    p = _Pty(folder)
    buffer = _fresh_buffer(folder / "buffer.sqlite3")
    stats = EdgeStats()
    batcher = Batcher(buffer, BufferSettings(max_pending_readings=1_000_000), stats)
    settings = SerialSettings(
        port=str(p.link), device="bench-1", parser=parser, max_pending_readings=10_000_000
    )
    tasks: list[asyncio.Task[None]] = []
    async with SerialSource(settings, batcher, stats) as source:
        tasks.append(asyncio.create_task(source.run()))
        if commit:
            tasks.append(asyncio.create_task(batcher.run()))
        await _until(lambda: source.connected)
        if commit:

            def finished() -> bool:
                return stats.counters["readings-committed"] >= readings
        else:

            def finished() -> bool:
                return source.pending_readings >= readings

        start = time.perf_counter()
        thread = _writer(p.master, data)
        await _until(finished, poll=0.001)
        elapsed = time.perf_counter() - start
        thread.join()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    buffer.close()
    p.close()
    src = stats.sources["serial"].as_json()
    return elapsed, src


def _fresh_buffer(db: Path) -> Buffer:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return Buffer(db)


async def _until(predicate: Callable[[], bool], poll: float = 0.01, limit_s: float = 600) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark round did not finish")
        await asyncio.sleep(poll)


def _fmt(rates: list[float], unit: str = "") -> str:
    return " / ".join(f"{r:,.0f}{unit}" for r in (min(rates), statistics.median(rates), max(rates)))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parsers", nargs="+", default=[f.value for f in LineFormat])
    args = ap.parse_args()
    print(f"{args.lines} lines per round, {args.rounds} rounds; min / median / max")
    with tempfile.TemporaryDirectory(prefix="serial-bench-") as tmp:
        folder = Path(tmp)
        for name in args.parsers:
            parser = LineFormat(name)
            data, readings = make_stream(parser, args.lines)
            raw, parse, commit = [], [], []
            last: dict[str, object] = {}
            for _ in range(args.rounds):
                raw.append(await raw_round(folder, data))
                parse.append((await source_round(folder, parser, data, readings, commit=False))[0])
                seconds, last = await source_round(folder, parser, data, readings, commit=True)
                commit.append(seconds)
            mb = [len(data) / s / 1e6 for s in raw]
            print(
                f"{name:9s} {len(data) / readings:5.1f} B/reading | pty raw {_fmt(mb)} MB/s"
                f" (= {_fmt([readings / s for s in raw])} readings/s)"
                f" | parse {_fmt([readings / s for s in parse])} readings/s"
                f" | commit {_fmt([readings / s for s in commit])} readings/s"
            )
            rejected, refused = last["rejected"], last["refused"]
            if rejected or refused:
                print(f"          rejected {rejected} refused {refused}")


if __name__ == "__main__":
    asyncio.run(main())
