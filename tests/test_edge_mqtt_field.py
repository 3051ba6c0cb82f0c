"""The MQTT source in the field: SenML over MQTT, QoS 0 and 2, passwords, TLS, config keys.

Real Mosquitto brokers (with a password file, with a TLS listener and a CA made here with
``cryptography``), the QoS 2 handshake seen through ``MqttProxy``, and a real edge process
killed with SIGKILL before its commit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import logging
import random
import ssl
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from contract.errors import ConfigError
from contract.model import FLAG_EDGE_STAMPED, Reading, now_us
from edge.config import (
    MqttSettings,
    PayloadFormat,
    SenmlDevice,
    TopicSettings,
    config_from_dict,
)
from edge.sources.mqtt import PUBACK_PAYLOAD_INVALID, tls_context
from hub.pki import CA_KEY_USAGE
from simulator.servers import Mosquitto
from tests.test_edge_mqtt import running_source
from tests.test_edge_support import (
    EdgeProcess,
    MqttProxy,
    RawPublisher,
    _body,
    _str16,
    _varint,
    poll,
    stored,
    write_config,
)

pytestmark = pytest.mark.timeout(120)

T_S = now_us() // 1_000_000 - 60  # a minute ago: a plausible device clock
T_US = T_S * 1_000_000
PUBREC, PUBREL, PUBCOMP = 0x50, 0x62, 0x70


# --------------------------------------------------------------------------- helpers


class FieldPublisher(RawPublisher):
    """RawPublisher plus TLS, a user name and password, and QoS 2 (PUBREC -> PUBREL ->
    PUBCOMP; ``acks`` gets the PUBCOMP)."""

    def __init__(
        self,
        port: int,
        client_id: str,
        *,
        tls: ssl.SSLContext | None = None,
        username: str = "",
        password: str = "",
    ) -> None:
        super().__init__(port, client_id)
        self.tls = tls
        self.username = username
        self.password = password
        self.pubrecs: dict[int, int] = {}

    async def __aenter__(self) -> Self:
        self._reader, self._writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.tls
        )
        flags = 0x02 | (0x80 if self.username else 0) | (0x40 if self.password else 0)
        var = _str16("MQTT") + bytes([5, flags]) + struct.pack(">H", 60) + b"\x00"
        body = var + _str16(self.client_id)
        if self.username:
            body += _str16(self.username)
        if self.password:
            body += _str16(self.password)
        self._writer.write(b"\x10" + _varint(len(body)) + body)
        connack = await self._read_packet()
        assert connack[0] == 0x20, f"CONNACK {connack!r}"
        assert _body(connack)[1] == 0, f"CONNACK refused: {connack!r}"
        self._task = asyncio.create_task(self._read_loop())
        return self

    async def _read_loop(self) -> None:
        while True:
            packet = await self._read_packet()
            kind = packet[0] & 0xF0
            body = _body(packet)
            (mid,) = struct.unpack(">H", body[:2])
            code = body[2] if len(body) > 2 else 0
            if kind == 0x40:
                self.acks[mid] = code
            elif kind == PUBREC:
                self.pubrecs[mid] = code
                assert self._writer is not None
                self._writer.write(bytes([PUBREL, 2]) + struct.pack(">H", mid))
            elif kind == PUBCOMP:
                self.acks[mid] = code


class Qos2Proxy(MqttProxy):
    """Also records the PUBRECs (and PUBCOMPs) the edge sends."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.pubrecs: list[tuple[int, int]] = []
        self.pubcomps: list[int] = []

    def _from_edge(self, packet: bytes) -> bool:
        kind = packet[0] & 0xF0
        if kind == PUBREC:
            body = _body(packet)
            self.pubrecs.append((struct.unpack(">H", body[:2])[0], body[2] if len(body) > 2 else 0))
        elif kind == PUBCOMP:
            self.pubcomps.append(struct.unpack(">H", _body(packet)[:2])[0])
        return super()._from_edge(packet)


def settings_for(url: str, client_id: str, **kw: Any) -> MqttSettings:
    base = MqttSettings(
        name="mqtt",
        url=url,
        client_id=client_id,
        receive_maximum=1000,
        topics=(
            TopicSettings("sensors/{device}/{sensor}", PayloadFormat.VALUE),
            TopicSettings("senml/{device}", PayloadFormat.SENML),
            TopicSettings("things/{device}", PayloadFormat.SENML, SenmlDevice.NAME),
        ),
    )
    return replace(base, **kw)


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    misnamed_cert: Path
    misnamed_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(CA_KEY_USAGE, critical=True)
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    else:
        assert issuer is not None
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key: Any = None) -> Path:
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = folder / f"{name}.key"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and localhost, a client certificate, and an
    unrelated CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, other_key, server_key, client_key = _key(), _key(), _key(), _key()
    ca = _cert("cairn test CA", ca_key, None, ca=True)
    other = _cert("someone else's CA", other_key, None, ca=True)
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    server = _cert("broker", server_key, ("cairn test CA", ca_key), sans=sans)
    client = _cert("edge-t", client_key, ("cairn test CA", ca_key))
    misnamed_key = _key()
    misnamed = _cert(
        "elsewhere", misnamed_key, ("cairn test CA", ca_key), sans=[x509.DNSName("elsewhere.test")]
    )
    return Pki(
        ca=_write(folder, "ca", ca),
        server_cert=_write(folder, "server", server, server_key),
        server_key=folder / "server.key",
        client_cert=_write(folder, "client", client, client_key),
        client_key=folder / "client.key",
        other_ca=_write(folder, "other-ca", other),
        misnamed_cert=_write(folder, "misnamed", misnamed, misnamed_key),
        misnamed_key=folder / "misnamed.key",
    )


# --------------------------------------------------------------------------- SenML over MQTT


async def test_senml_packs_become_readings_and_bad_ones_are_refused(
    tmp_path: Path, mosquitto: Mosquitto, unique_name: str
) -> None:
    async with (
        MqttProxy(mosquitto.port) as proxy,
        running_source(tmp_path, settings_for(proxy.url, unique_name)) as edge,
        RawPublisher(mosquitto.port, f"{unique_name}-pub") as pub,
    ):
        pack = [
            {"bn": "boiler/", "bt": T_S, "n": "temp", "u": "Cel", "v": 60.5},
            {"n": "on", "vb": True},
            {"n": "temp", "t": 1, "v": 61},
        ]
        urn = [{"bn": "urn:dev:ow:10e2073a01080063:", "bt": T_S, "n": "hum", "v": 40}]
        mids = [
            pub.publish("senml/d1", json.dumps(pack)),
            pub.publish("things/ignored", json.dumps(urn)),
            pub.publish("senml/d1", json.dumps([{"n": "x"}])),  # no value
            pub.publish("things/x", json.dumps([{"n": "noseparator", "v": 1}])),
            pub.publish("senml/d1", b"[1"),
        ]
        await pub.wait_acked(mids)
        await poll(lambda: len(proxy.pubacks) == 5, "the edge to answer all 5 messages")
        codes = sorted(code for _, code in proxy.pubacks)
        assert codes == [0, 0, PUBACK_PAYLOAD_INVALID, PUBACK_PAYLOAD_INVALID, 0x99]
        assert set(stored(edge.buffer.path)) == {
            Reading("d1", "boiler/temp", T_US, 60.5),
            Reading("d1", "boiler/on", T_US, True),
            Reading("d1", "boiler/temp", T_US + 1_000_000, 61),
            Reading("urn:dev:ow:10e2073a01080063", "hum", T_US, 40),
        }
        src = edge.stats.source("mqtt")
        assert (src.messages, src.accepted) == (5, 4)  # 4 readings from 2 messages
        assert dict(src.rejected) == {"bad-shape": 1, "bad-name": 1, "bad-json": 1}


# --------------------------------------------------------------------------- QoS 0 and 2


async def test_qos0_is_stored_without_any_acknowledgement(
    tmp_path: Path, mosquitto: Mosquitto, unique_name: str
) -> None:
    async with (
        MqttProxy(mosquitto.port) as proxy,
        running_source(tmp_path, settings_for(proxy.url, unique_name, qos=0)) as edge,
        RawPublisher(mosquitto.port, f"{unique_name}-pub") as pub,
    ):
        pub.publish("sensors/d1/temp", b"21.5", qos=0)
        pub.publish("sensors/d1/temp", b"22.5", qos=1)  # delivered at the subscription's QoS 0
        await poll(lambda: edge.counters.get("readings-committed", 0) == 2, "2 readings")
        assert sorted(r.value for r in stored(edge.buffer.path)) == [21.5, 22.5]  # type: ignore[type-var]
        assert {p.mid for p in proxy.publishes} == {0}
        assert proxy.pubacks == []


async def test_qos2_pubrec_only_after_the_commit(
    tmp_path: Path, mosquitto: Mosquitto, unique_name: str
) -> None:
    async with (
        Qos2Proxy(mosquitto.port) as proxy,
        running_source(
            tmp_path, settings_for(proxy.url, unique_name, qos=2), flush_ms=60_000
        ) as edge,
        FieldPublisher(mosquitto.port, f"{unique_name}-pub") as pub,
    ):
        mids = [pub.publish("sensors/d1/temp", b"21.5", qos=2)]
        mids.append(pub.publish("senml/d1", b"[{}]", qos=2))  # refused: PUBREC 0x99
        await pub.wait_acked(mids)  # PUBCOMP from the broker: it owns both messages
        await poll(lambda: edge.counters["messages-received"] == 2, "the edge to receive both")
        await poll(lambda: len(proxy.pubrecs) == 1, "the PUBREC of the refused one")
        for _ in range(50):
            await asyncio.sleep(0)  # let any (wrong) early PUBREC go out
        assert [code for _, code in proxy.pubrecs] == [PUBACK_PAYLOAD_INVALID]
        assert stored(edge.buffer.path) == []
        await edge.batcher.drain()  # the commit the 60 s timer would do
        await poll(lambda: len(proxy.pubrecs) == 2, "the PUBREC after the commit")
        # A PUBREC >= 0x80 ends the exchange (MQTT 5 4.3.3): only the good one gets PUBREL.
        await poll(lambda: len(proxy.pubcomps) == 1, "the edge to complete the handshake")
        good = next(p.mid for p in proxy.publishes if p.payload == b"21.5")
        assert proxy.pubrecs[1] == (good, 0)
        assert proxy.pubcomps == [good]
        assert proxy.pubacks == []
        assert [(r.sensor, r.value, r.flags) for r in stored(edge.buffer.path)] == [
            ("temp", 21.5, FLAG_EDGE_STAMPED)
        ]


async def test_qos2_killed_before_commit_the_broker_redelivers_and_it_is_committed_once(
    tmp_path: Path, mosquitto: Mosquitto, unique_name: str
) -> None:
    folder = tmp_path / "edge"
    mqtt = (
        "[[mqtt]]\n"
        'name = "mqtt"\n'
        "qos = 2\n"
        f'client_id = "{unique_name}"\n'
        "URL"
        'topics = [{ pattern = "sensors/{device}/{sensor}", format = "value" }]\n'
    )
    async with Qos2Proxy(mosquitto.port) as proxy:
        extra = mqtt.replace("URL", f'url = "{proxy.url}"\n')
        config = write_config(folder, flush_interval_ms=60_000, extra=extra)
        edge = EdgeProcess(config).start()
        try:
            await edge.wait_ready()
            async with FieldPublisher(mosquitto.port, f"{unique_name}-pub") as pub:
                payload = json.dumps({"ts": T_US, "value": 7})
                await pub.wait_acked([pub.publish("sensors/d1/temp", payload, qos=2)])

            async def received() -> bool:
                st = await edge.status()
                return bool(st["counters"]["messages-received"] == 1)

            await poll(received, "the edge to receive the message")
            assert proxy.pubrecs == []
            edge.kill()  # SIGKILL between receive and commit: no PUBREC went out

            write_config(folder, flush_interval_ms=20, extra=extra)
            edge.start()
            await edge.wait_ready()
            buffer_path = folder / "state" / "buffer.sqlite3"
            await poll(lambda: len(proxy.pubcomps) == 1, "the redelivery's handshake to finish")
            assert stored(buffer_path) == [Reading("d1", "temp", T_US, 7)]
            assert [p.dup for p in proxy.publishes] == [False, True]  # delivered twice
            assert proxy.pubrecs == [(proxy.publishes[1].mid, 0)]  # received once
            assert edge.terminate() == 0
        finally:
            edge.kill()


# --------------------------------------------------------------------------- credentials, TLS


async def test_username_and_password_file(
    tmp_path: Path, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    users = {"edge": "s3cret pass", "pub": "pubpw"}
    with Mosquitto(tmp_path / "broker", users=users).start() as broker:
        secret = tmp_path / "mqtt-password"
        secret.write_text("s3cret pass\n")
        wrong = settings_for(broker.url, f"{unique_name}-w", username="edge", password="nope")
        caplog.set_level(logging.WARNING, logger="edge.sources.mqtt")
        async with running_source(tmp_path, wrong, wait=False) as edge:
            await poll(lambda: "cannot connect" in caplog.text, "the refused connect to be logged")
            assert not edge.source.connected
        good = settings_for(broker.url, unique_name, username="edge", password_file=str(secret))
        async with (
            running_source(tmp_path, good) as edge,
            FieldPublisher(broker.port, "pub", username="pub", password="pubpw") as pub,
        ):
            await pub.wait_acked([pub.publish("sensors/d1/temp", b"1")])
            await poll(lambda: edge.counters.get("readings-committed", 0) == 1, "the reading")


async def test_tls_with_a_ca_file_and_a_client_certificate(
    tmp_path: Path, pki: Pki, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Mosquitto(
        tmp_path / "broker",
        tls=(pki.ca, pki.server_cert, pki.server_key),
        require_client_cert=True,
    )
    with broker.start():
        assert broker.url.startswith("mqtts://127.0.0.1:")
        caplog.set_level(logging.WARNING, logger="edge.sources.mqtt")
        untrusted = settings_for(
            broker.url,
            f"{unique_name}-u",
            ca_file=str(pki.other_ca),
            cert_file=str(pki.client_cert),
            key_file=str(pki.client_key),
        )
        async with running_source(tmp_path, untrusted, wait=False) as edge:
            await poll(lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text, "a refused server cert")
            assert not edge.source.connected
        good = settings_for(
            broker.url,
            unique_name,
            ca_file=str(pki.ca),
            cert_file=str(pki.client_cert),
            key_file=str(pki.client_key),
        )
        pub_tls = ssl.create_default_context(cafile=str(pki.ca))
        pub_tls.load_cert_chain(pki.client_cert, pki.client_key)
        async with (
            running_source(tmp_path, good) as edge,
            FieldPublisher(broker.port, f"{unique_name}-pub", tls=pub_tls) as pub,
        ):
            await pub.wait_acked([pub.publish("senml/d1", json.dumps([{"n": "t", "v": 2}]))])
            await poll(lambda: edge.counters.get("readings-committed", 0) == 1, "the reading")
            assert [(r.device, r.sensor, r.value) for r in stored(edge.buffer.path)] == [
                ("d1", "t", 2)
            ]


async def test_tls_refuses_a_certificate_for_another_host(
    tmp_path: Path, pki: Pki, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Mosquitto(tmp_path / "broker", tls=(pki.ca, pki.misnamed_cert, pki.misnamed_key))
    with broker.start():
        caplog.set_level(logging.WARNING, logger="edge.sources.mqtt")
        settings = settings_for(broker.url, unique_name, ca_file=str(pki.ca))  # right CA
        async with running_source(tmp_path, settings, wait=False) as edge:
            await poll(lambda: "mismatch" in caplog.text, "the host name check to refuse it")
            assert not edge.source.connected


def test_tls_context_checks_the_host_name_and_the_chain(pki: Pki) -> None:
    ctx = tls_context(MqttSettings(url="mqtts://127.0.0.1", ca_file=str(pki.ca)))
    assert ctx.check_hostname
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


# --------------------------------------------------------------------------- config keys


def _config(tmp_path: Path, **mqtt: object) -> MqttSettings:
    raw: dict[str, Any] = {
        "edge": {"id": "e1", "tenant": "t1"},
        "mqtt": [{"topics": [{"pattern": "s/{device}", "format": "senml"}], **mqtt}],
    }
    return config_from_dict(raw, base=tmp_path).mqtt[0]


def test_tls_and_credential_keys(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "pw").write_text("x\n")
    s = _config(
        tmp_path,
        url="mqtts://broker.example",
        username="edge",
        password_file="pw",
        ca_file=str(pki.ca),
        cert_file=str(pki.client_cert),
        key_file=str(pki.client_key),
    )
    assert (s.host, s.port, s.tls) == ("broker.example", 8883, True)
    assert s.password_file == str(tmp_path / "pw")  # relative to the config file's folder
    assert _config(tmp_path).port == 1883
    assert _config(tmp_path).topics[0].senml_device is SenmlDevice.TOPIC


@pytest.mark.parametrize(
    ("keys", "key", "message"),
    [
        ({"url": "mqtss://h"}, "mqtt[0].url", "mqtts://host"),
        ({"url": "mqtt://u:p@h"}, "mqtt[0].url", "no user or password in the url"),
        ({"password": "x"}, "mqtt[0].password", "needs a username"),
        (
            {"username": "u", "password": "x", "password_file": "pw"},
            "mqtt[0].password_file",
            "not both",
        ),
        ({"username": "u", "password_file": "missing"}, "mqtt[0].password_file", "no such file"),
        ({"ca_file": "CA"}, "mqtt[0].ca_file", "needs an mqtts:// url"),
        ({"url": "mqtts://h", "ca_file": "missing"}, "mqtt[0].ca_file", "no such file"),
        ({"url": "mqtts://h", "ca_file": "pw"}, "mqtt[0].ca_file", "not a PEM CA"),
        ({"url": "mqtts://h", "key_file": "KEY"}, "mqtt[0].key_file", "needs cert_file"),
        ({"url": "mqtts://h", "cert_file": "CERT"}, "mqtt[0].cert_file", "matching key"),
        ({"username": "a\nb"}, "mqtt[0].username", "line breaks"),
    ],
)
def test_bad_tls_and_credential_keys_name_the_key(
    tmp_path: Path, pki: Pki, keys: dict[str, str], key: str, message: str
) -> None:
    (tmp_path / "pw").write_text("x\n")
    subst = {"CA": str(pki.ca), "KEY": str(pki.client_key), "CERT": str(pki.client_cert)}
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, **{k: subst.get(v, v) for k, v in keys.items()})
    assert info.value.key == key
    assert message in str(info.value)


def test_senml_device_only_for_senml(tmp_path: Path) -> None:
    raw: dict[str, Any] = {
        "edge": {"id": "e1", "tenant": "t1"},
        "mqtt": [{"topics": [{"pattern": "s/{device}", "format": "json", "senml_device": "name"}]}],
    }
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, base=tmp_path)
    assert info.value.key == "mqtt[0].topics[0].senml_device"
    raw["mqtt"][0]["topics"][0]["format"] = "senml"
    assert config_from_dict(raw, base=tmp_path).mqtt[0].topics[0].senml_device is SenmlDevice.NAME


# --------------------------------------------------------------------------- fuzz through the broker


def _mixed_traffic(seed: int, count: int) -> tuple[list[tuple[str, bytes]], set[Reading], int]:
    """``count`` messages: good ones of every format among random bytes and broken JSON.
    Returns the messages, the readings the good ones carry, and how many are bad."""
    rng = random.Random(seed)
    messages: list[tuple[str, bytes]] = []
    expected: set[Reading] = set()
    bad = 0
    for i in range(count):
        kind = rng.choice(["value", "senml", "senml-name", "bytes", "broken"])
        dev, v = f"d{i}", rng.randint(-1000, 1000)
        if kind == "value":
            messages.append((f"sensors/{dev}/t", json.dumps({"ts": T_US, "value": v}).encode()))
            expected.add(Reading(dev, "t", T_US, v))
        elif kind == "senml":
            pack = [{"bt": T_S, "n": "a", "v": v}, {"n": "b", "vs": str(v)}]
            messages.append((f"senml/{dev}", json.dumps(pack).encode()))
            expected |= {Reading(dev, "a", T_US, v), Reading(dev, "b", T_US, str(v))}
        elif kind == "senml-name":
            pack = [{"bn": f"urn:x:{dev}:", "bt": T_S, "n": "c", "vb": v > 0}]
            messages.append(("things/any", json.dumps(pack).encode()))
            expected.add(Reading(f"urn:x:{dev}", "c", T_US, v > 0))
        else:
            bad += 1
            if kind == "bytes":
                raw = b"\xff" + rng.randbytes(rng.randint(0, 40))
            else:
                whole = json.dumps([{"n": "a", "v": v}]).encode()
                raw = whole[: rng.randint(1, len(whole) - 1)]
            topic = rng.choice([f"sensors/{dev}/t", f"senml/{dev}", "things/any"])
            messages.append((topic, raw))
    return messages, expected, bad


async def test_good_messages_among_garbage_are_all_kept_and_counted(
    tmp_path: Path, mosquitto: Mosquitto, unique_name: str
) -> None:
    messages, expected, bad = _mixed_traffic(seed=4, count=300)
    async with (
        running_source(tmp_path, settings_for(mosquitto.url, unique_name)) as edge,
        RawPublisher(mosquitto.port, f"{unique_name}-pub") as pub,
    ):
        await pub.wait_acked([pub.publish(topic, payload) for topic, payload in messages])
        src = edge.stats.source("mqtt")
        await poll(lambda: src.messages == len(messages), "every message to arrive")
        await poll(
            lambda: edge.counters.get("readings-committed", 0) == len(expected),
            "every good reading to be committed",
        )
        assert set(stored(edge.buffer.path)) == expected
        assert len(stored(edge.buffer.path)) == len(expected)
        assert sum(src.rejected.values()) == bad > 0
        assert set(src.rejected) <= {"bad-utf8", "bad-json"}
        assert src.accepted == len(expected)
