"""Every fleet-file transport into a real edge process, compared exactly with the ledger.

Per transport: a fleet file, an edge (``python -m edge run``) with the matching source, the
simulator sending through its transport (MQTT SenML via a real Mosquitto; serial lines to
pseudo-terminals the simulator owns, the edge opening their slave ends; HTTP and WebSocket with
device tokens issued from a hub signing key; BTHome and Ruuvi advertisements through the
edge's ``[[ble]] simulated_socket``), then the edge's buffer file read back. The comparison is
the format's (``Encoder.key``): exact device timestamps and values where the format carries
them, quanta of the wire's resolution where it quantises, no timestamps where the edge stamps
the arrival (BLE) -- as multisets: nothing missing, nothing twice.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import pty
import shutil
import tempfile
import termios
from collections import Counter
from collections.abc import Hashable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from contract.model import now_us
from edge.sources.lines import JsonLineParser
from hub.auth import TokenAuthority
from simulator.cli import main
from simulator.fleet import reading_key
from simulator.fleetfile import DeviceType, FleetFile, parse_fleet
from simulator.fleetrun import send_fleet_file
from simulator.send import Ledger
from simulator.servers import Mosquitto, free_port
from simulator.transports import edge_sources_toml, encoder_for
from tests.polling import until
from tests.test_edge_mqtt_field import _cert, _key, _write
from tests.test_edge_support import EdgeProcess, stored, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SECONDS = 120.0
TENANT = "acme"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short folder for unix sockets and pty links (a socket path has 108 bytes at most)."""
    path = Path(tempfile.mkdtemp(prefix="cairn-tx-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _fleet(device_type: str) -> FleetFile:
    fleet = parse_fleet(f"seed = 11\n{device_type}")
    return fleet.with_start(now_us() - int(SECONDS * 1e6))


def _keys(
    t: DeviceType, readings: list[tuple[str, str, int, object]]
) -> Counter[tuple[Hashable, ...]]:
    enc = encoder_for(t)
    return Counter(enc.key(d, s, ts, v) for d, s, ts, v in readings)  # type: ignore[arg-type]


async def wait_stored(buffer: Path, count: int) -> None:
    """Until the edge's buffer file holds ``count`` readings (or more)."""
    await until(
        lambda: len(stored(buffer)) >= count, f"{count} readings stored", 30, in_thread=True
    )


async def wait_listening(edge: EdgeProcess, fleet: FleetFile) -> None:
    """Until the edge's MQTT and HTTP sources of ``fleet`` are connected (its admin API comes up
    before its sources: a broker keeps nothing for a subscription not made yet, and an HTTP
    port not yet open refuses). Serial and BLE senders wait for the edge themselves."""
    names = {t.name for t in fleet.device_types if t.transport.kind in {"mqtt", "http", "ws"}}

    async def ready() -> bool:
        if not edge.port_file.exists():
            return False
        sources = (await edge.status())["sources"]
        return all(sources.get(n, {}).get("connected") for n in names)

    await until(ready, "the edge's MQTT and HTTP sources", 30)


async def _deliver(tmp_path: Path, fleet: FleetFile, extra: str, mqtt_url: str = "") -> Ledger:
    """Start an edge with ``extra`` sources, send the fleet, wait for every reading; compare."""
    config = write_config(tmp_path / "edge", tenant=TENANT, extra=extra)
    edge = EdgeProcess(config).start()
    try:
        await wait_listening(edge, fleet)
        ledger = await send_fleet_file(
            fleet, mqtt_url or "mqtt://127.0.0.1:1", seconds=SECONDS, paced=False
        )
        buffer = config.parent / "state" / "buffer.sqlite3"
        await wait_stored(buffer, ledger.count)
        status = await edge.status()
    finally:
        assert edge.terminate() == 0
    got = stored(buffer)
    (t,) = fleet.device_types
    sent = _keys(t, [(r.device, r.sensor, r.ts, r.value) for r in ledger.readings])
    assert len(got) == ledger.count
    assert _keys(t, [(r.device, r.sensor, r.ts, r.value) for r in got]) == sent
    assert ledger.count > 50
    for source in status["sources"].values():
        assert not source.get("rejected"), status
    return ledger


def _boilers(transport: str) -> str:
    return f"""
[[device_types]]
name = "boiler"
count = 3
interval_s = 2
transport = {transport}
"""


@pytest.mark.parametrize("payload", ["json", "value", "senml"])
async def test_mqtt(tmp_path: Path, mosquitto: Mosquitto, payload: str) -> None:
    fleet = _fleet(
        _boilers(f'{{ kind = "mqtt", payload = "{payload}" }}')
        + """
clock = { drift_ppm = 50, jitter_ms = 30 }
sensors = [
  { key = "temp", generator = "temperature", filters = [{ kind = "dropout", probability = 0.1 }] },
  { key = "relay", generator = "switch" },
  { key = "gps", generator = "gps", center = [48.85, 2.35] },
]
"""
    )
    (t,) = fleet.device_types
    ledger = await _deliver(
        tmp_path, fleet, edge_sources_toml(t, mqtt_url=mosquitto.url), mosquitto.url
    )
    flat = {"temp", "relay", "gps/lat", "gps/lon", "gps/speed", "gps/heading"}
    assert {r.sensor for r in ledger.readings} == (
        flat if payload == "senml" else {"temp", "relay", "gps"}
    )
    if payload != "senml":
        assert ledger.keys() == {reading_key(r.reading) for r in fleet.truth(SECONDS)}


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "nmea"])
async def test_serial(tmp_path: Path, short_dir: Path, fmt: str) -> None:
    sensors = (
        '[{ key = "fix", generator = "gps", route = [[48.85, 2.35], [48.86, 2.36], [48.85, 2.37]] }]'
        if fmt == "nmea"
        else '[{ key = "temp", generator = "temperature", filters = [{ kind = "dropout", '
        'probability = 0.2 }] }, { key = "count", generator = "counter" }, '
        '{ key = "acc", generator = "accel" }]'
    )
    fleet = _fleet(
        f"""
[[device_types]]
name = "port"
count = 2
interval_s = 1
transport = {{ kind = "serial", format = "{fmt}", port = "{short_dir}/{{device}}" }}
sensors = {sensors}
"""
    )
    ledger = await _deliver(tmp_path, fleet, edge_sources_toml(fleet.device_types[0]))
    if fmt == "jsonl":  # an exact format: the ledger is the ground truth itself
        assert ledger.keys() == {reading_key(r.reading) for r in fleet.truth(SECONDS)}
    if fmt == "nmea":
        assert {r.sensor for r in ledger.readings} == {
            f"gps/{k}" for k in ("lat", "lon", "speed", "course", "valid")
        }


@pytest.mark.parametrize(("kind", "batch"), [("http", 1), ("http", 7), ("ws", 1), ("ws", 7)])
async def test_http_and_websocket_with_device_tokens(tmp_path: Path, kind: str, batch: int) -> None:
    key = tmp_path / "hub" / "hub.key"
    key.parent.mkdir()
    auth = TokenAuthority(key, issuer="cairn-hub", audience="cairn-api")
    pem = tmp_path / "hub" / "device-tokens.pem"
    pem.write_bytes(auth.public_key_pem())
    port = free_port()
    fleet = _fleet(
        f"""
[[device_types]]
name = "pump"
count = 3
interval_s = 1
transport = {{ kind = "{kind}", url = "http://127.0.0.1:{port}", token_key = "{key}", tenant = "{TENANT}", batch = {batch} }}
sensors = [
  {{ key = "flow", generator = "co2" }},
  {{ key = "gps", generator = "gps", center = [1.0, 2.0] }},
]
"""
    )
    extra = edge_sources_toml(fleet.device_types[0], http_key=(auth.kid, str(pem)))
    ledger = await _deliver(tmp_path, fleet, extra)
    assert ledger.keys() == {reading_key(r.reading) for r in fleet.truth(SECONDS)}
    assert ledger.messages == 3 * -(-int(SECONDS) // batch)  # a message per device per batch


@pytest.mark.parametrize("fmt", ["bthome", "ruuvi"])
async def test_ble_advertisements(tmp_path: Path, short_dir: Path, fmt: str) -> None:
    fields = (
        '{ temp = "temperature", hum = "humidity", batt = "voltage", door = "opening" }'
        if fmt == "bthome"
        else '{ temp = "temperature", hum = "humidity", acc = "acceleration", batt = "voltage" }'
    )
    last = (
        '{ key = "door", generator = "switch" }'
        if fmt == "bthome"
        else '{ key = "acc", generator = "accel" }'
    )
    sock = short_dir / "ble.sock"
    fleet = _fleet(
        f"""
[[device_types]]
name = "tag"
count = 4
interval_s = 1
transport = {{ kind = "ble", format = "{fmt}", socket = "{sock}", fields = {fields} }}
sensors = [
  {{ key = "temp", generator = "temperature", filters = [{{ kind = "dropout", probability = 0.1 }}] }},
  {{ key = "hum", generator = "humidity" }},
  {{ key = "batt", generator = "battery", full_v = 3.2, empty_v = 2.5 }},
  {last},
]
"""
    )
    ledger = await _deliver(tmp_path, fleet, edge_sources_toml(fleet.device_types[0]))
    if fmt == "ruuvi":
        assert "measurement_sequence" in {r.sensor for r in ledger.readings}


@pytest.mark.parametrize("kind", ["http", "ws"])
def test_an_unreachable_edge_is_one_line_on_the_command_line(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nobody listens there
    path = tmp_path / "fleet.toml"
    path.write_text(
        '[[device_types]]\nname = "p"\n'
        f'transport = {{ kind = "{kind}", url = "http://127.0.0.1:{port}", token = "x" }}\n'
        '[[device_types.sensors]]\nkey = "t"\ngenerator = "temperature"\n'
    )
    assert main(["run", str(path), "--count", "2", "--fast"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cairn-sim: cannot ")
    assert f"127.0.0.1:{port}" in err
    assert "Traceback" not in err


async def test_serial_to_an_existing_port_path(tmp_path: Path) -> None:
    """A port path that exists (not a link) is opened as a real port: here a pty's slave,
    whose master side the test reads, as the far end of a cable would."""
    master, slave = pty.openpty()
    try:
        fleet = _fleet(
            f"""
[[device_types]]
name = "rs"
interval_s = 1
transport = {{ kind = "serial", format = "jsonl", port = "{os.ttyname(slave)}", baud = 9600 }}
sensors = [{{ key = "temp", generator = "temperature" }}]
"""
        )
        ledger = await send_fleet_file(fleet, "mqtt://127.0.0.1:1", count=20, paced=False)
        got = b""
        while got.count(b"\n") < 20:
            got += await asyncio.to_thread(os.read, master, 65536)
        assert termios.tcgetattr(slave)[4] == termios.B9600
    finally:
        os.close(master)
        os.close(slave)
    parser = JsonLineParser("rs-0000")
    readings = [r for line in got.splitlines() if line for r in parser(line, now_us())]
    assert {reading_key(r) for r in readings} == ledger.keys()
    assert len(readings) == ledger.count == 20


@pytest.fixture
def broker_pki(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A throwaway CA, a broker certificate for 127.0.0.1 signed by it, and an unrelated CA:
    ``(ca, cert, key, other_ca)``."""
    folder = tmp_path / "pki"
    folder.mkdir()
    ca_key, server_key, other_key = _key(), _key(), _key()
    ca = _cert("cairn sim test CA", ca_key, None, ca=True)
    server = _cert(
        "broker",
        server_key,
        ("cairn sim test CA", ca_key),
        sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    other = _cert("another CA", other_key, None, ca=True)
    return (
        _write(folder, "ca", ca),
        _write(folder, "server", server, server_key),
        folder / "server.key",
        _write(folder, "other", other),
    )


async def test_mqtt_over_tls_with_a_ca_file(
    tmp_path: Path, broker_pki: tuple[Path, Path, Path, Path]
) -> None:
    """The fleet file's ``ca_file``: the simulator publishes to a TLS-only Mosquitto,
    checking its certificate; the edge reads the broker over TLS too; nothing lost."""
    ca, cert, key, _other = broker_pki
    with Mosquitto(tmp_path / "broker", tls=(ca, cert, key)).start() as broker:
        assert broker.url.startswith("mqtts://")
        fleet = _fleet(
            _boilers(f'{{ kind = "mqtt", payload = "json", ca_file = "{ca}" }}')
            + 'sensors = [{ key = "temp", generator = "temperature" }]\n'
        )
        (t,) = fleet.device_types
        assert f'ca_file = "{ca}"' in edge_sources_toml(t, mqtt_url=broker.url)
        ledger = await _deliver(
            tmp_path, fleet, edge_sources_toml(t, mqtt_url=broker.url), broker.url
        )
    assert ledger.keys() == {reading_key(r.reading) for r in fleet.truth(SECONDS)}


def test_mqtt_tls_errors_are_one_line(
    tmp_path: Path, broker_pki: tuple[Path, Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A broker whose certificate the CA does not sign, a CA file that is not there, a CA file
    for a plain mqtt:// broker: one line each, no traceback, nothing sent."""
    ca, cert, key, other = broker_pki
    path = tmp_path / "fleet.toml"

    def run(ca_file: Path, url: str) -> str:
        path.write_text(
            '[[device_types]]\nname = "p"\n'
            f'transport = {{ kind = "mqtt", ca_file = "{ca_file}" }}\n'
            '[[device_types.sensors]]\nkey = "t"\ngenerator = "temperature"\n'
        )
        assert main(["run", str(path), "--mqtt", url, "--count", "2", "--fast"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
        return err

    with Mosquitto(tmp_path / "broker", tls=(ca, cert, key)).start() as broker:
        assert "CERTIFICATE_VERIFY_FAILED" in run(other, broker.url)
        assert "no such file" in run(tmp_path / "missing.pem", broker.url)
        plain = broker.url.replace("mqtts://", "mqtt://")
        assert "needs an mqtts:// broker URL" in run(ca, plain)
