"""Fixtures of the fault suite, and the table of verdicts printed at the end of the session.

``--fault-seed N`` (or ``CAIRN_FAULT_SEED``) fixes the seed of every random choice (kill
points, loss decisions); without it a seed is drawn and printed with each verdict and failure.
``--soak SECONDS`` (or ``CAIRN_SOAK_S``) makes each fault test run about that long (more
rounds, longer outages) instead of the few seconds of the CI run. The options are declared in
``tests/conftest.py``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import RESULTS, FaultLab


def _option(config: pytest.Config, name: str, env: str) -> str | None:
    value = config.getoption(name, default=None)
    if value is None:
        value = os.environ.get(env) or None
    return None if value is None else str(value)


@pytest.fixture
def fault_seed(request: pytest.FixtureRequest) -> int:
    """The seed of this test's random choices (printed: replay with ``--fault-seed``)."""
    given = _option(request.config, "--fault-seed", "CAIRN_FAULT_SEED")
    seed = int(given) if given is not None else random.SystemRandom().randrange(1 << 31)
    print(f"fault seed {seed} (replay with --fault-seed {seed})")
    return seed


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> float:
    """Seconds a soak run asks each fault test to last; 0 in the ordinary (CI) run."""
    given = _option(request.config, "--soak", "CAIRN_SOAK_S")
    return float(given) if given is not None else 0.0


@pytest.fixture
def make_lab(tmp_path: Path, fault_seed: int) -> Iterator[Callable[..., FaultLab]]:
    """``make_lab(**kwargs)``: a started :class:`FaultLab` (stopped after the test)."""
    labs: list[FaultLab] = []

    def make(*, start: bool = True, **kwargs: Any) -> FaultLab:
        lab = FaultLab(tmp_path / f"lab{len(labs)}", seed=fault_seed, **kwargs)
        labs.append(lab)
        if start:
            lab.start()
        return lab

    yield make
    for lab in labs:
        lab.stop()


_COLUMNS = (
    ("fault", "fault"),
    ("rounds", "rounds"),
    ("acknowledged", "acknowledged"),
    ("stored", "stored"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("dropped", "dropped by policy"),
    ("seed", "seed"),
)


def _cell(outcome: object, attr: str) -> str:
    value = getattr(outcome, attr)
    return f"{value:,}" if attr not in {"fault", "seed"} else str(value)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault table: one row per verdict of this session."""
    if not RESULTS:
        return
    rows = [[_cell(r, attr) for attr, _ in _COLUMNS] for r in RESULTS]
    heads = [head for _, head in _COLUMNS]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]

    def line(cells: list[str]) -> str:
        padded = (
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    terminalreporter.write_sep("=", "fault suite")
    terminalreporter.write_line(line(heads))
    terminalreporter.write_line("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        terminalreporter.write_line(line(row))
    notes = [f"{r.fault}: {r.note}" for r in RESULTS if r.note]
    for note in notes:
        terminalreporter.write_line(note)
