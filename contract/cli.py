"""What every Cairn command line does the same way: the ``--config``/``--log-level`` options,
logging setup and one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

from contract.errors import CairnError

__all__ = ["LOG_LEVELS", "add_config_option", "add_log_level", "run_command", "setup_logging"]

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
_LEVEL_HELP: Final = f"log level ({', '.join(LOG_LEVELS)}; default INFO)"


def add_log_level(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--log-level``: on the ``top`` parser it defaults to INFO; on a subcommand it is set
    only when given, so it overrides the top-level one (``cmd --log-level X run`` and
    ``cmd run --log-level X`` both work)."""
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO" if top else argparse.SUPPRESS,
        help=_LEVEL_HELP,
    )


def add_config_option(
    parser: argparse.ArgumentParser, side: str, *, log_level: bool = True
) -> None:
    """A subcommand's required ``--config FILE`` (``side``: ``edge`` or ``hub``) and, with
    ``log_level``, its own ``--log-level``."""
    parser.add_argument("--config", type=Path, required=True, help=f"the {side}'s TOML config file")
    if log_level:
        add_log_level(parser)


def setup_logging(level: str) -> None:
    """Log lines to stderr: time, level, logger, message."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if level != "DEBUG":
        # gmqtt logs every lost connection with a traceback; our sources log it in one line.
        logging.getLogger("gmqtt").setLevel(logging.ERROR)


def _first_cairn_error(group: BaseExceptionGroup[BaseException]) -> CairnError | None:
    for exc in group.exceptions:
        if isinstance(exc, CairnError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_cairn_error(exc)
            if found is not None:
                return found
    return None


def run_command(prog: str, command: Callable[[], int]) -> int:
    """Run ``command``; a :class:`CairnError` (also inside a task group) becomes one line on
    stderr and exit status 2, never a traceback."""
    try:
        return command()
    except CairnError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except ExceptionGroup as group:  # raised by a task of a service
        first = _first_cairn_error(group)
        if first is None:
            raise
        print(f"{prog}: {first}", file=sys.stderr)
        return 2
