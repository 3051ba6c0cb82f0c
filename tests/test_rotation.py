"""Key rotation under a backlog, with real processes: nothing buffered is lost, and the old
key stops counting once its grace period is over.

Mosquitto, nats-server, hub and edge run as in production (the edge enrolled with
``cairn-edge enroll``). NATS is stopped, the simulator's readings pile up in the edge buffer,
``cairn-edge rotate-key`` replaces the key while the edge runs, NATS comes back: every reading
the simulator had acknowledged reaches the hub exactly once (batches are signed at publish
time, with the key of that moment; the NATS server, whose authorization the hub rewrote at the
rotation, admits the edge's new key). After ``auth.retired_key_grace_s`` a batch signed with the
old key is refused as ``bad-signature`` and nothing of it is stored.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import nats.errors
import pytest
from cryptography.hazmat.primitives import serialization

from contract.backoff import Backoff
from contract.codec import encode_batch
from contract.fileio import write_atomic
from contract.keyproof import key_fingerprint
from contract.model import Reading
from contract.names import (
    telemetry_subject,
)
from contract.natsconn import connect_nats
from contract.nkeyid import nkey_public, nkey_seed
from contract.signing import (
    batch_headers,
    generate_key,
    load_or_create_key,
    public_key_bytes,
)
from edge.identity import Enrollment, KeyHolder, nats_identity, rekey_connection
from hub.registry import Registry
from simulator.fleet import Fleet, FleetSpec
from simulator.lab import Lab, LabSettings
from simulator.send import send_fleet
from simulator.servers import NatsServer
from tests.e2e_helpers import assert_exactly, async_wait_until, hub_count, stored_readings
from tests.polling import until

pytestmark = pytest.mark.slow

GRACE_S = 3
TENANT = "t1"
EDGE = "edge-rot"


async def test_rotation_with_a_backlog_loses_nothing_and_retires_the_old_key(
    tmp_path: Path,
) -> None:
    settings = LabSettings(
        tenant=TENANT,
        edge_id=EDGE,
        extra_forwarder_toml="backoff_max_s = 0.5\n",
        extra_hub_toml=f"[auth]\nretired_key_grace_s = {GRACE_S}\n",
    )
    with Lab(tmp_path / "lab", settings) as lab:
        await asyncio.to_thread(lab.start)
        state = lab.root / "edge" / "state"
        old_key = load_or_create_key(state / "edge.key")
        old_public = public_key_bytes(old_key)

        await asyncio.to_thread(lab.nats.stop)
        fleet = Fleet(FleetSpec(seed=11, devices=10, sensors=2, rate_hz=1.0))
        ledger = await send_fleet(fleet, lab.mosquitto.url, instants=range(30), paced=False)
        assert ledger.count == 600

        def buffered() -> bool:
            return lab.edge_status().get("buffer", {}).get("readings_unsent") == ledger.count

        await async_wait_until(buffered, 30, "the backlog in the edge buffer")
        assert hub_count(lab) == 0

        fingerprint = await asyncio.to_thread(lab.rotate_edge_key)
        new_public = public_key_bytes(load_or_create_key(state / "edge.key"))
        assert fingerprint == key_fingerprint(new_public) != key_fingerprint(old_public)
        assert (state / "edge.key").stat().st_mode & 0o777 == 0o600
        registry = Registry(
            lab.root / "hub" / "state" / "registry.sqlite3", retired_grace_s=GRACE_S
        )
        try:
            record = registry.edge(TENANT, EDGE)
            assert record is not None
            assert [k.public_key for k in record.keys] == [new_public, old_public]
            retired_us = record.keys[1].retired_us
            assert retired_us is not None
            # Within the grace period both keys verify (batches already in JetStream).
            assert set(registry.verification_keys(TENANT, EDGE)) == {new_public, old_public}
        finally:
            registry.close()
        await async_wait_until(
            lambda: "edge key rotated" in lab.edge.tail(400), 20, "the running edge to notice"
        )

        await asyncio.to_thread(lab.nats.start)
        await async_wait_until(lambda: hub_count(lab) >= ledger.count, 60, "the backlog at the hub")
        assert_exactly(ledger, stored_readings(lab.hub_store_path, TENANT))
        assert lab.hub_stats()["ingest"]["quarantined"] == {}

        # After the grace period, the old key signs nothing the hub accepts.
        await until(lambda: time.time() * 1e6 > retired_us + GRACE_S * 1e6, "the grace to end", 10)
        body = encode_batch([Reading("intruder", "temp", 1_000_000, 1.0)])
        seq = 10**9
        nc = await nats.connect(lab.nats.url, **lab.nats_identity.options())
        try:
            await nc.jetstream(timeout=10).publish(
                telemetry_subject(TENANT, EDGE),
                body,
                headers=batch_headers(old_key, TENANT, EDGE, seq, 1, body),
            )
        finally:
            await nc.close()

        def refused() -> bool:
            quarantined = lab.hub_stats().get("ingest", {}).get("quarantined", {})
            return bool(quarantined.get("bad-signature") == 1)

        await async_wait_until(refused, 30, "the old key's batch to be refused")
        assert hub_count(lab) == ledger.count
        assert_exactly(ledger, stored_readings(lab.hub_store_path, TENANT))


def _authorize_only(public_key: bytes) -> str:
    return f'authorization {{ users: [ {{ nkey: "{nkey_public(public_key)}" }} ] }}'


async def test_a_connected_edge_logs_in_with_its_rotated_key(tmp_path: Path) -> None:
    """The NATS server admits only the active key (as :mod:`hub.natsauth` does once a retired
    key's login grace is over): after a
    rotation the open connection's next login uses the new key, and the old one is refused."""
    data = tmp_path / "edge"
    data.mkdir()
    keys = KeyHolder(data / "edge.key", check_s=0.05)
    old = keys.current()
    enrollment = Enrollment(EDGE, TENANT, "", None, None, data)
    identity = nats_identity(enrollment, keys)
    server = NatsServer(tmp_path / "nats", extra_config=_authorize_only(public_key_bytes(old)))
    server.start()
    reconnected = asyncio.Event()
    errors: list[str] = []

    async def on_reconnect() -> None:
        reconnected.set()

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await connect_nats(
        server.url,
        "rotation-test",
        Backoff(0.05, 0.2),
        lambda _problem: None,
        identity,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )
    try:
        rekeyed: list[bool] = []
        keys.add_listener(lambda key: rekeyed.append(rekey_connection(nc, key)))
        new = generate_key()
        pem = new.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(data / "edge.key", pem, mode=0o600)
        assert keys.check()
        assert rekeyed == [True]
        assert public_key_bytes(keys.current()) == public_key_bytes(new)

        server.extra_config = _authorize_only(public_key_bytes(new))
        await asyncio.to_thread(server.restart)
        await asyncio.wait_for(reconnected.wait(), 15)
        await nc.flush(timeout=5)
        assert nc.is_connected
        # A fresh login with the old key is refused by the server.
        with pytest.raises(nats.errors.Error):
            await nats.connect(
                server.url,
                nkeys_seed_str=nkey_seed(old).decode(),
                allow_reconnect=False,
                connect_timeout=5,
            )
    finally:
        await nc.close()
        server.stop()
