"""``cairn-sim bench``: the end-to-end benchmark of the whole path on this machine.

For 1 and for 10 readings per MQTT message it measures, each time in the same run:

- **ceiling**: a bare gmqtt subscriber (``simulator.bare_subscriber``, same MQTT 5 / QoS 1 /
  ack-after-``on_message`` settings as the edge) draining the same load from the same broker;
- **edge ingest**: messages/s and readings/s the edge commits into its buffer (hub stopped, so
  the figure is the edge's, forwarding into JetStream included), and the ratio to the ceiling;
- **backlog drain**: readings/s the hub moves from JetStream into its store when started on
  that backlog;
- **end to end**: readings/s from the first MQTT publish until the hub store holds them all;
- **latency**: p50/p99 from a reading's timestamp to its commit at the hub, under a paced load;
- **bytes**: JetStream bytes per reading (body, headers, subject) against JSON lines + zstd of
  the same batches;
- **edge memory**: peak RSS of the edge process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import numpy as np
import zstandard

from contract.codec import decode_batch
from contract.names import STREAM_NAME
from simulator.fleet import Fleet, FleetSpec
from simulator.lab import Lab, LabSettings
from simulator.send import send_fleet

__all__ = ["add_bench_args", "main"]


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--messages", type=int, default=60_000, help="MQTT messages per throughput run")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="length of the paced run")
    p.add_argument(
        "--latency-rate",
        type=float,
        default=20_000,
        help="readings/s of the paced run (at most half the measured end-to-end rate)",
    )
    p.add_argument("--only", choices=["1", "10"], default=None, help="run one case only")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    p.add_argument("--dir", type=Path, default=None, help="keep the lab here (default: a temp dir)")


@dataclass(frozen=True)
class _Case:
    name: str
    mode: str
    sensors: int
    topic: str

    @property
    def per_message(self) -> int:
        return 1 if self.mode == "value" else self.sensors


CASES = {
    "1": _Case("1 reading/message", "value", 3, "sensors/#"),
    "10": _Case("10 readings/message", "json", 10, "devices/#"),
}


def _fleet(
    case: _Case, messages: int, start_us: int | None = None, rate_hz: float = 1.0
) -> tuple[Fleet, int]:
    devices = 200
    instants = max(1, -(-messages * case.per_message // (devices * case.sensors)))
    spec = FleetSpec(seed=42, devices=devices, sensors=case.sensors, rate_hz=rate_hz)
    if start_us is not None:
        spec = FleetSpec(
            seed=42, devices=devices, sensors=case.sensors, rate_hz=rate_hz, start_us=start_us
        )
    return Fleet(spec), instants


async def _send(
    lab: Lab, fleet: Fleet, instants: int, case: _Case, client_id: str, *, paced: bool = False
) -> None:
    """Send ``instants`` of ``fleet`` in the case's message format, fast unless ``paced``."""
    await send_fleet(
        fleet,
        lab.mosquitto.url,
        instants=range(instants),
        mode=case.mode,
        paced=paced,
        client_id=client_id,
    )


def _edge_committed(lab: Lab) -> int:
    buf = lab.edge_status().get("buffer", {})
    return int(buf.get("readings_unsent", 0)) + int(buf.get("readings_sent", 0))


async def _poll(predicate: Any, limit_s: float, what: str) -> float:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return time.time()
        await asyncio.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


async def _bare_ceiling(lab: Lab, case: _Case, messages: int) -> float:
    fleet, instants = _fleet(case, messages)
    total_msgs = instants * fleet.spec.devices * (case.sensors if case.mode == "value" else 1)
    sub = subprocess.Popen(  # noqa: ASYNC220 - started once, read from a thread
        [
            sys.executable,
            "-m",
            "simulator.bare_subscriber",
            "--port",
            str(lab.mosquitto.port),
            "--topic",
            case.topic,
            "--count",
            str(total_msgs),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert sub.stdout is not None
    line = await asyncio.to_thread(sub.stdout.readline)
    if line.strip() != "ready":
        raise RuntimeError("bare subscriber did not start")
    t0 = time.time()
    await _send(lab, fleet, instants, case, "bench-bare")
    out = json.loads(await asyncio.to_thread(sub.stdout.readline))
    sub.wait()
    return float(total_msgs / (out["last"] - t0))


async def _run_case(root: Path, case: _Case, args: argparse.Namespace) -> dict[str, Any]:
    fig: dict[str, Any] = {"case": case.name}
    settings = LabSettings(
        tenant="bench", edge_id="edge-bench", edge_log_level="WARNING", hub_log_level="WARNING"
    )
    with Lab(root, settings) as lab:
        await asyncio.to_thread(lab.start, edge=False)
        # 1. ceiling: bare gmqtt subscriber on the same broker and load
        fig["bare_msgs_per_s"] = await _bare_ceiling(lab, case, args.messages)

        # 2. edge ingest with the hub stopped (the stream exists: the hub made it)
        await asyncio.to_thread(lab.hub.stop)
        await asyncio.to_thread(lab.start_edge)
        fleet, instants = _fleet(case, args.messages)
        readings = instants * fleet.spec.devices * case.sensors
        msgs = readings // case.per_message
        t0 = time.time()
        await _send(lab, fleet, instants, case, "bench-ingest")
        t1 = await _poll(lambda: _edge_committed(lab) >= readings, 300, "edge to commit the load")
        fig["edge_msgs_per_s"] = msgs / (t1 - t0)
        fig["edge_readings_per_s"] = readings / (t1 - t0)
        fig["edge_vs_bare"] = fig["edge_msgs_per_s"] / fig["bare_msgs_per_s"]
        unsent = lambda: lab.edge_status().get("buffer", {}).get("readings_unsent", -1) == 0  # noqa: E731
        await _poll(unsent, 300, "edge to forward its buffer into JetStream")

        # 3. backlog drain: hub started on a JetStream backlog
        await asyncio.to_thread(lab.start_hub)
        t0 = time.time()  # the hub is up (API listening); from here on it is the drain
        t1 = await _poll(
            lambda: lab.hub_stats().get("readings", 0) >= readings, 300, "hub to drain the backlog"
        )
        fig["drain_readings_per_s"] = readings / (t1 - t0)

        # 4. end to end, as fast as the simulator can publish
        before = lab.hub_stats()["readings"]
        fleet2 = Fleet(FleetSpec(seed=43, devices=fleet.spec.devices, sensors=case.sensors))
        t0 = time.time()
        await _send(lab, fleet2, instants, case, "bench-e2e")
        t1 = await _poll(
            lambda: lab.hub_stats().get("readings", 0) >= before + readings,
            300,
            "hub to store the load",
        )
        fig["e2e_readings_per_s"] = readings / (t1 - t0)

        # 5. latency under a paced load
        rate_hz = 1.0
        # Half the end-to-end rate just measured: latency of a path that keeps up, not of a queue.
        paced_rate = min(args.latency_rate, fig["e2e_readings_per_s"] / 2)
        devices = max(1, round(paced_rate / case.sensors))
        spec = FleetSpec(
            seed=44,
            devices=devices,
            sensors=case.sensors,
            rate_hz=rate_hz,
            start_us=time.time_ns() // 1000 + 2_000_000,  # time to generate the first instant
        )
        n_inst = max(1, int(args.latency_seconds * rate_hz))
        before = lab.hub_stats()["readings"]
        mark_us = spec.start_us
        await _send(lab, Fleet(spec), n_inst, case, "bench-lat", paced=True)
        expect = before + devices * case.sensors * n_inst
        await _poll(
            lambda: lab.hub_stats().get("readings", 0) >= expect, 300, "hub to store the paced load"
        )
        lat = _latencies_us(lab.hub_store_path, mark_us)
        fig["latency_p50_ms"] = float(np.percentile(lat, 50)) / 1000
        fig["latency_p99_ms"] = float(np.percentile(lat, 99)) / 1000
        fig["paced_readings_per_s"] = devices * case.sensors * rate_hz

        # 6. bytes: JetStream's own count over everything it holds
        total_readings = lab.hub_stats()["readings"]
        js_bytes, js_msgs = await _stream_bytes(lab)
        all_body, all_jsonl, all_n = _bytes_all(lab.hub_store_path)
        fig["wire_bytes_per_reading"] = js_bytes / total_readings
        fig["body_bytes_per_reading"] = all_body / all_n
        fig["jsonl_zstd_bytes_per_reading"] = all_jsonl / all_n
        fig["jetstream_messages"] = js_msgs
        fig["readings_per_batch"] = total_readings / max(1, js_msgs)
        fig["edge_peak_rss_mib"] = _peak_rss_mib(lab.edge.pid)
    return fig


def _jsonl_zstd(batch_body: bytes) -> int:
    b = decode_batch(batch_body)
    lines = "\n".join(
        json.dumps({"device": r.device, "sensor": r.sensor, "ts": r.ts, "value": r.value})
        for r in b.readings()
    )
    return len(zstandard.ZstdCompressor(level=3).compress(lines.encode()))


def _latencies_us(path: Path, since_us: int) -> Any:
    """Per reading stamped at or after ``since_us``: hub commit time minus reading time."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    lat: list[Any] = []
    try:
        rows = con.execute("SELECT received_us, body FROM batches WHERE t_max >= ?", (since_us,))
        for received_us, body in rows:
            lat.extend(received_us - s.ts[s.ts >= since_us] for s in decode_batch(body).series)
    finally:
        con.close()
    return np.concatenate(lat) if lat else np.array([0])


def _bytes_all(path: Path) -> tuple[int, int, int]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    body = jsonl = n = 0
    try:
        for blob, count in con.execute("SELECT body, count FROM batches"):
            body += len(blob)
            jsonl += _jsonl_zstd(blob)
            n += count
    finally:
        con.close()
    return body, jsonl, n


async def _stream_bytes(lab: Lab) -> tuple[int, int]:
    nc = await nats.connect(lab.nats.url, **lab.nats_identity.options())
    try:
        info = await nc.jetstream().stream_info(STREAM_NAME)
        return int(info.state.bytes), int(info.state.messages)
    finally:
        await nc.close()


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _print(fig: dict[str, Any]) -> None:
    ratio = fig["jsonl_zstd_bytes_per_reading"] / fig["body_bytes_per_reading"]
    rows = [
        ("bare gmqtt subscriber (ceiling)", f"{fig['bare_msgs_per_s']:,.0f} msg/s"),
        (
            "edge MQTT ingest -> buffer",
            f"{fig['edge_msgs_per_s']:,.0f} msg/s ({fig['edge_readings_per_s']:,.0f} readings/s)"
            f" = {fig['edge_vs_bare']:.2f}x the ceiling",
        ),
        ("backlog drain JetStream -> store", f"{fig['drain_readings_per_s']:,.0f} readings/s"),
        ("end to end MQTT -> hub store", f"{fig['e2e_readings_per_s']:,.0f} readings/s"),
        (
            "latency reading ts -> hub commit",
            f"p50 {fig['latency_p50_ms']:.0f} ms, p99 {fig['latency_p99_ms']:.0f} ms"
            f" at {fig['paced_readings_per_s']:,.0f} readings/s paced",
        ),
        (
            "bytes per reading",
            f"{fig['wire_bytes_per_reading']:.2f} on JetStream (body+headers+subject),"
            f" {fig['body_bytes_per_reading']:.2f} body",
        ),
        (
            "  baseline: JSON lines + zstd",
            f"{fig['jsonl_zstd_bytes_per_reading']:.2f} of the same batches ({ratio:.1f}x larger)",
        ),
        ("readings per batch (mean)", f"{fig['readings_per_batch']:,.0f}"),
        ("edge peak RSS", f"{fig['edge_peak_rss_mib']:.1f} MiB"),
    ]
    print(f"\n== {fig['case']}")
    for label, value in rows:
        print(f"  {label:<34} {value}")


async def _run(args: argparse.Namespace) -> int:
    keys = [args.only] if args.only else ["1", "10"]
    figs = []
    print(f"cairn bench: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="cairn-bench-") as tmp:
        base = args.dir.resolve() if args.dir else Path(tmp)
        for k in keys:
            fig = await _run_case(base / f"case-{k}", CASES[k], args)
            _print(fig)
            figs.append(fig)
    if args.json:
        args.json.write_text(json.dumps(figs, indent=2))
    return 0


def main(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
