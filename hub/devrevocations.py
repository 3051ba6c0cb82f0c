"""Revoked device tokens, pushed from the hub to the tenant's edges over NATS.

Edges verify device tokens offline, so a revocation at the hub (``POST
/api/v1/device-tokens/revoke`` or ``cairn-hub token revoke --device-token``) must travel to
them. :class:`DeviceRevocationPublisher` sends every active edge (enrolled, not revoked, tenant
not disabled: :meth:`hub.registry.Registry.active_edges`) its tenant's list of revoked,
unexpired device tokens on the edge's command subject (:func:`contract.names.command_subject`,
core NATS):

- at once when the registry changes (a revocation by this process, or by another process
  writing the same registry file, noticed within the registry's ``poll_s``), to the edges whose
  list changed and to edges that became active;
- again to every active edge every ``auth.device_revocations_resend_s``, so an edge that was
  offline or restarted catches up.

A message is a JWT signed with the hub's token key (EdDSA, the same ``kid`` the edges already
trust for device tokens), audience :data:`COMMAND_AUDIENCE`, with claims ``cmd`` =
``"device-revocations"``, ``tenant``, ``edge``, ``issued_us`` (the edge ignores a list older
than the one it applied), ``exp``, and ``revoked``: ``[[jti, device or null, until_s], ...]``.
So an edge applies only lists the hub signed for it, even through a broker it does not trust;
:mod:`edge.commands` writes them into its ``[[http]].revoked_file``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from typing import Any, Final

from nats.aio.client import Client as NatsClient

from contract.backoff import Backoff
from contract.names import command_subject
from contract.natsconn import NatsIdentity, connect_nats
from hub.auth import TokenAuthority
from hub.registry import Registry

__all__ = [
    "COMMAND_AUDIENCE",
    "DEVICE_REVOCATIONS",
    "DeviceRevocationPublisher",
    "revocation_claims",
]

_log = logging.getLogger(__name__)

COMMAND_AUDIENCE: Final = "cairn-edge-command"
"""``aud`` of signed commands to edges (``edge.commands.COMMAND_AUDIENCE``): never a device
token's audience, so a command cannot pass for a device token or the other way round."""
DEVICE_REVOCATIONS: Final = "device-revocations"
"""The ``cmd`` claim of a revocation list."""
_MIN_VALID_S: Final = 600

RevokedRow = tuple[str, str | None, int]


def revocation_claims(
    issuer: str, tenant: str, edge: str, rows: list[RevokedRow], valid_s: float
) -> dict[str, Any]:
    """The claims of one edge's revocation list message (``rows`` from
    :meth:`Registry.revoked_device_tokens`)."""
    now = time.time()
    return {
        "iss": issuer,
        "aud": COMMAND_AUDIENCE,
        "sub": f"{tenant}.{edge}",
        "cmd": DEVICE_REVOCATIONS,
        "tenant": tenant,
        "edge": edge,
        "iat": int(now),
        "issued_us": time.time_ns() // 1000,
        "exp": int(now + max(_MIN_VALID_S, valid_s)),
        "jti": uuid.uuid4().hex,
        "revoked": [[jti, device, -(-until_us // 1_000_000)] for jti, device, until_us in rows],
    }


class DeviceRevocationPublisher:
    """Keeps every active edge's copy of its tenant's device-token revocations current."""

    def __init__(
        self,
        url: str,
        registry: Registry,
        auth: TokenAuthority,
        *,
        resend_s: float = 30.0,
        identity: NatsIdentity | None = None,
    ) -> None:
        self._url = url
        self._registry = registry
        self._auth = auth
        self.resend_s = resend_s
        self._identity = identity
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sent: dict[tuple[str, str], tuple[RevokedRow, ...]] = {}
        self.published = 0
        self.errors: Counter[str] = Counter()
        self.connected = False
        registry.add_listener(self._on_change)

    def as_dict(self) -> dict[str, Any]:
        return {
            "device_revocations_published": self.published,
            "device_revocations_errors": dict(sorted(self.errors.items())),
        }

    def _on_change(self) -> None:
        """A registry change (in any thread): look again now."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """Connect, then publish on change and every ``resend_s`` until cancelled."""
        self._loop = asyncio.get_running_loop()
        nc = await connect_nats(
            self._url,
            "cairn-hub-commands",
            Backoff(0.1, 5.0),
            lambda _p: None,
            self._identity,
        )
        self.connected = True
        _log.info("sending device-token revocations to the edges' command subjects")
        try:
            next_resend = 0.0
            while True:
                self._wake.clear()
                now = time.monotonic()
                everyone = now >= next_resend
                if everyone:
                    next_resend = now + self.resend_s
                if nc.is_connected:
                    try:
                        await self.publish(nc, everyone=everyone)
                    except Exception as exc:  # the registry or NATS: logged, tried again
                        self.errors["publish-failed"] += 1
                        _log.warning("cannot send device-token revocations: %s", exc)
                else:
                    next_resend = 0.0  # send to everyone once the link is back
                wait = self._registry.poll_s
                if next_resend:
                    wait = min(wait, max(0.0, next_resend - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                await asyncio.to_thread(self._registry.refresh)  # other processes' commits
        finally:
            self.connected = False
            self._loop = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)

    async def publish(self, nc: NatsClient, *, everyone: bool) -> int:
        """Send each active edge its tenant's list if it changed since the last send (or to
        all when ``everyone``); the number of messages sent."""
        registry = self._registry
        edges = await asyncio.to_thread(registry.active_edges)
        lists: dict[str, tuple[RevokedRow, ...]] = {}
        sent = 0
        active: set[tuple[str, str]] = set()
        for tenant, edge, _key in edges:
            active.add((tenant, edge))
            if tenant not in lists:
                rows = await asyncio.to_thread(registry.revoked_device_tokens, tenant)
                lists[tenant] = tuple(rows)
            rows_now = lists[tenant]
            if not everyone and self._sent.get((tenant, edge)) == rows_now:
                continue
            claims = revocation_claims(
                self._auth.issuer, tenant, edge, list(rows_now), 3 * self.resend_s
            )
            data = self._auth.sign(claims).encode()
            if len(data) > nc.max_payload:
                self.errors["too-large"] += 1
                _log.error(
                    "the revocation list of tenant %s (%d tokens) is larger than the NATS "
                    "max_payload (%d bytes): not sent; raise max_payload",
                    tenant,
                    len(rows_now),
                    nc.max_payload,
                )
                continue
            await nc.publish(command_subject(tenant, edge), data)
            self._sent[(tenant, edge)] = rows_now
            sent += 1
        for gone in set(self._sent) - active:
            del self._sent[gone]
        if sent:
            await nc.flush()
            self.published += sent
            _log.debug("sent device-token revocations to %d edges", sent)
        return sent
