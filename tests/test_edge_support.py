"""Helpers of the edge tests (no tests here): a raw MQTT 5 publisher, an MQTT-aware TCP proxy
that shows (and can hold back) what the edge acknowledges, config files, polling, JetStream.

The broker acknowledges a publisher's QoS 1 message as soon as it has it; what the edge
acknowledges is the PUBACK the edge sends to the broker. The proxy sits between the edge and
Mosquitto and records those PUBACKs (and the PUBLISH packets the broker delivers, with their
dup flag), so tests can see exactly when the edge acknowledged a message.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import nats
from nats.js.api import StreamConfig

from contract.codec import decode_batch
from contract.model import Reading
from contract.names import STREAM_NAME, STREAM_SUBJECTS
from contract.natsconn import NatsIdentity
from simulator.faultproxy import Conn, FaultProxy
from simulator.lab import ManagedProcess
from tests.polling import until as poll

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- polling


# --------------------------------------------------------------------------- MQTT wire


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, b = divmod(n, 128)
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str16(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(raw)) + raw


def _split_packets(buf: bytearray) -> list[bytes]:
    """Take every complete MQTT packet off the front of ``buf``."""
    packets: list[bytes] = []
    while len(buf) >= 2:
        length, mult, i = 0, 1, 1
        while True:
            if i >= len(buf):
                return packets
            b = buf[i]
            length += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
        if len(buf) < i + length:
            return packets
        packets.append(bytes(buf[: i + length]))
        del buf[: i + length]
    return packets


def _body(packet: bytes) -> bytes:
    i = 1
    while packet[i] & 0x80:
        i += 1
    return packet[i + 1 :]


class RawPublisher:
    """A minimal MQTT 5 publisher over a socket: QoS 0/1, chosen packet ids, broker PUBACKs."""

    def __init__(self, port: int, client_id: str) -> None:
        self.port = port
        self.client_id = client_id
        self.acks: dict[int, int] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._next_mid = 1

    async def __aenter__(self) -> Self:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        var = _str16("MQTT") + bytes([5, 0x02]) + struct.pack(">H", 60) + b"\x00"
        body = var + _str16(self.client_id)
        self._writer.write(b"\x10" + _varint(len(body)) + body)
        connack = await self._read_packet()
        assert connack[0] == 0x20, f"CONNACK {connack!r}"
        assert _body(connack)[1] == 0, f"CONNACK {connack!r}"
        self._task = asyncio.create_task(self._read_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            self._writer.write(b"\xe0\x00")
            self._writer.close()

    async def _read_packet(self) -> bytes:
        assert self._reader is not None
        head = await self._reader.readexactly(1)
        raw_len = b""
        while True:
            b = await self._reader.readexactly(1)
            raw_len += b
            if not b[0] & 0x80:
                break
        length, mult = 0, 1
        for b in raw_len:
            length += (b & 0x7F) * mult
            mult *= 128
        return head + raw_len + await self._reader.readexactly(length)

    async def _read_loop(self) -> None:
        while True:
            packet = await self._read_packet()
            if packet[0] & 0xF0 == 0x40:
                body = _body(packet)
                self.acks[struct.unpack(">H", body[:2])[0]] = body[2] if len(body) > 2 else 0

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> int:
        """Send one PUBLISH; returns its packet id (0 for QoS 0)."""
        assert self._writer is not None
        raw = payload.encode() if isinstance(payload, str) else payload
        mid = 0
        var = _str16(topic)
        if qos:
            mid = self._next_mid
            self._next_mid = self._next_mid % 65535 + 1
            var += struct.pack(">H", mid)
        var += b"\x00"  # no properties
        body = var + raw
        self._writer.write(bytes([0x30 | (qos << 1)]) + _varint(len(body)) + body)
        return mid

    async def wait_acked(self, mids: list[int], timeout: float = 20.0) -> None:
        """Wait until the broker acknowledged every one of ``mids``."""
        await poll(
            lambda: all(m in self.acks for m in mids), f"broker PUBACKs of {len(mids)}", timeout
        )


@dataclass
class SeenPublish:
    topic: str
    mid: int
    dup: bool
    payload: bytes


class MqttProxy:
    """A TCP proxy between the edge and the broker that parses MQTT in both directions.

    ``pubacks`` lists ``(mid, reason)`` of every PUBACK the edge sent; ``publishes`` every
    PUBLISH the broker delivered to the edge. With ``hold_pubacks`` set, the edge's PUBACKs
    are recorded but not passed on (the broker never learns of them). :meth:`cut` resets
    every connection (the broker sees the edge vanish). The TCP part is the fault suite's
    :class:`simulator.faultproxy.FaultProxy`; this adds the MQTT parsing as its chunk hooks.
    """

    def __init__(self, upstream_port: int, *, hold_pubacks: bool = False) -> None:
        self.hold_pubacks = hold_pubacks
        self.pubacks: list[tuple[int, int]] = []
        self.publishes: list[SeenPublish] = []
        self._bufs: dict[tuple[int, str], bytearray] = {}
        self._proxy = FaultProxy(upstream_port, up=self._up, down=self._down)

    @property
    def port(self) -> int:
        return self._proxy.port

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return self._proxy.stats.accepted

    async def __aenter__(self) -> Self:
        await self._proxy.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._proxy.stop()

    def cut(self) -> None:
        self._proxy.reset_now()

    def _packets(self, conn: Conn, direction: str, data: bytes) -> list[bytes]:
        buf = self._bufs.setdefault((conn.number, direction), bytearray())
        buf += data
        return _split_packets(buf)

    def _up(self, conn: Conn, data: bytes) -> bytes:
        return b"".join(p for p in self._packets(conn, "up", data) if self._from_edge(p))

    def _down(self, conn: Conn, data: bytes) -> bytes:
        return b"".join(p for p in self._packets(conn, "down", data) if self._from_broker(p))

    def _from_edge(self, packet: bytes) -> bool:
        if packet[0] & 0xF0 == 0x40:  # PUBACK
            body = _body(packet)
            self.pubacks.append((struct.unpack(">H", body[:2])[0], body[2] if len(body) > 2 else 0))
            return not self.hold_pubacks
        return True

    def _from_broker(self, packet: bytes) -> bool:
        if packet[0] & 0xF0 == 0x30:  # PUBLISH
            qos = (packet[0] >> 1) & 3
            body = _body(packet)
            (tlen,) = struct.unpack(">H", body[:2])
            topic = body[2 : 2 + tlen].decode()
            rest = body[2 + tlen :]
            mid = 0
            if qos:
                (mid,) = struct.unpack(">H", rest[:2])
                rest = rest[2:]
            plen, i, mult = 0, 0, 1  # MQTT 5 properties
            while True:
                b = rest[i]
                plen += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if not b & 0x80:
                    break
            self.publishes.append(SeenPublish(topic, mid, bool(packet[0] & 0x08), rest[i + plen :]))
        return True


# --------------------------------------------------------------------------- edge config


def write_config(
    folder: Path,
    *,
    mqtt_url: str | None = None,
    nats_url: str = "nats://127.0.0.1:1",
    edge_id: str = "edge-t",
    tenant: str = "acme",
    flush_interval_ms: int = 20,
    max_batch_readings: int = 10_000,
    max_pending_readings: int = 100_000,
    admin_listen: str = "127.0.0.1:0",
    client_id: str | None = None,
    extra: str = "",
    name: str = "edge.toml",
) -> Path:
    """An edge config file in ``folder`` (data_dir ``state`` next to it)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (
        "[edge]\n"
        f'id = "{edge_id}"\ntenant = "{tenant}"\ndata_dir = "state"\n'
        "[buffer]\n"
        f"flush_interval_ms = {flush_interval_ms}\n"
        f"max_batch_readings = {max_batch_readings}\n"
        f"max_pending_readings = {max_pending_readings}\n"
        "[forwarder]\n"
        f'nats_url = "{nats_url}"\n'
        "backoff_initial_s = 0.05\nbackoff_max_s = 0.5\nack_timeout_s = 2.0\n"
        "[admin]\n"
        f'listen = "{admin_listen}"\n'
    )
    if mqtt_url is not None:
        text += (
            "[[mqtt]]\n"
            'name = "mqtt"\n'
            f'url = "{mqtt_url}"\n'
            + (f'client_id = "{client_id}"\n' if client_id else "")
            + "topics = [\n"
            '  { pattern = "sensors/{device}/{sensor}", format = "value" },\n'
            '  { pattern = "devices/{device}", format = "json" },\n'
            "]\n"
        )
    path = folder / name
    path.write_text(text + extra)
    return path


# --------------------------------------------------------------------------- processes


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


class EdgeProcess(ManagedProcess):
    """``python -m edge run --config FILE`` as a real process (admin port from admin.port)."""

    def __init__(self, config: Path, log_level: str = "DEBUG") -> None:
        super().__init__("edge", "edge", config, config.with_suffix(".log"), log_level)
        self.port_file = config.parent / "state" / "admin.port"

    def start(self) -> EdgeProcess:
        self.port_file.unlink(missing_ok=True)
        super().start()
        return self

    async def status(self) -> Any:
        port = int(self.port_file.read_text())
        return await asyncio.to_thread(http_json, f"http://127.0.0.1:{port}/api/v1/status")

    async def wait_ready(self, timeout: float = 30.0) -> Any:
        """Wait until the admin API answers and every source is connected; returns the status."""
        latest: dict[str, Any] = {}

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"edge exited with {self.proc.returncode}:\n{self.tail()}")
            if not self.port_file.exists():
                return False
            try:
                latest.update(await self.status())
            except (OSError, ValueError):
                return False
            return all(s["connected"] for s in latest["sources"].values())

        await poll(ready, "the edge process to be ready", timeout)
        return latest

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM; the exit status of the orderly stop."""
        code = self.stop(timeout)
        assert code is not None
        return code


# --------------------------------------------------------------------------- buffer file


def stored(path: Path) -> list[Reading]:
    """Every reading in the buffer file at ``path`` (through a connection of our own)."""
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        bodies = conn.execute("SELECT body FROM batches ORDER BY seq").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()
    return [r for (body,) in bodies for r in decode_batch(body).readings()]


# --------------------------------------------------------------------------- JetStream


async def create_stream(url: str, identity: NatsIdentity | None = None) -> None:
    nc = await nats.connect(url, **(identity.options() if identity else {}))
    try:
        await nc.jetstream().add_stream(
            StreamConfig(name=STREAM_NAME, subjects=[STREAM_SUBJECTS], duplicate_window=120.0)
        )
    finally:
        await nc.close()


async def stream_messages(url: str, identity: NatsIdentity | None = None) -> list[Any]:
    """Every message of the telemetry stream, in stream order (``RawStreamMsg``); ``identity``:
    TLS (and a login) for a secured server such as a :class:`~simulator.lab.Lab`'s."""
    nc = await nats.connect(url, **(identity.options() if identity else {}))
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM_NAME)
        if not info.state.messages:
            return []
        return [
            await js.get_msg(STREAM_NAME, seq)
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]
    finally:
        await nc.close()
