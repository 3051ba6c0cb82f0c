"""MQTT source benchmark: readings/s into the buffer per payload format, against a bare subscriber.

Run from the repository root::

    .venv/bin/python bench/mqtt_formats.py [--messages 20000] [--runs 3]

For each case (payload format x readings per message), in the same run and against the same
Mosquitto (started here on a free loopback port):

* ``bare``: a bare gmqtt subscriber (the settings of the edge: MQTT 5, persistent session,
  QoS 1, PUBACK after an async ``on_message``) that only counts messages: the ceiling;
* ``parse``: the payload parser alone on the same messages (one core, no broker): readings/s;
* ``source``: the edge's :class:`~edge.sources.mqtt.MqttSource` with a real
  :class:`~edge.batcher.Batcher` and SQLite :class:`~edge.buffer.Buffer` (the defaults: flush
  200 ms, synchronous full), timed until the last reading is committed (and acknowledged).

So that the load generator does not share the cores with what is measured, each run first
creates the subscriber's persistent session, disconnects it, has the broker queue all
``--messages`` messages (``simulator.mqtt_wire`` publisher, QoS 1), then connects the
subscriber and times the drain of that backlog. Figures are min / median / max of ``--runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv50

from contract.model import now_us
from edge.batcher import Batcher
from edge.buffer import Buffer
from edge.config import BufferSettings, MqttSettings, PayloadFormat, TopicSettings
from edge.sources.mqtt import MqttSource
from edge.sources.payloads import parse_json_payload, parse_value_payload
from edge.sources.senml import parse_senml_payload
from edge.stats import EdgeStats
from simulator.mqtt_wire import MqttPublisher
from simulator.servers import Mosquitto

DEVICES = 200


@dataclass(frozen=True)
class Case:
    name: str
    fmt: PayloadFormat
    per_message: int
    pattern: str

    @property
    def filter(self) -> str:
        return self.pattern.replace("{device}", "+").replace("/{sensor}", "/#")

    def message(self, i: int, ts_s: int) -> tuple[str, bytes]:
        dev = f"d{i % DEVICES}"
        t = ts_s + i // DEVICES
        if self.fmt is PayloadFormat.VALUE:
            return f"v/{dev}/temp", json.dumps({"ts": t, "value": 20 + (i % 97) / 10}).encode()
        if self.fmt is PayloadFormat.JSON:
            doc: dict[str, Any] = {"ts": t}
            doc.update({f"s{k}": 20 + ((i + k) % 97) / 10 for k in range(self.per_message)})
            return f"j{self.per_message}/{dev}", json.dumps(doc).encode()
        recs: list[dict[str, Any]] = [{"bn": "boiler/", "bt": t}]
        recs[0].update({"n": "s0", "u": "Cel", "v": 20 + (i % 97) / 10})
        recs += [{"n": f"s{k}", "v": 20 + ((i + k) % 97) / 10} for k in range(1, self.per_message)]
        return f"s{self.per_message}/{dev}", json.dumps(recs).encode()


CASES = [
    Case("value, 1 reading/message", PayloadFormat.VALUE, 1, "v/{device}/{sensor}"),
    Case("json, 1 reading/message", PayloadFormat.JSON, 1, "j1/{device}"),
    Case("senml, 1 reading/message", PayloadFormat.SENML, 1, "s1/{device}"),
    Case("json, 10 readings/message", PayloadFormat.JSON, 10, "j10/{device}"),
    Case("senml, 10 readings/message", PayloadFormat.SENML, 10, "s10/{device}"),
]


async def _queue(broker: Mosquitto, case: Case, messages: int) -> None:
    ts_s = now_us() // 1_000_000 - 3600
    async with MqttPublisher("127.0.0.1", broker.port, "bench-pub", max_in_flight=2000) as pub:
        for i in range(messages):
            topic, payload = case.message(i, ts_s)
            await pub.publish(topic, payload)
        await pub.drain(timeout=120)


async def _wait(predicate: Callable[[], bool], limit_s: float = 300.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark did not finish")
        await asyncio.sleep(0.005)


async def _bare(broker: Mosquitto, case: Case, messages: int, run: int) -> float:
    n = 0
    subscribed = asyncio.Event()

    async def on_message(*_a: Any) -> int:
        nonlocal n
        n += 1
        return 0

    def client() -> Client:
        c = Client(
            f"bench-bare-{run}-{case.pattern}",
            clean_session=False,
            optimistic_acknowledgement=False,
            session_expiry_interval=600,
            receive_maximum=20_000,
        )
        c.on_message = on_message
        c.on_subscribe = lambda *_a: subscribed.set()
        return c

    first = client()
    await first.connect("127.0.0.1", broker.port, version=MQTTv50)
    first.subscribe(case.filter, qos=1)
    await subscribed.wait()
    await first.disconnect()
    await _queue(broker, case, messages)
    second = client()
    t0 = time.perf_counter()
    await second.connect("127.0.0.1", broker.port, version=MQTTv50)
    await _wait(lambda: n >= messages)
    elapsed = time.perf_counter() - t0
    for _ in range(3):  # the last PUBACKs go out from done-callbacks: let them run
        await asyncio.sleep(0)
    await second.disconnect()
    return messages / elapsed


async def _source(broker: Mosquitto, case: Case, messages: int, run: int, folder: Path) -> float:
    settings = MqttSettings(
        name="mqtt",
        url=broker.url,
        client_id=f"bench-edge-{run}-{case.pattern}",
        topics=(TopicSettings(case.pattern, case.fmt),),
    )
    buffer = Buffer(folder / f"buffer-{run}-{case.fmt.value}{case.per_message}.sqlite3")
    stats = EdgeStats()
    batcher = Batcher(buffer, BufferSettings(), stats)
    batcher.load_digests()
    committed = stats.counters
    try:
        batcher_task = asyncio.create_task(batcher.run())
        async with MqttSource(settings, batcher, stats) as source:  # create the session
            task = asyncio.create_task(source.run())
            await _wait(lambda: source.connected, 30)
            await source.stop()
            await task
        await _queue(broker, case, messages)
        total = messages * case.per_message
        async with MqttSource(settings, batcher, stats) as source:
            t0 = time.perf_counter()
            task = asyncio.create_task(source.run())
            await _wait(lambda: committed["readings-committed"] >= total)
            elapsed = time.perf_counter() - t0
            await source.stop()
            await task
        assert committed["readings-committed"] == total, committed
        assert not stats.source("mqtt").rejected, stats.source("mqtt").rejected
        batcher_task.cancel()
        await asyncio.gather(batcher_task, return_exceptions=True)
    finally:
        buffer.close()
    return messages / elapsed


def _parse_only(case: Case, messages: int) -> float:
    ts_s = now_us() // 1_000_000 - 3600
    msgs = [case.message(i, ts_s) for i in range(messages)]
    t0 = time.perf_counter()
    n = 0
    for topic, payload in msgs:
        dev = topic.split("/")[1]
        if case.fmt is PayloadFormat.VALUE:
            n += len(parse_value_payload(payload, dev, "temp"))
        elif case.fmt is PayloadFormat.JSON:
            n += len(parse_json_payload(payload, dev))
        else:
            n += len(parse_senml_payload(payload, dev))
    assert n == messages * case.per_message
    return n / (time.perf_counter() - t0)


def _fmt(rates: list[float]) -> str:
    return f"{min(rates):>8,.0f} / {statistics.median(rates):>8,.0f} / {max(rates):>8,.0f}"


async def _main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker").start() as broker:
        print(f"{args.messages} messages per run, {args.runs} runs; min / median / max")
        print(
            f"{'case':<28} {'bare msg/s':>28} {'source msg/s':>28} {'source readings/s':>28}"
            f" {'parse only readings/s':>28}"
        )
        for case in CASES:
            if args.only and args.only not in case.name:
                continue
            bare: list[float] = []
            src: list[float] = []
            parse: list[float] = []
            for run in range(args.runs):
                parse.append(_parse_only(case, args.messages))
                bare.append(await _bare(broker, case, args.messages, run))
                src.append(await _source(broker, case, args.messages, run, Path(tmp)))
            readings = [r * case.per_message for r in src]
            print(
                f"{case.name:<28} {_fmt(bare):>28} {_fmt(src):>28} {_fmt(readings):>28}"
                f" {_fmt(parse):>28}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20_000, help="MQTT messages per run")
    p.add_argument("--runs", type=int, default=3, help="runs per case (min/median/max)")
    p.add_argument("--only", default="", help="run the cases whose name contains this")
    asyncio.run(_main(p.parse_args()))


if __name__ == "__main__":
    main()
