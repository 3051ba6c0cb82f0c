"""Fleet files: parsing and errors naming the key, determinism and a pinned digest, ground
truth (API and `cairn-sim truth`), preview, plot, and `cairn-sim run FLEETFILE` into Mosquitto."""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from contract.errors import ConfigError
from simulator.cli import main
from simulator.fleet import canonical_value, reading_key
from simulator.fleetfile import FleetFile, load_fleet_file, parse_fleet
from simulator.fleetrun import send_fleet_file
from simulator.servers import Mosquitto
from tests.test_sim_send import _parse
from tests.test_sim_wire import Subscriber

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples" / "fleets").glob("*.toml"))

# Every generator, filter, join and clock feature. Its truth over 2 hours is pinned below: a
# change to any formula, seed path or constant changes the digest (update it deliberately).
REFERENCE = """
seed = 2026
start = "2026-06-01T00:00:00Z"

[[device_types]]
name = "station"
count = 2
interval_s = 30
clock = { offset_s = 1.5, drift_ppm = 30, jitter_ms = 40 }

[[device_types.sensors]]
key = "temp"
generator = "temperature"
filters = [
  { kind = "noise", sigma = 0.1 },
  { kind = "outliers", probability = 0.02, magnitude = 5.0 },
  { kind = "stuck", probability = 0.2, duration_s = 900 },
  { kind = "quantise", step = 0.1 },
]

[[device_types.sensors]]
key = "hum"
generator = "humidity"
filters = [{ kind = "dropout", probability = 0.05 }]

[[device_types.sensors]]
key = "dew"
join = "dewpoint"
inputs = ["temp", "hum"]

[[device_types.sensors]]
key = "pres"
generator = "pressure"
filters = [{ kind = "quantise", step = 1 }]

[[device_types.sensors]]
key = "mean"
join = "mean"
inputs = ["temp", "pres"]

[[device_types.sensors]]
key = "co2"
generator = "co2"

[[device_types.sensors]]
key = "lux"
generator = "lux"

[[device_types.sensors]]
key = "batt"
generator = "voltage"

[[device_types.sensors]]
key = "relay"
generator = "switch"

[[device_types.sensors]]
key = "energy"
generator = "counter"

[[device_types]]
name = "tracker"
count = 2
rate_hz = 0.2
transport = { kind = "mqtt", payload = "value", qos = 1 }

[[device_types.sensors]]
key = "gps"
generator = "gps"
radius_m = 500.0
filters = [{ kind = "outliers", probability = 0.01, magnitude = 0.001, components = ["lat", "lon"] }]

[[device_types.sensors]]
key = "acc"
generator = "accel"
emit = false

[[device_types.sensors]]
key = "gyro"
generator = "gyro"
emit = false

[[device_types.sensors]]
key = "imu"
join = "document"
inputs = ["acc", "gyro"]

[[device_types.sensors]]
key = "g"
join = "magnitude"
inputs = ["acc"]

[[device_types.sensors]]
key = "g2"
join = "magnitude"
inputs = ["gyro"]

[[device_types.sensors]]
key = "xyz"
join = "vector"
inputs = ["g", "g2"]

[[device_types.sensors]]
key = "cell"
generator = "battery"
"""
REFERENCE_DIGEST = "a905780d33780413d492ae272b13c492f9771bc18bd7076ea19bbe5a482b608f"


def _truth_bytes(fleet: FleetFile, seconds: float) -> bytes:
    return "".join(r.json() + "\n" for r in fleet.truth(seconds)).encode()


def test_the_reference_fleet_is_deterministic_and_pinned() -> None:
    first = _truth_bytes(parse_fleet(REFERENCE), 7200)
    second = _truth_bytes(parse_fleet(REFERENCE), 7200)
    assert first == second
    lines = first.decode().splitlines()
    # 2 stations x 240 instants x 10 emitted sensors less dropped hum (and their dew), plus
    # 2 trackers x 1,440 instants x 6 emitted sensors
    trackers = [ln for ln in lines if '"tracker-' in ln]
    assert len(trackers) == 2 * 1440 * 6
    stations = [json.loads(ln) for ln in lines if '"station-' in ln]
    dropped = 2 * 240 - sum(1 for r in stations if r["sensor"] == "hum")
    assert 0 < dropped < 0.15 * 480
    assert len(stations) == 2 * 240 * 10 - 2 * dropped
    assert hashlib.sha256(first).hexdigest() == REFERENCE_DIGEST


def _keyset(fleet: FleetFile, seconds: float) -> dict[tuple[str, str], list[tuple[object, ...]]]:
    out: dict[tuple[str, str], list[tuple[object, ...]]] = {}
    for r in fleet.truth(seconds):
        out.setdefault((r.device, r.sensor), []).append(
            (r.ts, r.true_ts, canonical_value(r.value), r.labels)
        )
    return out


def test_adding_devices_types_and_sensors_leaves_the_others_unchanged() -> None:
    base = _keyset(parse_fleet(REFERENCE), 3600)
    bigger_text = (
        REFERENCE.replace("count = 2", "count = 5")
        .replace(
            '[[device_types.sensors]]\nkey = "hum"',
            '[[device_types.sensors]]\nkey = "extra"\ngenerator = "lux"\n\n'
            '[[device_types.sensors]]\nkey = "hum"',
        )
        .replace(
            '[[device_types]]\nname = "tracker"',
            '[[device_types]]\nname = "newcomer"\n[[device_types.sensors]]\nkey = "x"\n'
            'generator = "gps"\n\n[[device_types]]\nname = "tracker"',
        )
    )
    bigger = _keyset(parse_fleet(bigger_text), 3600)
    assert len(bigger) > len(base)
    for key, records in base.items():
        assert bigger[key] == records, key


def test_a_different_seed_changes_every_stream() -> None:
    a = _keyset(parse_fleet(REFERENCE), 600)
    b = _keyset(parse_fleet(REFERENCE.replace("seed = 2026", "seed = 2027")), 600)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] != b[key], key


def test_truth_lists_outliers_and_matches_the_emitted_readings() -> None:
    fleet = parse_fleet(REFERENCE)
    records = list(fleet.truth(7200))
    outliers = fleet.outliers(7200)
    assert outliers == {(r.device, r.sensor, r.ts) for r in records if "outlier" in r.labels}
    by_sensor = Counter(s for _d, s, _t in outliers)
    assert by_sensor["temp"] > 0  # and their dew points and means inherit the label
    assert by_sensor["gps"] > 0
    assert {s for _d, s, _t in outliers} <= {"temp", "dew", "mean", "gps"}
    readings = fleet.readings(7200)
    assert len({reading_key(r) for r in readings}) == len(records)  # all distinct


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ("seed = -1", "seed"),
        ('start = "yesterday"', "start"),
        ("bogus = 1", "bogus"),
        ('[[device_types]]\nname = "a b"', "device_types[0].name"),
        ('[[device_types]]\nname = "a"\ncount = 0', "device_types[0].count"),
        ('[[device_types]]\nname = "a"\nrate_hz = 0', "device_types[0].rate_hz"),
        ('[[device_types]]\nname = "a"\nrate_hz = 1\ninterval_s = 1', "device_types[0].interval_s"),
        ('[[device_types]]\nname = "a"', "device_types[0].sensors"),
        ('[[device_types]]\nname = "a"\ncolour = "red"', "device_types[0].colour"),
        (
            '[[device_types]]\nname = "a"\ntransport = { kind = "serial" }\n'
            '[[device_types.sensors]]\nkey = "t"\ngenerator = "temperature"',
            "device_types[0].transport.port",
        ),
        (
            '[[device_types]]\nname = "a"\ntransport = { kind = "pigeon" }',
            "device_types[0].transport.kind",
        ),
        (
            '[[device_types]]\nname = "a"\ntransport = { payload = "cbor" }',
            "device_types[0].transport.payload",
        ),
        ('[[device_types]]\nname = "a"\ntransport = { qos = 2 }', "device_types[0].transport.qos"),
        (
            '[[device_types]]\nname = "a"\ntransport = { ca_file = 1 }',
            "device_types[0].transport.ca_file",
        ),
        (
            '[[device_types]]\nname = "a"\ntransport = { payload = "value", topic = "x/{device}" }',
            "device_types[0].transport.topic",
        ),
        (
            '[[device_types]]\nname = "a"\nclock = { drift_ppm = -1 }',
            "device_types[0].clock.drift_ppm",
        ),
        (
            '[[device_types]]\nname = "a"\nclock = { jitter_ms = 200 }',
            "device_types[0].clock.jitter_ms",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"',
            "device_types[0].sensors[0].generator",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "sun"',
            "device_types[0].sensors[0].generator",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "ts"\ngenerator = "lux"',
            "device_types[0].sensors[0].key",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "lux"\nspeed_mps = 3',
            "device_types[0].sensors[0].speed_mps",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "gps"\nspeed_mps = -3',
            "device_types[0].sensors[0].speed_mps",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "gps"\nroute = [[1, 2]]',
            "device_types[0].sensors[0].route",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "battery"\nfull_v = 3\nempty_v = 4',
            "device_types[0].sensors[0].empty_v",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "lux"\nfilters = [{ kind = "blur" }]',
            "device_types[0].sensors[0].filters[0].kind",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "lux"\nfilters = [{ kind = "noise" }]',
            "device_types[0].sensors[0].filters[0].sigma",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "lux"\nfilters = [{ kind = "dropout", probability = 1.5 }]',
            "device_types[0].sensors[0].filters[0].probability",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "lux"\nfilters = [{ kind = "quantise", step = 0 }]',
            "device_types[0].sensors[0].filters[0].step",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "lux"\nfilters = [{ kind = "noise", sigma = "big" }]',
            "device_types[0].sensors[0].filters[0].sigma",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "lux"\nfilters = [{ kind = "noise", sigma = 1, size = 2 }]',
            "device_types[0].sensors[0].filters[0].size",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\njoin = "mean"\ninputs = ["u"]',
            "device_types[0].sensors[0].inputs",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "lux"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "co2"',
            "device_types[0].sensors[1].key",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "lux"\nemit = false',
            "device_types[0].sensors",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "lux"\n[[device_types.sensors]]\nkey = "j"\njoin = "mean"\ninputs = ["t"]\nfilters = [{ kind = "stuck", probability = 0.1, duration_s = 5 }]',
            "device_types[0].sensors[1].filters",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "gps"\n[[device_types.sensors]]\nkey = "j"\njoin = "dewpoint"\ninputs = ["t", "t2"]',
            "device_types[0].sensors[1].inputs",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "lux"\n[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "lux"',
            "device_types[1].name",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "switch"\nfilters = [{ kind = "noise", sigma = 1 }]',
            "device_types[0].sensors[0].filters[0].kind",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "lux"\nfilters = [{ kind = "noise", sigma = 1, components = ["lat"] }]',
            "device_types[0].sensors[0].filters[0].components",
        ),
        (
            '[[device_types]]\nname = "a"\n[[device_types.sensors]]\nkey = "t"\ngenerator = "gps"\nfilters = [{ kind = "dropout", probability = 0.1, components = ["lat"] }]',
            "device_types[0].sensors[0].filters[0].components",
        ),
        ("[[device_types]\n", "fleet_file"),
    ],
)
def test_bad_fleet_files_name_the_key(snippet: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_fleet(snippet)
    assert err.value.key == key, str(err.value)


def test_bad_file_on_the_command_line_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[device_types]]\nname = "a"\ncount = -3\n')
    assert main(["preview", str(bad)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == "cairn-sim: config key 'device_types[0].count': must be an integer in 1..1,000,000, not -3\n"
    )
    assert main(["truth", str(tmp_path / "missing.toml"), "--seconds", "5"]) == 2
    assert "config key 'fleet_file': cannot read" in capsys.readouterr().err
    assert main(["run", str(EXAMPLES[0]), "--devices", "4"]) == 2
    assert "--devices does not go with a fleet file" in capsys.readouterr().err


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_loads_and_previews(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = load_fleet_file(path)
    assert main(["preview", str(path), "-n", "3"]) == 0
    out = capsys.readouterr().out
    for t in fleet.device_types:
        assert f"\n{t.name}: {t.count} x {t.device_id(0)}" in out
        assert f"\n  {t.device_id(0)}\n" in out
        for s in t.streams:
            assert f"  {s.key} " in out
    assert sum(1 for _ in fleet.truth(600)) > 0


def test_truth_command_prints_the_api_s_records(tmp_path: Path) -> None:
    path = tmp_path / "ref.toml"
    path.write_text(REFERENCE)
    out = subprocess.run(
        [sys.executable, "-m", "simulator", "truth", str(path), "--seconds", "600"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    assert out == _truth_bytes(parse_fleet(REFERENCE), 600)
    first = json.loads(out.splitlines()[0])
    assert set(first) == {"device", "sensor", "ts", "true_ts", "value", "labels"}
    later = subprocess.run(
        [sys.executable, "-m", "simulator", "truth", str(path), "--seconds", "60"]
        + ["--start", "2027-01-01T00:00:00Z"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    assert json.loads(later.splitlines()[-1])["true_ts"] >= 1_798_761_600_000_000


def test_plot_writes_a_png_with_one_panel_per_generator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fleet.png"
    assert (
        main(["plot", str(ROOT / "examples/fleets/site.toml"), "-o", str(out), "--hours", "2"]) == 0
    )
    generators = sum(
        1
        for t in load_fleet_file(ROOT / "examples/fleets/site.toml").device_types
        for s in t.streams
        if s.generator
    )
    assert f"({generators} panels, 2 h)" in capsys.readouterr().out
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800
    assert height >= 600


async def test_run_a_fleet_file_into_mosquitto(mosquitto: Mosquitto) -> None:
    fleet = parse_fleet(REFERENCE)
    seconds = 300.0  # 2 x 10 station instants, 2 x 60 tracker instants
    expected = {reading_key(r) for r in fleet.readings(seconds)}
    n_messages = 2 * 10 + 2 * 60 * 6  # json: one per station instant; value: one per reading
    async with Subscriber(mosquitto.port) as sub:
        ledger = await send_fleet_file(fleet, mosquitto.url, seconds=seconds, paced=False)
        await sub.wait_for(n_messages)
    received = _parse(sub.messages)
    assert max(received.values()) == 1
    assert set(received) == expected
    assert ledger.keys() == expected
    assert ledger.count == len(expected)
    assert ledger.messages == n_messages
    topics = {t.split("/")[0] for t, _p in sub.messages}
    assert topics == {"devices", "sensors"}


def test_run_command_with_a_fleet_file(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    path = ROOT / "examples/fleets/meter.toml"
    argv = ["run", str(path), "--mqtt", mosquitto.url, "--count", "4", "--fast"]
    argv += ["--start", "2026-01-01T00:00:00Z"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    fleet = load_fleet_file(path)
    n = sum(1 for _ in fleet.device_types[0].truth(0, 4))
    assert f"{n} messages, {n} readings acknowledged" in out  # value payloads
    assert "1 device types, 5 devices, 4 instants per device, fast" in out


def test_the_docs_show_every_example_file_and_the_plot() -> None:
    page = (ROOT / "docs" / "simulator.md").read_text()
    for path in EXAMPLES:
        if path.stem != "site":
            assert f"```toml\n{path.read_text()}```" in page, f"{path.name} differs in the docs"
    assert "](img/fleet.png)" in page
    assert (ROOT / "docs" / "img" / "fleet.png").read_bytes()[:4] == b"\x89PNG"


def test_a_device_type_is_an_endless_iterator() -> None:
    fleet = parse_fleet(REFERENCE)
    tracker = fleet.device_types[1]
    n = tracker.block_size() * 2 + 7  # across block borders
    wanted = list(tracker.truth(0, n))
    assert list(itertools.islice(tracker.endless(), len(wanted))) == wanted
    later = list(tracker.truth(n, 3))
    assert list(itertools.islice(tracker.endless(n), len(later))) == later


async def test_paced_qos0_run_sends_in_time_order(mosquitto: Mosquitto) -> None:
    text = REFERENCE.replace("qos = 1 }", "qos = 0 }").replace("rate_hz = 0.2", "rate_hz = 20")
    fleet = parse_fleet(text)
    tracker = fleet.device_types[1]
    fleet = FleetFile(fleet.seed, fleet.start_us, (tracker,))
    assert tracker.transport.qos == 0
    expected = [reading_key(r.reading) for r in tracker.truth(0, 20)]
    async with Subscriber(mosquitto.port) as sub:
        started = time.monotonic()
        ledger = await send_fleet_file(fleet, mosquitto.url, count=20, speed=2.0)
        elapsed = time.monotonic() - started
        await sub.wait_for(len(expected))
    assert ledger.keys() == set(expected)
    assert ledger.count == len(expected)
    # paced: 20 instants at 20 Hz, twice as fast: the last leaves 19 / 20 / 2 s after the first
    assert elapsed >= 19 / 20 / 2 - 0.01
    stamps = [json.loads(p)["ts"] for _t, p in sub.messages]
    assert stamps == sorted(stamps)  # one connection per type, sent in instant order
