"""Waiting in tests: poll a condition with a deadline, never sleep for a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import nats.js.errors
from nats.js import JetStreamContext


async def until(
    predicate: Callable[[], bool | Awaitable[bool]],
    what: str,
    timeout: float = 20.0,
    *,
    in_thread: bool = False,
) -> float:
    """Wait until ``predicate()`` holds (checked every 20 ms) or fail after ``timeout``.

    Returns the seconds it took, so a test that measures a latency (a revocation taking
    effect) need not write its own loop. ``in_thread`` runs a blocking predicate (an HTTP
    call, a SQLite read) off the event loop.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if in_thread:
            result: bool | Awaitable[bool] = await asyncio.to_thread(predicate)
        else:
            result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def stream_exists(js: JetStreamContext, name: str = "CAIRN_TELEMETRY") -> bool:
    """Whether JetStream has the stream ``name`` (a predicate for :func:`until`)."""
    try:
        await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        return False
    return True
