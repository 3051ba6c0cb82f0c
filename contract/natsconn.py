"""Connecting to NATS the way edge and hub both need: retried with our own backoff at first,
reconnecting for ever once connected."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client as NatsClient

from contract.backoff import Backoff

__all__ = ["NatsIdentity", "connect_nats"]

_log = logging.getLogger(__name__)

_RECONNECT_WAIT_S: Final = 0.5
_CONNECT_TIMEOUT_S: Final = 5


@dataclasses.dataclass(frozen=True)
class NatsIdentity:
    """Who connects and whom it trusts: TLS towards a CA, an nkey login, a reply-inbox prefix.

    Every field is optional (a plain local connection needs none): ``ca_file`` turns on TLS
    verified against that CA (PEM), ``nkey_seed`` (``SU...``) logs in as that nkey user, and
    ``inbox_prefix`` names the reply inboxes (an edge's permissions allow only its own).
    """

    ca_file: str | None = None
    nkey_seed: bytes | None = None
    inbox_prefix: str | None = None
    user: str | None = None
    password: str | None = None

    def options(self) -> dict[str, Any]:
        """The ``nats.connect`` keyword arguments for this identity."""
        opts: dict[str, Any] = {}
        if self.ca_file:
            opts["tls"] = ssl.create_default_context(cafile=self.ca_file)
        if self.nkey_seed:
            opts["nkeys_seed_str"] = self.nkey_seed.decode()
        if self.inbox_prefix:
            opts["inbox_prefix"] = self.inbox_prefix
        if self.user:
            opts["user"] = self.user
            opts["password"] = self.password or ""
        return opts


def _tls_in_use(url: str, nc: NatsClient) -> bool:
    """Whether the connection is encrypted: nats-py upgrades only when the server's INFO asks
    for TLS, so a server (or something in between) that does not ask would get plain text.
    WebSocket URLs are taken at their word (``wss://`` is TLS by its scheme)."""
    if urlsplit(url).scheme in {"ws", "wss"}:
        return True
    transport = getattr(nc, "_transport", None)
    writer = getattr(transport, "_io_writer", None)
    return writer is not None and writer.get_extra_info("ssl_object") is not None


async def connect_nats(
    url: str,
    name: str,
    backoff: Backoff,
    on_failure: Callable[[str], None],
    identity: NatsIdentity | None = None,
    **callbacks: Any,
) -> NatsClient:
    """Connect to ``url``, retrying after ``backoff`` delays until it works.

    ``max_reconnect_attempts=1`` makes a first connect to a server that is down fail (after two
    tries) instead of looping inside nats-py at its fixed pace; once connected, reconnects are
    unlimited. ``on_failure`` gets a one-line description of each failed attempt;
    ``identity`` adds TLS (a connection left unencrypted although ``identity`` has a CA is
    closed and counts as a failed attempt), an nkey login and an inbox prefix; ``callbacks``
    (``error_cb``, ``disconnected_cb``...) go to ``nats.connect``.
    """
    while True:
        try:
            nc = await nats.connect(
                url,
                name=name,
                max_reconnect_attempts=1,
                reconnect_time_wait=_RECONNECT_WAIT_S,
                connect_timeout=_CONNECT_TIMEOUT_S,
                **(identity.options() if identity else {}),
                **callbacks,
            )
        except Exception as exc:
            delay = backoff.next()
            problem = f"connect {url}: {exc or type(exc).__name__}"
            on_failure(problem)
            _log.warning("cannot connect to NATS at %s (%s); retrying in %.2f s", url, exc, delay)
            await asyncio.sleep(delay)
            continue
        if identity is not None and identity.ca_file and not _tls_in_use(url, nc):
            await nc.close()
            problem = f"connect {url}: the server does not use TLS (a CA is configured)"
            on_failure(problem)
            delay = backoff.next()
            _log.warning("refusing NATS at %s: %s; retrying in %.2f s", url, problem, delay)
            await asyncio.sleep(delay)
            continue
        nc.options["max_reconnect_attempts"] = -1
        backoff.reset()
        return nc
