"""The hub's registry of who may do what: tenants, enrolled edges and their keys, enrollment
tokens, API keys and revoked tokens. One small SQLite file (``state_dir/registry.sqlite3``,
WAL, ``synchronous=FULL``), apart from the readings store: it is read on every batch and every
API call and written only by operators.

Secrets (enrollment tokens, API keys) are 32 random bytes; only their SHA-256 is stored, and
compared in constant time. A token or key string is ``<prefix>.<id>.<secret>``: the id finds
the row, the secret proves possession.

Edges: an edge is enrolled once per enrollment token with the Ed25519 public key it made. Each
edge has one *active* key; :meth:`Registry.rotate_key` retires it (a retired key still verifies
batches signed before the rotation for ``retired_grace_s``) and activates the new one.
:meth:`Registry.revoke_edge` makes every key of the edge invalid at once. A public key belongs
to one edge for ever: it can never be enrolled again.

Other processes (``cairn-hub`` CLI commands) write the same file; :meth:`Registry.refresh`
notices their commits through ``PRAGMA data_version`` and calls the change listeners, so a
revocation from the command line reaches the running hub within ``poll_s``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from contract.errors import CairnError
from contract.keyproof import ROTATION_DOMAIN, key_fingerprint, rotation_message, sign_rotation
from contract.names import TOKEN_RE
from contract.signing import b64url

__all__ = [
    "API_KEY_PREFIX",
    "ENROLL_PREFIX",
    "ROTATION_DOMAIN",
    "ApiKey",
    "EdgeKey",
    "EdgeRecord",
    "Enrollment",
    "Registry",
    "RegistryError",
    "decode_public_key",
    "encode_public_key",
    "key_fingerprint",
    "rotation_message",
    "sign_rotation",
]

ENROLL_PREFIX: Final = "ce1"
"""First part of an enrollment token ``ce1.<id>.<secret>`` (a CA pin may follow)."""
API_KEY_PREFIX: Final = "ck1"
"""First part of an API key ``ck1.<id>.<secret>``."""
ROTATION_MAX_AGE_S: Final = 300
"""A rotation request signed longer ago than this (or this far in the future) is refused."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS tenants(
    name TEXT PRIMARY KEY, created_us INTEGER NOT NULL, disabled INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS edges(
    tenant TEXT NOT NULL, edge TEXT NOT NULL, created_us INTEGER NOT NULL,
    revoked_us INTEGER, PRIMARY KEY(tenant, edge));
CREATE TABLE IF NOT EXISTS edge_keys(
    public_key BLOB PRIMARY KEY, tenant TEXT NOT NULL, edge TEXT NOT NULL,
    added_us INTEGER NOT NULL, retired_us INTEGER, revoked_us INTEGER);
CREATE INDEX IF NOT EXISTS edge_keys_edge ON edge_keys(tenant, edge);
CREATE TABLE IF NOT EXISTS enrollment_tokens(
    id TEXT PRIMARY KEY, secret_hash BLOB NOT NULL, tenant TEXT NOT NULL, edge TEXT NOT NULL,
    created_us INTEGER NOT NULL, expires_us INTEGER NOT NULL, used_us INTEGER,
    created_by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys(
    id TEXT PRIMARY KEY, secret_hash BLOB NOT NULL, tenant TEXT NOT NULL, role TEXT NOT NULL,
    name TEXT NOT NULL, created_us INTEGER NOT NULL, revoked_us INTEGER);
CREATE TABLE IF NOT EXISTS revoked_tokens(
    jti TEXT PRIMARY KEY, tenant TEXT NOT NULL, kind TEXT NOT NULL, device TEXT,
    expires_us INTEGER NOT NULL, revoked_us INTEGER NOT NULL);
"""

_PUBLIC_KEY_LEN: Final = 32
_SECRET_BYTES: Final = 32
_ID_BYTES: Final = 6


class RegistryError(CairnError):
    """An operation the registry refuses; ``reason`` is a stable slug (a counter key and the
    API's error code), the message says what to do."""

    def __init__(self, reason: str, problem: str) -> None:
        self.reason = reason
        self.problem = problem
        super().__init__(problem)


@dataclass(frozen=True, slots=True)
class EdgeKey:
    public_key: bytes
    added_us: int
    retired_us: int | None
    """When a rotation replaced it (it verifies for the grace period after)."""
    revoked_us: int | None
    """When the edge was revoked while it held this key (it never verifies again)."""

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.public_key)


@dataclass(frozen=True, slots=True)
class EdgeRecord:
    tenant: str
    edge: str
    created_us: int
    revoked_us: int | None
    keys: tuple[EdgeKey, ...]
    """Newest first; the first without ``retired_us`` is the active key."""

    @property
    def revoked(self) -> bool:
        return self.revoked_us is not None

    @property
    def active_key(self) -> EdgeKey | None:
        if self.revoked:
            return None
        return next((k for k in self.keys if k.retired_us is None and k.revoked_us is None), None)


@dataclass(frozen=True, slots=True)
class Enrollment:
    """A new enrollment token: ``token`` is shown once and never stored."""

    token: str
    id: str
    tenant: str
    edge: str
    expires_us: int


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant: str
    role: str
    name: str
    created_us: int
    revoked_us: int | None


def _now_us() -> int:
    return time.time_ns() // 1000


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _new_secret(prefix: str) -> tuple[str, str, bytes]:
    """``(string, id, secret hash)`` of a new ``<prefix>.<id>.<secret>``."""
    ident = secrets.token_hex(_ID_BYTES)
    secret = b64url(secrets.token_bytes(_SECRET_BYTES))
    return f"{prefix}.{ident}.{secret}", ident, _hash(secret)


def _split_secret(text: str, prefix: str) -> tuple[str, str]:
    """``(id, secret)`` of ``<prefix>.<id>.<secret>[.<anything>]``; ``("", "")`` if malformed."""
    parts = text.strip().split(".")
    if len(parts) < 3 or parts[0] != prefix or not parts[1] or not parts[2]:
        return "", ""
    return parts[1], parts[2]


def _check_name(value: str, what: str) -> None:
    if not isinstance(value, str) or not TOKEN_RE.match(value):
        raise RegistryError("bad-name", f"{what} must match {TOKEN_RE.pattern}, got {value!r}")


def _check_key(public_key: bytes) -> None:
    if not isinstance(public_key, bytes) or len(public_key) != _PUBLIC_KEY_LEN:
        raise RegistryError("bad-key", "public key must be 32 raw Ed25519 bytes")
    try:
        Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError as exc:
        raise RegistryError("bad-key", "malformed Ed25519 public key") from exc


class Registry:
    """Tenants, edges, keys and secrets; thread-safe (one connection behind a lock)."""

    def __init__(
        self,
        path: Path,
        *,
        retired_grace_s: float = 7 * 86_400,
        poll_s: float = 0.5,
    ) -> None:
        self.path = path
        self.retired_grace_s = retired_grace_s
        self.poll_s = poll_s
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._con = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=FULL")
        self._con.execute("PRAGMA busy_timeout=10000")
        self._listeners: list[Callable[[], None]] = []
        self._edges: dict[tuple[str, str], EdgeRecord | None] = {}
        self._revoked: set[str] | None = None
        self._disabled: set[str] | None = None
        with self._tx() as con:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
        with contextlib.suppress(OSError):
            path.chmod(0o600)
        self._data_version = self._version()
        self._checked = time.monotonic()

    # ------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                yield self._con
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")
            self._changed()

    def _version(self) -> int:
        with self._lock:
            return int(self._con.execute("PRAGMA data_version").fetchone()[0])

    def _changed(self) -> None:
        self._edges.clear()
        self._revoked = None
        self._disabled = None
        for listener in list(self._listeners):
            listener()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change (this process's at once, others' when
        :meth:`refresh` notices them). It runs in the thread that made or noticed the change."""
        self._listeners.append(listener)

    def refresh(self, force: bool = False) -> bool:
        """Notice commits of other processes (at most every ``poll_s`` unless ``force``);
        ``True`` if there were any (caches dropped, listeners called)."""
        now = time.monotonic()
        if not force and now - self._checked < self.poll_s:
            return False
        self._checked = now
        version = self._version()
        if version == self._data_version:
            return False
        self._data_version = version
        with self._lock:
            self._changed()
        return True

    def close(self) -> None:
        with self._lock:
            self._con.close()

    # ------------------------------------------------------------ tenants
    def create_tenant(self, name: str) -> None:
        """Add tenant ``name`` (``exists`` if it is there already)."""
        _check_name(name, "tenant")
        with self._tx() as con:
            try:
                con.execute("INSERT INTO tenants(name, created_us) VALUES(?, ?)", (name, _now_us()))
            except sqlite3.IntegrityError:
                raise RegistryError("exists", f"tenant {name!r} exists already") from None

    def ensure_tenant(self, name: str) -> None:
        """Add tenant ``name`` unless it is there."""
        _check_name(name, "tenant")
        with self._tx() as con:
            con.execute(
                "INSERT OR IGNORE INTO tenants(name, created_us) VALUES(?, ?)", (name, _now_us())
            )

    def set_tenant_disabled(self, name: str, disabled: bool) -> None:
        """Disable (every token and edge of it refused) or enable tenant ``name``."""
        with self._tx() as con:
            cur = con.execute(
                "UPDATE tenants SET disabled = ? WHERE name = ?", (int(disabled), name)
            )
            if cur.rowcount == 0:
                raise RegistryError("not-found", f"no tenant {name!r}")

    def tenants(self) -> list[dict[str, object]]:
        with self._lock:
            rows = self._con.execute(
                "SELECT name, created_us, disabled FROM tenants ORDER BY name"
            ).fetchall()
        return [{"tenant": n, "created_us": c, "disabled": bool(d)} for n, c, d in rows]

    def tenant_usable(self, name: str) -> bool:
        """``True`` unless tenant ``name`` is disabled (an unlisted tenant is usable: API
        tokens minted by ``cairn-hub token create`` need no registration)."""
        self.refresh()
        disabled = self._disabled
        if disabled is None:
            with self._lock:
                rows = self._con.execute("SELECT name FROM tenants WHERE disabled").fetchall()
            disabled = self._disabled = {r[0] for r in rows}
        return name not in disabled

    def _require_tenant(self, con: sqlite3.Connection, tenant: str) -> None:
        row = con.execute("SELECT disabled FROM tenants WHERE name = ?", (tenant,)).fetchone()
        if row is None:
            raise RegistryError(
                "unknown-tenant", f"no tenant {tenant!r} (create it: cairn-hub tenants create)"
            )
        if row[0]:
            raise RegistryError("tenant-disabled", f"tenant {tenant!r} is disabled")

    # ------------------------------------------------------------ enrollment
    def create_enrollment(
        self, tenant: str, edge: str, ttl_s: float, created_by: str = "cli"
    ) -> Enrollment:
        """A one-time token that enrolls edge ``edge`` of ``tenant`` within ``ttl_s``."""
        _check_name(tenant, "tenant")
        _check_name(edge, "edge")
        if not 0 < ttl_s <= 30 * 86_400:
            raise RegistryError("bad-ttl", f"ttl must be 1 s..30 days, got {ttl_s}")
        token, ident, digest = _new_secret(ENROLL_PREFIX)
        now = _now_us()
        expires = now + int(ttl_s * 1_000_000)
        with self._tx() as con:
            self._require_tenant(con, tenant)
            row = con.execute(
                "SELECT revoked_us FROM edges WHERE tenant = ? AND edge = ?", (tenant, edge)
            ).fetchone()
            if row is not None and row[0] is None:
                raise RegistryError(
                    "edge-exists", f"edge {edge!r} of {tenant!r} is enrolled (revoke it first)"
                )
            con.execute(
                "INSERT INTO enrollment_tokens(id, secret_hash, tenant, edge, created_us,"
                " expires_us, created_by) VALUES(?, ?, ?, ?, ?, ?, ?)",
                (ident, digest, tenant, edge, now, expires, created_by),
            )
        return Enrollment(token, ident, tenant, edge, expires)

    def enroll(self, token: str, public_key: bytes) -> EdgeRecord:
        """Spend ``token`` to enroll its edge with ``public_key``; the edge record.

        Refused (:class:`RegistryError`): ``bad-token`` (malformed or unknown: the same answer,
        so a guess learns nothing), ``token-used``, ``token-expired``, ``tenant-disabled``,
        ``edge-exists`` (enrolled and not revoked), ``key-in-use`` (a key is never reused).
        """
        _check_key(public_key)
        ident, secret = _split_secret(token, ENROLL_PREFIX)
        now = _now_us()
        with self._tx() as con:
            row = con.execute(
                "SELECT secret_hash, tenant, edge, expires_us, used_us FROM enrollment_tokens"
                " WHERE id = ?",
                (ident,),
            ).fetchone()
            if row is None or not hmac.compare_digest(row[0], _hash(secret)):
                raise RegistryError("bad-token", "enrollment token not recognised")
            _digest, tenant, edge, expires_us, used_us = row
            if used_us is not None:
                raise RegistryError(
                    "token-used", "enrollment token was used already; ask for a new one"
                )
            if now > expires_us:
                raise RegistryError("token-expired", "enrollment token expired; ask for a new one")
            self._require_tenant(con, tenant)
            edge_row = con.execute(
                "SELECT revoked_us FROM edges WHERE tenant = ? AND edge = ?", (tenant, edge)
            ).fetchone()
            if edge_row is not None and edge_row[0] is None:
                raise RegistryError("edge-exists", f"edge {edge!r} of {tenant!r} is enrolled")
            if con.execute(
                "SELECT 1 FROM edge_keys WHERE public_key = ?", (public_key,)
            ).fetchone():
                raise RegistryError("key-in-use", "this public key was enrolled before")
            con.execute("UPDATE enrollment_tokens SET used_us = ? WHERE id = ?", (now, ident))
            con.execute(
                "INSERT INTO edges(tenant, edge, created_us, revoked_us) VALUES(?, ?, ?, NULL)"
                " ON CONFLICT(tenant, edge) DO UPDATE SET created_us = ?, revoked_us = NULL",
                (tenant, edge, now, now),
            )
            con.execute(
                "UPDATE edge_keys SET retired_us = COALESCE(retired_us, ?)"
                " WHERE tenant = ? AND edge = ?",
                (now, tenant, edge),
            )
            con.execute(
                "INSERT INTO edge_keys(public_key, tenant, edge, added_us) VALUES(?, ?, ?, ?)",
                (public_key, tenant, edge, now),
            )
        record = self.edge(tenant, edge)
        assert record is not None
        return record

    def register(self, tenant: str, edge: str, public_key: bytes) -> EdgeRecord:
        """Enroll without a token: an operator who has the edge's public key at hand
        (``cairn-hub edges add``), and test harnesses. The tenant is created if needed; the
        same checks as :meth:`enroll` otherwise."""
        self.ensure_tenant(tenant)
        enrollment = self.create_enrollment(tenant, edge, 60, created_by="register")
        return self.enroll(enrollment.token, public_key)

    # ------------------------------------------------------------ edges
    def edge(self, tenant: str, edge: str) -> EdgeRecord | None:
        """The registered edge, ``None`` if it never enrolled (cached until a change)."""
        self.refresh()
        key = (tenant, edge)
        if key in self._edges:
            return self._edges[key]
        with self._lock:
            row = self._con.execute(
                "SELECT created_us, revoked_us FROM edges WHERE tenant = ? AND edge = ?", key
            ).fetchone()
            keys = self._con.execute(
                "SELECT public_key, added_us, retired_us, revoked_us FROM edge_keys"
                " WHERE tenant = ? AND edge = ? ORDER BY added_us DESC, rowid DESC",
                key,
            ).fetchall()
        record = (
            None
            if row is None
            else EdgeRecord(tenant, edge, row[0], row[1], tuple(EdgeKey(*k) for k in keys))
        )
        if len(self._edges) > 100_000:
            self._edges.clear()
        self._edges[key] = record
        return record

    def edges(self, tenant: str | None = None) -> list[EdgeRecord]:
        with self._lock:
            rows = self._con.execute(
                "SELECT tenant, edge FROM edges WHERE ? IS NULL OR tenant = ?"
                " ORDER BY tenant, edge",
                (tenant, tenant),
            ).fetchall()
        return [r for t, e in rows if (r := self.edge(t, e)) is not None]

    def active_edges(self) -> list[tuple[str, str, bytes]]:
        """``(tenant, edge, active public key)`` of every edge that may connect now (not
        revoked, tenant not disabled): what the NATS authorization lists."""
        with self._lock:
            rows = self._con.execute(
                "SELECT e.tenant, e.edge, k.public_key FROM edges e"
                " JOIN edge_keys k ON k.tenant = e.tenant AND k.edge = e.edge"
                " LEFT JOIN tenants t ON t.name = e.tenant"
                " WHERE e.revoked_us IS NULL AND k.retired_us IS NULL AND k.revoked_us IS NULL"
                " AND COALESCE(t.disabled, 0) = 0 ORDER BY e.tenant, e.edge"
            ).fetchall()
        return [(t, e, bytes(k)) for t, e, k in rows]

    def revoke_edge(self, tenant: str, edge: str) -> None:
        """Revoke edge ``edge`` of ``tenant``: all its keys stop verifying at once."""
        now = _now_us()
        with self._tx() as con:
            cur = con.execute(
                "UPDATE edges SET revoked_us = COALESCE(revoked_us, ?)"
                " WHERE tenant = ? AND edge = ?",
                (now, tenant, edge),
            )
            if cur.rowcount == 0:
                raise RegistryError("not-found", f"no edge {edge!r} in tenant {tenant!r}")
            con.execute(
                "UPDATE edge_keys SET revoked_us = COALESCE(revoked_us, ?)"
                " WHERE tenant = ? AND edge = ?",
                (now, tenant, edge),
            )

    def rotate_key(
        self, tenant: str, edge: str, new_key: bytes, signed_at_s: int, proof: bytes
    ) -> EdgeRecord:
        """Activate ``new_key`` for the edge, proven by ``proof``: the active key's signature
        of :func:`rotation_message`. The old key is retired (it still verifies batches for
        ``retired_grace_s``). ``not-found``, ``revoked``, ``bad-proof``, ``stale-proof``,
        ``key-in-use`` otherwise."""
        _check_key(new_key)
        if abs(time.time() - signed_at_s) > ROTATION_MAX_AGE_S:
            raise RegistryError("stale-proof", "rotation request signed too long ago")
        record = self.edge(tenant, edge)
        if record is None:
            raise RegistryError("not-found", f"no edge {edge!r} in tenant {tenant!r}")
        active = record.active_key
        if active is None:
            raise RegistryError("revoked", f"edge {edge!r} is revoked; enroll it again")
        try:
            Ed25519PublicKey.from_public_bytes(active.public_key).verify(
                proof, rotation_message(tenant, edge, new_key, signed_at_s)
            )
        except (InvalidSignature, ValueError):
            raise RegistryError("bad-proof", "rotation not signed by the edge's key") from None
        now = _now_us()
        with self._tx() as con:
            if con.execute("SELECT 1 FROM edge_keys WHERE public_key = ?", (new_key,)).fetchone():
                raise RegistryError("key-in-use", "this public key was enrolled before")
            cur = con.execute(
                "UPDATE edge_keys SET retired_us = ? WHERE public_key = ? AND retired_us IS NULL",
                (now, active.public_key),
            )
            if cur.rowcount != 1:
                raise RegistryError("bad-proof", "the edge's key changed meanwhile; try again")
            con.execute(
                "INSERT INTO edge_keys(public_key, tenant, edge, added_us) VALUES(?, ?, ?, ?)",
                (new_key, tenant, edge, now),
            )
        rotated = self.edge(tenant, edge)
        assert rotated is not None
        return rotated

    def verification_keys(self, tenant: str, edge: str) -> list[bytes]:
        """Public keys that may sign batches of this edge now: the active key and keys retired
        less than ``retired_grace_s`` ago. ``unknown-edge``, ``revoked-edge`` or
        ``tenant-disabled`` (a :class:`RegistryError`) if none may."""
        record = self.edge(tenant, edge)
        if record is None:
            raise RegistryError("unknown-edge", f"edge {edge!r} of {tenant!r} is not enrolled")
        if record.revoked:
            raise RegistryError("revoked-edge", f"edge {edge!r} of {tenant!r} is revoked")
        if not self.tenant_usable(tenant):
            raise RegistryError("tenant-disabled", f"tenant {tenant!r} is disabled")
        oldest = _now_us() - int(self.retired_grace_s * 1_000_000)
        return [
            k.public_key
            for k in record.keys
            if k.revoked_us is None and (k.retired_us is None or k.retired_us >= oldest)
        ]

    # ------------------------------------------------------------ API keys
    def create_api_key(self, tenant: str, role: str, name: str) -> tuple[str, ApiKey]:
        """A new API key (the string is shown once; only its hash is kept)."""
        _check_name(tenant, "tenant")
        text, ident, digest = _new_secret(API_KEY_PREFIX)
        now = _now_us()
        with self._tx() as con:
            con.execute(
                "INSERT INTO api_keys(id, secret_hash, tenant, role, name, created_us)"
                " VALUES(?, ?, ?, ?, ?, ?)",
                (ident, digest, tenant, role, name, now),
            )
        return text, ApiKey(ident, tenant, role, name, now, None)

    def api_key(self, text: str) -> ApiKey:
        """The unrevoked API key ``text`` is; ``bad-api-key`` (one answer for unknown, wrong
        secret and revoked) otherwise."""
        ident, secret = _split_secret(text, API_KEY_PREFIX)
        with self._lock:
            row = self._con.execute(
                "SELECT secret_hash, tenant, role, name, created_us, revoked_us FROM api_keys"
                " WHERE id = ?",
                (ident,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row[0], _hash(secret)) or row[5] is not None:
            raise RegistryError("bad-api-key", "API key not recognised")
        return ApiKey(ident, row[1], row[2], row[3], row[4], row[5])

    def api_keys(self, tenant: str) -> list[ApiKey]:
        with self._lock:
            rows = self._con.execute(
                "SELECT id, tenant, role, name, created_us, revoked_us FROM api_keys"
                " WHERE tenant = ? ORDER BY created_us",
                (tenant,),
            ).fetchall()
        return [ApiKey(*r) for r in rows]

    def revoke_api_key(self, tenant: str, ident: str) -> None:
        with self._tx() as con:
            cur = con.execute(
                "UPDATE api_keys SET revoked_us = COALESCE(revoked_us, ?)"
                " WHERE tenant = ? AND id = ?",
                (_now_us(), tenant, ident),
            )
            if cur.rowcount == 0:
                raise RegistryError("not-found", "no such API key")

    # ------------------------------------------------------------ revoked tokens
    def revoke_token(
        self, jti: str, tenant: str, expires_us: int, kind: str = "api", device: str | None = None
    ) -> None:
        """Put ``jti`` on the deny list until ``expires_us`` (after which the token is
        refused anyway and the entry is purged)."""
        if not isinstance(jti, str) or not 1 <= len(jti) <= 128:
            raise RegistryError("bad-jti", "jti must be a string of 1..128 characters")
        with self._tx() as con:
            con.execute(
                "INSERT OR IGNORE INTO revoked_tokens(jti, tenant, kind, device, expires_us,"
                " revoked_us) VALUES(?, ?, ?, ?, ?, ?)",
                (jti, tenant, kind, device, expires_us, _now_us()),
            )
            con.execute("DELETE FROM revoked_tokens WHERE expires_us < ?", (_now_us(),))

    def is_revoked(self, jti: str) -> bool:
        """Whether ``jti`` is on the deny list (an in-memory set, reloaded on change)."""
        self.refresh()
        revoked = self._revoked
        if revoked is None:
            with self._lock:
                rows = self._con.execute("SELECT jti FROM revoked_tokens").fetchall()
            revoked = self._revoked = {r[0] for r in rows}
        return jti in revoked

    def revoked_device_tokens(self, tenant: str) -> list[tuple[str, str | None, int]]:
        """``(jti, device, expires_us)`` of the tenant's revoked, unexpired device tokens."""
        with self._lock:
            rows = self._con.execute(
                "SELECT jti, device, expires_us FROM revoked_tokens"
                " WHERE tenant = ? AND kind = 'device' AND expires_us >= ? ORDER BY jti",
                (tenant, _now_us()),
            ).fetchall()
        return [(j, d, e) for j, d, e in rows]


def decode_public_key(text: str) -> bytes:
    """Raw 32 bytes from base64url (padding optional); ``bad-key`` if it is not that."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError, TypeError):
        raise RegistryError("bad-key", "public key is not base64url") from None
    _check_key(raw)
    return raw


def encode_public_key(raw: bytes) -> str:
    """base64url without padding: how public keys travel in JSON."""
    return b64url(raw)
