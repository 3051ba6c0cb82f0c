"""Live-first benchmark: after an outage, how soon is fresh data at the hub, against how long
the backlog takes to drain.

Run from the repository root::

    .venv/bin/python bench/live_first.py [--backlog-batches 200] [--readings 1000]
        [--live-every-ms 100] [--live-readings 100] [--backlog-share 0.25]
        [--uplink-bytes-per-s 0] [--synchronous full] [--rounds 3]

Each round on fresh files: a nats-server and a hub ingestor (its own process, fresh store)
run; the edge buffer holds a backlog of ``--backlog-batches`` x ``--readings`` readings (what
an outage left; 200 x 1,000 = 200k by default). The link "returns" when the edge's forwarder
starts (T0), while a producer commits a fresh batch of ``--live-readings`` every
``--live-every-ms`` (as the batcher does, notifying the forwarder). The parent polls the hub's
store (read-only SQLite, every 5 ms) and prints, from T0:

- first fresh: the first batch committed after T0 stored at the hub;
- drained: every backlog batch stored at the hub;
- and, to check the run, that every batch was stored exactly once.

Without live first (seq order), the first fresh batch would wait for the whole drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.hub_drain import make_batches
from contract.codec import CODEC_VERSION, decode_batch
from contract.names import CONSUMER_NAME, STREAM_NAME
from contract.signing import generate_key, public_key_bytes
from edge.buffer import Buffer
from edge.config import ForwarderSettings
from edge.forwarder import Forwarder
from edge.stats import EdgeStats
from hub.config import HubConfig, NatsSettings
from hub.ingest import Ingestor
from hub.registry import Registry
from hub.store import SqliteStore
from simulator.servers import NatsServer

KEY = generate_key()
TENANT = "bench"
EDGE = "edge-1"


def _hub(url: str, store_path: str, public_key: bytes) -> None:
    """The hub's ingest, in its own process (as in production: another machine)."""

    async def run() -> None:
        store = SqliteStore(Path(store_path))
        registry = Registry(Path(store_path).with_name("registry.sqlite3"))
        registry.register(TENANT, EDGE, public_key)
        await Ingestor(HubConfig(nats=NatsSettings(url=url)), store, registry).run()

    asyncio.run(run())


def _stored(path: Path) -> list[int]:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    try:
        return [s for (s,) in con.execute("SELECT seq FROM batches WHERE edge=?", (EDGE,))]
    except sqlite3.Error:
        return []
    finally:
        con.close()


async def _poll(check: Callable[[], Awaitable[bool]], what: str, limit_s: float = 600) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {limit_s} s")
        await asyncio.sleep(0.01)


async def _hub_ready(url: str) -> None:
    """Wait until the hub has made the stream and its durable consumer."""
    nc = await nats.connect(url)
    js = nc.jetstream()

    async def ready() -> bool:
        try:
            await js.consumer_info(STREAM_NAME, CONSUMER_NAME)
        except Exception:
            return False
        return True

    try:
        await _poll(ready, "no hub consumer", 60)
    finally:
        await nc.close()


async def _round(args: argparse.Namespace, folder: Path) -> tuple[float, float, int]:
    bodies = make_batches(args.backlog_batches, args.readings, 150)
    live_bodies = make_batches(1, args.live_readings, 150, seed=2)
    buffer = Buffer(folder / "buffer.sqlite3", args.synchronous)
    for body in bodies:
        buffer.append(body, args.readings, None, None, CODEC_VERSION)
    backlog_last = buffer.stats().last_seq
    store_path = folder / "store.sqlite3"
    ctx = multiprocessing.get_context("spawn")
    with NatsServer(folder / "nats").start() as server:
        hub = ctx.Process(
            target=_hub, args=(server.url, str(store_path), public_key_bytes(KEY)), daemon=True
        )
        hub.start()
        try:
            await _hub_ready(server.url)
            settings = ForwarderSettings(
                nats_url=server.url,
                max_in_flight=16,
                backoff_initial_s=0.05,
                backoff_max_s=0.5,
                backlog_share=args.backlog_share,
                uplink_bytes_per_s=args.uplink_bytes_per_s,
                clock_interval_s=0,
                status_interval_s=0,
            )
            forwarder = Forwarder(settings, buffer, TENANT, EDGE, KEY, EdgeStats())
            fresh: list[int] = []

            async def produce() -> None:
                while True:
                    seq = await buffer.run_in_writer(  # as the batcher commits: off the loop
                        buffer.append, live_bodies[0], args.live_readings, None, None, CODEC_VERSION
                    )
                    fresh.append(seq)
                    forwarder.notify(seq)
                    await asyncio.sleep(args.live_every_ms / 1000)

            start = time.perf_counter()
            task = asyncio.create_task(forwarder.run())
            producer = asyncio.create_task(produce())
            first_fresh = drained = 0.0
            deadline = start + 600
            while not (first_fresh and drained):
                seqs = _stored(store_path)
                now = time.perf_counter() - start
                if not first_fresh and any(s > backlog_last for s in seqs):
                    first_fresh = now
                if not drained and sum(1 for s in seqs if s <= backlog_last) == backlog_last:
                    drained = now
                if time.perf_counter() > deadline:
                    raise TimeoutError("not drained after 600 s")
                await asyncio.sleep(0.005)
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

            async def sent() -> bool:
                return buffer.stats().batches_unsent == 0

            await _poll(sent, "batches unsent")
            expected = set(range(1, buffer.stats().last_seq + 1))

            async def stored() -> bool:
                return len(_stored(store_path)) >= len(expected)

            await _poll(stored, "batches not stored")
            seqs = _stored(store_path)
            assert sorted(seqs) == sorted(expected), "a batch missing or stored twice"
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            hub.terminate()
            hub.join(10)
            buffer.close()
    return first_fresh, drained, len(fresh)


def _fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):7.3f} s (min {min(xs):.3f}, max {max(xs):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlog-batches", type=int, default=200)
    parser.add_argument("--readings", type=int, default=1000, help="readings per backlog batch")
    parser.add_argument("--live-every-ms", type=float, default=100.0)
    parser.add_argument("--live-readings", type=int, default=100)
    parser.add_argument("--backlog-share", type=float, default=0.25)
    parser.add_argument("--uplink-bytes-per-s", type=int, default=0)
    parser.add_argument("--synchronous", choices=("normal", "full"), default="full")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sample = make_batches(args.backlog_batches, args.readings, 150)
    size = sum(len(b) for b in sample)
    total = sum(decode_batch(b).count for b in sample)
    print(
        f"backlog {args.backlog_batches} batches x {args.readings} = {total:,} readings"
        f" ({size:,} bytes); fresh batch of {args.live_readings} every {args.live_every_ms:g} ms;"
        f" backlog_share {args.backlog_share},"
        f" uplink_bytes_per_s {args.uplink_bytes_per_s or 'unlimited'},"
        f" edge buffer synchronous={args.synchronous}"
    )
    firsts, drains = [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="live-first-") as tmp:
            first, drained, _n = asyncio.run(_round(args, Path(tmp)))
        firsts.append(first)
        drains.append(drained)
    print(f"link return -> first fresh batch stored at the hub: {_fmt(firsts)}")
    print(f"link return -> whole backlog stored at the hub:     {_fmt(drains)}")


if __name__ == "__main__":
    main()
