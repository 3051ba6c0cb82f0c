"""Who this edge is: its enrollment (``data_dir/enrollment.json``) and its key (``edge.key``).

``cairn-edge enroll`` writes, in ``data_dir`` (mode 0700):

- ``edge.key``: the Ed25519 private key, made on the box (PEM, mode 0600, never sent);
- ``enrollment.json``: what the hub answered (edge id, tenant, NATS URL, subjects, key ids);
- ``ca.pem``: the hub's CA certificate, when the hub has one (TLS towards NATS and the API);
- ``hub-token.pem``: the hub's public key that verifies device tokens offline.

When ``enrollment.json`` exists the edge takes its id, tenant and NATS URL from it
(:func:`apply_enrollment`) and logs in to NATS with :func:`nats_identity`, the one place the
edge builds its NATS identity: TLS towards ``ca.pem``, its key as nkey, its own inbox prefix.

The key can change under a running edge (``cairn-edge rotate-key``): :class:`KeyHolder` looks
at the key file at most every ``check_s`` and hands out the newest key, so batches are signed
at publish time with the current key, and the next NATS login uses it too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.errors import ConfigError
from contract.names import TOKEN_RE, inbox_prefix
from contract.natsconn import NatsIdentity
from contract.nkeyid import nkey_public, nkey_seed
from contract.signing import load_or_create_key, public_key_bytes
from edge.filestamp import FileStamp, file_stamp

if TYPE_CHECKING:
    from edge.config import EdgeSettings, ForwarderSettings

__all__ = [
    "CA_FILE",
    "ENROLLMENT_FILE",
    "KEY_FILE",
    "TOKEN_KEY_FILE",
    "Enrollment",
    "KeyHolder",
    "apply_enrollment",
    "nats_identity",
    "read_enrollment",
    "with_hub_token_key",
]

_log = logging.getLogger(__name__)

ENROLLMENT_FILE: Final = "enrollment.json"
KEY_FILE: Final = "edge.key"
CA_FILE: Final = "ca.pem"
TOKEN_KEY_FILE: Final = "hub-token.pem"  # noqa: S105 - a file name


@dataclass(frozen=True, slots=True)
class Enrollment:
    """What ``enrollment.json`` says (written by ``cairn-edge enroll``)."""

    edge: str
    tenant: str
    hub_url: str
    nats_url: str | None
    token_kid: str | None
    data_dir: Path

    @property
    def ca_file(self) -> Path | None:
        """The hub's CA certificate, if the hub gave one."""
        path = self.data_dir / CA_FILE
        return path if path.is_file() else None

    @property
    def token_key_file(self) -> Path:
        return self.data_dir / TOKEN_KEY_FILE


def read_enrollment(data_dir: Path) -> Enrollment | None:
    """The enrollment in ``data_dir``, ``None`` if the edge never enrolled; a
    :class:`ConfigError` naming the file if it is unreadable or malformed."""
    path = data_dir / ENROLLMENT_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    try:
        doc: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(str(path), "not JSON; enroll again (cairn-edge enroll --force)") from exc
    if not isinstance(doc, dict):
        raise ConfigError(str(path), "not a JSON object")
    for key in ("edge", "tenant"):
        value = doc.get(key)
        if not isinstance(value, str) or not TOKEN_RE.match(value):
            raise ConfigError(str(path), f"{key}: not a valid id ({value!r})")
    nats_url = doc.get("nats_url")
    kid = (
        (doc.get("token_key") or {}).get("kid") if isinstance(doc.get("token_key"), dict) else None
    )
    return Enrollment(
        edge=doc["edge"],
        tenant=doc["tenant"],
        hub_url=str(doc.get("hub_url", "")),
        nats_url=nats_url if isinstance(nats_url, str) and nats_url else None,
        token_kid=kid if isinstance(kid, str) else None,
        data_dir=data_dir,
    )


def apply_enrollment(
    edge: EdgeSettings, forwarder: ForwarderSettings, nats_url_set: bool
) -> tuple[EdgeSettings, ForwarderSettings, Enrollment | None]:
    """``(edge settings, forwarder settings, enrollment)`` with the enrollment found in
    ``edge.data_dir`` applied: id and tenant from it (an ``edge.id``/``edge.tenant`` in the
    config must then agree), and its NATS URL unless the config sets ``forwarder.nats_url``
    (a local route, e.g. a proxy).
    Without an enrollment, ``edge.id`` and ``edge.tenant`` are required."""
    enrollment = read_enrollment(edge.data_dir)
    if enrollment is None:
        for key in ("id", "tenant"):
            if not getattr(edge, key):
                raise ConfigError(
                    f"edge.{key}", "is required (or enroll this edge: cairn-edge enroll)"
                )
        return edge, forwarder, None
    for key, enrolled in (("id", enrollment.edge), ("tenant", enrollment.tenant)):
        configured = getattr(edge, key)
        if configured and configured != enrolled:
            raise ConfigError(
                f"edge.{key}",
                f"is {configured!r} but this edge is enrolled as {enrolled!r}"
                f" ({edge.data_dir / ENROLLMENT_FILE}); remove edge.{key} or make it match",
            )
    edge = dataclasses.replace(edge, id=enrollment.edge, tenant=enrollment.tenant)
    if enrollment.nats_url and not nats_url_set:
        forwarder = dataclasses.replace(forwarder, nats_url=enrollment.nats_url)
    return edge, forwarder, enrollment


def with_hub_token_key(http_raw: object, enrollment: Enrollment | None) -> object:
    """The ``[[http]]`` tables with the hub's device-token key (``hub-token.pem`` under the
    enrolled ``kid``) added to each one's ``keys`` unless listed there already, so an enrolled
    edge verifies the hub's device tokens without more configuration. Anything that is not a
    list of tables is returned as it is (the config loader reports it)."""
    if enrollment is None or enrollment.token_kid is None or not isinstance(http_raw, list):
        return http_raw
    hub_key = {"kid": enrollment.token_kid, "file": str(enrollment.token_key_file)}
    out: list[object] = []
    for item in http_raw:
        keys = item.get("keys", []) if isinstance(item, dict) else None
        if (
            isinstance(item, dict)
            and isinstance(keys, list)
            and not any(isinstance(k, dict) and k.get("kid") == enrollment.token_kid for k in keys)
        ):
            out.append({**item, "keys": [*keys, hub_key]})
        else:
            out.append(item)
    return out


class KeyHolder:
    """The edge's current private key, re-read when the key file is replaced (a rotation)."""

    def __init__(self, path: Path, *, check_s: float = 1.0) -> None:
        self.path = path
        self.check_s = check_s
        self._key = load_or_create_key(path)
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()
        self._listeners: list[Callable[[Ed25519PrivateKey], None]] = []

    def _file_stamp(self) -> FileStamp | None:
        try:
            return file_stamp(self.path)
        except OSError:
            return None

    def add_listener(self, listener: Callable[[Ed25519PrivateKey], None]) -> None:
        """Call ``listener(new key)`` after the key changed."""
        self._listeners.append(listener)

    def current(self) -> Ed25519PrivateKey:
        """The key to sign with now (the file is looked at if ``check_s`` passed)."""
        if time.monotonic() - self._checked >= self.check_s:
            self.check()
        return self._key

    async def watch(self) -> None:
        """Look at the key file every ``check_s`` for ever (so a rotation reaches the NATS
        login even while nothing is being signed)."""
        while True:
            await asyncio.sleep(self.check_s)
            self.check()

    def check(self) -> bool:
        """Look at the key file now; ``True`` if it holds a new key (listeners called)."""
        self._checked = time.monotonic()
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return False
        try:
            key = load_or_create_key(self.path)
        except ConfigError as exc:
            _log.error("the key file changed but cannot be used (%s); keeping the old key", exc)
            return False
        self._stamp = stamp
        if public_key_bytes(key) == public_key_bytes(self._key):
            return False
        self._key = key
        _log.info("edge key rotated: now %s", nkey_public(public_key_bytes(key)))
        for listener in list(self._listeners):
            listener(key)
        return True


@dataclass(frozen=True)
class _LiveIdentity(NatsIdentity):
    """A :class:`NatsIdentity` whose nkey is the holder's current key at every connect."""

    keys: KeyHolder | None = None

    def options(self, url: str = "") -> dict[str, Any]:
        opts = NatsIdentity.options(self, url)
        if self.keys is not None:
            opts["nkeys_seed_str"] = nkey_seed(self.keys.current()).decode()
        return opts


def nats_identity(enrollment: Enrollment | None, keys: KeyHolder) -> NatsIdentity | None:
    """How this edge logs in to NATS: ``None`` (anonymous, the config's URL) before it is
    enrolled; enrolled, TLS towards the hub's CA if it gave one, the edge key as nkey and
    the edge's own reply-inbox prefix (its NATS permissions allow only those)."""
    if enrollment is None:
        return None
    ca = enrollment.ca_file
    return _LiveIdentity(
        ca_file=str(ca) if ca else None,
        inbox_prefix=inbox_prefix(enrollment.tenant, enrollment.edge),
        keys=keys,
    )


def rekey_connection(nc: Any, key: Ed25519PrivateKey) -> bool:
    """Make an open nats-py connection log in with ``key`` at its next reconnect (nats-py
    keeps the seed and the public nkey it computed at connect); ``False`` if this nats-py
    does not keep them where expected (the edge then logs in with the new key after a
    restart)."""
    if not hasattr(nc, "_nkeys_seed_str") or not hasattr(nc, "_public_nkey"):
        return False
    if nc._nkeys_seed_str is None:  # noqa: SLF001 - anonymous connection: nothing to change
        return False
    nc._nkeys_seed_str = nkey_seed(key).decode()  # noqa: SLF001
    nc._public_nkey = nkey_public(public_key_bytes(key))  # noqa: SLF001
    return True
