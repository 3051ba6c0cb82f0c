"""``cairn-hub`` as users run it: config errors, tokens, the hub as a real process."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest

from contract.codec import encode_batch
from contract.model import Reading
from contract.names import (
    telemetry_subject,
)
from contract.natsconn import NatsIdentity
from contract.signing import batch_headers, generate_key, public_key_bytes
from hub.cli import main
from hub.config import Synchronous, load_config
from hub.registry import Registry
from simulator.servers import NatsServer
from tests.polling import stream_exists, until


def hub_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``cairn-hub ARGS`` as a real process (``python -m hub``), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _get(url: str, token: str, context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[nats]\nfetch_batch = 0\n", "nats.fetch_batch"),
        ("[nats]\nfetchbatch = 3\n", "nats.fetchbatch"),
        ('[nats]\nack_wait_s = "soon"\n', "nats.ack_wait_s"),
        ('[nats]\nurl = "http://127.0.0.1:4222"\n', "nats.url"),
        ('[store]\nsynchronous = "off"\n', "store.synchronous"),
        ('[api]\nlisten = "127.0.0.1"\n', "api.listen"),
        ("[auth]\nleeway_s = 100000\n", "auth.leeway_s"),
        ('[hub]\nstate_dir = ""\n', "hub.state_dir"),
        ("[hubb]\n", "hubb"),
        ("[hub\n", "hub.toml"),
    ],
)
def test_config_errors_are_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str
) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(text)
    for argv in (
        ["run", "--config", str(config)],
        ["token", "create", "--config", str(config), "--tenant", "acme", "--role", "viewer"],
        ["tenants", "list", "--config", str(config)],
    ):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert out == ""
        [line] = err.splitlines()
        assert line.startswith("cairn-hub: config key "), line
        assert key in line, line
    assert not (tmp_path / "state").exists()  # nothing made from a bad config


def test_api_port_in_use_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "hub.toml").write_text(f'[api]\nlisten = "127.0.0.1:{port}"\n')
        assert main(["run", "--config", str(tmp_path / "hub.toml")]) == 2
    [line] = capsys.readouterr().err.splitlines()[-1:]
    assert line.startswith(f"cairn-hub: config key 'api.listen': cannot listen on 127.0.0.1:{port}")


def test_config_defaults_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    config = tmp_path / "etc" / "hub.toml"
    config.write_text('[hub]\nstate_dir = "../var/hub"\n[store]\nsynchronous = "full"\n')
    loaded = load_config(config)
    assert loaded.hub.state_dir == tmp_path / "etc" / ".." / "var" / "hub"
    assert loaded.hub.store_path.parent == loaded.hub.state_dir
    assert loaded.store.synchronous is Synchronous.FULL
    assert loaded.nats.url == "nats://127.0.0.1:4222"
    assert (loaded.nats.duplicate_window_s, loaded.nats.fetch_batch) == (120.0, 64)
    assert (loaded.nats.ack_wait_s, loaded.api.listen) == (30.0, "127.0.0.1:8080")
    assert (loaded.auth.issuer, loaded.auth.audience) == ("cairn-hub", "cairn-api")
    assert (loaded.auth.token_ttl_s, loaded.auth.leeway_s) == (86400, 30)
    config.write_text("")
    assert load_config(config).hub.state_dir == tmp_path / "etc" / "state"


def test_token_create_and_lists_without_a_store(tmp_path: Path) -> None:
    (tmp_path / "hub.toml").write_text('[hub]\nstate_dir = "state"\n')
    done = hub_cli(
        "token",
        "create",
        "--config",
        "hub.toml",
        "--tenant",
        "acme",
        "--role",
        "admin",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    [token] = done.stdout.splitlines()
    assert token.count(".") == 2
    key = tmp_path / "state" / "jwt-signing.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    for what in ("edges",):  # (tenants list reads the registry too: no store is no error)
        done = hub_cli(what, "list", "--config", "hub.toml", cwd=tmp_path)
        assert done.returncode == 2
        assert done.stdout == ""
        [line] = done.stderr.splitlines()
        assert line.startswith("cairn-hub: no store at "), line
    done = hub_cli(
        "token",
        "create",
        "--config",
        "hub.toml",
        "--tenant",
        "a.b",
        "--role",
        "viewer",
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith("cairn-hub: tenant must match")


async def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> str:
    def written() -> bool:
        assert proc.poll() is None, "the hub exited"
        return path.exists() and path.read_text().endswith("\n")

    await until(written, f"{path}", timeout)
    return path.read_text().strip()


async def test_hub_process_serves_tokens_from_token_create_and_stops_on_sigterm(
    tmp_path: Path, unique_name: str
) -> None:
    """The deployer's order: ``cairn-hub pki init``, nats-server with the hub's NATS
    certificate, then the hub (HTTPS API, TLS to NATS)."""
    (tmp_path / "hub.toml").write_text('[hub]\nstate_dir = "state"\n')
    init = hub_cli("pki", "init", "--config", "hub.toml", cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    files = dict(line.split(None, 1) for line in init.stdout.splitlines())
    pki = tmp_path / "state" / "pki"
    assert files["nats-cert"] == str(pki / "nats.pem")
    tls = (pki / "ca.pem", Path(files["nats-cert"]), Path(files["nats-key"]))
    nats_server = NatsServer(tmp_path / "nats", tls=tls).start()
    (tmp_path / "hub.toml").write_text(
        f'[hub]\nstate_dir = "state"\n[nats]\nurl = "{nats_server.url}"\n'
        '[api]\nlisten = "127.0.0.1:0"\n'
    )
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    log = (tmp_path / "hub.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "run", "--config", "hub.toml"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        port = await _wait_file(tmp_path / "state" / "api.port", proc, 30)
        api = f"https://127.0.0.1:{port}/api/v1"
        created = await asyncio.to_thread(
            hub_cli,
            "token",
            "create",
            "--config",
            "hub.toml",
            "--tenant",
            "acme",
            "--role",
            "viewer",
            "--ttl-s",
            "600",
            "--subject",
            "tester",
            cwd=tmp_path,
        )
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        assert await asyncio.to_thread(_get, f"{api}/devices", token, context) == (
            200,
            {"devices": []},
        )
        head, claims, sig = token.split(".")
        tampered = f"{head}.{claims}.{sig[:10]}{'B' if sig[10] == 'A' else 'A'}{sig[11:]}"
        status, body = await asyncio.to_thread(_get, f"{api}/devices", tampered, context)
        assert (status, body["error"]) == (401, "unauthorized")

        edge = unique_name[-20:]
        key = generate_key()  # enrolled while the hub runs: it notices the other process's write
        registry = Registry(tmp_path / "state" / "registry.sqlite3")
        registry.register("acme", edge, public_key_bytes(key))
        registry.close()
        readings = [Reading("d1", "temp", 1_000_000 + i, float(i)) for i in range(10)]
        body = encode_batch(readings)
        nc = await nats.connect(
            nats_server.url, **NatsIdentity(ca_file=str(pki / "ca.pem")).options()
        )
        js = nc.jetstream(timeout=10)
        # the hub makes the stream once it is connected
        await until(lambda: stream_exists(js), "the hub to make the stream", 30)
        await js.publish(
            telemetry_subject("acme", edge),
            body,
            headers=batch_headers(key, "acme", edge, 1, 1, body),
        )
        await nc.close()
        await until(
            lambda: _get(f"{api}/stats", token, context)[1]["readings"] == 10,
            "stored",
            30,
            in_thread=True,
        )
        status, body = await asyncio.to_thread(
            _get, f"{api}/devices/d1/readings?sensor=temp&limit=3", token, context
        )
        assert status == 200
        assert [r["ts"] for r in body["readings"]] == [1_000_000, 1_000_001, 1_000_002]

        edges = await asyncio.to_thread(
            hub_cli, "edges", "list", "--config", "hub.toml", cwd=tmp_path
        )
        assert edges.returncode == 0, edges.stderr
        [row] = [json.loads(line) for line in edges.stdout.splitlines()]
        assert (row["tenant"], row["edge"], row["batches"], row["readings"], row["last_seq"]) == (
            "acme",
            edge,
            1,
            10,
            1,
        )
        tenants = await asyncio.to_thread(
            hub_cli, "tenants", "list", "--config", "hub.toml", cwd=tmp_path
        )
        assert tenants.stdout.splitlines() == ["acme"]

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        nats_server.stop()
    text = (tmp_path / "hub.log").read_text()
    assert f"hub API on https://127.0.0.1:{port}/api/v1" in text
    assert f"(pin {files['ca-pin']})" in text
    assert "hub stopped" in text
    assert "Traceback" not in text
