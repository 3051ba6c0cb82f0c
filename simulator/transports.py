"""Fleet-file transports: one sender class per kind, the parts they send, and their validation.

A device type's ``transport`` table picks a kind and a format (:data:`simulator.encoders.FORMATS`);
:func:`check_transport` validates it (errors name the key, as the rest of the fleet file).
``simulator.fleetrun.send_device_type`` sends every kind the same way: blocks of instants as
:class:`Part` s (``WirePart`` here, through the format's encoder), paced or open loop
(``simulator.pacing``), counted for the live display, through the kind's :class:`Sender`
(:func:`sender_for`), filling a :class:`~simulator.send.Ledger`: the ledger's readings are the
edge's names and values (``simulator.encoders``), regenerated from the seed when asked.

Kinds:

``mqtt``
    Through the MQTT publisher of ``simulator.mqtt_wire`` (:class:`MqttSender`); ``json`` and
    ``value`` payloads are made by ``simulator.fleetrun.FilePart``, ``senml`` by its encoder.
    Acknowledged at the broker's PUBACK (QoS 1), or once handed to the connection (QoS 0).
``serial``
    ``port``: a path (``{device}`` in it when the type has several devices: a serial source
    reads one device). A path that does not exist (or is a symbolic link) becomes a
    pseudo-terminal the simulator owns, the path a link to its slave side, which the edge
    opens as a real port (``[[serial]] port = <path>``); an existing device is opened at
    ``baud``. A line counts as sent once written. ``format``: ``jsonl``, ``csv`` or ``nmea``.
``http`` / ``ws``
    ``url`` of the edge's ``[[http]]`` source (``http://host:port``); a device token per device:
    ``token_key`` (the hub's signing key file, with ``tenant`` and ``issuer``: tokens as
    ``cairn-hub token device`` makes them) or ``token`` (one device). ``http`` POSTs each
    message to ``/api/v1/readings`` (acknowledged by the 202); ``ws`` keeps a WebSocket per
    device on ``/api/v1/ws`` (acknowledged by each message's ``ok``). A 429 or 503 is retried
    after its ``Retry-After``; other refusals stop the run with the edge's reason.
``ble``
    ``socket``: the edge's ``[[ble]] simulated_socket``; each advertisement is a datagram
    (``edge.sources.ble_sim``), counted as sent once the socket took it (BLE has no acks).
    ``format``: ``bthome`` or ``ruuvi``; ``fields`` maps sensor keys to measurements.
    Addresses are :func:`~simulator.encoders.ble_address` of type and index: give the edge a
    ``devices`` table (:func:`edge_ble_devices`) so readings carry the fleet's device ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import pty
import socket
import stat
import termios
import time
import tty
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, cast
from urllib.parse import urlsplit

import aiohttp

from contract.errors import CairnError, ConfigError
from contract.model import Value, valid_name
from simulator.encoders import (
    BTHOME,
    FORMATS,
    RUUVI_TARGETS,
    BTHomeEncoder,
    CsvEncoder,
    Encoder,
    Item,
    JsonEncoder,
    NmeaEncoder,
    RuuviEncoder,
    SenmlEncoder,
    ValueEncoder,
    Wire,
    ble_address,
    check_fields,
    flatten,
)

if TYPE_CHECKING:
    from concurrent.futures import Future

    from simulator.fleetfile import Block, DeviceType, Transport

__all__ = [
    "BleSender",
    "HttpSender",
    "MqttSender",
    "Part",
    "Sender",
    "SerialSender",
    "TransportError",
    "WirePart",
    "WsSender",
    "batch_of",
    "block_rows",
    "check_transport",
    "destination",
    "edge_ble_devices",
    "edge_sources_toml",
    "encoder_for",
    "messages_per_instant",
    "readings_per_device",
    "sender_for",
]

_IN_FLIGHT: Final = 512
"""HTTP requests / WebSocket messages awaiting their answer, per device type."""
_TOKEN_TTL_S: Final = 86_400
_RETRY_S: Final = 1.0
_OPEN_TIMEOUT_S: Final = 30.0
"""How long a serial sender waits for the edge to open its pseudo-terminal."""
_SETTLE_S: Final = 0.1
_PORT_QUEUE_BYTES: Final = 256 * 1024
"""Bytes queued per serial port before the sender waits for that port."""
_UNOPENED: Final = termios.B50
"""Line speed of a fresh pseudo-terminal: a reader that opens it sets its own."""


class TransportError(CairnError):
    """A transport could not deliver (the edge refused a message, a port failed)."""


# --- validation ----------------------------------------------------------------------------

_KEYS: Final = {
    "mqtt": {"kind", "payload", "topic", "qos"},
    "serial": {"kind", "format", "port", "baud", "sensor", "prefix"},
    "http": {"kind", "format", "url", "token", "token_key", "tenant", "issuer", "batch"},
    "ws": {"kind", "format", "url", "token", "token_key", "tenant", "issuer", "batch"},
    "ble": {"kind", "format", "socket", "fields"},
}


def check_transport(where: str, raw: Mapping[str, Any], dtype: DeviceType) -> None:
    """Check a non-MQTT-JSON transport table against its device type (``ConfigError``)."""
    kind = raw.get("kind", "mqtt")
    if kind == "mqtt":
        return
    allowed = _KEYS[kind]
    for k in raw:
        if k not in allowed:
            raise ConfigError(f"{where}.{k}", f"unknown key (known: {', '.join(sorted(allowed))})")
    fmt = raw.get("format", FORMATS[kind][0])
    if fmt not in FORMATS[kind]:
        raise ConfigError(
            f"{where}.format", f"a {kind} transport sends {', '.join(FORMATS[kind])}, not {fmt!r}"
        )
    if kind == "serial":
        _check_serial(where, raw, fmt, dtype)
    elif kind in {"http", "ws"}:
        _check_http(where, raw, dtype)
    else:
        _check_ble(where, raw, fmt, dtype)


def _string(where: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(where, f"must be a non-empty string, not {raw!r}")
    return raw


def _check_serial(where: str, raw: Mapping[str, Any], fmt: str, dtype: DeviceType) -> None:
    port = _string(f"{where}.port", raw.get("port"))
    if dtype.count > 1 and "{device}" not in port:
        raise ConfigError(
            f"{where}.port", "needs {device}: a serial port carries one device (count > 1)"
        )
    try:
        port.format(device="d")
    except (KeyError, IndexError, ValueError):
        raise ConfigError(f"{where}.port", "only {device} may be used") from None
    baud = raw.get("baud", 115_200)
    if isinstance(baud, bool) or not isinstance(baud, int) or not 50 <= baud <= 4_000_000:
        raise ConfigError(f"{where}.baud", f"must be an integer in 50..4,000,000, not {baud!r}")
    if fmt != "nmea":
        for k in ("sensor", "prefix"):
            if k in raw:
                raise ConfigError(f"{where}.{k}", "applies to format 'nmea' only")
        return
    gps = [s.key for s in dtype.streams if s.emit and s.generator == "gps"]
    sensor = raw.get("sensor", gps[0] if len(gps) == 1 else None)
    if sensor is None:
        raise ConfigError(
            f"{where}.sensor", "name the gps stream the sentences carry (none or several)"
        )
    if sensor not in gps:
        raise ConfigError(f"{where}.sensor", f"{sensor!r} is not an emitted gps stream")
    others = [k for k in dtype.emitted_keys if k != sensor]
    if others:
        raise ConfigError(
            f"{where}.format",
            f"nmea carries only the GPS fix; {', '.join(others)} would be lost "
            "(emit = false, or another format)",
        )
    prefix = raw.get("prefix", "gps")
    if not isinstance(prefix, str) or not valid_name(prefix):
        raise ConfigError(f"{where}.prefix", f"must be a sensor name, not {prefix!r}")


def _check_http(where: str, raw: Mapping[str, Any], dtype: DeviceType) -> None:
    url = _string(f"{where}.url", raw.get("url"))
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.path not in {"", "/"}:
        raise ConfigError(f"{where}.url", f"must look like http://host:port, not {url!r}")
    batch = raw.get("batch", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 1000:
        raise ConfigError(f"{where}.batch", f"must be an integer in 1..1,000, not {batch!r}")
    if ("token" in raw) == ("token_key" in raw):
        raise ConfigError(f"{where}.token_key", "give token_key (and tenant) or token")
    if "token" in raw:
        _string(f"{where}.token", raw["token"])
        if dtype.count != 1:
            raise ConfigError(
                f"{where}.token", "one token is one device: use token_key for several"
            )
        for k in ("tenant", "issuer"):
            if k in raw:
                raise ConfigError(f"{where}.{k}", "goes with token_key")
        return
    _string(f"{where}.token_key", raw["token_key"])
    _string(f"{where}.tenant", raw.get("tenant"))
    if "issuer" in raw:
        _string(f"{where}.issuer", raw["issuer"])


def _check_ble(where: str, raw: Mapping[str, Any], fmt: str, dtype: DeviceType) -> None:
    _string(f"{where}.socket", raw.get("socket"))
    fields = raw.get("fields", {})
    if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
        raise ConfigError(f"{where}.fields", 'must be a table like { temp = "temperature" }')
    check_fields(where, fmt, fields)
    mapping = _ble_fields(fmt, fields, dtype)
    for key in dtype.emitted_keys:
        if key not in mapping:
            raise ConfigError(
                f"{where}.fields",
                f'sensor {key!r} maps to no {fmt} measurement (add {key} = "<name>")',
            )
    for key in fields:
        if key not in dtype.emitted_keys:
            raise ConfigError(f"{where}.fields.{key}", "is not an emitted sensor of this type")
    for s in dtype.streams:
        if s.key not in mapping or not s.emit:
            continue
        gen = s.generator
        if mapping[s.key] == "acceleration" and gen not in {"accel", "gyro"} and s.join != "vector":
            raise ConfigError(f"{where}.fields.{s.key}", "acceleration takes a 3-axis stream")
        if mapping[s.key] != "acceleration" and gen in {"gps", "accel", "gyro"}:
            raise ConfigError(f"{where}.fields.{s.key}", f"a {gen} stream is not one number")


def _ble_fields(fmt: str, fields: Mapping[str, str], dtype: DeviceType) -> dict[str, str]:
    known = set(BTHOME) if fmt == "bthome" else set(RUUVI_TARGETS)
    out = {k: k for k in dtype.emitted_keys if k in known}
    out.update(fields)
    return out


# --- encoders per device type --------------------------------------------------------------


def _options(t: Transport) -> Mapping[str, Any]:
    return t.options or {}


def encoder_for(dtype: DeviceType) -> Encoder:  # noqa: PLR0911 - one per format
    """The encoder of a device type's transport."""
    t = dtype.transport
    o = _options(t)
    kind, fmt = t.kind, str(o.get("format", FORMATS.get(t.kind, ("json",))[0]))
    if kind == "mqtt":
        if t.payload == "senml":
            return SenmlEncoder("senml", topic=t.topic or "senml/{device}")
        if t.payload == "value":  # sent by simulator.fleetrun; the same bytes, for comparing
            return ValueEncoder("value", topic=t.topic_for("{device}", "{sensor}"))
        return JsonEncoder("json", topic=t.topic_for("{device}"))
    if kind == "serial":
        if fmt == "csv":
            return CsvEncoder("csv", columns=_csv_columns(dtype))
        if fmt == "nmea":
            gps = [s.key for s in dtype.streams if s.emit and s.generator == "gps"]
            return NmeaEncoder(
                "nmea", sensor=str(o.get("sensor", gps[0])), prefix=str(o.get("prefix", "gps"))
            )
        return JsonEncoder("jsonl", newline=True)
    if kind in {"http", "ws"}:
        return JsonEncoder(kind)
    addresses = {d: ble_address(dtype.name, i) for i, d in enumerate(dtype.device_ids)}
    fields = _ble_fields(fmt, o.get("fields", {}), dtype)
    if fmt == "ruuvi":
        return RuuviEncoder(fields=fields, addresses=addresses)
    return BTHomeEncoder(fields=fields, addresses=addresses)


def _csv_columns(dtype: DeviceType) -> tuple[str, ...]:
    cols = dtype.device_columns(0, 0, 1)
    names: list[str] = []
    for key in dtype.emitted_keys:
        names.extend(n for n, _v in flatten(key, cols[key].values()[0]))
    return tuple(names)


def edge_ble_devices(dtype: DeviceType) -> dict[str, str]:
    """The ``[[ble]] devices`` table naming a BLE device type's devices as the fleet does."""
    return {ble_address(dtype.name, i): d for i, d in enumerate(dtype.device_ids)}


def edge_sources_toml(
    dtype: DeviceType,
    *,
    mqtt_url: str = "",
    http_key: tuple[str, str] | None = None,
    name: str = "",
) -> str:
    """The edge's source tables (TOML) that receive a device type's transport: for demos,
    tests and benchmarks. ``mqtt_url``: the broker (``mqtt`` kinds); ``http_key``: ``(kid, PEM
    file)`` of the device tokens' public key (``http``/``ws``); ``name`` prefixes the source
    names (default the type's name). Limits that would refuse a fast fleet are opened up
    (``rate_readings_per_s = 0``, a large BLE queue)."""
    t = dtype.transport
    o = _options(t)
    src = name or dtype.name
    if t.kind == "mqtt":
        topic = t.topic or t.topic_for("{device}", "{sensor}")
        ca = f'ca_file = "{o["ca_file"]}"\n' if "ca_file" in o else ""
        return (
            f'[[mqtt]]\nname = "{src}"\nurl = "{mqtt_url}"\nclient_id = "cairn-edge-{src}"\n'
            f'topics = [{{ pattern = "{topic}", format = "{t.payload}" }}]\n{ca}'
        )
    if t.kind == "serial":
        fmt = str(o.get("format", "jsonl"))
        parser = "json" if fmt == "jsonl" else fmt
        extra = f'sensor_prefix = "{o.get("prefix", "gps")}"\n' if fmt == "nmea" else ""
        return "".join(
            f'[[serial]]\nname = "{src}-{i}"\nport = "{str(o["port"]).format(device=d)}"\n'
            f'device = "{d}"\nparser = "{parser}"\nbaud = {o.get("baud", 115_200)}\n'
            f"reconnect_initial_s = 0.02\nreconnect_max_s = 0.2\n{extra}"
            for i, d in enumerate(dtype.device_ids)
        )
    if t.kind in {"http", "ws"}:
        if http_key is None:
            raise ConfigError("http_key", "an http/ws source needs the tokens' (kid, PEM file)")
        netloc = urlsplit(str(o["url"])).netloc
        issuer = o.get("issuer", "cairn-hub")
        return (
            f'[[http]]\nname = "{src}"\nlisten = "{netloc}"\nissuer = "{issuer}"\n'
            "rate_readings_per_s = 0\nrate_burst = 10000000\n"
            f'keys = [{{ kid = "{http_key[0]}", file = "{http_key[1]}" }}]\n'
        )
    devices = ", ".join(f'"{a}" = "{d}"' for a, d in edge_ble_devices(dtype).items())
    return (
        f'[[ble]]\nname = "{src}"\ndecoder = "{o.get("format", "bthome")}"\n'
        f'simulated_socket = "{o["socket"]}"\nqueue_size = 1000000\n'
        f"max_devices = {max(1_000, dtype.count)}\ndevices = {{ {devices} }}\n"
    )


# --- the ledger's parts --------------------------------------------------------------------

_Msg = tuple[int, Wire, int | None]


@dataclass(eq=False)
class Part:
    """One block of a device type's instants as messages, and which were acknowledged: a
    ``LedgerPart`` that regenerates its acknowledged readings from the seed.

    The one machinery of every transport's parts; a subclass says how a block becomes messages
    (:meth:`_messages`): :class:`WirePart` through a format's encoder,
    ``simulator.fleetrun.FilePart`` MQTT JSON and value payloads.
    """

    dtype: DeviceType
    start: int
    """First instant of the block."""
    n: int
    """Instants in the block."""
    _: KW_ONLY
    counts: dict[int, int] = field(default_factory=dict)
    """Readings per message sent and not yet acknowledged (set as each message is made)."""
    acked: list[list[int]] = field(default_factory=list)
    """Acknowledged message indices as ``[lo, hi)`` ranges, in arrival order."""
    ready: Future[Block] | None = None
    """The block, being generated ahead in a worker thread (``simulator.fleetrun``)."""

    def _messages(self, blk: Block) -> Iterator[_Msg]:
        """``(index, wire, due)`` of the block's messages, in sending order; ``due`` is the
        instant's true time on the first message of each instant (or group of instants)."""
        raise NotImplementedError

    def wires(self) -> Iterator[_Msg]:
        """The messages to send (each one's readings noted for :meth:`readings_in`)."""
        if self.ready is not None:
            blk, self.ready = self.ready.result(), None
        else:
            blk = self.dtype.block(self.start, self.n)
        for msg, wire, due in self._messages(blk):
            self.counts[msg] = len(wire.items)
            yield msg, wire, due

    def readings_in(self, msg: int) -> int:
        return self.counts.pop(msg, 0)

    def record(self, msg: int) -> None:
        if self.acked and self.acked[-1][1] == msg:
            self.acked[-1][1] = msg + 1
        else:
            self.acked.append([msg, msg + 1])

    def items(self) -> Iterator[Item]:
        ranges = sorted(self.acked)
        if not ranges:
            return
        pos = 0
        for msg, wire, _due in self._messages(self.dtype.block(self.start, self.n)):
            while pos < len(ranges) and ranges[pos][1] <= msg:
                pos += 1
            if pos == len(ranges):
                return
            if ranges[pos][0] <= msg:
                yield from wire.items


@dataclass(eq=False)
class WirePart(Part):
    """One block of a device type's messages in a transport's format."""

    encoder: Encoder
    batch: int = 1
    """Instants per message (``http``/``ws``: a JSON array); blocks are cut at multiples."""

    def _messages(self, blk: Block) -> Iterator[_Msg]:
        enc = self.encoder
        devices = self.dtype.device_ids
        stamps, nominal, streams = block_rows(blk)
        msg = 0
        per = self.batch
        held: list[list[Wire]] = [[] for _ in devices]
        for k in range(blk.n):
            due: int | None = nominal[k]
            last = k == blk.n - 1 or (k + 1) % per == 0
            for d, device in enumerate(devices):
                present: list[tuple[str, Value]] = [
                    (key, vals[k]) for key, vals, sent in streams[d] if sent[k]
                ]
                wires = enc.encode(device, stamps[d][k], self.start + k, present) if present else []
                if per > 1:  # a device that sends `batch` instants at once, as a JSON array
                    held[d].extend(wires)
                    if not last or not held[d]:
                        continue
                    group, held[d] = held[d], []
                    wires = [
                        Wire(
                            device,
                            b"[" + b",".join(w.payload for w in group) + b"]",
                            [i for w in group for i in w.items],
                        )
                    ]
                for wire in wires:
                    yield msg, wire, due
                    due = None
                    msg += 1


_Stream = tuple[str, list[Value], list[bool]]


def block_rows(blk: Block) -> tuple[list[list[int]], list[int], list[list[_Stream]]]:
    """A block as plain lists (fast to index): per device its timestamps; the instants' true
    times; per device ``(key, values, emitted)`` of each emitted stream."""
    stamps = [ts.tolist() for ts in blk.ts_us]
    streams = [
        [(key, blk.values[d][key], col.emitted.tolist()) for key, col in columns.items()]
        for d, columns in enumerate(blk.columns)
    ]
    return stamps, blk.nominal_us.tolist(), streams


def batch_of(dtype: DeviceType) -> int:
    """Instants per message of a device type's transport (``batch``, 1 by default)."""
    return int(_options(dtype.transport).get("batch", 1))


def messages_per_instant(dtype: DeviceType) -> int:
    """Messages a device type sends per instant (or group of ``batch`` instants), dropouts
    aside: one per device, or one per sensor of each device for MQTT ``value`` payloads."""
    t = dtype.transport
    per_device = len(dtype.emitted_keys) if t.kind == "mqtt" and t.payload == "value" else 1
    return dtype.count * per_device


def readings_per_device(dtype: DeviceType) -> int:
    """Readings the edge makes of one device's instant with every emitted sensor present:
    one per sensor for MQTT JSON and value payloads, else what the format's encoder makes of
    the first instant (a GPS fix or vector split into numbers, a Ruuvi tag's extra fields)."""
    t = dtype.transport
    if t.kind == "mqtt" and t.payload in {"json", "value"}:
        return len(dtype.emitted_keys)
    blk = dtype.block(0, 1)
    present = [(key, vals[0]) for key, vals in blk.values[0].items()]
    device = dtype.device_ids[0]
    wires = encoder_for(dtype).encode(device, int(blk.ts_us[0][0]), 0, present)
    return sum(len(w.items) for w in wires)


def destination(dtype: DeviceType, mqtt_url: str) -> str:
    """Where a device type's transport sends: the broker, the port(s), URL or socket."""
    t = dtype.transport
    o = _options(t)
    if t.kind == "serial":
        return str(o["port"])
    if t.kind in {"http", "ws"}:
        return str(o["url"])
    if t.kind == "ble":
        return str(o["socket"])
    return mqtt_url


# --- senders -------------------------------------------------------------------------------

Ack = Callable[[Part, int], None]


class Sender(Protocol):
    """Delivers wires; calls ``ack(part, msg)`` once the other side has one."""

    async def open(self) -> None: ...

    async def send(self, part: Part, msg: int, wire: Wire, ack: Ack) -> None: ...

    async def close(self) -> None:
        """Wait for what is in flight, then let go of connections."""
        ...


class MqttSender:
    """MQTT (every payload) through ``simulator.mqtt_wire``'s publisher."""

    def __init__(self, url: str, client_id: str, qos: int, ca_file: str | None = None) -> None:
        from simulator.mqtt_wire import MqttPublisher, parse_mqtt_url, tls_context  # noqa: PLC0415

        host, port = parse_mqtt_url(url)
        try:
            tls = tls_context(url, ca_file)
        except ConfigError as exc:
            raise ConfigError(f"transport.{exc.key}", exc.problem) from None
        self._pub = MqttPublisher(host, port, client_id, tls=tls)
        self._qos = qos
        self._ack: Ack | None = None

    async def open(self) -> None:
        await self._pub.__aenter__()

        def on_ack(token: object) -> None:
            part, msg = cast("tuple[Part, int]", token)
            if self._ack is not None:
                self._ack(part, msg)

        self._pub.on_ack(on_ack)

    async def send(self, part: Part, msg: int, wire: Wire, ack: Ack) -> None:
        self._ack = ack
        await self._pub.publish(wire.dest, wire.payload, self._qos, (part, msg))
        if self._qos == 0:
            ack(part, msg)

    async def close(self) -> None:
        try:
            await self._pub.drain()
        finally:
            await self._pub.__aexit__(None, None, None)


@dataclass
class _Port:
    fd: int
    slave: int = -1
    link: Path | None = None
    pending: bytearray = field(default_factory=bytearray)
    """Bytes queued for this port (each device writes on its own: one slow reader does not
    hold up the other ports)."""
    queued: int = 0
    """Bytes ever queued; ``written`` of them are in the kernel."""
    written: int = 0
    acks: deque[tuple[int, Part, int, Ack]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class SerialSender:
    """Lines to one serial port per device: a pseudo-terminal the simulator owns (its slave
    linked at the port path) or an existing port."""

    def __init__(self, port: str, baud: int, preamble: bytes, devices: Sequence[str] = ()) -> None:
        self._template = port
        self._baud = baud
        self._preamble = preamble
        self._devices = tuple(devices)
        self._ports: dict[str, _Port] = {}

    async def open(self) -> None:
        """Make every device's port and wait, for all at once, until the edge opened them."""
        await asyncio.gather(*(self._start(d) for d in self._devices))

    async def _start(self, device: str) -> _Port:
        port = self._open(device)
        if port.link is not None:
            await self._reader_ready(port)
        port.task = asyncio.create_task(self._writer(port), name=f"serial-{device}")
        self._queue(port, self._preamble, None)
        return port

    def _open(self, device: str) -> _Port:
        path = Path(self._template.format(device=device))
        if path.exists() and not path.is_symlink():
            if not stat.S_ISCHR(path.stat().st_mode):
                raise TransportError(f"serial port {path} is not a character device")
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
            tty.setraw(fd)
            attrs = termios.tcgetattr(fd)
            speed = getattr(termios, f"B{self._baud}", None)
            if speed is None:
                os.close(fd)
                raise TransportError(f"baud {self._baud} is not a standard speed")
            attrs[4] = attrs[5] = speed
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            port = _Port(fd)
        else:
            master, slave = pty.openpty()
            tty.setraw(slave)  # no echo, no line editing: the bytes as written
            attrs = termios.tcgetattr(slave)
            attrs[4] = attrs[5] = _UNOPENED  # the reader sets its own speed when it opens
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            os.set_blocking(master, False)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.symlink_to(os.ttyname(slave))
            port = _Port(master, slave, path)
        self._ports[device] = port
        return port

    async def _reader_ready(self, port: _Port) -> None:
        """Wait until a reader opened the pty and flushed its input (as pyserial does when it
        opens a port: what was written before would be lost, as from a real device)."""
        deadline = time.monotonic() + _OPEN_TIMEOUT_S
        while termios.tcgetattr(port.slave)[4] == _UNOPENED:
            if time.monotonic() > deadline:
                raise TransportError(f"nobody opened {port.link} in {_OPEN_TIMEOUT_S:g} s")
            await asyncio.sleep(0.01)
        # the reader configured the port; its flush comes next: a newline (a blank line, which
        # readers skip) read or flushed tells that the flush is behind us
        self._write_now(port, b"\n")
        await _drained(port, deadline)

    def _write_now(self, port: _Port, data: bytes) -> bytes:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(port.fd, view) :]
            except BlockingIOError:
                return bytes(view)
        return b""

    async def send(self, part: Part, msg: int, wire: Wire, ack: Ack) -> None:
        port = self._ports.get(wire.dest) or await self._start(wire.dest)
        self._queue(port, wire.payload, (part, msg, ack))
        if len(port.pending) > _PORT_QUEUE_BYTES:
            port.room.clear()
            await self._wait(port, port.room)

    def _queue(self, port: _Port, data: bytes, ack: tuple[Part, int, Ack] | None) -> None:
        port.pending += data
        port.queued += len(data)
        if ack is not None:
            port.acks.append((port.queued, *ack))
        port.idle.clear()
        port.wake.set()

    async def _wait(self, port: _Port, event: asyncio.Event) -> None:
        waiter = asyncio.create_task(event.wait())
        assert port.task is not None
        done, _ = await asyncio.wait({waiter, port.task}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            port.task.result()  # the writer failed: raise its error here

    async def _writer(self, port: _Port) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await port.wake.wait()
            if not port.pending:
                port.wake.clear()
                port.idle.set()
                continue
            rest = self._write_now(port, bytes(port.pending))
            n = len(port.pending) - len(rest)
            del port.pending[:n]
            port.written += n
            while port.acks and port.acks[0][0] <= port.written:
                _end, part, msg, ack = port.acks.popleft()
                ack(part, msg)
            if len(port.pending) <= _PORT_QUEUE_BYTES:
                port.room.set()
            if rest:  # the reader is behind: wait until the port takes more
                ready: asyncio.Future[None] = loop.create_future()

                def wake(f: asyncio.Future[None] = ready) -> None:
                    if not f.done():
                        f.set_result(None)

                loop.add_writer(port.fd, wake)
                try:
                    await ready
                finally:
                    loop.remove_writer(port.fd)

    async def close(self) -> None:
        try:
            for port in self._ports.values():  # everything queued into the kernel
                if port.task is not None and port.pending:
                    await self._wait(port, port.idle)
            # keep the ptys until the reader has everything: the kernel holds what is written
            deadline = time.monotonic() + _OPEN_TIMEOUT_S
            await asyncio.gather(
                *(_drained(p, deadline) for p in self._ports.values() if p.link is not None),
                return_exceptions=True,
            )
        finally:
            for port in self._ports.values():
                if port.task is not None:
                    port.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await port.task
                if port.link is not None:
                    port.link.unlink(missing_ok=True)
                    os.close(port.slave)
                os.close(port.fd)
            self._ports.clear()


async def _drained(port: _Port, deadline: float) -> None:
    """Wait until the reader took everything written to a pty: its slave side's input queue
    empty for ``_SETTLE_S`` in a row (the kernel moves written bytes into that queue in a
    worker of its own, so one empty look is not enough)."""
    quiet_since = time.monotonic()
    while True:
        now = time.monotonic()
        if _unread(port.slave):
            quiet_since = now
        elif now - quiet_since >= _SETTLE_S:
            return
        if now > deadline:
            raise TransportError(f"nobody reads {port.link}")
        await asyncio.sleep(0.005)


def _unread(slave: int) -> int:
    """Bytes written to a pty's master side not yet read from its slave side."""
    buf = bytearray(4)
    try:
        fcntl.ioctl(slave, termios.FIONREAD, buf)
    except OSError:
        return 0
    return int.from_bytes(buf, "little")


class _Tokens:
    """Device tokens: one given, or issued with the hub's signing key."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._given = options.get("token")
        self._auth: Any = None
        self._tenant = str(options.get("tenant", ""))
        self._cache: dict[str, str] = {}
        key = options.get("token_key")
        if key is not None:
            from hub.auth import TokenAuthority  # noqa: PLC0415 - only for token_key

            path = Path(str(key))
            if not path.is_file():
                raise ConfigError("transport.token_key", f"no such key file: {path}")
            self._auth = TokenAuthority(
                path, issuer=str(options.get("issuer", "cairn-hub")), audience="cairn-api"
            )

    def for_device(self, device: str) -> str:
        tok = self._cache.get(device)
        if tok is None:
            tok = (
                str(self._given)
                if self._auth is None
                else (self._auth.issue_device(self._tenant, device, _TOKEN_TTL_S))
            )
            self._cache[device] = tok
        return tok


def _retry_after(headers: Mapping[str, str]) -> float:
    try:
        return max(0.01, min(60.0, float(headers.get("Retry-After", _RETRY_S))))
    except ValueError:
        return _RETRY_S


class HttpSender:
    """``POST /api/v1/readings`` with each device's token, ``_IN_FLIGHT`` requests at once."""

    def __init__(self, url: str, tokens: _Tokens) -> None:
        self._url = url.rstrip("/") + "/api/v1/readings"
        self._tokens = tokens
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=_IN_FLIGHT), timeout=aiohttp.ClientTimeout(60)
        )

    async def send(self, part: Part, msg: int, wire: Wire, ack: Ack) -> None:
        if self._error is not None:
            raise self._error
        await self._slots.acquire()
        task = asyncio.create_task(self._post(part, msg, wire, ack))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()

    async def _post(self, part: Part, msg: int, wire: Wire, ack: Ack) -> None:
        assert self._session is not None
        headers = {
            "Authorization": f"Bearer {self._tokens.for_device(wire.dest)}",
            "Content-Type": "application/json",
        }
        while True:
            try:
                async with self._session.post(self._url, data=wire.payload, headers=headers) as r:
                    body = await r.read()
                    status, retry = r.status, _retry_after(r.headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransportError(f"cannot post to the edge at {self._url}: {exc}") from None
            if status == 202:
                ack(part, msg)
                return
            if status not in {429, 503}:
                raise TransportError(
                    f"the edge refused a request of {wire.dest}: {status} {body[:200]!r}"
                )
            await asyncio.sleep(retry)

    async def close(self) -> None:
        try:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._error is not None:
                raise self._error
        finally:
            if self._session is not None:
                await self._session.close()


class WsSender:
    """A WebSocket per device on ``/api/v1/ws``; each message answered by its ``id``."""

    def __init__(self, url: str, tokens: _Tokens) -> None:
        self._url = url.rstrip("/") + "/api/v1/ws"
        self._tokens = tokens
        self._session: aiohttp.ClientSession | None = None
        self._sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}
        self._readers: list[asyncio.Task[None]] = []
        self._pending: dict[tuple[str, int], tuple[Part, int, Ack]] = {}
        self._slots = asyncio.Semaphore(_IN_FLIGHT)
        self._error: BaseException | None = None
        self._next = itertools.count()
        self._idle = asyncio.Event()
        self._idle.set()

    async def open(self) -> None:
        self._session = aiohttp.ClientSession()

    async def _socket(self, device: str) -> aiohttp.ClientWebSocketResponse:
        ws = self._sockets.get(device)
        if ws is None:
            assert self._session is not None
            token = self._tokens.for_device(device)
            try:
                ws = await self._session.ws_connect(
                    self._url, headers={"Authorization": f"Bearer {token}"}
                )
            except aiohttp.WSServerHandshakeError as exc:
                raise TransportError(
                    f"the edge refused {device}'s WebSocket: {exc.status} {exc.message}"
                ) from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransportError(f"cannot reach the edge at {self._url}: {exc}") from None
            self._sockets[device] = ws
            self._readers.append(asyncio.create_task(self._read(device, ws)))
        return ws

    async def _read(self, device: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for m in ws:
            if m.type is not aiohttp.WSMsgType.TEXT:
                continue
            answer = json.loads(m.data)
            entry = self._pending.pop((device, int(answer["id"])), None)
            if entry is None:
                continue
            if not self._pending:
                self._idle.set()
            self._slots.release()
            part, msg, ack = entry
            if answer.get("status") == "ok":
                ack(part, msg)
            elif self._error is None:
                self._error = TransportError(f"the edge refused a message of {device}: {answer}")
        if self._error is None and any(d == device for d, _ in self._pending):
            self._error = TransportError(f"the edge closed {device}'s WebSocket ({ws.close_code})")
        self._idle.set()

    async def send(self, part: Part, msg: int, wire: Wire, ack: Ack) -> None:
        if self._error is not None:
            raise self._error
        await self._slots.acquire()
        ws = await self._socket(wire.dest)
        mid = next(self._next)
        self._pending[(wire.dest, mid)] = (part, msg, ack)
        self._idle.clear()
        await ws.send_str(f'{{"id":{mid},"readings":{wire.payload.decode()}}}')

    async def close(self) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60.0):
                    while self._pending and self._error is None:
                        await self._idle.wait()
                        if self._pending and self._error is None:
                            self._idle.clear()
            if self._error is not None:
                raise self._error
            if self._pending:
                raise TransportError(f"{len(self._pending)} WebSocket messages unanswered")
        finally:
            for ws in self._sockets.values():
                await ws.close()
            for task in self._readers:
                task.cancel()
            await asyncio.gather(*self._readers, return_exceptions=True)
            if self._session is not None:
                await self._session.close()


class BleSender:
    """Advertisement datagrams to the edge's ``[[ble]] simulated_socket``."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._sock: socket.socket | None = None

    async def open(self) -> None:
        deadline = time.monotonic() + 10.0
        while True:  # the edge may still be binding it
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)  # noqa: FBT003
            try:
                sock.connect(self._path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() > deadline:
                    raise TransportError(f"no edge BLE socket at {self._path}: {exc}") from None
                await asyncio.sleep(0.05)
                continue
            self._sock = sock
            return

    async def send(self, part: Part, msg: int, wire: Wire, ack: Ack) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        try:
            self._sock.send(wire.payload)
        except BlockingIOError:
            await loop.sock_sendall(self._sock, wire.payload)
        ack(part, msg)

    async def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def sender_for(dtype: DeviceType, url: str, client_id: str) -> Sender:
    """The sender of a device type's transport (``url``: the MQTT broker, for ``mqtt``)."""
    t = dtype.transport
    o = _options(t)
    if t.kind == "mqtt":
        ca_file = o.get("ca_file")
        return MqttSender(url, client_id, t.qos, None if ca_file is None else str(ca_file))
    if t.kind == "serial":
        return SerialSender(
            str(o["port"]),
            int(o.get("baud", 115_200)),
            encoder_for(dtype).preamble(()),
            dtype.device_ids,
        )
    if t.kind == "http":
        return HttpSender(str(o["url"]), _Tokens(o))
    if t.kind == "ws":
        return WsSender(str(o["url"]), _Tokens(o))
    return BleSender(str(o["socket"]))
