"""The hub's certificates: a CA made on first start (or the operator's), and the TLS server
certificates of NATS and the API.

Everything lives in ``state_dir/pki/`` (mode 0700): ``ca.pem`` is the CA edges and API
clients trust (given to edges at enrollment, pinned with ``sha256:<hex>``); ``ca.key`` (0600)
exists only when the hub made its own CA; ``nats.pem``/``nats.key`` and ``api.pem``/
``api.key`` are the server certificates the hub issued. :func:`ensure_pki` is idempotent: it
reuses what is there and issues a server certificate again only when it is missing, expires
within :data:`RENEW_BEFORE`, names other hosts than ``[tls] hostnames`` or was not issued by
the current CA. Operator-supplied server certificates are checked (key matches, signed by
``tls.ca_cert``) and used where they are.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from contract.capin import certificate_fingerprint
from contract.errors import ConfigError
from hub.config import HubConfig

__all__ = [
    "CA_KEY_USAGE",
    "CA_VALIDITY",
    "RENEW_BEFORE",
    "SERVER_VALIDITY",
    "HubPki",
    "api_tls",
    "ca_path",
    "ensure_pki",
    "pki_dir",
    "read_pki",
    "server_ssl_context",
    "site_tls_files",
]

CA_KEY_USAGE: Final = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
"""What a CA certificate's key may do: sign certificates and CRLs (and digital signatures)."""
CA_VALIDITY: Final = dt.timedelta(days=3650)
SERVER_VALIDITY: Final = dt.timedelta(days=397)
RENEW_BEFORE: Final = dt.timedelta(days=30)
_SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_SIGNING_KEYS: Final = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)


@dataclass(frozen=True)
class ServerCert:
    """A TLS server certificate and its key (files)."""

    cert: Path
    key: Path
    issued: bool
    """``True``: the hub issued it (and re-issues it); ``False``: the operator's files."""


@dataclass(frozen=True)
class HubPki:
    """Where the hub's TLS files are, and the CA's pin."""

    ca_cert: Path
    """``state_dir/pki/ca.pem``: the CA edges trust (a copy of the operator's, if any)."""
    pin: str
    """``sha256:<hex>`` of the CA certificate."""
    nats: ServerCert | None
    api: ServerCert | None
    own_ca: bool
    """``True``: the hub made the CA (its key is ``state_dir/pki/ca.key``)."""


def pki_dir(config: HubConfig) -> Path:
    return config.hub.state_dir / "pki"


def ca_path(config: HubConfig) -> Path:
    """The CA certificate edges and clients trust (whether the hub made it or not)."""
    return pki_dir(config) / "ca.pem"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` whole (readers never see half a file), created with ``mode``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _read_cert(path: Path, key: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(key, f"{path} is not a PEM X.509 certificate") from exc


def _read_key(path: Path, key: str) -> _SigningKey:
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(key, f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(loaded, _SIGNING_KEYS):
        raise ConfigError(key, f"{path}: a {type(loaded).__name__} cannot sign certificates")
    return loaded


def _same_public_key(cert: x509.Certificate, key: _SigningKey) -> bool:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _san(hostnames: tuple[str, ...]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


def _names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n) for n in san.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def _wanted_names(hostnames: tuple[str, ...]) -> set[str]:
    out = set()
    for host in hostnames:
        try:
            out.add(str(ipaddress.ip_address(host)))
        except ValueError:
            out.add(host)
    return out


def _issue_server(
    ca: x509.Certificate,
    ca_key: _SigningKey,
    common_name: str,
    hostnames: tuple[str, ...],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + SERVER_VALIDITY, ca.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_san(hostnames)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _issue_into(
    ca: x509.Certificate,
    ca_key: _SigningKey,
    common_name: str,
    hostnames: tuple[str, ...],
    where: ServerCert,
) -> None:
    cert, key = _issue_server(ca, ca_key, common_name, hostnames)
    _write(where.key, _key_pem(key), 0o600)  # the key first: a cert without it is useless
    _write(where.cert, _cert_pem(cert), 0o644)


def site_tls_files(
    folder: Path, name: str, hostnames: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
) -> tuple[Path, Path, Path]:
    """``(ca.pem, <name>.pem, <name>.key)`` in ``folder``: a CA of its own and a server
    certificate from it for ``hostnames``, made once (a site's MQTT broker in the lab)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca, ca_key = _own_ca(folder)
    server = ServerCert(folder / f"{name}.pem", folder / f"{name}.key", issued=True)
    if _needs_new(server.cert, ca, hostnames) or not server.key.exists():
        _issue_into(ca, ca_key, name, hostnames, server)
    return folder / "ca.pem", server.cert, server.key


def _needs_new(path: Path, ca: x509.Certificate, hostnames: tuple[str, ...]) -> bool:
    """A hub-issued certificate that is missing, unreadable, expiring, for other names, or
    not from ``ca``."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return True
    return (
        cert.not_valid_after_utc - _now() < RENEW_BEFORE
        or _names(cert) != _wanted_names(hostnames)
        or not _issued_by(cert, ca)
    )


def _own_ca(folder: Path) -> tuple[x509.Certificate, _SigningKey]:
    """The hub's own CA, made if ``ca.pem`` and ``ca.key`` are not both there."""
    cert_path, key_path = folder / "ca.pem", folder / "ca.key"
    if cert_path.exists() and key_path.exists():
        ca = _read_cert(cert_path, "hub.state_dir")
        key = _read_key(key_path, "hub.state_dir")
        if not _same_public_key(ca, key):
            raise ConfigError("hub.state_dir", f"{key_path} is not the key of {cert_path}")
        return ca, key
    if cert_path.exists():  # edges trust it: never replace it silently
        raise ConfigError(
            "tls.ca_cert",
            f"{cert_path} is there without its key {key_path}: restore the key, set"
            " tls.ca_cert to the CA's files, or move pki/ away to make a new CA (then enroll"
            " every edge again)",
        )
    ca, new_key = _make_ca("Cairn hub CA")
    _write(key_path, _key_pem(new_key), 0o600)  # the key first: a cert without it is useless
    _write(cert_path, _cert_pem(ca), 0o644)
    return ca, new_key


def _operator_ca(config: HubConfig) -> tuple[x509.Certificate, _SigningKey | None]:
    tls = config.tls
    assert tls.ca_cert is not None
    ca = _read_cert(tls.ca_cert, "tls.ca_cert")
    if not _is_ca(ca):
        raise ConfigError(
            "tls.ca_cert", f"{tls.ca_cert} is not a CA certificate (basicConstraints)"
        )
    if tls.ca_key is None:
        return ca, None
    key = _read_key(tls.ca_key, "tls.ca_key")
    if not _same_public_key(ca, key):
        raise ConfigError("tls.ca_key", f"{tls.ca_key} is not the key of {tls.ca_cert}")
    return ca, key


def _operator_server(
    ca: x509.Certificate, cert_path: Path, key_path: Path, name: str
) -> ServerCert:
    cert = _read_cert(cert_path, f"tls.{name}_cert")
    key = _read_key(key_path, f"tls.{name}_key")
    if not _same_public_key(cert, key):
        raise ConfigError(f"tls.{name}_key", f"{key_path} is not the key of {cert_path}")
    if not _issued_by(cert, ca):
        raise ConfigError(f"tls.{name}_cert", f"{cert_path} is not signed by tls.ca_cert")
    if cert.not_valid_after_utc < _now():
        raise ConfigError(f"tls.{name}_cert", f"{cert_path} expired")
    return ServerCert(cert_path, key_path, issued=False)


def ensure_pki(config: HubConfig) -> HubPki:
    """Make or check what ``[tls]`` asks for (see the module doc); :class:`ConfigError`
    naming the key if an operator's file is unreadable, not PEM, or does not fit."""
    tls = config.tls
    folder = pki_dir(config)
    try:
        config.hub.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)
    except OSError as exc:
        raise ConfigError("hub.state_dir", f"cannot create {folder}: {exc.strerror}") from exc
    ca_key: _SigningKey | None
    if tls.ca_cert is None:
        ca, ca_key = _own_ca(folder)
    else:
        ca, ca_key = _operator_ca(config)
        if not ca_path(config).is_file() or ca_path(config).read_bytes() != _cert_pem(ca):
            _write(ca_path(config), _cert_pem(ca), 0o644)
    servers: dict[str, ServerCert | None] = {}
    for name, wanted, cert_path, key_path in (
        ("nats", tls.nats, tls.nats_cert, tls.nats_key),
        ("api", tls.api, tls.api_cert, tls.api_key),
    ):
        if cert_path is not None and key_path is not None:
            servers[name] = _operator_server(ca, cert_path, key_path, name)
            continue
        if not wanted:
            servers[name] = None
            continue
        if ca_key is None:  # hub.config refuses this; defensive for configs built in code
            raise ConfigError(f"tls.{name}_cert", "needed: the hub has no CA key to issue one")
        issued = ServerCert(folder / f"{name}.pem", folder / f"{name}.key", issued=True)
        if _needs_new(issued.cert, ca, tls.hostnames) or not issued.key.exists():
            _issue_into(ca, ca_key, f"cairn-hub {name}", tls.hostnames, issued)
        servers[name] = issued
    return HubPki(
        ca_cert=ca_path(config),
        pin=certificate_fingerprint(_cert_pem(ca)),
        nats=servers["nats"],
        api=servers["api"],
        own_ca=tls.ca_cert is None,
    )


def read_pki(config: HubConfig) -> HubPki | None:
    """What is there now, without making anything (``None`` before the first start)."""
    path = ca_path(config)
    if not path.is_file():
        return None
    folder, tls = pki_dir(config), config.tls

    def server(name: str, cert: Path | None, key: Path | None) -> ServerCert | None:
        if cert is not None and key is not None:
            return ServerCert(cert, key, issued=False)
        mine = ServerCert(folder / f"{name}.pem", folder / f"{name}.key", issued=True)
        return mine if mine.cert.is_file() else None

    return HubPki(
        ca_cert=path,
        pin=certificate_fingerprint(path.read_bytes()),
        nats=server("nats", tls.nats_cert, tls.nats_key),
        api=server("api", tls.api_cert, tls.api_key),
        own_ca=tls.ca_cert is None,
    )


def api_tls(config: HubConfig) -> tuple[HubPki | None, ssl.SSLContext | None]:
    """What the hub's API needs at start: the PKI (made or checked when ``[tls]`` turns TLS on
    anywhere; ``None`` otherwise) and the HTTPS context (``None``: plain HTTP)."""
    if not (config.tls.api or config.tls.nats):
        return None, None
    pki = ensure_pki(config)
    return pki, server_ssl_context(pki.api) if pki.api is not None else None


def server_ssl_context(server: ServerCert) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 or later) presenting ``server``'s certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(server.cert, server.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls.api_cert", f"cannot load {server.cert}: {exc}") from exc
    return context
