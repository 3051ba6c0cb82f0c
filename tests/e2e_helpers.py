"""Helpers for the end-to-end tests: run a fleet into a Lab and compare what the hub stored."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from hub.store import SqliteStore
from simulator.fleet import reading_key
from simulator.lab import Lab
from simulator.send import Ledger
from tests.polling import until


async def async_wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a blocking ``predicate`` (lab status over HTTP) off the event loop."""
    await until(predicate, what, timeout, in_thread=True)


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
