"""Clock offset over NATS, the edge's status at the hub, and clock jumps on the edge: the
estimate alone (injected clocks), then forwarder and hub status listener on a real nats-server,
the hub store and the API's /edges."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from aiohttp.test_utils import TestClient, TestServer

from contract.names import HDR_SEQ, status_subject
from contract.signing import public_key_bytes
from edge.buffer import Buffer
from edge.clock import ClockEstimate
from edge.forwarder import Forwarder
from edge.stats import EdgeStats
from hub.api import make_app
from hub.auth import TokenAuthority
from hub.config import ApiSettings, HubConfig, HubSettings, NatsSettings, TlsSettings
from hub.registry import Registry
from hub.service import authority, open_registry, run_hub
from hub.status import StatusListener
from hub.store import SqliteStore
from simulator.servers import NatsServer
from tests.test_edge_forwarder import KEY, TENANT, add_batches, settings
from tests.test_edge_support import create_stream, poll, stream_messages

pytestmark = pytest.mark.timeout(120)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_offset_from_the_midpoint_of_the_fastest_round_trip(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wall_us = Clock(1_000_000_000_000)
    mono = Clock(50.0)
    estimate = ClockEstimate(warn_offset_s=2.0, wall_us=lambda: int(wall_us()), mono=mono)

    def hub(ahead_s: float, rtt_s: float, hub_at: float) -> Any:
        """A request that takes ``rtt_s``; the hub reads its clock ``hub_at`` of the way."""

        async def request() -> bytes:
            now = wall_us() + ahead_s * 1e6 + hub_at * rtt_s * 1e6
            mono.t += rtt_s
            wall_us.t += rtt_s * 1e6
            return json.dumps({"now_us": int(now)}).encode()

        return request

    assert await estimate.measure(hub(0.0, 0.010, 0.5)) == (0, 10_000)
    # A slow, lopsided round trip gives a worse sample; the fast one is kept.
    assert await estimate.measure(hub(0.0, 0.400, 0.9)) == (160_000, 400_000)
    assert estimate.best == (0, 10_000)
    with caplog.at_level(logging.INFO, "edge.clock"):
        for _ in range(5):  # the hub is 3 s ahead now (the edge clock is behind)
            await estimate.measure(hub(3.0, 0.004, 0.5))
        assert estimate.best == (3_000_000, 4_000)
        status = estimate.as_json()
        assert (status["offset_ms"], status["rtt_ms"], status["warning"]) == (3000.0, 4.0, True)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1  # once, not on every sample
        assert "-3.000 s off the hub's" in warnings[0].getMessage()
        for _ in range(5):
            await estimate.measure(hub(0.5, 0.004, 0.5))
        assert not estimate.as_json()["warning"]
        assert "within 2.000 s of the hub's again" in caplog.text

    async def broken() -> bytes:
        return b"{}"

    assert await estimate.measure(broken) is None
    assert estimate.as_json()["failures"] == 1
    assert "not a clock answer" in str(estimate.as_json()["last_error"])


# --------------------------------------------------------------------- with a real server


@pytest.fixture
def buffer(tmp_path: Path) -> Iterator[Buffer]:
    buf = Buffer(tmp_path / "buffer.sqlite3", "normal")  # durability is not under test
    yield buf
    buf.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.sqlite3")
    yield s
    s.close()


@contextlib.asynccontextmanager
async def hub_listener(url: str, store: SqliteStore) -> AsyncIterator[StatusListener]:
    listener = StatusListener(url, store)
    task = asyncio.create_task(listener.run())
    try:
        await poll(lambda: listener.connected, "the hub's status listener")
        yield listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def edge(
    buffer: Buffer, url: str, name: str, **kw: Any
) -> AsyncIterator[tuple[Forwarder, EdgeStats]]:
    stats = EdgeStats()
    forwarder = Forwarder(settings(url, **kw), buffer, TENANT, name, KEY, stats)

    async def status() -> dict[str, Any]:
        return {
            "edge": name,
            "tenant": TENANT,
            "buffer": buffer.stats().as_json(),
            **stats.as_json(),
            **forwarder.status_json(),
        }

    forwarder.status_source = status
    task = asyncio.create_task(forwarder.run())
    try:
        yield forwarder, stats
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_clock_offset_and_status_reach_the_hub(
    buffer: Buffer, store: SqliteStore, nats_server: NatsServer, unique_name: str, tmp_path: Path
) -> None:
    await create_stream(nats_server.url)
    add_batches(buffer, 4)
    async with (
        hub_listener(nats_server.url, store) as listener,
        edge(buffer, nats_server.url, unique_name, clock_interval_s=0.1, status_interval_s=0.1) as (
            forwarder,
            stats,
        ),
    ):
        stats.dropped("mqtt", "full", 120, "the buffer budget (test)")
        stats.refused("serial", "disk-error", 3, "disk full (test)")
        await poll(lambda: forwarder.clock.requests >= 3, "three clock requests")
        await poll(lambda: buffer.stats().batches_unsent == 0, "the batches")

        def latest() -> dict[str, Any] | None:
            [row] = store.edges(TENANT) or [{"status": None}]
            doc: dict[str, Any] | None = row["status"]
            return doc

        await poll(
            lambda: (latest() or {}).get("buffer", {}).get("batches_unsent") == 0,
            "a status after the batches were sent",
            in_thread=True,
        )
        assert listener.clock_requests >= 3
    best = forwarder.clock.best
    assert best is not None
    offset_us, rtt_us = best
    # Same machine, same clock: the hub read it within the round trip.
    assert rtt_us > 0
    assert abs(offset_us) <= rtt_us // 2 + 1000
    doc = latest()
    assert doc is not None
    assert (doc["tenant"], doc["edge"]) == (TENANT, unique_name)
    assert doc["clock"]["rtt_ms"] is not None
    assert doc["uplink"]["bytes_total"] > 0
    assert doc["forwarder"]["batches_sent"] == 4
    assert listener.rejected == {}
    [row] = store.edges(TENANT)
    assert (row["batches"], row["readings"]) == (0, 0)  # no ingest here: status only
    assert row["status_us"] > 0

    # The API shows the summary (and the whole document on request).
    auth = TokenAuthority(tmp_path / "key.pem", issuer="cairn-hub", audience="cairn-api")
    token = auth.issue_token(TENANT, "viewer", "test", 60)
    registry = Registry(tmp_path / "registry.sqlite3")
    async with TestClient(TestServer(make_app(store, auth, registry=registry))) as client:
        resp = await client.get(
            "/api/v1/edges?document=1", headers={"Authorization": f"Bearer {token}"}
        )
        assert resp.status == 200
        [shown] = (await resp.json())["edges"]
    status = shown["status"]
    assert shown["edge"] == unique_name
    assert status["buffer_batches_unsent"] == 0
    assert status["connected"] is True
    assert status["clock_offset_ms"] == doc["clock"]["offset_ms"]
    assert status["uplink"]["bytes_total"] == doc["uplink"]["bytes_total"]
    assert status["dropped"] == {"total": 120, "sources": {"mqtt": {"full": 120}, "serial": {}}}
    assert status["refused"] == {"total": 3, "sources": {"mqtt": {}, "serial": {"disk-error": 3}}}
    assert status["time"].endswith("Z")
    assert shown["status_document"] == doc


async def test_a_status_for_another_edge_or_unreadable_is_dropped_and_counted(
    store: SqliteStore, nats_server: NatsServer
) -> None:
    async with hub_listener(nats_server.url, store) as listener:
        nc = await nats.connect(nats_server.url)
        try:
            subject = status_subject("acme", "e1")
            good = {"tenant": "acme", "edge": "e1", "counters": {"readings-dropped": 7}}
            await nc.publish(subject, json.dumps({**good, "edge": "e2"}).encode())
            await nc.publish(subject, json.dumps({**good, "tenant": "other"}).encode())
            await nc.publish(subject, b"\xff not json")
            await nc.publish(subject, b"[1, 2]")
            await nc.publish("cairn.status.acme.e1.extra", json.dumps(good).encode())
            await nc.publish(subject, json.dumps(good).encode())
            await nc.flush()
        finally:
            await nc.close()
        await poll(lambda: listener.stored == 1, "the good document")
        await poll(lambda: sum(listener.rejected.values()) == 5, "five rejected")
    assert listener.rejected == {"subject-mismatch": 2, "bad-json": 2, "bad-subject": 1}
    [row] = store.edges("acme")
    assert row["status"] == good
    assert store.edges("other") == []


async def test_a_wall_clock_jump_neither_reorders_nor_loses_batches(
    buffer: Buffer, nats_server: NatsServer, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wall clock steps back an hour, then forward two, while batches are committed and
    forwarded one at a time: they arrive in seq order, each once (seq is the order; the live
    window, timeouts and backoff run on the monotonic clock)."""
    await create_stream(nats_server.url)
    real_ns, real_s = time.time_ns, time.time
    jump = {"s": 0.0}
    monkeypatch.setattr(time, "time_ns", lambda: real_ns() + int(jump["s"] * 1e9))
    monkeypatch.setattr(time, "time", lambda: real_s() + jump["s"])
    seqs: list[int] = []
    async with edge(buffer, nats_server.url, unique_name, max_in_flight=1, live_window_s=0.5) as (
        forwarder,
        _stats,
    ):
        for step in (0.0, -3600.0, 3600.0):
            jump["s"] = step
            for _ in range(3):
                [seq] = add_batches(buffer, 1, first=len(seqs))
                forwarder.notify(seq)
                seqs.append(seq)
                await poll(lambda: buffer.stats().batches_unsent == 0, f"batch {seq}")
    order = [int(m.headers[HDR_SEQ]) for m in await stream_messages(nats_server.url)]
    assert order == seqs == list(range(1, 10))
    created = _created(buffer)
    assert created[3] < created[2]  # the jumps did happen
    assert created[6] > created[5]


def _created(buffer: Buffer) -> list[int]:
    conn = sqlite3.connect(buffer.path)
    try:
        return [c for (c,) in conn.execute("SELECT created_us FROM batches ORDER BY seq")]
    finally:
        conn.close()


async def test_the_hub_service_answers_the_clock_and_serves_the_edge_status(
    buffer: Buffer, nats_server: NatsServer, unique_name: str, tmp_path: Path
) -> None:
    """Wiring: the hub's run_hub answers cairn.clock and serves what the edge published."""
    config = HubConfig(
        hub=HubSettings(state_dir=tmp_path / "hub"),
        nats=NatsSettings(url=nats_server.url),
        api=ApiSettings(listen="127.0.0.1:0"),
        tls=TlsSettings(api=False, nats=False),  # TLS: tests/test_pki.py and the Lab tests
    )
    registry = open_registry(config)
    registry.register(TENANT, unique_name, public_key_bytes(KEY))
    registry.close()
    stop = asyncio.Event()
    hub = asyncio.create_task(run_hub(config, stop=stop))
    port_file = tmp_path / "hub" / "api.port"
    try:
        await poll(port_file.exists, "the hub API")
        api = f"http://127.0.0.1:{port_file.read_text().strip()}/api/v1"
        headers = {"Authorization": f"Bearer {authority(config).issue_token(TENANT, 'viewer')}"}
        add_batches(buffer, 2)
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            edge(
                buffer, nats_server.url, unique_name, clock_interval_s=0.1, status_interval_s=0.1
            ) as (forwarder, _stats),
        ):
            await poll(lambda: forwarder.clock.best is not None, "a clock answer from the hub")

            async def shown() -> bool:
                async with http.get(f"{api}/edges") as resp:
                    rows = (await resp.json())["edges"]
                status = rows[0]["status"] if rows else None
                return (
                    status is not None
                    and status["buffer_batches_unsent"] == 0
                    and status["clock_rtt_ms"] is not None
                    and rows[0]["batches"] == 2
                )

            await poll(shown, "the edge status and its batches in /edges")
            async with http.get(f"{api}/stats") as resp:
                counts = (await resp.json())["status"]
            assert counts["statuses_stored"] >= 1
            assert counts["clock_requests"] >= 1
            assert counts["statuses_rejected"] == {}
    finally:
        stop.set()
        await hub


def test_a_store_from_before_edge_status_reads_and_upgrades(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE edge_status")  # as a store of the previous release
    conn.commit()
    conn.close()
    old = SqliteStore(path, readonly=True)  # `cairn-hub edges list` on it
    try:
        assert (old.edges(), old.tenants()) == ([], [])
    finally:
        old.close()
    upgraded = SqliteStore(path)  # the hub starts: the table is made
    try:
        upgraded.put_edge_status("t", "e", 5, {"tenant": "t", "edge": "e"})
        assert upgraded.tenants() == ["t"]
        [row] = upgraded.edges("t")
        assert (row["status_us"], row["status"], row["batches"]) == (
            5,
            {"tenant": "t", "edge": "e"},
            0,
        )
    finally:
        upgraded.close()


async def test_status_and_clock_right_after_the_link_is_back(
    buffer: Buffer, nats_server: NatsServer, unique_name: str
) -> None:
    """Intervals of a minute, but a reconnect publishes the status and asks the time at once
    (the hub's view of the edge is fresh as soon as the link is back)."""
    async with edge(
        buffer, nats_server.url, unique_name, clock_interval_s=60, status_interval_s=60
    ) as (forwarder, stats):
        await poll(lambda: forwarder.status_published == 1, "the status at connect")
        await poll(lambda: forwarder.clock.requests == 1, "the clock request at connect")
        await asyncio.to_thread(nats_server.restart)
        await poll(lambda: stats.forwarder.connected, "the reconnect")
        await poll(lambda: forwarder.status_published == 2, "a status after the reconnect", 15)
        await poll(lambda: forwarder.clock.requests >= 2, "a clock request after it", 15)
