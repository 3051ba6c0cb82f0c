"""A fleet file end to end: simulator -> Mosquitto -> edge -> NATS -> hub, compared exactly
with the simulator's ground truth (drifting clocks, dropouts, GPS documents, value topics)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.model import now_us
from simulator.fleet import reading_key
from simulator.fleetfile import load_fleet_file
from simulator.fleetrun import send_fleet_file
from simulator.lab import Lab, LabSettings
from tests.e2e_helpers import assert_exactly, async_wait_until, hub_count, stored_readings

pytestmark = pytest.mark.slow

SITE = Path(__file__).resolve().parent.parent / "examples" / "fleets" / "site.toml"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab", LabSettings(tenant="t1", edge_id="edge-sim")) as lab:
        lab.start()
        yield lab


async def test_a_fleet_file_reaches_the_hub_exactly_as_its_ground_truth(lab: Lab) -> None:
    seconds = 1800.0
    # the last instant about now: device clocks (a few seconds off) stay plausible to the edge
    fleet = load_fleet_file(SITE).with_start(now_us() - int(seconds * 1e6))
    truth = list(fleet.truth(seconds))
    expected = {reading_key(r.reading) for r in truth}
    assert len(expected) == len(truth)
    assert {r.sensor for r in truth} >= {"temp", "gps", "energy", "relay"}
    ledger = await send_fleet_file(fleet, lab.mosquitto.url, seconds=seconds, paced=False)
    assert ledger.keys() == expected
    assert ledger.count == len(expected)
    await async_wait_until(lambda: hub_count(lab) >= ledger.count, 60, "hub to store all readings")
    assert_exactly(ledger, stored_readings(lab.hub_store_path, "t1"))
