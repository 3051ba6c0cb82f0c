"""Device tokens: verifying the JWTs that devices present to the HTTP/WebSocket source.

A device token is a JWT signed by the hub (``cairn-hub token device``) or by any issuer whose
public key the site admin lists under ``[[http]].keys``. The edge verifies it offline:

* the header's ``kid`` selects one configured key; an unknown or missing ``kid`` is refused;
* the algorithm is pinned by that key's type (Ed25519 -> ``EdDSA``, RSA -> ``RS256``) and the
  header must name exactly that one: ``none``, ``HS*`` (e.g. HS256 "signed" with the public key)
  or RS/EdDSA confusion never verify;
* ``exp`` is required and checked; ``nbf`` and ``iat`` are checked when present; all times with
  ``leeway_s`` of clock skew;
* ``aud`` must be :data:`AUDIENCE` (``"cairn-edge"``); ``iss`` must equal ``issuer`` when one
  is configured;
* ``sub`` is the device id (a valid device name); ``tenant`` must be this edge's tenant;
* the token's ``jti`` and its device must not be on the revocation list.

Failures are :class:`DeviceTokenError` with an HTTP status (401: no, malformed, unverifiable or
expired token; 403: a valid token that may not be used here: another tenant, revoked) and a
stable ``reason`` slug used as a counter key.

Verified tokens are cached (at most ``cache_size``, oldest evicted first) until their ``exp``
plus the leeway, because a signature check costs 120-260 us (FACTS.md) and a device sends the
same token with every request; the revocation list and the tenant are checked on every use, so
revoking a cached token takes effect at once.

Revocation list: a text file, one entry per line, ``jti <id>`` or ``device <device id>``;
blank lines and ``#`` comments are ignored, a line of another form is logged and skipped.
:meth:`RevocationList.refresh` re-reads it when its size, mtime or inode changed (the source
calls it every ``revocation_poll_s``). A file that disappears or cannot be read keeps the last
list in force (logged): a broken file never un-revokes anybody.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from contract.errors import AuthError, ConfigError
from contract.model import valid_name
from edge.filestamp import FileStamp, file_stamp

__all__ = [
    "AUDIENCE",
    "MAX_TOKEN_BYTES",
    "MIN_RSA_BITS",
    "DeviceClaims",
    "DeviceTokenError",
    "DeviceTokenVerifier",
    "JwtRefusedError",
    "RevocationList",
    "VerificationKey",
    "load_key",
    "verify_jwt",
]

_log = logging.getLogger(__name__)

AUDIENCE: Final = "cairn-edge"
"""The ``aud`` every device token must carry."""
MAX_TOKEN_BYTES: Final = 4096
"""A longer token is refused before it is parsed."""
MIN_RSA_BITS: Final = 2048
"""Smallest RSA key accepted as a verification key."""

ED25519: Final = "EdDSA"
RS256: Final = "RS256"


_DEVICE_SLUGS: Final = {"expired": "token-expired", "not-yet-valid": "token-not-yet-valid"}
"""The :class:`JwtRefusedError` reasons a device hears by name; every other one is ``bad-token``."""


class DeviceTokenError(AuthError):
    """A device token that does not let its bearer in: ``status`` 401 or 403, ``reason``."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        self.status = status
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True, slots=True)
class DeviceClaims:
    """What a verified device token says."""

    device: str
    """The ``sub`` claim: the only device this bearer may send readings for."""
    tenant: str
    expires: float
    """``exp``, seconds since the epoch."""
    jti: str | None
    kid: str


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One configured public key: its ``kid`` and the one algorithm it verifies."""

    kid: str
    key: Ed25519PublicKey | RSAPublicKey
    algorithm: str


def load_key(kid: str, path: Path, where: str = "key") -> VerificationKey:
    """The public key in the PEM file at ``path`` (Ed25519 or RSA of at least 2048 bits)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(where, f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(where, f"{path} is not a PEM public key ({exc})") from exc
    if isinstance(key, Ed25519PublicKey):
        return VerificationKey(kid, key, ED25519)
    if isinstance(key, RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(
                where, f"{path}: RSA key of {key.key_size} bits, at least {MIN_RSA_BITS} needed"
            )
        return VerificationKey(kid, key, RS256)
    raise ConfigError(where, f"{path}: only Ed25519 and RSA public keys are accepted")


class JwtRefusedError(Exception):
    """Why :func:`verify_jwt` refused a token: ``reason`` is ``malformed``, ``unknown-key``,
    ``wrong-algorithm``, ``expired``, ``not-yet-valid``, ``bad-audience``, ``bad-issuer``,
    ``missing-claim`` or ``invalid``; ``detail`` a sentence for the log or the client."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


def verify_jwt(
    token: str,
    keys: Mapping[str, VerificationKey],
    *,
    audience: str,
    issuer: str,
    leeway_s: float,
    require: Sequence[str],
) -> tuple[dict[str, Any], VerificationKey]:
    """The claims of ``token`` and the key that verified them: signed by one of ``keys``
    (chosen by its ``kid``, the algorithm pinned to that key's), for ``audience`` (and
    ``issuer`` unless empty), unexpired (``leeway_s``), with the ``require``d claims;
    :class:`JwtRefusedError` otherwise. Device tokens and the hub's commands are both
    checked here (each caller turns the refusal into its own error)."""
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise JwtRefusedError("malformed", "malformed token") from exc
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise JwtRefusedError("unknown-key", "token signed by an unknown key (kid)")
    if header.get("alg") != key.algorithm:
        raise JwtRefusedError(
            "wrong-algorithm", f"key {kid!r} verifies {key.algorithm} tokens only"
        )
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[key.algorithm],
            audience=audience,
            issuer=issuer or None,
            leeway=leeway_s,
            options={"require": list(require)},
        )
    except jwt.ExpiredSignatureError as exc:
        raise JwtRefusedError("expired", "the token has expired") from exc
    except jwt.ImmatureSignatureError as exc:
        raise JwtRefusedError("not-yet-valid", "the token is not valid yet") from exc
    except jwt.InvalidAudienceError as exc:
        raise JwtRefusedError("bad-audience", f"the token is not for {audience!r}") from exc
    except jwt.InvalidIssuerError as exc:
        raise JwtRefusedError("bad-issuer", "the token is from another issuer") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise JwtRefusedError("missing-claim", f"the token lacks {exc.claim!r}") from exc
    except (jwt.PyJWTError, ValueError, TypeError, OverflowError) as exc:
        raise JwtRefusedError("invalid", "invalid token signature or claims") from exc
    return claims, key


@dataclass
class _FileState:
    stamp: FileStamp | None = None
    jtis: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()
    errors: int = 0
    last_error: str | None = None


@dataclass
class RevocationList:
    """Revoked token ids and devices, from a file re-read on change (see the module doc)."""

    path: Path | None = None
    _state: _FileState = field(default_factory=_FileState)

    @property
    def jtis(self) -> frozenset[str]:
        return self._state.jtis

    @property
    def devices(self) -> frozenset[str]:
        return self._state.devices

    @property
    def errors(self) -> int:
        """Failed re-reads since start (the last good list stayed in force)."""
        return self._state.errors

    def load(self) -> None:
        """First read, at start: an unreadable file is a :class:`ConfigError`."""
        if self.path is None:
            return
        try:
            self._read()
        except OSError as exc:
            raise ConfigError(
                "http.revoked_file", f"cannot read {self.path}: {exc.strerror or exc}"
            ) from exc

    def refresh(self) -> bool:
        """Re-read the file if it changed; returns whether the list changed."""
        if self.path is None:
            return False
        try:
            return self._read()
        except OSError as exc:
            self._state.errors += 1
            problem = f"cannot read {self.path}: {exc.strerror or exc}"
            if problem != self._state.last_error:
                _log.error("revocation list: %s; the last list read stays in force", problem)
            self._state.last_error = problem
            return False

    def revoked(self, claims: DeviceClaims) -> str | None:
        """Why ``claims`` are revoked, or ``None``."""
        state = self._state
        if claims.device in state.devices:
            return f"device {claims.device!r} is revoked"
        if claims.jti is not None and claims.jti in state.jtis:
            return f"token {claims.jti!r} is revoked"
        return None

    def _read(self) -> bool:
        assert self.path is not None
        stamp = file_stamp(self.path)
        if stamp == self._state.stamp:
            return False
        text = self.path.read_bytes().decode("utf-8", "replace")
        jtis, devices = _parse_revocations(text.splitlines(), self.path)
        changed = (jtis, devices) != (self._state.jtis, self._state.devices)
        self._state = _FileState(stamp, jtis, devices, self._state.errors)
        if changed:
            _log.info(
                "revocation list %s: %d tokens and %d devices revoked",
                self.path,
                len(jtis),
                len(devices),
            )
        return changed


def _parse_revocations(lines: Iterable[str], path: Path) -> tuple[frozenset[str], frozenset[str]]:
    jtis: set[str] = set()
    devices: set[str] = set()
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, value = line.partition(" ")
        value = value.strip()
        if kind == "jti" and value:
            jtis.add(value)
        elif kind == "device" and value:
            devices.add(value)
        else:
            _log.warning(
                "revocation list %s line %d: expected 'jti <id>' or 'device <id>', got %r"
                " (skipped)",
                path,
                number,
                line[:80],
            )
    return frozenset(jtis), frozenset(devices)


class DeviceTokenVerifier:
    """Checks device tokens for one edge (see the module docstring)."""

    def __init__(
        self,
        keys: Iterable[VerificationKey],
        tenant: str,
        *,
        issuer: str = "",
        leeway_s: float = 30.0,
        cache_size: int = 10_000,
        revocations: RevocationList | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = {k.kid: k for k in keys}
        if not self._keys:
            raise ValueError("at least one verification key is needed")
        self.tenant = tenant
        self.issuer = issuer
        self.leeway_s = leeway_s
        self._cache_size = cache_size
        self._cache: dict[str, DeviceClaims] = {}
        self.revocations = revocations if revocations is not None else RevocationList()
        self._clock = clock

    @property
    def cached(self) -> int:
        """Verified tokens in the cache now."""
        return len(self._cache)

    def verify(self, token: str) -> DeviceClaims:
        """The claims of a token that may send readings here; :class:`DeviceTokenError` else."""
        claims = self._cache.get(token)
        now = self._clock()
        if claims is not None and claims.expires + self.leeway_s < now:
            del self._cache[token]
            claims = None
        if claims is None:
            claims = self._decode(token, now)
            if claims.tenant != self.tenant:
                raise DeviceTokenError(
                    403,
                    "wrong-tenant",
                    f"the token is for tenant {claims.tenant!r}, not this edge's",
                )
            if self._cache_size:
                if len(self._cache) >= self._cache_size:
                    del self._cache[next(iter(self._cache))]
                self._cache[token] = claims
        self.check_revoked(claims)
        return claims

    def check_revoked(self, claims: DeviceClaims) -> None:
        why = self.revocations.revoked(claims)
        if why is not None:
            raise DeviceTokenError(403, "revoked", why)

    def _decode(self, token: str, now: float) -> DeviceClaims:
        if len(token) > MAX_TOKEN_BYTES:
            raise DeviceTokenError(401, "bad-token", f"token longer than {MAX_TOKEN_BYTES} bytes")
        try:
            raw, key = verify_jwt(
                token,
                self._keys,
                audience=AUDIENCE,
                issuer=self.issuer,
                leeway_s=self.leeway_s,
                require=["exp", "sub", "aud"] + (["iss"] if self.issuer else []),
            )
        except JwtRefusedError as exc:
            slug = _DEVICE_SLUGS.get(exc.reason, "bad-token")
            raise DeviceTokenError(401, slug, exc.detail) from exc
        sub, tenant, jti = raw.get("sub"), raw.get("tenant"), raw.get("jti")
        if not isinstance(sub, str) or not valid_name(sub):
            raise DeviceTokenError(401, "bad-token", "the token's sub is not a valid device id")
        if not isinstance(tenant, str) or not tenant:
            raise DeviceTokenError(401, "bad-token", "the token has no tenant claim")
        if jti is not None and not isinstance(jti, str):
            raise DeviceTokenError(401, "bad-token", "the token's jti is not a string")
        exp = float(raw["exp"])
        if exp + self.leeway_s < now:  # pragma: no cover - jwt.decode checked it
            raise DeviceTokenError(401, "token-expired", "the token has expired")
        return DeviceClaims(sub, tenant, exp, jti, key.kid)
