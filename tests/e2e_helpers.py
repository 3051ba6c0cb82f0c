"""Helpers for the end-to-end tests: run a fleet into a Lab and compare what the hub stored."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from hub.store import SqliteStore
from simulator.fleet import reading_key
from simulator.lab import Lab
from simulator.send import Ledger


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, lab: Lab | None = None
) -> None:
    """Poll ``predicate`` until it holds or ``timeout`` passes (then fail with the logs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    logs = ""
    if lab is not None:
        logs = f"\n--- edge log ---\n{lab.edge.tail()}\n--- hub log ---\n{lab.hub.tail()}"
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{logs}")


async def async_wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stored_readings(store_path: Path, tenant: str) -> Counter[tuple[object, ...]]:
    """Every reading the hub store holds for ``tenant``, as a multiset of identities."""
    store = SqliteStore(store_path, readonly=True)
    try:
        return Counter(reading_key(r) for r in store.export(tenant))
    finally:
        store.close()


def hub_count(lab: Lab) -> int:
    return int(lab.hub_stats().get("readings", -1))


def assert_exactly(ledger: Ledger, stored: Counter[tuple[object, ...]]) -> None:
    """The store holds every acknowledged reading once: nothing missing, nothing twice, nothing else."""
    acked = set(ledger.keys())
    assert len(acked) == ledger.count, "the simulator acknowledged a reading twice"
    missing = acked - stored.keys()
    extra = stored.keys() - acked
    twice = {k: n for k, n in stored.items() if n > 1}
    assert not missing, (
        f"{len(missing)} acknowledged readings missing at the hub, e.g. {sorted(missing)[:3]}"
    )
    assert not extra, f"{len(extra)} readings at the hub nobody sent, e.g. {sorted(extra)[:3]}"
    assert not twice, f"{len(twice)} readings stored more than once, e.g. {list(twice.items())[:3]}"
