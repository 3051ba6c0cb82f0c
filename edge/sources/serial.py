"""The serial source: lines from a serial port -> readings -> the buffer.

Port I/O: pyserial opens and configures the port (speed, framing, flow control, an exclusive
lock so two processes never split one device's bytes) with ``timeout=0``, and the event loop
watches its file descriptor (``loop.add_reader``) and reads what is there with one
``os.read``. No reader thread and no extra dependency: the same thing pyserial-asyncio-fast
does, and on POSIX a tty is a file descriptor like a socket.

Lines: :class:`~edge.sources.lines.LineFramer` cuts the bytes into lines (max
``max_line_bytes``, partial lines kept, overlong ones counted as ``too-long`` and skipped to
the next newline), and the configured parser turns each line into readings; a bad line is
counted by reason (``rejected``) and logged rate-limited, its neighbours kept. Each line is a
*message* in the counters.

Commit: a serial device cannot be asked to send again, so there is no acknowledgement to hold
back. Parsed readings wait in a bounded backlog (``max_pending_readings``; past it new
readings are refused with reason ``overload``), and are handed to the
:class:`~edge.batcher.Sink` in order, in submits of up to 10,000 readings (whole lines), up to
four in flight (``submit`` returns after the commit; the batcher commits in submit order).
When the buffer refuses a commit (``refuse-new`` budget full, disk error) the batcher counts
the readings as refused and the source goes on with the next lines; at shutdown, readings the
batcher no longer takes are counted as refused (``closed``). A submit the codec refuses is
retried line by line so that only the bad line is lost (``bad-value``).

The port going away (USB unplug, a read error, end of file) closes it, marks the source
disconnected in the status API and reopens it with capped, jittered backoff for as long as it
takes; a partial line from before the loss is discarded. Nothing about the port ever ends the
edge. Name ports by ``/dev/serial/by-id/...``: that link comes back with the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Final, Self

import serial

from contract.backoff import Backoff
from contract.errors import PayloadError
from contract.model import Reading
from edge.batcher import BatcherClosedError, Sink
from edge.buffer import BufferFullError
from edge.config import LineFormat, Parity, SerialSettings
from edge.sources.lines import (
    CsvParser,
    IgnoredLine,
    JsonLineParser,
    KeyValueParser,
    LineFramer,
    LineParser,
    NmeaParser,
)
from edge.sources.waiting import wait_any, wait_set
from edge.stats import EdgeStats

__all__ = ["SerialSource", "make_parser"]

_log = logging.getLogger(__name__)

_READ_BYTES: Final = 1 << 16
_SUBMIT_MAX: Final = 10_000
"""Most readings handed to the sink in one submit (whole lines; one longer line goes alone)."""
_MAX_SUBMITS: Final = 4
"""Submits in flight at once: the next ones queue in the batcher while one commits, so a
submit smaller than a batch does not wait a flush interval alone. Commits keep their order."""
_STOP_TIMEOUT_S: Final = 10.0
_PARITY: Final = {
    Parity.NONE: serial.PARITY_NONE,
    Parity.EVEN: serial.PARITY_EVEN,
    Parity.ODD: serial.PARITY_ODD,
    Parity.MARK: serial.PARITY_MARK,
    Parity.SPACE: serial.PARITY_SPACE,
}
_STOPBITS: Final = {
    1.0: serial.STOPBITS_ONE,
    1.5: serial.STOPBITS_ONE_POINT_FIVE,
    2.0: serial.STOPBITS_TWO,
}


def make_parser(settings: SerialSettings) -> LineParser:
    """The line parser ``settings.parser`` names, with its options."""
    match settings.parser:
        case LineFormat.JSON:
            return JsonLineParser(settings.device)
        case LineFormat.CSV:
            return CsvParser(
                settings.device, settings.columns, settings.ts_field, settings.delimiter
            )
        case LineFormat.KEYVALUE:
            return KeyValueParser(settings.device, settings.ts_field)
        case LineFormat.NMEA:
            return NmeaParser(settings.device, settings.sensor_prefix)


class SerialSource:
    """One ``[[serial]]`` source; ``async with SerialSource(...) as src: await src.run()``."""

    def __init__(self, settings: SerialSettings, sink: Sink, stats: EdgeStats) -> None:
        self.settings = settings
        self.name = settings.name
        self._sink = sink
        self._stats = stats
        self._source_stats = stats.source(settings.name)
        self._parser = make_parser(settings)
        self._framer = LineFramer(settings.max_line_bytes)
        self._backlog: list[list[Reading]] = []
        """Parsed readings not yet submitted, one list per line, in arrival order."""
        self._backlog_n = 0
        self._more = asyncio.Event()
        self._lost = asyncio.Event()
        self._stop = asyncio.Event()
        self._empty = asyncio.Event()
        """Set while nothing waits to be committed (backlog empty, no submit in flight)."""
        self._empty.set()
        self._in_flight = 0
        """Readings handed to the sink and not yet committed (or refused)."""
        self._submits = 0
        self._stopping = False
        self._port: serial.Serial | None = None
        self._fd: int | None = None
        self.opens = 0
        """How many times the port was opened (the first time and every reopen)."""
        self.last_error: str | None = None
        """Why the port is closed or was last lost (``None`` while it never failed)."""

    @property
    def connected(self) -> bool:
        return self._source_stats.connected

    @property
    def pending_readings(self) -> int:
        """Readings read and not yet committed (or refused)."""
        return self._backlog_n + self._in_flight

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        self._stop.set()
        self._more.set()
        self._close()

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Keep the port open and its readings flowing until :meth:`stop` (or cancellation)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._port_loop(), name=f"serial-{self.name}-port")
            tg.create_task(self._submit_loop(tg), name=f"serial-{self.name}-submit")

    async def stop(self) -> None:
        """Orderly stop: close the port, then commit what was read (a partial line is lost)."""
        if self._stopping:
            return
        self._stopping = True
        self._stop.set()
        self._close()
        self._more.set()
        try:
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                await self._empty.wait()
        except TimeoutError:
            _log.warning(
                "source %s: %d readings still uncommitted at stop", self.name, self.pending_readings
            )

    async def _port_loop(self) -> None:
        s = self.settings
        backoff = Backoff(s.reconnect_initial_s, s.reconnect_max_s)
        failures = 0
        while not self._stopping:
            try:
                port = await asyncio.to_thread(self._open)
            except Exception as exc:  # SerialException, OSError, ValueError...
                failures += 1
                self.last_error = f"cannot open {s.port}: {exc}"
                delay = backoff.next()
                _log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "source %s: %s; retrying in %.2f s (and on, quietly)",
                    self.name,
                    self.last_error,
                    delay,
                )
                await self._wait_stop(delay)
                continue
            if self._stopping:
                port.close()
                break
            try:
                self._attach(port)
            except Exception as exc:  # not a tty the loop can watch: treat as a failed open
                self._gone(f"cannot watch {s.port}: {exc}")
                self._close()
                failures += 1
                await self._wait_stop(backoff.next())
                continue
            failures = 0
            backoff.reset()
            _log.info(
                "source %s: opened %s (%d baud, %d%s%g, parser %s)",
                self.name,
                s.port,
                s.baud,
                s.bytesize,
                s.parity.value[0].upper(),
                s.stopbits,
                s.parser.value,
            )
            await self._wait_lost()
            self._close()
            if self._stopping:
                break
            delay = backoff.next()
            _log.warning(
                "source %s: lost %s (%s); reopening in %.2f s (and on)",
                self.name,
                s.port,
                self.last_error,
                delay,
            )
            await self._wait_stop(delay)
        self._close()

    def _open(self) -> serial.Serial:
        s = self.settings
        return serial.Serial(
            port=s.port,
            baudrate=s.baud,
            bytesize=s.bytesize,
            parity=_PARITY[s.parity],
            stopbits=_STOPBITS[s.stopbits],
            rtscts=s.rtscts,
            xonxoff=s.xonxoff,
            timeout=0,
            exclusive=True,
        )

    def _attach(self, port: serial.Serial) -> None:
        self._port = port
        self._fd = port.fileno()
        self._lost.clear()
        self._framer.reset()
        self.opens += 1
        asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
        self._source_stats.connected = True

    def _close(self) -> None:
        """Stop reading and close the port (idempotent)."""
        if self._fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = None
        if self._port is not None:
            try:
                self._port.close()
            except Exception as exc:
                _log.debug("source %s: close: %s", self.name, exc)
            self._port = None
        self._source_stats.connected = False

    def _gone(self, why: str) -> None:
        self.last_error = why
        if self._fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = None
        self._source_stats.connected = False
        self._lost.set()

    async def _wait_lost(self) -> None:
        await wait_any(self._lost, self._stop)

    async def _wait_stop(self, delay: float) -> None:
        await wait_set(self._stop, delay)

    # ---------------------------------------------------------------- reading

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, _READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._gone(f"read error: {exc.strerror or exc}")
            return
        if not data:
            self._gone("end of file: the device went away")
            return
        try:
            self.feed(data)
        except Exception as exc:  # pragma: no cover - feed counts everything it refuses
            _log.exception("source %s: unexpected error reading %d bytes", self.name, len(data))
            self._stats.rejected(self.name, "internal-error", repr(exc), data)

    def feed(self, data: bytes) -> None:
        """Take bytes read from the port: frame, parse, count, queue for the buffer."""
        lines, overlong = self._framer.feed(data)
        stats = self._stats
        name = self.name
        for _ in range(overlong):
            stats.received(name)
            stats.rejected(
                name,
                "too-long",
                f"a line longer than {self.settings.max_line_bytes} bytes (skipped to its end)",
                data,
            )
        if not lines:
            return
        parse = self._parser
        limit = self.settings.max_pending_readings
        queued = False
        for line in lines:
            stats.received(name)
            try:
                readings = parse(line, time.time_ns() // 1000)
            except PayloadError as exc:
                stats.rejected(name, exc.reason, exc.detail, line)
                continue
            except IgnoredLine as exc:
                stats.ignored(name, exc.kind)
                continue
            except Exception as exc:
                _log.exception("source %s: unexpected error parsing a line", self.name)
                stats.rejected(name, "internal-error", repr(exc), line)
                continue
            if self._backlog_n + len(readings) > limit:
                stats.refused(
                    name,
                    "overload",
                    len(readings),
                    f"{self._backlog_n} readings already wait for the buffer "
                    f"(max_pending_readings {limit})",
                )
                continue
            self._backlog.append(readings)
            self._backlog_n += len(readings)
            queued = True
        if queued:
            self._empty.clear()
            self._more.set()

    # ---------------------------------------------------------------- committing

    def _take(self) -> list[list[Reading]]:
        take: list[list[Reading]] = []
        n = 0
        backlog = self._backlog
        i = 0
        while i < len(backlog) and (not take or n + len(backlog[i]) <= _SUBMIT_MAX):
            take.append(backlog[i])
            n += len(backlog[i])
            i += 1
        del backlog[:i]
        self._backlog_n -= n
        return take

    async def _submit_loop(self, tg: asyncio.TaskGroup) -> None:
        while True:
            if not self._backlog or self._submits >= _MAX_SUBMITS:
                if not self._backlog and not self._submits:
                    self._empty.set()
                    if self._stopping:
                        return
                self._more.clear()
                await self._more.wait()
                continue
            take = self._take()
            n = sum(len(line) for line in take)
            self._in_flight += n
            self._submits += 1
            tg.create_task(self._submit_one(take, n), name=f"serial-{self.name}-commit")

    async def _submit_one(self, take: list[list[Reading]], n: int) -> None:
        try:
            await self._submit(take)
        except Exception as exc:  # never let one submit end the source
            _log.exception("source %s: unexpected error committing %d readings", self.name, n)
            self._stats.refused(self.name, "internal-error", n, repr(exc))
        finally:
            self._in_flight -= n
            self._submits -= 1
            self._more.set()

    async def _submit(self, lines: list[list[Reading]]) -> None:
        readings = lines[0] if len(lines) == 1 else [r for line in lines for r in line]
        try:
            await self._sink.submit(readings, self.name)
        except BufferFullError:
            pass  # counted as refused by the batcher; a device cannot resend: go on
        except BatcherClosedError:
            self._stats.refused(self.name, "closed", len(readings), "the edge is stopping")
        except PayloadError as exc:
            if len(lines) > 1:  # keep the good lines: only the bad one is lost
                for line in lines:
                    await self._submit([line])
                return
            self._stats.rejected(self.name, exc.reason, exc.detail, repr(readings[:3]).encode())
