"""CA pinning: the fingerprint an edge checks before it trusts a hub's CA certificate.

``cairn-hub enroll-token`` prints the fingerprint of the hub's CA; ``cairn-edge enroll
--ca-pin`` fetches the CA certificate over an unverified connection and accepts it only if its
fingerprint is the pinned one. The fingerprint is SHA-256 over the certificate's DER bytes,
written ``sha256:<64 lower-case hex>``; a pin may also be given as bare hex or with colons
(``openssl x509 -fingerprint -sha256`` prints ``AB:CD:...``).
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from contract.errors import CairnError

__all__ = ["PIN_PREFIX", "PinError", "certificate_fingerprint", "normalize_pin"]

PIN_PREFIX: Final = "sha256:"
_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")


class PinError(CairnError):
    """A pin or certificate that cannot be checked (malformed), or a mismatch."""


def certificate_fingerprint(pem: bytes) -> str:
    """``sha256:<hex>`` of the first certificate in ``pem``; :class:`PinError` if none."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PinError("not a PEM X.509 certificate") from exc
    return PIN_PREFIX + hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def normalize_pin(text: str) -> str:
    """``sha256:<hex>`` of a pin written any of the accepted ways; :class:`PinError` if not."""
    raw = text.strip().lower()
    raw = raw.removeprefix(PIN_PREFIX).replace(":", "")
    if not _HEX64.match(raw):
        raise PinError(f"a CA pin is sha256:<64 hex digits>, got {text!r}")
    return PIN_PREFIX + raw
