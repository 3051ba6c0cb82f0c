"""Cairn hub: JetStream ingest -> readings store -> REST API."""

from hub.api import make_app
from hub.auth import ROLES, Claims, TokenAuthority
from hub.config import HubConfig, load_config
from hub.ingest import Ingestor, IngestStats
from hub.service import authority, run_hub
from hub.store import IngestResult, SqliteStore, Store, StoreError

__all__ = [
    "ROLES",
    "Claims",
    "HubConfig",
    "IngestResult",
    "IngestStats",
    "Ingestor",
    "SqliteStore",
    "Store",
    "StoreError",
    "TokenAuthority",
    "authority",
    "load_config",
    "make_app",
    "run_hub",
]
