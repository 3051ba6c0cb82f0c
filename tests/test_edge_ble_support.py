"""Helpers of the BLE tests: recorded advertisements, fake scanners, a recording sink."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from contract.errors import CairnError, PayloadError
from contract.model import Reading
from edge.batcher import Batcher
from edge.buffer import Buffer, BufferLimits
from edge.config import BleSettings, BufferSettings, ScanningMode
from edge.sources.ble import AdvertisementCallback, BleSource, ScannerFactory
from edge.sources.ble_decoders import BTHOME_UUID, RUUVI_COMPANY_ID, Advertisement
from edge.stats import EdgeStats
from tests.polling import until

TS = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in microseconds

# Recorded advertisements from the decoders' own published examples.
ATC = "A4:C1:38:8D:18:B2"  # bthome-ble tests/test_parser_v2.py, local name "ATC_8D18B2"
SHELLY = "54:48:E6:8F:80:A5"  # bthome-ble tests, Shelly BLU H&T Display ZB ("SBHT-103C")
RUUVI = "CB:B8:33:4C:88:4F"  # the MAC inside Ruuvi's data format 5 test vectors
BTHOME_TEMP_HUM = bytes.fromhex("4002ca0903bf13")  # temperature 25.06, humidity 50.55
BTHOME_PRESSURE = bytes.fromhex("4004138a01")  # pressure 1008.83
BTHOME_SHELLY = bytes.fromhex("40002e01641e012e34451601")  # packet 46, batt 100, ...
BTHOME_DOUBLE_TEMP = bytes.fromhex("4002ca0902cf09")  # temperature 25.06 and 25.11
BTHOME_BUTTON = bytes.fromhex("403a01")  # BTHome format docs: button event "press"
BTHOME_DIMMER = bytes.fromhex("403c0103")  # dimmer rotate left 3 steps
RUUVI_VALID = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
RUUVI_MAX = bytes.fromhex("057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F")
RUUVI_MIN = bytes.fromhex("058001000000008001800180010000000000CBB8334C884F")
RUUVI_INVALID = bytes.fromhex("058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF")


def bthome(
    payload: bytes,
    address: str = ATC,
    name: str | None = "ATC_8D18B2",
    ts: int = TS,
    rssi: int = -60,
) -> Advertisement:
    """What the scanner hands over for a BTHome advertisement with ``payload``."""
    return Advertisement(address, name, rssi, {}, {BTHOME_UUID: payload}, ts)


def ruuvi(
    payload: bytes,
    address: str = RUUVI,
    name: str | None = "Ruuvi 884F",
    ts: int = TS,
    rssi: int = -70,
) -> Advertisement:
    return Advertisement(address, name, rssi, {RUUVI_COMPANY_ID: payload}, {}, ts)


class FakeScanner:
    """A scanner that fails ``failures[mode]`` times, then runs; records starts and stops."""

    def __init__(self, log: ScannerLog, mode: ScanningMode, callback: AdvertisementCallback):
        self.log = log
        self.mode = mode
        self.callback = callback

    async def start(self) -> None:
        self.log.starts.append(self.mode)
        if self.log.hang:
            await asyncio.Event().wait()  # a D-Bus call that never answers
        left = self.log.failures.get(self.mode, 0)
        if left:
            self.log.failures[self.mode] = left - 1
            raise self.log.error
        self.log.running.append(self)

    async def stop(self) -> None:
        self.log.stops += 1
        if self in self.log.running:
            self.log.running.remove(self)


@dataclass
class ScannerLog:
    failures: dict[ScanningMode, int] = field(default_factory=dict)
    error: Exception = field(default_factory=lambda: OSError("adapter hci0 is powered off"))
    starts: list[ScanningMode] = field(default_factory=list)
    stops: int = 0
    running: list[FakeScanner] = field(default_factory=list)
    hang: bool = False

    def factory(self) -> ScannerFactory:
        def make(
            _settings: BleSettings, mode: ScanningMode, callback: AdvertisementCallback
        ) -> FakeScanner:
            return FakeScanner(self, mode, callback)

        return make


class RecordingSink:
    """A sink that records what it is given; ``refuse`` makes it raise instead."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.submits = 0
        self.refuse: CairnError | None = None
        self.gate: asyncio.Event | None = None

    async def submit(
        self, readings: Sequence[Reading], source: str, digest: bytes | None = None
    ) -> None:
        self.submits += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.refuse is not None:
            raise self.refuse
        self.readings.extend(readings)

    def submit_nowait(
        self,
        readings: Sequence[Reading],
        source: str,
        digest: bytes | None,
        done: Callable[[PayloadError | None], None],
    ) -> bool:
        raise AssertionError("the BLE source awaits submit")

    async def redelivered(self, digest: bytes) -> bool:
        return False

    async def drain(self) -> None:
        return None


@dataclass
class BleEdge:
    buffer: Buffer
    batcher: Batcher
    stats: EdgeStats
    source: BleSource
    scanners: ScannerLog


def ble_settings(**kw: object) -> BleSettings:
    defaults: dict[str, object] = {"name": "ble", "retry_initial_s": 0.01, "retry_max_s": 0.05}
    defaults.update(kw)
    return BleSettings(**defaults)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def ble_edge(
    tmp_path: Path,
    settings: BleSettings,
    scanners: ScannerLog | None = None,
    limits: BufferLimits | None = None,
) -> AsyncIterator[BleEdge]:
    """Real buffer + batcher + a BLE source on a fake scanner, scanning. With
    ``settings.simulated_socket`` the source keeps its own scanner (the simulated socket)."""
    scanners = scanners if scanners is not None else ScannerLog()
    buffer = Buffer(tmp_path / "buffer.sqlite3", limits=limits)
    stats = EdgeStats()
    batcher = Batcher(
        buffer,
        BufferSettings(flush_interval_ms=10, max_batch_readings=1000, max_pending_readings=10_000),
        stats,
    )
    if settings.simulated_socket:
        made = BleSource(settings, batcher, stats)
    else:
        made = BleSource(settings, batcher, stats, scanner_factory=scanners.factory())
    try:
        async with made as source:
            tasks = [
                asyncio.create_task(batcher.run()),
                asyncio.create_task(source.run()),
            ]
            try:
                await until(lambda: source.connected, "the scanner to start")
                yield BleEdge(buffer, batcher, stats, source, scanners)
            finally:
                await source.stop()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        buffer.close()


def settled(source: BleSource) -> bool:
    """Every advertisement counted in ``messages`` has its outcome."""
    st = source.status
    outcomes = st.stored + st.duplicates + sum(st.rejected.values()) + st.refused_advertisements
    return outcomes == st.messages
