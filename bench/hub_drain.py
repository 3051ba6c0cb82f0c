"""Hub ingest benchmark: readings/s drained from JetStream into the store, and raw store rate.

Run from the repository root::

    .venv/bin/python bench/hub_drain.py [--batches 200] [--readings 5000] [--series 150]
        [--fetch-batch 64] [--synchronous normal] [--rounds 3]

What it measures (each round on fresh files, min/median/max over ``--rounds``):

1. ``store.ingest``: the encoded batches decoded and stored one by one into a fresh SQLite
   store, no NATS (decode + one transaction per batch; also ingest alone with the decoding
   done beforehand), and ``store.ingest_many`` of ``--fetch-batch`` decoded batches per
   transaction (the group commit the ingestor does per pull).
2. drain: the same batches published beforehand to a fresh nats-server (JetStream, file
   storage, the hub's own stream settings), then a hub ``Ingestor`` started on a fresh store;
   time from its start until the store holds every reading (connecting, creating the durable
   consumer, fetching, checking, decoding, committing and acknowledging).

Data: ``--series`` series (devices of 3 sensors each) at 10 Hz with +-2 ms of timestamp jitter,
values random walks rounded to 2 decimals, interleaved the way an edge batches them.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contract.codec import CODEC_VERSION, decode_batch, encode_batch
from contract.model import Reading
from contract.names import (
    STREAM_NAME,
    telemetry_subject,
)
from contract.signing import batch_headers, generate_key, public_key_bytes
from hub.config import HubConfig, NatsSettings, StoreSettings, Synchronous
from hub.ingest import Ingestor, ensure_stream
from hub.registry import Registry
from hub.store import SqliteStore
from simulator.servers import NatsServer

KEY = generate_key()
TENANT = "bench"
EDGE = "edge-1"
_SENSORS = ("temp", "humidity", "pressure")


def make_batches(n_batches: int, per_batch: int, n_series: int, seed: int = 1) -> list[bytes]:
    """``n_batches`` encoded batches of ``per_batch`` readings spread over ``n_series``."""
    rng = random.Random(seed)
    series = [(f"dev-{i // 3:03d}", _SENSORS[i % 3]) for i in range(n_series)]
    level = [rng.uniform(0, 1000) for _ in series]
    t0 = 1_780_000_000_000_000
    tick = [0] * n_series
    out = []
    for _ in range(n_batches):
        readings = []
        for j in range(per_batch):
            s = j % n_series
            level[s] += rng.uniform(-0.5, 0.5)
            ts = t0 + tick[s] * 100_000 + rng.randint(-2000, 2000)
            tick[s] += 1
            device, sensor = series[s]
            readings.append(Reading(device, sensor, ts, round(level[s], 2)))
        out.append(encode_batch(readings))
    return out


def bench_store(
    bodies: list[bytes], folder: Path, synchronous: str, group: int
) -> tuple[float, float, float, int]:
    """Readings/s of (decode + ingest, ingest alone, ingest_many of ``group``), store bytes."""
    batches = [decode_batch(b) for b in bodies]
    total = sum(b.count for b in batches)
    items = [
        (TENANT, EDGE, seq, CODEC_VERSION, body, batch)
        for seq, (body, batch) in enumerate(zip(bodies, batches, strict=True), 1)
    ]
    store = SqliteStore(folder / "alone.sqlite3", synchronous)
    start = time.perf_counter()
    for item in items:
        store.ingest(*item)
    alone = total / (time.perf_counter() - start)
    store.close()
    store = SqliteStore(folder / "many.sqlite3", synchronous)
    start = time.perf_counter()
    for i in range(0, len(items), group):
        store.ingest_many(items[i : i + group])
    many = total / (time.perf_counter() - start)
    assert store.stats()["readings"] == total
    store.close()
    store = SqliteStore(folder / "decode.sqlite3", synchronous)
    start = time.perf_counter()
    for seq, body in enumerate(bodies, 1):
        store.ingest(TENANT, EDGE, seq, CODEC_VERSION, body, decode_batch(body))
    with_decode = total / (time.perf_counter() - start)
    assert store.stats()["readings"] == total
    store.close()
    size = sum(p.stat().st_size for p in folder.glob("decode.sqlite3*"))  # WAL checkpointed
    return with_decode, alone, many, size


async def _prepublish(url: str, bodies: list[bytes], config: HubConfig) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=30)
    await ensure_stream(js, config.nats)  # as the hub makes it; its own call is then a no-op
    futures = []
    for seq, body in enumerate(bodies, 1):
        count = decode_batch(body).count
        headers = batch_headers(KEY, TENANT, EDGE, seq, CODEC_VERSION, body, count=count)
        futures.append(
            await js.publish_async(telemetry_subject(TENANT, EDGE), body, headers=headers)
        )
    await asyncio.gather(*futures)
    info = await js.stream_info(STREAM_NAME)
    assert info.state.messages == len(bodies), info.state
    await nc.close()


async def bench_drain(
    bodies: list[bytes], folder: Path, fetch_batch: int, synchronous: str
) -> float:
    """Readings/s from an ingestor's start until all pre-published readings are stored."""
    total = sum(decode_batch(b).count for b in bodies)
    with NatsServer(folder / "nats").start() as server:
        config = HubConfig(
            nats=NatsSettings(url=server.url, fetch_batch=fetch_batch),
            store=StoreSettings(synchronous=Synchronous(synchronous)),
        )
        await _prepublish(server.url, bodies, config)
        store = SqliteStore(folder / "drain.sqlite3", synchronous)
        registry = Registry(folder / "registry.sqlite3")
        registry.register(TENANT, EDGE, public_key_bytes(KEY))
        ingestor = Ingestor(config, store, registry)
        start = time.perf_counter()
        task = asyncio.create_task(ingestor.run())
        deadline = start + 600
        while ingestor.stats.readings_stored < total:
            if task.done():
                task.result()
                raise RuntimeError("ingestor stopped")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{ingestor.stats.readings_stored} of {total} after 600 s")
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - start
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert store.stats()["readings"] == total
        store.close()
    return total / elapsed


def _fmt(rates: list[float]) -> str:
    lo, mid, hi = min(rates), statistics.median(rates), max(rates)
    return f"{mid:>11,.0f} readings/s  (min {lo:,.0f}, max {hi:,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--readings", type=int, default=5000, help="readings per batch")
    parser.add_argument("--series", type=int, default=150)
    parser.add_argument("--fetch-batch", type=int, default=64)
    parser.add_argument("--synchronous", choices=("normal", "full"), default="normal")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    bodies = make_batches(args.batches, args.readings, args.series)
    total = args.batches * args.readings
    size = sum(len(b) for b in bodies)
    print(
        f"{args.batches} batches x {args.readings} readings ({args.series} series) ="
        f" {total:,} readings, {size / total:.2f} bytes/reading encoded;"
        f" synchronous={args.synchronous}, fetch_batch={args.fetch_batch}"
    )
    decode_ingest, alone, many, drains, db_size = [], [], [], [], 0
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="hub-drain-") as tmp:
            wd, al, mn, db_size = bench_store(bodies, Path(tmp), args.synchronous, args.fetch_batch)
            decode_ingest.append(wd)
            alone.append(al)
            many.append(mn)
        with tempfile.TemporaryDirectory(prefix="hub-drain-") as tmp:
            drains.append(
                asyncio.run(bench_drain(bodies, Path(tmp), args.fetch_batch, args.synchronous))
            )
    group = f"store.ingest_many, {args.fetch_batch}/commit"
    print(f"{'store.ingest, decoded before':<31}{_fmt(alone)}")
    print(f"{'decode + store.ingest':<31}{_fmt(decode_ingest)}")
    print(f"{group:<31}{_fmt(many)}")
    print(f"{'JetStream drain (Ingestor)':<31}{_fmt(drains)}")
    print(f"store file: {db_size / total:.2f} bytes/reading")


if __name__ == "__main__":
    main()
