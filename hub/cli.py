"""``cairn-hub``: run the hub, make API tokens, list what the store knows."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from typing import Final

from contract.cli import add_config_option, add_log_level, run_command, setup_logging
from hub import cli_admin, edges_cli, natsauth_cli, pki_cli
from hub.auth import ROLES, TokenAuthority
from hub.config import load_config
from hub.service import authority, run_hub
from hub.store import SqliteStore

__all__ = ["main"]

_PROG: Final = "cairn-hub"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG, description="Cairn hub: JetStream ingest, readings store, REST API."
    )
    add_log_level(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the hub until SIGTERM or SIGINT")
    add_config_option(run, "hub", log_level=False)

    token = sub.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = token_sub.add_parser("create", aliases=["issue"], help="print a new signed API token")
    add_config_option(create, "hub", log_level=False)
    create.add_argument("--tenant", required=True, help="tenant the token is for")
    create.add_argument("--role", required=True, choices=ROLES, help="role of the bearer")
    create.add_argument("--ttl-s", type=int, default=None, help="lifetime in seconds")
    create.add_argument("--subject", default=None, help="who the token is for (sub claim)")
    device = token_sub.add_parser(
        "device", help="print a device token for HTTP/WebSocket ingestion at an edge"
    )
    add_config_option(device, "hub", log_level=False)
    device.add_argument("--tenant", required=True, help="tenant of the edge(s) it is for")
    device.add_argument("--device", required=True, help="device id (the token's sub)")
    device.add_argument(
        "--ttl-s", type=int, default=30 * 86_400, help="lifetime in seconds (default 30 days)"
    )
    public = token_sub.add_parser(
        "public-key", help="print the PEM public key that verifies the hub's tokens"
    )
    add_config_option(public, "hub", log_level=False)
    public.add_argument("--kid", action="store_true", help="print only the key id (kid)")

    edges = sub.add_parser("edges", help="enrolled edges and the edges the store has seen")
    edges_sub = edges.add_subparsers(dest="action", required=True, metavar="ACTION")
    edges_list = edges_sub.add_parser("list", help="list edges: counts and enrollment")
    add_config_option(edges_list, "hub", log_level=False)
    edges_list.add_argument("--tenant", default=None, help="only this tenant's edges")
    edges_cli.add_edge_actions(edges_sub)
    edges_cli.add_parsers(sub)

    tenants = sub.add_parser("tenants", help="tenants: registered, and seen in the store")
    tenants_sub = tenants.add_subparsers(dest="action", required=True, metavar="ACTION")
    tenants_list = tenants_sub.add_parser("list", help="list tenants")
    add_config_option(tenants_list, "hub", log_level=False)
    pki_cli.add_parsers(sub)
    natsauth_cli.add_parsers(sub)
    cli_admin.add_parsers(sub, token_sub, tenants_sub)  # tenants, api-keys, token revoke
    return parser


def _command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.command == "run":
        asyncio.run(run_hub(config))
        return 0
    handled = cli_admin.run(args, config)
    if handled is not None:
        return handled
    if args.command == "token":
        print(_token(authority(config), args))
        return 0
    own = {"pki": pki_cli.command, "nats-auth": natsauth_cli.command}.get(args.command)
    if own is not None:
        return own(config, args)
    if args.command in {"edges", "enroll-token"}:
        return edges_cli.command(config, args)
    store = SqliteStore(config.hub.store_path, readonly=True)
    try:
        if args.command == "edges":
            for row in store.edges(args.tenant):
                print(json.dumps(row))
        else:
            for tenant in store.tenants():
                print(tenant)
    finally:
        store.close()
    return 0


def _token(auth: TokenAuthority, args: argparse.Namespace) -> str:
    if args.action == "device":
        return auth.issue_device(args.tenant, args.device, args.ttl_s)
    if args.action == "public-key":
        return auth.kid if args.kid else auth.public_key_pem().decode().rstrip("\n")
    return auth.issue_token(args.tenant, args.role, args.subject, args.ttl_s)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cairn-hub``; returns the exit status."""
    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    return run_command(_PROG, lambda: _command(args))
