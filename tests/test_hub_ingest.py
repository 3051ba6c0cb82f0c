"""Hub ingest against a real nats-server: exactly once, through restarts, bad batches quarantined."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.codec import encode_batch
from contract.model import Reading
from contract.names import (
    HDR_EDGE,
    HDR_SEQ,
    msg_id,
    telemetry_subject,
)
from contract.signing import batch_headers, generate_key, public_key_bytes
from hub.config import HubConfig, NatsSettings, TlsSettings
from hub.ingest import Ingestor
from hub.registry import Registry
from hub.store import SqliteStore
from simulator.servers import NatsServer
from tests.polling import stream_exists, until


def _readings(edge: str, seq: int, n: int = 50) -> list[Reading]:
    return [
        Reading(f"{edge}-d{i % 5}", "temp", seq * 1000 + i, round(20 + i * 0.1, 1))
        for i in range(n)
    ]


_KEYS: dict[tuple[str, str], Ed25519PrivateKey] = {}


def _key(tenant: str, edge: str) -> Ed25519PrivateKey:
    """The signing key of a test edge (registered with every hub by the fixture)."""
    return _KEYS.setdefault((tenant, edge), generate_key())


def _headers(
    tenant: str, edge: str, seq: int, body: bytes, *, msg: str | None = None, codec: int = 1
) -> dict[str, str]:
    return batch_headers(
        _key(tenant, edge), tenant, edge, seq, codec, body, msg=msg or msg_id(edge, seq)
    )


class _Hub:
    def __init__(self, url: str, path: Path) -> None:
        self.settings = NatsSettings(url=url, fetch_batch=16)
        self.path = path
        self.store = SqliteStore(path)
        self.registry = Registry(path.with_name("registry.sqlite3"))
        self.enroll("t", "e1")
        self.task: asyncio.Task[None] | None = None
        self.ingestor: Ingestor | None = None

    def start(self) -> None:
        plain = TlsSettings(nats=False)  # TLS to NATS: tests/test_pki.py and the Lab tests
        config = HubConfig(nats=self.settings, tls=plain)
        self.ingestor = Ingestor(config, self.store, self.registry)
        self.task = asyncio.create_task(self.ingestor.run())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def enroll(self, tenant: str, edge: str) -> None:
        self.registry.register(tenant, edge, public_key_bytes(_key(tenant, edge)))

    def count(self) -> int:
        return self.store.stats()["readings"]


@pytest.fixture
async def hub(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[_Hub]:
    h = _Hub(nats_server.url, tmp_path / "store.sqlite3")
    h.start()
    yield h
    await h.stop()
    h.store.close()
    h.registry.close()


async def _publisher(url: str):
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    return nc, nc.jetstream(timeout=5)


async def _publish(js, tenant: str, edge: str, seq: int, **kw) -> None:
    body = encode_batch(_readings(edge, seq))
    await js.publish(
        telemetry_subject(tenant, edge), body, headers=_headers(tenant, edge, seq, body, **kw)
    )


async def _wait_stream(hub: _Hub) -> None:
    await until(
        lambda: hub.ingestor is not None and hub.ingestor.stats.connected, "hub connected", 20
    )
    nc, js = await _publisher(hub.settings.url)
    try:
        await until(lambda: stream_exists(js), "the stream", 20)
    finally:
        await nc.close()


async def test_each_batch_stored_once_even_when_published_twice(hub: _Hub) -> None:
    await _wait_stream(hub)
    nc, js = await _publisher(hub.settings.url)
    expected: list[Reading] = []
    for seq in range(1, 21):
        await _publish(js, "t", "e1", seq)
        expected += _readings("e1", seq)
    for seq in (3, 7, 11):
        await _publish(js, "t", "e1", seq)  # same Msg-Id: JetStream drops it
        await _publish(js, "t", "e1", seq, msg=f"late-{seq}")  # beyond JetStream's dedupe
    await nc.close()
    await until(lambda: hub.count() == len(expected), "all batches stored", 30)
    await until(lambda: hub.ingestor.stats.duplicates == 3, "duplicates seen", 30)  # type: ignore[union-attr]
    stored = Counter((r.device, r.ts, r.value) for r in hub.store.export("t"))
    assert stored == Counter((r.device, r.ts, r.value) for r in expected)
    assert hub.store.stats()["duplicates_skipped"] == 3


async def test_nats_killed_mid_stream_loses_nothing(hub: _Hub, nats_server: NatsServer) -> None:
    await _wait_stream(hub)
    nc, js = await _publisher(hub.settings.url)
    for seq in range(1, 11):
        await _publish(js, "t", "e1", seq)
    nats_server.kill()
    nats_server.start()
    for seq in range(11, 21):
        for _attempt in range(50):
            try:
                await _publish(js, "t", "e1", seq)
                break
            except Exception:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("could not publish after the NATS restart")
    await nc.close()
    await until(lambda: hub.count() == 20 * 50, "every batch stored after the restart", 60)
    assert len({(r.device, r.ts) for r in hub.store.export("t")}) == 20 * 50


async def test_hub_restart_resumes_from_the_durable_consumer(hub: _Hub) -> None:
    await _wait_stream(hub)
    nc, js = await _publisher(hub.settings.url)
    for seq in range(1, 6):
        await _publish(js, "t", "e1", seq)
    await until(lambda: hub.count() == 5 * 50, "first batches", 30)
    await hub.stop()
    for seq in range(6, 11):
        await _publish(js, "t", "e1", seq)
    await nc.close()
    hub.start()
    await until(lambda: hub.count() == 10 * 50, "batches published while the hub was down", 30)
    assert hub.store.stats()["batches"] == 10


async def test_bad_batches_are_quarantined_and_neighbours_kept(hub: _Hub) -> None:
    await _wait_stream(hub)
    nc, js = await _publisher(hub.settings.url)
    await _publish(js, "t", "e1", 1)
    await js.publish(
        telemetry_subject("t", "e1"), b"garbage", headers=_headers("t", "e1", 2, b"garbage")
    )
    body = encode_batch(_readings("e1", 3))
    await js.publish(
        telemetry_subject("t", "e1"), body, headers=_headers("t", "e2", 3, body)
    )  # edge mismatch
    await js.publish(
        telemetry_subject("t", "e1"), body, headers=_headers("t", "e1", 4, body, codec=99)
    )
    await js.publish(telemetry_subject("t", "e1"), body, headers={HDR_EDGE: "e1", HDR_SEQ: "x"})
    await _publish(js, "t", "e1", 6)
    await nc.close()
    await until(lambda: hub.store.stats()["quarantined"] == 4, "four quarantined", 30)
    await until(lambda: hub.count() == 2 * 50, "the good neighbours", 30)
    assert hub.ingestor is not None
    assert hub.ingestor.stats.quarantined == {
        "bad-body": 1,
        "edge-mismatch": 1,
        "unknown-codec": 1,
        "bad-header": 1,
    }
    con = hub.store._reader()
    reasons = sorted(r[0] for r in con.execute("SELECT reason FROM quarantine"))
    assert reasons == ["bad-body", "bad-header", "edge-mismatch", "unknown-codec"]


async def test_a_batch_resent_beyond_the_duplicate_window_is_stored_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """The same Nats-Msg-Id again after JetStream's window (1 s here; hours in real life, after
    a lost ack and an edge crash): JetStream stores it again, the hub's (edge, seq) key keeps
    one copy and counts the other as a duplicate."""
    h = _Hub(nats_server.url, tmp_path / "store.sqlite3")
    h.settings = NatsSettings(url=nats_server.url, fetch_batch=16, duplicate_window_s=1)
    h.start()
    try:
        await _wait_stream(h)
        nc, js = await _publisher(nats_server.url)
        try:
            for seq in (1, 2, 3):
                await _publish(js, "t", "e1", seq)
            await until(lambda: h.count() == 3 * 50, "three batches stored", 30)
            body = encode_batch(_readings("e1", 2))
            subject = telemetry_subject("t", "e1")
            dropped = 0
            deadline = time.monotonic() + 30
            while True:  # re-send batch 2 until JetStream no longer knows its Msg-Id
                ack = await js.publish(subject, body, headers=_headers("t", "e1", 2, body))
                if not ack.duplicate:
                    break
                dropped += 1
                assert time.monotonic() < deadline, "the duplicate window never passed"
                await asyncio.sleep(0.1)  # pacing the re-sends, not waiting for a result
            assert dropped >= 1  # within the window JetStream dropped it itself
            info = await js.stream_info("CAIRN_TELEMETRY")
            assert info.state.messages == 4  # the stream holds batch 2 twice
        finally:
            await nc.close()
        assert h.ingestor is not None
        ingestor = h.ingestor
        await until(lambda: ingestor.stats.duplicates == 1, "the hub to see the duplicate", 30)
        assert h.store.stats() == {
            "batches": 3,
            "readings": 3 * 50,
            "duplicates_skipped": 1,
            "quarantined": 0,
        }
        stored = Counter((r.device, r.ts) for r in h.store.export("t"))
        assert set(stored.values()) == {1}
        assert len(stored) == 3 * 50
    finally:
        await h.stop()
        h.store.close()
