"""A hub configuration with its PKI and a nats-server that requires TLS with the hub's NATS
certificate: for tests that run hub parts in-process against the secure path."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

from contract.natsconn import NatsIdentity
from hub.config import HubConfig, HubSettings, NatsSettings
from hub.natsid import hub_nats_identity
from hub.pki import ensure_pki
from simulator.servers import NatsServer

__all__ = ["TlsNats", "tls_nats"]


@dataclasses.dataclass(frozen=True)
class TlsNats:
    config: HubConfig
    """The hub's configuration: ``nats.url`` is the server's, TLS on."""
    server: NatsServer
    identity: NatsIdentity
    """How the hub (and a trusted test client) connects: TLS towards the hub's CA."""


@contextlib.contextmanager
def tls_nats(folder: Path, **nats: object) -> Iterator[TlsNats]:
    """Make the hub's CA and certificates under ``folder/hub``, start nats-server with them;
    ``nats``: more :class:`NatsSettings` fields (e.g. ``fetch_batch``)."""
    base = HubConfig(hub=HubSettings(state_dir=folder / "hub"))
    pki = ensure_pki(base)
    assert pki.nats is not None
    server = NatsServer(folder / "nats", tls=(pki.ca_cert, pki.nats.cert, pki.nats.key))
    with server.start():
        config = dataclasses.replace(base, nats=NatsSettings(url=server.url, **nats))  # type: ignore[arg-type]
        identity = hub_nats_identity(config)
        assert identity is not None
        yield TlsNats(config, server, identity)
