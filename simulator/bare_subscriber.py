"""A bare gmqtt subscriber: the ceiling the edge's MQTT source is measured against.

Run as ``python -m simulator.bare_subscriber --port P --topic T --count N``: subscribes with the
same settings as the edge (MQTT 5, persistent session, QoS 1, acknowledgement after an async
``on_message``) but does nothing with a message except count it. Prints ``ready`` once
subscribed and, after N messages, one JSON line with the wall-clock times of the first and last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv50

__all__ = ["main"]


async def _run(port: int, topic: str, count: int, qos: int) -> None:
    done = asyncio.Event()
    first = 0.0
    n = 0

    async def on_message(_client: Any, _topic: str, _payload: bytes, _qos: int, _props: Any) -> int:
        nonlocal first, n
        if n == 0:
            first = time.time()
        n += 1
        if n >= count:
            done.set()
        return 0

    subscribed = asyncio.Event()
    client = Client(
        f"bare-subscriber-{port}",
        clean_session=False,
        optimistic_acknowledgement=False,
        session_expiry_interval=600,
        receive_maximum=20000,
    )
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    await client.connect("127.0.0.1", port, version=MQTTv50)
    client.subscribe(topic, qos=qos)
    await subscribed.wait()
    print("ready", flush=True)
    await done.wait()
    last = time.time()
    print(json.dumps({"first": first, "last": last, "count": n}), flush=True)
    await client.disconnect()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--qos", type=int, default=1)
    a = p.parse_args()
    asyncio.run(_run(a.port, a.topic, a.count, a.qos))


if __name__ == "__main__":
    main()
