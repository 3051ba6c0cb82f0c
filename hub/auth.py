"""Bearer tokens of the hub API: EdDSA JWTs signed with a key the hub makes on first start.

Checks (any failure is an :class:`~contract.errors.AuthError` with a short reason):
algorithm pinned to ``EdDSA`` (no ``none``, no HS/RS confusion); ``kid`` must be this hub's own;
``exp``, ``nbf``, ``iat``, ``iss``, ``aud``, ``sub``, ``tenant``, ``role``, ``jti`` required;
times checked with a small leeway. Verified tokens are cached until they expire, because a
signature check costs ~260 us (FACTS.md) and the same token arrives again and again.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contract.errors import AuthError
from contract.model import valid_name
from contract.names import TOKEN_RE
from contract.signing import load_or_create_key, public_key_bytes

__all__ = [
    "DEVICE_AUDIENCE",
    "DEVICE_TTL_MAX_S",
    "PLATFORM_ADMIN",
    "PLATFORM_TENANT",
    "ROLES",
    "ROLE_RANK",
    "TENANT_ROLES",
    "Claims",
    "TokenAuthority",
]

TENANT_ROLES: Final = ("admin", "operator", "viewer")
"""Roles within one tenant, strongest first (the table in docs/operator.md says what each may
do; ``hub.apibase.Route.role`` enforces it)."""
ROLE_RANK: Final = {"viewer": 1, "operator": 2, "admin": 3}
PLATFORM_ADMIN: Final = "platform-admin"
"""The role that manages tenants; it reads no tenant's data."""
PLATFORM_TENANT: Final = "*"
"""The ``tenant`` claim of platform-admin tokens (no tenant may be called that)."""
ROLES: Final = (*TENANT_ROLES, PLATFORM_ADMIN)
"""Every role an API token may carry."""

DEVICE_AUDIENCE: Final = "cairn-edge"
"""``aud`` of device tokens: edges verify them (``edge.sources.devtokens.AUDIENCE``)."""
DEVICE_TTL_MAX_S: Final = 366 * 86_400
"""Longest lifetime of a device token."""

_ALGORITHM: Final = "EdDSA"
_CACHE_MAX: Final = 10_000


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says about its bearer."""

    subject: str
    tenant: str
    role: str
    expires: int
    jti: str


def _check_tenant_role(tenant: str, role: str) -> None:
    if role not in ROLES:
        raise AuthError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if role == PLATFORM_ADMIN:
        if tenant != PLATFORM_TENANT:
            raise AuthError(f"a {PLATFORM_ADMIN} token has tenant {PLATFORM_TENANT!r}")
    elif not TOKEN_RE.match(tenant):
        raise AuthError(f"tenant must match {TOKEN_RE.pattern}, got {tenant!r}")


class TokenAuthority:
    """Issues and verifies the hub's API tokens."""

    def __init__(
        self,
        key_path: Path,
        *,
        issuer: str,
        audience: str,
        leeway_s: int = 30,
        default_ttl_s: int = 86400,
    ) -> None:
        self._key: Ed25519PrivateKey = load_or_create_key(key_path)
        self._public: Ed25519PublicKey = self._key.public_key()
        self.kid = hashlib.sha256(public_key_bytes(self._key)).hexdigest()[:16]
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        self.default_ttl_s = default_ttl_s
        self._cache: dict[str, Claims] = {}

    def public_key_pem(self) -> bytes:
        return self._public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def issue(self, tenant: str, role: str, ttl_s: int, subject: str | None = None) -> str:
        """A signed token for ``role`` in ``tenant``, valid for ``ttl_s`` seconds from now."""
        _check_tenant_role(tenant, role)
        if ttl_s <= 0:
            raise AuthError(f"ttl must be positive, got {ttl_s}")
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject or f"{role}@{tenant}",
            "tenant": tenant,
            "role": role,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm=_ALGORITHM, headers={"kid": self.kid})

    def issue_device(self, tenant: str, device: str, ttl_s: int) -> str:
        """A device token for HTTP/WebSocket ingestion at an edge of ``tenant``: ``sub`` is
        ``device``, ``aud`` :data:`DEVICE_AUDIENCE`; edges verify it offline with
        :meth:`public_key_pem` under ``kid`` :attr:`kid`, and revoke it by its ``jti``."""
        if not TOKEN_RE.match(tenant):
            raise AuthError(f"tenant must match {TOKEN_RE.pattern}, got {tenant!r}")
        if not valid_name(device):
            raise AuthError(f"device {device!r} is not a valid device id")
        if not 0 < ttl_s <= DEVICE_TTL_MAX_S:
            raise AuthError(f"ttl must be 1..{DEVICE_TTL_MAX_S} seconds, got {ttl_s}")
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": DEVICE_AUDIENCE,
            "sub": device,
            "tenant": tenant,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm=_ALGORITHM, headers={"kid": self.kid})

    def sign(self, claims: dict[str, Any]) -> str:
        """``claims`` as they are, signed like every token of this hub (EdDSA, :attr:`kid`):
        messages to the edges, which verify them with the key that verifies device tokens
        (:mod:`hub.devrevocations`)."""
        return jwt.encode(claims, self._key, algorithm=_ALGORITHM, headers={"kid": self.kid})

    def issue_token(
        self, tenant: str, role: str, subject: str | None = None, ttl: int | None = None
    ) -> str:
        """:meth:`issue` with the argument order of the API brief; ``ttl`` defaults to the
        configured ``auth.token_ttl_s``."""
        return self.issue(tenant, role, self.default_ttl_s if ttl is None else ttl, subject)

    def verify_token(self, token: str) -> Claims:
        """The same as :meth:`verify`."""
        return self.verify(token)

    def verify(self, token: str) -> Claims:
        """The claims of a valid token; :class:`AuthError` for anything else."""
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires + self.leeway_s >= time.time():
                return cached
            del self._cache[token]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("malformed token") from exc
        if header.get("alg") != _ALGORITHM:
            raise AuthError(f"token algorithm must be {_ALGORITHM}")
        if header.get("kid") != self.kid:
            raise AuthError("token signed by an unknown key")
        try:
            raw = jwt.decode(
                token,
                self._public,
                algorithms=[_ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise AuthError("token not yet valid") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError("token for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError("token from another issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from exc
        except jwt.PyJWTError as exc:
            raise AuthError("invalid token signature or claims") from exc
        tenant, role = raw.get("tenant"), raw.get("role")
        if not isinstance(tenant, str) or not isinstance(role, str):
            raise AuthError("token has no valid tenant and role claims")
        try:
            _check_tenant_role(tenant, role)
        except AuthError:
            raise AuthError("token has no valid tenant and role claims") from None
        claims = Claims(str(raw["sub"]), tenant, str(role), int(raw["exp"]), str(raw["jti"]))
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[token] = claims
        return claims
