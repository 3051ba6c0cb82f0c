"""``cairn-sim demo``: a whole working Cairn on this machine, with a simulated fleet.

Starts Mosquitto, a NATS server with JetStream, the hub and one edge as real processes (free
loopback ports, state under one folder), then sends a seeded fleet over MQTT in real time and
prints a live line of counts until Ctrl-C, which stops every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import time
from pathlib import Path

from simulator.fleet import Fleet, FleetSpec
from simulator.lab import Lab, LabSettings
from simulator.send import Ledger, send_fleet

__all__ = ["add_demo_args", "main"]


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=50, help="simulated devices (default 50)")
    p.add_argument("--sensors", type=int, default=3, help="sensors per device (default 3)")
    p.add_argument(
        "--rate", type=float, default=1.0, help="readings per second per sensor (default 1)"
    )
    p.add_argument("--seed", type=int, default=1, help="fleet seed (default 1)")
    p.add_argument(
        "--dir",
        type=Path,
        default=Path(".state/demo"),
        help="folder for every process's config, logs and data (default .state/demo)",
    )
    p.add_argument("--keep", action="store_true", help="keep the previous run's data in --dir")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")


def _count(n: object) -> str:
    """A count for the status line; ``-`` when the process did not answer (stopping)."""
    return f"{n:>9,}" if isinstance(n, int) else f"{'-':>9}"


def _line(ledger: Ledger, lab: Lab, started: float) -> str:
    status = lab.edge_status()
    buf = status.get("buffer", {})
    stats = lab.hub_stats()
    unsent = buf.get("readings_unsent")
    committed = unsent + buf.get("readings_sent", 0) if isinstance(unsent, int) else None
    return (
        f"\r{time.monotonic() - started:7.0f}s  sent by devices {ledger.count:>9,}"
        f"  | in edge buffer {_count(committed)} ({_count(unsent).strip()} unsent)"
        f"  | stored at hub {_count(stats.get('readings'))}   "
    )


async def _run(args: argparse.Namespace) -> int:
    root = args.dir.resolve()
    if root.exists() and not args.keep:
        shutil.rmtree(root)
    settings = LabSettings(tenant="demo", edge_id="edge-1", mqtt_tls=True)
    lab = Lab(root, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"cairn demo: starting Mosquitto, NATS, hub and edge under {root}")
    try:
        await asyncio.to_thread(lab.start)
        token = lab.token()
        fleet = Fleet(
            FleetSpec(
                seed=args.seed,
                devices=args.devices,
                sensors=args.sensors,
                rate_hz=args.rate,
                start_us=time.time_ns() // 1000,
            )
        )
        dev, sensor = fleet.device_ids[0], fleet.sensor_keys[0]
        print(f"  MQTT broker   {lab.mosquitto.url}")
        print(f"  NATS server   {lab.nats.url} (the hub keeps its users: {lab.authorization_file})")
        print(f"  hub API       {lab.api_url}")
        print(f"  hub CA        {lab.ca_file} (TLS on NATS and the hub API)")
        print(f"  edge status   http://127.0.0.1:{lab.admin_port}/api/v1/status")
        print(f"  logs          {root}/*/*.log")
        print(f"  operator token (tenant demo):\n{token}\n")
        print("  try, in another shell:")
        curl = f'curl -s --cacert {lab.ca_file} -H "Authorization: Bearer {token}"'
        print(f"  {curl} {lab.api_url}/latest?device={dev}")
        print(f"  {curl} '{lab.api_url}/devices/{dev}/readings?sensor={sensor}&limit=5'")
        print(
            f"\n  fleet: {args.devices} devices x {args.sensors} sensors at {args.rate:g} Hz "
            f"over MQTT, seed {args.seed}. Ctrl-C stops everything.\n"
        )
        ledger = Ledger()
        sender = asyncio.create_task(
            send_fleet(
                fleet,
                lab.mosquitto.url,
                instants=None,
                paced=True,
                ledger=ledger,
                tls=lab.mqtt_tls_context,
            )
        )
        started = time.monotonic()
        tty = sys.stdout.isatty()
        ticks = 0
        while not stop.is_set() and not sender.done():
            line = await asyncio.to_thread(_line, ledger, lab, started)
            if tty:  # one line, rewritten in place
                sys.stdout.write(line)
            elif ticks % 10 == 0:  # a log: a line every 10 s
                sys.stdout.write(line.lstrip("\r") + "\n")
            ticks += 1
            sys.stdout.flush()
            if args.duration is not None and time.monotonic() - started >= args.duration:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        final = await asyncio.to_thread(_line, ledger, lab, started)
        print("\n" + final.lstrip("\r"))
        if sender.done() and not sender.cancelled() and sender.exception() is not None:
            print(f"\ncairn demo: the simulated fleet stopped: {sender.exception()}")
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        print("cairn demo: stopping")
    finally:
        await asyncio.to_thread(lab.stop)
    print("cairn demo: every process stopped")
    return 0


def main(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
