"""The edge buffer: sealed batches in one SQLite file, until JetStream has acknowledged them.

One row per committed batch (the group commit of a flush)::

    batches(seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the batch's number, never reused
            created_us, count, t_min, t_max,         -- when sealed; readings; their ts range
            codec, body BLOB,                        -- contract.codec version and bytes
            digests BLOB,                            -- 8-byte digests of the MQTT messages in it
            sources TEXT,                            -- JSON {source: readings} of the batch
            sent_us)                                 -- when JetStream acked it (NULL: unsent)

plus partial indexes on the unsent and the sent rows and a ``meta`` table (schema version,
budget). The journal is WAL; ``synchronous`` comes from the config (``full`` by default).

Disk budget (:class:`BufferLimits`): the database file plus its WAL stay within ``max_bytes``.
A part of the budget (1/16, 256 KiB..16 MiB) is kept for the WAL, whose checkpoints are sized
to fit it; the rest bounds the pages in use, counted exactly by SQLite (``page_count -
freelist_count``) inside the transaction that adds a batch. To make room, a commit first
deletes the oldest *sent* batches (the local history), then, under ``drop-oldest``, the oldest
unsent ones (returned as :class:`Dropped`, so their readings are counted per source); under
``refuse-new``, or when even that is not enough, the commit is rolled back and
:class:`BufferFullError` raised. Pages freed by deletes are reused first; ``auto_vacuum =
INCREMENTAL`` lets :meth:`Buffer.maintain` give them back to the file system when many are free,
so the file shrinks after a backlog drained. :meth:`Buffer.maintain` also removes sent batches
older than ``sent_history_s`` and, if ``max_age_s`` is set, unsent ones older than that.

Threads: writes go through one connection used from one dedicated thread (``*_async`` write
methods run there, so the event loop never waits on a commit); reads use a second connection
that any thread may use (``unsent_async`` runs in a worker thread). Both are guarded by locks,
so the synchronous methods are safe from any thread too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

from contract.errors import CairnError
from contract.model import now_us

__all__ = [
    "DIGEST_SIZE",
    "SCHEMA_VERSION",
    "Appended",
    "Buffer",
    "BufferFileError",
    "BufferFullError",
    "BufferLimits",
    "BufferStats",
    "Dropped",
    "StoredBatch",
    "read_stats",
]

_log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2
"""Version of the buffer schema this code writes (``meta.schema_version``). Version 1 files
(no ``sources`` column, no auto-vacuum) are upgraded in place when opened."""
DIGEST_SIZE: Final = 8
"""Bytes of one message digest in ``batches.digests``."""
_BUSY_TIMEOUT_MS: Final = 5_000
_P = ParamSpec("_P")
_R = TypeVar("_R")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    created_us INTEGER NOT NULL,
    count      INTEGER NOT NULL,
    t_min      INTEGER,
    t_max      INTEGER,
    codec      INTEGER NOT NULL,
    body       BLOB    NOT NULL,
    digests    BLOB    NOT NULL DEFAULT x'',
    sent_us    INTEGER,
    sources    TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS batches_unsent ON batches (seq) WHERE sent_us IS NULL;
CREATE INDEX IF NOT EXISTS batches_sent ON batches (seq) WHERE sent_us IS NOT NULL;
"""
_MIB: Final = 1 << 20
_WAL_RESERVE_MIN: Final = 256 * 1024
_WAL_RESERVE_MAX: Final = 16 * _MIB
_ROW_OVERHEAD: Final = 96
"""Bytes of a row besides its body, digests and sources (header, integers, index entries)."""
_SEQ_END: Final = (1 << 63) - 1
"""The largest SQLite integer: above every ``seq``."""
_PRUNE_CHUNK: Final = 2_000
"""Rows deleted per transaction by :meth:`Buffer.maintain` (keeps each write lock short)."""
_VACUUM_FREE_FRACTION: Final = 0.25
""":meth:`Buffer.maintain` returns free pages to the file system when more than this fraction
of the file's pages (and at least 1 MiB) are free."""

_TOTALS_SQL: Final = """
SELECT count(*), coalesce(sum(count), 0), coalesce(sum(length(body)), 0),
       coalesce(sum(sent_us IS NULL), 0),
       coalesce(sum(CASE WHEN sent_us IS NULL THEN count ELSE 0 END), 0),
       coalesce(sum(CASE WHEN sent_us IS NULL THEN length(body) ELSE 0 END), 0)
FROM batches
"""
_OLDEST_SQL: Final = "SELECT created_us FROM batches WHERE sent_us IS NULL ORDER BY seq LIMIT 1"
_LAST_SEQ_SQL: Final = "SELECT coalesce(max(seq), 0) FROM batches"


class BufferFileError(CairnError):
    """The buffer file cannot be opened or is not a Cairn buffer."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"buffer {path}: {problem}")


class BufferFullError(CairnError):
    """A batch was not committed: the buffer is full (``refuse-new``) or cannot be written.

    ``reason`` is ``"full"`` (the disk budget) or ``"disk-error"`` (ENOSPC, I/O error...)."""

    def __init__(self, reason: str, detail: str, *, too_large: bool = False) -> None:
        self.reason = reason
        self.detail = detail
        self.too_large = too_large
        """The batch alone exceeds the budget (no other unsent batch is left to give way):
        it can never be committed whole, retrying is pointless."""
        super().__init__(f"buffer {reason}: {detail}")


@dataclass(frozen=True, slots=True)
class BufferLimits:
    """How much the buffer may hold and what gives way when it is full."""

    max_bytes: int = 1 << 30
    """Budget of the database file plus its WAL, in bytes (at least 1 MiB)."""
    policy: str = "drop-oldest"
    """``"drop-oldest"`` (unsent batches, oldest first, give way to new ones) or
    ``"refuse-new"`` (new batches are refused while the unsent ones fill the budget)."""
    sent_history_s: float = 86_400.0
    """Sent batches are kept this long (seconds) for local history, while space allows."""
    max_age_s: float = 0.0
    """Unsent batches older than this (seconds) are dropped; 0 = no age limit."""

    def __post_init__(self) -> None:
        if self.max_bytes < _MIB:
            raise ValueError(f"max_bytes must be at least {_MIB}, got {self.max_bytes}")
        if self.policy not in {"drop-oldest", "refuse-new"}:
            raise ValueError(f"policy must be drop-oldest or refuse-new, not {self.policy!r}")

    @property
    def wal_reserve(self) -> int:
        """Bytes of the budget kept for the WAL."""
        return min(max(self.max_bytes // 16, _WAL_RESERVE_MIN), _WAL_RESERVE_MAX)

    @property
    def data_limit(self) -> int:
        """Bytes of database pages in use that the buffer never exceeds."""
        return self.max_bytes - self.wal_reserve


@dataclass(frozen=True, slots=True)
class Dropped:
    """Unsent batches deleted unsent (by the budget or the age limit)."""

    batches: int
    readings: int
    sources: dict[str, int]
    """Readings per source."""
    reason: str
    """``"full"`` (the budget, policy ``drop-oldest``) or ``"age"`` (``max_age_s``)."""


@dataclass(frozen=True, slots=True)
class Appended:
    """What :meth:`Buffer.append_batch` did."""

    seq: int
    dropped: Dropped | None
    """Unsent batches deleted to make room (policy ``drop-oldest``), if any."""


@dataclass(frozen=True, slots=True)
class BufferStats:
    """Counts of what the buffer holds."""

    batches_unsent: int
    readings_unsent: int
    batches_sent: int
    readings_sent: int
    bytes_unsent: int
    """Bytes of the bodies of the unsent batches."""
    file_bytes: int
    """Size of the database file plus its WAL."""
    oldest_unsent_us: int | None
    """``created_us`` of the oldest unsent batch (``None`` when all are sent)."""
    last_seq: int
    """The newest batch's ``seq`` (0 when there is none)."""
    max_bytes: int = 0
    """The budget of ``file_bytes`` (0 if unknown)."""
    used_bytes: int = 0
    """Bytes of database pages in use (what the budget bounds, besides the WAL)."""
    policy: str = ""
    """What gives way when the budget is reached: ``drop-oldest`` or ``refuse-new``."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """An unsent batch as the forwarder needs it."""

    seq: int
    created_us: int
    count: int
    codec: int
    body: bytes


@dataclass
class _Totals:
    batches: int = 0
    readings: int = 0
    bytes: int = 0
    batches_unsent: int = 0
    readings_unsent: int = 0
    bytes_unsent: int = 0

    def remove(self, count: int, length: int, *, sent: bool) -> None:
        self.batches -= 1
        self.readings -= count
        self.bytes -= length
        if not sent:
            self.batches_unsent -= 1
            self.readings_unsent -= count
            self.bytes_unsent -= length


class _DropTally:
    """Unsent rows deleted in one go, summed per source."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.batches = 0
        self.readings = 0
        self.sources: dict[str, int] = {}

    def add(self, count: int, sources: str) -> None:
        self.batches += 1
        self.readings += count
        try:
            per_source = json.loads(sources)
        except ValueError:
            per_source = {}
        if not isinstance(per_source, dict) or sum(per_source.values()) != count:
            per_source = {"unknown": count}  # a version 1 row: no sources recorded
        for name, n in per_source.items():
            self.sources[name] = self.sources.get(name, 0) + int(n)

    def result(self) -> Dropped | None:
        if not self.batches:
            return None
        return Dropped(self.batches, self.readings, dict(self.sources), self.reason)


def _file_bytes(path: Path) -> int:
    total = 0
    for p in (path, _wal_path(path)):
        with contextlib.suppress(FileNotFoundError):
            total += p.stat().st_size
    return total


def _wal_path(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _used_bytes(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def _totals(conn: sqlite3.Connection) -> _Totals:
    return _Totals(*conn.execute(_TOTALS_SQL).fetchone())


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _stats(conn: sqlite3.Connection, totals: _Totals, path: Path) -> BufferStats:
    oldest = conn.execute(_OLDEST_SQL).fetchone()
    last_seq = conn.execute(_LAST_SEQ_SQL).fetchone()[0]
    return BufferStats(
        batches_unsent=totals.batches_unsent,
        readings_unsent=totals.readings_unsent,
        batches_sent=totals.batches - totals.batches_unsent,
        readings_sent=totals.readings - totals.readings_unsent,
        bytes_unsent=totals.bytes_unsent,
        file_bytes=_file_bytes(path),
        oldest_unsent_us=oldest[0] if oldest else None,
        last_seq=int(last_seq),
        max_bytes=int(_meta(conn, "max_bytes") or 0),
        used_bytes=_used_bytes(conn),
        policy=_meta(conn, "policy") or "",
    )


def read_stats(path: Path) -> BufferStats:
    """Stats of the buffer file at ``path``, read-only (works while an edge writes to it)."""
    if not path.exists():
        raise BufferFileError(path, "no such file (has the edge run with this config?)")
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BufferFileError(path, f"cannot open: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        _check_schema(conn, path)
        return _stats(conn, _totals(conn), path)
    except sqlite3.Error as exc:
        raise BufferFileError(path, f"cannot read: {exc}") from exc
    finally:
        conn.close()


def _check_schema(conn: sqlite3.Connection, path: Path) -> int:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise BufferFileError(path, f"not a Cairn buffer ({exc})") from exc
    if row is None:
        raise BufferFileError(path, "not a Cairn buffer (no schema version)")
    if int(row[0]) > SCHEMA_VERSION:
        raise BufferFileError(
            path, f"schema version {row[0]} is newer than this cairn-edge ({SCHEMA_VERSION})"
        )
    return int(row[0])


def _upgrade(conn: sqlite3.Connection, path: Path) -> None:
    """Bring a file written by an older cairn-edge to :data:`SCHEMA_VERSION` (idempotent)."""
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if not has_meta:
        return  # a new file (or not ours: _check_schema says so)
    version = _check_schema(conn, path)
    if version < 2:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(batches)")}
        if "sources" not in columns:
            conn.execute("ALTER TABLE batches ADD COLUMN sources TEXT NOT NULL DEFAULT '{}'")
        _log.info("buffer %s: upgrading from schema version %d", path, version)
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")  # auto_vacuum takes effect on an existing file only so


class Buffer:
    """The SQLite buffer of one edge (see the module docstring)."""

    def __init__(
        self, path: Path, synchronous: str = "full", limits: BufferLimits | None = None
    ) -> None:
        if synchronous.lower() not in {"normal", "full"}:
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self.path = path
        self.limits = limits if limits is not None else BufferLimits()
        self._synchronous = synchronous.upper()
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._pin_lock = threading.Lock()
        self._pinned: set[int] = set()
        self._closed = False
        self._w = self._open_writer(first=True)
        try:
            self._totals = _totals(self._w)
            self._page_size = int(self._w.execute("PRAGMA page_size").fetchone()[0])
            self._r = sqlite3.connect(
                f"{path.absolute().as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
            self._r.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        except sqlite3.DatabaseError as exc:
            self._w.close()
            raise BufferFileError(path, f"cannot use: {exc}") from exc
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cairn-buffer-write")
        _log.debug("buffer %s open: %s, %s", path, self._totals, self.limits)

    def _open_writer(self, *, first: bool) -> sqlite3.Connection:
        path = self.path
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise BufferFileError(path, f"cannot open: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # effective on a new file
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise BufferFileError(path, f"cannot switch to WAL (journal_mode is {mode})")  # noqa: TRY301
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            reserve = self.limits.wal_reserve
            conn.execute(f"PRAGMA wal_autocheckpoint = {max(reserve // 2 // page_size, 16)}")
            conn.execute(f"PRAGMA journal_size_limit = {reserve // 2}")
            if first:
                _upgrade(conn, path)
                self._create_schema(conn)
            _check_schema(conn, path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise BufferFileError(path, f"cannot use: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(stmt)
            meta = {
                "schema_version": str(SCHEMA_VERSION),
                "max_bytes": str(self.limits.max_bytes),
                "policy": self.limits.policy,
            }
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                meta.items(),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ writes

    def append(
        self,
        body: bytes,
        count: int,
        t_min: int | None,
        t_max: int | None,
        codec: int,
        digests: bytes = b"",
    ) -> int:
        """Store one sealed batch in one transaction; returns its ``seq``.

        Raises :class:`BufferFullError` if it does not fit (see :meth:`append_batch`)."""
        return self.append_batch(body, count, t_min, t_max, codec, digests).seq

    def append_batch(
        self,
        body: bytes,
        count: int,
        t_min: int | None,
        t_max: int | None,
        codec: int,
        digests: bytes = b"",
        sources: dict[str, int] | None = None,
    ) -> Appended:
        """Store one sealed batch in one transaction, within the disk budget.

        Deletes the oldest sent batches, then (``drop-oldest``) the oldest unsent ones, as
        needed to keep the pages in use within the budget. Raises :class:`BufferFullError`
        (nothing changed) when the batch does not fit: always under ``refuse-new`` once the
        unsent batches fill the budget; under ``drop-oldest`` only if the batch alone is
        larger than the budget. ``sources`` (readings per source) defaults to ``{"unknown":
        count}``; it says whose readings a later drop loses.
        """
        if len(digests) % DIGEST_SIZE:
            raise ValueError(f"digests must be a multiple of {DIGEST_SIZE} bytes")
        sources_json = json.dumps(
            sources if sources is not None else {"unknown": count}, separators=(",", ":")
        )
        need = len(body) + len(digests) + len(sources_json) + _ROW_OVERHEAD
        drops = _DropTally("full")
        with self._wlock:
            totals = _Totals(**asdict(self._totals))
            with self._transaction():
                self._make_room(need, totals, drops)
                cur = self._w.execute(
                    "INSERT INTO batches"
                    " (created_us, count, t_min, t_max, codec, body, digests, sources)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (now_us(), count, t_min, t_max, codec, body, digests, sources_json),
                )
                seq = int(cur.lastrowid or 0)
                # The estimate may fall short (B-tree splits): correct with the exact count.
                self._make_room(0, totals, drops, keep=seq)
            totals.batches += 1
            totals.readings += count
            totals.bytes += len(body)
            totals.batches_unsent += 1
            totals.readings_unsent += count
            totals.bytes_unsent += len(body)
            self._totals = totals
            self._keep_wal_small()
        return Appended(seq, drops.result())

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` on the writer (hold ``_wlock``); rolled back
        (and the connection reopened if even that fails) on any error."""
        self._begin()
        try:
            yield
            self._w.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _begin(self) -> None:
        try:
            self._w.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            self._reset_writer()
            raise

    def _rollback(self) -> None:
        """Roll back after a failed statement; reopens the connection if even that fails."""
        if not self._w.in_transaction:
            return
        try:
            self._w.execute("ROLLBACK")
        except sqlite3.Error as exc:
            _log.warning("buffer %s: rollback failed (%s); reopening the database", self.path, exc)
            self._reset_writer()

    def _reset_writer(self) -> None:
        """A fresh writer connection (after I/O errors); keeps the old one if this fails."""
        try:
            fresh = self._open_writer(first=False)
        except (BufferFileError, sqlite3.Error) as exc:
            _log.debug("buffer %s: cannot reopen yet: %s", self.path, exc)
            return
        with contextlib.suppress(sqlite3.Error):
            self._w.close()
        self._w = fresh

    def _make_room(
        self, need: int, totals: _Totals, drops: _DropTally, keep: int | None = None
    ) -> None:
        """Delete rows, oldest sent first, until ``need`` more bytes fit (in the open
        transaction); raises :class:`BufferFullError` if they cannot. Batches the forwarder
        has in flight (:meth:`pin`) are never dropped: they may reach the hub."""
        limit = self.limits.data_limit
        page = self._page_size
        while _used_bytes(self._w) + math.ceil(need / page) * page > limit:
            row = self._w.execute(
                "DELETE FROM batches WHERE seq = (SELECT seq FROM batches"
                " WHERE sent_us IS NOT NULL AND seq IS NOT ? ORDER BY seq LIMIT 1)"
                " RETURNING count, length(body)",
                (keep,),
            ).fetchone()
            if row is not None:
                totals.remove(row[0], row[1], sent=True)
                continue
            pinned = self._pinned_now()
            candidates = [
                seq
                for (seq,) in self._w.execute(
                    "SELECT seq FROM batches WHERE sent_us IS NULL AND seq IS NOT ?"
                    " ORDER BY seq LIMIT ?",
                    (keep, len(pinned) + 1),
                )
            ]
            victim = next((seq for seq in candidates if seq not in pinned), None)
            if victim is not None and self.limits.policy == "drop-oldest":
                row = self._w.execute(
                    "DELETE FROM batches WHERE seq = ? RETURNING count, length(body), sources",
                    (victim,),
                ).fetchone()
                totals.remove(row[0], row[1], sent=False)
                drops.add(row[0], row[2])
                continue
            used = _used_bytes(self._w)
            raise BufferFullError(
                "full",
                f"{used} of {limit} bytes in use by unsent batches; the batch needs {need}"
                f" (policy {self.limits.policy})",
                too_large=not candidates,
            )

    def pin(self, seq: int) -> None:
        """Batch ``seq`` is being published: never drop it (until :meth:`unpin`)."""
        with self._pin_lock:
            self._pinned.add(seq)

    def unpin(self, seqs: Iterable[int]) -> None:
        """The batches ``seqs`` are marked sent, or were not published after all."""
        with self._pin_lock:
            self._pinned.difference_update(seqs)

    def _pinned_now(self) -> frozenset[int]:
        with self._pin_lock:
            return frozenset(self._pinned)

    def _keep_wal_small(self) -> None:
        """Truncate the WAL if it outgrew its share of the budget (a reader held a
        checkpoint back)."""
        try:
            if _wal_path(self.path).stat().st_size > self.limits.wal_reserve:
                self._w.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (OSError, sqlite3.Error) as exc:
            _log.debug("buffer %s: WAL checkpoint: %s", self.path, exc)

    def mark_sent(self, seqs: Sequence[int], sent_us: int | None = None) -> None:
        """Record that JetStream acknowledged the batches ``seqs`` (one transaction)."""
        if not seqs:
            return
        sent_us = now_us() if sent_us is None else sent_us
        with self._wlock:
            marked: list[tuple[int, int]] = []
            with self._transaction():
                for seq in seqs:
                    marked.extend(
                        self._w.execute(
                            "UPDATE batches SET sent_us = ? WHERE seq = ? AND sent_us IS NULL"
                            " RETURNING count, length(body)",
                            (sent_us, seq),
                        ).fetchall()
                    )
            t = self._totals
            t.batches_unsent -= len(marked)
            t.readings_unsent -= sum(c for c, _ in marked)
            t.bytes_unsent -= sum(b for _, b in marked)

    async def mark_sent_async(self, seqs: Sequence[int], sent_us: int | None = None) -> None:
        """:meth:`mark_sent` in the buffer's writer thread."""
        await self.run_in_writer(self.mark_sent, seqs, sent_us)

    def maintain(self, now: int | None = None) -> Dropped | None:
        """Housekeeping (a few times a minute): delete sent batches older than
        ``sent_history_s`` and, with ``max_age_s``, unsent ones older than that (returned);
        return free pages to the file system when many are free. Short transactions."""
        now = now_us() if now is None else now
        limits = self.limits
        self._delete_older(
            "sent_us IS NOT NULL AND sent_us < ?", now - int(limits.sent_history_s * 1e6), None
        )
        drops = _DropTally("age")
        if limits.max_age_s > 0:
            pinned = ",".join(str(seq) for seq in sorted(self._pinned_now()))
            self._delete_older(
                f"sent_us IS NULL AND created_us < ? AND seq NOT IN ({pinned})",
                now - int(limits.max_age_s * 1e6),
                drops,
            )
        self._vacuum_if_worth_it()
        return drops.result()

    def _delete_older(self, where: str, cutoff: int, drops: _DropTally | None) -> None:
        while True:
            with self._wlock:
                totals = _Totals(**asdict(self._totals))
                with self._transaction():
                    rows = self._w.execute(
                        f"DELETE FROM batches WHERE seq IN (SELECT seq FROM batches WHERE {where}"  # noqa: S608 - constants and integers
                        " ORDER BY seq LIMIT ?) RETURNING count, length(body), sources, sent_us",
                        (cutoff, _PRUNE_CHUNK),
                    ).fetchall()
                for count, length, sources, sent_us in rows:
                    totals.remove(count, length, sent=sent_us is not None)
                    if drops is not None:
                        drops.add(count, sources)
                self._totals = totals
            if len(rows) < _PRUNE_CHUNK:
                return

    def _vacuum_if_worth_it(self) -> None:
        with self._wlock:
            pages = self._w.execute("PRAGMA page_count").fetchone()[0]
            free = self._w.execute("PRAGMA freelist_count").fetchone()[0]
            if free * self._page_size < _MIB or free < pages * _VACUUM_FREE_FRACTION:
                return
            # executescript steps the pragma to its end (execute() frees a single page)
            self._w.executescript("PRAGMA incremental_vacuum;")
            self._w.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            _log.debug("buffer %s: returned %d free pages of %d", self.path, free, pages)

    async def run_in_writer(
        self, func: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs
    ) -> _R:
        """Run ``func`` in the buffer's one writer thread and wait for it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, functools.partial(func, *args, **kwargs))

    # ------------------------------------------------------------------- reads

    def unsent(self, after_seq: int = 0, limit: int = 100) -> list[StoredBatch]:
        """Up to ``limit`` unsent batches with ``seq > after_seq``, in seq order."""
        return self.unsent_below(after_seq, _SEQ_END, limit)

    async def unsent_async(self, after_seq: int = 0, limit: int = 100) -> list[StoredBatch]:
        """:meth:`unsent` in a worker thread."""
        return await asyncio.to_thread(self.unsent, after_seq, limit)

    def stats(self) -> BufferStats:
        """What the buffer holds now (counts kept in memory, a few indexed look-ups)."""
        with self._wlock:
            totals = _Totals(**asdict(self._totals))
        with self._rlock:
            return _stats(self._r, totals, self.path)

    def recent_digests(self, n: int) -> list[bytes]:
        """The digests of the newest committed messages, at most ``n`` (newest batches first)."""
        out: list[bytes] = []
        if n <= 0:
            return out
        with self._rlock:
            cur = self._r.execute(
                "SELECT digests FROM batches WHERE length(digests) > 0 ORDER BY seq DESC"
            )
            for (blob,) in cur:
                out.extend(blob[i : i + DIGEST_SIZE] for i in range(0, len(blob), DIGEST_SIZE))
                if len(out) >= n:
                    break
            cur.close()
        return out[:n]

    def unsent_below(self, after_seq: int, below_seq: int, limit: int) -> list[StoredBatch]:
        """Up to ``limit`` unsent batches with ``after_seq < seq < below_seq``, in seq order
        (the forwarder's backlog, ahead of which the live batches go)."""
        with self._rlock:
            rows = self._r.execute(
                "SELECT seq, created_us, count, codec, body FROM batches"
                " WHERE sent_us IS NULL AND seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                (after_seq, below_seq, limit),
            ).fetchall()
        return [StoredBatch(*row) for row in rows]

    async def unsent_below_async(
        self, after_seq: int, below_seq: int, limit: int
    ) -> list[StoredBatch]:
        """:meth:`unsent_below` in a worker thread."""
        return await asyncio.to_thread(self.unsent_below, after_seq, below_seq, limit)

    def is_unsent(self, seq: int) -> bool:
        """Whether batch ``seq`` is still in the buffer, unsent (not dropped, not sent)."""
        with self._rlock:
            row = self._r.execute(
                "SELECT 1 FROM batches WHERE seq = ? AND sent_us IS NULL", (seq,)
            ).fetchone()
        return row is not None

    def close(self) -> None:
        """Finish pending writes and close both connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._writer.shutdown(wait=True)
        with self._rlock:
            self._r.close()
        with self._wlock:
            self._w.close()
        _log.debug("buffer %s closed", self.path)
