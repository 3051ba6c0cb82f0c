"""How the hub itself connects to NATS: the one place that says so for ingest, the status
listener and the command publisher."""

from __future__ import annotations

from contract.natsconn import NatsIdentity
from hub.config import HubConfig
from hub.natsauth import HUB_INBOX_PREFIX, hub_nkey_seed
from hub.pki import ca_path

__all__ = ["hub_nats_identity"]


def hub_nats_identity(config: HubConfig) -> NatsIdentity | None:
    """TLS verified against the hub's CA (``state_dir/pki/ca.pem``, made by
    :func:`hub.pki.ensure_pki`) when ``[tls] nats`` is on; with ``[nats]
    manage_authorization`` the hub's own nkey login (``state_dir/nats-hub.pem``, the user
    :mod:`hub.natsauth` writes) and its reply inboxes. ``None``: a plain anonymous connection.

    The nkey login only goes with a managed authorization: a server without authorization
    would accept it too, but the key file would then be made in ``state_dir`` for nothing."""
    ca_file = str(ca_path(config)) if config.tls.nats else None
    if not config.nats.manage_authorization:
        return NatsIdentity(ca_file=ca_file) if ca_file else None
    return NatsIdentity(
        ca_file=ca_file,
        nkey_seed=hub_nkey_seed(config.hub.state_dir),
        inbox_prefix=HUB_INBOX_PREFIX,
    )
