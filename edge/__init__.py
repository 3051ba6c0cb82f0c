"""``cairn-edge``: sensors -> bounded queue -> group commit -> SQLite buffer -> JetStream.

Public names (modules: :mod:`edge.config`, :mod:`edge.buffer`, :mod:`edge.batcher`,
:mod:`edge.forwarder`, :mod:`edge.sources.mqtt`, :mod:`edge.sources.payloads`,
:mod:`edge.stats`, :mod:`edge.admin`, :mod:`edge.service`, :mod:`edge.cli`).
"""

from edge.admin import STATUS_PATH, AdminServer
from edge.batcher import Batcher, BatcherClosedError, Sink
from edge.buffer import Buffer, BufferFileError, BufferStats, StoredBatch, read_stats
from edge.config import (
    AdminSettings,
    BufferSettings,
    EdgeConfig,
    EdgeSettings,
    ForwarderSettings,
    MqttSettings,
    PayloadFormat,
    Synchronous,
    TopicSettings,
    load_config,
)
from edge.forwarder import Forwarder
from edge.service import run_edge
from edge.sources.mqtt import MqttSource, message_digest
from edge.sources.payloads import parse_json_payload, parse_timestamp, parse_value_payload
from edge.stats import EdgeStats

__all__ = [
    "STATUS_PATH",
    "AdminServer",
    "AdminSettings",
    "Batcher",
    "BatcherClosedError",
    "Buffer",
    "BufferFileError",
    "BufferSettings",
    "BufferStats",
    "EdgeConfig",
    "EdgeSettings",
    "EdgeStats",
    "Forwarder",
    "ForwarderSettings",
    "MqttSettings",
    "MqttSource",
    "PayloadFormat",
    "Sink",
    "StoredBatch",
    "Synchronous",
    "TopicSettings",
    "load_config",
    "message_digest",
    "parse_json_payload",
    "parse_timestamp",
    "parse_value_payload",
    "read_stats",
    "run_edge",
]
