"""Run a fleet file: each device type over its transport, with a ledger.

Each device type sends over its own connection (MQTT client id ``{client_id}-{type}``; its own
ports, HTTP session or socket), paced from the same start or on one open-loop schedule, through
one loop for every transport (:func:`send_device_type`): parts of instants, the pacer
(``simulator.send.Pacer`` or ``simulator.pacing``'s open loop), the live display's counters
(``simulator.pacing.metered``) and the kind's sender (``simulator.transports``). The
:class:`~simulator.send.Ledger` regenerates acknowledged readings from the fleet file's seed
(for MQTT JSON and value payloads exactly as :meth:`FleetFile.truth` lists them; other formats
as the edge names them).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from contract.errors import CairnError
from contract.model import Value
from simulator.display import Progress, TransportCounts
from simulator.encoders import Wire
from simulator.fleetfile import Block, DeviceType, FleetFile
from simulator.pacing import OpenLoop, metered
from simulator.send import Ledger, Pacer
from simulator.transports import Part, WirePart, batch_of, block_rows, encoder_for, sender_for

__all__ = ["FilePart", "block_messages", "send_device_type", "send_fleet_file", "spans"]

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
    devices = dtype.device_ids
    stamps, nominal, streams = block_rows(blk)
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
class FilePart(Part):
    """One block of a device type's MQTT JSON or value messages (:func:`block_messages`)."""

    def _messages(self, blk: Block) -> Iterator[tuple[int, Wire, int | None]]:
        for msg, topic, payload, due, items in block_messages(self.dtype, blk):
            yield msg, Wire(topic, payload, items), due


def _parts(dtype: DeviceType, instants: range | None) -> Iterator[Part]:
    """A device type's instants (``None``: endless) in blocks, as the parts of its transport:
    MQTT JSON and value payloads made here, every other format by its encoder."""
    t = dtype.transport
    make: Callable[[int, int], Part]
    if t.kind == "mqtt" and t.payload in {"json", "value"}:
        size = dtype.block_size()

        def make(start: int, n: int) -> Part:
            return FilePart(dtype, start, n)
    else:
        encoder, batch = encoder_for(dtype), batch_of(dtype)
        size = max(batch, dtype.block_size() // batch * batch)

        def make(start: int, n: int) -> Part:
            return WirePart(dtype, start, n, encoder, batch)

    if instants is None:
        for start in itertools.count(0, size):
            yield make(start, size)
        return
    for start in range(instants.start, instants.stop, size):
        yield make(start, min(size, instants.stop - start))


def _prefetched(parts: Iterator[Part]) -> Iterator[Part]:
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
    """Send one device type's instants (``None``: endless) over its transport (``url``: the
    MQTT broker, for ``mqtt``); returns the ledger.

    Every transport the same way: parts (:func:`_parts`), paced (``paced``, ``speed``) or on
    ``open_loop``'s schedule, counted into ``counts`` (readings sent, and acknowledged as the
    acknowledgements arrive) and ``done``, each message handed to the kind's sender
    (:func:`simulator.transports.sender_for`), which acknowledges it into ``ledger``.
    """
    ledger = ledger if ledger is not None else Ledger()
    if instants is not None and len(instants) == 0:
        return ledger
    first = instants.start if instants is not None else 0
    first_ts = dtype.start_us + round(first * 1e6 / dtype.rate_hz)  # as instant_ts
    pacer: Pacer | None = Pacer(first_ts, speed) if paced else None

    def ack(part: Part, msg: int) -> None:
        before = ledger.count
        ledger._ack(part, msg)  # noqa: SLF001
        if counts is not None:
            counts.acked += ledger.count - before
        if progress is not None:
            progress(ledger.messages, ledger.count)

    parts = _parts(dtype, instants)
    sender = sender_for(dtype, url, client_id)
    await sender.open()
    try:
        if open_loop is not None:  # connected, the first block made, then wait for the others
            pacer = open_loop.pacer(first_ts)
            parts = _prefetched(parts)
            head = next(parts)
            if head.ready is not None:
                await asyncio.wrap_future(head.ready)
            parts = itertools.chain([head], parts)
            await open_loop.ready()
        messages: Iterator[tuple[Part, Iterator[tuple[int, Wire, int | None]]]]
        messages = ((p, p.wires()) for p in parts)
        if counts is not None or done is not None or open_loop is not None:
            messages = metered(dtype, messages, counts=counts, progress=done, open_loop=open_loop)
        for part, wires in messages:
            ledger._add_part(part)  # noqa: SLF001
            for msg, wire, due in wires:
                if pacer is not None and due is not None:
                    await pacer.wait(due)
                await sender.send(part, msg, wire, ack)
    finally:
        await sender.close()
    return ledger


def spans(fleet: FleetFile, seconds: float | None, count: int | None) -> dict[str, range | None]:
    """Each device type's instants: ``count`` of each, ``seconds`` of fleet time, or (both
    ``None``) endless (``None``)."""

    def span(t: DeviceType) -> range | None:
        if count is not None:
            return range(count)
        if seconds is not None:
            return range(t.instants_in(seconds))
        return None

    return {t.name: span(t) for t in fleet.device_types}


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
    which = spans(fleet, seconds, count)
    if open_loop is not None:
        for t in fleet.device_types:
            open_loop.expect(t, which[t.name])
    try:
        async with asyncio.TaskGroup() as group:
            for t in fleet.device_types:
                group.create_task(
                    send_device_type(
                        t,
                        url,
                        instants=which[t.name],
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
