"""Connecting to NATS the way edge and hub both need: retried with our own backoff at first,
reconnecting for ever once connected."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

import nats
from nats.aio.client import Client as NatsClient

from contract.backoff import Backoff

__all__ = ["connect_nats"]

_log = logging.getLogger(__name__)

_RECONNECT_WAIT_S: Final = 0.5
_CONNECT_TIMEOUT_S: Final = 5


async def connect_nats(
    url: str,
    name: str,
    backoff: Backoff,
    on_failure: Callable[[str], None],
    **callbacks: Any,
) -> NatsClient:
    """Connect to ``url``, retrying after ``backoff`` delays until it works.

    ``max_reconnect_attempts=1`` makes a first connect to a server that is down fail (after two
    tries) instead of looping inside nats-py at its fixed pace; once connected, reconnects are
    unlimited. ``on_failure`` gets a one-line description of each failed attempt;
    ``callbacks`` (``error_cb``, ``disconnected_cb``...) go to ``nats.connect``.
    """
    while True:
        try:
            nc = await nats.connect(
                url,
                name=name,
                max_reconnect_attempts=1,
                reconnect_time_wait=_RECONNECT_WAIT_S,
                connect_timeout=_CONNECT_TIMEOUT_S,
                **callbacks,
            )
        except Exception as exc:
            delay = backoff.next()
            problem = f"connect {url}: {exc or type(exc).__name__}"
            on_failure(problem)
            _log.warning("cannot connect to NATS at %s (%s); retrying in %.2f s", url, exc, delay)
            await asyncio.sleep(delay)
            continue
        nc.options["max_reconnect_attempts"] = -1
        backoff.reset()
        return nc
