"""Cairn hub: JetStream ingest -> readings store -> REST API."""

from hub.config import HubConfig, load_config
from hub.service import run_hub
from hub.store import SqliteStore, Store

__all__ = ["HubConfig", "SqliteStore", "Store", "load_config", "run_hub"]
