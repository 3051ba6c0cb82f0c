"""The edge's wall clock jumps forwards and backwards (libfaketime, Debian's ``faketime``).

The edge runs with ``LD_PRELOAD=libfaketime.so.1`` and ``FAKETIME_TIMESTAMP_FILE``: the test
writes an offset (``+30d``, ``-2h``...) to the file and the edge's ``time.time()`` follows
within a second (``FAKETIME_CACHE_DURATION=1``). ``FAKETIME_DONT_FAKE_MONOTONIC=1`` leaves the
monotonic clock alone, as a real clock step does (NTP or an RTC-less box setting its clock at
boot moves only CLOCK_REALTIME); asyncio's timers run on the monotonic clock. (With it, Python's
``time.sleep`` fails with EINVAL under libfaketime 0.9.10; nothing in the edge calls it.)
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest

from simulator.send import Ledger
from tests.faults.harness import FaultLab, Load

pytestmark = pytest.mark.slow

LOAD = Load(devices=20, sensors=3, speed=40.0)
LIBFAKETIME = next(
    iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))),
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
)
DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600 * 1_000_000
_OFFSETS = {"+0": 0, "+30d": 30 * DAY_US, "-2h": -2 * HOUR_US}
"""The offsets the test writes, in microseconds."""


def _rows(path: Path) -> list[tuple[int, int, int, int]]:
    """``(seq, created_us, t_min, t_max)`` of every batch in the edge's buffer, by seq."""
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT seq, created_us, t_min, t_max FROM batches ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


def _hub_seqs(path: Path, edge: str) -> list[int]:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return [s for (s,) in conn.execute("SELECT seq FROM batches WHERE edge = ?", (edge,))]
    finally:
        conn.close()


async def test_clock_jumps_forward_and_back(
    make_lab: Callable[..., FaultLab], soak: float, tmp_path: Path
) -> None:
    """+30 days, then back to 2 hours before the true time (with the link cut meanwhile, so
    a backlog is sent under the wrong clock), then right again: every batch arrives once, in
    seq order the batches hold the readings in arrival order, and the jumps show in the
    buffer's ``created_us`` (the fault really happened)."""
    assert LIBFAKETIME.exists(), "libfaketime missing: bash scripts/setup.sh --test installs it"
    clock = tmp_path / "faketime"
    clock.write_text("+0\n")
    lab = make_lab(
        start=False,
        extra_buffer_toml="sent_history_s = 31536000\n",  # keep every row to look at
        env={
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(clock),
            "FAKETIME_CACHE_DURATION": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        },
    )
    lab.start()
    ledgers: list[Ledger] = []
    seconds = max(1.5, soak / 4)

    async def phase(offset: str) -> None:
        """Set the edge's clock, then send parts of the fleet (each waited for until the edge
        committed it) until a batch stamped with the new clock is in the buffer: libfaketime
        re-reads the file only every second, and a part may take less."""
        clock.write_text(offset + "\n")
        want = _OFFSETS[offset]
        for _attempt in range(60):
            first = sum(LOAD.instants(seconds) for _ in ledgers)
            ledgers.append(await lab.send(LOAD, seconds, first=first).finish())
            total = sum(ledger.count for ledger in ledgers)
            await lab.until(lambda t=total: lab.committed() >= t, f"commits at clock {offset}")
            newest = _rows(lab.edge_buffer_path)[-1][1]
            if abs(newest - time.time_ns() // 1000 - want) < HOUR_US:
                return
        pytest.fail(f"the edge's clock never showed {offset}")

    await phase("+0")
    await phase("+30d")
    lab.proxy.set_faults(cut=True)
    await phase("-2h")
    before = lab.forwarded()  # read before the heal: the backlog may go out at once
    lab.proxy.heal()
    await lab.until(
        lambda: lab.forwarded() > before and lab.unsent() == 0,
        "the backlog forwarded after the heal, clock still behind",
    )
    await phase("+0")
    await lab.settle(ledgers)
    lab.verdict("edge clock +30 d, then -2 h (libfaketime)", ledgers, rounds=2)

    rows = _rows(lab.edge_buffer_path)
    seqs = [r[0] for r in rows]
    assert seqs == list(range(1, len(rows) + 1)), "the buffer lost a batch row"
    assert sorted(_hub_seqs(lab.hub_store_path, lab.settings.edge_id)) == seqs
    steps = [b[1] - a[1] for a, b in pairwise(rows)]
    assert max(steps) > 29 * DAY_US, "no forward jump seen in created_us"
    assert min(steps) < -29 * DAY_US, "no backward jump seen in created_us"
    for a, b in pairwise(rows):
        assert a[3] <= b[2], f"batch {b[0]} holds readings older than batch {a[0]}"
