"""Run a fleet file: each device type over its transport (MQTT for now), with a ledger.

Each device type sends over its own connection (client id ``{client_id}-{type}``), paced from
the same start, through :func:`simulator.send.publish_parts`: the same publisher, pacing and
:class:`~simulator.send.Ledger` as ``send_fleet``. The ledger regenerates acknowledged readings
from the fleet file's seed, exactly as :meth:`FleetFile.truth` lists them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from contract.errors import CairnError
from contract.model import Value
from simulator.display import Progress, TransportCounts
from simulator.fleetfile import Block, DeviceType, FleetFile
from simulator.pacing import OpenLoop, metered
from simulator.send import Ledger, Pacer, publish_parts

__all__ = ["FilePart", "block_messages", "send_device_type", "send_fleet_file"]

_Item = tuple[str, str, int, Value]
_Message = tuple[int, str, bytes, int | None, list[_Item]]


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _dumps(doc: object) -> bytes:
    return _ENCODER.encode(doc).encode()


def block_messages(dtype: DeviceType, blk: Block) -> Iterator[_Message]:
    """``(index, topic, payload, due, readings)`` of a block's messages, in sending order.

    ``due`` (the instant's true time) is set on the first message of each instant. Readings
    that are not emitted (dropouts) are left out; a device with nothing to send at an instant
    sends no message.
    """
    t = dtype.transport
    stamps = [ts.tolist() for ts in blk.ts_us]
    nominal = blk.nominal_us.tolist()
    devices = dtype.device_ids
    # per device: (key, values, emitted) of each stream, as plain lists (fast to index)
    streams = [
        [(key, blk.values[d][key], col.emitted.tolist()) for key, col in blk.columns[d].items()]
        for d in range(len(devices))
    ]
    msg = 0
    for k in range(blk.n):
        due: int | None = nominal[k]
        for d, device in enumerate(devices):
            ts = stamps[d][k]
            present = [(key, vals[k]) for key, vals, sent in streams[d] if sent[k]]
            if not present:
                continue
            if t.payload == "json":
                doc: dict[str, Value] = {"ts": ts}
                doc.update(present)
                items = [(device, key, ts, v) for key, v in present]
                yield msg, t.topic_for(device), _dumps(doc), due, items
                due = None
                msg += 1
                continue
            for key, v in present:
                payload = _dumps({"ts": ts, "value": v})
                yield msg, t.topic_for(device, key), payload, due, [(device, key, ts, v)]
                due = None
                msg += 1


@dataclass(eq=False)
class FilePart:
    """One block of a device type's messages and which were acknowledged."""

    dtype: DeviceType
    start: int
    n: int
    counts: dict[int, int] = field(default_factory=dict)
    """Readings per message sent and not yet acknowledged."""
    acked: list[list[int]] = field(default_factory=list)
    ready: Future[Block] | None = None
    """The block, being generated ahead in a worker thread (see ``_prefetched``)."""

    def messages(self) -> Iterator[tuple[int, str, bytes, int | None]]:
        if self.ready is not None:
            blk, self.ready = self.ready.result(), None
        else:
            blk = self.dtype.block(self.start, self.n)
        for msg, topic, payload, due, items in block_messages(self.dtype, blk):
            self.counts[msg] = len(items)
            yield msg, topic, payload, due

    def readings_in(self, msg: int) -> int:
        return self.counts.pop(msg, 0)

    def record(self, msg: int) -> None:
        if self.acked and self.acked[-1][1] == msg:
            self.acked[-1][1] = msg + 1
        else:
            self.acked.append([msg, msg + 1])

    def items(self) -> Iterator[_Item]:
        ranges = sorted(self.acked)
        if not ranges:
            return
        pos = 0
        blk = self.dtype.block(self.start, self.n)
        for msg, _topic, _payload, _due, items in block_messages(self.dtype, blk):
            while pos < len(ranges) and ranges[pos][1] <= msg:
                pos += 1
            if pos == len(ranges):
                return
            if ranges[pos][0] <= msg:
                yield from items


def _parts(dtype: DeviceType, instants: range | None) -> Iterator[FilePart]:
    size = dtype.block_size()
    if instants is None:
        for start in itertools.count(0, size):
            yield FilePart(dtype, start, size)
        return
    for start in range(instants.start, instants.stop, size):
        yield FilePart(dtype, start, min(size, instants.stop - start))


def _prefetched(parts: Iterator[FilePart]) -> Iterator[FilePart]:
    """The parts, each one's block generated in a worker thread while the one before it is
    sent: a large fleet's next block (seconds of work) does not stall an open-loop schedule."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="sim-block")
    try:
        nxt = next(parts, None)
        while nxt is not None:
            cur = nxt
            if cur.ready is None:
                cur.ready = pool.submit(cur.dtype.block, cur.start, cur.n)
            nxt = next(parts, None)
            if nxt is not None:
                nxt.ready = pool.submit(nxt.dtype.block, nxt.start, nxt.n)
            yield cur
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


async def send_device_type(
    dtype: DeviceType,
    url: str,
    *,
    instants: range | None,
    paced: bool = True,
    speed: float = 1.0,
    ledger: Ledger | None = None,
    client_id: str = "cairn-sim",
    progress: Callable[[int, int], None] | None = None,
    counts: TransportCounts | None = None,  # for the live display (simulator.display)
    done: Progress | None = None,  # instants done, for its progress bar
    open_loop: OpenLoop | None = None,  # a clock-driven schedule (simulator.pacing)
) -> Ledger:
    """Send one device type's instants (``None``: endless) over MQTT; returns the ledger."""
    if dtype.transport.kind != "mqtt" or dtype.transport.payload == "senml":
        from simulator import transports  # noqa: PLC0415 - the other kinds' senders

        return await transports.send_device_type(
            dtype,
            url,
            instants=instants,
            paced=paced,
            speed=speed,
            ledger=ledger,
            client_id=client_id,
            progress=progress,
        )
    ledger = ledger if ledger is not None else Ledger()
    first = instants.start if instants is not None else 0
    if instants is not None and len(instants) == 0:
        return ledger
    first_ts = dtype.start_us + round(first * 1e6 / dtype.rate_hz)  # as instant_ts
    pacer = Pacer(first_ts, speed) if paced else None
    parts = ((part, part.messages()) for part in _parts(dtype, instants))
    if open_loop is not None:
        pacer = open_loop.pacer(first_ts)
        parts = ((part, part.messages()) for part in _prefetched(_parts(dtype, instants)))
    if counts is not None or done is not None or open_loop is not None:
        parts = metered(dtype, parts, counts=counts, progress=done, open_loop=open_loop)  # type: ignore[assignment]
    return await publish_parts(
        url,
        parts,
        pacer=pacer,
        qos=dtype.transport.qos,
        ledger=ledger,
        client_id=client_id,
        progress=progress,
    )


async def send_fleet_file(
    fleet: FleetFile,
    url: str,
    *,
    seconds: float | None = None,
    count: int | None = None,
    paced: bool = True,
    speed: float = 1.0,
    ledger: Ledger | None = None,
    client_id: str = "cairn-sim",
    counters: dict[str, TransportCounts] | None = None,
    done: Progress | None = None,
    open_loop: OpenLoop | None = None,
) -> Ledger:
    """Send every device type concurrently: ``seconds`` of fleet time, ``count`` instants of
    each type, or (both ``None``) forever. Returns the shared ledger.

    ``counters`` (transport kind -> counts) and ``done`` feed the live display; ``open_loop``
    paces every type on one clock-driven schedule (``simulator.pacing``)."""
    ledger = ledger if ledger is not None else Ledger()

    def span(t: DeviceType) -> range | None:
        if count is not None:
            return range(count)
        if seconds is not None:
            return range(t.instants_in(seconds))
        return None

    if open_loop is not None:
        for t in fleet.device_types:
            open_loop.expect(t, span(t))
    try:
        async with asyncio.TaskGroup() as group:
            for t in fleet.device_types:
                group.create_task(
                    send_device_type(
                        t,
                        url,
                        instants=span(t),
                        paced=paced,
                        speed=speed,
                        ledger=ledger,
                        client_id=f"{client_id}-{t.name}",
                        counts=(
                            counters.setdefault(t.transport.kind, TransportCounts())
                            if counters is not None
                            else None
                        ),
                        done=done,
                        open_loop=open_loop,
                    ),
                    name=f"send-{t.name}",
                )
    except ExceptionGroup as group_error:
        _raise_first_cairn_error(group_error)
        raise
    return ledger


def _raise_first_cairn_error(group: BaseExceptionGroup[BaseException]) -> None:
    """A transport's own error (one line for the command line), not the task group's."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            _raise_first_cairn_error(exc)
        elif isinstance(exc, CairnError):
            raise exc
