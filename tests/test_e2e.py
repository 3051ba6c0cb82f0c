"""End to end with real processes: simulator -> Mosquitto -> edge -> NATS JetStream -> hub -> store/API.

Each test compares sets exactly: the readings the broker acknowledged to the simulated devices
against the readings the hub store holds (nothing missing, nothing twice, nothing else).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.fleet import Fleet, FleetSpec
from simulator.lab import Lab, LabSettings
from simulator.send import Ledger, send_fleet
from tests.e2e_helpers import (
    assert_exactly,
    async_wait_until,
    hub_count,
    stored_readings,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab", LabSettings(tenant="t1", edge_id="edge-e2e")) as lab:
        lab.start()
        yield lab


def _fleet(devices: int, sensors: int = 3, seed: int = 7) -> Fleet:
    return Fleet(FleetSpec(seed=seed, devices=devices, sensors=sensors, rate_hz=1.0))


async def test_fleet_over_mqtt_reaches_hub_exactly_once(lab: Lab) -> None:
    fleet = _fleet(devices=20)
    instants = 50  # 20 devices x 3 sensors x 50 instants = 3,000 readings
    ledger = await send_fleet(fleet, lab.mosquitto.url, instants=range(instants), paced=False)
    assert ledger.count == 20 * 3 * instants
    await async_wait_until(lambda: hub_count(lab) >= ledger.count, 60, "hub to store all readings")
    assert_exactly(ledger, stored_readings(lab.hub_store_path, "t1"))

    # The API serves the same data: one sensor's readings, in time order, and the latest values.
    device = fleet.device_ids[3]
    page = lab.api(f"/devices/{device}/readings?sensor={fleet.sensor_keys[0]}&limit=1000")
    expected = fleet.values(3, 0, 0, instants)
    assert [r["value"] for r in page["readings"]] == expected
    assert [r["ts"] for r in page["readings"]] == [fleet.ts(i) for i in range(instants)]
    latest = {(x["device"], x["sensor"]): x["value"] for x in lab.api("/latest")["latest"]}
    assert len(latest) == 20 * 3
    assert latest[(device, fleet.sensor_keys[0])] == expected[-1]


async def test_value_topics_one_reading_per_message(lab: Lab) -> None:
    fleet = _fleet(devices=5)
    ledger = await send_fleet(
        fleet, lab.mosquitto.url, instants=range(40), mode="value", paced=False
    )
    assert ledger.count == 5 * 3 * 40
    await async_wait_until(lambda: hub_count(lab) >= ledger.count, 60, "hub to store all readings")
    assert_exactly(ledger, stored_readings(lab.hub_store_path, "t1"))


async def _send_in_background(
    fleet: Fleet, lab: Lab, instants: int, speed: float
) -> tuple[asyncio.Task[Ledger], Ledger]:
    ledger = Ledger()
    task = asyncio.create_task(
        send_fleet(
            fleet,
            lab.mosquitto.url,
            instants=range(instants),
            paced=True,
            speed=speed,
            ledger=ledger,
        )
    )
    return task, ledger


async def test_edge_killed_while_forwarding_loses_nothing(lab: Lab) -> None:
    fleet = _fleet(devices=30)
    task, ledger = await _send_in_background(fleet, lab, instants=60, speed=20.0)
    for _round in range(3):
        await async_wait_until(lambda: hub_count(lab) > 0, 60, "hub to store readings")
        before = hub_count(lab)
        # Kill while the edge is busy: wait until the hub has more than before, then SIGKILL.
        # (On a slow machine the sender may finish first: then there is nothing left to kill.)
        await async_wait_until(
            lambda b=before: hub_count(lab) > b or hub_count(lab) >= ledger.count,
            60,
            "forwarding in progress",
        )
        if task.done() and hub_count(lab) >= ledger.count:
            break
        lab.edge.kill()
        lab.start_edge()
    await task
    await async_wait_until(lambda: hub_count(lab) >= ledger.count, 90, "hub to store all readings")
    assert_exactly(ledger, stored_readings(lab.hub_store_path, "t1"))


async def test_hub_killed_during_ingest_loses_nothing(lab: Lab) -> None:
    fleet = _fleet(devices=30)
    task, ledger = await _send_in_background(fleet, lab, instants=60, speed=20.0)
    for _round in range(2):
        before = hub_count(lab)
        await async_wait_until(
            lambda b=before: hub_count(lab) > max(b, 0) or hub_count(lab) >= ledger.count,
            60,
            "ingest in progress",
        )
        if task.done() and hub_count(lab) >= ledger.count:
            break
        lab.hub.kill()
        lab.start_hub()
    await task
    await async_wait_until(lambda: hub_count(lab) >= ledger.count, 90, "hub to store all readings")
    assert_exactly(ledger, stored_readings(lab.hub_store_path, "t1"))


async def test_nats_killed_and_restarted_mid_stream_loses_nothing(lab: Lab) -> None:
    fleet = _fleet(devices=30)
    task, ledger = await _send_in_background(fleet, lab, instants=60, speed=20.0)
    await async_wait_until(lambda: hub_count(lab) > 0, 60, "hub to store readings")
    lab.nats.kill()
    # The edge keeps committing into its buffer while NATS is away.
    unsent = lambda: lab.edge_status().get("buffer", {}).get("readings_unsent", 0)  # noqa: E731
    await async_wait_until(lambda: unsent() > 0, 60, "a backlog in the edge buffer")
    lab.nats.start()
    await task
    await async_wait_until(lambda: hub_count(lab) >= ledger.count, 90, "hub to store all readings")
    assert_exactly(ledger, stored_readings(lab.hub_store_path, "t1"))


def test_api_requires_a_valid_token(lab: Lab) -> None:
    import json
    import urllib.error
    import urllib.request

    def status(token: str | None) -> tuple[int, dict[str, object]]:
        req = urllib.request.Request(lab.api_url + "/devices")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5, context=lab.api_ssl_context) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    good = lab.token()
    assert status(good)[0] == 200
    code, body = status(None)
    assert code == 401
    assert "error" in body
    head, payload, sig = good.split(".")
    tampered = ".".join([head, payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB"), sig])
    assert status(tampered)[0] == 401
    assert status(good + "x")[0] == 401


async def test_mqtt_flow_control_bounds_what_the_edge_holds(tmp_path: Path) -> None:
    """The broker never has more than receive_maximum messages unacknowledged at the edge,
    so a flood waits at the broker, not in the edge's memory: until the first commit, the edge
    has received exactly receive_maximum messages of the 600 on their way."""
    settings = LabSettings(
        tenant="t1",
        edge_id="edge-flow",
        receive_maximum=100,
        flush_interval_ms=3000,
        max_batch_readings=100_000,
    )
    with Lab(tmp_path / "lab", settings) as lab:
        lab.start(hub=False)
        fleet = _fleet(devices=200, sensors=1)
        ledger = await send_fleet(
            fleet, lab.mosquitto.url, instants=range(3), paced=False, mode="value"
        )
        assert ledger.count == 600  # the broker holds them all
        seen: list[int] = []

        def first_commit() -> bool:
            st = lab.edge_status()
            seen.append(st["sources"]["mqtt"]["messages"])
            return st["buffer"]["readings_unsent"] > 0

        await async_wait_until(first_commit, 30, "the first commit")
        assert seen[:-1], "the edge committed before the first look"
        assert max(seen[:-1]) == 100
        await async_wait_until(
            lambda: lab.edge_status()["buffer"]["readings_unsent"] == 600, 60, "all committed"
        )


def test_demo_runs_and_stops_everything(tmp_path: Path) -> None:
    """The README's first command, minus the setup: the demo comes up, readings reach the hub,
    it prints a curl line, and every process it started is gone when it stops."""
    import re
    import subprocess
    import sys

    root = tmp_path / "demo"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulator",
            "demo",
            "--duration",
            "6",
            "--devices",
            "5",
            "--dir",
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every process stopped" in out.stdout
    stored = [int(m.replace(",", "")) for m in re.findall(r"stored at hub\s+([\d,]+)", out.stdout)]
    assert stored, out.stdout
    assert stored[-1] > 0, out.stdout
    curl = re.search(
        r'curl -s --cacert (\S+) -H "Authorization: Bearer (\S+)" (https://\S+/latest\?device=\S+)',
        out.stdout,
    )
    assert curl is not None, out.stdout
    leftovers = subprocess.run(
        ["pgrep", "-f", str(root)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout.strip() == "", "processes of the demo still running"
