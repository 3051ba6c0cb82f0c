"""``cairn-hub pki init|show``: the hub's CA and server certificates, before the hub runs.

``init`` makes (or checks and renews) what ``[tls]`` asks for, so that the NATS server can be
configured with its certificate before the hub's first start; ``show`` prints what is there.
Both print the file paths and the CA pin (``sha256:<hex>``) edges check at enrollment.
"""

from __future__ import annotations

import argparse

from contract.cli import add_config_option
from contract.errors import ConfigError
from hub.config import HubConfig
from hub.pki import HubPki, ensure_pki, read_pki

__all__ = ["add_parsers", "command"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pki = sub.add_parser("pki", help="the hub's CA and TLS server certificates")
    pki_sub = pki.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("init", "make or renew the CA and server certificates [tls] asks for; print them"),
        ("show", "print the CA pin and the certificate files (makes nothing)"),
    ):
        p = pki_sub.add_parser(action, help=text)
        add_config_option(p, "hub", log_level=False)


def command(config: HubConfig, args: argparse.Namespace) -> int:
    if args.action == "init":
        pki = ensure_pki(config)
    else:
        found = read_pki(config)
        if found is None:
            raise ConfigError(
                "hub.state_dir",
                f"no CA in {config.hub.state_dir / 'pki'} yet: run `cairn-hub pki init`",
            )
        pki = found
    print(_describe(pki))
    return 0


def _describe(pki: HubPki) -> str:
    lines = [
        f"ca-pin     {pki.pin}",
        f"ca-cert    {pki.ca_cert}" + ("" if pki.own_ca else "  (the operator's CA)"),
    ]
    for name, server in (("nats", pki.nats), ("api", pki.api)):
        if server is None:
            lines.append(f"{name + '-cert':<10} (none)")
            continue
        whose = "" if server.issued else "  (the operator's)"
        lines.append(f"{name + '-cert':<10} {server.cert}{whose}")
        lines.append(f"{name + '-key':<10} {server.key}")
    return "\n".join(lines)
