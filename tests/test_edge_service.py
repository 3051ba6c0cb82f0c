"""The whole edge service: in process and as ``python -m edge``; status API; CLI."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from contract.codec import decode_batch
from contract.model import Reading, now_us
from contract.names import HDR_COUNT
from edge.config import load_config
from edge.service import run_edge
from simulator.servers import Mosquitto, NatsServer
from tests.test_edge_support import (
    REPO,
    EdgeProcess,
    MqttProxy,
    RawPublisher,
    create_stream,
    http_json,
    poll,
    stored,
    stream_messages,
    write_config,
)

pytestmark = pytest.mark.timeout(120)

T_US = (now_us() // 1_000_000 - 60) * 1_000_000


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


async def test_in_process_from_mqtt_to_jetstream_with_the_status_api(
    tmp_path: Path, mosquitto: Mosquitto, nats_server: NatsServer, unique_name: str
) -> None:
    await create_stream(nats_server.url)
    config = load_config(
        write_config(
            tmp_path, mqtt_url=mosquitto.url, nats_url=nats_server.url, edge_id="e-1", tenant="t-1"
        )
    )
    stop = asyncio.Event()
    service = asyncio.create_task(run_edge(config, stop=stop, handle_signals=False))
    port_file = tmp_path / "state" / "admin.port"
    await poll(port_file.exists, "admin.port (port 0 was asked for)")
    url = f"http://127.0.0.1:{int(port_file.read_text())}/api/v1/status"

    async def status() -> dict[str, object]:
        return await asyncio.to_thread(http_json, url)

    async def connected() -> bool:
        return bool((await status())["sources"]["mqtt"]["connected"])  # type: ignore[index]

    await poll(connected, "the MQTT source")
    expected = set()
    async with RawPublisher(mosquitto.port, unique_name) as pub:
        mids = []
        for i in range(40):
            mids.append(
                pub.publish(f"sensors/d{i % 4}/s", json.dumps({"ts": T_US + i, "value": i}))
            )
            expected.add(Reading(f"d{i % 4}", "s", T_US + i, i))
        mids.append(
            pub.publish("devices/d9", json.dumps([{"ts": T_US, "a": 1}, {"ts": T_US + 1, "a": 2}]))
        )
        expected |= {Reading("d9", "a", T_US, 1), Reading("d9", "a", T_US + 1, 2)}
        mids.append(pub.publish("devices/d9", b"\xff"))
        await pub.wait_acked(mids)

    async def forwarded() -> bool:
        return (await status())["counters"]["readings-forwarded"] == 42  # type: ignore[index]

    await poll(forwarded, "42 readings forwarded")
    msgs = await stream_messages(nats_server.url)
    assert {r for m in msgs for r in decode_batch(m.data).readings()} == expected
    assert sum(int(m.headers[HDR_COUNT]) for m in msgs) == 42

    st = await status()
    assert set(st) == {"edge", "tenant", "buffer", "counters", "sources", "forwarder"} | {
        "drain",
        "uplink",
        "clock",
    }
    assert (st["edge"], st["tenant"]) == ("e-1", "t-1")
    buffer = st["buffer"]
    assert isinstance(buffer, dict)
    assert set(buffer) == {
        "batches_unsent", "readings_unsent", "batches_sent", "readings_sent",
        "bytes_unsent", "file_bytes", "oldest_unsent_us", "last_seq",
        "max_bytes", "used_bytes", "policy", "state",
    }  # fmt: skip
    assert (buffer["max_bytes"], buffer["policy"], buffer["state"]) == (
        1 << 30,
        "drop-oldest",
        "ok",
    )
    assert 0 < buffer["used_bytes"] <= buffer["file_bytes"]
    assert (buffer["readings_sent"], buffer["readings_unsent"], buffer["oldest_unsent_us"]) == (
        42,
        0,
        None,
    )
    assert buffer["batches_sent"] == buffer["last_seq"] == len(msgs)
    assert st["counters"] == {
        "messages-received": 42,
        "readings-accepted": 42,
        "messages-rejected": 1,
        "redelivered-duplicate": 0,
        "batches-committed": len(msgs),
        "readings-committed": 42,
        "commit-errors": 0,
        "batches-forwarded": len(msgs),
        "readings-forwarded": 42,
        "publish-errors": 0,
        "readings-dropped": 0,
        "readings-refused": 0,
    }
    assert st["sources"] == {
        "mqtt": {
            "connected": True,
            "messages": 42,
            "accepted": 42,
            "rejected": {"bad-utf8": 1},
            "redelivered-duplicate": 0,
            "dropped": {},
            "refused": {},
        }
    }
    forwarder = st["forwarder"]
    assert isinstance(forwarder, dict)
    assert set(forwarder) == {
        "connected",
        "batches_sent",
        "readings_sent",
        "in_flight",
        "last_error",
    }
    assert (forwarder["connected"], forwarder["readings_sent"], forwarder["in_flight"]) == (
        True,
        42,
        0,
    )

    stop.set()
    await asyncio.wait_for(service, 30)
    assert not port_file.exists()  # removed on an orderly stop
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "edge.key").stat().st_mode & 0o777 == 0o600


async def test_sigterm_commits_acks_and_exits_0(
    tmp_path: Path, mosquitto: Mosquitto, unique_name: str
) -> None:
    async with MqttProxy(mosquitto.port) as proxy:
        config = write_config(
            tmp_path, mqtt_url=proxy.url, flush_interval_ms=60_000, client_id=unique_name
        )
        edge = EdgeProcess(config).start()
        try:
            await edge.wait_ready()
            async with RawPublisher(mosquitto.port, f"{unique_name}-pub") as pub:
                await pub.wait_acked([pub.publish(f"sensors/d/s{i}", str(i)) for i in range(3)])

            async def received() -> bool:
                return (await edge.status())["counters"]["messages-received"] == 3  # type: ignore[no-any-return]

            await poll(received, "3 messages received (waiting for the 60 s flush)")
            assert proxy.pubacks == []
            status_out = cli("status", "--config", str(config))  # read-only, while it runs
            assert status_out.returncode == 0, status_out.stderr
            assert "unsent    0 batches, 0 readings" in status_out.stdout
            assert await asyncio.to_thread(edge.terminate) == 0
            buffer_path = tmp_path / "state" / "buffer.sqlite3"
            assert sorted(r.sensor for r in stored(buffer_path)) == ["s0", "s1", "s2"]  # last flush
            assert sorted(code for _, code in proxy.pubacks) == [0, 0, 0]  # acked before leaving
            log = edge.tail()
            assert "starting: buffer" in log
            assert " ready (admin API 127.0.0.1:" in log
            assert "Traceback" not in log

            json_out = cli("status", "--config", str(config), "--json")
            assert json_out.returncode == 0, json_out.stderr
            doc = json.loads(json_out.stdout)
            assert doc["edge"] == "edge-t"
            assert (doc["buffer"]["readings_unsent"], doc["buffer"]["batches_unsent"]) == (3, 1)

            edge.start()  # nothing comes back: everything was acknowledged
            st = await edge.wait_ready()
            assert st["buffer"]["readings_unsent"] == 3
            assert len(proxy.publishes) == 3
        finally:
            edge.kill()


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[edge]\nid = "e"\ntenant = "t"\n[buffer]\nflush_interval_ms = 0\n')
    for args in (["run", "--config", str(bad)], ["status", "--config", str(bad)]):
        out = cli(*args)
        assert out.returncode == 2
        assert out.stderr == (
            "cairn-edge: config key 'buffer.flush_interval_ms': must be between 1 and 60000, got 0\n"
        )
        assert out.stdout == ""
    out = cli("run", "--config", str(tmp_path / "missing.toml"))
    assert out.returncode == 2
    assert out.stderr.startswith("cairn-edge: config key ")
    assert "cannot read the config file" in out.stderr
    assert out.stderr.count("\n") == 1
    good = write_config(tmp_path / "never-ran")
    out = cli("status", "--config", str(good), "--log-level", "debug")
    assert out.returncode == 2
    assert out.stderr.startswith("cairn-edge: buffer ")
    assert "no such file" in out.stderr
    assert out.stderr.count("\n") == 1


def test_admin_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, admin_listen=f"127.0.0.1:{port}")
        out = cli("run", "--config", str(config))
    assert out.returncode == 2
    # Log lines of the start come first (stderr is the log); the error is one line, the last.
    assert out.stderr.splitlines()[-1] == (
        f"cairn-edge: config key 'admin.listen': cannot listen on 127.0.0.1:{port}: "
        "Address already in use"
    )
    assert out.stderr.count("cairn-edge: ") == 1
    assert "Traceback" not in out.stderr


def test_help_lists_the_commands() -> None:
    out = cli("--help")
    assert out.returncode == 0
    assert "run" in out.stdout
    assert "status" in out.stdout
    assert cli("run").returncode == 2  # --config is required (argparse's usage error)
