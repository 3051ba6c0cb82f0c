"""The BLE source: advertisements from a bleak scanner -> decoded readings -> the buffer.

The radio part is thin: :class:`BleakAdvertisementScanner` wraps ``bleak.BleakScanner`` and turns
each detection into an :class:`~edge.sources.ble_decoders.Advertisement` (address, name, RSSI,
manufacturer data, service data, arrival time). Everything else works on that, so tests feed
recorded advertisement bytes through :meth:`BleSource.on_advertisement`, the same call the
scanner makes.

Per advertisement, in the scanner's callback (cheap, on the event loop): counted as seen; kept
only if its device is allowed (``addresses``, ``names`` patterns, ``devices``; all empty =
every device) and it carries data for the decoder, else counted ``ignored`` (most advertisements
in the air are phones and headphones); then queued, or dropped as ``queue-full`` when
``queue_size`` advertisements are already waiting (BLE cannot be slowed down).

A worker task then takes everything queued, and for each advertisement: remembers the device's
RSSI and last-seen time; an advertisement whose decoder data is identical to the device's last
decoded one is a ``duplicate`` when that data carries a repeat counter (BTHome packet id, Ruuvi
measurement sequence; ``raw`` data always) -- devices send each measurement many times;
otherwise decodes it (a bad one is counted by reason and logged, rate-limited, and its
neighbours are not affected) into readings stamped with the arrival time (``edge-stamped``).
The readings of all advertisements taken at once go to the sink in one submit, in a task of
its own, so the worker is back at the queue while they are committed. A refusal from the sink
(the buffer's ``refuse-new`` budget, a disk error, the edge shutting down) cannot be retried --
the device has moved on -- so it is counted (``refused_advertisements``, and the readings in
``refused.<reason>``: ``full``, ``disk-error``, ``closed``) and logged, never raised.

Scanning: passive where possible (BlueZ needs advertisement-monitor patterns for that; the
source gives the decoder's), else active with a log line. An adapter that is absent, powered
off or unreachable (no BlueZ / D-Bus) makes the status ``adapter: unavailable: <reason>``; the
source retries with capped, jittered backoff for ever. A scanner that hears nothing at all for
``watchdog_s`` is restarted (an adapter can vanish without an error).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, Self

from contract.backoff import Backoff
from contract.errors import CairnError, PayloadError
from contract.model import FLAG_EDGE_STAMPED, Reading, now_us, valid_name
from edge.batcher import BatcherClosedError, Sink
from edge.buffer import BufferFullError
from edge.config import BleSettings, ScanningMode
from edge.sources.ble_decoders import (
    BTHOME_UUID,
    DECODERS,
    RUUVI_COMPANY_ID,
    Advertisement,
    BleDecoder,
    Decoder,
)
from edge.sources.ble_sim import SimulatedAdvertisementScanner
from edge.sources.waiting import wait_set
from edge.stats import EdgeStats, SourceStats

if TYPE_CHECKING:
    from bleak.args.bluez import BlueZScannerArgs, OrPatternLike

__all__ = [
    "AdvertisementCallback",
    "BleSource",
    "BleStats",
    "BleakAdvertisementScanner",
    "DeviceState",
    "Scanner",
    "ScannerFactory",
    "device_id_for",
]

_log = logging.getLogger(__name__)

_STOP_TIMEOUT_S: Final = 10.0
_START_TIMEOUT_S: Final = 30.0
"""A scanner start that takes longer (a hung D-Bus call) counts as a failure."""
_TAKE_MAX: Final = 1_000
"""Advertisements decoded per worker turn before yielding to the event loop."""
_SPLIT_REASONS: Final = frozenset({"bad-value", "too-large"})
"""Refusals of one submit that may be due to one advertisement in it: submit each alone."""
_SENSOR_CACHE_MAX: Final = 10_000
_NOT_HEX: Final = re.compile(r"[^0-9a-z]")

AdvertisementCallback = Callable[[Advertisement], None]


class Scanner(Protocol):
    """A started/stopped source of advertisements (the bleak adapter, or a test's fake)."""

    async def start(self) -> None:
        """Start scanning; raises if the adapter cannot scan."""

    async def stop(self) -> None:
        """Stop scanning (never raises for a scanner that did not start)."""


ScannerFactory = Callable[[BleSettings, ScanningMode, AdvertisementCallback], Scanner]
"""(settings, mode, callback) -> a scanner that calls ``callback`` for each advertisement."""


def device_id_for(address: str) -> str:
    """The default device id of ``address``: ``ble-`` and its hex digits, lower case."""
    return "ble-" + (_NOT_HEX.sub("", address.lower()) or "unknown")


# --------------------------------------------------------------------------- bleak adapter


class BleakAdvertisementScanner:
    """The thin adapter over ``bleak.BleakScanner`` (imported on first use)."""

    def __init__(
        self, settings: BleSettings, mode: ScanningMode, callback: AdvertisementCallback
    ) -> None:
        self._settings = settings
        self._mode = mode
        self._callback = callback
        self._scanner: Any = None

    def on_detection(self, device: Any, adv: Any) -> None:
        """bleak's detection callback: ``(BLEDevice, AdvertisementData)`` -> Advertisement."""
        self._callback(
            Advertisement(
                address=str(device.address),
                name=adv.local_name or device.name,
                rssi=int(adv.rssi),
                manufacturer_data=adv.manufacturer_data,
                service_data=adv.service_data,
                timestamp=now_us(),
            )
        )

    def _bluez_args(self) -> BlueZScannerArgs:
        from bleak.args.bluez import OrPattern  # noqa: PLC0415 - bleak only when scanning
        from bleak.assigned_numbers import AdvertisementDataType  # noqa: PLC0415

        args: BlueZScannerArgs = {}
        if self._settings.adapter:
            args["adapter"] = self._settings.adapter
        if self._mode is ScanningMode.PASSIVE:
            patterns: list[OrPatternLike]
            decoder = self._settings.decoder
            if decoder is BleDecoder.BTHOME:
                uuid16 = int(BTHOME_UUID[4:8], 16).to_bytes(2, "little")
                patterns = [OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, uuid16)]
            elif decoder is BleDecoder.RUUVI:
                cid = RUUVI_COMPANY_ID.to_bytes(2, "little")
                patterns = [OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, cid)]
            else:  # raw: every advertisement with the usual flags (as Home Assistant does)
                patterns = [
                    OrPattern(0, AdvertisementDataType.FLAGS, bytes([flags]))
                    for flags in (0x02, 0x06, 0x1A)
                ]
            args["or_patterns"] = patterns
        return args

    async def start(self) -> None:
        from bleak import BleakScanner  # noqa: PLC0415 - bleak only when scanning

        self._scanner = BleakScanner(
            self.on_detection, None, self._mode.value, bluez=self._bluez_args()
        )
        await self._scanner.start()

    async def stop(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            with contextlib.suppress(Exception):
                await scanner.stop()


# --------------------------------------------------------------------------- status


@dataclass(slots=True)
class DeviceState:
    """What the source remembers of one device (status API, duplicate detection)."""

    address: str
    device: str
    name: str | None = None
    rssi: int = 0
    last_seen_us: int = 0
    advertisements: int = 0
    last_data: bytes | None = None
    """Decoder data of the last decoded advertisement, if it carried a repeat counter."""

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "rssi": self.rssi,
            "last_seen_us": self.last_seen_us,
            "advertisements": self.advertisements,
        }


@dataclass
class BleStats(SourceStats):
    """A BLE source's counters: :class:`SourceStats` plus what only BLE has.

    Every advertisement is ``seen``; it is ``not_kept`` or counted in ``messages``; each of
    those ends up in exactly one of ``stored``, ``duplicates``, ``rejected[reason]``
    (``queue-full`` and the decoders' reasons) or ``refused_advertisements`` (their readings
    in ``refused[reason]``) -- or is still in flight.
    """

    adapter: str = "starting"
    scanning_mode: str | None = None
    seen: int = 0
    not_kept: int = 0
    """Advertisements from devices not allowed or without data for the decoder (JSON
    ``ignored``)."""
    stored: int = 0
    refused_advertisements: int = 0
    scanner_restarts: int = 0
    devices: OrderedDict[str, DeviceState] = field(default_factory=OrderedDict)

    def as_json(self) -> dict[str, Any]:
        base = super().as_json()
        base.pop("redelivered-duplicate", None)
        return {
            "connected": self.connected,
            "adapter": self.adapter,
            "scanning_mode": self.scanning_mode,
            "advertisements": self.seen,
            "ignored": self.not_kept,
            **base,
            "stored": self.stored,
            "duplicate": self.duplicates,
            "refused_advertisements": self.refused_advertisements,
            "scanner_restarts": self.scanner_restarts,
            "devices": {s.device: s.as_json() for s in self.devices.values()},
        }


# --------------------------------------------------------------------------- source


class BleSource:
    """One ``[[ble]]`` source; ``async with BleSource(...) as src: await src.run()``."""

    def __init__(
        self,
        settings: BleSettings,
        sink: Sink,
        stats: EdgeStats,
        *,
        scanner_factory: ScannerFactory = BleakAdvertisementScanner,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self._sink = sink
        self._stats = stats
        self.status = BleStats()
        stats.sources[settings.name] = self.status
        if settings.simulated_socket and scanner_factory is BleakAdvertisementScanner:
            scanner_factory = functools.partial(
                SimulatedAdvertisementScanner, on_bad=self._bad_datagram
            )
        self._factory = scanner_factory
        self._decoder: Decoder = DECODERS[settings.decoder]
        self._names = settings.device_names
        self._addresses = frozenset(settings.addresses) | frozenset(self._names)
        self._exact_names = frozenset(n for n in settings.names if not _is_pattern(n))
        self._patterns = tuple(n for n in settings.names if _is_pattern(n))
        self._allow_all = not (self._addresses or settings.names)
        self._queue: deque[Advertisement] = deque()
        self._pending = 0
        """Advertisements queued or in a submit not yet finished (what queue_size bounds)."""
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._stopping = False
        self._submits: set[asyncio.Task[None]] = set()
        self._last_heard = 0.0
        self._good_sensors: set[str] = set()

    @property
    def connected(self) -> bool:
        """Scanning."""
        return self.status.connected

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        self._stop.set()
        self._ready.set()

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Scan (retrying the adapter for ever) and commit until :meth:`stop`."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._worker(), name=f"ble-{self.name}-worker")
            tg.create_task(self._scan_loop(), name=f"ble-{self.name}-scanner")

    async def stop(self) -> None:
        """Orderly stop: stop scanning, commit what was received, then return."""
        if self._stopping:
            return
        self._stopping = True
        self._stop.set()
        self._ready.set()
        try:
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                while self._queue or self._submits:
                    await self._sink.drain()
                    tasks = set(self._submits)
                    if tasks:
                        await asyncio.wait(tasks)
                    else:
                        await asyncio.sleep(0)  # let the worker take the rest of the queue
        except TimeoutError:
            _log.warning(
                "source %s: %d advertisements still uncommitted at stop", self.name, self._pending
            )

    async def _scan_loop(self) -> None:
        s = self.settings
        backoff = Backoff(s.retry_initial_s, s.retry_max_s)
        failures = 0
        while not self._stopping:
            scanner, mode, error = await self._start_scanner()
            if scanner is None:
                failures += 1
                delay = backoff.next()
                self.status.adapter = f"unavailable: {error}"
                self.status.connected = False
                _log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "source %s: adapter: unavailable: %s; retrying in %.2f s (and on)",
                    self.name,
                    error,
                    delay,
                )
                await self._wait_stop(delay)
                continue
            if failures:
                _log.info("source %s: the adapter is back after %d failures", self.name, failures)
            failures = 0
            backoff.reset()
            adapter = s.adapter or "default adapter"
            if s.simulated_socket:
                adapter = f"simulated socket {s.simulated_socket}"
            self.status.adapter = f"scanning ({mode.value}) on {adapter}"
            self.status.scanning_mode = mode.value
            self.status.connected = True
            _log.info("source %s: scanning (%s) on %s", self.name, mode.value, adapter)
            try:
                await self._watch()
            finally:
                self.status.connected = False
                await scanner.stop()
            if not self._stopping:
                self.status.scanner_restarts += 1
                _log.info(
                    "source %s: no advertisement for %.0f s; restarting the scanner",
                    self.name,
                    s.watchdog_s,
                )
        self.status.adapter = "stopped"

    async def _start_scanner(self) -> tuple[Scanner | None, ScanningMode, str]:
        """Start passive (falling back to active) or active scanning; the error if neither."""
        modes = [self.settings.scanning_mode]
        if modes[0] is ScanningMode.PASSIVE:
            modes.append(ScanningMode.ACTIVE)
        error = ""
        for mode in modes:
            scanner: Scanner | None = None
            try:
                scanner = self._factory(self.settings, mode, self.on_advertisement)
                async with asyncio.timeout(_START_TIMEOUT_S):
                    await scanner.start()
            except Exception as exc:
                error = _describe(exc)
                if scanner is not None:
                    await scanner.stop()
                if mode is ScanningMode.PASSIVE:
                    _log.debug("source %s: passive scanning failed: %s", self.name, error)
                continue
            if mode is not self.settings.scanning_mode:
                _log.warning(
                    "source %s: passive scanning unavailable; scanning actively "
                    "(devices get scan requests)",
                    self.name,
                )
            return scanner, mode, ""
        return None, self.settings.scanning_mode, error

    async def _watch(self) -> None:
        """Return on stop, or when nothing was heard for ``watchdog_s`` (if set)."""
        limit = self.settings.watchdog_s
        self._last_heard = time.monotonic()
        if not limit:
            await self._stop.wait()
            return
        while not self._stopping:
            remaining = self._last_heard + limit - time.monotonic()
            if remaining <= 0:
                return
            await self._wait_stop(remaining)

    async def _wait_stop(self, delay: float) -> None:
        await wait_set(self._stop, delay)

    # ---------------------------------------------------------------- intake

    def on_advertisement(self, adv: Advertisement) -> None:
        """The scanner's callback (also the tests' entry): filter and queue; never raises."""
        st = self.status
        st.seen += 1
        self._last_heard = time.monotonic()
        try:
            keep = self._allowed(adv) and self._decoder.relevant(adv)
        except Exception as exc:  # malformed object from a scanner: count, never raise
            self._stats.received(self.name)
            self._stats.rejected(self.name, "internal-error", repr(exc), b"", adv.address)
            return
        if not keep:
            st.not_kept += 1
            return
        self._stats.received(self.name)
        if self._pending >= self.settings.queue_size or self._stopping:
            self._stats.rejected(
                self.name,
                "queue-full",
                f"{self._pending} advertisements waiting (queue_size)"
                if not self._stopping
                else "the source is stopping",
                b"",
                adv.address,
            )
            return
        self._pending += 1
        self._queue.append(adv)
        self._ready.set()

    def _bad_datagram(self, detail: str, datagram: bytes) -> None:
        """A simulated-socket datagram that is no advertisement: counted ``bad-datagram``."""
        self.status.seen += 1
        self._stats.received(self.name)
        self._stats.rejected(self.name, "bad-datagram", detail, datagram[:64], "simulated socket")

    def _allowed(self, adv: Advertisement) -> bool:
        if self._allow_all:
            return True
        if adv.address.upper() in self._addresses:
            return True
        name = adv.name
        if name is None:
            return False
        return name in self._exact_names or any(
            fnmatch.fnmatchcase(name, p) for p in self._patterns
        )

    # ---------------------------------------------------------------- worker

    async def _worker(self) -> None:
        while True:
            await self._ready.wait()
            if not self._queue:
                self._ready.clear()
                if self._stopping:
                    return
                continue
            batch: list[list[Reading]] = []
            for _ in range(min(len(self._queue), _TAKE_MAX)):
                readings = self._process(self._queue.popleft())
                if readings:
                    batch.append(readings)
                else:
                    self._pending -= 1
            if batch:
                task = asyncio.create_task(self._submit(batch), name=f"ble-{self.name}-submit")
                self._submits.add(task)
                task.add_done_callback(self._submits.discard)
            await asyncio.sleep(0)

    def _process(self, adv: Advertisement) -> list[Reading] | None:
        """Decode one queued advertisement; ``None`` when it gives no readings (counted)."""
        try:
            return self._decode(adv)
        except Exception as exc:
            self._stats.rejected(self.name, "internal-error", repr(exc), b"", adv.address)
            _log.exception("source %s: unexpected error on an advertisement", self.name)
            return None

    def _decode(self, adv: Advertisement) -> list[Reading] | None:
        state = self._device(adv)
        data = self._decoder.data(adv)
        if state.last_data is not None and state.last_data == data:
            self.status.duplicates += 1
            return None
        try:
            decoded = self._decoder.decode(adv)
        except PayloadError as exc:
            self._stats.rejected(self.name, exc.reason, exc.detail, _preview(adv), adv.address)
            return None
        device = state.device
        for sensor in decoded.values:
            if sensor not in self._good_sensors and not self._check_sensor(sensor):
                self._stats.rejected(
                    self.name, "bad-name", f"sensor {sensor!r}", _preview(adv), device
                )
                return None
        state.last_data = data if decoded.counted else None
        ts = adv.timestamp
        return [
            Reading(device, sensor, ts, value, FLAG_EDGE_STAMPED)
            for sensor, value in decoded.values.items()
        ]

    def _check_sensor(self, sensor: str) -> bool:
        """Whether ``sensor`` is a valid sensor key (remembered: decoders use few names)."""
        if not valid_name(sensor):
            return False
        if len(self._good_sensors) >= _SENSOR_CACHE_MAX:
            self._good_sensors.clear()
        self._good_sensors.add(sensor)
        return True

    def _device(self, adv: Advertisement) -> DeviceState:
        devices = self.status.devices
        key = adv.address.upper()
        state = devices.get(key)
        if state is None:
            state = DeviceState(key, self._names.get(key) or device_id_for(adv.address))
            devices[key] = state
            while len(devices) > self.settings.max_devices:
                devices.popitem(last=False)
        else:
            devices.move_to_end(key)
        state.rssi = adv.rssi
        state.last_seen_us = adv.timestamp
        state.advertisements += 1
        if adv.name is not None:
            state.name = adv.name
        return state

    async def _submit(self, batch: list[list[Reading]]) -> None:
        try:
            await self._submit_many(batch)
        finally:
            self._pending -= len(batch)

    async def _submit_many(self, batch: Sequence[list[Reading]]) -> None:
        readings = [r for group in batch for r in group]
        try:
            await self._sink.submit(readings, self.name)
        except BufferFullError:
            # The batcher counted the readings (refused.full / refused.disk-error) and logs.
            self.status.refused_advertisements += len(batch)
            return
        except PayloadError as exc:
            if exc.reason in _SPLIT_REASONS and len(batch) > 1:
                # One advertisement the buffer cannot take must not take its neighbours along.
                await asyncio.gather(*(self._submit_many([group]) for group in batch))
                return
            self._refused(len(batch), len(readings), exc.reason, exc.detail)
            return
        except BatcherClosedError as exc:
            self._refused(len(batch), len(readings), "closed", str(exc))
            return
        except CairnError as exc:
            self._refused(len(batch), len(readings), "error", str(exc))
            return
        self.status.stored += len(batch)

    def _refused(self, advertisements: int, readings: int, reason: str, detail: str) -> None:
        """Readings the sink refused: BLE cannot have them sent again, so count and log."""
        self.status.refused_advertisements += advertisements
        self._stats.refused(self.name, reason, readings, f"{detail} (BLE cannot resend them)")


def _preview(adv: Advertisement) -> bytes:
    """The advertisement's data for a log line: ``m:<company id>:<hex> s:<uuid>:<hex>``."""
    parts = [f"m:{cid:04x}:{data.hex()}" for cid, data in adv.manufacturer_data.items()]
    parts += [f"s:{uuid}:{data.hex()}" for uuid, data in adv.service_data.items()]
    return " ".join(parts).encode("utf-8", "backslashreplace")


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


def _describe(exc: BaseException) -> str:
    """A one-line reason for a scanner that would not start."""
    if isinstance(exc, TimeoutError):
        return f"the scanner did not start within {_START_TIMEOUT_S:g} s"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return f"{text} (no D-Bus system bus: is dbus and bluetoothd running?)"
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text
