"""The raw MQTT publisher against a real Mosquitto: acks, delivery, window, failures."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest
from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv311

from simulator.mqtt_wire import MqttError, MqttPublisher, parse_mqtt_url
from simulator.servers import Mosquitto, free_port
from tests.polling import until


class Subscriber:
    """A gmqtt subscriber (MQTT 3.1.1, QoS 1) that keeps every message it receives."""

    def __init__(self, port: int, topic: str = "#") -> None:
        self.port = port
        self.topic = topic
        self.messages: list[tuple[str, bytes]] = []
        self._client = Client(f"test-sub-{uuid.uuid4().hex[:12]}")
        self._client.on_message = self._on_message
        self._subscribed = asyncio.Event()
        self._client.on_subscribe = lambda *_: self._subscribed.set()

    def _on_message(self, _c: Any, topic: str, payload: bytes, _qos: int, _p: Any) -> int:
        self.messages.append((topic, payload))
        return 0

    async def __aenter__(self) -> Self:
        await self._client.connect("127.0.0.1", self.port, version=MQTTv311)
        self._client.subscribe(self.topic, qos=1)
        await asyncio.wait_for(self._subscribed.wait(), 10)
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._client.disconnect()

    async def wait_for(self, n: int, timeout: float = 30.0) -> None:
        """Poll until ``n`` messages arrived (fail after ``timeout``)."""
        await until(lambda: len(self.messages) >= n, f"{n} messages", timeout)


def _publisher(broker: Mosquitto, **kw: Any) -> MqttPublisher:
    return MqttPublisher("127.0.0.1", broker.port, f"test-pub-{uuid.uuid4().hex[:8]}", **kw)


async def test_every_qos1_publish_is_acked_once_and_delivered(
    mosquitto: Mosquitto, unique_name: str
) -> None:
    n = 3000
    expected = Counter((f"{unique_name}/t{i % 7}", f"message {i}".encode()) for i in range(n))
    acked: list[object] = []
    async with Subscriber(mosquitto.port, f"{unique_name}/#") as sub:
        async with _publisher(mosquitto) as pub:
            pub.on_ack(acked.append)
            for i in range(n):
                await pub.publish(f"{unique_name}/t{i % 7}", f"message {i}".encode(), 1, i)
            await pub.drain(timeout=30)
            assert (pub.sent, pub.acked, pub.in_flight) == (n, n, 0)
        assert sorted(acked) == list(range(n))  # type: ignore[type-var]
        await sub.wait_for(n)
        assert Counter(sub.messages) == expected


async def test_the_window_bounds_unacknowledged_publishes(
    mosquitto: Mosquitto, unique_name: str
) -> None:
    seen = 0
    async with _publisher(mosquitto, max_in_flight=5) as pub:
        for i in range(200):
            await pub.publish(unique_name, b"x", 1, i)
            seen = max(seen, pub.in_flight)
        await pub.drain(timeout=30)
        assert pub.acked == 200
    assert seen == 5


async def test_payload_sizes_across_length_encodings(
    mosquitto: Mosquitto, unique_name: str
) -> None:
    topic = f"{unique_name}/big"
    # remaining length = 2 + len(topic) + 2 + len(payload): cross 127/128 and 16383/16384
    base = 4 + len(topic.encode())
    sizes = [0, 1, 127 - base, 128 - base, 16383 - base, 16384 - base, 300_000]
    payloads = [bytes([65 + k]) * size for k, size in enumerate(sizes)]
    async with Subscriber(mosquitto.port, topic) as sub:
        async with _publisher(mosquitto) as pub:
            for k, p in enumerate(payloads):
                await pub.publish(topic, p, 1, k)
            await pub.publish(topic, b"qos0 " * 40, qos=0)
            await pub.drain(timeout=30)
            assert (pub.sent, pub.acked) == (len(sizes) + 1, len(sizes))
        await sub.wait_for(len(sizes) + 1)
        assert Counter(p for _, p in sub.messages) == Counter([*payloads, b"qos0 " * 40])


async def test_qos0_publishes_are_sent_not_acked(mosquitto: Mosquitto, unique_name: str) -> None:
    acked: list[object] = []
    async with Subscriber(mosquitto.port, unique_name) as sub:
        async with _publisher(mosquitto) as pub:
            pub.on_ack(acked.append)
            for i in range(50):
                await pub.publish(unique_name, str(i).encode(), qos=0, token=i)
            await pub.drain(timeout=10)
            assert (pub.sent, pub.acked, pub.in_flight) == (50, 0, 0)
        await sub.wait_for(50)
        assert sorted(int(p) for _, p in sub.messages) == list(range(50))
    assert acked == []


async def test_a_failing_callback_is_logged_and_the_others_still_run(
    mosquitto: Mosquitto, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    good: list[object] = []

    def bad(token: object) -> None:
        if token == 3:
            raise RuntimeError("boom")

    async with _publisher(mosquitto) as pub:
        pub.on_ack(bad)
        pub.on_ack(good.append)
        with caplog.at_level(logging.ERROR, logger="simulator.mqtt_wire"):
            for i in range(10):
                await pub.publish(unique_name, b"x", 1, i)
            await pub.drain(timeout=10)
    assert good == list(range(10))
    assert [r.getMessage() for r in caplog.records] == ["on_ack callback failed"]


async def test_connecting_to_nothing_is_a_clear_error() -> None:
    pub = MqttPublisher("127.0.0.1", free_port(), "nobody-home")
    with pytest.raises(MqttError, match=r"cannot connect to mqtt://127\.0\.0\.1:"):
        await pub.connect()
    with pytest.raises(MqttError, match="cannot connect"):
        await pub.publish("t", b"x")
    never = MqttPublisher("127.0.0.1", 1, "never-connected")
    with pytest.raises(MqttError, match="not connected"):
        await never.publish("t", b"x")


async def test_broker_killed_fails_drain_and_publish(
    mosquitto: Mosquitto, unique_name: str
) -> None:
    async with _publisher(mosquitto) as pub:
        for i in range(100):
            await pub.publish(unique_name, b"before", 1, i)
        await pub.drain(timeout=10)
        assert mosquitto.proc is not None
        mosquitto.proc.send_signal(signal.SIGSTOP)  # alive but silent: acks stop
        for i in range(10):
            await pub.publish(unique_name, b"unacked", 1, 100 + i)
        drain = asyncio.create_task(pub.drain(timeout=60))
        await until(lambda: pub.in_flight == 10 and not drain.done(), "publishes in flight", 10)
        mosquitto.kill()
        with pytest.raises(MqttError, match=r"lost .* with 10 publishes unacknowledged"):
            await drain
        assert pub.acked == 100
        with pytest.raises(MqttError, match="lost"):
            await pub.publish(unique_name, b"after")


async def test_broker_killed_wakes_a_publisher_waiting_for_window_room(
    mosquitto: Mosquitto, unique_name: str
) -> None:
    async with _publisher(mosquitto, max_in_flight=2) as pub:
        assert mosquitto.proc is not None
        mosquitto.proc.send_signal(signal.SIGSTOP)
        await pub.publish(unique_name, b"1", 1, 1)
        await pub.publish(unique_name, b"2", 1, 2)
        blocked = asyncio.create_task(pub.publish(unique_name, b"3", 1, 3))
        await until(lambda: pub.sent == 2 and not blocked.done(), "a full window", 10)
        mosquitto.kill()
        with pytest.raises(MqttError, match="lost"):
            await blocked
        assert (pub.sent, pub.acked) == (2, 0)


async def test_keepalive_detects_a_silent_broker(mosquitto: Mosquitto, unique_name: str) -> None:
    assert mosquitto.proc is not None
    try:
        async with _publisher(mosquitto, keepalive=1) as pub:
            await pub.publish(unique_name, b"x", 1, 0)
            await pub.drain(timeout=10)
            mosquitto.proc.send_signal(signal.SIGSTOP)
            await until(lambda: not pub.connected, "the publisher to give up on the broker", 15)
            with pytest.raises(MqttError, match="did not answer PINGREQ"):
                await pub.drain()
    finally:
        mosquitto.proc.send_signal(signal.SIGCONT)


class _NoAnonymous(Mosquitto):
    def _config(self) -> str:
        return super()._config().replace("allow_anonymous true", "allow_anonymous false")


async def test_a_refused_connection_names_the_reason(tmp_path: Path) -> None:
    with _NoAnonymous(tmp_path / "closed").start() as broker:
        pub = MqttPublisher("127.0.0.1", broker.port, "anonymous")
        with pytest.raises(MqttError, match="refused the connection: not authorized"):
            await pub.connect()
        assert not pub.connected
    with pytest.raises(MqttError, match="too long"):
        await MqttPublisher("127.0.0.1", 1, "x" * 70_000).connect()


def test_parse_mqtt_url() -> None:
    assert parse_mqtt_url("mqtt://127.0.0.1:1884") == ("127.0.0.1", 1884)
    assert parse_mqtt_url("mqtt://localhost") == ("localhost", 1883)
    assert parse_mqtt_url("127.0.0.1:7") == ("127.0.0.1", 7)
    assert parse_mqtt_url("mqtt://[::1]:1999") == ("::1", 1999)
    assert parse_mqtt_url("mqtts://broker.example") == ("broker.example", 8883)
    assert parse_mqtt_url("mqtts://127.0.0.1:8884") == ("127.0.0.1", 8884)
    for bad in ("http://x:1", "mqtt://:1883", "mqtt://h:port", "mqtt://h:0"):
        with pytest.raises(MqttError):
            parse_mqtt_url(bad)


async def test_a_closed_publisher_refuses_to_publish_or_reconnect(
    mosquitto: Mosquitto, unique_name: str
) -> None:
    pub = _publisher(mosquitto)
    await pub.connect()
    await pub.publish(unique_name, b"x", 1, 0)
    await pub.drain(timeout=10)
    await pub.close()
    assert not pub.connected
    with pytest.raises(MqttError, match="publisher is closed"):
        await pub.publish(unique_name, b"y")
    with pytest.raises(MqttError, match="connects once"):
        await pub.connect()
    await pub.close()  # closing twice is fine


def test_free_port_never_hands_out_a_port_twice() -> None:
    """Two parts of one lab given the same port would not both start (a broker and an admin
    API once were): the kernel may offer a just-closed probe's port again."""
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
