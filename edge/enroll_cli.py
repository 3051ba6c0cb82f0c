"""The ``enroll`` and ``rotate-key`` commands of ``cairn-edge`` (:mod:`edge.enroll`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Final

from contract.cli import add_config_option
from edge.enroll import data_dir_of, enroll, rotate_key

__all__ = ["COMMANDS", "add_parsers", "command"]

COMMANDS: Final = frozenset({"enroll", "rotate-key"})


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    enroll_p = sub.add_parser(
        "enroll", help="make this edge's key and enroll it at the hub with a one-time token"
    )
    enroll_p.add_argument("--hub", required=True, help="the hub's API URL (https://host:port)")
    enroll_p.add_argument("--token", required=True, help="the enrollment token from the hub")
    trust = enroll_p.add_mutually_exclusive_group()
    trust.add_argument("--ca", type=Path, default=None, help="the hub's CA certificate (PEM)")
    trust.add_argument(
        "--ca-pin", default=None, help="SHA-256 fingerprint of the hub's CA (sha256:<hex>)"
    )
    enroll_p.add_argument(
        "--force", action="store_true", help="enroll again although this edge is enrolled"
    )
    rotate = sub.add_parser(
        "rotate-key", help="replace this edge's key with a new one (the hub must be reachable)"
    )
    rotate.add_argument(
        "--hub", default=None, help="the hub's API URL (default: the one it enrolled with)"
    )
    for p in (enroll_p, rotate):
        add_config_option(p, "edge")


def command(args: argparse.Namespace) -> int:
    data_dir = data_dir_of(args.config)
    if args.command == "enroll":
        done = enroll(
            data_dir, args.hub, args.token, ca=args.ca, ca_pin=args.ca_pin, force=args.force
        )
        print(f"enrolled  edge {done.edge} of tenant {done.tenant}")
        print(f"key       {done.key} ({data_dir / 'edge.key'}, mode 0600, stays on this box)")
        print(f"nats      {done.nats_url or '(from forwarder.nats_url)'}")
        print(f"ca        {done.ca_file or '(none: the hub runs without TLS)'}")
        return 0
    fingerprint = rotate_key(data_dir, hub=args.hub)
    print(f"rotated   new key {fingerprint}; a running edge uses it within seconds")
    return 0
