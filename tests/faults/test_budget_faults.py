"""The buffer's disk budget runs out while the uplink is cut, under both policies.

``drop-oldest``: the oldest unsent batches give way; every reading lost is one the edge counts
as dropped (per source), and they are the oldest. ``refuse-new``: the edge stops
acknowledging, the broker keeps the messages, and once the link is back everything arrives.
The file stays within the budget throughout (sampled: the file plus its WAL, within 1 %).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e_helpers import stored_readings
from tests.faults.harness import TENANT, FaultLab, Load

pytestmark = pytest.mark.slow

MAX_BYTES = 1 << 20  # the smallest budget the edge accepts
LOAD = Load(devices=100, sensors=1, speed=1000.0, mode="value", paced=False)
"""One reading per MQTT message (8 bytes of message digest each in the buffer), flat out;
``speed`` only sizes the run: 100,000 readings per "second" of it."""


async def _fill(lab: FaultLab, seconds: float) -> tuple[Any, int]:
    """Send ``seconds`` of ``LOAD`` while the uplink is down, sampling the buffer's file size;
    returns the ledger and the largest size seen."""
    sending = lab.send(LOAD, seconds)
    biggest = 0
    while not sending.task.done():
        biggest = max(biggest, lab.edge_status().get("buffer", {}).get("file_bytes", 0))
        await asyncio.sleep(0.1)  # sampling, not synchronisation
    return await sending.finish(), biggest


def _budget_lab(make_lab: Callable[..., FaultLab], policy: str, *, connected: bool) -> FaultLab:
    """A lab whose edge has a 1 MiB budget and no uplink: never connected (NATS refuses), or
    ``connected`` and then partitioned (publishes stay in flight, unacknowledged)."""
    lab = make_lab(
        start=False,
        extra_buffer_toml=f'max_bytes = {MAX_BYTES}\nfull_policy = "{policy}"\n',
    )
    if not connected:
        lab.proxy.set_faults(refuse=True)
    lab.start()
    if connected:
        lab.proxy.set_faults(cut=True)
    return lab


@pytest.mark.parametrize("policy", ["drop-oldest", "refuse-new"])
async def test_disk_budget_exhausted(
    make_lab: Callable[..., FaultLab], soak: float, policy: str
) -> None:
    """The uplink is down from the start; 110,000 readings arrive, about 1.3 times what fits."""
    lab = _budget_lab(make_lab, policy, connected=False)
    ledger, biggest = await _fill(lab, max(1.1, soak / 10))  # 110k readings: past the budget
    if policy == "drop-oldest":
        await lab.until(
            lambda: lab.edge_status()["sources"]["mqtt"]["accepted"] >= ledger.count,
            "the edge to commit every reading (dropping the oldest)",
        )
    else:
        await lab.until(
            lambda: lab.edge_status()["buffer"]["state"].startswith("full"),
            "the buffer to refuse commits",
        )
    status = lab.edge_status()
    biggest = max(biggest, status["buffer"]["file_bytes"])
    dropped = int(status["counters"]["readings-dropped"])
    lab.proxy.heal()
    await lab.settle([ledger], timeout=120, dropped=dropped)
    outcome = lab.verdict(
        f"disk budget 1 MiB exhausted, {policy}",
        [ledger],
        dropped=dropped,
        note=f"largest buffer file {biggest:,} bytes of {MAX_BYTES:,}",
    )
    assert biggest <= MAX_BYTES * 1.01
    if policy == "drop-oldest":
        assert dropped > 0
        assert status["sources"]["mqtt"]["dropped"] == {"full": dropped}
        # The dropped readings are the oldest: none is newer than a reading that arrived.
        assert len(lab.missing) == dropped
        assert max(k[2] for k in lab.missing) <= min(k[2] for k in lab.kept)
    else:
        assert dropped == 0
        assert outcome.stored == ledger.count
        assert status["counters"]["commit-errors"] > 0


async def test_drop_oldest_counts_only_what_is_lost(make_lab: Callable[..., FaultLab]) -> None:
    """The uplink is partitioned while publishes are in flight, and the budget runs out:
    the readings the edge counts as dropped must be exactly those the hub never gets."""
    lab = _budget_lab(make_lab, "drop-oldest", connected=True)
    ledger, _ = await _fill(lab, 1.1)
    await lab.until(
        lambda: lab.edge_status()["sources"]["mqtt"]["accepted"] >= ledger.count,
        "the edge to commit every reading (dropping the oldest)",
    )
    dropped = int(lab.edge_status()["counters"]["readings-dropped"])
    lab.proxy.heal()
    await lab.settle([ledger], timeout=120, dropped=dropped)
    missing = ledger.keys() - stored_readings(lab.hub_store_path, TENANT).keys()
    assert 0 < len(missing) <= dropped, "lost beyond what the policy dropped"
    assert len(missing) == dropped, (
        f"the edge counted {dropped} readings dropped; {dropped - len(missing)} of them"
        " reached the hub after all (their publish was in flight when they were deleted)"
    )
