"""The HTTP and WebSocket source: devices send readings with a device token, acked after commit.

Endpoints (``[[http]].listen``):

``POST /api/v1/readings``
    ``Authorization: Bearer <device token>`` (see :mod:`edge.sources.devtokens`). Body,
    ``Content-Type: application/json``: one object ``{"ts": T, "temp": 21.5, ...}`` (one
    reading per key but ``ts``, the same shape as MQTT's ``json`` format, see
    :mod:`edge.sources.payloads`) or an array of such objects. The device is the token's
    ``sub``, never the body's: an object may carry ``"device": "<id>"``, which must be the
    token's device (403 ``wrong-device`` otherwise) and is not a reading. With ``Content-Type:
    application/senml+json`` the body is a SenML pack (RFC 8428, :mod:`edge.sources.senml`):
    each resolved name (``bn`` + ``n``) is a sensor key of the token's device.
    Answers ``202 {"accepted": n}`` only once the readings are committed in the buffer.

``GET /api/v1/ws``
    A WebSocket for devices that keep a connection open; the token comes with the upgrade
    request (``Authorization: Bearer`` or ``?token=``). Each text (or binary) message is a
    JSON object with an ``id`` (a string of up to 128 characters or an integer) and either
    ``"readings": <object or array, as the POST body>`` or the reading keys themselves
    (``{"id": 7, "ts": T, "temp": 21.5}``). Each message is answered after its commit with
    ``{"id": 7, "status": "ok", "accepted": n}``, or ``{"id": 7, "status": "error", "error":
    reason, "detail": ..., "code": http-like status}``; answers may come out of order (ids tell
    them apart), a bad message never closes the socket. When the token expires the edge
    finishes the messages in flight and closes with code 4401 ``token expired``; when the
    device or token is revoked, 4403 ``revoked``; when the edge stops, 1001. A message larger
    than ``max_body_bytes`` closes the socket with 1009 (the WebSocket protocol's own rule).

Errors are JSON ``{"error": reason, "detail": text}``: 400 (``bad-json``, ``bad-shape``,
``bad-utf8``), 401 (``no-token``, ``bad-token``, ``token-expired``, ``token-not-yet-valid``),
403 (``wrong-device``, ``wrong-tenant``, ``revoked``), 413 (``too-large``,
``too-many-readings``: more than ``rate_burst`` in one request), 415 (``bad-content-type``),
422 (``bad-timestamp``, ``bad-name``, ``no-readings``, ``bad-value``), 429 (``rate-limited``,
with ``Retry-After``), 503 (``buffer-full``, ``buffer-disk-error``, ``shutting-down``, with
``Retry-After``). A request is refused whole: nothing of it is committed.

Rate limit: a token bucket per device (the token's ``sub``), ``rate_readings_per_s`` refilled
up to ``rate_burst``; a request takes one token per reading. A device with an empty bucket is
answered 429 before its body is read.

A request aiohttp itself cannot parse (bad request line, header over 8190 bytes, bad
``Content-Length``) is answered 400 by aiohttp (text) and counted as ``rejected["bad-http"]``.

Counters (``sources.<name>`` in the status API): ``messages`` counts requests, WebSocket
messages and refused WebSocket upgrades; each ends as committed readings (``accepted``), a
``rejected[reason]`` (every 4xx), or refused readings (``refused[reason]``, 503: counted by the
batcher); ``responses[status]`` counts every answer by status code; ``websockets_open``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Self

from aiohttp import WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError

from contract.errors import ConfigError, PayloadError
from contract.model import Reading
from edge.batcher import BatcherClosedError, Sink
from edge.buffer import BufferFullError
from edge.config import HttpSettings
from edge.sources.devtokens import (
    DeviceClaims,
    DeviceTokenError,
    DeviceTokenVerifier,
    RevocationList,
    load_key,
)
from edge.sources.payloads import load_json, parse_json_payload
from edge.sources.senml import parse_senml_payload
from edge.stats import EdgeStats, SourceStats

__all__ = [
    "JSON_TYPE",
    "READINGS_PATH",
    "RETRY_AFTER_UNAVAILABLE_S",
    "SENML_TYPE",
    "WS_CLOSE_GOING_AWAY",
    "WS_CLOSE_REVOKED",
    "WS_CLOSE_TOKEN_EXPIRED",
    "WS_PATH",
    "HttpSource",
    "HttpStats",
    "RateLimiter",
    "verifier_for",
]

_log = logging.getLogger(__name__)

READINGS_PATH: Final = "/api/v1/readings"
WS_PATH: Final = "/api/v1/ws"
JSON_TYPE: Final = "application/json"
SENML_TYPE: Final = "application/senml+json"
RETRY_AFTER_UNAVAILABLE_S: Final = 5
"""``Retry-After`` of a 503 (the buffer refuses commits, or the edge is stopping)."""
WS_CLOSE_TOKEN_EXPIRED: Final = 4401
WS_CLOSE_REVOKED: Final = 4403
WS_CLOSE_GOING_AWAY: Final = 1001
_WS_HEARTBEAT_S: Final = 30.0
_STOP_TIMEOUT_S: Final = 10.0
_MAX_BUCKETS: Final = 100_000
_MAX_ID_LEN: Final = 128
_DEVICE_KEY: Final = "device"

_PAYLOAD_STATUS: Final = {
    "bad-utf8": 400,
    "bad-json": 400,
    "bad-shape": 400,
    "too-large": 413,
    "bad-timestamp": 422,
    "bad-name": 422,
    "no-readings": 422,
    "bad-value": 422,
}


class _RefusalError(Exception):
    """An answer other than success: status, reason slug, detail (and whether to count it)."""

    def __init__(
        self,
        status: int,
        reason: str,
        detail: str,
        *,
        retry_after: int | None = None,
        counted: bool = True,
    ) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after
        self.counted = counted
        """Count as ``rejected`` (4xx); a 503's readings are counted as refused elsewhere."""


def _from_payload_error(exc: PayloadError) -> _RefusalError:
    return _RefusalError(_PAYLOAD_STATUS.get(exc.reason, 422), exc.reason, exc.detail)


def _from_token(exc: DeviceTokenError) -> _RefusalError:
    return _RefusalError(exc.status, exc.reason, exc.detail)


@dataclass
class HttpStats(SourceStats):
    """An HTTP source's counters: :class:`SourceStats` plus responses by status and sockets."""

    listen: str = ""
    """``host:port`` listened on (the port the system picked, for port 0)."""
    responses: Counter[int] = field(default_factory=Counter)
    websockets_open: int = 0
    websockets_opened: int = 0
    tokens_cached: Callable[[], int] | None = None

    def as_json(self) -> dict[str, Any]:
        base = super().as_json()
        base.pop("redelivered-duplicate", None)
        return {
            "listen": self.listen,
            **base,
            "responses": {str(k): v for k, v in sorted(self.responses.items())},
            "websockets_open": self.websockets_open,
            "websockets_opened": self.websockets_opened,
            "tokens_cached": self.tokens_cached() if self.tokens_cached else 0,
        }


class RateLimiter:
    """Token buckets per device: ``rate`` readings/s refilled up to ``burst`` (rate 0: off)."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}

    def _bucket(self, device: str) -> list[float]:
        now = self._clock()
        bucket = self._buckets.get(device)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._forget(now)
            bucket = self._buckets[device] = [float(self.burst), now]
        else:
            bucket[0] = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        return bucket

    def _forget(self, now: float) -> None:
        """Forget buckets that are full again (they start full anyway); else the oldest."""
        full = [
            d
            for d, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.rate >= self.burst
        ]
        for device in full or [next(iter(self._buckets))]:
            del self._buckets[device]

    def wait(self, device: str) -> float:
        """Seconds until ``device`` may send one reading (0: now)."""
        if not self.rate:
            return 0.0
        tokens = self._bucket(device)[0]
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def take(self, device: str, n: int) -> float:
        """Take ``n`` readings' worth for ``device``; 0 if taken, else seconds to wait."""
        if not self.rate:
            return 0.0
        bucket = self._bucket(device)
        if bucket[0] >= n:
            bucket[0] -= n
            return 0.0
        return (n - bucket[0]) / self.rate


def verifier_for(settings: HttpSettings, tenant: str) -> DeviceTokenVerifier:
    """The token verifier a ``[[http]]`` section describes (keys read, revocation list read)."""
    keys = [
        load_key(k.kid, k.file, f"{settings.name}.keys[{j}].file")
        for j, k in enumerate(settings.keys)
    ]
    revocations = RevocationList(settings.revoked_path)
    revocations.load()
    return DeviceTokenVerifier(
        keys,
        tenant,
        issuer=settings.issuer,
        leeway_s=settings.leeway_s,
        cache_size=settings.token_cache_size,
        revocations=revocations,
    )


class _ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log for one source. A request aiohttp cannot parse (it answers 400
    itself: a bad request line, header or length) becomes a counted ``bad-http`` rejection
    with a rate-limited one-line log, not a traceback per request; anything else goes to the
    ``edge.sources.http.server`` logger unchanged."""

    def __init__(self, on_bad_http: Callable[[HttpProcessingError, str], None]) -> None:
        super().__init__(logging.getLogger(f"{__name__}.server"), {})
        self._on_bad_http = on_bad_http

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            where = str(args[0]) if args else ""
            self._on_bad_http(exc, where)
            return
        super().log(level, msg, *args, **kwargs)


@dataclass(eq=False)
class _Connection:
    ws: web.WebSocketResponse
    claims: DeviceClaims
    slots: asyncio.Semaphore
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closing: _RefusalError | None = None
    closer: asyncio.Task[None] | None = None


class HttpSource:
    """One ``[[http]]`` source; ``async with HttpSource(...) as src: await src.run()``."""

    def __init__(
        self,
        settings: HttpSettings,
        sink: Sink,
        stats: EdgeStats,
        tenant: str,
        *,
        verifier: DeviceTokenVerifier | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self._sink = sink
        self._stats = stats
        self._verifier = verifier if verifier is not None else verifier_for(settings, tenant)
        self.status = HttpStats(tokens_cached=lambda: self._verifier.cached)
        stats.sources[settings.name] = self.status
        self._limiter = RateLimiter(settings.rate_readings_per_s, settings.rate_burst)
        self._connections: set[_Connection] = set()
        self._runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self.port: int | None = None
        """The port listened on, once started."""

    @property
    def connected(self) -> bool:
        return self.status.connected

    @property
    def verifier(self) -> DeviceTokenVerifier:
        return self._verifier

    # ---------------------------------------------------------------- lifecycle

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(
            client_max_size=self.settings.max_body_bytes, middlewares=[self._json_errors]
        )
        app.router.add_post(READINGS_PATH, self._post_readings)
        app.router.add_get(WS_PATH, self._websocket)
        return app

    async def __aenter__(self) -> Self:
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=_STOP_TIMEOUT_S,
            logger=_ServerLog(self._bad_http),
        )
        await runner.setup()
        host, port = self.settings.host, self.settings.port
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError(
                f"{self.name}.listen", f"cannot listen on {host}:{port}: {reason}"
            ) from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.status.connected = True
        self.status.listen = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        _log.info("source %s: listening on %s", self.name, self.status.listen)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run(self) -> None:
        """Re-read the revocation list when it changes, until :meth:`stop`."""
        poll = self.settings.revocation_poll_s
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await self._stopped.wait()
            if self._verifier.revocations.refresh():
                self._close_revoked()

    async def stop(self) -> None:
        """Close the sockets (after their messages in flight), stop listening, answer what
        is being committed."""
        if self._stopping:
            return
        self._stopping = True
        closers = [
            closer
            for c in list(self._connections)
            if (closer := self._close(c, WS_CLOSE_GOING_AWAY, "shutting-down", "edge stopping"))
            is not None
        ]
        if closers:
            await asyncio.wait(closers, timeout=_STOP_TIMEOUT_S)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.status.connected = False
        self._stopped.set()

    def _bad_http(self, exc: HttpProcessingError, where: str) -> None:
        """A request aiohttp could not parse (it answered 400 and closed the connection)."""
        self._stats.received(self.name)
        self.status.responses[exc.code or 400] += 1
        detail = " ".join(str(exc.message).split())[:200]
        self._stats.rejected(self.name, "bad-http", detail, b"", where)

    def _close_revoked(self) -> None:
        for conn in list(self._connections):
            try:
                self._verifier.check_revoked(conn.claims)
            except DeviceTokenError as exc:
                self._close(conn, WS_CLOSE_REVOKED, exc.reason, exc.detail)

    # ---------------------------------------------------------------- HTTP

    @web.middleware
    async def _json_errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """aiohttp's own errors (404, 405...) as JSON too."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = (exc.reason or "error").lower().replace(" ", "-")
            response = web.json_response(
                {"error": reason, "detail": exc.text or exc.reason}, status=exc.status
            )
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            self.status.responses[exc.status] += 1
            return response

    async def _post_readings(self, request: web.Request) -> web.Response:
        self._stats.received(self.name)
        body = b""
        device = ""
        try:
            claims = self._authenticate(request, allow_query=False)
            device = claims.device
            senml = self._before_body(request, device)
            body = await self._read(request)
            readings = self._parse_body(body, device, senml)
            self._take(device, len(readings))
            await self._submit(readings)
        except _RefusalError as refusal:
            return self._refuse(refusal, body, device or request.remote or "")
        except Exception as exc:
            _log.exception("source %s: unexpected error on a request", self.name)
            internal = _RefusalError(500, "internal-error", type(exc).__name__)
            return self._refuse(internal, body, device)
        return self._json(202, {"accepted": len(readings)})

    def _before_body(self, request: web.Request, device: str) -> bool:
        """Checks made before the body is read; returns whether it is SenML."""
        senml = self._content_type(request)
        length = request.content_length
        limit = self.settings.max_body_bytes
        if length is not None and length > limit:
            raise _RefusalError(413, "too-large", f"{length} bytes, at most {limit} are accepted")
        wait = self._limiter.wait(device)
        if wait:
            raise self._rate_limited(device, wait)
        return senml

    def _authenticate(self, request: web.Request, *, allow_query: bool) -> DeviceClaims:
        header = request.headers.get("Authorization")
        token = ""
        if header is not None:
            scheme, _, value = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise _RefusalError(
                    401, "no-token", "Authorization must be 'Bearer <device token>'"
                )
            token = value.strip()
        elif allow_query:
            token = request.query.get("token", "")
        if not token:
            raise _RefusalError(
                401, "no-token", "no device token: send 'Authorization: Bearer <device token>'"
            )
        try:
            return self._verifier.verify(token)
        except DeviceTokenError as exc:
            raise _from_token(exc) from exc

    @staticmethod
    def _content_type(request: web.Request) -> bool:
        """Whether the body is SenML; 415 for anything but JSON or SenML in UTF-8."""
        kind = request.content_type
        charset = request.charset
        if charset is not None and charset.lower() not in {"utf-8", "utf8"}:
            raise _RefusalError(415, "bad-content-type", f"charset {charset[:40]!r}: only UTF-8")
        if kind == JSON_TYPE:
            return False
        if kind == SENML_TYPE:
            return True
        raise _RefusalError(
            415, "bad-content-type", f"Content-Type {kind[:80]!r}: send {JSON_TYPE} or {SENML_TYPE}"
        )

    async def _read(self, request: web.Request) -> bytes:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            limit = self.settings.max_body_bytes
            raise _RefusalError(413, "too-large", f"body over {limit} bytes") from exc
        except (ConnectionError, OSError, ValueError) as exc:
            raise _RefusalError(400, "bad-body", f"the body could not be read: {exc}") from exc

    def _parse_body(self, body: bytes, device: str, senml: bool) -> list[Reading]:
        try:
            if senml:  # names (bn + n) are sensor keys of the token's device
                return parse_senml_payload(body, device)
            readings = parse_json_payload(body, device)
        except PayloadError as exc:
            raise _from_payload_error(exc) from exc
        return _own_device(readings, device)

    def _take(self, device: str, n: int) -> None:
        if self._limiter.rate and n > self._limiter.burst:
            raise _RefusalError(
                413,
                "too-many-readings",
                f"{n} readings in one request; the rate limit's burst is {self._limiter.burst}",
            )
        wait = self._limiter.take(device, n)
        if wait:
            raise self._rate_limited(device, wait)

    def _rate_limited(self, device: str, wait: float) -> _RefusalError:
        return _RefusalError(
            429,
            "rate-limited",
            f"device {device!r} is over {self._limiter.rate:g} readings/s; retry in {wait:.2f} s",
            retry_after=max(1, math.ceil(wait)),
        )

    async def _submit(self, readings: Sequence[Reading]) -> None:
        try:
            await self._sink.submit(readings, self.name)
        except BufferFullError as exc:
            raise _RefusalError(
                503,
                f"buffer-{exc.reason}",
                f"the edge's buffer refuses readings now ({exc.detail})",
                retry_after=RETRY_AFTER_UNAVAILABLE_S,
                counted=False,
            ) from exc
        except BatcherClosedError as exc:
            self._stats.refused(self.name, "closed", len(readings), "the edge is stopping")
            raise _RefusalError(
                503,
                "shutting-down",
                "the edge is stopping; nothing was stored",
                retry_after=RETRY_AFTER_UNAVAILABLE_S,
                counted=False,
            ) from exc
        except PayloadError as exc:
            raise _from_payload_error(exc) from exc

    def _refuse(self, refusal: _RefusalError, payload: bytes, where: str) -> web.Response:
        if refusal.counted:
            self._stats.rejected(self.name, refusal.reason, refusal.detail, payload, where)
        headers: dict[str, str] = {}
        if refusal.retry_after is not None:
            headers["Retry-After"] = str(refusal.retry_after)
        if refusal.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="cairn-edge"'
        return self._json(
            refusal.status, {"error": refusal.reason, "detail": refusal.detail}, headers
        )

    def _json(
        self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None
    ) -> web.Response:
        self.status.responses[status] += 1
        return web.json_response(doc, status=status, headers=headers)

    # ---------------------------------------------------------------- WebSocket

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        try:
            claims = self._authenticate(request, allow_query=True)
        except _RefusalError as refusal:
            self._stats.received(self.name)
            return self._refuse(refusal, b"", request.remote or "")
        if self._stopping:
            self._stats.received(self.name)
            stopping = _RefusalError(
                503, "shutting-down", "the edge is stopping", retry_after=RETRY_AFTER_UNAVAILABLE_S
            )
            return self._refuse(stopping, b"", claims.device)
        ws = web.WebSocketResponse(
            heartbeat=_WS_HEARTBEAT_S, max_msg_size=self.settings.max_body_bytes
        )
        if not ws.can_prepare(request).ok:
            self._stats.received(self.name)
            upgrade = _RefusalError(
                400, "not-websocket", f"{WS_PATH} takes WebSocket upgrades only"
            )
            return self._refuse(upgrade, b"", claims.device)
        await ws.prepare(request)
        self.status.responses[101] += 1
        conn = _Connection(ws, claims, asyncio.Semaphore(self.settings.ws_max_in_flight))
        self._connections.add(conn)
        self.status.websockets_open += 1
        self.status.websockets_opened += 1
        expiry = asyncio.create_task(self._expire(conn), name=f"http-{self.name}-ws-expiry")
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    data = msg.data.encode("utf-8", "surrogatepass")
                elif msg.type == WSMsgType.BINARY:
                    data = msg.data
                else:
                    continue
                self._stats.received(self.name)
                await conn.slots.acquire()
                task = asyncio.create_task(self._ws_message(conn, data))
                conn.tasks.add(task)
                task.add_done_callback(_releaser(conn))
        finally:
            expiry.cancel()
            if conn.tasks:
                await asyncio.wait(set(conn.tasks), timeout=_STOP_TIMEOUT_S)
            if conn.closer is not None and conn.closer is not asyncio.current_task():
                await asyncio.wait([conn.closer], timeout=_STOP_TIMEOUT_S)
            self._connections.discard(conn)
            self.status.websockets_open -= 1
        return ws

    async def _expire(self, conn: _Connection) -> None:
        delay = conn.claims.expires + self._verifier.leeway_s - time.time()
        await asyncio.sleep(max(delay, 0.0))
        self._close(conn, WS_CLOSE_TOKEN_EXPIRED, "token-expired", "token expired")

    def _close(
        self, conn: _Connection, code: int, reason: str, detail: str
    ) -> asyncio.Task[None] | None:
        """Refuse new messages, answer those in flight, then close with ``code``."""
        if conn.closing is not None:
            return conn.closer
        status = {WS_CLOSE_TOKEN_EXPIRED: 401, WS_CLOSE_REVOKED: 403}.get(code, 503)
        conn.closing = _RefusalError(status, reason, detail)
        conn.closer = asyncio.create_task(self._close_after(conn, code, detail))
        return conn.closer

    async def _close_after(self, conn: _Connection, code: int, detail: str) -> None:
        current = asyncio.current_task()
        tasks = {t for t in conn.tasks if t is not current}
        if tasks:
            await asyncio.wait(tasks, timeout=_STOP_TIMEOUT_S)
        _log.info(
            "source %s: closing the WebSocket of device %s (%d: %s)",
            self.name,
            conn.claims.device,
            code,
            detail,
        )
        with contextlib.suppress(Exception):
            await conn.ws.close(code=code, message=detail.encode()[:120])

    def _check_open(self, conn: _Connection) -> None:
        """Refuse a message on a socket being closed, or of a device revoked meanwhile."""
        closing = conn.closing
        if closing is not None:
            raise _RefusalError(closing.status, closing.reason, closing.detail)
        try:
            self._verifier.check_revoked(conn.claims)
        except DeviceTokenError as exc:
            self._close(conn, WS_CLOSE_REVOKED, exc.reason, exc.detail)
            raise _from_token(exc) from exc

    async def _ws_message(self, conn: _Connection, data: bytes) -> None:
        msg_id: str | int | None = None
        try:
            self._check_open(conn)
            msg_id, readings = _parse_ws_message(data, conn.claims.device)
            self._take(conn.claims.device, len(readings))
            await self._submit(readings)
        except _RefusalError as refusal:
            if isinstance(refusal, _RefusalWithIdError):
                msg_id = refusal.msg_id
            if refusal.counted:
                self._stats.rejected(
                    self.name, refusal.reason, refusal.detail, data, conn.claims.device
                )
            answer: dict[str, Any] = {
                "id": msg_id,
                "status": "error",
                "error": refusal.reason,
                "detail": refusal.detail,
                "code": refusal.status,
            }
            if refusal.retry_after is not None:
                answer["retry_after"] = refusal.retry_after
            await _send(conn, answer)
            return
        except Exception as exc:
            _log.exception("source %s: unexpected error on a WebSocket message", self.name)
            self._stats.rejected(self.name, "internal-error", repr(exc), data, conn.claims.device)
            await _send(conn, {"id": msg_id, "status": "error", "error": "internal-error"})
            return
        await _send(conn, {"id": msg_id, "status": "ok", "accepted": len(readings)})


def _releaser(conn: _Connection) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        conn.tasks.discard(task)
        conn.slots.release()

    return done


async def _send(conn: _Connection, doc: dict[str, Any]) -> None:
    if conn.ws.closed:
        return
    with contextlib.suppress(ConnectionError, RuntimeError):
        await conn.ws.send_str(json.dumps(doc))


def _own_device(readings: list[Reading], device: str) -> list[Reading]:
    """Drop the ``device`` keys of a body, which must name the token's device."""
    if not any(r.sensor == _DEVICE_KEY for r in readings):
        return readings
    out: list[Reading] = []
    for r in readings:
        if r.sensor != _DEVICE_KEY:
            out.append(r)
        elif not isinstance(r.value, str):
            raise _RefusalError(400, "bad-shape", "'device' must be a string (the token's device)")
        elif r.value != device:
            raise _RefusalError(
                403,
                "wrong-device",
                f"the body names device {r.value[:128]!r}; the token is for {device!r}",
            )
    if not out:
        raise _RefusalError(422, "no-readings", "the body holds no sensor values")
    return out


def _parse_ws_message(data: bytes, device: str) -> tuple[str | int | None, list[Reading]]:
    """``(id, readings)`` of one WebSocket message (the id is ``None`` if it has none)."""
    try:
        doc = load_json(data)
    except PayloadError as exc:
        raise _from_payload_error(exc) from exc
    if not isinstance(doc, dict):
        raise _RefusalError(400, "bad-shape", 'a message is a JSON object {"id": ..., ...}')
    raw_id = doc.get("id")
    good_id = (isinstance(raw_id, int) and not isinstance(raw_id, bool)) or (
        isinstance(raw_id, str) and len(raw_id) <= _MAX_ID_LEN
    )
    if not good_id:
        raise _RefusalError(
            400,
            "bad-shape",
            f"'id' must be a string of up to {_MAX_ID_LEN} characters or an integer",
        )
    msg_id: str | int = raw_id  # type: ignore[assignment]
    if isinstance(msg_id, str):
        try:
            msg_id.encode()
        except UnicodeEncodeError:
            raise _RefusalError(400, "bad-utf8", "'id' is not encodable as UTF-8") from None
    if "readings" in doc:
        extra = sorted(doc.keys() - {"id", "readings"})
        if extra:
            raise _RefusalWithIdError(
                msg_id, 400, "bad-shape", f"with 'readings', no other keys: {extra[:3]!r}"
            )
        inner: Any = doc["readings"]
    else:
        inner = {k: v for k, v in doc.items() if k != "id"}
    try:
        body = json.dumps(inner, ensure_ascii=False, allow_nan=False).encode()
        readings = _own_device(parse_json_payload(body, device), device)
    except UnicodeEncodeError:
        raise _RefusalWithIdError(msg_id, 400, "bad-utf8", "a string is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise _RefusalWithIdError(msg_id, 400, "bad-json", str(exc)[:200]) from None
    except PayloadError as exc:
        r = _from_payload_error(exc)
        raise _RefusalWithIdError(msg_id, r.status, r.reason, r.detail) from exc
    except _RefusalError as exc:
        raise _RefusalWithIdError(msg_id, exc.status, exc.reason, exc.detail) from exc
    return msg_id, readings


class _RefusalWithIdError(_RefusalError):
    def __init__(self, msg_id: str | int, status: int, reason: str, detail: str) -> None:
        super().__init__(status, reason, detail)
        self.msg_id = msg_id
