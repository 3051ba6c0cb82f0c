"""cairn-sim on the command line: run, preview, the demo/bench slots, one-line errors."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from contract.model import now_us
from simulator.cli import main
from simulator.fleet import Fleet, FleetSpec
from simulator.servers import Mosquitto, free_port
from tests.test_sim_wire import Subscriber


async def test_run_sends_the_fleet_and_prints_a_summary(mosquitto: Mosquitto) -> None:
    async with Subscriber(mosquitto.port) as sub:
        proc = await asyncio.create_subprocess_exec(
            *[
                sys.executable,
                "-m",
                "simulator",
                "run",
                "--mqtt",
                mosquitto.url,
                "--devices",
                "3",
                "--sensors",
                "2",
                "--count",
                "10",
                "--fast",
                "--start",
                "2026-03-01T12:00:00Z",
            ],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        lines = out.decode().strip().splitlines()
        assert lines[0].startswith("cairn-sim: 3 devices x 2 sensors, 10 instants, fast, json")
        assert "30 messages, 60 readings acknowledged" in lines[-1]
        await sub.wait_for(30)
    fleet = Fleet(FleetSpec(devices=3, sensors=2, start_us=1_772_366_400_000_000))
    first = {t: json.loads(p) for t, p in sub.messages if json.loads(p)["ts"] == fleet.ts(0)}
    assert first == {
        f"devices/{d}": {
            "ts": fleet.ts(0),
            "temp": fleet.values(i, 0, 0, 1)[0],
            "hum": fleet.values(i, 1, 0, 1)[0],
        }
        for i, d in enumerate(fleet.device_ids)
    }


def test_run_duration_and_value_mode(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "--mqtt", mosquitto.url, "--devices", "2", "--sensors", "3", "--rate", "5"]
    argv += ["--duration", "2", "--fast", "--mode", "value"]
    assert main(argv) == 0
    # 2 s at 5 Hz = 10 instants x 2 devices x 3 sensors, one reading per message
    assert "60 messages, 60 readings acknowledged" in capsys.readouterr().out


def test_preview_prints_each_device_as_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "--devices", "2", "--sensors", "8", "-n", "3", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    fleet = Fleet(FleetSpec(seed=4, devices=2, sensors=8))
    for key in fleet.sensor_keys:
        assert f"\n{key} " in out
    lines = out.splitlines()
    for d, device in enumerate(fleet.device_ids):
        at = lines.index(device)
        assert lines[at + 1].split() == ["ts", *fleet.sensor_keys]
        for k in range(3):
            cells = lines[at + 2 + k].split()
            assert cells[0] == f"2026-01-01T00:00:0{k}.000000Z"
            expected = [fleet.values(d, s, k, 1)[0] for s in range(8)]
            assert cells[1:] == [
                str(v).lower() if isinstance(v, bool) else repr(v) for v in expected
            ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["run", "--devices", "0"],
            "cairn-sim: config key 'devices': must be in 1..1,000,000, not 0",
        ),
        (["run", "--count", "-1"], "cairn-sim: config key 'count': must not be negative"),
        (
            ["run", "--mode", "value", "--instants-per-message", "3", "--count", "1"],
            (
                "cairn-sim: config key 'instants_per_message': "
                "value mode sends one reading per message"
            ),
        ),
        (["preview", "-n", "0"], "cairn-sim: config key 'n': must be at least 1"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err == message + "\n"


def test_an_unreachable_broker_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["run", "--mqtt", f"mqtt://127.0.0.1:{port}", "--count", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cairn-sim: mqtt: cannot connect to mqtt://127.0.0.1:{port}: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "argv", [["run", "--bogus"], ["preview", "--start", "yesterday"], ["nothing"], []]
)
def test_usage_errors_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cairn-sim: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_demo_and_bench_have_their_own_arguments(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: cairn-sim {command} " in capsys.readouterr().out


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("run", "preview", "demo", "bench"):
        assert command in out


async def test_a_fast_run_ends_at_the_current_time(mosquitto: Mosquitto) -> None:
    async with Subscriber(mosquitto.port) as sub:
        before = now_us()
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "simulator", "run", "--mqtt", mosquitto.url, "--devices"],
            *["1", "--sensors", "1", "--count", "5", "--rate", "0.5", "--fast"],
            stdout=asyncio.subprocess.DEVNULL,
        )
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        after = now_us()
        await sub.wait_for(5)
    stamps = sorted(json.loads(p)["ts"] for _, p in sub.messages)
    assert [t - stamps[0] for t in stamps] == [0, 2_000_000, 4_000_000, 6_000_000, 8_000_000]
    assert before <= stamps[-1] <= after  # the last instant is "now", none in the future


def test_bad_rate_with_a_duration_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--duration", "5", "--rate", "nan"]) == 2
    assert capsys.readouterr().err.startswith("cairn-sim: config key 'rate_hz': ")
