"""A small asyncio MQTT 3.1.1 publisher over a raw socket, that knows what the broker acknowledged.

Why not gmqtt here: a simulated fleet must know exactly which publishes the broker acknowledged
(one PUBACK per packet id, reported with the caller's token) and must never be what limits a
benchmark. This publisher speaks only what a device needs: CONNECT/CONNACK (clean session),
PUBLISH at QoS 0 and 1, PUBACK, PINGREQ/PINGRESP and DISCONNECT. Publishes are encoded straight
into one buffer with pre-encoded topics and written to the socket once per event-loop turn (or
every 64 KiB); ``publish`` waits only for room in the in-flight window, never for its PUBACK.

TLS: an ``mqtts://`` URL (port 8883 by default) and :func:`tls_context` (the system's trusted
CAs, or a CA file such as a fleet file's ``ca_file``) passed as ``MqttPublisher(tls=...)``.

There is no reconnection and no retransmission: a broken connection fails every later (and
every waiting) ``publish`` and ``drain`` with ``MqttError``, and whatever was not acknowledged
by then was, as far as the caller may know, not delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Self

from contract.errors import CairnError, ConfigError

__all__ = ["MqttError", "MqttPublisher", "parse_mqtt_url", "tls_context"]

logger = logging.getLogger(__name__)

_FLUSH_BYTES: Final = 64 * 1024
_MAX_REMAINING: Final = 268_435_455
_MAX_TOPIC_CACHE: Final = 1 << 17
_PINGREQ: Final = b"\xc0\x00"
_DISCONNECT: Final = b"\xe0\x00"
_CONNACK_CODES: Final = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
_UNKNOWN: Final = object()


class MqttError(CairnError):
    """The MQTT connection failed, was refused, broke, or timed out."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"mqtt: {problem}")


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """``mqtt://host[:port]`` (or ``host[:port]``) -> ``(host, port)``; port 1883 by default
    (``mqtts://``: 8883, see :func:`tls_context`)."""
    tls = url.startswith("mqtts://")
    rest = url.removeprefix("mqtts://" if tls else "mqtt://").rstrip("/")
    if "://" in rest:
        raise MqttError(f"unsupported URL {url!r} (only mqtt://host:port or mqtts://)")
    if rest.startswith("["):  # [::1]:1883
        host, _, tail = rest[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = rest.partition(":")
    try:
        port = int(port_text) if port_text else (8883 if tls else 1883)
    except ValueError:
        raise MqttError(f"bad port in {url!r}") from None
    if not host or not 0 < port < 65536:
        raise MqttError(f"bad MQTT URL {url!r}")
    return host, port


def tls_context(url: str, ca_file: str | None = None) -> ssl.SSLContext | None:
    """The TLS context of a broker URL: ``None`` for ``mqtt://``; for ``mqtts://`` one that
    checks the broker's certificate and host name against ``ca_file`` (PEM), or the system's
    CAs. A ``ca_file`` with a plain ``mqtt://`` URL, or one that cannot be read, is a
    ``ConfigError`` naming ``ca_file``."""
    if not url.startswith("mqtts://"):
        if ca_file is not None:
            raise ConfigError("ca_file", f"needs an mqtts:// broker URL, not {url!r}")
        return None
    if ca_file is not None and not Path(ca_file).is_file():
        raise ConfigError("ca_file", f"no such file: {ca_file}")
    try:
        return ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError as exc:
        raise ConfigError("ca_file", f"not a PEM CA certificate: {ca_file} ({exc})") from None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 0xFFFF:
        raise MqttError(f"string of {len(raw)} bytes is too long for MQTT")
    return len(raw).to_bytes(2, "big") + raw


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: MqttPublisher) -> None:
        self.owner = owner

    def data_received(self, data: bytes) -> None:
        self.owner._on_data(data)  # noqa: SLF001

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._on_lost(exc)  # noqa: SLF001

    def pause_writing(self) -> None:
        self.owner._paused = True  # noqa: SLF001

    def resume_writing(self) -> None:
        self.owner._paused = False  # noqa: SLF001
        self.owner._wake()  # noqa: SLF001


class MqttPublisher:
    """One MQTT 3.1.1 client connection that publishes and counts acknowledgements.

    ``sent`` counts publishes handed to the connection, ``acked`` the PUBACKs received,
    ``in_flight`` the QoS 1 publishes not acknowledged yet (at most ``max_in_flight``). Use as
    ``async with MqttPublisher(...) as pub:`` or call ``connect`` and ``close``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        keepalive: int = 60,
        max_in_flight: int = 2000,
        connect_timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: connect over TLS with this context (:func:`tls_context`)."""
        if not 1 <= max_in_flight <= 65535:
            raise ValueError("max_in_flight must be in 1..65535 (packet ids are 16 bits)")
        if not 0 <= keepalive <= 65535:
            raise ValueError("keepalive must be in 0..65535 seconds")
        self.host = host
        self.port = port
        self.client_id = client_id
        self.keepalive = keepalive
        self.max_in_flight = max_in_flight
        self.connect_timeout = connect_timeout
        self.tls = tls
        self.sent = 0
        self.acked = 0
        self._pending: dict[int, object] = {}
        self._next_id = 1
        self._callbacks: list[Callable[[object], None]] = []
        self._topics: dict[str, bytes] = {}
        self._buf = bytearray()
        self._rbuf = bytearray()
        self._flush_scheduled = False
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._error: MqttError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._connack: asyncio.Future[int] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._ping_sent_at: float | None = None
        self._closing = False

    # --- public API ------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """QoS 1 publishes sent and not acknowledged yet."""
        return len(self._pending)

    @property
    def connected(self) -> bool:
        return self._transport is not None and self._error is None

    def on_ack(self, cb: Callable[[object], None]) -> None:
        """Call ``cb(token)`` once for each QoS 1 publish when its PUBACK arrives."""
        self._callbacks.append(cb)

    async def connect(self) -> None:
        """Open the connection and wait for the broker's CONNACK (``MqttError`` if refused)."""
        if self._transport is not None or self._error is not None:
            raise MqttError("a publisher connects once; make a new one to connect again")
        packet = self._connect_packet()
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._lost = loop.create_future()
        where = f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, _ = await loop.create_connection(
                    lambda: _Protocol(self),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None,
                )
                self._transport = transport
                transport.write(packet)
                code = await self._connack
        except TimeoutError:
            raise self._give_up(f"no CONNACK from {where} within {self.connect_timeout}s") from None
        except OSError as exc:
            raise self._give_up(f"cannot connect to {where}: {exc.strerror or exc}") from exc
        if self._error is not None:
            self._abort()
            raise self._error
        if code != 0:
            reason = _CONNACK_CODES.get(code, f"return code {code}")
            raise self._give_up(f"{where} refused the connection: {reason}")
        if self.keepalive:
            self._pinger = asyncio.create_task(self._ping_loop(), name="mqtt-pinger")
        logger.debug("connected to %s as %r", where, self.client_id)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, token: object = None) -> None:
        """Queue one PUBLISH; waits only for room in the in-flight window (QoS 1).

        ``token`` is what ``on_ack`` callbacks receive when the broker acknowledges it.
        """
        if self._error is not None:
            raise self._error
        if self._transport is None:
            raise MqttError("not connected")
        while self._paused or (qos == 1 and len(self._pending) >= self.max_in_flight):
            await self._wait()
        tp = self._topics.get(topic)
        if tp is None:
            tp = self._topic(topic)
        buf = self._buf
        if qos == 1:
            pid = self._next_id
            pending = self._pending
            while pid in pending:
                pid = pid % 65535 + 1
            self._next_id = pid % 65535 + 1
            pending[pid] = token
            rl = len(tp) + 2 + len(payload)
            buf.append(0x32)
            if rl < 128:
                buf.append(rl)
            else:
                buf += _varint(self._check(rl))
            buf += tp
            buf.append(pid >> 8)
            buf.append(pid & 0xFF)
        elif qos == 0:
            rl = len(tp) + len(payload)
            buf.append(0x30)
            buf += _varint(self._check(rl))
            buf += tp
        else:
            raise ValueError(f"qos must be 0 or 1, not {qos}")
        buf += payload
        self.sent += 1
        if len(buf) >= _FLUSH_BYTES:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def drain(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until every QoS 1 publish so far is acknowledged (``MqttError`` on failure)."""
        self._flush()
        try:
            async with asyncio.timeout(timeout):
                while self._error is None and (self._pending or self._paused):
                    await self._wait()
        except TimeoutError:
            raise MqttError(
                f"{len(self._pending)} publishes still unacknowledged after {timeout}s"
            ) from None
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        """Say DISCONNECT and close; publishes not acknowledged by then stay unacknowledged."""
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
            self._pinger = None
        transport, lost = self._transport, self._lost
        if transport is None or self._closing:
            return
        self._closing = True
        if self._error is None:
            self._flush()
            transport.write(_DISCONNECT)
            transport.close()
            if lost is not None:
                try:
                    async with asyncio.timeout(5.0):
                        await lost
                except TimeoutError:
                    transport.abort()
        else:
            transport.abort()
        if self._error is None:
            self._error = MqttError("publisher is closed")
        logger.debug(
            "closed mqtt://%s:%d (%d sent, %d acked)", self.host, self.port, self.sent, self.acked
        )

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- internals -------------------------------------------------------------------------

    def _connect_packet(self) -> bytes:
        body = (
            _utf8("MQTT")
            + bytes((4, 0x02))  # protocol level 4 (3.1.1), flags: clean session
            + self.keepalive.to_bytes(2, "big")
            + _utf8(self.client_id)
        )
        return b"\x10" + _varint(len(body)) + body

    def _topic(self, topic: str) -> bytes:
        if not topic or "+" in topic or "#" in topic:
            raise MqttError(f"cannot publish to topic {topic!r}")
        if len(self._topics) >= _MAX_TOPIC_CACHE:
            self._topics.clear()
        tp = self._topics[topic] = _utf8(topic)
        return tp

    @staticmethod
    def _check(rl: int) -> int:
        if rl > _MAX_REMAINING:
            raise MqttError(f"packet of {rl} bytes is too large for MQTT")
        return rl

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._buf and self._transport is not None and self._error is None:
            self._transport.write(self._buf)
            self._buf = bytearray()

    async def _wait(self) -> None:
        """Sleep until an ack, a resume or a failure (then raise the failure)."""
        if self._error is not None:
            raise self._error
        self._flush()
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: MqttError) -> None:
        if self._error is None:
            self._error = error
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(-1)
        self._wake()

    def _give_up(self, problem: str) -> MqttError:
        """Fail the connection for good and return the error to raise."""
        self._fail(MqttError(problem))
        self._abort()
        assert self._error is not None
        return self._error

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _on_lost(self, exc: Exception | None) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self._closing:
            return
        why = f"{exc}" if exc is not None else "closed by the broker"
        self._fail(
            MqttError(
                f"connection to mqtt://{self.host}:{self.port} lost ({why}) "
                f"with {len(self._pending)} publishes unacknowledged"
            )
        )

    def _protocol_error(self, problem: str) -> None:
        logger.error("mqtt://%s:%d: %s", self.host, self.port, problem)
        self._fail(MqttError(f"protocol error from mqtt://{self.host}:{self.port}: {problem}"))
        self._abort()

    def _on_data(self, data: bytes) -> None:
        buf = self._rbuf
        buf += data
        n = len(buf)
        pos = 0
        pending = self._pending
        callbacks = self._callbacks
        acked = 0
        while n - pos >= 2:
            b0 = buf[pos]
            if b0 == 0x40 and buf[pos + 1] == 2:  # PUBACK, the hot path
                if n - pos < 4:
                    break
                pid = (buf[pos + 2] << 8) | buf[pos + 3]
                pos += 4
                token = pending.pop(pid, _UNKNOWN)
                if token is _UNKNOWN:
                    logger.warning("PUBACK for unknown packet id %d", pid)
                    continue
                acked += 1
                for cb in callbacks:
                    try:
                        cb(token)
                    except Exception:
                        logger.exception("on_ack callback failed")
                continue
            # any other packet: decode the remaining length
            rl, mult, i = 0, 1, pos + 1
            while i < n:
                byte = buf[i]
                rl += (byte & 0x7F) * mult
                i += 1
                if byte < 0x80:
                    break
                mult <<= 7
                if mult > 1 << 21:
                    self._protocol_error("malformed remaining length")
                    return
            else:
                break  # length not complete yet
            if i + rl > n:
                break
            self._on_packet(b0 >> 4, bytes(buf[i : i + rl]))
            pos = i + rl
        del buf[:pos]
        if acked:
            self.acked += acked
            if len(pending) < self.max_in_flight:
                self._wake()

    def _on_packet(self, kind: int, body: bytes) -> None:
        if kind == 2 and len(body) == 2:  # CONNACK
            if self._connack is not None and not self._connack.done():
                self._connack.set_result(body[1])
        elif kind == 13:  # PINGRESP
            self._ping_sent_at = None
        elif kind == 3:  # PUBLISH: we never subscribe; ignore
            logger.debug("ignoring an unexpected PUBLISH")
        else:
            self._protocol_error(f"unexpected packet type {kind}")

    async def _ping_loop(self) -> None:
        interval = self.keepalive / 2
        while True:
            await asyncio.sleep(interval)
            if self._error is not None or self._transport is None:
                return
            now = time.monotonic()
            if self._ping_sent_at is not None:
                if now - self._ping_sent_at > self.keepalive:
                    self._fail(
                        MqttError(
                            f"mqtt://{self.host}:{self.port} did not answer PINGREQ within "
                            f"{self.keepalive}s"
                        )
                    )
                    self._abort()
                    return
                continue
            self._ping_sent_at = now
            self._flush()
            self._transport.write(_PINGREQ)
