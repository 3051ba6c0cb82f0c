"""Processes die or go away: kill -9 of the edge, the hub, the NATS server; hub or NATS away
while the backlog grows. Every test ends with 0 lost and 0 duplicated readings."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import pytest

from tests.e2e_helpers import hub_count
from tests.faults.harness import FaultLab, Load

pytestmark = pytest.mark.slow

LOAD = Load(devices=20, sensors=3, speed=40.0)
"""2,400 readings/s in 800 JSON messages/s."""


def _seconds(soak: float, ci: float) -> float:
    return max(ci, soak)


async def test_edge_kill9_at_random_points(make_lab: Callable[..., FaultLab], soak: float) -> None:
    """SIGKILL of the edge while it receives, commits and forwards; at each round the kill
    point is a random amount of progress of a random kind (readings committed by the edge,
    or stored by the hub), drawn from the seed."""
    lab = make_lab()
    await lab.rounds(
        "edge kill -9 at random points",
        LOAD,
        _seconds(soak, 8.0),
        5 if not soak else max(5, int(soak / 2)),
        lab.restart_edge,
        least=3,
        most=1500,
        counters=(lab.committed, lambda: hub_count(lab)),
    )


async def test_hub_kill9_during_ingest(make_lab: Callable[..., FaultLab], soak: float) -> None:
    """SIGKILL of the hub between a commit and its acks: JetStream redelivers, the store's
    (tenant, edge, seq) key makes the redelivery a no-op."""
    lab = make_lab()

    async def kill() -> None:
        lab.hub.kill()
        await lab.to_thread(lab.start_hub)

    rounds = 3 if not soak else max(3, int(soak / 3))
    await lab.rounds("hub kill -9 during ingest", LOAD, _seconds(soak, 5.0), rounds, kill, least=2)


async def test_nats_kill9_and_restart(make_lab: Callable[..., FaultLab], soak: float) -> None:
    """SIGKILL of nats-server while batches are in flight, restarted once the edge has a
    backlog: publishes that timed out are retried with the same Nats-Msg-Id."""
    lab = make_lab()

    async def kill() -> None:
        lab.nats.kill()
        await lab.until(lambda: lab.unsent() > 0, "a backlog at the edge")
        await lab.to_thread(lab.nats.start)

    rounds = 2 if not soak else max(2, int(soak / 4))
    await lab.rounds("NATS kill -9 and restart", LOAD, _seconds(soak, 5.0), rounds, kill)


@pytest.mark.parametrize("away", ["hub", "nats"])
async def test_away_while_the_backlog_grows(
    make_lab: Callable[..., FaultLab], soak: float, away: str
) -> None:
    """The hub (JetStream holds the backlog) or the NATS server (the edge's buffer holds it)
    is away until a backlog of several seconds of readings has built up (minutes in soak),
    then comes back: everything arrives once."""
    lab = make_lab()
    backlog = int(LOAD.readings_per_s * (2.0 if not soak else soak / 2))
    sending = lab.send(LOAD, 2.0 + backlog / LOAD.readings_per_s + 1.5)
    await lab.progress(lambda: hub_count(lab), 500, "readings at the hub")
    if away == "hub":
        lab.hub.stop()
        await lab.progress(lab.forwarded, backlog, "a backlog in JetStream")
        await lab.to_thread(lab.start_hub)
    else:
        lab.nats.stop()
        await lab.until(lambda: lab.unsent() >= backlog, f"a backlog of {backlog} at the edge")
        await lab.to_thread(lab.nats.start)
    ledger = await sending.finish()
    await lab.settle([ledger])
    lab.verdict(f"{away} away, backlog {backlog:,} readings", [ledger])


async def test_slow_hub_edge_memory_stays_bounded(
    make_lab: Callable[..., FaultLab], soak: float
) -> None:
    """The hub frozen (SIGSTOP) while the edge keeps receiving: the consumer falls behind,
    JetStream and the buffer absorb it, and the edge's memory stays bounded."""
    lab = make_lab()
    warm = lab.send(LOAD, 1.0)
    await warm.finish()
    await lab.settle([warm.ledger])
    idle = lab.rss_bytes()
    seconds = _seconds(soak, 4.0)
    sending = lab.send(LOAD, seconds, first=warm.instants)
    os.kill(lab.hub.pid, signal.SIGSTOP)
    peak = idle
    try:
        while not sending.task.done():
            peak = max(peak, lab.rss_bytes())
            await asyncio.sleep(0.1)  # sampling, not synchronisation
    finally:
        os.kill(lab.hub.pid, signal.SIGCONT)
    ledger = await sending.finish()
    await lab.settle([warm.ledger, ledger])
    mib = 1 << 20
    lab.verdict(
        "slow hub (SIGSTOP)",
        [warm.ledger, ledger],
        note=f"edge RSS idle {idle / mib:.0f} MiB, peak {peak / mib:.0f} MiB",
    )
    assert peak < 2 * idle + 64 * mib, f"edge RSS grew from {idle} to {peak} bytes"
