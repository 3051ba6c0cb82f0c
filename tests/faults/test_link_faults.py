"""The link between edge and NATS misbehaves, through the fault proxy (``simulator.faultproxy``):
a partition, a slow link, a lossy link, connection resets. 0 lost, 0 duplicated."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from simulator.faultproxy import LinkFaults
from tests.faults.harness import FaultLab, Load

pytestmark = pytest.mark.slow

LOAD = Load(devices=20, sensors=3, speed=40.0)


async def test_partition_then_heal(make_lab: Callable[..., FaultLab], soak: float) -> None:
    """A partition (bytes stop both ways, connections stay open, as when a cellular link
    drops): publishes time out and are retried; the buffer holds the backlog; after the heal
    the held bytes and the retries arrive, JetStream and the hub drop the doubles."""
    lab = make_lab()
    rounds = 2 if not soak else max(2, int(soak / 6))
    backlog = int(LOAD.readings_per_s * 1.5)

    async def partition() -> None:
        lab.proxy.set_faults(cut=True)
        await lab.until(lambda: lab.unsent() >= backlog, f"a backlog of {backlog} at the edge")
        lab.proxy.heal()

    seconds = 2.0 + rounds * 2.5 + soak
    await lab.rounds("partition (proxy cut) and heal", LOAD, seconds, rounds, partition)


async def test_slow_link(make_lab: Callable[..., FaultLab], soak: float) -> None:
    """200 ms +- 100 ms one way and 32 KB/s each way for the whole run (a poor cellular
    link): slower, nothing lost."""
    lab = make_lab()
    faults = LinkFaults(delay_s=0.2, jitter_s=0.1, rate_bps=32_000)
    lab.proxy.set_faults(faults)
    sending = lab.send(LOAD, max(4.0, soak))
    ledger = await sending.finish()
    await lab.settle([ledger], timeout=120)
    lab.verdict(f"slow link ({faults.describe()})", [ledger])


async def test_lossy_link(make_lab: Callable[..., FaultLab], soak: float) -> None:
    """10 % of chunks hit by loss: most stall 0.2-1 s (retransmission), a quarter of the loss
    events reset the connection (the client reconnects and publishes again)."""
    lab = make_lab()
    faults = LinkFaults(loss=0.1, reset_share=0.25)
    lab.proxy.set_faults(faults)
    sending = lab.send(LOAD, max(5.0, soak))
    ledger = await sending.finish()
    lab.proxy.heal()  # the tail of the run on a good link, so that the check does not wait
    await lab.settle([ledger], timeout=120)
    stats = lab.proxy.stats
    lab.verdict(
        f"lossy link ({faults.describe()})",
        [ledger],
        rounds=stats.stalls + stats.resets,
        note=f"{stats.stalls} stalls, {stats.resets} resets, {stats.accepted} connections",
    )
    assert stats.stalls > 0


async def test_connection_resets(make_lab: Callable[..., FaultLab], soak: float) -> None:
    """TCP RST of the edge's NATS connection at random points of progress (the hub's
    connection to NATS is not proxied and stays up)."""
    lab = make_lab()

    async def reset() -> None:
        await lab.until(lambda: lab.proxy.connections > 0, "the edge connected to NATS")
        assert lab.proxy.reset() == 1  # the edge's one NATS connection

    rounds = 6 if not soak else max(6, int(soak))
    await lab.rounds("connection resets (RST)", LOAD, max(5.0, soak), rounds, reset, least=3)
