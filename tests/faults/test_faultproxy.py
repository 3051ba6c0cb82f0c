"""The fault proxy itself, against a real echo server on 127.0.0.1.

Timing asserts are lower bounds only (a delayed or throttled byte cannot arrive early, however
busy the machine); "nothing arrives during a cut" waits a bounded time for bytes that must not
come.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator

import pytest

from simulator.faultproxy import Conn, FaultProxy, LinkFaults, ThreadedFaultProxy


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    """An echo server; yields its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def _roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await reader.readexactly(len(data))


async def test_pass_copies_bytes_both_ways_exactly(echo: int) -> None:
    async with FaultProxy(echo) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        data = os.urandom(1 << 20)
        assert await _roundtrip(reader, writer, data) == data
        assert proxy.stats.bytes_up == proxy.stats.bytes_down == len(data)
        assert proxy.connections == 1
        writer.close()


async def test_cut_holds_bytes_and_heal_delivers_them_in_order(echo: int) -> None:
    async with FaultProxy(echo) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _roundtrip(reader, writer, b"before") == b"before"
        await proxy.set_faults(cut=True)
        for i in range(5):
            writer.write(b"%d," % i)
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(100), 0.5)
        # A new connection during the partition is accepted but goes nowhere either.
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        w2.write(b"x")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r2.read(1), 0.2)
        await proxy.set_faults(None)
        assert await reader.readexactly(10) == b"0,1,2,3,4,"
        assert await r2.readexactly(1) == b"x"
        writer.close()
        w2.close()


async def test_refuse_resets_new_connections(echo: int) -> None:
    async with FaultProxy(echo) as proxy:
        await proxy.set_faults(refuse=True)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await _roundtrip(reader, writer, b"hello")
        assert proxy.stats.refused == 1
        writer.close()


async def test_reset_sends_rst_to_every_connection(echo: int) -> None:
    async with FaultProxy(echo) as proxy:
        pairs = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(3)]
        for reader, writer in pairs:
            assert await _roundtrip(reader, writer, b"hi") == b"hi"
        assert await proxy.reset() == 3
        for reader, _writer in pairs:
            with pytest.raises(ConnectionResetError):
                await reader.read(1)
        # The proxy itself goes on: a new connection works.
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _roundtrip(reader, writer, b"again") == b"again"
        writer.close()


async def test_delay_with_jitter_keeps_order_and_never_arrives_early(echo: int) -> None:
    async with FaultProxy(echo, seed=3) as proxy:
        await proxy.set_faults(delay_s=0.05, jitter_s=0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        t0 = time.monotonic()
        assert await _roundtrip(reader, writer, b"ping") == b"ping"
        assert time.monotonic() - t0 >= 0.1  # 50 ms each way at least
        sent = b"".join(b"%04d" % i for i in range(200))
        for i in range(200):
            writer.write(sent[4 * i : 4 * i + 4])
            await writer.drain()
        assert await reader.readexactly(len(sent)) == sent
        writer.close()


async def test_throttle_limits_bytes_per_second(echo: int) -> None:
    async with FaultProxy(echo) as proxy:
        await proxy.set_faults(rate_bps=200_000)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        data = os.urandom(100_000)
        t0 = time.monotonic()
        assert await _roundtrip(reader, writer, data) == data
        assert time.monotonic() - t0 >= 0.45  # 0.5 s of pauses one way, at least
        writer.close()


async def _stalls(port: int, seed: int) -> int:
    async with FaultProxy(port, seed=seed) as proxy:
        await proxy.set_faults(loss=0.3, stall_min_s=0.01, stall_max_s=0.02)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        for i in range(20):  # one chunk each way per round trip
            assert await _roundtrip(reader, writer, b"%02d" % i) == b"%02d" % i
        writer.close()
        return proxy.stats.stalls


async def test_lossy_link_stalls_without_losing_bytes_and_is_seeded(echo: int) -> None:
    first = await _stalls(echo, seed=11)
    assert first > 0
    assert await _stalls(echo, seed=11) == first


async def test_lossy_link_with_resets_kills_connections(echo: int) -> None:
    async with FaultProxy(echo, seed=1) as proxy:
        await proxy.set_faults(loss=1.0, reset_share=1.0)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await _roundtrip(reader, writer, b"doomed")
        assert proxy.stats.resets == 1
        writer.close()


async def test_transform_hook_sees_and_rewrites_chunks(echo: int) -> None:
    seen: list[bytes] = []

    def up(conn: Conn, data: bytes) -> bytes:
        seen.append(data)
        return data.upper()

    async with FaultProxy(echo, up=up) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _roundtrip(reader, writer, b"quiet") == b"QUIET"
        assert seen == [b"quiet"]
        writer.close()


def test_threaded_proxy_cut_and_heal() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as srv,
        ThreadedFaultProxy(srv.getsockname()[1]) as proxy,
    ):
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        server_side, _ = srv.accept()
        server_side.settimeout(5)
        client.sendall(b"one")
        assert server_side.recv(10) == b"one"
        assert proxy.set_faults(LinkFaults(cut=True)) == LinkFaults()
        client.sendall(b"two")
        server_side.settimeout(0.3)
        with pytest.raises(TimeoutError):
            server_side.recv(10)
        server_side.settimeout(5)
        proxy.heal()
        assert server_side.recv(10) == b"two"
        assert proxy.reset() == 1
        with pytest.raises(ConnectionResetError):
            client.recv(10)
        client.close()
        server_side.close()


def test_bad_faults_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        LinkFaults(delay_s=-1)
    with pytest.raises(ValueError, match="probabilities"):
        LinkFaults(loss=2)
    assert LinkFaults(delay_s=0.05, rate_bps=1000).describe() == "delay 50ms+0ms, 1000 B/s"
