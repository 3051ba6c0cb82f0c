"""``cairn-hub enroll-token`` and ``cairn-hub edges list|show|revoke``: the hub operator's
side of enrollment and revocation, on the registry file (the running hub notices the change
within a second, :meth:`hub.registry.Registry.refresh`)."""

from __future__ import annotations

import argparse
import json

from contract.capin import certificate_fingerprint
from contract.cli import add_config_option
from hub.api_identity import DEFAULT_ENROLL_TTL_S, edge_json, merge_identity
from hub.config import HubConfig
from hub.pki import ca_path, ensure_pki
from hub.registry import RegistryError
from hub.service import open_registry
from hub.store import SqliteStore

__all__ = ["add_parsers", "ca_pem", "command"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``enroll-token`` command (``edges`` is extended in :mod:`hub.cli`)."""
    token = sub.add_parser(
        "enroll-token", help="print a one-time enrollment token for an edge (and the CA pin)"
    )
    add_config_option(token, "hub", log_level=False)
    token.add_argument("--tenant", required=True, help="tenant the edge belongs to")
    token.add_argument("--edge", required=True, help="the edge's id")
    token.add_argument(
        "--ttl",
        type=float,
        default=DEFAULT_ENROLL_TTL_S,
        help=f"seconds the token is valid (default {DEFAULT_ENROLL_TTL_S})",
    )


def add_edge_actions(edges_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``edges show`` and ``edges revoke``."""
    for action, text in (
        ("show", "print one edge's identity: keys, revocation, counts"),
        ("revoke", "revoke an edge: its batches and NATS logins are refused from now on"),
    ):
        p = edges_sub.add_parser(action, help=text)
        add_config_option(p, "hub", log_level=False)
        p.add_argument("--tenant", required=True, help="the edge's tenant")
        p.add_argument("--edge", required=True, help="the edge's id")


def ca_pem(config: HubConfig) -> bytes | None:
    """The hub's CA certificate if it has made one (``state_dir/pki/ca.pem``)."""
    path = ca_path(config)
    return path.read_bytes() if path.is_file() else None


def command(config: HubConfig, args: argparse.Namespace) -> int:
    """Run ``enroll-token`` or an ``edges`` action; a refusal is a one-line error (exit 2)."""
    registry = open_registry(config)
    try:
        if args.command == "enroll-token":
            registry.ensure_tenant(args.tenant)
            enrollment = registry.create_enrollment(args.tenant, args.edge, args.ttl)
            if config.tls.api or config.tls.nats:
                ensure_pki(config)  # the CA the hub will present: its pin goes to the edge
            pem = ca_pem(config)
            print(f"token   {enrollment.token}")
            print(f"ca-pin  {certificate_fingerprint(pem) if pem else '(none: the hub has no CA)'}")
            print(f"expires in {args.ttl:g} s; on the edge run:")
            pin = f" --ca-pin {certificate_fingerprint(pem)}" if pem else ""
            print(
                f"  cairn-edge enroll --config edge.toml --hub URL --token {enrollment.token}{pin}"
            )
            return 0
        if args.action == "revoke":
            registry.revoke_edge(args.tenant, args.edge)
            print(f"revoked edge {args.edge} of tenant {args.tenant}")
            return 0
        if args.action == "show":
            record = registry.edge(args.tenant, args.edge)
            if record is None:
                raise RegistryError("not-found", f"no edge {args.edge!r} in tenant {args.tenant!r}")
            print(json.dumps(edge_json(record), indent=2))
            return 0
        rows = _store_edges(config, args.tenant)
        for row in merge_identity(registry, args.tenant, rows):
            print(json.dumps(row))
        return 0
    finally:
        registry.close()


def _store_edges(config: HubConfig, tenant: str | None) -> list[dict[str, object]]:
    store = SqliteStore(config.hub.store_path, readonly=True)
    try:
        return store.edges(tenant)
    finally:
        store.close()
