"""Simulated BLE advertisements from a unix datagram socket, for demos and tests.

With ``[[ble]] simulated_socket = "/run/cairn/ble-sim.sock"`` the source scans no radio: it
binds a unix datagram socket at that path (replacing a stale socket file) and hands each
datagram, as an :class:`~edge.sources.ble_decoders.Advertisement`, to the same callback the
bleak scanner calls (:meth:`edge.sources.ble.BleSource.on_advertisement`). Everything after
that -- allowlists, the queue, duplicate detection, the decoders, the buffer -- is the real
path. ``cairn-sim`` sends such datagrams for a fleet file's ``transport = { kind = "ble" }``.

A datagram is one JSON object (UTF-8)::

    {"address": "C0:DE:00:00:00:01", "rssi": -60, "name": "sim",
     "service_data": {"0000fcd2-0000-1000-8000-00805f9b34fb": "4000010202ca09"},
     "manufacturer_data": {"1177": "0512fc..."}}

``address`` is required; ``rssi`` (default -60) and ``name`` are optional; the data tables map a
service UUID (lower case) or a company id (decimal) to the bytes as hex. The arrival time is the
edge clock, strictly increasing per socket (two datagrams read in the same microsecond are one
microsecond apart), as a radio would stamp them in order. A datagram that is not such an object
is counted and logged by the source (``rejected["bad-datagram"]`` in its status, the log
rate-limited) and the next one is read as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from contract.model import now_us
from edge.config import BleSettings, ScanningMode
from edge.sources.ble_decoders import Advertisement

__all__ = ["MAX_DATAGRAM", "BadDatagramError", "SimulatedAdvertisementScanner", "parse_datagram"]

_log = logging.getLogger(__name__)

MAX_DATAGRAM: Final = 65_536
"""Largest datagram read; a longer one is cut and refused as bad JSON."""
_READS_PER_WAKEUP: Final = 256
_LOG_INTERVAL_S: Final = 60.0


class BadDatagramError(ValueError):
    """A datagram that is not an advertisement object; the message says why."""


def parse_datagram(data: bytes, ts: int) -> Advertisement:
    """The advertisement a datagram describes; :class:`BadDatagramError` otherwise."""
    try:
        doc: Any = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadDatagramError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadDatagramError("not a JSON object")
    address = doc.get("address")
    if not isinstance(address, str) or not 0 < len(address) <= 64:
        raise BadDatagramError("address must be a string of 1..64 characters")
    rssi = doc.get("rssi", -60)
    if isinstance(rssi, bool) or not isinstance(rssi, int) or not -127 <= rssi <= 20:
        raise BadDatagramError("rssi must be an integer in -127..20")
    name = doc.get("name")
    if name is not None and not isinstance(name, str):
        raise BadDatagramError("name must be a string")
    manufacturer: dict[int, bytes] = {}
    for cid, hexdata in _table(doc, "manufacturer_data").items():
        if not cid.isdigit() or int(cid) > 0xFFFF:
            raise BadDatagramError(f"manufacturer id {cid[:20]!r} is not 0..65535")
        manufacturer[int(cid)] = _hex(hexdata, "manufacturer_data")
    service = {
        uuid.lower(): _hex(hexdata, "service_data")
        for uuid, hexdata in _table(doc, "service_data").items()
    }
    return Advertisement(address, name, rssi, manufacturer, service, ts)


def _table(doc: dict[str, Any], key: str) -> dict[str, Any]:
    table = doc.get(key, {})
    if not isinstance(table, dict):
        raise BadDatagramError(f"{key} must be an object")
    return table


def _hex(value: object, key: str) -> bytes:
    if not isinstance(value, str):
        raise BadDatagramError(f"{key} values must be hex strings")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise BadDatagramError(f"{key} value {value[:20]!r} is not hex") from None


class SimulatedAdvertisementScanner:
    """A :class:`~edge.sources.ble.Scanner` reading advertisements from a datagram socket."""

    def __init__(
        self,
        settings: BleSettings,
        mode: ScanningMode,
        callback: Callable[[Advertisement], None],
        *,
        on_bad: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.path = Path(settings.simulated_socket)
        self._callback = callback
        self._on_bad = on_bad
        self._sock: socket.socket | None = None
        self._last_ts = 0
        self._last_log = -_LOG_INTERVAL_S
        self.bad_datagrams = 0
        """Datagrams that were not an advertisement object (logged, at most once a minute)."""
        del mode  # no radio: passive and active are the same here

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                self.path.unlink()  # a stale socket of an earlier run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(self.path))
            sock.setblocking(False)  # noqa: FBT003
        except OSError:
            sock.close()
            raise
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read)

    async def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _read(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(_READS_PER_WAKEUP):
            try:
                data = sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                _log.warning("simulated BLE socket %s: %s", self.path, exc)
                return
            ts = max(now_us(), self._last_ts + 1)
            self._last_ts = ts
            try:
                adv = parse_datagram(data, ts)
            except BadDatagramError as exc:
                self.bad_datagrams += 1
                if self._on_bad is not None:  # the source counts and logs it
                    self._on_bad(str(exc), data)
                    continue
                now = time.monotonic()
                if now - self._last_log >= _LOG_INTERVAL_S:
                    self._last_log = now
                    _log.warning(
                        "simulated BLE socket %s: bad datagram (%d so far): %s",
                        self.path,
                        self.bad_datagrams,
                        exc,
                    )
                continue
            self._callback(adv)
