"""``cairn-hub nats-auth write|show``: the NATS server's authorization, before the hub runs.

nats-server refuses to start if its config ``include``\\ s a file that does not exist, and
with ``[nats] manage_authorization`` the hub writes that file. ``write`` writes it (mode 0600;
the hub's own nkey is made on first use) so the server can start before the hub's first run;
``--reload`` also signals the server in ``[nats] pid_file`` if the text changed (what the
running hub does by itself). ``show`` prints the file's path and the hub's NATS user.
"""

from __future__ import annotations

import argparse

from contract.cli import add_config_option
from contract.errors import ConfigError
from hub.config import HubConfig
from hub.natsauth import authorization_manager, hub_nkey_public
from hub.service import open_registry

__all__ = ["add_parsers", "command"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    nats_auth = sub.add_parser("nats-auth", help="the NATS server's authorization file")
    nats_sub = nats_auth.add_subparsers(dest="action", required=True, metavar="ACTION")
    write = nats_sub.add_parser(
        "write", help="write the authorization [nats] implies (before nats-server starts)"
    )
    add_config_option(write, "hub", log_level=False)
    write.add_argument(
        "--reload",
        action="store_true",
        help="signal the nats-server in [nats] pid_file if the file changed",
    )
    show = nats_sub.add_parser("show", help="print the file's path and the hub's NATS user")
    add_config_option(show, "hub", log_level=False)


def command(config: HubConfig, args: argparse.Namespace) -> int:
    if not config.nats.manage_authorization:
        raise ConfigError(
            "nats.manage_authorization", "is off: the hub keeps no NATS authorization"
        )
    state = config.hub.state_dir
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("hub.state_dir", f"cannot create {state}: {exc.strerror}") from exc
    if args.action == "write":
        registry = open_registry(config)
        try:
            manager = authorization_manager(config, registry)
            written = manager.sync(reload=args.reload)
        finally:
            registry.close()
        if args.reload and manager.reloader.last_error is not None:
            raise ConfigError("nats.pid_file", manager.reloader.last_error)
        done = "wrote" if written else "unchanged"
        print(f"{done} {manager.path} ({manager.edge_users} edge users)")
    else:
        print(f"authorization-file {config.authorization_path}")
    print(f"hub-nkey           {hub_nkey_public(state)}")
    return 0
