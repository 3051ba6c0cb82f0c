"""The hub's configuration: one TOML file, one frozen dataclass per section.

Every field is documented where it is defined and carries its bounds; a bad value fails at
start with a :class:`~contract.errors.ConfigError` naming the key. Relative paths resolve
against the folder of the config file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from contract.errors import ConfigError
from contract.settings import bounded, read_toml, section, split_host_port, table

__all__ = [
    "AUTHORIZATION_FILE",
    "ApiSettings",
    "AuthSettings",
    "HubConfig",
    "HubSettings",
    "NatsSettings",
    "StoreSettings",
    "Synchronous",
    "TlsSettings",
    "load_config",
]


AUTHORIZATION_FILE: Final = "nats-authorization.conf"
"""The default name of the NATS authorization the hub writes, in ``state_dir``."""


class Synchronous(StrEnum):
    """SQLite ``synchronous`` level of store commits (the journal is always WAL)."""

    NORMAL = "normal"
    """A process crash loses no commit; a power loss may roll back the last ones, which
    JetStream does not redeliver because the hub had acknowledged them."""
    FULL = "full"
    """Commits also survive a power loss, if the disk honours fsync."""


@dataclass(frozen=True, slots=True)
class HubSettings:
    """``[hub]``: where the hub keeps its state."""

    state_dir: Path = Path("state")
    """Folder of ``store.sqlite3``, ``registry.sqlite3`` (tenants, edges and their keys, API
    keys, revoked tokens), the JWT signing key ``jwt-signing.pem`` and ``api.port`` (created
    with mode 0700)."""

    @property
    def store_path(self) -> Path:
        return self.state_dir / "store.sqlite3"

    @property
    def key_path(self) -> Path:
        return self.state_dir / "jwt-signing.pem"

    @property
    def registry_path(self) -> Path:
        return self.state_dir / "registry.sqlite3"


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """``[nats]``: the JetStream server the edges publish to."""

    url: str = "nats://127.0.0.1:4222"
    """NATS server URL."""
    duplicate_window_s: float = bounded(120.0, lo=1, hi=7 * 86400)
    """JetStream de-duplication window of the telemetry stream, seconds. Beyond it the
    store's (edge, seq) record still makes a re-sent batch a no-op."""
    fetch_batch: int = bounded(64, lo=1, hi=4096)
    """Messages asked for per pull of the durable consumer."""
    ack_wait_s: float = bounded(30.0, lo=1, hi=3600)
    """Seconds JetStream waits for the hub's ack before it redelivers a batch."""
    max_ack_pending: int = bounded(1024, lo=1, hi=1_000_000)
    """Batches delivered to the hub and not yet acknowledged, at most."""
    public_url: str = ""
    """NATS URL the edges are given when they enroll (how they reach the server, e.g.
    ``tls://hub.example.org:4222``); ``""``: the same as ``url``."""
    manage_authorization: bool = False
    """Maintain the NATS server's authorization: one nkey user per enrolled, unrevoked edge
    (publish only its telemetry and status subjects and clock requests, subscribe only its
    command subject and inboxes) and the hub's own user, written to ``authorization_file``
    and reloaded (SIGHUP to the process in ``pid_file``) whenever an edge is added, rotated
    or revoked. The server's config must ``include`` that file (by a path relative to the
    server's config file); ``cairn-hub nats-auth write`` writes it before the server's first
    start."""
    authorization_file: str = ""
    """Where the authorization is written (mode 0600); ``""``:
    ``state_dir/nats-authorization.conf``."""
    pid_file: str = ""
    """The nats-server's ``pid_file``: the hub sends that process SIGHUP after writing the
    authorization. ``""``: write the file only (reload the server some other way)."""
    extra_users_file: str = ""
    """A file of further nats-server ``users`` entries (``{ nkey: ..., permissions: ... }``,
    for tools or monitoring) copied into the authorization as they are; ``""``: none."""
    retired_key_login_s: float = bounded(600.0, lo=0, hi=366 * 86400)
    """After an edge rotates its key, the old key may still log in to NATS for this long, so
    a running edge has time to reconnect with the new one, seconds."""


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """``[store]``: the readings store."""

    synchronous: Synchronous = Synchronous.FULL
    """SQLite synchronous level of each batch commit: ``full`` (the default: a stored batch
    survives a power loss before JetStream is told) or ``normal`` (survives a crash of the
    process only)."""


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """``[api]``: the REST API."""

    listen: str = "127.0.0.1:8080"
    """``host:port`` of the REST API; port 0 picks a free one and writes it to
    ``state_dir/api.port``."""


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """``[auth]``: bearer tokens of the API."""

    issuer: str = "cairn-hub"
    """``iss`` of the tokens this hub issues and accepts."""
    audience: str = "cairn-api"
    """``aud`` of the tokens this hub issues and accepts."""
    token_ttl_s: int = bounded(86400, lo=1, hi=366 * 86400)
    """Lifetime of a token made by ``cairn-hub token create`` unless ``--ttl-s`` says otherwise."""
    leeway_s: int = bounded(30, lo=0, hi=600)
    """Clock leeway when checking ``exp``, ``nbf`` and ``iat``, seconds."""
    retired_key_grace_s: int = bounded(7 * 86400, lo=0, hi=366 * 86400)
    """After an edge rotates its key, batches signed with the old key are still accepted for
    this long (they may wait in JetStream while the hub is down), seconds."""
    api_key_token_ttl_s: int = bounded(900, lo=60, hi=86400)
    """Lifetime of the bearer tokens ``POST /api/v1/token`` gives for an API key, seconds
    (a revoked API key gets no new token; those it got live at most this long)."""
    device_revocations_resend_s: float = bounded(30.0, lo=0.5, hi=3600)
    """Each active edge gets its tenant's list of revoked device tokens at once when it
    changes and again every this many seconds (an edge that was offline catches up)."""


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """``[tls]``: TLS on NATS and the API, and where the certificates come from.

    By default the hub makes its own CA on first start (``state_dir/pki/ca.pem`` and
    ``ca.key``) and issues the server certificates of NATS (``nats.pem``, ``nats.key``) and
    the API (``api.pem``, ``api.key``) in the same folder; ``cairn-hub pki init`` does it
    before the first start. An operator's CA (``ca_cert`` + ``ca_key``) replaces the hub's;
    an operator's server certificates (``nats_cert``/``nats_key``, ``api_cert``/``api_key``,
    with ``ca_cert`` the CA that signed them) replace the hub's server certificates.
    """

    api: bool = True
    """Serve the REST API over HTTPS (``false``: plain HTTP, for a trusted network only)."""
    nats: bool = True
    """Connect to NATS over TLS verified against the CA, TLS handshake first (the NATS server
    must have ``tls { cert_file, key_file, handshake_first: true }``, see the deployer guide);
    ``false``: plain TCP."""
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
    """Names and IP addresses the issued server certificates are valid for (what edges and
    API clients put in their URLs). A change re-issues the certificates at the next start."""
    ca_cert: Path | None = None
    """An operator's CA certificate (PEM) instead of the hub's own CA; edges are given it
    at enrollment."""
    ca_key: Path | None = None
    """The private key of ``ca_cert`` (PEM, unencrypted): the hub issues its server
    certificates with it. Leave it out when the server certificates are the operator's."""
    nats_cert: Path | None = None
    """An operator's NATS server certificate (PEM, signed by ``ca_cert``), with ``nats_key``."""
    nats_key: Path | None = None
    """The private key of ``nats_cert`` (PEM)."""
    api_cert: Path | None = None
    """An operator's API server certificate (PEM, signed by ``ca_cert``), with ``api_key``."""
    api_key: Path | None = None
    """The private key of ``api_cert`` (PEM)."""


@dataclass(frozen=True, slots=True)
class HubConfig:
    """The whole configuration of a hub."""

    hub: HubSettings = field(default_factory=HubSettings)
    nats: NatsSettings = field(default_factory=NatsSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    path: Path | None = None
    """The file this configuration was read from (``None`` if built in code)."""

    @property
    def api_host_port(self) -> tuple[str, int]:
        return split_host_port(self.api.listen)

    @property
    def authorization_path(self) -> Path:
        """Where the hub writes the NATS server's authorization (``nats.authorization_file``)."""
        if self.nats.authorization_file:
            return Path(self.nats.authorization_file)
        return self.hub.state_dir / AUTHORIZATION_FILE


_NATS_PATHS: Final = ("authorization_file", "pid_file", "extra_users_file")
"""``[nats]`` paths kept as strings (``""`` means none): resolved against the config folder."""


def load_config(path: Path | str) -> HubConfig:
    """Read and check the TOML file at ``path``; raises :class:`ConfigError` naming the key."""
    path = Path(path).absolute()
    return config_from_dict(read_toml(path), base=path.parent, path=path)


def config_from_dict(raw: dict[str, Any], base: Path, path: Path | None = None) -> HubConfig:
    """Check an already parsed TOML document; relative paths resolve against ``base``."""
    kinds = {
        "hub": HubSettings,
        "nats": NatsSettings,
        "store": StoreSettings,
        "api": ApiSettings,
        "auth": AuthSettings,
        "tls": TlsSettings,
    }
    for key in raw:
        if key not in kinds:
            raise ConfigError(key, f"unknown section (known: {', '.join(kinds)})")
    parts: dict[str, Any] = {k: section(cls, table(raw, k), k, base) for k, cls in kinds.items()}
    nats = parts["nats"]
    parts["nats"] = replace(
        nats,
        **{
            name: str(base / Path(value).expanduser())
            for name in _NATS_PATHS
            if (value := getattr(nats, name))
        },
    )
    config = HubConfig(**parts, path=path)
    url = urlsplit(config.nats.url)
    if url.scheme not in {"nats", "tls"} or not url.hostname:
        raise ConfigError("nats.url", f"must be a nats:// or tls:// URL, got {config.nats.url!r}")
    public = urlsplit(config.nats.public_url)
    if config.nats.public_url and (public.scheme not in {"nats", "tls"} or not public.hostname):
        raise ConfigError(
            "nats.public_url",
            f"must be a nats:// or tls:// URL, got {config.nats.public_url!r}",
        )
    _check_tls(config.tls)
    try:
        config.api_host_port  # noqa: B018 - validates
    except ValueError as exc:
        raise ConfigError("api.listen", str(exc)) from exc
    return config


def _check_tls(tls: TlsSettings) -> None:
    """Certificate and key come in pairs; an operator's server certificate needs the CA that
    signed it (edges must be told which CA to trust)."""
    if not tls.hostnames:
        raise ConfigError("tls.hostnames", "must name at least one host")
    for cert, key in (("ca_cert", "ca_key"), ("nats_cert", "nats_key"), ("api_cert", "api_key")):
        has_cert, has_key = getattr(tls, cert) is not None, getattr(tls, key) is not None
        if has_key and not has_cert:
            raise ConfigError(f"tls.{key}", f"is set without tls.{cert}")
        if has_cert and not has_key and cert != "ca_cert":
            raise ConfigError(f"tls.{cert}", f"is set without tls.{key}")
    for cert in ("nats_cert", "api_cert"):
        if getattr(tls, cert) is not None and tls.ca_cert is None:
            raise ConfigError(
                f"tls.{cert}", "needs tls.ca_cert: the CA that signed it, which edges will trust"
            )
    if tls.ca_cert is not None and tls.ca_key is None:
        missing = [
            name
            for name, wanted, given in (
                ("nats_cert", tls.nats, tls.nats_cert),
                ("api_cert", tls.api, tls.api_cert),
            )
            if wanted and given is None
        ]
        if missing:
            raise ConfigError(
                "tls.ca_cert",
                f"without tls.ca_key the hub cannot issue certificates: set tls.{missing[0]}",
            )
