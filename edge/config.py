"""The edge's configuration: one TOML file, one frozen dataclass per section.

Every field is documented where it is defined and carries its bounds in its ``metadata``; the
loader checks types, bounds and unknown keys generically, so a bad file fails at start with a
:class:`~contract.errors.ConfigError` that names the key (``buffer.flush_interval_ms``,
``mqtt[0].topics[1].pattern``) instead of running with a silent default. Relative paths are
resolved against the folder of the config file.
"""

from __future__ import annotations

import dataclasses
import re
import ssl
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from contract.errors import ConfigError
from contract.model import valid_name
from contract.names import TOKEN_RE
from contract.settings import bounded, read_toml, section, split_host_port, table
from edge.buffer import BufferLimits
from edge.identity import Enrollment, apply_enrollment, with_hub_token_key
from edge.sources.ble_decoders import BleDecoder
from edge.sources.topics import TopicPattern, filters_overlap

__all__ = [
    "AdminSettings",
    "BleSettings",
    "BufferSettings",
    "EdgeConfig",
    "EdgeSettings",
    "ForwarderSettings",
    "FullPolicy",
    "HttpKeySettings",
    "HttpSettings",
    "LineFormat",
    "MqttSettings",
    "Parity",
    "PayloadFormat",
    "ScanningMode",
    "SenmlDevice",
    "SerialSettings",
    "Synchronous",
    "TopicSettings",
    "load_config",
]

_U32_MAX: Final = 0xFFFFFFFF


class PayloadFormat(StrEnum):
    """How a source reads the payload of a message (see :mod:`edge.sources.payloads`)."""

    VALUE = "value"
    """The topic names device and sensor; the payload is one value (optionally with ``ts``)."""
    JSON = "json"
    """The topic names the device; the payload is an object of sensor keys (or a list of them)."""
    SENML = "senml"
    """SenML JSON (RFC 8428, :mod:`edge.sources.senml`); the device from the topic or the names."""


class SenmlDevice(StrEnum):
    """Where a ``senml`` topic finds the device of each record."""

    TOPIC = "topic"
    """The ``{device}`` of the topic; the resolved SenML name (``bn`` + ``n``) is the sensor."""
    NAME = "name"
    """Split from the resolved name: at its last ``:`` (``urn:dev:ow:10e2073a01080063:temp``),
    else at its first ``/`` (``boiler-3/temp/in``); the topic's ``{device}`` is ignored."""


class Synchronous(StrEnum):
    """SQLite ``synchronous`` level of buffer commits (the journal is always WAL)."""

    NORMAL = "normal"
    """A process crash loses no commit; a power loss may roll back the last ones."""
    FULL = "full"
    """Commits also survive a power loss, if the disk honours fsync."""


class FullPolicy(StrEnum):
    """What gives way when the buffer's disk budget is reached."""

    DROP_OLDEST = "drop-oldest"
    """The oldest unsent batches are deleted to make room for new ones (counted as dropped)."""
    REFUSE_NEW = "refuse-new"
    """New readings are refused: MQTT messages stay unacknowledged (the broker keeps and
    resends them), other sources count them as refused."""


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    """``[edge]``: who this edge is and where it keeps its state."""

    id: str = ""
    """The edge id: one NATS subject token, ``[A-Za-z0-9_-]{1,64}``. Required unless the
    edge is enrolled (``cairn-edge enroll``): then it comes from ``data_dir/enrollment.json``
    and, if set here too, must agree."""
    tenant: str = ""
    """The tenant the edge belongs to, same syntax as ``id``; required unless enrolled, like
    ``id``."""
    data_dir: Path = Path("state")
    """Folder of ``buffer.sqlite3``, the identity key ``edge.key`` and ``admin.port``
    (created with mode 0700)."""

    @property
    def buffer_path(self) -> Path:
        return self.data_dir / "buffer.sqlite3"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "edge.key"

    @property
    def admin_port_path(self) -> Path:
        return self.data_dir / "admin.port"


@dataclass(frozen=True, slots=True)
class BufferSettings:
    """``[buffer]``: group commit of readings into the SQLite buffer."""

    flush_interval_ms: int = bounded(200, lo=1, hi=60_000)
    """Commit waiting readings at least this often (milliseconds), 1..60000."""
    max_batch_readings: int = bounded(10_000, lo=1, hi=1_000_000)
    """Commit at once when this many readings wait; also the most readings of one batch row
    (a single message with more readings still goes whole), 1..1000000."""
    max_pending_readings: int = bounded(100_000, lo=1, hi=10_000_000)
    """Readings waiting or being committed above which sources wait (backpressure); at least
    ``max_batch_readings``, at most 10000000. MQTT sources are bounded by their broker instead:
    at most ``receive_maximum`` unacknowledged messages each."""
    synchronous: Synchronous = Synchronous.FULL
    """``"full"`` or ``"normal"``: SQLite synchronous level of commits (WAL always). ``full``
    keeps every acknowledged reading through a power loss (if the disk honours fsync);
    ``normal`` only through a crash of the process."""
    max_bytes: int = bounded(1 << 30, lo=1 << 20, hi=1 << 50)
    """Disk budget of the buffer file plus its WAL, bytes (1 GiB by default; at least 1 MiB).
    Sent batches kept as history give way first; then ``full_policy`` applies."""
    full_policy: FullPolicy = FullPolicy.DROP_OLDEST
    """``"drop-oldest"`` or ``"refuse-new"``: what gives way when unsent batches fill
    ``max_bytes``."""
    sent_history_s: int = bounded(86_400, lo=0, hi=366 * 86_400)
    """Keep sent batches this long (seconds) as local history, while the budget allows."""
    max_age_s: int = bounded(0, lo=0, hi=10 * 366 * 86_400)
    """Drop unsent batches older than this many seconds (by the edge's clock); 0 = never."""

    @property
    def limits(self) -> BufferLimits:
        return BufferLimits(
            max_bytes=self.max_bytes,
            policy=self.full_policy.value,
            sent_history_s=float(self.sent_history_s),
            max_age_s=float(self.max_age_s),
        )


@dataclass(frozen=True, slots=True)
class ForwarderSettings:
    """``[forwarder]``: publishing committed batches to NATS JetStream."""

    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server URL (``nats://``, ``tls://``, ``ws://`` or ``wss://``)."""
    max_in_flight: int = bounded(16, lo=1, hi=1024)
    """Batches published and not yet acknowledged by JetStream, 1..1024."""
    ack_timeout_s: float = bounded(5.0, lo=0.05, hi=300.0)
    """Seconds to wait for a JetStream ack before publishing the batch again, 0.05..300."""
    backoff_initial_s: float = bounded(0.1, lo=0.001, hi=60.0)
    """First retry delay after a failure (seconds; doubles, with jitter), 0.001..60."""
    backoff_max_s: float = bounded(10.0, lo=0.01, hi=3600.0)
    """Longest retry delay (seconds), at least ``backoff_initial_s``, at most 3600."""
    live_window_s: float = bounded(10.0, lo=0.05, hi=86_400.0)
    """Live first: a batch committed less than this many seconds ago (measured on the monotonic
    clock since the forwarder started) is *live* and is sent ahead of the older *backlog*;
    everything already in the buffer at start is backlog, 0.05..86400."""
    backlog_share: float = bounded(0.25, lo=0.01, hi=1.0)
    """Fraction of ``max_in_flight`` (at least one batch) and of ``uplink_bytes_per_s`` the
    backlog may use while live batches wait; when none wait it uses all of it, 0.01..1."""
    uplink_bytes_per_s: int = bounded(0, lo=0, hi=10_000_000_000)
    """Uplink rate limit in bytes per second of published messages (body + headers + subject),
    a token bucket holding one second's worth; 0 = unlimited, at most 10000000000."""
    uplink_bytes_per_day: int = bounded(0, lo=0, hi=10**15)
    """Uplink budget per UTC day in bytes; when it is spent, forwarding pauses until the next
    UTC day (the count is kept in ``<data_dir>/uplink-day.json`` across restarts); 0 =
    unlimited, at most 10**15."""
    clock_interval_s: float = bounded(60.0, lo=0.0, hi=86_400.0)
    """How often to ask the hub for its time (``cairn.clock``) to estimate the clock offset,
    seconds; 0 = never, at most 86400."""
    clock_warn_offset_s: float = bounded(2.0, lo=0.001, hi=86_400.0)
    """Log a WARNING when the edge clock is off the hub's by more than this, seconds,
    0.001..86400."""
    status_interval_s: float = bounded(30.0, lo=0.0, hi=86_400.0)
    """How often to publish the status document to the hub (``cairn.status.<tenant>.<edge>``,
    core NATS), seconds; 0 = never, at most 86400."""


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """``[admin]``: the local status API."""

    listen: str = "127.0.0.1:8765"
    """``host:port`` (``[::1]:port`` for IPv6) of the status API; ``""`` turns it off; port 0
    picks a free port and writes it to ``<data_dir>/admin.port``."""

    @property
    def enabled(self) -> bool:
        return bool(self.listen)

    @property
    def host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """One entry of ``mqtt.topics``: a topic pattern and the payload format of its messages."""

    pattern: str
    """Topic pattern with ``{device}`` (required) and ``{sensor}`` (required for ``value``,
    not allowed for ``json`` and ``senml``) placeholders."""
    format: PayloadFormat
    """``"value"``, ``"json"`` or ``"senml"``."""
    senml_device: SenmlDevice = SenmlDevice.TOPIC
    """``senml`` only: ``"topic"`` (device from the topic, sensor = resolved name) or
    ``"name"`` (device and sensor split from the resolved name)."""

    @property
    def topic(self) -> TopicPattern:
        return TopicPattern.parse(self.pattern)


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """``[[mqtt]]``: one MQTT source (a broker connection with its subscriptions)."""

    name: str = "mqtt"
    """Source name used in counters, logs and the status API (``[A-Za-z0-9_-]{1,64}``)."""
    url: str = "mqtt://127.0.0.1:1883"
    """Broker URL, ``mqtt://host[:port]`` (port 1883 by default) or ``mqtts://host[:port]``
    (TLS, port 8883 by default; the broker's certificate must name ``host``)."""
    client_id: str = ""
    """MQTT client id; the persistent session is keyed by it. Default
    ``cairn-<edge id>-<name>``."""
    qos: int = bounded(1, lo=0, hi=2)
    """Subscription QoS, 0..2 (0 gives up the ack-after-commit guarantee)."""
    session_expiry_s: int = bounded(86_400, lo=0, hi=_U32_MAX)
    """How long the broker keeps the session (and queues QoS>0 messages) while the edge is
    away, seconds, 0..4294967295."""
    receive_maximum: int = bounded(20_000, lo=1, hi=65_535)
    """MQTT 5 flow control: unacknowledged messages the broker may send us, 1..65535."""
    keepalive_s: int = bounded(30, lo=5, hi=3_600)
    """MQTT keep-alive interval in seconds, 5..3600."""
    topics: tuple[TopicSettings, ...] = ()
    """Topic patterns to subscribe to, at least one; their filters must not overlap."""
    username: str = ""
    """User name for the broker; ``""`` connects anonymously."""
    password: str = ""
    """Password for ``username`` (prefer ``password_file``: the config file is often readable)."""
    password_file: str = ""
    """File holding the password for ``username`` (one line, trailing newline ignored), read at
    each connect; not together with ``password``."""
    ca_file: str = ""
    """``mqtts`` only: PEM file of the CA(s) that signed the broker's certificate; ``""`` uses
    the system's trusted CAs."""
    cert_file: str = ""
    """``mqtts`` only: PEM client certificate (chain), for brokers that require one; the key
    may be in the same file or in ``key_file``."""
    key_file: str = ""
    """``mqtts`` only: PEM private key of ``cert_file``."""

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"


class ScanningMode(StrEnum):
    """How a ``[[ble]]`` source scans (see :mod:`edge.sources.ble`)."""

    PASSIVE = "passive"
    """Listen only (no scan requests); falls back to active, with a log line, where the
    adapter or BlueZ cannot scan passively."""
    ACTIVE = "active"
    """Send scan requests (devices answer with scan responses; more radio traffic)."""


@dataclass(frozen=True, slots=True)
class BleSettings:
    """``[[ble]]``: one Bluetooth LE source (a scanner on one adapter, one decoder)."""

    name: str = "ble"
    """Source name used in counters, logs and the status API (``[A-Za-z0-9_-]{1,64}``)."""
    adapter: str = ""
    """Bluetooth adapter (``"hci0"``); ``""`` is the system's default adapter."""
    decoder: BleDecoder = BleDecoder.BTHOME
    """``"bthome"`` (BTHome v2), ``"ruuvi"`` (RuuviTag data format 5) or ``"raw"``
    (manufacturer/service data kept as hex; needs an allowlist)."""
    scanning_mode: ScanningMode = ScanningMode.PASSIVE
    """``"passive"`` (falls back to active where unsupported, with a log line) or
    ``"active"``."""
    addresses: tuple[str, ...] = ()
    """Allowlist by address (``["A4:C1:38:8D:18:B2"]``, any case). With ``names`` and
    ``devices`` empty too, every device with data for the decoder is kept."""
    names: tuple[str, ...] = ()
    """Allowlist by advertised local name: exact names or shell patterns (``"ATC_*"``,
    ``"Ruuvi ????"``), case-sensitive."""
    devices: tuple[tuple[str, str], ...] = ()
    """Device ids by address, a table ``{ "A4:C1:38:8D:18:B2" = "greenhouse-1" }``; these
    addresses are allowed too. Other devices are named ``ble-<address hex digits>``."""
    queue_size: int = bounded(10_000, lo=1, hi=1_000_000)
    """Advertisements waiting to be decoded or committed, 1..1000000; past that new ones are
    dropped and counted (``queue-full``): the radio cannot be slowed down."""
    max_devices: int = bounded(1_000, lo=1, hi=100_000)
    """Devices whose RSSI and last advertisement are remembered (for the status API and
    duplicate detection), 1..100000; the longest unseen is forgotten first."""
    retry_initial_s: float = bounded(1.0, lo=0.01, hi=60.0)
    """First delay before retrying an adapter that cannot scan (doubles, with jitter),
    0.01..60 seconds."""
    retry_max_s: float = bounded(60.0, lo=0.01, hi=3_600.0)
    """Longest retry delay, at least ``retry_initial_s``, at most 3600 seconds."""
    watchdog_s: float = bounded(300.0, lo=0.0, hi=86_400.0)
    """Restart scanning when no advertisement at all arrived for this long (an adapter that
    went away silently), seconds; 0 turns it off, at most 86400."""
    simulated_socket: str = ""
    """For demos and tests: no radio; advertisements arrive as JSON datagrams on a unix
    datagram socket bound at this path (``cairn-sim``'s ``ble`` transport sends them) and go
    through the same path as the scanner's. ``""`` (the default) scans the adapter."""

    @property
    def device_names(self) -> dict[str, str]:
        """Address (upper case) -> device id, from ``devices``."""
        return dict(self.devices)


class LineFormat(StrEnum):
    """How a serial source reads its lines (see :mod:`edge.sources.lines`)."""

    JSON = "json"
    """One JSON object of sensor values per line (optional ``ts``)."""
    CSV = "csv"
    """Delimited values; columns named by ``columns`` or by a header line."""
    KEYVALUE = "keyvalue"
    """``key=value`` pairs separated by spaces, ``,`` or ``;``."""
    NMEA = "nmea"
    """NMEA 0183 GGA and RMC sentences of a GPS receiver, checksum verified."""


class Parity(StrEnum):
    """Serial parity bit."""

    NONE = "none"
    EVEN = "even"
    ODD = "odd"
    MARK = "mark"
    SPACE = "space"


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """``[[serial]]``: one serial port (RS-232/RS-485 adapter, USB CDC device, GPS receiver)."""

    port: str
    """Device path (required). Prefer the stable ``/dev/serial/by-id/...`` name: ``/dev/ttyUSB0``
    may name another adapter after a replug or a reboot."""
    device: str
    """Device id of the readings of this port (required), a valid device name."""
    parser: LineFormat
    """``"json"``, ``"csv"``, ``"keyvalue"`` or ``"nmea"`` (required): how lines are read."""
    name: str = "serial"
    """Source name used in counters, logs and the status API (``[A-Za-z0-9_-]{1,64}``)."""
    baud: int = bounded(9600, lo=50, hi=4_000_000)
    """Line speed in bit/s, 50..4000000."""
    bytesize: int = bounded(8, lo=5, hi=8)
    """Data bits per character, 5..8."""
    parity: Parity = Parity.NONE
    """``"none"``, ``"even"``, ``"odd"``, ``"mark"`` or ``"space"``."""
    stopbits: float = bounded(1.0, lo=1.0, hi=2.0)
    """Stop bits: 1, 1.5 or 2."""
    rtscts: bool = False
    """Hardware (RTS/CTS) flow control."""
    xonxoff: bool = False
    """Software (XON/XOFF) flow control."""
    max_line_bytes: int = bounded(4096, lo=16, hi=1 << 20)
    """Longest line accepted (bytes, without the newline), 16..1048576; a longer one is counted
    (``too-long``) and skipped up to the next newline."""
    columns: tuple[str, ...] = ()
    """``csv``: the column names in order (``""`` skips a column); empty: the names come from
    the device's header line."""
    ts_field: str = "ts"
    """``csv`` and ``keyvalue``: the column or key holding the timestamp (without it the edge
    stamps the readings)."""
    delimiter: str = ","
    """``csv``: the field separator, one character."""
    sensor_prefix: str = "gps"
    """``nmea``: the sensors are ``<prefix>/lat``, ``<prefix>/lon``..."""
    max_pending_readings: int = bounded(100_000, lo=1, hi=10_000_000)
    """Readings read and not yet handed to the buffer, 1..10000000; past it new readings are
    refused (counter ``refused.overload``): a serial device cannot be told to wait."""
    reconnect_initial_s: float = bounded(0.5, lo=0.01, hi=60.0)
    """First wait before reopening a port that is gone or failed (seconds; doubles, with
    jitter), 0.01..60."""
    reconnect_max_s: float = bounded(30.0, lo=0.01, hi=3600.0)
    """Longest wait between two attempts to reopen the port (seconds), at least
    ``reconnect_initial_s``, at most 3600."""


@dataclass(frozen=True, slots=True)
class HttpKeySettings:
    """One entry of ``http.keys``: a public key that verifies device tokens."""

    kid: str
    """Key id: a token whose header names this ``kid`` is verified with this key (1..128
    printable characters)."""
    file: Path
    """PEM file of the public key (SubjectPublicKeyInfo), Ed25519 (tokens must be ``EdDSA``)
    or RSA of at least 2048 bits (tokens must be ``RS256``)."""


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """``[[http]]``: one HTTP/WebSocket source (devices POST readings with a device token)."""

    name: str = "http"
    """Source name used in counters, logs and the status API (``[A-Za-z0-9_-]{1,64}``)."""
    listen: str = "127.0.0.1:8080"
    """``host:port`` to listen on (``0.0.0.0:8080`` for the site network, ``[::]:8080`` for
    IPv6); port 0 picks a free port (tests)."""
    keys: tuple[HttpKeySettings, ...] = ()
    """Token verification keys, at least one: ``[{ kid = "...", file = "hub-device.pem" }]``."""
    issuer: str = ""
    """When set, tokens must carry this ``iss`` (the hub's ``auth.issuer``); ``""`` does not
    check ``iss``."""
    leeway_s: int = bounded(30, lo=0, hi=300)
    """Clock skew allowed when checking ``exp``, ``nbf`` and ``iat``, seconds, 0..300."""
    revoked_file: str = ""
    """Revocation list (``jti <id>`` or ``device <id>`` per line), re-read when it changes;
    ``""``: none. It must exist at start."""
    revocation_poll_s: float = bounded(1.0, lo=0.05, hi=3_600.0)
    """How often the revocation list is checked for changes, seconds, 0.05..3600."""
    token_cache_size: int = bounded(10_000, lo=0, hi=1_000_000)
    """Verified tokens kept (until their ``exp``) so a repeated token is not verified again,
    0..1000000 (0: verify every request)."""
    max_body_bytes: int = bounded(262_144, lo=1_024, hi=262_144)
    """Largest request body or WebSocket message, bytes, 1024..262144; larger is 413 (a
    WebSocket is closed with 1009)."""
    rate_readings_per_s: float = bounded(100.0, lo=0.0, hi=1_000_000.0)
    """Per-device rate limit: readings per second refilled into the device's token bucket,
    0..1000000 (0: no limit)."""
    rate_burst: int = bounded(10_000, lo=1, hi=10_000_000)
    """Per-device bucket size: readings a device may send at once after a quiet spell; a
    single request with more readings is refused with 413, 1..10000000."""
    ws_max_in_flight: int = bounded(64, lo=1, hi=10_000)
    """WebSocket messages of one connection being committed at once; the edge stops reading
    the socket while that many wait (backpressure), 1..10000."""

    @property
    def host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]

    @property
    def revoked_path(self) -> Path | None:
        return Path(self.revoked_file) if self.revoked_file else None


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """The whole configuration of one edge."""

    edge: EdgeSettings
    buffer: BufferSettings = field(default_factory=BufferSettings)
    forwarder: ForwarderSettings = field(default_factory=ForwarderSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    mqtt: tuple[MqttSettings, ...] = ()
    ble: tuple[BleSettings, ...] = ()
    http: tuple[HttpSettings, ...] = ()
    path: Path | None = None
    """The file this configuration was read from (``None`` if built in code)."""
    serial: tuple[SerialSettings, ...] = ()
    enrollment: Enrollment | None = None
    """What ``cairn-edge enroll`` wrote in ``data_dir`` (``None``: not enrolled)."""


# --------------------------------------------------------------------------- loading


def load_config(path: Path | str) -> EdgeConfig:
    """Read and check the TOML file at ``path``; raises :class:`ConfigError` naming the key."""
    path = Path(path).absolute()
    return config_from_dict(read_toml(path), base=path.parent, path=path)


def config_from_dict(raw: dict[str, Any], base: Path, path: Path | None = None) -> EdgeConfig:
    """Check an already parsed TOML document; relative paths are resolved against ``base``."""
    sections = {"edge", "buffer", "forwarder", "admin", "mqtt", "serial"}
    sections.add("ble")
    sections.add("http")
    for key in raw:
        if key not in sections:
            raise ConfigError(key, f"unknown section (known: {', '.join(sorted(sections))})")
    if "edge" not in raw:
        raise ConfigError("edge", "the [edge] section is required (id and tenant)")
    edge = section(EdgeSettings, table(raw, "edge"), "edge", base)
    for key in ("id", "tenant"):
        value = getattr(edge, key)
        if key in table(raw, "edge") and not TOKEN_RE.match(value):
            raise ConfigError(f"edge.{key}", f"must match {TOKEN_RE.pattern}, got {value!r}")
    buffer = section(BufferSettings, table(raw, "buffer"), "buffer", base)
    if buffer.max_pending_readings < buffer.max_batch_readings:
        raise ConfigError(
            "buffer.max_pending_readings",
            f"must be at least buffer.max_batch_readings ({buffer.max_batch_readings}), "
            f"got {buffer.max_pending_readings}",
        )
    forwarder = section(ForwarderSettings, table(raw, "forwarder"), "forwarder", base)
    edge, forwarder, enrollment = apply_enrollment(
        edge, forwarder, "nats_url" in table(raw, "forwarder")
    )
    scheme = urlsplit(forwarder.nats_url).scheme
    if scheme not in {"nats", "tls", "ws", "wss"} or not urlsplit(forwarder.nats_url).hostname:
        raise ConfigError(
            "forwarder.nats_url",
            f"must be a nats:// (or tls://, ws://, wss://) URL, got {forwarder.nats_url!r}",
        )
    if forwarder.backoff_max_s < forwarder.backoff_initial_s:
        raise ConfigError(
            "forwarder.backoff_max_s",
            f"must be at least forwarder.backoff_initial_s ({forwarder.backoff_initial_s}), "
            f"got {forwarder.backoff_max_s}",
        )
    admin = section(AdminSettings, table(raw, "admin"), "admin", base)
    if admin.listen:
        try:
            split_host_port(admin.listen)
        except ValueError as exc:
            raise ConfigError("admin.listen", str(exc)) from exc
    mqtt_raw = raw.get("mqtt", [])
    if not isinstance(mqtt_raw, list):
        raise ConfigError("mqtt", "must be an array of tables ([[mqtt]])")
    mqtt = tuple(_mqtt(item, f"mqtt[{i}]", edge.id, base) for i, item in enumerate(mqtt_raw))
    names = [m.name for m in mqtt]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"mqtt[{i}].name", f"{name!r} is already the name of another source")
    ble = _ble_sections(raw, names)
    serial = _serial_sources(raw, base, names + [b.name for b in ble])
    if enrollment is not None:  # the hub's device-token key, from the enrollment
        raw = {**raw, "http": with_hub_token_key(raw.get("http", []), enrollment)}
    http = _http_sections(raw, [*names, *(b.name for b in ble), *(s.name for s in serial)], base)
    return EdgeConfig(
        edge=edge,
        buffer=buffer,
        forwarder=forwarder,
        admin=admin,
        mqtt=mqtt,
        ble=ble,
        http=http,
        path=path,
        serial=serial,
        enrollment=enrollment,
    )


def _mqtt(raw: object, prefix: str, edge_id: str, base: Path) -> MqttSettings:
    if not isinstance(raw, dict):
        raise ConfigError(prefix, "must be a table")
    topics_raw = raw.get("topics")
    rest = {k: v for k, v in raw.items() if k != "topics"}
    settings = section(MqttSettings, rest, prefix, base)
    if not TOKEN_RE.match(settings.name):
        raise ConfigError(f"{prefix}.name", f"must match {TOKEN_RE.pattern}, got {settings.name!r}")
    url = urlsplit(settings.url)
    try:
        port = url.port
    except ValueError as exc:
        raise ConfigError(f"{prefix}.url", f"bad port in {settings.url!r}") from exc
    if (
        url.scheme not in {"mqtt", "mqtts"}
        or not url.hostname
        or url.path not in {"", "/"}
        or port == 0
    ):
        raise ConfigError(
            f"{prefix}.url",
            f"must look like mqtt://host[:port] or mqtts://host[:port], got {settings.url!r}",
        )
    if url.username is not None or url.password is not None:
        raise ConfigError(f"{prefix}.url", "no user or password in the url: use username, password")
    settings = _mqtt_credentials(settings, prefix, base)
    client_id = settings.client_id or f"cairn-{edge_id}-{settings.name}"
    if len(client_id) > 256 or any(ord(c) < 0x20 for c in client_id):
        raise ConfigError(f"{prefix}.client_id", "must be 1..256 printable characters")
    if topics_raw is None:
        raise ConfigError(f"{prefix}.topics", "is required (at least one topic pattern)")
    if not isinstance(topics_raw, list) or not topics_raw:
        raise ConfigError(
            f"{prefix}.topics", "must be a non-empty array of {pattern, format} tables"
        )
    topics: list[TopicSettings] = []
    for j, item in enumerate(topics_raw):
        key = f"{prefix}.topics[{j}]"
        if not isinstance(item, dict):
            raise ConfigError(key, "must be a table like { pattern = ..., format = ... }")
        topic = section(TopicSettings, item, key, base)
        try:
            parsed = TopicPattern.parse(topic.pattern)
        except ValueError as exc:
            raise ConfigError(f"{key}.pattern", f"{exc}, got {topic.pattern!r}") from exc
        if topic.format is PayloadFormat.VALUE and not parsed.has_sensor:
            raise ConfigError(f"{key}.pattern", "format 'value' needs a {sensor} placeholder")
        if topic.format is not PayloadFormat.VALUE and parsed.has_sensor:
            raise ConfigError(
                f"{key}.pattern",
                f"format {topic.format.value!r} takes sensor keys from the payload: no {{sensor}}",
            )
        if topic.format is not PayloadFormat.SENML and "senml_device" in item:
            raise ConfigError(f"{key}.senml_device", "applies to format 'senml' only")
        for k, other in enumerate(topics):
            if filters_overlap(parsed.filter, other.topic.filter):
                raise ConfigError(
                    f"{key}.pattern",
                    f"overlaps {prefix}.topics[{k}] ({other.pattern!r}): "
                    "a message would arrive twice",
                )
        topics.append(topic)
    return dataclasses.replace(settings, client_id=client_id, topics=tuple(topics))


def _mqtt_credentials(settings: MqttSettings, prefix: str, base: Path) -> MqttSettings:
    """Check the credential and TLS keys; file paths resolved against ``base``."""
    if settings.password and settings.password_file:
        raise ConfigError(f"{prefix}.password_file", "give password or password_file, not both")
    if (settings.password or settings.password_file) and not settings.username:
        key = "password" if settings.password else "password_file"
        raise ConfigError(f"{prefix}.{key}", "needs a username")
    if any(c in settings.username for c in "\x00\r\n"):
        raise ConfigError(f"{prefix}.username", "must not contain NUL or line breaks")
    files: dict[str, str] = {}
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        value: str = getattr(settings, key)
        if not value:
            files[key] = ""
            continue
        if key != "password_file" and not settings.tls:
            raise ConfigError(f"{prefix}.{key}", "needs an mqtts:// url (TLS)")
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise ConfigError(f"{prefix}.{key}", f"no such file: {path}")
        try:
            path.open("rb").close()
        except OSError as exc:
            raise ConfigError(f"{prefix}.{key}", f"cannot read {path}: {exc.strerror}") from exc
        files[key] = str(path)
    if settings.key_file and not settings.cert_file:
        raise ConfigError(f"{prefix}.key_file", "needs cert_file")
    if files["ca_file"]:
        try:
            ssl.create_default_context(cafile=files["ca_file"])
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"{prefix}.ca_file", f"not a PEM CA certificate: {exc}") from exc
    if files["cert_file"]:
        try:
            ssl.create_default_context().load_cert_chain(
                files["cert_file"], files["key_file"] or None
            )
        except (ssl.SSLError, ValueError) as exc:
            key = "key_file" if files["key_file"] else "cert_file"
            raise ConfigError(
                f"{prefix}.{key}", f"not a PEM certificate and matching key: {exc}"
            ) from exc
    return dataclasses.replace(
        settings,
        password_file=files["password_file"],
        ca_file=files["ca_file"],
        cert_file=files["cert_file"],
        key_file=files["key_file"],
    )


_BLE_ADDRESS_RE: Final = re.compile(
    r"^(?:[0-9A-F]{2}(?::[0-9A-F]{2}){5}"
    r"|[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12})$"
)


def _ble_sections(raw: dict[str, Any], taken: list[str]) -> tuple[BleSettings, ...]:
    ble_raw = raw.get("ble", [])
    if not isinstance(ble_raw, list):
        raise ConfigError("ble", "must be an array of tables ([[ble]])")
    out: list[BleSettings] = []
    for i, item in enumerate(ble_raw):
        prefix = f"ble[{i}]"
        settings = _ble(item, prefix)
        if settings.name in taken or any(b.name == settings.name for b in out):
            raise ConfigError(
                f"{prefix}.name", f"{settings.name!r} is already the name of another source"
            )
        out.append(settings)
    return tuple(out)


def _serial_sources(
    raw: dict[str, Any], base: Path, taken: list[str]
) -> tuple[SerialSettings, ...]:
    items = raw.get("serial", [])
    if not isinstance(items, list):
        raise ConfigError("serial", "must be an array of tables ([[serial]])")
    names = list(taken)
    out: list[SerialSettings] = []
    for i, item in enumerate(items):
        settings = _serial(item, f"serial[{i}]", base)
        if settings.name in names:
            raise ConfigError(
                f"serial[{i}].name", f"{settings.name!r} is already the name of another source"
            )
        names.append(settings.name)
        out.append(settings)
    return tuple(out)


def _ble(raw: object, prefix: str) -> BleSettings:
    if not isinstance(raw, dict):
        raise ConfigError(prefix, "must be a table")
    special = ("addresses", "names", "devices")
    rest = {k: v for k, v in raw.items() if k not in special}
    settings = section(BleSettings, rest, prefix, Path())
    if not TOKEN_RE.match(settings.name):
        raise ConfigError(f"{prefix}.name", f"must match {TOKEN_RE.pattern}, got {settings.name!r}")
    if settings.adapter and not re.fullmatch(r"[A-Za-z0-9_:.-]{1,64}", settings.adapter):
        raise ConfigError(f"{prefix}.adapter", f"not an adapter name, got {settings.adapter!r}")
    if settings.retry_max_s < settings.retry_initial_s:
        raise ConfigError(
            f"{prefix}.retry_max_s",
            f"must be at least {prefix}.retry_initial_s ({settings.retry_initial_s}), "
            f"got {settings.retry_max_s}",
        )
    addresses = tuple(
        _ble_address(a, f"{prefix}.addresses[{j}]")
        for j, a in enumerate(_string_list(raw.get("addresses", []), f"{prefix}.addresses"))
    )
    names = _string_list(raw.get("names", []), f"{prefix}.names")
    for j, pattern in enumerate(names):
        if not pattern or len(pattern) > 248:
            raise ConfigError(f"{prefix}.names[{j}]", "must be 1..248 characters")
    devices_raw = raw.get("devices", {})
    if not isinstance(devices_raw, dict):
        raise ConfigError(
            f"{prefix}.devices", 'must be a table like { "A4:C1:38:8D:18:B2" = "greenhouse-1" }'
        )
    devices: list[tuple[str, str]] = []
    for address, device in devices_raw.items():
        key = f"{prefix}.devices.{address!r}"
        if not isinstance(device, str) or not valid_name(device):
            raise ConfigError(key, f"must be a device id (1..128 characters), got {device!r}")
        normalised = _ble_address(address, key)
        if any(a == normalised for a, _ in devices):
            raise ConfigError(key, "the same address is listed twice")
        devices.append((normalised, device))
    if settings.decoder is BleDecoder.RAW and not (addresses or names or devices):
        raise ConfigError(
            f"{prefix}.decoder",
            "'raw' keeps every advertisement's bytes: give addresses, names or devices",
        )
    return dataclasses.replace(
        settings, addresses=addresses, names=tuple(names), devices=tuple(devices)
    )


def _string_list(value: object, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, f"must be an array of strings, got {value!r}")
    return list(value)


def _ble_address(value: str, key: str) -> str:
    address = value.upper()
    if not _BLE_ADDRESS_RE.match(address):
        raise ConfigError(key, f"must be a Bluetooth address like A4:C1:38:8D:18:B2, got {value!r}")
    return address


def _serial(raw: object, prefix: str, base: Path) -> SerialSettings:
    if not isinstance(raw, dict):
        raise ConfigError(prefix, "must be a table")
    columns_raw = raw.get("columns", [])
    rest = {k: v for k, v in raw.items() if k != "columns"}
    settings = section(SerialSettings, rest, prefix, base)
    if not TOKEN_RE.match(settings.name):
        raise ConfigError(f"{prefix}.name", f"must match {TOKEN_RE.pattern}, got {settings.name!r}")
    if not settings.port:
        raise ConfigError(f"{prefix}.port", "must be a device path like /dev/serial/by-id/...")
    if not valid_name(settings.device):
        raise ConfigError(f"{prefix}.device", f"is not a valid device name: {settings.device!r}")
    if settings.stopbits not in {1.0, 1.5, 2.0}:
        raise ConfigError(f"{prefix}.stopbits", f"must be 1, 1.5 or 2, got {settings.stopbits}")
    if len(settings.delimiter) != 1 or settings.delimiter in {"\n", "\r", '"'}:
        raise ConfigError(
            f"{prefix}.delimiter", f"must be one character, got {settings.delimiter!r}"
        )
    if not valid_name(settings.ts_field):
        raise ConfigError(f"{prefix}.ts_field", f"is not a valid key: {settings.ts_field!r}")
    if not valid_name(settings.sensor_prefix):
        raise ConfigError(
            f"{prefix}.sensor_prefix", f"is not a valid sensor name: {settings.sensor_prefix!r}"
        )
    if settings.reconnect_max_s < settings.reconnect_initial_s:
        raise ConfigError(
            f"{prefix}.reconnect_max_s",
            f"must be at least reconnect_initial_s ({settings.reconnect_initial_s}), "
            f"got {settings.reconnect_max_s}",
        )
    if not isinstance(columns_raw, list) or not all(isinstance(c, str) for c in columns_raw):
        raise ConfigError(f"{prefix}.columns", "must be an array of column names (strings)")
    named = [c for c in columns_raw if c]
    for c in named:
        if not valid_name(c):
            raise ConfigError(f"{prefix}.columns", f"{c!r} is not a valid sensor name")
    if len(set(named)) != len(named):
        raise ConfigError(f"{prefix}.columns", "a column name appears twice")
    if columns_raw and settings.parser is not LineFormat.CSV:
        raise ConfigError(f"{prefix}.columns", "is only for parser 'csv'")
    if columns_raw and not any(c and c != settings.ts_field for c in columns_raw):
        raise ConfigError(f"{prefix}.columns", "names no sensor column")
    return dataclasses.replace(settings, columns=tuple(columns_raw))


def _http_sections(raw: dict[str, Any], taken: list[str], base: Path) -> tuple[HttpSettings, ...]:
    http_raw = raw.get("http", [])
    if not isinstance(http_raw, list):
        raise ConfigError("http", "must be an array of tables ([[http]])")
    out: list[HttpSettings] = []
    for i, item in enumerate(http_raw):
        prefix = f"http[{i}]"
        settings = _http(item, prefix, base)
        if settings.name in taken or any(h.name == settings.name for h in out):
            raise ConfigError(
                f"{prefix}.name", f"{settings.name!r} is already the name of another source"
            )
        if any(h.listen == settings.listen and settings.port != 0 for h in out):
            raise ConfigError(f"{prefix}.listen", f"{settings.listen!r} is already in use")
        out.append(settings)
    return tuple(out)


def _http(raw: object, prefix: str, base: Path) -> HttpSettings:
    if not isinstance(raw, dict):
        raise ConfigError(prefix, "must be a table")
    keys_raw = raw.get("keys")
    rest = {k: v for k, v in raw.items() if k != "keys"}
    settings = section(HttpSettings, rest, prefix, base)
    if not TOKEN_RE.match(settings.name):
        raise ConfigError(f"{prefix}.name", f"must match {TOKEN_RE.pattern}, got {settings.name!r}")
    try:
        split_host_port(settings.listen)
    except ValueError as exc:
        raise ConfigError(f"{prefix}.listen", str(exc)) from exc
    if not isinstance(keys_raw, list) or not keys_raw:
        raise ConfigError(
            f"{prefix}.keys", "is required: a non-empty array of { kid = ..., file = ... } tables"
        )
    keys: list[HttpKeySettings] = []
    for j, item in enumerate(keys_raw):
        key = f"{prefix}.keys[{j}]"
        if not isinstance(item, dict):
            raise ConfigError(key, "must be a table like { kid = ..., file = ... }")
        entry = section(HttpKeySettings, item, key, base)
        if not 0 < len(entry.kid) <= 128 or not entry.kid.isprintable():
            raise ConfigError(f"{key}.kid", "must be 1..128 printable characters")
        if any(k.kid == entry.kid for k in keys):
            raise ConfigError(f"{key}.kid", f"{entry.kid!r} is listed twice")
        keys.append(entry)
    revoked = settings.revoked_file
    if revoked:
        path = Path(revoked).expanduser()
        revoked = str(path if path.is_absolute() else base / path)
    return dataclasses.replace(settings, keys=tuple(keys), revoked_file=revoked)
