"""Connecting to NATS the way edge and hub both need: retried with our own backoff at first,
reconnecting for ever once connected."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

from nats.aio.client import Client as NatsClient

from contract.backoff import Backoff

__all__ = ["NatsIdentity", "connect_nats"]

_log = logging.getLogger(__name__)

_RECONNECT_WAIT_S: Final = 0.5
_TIMING: Final[dict[str, Any]] = {"reconnect_time_wait": _RECONNECT_WAIT_S}
"""A float, which nats-py's signature types as int (it sleeps for it)."""
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

    def options(self, url: str = "") -> dict[str, Any]:
        """The ``nats.connect`` keyword arguments for this identity towards ``url``.

        With a CA the TLS handshake comes first, before the server says anything (nats-py's
        ``tls_handshake_first``; the server's ``tls { handshake_first: true }``): left to the
        server's INFO, nats-py upgrades only when asked, so something in the path that does
        not ask, on any reconnect, would get the login in plain text. WebSocket URLs carry
        TLS by their scheme (``wss://``) instead."""
        opts: dict[str, Any] = {}
        if self.ca_file:
            opts["tls"] = ssl.create_default_context(cafile=self.ca_file)
            if urlsplit(url).scheme not in {"ws", "wss"}:
                opts["tls_handshake_first"] = True
        if self.nkey_seed:
            opts["nkeys_seed_str"] = self.nkey_seed.decode()
        if self.inbox_prefix:
            opts["inbox_prefix"] = self.inbox_prefix
        if self.user:
            opts["user"] = self.user
            opts["password"] = self.password or ""
        return opts


async def connect_nats(
    url: str,
    name: str,
    backoff: Backoff,
    on_failure: Callable[[str], None],
    identity: NatsIdentity | None = None,
    **callbacks: Any,
) -> NatsClient:
    """Connect to ``url``, retrying after ``backoff`` delays until it works.

    The first connect is one try (``allow_reconnect=False``), so a server that is down fails
    at once instead of looping inside nats-py at its fixed pace; once connected, reconnects are
    unlimited. ``on_failure`` gets a one-line description of each failed attempt;
    ``identity`` adds TLS (handshake first, so a server without TLS fails the attempt: nothing
    goes out in plain text), an nkey login and an inbox prefix; ``callbacks`` (``error_cb``,
    ``disconnected_cb``...) go to ``nats.connect``.
    """
    while True:
        nc = NatsClient()
        try:
            await nc.connect(
                url,
                name=name,
                allow_reconnect=False,
                connect_timeout=_CONNECT_TIMEOUT_S,
                **_TIMING,
                **(identity.options(url) if identity else {}),
                **callbacks,
            )
        except Exception as exc:
            _drop(nc)
            delay = backoff.next()
            problem = f"connect {url}: {_describe(exc)}"
            on_failure(problem)
            _log.warning("cannot %s; retrying in %.2f s", problem, delay)
            await asyncio.sleep(delay)
            continue
        nc.options["allow_reconnect"] = True  # read by nats-py at each disconnect
        nc.options["max_reconnect_attempts"] = -1
        backoff.reset()
        return nc


def _describe(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc}): not a TLS server, or not one of our CA"
    return str(exc) or type(exc).__name__


def _drop(nc: NatsClient) -> None:
    """Close the socket of a first connect that failed. nats-py's own cleanup would wait for a
    stream whose TLS handshake failed to close, which never happens (so the first connect is
    made with ``allow_reconnect=False``, which skips it, and the socket is closed here)."""
    transport = getattr(nc, "_transport", None)
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.close()
