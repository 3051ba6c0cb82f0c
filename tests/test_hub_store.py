"""The hub store on a real SQLite file: ingest, dedupe, queries, paging, tenants."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from contract.codec import decode_batch, encode_batch
from contract.model import Reading
from hub.store import IngestResult, SensorInfo, SqliteStore, StoreError


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(tmp_path / "store.sqlite3")
    yield s
    s.close()


def _batch(device: str, sensor: str, ts: list[int], start_value: float = 20.0) -> list[Reading]:
    return [Reading(device, sensor, t, round(start_value + i * 0.01, 2)) for i, t in enumerate(ts)]


def _ingest(store: SqliteStore, tenant: str, edge: str, seq: int, readings: list[Reading]):
    body = encode_batch(readings)
    return store.ingest(tenant, edge, seq, 1, body, decode_batch(body))


def test_ingest_then_queries(store: SqliteStore) -> None:
    a = _batch("d1", "temp", [100, 200, 300]) + [Reading("d1", "imu/accel/x", 150, [1, 2])]
    b = _batch("d2", "temp", [110, 210]) + [Reading("d1", "temp", 400, math.inf, 1)]
    assert _ingest(store, "t", "e1", 1, a) is IngestResult.STORED
    assert _ingest(store, "t", "e1", 2, b) is IngestResult.STORED
    devices = {d.device: {s.sensor: s.count for s in d.sensors} for d in store.devices("t")}
    assert devices == {"d1": {"temp": 4, "imu/accel/x": 1}, "d2": {"temp": 2}}
    latest = {(x.device, x.sensor): (x.ts, x.value, x.flags) for x in store.latest("t")}
    assert latest[("d1", "temp")] == (400, math.inf, 1)
    assert latest[("d1", "imu/accel/x")] == (150, [1, 2], 0)
    page, cursor = store.readings("t", "d1", "temp", 0, 10_000, 100)
    assert [r.ts for r in page] == [100, 200, 300, 400]
    assert cursor is None
    page, _ = store.readings("t", "d1", "temp", 200, 400, 100)
    assert [r.ts for r in page] == [200, 300]
    assert store.stats("t") == {
        "batches": 2,
        "readings": 7,
        "duplicates_skipped": 0,
        "quarantined": 0,
    }


def test_latest_ignores_an_older_batch_arriving_late(store: SqliteStore) -> None:
    _ingest(store, "t", "e1", 2, _batch("d1", "temp", [500], 30.0))
    _ingest(store, "t", "e1", 1, _batch("d1", "temp", [100], 10.0))
    [latest] = store.latest("t")
    assert (latest.ts, latest.value) == (500, 30.0)


def test_same_edge_and_seq_is_stored_once(store: SqliteStore) -> None:
    readings = _batch("d1", "temp", [1, 2, 3])
    assert _ingest(store, "t", "e1", 7, readings) is IngestResult.STORED
    assert _ingest(store, "t", "e1", 7, readings) is IngestResult.DUPLICATE
    assert _ingest(store, "t", "e1", 7, _batch("d9", "x", [5])) is IngestResult.DUPLICATE
    assert len(list(store.export("t"))) == 3
    assert store.stats("t")["duplicates_skipped"] == 2
    # The same seq from another edge, or another tenant's edge of the same name, is new.
    assert _ingest(store, "t", "e2", 7, readings) is IngestResult.STORED
    assert _ingest(store, "u", "e1", 7, readings) is IngestResult.STORED


def test_paging_returns_every_reading_once(store: SqliteStore) -> None:
    # 5 batches with interleaved timestamps and duplicated ts values across batches.
    expected = []
    for seq in range(5):
        ts = [seq + 5 * i for i in range(40)] + [seq * 1000]
        readings = [Reading("d", "s", t, float(seq * 100 + i)) for i, t in enumerate(ts)]
        expected += readings
        _ingest(store, "t", "e", seq, readings)
    got: list[Reading] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = store.readings("t", "d", "s", 0, 10**9, 7, cursor)
        got += page
        pages += 1
        if cursor is None:
            break
    assert sorted((r.ts, r.value) for r in got) == sorted((r.ts, r.value) for r in expected)
    assert [r.ts for r in got] == sorted(r.ts for r in got)
    assert pages >= len(expected) // 7


def test_tenants_are_isolated(store: SqliteStore) -> None:
    _ingest(store, "a", "e1", 1, _batch("d1", "temp", [1]))
    _ingest(store, "b", "e1", 1, _batch("d2", "temp", [1]))
    assert [d.device for d in store.devices("a")] == ["d1"]
    assert [x.device for x in store.latest("b")] == ["d2"]
    assert store.readings("a", "d2", "temp", 0, 10, 10) == ([], None)
    assert not store.has_series("a", "d2")
    assert [r.device for r in store.export("b")] == ["d2"]
    assert store.tenants() == ["a", "b"]


def test_bad_cursor_is_a_store_error(store: SqliteStore) -> None:
    _ingest(store, "t", "e", 1, _batch("d", "s", [1]))
    for bad in ("!!!", "e30", "WzEsMl0"):
        with pytest.raises(StoreError):
            store.readings("t", "d", "s", 0, 10, 10, bad)


def test_reopen_keeps_everything_and_readonly_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    s = SqliteStore(path)
    _ingest(s, "t", "e", 1, _batch("d", "s", [1, 2]))
    s.close()
    s = SqliteStore(path)
    assert _ingest(s, "t", "e", 1, _batch("d", "s", [1, 2])) is IngestResult.DUPLICATE
    s.close()
    ro = SqliteStore(path, readonly=True)
    assert len(list(ro.export("t"))) == 2
    with pytest.raises(StoreError):
        _ingest(ro, "t", "e", 2, _batch("d", "s", [3]))
    ro.close()


def test_quarantine_is_counted(store: SqliteStore) -> None:
    store.quarantine("cairn.telemetry.t.e", "bad-body", "garbage", {"Cairn-Seq": "1"}, b"\x00")
    assert store.stats()["quarantined"] == 1


def test_ingest_many_is_one_by_one_in_one_transaction(tmp_path: Path) -> None:
    batches = [
        ("t", "e1", 1, _batch("d1", "temp", [100, 200], 1.0)),
        ("t", "e1", 2, _batch("d1", "temp", [300, 200], 2.0)),  # newest ts first in the batch
        ("t", "e1", 1, _batch("d9", "x", [1])),  # the same (edge, seq) again in the group
        ("t", "e2", 1, _batch("d1", "temp", [300], 3.0)),  # ties ts 300: the later batch wins
        ("u", "e1", 2, _batch("d1", "temp", [50], 4.0)),
        ("t", "e1", 3, []),  # an empty batch still takes its seq
    ]
    items = []
    for tenant, edge, seq, readings in batches:
        body = encode_batch(readings)
        items.append((tenant, edge, seq, 1, body, decode_batch(body)))
    grouped = SqliteStore(tmp_path / "grouped.sqlite3")
    single = SqliteStore(tmp_path / "single.sqlite3")
    try:
        results = grouped.ingest_many(items)
        assert results == [
            IngestResult.STORED,
            IngestResult.STORED,
            IngestResult.DUPLICATE,
            IngestResult.STORED,
            IngestResult.STORED,
            IngestResult.STORED,
        ]
        assert [single.ingest(*item) for item in items] == results
        for s in (grouped, single):
            assert s.stats("t") == {
                "batches": 4,
                "readings": 5,
                "duplicates_skipped": 1,
                "quarantined": 0,
            }
            [latest] = s.latest("t")
            assert (latest.ts, latest.value) == (300, 3.0)
            assert [(x.device, x.ts, x.value) for x in s.latest("u")] == [("d1", 50, 4.0)]
            edges = {
                (e["tenant"], e["edge"]): (e["batches"], e["readings"], e["last_seq"])
                for e in s.edges()
            }
            assert edges == {("t", "e1"): (3, 4, 3), ("t", "e2"): (1, 1, 1), ("u", "e1"): (1, 1, 2)}
            assert [(i.sensor, i.count, i.last_ts) for i in s.sensors("t", "d1")] == [
                ("temp", 5, 300)
            ]
            page, _ = s.readings("t", "d1", "temp", 0, 1000, 10)
            assert [(r.ts, r.value) for r in page] == [
                (100, 1.0),
                (200, 1.01),
                (200, 2.01),
                (300, 2.0),
                (300, 3.0),
            ]
    finally:
        grouped.close()
        single.close()


def test_sensors_of_a_device(store: SqliteStore) -> None:
    _ingest(
        store,
        "t",
        "e",
        1,
        _batch("d1", "b", [1, 2]) + _batch("d1", "a", [5]) + _batch("d2", "c", [1]),
    )
    assert store.sensors("t", "d1") == [SensorInfo("a", 1, 5), SensorInfo("b", 2, 2)]
    assert store.sensors("t", "d3") == []
    assert store.sensors("other", "d1") == []


def test_readonly_without_a_store_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store at"):
        SqliteStore(tmp_path / "missing.sqlite3", readonly=True)
    assert not (tmp_path / "missing.sqlite3").exists()
