"""``cairn-edge``: run the edge service, or look into its buffer.

::

    cairn-edge [--log-level LEVEL] run --config FILE      run until SIGTERM/SIGINT (exit 0)
    cairn-edge [--log-level LEVEL] status --config FILE   counts from the buffer file (read-only;
                                                          works while the edge runs) [--json]
    cairn-edge enroll --config FILE --hub URL --token T [--ca FILE | --ca-pin SHA256] [--force]
    cairn-edge rotate-key --config FILE                   a new key, proven by the old one

An error Cairn expects (a bad config key, an unusable buffer file...) prints one line
``cairn-edge: <message>`` to stderr and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from contract.cli import add_config_option, add_log_level, run_command, setup_logging
from edge import enroll_cli
from edge.buffer import BufferStats, read_stats
from edge.config import load_config
from edge.service import run_edge

__all__ = ["main"]

_PROG: Final = "cairn-edge"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG, description="Cairn edge gateway: sensors -> SQLite buffer -> NATS JetStream."
    )
    add_log_level(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the edge service until SIGTERM or SIGINT")
    status = sub.add_parser("status", help="print the buffer's counts (read-only)")
    for p in (run, status):
        add_config_option(p, "edge")
    status.add_argument("--json", action="store_true", help="print the counts as JSON")
    enroll_cli.add_parsers(sub)
    return parser


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def _print_status(edge: str, tenant: str, path: Path, st: BufferStats) -> None:
    oldest = ""
    if st.oldest_unsent_us is not None:
        age = max(0.0, time.time() - st.oldest_unsent_us / 1e6)
        oldest = f", oldest {age:.0f} s old"
    print(f"edge      {edge} (tenant {tenant})")
    print(f"buffer    {path} ({_human_bytes(st.file_bytes)})")
    print(
        f"unsent    {st.batches_unsent:,} batches, {st.readings_unsent:,} readings,"
        f" {_human_bytes(st.bytes_unsent)}{oldest}"
    )
    print(f"sent      {st.batches_sent:,} batches, {st.readings_sent:,} readings")
    print(f"last seq  {st.last_seq}")


def _command(args: argparse.Namespace) -> int:
    if args.command in enroll_cli.COMMANDS:
        return enroll_cli.command(args)
    config = load_config(args.config)
    if args.command == "status":
        st = read_stats(config.edge.buffer_path)
        if args.json:
            doc = {"edge": config.edge.id, "tenant": config.edge.tenant, "buffer": st.as_json()}
            print(json.dumps(doc))
        else:
            _print_status(config.edge.id, config.edge.tenant, config.edge.buffer_path, st)
        return 0
    asyncio.run(run_edge(config))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cairn-edge``; returns the exit status."""
    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    return run_command(_PROG, lambda: _command(args))
