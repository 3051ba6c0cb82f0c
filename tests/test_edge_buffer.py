"""The SQLite buffer and the group-commit batcher, on real SQLite files."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.codec import CODEC_VERSION, decode_batch, encode_batch
from contract.model import Reading
from edge.batcher import Batcher, BatcherClosedError
from edge.buffer import (
    SCHEMA_VERSION,
    Buffer,
    BufferFileError,
    BufferFullError,
    BufferLimits,
    read_stats,
)
from edge.config import BufferSettings
from edge.stats import EdgeStats
from tests.test_edge_support import poll

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def buffer(tmp_path: Path) -> Iterator[Buffer]:
    buf = Buffer(tmp_path / "buffer.sqlite3")
    yield buf
    buf.close()


def reading(i: int, device: str = "d") -> Reading:
    return Reading(device, "s", 1_700_000_000_000_000 + i, float(i))


def rows(path: Path) -> list[tuple[int, int, bytes, bytes]]:
    """``(seq, count, body, digests)`` of every row, read through a connection of our own."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT seq, count, body, digests FROM batches ORDER BY seq").fetchall()
    finally:
        conn.close()


# --------------------------------------------------------------------------- buffer


def test_append_unsent_mark_sent_stats(buffer: Buffer) -> None:
    bodies = [encode_batch([reading(i), reading(i + 1)]) for i in range(5)]
    seqs = [
        buffer.append(b, 2, 10 * i, 10 * i + 1, CODEC_VERSION, bytes(8) if i % 2 else b"")
        for i, b in enumerate(bodies)
    ]
    assert seqs == [1, 2, 3, 4, 5]
    st = buffer.stats()
    assert (st.batches_unsent, st.readings_unsent, st.batches_sent, st.readings_sent) == (
        5,
        10,
        0,
        0,
    )
    assert st.bytes_unsent == sum(len(b) for b in bodies)
    assert st.last_seq == 5
    assert st.oldest_unsent_us is not None
    assert st.file_bytes > 0
    assert [b.seq for b in buffer.unsent(0, 3)] == [1, 2, 3]
    assert [b.seq for b in buffer.unsent(3, 10)] == [4, 5]
    first = buffer.unsent(0, 1)[0]
    assert (first.count, first.codec, first.body) == (2, CODEC_VERSION, bodies[0])
    buffer.mark_sent([2, 4, 4, 99])  # unknown and repeated seqs are ignored
    buffer.mark_sent([4])
    assert [b.seq for b in buffer.unsent(0, 10)] == [1, 3, 5]
    st = buffer.stats()
    assert (st.batches_unsent, st.readings_unsent, st.batches_sent, st.readings_sent) == (
        3,
        6,
        2,
        4,
    )
    assert st.bytes_unsent == len(bodies[0]) + len(bodies[2]) + len(bodies[4])
    assert read_stats(buffer.path) == st  # read-only, from another connection, while open
    buffer.mark_sent([1, 3, 5])
    assert buffer.stats().oldest_unsent_us is None


def test_rows_survive_a_reopen_and_the_schema_is_versioned(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    buf = Buffer(path, "full")
    buf.append(b"x", 1, 1, 1, 1, b"12345678")
    buf.append(b"y", 1, 2, 2, 1, b"abcdefghABCDEFGH")
    buf.mark_sent([1])
    buf.close()
    buf = Buffer(path)
    try:
        assert [b.seq for b in buf.unsent()] == [2]
        assert buf.stats().batches_sent == 1
        assert buf.append(b"z", 1, 3, 3, 1) == 3
        assert buf.recent_digests(2) == [b"abcdefgh", b"ABCDEFGH"]
        assert buf.recent_digests(10) == [b"abcdefgh", b"ABCDEFGH", b"12345678"]
        assert buf.recent_digests(0) == []
    finally:
        buf.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(
        SCHEMA_VERSION
    )
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(BufferFileError, match="schema version 99 is newer"):
        Buffer(path)


def test_not_a_buffer(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(BufferFileError):
        Buffer(junk)
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(BufferFileError, match="not a Cairn buffer"):
        read_stats(other)
    with pytest.raises(BufferFileError, match="no such file"):
        read_stats(tmp_path / "missing.sqlite3")


# --------------------------------------------------------------------------- batcher


async def started(batcher: Batcher) -> asyncio.Task[None]:
    return asyncio.create_task(batcher.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_concurrent_submits_are_committed_in_as_few_rows_as_the_rules_allow(
    buffer: Buffer,
) -> None:
    stats = EdgeStats()
    commits: list[int] = []
    settings = BufferSettings(
        flush_interval_ms=60_000, max_batch_readings=500, max_pending_readings=5000
    )
    batcher = Batcher(buffer, settings, stats, on_commit=commits.append)
    runner = await started(batcher)

    tasks = [  # 2000 tasks at once, 1 reading each, 50 devices, 2 sources
        asyncio.create_task(batcher.submit([reading(p * 1000 + k, f"dev{p}")], f"src{p % 2}"))
        for k in range(40)
        for p in range(50)
    ]
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    await stop(runner)
    got = rows(buffer.path)
    assert [count for _, count, _, _ in got] == [500, 500, 500, 500]  # max_batch: 4 rows, no timer
    assert commits == [1, 2, 3, 4]
    decoded = {r for _, _, body, _ in got for r in decode_batch(body).readings()}
    assert decoded == {reading(p * 1000 + k, f"dev{p}") for p in range(50) for k in range(40)}
    assert stats.counters["readings-committed"] == 2000
    assert stats.counters["batches-committed"] == 4
    assert (stats.source("src0").accepted, stats.source("src1").accepted) == (1000, 1000)
    assert batcher.queued_readings == 0


async def test_flush_interval_groups_what_arrives_meanwhile(buffer: Buffer) -> None:
    settings = BufferSettings(
        flush_interval_ms=300, max_batch_readings=10_000, max_pending_readings=10_000
    )
    batcher = Batcher(buffer, settings, EdgeStats())
    runner = await started(batcher)
    await asyncio.gather(*(batcher.submit([reading(i), reading(i + 100)], "s") for i in range(25)))
    await batcher.submit([reading(1000)], "s")  # arrives after that commit: a row of its own
    await stop(runner)
    assert [count for _, count, _, _ in rows(buffer.path)] == [50, 1]


async def test_a_single_submit_larger_than_a_batch_goes_whole(buffer: Buffer) -> None:
    settings = BufferSettings(
        flush_interval_ms=60_000, max_batch_readings=10, max_pending_readings=10
    )
    batcher = Batcher(buffer, settings, EdgeStats())
    runner = await started(batcher)
    await asyncio.gather(
        batcher.submit([reading(i) for i in range(25)], "s"),
        batcher.submit([reading(i) for i in range(100, 104)], "s"),
        batcher.submit([reading(i) for i in range(200, 210)], "s"),
    )
    await stop(runner)
    assert [count for _, count, _, _ in rows(buffer.path)] == [25, 4, 10]


async def test_submit_returns_only_after_the_commit(buffer: Buffer) -> None:
    settings = BufferSettings(
        flush_interval_ms=60_000, max_batch_readings=1000, max_pending_readings=1000
    )
    batcher = Batcher(buffer, settings, EdgeStats())
    runner = await started(batcher)
    task = asyncio.create_task(batcher.submit([reading(1), reading(2)], "s"))
    await poll(lambda: batcher.queued_readings == 2, "the submit to be queued")
    assert not task.done()
    assert rows(buffer.path) == []  # nothing committed, so nothing returned
    await batcher.drain()  # commit now instead of in 60 s
    await asyncio.wait_for(task, 10)
    assert [count for _, count, _, _ in rows(buffer.path)] == [2]
    await stop(runner)


async def test_backpressure_bounds_what_waits(buffer: Buffer) -> None:
    settings = BufferSettings(flush_interval_ms=1, max_batch_readings=5, max_pending_readings=10)
    batcher = Batcher(buffer, settings, EdgeStats())
    runner = await started(batcher)
    gate = threading.Event()
    blocker = asyncio.ensure_future(buffer.run_in_writer(gate.wait))  # the disk is "busy"
    first = [asyncio.create_task(batcher.submit([reading(i)], "s")) for i in range(10)]
    await poll(lambda: batcher.queued_readings == 10, "10 readings queued")
    late = [asyncio.create_task(batcher.submit([reading(100 + i)], "s")) for i in range(3)]
    for _ in range(20):
        await asyncio.sleep(0)  # give the late submits every chance to get in (they must not)
    assert batcher.queued_readings == 10
    assert not any(t.done() for t in first + late)
    gate.set()
    await blocker
    await asyncio.wait_for(asyncio.gather(*first, *late), 20)
    assert sum(count for _, count, _, _ in rows(buffer.path)) == 13
    await stop(runner)


async def test_a_failing_commit_holds_held_submits_and_refuses_the_others(
    buffer: Buffer,
) -> None:
    stats = EdgeStats()
    settings = BufferSettings(flush_interval_ms=1, max_batch_readings=100, max_pending_readings=100)
    batcher = Batcher(buffer, settings, stats)
    runner = await started(batcher)
    saboteur = sqlite3.connect(buffer.path)  # a real SQLite error on every insert, until dropped
    saboteur.execute(
        "CREATE TRIGGER no_space BEFORE INSERT ON batches BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    saboteur.commit()
    held = asyncio.create_task(batcher.submit([reading(1)], "mqtt", hold=True))
    with pytest.raises(BufferFullError, match="disk-error: disk full"):
        await asyncio.wait_for(batcher.submit([reading(2), reading(3)], "serial"), 20)
    await poll(lambda: stats.counters["commit-errors"] >= 3, "three failed commits")
    assert not held.done()
    assert batcher.state == "disk-error: disk full"
    assert stats.sources["serial"].refused == {"disk-error": 2}
    assert stats.counters["readings-refused"] == 2
    saboteur.execute("DROP TRIGGER no_space")
    saboteur.commit()
    saboteur.close()
    await asyncio.wait_for(held, 20)
    assert [count for _, count, _, _ in rows(buffer.path)] == [1]
    assert stats.counters["readings-committed"] == 1
    assert batcher.state == "ok"
    await batcher.submit([reading(4)], "serial")  # accepted again
    assert [count for _, count, _, _ in rows(buffer.path)] == [1, 1]
    await stop(runner)


async def test_what_the_codec_refuses_fails_alone(buffer: Buffer) -> None:
    settings = BufferSettings(
        flush_interval_ms=60_000, max_batch_readings=3, max_pending_readings=10
    )
    batcher = Batcher(buffer, settings, EdgeStats())
    runner = await started(batcher)
    bad = Reading("d", "s", 1, {1, 2})  # type: ignore[arg-type]  # a set: no JSON document
    results = await asyncio.gather(
        batcher.submit([reading(1)], "s"),
        batcher.submit([bad], "s", b"BADBADBA"),
        batcher.submit([reading(2)], "s"),
        return_exceptions=True,
    )
    assert results[0] is None
    assert results[2] is None
    assert getattr(results[1], "reason", None) == "bad-value"
    got = rows(buffer.path)
    assert [(count, digests) for _, count, _, digests in got] == [(2, b"")]
    assert batcher.queued_readings == 0
    assert not await batcher.redelivered(b"BADBADBA")
    await stop(runner)


async def test_digests_are_stored_remembered_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite3"
    buf = Buffer(path)
    settings = BufferSettings(flush_interval_ms=1, max_batch_readings=100, max_pending_readings=100)
    batcher = Batcher(buf, settings, EdgeStats(), digest_window=3)
    runner = await started(batcher)
    digests = [bytes([i]) * 8 for i in range(5)]
    for i, d in enumerate(digests):
        await batcher.submit([reading(i)], "s", d)
    await batcher.submit([reading(99)], "s")  # QoS 0: no digest
    assert b"".join(d for _, _, _, d in rows(path)) == b"".join(digests)
    assert [await batcher.redelivered(d) for d in digests] == [False, False, True, True, True]
    await stop(runner)
    buf.close()

    buf = Buffer(path)  # a restart: the window comes back from the newest rows
    try:
        again = Batcher(buf, settings, EdgeStats(), digest_window=3)
        assert again.load_digests() == 3
        assert [await again.redelivered(d) for d in digests] == [False, False, True, True, True]
    finally:
        buf.close()


async def test_redelivered_waits_for_a_commit_in_progress(buffer: Buffer) -> None:
    settings = BufferSettings(
        flush_interval_ms=60_000, max_batch_readings=100, max_pending_readings=100
    )
    batcher = Batcher(buffer, settings, EdgeStats())
    runner = await started(batcher)
    original = asyncio.create_task(batcher.submit([reading(1)], "s", b"DIGEST01"))
    await poll(lambda: batcher.queued_readings == 1, "the original to be queued")
    duplicate = asyncio.create_task(batcher.redelivered(b"DIGEST01"))
    assert not await batcher.redelivered(b"OTHER-01")
    await batcher.drain()
    assert await asyncio.wait_for(duplicate, 10) is True
    await original
    assert len(rows(buffer.path)) == 1
    await stop(runner)


async def test_close_commits_what_was_submitted_and_refuses_more(buffer: Buffer) -> None:
    settings = BufferSettings(
        flush_interval_ms=60_000, max_batch_readings=100, max_pending_readings=100
    )
    batcher = Batcher(buffer, settings, EdgeStats())
    runner = await started(batcher)
    waiting = [asyncio.create_task(batcher.submit([reading(i)], "s")) for i in range(7)]
    await poll(lambda: batcher.queued_readings == 7, "7 readings queued")
    await batcher.close()
    await asyncio.gather(*waiting)
    assert [count for _, count, _, _ in rows(buffer.path)] == [7]
    with pytest.raises(BatcherClosedError):
        await batcher.submit([reading(8)], "s")
    await stop(runner)


# --------------------------------------------------------------------------- disk budget

MIB = 1 << 20


def noise(n: int, seed: int) -> bytes:
    """Incompressible bytes (a body SQLite cannot store in less than ``n`` bytes)."""
    return random.Random(seed).randbytes(n)


def unsent_seqs(buf: Buffer) -> list[int]:
    return [b.seq for b in buf.unsent(0, 1_000_000)]


def test_drop_oldest_keeps_the_file_within_the_budget_and_says_what_it_dropped(
    tmp_path: Path,
) -> None:
    buf = Buffer(tmp_path / "b.sqlite3", limits=BufferLimits(max_bytes=MIB))
    try:
        dropped = {"a": 0, "b": 0}
        batches = 0
        for i in range(400):  # 400 x 8 KiB = 3.2 MiB through a 1 MiB budget
            appended = buf.append_batch(noise(8192, i), 10, i, i, 1, b"", {"a": 7, "b": 3})
            batches += 1
            if appended.dropped is not None:
                assert appended.dropped.reason == "full"
                for name, n in appended.dropped.sources.items():
                    dropped[name] += n
            size = buf.stats().file_bytes
            assert size <= MIB * 1.01, f"after batch {i}: {size} bytes"
        st = buf.stats()
        kept = unsent_seqs(buf)
        # The oldest went, in order; what is kept plus what was dropped is everything.
        assert kept == list(range(kept[0], 401))
        assert dropped == {"a": 7 * (kept[0] - 1), "b": 3 * (kept[0] - 1)}
        assert st.readings_unsent + sum(dropped.values()) == 10 * batches
        assert st.used_bytes <= BufferLimits(max_bytes=MIB).data_limit
        assert st.batches_unsent * 8192 > 0.6 * MIB  # the budget is used, not wasted
        assert (st.max_bytes, st.policy) == (MIB, "drop-oldest")
    finally:
        buf.close()


def test_sent_history_gives_way_before_unsent_batches(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.sqlite3", limits=BufferLimits(max_bytes=MIB))
    try:
        first = [buf.append(noise(8192, i), 1, i, i, 1) for i in range(60)]
        buf.mark_sent(first)  # 60 sent batches: history
        later = [buf.append_batch(noise(8192, 100 + i), 1, i, i, 1) for i in range(40)]
        assert all(a.dropped is None for a in later)  # history made the room
        assert unsent_seqs(buf) == [a.seq for a in later]
        assert buf.stats().batches_sent < 60
    finally:
        buf.close()


def test_refuse_new_refuses_when_unsent_batches_fill_the_budget_and_never_drops(
    tmp_path: Path,
) -> None:
    buf = Buffer(tmp_path / "b.sqlite3", limits=BufferLimits(max_bytes=MIB, policy="refuse-new"))
    try:
        seqs: list[int] = []
        refused: BufferFullError | None = None
        for i in range(400):
            try:
                seqs.append(buf.append(noise(8192, i), 1, i, i, 1))
            except BufferFullError as exc:
                refused = exc
                break
        assert refused is not None
        assert refused.reason == "full"
        assert "policy refuse-new" in str(refused)
        assert 60 < len(seqs) < 128
        assert unsent_seqs(buf) == seqs  # nothing dropped, the refused one not stored
        assert buf.stats().file_bytes <= MIB * 1.01
        buf.mark_sent(seqs[:10])  # the forwarder got ten through: room for new ones again
        new = buf.append_batch(noise(8192, 999), 1, 0, 0, 1)
        assert new.dropped is None
        assert unsent_seqs(buf) == [*seqs[10:], new.seq]
    finally:
        buf.close()


def test_maintain_prunes_history_and_old_unsent_batches_and_shrinks_the_file(
    tmp_path: Path,
) -> None:
    limits = BufferLimits(max_bytes=64 * MIB, sent_history_s=3600, max_age_s=7200)
    buf = Buffer(tmp_path / "b.sqlite3", limits=limits)
    try:
        seqs = [buf.append_batch(noise(8192, i), 2, i, i, 1, b"", {"x": 2}).seq for i in range(600)]
        grown = buf.stats().file_bytes
        assert grown > 4 * MIB
        now = buf.unsent(0, 1000)[-1].created_us  # the newest: appends take a while
        buf.mark_sent(seqs[:500], sent_us=now)
        assert buf.maintain(now + 3599 * 10**6) is None  # nothing old enough yet
        assert buf.stats().batches_sent == 500
        dropped = buf.maintain(now + 3601 * 10**6)  # history expired
        assert dropped is None
        st = buf.stats()
        assert (st.batches_sent, st.batches_unsent) == (0, 100)
        assert st.file_bytes < grown / 3  # the free pages went back to the file system
        dropped = buf.maintain(now + 7201 * 10**6)  # and the unsent ones are now too old
        assert dropped is not None
        assert (dropped.batches, dropped.readings, dropped.sources, dropped.reason) == (
            100,
            200,
            {"x": 200},
            "age",
        )
        assert unsent_seqs(buf) == []
    finally:
        buf.close()


def test_a_version_1_buffer_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        PRAGMA journal_mode = WAL;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE batches (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, created_us INTEGER NOT NULL,
            count INTEGER NOT NULL, t_min INTEGER, t_max INTEGER, codec INTEGER NOT NULL,
            body BLOB NOT NULL, digests BLOB NOT NULL DEFAULT x'', sent_us INTEGER);
        CREATE INDEX batches_unsent ON batches (seq) WHERE sent_us IS NULL;
        INSERT INTO meta VALUES ('schema_version', '1');
        INSERT INTO batches (created_us, count, codec, body) VALUES (1, 5, 1, x'00');
        INSERT INTO batches (created_us, count, codec, body) VALUES (2, 6, 1, x'01');
        """
    )
    conn.close()
    buf = Buffer(path, limits=BufferLimits(max_bytes=MIB, max_age_s=1))
    try:
        assert unsent_seqs(buf) == [1, 2]
        dropped = buf.maintain()  # rows without sources are dropped as 'unknown'
        assert dropped is not None
        assert dropped.sources == {"unknown": 11}
    finally:
        buf.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
    conn.close()


async def test_the_batcher_counts_what_drop_oldest_drops_per_source(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.sqlite3", limits=BufferLimits(max_bytes=MIB))
    stats = EdgeStats()
    batcher = Batcher(buf, BufferSettings(flush_interval_ms=1, max_batch_readings=400), stats)
    runner = await started(batcher)
    rng = random.Random(7)
    sent = 0
    try:
        for i in range(400):  # incompressible values: ~8 bytes per reading in the body
            readings = [
                Reading("d", "s", 1_700_000_000_000_000 + 400 * i + k, rng.random())
                for k in range(400)
            ]
            await batcher.submit(readings, "a" if i % 3 else "b")
            sent += 400
            assert buf.stats().file_bytes <= MIB * 1.01
        dropped = stats.counters["readings-dropped"]
        assert dropped > 0
        assert buf.stats().readings_unsent + dropped == sent
        per_source = {n: s.dropped.get("full", 0) for n, s in stats.sources.items()}
        assert sum(per_source.values()) == dropped
        assert per_source["a"] > 0
        assert per_source["b"] > 0
    finally:
        await stop(runner)
        buf.close()


async def test_refuse_new_holds_mqtt_and_refuses_the_rest_until_batches_are_sent(
    tmp_path: Path,
) -> None:
    buf = Buffer(tmp_path / "b.sqlite3", limits=BufferLimits(max_bytes=MIB, policy="refuse-new"))
    stats = EdgeStats()
    batcher = Batcher(buf, BufferSettings(flush_interval_ms=1, max_batch_readings=1000), stats)
    runner = await started(batcher)
    rng = random.Random(8)

    def block(i: int) -> list[Reading]:
        return [Reading("d", "s", 1000 * i + k, rng.random()) for k in range(1000)]

    try:
        i = 0
        refused = False
        while not refused and i < 1000:
            try:
                await batcher.submit(block(i), "serial")
            except BufferFullError:
                refused = True
            i += 1
        assert refused
        assert stats.sources["serial"].refused == {"full": 1000}
        assert batcher.state.startswith("full: ")
        held = asyncio.create_task(batcher.submit(block(i + 1), "mqtt", hold=True))
        await poll(lambda: stats.counters["commit-errors"] >= 3, "the held submit retried")
        assert not held.done()
        unsent = unsent_seqs(buf)
        await buf.mark_sent_async(unsent[:5])  # the uplink came back for a moment
        await asyncio.wait_for(held, 20)
        assert batcher.state == "ok"
        assert stats.counters["readings-dropped"] == 0
        assert unsent_seqs(buf)[:-1] == unsent[5:]
    finally:
        await stop(runner)
        buf.close()


def test_drop_oldest_never_drops_a_batch_in_flight(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.sqlite3", limits=BufferLimits(max_bytes=MIB))
    try:
        first = [buf.append(noise(8192, i), 1, i, i, 1) for i in range(3)]
        for seq in first[:2]:
            buf.pin(seq)  # the forwarder is publishing these
        for i in range(200):
            buf.append(noise(8192, 100 + i), 1, i, i, 1)
        kept = unsent_seqs(buf)
        assert kept[:2] == first[:2]  # pinned: kept while newer ones went
        assert first[2] not in kept
        buf.unpin(first[:2])
        buf.append(noise(8192, 999), 1, 0, 0, 1)
        assert first[0] not in unsent_seqs(buf)  # unpinned: the oldest goes first again
    finally:
        buf.close()


def test_a_batch_larger_than_the_budget_is_too_large_not_full(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.sqlite3", limits=BufferLimits(max_bytes=MIB))
    try:
        small = buf.append(noise(8192, 1), 1, 0, 0, 1)
        buf.pin(small)
        with pytest.raises(BufferFullError) as exc:
            buf.append(noise(2 * MIB, 2), 1, 0, 0, 1)
        assert exc.value.too_large is False  # a pinned batch could still give way later
        buf.unpin([small])
        buf.mark_sent([small])
        with pytest.raises(BufferFullError) as exc:
            buf.append(noise(2 * MIB, 2), 1, 0, 0, 1)
        assert exc.value.too_large is True
        assert unsent_seqs(buf) == []
    finally:
        buf.close()
