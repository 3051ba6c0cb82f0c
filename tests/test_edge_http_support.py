"""Helpers of the HTTP/WebSocket source tests (no tests here): keys, tokens, a running source.

``http_edge`` runs a real aiohttp server (the source, on a free loopback port) in front of a real
batcher and SQLite buffer; ``ThreadedHttpEdge`` runs the same in a thread of its own, for
hypothesis tests that send with a blocking client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, generate_private_key

from contract.signing import b64url
from edge.batcher import Batcher
from edge.buffer import Buffer, BufferLimits
from edge.config import BufferSettings, HttpKeySettings, HttpSettings
from edge.sources.http import HttpSource
from edge.stats import EdgeStats

TENANT = "acme"
ED_KID = "hub-ed"
RSA_KID = "hub-rsa"


@functools.cache
def ed_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@functools.cache
def rsa_key() -> RSAPrivateKey:
    return generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: Ed25519PrivateKey | RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_keys(folder: Path) -> tuple[HttpKeySettings, ...]:
    """The Ed25519 and RSA public keys as PEM files in ``folder``, as ``http.keys``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ed.pem").write_bytes(public_pem(ed_key()))
    (folder / "rsa.pem").write_bytes(public_pem(rsa_key()))
    return (
        HttpKeySettings(ED_KID, folder / "ed.pem"),
        HttpKeySettings(RSA_KID, folder / "rsa.pem"),
    )


def claims(device: str = "pump-1", **over: Any) -> dict[str, Any]:
    now = int(time.time())
    doc: dict[str, Any] = {
        "sub": device,
        "tenant": TENANT,
        "aud": "cairn-edge",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not None}


def token(device: str = "pump-1", *, rsa: bool = False, kid: str | None = None, **over: Any) -> str:
    """A device token signed with the test's Ed25519 (or RSA) key; ``over`` changes claims
    (a value of ``None`` removes the claim)."""
    key: Any = rsa_key() if rsa else ed_key()
    alg = "RS256" if rsa else "EdDSA"
    headers = {"kid": kid if kid is not None else (RSA_KID if rsa else ED_KID)}
    return jwt.encode(claims(device, **over), key, algorithm=alg, headers=headers)


def raw_token(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A hand-made JWT: HS256 with ``secret``, or no signature at all (``secret=None``)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def http_settings(keys: tuple[HttpKeySettings, ...], **kw: Any) -> HttpSettings:
    defaults: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "keys": keys,
        "leeway_s": 5,
        "revocation_poll_s": 0.05,
    }
    defaults.update(kw)
    return HttpSettings(**defaults)


@dataclass
class HttpEdge:
    buffer: Buffer
    batcher: Batcher
    stats: EdgeStats
    source: HttpSource
    url: str

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/api/v1/ws"

    @property
    def readings_url(self) -> str:
        return self.url + "/api/v1/readings"


@contextlib.asynccontextmanager
async def http_edge(
    tmp_path: Path, settings: HttpSettings, limits: BufferLimits | None = None
) -> AsyncIterator[HttpEdge]:
    """Real buffer + batcher + the HTTP source listening on a free loopback port."""
    buffer = Buffer(tmp_path / "buffer.sqlite3", limits=limits)
    stats = EdgeStats()
    batcher = Batcher(
        buffer,
        BufferSettings(flush_interval_ms=10, max_batch_readings=1000, max_pending_readings=10_000),
        stats,
    )
    try:
        async with HttpSource(settings, batcher, stats, TENANT) as source:
            tasks = [asyncio.create_task(batcher.run()), asyncio.create_task(source.run())]
            try:
                yield HttpEdge(buffer, batcher, stats, source, f"http://127.0.0.1:{source.port}")
            finally:
                await source.stop()
                await batcher.close()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        buffer.close()


class ThreadedHttpEdge:
    """:func:`http_edge` on an event loop in a thread of its own (for blocking clients)."""

    def __init__(self, tmp_path: Path, settings: HttpSettings) -> None:
        self._tmp_path = tmp_path
        self._settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._cm: Any = None
        self.edge: HttpEdge | None = None

    def __enter__(self) -> HttpEdge:
        self._thread.start()
        self.edge = self.call(self._start())
        return self.edge

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self._cm.__aexit__(None, None, None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    async def _start(self) -> HttpEdge:
        self._cm = http_edge(self._tmp_path, self._settings)
        edge: HttpEdge = await self._cm.__aenter__()
        return edge

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def source_status(self) -> dict[str, Any]:
        async def snapshot() -> dict[str, Any]:
            assert self.edge is not None
            return self.edge.source.status.as_json()

        return self.call(snapshot())  # type: ignore[no-any-return]


def keyed(readings: Any) -> set[tuple[str, str, int, str, int]]:
    """Readings as a set (values of any kind, JSON documents too, compared by their JSON)."""
    return {
        (r.device, r.sensor, r.ts, json.dumps(r.value, sort_keys=True), r.flags) for r in readings
    }
