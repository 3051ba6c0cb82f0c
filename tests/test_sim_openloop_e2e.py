"""An open-loop run of a fleet that mixes every transport, into one real edge process.

MQTT JSON and SenML through a real Mosquitto, CSV lines on pseudo-terminals the edge opens,
HTTP (batched) and WebSocket with device tokens, BTHome advertisements through the edge's
simulated BLE socket: ``cairn-sim run FLEET --open-loop`` schedules all of them on one clock,
the display shows each transport, and the report's per-transport totals are the ledger's. The
edge's buffer then holds exactly the ledger's readings (multisets per device type, in each
format's terms: nothing missing, nothing twice). No timing is asserted: the rates achieved are
a benchmark's business (``bench/sim_transports.py --target-rate``).
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Hashable, Iterator
from pathlib import Path

import pytest

from contract.model import Reading, now_us
from hub.auth import TokenAuthority
from simulator.cli import build_parser
from simulator.fleetfile import DeviceType, FleetFile, parse_fleet
from simulator.send import Ledger
from simulator.servers import Mosquitto, free_port
from simulator.transports import edge_sources_toml, encoder_for
from simulator.watch import run_file_watched
from tests.test_edge_support import EdgeProcess, stored, write_config
from tests.test_sim_transports_e2e import wait_listening, wait_stored

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TENANT = "acme"
INSTANTS = 12
KINDS = ("ble", "http", "mqtt", "serial", "ws")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short folder for unix sockets and pty links (a socket path has 108 bytes at most)."""
    path = Path(tempfile.mkdtemp(prefix="cairn-ol-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _fleet_text(short: Path, http: int, ws: int, key: Path) -> str:
    tokens = f'token_key = "{key}", tenant = "{TENANT}"'
    dropout = '{ kind = "dropout", probability = 0.2 }'
    return f"""
seed = 5

[[device_types]]
name = "boiler"
count = 3
transport = {{ kind = "mqtt", payload = "json" }}
sensors = [
  {{ key = "temp", generator = "temperature", filters = [{dropout}] }},
  {{ key = "relay", generator = "switch" }},
]

[[device_types]]
name = "meter"
count = 2
transport = {{ kind = "mqtt", payload = "senml" }}
sensors = [{{ key = "energy", generator = "counter" }}, {{ key = "temp", generator = "temperature" }}]

[[device_types]]
name = "logger"
count = 2
transport = {{ kind = "serial", format = "csv", port = "{short}/{{device}}" }}
sensors = [{{ key = "temp", generator = "temperature" }}, {{ key = "acc", generator = "accel" }}]

[[device_types]]
name = "pump"
count = 3
transport = {{ kind = "http", url = "http://127.0.0.1:{http}", {tokens}, batch = 4 }}
sensors = [
  {{ key = "flow", generator = "co2", filters = [{dropout}] }},
  {{ key = "gps", generator = "gps", center = [1.0, 2.0] }},
]

[[device_types]]
name = "car"
count = 2
transport = {{ kind = "ws", url = "http://127.0.0.1:{ws}", {tokens} }}
sensors = [{{ key = "speed", generator = "temperature" }}]

[[device_types]]
name = "tag"
count = 3
transport = {{ kind = "ble", format = "bthome", socket = "{short}/ble.sock", fields = {{ temp = "temperature", door = "opening" }} }}
sensors = [
  {{ key = "temp", generator = "temperature", filters = [{dropout}] }},
  {{ key = "door", generator = "switch" }},
]
"""


def _keys(t: DeviceType, readings: list[Reading]) -> Counter[tuple[Hashable, ...]]:
    enc = encoder_for(t)
    return Counter(enc.key(r.device, r.sensor, r.ts, r.value) for r in readings)


def _by_type(fleet: FleetFile, readings: list[Reading]) -> dict[str, list[Reading]]:
    owner = {d: t.name for t in fleet.device_types for d in t.device_ids}
    out: dict[str, list[Reading]] = {t.name: [] for t in fleet.device_types}
    for r in readings:
        out[owner[r.device]].append(r)
    return out


async def test_an_open_loop_run_of_every_transport_delivers_exactly_the_ledger(
    tmp_path: Path,
    short_dir: Path,
    mosquitto: Mosquitto,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = tmp_path / "hub" / "hub.key"
    key.parent.mkdir()
    auth = TokenAuthority(key, issuer="cairn-hub", audience="cairn-api")
    pem = tmp_path / "hub" / "device-tokens.pem"
    pem.write_bytes(auth.public_key_pem())
    path = tmp_path / "mixed.toml"
    path.write_text(_fleet_text(short_dir, free_port(), free_port(), key))
    fleet = parse_fleet(path.read_text()).with_start(now_us() - 60_000_000)
    assert sorted({t.transport.kind for t in fleet.device_types}) == list(KINDS)

    extra = "".join(
        edge_sources_toml(t, mqtt_url=mosquitto.url, http_key=(auth.kid, str(pem)))
        for t in fleet.device_types
    )
    config = write_config(tmp_path / "edge", tenant=TENANT, extra=extra)
    edge = EdgeProcess(config).start()
    buffer = config.parent / "state" / "buffer.sqlite3"
    ledger = Ledger()
    try:
        await wait_listening(edge, fleet)
        argv = ["run", str(path), "--mqtt", mosquitto.url, "--open-loop", "--speed", "20"]
        args = build_parser(argv).parse_args([*argv, "--count", str(INSTANTS)])
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # draw the live display
        assert await run_file_watched(fleet, args, ledger=ledger) == 0
        await wait_stored(buffer, ledger.count)
        status = await edge.status()
    finally:
        assert edge.terminate() == 0
    out = capsys.readouterr().out
    print(out, file=sys.stderr)

    # the header says where each transport goes
    head = out.splitlines()[0]
    for where in (
        f"mqtt {mosquitto.url}",
        f"serial {short_dir}/{{device}}",
        "http http://127.0.0.1:",
        "ws http://127.0.0.1:",
        f"ble {short_dir}/ble.sock",
    ):
        assert where in head, head
    assert "open loop at" in head

    # the display has a row per transport, and the bar ends full
    for kind in KINDS:
        assert re.search(rf"^  {kind} +\S+/s sent ", out, re.MULTILINE), kind
    total = INSTANTS * len(fleet.device_types)
    assert f"100% {total:,}/{total:,}" in out

    # the report's per-transport totals are the ledger's
    types = {t.name: t for t in fleet.device_types}
    mine = _by_type(fleet, ledger.readings)
    per_kind = Counter(dict.fromkeys(KINDS, 0))
    for name, readings in mine.items():
        per_kind[types[name].transport.kind] += len(readings)
    assert sum(per_kind.values()) == ledger.count
    reported = {
        m["kind"]: (int(m["sent"].replace(",", "")), int(m["acked"].replace(",", "")))
        for m in re.finditer(
            r"^cairn-sim:   (?P<kind>\w+) +target .* achieved .*; (?P<sent>[\d,]+) readings sent, "
            r"(?P<acked>[\d,]+) acknowledged, 0 errors$",
            out,
            re.MULTILINE,
        )
    }
    assert reported == {k: (n, n) for k, n in per_kind.items()}
    assert f"{ledger.count:,} readings acknowledged" in out
    assert "open loop: target" in out

    # the edge holds exactly the ledger's readings, type by type
    got = stored(buffer)
    assert len(got) == ledger.count
    theirs = _by_type(fleet, got)
    for name, t in types.items():
        assert mine[name], name
        assert _keys(t, theirs[name]) == _keys(t, mine[name]), name
    for source in status["sources"].values():
        assert not source.get("rejected"), status
