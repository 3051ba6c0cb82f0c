"""send_fleet into a real Mosquitto: what a subscriber receives = the ledger = the fleet."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from contract.errors import ConfigError
from contract.model import Reading
from hub.pki import site_tls_files
from simulator.fleet import Fleet, FleetSpec, canonical_value, reading_key
from simulator.mqtt_wire import MqttError
from simulator.send import Ledger, send_fleet
from simulator.servers import Mosquitto, free_port
from tests.polling import until
from tests.test_sim_wire import Subscriber

_Key = tuple[str, str, int, str]


def _parse(messages: list[tuple[str, bytes]]) -> Counter[_Key]:
    """Turn received messages back into reading identities, as the edge would read them."""
    out: Counter[_Key] = Counter()
    for topic, payload in messages:
        doc = json.loads(payload)
        parts = topic.split("/")
        if parts[0] == "sensors":
            _, device, sensor = parts
            assert set(doc) == {"ts", "value"}
            assert type(doc["ts"]) is int
            out[(device, sensor, doc["ts"], canonical_value(doc["value"]))] += 1
            continue
        assert parts[0] == "devices"
        device = parts[1]
        for obj in doc if isinstance(doc, list) else [doc]:
            ts = obj.pop("ts")
            assert type(ts) is int
            for sensor, value in obj.items():
                out[(device, sensor, ts, canonical_value(value))] += 1
    return out


def _expected(fleet: Fleet, instants: range) -> set[_Key]:
    return {reading_key(r) for r in fleet.readings(instants.start, len(instants))}


async def _send_and_receive(
    broker: Mosquitto, fleet: Fleet, instants: range, n_messages: int, **kw: Any
) -> tuple[Ledger, Counter[_Key], list[tuple[str, bytes]]]:
    async with Subscriber(broker.port) as sub:
        ledger = await send_fleet(fleet, broker.url, instants=instants, **kw)
        await sub.wait_for(n_messages)
    return ledger, _parse(sub.messages), sub.messages


def _assert_same(ledger: Ledger, received: Counter[_Key], expected: set[_Key]) -> None:
    assert max(received.values()) == 1, "a reading was received twice"
    assert set(received) == expected
    assert ledger.keys() == expected
    assert ledger.count == len(expected)
    assert sorted(map(reading_key, ledger.readings)) == sorted(expected)


async def test_json_mode_one_message_per_device_and_instant(mosquitto: Mosquitto) -> None:
    fleet = Fleet(FleetSpec(seed=4, devices=6, sensors=8, rate_hz=2.0))
    instants = range(3, 33)
    ledger, received, messages = await _send_and_receive(
        mosquitto, fleet, instants, 6 * 30, paced=False
    )
    assert ledger.messages == 6 * 30
    assert {t for t, _ in messages} == {f"devices/{d}" for d in fleet.device_ids}
    _assert_same(ledger, received, _expected(fleet, instants))
    # a value keeps its JSON type on the wire: floats, ints and booleans
    kinds = {json.loads(p)["switch"].__class__ for _, p in messages}
    assert kinds <= {bool}


async def test_value_mode_one_reading_per_message(mosquitto: Mosquitto) -> None:
    fleet = Fleet(FleetSpec(seed=5, devices=4, sensors=3))
    instants = range(20)
    ledger, received, messages = await _send_and_receive(
        mosquitto, fleet, instants, 4 * 3 * 20, mode="value", paced=False
    )
    assert ledger.messages == 240
    assert {t for t, _ in messages} == {
        f"sensors/{d}/{s}" for d in fleet.device_ids for s in fleet.sensor_keys
    }
    _assert_same(ledger, received, _expected(fleet, instants))


async def test_several_instants_per_message(mosquitto: Mosquitto) -> None:
    fleet = Fleet(FleetSpec(seed=6, devices=5, sensors=4))
    instants = range(10)  # groups of 4, 4 and 2 instants
    ledger, received, messages = await _send_and_receive(
        mosquitto, fleet, instants, 5 * 3, instants_per_message=4, paced=False
    )
    assert sorted(len(json.loads(p)) for _, p in messages) == [2] * 5 + [4] * 10
    assert ledger.messages == 15
    _assert_same(ledger, received, _expected(fleet, instants))


async def test_many_blocks_and_a_range_not_starting_at_zero(mosquitto: Mosquitto) -> None:
    # 1,100 instants of one series span two generation blocks (1,023 instants each at K=3)
    fleet = Fleet(FleetSpec(seed=8, devices=1, sensors=2, rate_hz=100.0))
    instants = range(1000, 2100)
    ledger, received, _ = await _send_and_receive(
        mosquitto, fleet, instants, 367, instants_per_message=3, paced=False
    )
    assert ledger.messages == 367
    _assert_same(ledger, received, _expected(fleet, instants))


async def test_paced_sending_in_time_order_with_progress(mosquitto: Mosquitto) -> None:
    fleet = Fleet(FleetSpec(seed=9, devices=3, sensors=2, rate_hz=10.0))
    calls: list[tuple[int, int]] = []
    ledger, received, messages = await _send_and_receive(
        mosquitto,
        fleet,
        range(10),
        30,
        paced=True,
        speed=20.0,
        progress=lambda m, r: calls.append((m, r)),
    )
    _assert_same(ledger, received, _expected(fleet, range(10)))
    assert calls == [(m, 2 * m) for m in range(1, 31)]
    stamps = [json.loads(p)["ts"] for _, p in messages]
    assert stamps == sorted(stamps)


async def test_qos0_records_what_was_sent(mosquitto: Mosquitto) -> None:
    fleet = Fleet(FleetSpec(seed=10, devices=3, sensors=3))
    ledger, received, _ = await _send_and_receive(
        mosquitto, fleet, range(15), 45, qos=0, paced=False
    )
    _assert_same(ledger, received, _expected(fleet, range(15)))


async def test_endless_run_cancelled_keeps_an_exact_prefix(mosquitto: Mosquitto) -> None:
    fleet = Fleet(FleetSpec(seed=11, devices=4, sensors=2, rate_hz=1.0))
    ledger = Ledger()
    async with Subscriber(mosquitto.port) as sub:
        task = asyncio.create_task(
            send_fleet(fleet, mosquitto.url, instants=None, paced=True, speed=500.0, ledger=ledger)
        )

        def sent_200() -> bool:
            assert not task.done(), "the endless run ended"
            return ledger.messages >= 200

        await until(sent_200, "200 messages of the endless run", 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        acked = ledger.messages
        await sub.wait_for(acked)
        received = _parse(sub.messages)
    # messages go out instant by instant, device by device: the acked ones are the first `acked`
    full, extra = divmod(acked, 4)
    expected = _expected(fleet, range(full))
    expected |= {
        reading_key(r) for r in fleet.readings(full, 1) if r.device in fleet.device_ids[:extra]
    }
    assert ledger.keys() == expected
    assert ledger.count == 2 * acked
    assert set(received) >= expected  # a message sent but not acked before cancel may arrive


async def test_an_unreachable_broker_is_an_error() -> None:
    fleet = Fleet(FleetSpec(devices=1, sensors=1))
    with pytest.raises(MqttError, match="cannot connect"):
        await send_fleet(fleet, f"mqtt://127.0.0.1:{free_port()}", instants=range(3))


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"mode": "xml"}, "mode"),
        ({"mode": "value", "instants_per_message": 2}, "instants_per_message"),
        ({"instants_per_message": 0}, "instants_per_message"),
        ({"speed": 0.0}, "speed"),
        ({"qos": 2}, "qos"),
        ({"instants": range(0, 10, 2)}, "instants"),
    ],
)
async def test_bad_arguments_name_the_key(kw: dict[str, Any], key: str) -> None:
    args: dict[str, Any] = {"instants": range(3), **kw}
    with pytest.raises(ConfigError) as err:
        await send_fleet(Fleet(FleetSpec()), "mqtt://127.0.0.1:1", **args)
    assert err.value.key == key


def test_ledger_of_plain_readings() -> None:
    ledger = Ledger()
    rs = [Reading("d", "s", 1, 1.5), Reading("d", "s", 2, value=True), Reading("e", "s", 2, 3)]
    ledger.add(rs[:2])
    ledger.add(rs[2:])
    assert ledger.count == 3
    assert ledger.readings == rs
    assert ledger.keys() == {("d", "s", 1, "1.5"), ("d", "s", 2, "true"), ("e", "s", 2, "3")}


async def test_mqtts_sends_to_a_tls_broker_that_verifies_and_refuses_strangers(
    tmp_path: Path,
) -> None:
    """``mqtts://``: the broker's acknowledgements come back over TLS verified against its CA;
    without that CA, or in plain text, nothing is sent."""
    ca, cert, key = site_tls_files(tmp_path / "tls", "mosquitto")
    fleet = Fleet(FleetSpec(devices=2, sensors=2))
    with Mosquitto(tmp_path / "broker", tls=(ca, cert, key)).start() as broker:
        assert broker.url.startswith("mqtts://")
        trusted = ssl.create_default_context(cafile=str(ca))
        ledger = await send_fleet(fleet, broker.url, instants=range(5), paced=False, tls=trusted)
        assert ledger.count == 2 * 2 * 5
        assert ledger.keys() == _expected(fleet, range(5))
        with pytest.raises(MqttError, match="certificate verify failed"):
            await send_fleet(fleet, broker.url, instants=range(1), paced=False)
        plain = broker.url.replace("mqtts://", "mqtt://")
        with pytest.raises(MqttError):
            await send_fleet(fleet, plain, instants=range(1), paced=False)
