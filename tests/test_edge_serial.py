"""The serial source through a real pseudo-terminal, committing into a real SQLite buffer.

The test plays the device: it writes to the pty's master side, and the source opens the slave
through a symlink (as it would ``/dev/serial/by-id/...``). Unplugging is: remove the link and
close the pty; plugging back in: a new pty, linked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from contract.errors import ConfigError, PayloadError
from contract.model import FLAG_EDGE_STAMPED, Reading, now_us
from edge.batcher import Batcher
from edge.buffer import Buffer
from edge.config import BufferSettings, LineFormat, SerialSettings, load_config
from edge.sources.lines import nmea_checksum
from edge.sources.serial import SerialSource
from edge.stats import EdgeStats
from tests.polling import until
from tests.test_edge_support import EdgeProcess, stored, write_config

pytestmark = pytest.mark.timeout(120)

T_S = now_us() // 1_000_000 - 60  # a minute ago: a plausible device clock
T_US = T_S * 1_000_000


class FakeDevice:
    """A pty pair whose slave is reachable at ``link``; the test writes what the device says."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = -1
        self.slave = -1
        self.plug()

    def plug(self) -> None:
        self.master, self.slave = pty.openpty()
        self.link.symlink_to(os.ttyname(self.slave))

    def unplug(self) -> None:
        self.link.unlink()
        os.close(self.master)
        os.close(self.slave)
        self.master = self.slave = -1

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    def close(self) -> None:
        if self.master >= 0:
            self.unplug()


@dataclass
class Edge:
    buffer_path: Path
    batcher: Batcher
    stats: EdgeStats
    source: SerialSource

    def readings(self) -> list[Reading]:
        return stored(self.buffer_path)

    @property
    def src(self) -> dict[str, object]:
        return self.stats.sources[self.source.name].as_json()

    @property
    def messages(self) -> int:
        return self.stats.sources[self.source.name].messages


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    parser: LineFormat,
    *,
    run_batcher: bool = True,
    **kw: object,
) -> AsyncIterator[tuple[Edge, FakeDevice]]:
    device = FakeDevice(tmp_path / "ttyDEVICE")
    buffer = Buffer(tmp_path / "buffer.sqlite3")
    stats = EdgeStats()
    settings = BufferSettings(
        flush_interval_ms=20, max_batch_readings=1000, max_pending_readings=10_000
    )
    batcher = Batcher(buffer, settings, stats)
    serial_settings = SerialSettings(
        port=str(device.link),
        device="dev1",
        parser=parser,
        baud=115_200,
        reconnect_initial_s=0.02,
        reconnect_max_s=0.1,
        **kw,  # type: ignore[arg-type]
    )
    try:
        async with SerialSource(serial_settings, batcher, stats) as source:
            tasks = [asyncio.create_task(source.run())]
            if run_batcher:
                tasks.append(asyncio.create_task(batcher.run()))
            try:
                await until(lambda: source.connected, "the port to open")
                yield Edge(tmp_path / "buffer.sqlite3", batcher, stats, source), device
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        buffer.close()
        device.close()


def nmea(body: str) -> bytes:
    return f"${body}*{nmea_checksum(body):02X}".encode()


async def committed(edge: Edge, n: int) -> list[Reading]:
    await until(lambda: len(edge.readings()) >= n, f"{n} readings committed", in_thread=True)
    readings = edge.readings()
    assert len(readings) == n
    return readings


# One script per parser: (bytes written, one write each), readings expected, rejections.
SCRIPTS: dict[str, tuple[LineFormat, dict[str, object], list[bytes], set[tuple], Counter]] = {
    "json": (
        LineFormat.JSON,
        {},
        [
            b'{"ts": %d, "temp": 21.5, "on": true}\n' % T_S,
            b'{"temp": 22.0, "ts": %d}\r\n{"te' % (T_S + 1),
            b'mp": 22.5, "ts": %d}\n{"temp": }\n' % (T_S + 2),
            b"\xff\xfe garbage \x00\x01\n",
            b'{"pos": [1.5, 2.5], "ts": %d}\n' % (T_S + 3),
        ],
        {
            ("temp", T_US, 21.5),
            ("on", T_US, True),
            ("temp", T_US + 1_000_000, 22.0),
            ("temp", T_US + 2_000_000, 22.5),
            ("pos", T_US + 3_000_000, (1.5, 2.5)),
        },
        Counter({"bad-json": 1, "bad-utf8": 1}),
    ),
    "csv-header": (
        LineFormat.CSV,
        {},
        [
            b"1,2,3\n",  # opened mid-stream: no header yet
            b"ts,temp,hum\n",
            b"%d,21.5,40\n%d,21.6" % (T_S, T_S + 1),
            b",41\n%d,oops,\n" % (T_S + 2),
            b"%d,1,2,3\n" % T_S,
        ],
        {
            ("temp", T_US, 21.5),
            ("hum", T_US, 40),
            ("temp", T_US + 1_000_000, 21.6),
            ("hum", T_US + 1_000_000, 41),
            ("temp", T_US + 2_000_000, "oops"),
        },
        Counter({"no-header": 1, "bad-shape": 1}),
    ),
    "csv-columns": (
        LineFormat.CSV,
        {"columns": ("time", "", "level"), "ts_field": "time", "delimiter": ";"},
        [b"%d;x;3.5\n" % T_S, b"%d;y;nan\n" % T_S, b"%d;z;4\n" % (T_S + 1)],
        {("level", T_US, 3.5), ("level", T_US + 1_000_000, 4)},
        Counter({"bad-value": 1}),
    ),
    "keyvalue": (
        LineFormat.KEYVALUE,
        {},
        [b"temp=21.5 hum=40 ts=%d\n" % T_S, b"temp 22\n", b"mode=eco,ts=%d\n" % T_S],
        {("temp", T_US, 21.5), ("hum", T_US, 40), ("mode", T_US, "eco")},
        Counter({"bad-shape": 1}),
    ),
}


def _key(r: Reading) -> tuple:
    value = tuple(r.value) if isinstance(r.value, list) else r.value
    return (r.sensor, r.ts, value)


@pytest.mark.parametrize("script", list(SCRIPTS))
async def test_each_parser_through_a_pty(tmp_path: Path, script: str) -> None:
    parser, options, writes, expected, rejected = SCRIPTS[script]
    async with running(tmp_path, parser, **options) as (edge, device):
        for chunk in writes:
            device.write(chunk)
        lines = sum(chunk.count(b"\n") for chunk in writes)
        await until(lambda: edge.messages >= lines, f"{lines} lines read")
        readings = await committed(edge, len(expected))
        assert {_key(r) for r in readings} == expected
        assert {r.device for r in readings} == {"dev1"}
        assert Counter(edge.src["rejected"]) == rejected  # type: ignore[arg-type]
        assert edge.messages == lines
        assert edge.stats.counters["readings-committed"] == len(expected)
        if script == "csv-header":
            assert edge.src["ignored"] == {"header": 1}


async def test_nmea_from_a_gps_receiver(tmp_path: Path) -> None:
    gga = nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
    rmc = nmea("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W")
    gsv = nmea("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00")
    bad = gga.replace(b"545.4", b"545.5")  # checksum no longer fits
    async with running(tmp_path, LineFormat.NMEA, sensor_prefix="pos") as (edge, device):
        device.write(gga + b"\r\n" + gsv + b"\r\n" + bad[:20])
        device.write(bad[20:] + b"\r\n" + rmc + b"\r\n")
        await until(lambda: edge.messages >= 4, "4 sentences read")
        readings = await committed(edge, 6 + 5)
        assert Counter(r.sensor for r in readings) == Counter(
            {"pos/lat": 2, "pos/lon": 2, "pos/alt": 1, "pos/fix": 1, "pos/sats": 1}
            | {"pos/hdop": 1, "pos/speed": 1, "pos/course": 1, "pos/valid": 1}
        )
        assert edge.src["rejected"] == {"bad-checksum": 1}
        assert edge.src["ignored"] == {"nmea-GSV": 1}


async def test_garbage_partial_and_overlong_lines(tmp_path: Path) -> None:
    async with running(tmp_path, LineFormat.KEYVALUE, max_line_bytes=32) as (edge, device):
        device.write(b"a=1\n\x80\x81\xfe\xff\n")  # a good line, then bytes that are no text
        device.write(b"b=" + b"9" * 20)  # a line that grows...
        await until(lambda: edge.messages >= 2, "2 lines read")
        device.write(b"9" * 20)  # ...past max_line_bytes: counted as soon as known
        await until(lambda: edge.messages >= 3, "the overlong line counted")
        device.write(b"9" * 5000 + b"\nc=")  # its tail is skipped to the newline
        device.write(b"3\r\n")  # a partial line completed by the next write
        readings = await committed(edge, 2)
        assert sorted((r.sensor, r.value, r.flags) for r in readings) == [
            ("a", 1, FLAG_EDGE_STAMPED),
            ("c", 3, FLAG_EDGE_STAMPED),
        ]
        assert edge.src["rejected"] == {"bad-utf8": 1, "too-long": 1}
        assert edge.messages == 4


async def test_the_port_vanishes_and_comes_back(tmp_path: Path) -> None:
    async with running(tmp_path, LineFormat.KEYVALUE) as (edge, device):
        device.write(b"n=1\n")
        await committed(edge, 1)
        device.write(b"n=2")  # a partial line, never finished: the device goes away
        await until(lambda: edge.messages >= 1 and edge.source.pending_readings == 0, "idle")
        device.unplug()
        await until(lambda: not edge.source.connected, "the source to see the port gone")
        await until(
            lambda: "cannot open" in (edge.source.last_error or ""), "a failed reopen attempt"
        )
        assert edge.src["connected"] is False
        device.plug()
        await until(lambda: edge.source.connected and edge.source.opens == 2, "the port reopened")
        device.write(b"n=3\nn=4\n")
        readings = await committed(edge, 3)
        assert [r.value for r in readings] == [1, 3, 4]
        assert edge.src["rejected"] == {}


async def test_refused_readings_are_counted_and_the_source_goes_on(tmp_path: Path) -> None:
    async with running(tmp_path, LineFormat.KEYVALUE, max_pending_readings=3) as (edge, device):
        edge.source.feed(b"a=1 b=2\nc=3 d=4\ne=5\n")  # 5 readings > max 3: overload
        readings = await committed(edge, 3)
        assert sorted(r.sensor for r in readings) == ["a", "b", "e"]
        assert edge.src["refused"] == {"overload": 2}
        await edge.batcher.close()  # the edge is stopping: what comes now is refused
        device.write(b"f=6\n")
        await until(lambda: edge.src["refused"] == {"overload": 2, "closed": 1}, "refused")
        assert edge.source.connected
        assert edge.stats.counters["readings-refused"] == 3


class PickySink:
    """Records submits; refuses (like the codec would) any submit holding a ``poison`` sensor."""

    def __init__(self) -> None:
        self.submits: list[list[str]] = []

    async def submit(
        self, readings: Sequence[Reading], source: str, *_a: object, **_k: object
    ) -> None:
        if any(r.sensor == "poison" for r in readings):
            raise PayloadError("bad-value", "the codec cannot carry this")
        self.submits.append([r.sensor for r in readings])

    def submit_nowait(self, *_a: object) -> bool:
        raise AssertionError

    async def redelivered(self, _digest: bytes) -> bool:
        raise AssertionError

    async def drain(self) -> None:
        raise AssertionError


async def test_a_submit_the_batcher_refuses_loses_only_the_bad_line() -> None:
    sink = PickySink()
    stats = EdgeStats()
    settings = SerialSettings(port="/nonexistent", device="d", parser=LineFormat.KEYVALUE)
    source = SerialSource(settings, sink, stats)
    source.feed(b"a=1 b=2\npoison=1 c=3\nd=4\n")  # one chunk: one submit of three lines
    task = asyncio.create_task(source.run())  # the port never opens; the backlog is handed over
    try:
        await until(lambda: source.pending_readings == 0, "the backlog handed over")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sink.submits == [["a", "b"], ["d"]]
    assert stats.sources["serial"].rejected == {"bad-value": 1}


async def test_stop_commits_what_was_read(tmp_path: Path) -> None:
    async with running(tmp_path, LineFormat.KEYVALUE, run_batcher=False) as (edge, device):
        device.write(b"x=1\nx=2\n")
        await until(lambda: edge.source.pending_readings == 2, "2 readings waiting")
        task = asyncio.create_task(edge.batcher.run())
        try:
            await edge.source.stop()
            assert not edge.source.connected
            assert edge.source.pending_readings == 0
            assert len(edge.readings()) == 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.slow
async def test_the_edge_service_runs_a_serial_source(tmp_path: Path) -> None:
    device = FakeDevice(tmp_path / "gps")
    extra = f"""
[[serial]]
name = "gps"
port = "{device.link}"
device = "boat-1"
parser = "nmea"
baud = 4800
reconnect_initial_s = 0.05
reconnect_max_s = 0.2
"""
    config = write_config(tmp_path, extra=extra)
    edge = EdgeProcess(config).start()
    try:
        await until(edge.port_file.exists, "the edge to start")

        async def connected() -> bool:
            return bool((await edge.status())["sources"]["gps"]["connected"])

        await until(connected, "the serial source to open its port")
        gga = nmea("GNGGA,120000,,,,,0,05,,,M,,M,,")
        device.write(b"garbage\r\n" + gga + b"\r\n")
        buffer = tmp_path / "state" / "buffer.sqlite3"
        await until(lambda: len(stored(buffer)) == 2, "2 readings committed", in_thread=True)
        assert sorted((r.device, r.sensor, r.value) for r in stored(buffer)) == [
            ("boat-1", "gps/fix", 0),
            ("boat-1", "gps/sats", 5),
        ]
        status = await edge.status()
        assert status["sources"]["gps"]["rejected"] == {"bad-nmea": 1}
        assert status["sources"]["gps"]["messages"] == 2
        device.unplug()

        async def disconnected() -> bool:
            return not (await edge.status())["sources"]["gps"]["connected"]

        await until(disconnected, "the status to show the port gone")
        device.plug()
        await until(connected, "the port reopened")
        assert edge.running
    finally:
        edge.stop()
        device.close()


# --------------------------------------------------------------------------- config


BASE = '[edge]\nid = "e"\ntenant = "t"\n'


def test_serial_config_is_read_with_its_options(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(
        BASE
        + '[[serial]]\nname = "tank"\nport = "/dev/serial/by-id/usb-FTDI-if00"\ndevice = "tank-3"\n'
        'parser = "csv"\ncolumns = ["time", "", "level"]\nts_field = "time"\ndelimiter = ";"\n'
        'baud = 19200\nparity = "even"\nstopbits = 2\nbytesize = 7\n'
        '[[serial]]\nport = "gps0"\ndevice = "boat"\nparser = "nmea"\n'
    )
    config = load_config(path)
    tank, gps = config.serial
    assert (tank.name, tank.port, tank.device, tank.parser) == (
        "tank",
        "/dev/serial/by-id/usb-FTDI-if00",
        "tank-3",
        LineFormat.CSV,
    )
    assert (tank.columns, tank.ts_field, tank.delimiter) == (("time", "", "level"), "time", ";")
    assert (tank.baud, tank.parity, tank.stopbits, tank.bytesize) == (19200, "even", 2.0, 7)
    assert (gps.name, gps.port, gps.baud, gps.columns) == ("serial", "gps0", 9600, ())


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('port = "p"\nparser = "csv"\n', "serial[0].device"),
        ('port = "p"\ndevice = "d"\nparser = "xml"\n', "serial[0].parser"),
        ('port = "p"\ndevice = "d"\nparser = "json"\nstopbits = 3\n', "serial[0].stopbits"),
        ('port = "p"\ndevice = "d"\nparser = "json"\nstopbits = 1.2\n', "serial[0].stopbits"),
        ('port = "p"\ndevice = "d"\nparser = "json"\nbaud = 0\n', "serial[0].baud"),
        ('port = "p"\ndevice = "d"\nparser = "json"\ncolumns = ["a"]\n', "serial[0].columns"),
        ('port = "p"\ndevice = "d"\nparser = "csv"\ncolumns = ["a", "a"]\n', "serial[0].columns"),
        ('port = "p"\ndevice = "d"\nparser = "csv"\ncolumns = ["ts"]\n', "serial[0].columns"),
        ('port = "p"\ndevice = "d"\nparser = "csv"\ndelimiter = ",,"\n', "serial[0].delimiter"),
        ('port = "p"\ndevice = "/d"\nparser = "json"\n', "serial[0].device"),
        ('port = "p"\ndevice = "d"\nparser = "json"\nspeed = 9600\n', "serial[0].speed"),
        (
            'port = "p"\ndevice = "d"\nparser = "json"\nreconnect_initial_s = 5\n'
            "reconnect_max_s = 1\n",
            "serial[0].reconnect_max_s",
        ),
    ],
)
def test_bad_serial_config_names_the_key(tmp_path: Path, body: str, key: str) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(BASE + "[[serial]]\n" + body)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == key


def test_serial_and_mqtt_sources_need_distinct_names(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(
        BASE + '[[mqtt]]\nname = "x"\ntopics = [{ pattern = "d/{device}", format = "json" }]\n'
        '[[serial]]\nname = "x"\nport = "p"\ndevice = "d"\nparser = "json"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "serial[0].name"


async def test_a_path_that_is_no_serial_port_is_retried_not_fatal(tmp_path: Path) -> None:
    stats = EdgeStats()
    settings = SerialSettings(
        port="/dev/null",  # exists, but no tty: the open fails like a wrong by-id link would
        device="d",
        parser=LineFormat.JSON,
        reconnect_initial_s=0.01,
        reconnect_max_s=0.02,
    )
    async with SerialSource(settings, PickySink(), stats) as source:
        task = asyncio.create_task(source.run())
        try:
            await until(lambda: "cannot open /dev/null" in (source.last_error or ""), "a failure")
            first = source.last_error
            await until(lambda: source.last_error is not first, "a second attempt")
            assert not task.done()
            assert not source.connected
        finally:
            await source.stop()
            await asyncio.wait_for(task, 10)  # stop ends run() by itself
