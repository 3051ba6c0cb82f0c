"""The edge config file: a good one loads; every kind of bad key or value names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.errors import ConfigError
from edge.config import FullPolicy, PayloadFormat, Synchronous, load_config

GOOD = """
[edge]
id = "edge-1"
tenant = "acme"
data_dir = "state"

[buffer]
flush_interval_ms = 250
max_batch_readings = 5000
max_pending_readings = 50000
synchronous = "normal"
max_bytes = 2_000_000
full_policy = "refuse-new"
sent_history_s = 600
max_age_s = 3600

[forwarder]
nats_url = "nats://127.0.0.1:4222"
max_in_flight = 8
ack_timeout_s = 2
backoff_initial_s = 0.2
backoff_max_s = 5.0

[admin]
listen = "[::1]:0"

[[mqtt]]
name = "mqtt"
url = "mqtt://127.0.0.1:1884"
client_id = "my-client"
qos = 1
session_expiry_s = 3600
receive_maximum = 1000
topics = [
  { pattern = "sensors/{device}/{sensor}", format = "value" },
  { pattern = "devices/{device}", format = "json" },
]

[[mqtt]]
name = "plant_2"
url = "mqtt://localhost"
topics = [{ pattern = "p2/{device}/{sensor}/v", format = "value" }]
"""

MINIMAL = '[edge]\nid = "e"\ntenant = "t"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "edge.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_good_file_loads(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    c = load_config(path)
    assert c.path == path
    assert (c.edge.id, c.edge.tenant) == ("edge-1", "acme")
    assert c.edge.data_dir == tmp_path / "conf" / "state"  # relative to the config file
    assert c.edge.buffer_path == tmp_path / "conf" / "state" / "buffer.sqlite3"
    assert c.edge.key_path == tmp_path / "conf" / "state" / "edge.key"
    b = c.buffer
    assert (b.flush_interval_ms, b.max_batch_readings, b.max_pending_readings) == (250, 5000, 50000)
    assert b.synchronous is Synchronous.NORMAL
    assert (b.max_bytes, b.full_policy, b.sent_history_s, b.max_age_s) == (
        2_000_000,
        FullPolicy.REFUSE_NEW,
        600,
        3600,
    )
    assert b.limits.policy == "refuse-new"
    f = c.forwarder
    assert (f.nats_url, f.max_in_flight, f.ack_timeout_s) == ("nats://127.0.0.1:4222", 8, 2.0)
    assert isinstance(f.ack_timeout_s, float)
    assert (f.backoff_initial_s, f.backoff_max_s) == (0.2, 5.0)
    assert (c.admin.enabled, c.admin.host, c.admin.port) == (True, "::1", 0)
    m1, m2 = c.mqtt
    assert (m1.name, m1.host, m1.port, m1.client_id) == ("mqtt", "127.0.0.1", 1884, "my-client")
    assert (m1.qos, m1.session_expiry_s, m1.receive_maximum) == (1, 3600, 1000)
    assert [(t.pattern, t.format) for t in m1.topics] == [
        ("sensors/{device}/{sensor}", PayloadFormat.VALUE),
        ("devices/{device}", PayloadFormat.JSON),
    ]
    assert [t.topic.filter for t in m1.topics] == ["sensors/+/#", "devices/+"]
    assert (m2.name, m2.host, m2.port) == ("plant_2", "localhost", 1883)
    assert m2.client_id == "cairn-edge-1-plant_2"  # the default: cairn-<edge id>-<name>


def test_defaults(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, MINIMAL))
    assert c.edge.data_dir == tmp_path / "conf" / "state"
    assert (c.buffer.flush_interval_ms, c.buffer.max_batch_readings) == (200, 10_000)
    assert c.buffer.max_pending_readings == 100_000
    assert c.buffer.synchronous is Synchronous.FULL  # the safe default
    assert (c.buffer.max_bytes, c.buffer.full_policy) == (1 << 30, FullPolicy.DROP_OLDEST)
    assert (c.buffer.sent_history_s, c.buffer.max_age_s) == (86_400, 0)
    assert c.forwarder.nats_url == "nats://127.0.0.1:4222"
    assert (c.forwarder.max_in_flight, c.forwarder.ack_timeout_s) == (16, 5.0)
    assert (c.admin.host, c.admin.port) == ("127.0.0.1", 8765)
    assert c.mqtt == ()


def test_absolute_data_dir_and_admin_off(tmp_path: Path) -> None:
    c = load_config(
        write(tmp_path, MINIMAL + f'data_dir = "{tmp_path}/abs"\n[admin]\nlisten = ""\n')
    )
    assert c.edge.data_dir == tmp_path / "abs"
    assert not c.admin.enabled


MQTT = '[[mqtt]]\ntopics = [{ pattern = "s/{device}/{sensor}", format = "value" }]\n'


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (
            MINIMAL + "[buffer]\nflush_interval_ms = 0\n",
            "buffer.flush_interval_ms",
            "must be between 1 and 60000, got 0",
        ),
        (
            MINIMAL + "[buffer]\nflush_interval_ms = 60001\n",
            "buffer.flush_interval_ms",
            "must be between 1 and 60000, got 60001",
        ),
        (
            MINIMAL + '[buffer]\nflush_interval_ms = "fast"\n',
            "buffer.flush_interval_ms",
            "must be an integer, got 'fast'",
        ),
        (
            MINIMAL + "[buffer]\nflush_interval_ms = 1.5\n",
            "buffer.flush_interval_ms",
            "must be an integer, got 1.5",
        ),
        (
            MINIMAL + "[buffer]\nflush_interval_ms = true\n",
            "buffer.flush_interval_ms",
            "must be an integer, got True",
        ),
        (
            MINIMAL + "[buffer]\nflush_intervall_ms = 5\n",
            "buffer.flush_intervall_ms",
            "unknown key",
        ),
        (
            MINIMAL + '[buffer]\nsynchronous = "off"\n',
            "buffer.synchronous",
            "must be one of 'normal', 'full', got 'off'",
        ),
        (
            MINIMAL + "[buffer]\nmax_bytes = 1000\n",
            "buffer.max_bytes",
            "must be between 1048576 and",
        ),
        (
            MINIMAL + '[buffer]\nfull_policy = "drop-newest"\n',
            "buffer.full_policy",
            "must be one of 'drop-oldest', 'refuse-new', got 'drop-newest'",
        ),
        (
            MINIMAL + "[buffer]\nmax_batch_readings = 2000000\n",
            "buffer.max_batch_readings",
            "must be between 1 and 1000000",
        ),
        (
            MINIMAL + "[buffer]\nmax_batch_readings = 500\nmax_pending_readings = 100\n",
            "buffer.max_pending_readings",
            "must be at least buffer.max_batch_readings (500)",
        ),
        (
            MINIMAL + "[forwarder]\nack_timeout_s = 0\n",
            "forwarder.ack_timeout_s",
            "must be between 0.05 and 300, got 0",
        ),
        (
            MINIMAL + "[forwarder]\nack_timeout_s = nan\n",
            "forwarder.ack_timeout_s",
            "must be a finite number",
        ),
        (
            MINIMAL + "[forwarder]\nmax_in_flight = 0\n",
            "forwarder.max_in_flight",
            "between 1 and 1024",
        ),
        (
            MINIMAL + "[forwarder]\nbackoff_initial_s = 5\nbackoff_max_s = 1\n",
            "forwarder.backoff_max_s",
            "must be at least forwarder.backoff_initial_s",
        ),
        (
            MINIMAL + '[forwarder]\nnats_url = "http://x"\n',
            "forwarder.nats_url",
            "must be a nats://",
        ),
        (MINIMAL + '[admin]\nlisten = "8765"\n', "admin.listen", "must be host:port"),
        (
            MINIMAL + '[admin]\nlisten = "127.0.0.1:70000"\n',
            "admin.listen",
            "port must be 0..65535",
        ),
        (MINIMAL + "[admin]\nport = 1\n", "admin.port", "unknown key"),
        (MINIMAL + "[telemetry]\nx = 1\n", "telemetry", "unknown section"),
        (MINIMAL + "path = 1\n", "edge.path", "unknown key"),
        ('[edge]\ntenant = "t"\n', "edge.id", "is required"),
        ('[edge]\nid = "e"\n', "edge.tenant", "is required"),
        ("[buffer]\n", "edge", "the [edge] section is required"),
        ('[edge]\nid = "e.1"\ntenant = "t"\n', "edge.id", "must match"),
        ('[edge]\nid = "e"\ntenant = ""\n', "edge.tenant", "must match"),
        (MINIMAL + 'data_dir = ""\n', "edge.data_dir", "must be a non-empty path"),
        (MINIMAL + "edge = 1\n", "edge.edge", "unknown key"),
        ('edge = "x"\n', "edge", "must be a table"),
        (MINIMAL + '[mqtt]\nurl = "mqtt://h"\n', "mqtt", "must be an array of tables"),
        (
            MINIMAL + MQTT + 'url = "tcp://h:1"\n',
            "mqtt[0].url",
            "must look like mqtt://host[:port]",
        ),
        (MINIMAL + MQTT + 'url = "mqtt://h:99999"\n', "mqtt[0].url", "bad port"),
        (MINIMAL + MQTT + "qos = 3\n", "mqtt[0].qos", "must be between 0 and 2, got 3"),
        (
            MINIMAL + MQTT + "receive_maximum = 0\n",
            "mqtt[0].receive_maximum",
            "between 1 and 65535",
        ),
        (MINIMAL + MQTT + "session_expiry_s = -1\n", "mqtt[0].session_expiry_s", "between 0 and"),
        (MINIMAL + MQTT + 'name = "a b"\n', "mqtt[0].name", "must match"),
        (MINIMAL + MQTT + "colour = 1\n", "mqtt[0].colour", "unknown key"),
        (MINIMAL + MQTT + MQTT, "mqtt[1].name", "'mqtt' is already the name of another source"),
        (MINIMAL + "[[mqtt]]\n", "mqtt[0].topics", "is required"),
        (MINIMAL + "[[mqtt]]\ntopics = []\n", "mqtt[0].topics", "must be a non-empty array"),
        (MINIMAL + '[[mqtt]]\ntopics = ["s/+"]\n', "mqtt[0].topics[0]", "must be a table"),
        (
            MINIMAL + '[[mqtt]]\ntopics = [{ pattern = "s/{device}/{sensor}" }]\n',
            "mqtt[0].topics[0].format",
            "is required",
        ),
        (
            MINIMAL + '[[mqtt]]\ntopics = [{ pattern = "s/{device}/{sensor}", format = "csv" }]\n',
            "mqtt[0].topics[0].format",
            "must be one of 'value', 'json', 'senml', got 'csv'",
        ),
        (
            MINIMAL + '[[mqtt]]\ntopics = [{ pattern = "s/{sensor}", format = "value" }]\n',
            "mqtt[0].topics[0].pattern",
            "must contain {device} exactly once",
        ),
        (
            MINIMAL
            + '[[mqtt]]\ntopics = [{ pattern = "s/+/{device}/{sensor}", format = "value" }]\n',
            "mqtt[0].topics[0].pattern",
            "must be a literal",
        ),
        (
            MINIMAL + '[[mqtt]]\ntopics = [{ pattern = "s/{device}", format = "value" }]\n',
            "mqtt[0].topics[0].pattern",
            "format 'value' needs a {sensor} placeholder",
        ),
        (
            MINIMAL + '[[mqtt]]\ntopics = [{ pattern = "s/{device}/{sensor}", format = "json" }]\n',
            "mqtt[0].topics[0].pattern",
            "format 'json' takes sensor keys from the payload",
        ),
        (
            MINIMAL + '[[mqtt]]\ntopics = [{ pattern = "s/{device}/{sensor}", format = "value" },'
            ' { pattern = "s/{device}", format = "json" }]\n',
            "mqtt[0].topics[1].pattern",
            "overlaps mqtt[0].topics[0]",
        ),
        (
            MINIMAL
            + '[[mqtt]]\ntopics = [{ pattern = "s/{device}/{sensor}", format = "value", qos = 1 }]\n',
            "mqtt[0].topics[0].qos",
            "unknown key",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == key
    assert problem in info.value.problem
    assert str(info.value).startswith(f"config key {key!r}: ")


def test_the_documented_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + "[buffer]\nflush_interval_ms = 0\n"))
    assert str(info.value) == (
        "config key 'buffer.flush_interval_ms': must be between 1 and 60000, got 0"
    )


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[edge\nid = 1")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path)
    assert info.value.key == str(path)
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "nope.toml")
    bad = write(tmp_path, "")
    bad.write_bytes(b"\xff\xfe[edge]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)
