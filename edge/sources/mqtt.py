"""The MQTT source: a persistent MQTT 5 session with the local broker, ack after commit.

For each message the broker delivers, an async ``on_message`` parses the payload (see
:mod:`edge.sources.payloads`) and awaits :meth:`~edge.batcher.Sink.submit`, which returns once
the readings are committed in the buffer; only then does gmqtt send the PUBACK (the client runs
with ``optimistic_acknowledgement=False``; FACTS.md). gmqtt runs every async ``on_message`` as a
task of its own, so thousands of messages wait on one commit: the group commit. The return value
is the PUBACK reason code: 0 (success), 0x99 "payload format invalid" for a message refused
(counted and logged; the device must not loop on garbage), 0x80 for an unexpected error. If the
edge dies before a PUBACK, the broker keeps the message in the session and sends it again.

QoS: the subscription's ``qos`` caps the QoS of what the broker delivers. QoS 2 is
acknowledged the same way: the PUBREC (with the same reason codes) goes out when
``on_message`` returns, after the commit; a PUBREC of 0x99 ends the exchange, a PUBREC of 0
is followed by the broker's PUBREL and our PUBCOMP (gmqtt). Before the PUBREC the broker
redelivers with ``dup=1``; after it, only the PUBREL. QoS 0 carries no guarantee: nothing is
acknowledged, and a message in flight when the edge or the broker dies is lost.

Redelivery dedupe: the edge may die between a commit and its PUBACKs; the broker then
redelivers those messages with ``dup=1``. Every QoS>0 message gets an 8-byte digest (BLAKE2b
of packet id, topic and payload); the batcher stores it with the batch and remembers the
newest ones, and a ``dup=1`` message whose digest it remembers is acknowledged without being
committed again (counter ``redelivered-duplicate``). The packet id is part of the digest so two
equal payloads on one topic in flight at once stay two readings; the broker reuses a packet id
only after ~65535 later messages, more than the remembered window of ``2 * receive_maximum``.

Connection: the source owns its reconnect loop (jittered, capped backoff, for ever) instead of
gmqtt's fixed-delay one, and subscribes again after every connect (with retain handling 2:
retained messages are not re-sent, the edge ingests live traffic). The session is persistent
(``clean_start=False``, ``session_expiry_s``), so QoS>0 messages published while the edge is
away are queued by the broker and arrive after the reconnect. ``connected`` in the status API
becomes true once the broker has acknowledged the subscriptions. ``mqtts://`` URLs connect
with TLS (:func:`tls_context`: the broker's certificate checked against ``ca_file`` and the
URL's host name, an optional client certificate); ``username`` with ``password`` or
``password_file`` (re-read at every connect) authenticate.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import ssl
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final, Self

import gmqtt
from gmqtt.mqtt.constants import MQTTv50
from gmqtt.mqtt.handler import MqttPackageHandler

from contract.backoff import Backoff
from contract.errors import PayloadError
from contract.model import Reading
from edge.batcher import BatcherClosedError, Sink
from edge.config import MqttSettings, PayloadFormat, SenmlDevice
from edge.sources.payloads import parse_json_payload, parse_value_payload
from edge.sources.senml import parse_senml_payload
from edge.sources.topics import TopicMatch, TopicPattern
from edge.sources.waiting import wait_any, wait_set
from edge.stats import EdgeStats

__all__ = [
    "PUBACK_PAYLOAD_INVALID",
    "PUBACK_SUCCESS",
    "PUBACK_UNSPECIFIED",
    "MqttSource",
    "message_digest",
    "tls_context",
]

_log = logging.getLogger(__name__)
_UNSEEN: Final = object()
_ROUTES_MAX: Final = 100_000
"""Topics whose route is remembered; past that the memory starts again."""

PUBACK_SUCCESS: Final = 0x00
PUBACK_UNSPECIFIED: Final = 0x80
PUBACK_PAYLOAD_INVALID: Final = 0x99

_RETAIN_HANDLING_NEVER: Final = 2
_CONNECT_TIMEOUT_S: Final = 10.0
_SUBACK_TIMEOUT_S: Final = 10.0
_STOP_TIMEOUT_S: Final = 10.0
_BACKOFF_INITIAL_S: Final = 0.2
_BACKOFF_MAX_S: Final = 30.0


def message_digest(mid: int, topic: str, payload: bytes) -> bytes:
    """The 8-byte dedupe digest of one QoS>0 message (packet id, topic, payload)."""
    raw_topic = topic.encode("utf-8", "surrogateescape")
    h = hashlib.blake2b(digest_size=8)
    h.update(struct.pack(">HI", mid & 0xFFFF, len(raw_topic)))
    h.update(raw_topic)
    h.update(payload)
    return h.digest()


_FastPath = Callable[[int, str | bytes, bytes, dict[str, Any], Callable[[int], None]], bool]
"""(mid, topic, payload, properties, ack) -> handled: the source's synchronous QoS 1 path."""


class _MidHandler(MqttPackageHandler):  # type: ignore[misc]
    """gmqtt's packet handler, also telling ``on_message`` the packet id (``properties['mid']``).

    gmqtt does not pass the packet id of an inbound PUBLISH to ``on_message``; the dedupe digest
    needs it. (Checked by ``tests/test_edge_mqtt.py``: a gmqtt upgrade that renames these
    methods makes the redelivery test fail.)
    """

    cairn_fast: _FastPath | None = None

    def _handle_qos_1_publish_packet(
        self, mid: int, packet: bytes, print_topic: str, properties: dict[str, Any]
    ) -> None:
        properties["mid"] = mid
        fast = self.cairn_fast
        if fast is not None and not self._optimistic_acknowledgement:
            ack = functools.partial(self._send_puback, mid)
            if fast(mid, print_topic, packet, properties, ack):
                return
        super()._handle_qos_1_publish_packet(mid, packet, print_topic, properties)

    def _handle_qos_2_publish_packet(
        self, mid: int, packet: bytes, print_topic: str, properties: dict[str, Any]
    ) -> None:
        properties["mid"] = mid
        super()._handle_qos_2_publish_packet(mid, packet, print_topic, properties)


class _Client(gmqtt.Client):  # type: ignore[misc]
    """A gmqtt client that reports a lost connection instead of reconnecting by itself."""

    def __init__(
        self, client_id: str, lost: asyncio.Event, fast: _FastPath | None = None, **kwargs: Any
    ) -> None:
        super().__init__(client_id, **kwargs)
        self._lost_event = lost
        self._package_handler.__class__ = _MidHandler
        self._package_handler.cairn_fast = fast

    async def reconnect(self, delay: bool = False) -> None:  # noqa: ARG002 - gmqtt's signature
        """Called by gmqtt when the connection drops: the source's loop reconnects."""
        self._lost_event.set()


class MqttSource:
    """One ``[[mqtt]]`` source; ``async with MqttSource(...) as src: await src.run()``."""

    def __init__(self, settings: MqttSettings, sink: Sink, stats: EdgeStats) -> None:
        self.settings = settings
        self.name = settings.name
        self._sink = sink
        self._stats = stats
        self._source_stats = stats.source(settings.name)
        self._routes: dict[str, tuple[TopicMatch, PayloadFormat, bool] | None] = {}
        self._topics: list[tuple[TopicPattern, PayloadFormat, bool]] = [
            (t.topic, t.format, t.senml_device is SenmlDevice.NAME) for t in settings.topics
        ]
        self._lost = asyncio.Event()
        self._stop = asyncio.Event()
        self._stopping = False
        self._handlers: set[asyncio.Task[Any]] = set()
        self._suback: asyncio.Future[tuple[int, ...]] | None = None
        self._suback_mid: int | None = None
        self._client: _Client | None = None

    @property
    def connected(self) -> bool:
        return self._source_stats.connected

    async def __aenter__(self) -> Self:
        s = self.settings
        client = _Client(
            s.client_id,
            self._lost,
            self._fast_publish,
            clean_session=False,
            optimistic_acknowledgement=False,
            session_expiry_interval=s.session_expiry_s,
            receive_maximum=s.receive_maximum,
        )
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        self._client = client
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        self._stop.set()
        await self._disconnect()

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Stay connected and subscribed until :meth:`stop` (or cancellation)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._connection_loop(), name=f"mqtt-{self.name}-connection")

    async def stop(self) -> None:
        """Orderly stop: commit and acknowledge what arrived, then disconnect (session kept)."""
        if self._stopping:
            return
        self._stopping = True
        try:
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                await self._sink.drain()
                # Also the tasks that just finished: their done-callbacks (gmqtt's PUBACKs) may
                # still be scheduled; asyncio.wait's own callbacks run after them.
                handlers = set(self._handlers)
                if handlers:
                    await asyncio.wait(handlers)
        except TimeoutError:
            _log.warning(
                "source %s: messages still uncommitted at stop; the broker will send them again",
                self.name,
            )
        await self._disconnect()
        self._stop.set()

    async def _connection_loop(self) -> None:
        s = self.settings
        backoff = Backoff(_BACKOFF_INITIAL_S, _BACKOFF_MAX_S)
        failures = 0
        while not self._stopping:
            self._lost.clear()
            try:
                await self._connect()
            except Exception as exc:
                failures += 1
                delay = backoff.next()
                level = logging.WARNING if failures == 1 else logging.DEBUG
                _log.log(
                    level,
                    "source %s: cannot connect to %s (%s); retrying in %.2f s (and on)",
                    self.name,
                    s.url,
                    exc or type(exc).__name__,
                    delay,
                )
                await self._disconnect()
                await self._wait_stop(delay)
                continue
            failures = 0
            backoff.reset()
            self._source_stats.connected = True
            _log.info(
                "source %s: connected to %s as %s, subscribed to %s",
                self.name,
                s.url,
                s.client_id,
                ", ".join(p.filter for p, _, _ in self._topics),
            )
            await self._wait_lost()
            self._source_stats.connected = False
            if self._stopping:
                break
            delay = backoff.next()
            _log.warning(
                "source %s: lost the connection to %s; reconnecting in %.2f s",
                self.name,
                s.url,
                delay,
            )
            await self._wait_stop(delay)
        self._source_stats.connected = False

    async def _connect(self) -> None:
        client = self._client
        if client is None:
            raise RuntimeError("MqttSource used outside 'async with'")
        s = self.settings
        if s.username:
            client.set_auth_credentials(s.username, self._password())
        tls = tls_context(s) if s.tls else False
        async with asyncio.timeout(_CONNECT_TIMEOUT_S):
            await client.connect(s.host, s.port, ssl=tls, keepalive=s.keepalive_s, version=MQTTv50)
        loop = asyncio.get_running_loop()
        suback: asyncio.Future[tuple[int, ...]] = loop.create_future()
        self._suback = suback
        subscriptions = [
            gmqtt.Subscription(
                pattern.filter, qos=s.qos, retain_handling_options=_RETAIN_HANDLING_NEVER
            )
            for pattern, _, _ in self._topics
        ]
        client.subscriptions = []  # gmqtt appends on every subscribe(); we resubscribe each time
        self._suback_mid = client.subscribe(subscriptions)
        lost: asyncio.Future[Any] = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait(
                [suback, lost], timeout=_SUBACK_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
        if not suback.done():
            raise ConnectionError("no SUBACK from the broker")
        granted = suback.result()
        for (pattern, _, _), code in zip(self._topics, granted, strict=False):
            if code >= 0x80:
                _log.error(
                    "source %s: the broker refused the subscription %s (reason 0x%02x)",
                    self.name,
                    pattern.filter,
                    code,
                )

    def _password(self) -> str | None:
        s = self.settings
        if s.password_file:
            with open(s.password_file, encoding="utf-8") as f:  # noqa: PTH123 - a str path
                return f.readline().rstrip("\r\n")
        return s.password or None

    async def _wait_lost(self) -> None:
        await wait_any(self._lost, self._stop)

    async def _wait_stop(self, delay: float) -> None:
        await wait_set(self._stop, delay)

    async def _disconnect(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            async with asyncio.timeout(5):
                await client.disconnect()
        except Exception as exc:
            _log.debug("source %s: disconnect: %s", self.name, exc)
        self._source_stats.connected = False

    # ---------------------------------------------------------------- callbacks

    def _on_connect(self, _client: Any, flags: int, rc: int, _properties: Any) -> None:
        _log.debug("source %s: CONNACK rc=%s session_present=%s", self.name, rc, flags)

    def _on_disconnect(self, _client: Any, _packet: Any, exc: Any = None) -> None:
        self._source_stats.connected = False
        _log.debug("source %s: disconnected (%s)", self.name, exc)

    def _on_subscribe(self, _client: Any, mid: int, granted: tuple[int, ...], _props: Any) -> None:
        if self._suback is not None and not self._suback.done() and mid == self._suback_mid:
            self._suback.set_result(tuple(granted))

    async def _on_message(
        self, _client: Any, topic: str | bytes, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> int:
        """gmqtt's callback; its return value is the PUBACK reason code. Never raises, except
        on shutdown (then no PUBACK goes out and the broker keeps the message)."""
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            return await self._handle(topic, payload, qos, properties)
        except BatcherClosedError:
            raise
        except Exception as exc:
            self._stats.rejected(self.name, "internal-error", repr(exc), payload, str(topic))
            _log.exception("source %s: unexpected error on a message of %r", self.name, topic)
            return PUBACK_UNSPECIFIED

    def _fast_publish(
        self,
        mid: int,
        topic: str | bytes,
        payload: bytes,
        properties: dict[str, Any],
        ack: Callable[[int], None],
    ) -> bool:
        """A QoS 1 message without a task per message: parse now, queue the readings with a
        callback that sends the PUBACK after their commit. Returns ``False`` to leave the
        message to the awaiting path (:meth:`_on_message`): redeliveries (which may have to
        wait for a commit in progress), odd topics, a full queue, a closing batcher."""
        if properties.get("dup") or not isinstance(topic, str):
            return False
        try:
            readings = self._parse(topic, payload)
        except PayloadError:
            return False  # the awaiting path counts, logs and answers it
        except Exception:
            return False
        digest = message_digest(mid, topic, payload)

        def done(error: PayloadError | None) -> None:
            if error is None:
                ack(PUBACK_SUCCESS)
            else:
                self._stats.rejected(self.name, error.reason, error.detail, payload, topic)
                ack(PUBACK_PAYLOAD_INVALID)

        if not self._sink.submit_nowait(readings, self.name, digest, done):
            return False
        self._stats.received(self.name)
        return True

    async def _handle(
        self, topic: str | bytes, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> int:
        self._stats.received(self.name)
        if not isinstance(topic, str):
            self._stats.rejected(self.name, "bad-utf8", "topic is not UTF-8", payload, repr(topic))
            return PUBACK_PAYLOAD_INVALID
        digest: bytes | None = None
        if qos > 0:
            digest = message_digest(int(properties.get("mid", 0)), topic, payload)
            if properties.get("dup") and await self._sink.redelivered(digest):
                self._stats.duplicate(self.name)
                return PUBACK_SUCCESS
        try:
            readings = self._parse(topic, payload)
            await self._sink.submit(readings, self.name, digest, hold=True)
        except PayloadError as exc:
            self._stats.rejected(self.name, exc.reason, exc.detail, payload, topic)
            return PUBACK_PAYLOAD_INVALID
        return PUBACK_SUCCESS

    def _route(self, topic: str) -> tuple[TopicMatch, PayloadFormat, bool] | None:
        """Which pattern ``topic`` fits; remembered, since a fleet repeats its topics."""
        route = self._routes.get(topic, _UNSEEN)
        if route is not _UNSEEN:
            return route  # type: ignore[return-value]
        found = None
        for pattern, fmt, device_from_name in self._topics:
            match = pattern.match(topic)
            if match is not None:
                found = (match, fmt, device_from_name)
                break
        if len(self._routes) >= _ROUTES_MAX:
            self._routes.clear()
        self._routes[topic] = found
        return found

    def _parse(self, topic: str, payload: bytes) -> Sequence[Reading]:
        route = self._route(topic)
        if route is None:
            raise PayloadError("bad-topic", f"topic {topic[:160]!r} fits no configured pattern")
        match, fmt, device_from_name = route
        if fmt is PayloadFormat.VALUE:
            assert match.sensor is not None  # the config requires {sensor} for 'value'
            return parse_value_payload(payload, match.device, match.sensor)
        if fmt is PayloadFormat.SENML:
            return parse_senml_payload(payload, None if device_from_name else match.device)
        return parse_json_payload(payload, match.device)


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """The TLS context of an ``mqtts://`` source: the broker's certificate checked against
    ``ca_file`` (or the system's CAs) and the URL's host name; ``cert_file``/``key_file`` as
    the client certificate when given."""
    ctx = ssl.create_default_context(cafile=settings.ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.cert_file:
        ctx.load_cert_chain(settings.cert_file, settings.key_file or None)
    return ctx
