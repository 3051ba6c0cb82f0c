"""``[[ble]] simulated_socket``: datagrams through the scanner's path into a real buffer.

A real BLE source (its default scanner factory: the simulated socket replaces bleak when the
option is set), batcher and SQLite buffer; the test sends JSON datagrams to the socket: good
ones are decoded and stored, a repeat is a duplicate, a bad one is counted ``bad-datagram``
and its neighbours are kept; a stale socket file from an earlier run is replaced.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import BleSettings
from edge.sources.ble_decoders import BTHOME_UUID, BleDecoder
from tests.polling import until
from tests.test_edge_ble_support import ble_edge
from tests.test_edge_support import stored

ADDRESS = "C0:DE:00:00:00:01"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cairn-ble-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def datagram(packet: int, temp_raw: int) -> bytes:
    body = bytes([0x40, 0x00, packet, 0x02]) + temp_raw.to_bytes(2, "little", signed=True)
    return json.dumps(
        {"address": ADDRESS, "rssi": -50, "service_data": {BTHOME_UUID: body.hex()}}
    ).encode()


async def test_datagrams_go_through_the_scanner_path(tmp_path: Path, short_dir: Path) -> None:
    path = short_dir / "ble.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(path))  # a socket file left by an earlier run
    stale.close()
    settings = BleSettings(
        name="ble",
        decoder=BleDecoder.BTHOME,
        simulated_socket=str(path),
        devices=((ADDRESS, "tag-1"),),
    )
    async with ble_edge(tmp_path, settings) as edge:
        assert edge.source.status.adapter == f"scanning (passive) on simulated socket {path}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as tx:
            tx.connect(str(path))
            for data in (
                datagram(1, 2150),
                b'{"address": 5}',
                datagram(2, -75),
                datagram(2, -75),  # the same packet again: a duplicate
                b"\xff not json",
                datagram(3, 2200),
            ):
                tx.send(data)
        await until(
            lambda: len(stored(tmp_path / "buffer.sqlite3")) == 3,
            "3 readings committed",
            in_thread=True,
        )
        status = edge.source.status.as_json()
    readings = stored(tmp_path / "buffer.sqlite3")
    assert [(r.device, r.sensor, r.value) for r in readings] == [
        ("tag-1", "temperature", 21.5),
        ("tag-1", "temperature", -0.75),
        ("tag-1", "temperature", 22.0),
    ]
    assert len({r.ts for r in readings}) == 3  # stamped on arrival, increasing
    assert status["rejected"] == {"bad-datagram": 2}
    assert status["duplicate"] == 1
    assert status["advertisements"] == 6
    assert not path.exists()  # removed at stop
