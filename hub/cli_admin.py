"""``cairn-hub tenants``, ``cairn-hub api-keys`` and ``cairn-hub token revoke``: the registry
from the command line (the same file the running hub reads; it notices changes within
``poll_s``, and pushes device-token revocations to the edges)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from contract.cli import add_config_option
from contract.errors import AuthError, CairnError
from hub.api_admin import REVOKED_JTI_KEPT_S, token_facts
from hub.auth import TENANT_ROLES, TokenAuthority
from hub.config import HubConfig
from hub.registry import Registry
from hub.service import authority, open_registry
from hub.store import SqliteStore

__all__ = ["add_parsers", "run"]


def add_parsers(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    token_sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    tenants_sub: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> None:
    """Add the commands of this module to ``cairn-hub``'s parser."""
    for action, text in (
        ("create", "register a tenant"),
        ("disable", "disable a tenant: its tokens, API keys and edges are refused"),
        ("enable", "enable a disabled tenant again"),
    ):
        p = tenants_sub.add_parser(action, help=text)
        add_config_option(p, "hub", log_level=False)
        p.add_argument("tenant", help="tenant name ([A-Za-z0-9_-]{1,64})")

    keys = sub.add_parser("api-keys", help="API keys of services (exchanged for tokens)")
    keys_sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="print a new API key (shown once)")
    add_config_option(create, "hub", log_level=False)
    create.add_argument("--tenant", required=True, help="tenant of the key")
    create.add_argument("--role", required=True, choices=TENANT_ROLES, help="role it gets")
    create.add_argument("--name", required=True, help="what the key is for")
    listing = keys_sub.add_parser("list", help="list a tenant's API keys (JSON lines)")
    add_config_option(listing, "hub", log_level=False)
    listing.add_argument("--tenant", required=True)
    revoke = keys_sub.add_parser("revoke", help="revoke an API key")
    add_config_option(revoke, "hub", log_level=False)
    revoke.add_argument("--tenant", required=True)
    revoke.add_argument("key_id", help="the key's id (second part of ck1.<id>.<secret>)")

    token_revoke = token_sub.add_parser(
        "revoke", help="revoke an API or device token (refused at once / by the edges)"
    )
    add_config_option(token_revoke, "hub", log_level=False)
    what = token_revoke.add_mutually_exclusive_group(required=True)
    what.add_argument("--token", help="the token itself (API or device token)")
    what.add_argument("--jti", help="the token's jti (needs --tenant)")
    token_revoke.add_argument("--tenant", help="tenant of the token (with --jti)")
    token_revoke.add_argument(
        "--device-token", action="store_true", help="with --jti: it is a device token"
    )


def run(args: argparse.Namespace, config: HubConfig) -> int | None:
    """Run the command if it is one of this module's; ``None`` otherwise."""
    if args.command == "tenants":
        return _tenants(args, config)
    if args.command == "api-keys":
        registry = open_registry(config)
        try:
            return _api_keys(args, registry)
        finally:
            registry.close()
    if args.command == "token" and args.action == "revoke":
        registry = open_registry(config)
        try:
            return _revoke(args, authority(config), registry)
        finally:
            registry.close()
    return None


def _tenants(args: argparse.Namespace, config: HubConfig) -> int:
    if args.action == "list":
        registered: dict[str, bool] = {}
        if config.hub.registry_path.exists():
            registry = open_registry(config)
            try:
                registered = {str(t["tenant"]): bool(t["disabled"]) for t in registry.tenants()}
            finally:
                registry.close()
        seen: list[str] = []
        if config.hub.store_path.exists():
            store = SqliteStore(config.hub.store_path, readonly=True)
            try:
                seen = store.tenants()
            finally:
                store.close()
        for name in sorted(set(registered) | set(seen)):
            state = "unregistered" if name not in registered else registered[name] and "disabled"
            print(f"{name}\t{state}" if state else name)
        return 0
    registry = open_registry(config)
    try:
        if args.action == "create":
            registry.create_tenant(args.tenant)
        else:
            registry.set_tenant_disabled(args.tenant, args.action == "disable")
    finally:
        registry.close()
    print(f"tenant {args.tenant}: {args.action}d", file=sys.stderr)
    return 0


def _require_tenant(registry: Registry, tenant: str) -> None:
    if tenant not in {t["tenant"] for t in registry.tenants()}:
        raise CairnError(f"no tenant {tenant!r} (create it: cairn-hub tenants create {tenant})")


def _api_keys(args: argparse.Namespace, registry: Registry) -> int:
    if args.action == "create":
        _require_tenant(registry, args.tenant)
        text, key = registry.create_api_key(args.tenant, args.role, args.name)
        print(text)
        print(
            f"API key {key.id} ({key.role} of {key.tenant}): shown this once, stored hashed",
            file=sys.stderr,
        )
    elif args.action == "list":
        for k in registry.api_keys(args.tenant):
            row = {
                "id": k.id,
                "name": k.name,
                "role": k.role,
                "created_us": k.created_us,
                "revoked_us": k.revoked_us,
            }
            print(json.dumps(row))
    else:
        registry.revoke_api_key(args.tenant, args.key_id)
        print(f"API key {args.key_id} revoked", file=sys.stderr)
    return 0


def _revoke(args: argparse.Namespace, auth: TokenAuthority, registry: Registry) -> int:
    leeway_us = auth.leeway_s * 1_000_000
    if args.token is not None:
        for device in (False, True):
            try:
                facts = token_facts(auth, args.token.strip(), device=device)
            except AuthError:
                continue
            kind = "device" if device else "api"
            registry.revoke_token(
                facts.jti, facts.tenant, facts.expires_us + leeway_us, kind, facts.device
            )
            print(f"{kind} token {facts.jti} of {facts.tenant} revoked", file=sys.stderr)
            return 0
        raise CairnError("--token: not a token this hub signed")
    if not args.tenant:
        raise CairnError("--jti needs --tenant")
    kind = "device" if args.device_token else "api"
    until = time.time_ns() // 1000 + REVOKED_JTI_KEPT_S * 1_000_000 + leeway_us
    registry.revoke_token(args.jti, args.tenant, until, kind)
    print(f"{kind} token {args.jti} of {args.tenant} revoked", file=sys.stderr)
    return 0
