"""Scoring a detector against the simulator's ground truth, and the reference detector."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.cli import main
from simulator.fleetfile import TruthRecord, parse_fleet
from simulator.score import detect, read_flags, read_truth, score

SPIKY = """
seed = 7

[[device_types]]
name = "thermo"
count = 5
interval_s = 60

[[device_types.sensors]]
key = "temp"
generator = "temperature"
filters = [
  { kind = "noise", sigma = 0.2 },
  { kind = "outliers", probability = 0.01, magnitude = 1.0 },
  { kind = "quantise", step = 0.1 },
]

[[device_types.sensors]]
key = "on"
generator = "switch"

[[device_types]]
name = "tracker"
count = 2
interval_s = 10

[[device_types.sensors]]
key = "gps"
generator = "gps"
center = [51.5, -0.12]
radius_m = 2000.0
filters = [
  { kind = "noise", sigma = 0.00002, components = ["lat", "lon"] },
  { kind = "outliers", probability = 0.005, magnitude = 0.002, components = ["lat", "lon"] },
]

[[device_types.sensors]]
key = "acc"
generator = "accel"
"""
DAY = 86_400.0


def truth(seconds: float = DAY) -> list[TruthRecord]:
    return list(parse_fleet(SPIKY).truth(seconds))


def test_a_perfect_detector_scores_one_and_an_empty_one_recalls_nothing() -> None:
    records = truth(6 * 3600.0)
    spikes = {(r.device, r.sensor, r.ts) for r in records if r.outlier}
    assert len(spikes) > 10
    perfect = score(records, spikes)
    assert (perfect.tp, perfect.fp, perfect.fn, perfect.unknown) == (len(spikes), 0, 0, 0)
    assert (perfect.precision, perfect.recall, perfect.f1) == (1.0, 1.0, 1.0)
    assert perfect.readings == len(records)
    empty = score(records, [])
    assert (empty.tp, empty.fp, empty.fn, empty.flagged) == (0, 0, len(spikes), 0)
    assert (empty.precision, empty.recall, empty.f1) == (0.0, 0.0, 0.0)


def test_false_flags_and_flags_of_readings_never_sent_count_against_precision() -> None:
    records = truth(6 * 3600.0)
    spikes = sorted((r.device, r.sensor, r.ts) for r in records if r.outlier)
    normal = [(r.device, r.sensor, r.ts) for r in records if not r.labels][:3]
    never = [("thermo-0000", "temp", 1), ("nobody", "temp", records[0].ts)]
    half = spikes[: len(spikes) // 2]
    s = score(records, [*half, *normal, *never])
    assert (s.tp, s.fp, s.fn, s.unknown) == (len(half), 5, len(spikes) - len(half), 2)
    assert s.precision == pytest.approx(len(half) / (len(half) + 5))
    assert s.recall == pytest.approx(len(half) / len(spikes))
    assert s.f1 == pytest.approx(2 * s.precision * s.recall / (s.precision + s.recall))
    # stuck labels are scored the same way, on request
    assert score(records, [], label="stuck").positives == 0


def test_the_reference_detector_finds_the_spikes_of_a_seeded_fleet() -> None:
    records = truth()
    flags = detect(records)
    total = score(records, flags)
    print("all:", total.text())
    by_sensor = {}
    for sensor in ("temp", "gps", "acc", "on"):
        part = [r for r in records if r.sensor == sensor]
        by_sensor[sensor] = score(part, [f for f in flags if f[1] == sensor])
        print(f"{sensor}:", by_sensor[sensor].text())
    # spikes of 5-10 sigma of the noise on wandering temperatures: the larger ones found
    assert by_sensor["temp"].positives == 65
    assert by_sensor["temp"].precision >= 0.9
    assert 0.45 <= by_sensor["temp"].recall <= 0.8
    # GPS jumps of 2-4 steps of a moving van: most found, few invented at corners
    assert by_sensor["gps"].positives == 85
    assert by_sensor["gps"].precision >= 0.75
    assert by_sensor["gps"].recall >= 0.75
    # a vibrating accelerometer and an on/off switch have no spikes: next to nothing flagged
    assert by_sensor["acc"].flagged <= 3
    assert by_sensor["on"].flagged == 0
    assert total.precision >= 0.8
    assert total.recall >= 0.65
    assert detect(records) == flags  # deterministic


def test_flag_lines_in_both_forms_and_bad_ones_counted(capsys: pytest.CaptureFixture[str]) -> None:
    lines = [
        '{"device": "d1", "sensor": "temp", "ts": 5}',
        '{"series": "d2/hum", "ts": 7}',
        "",
        "not json",
        '{"device": "d1", "ts": 5}',
        '{"series": "nosep", "ts": 1}',
        '{"device": "d1", "sensor": "temp", "ts": "5"}',
        "[1, 2]",
    ]
    flags, bad = read_flags(lines, "f.jsonl")
    assert flags == {("d1", "temp", 5), ("d2", "hum", 7)}
    assert bad == 5
    err = capsys.readouterr().err.splitlines()
    assert [e.split(": skipped")[0] for e in err] == [
        f"cairn-sim: f.jsonl:{n}" for n in (4, 5, 6, 7, 8)
    ]


def test_truth_detect_and_score_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = tmp_path / "spiky.toml"
    fleet.write_text(SPIKY)
    seconds = "21600"
    flags = tmp_path / "flags.jsonl"
    assert main(["detect", str(fleet), "--seconds", seconds, "-o", str(flags)]) == 0
    records = truth(21600.0)
    expected = score(records, detect(records))
    capsys.readouterr()
    assert main(["score", "--fleet", str(fleet), "--seconds", seconds, "--flags", str(flags)]) == 0
    assert capsys.readouterr().out == f"cairn-sim: {expected.text()}\n"
    # the same against a truth file written by `cairn-sim truth`, with a bad flag line added
    truth_file = tmp_path / "truth.jsonl"
    env_run = [sys.executable, "-m", "simulator", "truth", str(fleet), "--seconds", seconds]
    truth_file.write_text(
        subprocess.run(env_run, capture_output=True, text=True, check=True).stdout
    )
    assert list(read_truth(truth_file.read_text().splitlines())) == records
    with flags.open("a") as fh:
        fh.write("{oops\n")
    argv = ["score", "--truth", str(truth_file), "--flags", str(flags), "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["tp"] == expected.tp
    assert doc["fp"] == expected.fp
    assert doc["recall"] == pytest.approx(expected.recall)
    assert doc["bad_lines"] == 1
    assert "skipped" in err
    assert main(["detect", str(fleet), "--seconds", seconds, "--score"]) == 0
    assert f"cairn-sim: {expected.text()}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["score", "--flags", "x"], "fleet"),
        (["score", "--fleet", "f.toml", "--flags", "x"], "seconds"),
        (["score", "--fleet", "f.toml", "--truth", "t", "--flags", "x"], "truth"),
        (["detect", "f.toml", "--seconds", "60", "--window", "0"], "window"),
        (["detect", "f.toml", "--seconds", "60", "--threshold", "-1"], "threshold"),
        (["score", "--truth", "missing.jsonl", "--flags", "x"], "truth"),
    ],
)
def test_bad_options_are_one_line(
    argv: list[str],
    key: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.toml").write_text(SPIKY)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cairn-sim: config key '{key}'"), err
    assert len(err.strip().splitlines()) == 1
