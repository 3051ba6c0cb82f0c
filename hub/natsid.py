"""How the hub itself connects to NATS: the one place that says so for ingest, the status
listener and the command publisher."""

from __future__ import annotations

from contract.natsconn import NatsIdentity
from hub.config import HubConfig
from hub.pki import ca_path

__all__ = ["hub_nats_identity"]


def hub_nats_identity(config: HubConfig) -> NatsIdentity | None:
    """TLS verified against the hub's CA (``state_dir/pki/ca.pem``, made by
    :func:`hub.pki.ensure_pki`) when ``[tls] nats`` is on; ``None``: a plain connection."""
    if not config.tls.nats:
        return None
    return NatsIdentity(ca_file=str(ca_path(config)))
