"""What the durable settings cost: SQLite ``synchronous`` at the edge and JetStream's
``sync_interval``, each measured against the faster setting in the same run.

Run from the repository root::

    .venv/bin/python bench/durability.py [--readings 200000] [--batches 2000] [--rounds 3]

1. Edge buffer commits: ``Buffer.append`` of one batch per transaction, back to back (each
   commit of ``synchronous = full`` waits for an fsync; ``normal`` does not).
2. Edge ingest: ``--readings`` readings submitted to the real ``Batcher`` in submits of 10, as
   fast as it commits them (group commit: few, large transactions, as under load).
3. JetStream: ``--batches`` 8 KiB messages published with 16 in flight (the forwarder's
   default window) to a nats-server with ``sync_interval: always`` and with its default (2 min).

Each figure is the median of ``--rounds`` rounds on fresh files; the ratio is safe / fast.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contract.model import Reading
from edge.batcher import Batcher
from edge.buffer import Buffer
from edge.config import BufferSettings
from edge.stats import EdgeStats
from simulator.servers import NatsServer

_BODY = 8192


def buffer_commits(folder: Path, synchronous: str, n: int) -> float:
    """Commits per second, one batch per transaction."""
    body = random.Random(1).randbytes(_BODY)
    buf = Buffer(folder / f"commits-{synchronous}.sqlite3", synchronous)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            buf.append(body, 10, i, i, 1)
        return n / (time.perf_counter() - t0)
    finally:
        buf.close()


async def batcher_ingest(folder: Path, synchronous: str, readings: int) -> float:
    """Readings per second through the group commit, submits of 10."""
    buf = Buffer(folder / f"ingest-{synchronous}.sqlite3", synchronous)
    batcher = Batcher(buf, BufferSettings(), EdgeStats())
    runner = asyncio.create_task(batcher.run())
    rng = random.Random(2)
    blocks = [
        [Reading(f"d{k % 100}", "t", 1_780_000_000_000_000 + i * 10 + k, round(rng.random(), 3))
         for k in range(10)]
        for i in range(readings // 10)
    ]  # fmt: skip
    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(batcher.submit(b, "bench") for b in blocks))
        return readings / (time.perf_counter() - t0)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        buf.close()


async def jetstream_publish(folder: Path, sync_interval: str, n: int) -> float:
    """Acknowledged 8 KiB messages per second, 16 in flight."""
    body = random.Random(3).randbytes(_BODY)
    with NatsServer(folder / f"nats-{sync_interval}", sync_interval=sync_interval).start() as srv:
        nc = await nats.connect(srv.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="BENCH", subjects=["bench.>"])
            window = asyncio.Semaphore(16)

            async def one(i: int) -> None:
                async with window:
                    await js.publish("bench.x", body, headers={"Nats-Msg-Id": str(i)})

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            return n / (time.perf_counter() - t0)
        finally:
            await nc.close()


def median_of(rounds: int, run: Callable[[Path], Awaitable[float] | float]) -> float:
    figures = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="cairn-durability-") as tmp:
            result = run(Path(tmp))
            figures.append(
                asyncio.run(result) if asyncio.iscoroutine(result) else float(result)  # type: ignore[arg-type]
            )
    return statistics.median(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--commits", type=int, default=500)
    parser.add_argument("--batches", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = [
        (
            "edge buffer, one batch per commit (commits/s)",
            median_of(args.rounds, lambda d: buffer_commits(d, "full", args.commits)),
            median_of(args.rounds, lambda d: buffer_commits(d, "normal", args.commits)),
        ),
        (
            "edge ingest through the group commit (readings/s)",
            median_of(args.rounds, lambda d: batcher_ingest(d, "full", args.readings)),
            median_of(args.rounds, lambda d: batcher_ingest(d, "normal", args.readings)),
        ),
        (
            "JetStream publish, 8 KiB, 16 in flight (msgs/s)",
            median_of(args.rounds, lambda d: jetstream_publish(d, "always", args.batches)),
            median_of(args.rounds, lambda d: jetstream_publish(d, "2m", args.batches)),
        ),
    ]
    print(f"{'figure':<52} {'safe':>11} {'fast':>11} {'safe/fast':>9}")
    print(f"{'':<52} {'(full/always)':>11} {'(normal/2m)':>11}")
    for name, safe, fast in rows:
        print(f"{name:<52} {safe:>11,.0f} {fast:>11,.0f} {safe / fast:>9.2f}")


if __name__ == "__main__":
    main()
