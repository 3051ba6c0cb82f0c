"""The MQTT source against a real Mosquitto: ack after commit, redelivery dedupe, reconnects.

Between the edge and the broker sits ``MqttProxy`` (tests/test_edge_support.py), which records
the PUBACKs the edge sends and the PUBLISH packets (with their dup flag) the broker delivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from contract.model import FLAG_EDGE_STAMPED, Reading, now_us
from edge.batcher import Batcher
from edge.buffer import Buffer
from edge.config import BufferSettings, MqttSettings, PayloadFormat, TopicSettings
from edge.sources.mqtt import PUBACK_PAYLOAD_INVALID, MqttSource, message_digest
from edge.stats import EdgeStats
from simulator.servers import Mosquitto
from tests.test_edge_support import EdgeProcess, MqttProxy, RawPublisher, poll, stored, write_config

pytestmark = pytest.mark.timeout(120)

T_US = (now_us() // 1_000_000 - 60) * 1_000_000  # a minute ago: a plausible device clock


@dataclass
class Edge:
    buffer: Buffer
    batcher: Batcher
    stats: EdgeStats
    source: MqttSource

    @property
    def counters(self) -> dict[str, int]:
        return dict(self.stats.counters)


def mqtt_settings(url: str, client_id: str) -> MqttSettings:
    return MqttSettings(
        name="mqtt",
        url=url,
        client_id=client_id,
        receive_maximum=1000,
        topics=(
            TopicSettings("sensors/{device}/{sensor}", PayloadFormat.VALUE),
            TopicSettings("devices/{device}", PayloadFormat.JSON),
        ),
    )


@contextlib.asynccontextmanager
async def running_source(
    tmp_path: Path, settings: MqttSettings, *, flush_ms: int = 20, wait: bool = True
) -> AsyncIterator[Edge]:
    """Buffer + batcher + MQTT source in this process (connected and subscribed if ``wait``);
    the buffer file is named after the client id, so a restart with the same id reuses it."""
    buffer = Buffer(tmp_path / f"buffer-{settings.client_id}.sqlite3")
    stats = EdgeStats()
    buf = BufferSettings(
        flush_interval_ms=flush_ms, max_batch_readings=1000, max_pending_readings=10_000
    )
    batcher = Batcher(buffer, buf, stats, digest_window=2000)
    batcher.load_digests()
    try:
        async with MqttSource(settings, batcher, stats) as source:
            tasks = [asyncio.create_task(batcher.run()), asyncio.create_task(source.run())]
            try:
                if wait:
                    await poll(lambda: source.connected, "the source to connect and subscribe")
                yield Edge(buffer, batcher, stats, source)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        buffer.close()


def running_edge(
    tmp_path: Path, url: str, *, flush_ms: int = 20, client_id: str = "cairn-test"
) -> contextlib.AbstractAsyncContextManager[Edge]:
    """:func:`running_source` with the value and JSON topics of :func:`mqtt_settings`."""
    return running_source(tmp_path, mqtt_settings(url, client_id), flush_ms=flush_ms)


@pytest.fixture
async def proxy(mosquitto: Mosquitto) -> AsyncIterator[MqttProxy]:
    async with MqttProxy(mosquitto.port) as p:
        yield p


def test_digest_covers_packet_id_topic_and_payload() -> None:
    d = message_digest(7, "sensors/a/b", b"1")
    assert len(d) == 8
    assert d == message_digest(7, "sensors/a/b", b"1")
    others = {
        message_digest(8, "sensors/a/b", b"1"),
        message_digest(7, "sensors/a/c", b"1"),
        message_digest(7, "sensors/a/b", b"2"),
        message_digest(7, "sensors/a/b1", b""),  # the topic is length-prefixed
    }
    assert d not in others
    assert len(others) == 4


async def test_messages_become_readings_and_bad_ones_are_refused(
    tmp_path: Path, mosquitto: Mosquitto, proxy: MqttProxy, unique_name: str
) -> None:
    async with (
        running_edge(tmp_path, proxy.url) as edge,
        RawPublisher(mosquitto.port, unique_name) as pub,
    ):
        good = {
            pub.publish("sensors/d1/temp", json.dumps({"ts": T_US, "value": 21.5})): 0,
            pub.publish("sensors/d1/imu/accel/x", json.dumps({"ts": T_US, "value": -0.5})): 0,
            pub.publish("devices/d2", json.dumps({"ts": T_US, "hum": 40, "door": True})): 0,
        }
        bad = {
            pub.publish("devices/d2", b"{not json"): "bad-json",
            pub.publish("sensors/d1", b"1"): "bad-topic",  # matches the filter sensors/+/#
            pub.publish("devices/d2", b'{"a//b": 1}'): "bad-name",
            pub.publish("devices/d3", b'{"ts": 1}'): "no-readings",
        }
        await pub.wait_acked([*good, *bad])
        await poll(lambda: len(proxy.pubacks) == 7, "the edge to acknowledge all 7 messages")
        reasons = {p.payload: code for p, code in _joined(proxy)}
        assert sorted(reasons.values()) == [0, 0, 0] + [PUBACK_PAYLOAD_INVALID] * 4
        assert reasons[b"{not json"] == PUBACK_PAYLOAD_INVALID
        assert set(stored(edge.buffer.path)) == {
            Reading("d1", "temp", T_US, 21.5),
            Reading("d1", "imu/accel/x", T_US, -0.5),
            Reading("d2", "hum", T_US, 40),
            Reading("d2", "door", T_US, True),
        }
        src = edge.stats.source("mqtt")
        assert (src.messages, src.accepted) == (7, 4)
        assert dict(src.rejected) == {
            "bad-json": 1,
            "bad-topic": 1,
            "bad-name": 1,
            "no-readings": 1,
        }
        assert edge.counters["messages-rejected"] == 4


def _joined(proxy: MqttProxy) -> list[tuple[object, int]]:
    by_mid = {p.mid: p for p in proxy.publishes}
    return [(by_mid[mid], code) for mid, code in proxy.pubacks]


async def test_no_puback_before_the_commit(
    tmp_path: Path, mosquitto: Mosquitto, proxy: MqttProxy, unique_name: str
) -> None:
    async with (
        running_edge(tmp_path, proxy.url, flush_ms=60_000) as edge,
        RawPublisher(mosquitto.port, unique_name) as pub,
    ):
        await pub.wait_acked([pub.publish("sensors/d1/temp", b"21.5")])  # the broker has it
        await poll(lambda: edge.counters["messages-received"] == 1, "the edge to receive it")
        assert len(proxy.publishes) == 1
        for _ in range(50):
            await asyncio.sleep(0)  # let any (wrong) early PUBACK go out
        assert proxy.pubacks == []  # received, not committed: not acknowledged
        assert stored(edge.buffer.path) == []
        await edge.batcher.drain()  # the commit the 60 s timer would do
        await poll(lambda: len(proxy.pubacks) == 1, "the PUBACK after the commit")
        assert proxy.pubacks == [(proxy.publishes[0].mid, 0)]
        (r,) = stored(edge.buffer.path)
        assert (r.device, r.sensor, r.value, r.flags) == ("d1", "temp", 21.5, FLAG_EDGE_STAMPED)


async def test_killed_before_commit_the_broker_redelivers_and_it_is_committed_once(
    tmp_path: Path, mosquitto: Mosquitto, proxy: MqttProxy, unique_name: str
) -> None:
    folder = tmp_path / "edge"
    config = write_config(
        folder, mqtt_url=proxy.url, flush_interval_ms=60_000, client_id=unique_name
    )
    edge = EdgeProcess(config).start()
    try:
        await edge.wait_ready()
        async with RawPublisher(mosquitto.port, f"{unique_name}-pub") as pub:
            await pub.wait_acked(
                [pub.publish("sensors/d1/temp", json.dumps({"ts": T_US, "value": 7}))]
            )
        st: dict[str, object] = {}

        async def received() -> bool:
            st.update(await edge.status())
            return st["counters"]["messages-received"] == 1  # type: ignore[index]

        await poll(received, "the edge to receive the message")
        assert proxy.pubacks == []
        assert stored(folder / "state" / "buffer.sqlite3") == []
        edge.kill()  # SIGKILL between receive and commit

        write_config(folder, mqtt_url=proxy.url, flush_interval_ms=20, client_id=unique_name)
        edge.start()
        await edge.wait_ready()
        buffer_path = folder / "state" / "buffer.sqlite3"
        await poll(lambda: len(stored(buffer_path)) >= 1, "the redelivered reading to be committed")
        await poll(lambda: len(proxy.pubacks) == 1, "the PUBACK of the redelivery")
        assert stored(buffer_path) == [Reading("d1", "temp", T_US, 7)]
        assert [p.dup for p in proxy.publishes] == [False, True]  # delivered twice, acked once
        assert proxy.pubacks == [(proxy.publishes[1].mid, 0)]
        assert edge.terminate() == 0
    finally:
        edge.kill()


async def test_redelivery_of_committed_messages_is_not_stored_twice(
    tmp_path: Path, mosquitto: Mosquitto, proxy: MqttProxy, unique_name: str
) -> None:
    proxy.hold_pubacks = True  # the edge commits and acks; the broker never hears of it
    async with (
        running_edge(tmp_path, proxy.url) as edge,
        RawPublisher(mosquitto.port, unique_name) as pub,
    ):
        mids = [pub.publish(f"sensors/d{i % 3}/t", b"5") for i in range(20)]  # equal payloads, too
        mids += [pub.publish("devices/d9", json.dumps({"ts": T_US, "a": 1, "b": 2}))]
        await pub.wait_acked(mids)
        await poll(lambda: len(proxy.pubacks) == 21, "21 PUBACKs (held back)")
        assert len(stored(edge.buffer.path)) == 22
        proxy.hold_pubacks = False
        proxy.cut()  # the broker sees the edge vanish with 21 messages unacknowledged
        await poll(lambda: edge.counters["redelivered-duplicate"] == 21, "21 duplicates recognised")
        await poll(lambda: len(proxy.pubacks) == 42, "the redeliveries to be acknowledged")
        assert [p.dup for p in proxy.publishes] == [False] * 21 + [True] * 21
        assert {code for _, code in proxy.pubacks} == {0}
        assert len(stored(edge.buffer.path)) == 22
        assert edge.counters["readings-committed"] == 22
        assert edge.stats.source("mqtt").duplicates == 21
    assert proxy.connections == 2


async def test_dedupe_survives_a_restart(
    tmp_path: Path, mosquitto: Mosquitto, proxy: MqttProxy, unique_name: str
) -> None:
    proxy.hold_pubacks = True
    async with (
        running_edge(tmp_path, proxy.url, client_id=unique_name),
        RawPublisher(mosquitto.port, f"{unique_name}-pub") as pub,
    ):
        mids = [pub.publish(f"sensors/d/s{i}", str(i)) for i in range(5)]
        await pub.wait_acked(mids)
        await poll(lambda: len(proxy.pubacks) == 5, "5 PUBACKs (held back)")
    proxy.cut()  # the edge process is gone (its state: the buffer file only)
    proxy.hold_pubacks = False
    async with running_edge(tmp_path, proxy.url, client_id=unique_name) as edge:
        await poll(lambda: edge.counters["redelivered-duplicate"] == 5, "5 duplicates recognised")
        await poll(lambda: len(proxy.pubacks) == 10, "the redeliveries to be acknowledged")
        assert sorted(r.sensor for r in stored(edge.buffer.path)) == [f"s{i}" for i in range(5)]
        assert edge.counters["readings-committed"] == 0


async def test_session_keeps_messages_while_the_edge_is_away(
    tmp_path: Path, mosquitto: Mosquitto, proxy: MqttProxy, unique_name: str
) -> None:
    async with running_edge(tmp_path, proxy.url, client_id=unique_name):
        pass  # subscribed once, then an orderly disconnect
    async with RawPublisher(mosquitto.port, f"{unique_name}-pub") as pub:
        await pub.wait_acked([pub.publish(f"sensors/d/s{i}", str(i)) for i in range(3)])
    async with running_edge(tmp_path, proxy.url, client_id=unique_name) as edge:
        await poll(lambda: edge.counters["readings-committed"] == 3, "the 3 queued messages")
        assert sorted(r.value for r in stored(edge.buffer.path)) == [0, 1, 2]  # type: ignore[type-var]


async def test_reconnects_and_resubscribes_after_a_broker_crash(
    tmp_path: Path, mosquitto: Mosquitto, proxy: MqttProxy, unique_name: str
) -> None:
    async with running_edge(tmp_path, proxy.url, client_id=unique_name) as edge:
        mosquitto.kill()  # SIGKILL: the broker forgets the session (no persistence saved)
        await poll(lambda: not edge.source.connected, "the source to notice")
        mosquitto.start()
        await poll(lambda: edge.source.connected, "the source to reconnect and resubscribe", 30)
        async with RawPublisher(mosquitto.port, f"{unique_name}-pub") as pub:
            await pub.wait_acked([pub.publish("sensors/d/after", b"1")])
        await poll(lambda: edge.counters["readings-committed"] == 1, "the message after the crash")
        assert [r.sensor for r in stored(edge.buffer.path)] == ["after"]
