"""NATS subject, stream and header names shared by edge and hub."""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "CLOCK_SUBJECT",
    "CONSUMER_NAME",
    "HDR_CODEC",
    "HDR_COUNT",
    "HDR_EDGE",
    "HDR_MSG_ID",
    "HDR_SEQ",
    "HDR_SIGNATURE",
    "MSG_ID_SIG_CHARS",
    "STATUS_SUBJECTS",
    "STREAM_NAME",
    "STREAM_SUBJECTS",
    "TOKEN_RE",
    "command_subject",
    "edge_permissions",
    "inbox_prefix",
    "msg_id",
    "parse_status_subject",
    "parse_telemetry_subject",
    "status_subject",
    "telemetry_subject",
]

STREAM_NAME: Final = "CAIRN_TELEMETRY"
STREAM_SUBJECTS: Final = "cairn.telemetry.>"
CONSUMER_NAME: Final = "cairn-hub-ingest"

HDR_MSG_ID: Final = "Nats-Msg-Id"
"""JetStream's de-duplication header; Cairn sets it to ``<edge>:<seq>``."""
HDR_EDGE: Final = "Cairn-Edge"
HDR_SEQ: Final = "Cairn-Seq"
HDR_CODEC: Final = "Cairn-Codec"
HDR_COUNT: Final = "Cairn-Count"
HDR_SIGNATURE: Final = "Cairn-Sig"

TOKEN_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What a tenant or edge id may look like: one safe NATS subject token."""

_PREFIX: Final = "cairn.telemetry."


def telemetry_subject(tenant: str, edge: str) -> str:
    """The subject an edge publishes its batches on."""
    return f"{_PREFIX}{tenant}.{edge}"


def parse_telemetry_subject(subject: str) -> tuple[str, str] | None:
    """``(tenant, edge)`` from a telemetry subject, or ``None`` if it is not one."""
    if not subject.startswith(_PREFIX):
        return None
    parts = subject[len(_PREFIX) :].split(".")
    if len(parts) != 2 or not all(TOKEN_RE.match(p) for p in parts):
        return None
    return parts[0], parts[1]


MSG_ID_SIG_CHARS: Final = 22
"""Characters of the batch's ``Cairn-Sig`` in its ``Nats-Msg-Id`` (132 bits)."""


def msg_id(edge: str, seq: int, *, tenant: str = "", signature: str = "") -> str:
    """The ``Nats-Msg-Id`` of batch ``seq`` of ``edge``: ``<tenant>.<edge>:<seq>:<sig>``, where
    ``<sig>`` is the start of the batch's ``Cairn-Sig`` (``<edge>:<seq>`` without them).

    JetStream de-duplicates on this header across the whole stream, whatever the subject. The
    tenant keeps two tenants' edges of the same name apart; the signature (Ed25519 signatures
    are deterministic, so every re-send of a batch carries the same one) keeps any other edge
    from publishing first under the id a batch will carry, which would make JetStream drop the
    real batch as a duplicate. (After a key rotation a re-sent batch has another id: the hub's
    (tenant, edge, seq) key then keeps it once.)"""
    if not tenant and not signature:
        return f"{edge}:{seq}"
    return f"{tenant}.{edge}:{seq}:{signature[:MSG_ID_SIG_CHARS]}"


CLOCK_SUBJECT: Final = "cairn.clock"
"""Core NATS request subject the hub answers with its wall time: ``{"now_us": <int>}``."""
STATUS_SUBJECTS: Final = "cairn.status.>"
"""Core NATS subjects of the edges' status documents (``cairn.status.<tenant>.<edge>``)."""
_STATUS_PREFIX: Final = "cairn.status."


def status_subject(tenant: str, edge: str) -> str:
    """The subject an edge publishes its status document on."""
    return f"{_STATUS_PREFIX}{tenant}.{edge}"


def parse_status_subject(subject: str) -> tuple[str, str] | None:
    """``(tenant, edge)`` from a status subject, or ``None`` if it is not one."""
    if not subject.startswith(_STATUS_PREFIX):
        return None
    parts = subject[len(_STATUS_PREFIX) :].split(".")
    if len(parts) != 2 or not all(TOKEN_RE.match(p) for p in parts):
        return None
    return parts[0], parts[1]


_COMMAND_PREFIX: Final = "cairn.command."


def command_subject(tenant: str, edge: str) -> str:
    """The core NATS subject the hub sends one edge commands on (device-token revocations)."""
    return f"{_COMMAND_PREFIX}{tenant}.{edge}"


def inbox_prefix(tenant: str, edge: str) -> str:
    """The reply-inbox prefix an edge connects with, so its permissions can name its own inboxes."""
    return f"_INBOX.{tenant}.{edge}"


def edge_permissions(tenant: str, edge: str) -> dict[str, list[str]]:
    """What an edge's NATS user may do: publish its batches, its status and clock requests;
    subscribe to its commands and its own reply inboxes (JetStream acks, clock answers)."""
    return {
        "publish": [telemetry_subject(tenant, edge), status_subject(tenant, edge), CLOCK_SUBJECT],
        "subscribe": [command_subject(tenant, edge), f"{inbox_prefix(tenant, edge)}.>"],
    }
