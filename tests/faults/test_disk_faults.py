"""The edge's disk fails under it: ENOSPC and I/O errors on the buffer's writes, injected into
the real edge process with libfiu (``fiu-run -x``: an LD_PRELOAD library that makes chosen
libc calls fail; ``fiu-ctrl`` turns failure points on and off in the running process).

SQLite writes its WAL with ``pwrite64`` (failure point ``posix/io/rw/pwrite``) and syncs with
``fdatasync``; the edge writes nothing else with them (its log goes through ``write``).
Tried for real first: with ``posix/io/rw/pwrite`` on and ``failinfo=28``, a commit fails with
``database or disk is full``; with ``failinfo=5``, ``disk I/O error``; turned off, the same
connection commits again.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e_helpers import hub_count
from tests.faults.harness import FaultLab, Load

pytestmark = pytest.mark.slow

LOAD = Load(devices=20, sensors=3, speed=40.0)
ENOSPC = 28
EIO = 5
_POINTS = {
    ENOSPC: ("posix/io/rw/pwrite", "posix/io/rw/pwritev"),
    EIO: ("posix/io/rw/pwrite", "posix/io/rw/pwritev", "posix/io/sync/fdatasync"),
}


def _fiu_run() -> str:
    found = shutil.which("fiu-run")
    assert found, "fiu-run missing: bash scripts/setup.sh --test installs fiu-utils"
    return found


class Fiu:
    """libfiu failure points of one process started under ``fiu-run``."""

    def __init__(self, ctl: Path) -> None:
        self.ctl = ctl

    def prefix(self) -> list[str]:
        return [_fiu_run(), "-x", "-f", str(self.ctl)]

    def _ctrl(self, pid: int, *commands: str) -> None:
        args = ["fiu-ctrl", "-f", str(self.ctl)]
        for c in commands:
            args += ["-c", c]
        out = subprocess.run([*args, str(pid)], capture_output=True, text=True, check=True)
        assert "error" not in out.stdout + out.stderr, out.stdout + out.stderr

    def fail(self, pid: int, errno: int) -> None:
        self._ctrl(pid, *(f"enable name={p},failinfo={errno}" for p in _POINTS[errno]))

    def clear(self, pid: int, errno: int) -> None:
        self._ctrl(pid, *(f"disable name={p}" for p in _POINTS[errno]))


@pytest.mark.parametrize(("errno", "name"), [(ENOSPC, "ENOSPC"), (EIO, "EIO")])
async def test_buffer_write_errors(
    make_lab: Callable[..., FaultLab], soak: float, tmp_path: Path, errno: int, name: str
) -> None:
    """Round 1: the buffer's writes fail while devices keep sending; the edge stays up,
    reports the error, acknowledges nothing it could not commit (the broker keeps those
    messages), and commits again by itself once the failure point is off. Round 2: the
    same, then kill -9 while the disk still fails: what the edge had not committed comes
    again from the broker to the restarted edge."""
    fiu = Fiu(tmp_path / "fiu")
    lab = make_lab(start=False)
    lab.edge.prefix = fiu.prefix()
    lab.start()
    sending = lab.send(LOAD, max(6.0, soak))
    for kill in (False, True):
        await lab.progress(lambda: hub_count(lab), lab.rng.randrange(200, 2000), "forwarding")
        pid = lab.edge.pid
        accepted = lab.edge_status()["sources"]["mqtt"]["accepted"]
        fiu.fail(pid, errno)
        await lab.progress(lambda: lab.edge_counter("commit-errors"), 3, "failing commits")
        status = lab.edge_status()
        assert status["buffer"]["state"].startswith("disk-error"), status["buffer"]
        # Nothing committed, so nothing acknowledged to the broker, while the disk fails.
        stuck = status["sources"]["mqtt"]["accepted"]
        await lab.progress(lambda: lab.edge_counter("commit-errors"), 2, "more failing commits")
        assert lab.edge_status()["sources"]["mqtt"]["accepted"] == stuck
        assert stuck >= accepted
        if kill:
            lab.edge.kill()
            lab.edge.prefix = []
            await lab.to_thread(lab.start_edge)
        else:
            fiu.clear(pid, errno)
            await lab.until(lambda: lab.edge_status()["buffer"]["state"] == "ok", "recovery")
            assert lab.edge.running
            assert lab.edge.pid == pid
    ledger = await sending.finish()
    await lab.settle([ledger])
    lab.verdict(f"buffer writes fail with {name} (libfiu)", [ledger], rounds=2)
