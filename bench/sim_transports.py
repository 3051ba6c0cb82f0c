"""Fleet-file transports into a real edge: readings/s per transport, simulator to SQLite buffer.

Run from the repository root::

    .venv/bin/python bench/sim_transports.py [--devices 20] [--instants 300] [--only serial-csv]
        [--target-rate R]

For each transport, a fresh edge process (``python -m edge run``, the default buffer settings:
flush 200 ms, synchronous full; NATS unreachable, so everything stays in the buffer) with the
source that receives it (``simulator.transports.edge_sources_toml``), then ``--devices`` devices
of one type sending ``--instants`` instants as fast as the transport takes them (``paced =
false``). Figures: readings, messages, the simulator's rate (until its last message was
acknowledged / written / sent) and the end-to-end rate (until the edge's buffer holds every
reading of the ledger). MQTT goes through a real Mosquitto; HTTP and WebSocket carry device
tokens issued from a hub signing key; BLE advertisements go through the edge's
``[[ble]] simulated_socket``.

With ``--target-rate R`` (readings/s, as the edge counts them) each transport is sent open
loop instead (``simulator.pacing``: every message due at a time fixed in advance, whatever the
receiver's pace): the figures are then the target, the rate achieved (readings sent per second
of the schedule's window), the acknowledged rate, the late sends and the largest lag.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contract.model import now_us
from hub.auth import TokenAuthority
from simulator.fleetfile import parse_fleet
from simulator.fleetrun import send_fleet_file
from simulator.lab import ManagedProcess
from simulator.pacing import OpenLoop
from simulator.servers import Mosquitto, free_port
from simulator.transports import edge_sources_toml

SENSORS = """sensors = [
  { key = "temperature", generator = "temperature" },
  { key = "humidity", generator = "humidity" },
  { key = "pressure", generator = "pressure" },
]"""
GPS = 'sensors = [{ key = "fix", generator = "gps", center = [48.85, 2.35] }]'

TRANSPORTS = {
    "mqtt-json": ('{ kind = "mqtt", payload = "json" }', SENSORS),
    "mqtt-value": ('{ kind = "mqtt", payload = "value" }', SENSORS),
    "mqtt-senml": ('{ kind = "mqtt", payload = "senml" }', SENSORS),
    "serial-jsonl": ('{ kind = "serial", format = "jsonl", port = "%(dir)s/{device}" }', SENSORS),
    "serial-csv": ('{ kind = "serial", format = "csv", port = "%(dir)s/{device}" }', SENSORS),
    "serial-nmea": ('{ kind = "serial", format = "nmea", port = "%(dir)s/{device}" }', GPS),
    "http": ('{ kind = "http", url = "%(url)s", token_key = "%(key)s", tenant = "acme" }', SENSORS),
    "ws": ('{ kind = "ws", url = "%(url)s", token_key = "%(key)s", tenant = "acme" }', SENSORS),
    "http-batch10": (
        '{ kind = "http", url = "%(url)s", token_key = "%(key)s", tenant = "acme", batch = 10 }',
        SENSORS,
    ),
    "ws-batch10": (
        '{ kind = "ws", url = "%(url)s", token_key = "%(key)s", tenant = "acme", batch = 10 }',
        SENSORS,
    ),
    "ble-bthome": ('{ kind = "ble", format = "bthome", socket = "%(dir)s/ble.sock" }', SENSORS),
    "ble-ruuvi": ('{ kind = "ble", format = "ruuvi", socket = "%(dir)s/ble.sock" }', SENSORS),
}


def stored(buffer: Path) -> int:
    if not buffer.exists():
        return 0
    conn = sqlite3.connect(buffer)
    try:
        (n,) = conn.execute("SELECT coalesce(sum(count), 0) FROM batches").fetchone()
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()
    return int(n)


async def run_one(
    name: str, devices: int, instants: int, folder: Path, target_rate: float | None = None
) -> str:
    transport, sensors = TRANSPORTS[name]
    port = free_port()
    key = folder / "hub.key"
    auth = TokenAuthority(key, issuer="cairn-hub", audience="cairn-api")
    pem = folder / "tokens.pem"
    pem.write_bytes(auth.public_key_pem())
    table = transport % {"dir": folder, "url": f"http://127.0.0.1:{port}", "key": key}
    text = (
        f'seed = 3\n[[device_types]]\nname = "dev"\ncount = {devices}\ninterval_s = 1\n'
        f"transport = {table}\n{sensors}\n"
    )
    fleet = parse_fleet(text).with_start(now_us() - instants * 1_000_000)
    (dtype,) = fleet.device_types
    broker = Mosquitto(folder / "mosquitto").start() if name.startswith("mqtt") else None
    edge: ManagedProcess | None = None
    try:
        mqtt_url = broker.url if broker is not None else "mqtt://127.0.0.1:1"
        config = folder / "edge.toml"
        config.write_text(
            '[edge]\nid = "bench"\ntenant = "acme"\ndata_dir = "state"\n'
            '[forwarder]\nnats_url = "nats://127.0.0.1:1"\n[admin]\nlisten = "127.0.0.1:0"\n'
            + edge_sources_toml(dtype, mqtt_url=mqtt_url, http_key=(auth.kid, str(pem)))
        )
        edge = ManagedProcess("edge", "edge", config, folder / "edge.log", "WARNING")
        edge.start()
        port_file = folder / "state" / "admin.port"
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"edge did not start: see {folder / 'edge.log'}")
            await asyncio.sleep(0.05)
        loop = OpenLoop.for_rate(fleet, target_rate) if target_rate is not None else None
        t0 = time.perf_counter()
        ledger = await send_fleet_file(fleet, mqtt_url, count=instants, paced=False, open_loop=loop)
        sent = time.perf_counter() - t0
        buffer = folder / "state" / "buffer.sqlite3"
        while stored(buffer) < ledger.count:
            if time.perf_counter() - t0 > 300:
                raise RuntimeError(f"{name}: {stored(buffer)} of {ledger.count} stored")
            await asyncio.sleep(0.02)
        total = time.perf_counter() - t0
    finally:
        if edge is not None:
            edge.stop()
        if broker is not None:
            broker.stop()
    if loop is not None:
        r = loop.report(ledger.count, bounded=True)
        return (
            f"{name:<13} {ledger.count:>9,} {r.target_rate:>10,.0f} {r.achieved_rate:>10,.0f}"
            f" {r.ratio:>6.1%} {r.acked_rate:>10,.0f} {r.late:>6,}/{r.messages:<7,}"
            f" {r.lag_max_s * 1e3:>7.1f} {ledger.count / total:>11,.0f}"
        )
    return (
        f"{name:<13} {ledger.count:>9,} {ledger.messages:>9,} {ledger.count / sent:>12,.0f}"
        f" {ledger.count / total:>12,.0f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--instants", type=int, default=300)
    parser.add_argument("--only", nargs="*", choices=sorted(TRANSPORTS), default=None)
    parser.add_argument(
        "--target-rate", type=float, default=None, help="open loop at this many readings/s"
    )
    args = parser.parse_args()
    if args.target_rate is None:
        print(f"{args.devices} devices x {args.instants} instants, as fast as each takes")
        print(
            f"{'transport':<13} {'readings':>9} {'messages':>9} {'sim r/s':>12} {'stored r/s':>12}"
        )
    else:
        print(
            f"{args.devices} devices x {args.instants} instants, open loop at "
            f"{args.target_rate:,.0f} readings/s"
        )
        print(
            f"{'transport':<13} {'readings':>9} {'target/s':>10} {'sent/s':>10} {'ratio':>6}"
            f" {'acked/s':>10} {'late/sends':>14} {'lag max':>7} {'stored/s':>11}"
        )
    for name in args.only or TRANSPORTS:
        folder = Path(tempfile.mkdtemp(prefix="cairn-b-", dir="/tmp"))
        try:
            line = await run_one(name, args.devices, args.instants, folder, args.target_rate)
            print(line, flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
