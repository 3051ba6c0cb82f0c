"""The edge buffer: sealed batches in one SQLite file, until JetStream has acknowledged them.

One row per committed batch (the group commit of a flush)::

    batches(seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the batch's number, never reused
            created_us, count, t_min, t_max,         -- when sealed; readings; their ts range
            codec, body BLOB,                        -- contract.codec version and bytes
            digests BLOB,                            -- 8-byte digests of the MQTT messages in it
            sent_us)                                 -- when JetStream acked it (NULL: unsent)

plus a partial index on the unsent rows and a ``meta`` table holding the schema version. The
journal is WAL; ``synchronous`` comes from the config. Sent rows stay in place for now
(retention and disk budgets come later).

Threads: writes go through one connection used from one dedicated thread (``*_async`` write
methods run there, so the event loop never waits on a commit); reads use a second connection
that any thread may use (``unsent_async`` runs in a worker thread). Both are guarded by locks,
so the synchronous methods are safe from any thread too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

from contract.errors import CairnError
from contract.model import now_us

__all__ = [
    "DIGEST_SIZE",
    "SCHEMA_VERSION",
    "Buffer",
    "BufferFileError",
    "BufferStats",
    "StoredBatch",
    "read_stats",
]

_log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
"""Version of the buffer schema this code writes (``meta.schema_version``)."""
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
    sent_us    INTEGER
);
CREATE INDEX IF NOT EXISTS batches_unsent ON batches (seq) WHERE sent_us IS NULL;
"""

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


def _file_bytes(path: Path) -> int:
    total = 0
    for p in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += p.stat().st_size
    return total


def _totals(conn: sqlite3.Connection) -> _Totals:
    return _Totals(*conn.execute(_TOTALS_SQL).fetchone())


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


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
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


class Buffer:
    """The SQLite buffer of one edge (see the module docstring)."""

    def __init__(self, path: Path, synchronous: str = "normal") -> None:
        if synchronous.lower() not in {"normal", "full"}:
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self.path = path
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._closed = False
        try:
            self._w = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise BufferFileError(path, f"cannot open: {exc}") from exc
        try:
            self._w.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            mode = self._w.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise BufferFileError(path, f"cannot switch to WAL (journal_mode is {mode})")  # noqa: TRY301
            self._w.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            self._w.execute("BEGIN IMMEDIATE")
            try:
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    self._w.execute(stmt)
                self._w.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                self._w.execute("COMMIT")
            except BaseException:
                self._w.execute("ROLLBACK")
                raise
            _check_schema(self._w, path)
            self._totals = _totals(self._w)
            self._r = sqlite3.connect(
                f"{path.absolute().as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
            self._r.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        except sqlite3.DatabaseError as exc:
            self._w.close()
            raise BufferFileError(path, f"cannot use: {exc}") from exc
        except BaseException:
            self._w.close()
            raise
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cairn-buffer-write")
        _log.debug("buffer %s open: %s", path, self._totals)

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
        """Store one sealed batch in one transaction; returns its ``seq``."""
        if len(digests) % DIGEST_SIZE:
            raise ValueError(f"digests must be a multiple of {DIGEST_SIZE} bytes")
        with self._wlock:
            cur = self._w.execute(
                "INSERT INTO batches (created_us, count, t_min, t_max, codec, body, digests)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (now_us(), count, t_min, t_max, codec, body, digests),
            )
            seq = int(cur.lastrowid or 0)
            t = self._totals
            t.batches += 1
            t.readings += count
            t.bytes += len(body)
            t.batches_unsent += 1
            t.readings_unsent += count
            t.bytes_unsent += len(body)
        return seq

    def mark_sent(self, seqs: Sequence[int], sent_us: int | None = None) -> None:
        """Record that JetStream acknowledged the batches ``seqs`` (one transaction)."""
        if not seqs:
            return
        sent_us = now_us() if sent_us is None else sent_us
        with self._wlock:
            self._w.execute("BEGIN IMMEDIATE")
            marked: list[tuple[int, int]] = []
            try:
                for seq in seqs:
                    marked.extend(
                        self._w.execute(
                            "UPDATE batches SET sent_us = ? WHERE seq = ? AND sent_us IS NULL"
                            " RETURNING count, length(body)",
                            (sent_us, seq),
                        ).fetchall()
                    )
                self._w.execute("COMMIT")
            except BaseException:
                self._w.execute("ROLLBACK")
                raise
            t = self._totals
            t.batches_unsent -= len(marked)
            t.readings_unsent -= sum(c for c, _ in marked)
            t.bytes_unsent -= sum(b for _, b in marked)

    async def mark_sent_async(self, seqs: Sequence[int], sent_us: int | None = None) -> None:
        """:meth:`mark_sent` in the buffer's writer thread."""
        await self.run_in_writer(self.mark_sent, seqs, sent_us)

    async def run_in_writer(
        self, func: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs
    ) -> _R:
        """Run ``func`` in the buffer's one writer thread and wait for it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, functools.partial(func, *args, **kwargs))

    # ------------------------------------------------------------------- reads

    def unsent(self, after_seq: int = 0, limit: int = 100) -> list[StoredBatch]:
        """Up to ``limit`` unsent batches with ``seq > after_seq``, in seq order."""
        with self._rlock:
            rows = self._r.execute(
                "SELECT seq, created_us, count, codec, body FROM batches"
                " WHERE sent_us IS NULL AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [StoredBatch(*row) for row in rows]

    async def unsent_async(self, after_seq: int = 0, limit: int = 100) -> list[StoredBatch]:
        """:meth:`unsent` in a worker thread."""
        return await asyncio.to_thread(self.unsent, after_seq, limit)

    def stats(self) -> BufferStats:
        """What the buffer holds now (counts kept in memory, two indexed look-ups)."""
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
