"""Wire formats of the fleet file's transports: each encoder's bytes decoded by the edge's own
parsers give exactly the readings the encoder says (its ledger items), compared per format;
quantised formats stay within half a quantum of the ground truth; bad transport tables are
refused naming the key."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable
from pathlib import Path

import pytest

from contract.errors import ConfigError
from contract.model import Reading
from edge.sources.ble_decoders import DECODERS, BleDecoder
from edge.sources.ble_sim import BadDatagramError, parse_datagram
from edge.sources.lines import CsvParser, IgnoredLine, JsonLineParser, NmeaParser
from edge.sources.payloads import parse_json_payload, parse_value_payload
from edge.sources.senml import parse_senml_payload
from simulator.encoders import BTHOME, Encoder, Wire
from simulator.fleetfile import DeviceType, load_fleet_file, parse_fleet
from simulator.transports import WirePart, encoder_for

START = "2026-03-01T10:00:00Z"
NOW = 1_772_359_200_000_000 + 3600_000_000  # an hour after START: device clocks plausible

FLEET = f"""
seed = 7
start = "{START}"

[[device_types]]
name = "senml"
count = 2
interval_s = 10
transport = {{ kind = "mqtt", payload = "senml" }}
clock = {{ drift_ppm = 30, jitter_ms = 20 }}
sensors = [
  {{ key = "temp", generator = "temperature", filters = [{{ kind = "dropout", probability = 0.2 }}] }},
  {{ key = "relay", generator = "switch" }},
  {{ key = "energy", generator = "counter" }},
  {{ key = "gps", generator = "gps", center = [48.85, 2.35] }},
]

[[device_types]]
name = "csv"
count = 2
interval_s = 10
transport = {{ kind = "serial", format = "csv", port = "/tmp/x/{{device}}" }}
sensors = [
  {{ key = "temp", generator = "temperature", filters = [{{ kind = "dropout", probability = 0.3 }}] }},
  {{ key = "relay", generator = "switch" }},
  {{ key = "acc", generator = "accel" }},
]

[[device_types]]
name = "jsonl"
interval_s = 10
transport = {{ kind = "serial", format = "jsonl", port = "/tmp/x/j" }}
sensors = [
  {{ key = "temp", generator = "temperature" }},
  {{ key = "gps", generator = "gps", center = [48.85, 2.35] }},
]

[[device_types]]
name = "gpsr"
count = 2
interval_s = 1
transport = {{ kind = "serial", format = "nmea", port = "/tmp/x/{{device}}" }}
sensors = [{{ key = "fix", generator = "gps", route = [[48.85, 2.35], [-33.9, -151.2]] }}]

[[device_types]]
name = "bth"
count = 3
interval_s = 5
transport = {{ kind = "ble", format = "bthome", socket = "/tmp/x/ble", fields = {{ temp = "temperature", hum = "humidity", pres = "pressure", batt = "voltage", relay = "power" }} }}
sensors = [
  {{ key = "temp", generator = "temperature", filters = [{{ kind = "outliers", probability = 0.05, magnitude = 400 }}] }},
  {{ key = "hum", generator = "humidity" }},
  {{ key = "pres", generator = "pressure" }},
  {{ key = "batt", generator = "battery" }},
  {{ key = "relay", generator = "switch", filters = [{{ kind = "dropout", probability = 0.3 }}] }},
]

[[device_types]]
name = "ruu"
count = 2
interval_s = 5
transport = {{ kind = "ble", format = "ruuvi", socket = "/tmp/x/ble2", fields = {{ temp = "temperature", acc = "acceleration", batt = "voltage" }} }}
sensors = [
  {{ key = "temp", generator = "temperature" }},
  {{ key = "humidity", generator = "humidity" }},
  {{ key = "pressure", generator = "pressure" }},
  {{ key = "acc", generator = "accel" }},
  {{ key = "batt", generator = "battery", full_v = 3.3, empty_v = 2.4 }},
]

[[device_types]]
name = "web"
count = 2
transport = {{ kind = "http", url = "http://127.0.0.1:1", token_key = "/nonexistent", tenant = "t1" }}
sensors = [{{ key = "gps", generator = "gps", center = [1.0, 2.0] }}]
"""

N = 200


def _types() -> dict[str, DeviceType]:
    return {t.name: t for t in parse_fleet(FLEET).device_types}


def _decode(enc: Encoder, t: DeviceType, wire: Wire, parsers: dict[str, object]) -> list[Reading]:
    """What the edge's own code makes of one message."""
    if enc.name == "senml":
        return parse_senml_payload(wire.payload, wire.dest.split("/")[1])
    if enc.name in {"json", "http", "ws"}:
        return parse_json_payload(wire.payload, wire.dest)
    if enc.name in {"bthome", "ruuvi"}:
        adv = parse_datagram(wire.payload, NOW)
        decoded = DECODERS[BleDecoder(enc.name)].decode(adv)
        device = dict(zip(enc.addresses.values(), enc.addresses, strict=True))[adv.address]  # type: ignore[attr-defined]
        return [Reading(device, k, NOW, v) for k, v in decoded.values.items()]
    parser = parsers.setdefault(
        wire.dest,
        {"jsonl": JsonLineParser, "csv": CsvParser, "nmea": NmeaParser}[enc.name](wire.dest),
    )
    if enc.name == "csv" and wire.dest not in parsers.setdefault("_headers", set()):  # type: ignore[operator]
        parsers["_headers"].add(wire.dest)  # type: ignore[attr-defined]
        with pytest.raises(IgnoredLine):
            parser(enc.preamble(()).rstrip(b"\n"), NOW)  # type: ignore[operator]
    return parser(wire.payload.rstrip(b"\r\n"), NOW)  # type: ignore[operator,no-any-return]


@pytest.mark.parametrize("name", ["senml", "csv", "jsonl", "gpsr", "bth", "ruu", "web"])
def test_the_edge_decodes_exactly_what_the_ledger_says(name: str) -> None:
    t = _types()[name]
    enc = encoder_for(t)
    part = WirePart(t, 0, N, enc)
    sent: Counter[tuple[Hashable, ...]] = Counter()
    stored: Counter[tuple[Hashable, ...]] = Counter()
    parsers: dict[str, object] = {}
    messages = 0
    for _msg, wire, _due in part.wires():
        messages += 1
        sent.update(enc.key(*item) for item in wire.items)
        stored.update(
            enc.key(r.device, r.sensor, r.ts, r.value) for r in _decode(enc, t, wire, parsers)
        )
    assert messages > N // 2
    assert sum(sent.values()) >= N
    assert stored == sent
    if enc.stamped:  # exact timestamps: each reading once
        assert max(sent.values()) == 1


def _truth_pairs(t: DeviceType) -> dict[tuple[str, int], dict[str, object]]:
    out: dict[tuple[str, int], dict[str, object]] = {}
    for r in t.truth(0, N):
        out.setdefault((r.device, r.ts), {})[r.sensor] = r.value
    return out


def test_quantised_formats_stay_within_half_a_quantum_of_the_truth() -> None:
    types = _types()
    t = types["bth"]
    enc = encoder_for(t)
    truth = _truth_pairs(t)
    fields = {"temp": "temperature", "hum": "humidity", "pres": "pressure", "batt": "voltage"}
    checked = clamped = 0
    for _msg, wire, _due in WirePart(t, 0, N, enc).wires():
        for device, sensor, ts, value in wire.items:
            key = next((k for k, f in fields.items() if f == sensor), None)
            if key is None:
                continue
            true = float(truth[(device, ts)][key])  # type: ignore[arg-type]
            step = BTHOME[sensor].factor
            assert step is not None
            if sensor == "temperature" and abs(true) > 327.675:  # past int16: clamped (saturates)
                clamped += 1
                assert value == (327.67 if true > 0 else -327.68)
                continue
            assert abs(float(value) - true) <= step / 2 + 1e-9  # type: ignore[arg-type]
            checked += 1
    assert checked > 3 * N
    assert clamped > 0
    g = types["gpsr"]
    genc = encoder_for(g)
    gtruth = _truth_pairs(g)
    for _msg, wire, _due in WirePart(g, 0, N, genc).wires():
        (device, _s, ts, _v) = wire.items[0]
        fix = gtruth[(device, ts)]["fix"]
        got = {s.split("/")[1]: v for _d, s, _t, v in wire.items}
        assert abs(got["lat"] - fix["lat"]) <= 1 / 120e6 + 1e-12  # type: ignore[index]
        assert abs(got["lon"] - fix["lon"]) <= 1 / 120e6 + 1e-12  # type: ignore[index]
        assert got["valid"] is True


def test_the_ledger_of_an_exact_format_is_the_ground_truth() -> None:
    t = _types()["jsonl"]
    enc = encoder_for(t)
    items = [i for _m, w, _d in WirePart(t, 0, N, enc).wires() for i in w.items]
    assert [(r.device, r.sensor, r.ts, r.value) for r in t.truth(0, N)] == items


@pytest.mark.parametrize(
    ("transport", "key", "message"),
    [
        ('{ kind = "serial", port = "/tmp/p" }', "transport.port", "needs {device}"),
        (
            '{ kind = "serial", format = "xml", port = "/tmp/{device}" }',
            "transport.format",
            "jsonl",
        ),
        ('{ kind = "serial", format = "nmea", port = "/tmp/{device}" }', "transport.sensor", "gps"),
        ('{ kind = "serial", port = "/tmp/{device}", baud = 7 }', "transport.baud", "50"),
        ('{ kind = "serial", port = "/tmp/{device}", prefix = "g" }', "transport.prefix", "nmea"),
        ('{ kind = "http", url = "ftp://x", token = "t" }', "transport.url", "http://"),
        ('{ kind = "http", url = "http://h:1" }', "transport.token_key", "token"),
        ('{ kind = "ws", url = "http://h:1", token = "t" }', "transport.token", "one device"),
        ('{ kind = "http", url = "http://h:1", token_key = "k" }', "transport.tenant", "non-empty"),
        ('{ kind = "ble", format = "bthome" }', "transport.socket", "non-empty"),
        ('{ kind = "ble", socket = "/s" }', "transport.fields", "'temp' maps to no bthome"),
        (
            '{ kind = "ble", socket = "/s", fields = { temp = "warmth" } }',
            "transport.fields.temp",
            "not a bthome measurement",
        ),
        (
            '{ kind = "ble", format = "ruuvi", socket = "/s", fields = { temp = "acceleration" } }',
            "transport.fields.temp",
            "3-axis",
        ),
        ('{ kind = "ble", socket = "/s", hue = 1 }', "transport.hue", "unknown key"),
        ('{ kind = "mqtt", payload = "cbor" }', "transport.payload", "senml"),
    ],
)
def test_bad_transport_tables_name_the_key(transport: str, key: str, message: str) -> None:
    text = (
        '[[device_types]]\nname = "d"\ncount = 2\n'
        f"transport = {transport}\n"
        '[[device_types.sensors]]\nkey = "temp"\ngenerator = "temperature"\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_fleet(text)
    assert info.value.key == f"device_types[0].{key}"
    assert message in str(info.value)


def test_nmea_refuses_a_device_type_with_other_sensors() -> None:
    text = (
        '[[device_types]]\nname = "v"\n'
        'transport = { kind = "serial", format = "nmea", port = "/tmp/v" }\n'
        '[[device_types.sensors]]\nkey = "gps"\ngenerator = "gps"\n'
        '[[device_types.sensors]]\nkey = "temp"\ngenerator = "temperature"\n'
    )
    with pytest.raises(ConfigError, match="nmea carries only the GPS fix; temp would be lost"):
        parse_fleet(text)


@pytest.mark.parametrize(
    "datagram",
    [
        b"not json",
        b"[]",
        b'{"rssi": 1}',
        b'{"address": "a", "rssi": 99}',
        b'{"address": "a", "manufacturer_data": {"x": "00"}}',
        b'{"address": "a", "service_data": {"u": "zz"}}',
    ],
)
def test_a_bad_simulated_datagram_is_refused_with_a_reason(datagram: bytes) -> None:
    with pytest.raises(BadDatagramError):
        parse_datagram(datagram, NOW)


def test_value_payloads_round_trip() -> None:
    from simulator.encoders import ValueEncoder

    enc = ValueEncoder()
    for w in enc.encode("d1", NOW, 0, [("a", 1.5), ("b", True), ("c", {"x": 1})]):
        (item,) = w.items
        got = parse_value_payload(w.payload, item[0], item[1], NOW)
        assert [(r.device, r.sensor, r.ts, r.value) for r in got] == [item]
    assert json.loads(enc.encode("d1", NOW, 0, [("a", 1.5)])[0].payload) == {
        "ts": NOW,
        "value": 1.5,
    }


TRANSPORT_EXAMPLES = sorted(
    (Path(__file__).resolve().parent.parent / "examples" / "fleets" / "transports").glob("*.toml")
)


def test_every_transport_example_loads_and_is_in_the_docs() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "simulator.md").read_text()
    kinds = set()
    for path in TRANSPORT_EXAMPLES:
        fleet = load_fleet_file(path)
        (t,) = fleet.device_types
        kinds.add(t.transport.kind)
        assert f"```toml\n{path.read_text()}```" in page, f"{path.name} differs in the docs"
        for _msg, wire, _due in WirePart(t, 0, 3, encoder_for(t)).wires():
            assert wire.items
    assert kinds == {"mqtt", "serial", "http", "ws", "ble"}
