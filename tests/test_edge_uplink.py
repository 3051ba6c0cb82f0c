"""Uplink budgets: the token bucket and the UTC-day budget alone (injected clocks), then the
forwarder under them against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from contract.names import HDR_SEQ, telemetry_subject
from edge.buffer import Buffer
from edge.forwarder import Forwarder
from edge.stats import EdgeStats
from edge.uplink import DAY_FILE, DayBudget, TokenBucket, Uplink, message_bytes
from simulator.servers import NatsServer
from tests.test_edge_forwarder import KEY, TENANT, add_batches, settings
from tests.test_edge_support import create_stream, poll, stream_messages

pytestmark = pytest.mark.timeout(120)

DAY_S = 86_400.0
NOON = datetime(2026, 11, 28, 12, tzinfo=UTC).timestamp()


class Clock:
    """A hand-moved clock (monotonic or wall)."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_message_bytes_counts_subject_header_block_and_body() -> None:
    # NATS/1.0\r\n, "k: v\r\n" per header, \r\n; then the body; plus the subject.
    assert message_bytes("a.b", {"K": "vv"}, b"12345") == 3 + (10 + 7 + 2) + 5
    assert message_bytes("a.b", {}, b"") == 3 + 12


def test_token_bucket_paces_and_lets_a_big_message_go_when_full() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=100, capacity=100, clock=clock)
    assert bucket.wait_s(100) == 0
    bucket.take(100)
    assert bucket.wait_s(50) == pytest.approx(0.5)
    clock.t += 0.5
    assert bucket.wait_s(50) == 0
    bucket.take(50)
    # 1,000 bytes: more than the bucket holds; it goes when the bucket is full, leaving a debt.
    assert bucket.wait_s(1000) == pytest.approx(1.0)
    clock.t += 1.0
    assert bucket.wait_s(1000) == 0
    bucket.take(1000)
    assert bucket.wait_s(1) == pytest.approx(9.01)  # 900 bytes of debt, then one byte


def test_day_budget_persists_and_starts_again_on_the_next_utc_day(tmp_path: Path) -> None:
    wall, mono = Clock(NOON), Clock()
    budget = DayBudget(tmp_path / DAY_FILE, limit=1000, wall=wall, clock=mono)
    budget.charge(600)
    assert budget.allows(400)
    assert not budget.allows(401)
    budget.save()
    again = DayBudget(tmp_path / DAY_FILE, limit=1000, wall=wall, clock=mono)  # a restart
    assert (again.used, str(again.day)) == (600, "2026-11-28")
    assert again.seconds_to_next_day() == pytest.approx(12 * 3600)
    wall.t += 12 * 3600  # midnight UTC
    assert again.allows(1000)
    assert (again.used, str(again.day)) == (0, "2026-11-29")


def test_a_message_larger_than_the_day_budget_goes_alone_first_in_a_day(tmp_path: Path) -> None:
    wall = Clock(NOON)
    budget = DayBudget(tmp_path / DAY_FILE, limit=1000, wall=wall, clock=Clock())
    assert budget.allows(5000)  # nothing sent today: it goes rather than never
    budget.charge(5000)
    assert not budget.allows(1)
    wall.t += DAY_S
    budget.charge(10)
    assert not budget.allows(5000)  # not after something else went that day


def test_day_budget_keeps_the_later_day_when_the_clock_steps_back(tmp_path: Path) -> None:
    wall, mono = Clock(NOON + DAY_S), Clock()
    budget = DayBudget(tmp_path / DAY_FILE, limit=1000, wall=wall, clock=mono)
    budget.charge(900)
    budget.save()
    wall.t = NOON  # the clock steps back a day: no second budget
    again = DayBudget(tmp_path / DAY_FILE, limit=1000, wall=wall, clock=mono)
    assert (again.used, str(again.day)) == (900, "2026-11-29")
    assert not again.allows(101)


def test_day_budget_ignores_an_unreadable_file_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / DAY_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING, "edge.uplink"):
        budget = DayBudget(tmp_path / DAY_FILE, limit=10, wall=Clock(NOON), clock=Clock())
    assert budget.used == 0
    assert "unreadable" in caplog.text


def test_uplink_pauses_on_the_day_budget_and_limits_the_backlog_share(tmp_path: Path) -> None:
    wall, mono = Clock(NOON), Clock()
    uplink = Uplink(tmp_path, 1000, 5000, backlog_share=0.25, clock=mono, wall=wall)
    assert uplink.wait_s(200) == 0
    assert uplink.wait_s(200, backlog_limited=True) == 0
    uplink.charge(200, backlog=True)
    # The backlog's bucket (250 B/s) has 50 bytes left; the whole link still has 800.
    assert uplink.wait_s(200) == 0
    assert uplink.wait_s(200, backlog_limited=True) == pytest.approx(0.6)
    for _ in range(24):
        mono.t += 1
        uplink.charge(200)
    assert uplink.day.used == 5000
    assert uplink.wait_s(1) > 0
    status = uplink.as_json()
    assert status["paused_by_budget"] is True
    assert (status["bytes_today"], status["bytes_per_day"], status["bytes_per_s"]) == (
        5000,
        5000,
        1000,
    )
    assert status["rate_bytes_per_s"] == pytest.approx(5 * 200 / 5)  # the last 5 seconds
    wall.t += DAY_S
    assert uplink.wait_s(1) == 0
    assert uplink.as_json()["paused_by_budget"] is False


# --------------------------------------------------------------------- with a real server


@pytest.fixture
def buffer(tmp_path: Path) -> Iterator[Buffer]:
    buf = Buffer(tmp_path / "buffer.sqlite3", "normal")  # durability is not under test
    yield buf
    buf.close()


@contextlib.asynccontextmanager
async def forwarding(buffer: Buffer, url: str, edge: str, **kw: Any) -> AsyncIterator[Forwarder]:
    kw.setdefault("clock_interval_s", 0)
    forwarder = Forwarder(settings(url, 4, **kw), buffer, TENANT, edge, KEY, EdgeStats())
    task = asyncio.create_task(forwarder.run())
    try:
        yield forwarder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def sizes(buffer: Buffer, forwarder: Forwarder, edge: str) -> list[int]:
    """The bytes each unsent batch costs on the uplink (subject, headers, body)."""
    subject = telemetry_subject(TENANT, edge)
    return [message_bytes(subject, forwarder._headers(b), b.body) for b in buffer.unsent(0, 1000)]


async def test_the_day_budget_stops_forwarding_across_a_restart(
    buffer: Buffer, nats_server: NatsServer, unique_name: str, tmp_path: Path
) -> None:
    await create_stream(nats_server.url)
    add_batches(buffer, 5)
    probe = Forwarder(settings(nats_server.url), buffer, TENANT, unique_name, KEY, EdgeStats())
    cost = sizes(buffer, probe, unique_name)
    budget = sum(cost[:3])  # three batches fit, the fourth does not
    async with forwarding(buffer, nats_server.url, unique_name, uplink_bytes_per_day=budget) as fw:
        await poll(lambda: fw.status_json()["uplink"]["paused_by_budget"], "the budget to run out")
        assert buffer.stats().batches_unsent == 2
        assert fw.status_json()["uplink"]["bytes_today"] == budget
    saved = json.loads((tmp_path / DAY_FILE).read_text())
    assert saved == {"day": datetime.now(tz=UTC).date().isoformat(), "bytes": budget}
    # A restart the same day: still paused, nothing more goes.
    async with forwarding(buffer, nats_server.url, unique_name, uplink_bytes_per_day=budget) as fw:
        await poll(lambda: fw.status_json()["uplink"]["paused_by_budget"], "paused again")
        assert buffer.stats().batches_unsent == 2
    # The count of an earlier day does not hold the next day back.
    (tmp_path / DAY_FILE).write_text(json.dumps({"day": "2000-01-01", "bytes": budget}))
    async with forwarding(buffer, nats_server.url, unique_name, uplink_bytes_per_day=budget) as fw:
        await poll(lambda: buffer.stats().batches_unsent == 0, "the rest on a new day")
        assert fw.status_json()["uplink"]["bytes_today"] == sum(cost[3:])
    seqs = sorted(int(m.headers[HDR_SEQ]) for m in await stream_messages(nats_server.url))
    assert seqs == [1, 2, 3, 4, 5]


async def test_the_byte_rate_is_not_exceeded(
    buffer: Buffer, nats_server: NatsServer, unique_name: str
) -> None:
    await create_stream(nats_server.url)
    add_batches(buffer, 40)
    probe = Forwarder(settings(nats_server.url), buffer, TENANT, unique_name, KEY, EdgeStats())
    total = sum(sizes(buffer, probe, unique_name))
    rate = total // 2  # the bucket holds one second's worth: the rest needs at least 1 s
    start = time.monotonic()
    async with forwarding(buffer, nats_server.url, unique_name, uplink_bytes_per_s=rate) as fw:
        await poll(lambda: buffer.stats().batches_unsent == 0, "every batch")
        elapsed = time.monotonic() - start
        uplink = fw.status_json()["uplink"]
    assert elapsed >= (total - rate) / rate * 0.99
    assert uplink["bytes_total"] == total
    assert uplink["rate_bytes_per_s"] > 0
    assert len(await stream_messages(nats_server.url)) == 40
