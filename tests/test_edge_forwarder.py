"""The forwarder against a real nats-server with JetStream: headers, acks, outages, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from contract.codec import CODEC_VERSION, decode_batch, encode_batch
from contract.model import Reading
from contract.names import (
    HDR_CODEC,
    HDR_COUNT,
    HDR_EDGE,
    HDR_MSG_ID,
    HDR_SEQ,
    HDR_SIGNATURE,
    telemetry_subject,
)
from contract.signing import generate_key, public_key_bytes, verify_batch
from edge.buffer import Buffer, BufferLimits
from edge.config import ForwarderSettings
from edge.forwarder import Forwarder
from edge.stats import EdgeStats
from simulator.servers import NatsServer
from tests.test_edge_support import create_stream, poll, stream_messages

pytestmark = pytest.mark.timeout(120)

KEY = generate_key()
TENANT = "acme"


def settings(url: str, max_in_flight: int = 4, **kw: Any) -> ForwarderSettings:
    return ForwarderSettings(
        nats_url=url,
        max_in_flight=max_in_flight,
        ack_timeout_s=1.0,
        backoff_initial_s=0.02,
        backoff_max_s=0.3,
        **kw,
    )


def add_batches(buffer: Buffer, n: int, first: int = 0) -> list[int]:
    seqs = []
    for i in range(first, first + n):
        readings = [
            Reading("dev", f"s{k}", 1_700_000_000_000_000 + i * 1000 + k, i + k) for k in range(3)
        ]
        seqs.append(buffer.append(encode_batch(readings), 3, 0, 0, CODEC_VERSION))
    return seqs


@pytest.fixture
def buffer(tmp_path: Path) -> Iterator[Buffer]:
    buf = Buffer(tmp_path / "buffer.sqlite3", "normal")  # durability is not under test
    yield buf
    buf.close()


@contextlib.asynccontextmanager
async def forwarding(
    buffer: Buffer, url: str, edge: str, max_in_flight: int = 4, **kw: Any
) -> AsyncIterator[tuple[Forwarder, EdgeStats]]:
    stats = EdgeStats()
    forwarder = Forwarder(settings(url, max_in_flight, **kw), buffer, TENANT, edge, KEY, stats)
    task = asyncio.create_task(forwarder.run())
    try:
        yield forwarder, stats
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert not stats.forwarder.connected


def unsent(buffer: Buffer) -> int:
    return buffer.stats().batches_unsent


async def test_batches_reach_the_stream_with_headers_and_signature(
    buffer: Buffer, nats_server: NatsServer, unique_name: str
) -> None:
    await create_stream(nats_server.url)
    seqs = add_batches(buffer, 6)
    async with forwarding(buffer, nats_server.url, unique_name) as (_, stats):
        await poll(lambda: unsent(buffer) == 0, "all batches marked sent")
        assert (stats.forwarder.batches_sent, stats.forwarder.readings_sent) == (6, 18)
        assert stats.counters["batches-forwarded"] == 6
        assert stats.forwarder.in_flight == 0
        assert stats.forwarder.connected
    msgs = await stream_messages(nats_server.url)
    assert sorted(int(m.headers[HDR_SEQ]) for m in msgs) == seqs
    bodies = {b.seq: b.body for b in _all_rows(buffer)}
    for m in msgs:
        seq = int(m.headers[HDR_SEQ])
        assert m.subject == telemetry_subject(TENANT, unique_name)
        sig = m.headers[HDR_SIGNATURE]
        assert m.headers[HDR_MSG_ID] == f"{TENANT}.{unique_name}:{seq}:{sig[:22]}"
        assert m.headers[HDR_EDGE] == unique_name
        assert m.headers[HDR_CODEC] == str(CODEC_VERSION)
        assert m.headers[HDR_COUNT] == "3"
        assert m.data == bodies[seq]
        assert decode_batch(m.data).count == 3
        verify_batch(
            public_key_bytes(KEY),
            TENANT,
            unique_name,
            seq,
            CODEC_VERSION,
            m.data,
            m.headers[HDR_SIGNATURE],
        )
    st = buffer.stats()
    assert (st.batches_sent, st.readings_sent, st.batches_unsent) == (6, 18, 0)


def _all_rows(buffer: Buffer) -> list[_Row]:
    conn = sqlite3.connect(buffer.path)
    try:
        return [_Row(seq, body) for seq, body in conn.execute("SELECT seq, body FROM batches")]
    finally:
        conn.close()


class _Row:
    def __init__(self, seq: int, body: bytes) -> None:
        self.seq = seq
        self.body = body


async def test_a_new_commit_wakes_the_forwarder(
    buffer: Buffer, nats_server: NatsServer, unique_name: str
) -> None:
    await create_stream(nats_server.url)
    async with forwarding(buffer, nats_server.url, unique_name) as (forwarder, stats):
        await poll(lambda: stats.forwarder.connected, "the connection")
        for round_ in range(3):
            add_batches(buffer, 2, first=round_ * 2)
            forwarder.notify()  # what the batcher does on every commit
            await poll(lambda: unsent(buffer) == 0, f"round {round_} to be sent")
    assert len(await stream_messages(nats_server.url)) == 6


async def test_waits_for_the_stream_to_exist(
    buffer: Buffer, nats_server: NatsServer, unique_name: str
) -> None:
    add_batches(buffer, 3)
    async with forwarding(buffer, nats_server.url, unique_name) as (_, stats):
        await poll(lambda: stats.counters["publish-errors"] >= 3, "failed publishes (no stream)")
        assert unsent(buffer) == 3
        assert stats.forwarder.last_error is not None
        await create_stream(nats_server.url)  # the hub comes up
        await poll(lambda: unsent(buffer) == 0, "the batches after the stream appeared")
    assert sorted(int(m.headers[HDR_SEQ]) for m in await stream_messages(nats_server.url)) == [
        1,
        2,
        3,
    ]


async def test_nats_down_at_start(
    buffer: Buffer, nats_server: NatsServer, unique_name: str
) -> None:
    await create_stream(nats_server.url)
    nats_server.stop()
    add_batches(buffer, 2)
    async with forwarding(buffer, nats_server.url, unique_name) as (_, stats):
        await poll(lambda: stats.forwarder.last_error is not None, "a failed connect")
        assert not stats.forwarder.connected
        assert unsent(buffer) == 2
        nats_server.start()  # same port, same JetStream store
        await poll(lambda: unsent(buffer) == 0, "the batches once NATS is back", 30)
    assert len(await stream_messages(nats_server.url)) == 2


async def test_a_nats_restart_midway_loses_nothing_and_stores_nothing_twice(
    buffer: Buffer, nats_server: NatsServer, unique_name: str
) -> None:
    await create_stream(nats_server.url)
    add_batches(buffer, 300)
    async with forwarding(buffer, nats_server.url, unique_name, max_in_flight=8) as (
        forwarder,
        stats,
    ):
        await poll(lambda: unsent(buffer) < 300, "the first acks")
        restart = asyncio.create_task(asyncio.to_thread(nats_server.restart))  # while publishing
        await poll(lambda: not stats.forwarder.connected, "the forwarder to see the outage")
        add_batches(buffer, 30, first=300)  # committed during the outage
        forwarder.notify()
        await restart
        await poll(lambda: unsent(buffer) == 0, "every batch acknowledged", 60)
        assert stats.forwarder.batches_sent == 330
    msgs = await stream_messages(nats_server.url)
    seqs = Counter(int(m.headers[HDR_SEQ]) for m in msgs)
    assert set(seqs) == set(range(1, 331))
    assert max(seqs.values()) == 1  # each seq stored once
    assert len(msgs) == 330


async def test_a_restarted_edge_resumes_from_the_unsent_rows(
    tmp_path: Path, nats_server: NatsServer, unique_name: str
) -> None:
    await create_stream(nats_server.url)
    path = tmp_path / "buffer.sqlite3"
    buffer = Buffer(path)
    add_batches(buffer, 5)
    async with forwarding(buffer, nats_server.url, unique_name):
        await poll(lambda: unsent(buffer) == 0, "the first 5")
    add_batches(buffer, 5, first=5)  # committed while the forwarder was not running
    buffer.close()
    # The ack of batch 3 was lost in the crash: it is unsent again, and its retry is a duplicate.
    conn = sqlite3.connect(path)
    conn.execute("UPDATE batches SET sent_us = NULL WHERE seq = 3")
    conn.commit()
    conn.close()

    buffer = Buffer(path)
    try:
        assert [b.seq for b in buffer.unsent(0, 100)] == [3, 6, 7, 8, 9, 10]
        async with forwarding(buffer, nats_server.url, unique_name) as (_, stats):
            await poll(lambda: unsent(buffer) == 0, "the rest")
            assert stats.forwarder.batches_sent == 6
    finally:
        buffer.close()
    msgs = await stream_messages(nats_server.url)
    assert sorted(int(m.headers[HDR_SEQ]) for m in msgs) == list(range(1, 11))


def commit(buffer: Buffer, forwarder: Forwarder, n: int, first: int) -> list[int]:
    """Commit ``n`` batches and tell the forwarder, as the batcher does (with the seq)."""
    seqs = add_batches(buffer, n, first)
    for seq in seqs:
        forwarder.notify(seq)
    return seqs


async def test_live_batches_go_ahead_of_the_backlog(
    buffer: Buffer, nats_server: NatsServer, unique_name: str
) -> None:
    # The hub (its stream) is away: 1,000 batches wait from before a restart, 1,000 more are
    # committed while the forwarder runs and retries; both are backlog once older than the
    # live window.
    before = add_batches(buffer, 1000)
    async with forwarding(
        buffer, nats_server.url, unique_name, live_window_s=1.5, backlog_share=0.25
    ) as (forwarder, stats):
        during = commit(buffer, forwarder, 1000, first=1000)
        backlog = set(before + during)
        await poll(
            lambda: forwarder.status_json()["drain"]["live_from_seq"] > max(backlog),
            "the outage's batches to leave the live window",
        )
        # Fresh data as the link returns (the window of 1.5 s is well above the retries'
        # backoff of at most 0.3 s, so these are still live when the stream is there). The
        # publishes retried through the outage hold the window: 1 backlog batch and 3 of the
        # outage's first batches, live when they were sent.
        live = commit(buffer, forwarder, 3, first=2000)
        await create_stream(nats_server.url)
        await poll(lambda: unsent(buffer) < 1700, "the backlog to drain for a while", 60)
        later = commit(buffer, forwarder, 3, first=2003)  # fresh data while it drains
        await poll(lambda: unsent(buffer) == 0, "every batch acknowledged", 60)
        assert stats.forwarder.batches_sent == 2006
    order = [int(m.headers[HDR_SEQ]) for m in await stream_messages(nats_server.url)]
    assert sorted(order) == list(range(1, 2007))  # every batch exactly once
    position = {seq: i for i, seq in enumerate(order)}
    last_backlog = max(position[s] for s in backlog)
    # The fresh batches of the link's return are among the first ones stored: behind what was
    # in flight when it returned (max_in_flight = 4; retried at once when the first one gets
    # through) and the backlog's share of the window meanwhile (1 of 4 slots).
    # Those committed during the drain are stored before the backlog is finished.
    assert max(position[s] for s in live) < 2 * 4 + len(live), order[:12]
    assert max(position[s] for s in later) < last_backlog


async def test_batches_dropped_by_the_buffer_budget_are_not_published(
    tmp_path: Path, nats_server: NatsServer, unique_name: str
) -> None:
    """drop-oldest deletes the oldest unsent batches during an outage, but never one whose
    publish is in flight (it may reach the hub: it is not lost); batches it deleted, also
    those the forwarder had queued, must not reach the stream (they are counted as dropped),
    and every batch left is published exactly once."""
    buffer = Buffer(tmp_path / "buffer.sqlite3", limits=BufferLimits(max_bytes=2 * 1024 * 1024))
    try:
        async with forwarding(buffer, nats_server.url, unique_name) as (forwarder, stats):
            appended = [buffer.append_batch(os.urandom(16_384), 1, 0, 0, CODEC_VERSION)]
            forwarder.notify(appended[0].seq)
            await poll(lambda: stats.counters["publish-errors"] >= 1, "retries (no stream)")
            for _ in range(300):  # ~4.7 MiB into a 2 MiB budget
                appended.append(buffer.append_batch(os.urandom(16_384), 1, 0, 0, CODEC_VERSION))
                forwarder.notify(appended[-1].seq)
            dropped = sum(a.dropped.batches for a in appended if a.dropped is not None)
            assert dropped > 100
            left = {b.seq for b in buffer.unsent(0, 1000)}
            assert len(left) == 301 - dropped
            assert 1 in left  # being retried (in flight): the budget drops others
            await create_stream(nats_server.url)  # the link is back
            await poll(lambda: unsent(buffer) == 0, "the batches left")
        seqs = Counter(int(m.headers[HDR_SEQ]) for m in await stream_messages(nats_server.url))
        assert set(seqs) == left
        assert set(seqs.values()) == {1}
    finally:
        buffer.close()


async def test_retries_go_at_once_when_the_link_is_back(
    buffer: Buffer, nats_server: NatsServer, unique_name: str
) -> None:
    """Publishes that failed during an outage wait out a backoff of 10-20 s here; when NATS is
    back they go at once instead of holding the window until then."""
    await create_stream(nats_server.url)
    stats = EdgeStats()
    slow = ForwarderSettings(
        nats_url=nats_server.url,
        max_in_flight=4,
        ack_timeout_s=0.5,
        backoff_initial_s=20.0,
        backoff_max_s=20.0,
        clock_interval_s=0,
    )
    forwarder = Forwarder(slow, buffer, TENANT, unique_name, KEY, stats)
    task = asyncio.create_task(forwarder.run())
    try:
        await poll(lambda: stats.forwarder.connected, "the connection")
        nats_server.stop()
        await poll(lambda: not stats.forwarder.connected, "the outage")
        for seq in add_batches(buffer, 6):
            forwarder.notify(seq)
        await poll(lambda: stats.counters["publish-errors"] >= 4, "4 failed publishes", 10)
        nats_server.start()
        # Well before the first retry is due (10 s at the earliest):
        await poll(lambda: unsent(buffer) == 0, "every batch, right after the reconnect", 8)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sorted(int(m.headers[HDR_SEQ]) for m in await stream_messages(nats_server.url)) == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
