"""Group commit: readings from every source -> one sealed batch row per flush.

Sources call :meth:`Batcher.submit`, which returns only once the readings are committed in the
buffer; an MQTT source acknowledges the message after that, so nothing acknowledged is ever
lost. Many submits wait on one commit: that is the group commit.

Flush rules: pending readings are committed ``flush_interval_ms`` after the oldest of them
arrived, or at once when ``max_batch_readings`` wait. A flush takes whole submits, oldest first,
up to ``max_batch_readings`` readings (one submit with more goes alone), encodes them with
:func:`contract.codec.encode_batch` and inserts one row in one transaction, both in the buffer's
writer thread, so the event loop keeps receiving meanwhile. One flush runs at a time; new
readings accumulate during it. ``max_pending_readings`` bounds what waits or is being
committed: :meth:`~Batcher.submit` waits while that many are queued (backpressure).

A commit that does not go through (the disk budget under ``refuse-new``, a full disk, an I/O
error) is logged, counted and retried with backoff, and :attr:`Batcher.state` says why. What
happens to its readings depends on the submit: a *held* submit (``hold=True``, and every
:meth:`~Batcher.submit_nowait`: MQTT, whose broker keeps an unacknowledged message and sends it
again) keeps waiting for a later commit; any other submit (serial, BLE, HTTP: sources that
cannot wait) fails at once with :class:`~edge.buffer.BufferFullError`, its readings counted as
refused. Nothing is acknowledged that is not committed. Under ``drop-oldest`` the buffer makes
room itself and the readings of the batches it deletes are counted as dropped, per source. A
submit the codec cannot carry fails with ``PayloadError('bad-value')`` alone, its neighbours
are committed; so does one submit larger than the whole budget (``PayloadError('too-large')``).

Housekeeping: every :data:`MAINTAIN_INTERVAL_S` the flush loop's sibling runs
:meth:`edge.buffer.Buffer.maintain` (sent history, age limit, space reclaim) in the writer
thread.

Redelivery dedupe: a submit may carry the 8-byte digest of its MQTT message. Digests are stored
with their batch row; the digests of the latest ``digest_window`` committed messages are kept in
memory (reloaded from the newest rows at start) and :meth:`~Batcher.redelivered` tells whether a
message redelivered by the broker was already committed (or is being committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from contract.backoff import Backoff
from contract.codec import CODEC_VERSION, encode_batch
from contract.errors import CairnError, CodecError, PayloadError
from contract.model import Reading
from edge.buffer import DIGEST_SIZE, Appended, Buffer, BufferFullError, Dropped
from edge.config import BufferSettings
from edge.stats import EdgeStats

__all__ = ["MAINTAIN_INTERVAL_S", "Batcher", "BatcherClosedError", "Sink"]

_log = logging.getLogger(__name__)

_RETRY_INITIAL_S: Final = 0.05
_RETRY_MAX_S: Final = 1.0
"""Longest wait between two commit attempts while the buffer is full or failing."""
MAINTAIN_INTERVAL_S: Final = 10.0
"""Seconds between two runs of :meth:`edge.buffer.Buffer.maintain`."""
STATE_OK: Final = "ok"


class BatcherClosedError(CairnError):
    """The edge is shutting down: these readings were not committed (and must not be acked)."""

    def __init__(self) -> None:
        super().__init__("the batcher is closed; readings not committed")


class Sink(Protocol):
    """What a source hands its readings to (implemented by :class:`Batcher`)."""

    async def submit(
        self,
        readings: Sequence[Reading],
        source: str,
        digest: bytes | None = None,
        *,
        hold: bool = False,
    ) -> None: ...

    def submit_nowait(
        self,
        readings: Sequence[Reading],
        source: str,
        digest: bytes | None,
        done: Callable[[PayloadError | None], None],
    ) -> bool: ...

    async def redelivered(self, digest: bytes) -> bool: ...

    async def drain(self) -> None: ...


@dataclass(slots=True)
class _Entry:
    readings: Sequence[Reading]
    source: str
    digest: bytes | None
    arrived: float
    hold: bool = True
    """Wait for room when the buffer refuses a commit (else fail with BufferFullError)."""
    future: asyncio.Future[None] | None = None
    """For awaiting submitters; made on demand for callback entries (drain, redelivery)."""
    done: Callable[[PayloadError | None], None] | None = None
    """For :meth:`Batcher.submit_nowait`: called with ``None`` once committed, or the error."""
    resolved: bool = False
    error: CairnError | None = None

    def waiter(self) -> asyncio.Future[None]:
        """A future that completes with this entry (already complete if it has)."""
        if self.future is None:
            self.future = asyncio.get_running_loop().create_future()
            if self.resolved:
                _settle(self.future, self.error)
        return self.future

    def resolve(self, error: CairnError | None = None) -> None:
        self.resolved = True
        self.error = error
        if self.future is not None:
            _settle(self.future, error)
        if self.done is not None:
            assert error is None or isinstance(error, PayloadError)  # held: never refused
            self.done(error)


def _settle(future: asyncio.Future[None], error: CairnError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
        future.exception()  # retrieved: the submitter may be gone


class Batcher:
    """The group-commit sink between the sources and the buffer (see the module docstring)."""

    def __init__(
        self,
        buffer: Buffer,
        settings: BufferSettings,
        stats: EdgeStats,
        *,
        on_commit: Callable[[int], None] | None = None,
        digest_window: int = 40_000,
    ) -> None:
        self._buffer = buffer
        self._interval = settings.flush_interval_ms / 1000
        self._max_batch = settings.max_batch_readings
        self._max_pending = settings.max_pending_readings
        self._stats = stats
        self._on_commit = on_commit
        self._window = max(digest_window, 0)
        self._pending: deque[_Entry] = deque()
        self._pending_n = 0
        self._queued = 0
        """Readings pending or being committed (what ``max_pending_readings`` bounds)."""
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._urgent = 0
        self._closed = False
        self._last: _Entry | None = None
        self._committing: dict[bytes, _Entry] = {}
        self._recent: deque[bytes] = deque()
        self._recent_set: set[bytes] = set()
        self.state = STATE_OK
        """``ok``, or why commits do not go through now (``full: ...``, ``disk-error: ...``)."""

    # ---------------------------------------------------------------- sources

    @property
    def queued_readings(self) -> int:
        """Readings submitted and not yet committed."""
        return self._queued

    async def submit(
        self,
        readings: Sequence[Reading],
        source: str,
        digest: bytes | None = None,
        *,
        hold: bool = False,
    ) -> None:
        """Return once ``readings`` are committed in the buffer.

        Waits first while ``max_pending_readings`` are queued. Raises
        :class:`BatcherClosedError` on shutdown, ``PayloadError('bad-value')`` if the codec
        cannot carry these readings, ``PayloadError('too-large')`` if they alone exceed the
        disk budget, and, unless ``hold``, :class:`~edge.buffer.BufferFullError` when the
        buffer refuses commits (readings counted as refused); nothing else. With ``hold`` it
        waits until a commit goes through instead.
        """
        if digest is not None and len(digest) != DIGEST_SIZE:
            raise ValueError(f"digest must be {DIGEST_SIZE} bytes")
        if not readings:
            return
        while self._queued >= self._max_pending and not self._closed:
            self._space.clear()
            await self._space.wait()
        if self._closed:
            raise BatcherClosedError
        loop = asyncio.get_running_loop()
        entry = _Entry(
            readings, source, digest, loop.time(), hold=hold, future=loop.create_future()
        )
        self._enqueue(entry)
        await asyncio.shield(entry.waiter())

    def submit_nowait(
        self,
        readings: Sequence[Reading],
        source: str,
        digest: bytes | None,
        done: Callable[[PayloadError | None], None],
    ) -> bool:
        """Queue ``readings`` without a task or a future per message: ``done(None)`` is called
        once they are committed (``done(PayloadError)`` if the codec refuses them).

        The MQTT source's fast path: per message it saves the task, the future and the shield
        of :meth:`submit`. It does not wait for room: its caller is bounded by other means (MQTT
        flow control: at most ``receive_maximum`` unacknowledged messages of at most 256 KiB).
        Returns ``False`` (nothing queued) when the batcher is closed: the caller then takes
        :meth:`submit`, which raises.
        """
        if self._closed:
            return False
        if not readings:
            done(None)
            return True
        self._enqueue(
            _Entry(readings, source, digest, asyncio.get_running_loop().time(), done=done)
        )
        return True

    def _enqueue(self, entry: _Entry) -> None:
        self._pending.append(entry)
        n = len(entry.readings)
        self._pending_n += n
        self._queued += n
        self._last = entry
        if entry.digest is not None:
            self._committing[entry.digest] = entry
        if self._pending_n >= self._max_batch:
            self._full.set()
        self._nonempty.set()

    async def redelivered(self, digest: bytes) -> bool:
        """Whether the message with ``digest`` was committed already (waits if it is being)."""
        if digest in self._recent_set:
            return True
        entry = self._committing.get(digest)
        if entry is None:
            return False
        try:
            await asyncio.shield(entry.waiter())
        except PayloadError:
            return False
        return True

    # ----------------------------------------------------------------- control

    def load_digests(self) -> int:
        """Fill the dedupe window from the newest buffer rows; returns how many were loaded."""
        digests = self._buffer.recent_digests(self._window)
        for d in reversed(digests):  # oldest first, so the newest leave the window last
            self._remember(d)
        return len(digests)

    async def drain(self) -> None:
        """Commit everything submitted so far without waiting for the flush interval."""
        last = self._last
        if last is None or last.resolved:
            return
        target = last.waiter()
        self._urgent += 1
        self._full.set()
        try:
            await asyncio.wait([target])
        finally:
            self._urgent -= 1
            if not self._urgent and self._pending_n < self._max_batch:
                self._full.clear()

    async def close(self) -> None:
        """Refuse new submits, then commit everything already submitted."""
        self._closed = True
        self._urgent += 1
        self._full.set()
        self._space.set()  # submitters waiting for room now raise BatcherClosedError
        await self.drain()

    async def run(self) -> None:
        """The flush loop and the buffer's housekeeping; run until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._maintain_loop(), name="buffer-maintenance")
            await self._flush_loop()

    async def _maintain_loop(self) -> None:
        while True:
            await asyncio.sleep(MAINTAIN_INTERVAL_S)
            await self.maintain()

    async def maintain(self) -> None:
        """Run the buffer's housekeeping now (counts what the age limit dropped)."""
        try:
            dropped = await self._buffer.run_in_writer(self._buffer.maintain)
        except Exception as exc:
            _log.warning("buffer housekeeping failed (%s); trying again later", exc)
            return
        self._count_dropped(dropped, f"older than {self._buffer.limits.max_age_s:.0f} s")

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._nonempty.wait()
            if not self._pending:  # pragma: no cover - _take clears the event with the queue
                self._nonempty.clear()
                continue
            if not self._urgent and self._pending_n < self._max_batch:
                delay = self._pending[0].arrived + self._interval - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._full.wait()
            await self._flush_once()

    # ---------------------------------------------------------------- flushing

    def _take(self) -> list[_Entry]:
        take: list[_Entry] = []
        n = 0
        while self._pending and (not take or n + len(self._pending[0].readings) <= self._max_batch):
            entry = self._pending.popleft()
            take.append(entry)
            n += len(entry.readings)
        self._pending_n -= n
        if self._pending_n < self._max_batch and not self._urgent:
            self._full.clear()
        if not self._pending:
            self._nonempty.clear()
        return take

    async def _flush_once(self) -> None:
        take = self._take()
        if not take:
            return
        backoff = Backoff(_RETRY_INITIAL_S, _RETRY_MAX_S)
        while take:
            try:
                appended = await self._buffer.run_in_writer(_seal, self._buffer, take)
            except CodecError:
                take = await self._drop_unencodable(take)
                continue
            except BufferFullError as exc:
                if exc.too_large:
                    take = self._split_too_large(take, exc)  # nothing left to give way
                    continue
                take = self._refused(take, exc, backoff)
            except Exception as exc:
                take = self._refused(take, BufferFullError("disk-error", str(exc)), backoff)
            else:
                self._committed(appended, take)
                return
            if take:
                await asyncio.sleep(backoff.next())

    def _refused(self, take: list[_Entry], exc: BufferFullError, backoff: Backoff) -> list[_Entry]:
        """A commit did not go through: fail what cannot wait (here and queued), keep the
        held entries for the next attempt."""
        self._stats.count("commit-errors")
        state = f"{exc.reason}: {exc.detail}"
        if state != self.state:
            (_log.error if exc.reason == "disk-error" else _log.warning)(
                "buffer refuses commits (%s); held messages stay unacknowledged, other"
                " readings are refused, until a commit goes through (retrying)",
                state,
            )
        self.state = state
        keep = [e for e in take if e.hold]
        for entry in take:
            if not entry.hold:
                self._refuse(entry, exc)
        if any(not e.hold for e in self._pending):
            pending = list(self._pending)
            self._pending.clear()
            for entry in pending:
                if entry.hold:
                    self._pending.append(entry)
                else:
                    self._pending_n -= len(entry.readings)
                    self._refuse(entry, exc)
            if not self._pending:
                self._nonempty.clear()
        if not keep:
            backoff.reset()
        return keep

    def _refuse(self, entry: _Entry, exc: BufferFullError) -> None:
        self._stats.refused(entry.source, exc.reason, len(entry.readings), exc.detail)
        if entry.digest is not None:
            self._committing.pop(entry.digest, None)
        self._release(len(entry.readings))
        entry.resolve(exc)

    def _split_too_large(self, take: list[_Entry], exc: BufferFullError) -> list[_Entry]:
        """A batch larger than the whole budget: commit fewer submits at once; one submit
        alone that large fails."""
        if len(take) > 1:
            half = len(take) // 2
            for entry in reversed(take[half:]):
                self._pending.appendleft(entry)
                self._pending_n += len(entry.readings)
            self._nonempty.set()
            return take[:half]
        entry = take[0]
        _log.warning(
            "%d readings from %s exceed the buffer budget", len(entry.readings), entry.source
        )
        if entry.digest is not None:
            self._committing.pop(entry.digest, None)
        self._release(len(entry.readings))
        entry.resolve(PayloadError("too-large", f"larger than the buffer budget ({exc.detail})"))
        return []

    def _committed(self, appended: Appended, take: list[_Entry]) -> None:
        if self.state != STATE_OK:
            _log.info("buffer commits again (was %s)", self.state)
            self.state = STATE_OK
        n = 0
        for entry in take:
            n += len(entry.readings)
            self._stats.accepted(entry.source, len(entry.readings))
            if entry.digest is not None:
                self._committing.pop(entry.digest, None)
                self._remember(entry.digest)
            entry.resolve()
        self._release(n)
        self._stats.count("batches-committed")
        self._stats.count("readings-committed", n)
        self._count_dropped(appended.dropped, "the disk budget is reached (drop-oldest)")
        _log.debug("committed batch %d: %d readings from %d submits", appended.seq, n, len(take))
        if self._on_commit is not None:
            self._on_commit(appended.seq)

    def _count_dropped(self, dropped: Dropped | None, why: str) -> None:
        if dropped is None:
            return
        for source, n in dropped.sources.items():
            self._stats.dropped(
                source, dropped.reason, n, f"{dropped.batches} unsent batches deleted: {why}"
            )

    def _release(self, n: int) -> None:
        self._queued -= n
        if self._queued < self._max_pending:
            self._space.set()

    async def _drop_unencodable(self, take: list[_Entry]) -> list[_Entry]:
        """Fail the submits the codec refuses; return the others."""
        problems = await asyncio.to_thread(_codec_problems, take)
        keep: list[_Entry] = []
        for entry, problem in zip(take, problems, strict=True):
            if problem is None:
                keep.append(entry)
                continue
            _log.warning("readings from %s refused by the codec: %s", entry.source, problem)
            if entry.digest is not None:
                self._committing.pop(entry.digest, None)
            self._release(len(entry.readings))
            entry.resolve(PayloadError("bad-value", problem))
        return keep

    def _remember(self, digest: bytes) -> None:
        if not self._window:
            return
        if len(self._recent) >= self._window:
            self._recent_set.discard(self._recent.popleft())
        self._recent.append(digest)
        self._recent_set.add(digest)


def _seal(buffer: Buffer, take: list[_Entry]) -> Appended:
    """Encode and store one batch (runs in the buffer's writer thread)."""
    readings = [r for entry in take for r in entry.readings]
    body = encode_batch(readings)
    digests = b"".join(entry.digest for entry in take if entry.digest is not None)
    sources: dict[str, int] = {}
    for entry in take:
        sources[entry.source] = sources.get(entry.source, 0) + len(entry.readings)
    ts = [r.ts for r in readings]
    return buffer.append_batch(
        body, len(readings), min(ts), max(ts), CODEC_VERSION, digests, sources
    )


def _codec_problems(take: list[_Entry]) -> list[str | None]:
    problems: list[str | None] = []
    for entry in take:
        try:
            encode_batch(entry.readings)
        except CodecError as exc:
            problems.append(str(exc))
        else:
            problems.append(None)
    return problems
