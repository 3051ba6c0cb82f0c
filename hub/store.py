"""The hub's readings store: the only way ingest and API touch data.

Ingest runs at batch speed, not row speed. A received batch is kept as it arrived, one
compressed BLOB row (SQLite writes those at ~760k readings/s here, against ~70k/s for one indexed
row per reading), next to small side tables that must answer at once:

- ``batches``: one row per (tenant, edge, seq), the body as received; the UNIQUE key is what
  makes a redelivered or re-sent batch a no-op, however late it comes (also beyond the
  JetStream duplicate window);
- ``series``: the registry of (tenant, device, sensor) as first seen, with the latest value;
- ``series_batches``: which batches hold readings of a series, and their time range, so a
  range query decodes only the batches that overlap it;
- ``edges``: per edge, counts and the last seq; ``edge_status``: per edge, the latest status
  document it published (``cairn.status.<tenant>.<edge>``) and when it arrived;
  ``quarantine``: rejected batches with the reason.

Everything one batch changes is in one transaction, never split; the ingestor commits each
pull of batches together (:meth:`SqliteStore.ingest_many`, group commit), because a commit costs
about a millisecond whatever it holds. A query decodes the overlapping batches and
merges them; the next step (when series grow long) is a background compaction of many batches
into per-series chunks, behind this same interface, which a PostgreSQL backend also implements.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from contract.codec import Batch, decode_batch
from contract.errors import CairnError
from contract.model import Reading, Value

__all__ = [
    "DeviceInfo",
    "IngestItem",
    "IngestResult",
    "LatestValue",
    "SensorInfo",
    "SqliteStore",
    "Store",
    "StoreError",
]

_SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches(
    id INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL, edge TEXT NOT NULL, seq INTEGER NOT NULL,
    received_us INTEGER NOT NULL, count INTEGER NOT NULL,
    t_min INTEGER, t_max INTEGER, codec INTEGER NOT NULL, body BLOB NOT NULL,
    UNIQUE(tenant, edge, seq));
CREATE TABLE IF NOT EXISTS series(
    id INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL, device TEXT NOT NULL, sensor TEXT NOT NULL,
    first_us INTEGER NOT NULL, count INTEGER NOT NULL DEFAULT 0,
    last_ts INTEGER, last_value TEXT, last_flags INTEGER,
    UNIQUE(tenant, device, sensor));
CREATE TABLE IF NOT EXISTS series_batches(
    series_id INTEGER NOT NULL, batch_id INTEGER NOT NULL,
    t_min INTEGER NOT NULL, t_max INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY(series_id, t_max, batch_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS edges(
    tenant TEXT NOT NULL, edge TEXT NOT NULL,
    first_us INTEGER NOT NULL, last_us INTEGER NOT NULL,
    batches INTEGER NOT NULL, readings INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    PRIMARY KEY(tenant, edge));
CREATE TABLE IF NOT EXISTS quarantine(
    id INTEGER PRIMARY KEY, received_us INTEGER NOT NULL, subject TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, headers TEXT NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS edge_status(
    tenant TEXT NOT NULL, edge TEXT NOT NULL, received_us INTEGER NOT NULL,
    document TEXT NOT NULL, PRIMARY KEY(tenant, edge));
"""

IngestItem = tuple[str, str, int, int, bytes, Batch]
"""(tenant, edge, seq, codec, body, decoded batch): one batch for :meth:`Store.ingest_many`."""

_Key = tuple[int, int, int]
"""Order of readings in a query: (ts, batch id, position in the batch)."""


class StoreError(CairnError):
    """A query asks for something the store cannot answer (bad cursor, bad limit), or there
    is no store to open read-only."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


class IngestResult(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class SensorInfo:
    sensor: str
    count: int
    last_ts: int | None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device: str
    sensors: tuple[SensorInfo, ...]


@dataclass(frozen=True, slots=True)
class LatestValue:
    device: str
    sensor: str
    ts: int
    value: Value
    flags: int


class Store(Protocol):
    """What the hub needs of a store; SQLite now, PostgreSQL behind the same methods later."""

    def ingest(
        self, tenant: str, edge: str, seq: int, codec: int, body: bytes, batch: Batch
    ) -> IngestResult: ...
    def ingest_many(self, items: Sequence[IngestItem]) -> list[IngestResult]: ...
    def quarantine(
        self, subject: str, reason: str, detail: str, headers: dict[str, str], body: bytes
    ) -> None: ...
    def devices(self, tenant: str) -> list[DeviceInfo]: ...
    def sensors(self, tenant: str, device: str) -> list[SensorInfo]: ...
    def has_series(self, tenant: str, device: str, sensor: str | None = None) -> bool: ...
    def latest(self, tenant: str, device: str | None = None) -> list[LatestValue]: ...
    def readings(
        self,
        tenant: str,
        device: str,
        sensor: str,
        start_us: int,
        end_us: int,
        limit: int,
        cursor: str | None = None,
    ) -> tuple[list[Reading], str | None]: ...
    def export(self, tenant: str) -> Iterator[Reading]: ...
    def edges(self, tenant: str | None = None) -> list[dict[str, Any]]: ...
    def put_edge_status(
        self, tenant: str, edge: str, received_us: int, document: dict[str, Any]
    ) -> None: ...
    def tenants(self) -> list[str]: ...
    def stats(self, tenant: str | None = None) -> dict[str, int]: ...
    def close(self) -> None: ...


def _dump_value(v: Value) -> str:
    """JSON text of a value (NaN and infinities as Python's json writes them)."""
    if type(v) is float and math.isfinite(v):
        return repr(v)  # the same text json.dumps makes, without its machinery
    return json.dumps(v, separators=(",", ":"))


_SeriesSummary = tuple[str, str, int, int, int, str, int]
"""(device, sensor, count, t_min, t_max, newest value as JSON, its flags) of a series in a batch."""


def _summarise(batch: Batch) -> list[_SeriesSummary]:
    """What the side tables need of each series of a batch."""
    out = []
    for s in batch.series:
        # A series has a handful of readings per batch: plain Python on lists beats numpy
        # calls on tiny arrays here (this loop is the per-batch cost).
        ts = s.ts.tolist()
        n = len(ts)
        if n == 0:
            continue
        t_max = max(ts)
        last = n - 1 - ts[::-1].index(t_max)  # the newest; the later one on a tie
        out.append(
            (s.device, s.sensor, n, min(ts), t_max, _dump_value(s.values[last]), int(s.flags[last]))
        )
    return out


def _encode_cursor(key: _Key) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> _Key:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise StoreError("malformed cursor") from exc
    if not (isinstance(raw, list) and len(raw) == 3 and all(type(x) is int for x in raw)):
        raise StoreError("malformed cursor")
    return raw[0], raw[1], raw[2]


def _series_readings(
    body: bytes,
    batch_id: int,
    device: str,
    sensor: str,
    window: tuple[int, int],
    after: _Key | None,
) -> Iterator[tuple[_Key, Reading]]:
    """The readings of one series in one stored batch within ``window``, keyed for ordering."""
    start_us, end_us = window
    for s in decode_batch(body).series:
        if s.device != device or s.sensor != sensor:
            continue
        rows = zip(s.ts.tolist(), s.values, s.flags.tolist(), strict=True)
        for idx, (t, v, f) in enumerate(rows):
            key = (t, batch_id, idx)
            if start_us <= t < end_us and (after is None or key > after):
                yield key, Reading(device, sensor, t, v, f)


class SqliteStore:
    """The store in one SQLite file (WAL). One writer connection, used from one thread at a
    time (the ingestor's); readers get a connection per thread."""

    def __init__(self, path: Path, synchronous: str = "normal", *, readonly: bool = False) -> None:
        self.path = path
        self.synchronous = synchronous.upper()
        self.readonly = readonly
        self._local = threading.local()
        self._writer: sqlite3.Connection | None = None
        self._series_ids: dict[tuple[str, str, str], int] = {}
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._status_lock = threading.Lock()
        self._status_con: sqlite3.Connection | None = None
        if readonly and not path.is_file():
            raise StoreError(f"no store at {path} (has the hub run with this config?)")
        if not readonly:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            con = self._writer_con()
            con.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            con.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES('schema_version', ?)",
                (str(_SCHEMA_VERSION),),
            )
            con.executemany(
                "INSERT OR IGNORE INTO counters(name, value) VALUES(?, 0)",
                [("duplicates_skipped",), ("quarantined",)],
            )
            con.execute("COMMIT")

    # ------------------------------------------------------------ connections
    def _connect(self, readonly: bool) -> sqlite3.Connection:
        if readonly:
            con = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
            )
        else:
            con = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(f"PRAGMA synchronous={self.synchronous}")
        con.execute("PRAGMA busy_timeout=10000")
        with self._lock:
            self._all.append(con)
        return con

    def _writer_con(self) -> sqlite3.Connection:
        if self.readonly:
            raise StoreError("store opened read-only")
        if self._writer is None:
            self._writer = self._connect(readonly=False)
        return self._writer

    def _reader(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            con = self._connect(readonly=True)
            self._local.con = con
        return con

    def close(self) -> None:
        """Close every connection, the writer last: the last one to close checkpoints the WAL
        into the database file (a read-only one cannot)."""
        with self._lock:
            for con in sorted(self._all, key=lambda c: c is self._writer):
                con.close()
            self._all.clear()
        self._writer = None
        self._status_con = None
        self._local = threading.local()

    # ----------------------------------------------------------------- ingest
    def _series_id(self, con: sqlite3.Connection, key: tuple[str, str, str], now: int) -> int:
        sid = self._series_ids.get(key)
        if sid is None:
            row = con.execute(
                "SELECT id FROM series WHERE tenant=? AND device=? AND sensor=?", key
            ).fetchone()
            if row is None:
                cur = con.execute(
                    "INSERT INTO series(tenant, device, sensor, first_us) VALUES(?,?,?,?)",
                    (*key, now),
                )
                sid = int(cur.lastrowid or 0)
            else:
                sid = int(row[0])
            self._series_ids[key] = sid
        return sid

    def ingest(
        self, tenant: str, edge: str, seq: int, codec: int, body: bytes, batch: Batch
    ) -> IngestResult:
        """Store one batch, all of it in one transaction; a known (tenant, edge, seq) is a no-op."""
        return self.ingest_many([(tenant, edge, seq, codec, body, batch)])[0]

    def ingest_many(self, items: Sequence[IngestItem]) -> list[IngestResult]:
        """Store several batches in one transaction (group commit), each as :meth:`ingest` would.

        A commit costs about a millisecond whatever it holds (the pages of the per-series
        tables it touches go to the WAL once), so committing one pull of batches together
        instead of each on its own multiplies the rate at which small batches drain. Each
        batch is still all-or-nothing; an exception rolls back the whole group.
        """
        con = self._writer_con()
        now = time.time_ns() // 1000
        results: list[IngestResult] = []
        index_rows: list[tuple[int, int, int, int, int]] = []
        latest: dict[int, list[Any]] = {}  # series id -> [count, last_ts, last_value, last_flags]
        edges: dict[tuple[str, str], list[int]] = {}  # -> [batches, readings, last_seq]
        duplicates = 0
        con.execute("BEGIN IMMEDIATE")
        try:
            for tenant, edge, seq, codec, body, batch in items:
                parts = _summarise(batch)
                count = sum(p[2] for p in parts)
                t_min = min((p[3] for p in parts), default=None)
                t_max = max((p[4] for p in parts), default=None)
                cur = con.execute(
                    "INSERT OR IGNORE INTO batches(tenant, edge, seq, received_us, count, t_min,"
                    " t_max, codec, body) VALUES(?,?,?,?,?,?,?,?,?)",
                    (tenant, edge, seq, now, count, t_min, t_max, codec, body),
                )
                if cur.rowcount == 0:
                    duplicates += 1
                    results.append(IngestResult.DUPLICATE)
                    continue
                batch_id = int(cur.lastrowid or 0)
                for device, sensor, n, lo, hi, value, flags in parts:
                    sid = self._series_id(con, (tenant, device, sensor), now)
                    index_rows.append((sid, batch_id, lo, hi, n))
                    known = latest.get(sid)
                    if known is None:
                        latest[sid] = [n, hi, value, flags]
                    else:
                        known[0] += n
                        if hi >= known[1]:  # the later batch wins a tie, as one by one
                            known[1:] = [hi, value, flags]
                per_edge = edges.setdefault((tenant, edge), [0, 0, seq])
                per_edge[0] += 1
                per_edge[1] += count
                per_edge[2] = max(per_edge[2], seq)
                results.append(IngestResult.STORED)
            con.executemany(
                "INSERT INTO series_batches(series_id, batch_id, t_min, t_max, count)"
                " VALUES(?,?,?,?,?)",
                index_rows,
            )
            con.executemany(
                "UPDATE series SET count = count + ?,"
                " last_value = CASE WHEN last_ts IS NULL OR ? >= last_ts"
                " THEN ? ELSE last_value END,"
                " last_flags = CASE WHEN last_ts IS NULL OR ? >= last_ts"
                " THEN ? ELSE last_flags END,"
                " last_ts = CASE WHEN last_ts IS NULL OR ? >= last_ts THEN ? ELSE last_ts END"
                " WHERE id = ?",
                [(n, t, v, t, f, t, t, sid) for sid, (n, t, v, f) in latest.items()],
            )
            con.executemany(
                "INSERT INTO edges(tenant, edge, first_us, last_us, batches, readings, last_seq)"
                " VALUES(?,?,?,?,?,?,?) ON CONFLICT(tenant, edge) DO UPDATE SET"
                " last_us = excluded.last_us, batches = batches + excluded.batches,"
                " readings = readings + excluded.readings,"
                " last_seq = max(last_seq, excluded.last_seq)",
                [(t, e, now, now, b, r, q) for (t, e), (b, r, q) in edges.items()],
            )
            if duplicates:
                con.execute(
                    "UPDATE counters SET value = value + ? WHERE name = 'duplicates_skipped'",
                    (duplicates,),
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            # Series rows made in this transaction are gone too: forget cached ids.
            self._series_ids.clear()
            raise
        return results

    def quarantine(
        self, subject: str, reason: str, detail: str, headers: dict[str, str], body: bytes
    ) -> None:
        """Keep a rejected batch with the reason, for an operator to look at."""
        con = self._writer_con()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute(
                "INSERT INTO quarantine(received_us, subject, reason, detail, headers, body)"
                " VALUES(?,?,?,?,?,?)",
                (time.time_ns() // 1000, subject, reason, detail, json.dumps(headers), body),
            )
            con.execute("UPDATE counters SET value = value + 1 WHERE name = 'quarantined'")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    # ---------------------------------------------------------------- queries
    def devices(self, tenant: str) -> list[DeviceInfo]:
        rows = self._reader().execute(
            "SELECT device, sensor, count, last_ts FROM series WHERE tenant=?"
            " ORDER BY device, sensor",
            (tenant,),
        )
        out: dict[str, list[SensorInfo]] = {}
        for device, sensor, count, last_ts in rows:
            out.setdefault(device, []).append(SensorInfo(sensor, count, last_ts))
        return [DeviceInfo(d, tuple(s)) for d, s in out.items()]

    def sensors(self, tenant: str, device: str) -> list[SensorInfo]:
        """The sensors of one device (empty if the tenant has no such device)."""
        rows = self._reader().execute(
            "SELECT sensor, count, last_ts FROM series WHERE tenant=? AND device=? ORDER BY sensor",
            (tenant, device),
        )
        return [SensorInfo(sensor, count, last_ts) for sensor, count, last_ts in rows]

    def has_series(self, tenant: str, device: str, sensor: str | None = None) -> bool:
        q = "SELECT 1 FROM series WHERE tenant=? AND device=?"
        args: tuple[str, ...] = (tenant, device)
        if sensor is not None:
            q += " AND sensor=?"
            args = (tenant, device, sensor)
        return self._reader().execute(q + " LIMIT 1", args).fetchone() is not None

    def latest(self, tenant: str, device: str | None = None) -> list[LatestValue]:
        q = (
            "SELECT device, sensor, last_ts, last_value, last_flags FROM series"
            " WHERE tenant=? AND last_ts IS NOT NULL"
        )
        args: tuple[str, ...] = (tenant,)
        if device is not None:
            q += " AND device=?"
            args = (tenant, device)
        rows = self._reader().execute(q + " ORDER BY device, sensor", args)
        return [LatestValue(d, s, t, json.loads(v), f) for d, s, t, v, f in rows]

    def readings(
        self,
        tenant: str,
        device: str,
        sensor: str,
        start_us: int,
        end_us: int,
        limit: int,
        cursor: str | None = None,
    ) -> tuple[list[Reading], str | None]:
        """Readings with ``start_us <= ts < end_us``, oldest first, at most ``limit``.

        Ties in ``ts`` are ordered by batch, then by position in the batch. ``cursor`` (from a
        previous page) resumes right after that page's last reading.
        """
        if limit < 1:
            raise StoreError("limit must be at least 1")
        after = _decode_cursor(cursor) if cursor else None
        if after is not None:
            start_us = max(start_us, after[0])
        con = self._reader()
        row = con.execute(
            "SELECT id FROM series WHERE tenant=? AND device=? AND sensor=?",
            (tenant, device, sensor),
        ).fetchone()
        if row is None or start_us >= end_us:
            return [], None
        parts = con.execute(
            "SELECT sb.batch_id, sb.t_min, b.body FROM series_batches sb"
            " JOIN batches b ON b.id = sb.batch_id"
            " WHERE sb.series_id=? AND sb.t_max >= ? AND sb.t_min < ?"
            " ORDER BY sb.t_min, sb.batch_id",
            (row[0], start_us, end_us),
        ).fetchall()
        found: list[tuple[_Key, Reading]] = []
        stopped_early = False
        for i, (batch_id, _t_min, body) in enumerate(parts):
            found.extend(
                _series_readings(body, batch_id, device, sensor, (start_us, end_us), after)
            )
            # Batches come in t_min order: once `limit` readings lie before the next batch's
            # t_min, no later batch can put a reading among them.
            if len(found) >= limit and i + 1 < len(parts):
                nxt = parts[i + 1][1]
                if sum(1 for k, _ in found if k[0] < nxt) >= limit:
                    stopped_early = True
                    break
        found.sort(key=lambda kr: kr[0])
        page = found[:limit]
        more = len(found) > limit or stopped_early
        next_cursor = _encode_cursor(page[-1][0]) if page and more else None
        return [r for _, r in page], next_cursor

    def export(self, tenant: str) -> Iterator[Reading]:
        """Every reading of every stored batch of ``tenant`` (one stored twice comes twice)."""
        rows = self._reader().execute(
            "SELECT body FROM batches WHERE tenant=? ORDER BY id", (tenant,)
        )
        for (body,) in rows:
            yield from decode_batch(body).readings()

    def edges(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every edge that sent batches or a status document: its counts, and the latest
        status document it published (``status``, ``status_us``; ``None`` if it never did)."""
        q = "SELECT tenant, edge, first_us, last_us, batches, readings, last_seq FROM edges"
        args: tuple[str, ...] = ()
        if tenant is not None:
            q += " WHERE tenant=?"
            args = (tenant,)
        cols = ("tenant", "edge", "first_us", "last_us", "batches", "readings", "last_seq")
        con = self._reader()
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for r in con.execute(q, args):
            row = dict(zip(cols, r, strict=True))
            row["status_us"] = row["status"] = None
            found[row["tenant"], row["edge"]] = row
        q = "SELECT tenant, edge, received_us, document FROM edge_status"
        if tenant is not None:
            q += " WHERE tenant=?"
        try:
            status_rows = con.execute(q, args).fetchall()
        except sqlite3.OperationalError:  # a store made before edge_status, opened read-only
            status_rows = []
        for t, e, received_us, document in status_rows:
            known = found.get((t, e))
            if known is None:
                known = found[t, e] = {
                    "tenant": t,
                    "edge": e,
                    "first_us": None,
                    "last_us": None,
                    "batches": 0,
                    "readings": 0,
                    "last_seq": None,
                }
            known["status_us"] = received_us
            known["status"] = json.loads(document)
        return [found[k] for k in sorted(found)]

    def put_edge_status(
        self, tenant: str, edge: str, received_us: int, document: dict[str, Any]
    ) -> None:
        """Keep ``document`` as the latest status of (tenant, edge). Its own connection and
        lock: the status listener writes beside the ingestor (SQLite serialises the two)."""
        text = json.dumps(document, separators=(",", ":"))
        with self._status_lock:
            if self._status_con is None:
                self._status_con = self._connect(readonly=False)
            self._status_con.execute(
                "INSERT INTO edge_status(tenant, edge, received_us, document) VALUES(?,?,?,?)"
                " ON CONFLICT(tenant, edge) DO UPDATE SET received_us = excluded.received_us,"
                " document = excluded.document",
                (tenant, edge, received_us, text),
            )

    def tenants(self) -> list[str]:
        con = self._reader()
        try:
            rows = con.execute(
                "SELECT tenant FROM series UNION SELECT tenant FROM edges"
                " UNION SELECT tenant FROM edge_status ORDER BY 1"
            ).fetchall()
        except sqlite3.OperationalError:  # a store made before edge_status, opened read-only
            rows = con.execute(
                "SELECT tenant FROM series UNION SELECT tenant FROM edges ORDER BY 1"
            ).fetchall()
        return [r[0] for r in rows]

    def stats(self, tenant: str | None = None) -> dict[str, int]:
        con = self._reader()
        q = "SELECT coalesce(sum(batches), 0), coalesce(sum(readings), 0) FROM edges"
        args: tuple[str, ...] = ()
        if tenant is not None:
            q += " WHERE tenant=?"
            args = (tenant,)
        batches, readings = con.execute(q, args).fetchone()
        counters = dict(con.execute("SELECT name, value FROM counters").fetchall())
        return {
            "batches": int(batches),
            "readings": int(readings),
            "duplicates_skipped": int(counters.get("duplicates_skipped", 0)),
            "quarantined": int(counters.get("quarantined", 0)),
        }
