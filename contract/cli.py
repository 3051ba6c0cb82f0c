"""What every Cairn command line does the same way: logging setup and one-line errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Final

from contract.errors import CairnError

__all__ = ["LOG_LEVELS", "run_command", "setup_logging"]

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


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
