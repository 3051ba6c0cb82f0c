"""``cairn-edge enroll`` and ``cairn-edge rotate-key``: the edge's side of its identity.

Enroll: make an Ed25519 key on the box, present its *public* half with the one-time token
(``POST /api/v1/enroll``), keep what the hub answers (:mod:`edge.identity`). The private key
is written with mode 0600 and never sent anywhere.

Trust in the hub, for an ``https://`` hub URL: ``--ca FILE`` verifies TLS against that CA;
``--ca-pin sha256:...`` (also taken from a token ``ce1.<id>.<secret>.<pin>``) fetches
``/api/v1/ca.pem`` without verification, accepts it only if its fingerprint is the pin, then
talks to the hub verifying against it; neither uses the system's trust store. Over plain
``http://`` (a lab, a test) nothing is verified; a pin is still checked against the CA the hub
serves, and a CA the hub sends is kept for TLS towards NATS.

Rotate: a new key is written next to the old one (``edge.key.new``, 0600) *before* the hub is
asked, the old key signs the request, and the new key replaces the old one (atomic rename)
once the hub accepted it. A rotation cut short is finished by running the command again.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.capin import PinError, certificate_fingerprint, normalize_pin
from contract.errors import CairnError
from contract.fileio import write_atomic
from contract.keyproof import key_fingerprint, sign_rotation
from contract.settings import read_toml, section, table
from contract.signing import (
    b64url,
    generate_key,
    load_or_create_key,
    private_key_pem,
    public_key_bytes,
)
from edge.config import EdgeSettings
from edge.identity import (
    CA_FILE,
    ENROLLMENT_FILE,
    KEY_FILE,
    TOKEN_KEY_FILE,
    read_enrollment,
)

__all__ = ["EnrollError", "Enrolled", "data_dir_of", "enroll", "rotate_key"]

_log = logging.getLogger(__name__)

_API: Final = "/api/v1"
_TIMEOUT_S: Final = 15.0
_PENDING: Final = ".new"


class EnrollError(CairnError):
    """Enrollment or rotation did not happen; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Enrolled:
    edge: str
    tenant: str
    nats_url: str | None
    key: str
    """Fingerprint of the edge's public key, as the hub lists it."""
    ca_file: Path | None


def data_dir_of(config_path: Path) -> Path:
    """The ``edge.data_dir`` of a config file, read before the edge has an id (enroll)."""
    path = config_path.absolute()
    settings = section(EdgeSettings, table(read_toml(path), "edge"), "edge", path.parent)
    return settings.data_dir


def _api_base(hub: str) -> str:
    url = urlsplit(hub.strip())
    if url.scheme not in {"http", "https"} or not url.hostname:
        raise EnrollError(f"--hub must be an http:// or https:// URL, got {hub!r}")
    path = url.path.rstrip("/")
    if not path.endswith(_API):
        path += _API
    return f"{url.scheme}://{url.netloc}{path}"


def _call(
    url: str, body: dict[str, Any] | None, context: ssl.SSLContext | None
) -> tuple[int, bytes]:
    """``(status, body)`` of a GET (``body`` None) or JSON POST; an unreachable hub is an
    :class:`EnrollError` (never a traceback)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")  # noqa: S310
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=_TIMEOUT_S, context=context) as resp:  # noqa: S310
            return resp.status, bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, bytes(exc.read())
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EnrollError(f"cannot reach the hub at {url}: {reason}") from None


def _refusal(status: int, raw: bytes, what: str) -> EnrollError:
    try:
        doc = json.loads(raw)
        text = f"{doc['detail']} ({doc['error']}, HTTP {status})"
    except (ValueError, KeyError, TypeError):
        text = f"HTTP {status}"
    return EnrollError(f"{what} refused by the hub: {text}")


def _fetch_pinned_ca(api: str, pin: str) -> bytes:
    """The hub's CA certificate, fetched without verification and accepted only if its
    fingerprint is ``pin``."""
    unverified = None
    if api.startswith("https:"):
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE  # the pin is the check
    status, pem = _call(f"{api}/ca.pem", None, unverified)
    if status != 200:
        raise _refusal(status, pem, "fetching the CA certificate")
    try:
        found = certificate_fingerprint(pem)
    except PinError as exc:
        raise EnrollError(f"the hub's /ca.pem is not a certificate: {exc}") from None
    if found != pin:
        raise EnrollError(
            f"the hub's CA certificate has fingerprint {found}, not the pinned {pin}:"
            " not the hub you meant (or a wrong pin); nothing was sent"
        )
    return pem


def _trust(
    api: str, ca: Path | None, pin: str | None
) -> tuple[ssl.SSLContext | None, bytes | None]:
    """The TLS context for the hub and the CA certificate the edge now trusts (if any)."""
    ca_pem: bytes | None = None
    if ca is not None:
        try:
            ca_pem = ca.read_bytes()
            certificate_fingerprint(ca_pem)
        except (OSError, PinError) as exc:
            raise EnrollError(f"--ca {ca}: {exc}") from None
    elif pin is not None:
        ca_pem = _fetch_pinned_ca(api, pin)
    if not api.startswith("https:"):
        return None, ca_pem
    if ca_pem is None:
        return ssl.create_default_context(), None
    return ssl.create_default_context(cadata=ca_pem.decode("ascii")), ca_pem


def _token_pin(token: str) -> tuple[str, str | None]:
    """``(token, pin)`` of ``ce1.<id>.<secret>[.<pin>]``."""
    parts = token.strip().split(".")
    if len(parts) >= 4:
        return ".".join(parts[:3]), ".".join(parts[3:])
    return token.strip(), None


def enroll(
    data_dir: Path,
    hub: str,
    token: str,
    *,
    ca: Path | None = None,
    ca_pin: str | None = None,
    force: bool = False,
) -> Enrolled:
    """Enroll this edge at ``hub`` with ``token``; write its key and enrollment into
    ``data_dir`` (see the module docstring). :class:`EnrollError` says why not."""
    api = _api_base(hub)
    existing = read_enrollment(data_dir) if data_dir.exists() else None
    if existing is not None and not force:
        raise EnrollError(
            f"this edge is enrolled already as {existing.edge!r} of tenant {existing.tenant!r}"
            f" ({data_dir / ENROLLMENT_FILE}); enroll again with --force (a new key)"
        )
    token, token_pin = _token_pin(token)
    if ca is not None and ca_pin is not None:
        raise EnrollError("give --ca or --ca-pin, not both")
    pin_text = ca_pin if ca_pin is not None else (token_pin if ca is None else None)
    try:
        pin = normalize_pin(pin_text) if pin_text else None
    except PinError as exc:
        raise EnrollError(str(exc)) from None
    context, trusted_ca = _trust(api, ca, pin)
    if api.startswith("http:") and trusted_ca is None:
        _log.warning("enrolling over plain HTTP: the hub's answer is not authenticated")

    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if existing is None and (data_dir / KEY_FILE).exists():
        _log.info("the key in %s was never enrolled; a new one replaces it", data_dir / KEY_FILE)
    key = generate_key()
    pending = data_dir / (KEY_FILE + _PENDING)
    write_atomic(pending, private_key_pem(key), mode=0o600)  # kept only if the hub says yes
    request = {"token": token, "public_key": b64url(public_key_bytes(key))}
    try:
        status, raw = _call(f"{api}/enroll", request, context)
        if status != 201:
            raise _refusal(status, raw, "enrollment")
        try:
            answer = json.loads(raw)
            edge, tenant = str(answer["edge"]), str(answer["tenant"])
        except (ValueError, KeyError, TypeError):
            raise EnrollError(
                "the hub's answer to the enrollment is not what it should be"
            ) from None
        ca_text = answer.get("ca_pem")
        ca_bytes = ca_text.encode("ascii") if isinstance(ca_text, str) and ca_text else None
        if trusted_ca is not None and ca_bytes is not None and ca_bytes != trusted_ca:
            raise EnrollError("the hub sent a CA certificate other than the one this edge trusts")
        ca_bytes = trusted_ca or ca_bytes
        pending.replace(data_dir / KEY_FILE)
    finally:
        pending.unlink(missing_ok=True)
    ca_path = data_dir / CA_FILE
    if ca_bytes is not None:
        write_atomic(ca_path, ca_bytes)
    else:
        ca_path.unlink(missing_ok=True)
    token_key = answer.get("token_key")
    if isinstance(token_key, dict) and isinstance(token_key.get("public_key_pem"), str):
        write_atomic(data_dir / TOKEN_KEY_FILE, token_key["public_key_pem"].encode("ascii"))
    record = {**answer, "hub_url": api, "enrolled_at_s": int(time.time())}
    record.pop("ca_pem", None)  # in ca.pem
    write_atomic(data_dir / ENROLLMENT_FILE, (json.dumps(record, indent=2) + "\n").encode())
    return Enrolled(
        edge=edge,
        tenant=tenant,
        nats_url=answer.get("nats_url"),
        key=str(answer.get("key", "")),
        ca_file=ca_path if ca_bytes is not None else None,
    )


def rotate_key(data_dir: Path, *, hub: str | None = None) -> str:
    """Rotate the enrolled edge's key (see the module docstring); the new key's fingerprint
    as the hub lists it. A running edge picks the new key up within a second or two."""
    enrollment = read_enrollment(data_dir)
    if enrollment is None:
        raise EnrollError(f"this edge is not enrolled (no {data_dir / ENROLLMENT_FILE})")
    api = _api_base(hub or enrollment.hub_url)
    context = None
    if api.startswith("https:"):
        ca = enrollment.ca_file
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    key_path = data_dir / KEY_FILE
    if not key_path.exists():
        raise EnrollError(f"no key file {key_path}: enroll again (cairn-edge enroll --force)")
    old = load_or_create_key(key_path)
    pending = data_dir / (KEY_FILE + _PENDING)
    resumed = pending.exists()
    if resumed:
        new = load_or_create_key(pending)  # a rotation cut short: offer the same key again
    else:
        new = generate_key()
        write_atomic(pending, private_key_pem(new), mode=0o600)
    new_public = public_key_bytes(new)
    url = f"{api}/edges/{quote(enrollment.edge, safe='')}/rotate"

    def ask(signer: Ed25519PrivateKey) -> tuple[int, bytes]:
        signed_at = int(time.time())
        proof = sign_rotation(signer, enrollment.tenant, enrollment.edge, new_public, signed_at)
        body = {
            "tenant": enrollment.tenant,
            "public_key": b64url(new_public),
            "signed_at_s": signed_at,
            "proof": b64url(proof),
        }
        return _call(url, body, context)

    status, raw = ask(old)
    accepted_before = False
    if resumed and status == 401:
        # The hub may have accepted the new key before the swap here was cut short: then
        # the new key is the active one, and a request it signs is refused only because
        # the key is enrolled already (the proof is checked first).
        again, again_raw = ask(new)
        accepted_before = again == 409 and b"key-in-use" in again_raw
    if status != 200 and not accepted_before:
        if not resumed:
            pending.unlink(missing_ok=True)
        raise _refusal(status, raw, "key rotation")
    pending.replace(key_path)
    dir_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return key_fingerprint(new_public)
