"""HTTP source benchmark: requests/s of single-reading POSTs with device-token verification,
committed into a real SQLite buffer, against the same server with auth off.

Run from the repository root (``wrk`` from Debian's packages is the load generator: ``apt-get
install wrk``; without it a slower aiohttp client is used and the figures say so)::

    .venv/bin/python bench/http_bench.py [--seconds 10] [--connections 256] [--devices 100]
                                         [--flush-ms 10] [--runs 3]

Each case runs the edge's HTTP source in a process of its own (one event loop, as the edge
runs it) with a real :class:`~edge.batcher.Batcher` and :class:`~edge.buffer.Buffer`
(synchronous full, the edge's default; ``--flush-ms`` is ``buffer.flush_interval_ms``: a POST
is answered after its commit, so with ``c`` connections the rate is also bounded by ``c`` per
flush interval). The load generator shares the machine. Every POST is one reading
(``{"ts": ..., "temp": 21.5}``) from one of ``--devices`` devices, each with its own token,
round robin; the rate limit is off. Cases:

* ``bare aiohttp``: an aiohttp app whose handler reads the body and answers 202, with no
  parsing, no token and no buffer (the ceiling of the HTTP server itself);
* ``auth off``: the edge's server whose verifier accepts any bearer, each token still naming
  its device (so the buffer sees the same 100 devices), nothing verified (the baseline);
* ``EdDSA, cached``: Ed25519 tokens, verified once per token then cached (the default);
* ``EdDSA, no cache``: ``token_cache_size = 0``: a signature check on every request;
* ``RS256, no cache``: RSA-2048 tokens, a signature check on every request.

After each run the buffer is read back: the readings in it must be at least the 2xx answers
counted by the load generator (a request still in flight when the load stops may be committed
uncounted), and there must be no non-2xx answer. Each figure is min / median / max of
``--runs`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from contract.codec import decode_batch
from edge.batcher import Batcher
from edge.buffer import Buffer
from edge.config import BufferSettings, HttpKeySettings, HttpSettings
from edge.sources.devtokens import DeviceClaims, DeviceTokenVerifier, load_key
from edge.sources.http import HttpSource
from edge.stats import EdgeStats

TENANT = "bench"
CASES = {
    "bare": ("bare aiohttp", "bare", 0),
    "off": ("auth off", "off", 10_000),
    "ed": ("EdDSA, cached", "ed", 10_000),
    "ed-nocache": ("EdDSA, no cache", "ed", 0),
    "rsa-nocache": ("RS256, no cache", "rsa", 0),
}


class _AnyBearer(DeviceTokenVerifier):
    """The baseline: no signature or claim is checked; the bearer's device is looked up in a
    table the load generator wrote, so the buffer sees the same devices as with auth."""

    def __init__(self, key: Any, devices: dict[str, str]) -> None:
        super().__init__([key], TENANT)
        self.devices = devices

    def verify(self, token: str) -> DeviceClaims:
        device = self.devices.get(token, "dev-0")
        return DeviceClaims(device, self.tenant, time.time() + 3600, None, "none")


# --------------------------------------------------------------------------- server process


async def _serve_bare() -> None:
    async def post(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"accepted": 1}, status=202)

    app = web.Application()
    app.router.add_post("/api/v1/readings", post)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    cpu0 = time.process_time()
    await stop.wait()
    cpu = time.process_time() - cpu0
    await runner.cleanup()
    print("STATS " + json.dumps({"accepted": 0, "cpu_s": cpu}), flush=True)


async def _serve(folder: Path, kind: str, cache: int, flush_ms: int) -> None:
    if kind == "bare":
        await _serve_bare()
        return
    keys = (HttpKeySettings("ed", folder / "ed.pem"), HttpKeySettings("rsa", folder / "rsa.pem"))
    settings = HttpSettings(
        listen="127.0.0.1:0", keys=keys, token_cache_size=cache, rate_readings_per_s=0
    )
    buffer = Buffer(folder / "buffer.sqlite3")
    stats = EdgeStats()
    batcher = Batcher(buffer, BufferSettings(flush_interval_ms=flush_ms), stats)
    verifier = None
    if kind == "off":
        table = json.loads((folder / "devices.json").read_text())
        verifier = _AnyBearer(load_key("ed", keys[0].file), table)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with HttpSource(settings, batcher, stats, TENANT, verifier=verifier) as source:
        tasks = [asyncio.create_task(batcher.run()), asyncio.create_task(source.run())]
        print(f"PORT {source.port}", flush=True)
        cpu0 = time.process_time()
        await stop.wait()
        cpu = time.process_time() - cpu0
        await source.stop()
        await batcher.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        print("STATS " + json.dumps({**source.status.as_json(), "cpu_s": cpu}), flush=True)
    buffer.close()


# --------------------------------------------------------------------------- load


def _tokens(folder: Path, kind: str, devices: int) -> list[str]:
    if kind == "rsa":
        key: Any = serialization.load_pem_private_key((folder / "rsa.key").read_bytes(), None)
        alg, kid = "RS256", "rsa"
    else:
        key = serialization.load_pem_private_key((folder / "ed.key").read_bytes(), None)
        alg, kid = "EdDSA", "ed"
    now = int(time.time())
    return [
        jwt.encode(
            {
                "sub": f"dev-{i}",
                "tenant": TENANT,
                "aud": "cairn-edge",
                "iat": now,
                "exp": now + 3600,
                "jti": uuid.uuid4().hex,
            },
            key,
            algorithm=alg,
            headers={"kid": kid},
        )
        for i in range(devices)
    ]


_LUA = """
local tokens = {%s}
local i = 0
request = function()
  i = i + 1
  local t = tokens[(i %% #tokens) + 1]
  return wrk.format("POST", "/api/v1/readings",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. t},
    '{"ts": %d, "temp": 21.5}')
end
"""


def _wrk(
    port: int, tokens: list[str], seconds: float, connections: int, folder: Path
) -> dict[str, Any]:
    script = folder / "post.lua"
    script.write_text(_LUA % (", ".join(f'"{t}"' for t in tokens), int(time.time())))
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{int(seconds)}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "total": total,
        "non2xx": int(bad.group(1)) if bad else 0,
        "errors": errors.group(1) if errors else "",
    }


async def _aiohttp_load(
    port: int, tokens: list[str], seconds: float, connections: int
) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/readings"
    body = json.dumps({"ts": int(time.time()), "temp": 21.5}).encode()
    counts = {"ok": 0, "bad": 0}
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        i = n
        while time.monotonic() < deadline:
            headers = {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {tokens[i % len(tokens)]}",
            }
            i += connections
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                counts["ok" if resp.status == 202 else "bad"] += 1

    start = time.monotonic()
    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(worker(session, n) for n in range(connections)))
    elapsed = time.monotonic() - start
    total = counts["ok"] + counts["bad"]
    return {"rps": total / elapsed, "total": total, "non2xx": counts["bad"], "errors": ""}


def _stored(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT body FROM batches").fetchall()
    finally:
        conn.close()
    return sum(len(list(decode_batch(body).readings())) for (body,) in rows)


def _run_case(folder: Path, name: str, args: argparse.Namespace, use_wrk: bool) -> dict[str, Any]:
    _label, kind, cache = CASES[name]
    case_dir = folder / re.sub(r"\W+", "-", name)
    case_dir.mkdir()
    for f in ("ed.pem", "rsa.pem"):
        shutil.copy(folder / f, case_dir / f)
    tokens = _tokens(folder, "rsa" if kind == "rsa" else "ed", args.devices)
    devices = {t: jwt.decode(t, options={"verify_signature": False})["sub"] for t in tokens}
    (case_dir / "devices.json").write_text(json.dumps(devices))
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, str(cache), str(case_dir), str(args.flush_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        port = int(line.split()[1])
        if use_wrk:
            result = _wrk(port, tokens, args.seconds, args.connections, case_dir)
        else:
            result = asyncio.run(_aiohttp_load(port, tokens, args.seconds, args.connections))
        server.send_signal(signal.SIGTERM)
        rest = server.stdout.read()
        server.wait(60)
    finally:
        if server.poll() is None:
            server.kill()
    stats_line = next(x for x in rest.splitlines() if x.startswith("STATS "))
    stats = json.loads(stats_line[6:])
    bare = kind == "bare"
    result["stored"] = 0 if bare else _stored(case_dir / "buffer.sqlite3")
    result["accepted"] = stats["accepted"]
    answered = result["total"] if bare else stats["accepted"]
    result["cpu_us"] = stats["cpu_s"] / max(answered, 1) * 1e6
    ok = result["total"] - result["non2xx"]
    if result["non2xx"] or (not bare and result["stored"] < ok):
        raise SystemExit(f"{name}: {result} (non-2xx answers or fewer stored than acknowledged)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--flush-ms", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}"
    )
    parser.add_argument("--serve", nargs=4, metavar=("KIND", "CACHE", "DIR", "FLUSH_MS"))
    args = parser.parse_args()
    if args.serve:
        kind, cache, folder, flush_ms = args.serve
        asyncio.run(_serve(Path(folder), kind, int(cache), int(flush_ms)))
        return
    use_wrk = shutil.which("wrk") is not None
    cases = [c.strip() for c in args.cases.split(",")]
    print(
        f"load: {'wrk -t1' if use_wrk else 'aiohttp client (wrk not installed: slower)'}, "
        f"{args.connections} connections, {args.devices} device tokens, {args.seconds:g} s per "
        f"run, {args.runs} runs; buffer flush {args.flush_ms} ms, synchronous full; "
        f"{os.cpu_count()} cores shared by server and load"
    )
    with tempfile.TemporaryDirectory(prefix="cairn-http-bench-") as tmp:
        folder = Path(tmp)
        ed = Ed25519PrivateKey.generate()
        rsa = generate_private_key(public_exponent=65537, key_size=2048)
        for name, key in (("ed", ed), ("rsa", rsa)):
            (folder / f"{name}.key").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            (folder / f"{name}.pem").write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        results: dict[str, list[float]] = {c: [] for c in cases}
        cpu: dict[str, list[float]] = {c: [] for c in cases}
        for run in range(args.runs):
            run_dir = folder / f"run{run}"
            run_dir.mkdir()
            for f in ("ed.pem", "rsa.pem", "ed.key", "rsa.key"):
                shutil.copy(folder / f, run_dir / f)
            for name in cases:
                r = _run_case(run_dir, name, args, use_wrk)
                results[name].append(r["rps"])
                cpu[name].append(r["cpu_us"])
                print(
                    f"  run {run + 1} {CASES[name][0]:16s} {r['rps']:9,.0f} req/s  "
                    f"{r['cpu_us']:6.0f} us CPU/request  "
                    f"({r['total']:,} answered, {r['stored']:,} stored;"
                    f" load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        base = statistics.median(results["off"]) if "off" in results else None
        print(
            f"\n{'req/s':18s} {'min':>9s} {'median':>9s} {'max':>9s}  vs auth off"
            "   server CPU/request (median)  = req/s per server core"
        )
        for name, values in results.items():
            med = statistics.median(values)
            ratio = f"{med / base:.2f}x" if base else ""
            label = CASES[name][0]
            us = statistics.median(cpu[name])
            print(
                f"{label:18s} {min(values):9,.0f} {med:9,.0f} {max(values):9,.0f}  {ratio:>11s}"
                f"   {us:6.0f} us {1e6 / us:27,.0f}"
            )
        print("reference (issue 4, 4 vCPUs): Go gateway with auth 7,555 req/s, Node.js 2,205 req/s")


if __name__ == "__main__":
    main()
