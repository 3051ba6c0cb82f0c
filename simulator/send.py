"""Send a fleet over MQTT, paced or as fast as possible, and keep a ledger of what was acknowledged.

Two payload layouts, the two the edge's MQTT source reads:

- ``json``: topic ``devices/{device}``, one message per device per instant,
  ``{"ts": <us>, "<sensor>": <value>, ...}``; with ``instants_per_message=K > 1`` the message
  is a JSON array of K such objects (a device that batches its readings);
- ``value``: topic ``sensors/{device}/{sensor}``, ``{"ts": <us>, "value": <value>}``, one reading
  per message.

``ts`` is an integer count of microseconds since the epoch; values are JSON scalars. Readings
enter the ``Ledger`` when the PUBACK of their message arrives (QoS 1); at QoS 0, when the
message is handed to the connection (no promise of delivery). The ledger stores only which messages
were acknowledged, as ranges, and regenerates the readings from the fleet's seed when asked:
an endless run keeps a ledger of constant size.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, cast

from contract.errors import ConfigError
from contract.model import Reading, Value
from simulator.fleet import Fleet, canonical_value, reading_key
from simulator.generators import kind_info
from simulator.mqtt_wire import MqttPublisher, parse_mqtt_url, tls_context

__all__ = ["MODES", "Ledger", "LedgerPart", "Pacer", "publish_parts", "send_fleet"]

MODES: Final = ("json", "value")
_MAX_AHEAD_S: Final = 3600.0
"""A first timestamp up to this far ahead of the wall clock is waited for (paced mode)."""

_Key = tuple[str, str, int, str]


def _json_bool(v: object) -> str:
    return "true" if v else "false"


_FORMAT: Final[dict[str, Callable[[object], str]]] = {
    "float": float.__repr__,
    "int": int.__repr__,
    "bool": _json_bool,
}


class LedgerPart(Protocol):
    """A block of messages whose acknowledged readings a :class:`Ledger` can regenerate."""

    def readings_in(self, msg: int) -> int:
        """How many readings message ``msg`` carries."""
        ...

    def record(self, msg: int) -> None:
        """Message ``msg`` was acknowledged."""
        ...

    def items(self) -> Iterator[tuple[str, str, int, Value]]:
        """``(device, sensor, ts, value)`` of every acknowledged reading, regenerated."""
        ...


@dataclass(eq=False)
class _Part:
    """The messages of one block of one fleet's instants, and which of them were acknowledged."""

    fleet: Fleet
    mode: str
    per_message: int
    """Instants per message (json mode)."""
    start: int
    """First instant of the block."""
    n: int
    """Instants in the block."""
    acked: list[list[int]] = field(default_factory=list)
    """Acknowledged message indices as ``[lo, hi)`` ranges, in arrival order."""

    def readings_in(self, msg: int) -> int:
        """How many readings message ``msg`` of this block carries."""
        sensors = self.fleet.spec.sensors
        if self.mode == "value":
            return 1
        group = msg // self.fleet.spec.devices
        return min(self.per_message, self.n - group * self.per_message) * sensors

    def record(self, msg: int) -> None:
        ranges = self.acked
        if ranges and ranges[-1][1] == msg:
            ranges[-1][1] = msg + 1
        else:
            ranges.append([msg, msg + 1])

    def messages(self) -> Iterator[int]:
        for lo, hi in sorted(self.acked):
            yield from range(lo, hi)

    def items(self) -> Iterator[tuple[str, str, int, Value]]:
        """``(device, sensor, ts, value)`` of every acknowledged reading, regenerated."""
        fleet = self.fleet
        devices, sensors = fleet.spec.devices, fleet.spec.sensors
        values = fleet.block(self.start, self.n)
        stamps = fleet.timestamps(self.start, self.n)
        for msg in self.messages():
            if self.mode == "value":
                k, rest = divmod(msg, devices * sensors)
                d, s = divmod(rest, sensors)
                yield fleet.device_ids[d], fleet.sensor_keys[s], stamps[k], values[d][s][k]
                continue
            group, d = divmod(msg, devices)
            first = group * self.per_message
            for k in range(first, min(first + self.per_message, self.n)):
                for s in range(sensors):
                    yield fleet.device_ids[d], fleet.sensor_keys[s], stamps[k], values[d][s][k]


class Ledger:
    """What the broker acknowledged: ``count`` readings in ``messages`` messages.

    ``readings`` (a list, built on first access after a change) and ``keys()`` (identities as in
    ``simulator.fleet.reading_key``) regenerate the readings of acknowledged fleet messages.
    """

    def __init__(self) -> None:
        self.count = 0
        """Readings acknowledged."""
        self.messages = 0
        """Messages acknowledged."""
        self._parts: list[LedgerPart | list[Reading]] = []
        self._cache: list[Reading] | None = None

    def __repr__(self) -> str:
        return f"Ledger(count={self.count}, messages={self.messages})"

    def add(self, readings: Sequence[Reading]) -> None:
        """Record readings acknowledged outside ``send_fleet``."""
        self._parts.append(list(readings))
        self.count += len(readings)
        self._cache = None

    def _add_part(self, part: LedgerPart) -> None:
        self._parts.append(part)
        self._cache = None

    def _ack(self, part: LedgerPart, msg: int) -> None:
        part.record(msg)
        self.count += part.readings_in(msg)
        self.messages += 1
        self._cache = None

    @property
    def readings(self) -> list[Reading]:
        """Every acknowledged reading (regenerated from the fleet's seed)."""
        if self._cache is None:
            out: list[Reading] = []
            for part in self._parts:
                if isinstance(part, list):
                    out.extend(part)
                else:
                    out.extend(Reading(*item) for item in part.items())
            self._cache = out
        return self._cache

    def keys(self) -> set[_Key]:
        """The identities of every acknowledged reading (a duplicate shows as ``len < count``)."""
        out: set[_Key] = set()
        for part in self._parts:
            if isinstance(part, list):
                out.update(reading_key(r) for r in part)
            else:
                out.update((d, s, ts, canonical_value(v)) for d, s, ts, v in part.items())
        return out


def _validate(
    mode: str, instants_per_message: int, speed: float, qos: int, instants: range | None
) -> None:
    if mode not in MODES:
        raise ConfigError("mode", f"must be one of {', '.join(MODES)}, not {mode!r}")
    if instants_per_message < 1:
        raise ConfigError("instants_per_message", "must be at least 1")
    if mode == "value" and instants_per_message != 1:
        raise ConfigError("instants_per_message", "value mode sends one reading per message")
    if not (math.isfinite(speed) and speed > 0):
        raise ConfigError("speed", f"must be a positive number, not {speed}")
    if qos not in (0, 1):
        raise ConfigError("qos", f"must be 0 or 1, not {qos}")
    if instants is not None and (instants.step != 1 or instants.start < 0):
        raise ConfigError("instants", "must be a range of non-negative instants with step 1")


def _blocks(fleet: Fleet, instants: range | None, per_message: int) -> Iterator[tuple[int, int]]:
    """``(start, n)`` blocks of instants, each a whole number of messages (but the last)."""
    size = per_message * max(1, fleet.block_size() // per_message)
    if instants is None:
        for start in itertools.count(0, size):
            yield start, size
        return
    for start in range(instants.start, instants.stop, size):
        yield start, min(size, instants.stop - start)


def _format_columns(fleet: Fleet, values: list[list[list[Value]]]) -> list[list[list[str]]]:
    formats = [_FORMAT[kind_info(kind).type] for kind in fleet.sensor_kinds]
    return [[list(map(fmt, col)) for fmt, col in zip(formats, row, strict=True)] for row in values]


class Pacer:
    """Waits for a timestamp's turn: ``origin + (ts - first_ts) / speed``, monotonic clock."""

    def __init__(self, first_ts: int, speed: float) -> None:
        ahead = first_ts / 1e6 - time.time()
        self.origin = time.monotonic() + (ahead if 0 < ahead <= _MAX_AHEAD_S else 0.0)
        self.first_ts = first_ts
        self.speed = speed

    async def wait(self, ts: int) -> None:
        delay = self.origin + (ts - self.first_ts) / 1e6 / self.speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def send_fleet(
    fleet: Fleet,
    url: str,
    *,
    instants: range | None,
    mode: str = "json",
    instants_per_message: int = 1,
    paced: bool = True,
    speed: float = 1.0,
    qos: int = 1,
    ledger: Ledger | None = None,
    client_id: str = "cairn-sim",
    progress: Callable[[int, int], None] | None = None,
    tls: ssl.SSLContext | None = None,
) -> Ledger:
    """Publish ``fleet``'s readings of ``instants`` (``None``: 0, 1, 2... forever) to ``url``.

    Paced, the message of instant ``i`` leaves at ``(ts(i) - ts(first)) / speed`` after the start
    (after ``ts(first)`` itself when that lies in the near future: readings leave at their own
    timestamps); a sender that falls behind catches up without skipping. Not paced, messages
    leave as fast as the broker acknowledges them (2,000 in flight). Returns the ledger
    (``ledger`` if given, filled as acknowledgements arrive); ``progress(messages, readings)`` is
    called after each acknowledgement. ``MqttError`` if the connection fails or breaks.
    An ``mqtts://`` URL speaks TLS, verified by ``tls`` (default: the system's CAs).
    """
    _validate(mode, instants_per_message, speed, qos, instants)
    parse_mqtt_url(url)
    ledger = ledger if ledger is not None else Ledger()
    per_message = instants_per_message if mode == "json" else 1
    first = instants.start if instants is not None else 0
    if instants is not None and len(instants) == 0:
        return ledger
    pacer = Pacer(fleet.ts(first), speed) if paced else None
    parts = (
        (part, _messages(fleet, part))
        for part in (
            _Part(fleet, mode, per_message, start, n)
            for start, n in _blocks(fleet, instants, per_message)
        )
    )
    return await publish_parts(
        url,
        parts,
        pacer=pacer,
        qos=qos,
        ledger=ledger,
        client_id=client_id,
        progress=progress,
        tls=tls,
    )


async def publish_parts(
    url: str,
    parts: Iterator[tuple[LedgerPart, Iterator[tuple[int, str, bytes, int | None]]]],
    *,
    pacer: Pacer | None,
    qos: int,
    ledger: Ledger,
    client_id: str,
    progress: Callable[[int, int], None] | None = None,
    tls: ssl.SSLContext | None = None,
) -> Ledger:
    """Publish each part's messages ``(index, topic, payload, due)``, filling ``ledger``.

    The machinery under :func:`send_fleet`, shared with other message sources (fleet files):
    a message whose ``due`` timestamp is set waits for its turn when ``pacer`` is given;
    acknowledged messages are recorded in their part (which can regenerate their readings).
    """
    host, port = parse_mqtt_url(url)

    def on_ack(token: object) -> None:
        part, msg = cast("tuple[LedgerPart, int]", token)
        ledger._ack(part, msg)  # noqa: SLF001
        if progress is not None:
            progress(ledger.messages, ledger.count)

    context = tls if tls is not None else tls_context(url)
    async with MqttPublisher(host, port, client_id, tls=context) as pub:
        pub.on_ack(on_ack)
        for part, messages in parts:
            ledger._add_part(part)  # noqa: SLF001
            for msg, topic, payload, due in messages:
                if pacer is not None and due is not None:
                    await pacer.wait(due)
                await pub.publish(topic, payload, qos, (part, msg))
                if qos == 0:
                    on_ack((part, msg))
        await pub.drain()
    return ledger


def _messages(fleet: Fleet, part: _Part) -> Iterator[tuple[int, str, bytes, int | None]]:
    """``(index, topic, payload, due)`` of each message of a block, in sending order.

    ``due`` is the timestamp the message waits for when paced (set on the first message of each
    instant or group of instants, ``None`` on the others).
    """
    devices = fleet.device_ids
    stamps = fleet.timestamps(part.start, part.n)
    cols = _format_columns(fleet, fleet.block(part.start, part.n))
    msg = 0
    if part.mode == "value":
        topics = [[f"sensors/{d}/{s}" for s in fleet.sensor_keys] for d in devices]
        for k, ts in enumerate(stamps):
            due: int | None = ts
            head = '{"ts":%d,"value":' % ts  # noqa: UP031
            for d, row in enumerate(cols):
                dtopics = topics[d]
                for s, col in enumerate(row):
                    yield msg, dtopics[s], (head + col[k] + "}").encode(), due
                    due = None
                    msg += 1
        return
    keys = [json.dumps(k).replace("%", "%%") for k in fleet.sensor_keys]
    template = '{"ts":%d,' + ",".join(f"{k}:%s" for k in keys) + "}"
    topics1 = [f"devices/{d}" for d in devices]
    rows = [list(zip(stamps, *row, strict=True)) for row in cols]
    per = part.per_message
    for g0 in range(0, part.n, per):
        g1 = min(g0 + per, part.n)
        due = stamps[g1 - 1]
        for d, drows in enumerate(rows):
            if per == 1:
                payload = template % drows[g0]
            else:
                payload = "[" + ",".join(template % r for r in drows[g0:g1]) + "]"
            yield msg, topics1[d], payload.encode(), due
            due = None
            msg += 1
