"""The fault suite's harness: a whole Cairn as real processes, a fault, and exact ledgers.

:class:`FaultLab` is a :class:`simulator.lab.Lab` (Mosquitto, nats-server, hub, edge) with a
:class:`~simulator.faultproxy.ThreadedFaultProxy` between the edge and NATS (the edge's
``nats_url`` points at the proxy; the hub talks to NATS directly). Simulated devices publish
a seeded fleet over MQTT QoS 1 with :func:`simulator.send.send_fleet`, whose ledger records
every reading the broker acknowledged. After the fault, :meth:`FaultLab.settle` waits for the
system to catch up and :meth:`FaultLab.verdict` compares the ledger with the hub's store as
sets (missing, twice, unknown) and records one row of the table printed at the end of the
session (``tests/faults/conftest.py``).

Waiting is by progress, never by sleeping: a fault starts and ends when a counter has moved
(readings committed at the edge, stored at the hub, the edge's backlog), so a slow machine
changes how long a test takes, not what it proves.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.faultproxy import ThreadedFaultProxy
from simulator.fleet import Fleet, FleetSpec
from simulator.lab import Lab, LabSettings
from simulator.send import Ledger, send_fleet
from simulator.servers import free_port
from tests.e2e_helpers import assert_exactly, async_wait_until, hub_count, stored_readings

TENANT = "faults"


@dataclass
class Outcome:
    """One row of the fault table."""

    fault: str
    rounds: int
    acknowledged: int
    stored: int
    lost: int
    duplicated: int
    unknown: int
    dropped: int
    """Readings the edge reports dropped by its buffer policy (``drop-oldest``)."""
    seed: int
    note: str = ""


RESULTS: list[Outcome] = []
"""Every verdict of this session, in order (printed by ``conftest.pytest_terminal_summary``)."""


@dataclass(frozen=True)
class Load:
    """A fleet sent paced: ``devices`` x ``sensors`` readings per instant, ``speed`` instants
    per second (one JSON message per device per instant)."""

    devices: int = 20
    sensors: int = 3
    speed: float = 40.0
    seed: int = 7
    mode: str = "json"
    """``json`` (one message per device per instant) or ``value`` (one per reading)."""
    paced: bool = True
    """``False``: as fast as the broker acknowledges (``speed`` only sizes ``instants``)."""

    def fleet(self) -> Fleet:
        return Fleet(
            FleetSpec(seed=self.seed, devices=self.devices, sensors=self.sensors, rate_hz=1.0)
        )

    def instants(self, seconds: float) -> int:
        return max(1, int(seconds * self.speed))

    @property
    def readings_per_s(self) -> float:
        return self.devices * self.sensors * self.speed


@dataclass
class Sending:
    """A fleet being sent in the background."""

    task: asyncio.Task[Ledger]
    ledger: Ledger
    instants: int
    started: float = field(default_factory=time.monotonic)

    async def finish(self) -> Ledger:
        return await self.task


FAST_FORWARDER = "backoff_initial_s = 0.05\nbackoff_max_s = 1.0\nack_timeout_s = 2.0\n"


class FaultLab(Lab):
    """A Lab with a fault proxy between edge and NATS (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        seed: int,
        edge_id: str = "edge-f",
        flush_interval_ms: int = 50,
        extra_buffer_toml: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            root,
            LabSettings(
                tenant=TENANT,
                edge_id=edge_id,
                flush_interval_ms=flush_interval_ms,
                max_batch_readings=2000,
                extra_buffer_toml=extra_buffer_toml,
                extra_forwarder_toml=FAST_FORWARDER,
                edge_log_level="INFO",
            ),
        )
        self.seed = seed
        self.rng = random.Random(seed)
        self.nats.port = free_port()  # fixed before start: the proxy forwards to it
        self.proxy = ThreadedFaultProxy(self.nats.port, seed=seed)
        self.edge_nats_url = self.proxy.url
        self.edge.env.update(env or {})
        self.missing: set[Any] = set()
        """After :meth:`verdict`: identities of the acknowledged readings the hub lacks."""
        self.kept: set[Any] = set()
        """After :meth:`verdict`: identities of the acknowledged readings the hub holds."""

    def stop(self) -> None:
        try:
            if self.hub.running:
                os.kill(self.hub.pid, signal.SIGCONT)  # in case a test left it stopped
            super().stop()
        finally:
            self.proxy.close()

    # ------------------------------------------------------------------ status

    def unsent(self) -> int:
        """Readings committed at the edge and not yet acknowledged by JetStream (-1: no answer)."""
        return int(self.edge_status().get("buffer", {}).get("readings_unsent", -1))

    def committed(self) -> int:
        """Readings the running edge has committed since it started."""
        return int(self.edge_status().get("counters", {}).get("readings-committed", -1))

    def forwarded(self) -> int:
        """Readings JetStream acknowledged to the running edge since it started."""
        return int(self.edge_status().get("forwarder", {}).get("readings_sent", -1))

    def edge_counter(self, key: str) -> int:
        return int(self.edge_status().get("counters", {}).get(key, 0))

    def rss_bytes(self) -> int:
        """Resident memory of the edge process now."""
        return rss_bytes(self.edge.pid)

    # --------------------------------------------------------------- workload

    def send(self, load: Load, seconds: float, *, first: int = 0) -> Sending:
        """Start sending ``seconds`` of ``load`` (from instant ``first``) in the background."""
        ledger = Ledger()
        n = load.instants(seconds)
        task = asyncio.create_task(
            send_fleet(
                load.fleet(),
                self.mosquitto.url,
                instants=range(first, first + n),
                mode=load.mode,
                paced=load.paced,
                speed=load.speed,
                ledger=ledger,
                client_id=f"faults-{first}",
            )
        )
        return Sending(task, ledger, n)

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
        """Poll a blocking predicate off the event loop (the sender keeps sending)."""
        await async_wait_until(predicate, timeout, what)

    async def progress(
        self,
        counter: Callable[[], int],
        more: int,
        what: str,
        unless: Callable[[], bool] | None = None,
    ) -> bool:
        """Wait until ``counter()`` has grown by ``more`` from now; ``False`` if ``unless()``
        came true first (e.g. the sender finished and the counter will not grow that far)."""
        start = await asyncio.to_thread(counter)
        reached = [False]

        def done() -> bool:
            reached[0] = counter() >= start + more
            return reached[0] or (unless is not None and unless())

        await self.until(done, f"{what} (+{more})")
        return reached[0]

    async def to_thread(self, func: Callable[[], object]) -> None:
        """Run a blocking lab call (start a process and wait for it) off the event loop."""
        await asyncio.to_thread(func)

    async def rounds(
        self,
        fault: str,
        load: Load,
        seconds: float,
        rounds: int,
        strike: Callable[[], Awaitable[object]],
        *,
        least: int = 1,
        most: int = 2000,
        counters: Sequence[Callable[[], int]] = (),
    ) -> Outcome:
        """Send ``seconds`` of ``load``; meanwhile, up to ``rounds`` times, wait for a random
        amount of progress (50..``most`` readings more, of a counter picked at random from
        ``counters``: readings stored at the hub by default) and ``await strike()``. Then
        settle and give the verdict; at least ``least`` strikes must have happened."""
        choices = list(counters) or [lambda: hub_count(self)]
        sending = self.send(load, seconds)
        done = 0
        while done < rounds and not sending.task.done():
            counter = self.rng.choice(choices)
            more = self.rng.randrange(50, most)

            def caught_up() -> bool:  # the sender is done and the edge has no backlog
                return sending.task.done() and self.unsent() == 0

            if not await self.progress(counter, more, f"progress ({fault})", caught_up):
                break
            await strike()
            done += 1
        ledger = await sending.finish()
        await self.settle([ledger])
        outcome = self.verdict(fault, [ledger], rounds=done)
        assert done >= least, f"the sender finished after {done} of {rounds} strikes"
        return outcome

    async def restart_edge(self) -> None:
        self.edge.kill()
        await asyncio.to_thread(self.start_edge)

    # ----------------------------------------------------------------- verdict

    async def settle(self, ledgers: list[Ledger], timeout: float = 90, dropped: int = 0) -> bool:
        """Wait until the hub holds as many readings as were acknowledged (less ``dropped``)
        and the edge has no backlog; ``False`` if that did not happen in time (the verdict
        then says what is missing)."""
        total = sum(ledger.count for ledger in ledgers) - dropped
        try:
            await self.until(
                lambda: hub_count(self) >= total and self.unsent() == 0,
                f"the hub to store {total} readings",
                timeout,
            )
        except AssertionError:
            return False
        return True

    def verdict(
        self,
        fault: str,
        ledgers: list[Ledger],
        *,
        rounds: int = 1,
        dropped: int = 0,
        note: str = "",
    ) -> Outcome:
        """Compare what the devices had acknowledged with what the hub stored; record the row
        and assert: nothing missing beyond ``dropped`` (what the edge says its policy
        dropped), nothing twice, nothing unknown."""
        acked_ledger = _merge(ledgers)
        acked = acked_ledger.keys()
        stored = stored_readings(self.hub_store_path, TENANT)
        missing = acked - stored.keys()
        outcome = Outcome(
            fault=fault,
            rounds=rounds,
            acknowledged=acked_ledger.count,
            stored=sum(stored.values()),
            lost=len(missing) - dropped,
            duplicated=sum(n - 1 for n in stored.values() if n > 1),
            unknown=len(stored.keys() - acked),
            dropped=dropped,
            seed=self.seed,
            note=note,
        )
        self.missing = missing
        self.kept = acked & stored.keys()
        RESULTS.append(outcome)
        print(f"fault {fault}: {outcome} (replay with --fault-seed {self.seed})")
        if not dropped:
            assert_exactly(acked_ledger, stored)
        assert outcome.lost == 0, f"{outcome.lost} readings lost beyond the {dropped} dropped"
        assert outcome.duplicated == 0
        assert outcome.unknown == 0
        return outcome


def _merge(ledgers: list[Ledger]) -> Ledger:
    if len(ledgers) == 1:
        return ledgers[0]
    merged = Ledger()
    for ledger in ledgers:
        merged.add(ledger.readings)
    return merged


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def describe(status: dict[str, Any]) -> str:
    """The parts of an edge status worth printing on a failure."""
    return str({k: status.get(k) for k in ("buffer", "counters", "forwarder")})
