"""The edge <-> hub contract: reading model, batch codec, batch signing, NATS names.

Both ``edge`` and ``hub`` import this package; it imports neither.
"""

from contract.codec import CODEC_VERSION, Batch, SeriesColumn, decode_batch, encode_batch
from contract.errors import (
    AuthError,
    CairnError,
    CodecError,
    ConfigError,
    PayloadError,
    SignatureError,
)
from contract.model import FLAG_CLOCK_SUSPECT, FLAG_EDGE_STAMPED, Reading, Value, now_us

__all__ = [
    "CODEC_VERSION",
    "FLAG_CLOCK_SUSPECT",
    "FLAG_EDGE_STAMPED",
    "AuthError",
    "Batch",
    "CairnError",
    "CodecError",
    "ConfigError",
    "PayloadError",
    "Reading",
    "SeriesColumn",
    "SignatureError",
    "Value",
    "decode_batch",
    "encode_batch",
    "now_us",
]
