"""A TCP fault proxy on 127.0.0.1: the link between two real processes, made to misbehave.

This kernel has no netem and traffic must never leave loopback (``/work/shared/FACTS.md``), so
the fault suite puts this proxy between the edge and the NATS server and tells it how the link
behaves. Each accepted connection opens one upstream connection; bytes are copied in both
directions through a queue per direction, so a fault applies to bytes in flight too.

Link faults (:class:`LinkFaults`, changed at any time with :meth:`FaultProxy.set_faults`):

- ``cut`` (a partition): nothing flows in either direction; connections stay open and bytes
  wait (TCP would retransmit them), new connections are accepted and wait too. When the cut is
  lifted, everything held flows on, in order. ``refuse`` instead closes new connections at once
  with a reset (a host that is down or a firewall that rejects).
- ``delay_s`` + ``jitter_s``: each chunk leaves ``delay_s + uniform(0, jitter_s)`` after it
  arrived, never before the chunk ahead of it (TCP keeps order).
- ``rate_bps``: each direction of each connection is throttled to that many bytes per second.
- ``loss``: TCP cannot lose bytes silently: a lost segment is retransmitted (a stall) and a
  link that loses too much is given up (a reset). So a lossy link is modelled per chunk: with
  probability ``loss`` the chunk is held for a retransmission stall of
  ``uniform(stall_min_s, stall_max_s)``, and with probability ``loss * reset_share`` the whole
  connection is reset instead (the client must reconnect and resend).

:meth:`FaultProxy.reset` resets every current connection now (``SO_LINGER`` 0: the peers get a
TCP RST, not an orderly FIN). Randomness comes from one ``random.Random(seed)``: the same seed
gives the same sequence of decisions (timing still depends on the machine).

Control: in-process (``await proxy.set_faults(...)``) or, from another thread or a blocking
test, :class:`ThreadedFaultProxy`, which runs the proxy on an event loop of its own so that a
test blocking its own loop never stalls the link by accident.

``on_chunk`` hooks (per direction) see every chunk and return what to pass on: a protocol-aware
test proxy (``tests/test_edge_support.py``'s ``MqttProxy``) builds on this.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Self, TypeVar

__all__ = ["Conn", "FaultProxy", "LinkFaults", "ProxyStats", "ThreadedFaultProxy"]

_CHUNK: Final = 65536
_QUEUE_CHUNKS: Final = 4
"""Chunks held per direction before the proxy stops reading (like a socket buffer: a slow or
cut link pushes back on the sender instead of buffering without end)."""
_T = TypeVar("_T")

Transform = Callable[["Conn", bytes], bytes]
"""``(connection, chunk) -> bytes to pass on`` (``b""`` passes nothing)."""


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """How the link behaves now (the default: a perfect link)."""

    cut: bool = False
    """A partition: nothing flows, connections stay open, bytes wait."""
    refuse: bool = False
    """New connections are reset at once (existing ones are left alone; see ``reset``)."""
    delay_s: float = 0.0
    """Fixed one-way delay of every chunk, seconds."""
    jitter_s: float = 0.0
    """Extra one-way delay, uniform in ``[0, jitter_s]`` per chunk (order is kept)."""
    rate_bps: float = 0.0
    """Bytes per second per direction of each connection; 0 = unlimited."""
    loss: float = 0.0
    """Probability per chunk of a loss event (a stall, or a reset; see the module docstring)."""
    reset_share: float = 0.0
    """Share of loss events that reset the connection rather than stall it, 0..1."""
    stall_min_s: float = 0.2
    stall_max_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("delay_s", "jitter_s", "rate_bps", "stall_min_s", "stall_max_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not 0 <= self.loss <= 1 or not 0 <= self.reset_share <= 1:
            raise ValueError("loss and reset_share are probabilities (0..1)")
        if self.stall_max_s < self.stall_min_s:
            raise ValueError("stall_max_s must be at least stall_min_s")

    def describe(self) -> str:
        """A short label such as ``delay 50ms+-20ms, 64000 B/s`` (``pass`` for none)."""
        parts: list[str] = []
        if self.cut:
            parts.append("cut")
        if self.refuse:
            parts.append("refuse")
        if self.delay_s or self.jitter_s:
            parts.append(f"delay {self.delay_s * 1000:.0f}ms+{self.jitter_s * 1000:.0f}ms")
        if self.rate_bps:
            parts.append(f"{self.rate_bps:.0f} B/s")
        if self.loss:
            parts.append(f"loss {self.loss:g} (resets {self.reset_share:g})")
        return ", ".join(parts) or "pass"


@dataclass(slots=True)
class ProxyStats:
    """What the proxy has done since it started."""

    accepted: int = 0
    refused: int = 0
    resets: int = 0
    """Connections reset by :meth:`FaultProxy.reset` or a loss event."""
    stalls: int = 0
    """Loss events that held a chunk (a retransmission stall)."""
    bytes_up: int = 0
    """Bytes passed from clients to the upstream server."""
    bytes_down: int = 0


@dataclass(eq=False)
class Conn:
    """One proxied connection: the client side, the upstream side and their pumps."""

    number: int
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False

    def abort(self, *, rst: bool = True) -> None:
        """Close both sides now; with ``rst``, with a TCP reset (SO_LINGER 0)."""
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if rst:
                _linger_zero(writer)
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


def _linger_zero(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class FaultProxy:
    """Listens on 127.0.0.1 and forwards to ``upstream_port`` (see the module docstring)."""

    def __init__(
        self,
        upstream_port: int,
        *,
        port: int = 0,
        seed: int = 0,
        upstream_host: str = "127.0.0.1",
        up: Transform | None = None,
        down: Transform | None = None,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = port
        self.seed = seed
        self.faults = LinkFaults()
        self.stats = ProxyStats()
        self._up = up
        self._down = down
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._conns: set[Conn] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>`` (the proxy is protocol-agnostic; NATS is its main use)."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._conns)

    async def start(self) -> Self:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = [t for c in self._conns for t in c.tasks]
        for conn in list(self._conns):
            conn.abort(rst=False)
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ control

    async def set_faults(self, faults: LinkFaults | None = None, **changes: Any) -> LinkFaults:
        """Make the link behave as ``faults`` (a perfect link if ``None``), with ``changes``
        applied on top (``set_faults(cut=True)``); returns the previous behaviour."""
        previous = self.faults
        self.faults = dataclasses.replace(faults or LinkFaults(), **changes)
        if self.faults.cut:
            self._flowing.clear()
        else:
            self._flowing.set()
        self._changed.set()
        self._changed = asyncio.Event()
        return previous

    async def reset(self) -> int:
        """Reset (TCP RST) every open connection now; returns how many."""
        return self.reset_now()

    def reset_now(self) -> int:
        """:meth:`reset`, callable from synchronous code on the proxy's event loop."""
        conns = list(self._conns)
        for conn in conns:
            conn.abort(rst=True)
        self.stats.resets += len(conns)
        return len(conns)

    # ---------------------------------------------------------------- plumbing

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.faults.refuse:
            self.stats.refused += 1
            _linger_zero(writer)
            writer.transport.abort()
            return
        self.stats.accepted += 1
        conn = Conn(self.stats.accepted, writer)
        self._conns.add(conn)
        try:
            await self._flowing.wait()  # a partition: the connection waits in the void
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
            except OSError:
                conn.abort(rst=True)  # upstream down: the client sees a refused connection
                return
            conn.upstream = up_writer
            if conn.closed:
                up_writer.transport.abort()
                return
            up = asyncio.create_task(self._pump(conn, reader, up_writer, self._up, "up"))
            down = asyncio.create_task(self._pump(conn, up_reader, writer, self._down, "down"))
            conn.tasks += [up, down]
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
            conn.abort(rst=False)
            await asyncio.wait([up, down])
        finally:
            self._conns.discard(conn)
            conn.abort(rst=False)

    async def _pump(
        self,
        conn: Conn,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        transform: Transform | None,
        direction: str,
    ) -> None:
        """Read chunks into a queue (stamped with when they may leave); a sender writes them."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUE_CHUNKS)
        sender = asyncio.create_task(self._send(conn, queue, writer, direction))
        last_due = 0.0
        try:
            while data := await reader.read(_CHUNK):
                if transform is not None:
                    data = transform(conn, data)
                    if not data:
                        continue
                f = self.faults
                due = loop.time() + f.delay_s
                if f.jitter_s:
                    due += self._rng.uniform(0, f.jitter_s)
                if f.loss and self._rng.random() < f.loss:
                    if self._rng.random() < f.reset_share:
                        self.stats.resets += 1
                        conn.abort(rst=True)
                        return
                    self.stats.stalls += 1
                    due += self._rng.uniform(f.stall_min_s, f.stall_max_s)
                last_due = max(due, last_due)
                await queue.put((last_due, data))
            await queue.put(None)
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await sender

    async def _send(
        self,
        conn: Conn,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            due, data = item
            while True:
                await self._flowing.wait()
                wait = due - loop.time()
                if wait <= 0:
                    break
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await changed.wait()  # a cut may come meanwhile
            view = memoryview(data)
            while view:
                rate = self.faults.rate_bps
                piece = view if not rate else view[: max(1, int(rate / 20))]
                writer.write(piece)
                await writer.drain()
                if direction == "up":
                    self.stats.bytes_up += len(piece)
                else:
                    self.stats.bytes_down += len(piece)
                view = view[len(piece) :]
                if rate:
                    await asyncio.sleep(len(piece) / rate)
                await self._flowing.wait()
        if not conn.closed and writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()


class ThreadedFaultProxy:
    """A :class:`FaultProxy` on an event loop in a thread of its own, controlled from any
    thread with blocking calls (``with ThreadedFaultProxy(port) as proxy: proxy.cut()``)."""

    def __init__(self, upstream_port: int, *, port: int = 0, seed: int = 0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fault-proxy", daemon=True
        )
        self._thread.start()
        self.proxy: FaultProxy = self._call(_make(upstream_port, port, seed))

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def stats(self) -> ProxyStats:
        return self.proxy.stats

    @property
    def connections(self) -> int:
        """Connections open now."""
        return self.proxy.connections

    @property
    def faults(self) -> LinkFaults:
        return self.proxy.faults

    def set_faults(self, faults: LinkFaults | None = None, **changes: Any) -> LinkFaults:
        return self._call(self.proxy.set_faults(faults, **changes))

    def heal(self) -> LinkFaults:
        """A perfect link again; returns what it was."""
        return self.set_faults(None)

    def reset(self) -> int:
        return self._call(self.proxy.reset())

    def close(self) -> None:
        if not self._loop.is_running():
            return
        self._call(self.proxy.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _make(upstream_port: int, port: int, seed: int) -> FaultProxy:
    return await FaultProxy(upstream_port, port=port, seed=seed).start()
