"""The hub's PKI and TLS on NATS and the API: the CA made once and kept, server certificates
issued for the configured names and renewed, operators' files checked with clear errors, and a
real nats-server and the real hub API refusing whoever does not speak TLS to the right CA."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import http.client
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from cryptography import x509

from contract.backoff import Backoff
from contract.capin import certificate_fingerprint
from contract.errors import ConfigError
from contract.natsconn import NatsIdentity, connect_nats
from hub import pki as hub_pki
from hub.config import ApiSettings, HubConfig, HubSettings, TlsSettings, config_from_dict
from hub.pki import ensure_pki, read_pki
from hub.service import run_hub
from simulator.servers import NatsServer
from tests.pki_helpers import TlsNats, tls_nats
from tests.polling import until
from tests.test_hub_cli import hub_cli


def _config(tmp_path: Path, **tls: object) -> HubConfig:
    return HubConfig(
        hub=HubSettings(state_dir=tmp_path / "state"),
        tls=TlsSettings(**tls),  # type: ignore[arg-type]
    )


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _san(path: Path) -> set[str]:
    san = _cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n) for n in san.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# ------------------------------------------------------------------ the hub's own CA


def test_the_ca_is_made_once_with_a_private_key_and_kept_across_restarts(tmp_path: Path) -> None:
    config = _config(tmp_path)
    first = ensure_pki(config)
    folder = tmp_path / "state" / "pki"
    assert first.own_ca
    assert first.ca_cert == folder / "ca.pem"
    assert _mode(folder) == 0o700
    assert {p.name: _mode(p) for p in folder.iterdir()} == {
        "ca.pem": 0o644,
        "ca.key": 0o600,
        "nats.pem": 0o644,
        "nats.key": 0o600,
        "api.pem": 0o644,
        "api.key": 0o600,
    }
    ca = _cert(folder / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert first.pin == certificate_fingerprint((folder / "ca.pem").read_bytes())
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    again = ensure_pki(config)  # the next start: nothing changes
    assert again.pin == first.pin
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert read_pki(config) == again


def test_server_certificates_name_the_configured_hosts_and_come_from_the_ca(
    tmp_path: Path,
) -> None:
    made = ensure_pki(_config(tmp_path))
    assert made.nats is not None
    assert made.api is not None
    ca = _cert(made.ca_cert)
    for server in (made.nats, made.api):
        cert = _cert(server.cert)
        cert.verify_directly_issued_by(ca)
        assert _san(server.cert) == {"localhost", "127.0.0.1", "::1"}
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert dt.timedelta(days=390) < lifetime < dt.timedelta(days=400)


def test_changed_hostnames_reissue_the_server_certificates_under_the_same_ca(
    tmp_path: Path,
) -> None:
    first = ensure_pki(_config(tmp_path))
    assert first.nats is not None
    old_nats = first.nats.cert.read_bytes()
    second = ensure_pki(_config(tmp_path, hostnames=("hub.example.org", "10.0.0.7")))
    assert second.pin == first.pin
    assert second.nats is not None
    assert second.nats.cert.read_bytes() != old_nats
    assert _san(second.nats.cert) == {"hub.example.org", "10.0.0.7"}


def test_a_certificate_close_to_expiry_or_missing_is_issued_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(hub_pki, "SERVER_VALIDITY", dt.timedelta(days=10))  # within RENEW_BEFORE
        short = ensure_pki(config)
    assert short.api is not None
    expiring = short.api.cert.read_bytes()
    renewed = ensure_pki(config)
    assert renewed.api is not None
    assert renewed.api.cert.read_bytes() != expiring
    assert _cert(renewed.api.cert).not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(
        days=300
    )
    assert renewed.nats is not None
    renewed.nats.cert.unlink()
    assert ensure_pki(config).nats == renewed.nats
    assert renewed.nats.cert.is_file()


def test_with_tls_off_nothing_is_made(tmp_path: Path) -> None:
    made = ensure_pki(_config(tmp_path, nats=False, api=True))
    assert made.nats is None
    assert made.api is not None
    assert not (tmp_path / "state" / "pki" / "nats.pem").exists()


# ------------------------------------------------------------------ operators' files


def _operator_ca(folder: Path, name: str = "ops") -> tuple[Path, Path]:
    cert, key = hub_pki._make_ca(f"{name} CA")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}-ca.pem").write_bytes(hub_pki._cert_pem(cert))
    (folder / f"{name}-ca.key").write_bytes(hub_pki._key_pem(key))
    return folder / f"{name}-ca.pem", folder / f"{name}-ca.key"


def _operator_server(folder: Path, ca: tuple[Path, Path], name: str) -> tuple[Path, Path]:
    ca_cert = _cert(ca[0])
    ca_key = hub_pki._read_key(ca[1], "test")
    cert, key = hub_pki._issue_server(ca_cert, ca_key, name, ("localhost", "127.0.0.1"))
    (folder / f"{name}.pem").write_bytes(hub_pki._cert_pem(cert))
    (folder / f"{name}.key").write_bytes(hub_pki._key_pem(key))
    return folder / f"{name}.pem", folder / f"{name}.key"


def test_an_operators_ca_issues_the_server_certificates(tmp_path: Path) -> None:
    ca_cert, ca_key = _operator_ca(tmp_path / "ops")
    made = ensure_pki(_config(tmp_path, ca_cert=ca_cert, ca_key=ca_key))
    assert not made.own_ca
    assert made.ca_cert.read_bytes() == ca_cert.read_bytes()  # the copy edges are given
    assert made.pin == certificate_fingerprint(ca_cert.read_bytes())
    assert not (tmp_path / "state" / "pki" / "ca.key").exists()
    assert made.nats is not None
    _cert(made.nats.cert).verify_directly_issued_by(_cert(ca_cert))


def test_an_operators_server_certificates_are_used_where_they_are(tmp_path: Path) -> None:
    ops = tmp_path / "ops"
    ca = _operator_ca(ops)
    nats_files = _operator_server(ops, ca, "nats")
    api_files = _operator_server(ops, ca, "api")
    config = _config(
        tmp_path,
        ca_cert=ca[0],
        nats_cert=nats_files[0],
        nats_key=nats_files[1],
        api_cert=api_files[0],
        api_key=api_files[1],
    )
    made = ensure_pki(config)
    assert made.nats is not None
    assert made.api is not None
    assert (made.nats.cert, made.nats.key, made.nats.issued) == (*nats_files, False)
    assert (made.api.cert, made.api.key, made.api.issued) == (*api_files, False)
    assert sorted(p.name for p in (tmp_path / "state" / "pki").iterdir()) == ["ca.pem"]


def test_bad_operator_files_stop_the_hub_with_the_key_named(tmp_path: Path) -> None:
    ops = tmp_path / "ops"
    ca = _operator_ca(ops)
    other = _operator_ca(ops, "other")
    good = _operator_server(ops, ca, "nats")
    stranger = _operator_server(ops, other, "stranger")
    (ops / "junk.pem").write_text("not a certificate\n")
    base = {"ca_cert": ca[0], "api": False}
    cases: list[tuple[dict[str, object], str, str]] = [
        ({"nats_cert": good[0], "nats_key": stranger[1]}, "tls.nats_key", "is not the key of"),
        ({"nats_cert": stranger[0], "nats_key": stranger[1]}, "tls.nats_cert", "not signed by"),
        ({"nats_cert": ops / "junk.pem", "nats_key": good[1]}, "tls.nats_cert", "not a PEM"),
        ({"nats_cert": good[0], "nats_key": ops / "junk.pem"}, "tls.nats_key", "not an unencr"),
        ({"nats_cert": ops / "gone.pem", "nats_key": good[1]}, "tls.nats_cert", "cannot read"),
        (
            {"ca_cert": good[0], "nats_cert": good[0], "nats_key": good[1]},
            "tls.ca_cert",
            "not a CA",
        ),
        ({"ca_key": other[1]}, "tls.ca_key", "is not the key of"),
    ]
    for extra, key, text in cases:
        with pytest.raises(ConfigError) as info:
            ensure_pki(_config(tmp_path, **{**base, **extra}))
        assert (info.value.key, text in info.value.problem) == (key, True), info.value


@pytest.mark.parametrize(
    ("tls", "key"),
    [
        ({"nats_cert": "n.pem", "nats_key": "n.key"}, "tls.nats_cert"),  # which CA signed it?
        ({"nats_cert": "n.pem", "ca_cert": "ca.pem"}, "tls.nats_cert"),  # without its key
        ({"ca_key": "ca.key"}, "tls.ca_key"),
        ({"ca_cert": "ca.pem"}, "tls.ca_cert"),  # no key: who issues the certificates?
        ({"hostnames": []}, "tls.hostnames"),
        ({"hostnames": "localhost"}, "tls.hostnames"),
        ({"ca_cert": ""}, "tls.ca_cert"),
    ],
)
def test_inconsistent_tls_settings_are_refused_at_load(
    tmp_path: Path, tls: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"tls": tls}, base=tmp_path)
    assert info.value.key == key


def test_relative_tls_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    config = config_from_dict(
        {"tls": {"ca_cert": "ops/ca.pem", "ca_key": "/etc/ca.key"}}, base=tmp_path
    )
    assert (config.tls.ca_cert, config.tls.ca_key) == (tmp_path / "ops/ca.pem", Path("/etc/ca.key"))


def _hub_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return hub_cli(*args, "--config", str(tmp_path / "hub.toml"))


def test_pki_cli_init_prints_the_pin_show_makes_nothing_and_errors_are_one_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "hub.toml").write_text('[hub]\nstate_dir = "state"\n')
    shown = _hub_cli(tmp_path, "pki", "show")
    assert shown.returncode == 2
    assert "cairn-hub pki init" in shown.stderr
    assert "Traceback" not in shown.stderr
    assert not (tmp_path / "state" / "pki").exists()

    init = _hub_cli(tmp_path, "pki", "init")
    assert init.returncode == 0, init.stderr
    pin = certificate_fingerprint((tmp_path / "state" / "pki" / "ca.pem").read_bytes())
    assert f"ca-pin     {pin}" in init.stdout
    assert _hub_cli(tmp_path, "pki", "show").stdout == init.stdout
    enroll = _hub_cli(tmp_path, "enroll-token", "--tenant", "t", "--edge", "e")
    assert f"--ca-pin {pin}" in enroll.stdout  # what the operator hands the site admin

    (tmp_path / "bad.pem").write_text("junk")
    (tmp_path / "hub.toml").write_text(
        '[hub]\nstate_dir = "other"\n[tls]\nca_cert = "bad.pem"\nca_key = "bad.pem"\n'
    )
    bad = _hub_cli(tmp_path, "pki", "init")
    assert bad.returncode == 2
    assert "tls.ca_cert" in bad.stderr
    assert "not a PEM X.509 certificate" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


# ------------------------------------------------------------------ a real nats-server


@pytest.fixture
def site(tmp_path: Path) -> Iterator[TlsNats]:
    with tls_nats(tmp_path / "site") as s:
        yield s


def _plain_text_exchange(port: int) -> bytes:
    """Talk NATS in plain text to the server: CONNECT and PING without a TLS handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return received


async def test_nats_refuses_plain_text_and_clients_of_another_ca(
    site: TlsNats, tmp_path: Path
) -> None:
    answer = await asyncio.to_thread(_plain_text_exchange, site.server.port)
    # TLS handshake first: not even the server's INFO goes out in plain text, and no PONG
    assert b"INFO" not in answer
    assert b"PONG" not in answer

    other = ensure_pki(HubConfig(hub=HubSettings(state_dir=tmp_path / "other")))
    with pytest.raises((ssl.SSLError, OSError, nats.errors.Error)):
        await nats.connect(
            site.server.url,
            **NatsIdentity(ca_file=str(other.ca_cert)).options(),
            allow_reconnect=False,
            connect_timeout=5,
        )

    nc = await nats.connect(site.server.url, **site.identity.options(), allow_reconnect=False)
    try:
        sub = await nc.subscribe("probe")
        await nc.publish("probe", b"over tls")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"over tls"
    finally:
        await nc.close()


async def test_the_hub_refuses_a_nats_server_without_tls(
    site: TlsNats, nats_server: NatsServer
) -> None:
    """A CA in the identity means TLS or nothing: nats-py itself would carry on in plain text
    with a server that does not ask for TLS."""
    failures: list[str] = []
    connect = connect_nats(
        nats_server.url,
        "test",
        Backoff(0.05, 0.1),
        failures.append,
        NatsIdentity(ca_file=str(site.identity.ca_file)),
    )
    task = asyncio.create_task(connect)
    try:
        await until(lambda: len(failures) >= 2, "refused connects", 20)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert all("TLS handshake failed" in f for f in failures), failures


# ------------------------------------------------------------------ the hub API over HTTPS


@pytest.fixture
async def running_hub(site: TlsNats) -> AsyncIterator[tuple[HubConfig, str]]:
    config = dataclasses.replace(site.config, api=ApiSettings(listen="127.0.0.1:0"))
    stop = asyncio.Event()
    task = asyncio.create_task(run_hub(config, stop=stop))
    port_file = config.hub.state_dir / "api.port"
    try:
        await until(port_file.exists, "the hub API", 30)
        yield config, f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def _fetch(url: str, context: ssl.SSLContext | None = None) -> bytes:
    with urllib.request.urlopen(url, timeout=10, context=context) as resp:
        return bytes(resp.read())


async def test_the_hub_api_speaks_https_only_to_clients_of_its_ca(
    running_hub: tuple[HubConfig, str], tmp_path: Path
) -> None:
    config, address = running_hub
    ca = config.hub.state_dir / "pki" / "ca.pem"
    trusted = ssl.create_default_context(cafile=str(ca))
    served = await asyncio.to_thread(_fetch, f"https://{address}/api/v1/ca.pem", trusted)
    assert served == ca.read_bytes()  # what `cairn-edge enroll --ca-pin` fetches and checks

    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
        await asyncio.to_thread(_fetch, f"http://{address}/api/v1/ca.pem")
    other = ensure_pki(HubConfig(hub=HubSettings(state_dir=tmp_path / "other")))
    with pytest.raises(urllib.error.URLError) as info:
        await asyncio.to_thread(
            _fetch,
            f"https://{address}/api/v1/ca.pem",
            ssl.create_default_context(cafile=str(other.ca_cert)),
        )
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)


def test_a_ca_that_lost_its_key_is_never_replaced_silently(tmp_path: Path) -> None:
    config = _config(tmp_path)
    made = ensure_pki(config)
    (tmp_path / "state" / "pki" / "ca.key").unlink()
    before = made.ca_cert.read_bytes()
    with pytest.raises(ConfigError) as info:
        ensure_pki(config)
    assert "without its key" in info.value.problem
    assert made.ca_cert.read_bytes() == before  # the edges' trust anchor is untouched
