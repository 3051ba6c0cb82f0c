"""Waits every source needs: for the first of several events, or for an event with a limit."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["wait_any", "wait_set"]


async def wait_any(*events: asyncio.Event) -> None:
    """Return as soon as one of ``events`` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def wait_set(event: asyncio.Event, delay: float) -> None:
    """Return when ``event`` is set or after ``delay`` seconds, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await event.wait()
