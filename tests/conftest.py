"""Shared fixtures: real Mosquitto and nats-server processes on free loopback ports."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.servers import Mosquitto, NatsServer


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto broker of this test's own (``.port``, ``.url``, ``.kill()``, ``.start()``)."""
    with Mosquitto(tmp_path / "mosquitto").start() as broker:
        yield broker


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server with JetStream of this test's own; ``.restart()`` keeps port and store."""
    with NatsServer(tmp_path / "nats").start() as server:
        yield server


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name (topic prefix, subject token) made from the test's own name."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[-48:]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options of the fault suite (tests/faults; here because pytest reads options only from
    the first conftest files it loads)."""
    group = parser.getgroup("cairn fault suite")
    group.addoption(
        "--soak",
        type=float,
        default=None,
        metavar="SECONDS",
        help="run each fault test of tests/faults for about this long (env CAIRN_SOAK_S)",
    )
    group.addoption(
        "--fault-seed",
        type=int,
        default=None,
        metavar="N",
        help="seed of the fault suite's random choices, to replay a failure (env CAIRN_FAULT_SEED)",
    )
