"""Open-loop pacing: the schedule is fixed by the clock (a fake one here: no sleeps), a slow
receiver shows up as lag, never as a slower schedule; and a real run against Mosquitto."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.cli import main
from simulator.display import Progress, TransportCounts
from simulator.fleet import reading_key
from simulator.fleetfile import DeviceType, FleetFile, load_fleet_file, parse_fleet
from simulator.fleetrun import FilePart, _parts, _prefetched, send_fleet_file
from simulator.pacing import OpenLoop, fleet_rate, metered, transport_rates
from simulator.send import Ledger
from simulator.servers import Mosquitto
from simulator.transports import messages_per_instant, readings_per_device

ROOT = Path(__file__).resolve().parent.parent

FLEET = """
seed = 3
[[device_types]]
name = "probe"
count = 4
rate_hz = 1.0
[[device_types.sensors]]
key = "temp"
generator = "temperature"
"""


class FakeClock:
    """A monotonic clock that moves only when slept on or told to."""

    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


async def drive(
    dtype: DeviceType,
    loop: OpenLoop,
    instants: int,
    cost: Iterator[float],
    counts: TransportCounts,
    progress: Progress,
) -> tuple[Ledger, list[float], list[float]]:
    """What ``send_device_type`` does (wait for each due time, send, acknowledge), where each send
    takes ``next(cost)`` seconds of the fake clock. Returns the ledger, due and send times."""
    clock = loop.clock
    assert isinstance(clock, FakeClock)
    ledger = Ledger()
    pacer = loop.pacer(dtype.start_us)
    loop.expect(dtype, range(instants))
    dues: list[float] = []
    sends: list[float] = []
    parts = iter([FilePart(dtype, 0, instants)])
    parts2 = ((p, p.wires()) for p in parts)
    for part, messages in metered(dtype, parts2, counts=counts, progress=progress, open_loop=loop):
        ledger._add_part(part)
        for msg, _wire, due in messages:
            assert due is not None  # open loop: every message has its own due time
            dues.append(loop.wall(due) - 100.0)
            await pacer.wait(due)
            sends.append(clock.now() - 100.0)
            clock.t += next(cost)  # the receiver is this slow
            before = ledger.count
            ledger._ack(part, msg)
            counts.acked += ledger.count - before
    return ledger, dues, sends


def fleet() -> FleetFile:
    return parse_fleet(FLEET)


def repeat(x: float) -> Iterator[float]:
    while True:
        yield x


async def test_a_fast_receiver_gets_exactly_the_target_rate() -> None:
    f = fleet()
    assert fleet_rate(f) == 4.0  # 4 devices x 1 sensor x 1 Hz
    loop = OpenLoop.for_rate(f, 40.0, clock=FakeClock())  # 10 x faster: 4 sends per 0.1 s
    assert loop.speed == 10.0
    counts, progress = TransportCounts(), Progress(total=10)
    ledger, dues, sends = await drive(f.device_types[0], loop, 10, repeat(0.0), counts, progress)
    # the 4 devices of an instant are spread over its period: a send every 25 ms, on time
    assert dues == pytest.approx([i * 0.025 for i in range(40)])
    assert sends == pytest.approx(dues)
    report = loop.report(ledger.count, bounded=True)
    print(report.text())
    assert (report.messages, report.readings, report.acked, report.late) == (40, 40, 40, 0)
    assert report.window_s == pytest.approx(1.0)
    assert report.achieved_rate == pytest.approx(40.0)
    assert report.ratio == pytest.approx(1.0)
    assert report.lag_max_s == 0.0
    assert (counts.sent, counts.acked, counts.errors) == (40, 40, 0)
    assert progress.done == 10
    assert {reading_key(r) for r in ledger.readings} == {reading_key(r) for r in f.readings(10.0)}


async def test_a_slow_receiver_does_not_slow_the_schedule_it_shows_as_lag() -> None:
    f = fleet()
    loop = OpenLoop.for_rate(f, 40.0, clock=FakeClock())
    counts, progress = TransportCounts(), Progress(total=10)
    ledger, dues, sends = await drive(f.device_types[0], loop, 10, repeat(0.05), counts, progress)
    # every send takes 50 ms, twice its slot: the due times stay where they were
    assert dues == pytest.approx([i * 0.025 for i in range(40)])
    assert sends == pytest.approx([i * 0.05 for i in range(40)])
    report = loop.report(ledger.count, bounded=True)
    print(report.text())
    assert report.late == 39  # all but the first
    assert report.lag_max_s == pytest.approx(39 * 0.025)
    assert report.behind_s == pytest.approx(39 * 0.025)
    assert report.window_s == pytest.approx(39 * 0.05)  # the last send left after the schedule
    assert report.achieved_rate == pytest.approx(40 / 1.95)
    assert report.ratio == pytest.approx(40 / 1.95 / 40)
    assert counts.acked == 40
    assert progress.done == 10


async def test_after_a_stall_it_catches_up_without_moving_the_schedule() -> None:
    f = fleet()
    loop = OpenLoop.for_rate(f, 40.0, clock=FakeClock())
    costs = iter([0.0] * 4 + [0.3] + [0.0] * 100)  # the 5th send stalls for 300 ms
    counts, progress = TransportCounts(), Progress(total=10)
    ledger, dues, sends = await drive(f.device_types[0], loop, 10, costs, counts, progress)
    assert dues == pytest.approx([i * 0.025 for i in range(40)])
    # sends 5..12 leave at once when the stall ends (0.4 s), then the schedule goes on
    expected = [i * 0.025 if i <= 4 else max(i * 0.025, 0.4) for i in range(40)]
    assert sends == pytest.approx(expected)
    report = loop.report(ledger.count, bounded=True)
    print(report.text())
    late = [i for i in range(40) if sends[i] - dues[i] > 0.005]
    assert late == list(range(5, 16))
    assert report.late == len(late)
    assert report.lag_max_s == pytest.approx(0.4 - 5 * 0.025)
    assert report.behind_s == 0.0
    assert report.achieved_rate == pytest.approx(40.0)  # it caught up within the window


def test_open_loop_options_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "f.toml"
    path.write_text(FLEET)
    cases = [
        (["run", str(path), "--target-rate", "0"], "target_rate"),
        (["run", str(path), "--target-rate", "10", "--fast"], "--fast"),
        (["run", str(path), "--target-rate", "10", "--open-loop"], "--open-loop"),
        (["run", "--target-rate", "10"], "fleet file"),
        (["run", str(path), "--open-loop", "--speed", "0"], "speed"),
        (["run", str(path), "--target-rate", "10", "--speed", "2"], "--speed"),
    ]
    for argv, word in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("cairn-sim: "), err
        assert word in err, err
        assert len(err.strip().splitlines()) == 1


def test_run_at_a_target_rate_into_mosquitto(
    mosquitto: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "f.toml"
    path.write_text(FLEET.replace("count = 4", "count = 200"))
    # 200 devices x 1 reading at 1 Hz = 200 readings/s of fleet time, sent at 2,000/s: 2 s of
    # fleet time (400 readings) in 0.2 s
    argv = ["run", str(path), "--mqtt", mosquitto.url, "--target-rate", "2000", "--duration", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    print(out, file=sys.stderr)
    assert "400 readings acknowledged" in out
    line = next(x for x in out.splitlines() if "open loop:" in x)
    assert "target 2,000 readings/s" in line
    rate = float(line.split("achieved ")[1].split("/s")[0].replace(",", ""))
    assert 1500 <= rate <= 2000  # on time on this machine, or nearly


async def test_a_run_fills_the_display_counters_and_progress(mosquitto: Mosquitto) -> None:
    f = load_fleet_file(ROOT / "examples" / "fleets" / "site.toml")
    counters: dict[str, TransportCounts] = {}
    progress = Progress(total=4 * 30)  # 4 device types x 30 instants
    ledger = await send_fleet_file(
        f, mosquitto.url, count=30, paced=False, counters=counters, done=progress
    )
    expected = sum(1 for t in f.device_types for _ in t.truth(0, 30))
    assert ledger.count == expected
    assert list(counters) == ["mqtt"]
    assert (counters["mqtt"].sent, counters["mqtt"].acked) == (expected, expected)
    assert counters["mqtt"].errors == 0
    assert progress.done == progress.total


def test_metered_takes_any_message_tuple_with_index_first_and_due_last() -> None:
    """Any ``(msg, ..., due)`` tuple: the same wrapper applies."""
    f = fleet()
    dtype = f.device_types[0]
    loop = OpenLoop.for_rate(f, 40.0, clock=FakeClock())
    part = FilePart(dtype, 0, 2)
    wires = ((msg, wire.payload, due) for msg, wire, due in part.wires())
    counts, progress = TransportCounts(), Progress(total=2)
    [(same, messages)] = list(
        metered(dtype, iter([(part, wires)]), counts=counts, progress=progress, open_loop=loop)
    )
    out = list(messages)
    start = dtype.start_us
    assert [m[2] for m in out] == [start + k * 250_000 for k in range(8)]  # 4 per 1 s instant
    assert [m[0] for m in out] == list(range(8))
    assert counts.sent == 8
    assert progress.done == 2
    assert same is part
    assert part.readings_in(3) == 1


@pytest.mark.parametrize(
    ("transport", "per_instant"),
    [
        ('{ kind = "mqtt", payload = "value" }', 8),  # a message per sensor
        ('{ kind = "mqtt", payload = "senml" }', 4),  # a message per device
        ('{ kind = "serial", format = "csv", port = "/tmp/x/{device}" }', 4),
        (
            '{ kind = "http", url = "http://127.0.0.1:1", token_key = "k", tenant = "t", batch = 3 }',
            4,
        ),
        (
            '{ kind = "ble", format = "bthome", socket = "/tmp/x.sock", fields = { temp = "temperature" } }',
            4,
        ),
    ],
)
def test_open_loop_spreads_every_transports_messages_over_the_instant(
    transport: str, per_instant: int
) -> None:
    """Every kind's messages of an instant (or of a batch's last instant) get due times
    spread evenly over its period, and the sent readings and instants done are counted."""
    text = FLEET.replace("rate_hz = 1.0", f"rate_hz = 1.0\ntransport = {transport}")
    text += '[[device_types.sensors]]\nkey = "humidity"\ngenerator = "humidity"\n'
    f = parse_fleet(text)
    (dtype,) = f.device_types
    assert messages_per_instant(dtype) == per_instant
    loop = OpenLoop.for_rate(f, 8.0, clock=FakeClock())  # the fleet's own rate
    counts, progress = TransportCounts(), Progress(total=6)
    parts = list(_parts(dtype, range(6)))
    out = [
        (m[0], m[-1])
        for _p, msgs in metered(
            dtype, ((p, p.wires()) for p in parts), counts=counts, progress=progress, open_loop=loop
        )
        for m in msgs
    ]
    batch = 3 if "batch" in transport else 1
    groups = 6 // batch
    assert len(out) == groups * per_instant
    step = 1_000_000 // per_instant
    first_due = dtype.start_us + (batch - 1) * 1_000_000
    assert [due for _msg, due in out] == [
        first_due + g * batch * 1_000_000 + j * step
        for g in range(groups)
        for j in range(per_instant)
    ]
    assert counts.sent == sum(
        len(w.items) for p in _parts(dtype, range(6)) for _m, w, _d in p.wires()
    )
    assert progress.done == 6


def test_prefetched_parts_send_exactly_what_plain_parts_send() -> None:
    dtype = fleet().device_types[0]
    plain = [list(FilePart(dtype, s, 3).wires()) for s in (0, 3, 6)]
    ahead = [list(p.wires()) for p in _prefetched(iter([FilePart(dtype, s, 3) for s in (0, 3, 6)]))]
    assert ahead == plain
    assert len(plain[2]) == 12


async def test_the_schedule_starts_when_every_device_type_is_ready() -> None:
    """The first type to connect does not fix the origin alone: it waits for the others."""
    f = fleet()
    (dtype,) = f.device_types
    loop = OpenLoop.for_rate(f, 4.0, clock=FakeClock())
    loop.expect(dtype, range(3))
    loop.expect(dtype, None)  # endless types are waited for too
    loop.expect(dtype, range(0))  # a type with nothing to send is not
    first = asyncio.create_task(loop.ready())
    await asyncio.sleep(0)  # one loop turn: the task runs up to its wait (no time passes)
    assert not first.done()
    await loop.ready()
    await first


def test_the_target_rate_counts_readings_as_the_edge_makes_them() -> None:
    """A CSV line splits a 3-axis vector into three readings; MQTT JSON keeps it whole."""
    sensors = '[{ key = "t", generator = "temperature" }, { key = "acc", generator = "accel" }]'
    text = (
        '[[device_types]]\nname = "a"\ncount = 2\nrate_hz = 2.0\n'
        'transport = { kind = "serial", format = "csv", port = "/tmp/x/{device}" }\n'
        f"sensors = {sensors}\n"
        '[[device_types]]\nname = "b"\ncount = 3\n'
        f"sensors = {sensors}\n"
    )
    f = parse_fleet(text)
    a, b = f.device_types
    assert (readings_per_device(a), readings_per_device(b)) == (4, 2)
    assert transport_rates(f) == {"serial": 16.0, "mqtt": 6.0}
    assert fleet_rate(f) == 22.0


async def test_a_batching_transports_window_opens_at_its_first_instant() -> None:
    """A device that sends 3 instants at once sends its first message at instant 2, but the
    schedule (and the achieved rate's window) starts at instant 0: on time is 100%."""
    transport = (
        '{ kind = "http", url = "http://127.0.0.1:1", token_key = "k", tenant = "t", batch = 3 }'
    )
    f = parse_fleet(FLEET.replace("rate_hz = 1.0", f"rate_hz = 1.0\ntransport = {transport}"))
    (dtype,) = f.device_types
    loop = OpenLoop.for_rate(f, 4.0, clock=FakeClock())
    loop.expect(dtype, range(6))
    pacer = loop.pacer(dtype.start_us)
    for _part, messages in metered(
        dtype, ((p, p.wires()) for p in _parts(dtype, range(6))), open_loop=loop
    ):
        for _msg, _wire, due in messages:
            await pacer.wait(due)
    report = loop.report(24, bounded=True)
    assert (report.window_s, report.readings, report.late) == (6.0, 24, 0)
    assert report.ratio == 1.0
