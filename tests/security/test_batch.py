"""Batch attacks against the hub's ingest, through a real nats-server and JetStream.

Each forged, replayed or tampered batch goes through the stream to the running
:class:`hub.ingest.Ingestor`; each must be quarantined with the right reason, counted, and
never stored (the store holds exactly the good batches afterwards). A replay is stored once and
counted as a duplicate; a lying ``Cairn-Count`` header changes nothing (the hub counts what it
decodes). Last, an enrolled edge that may publish on its own subject only tries to suppress
another edge's next batch by publishing first with that batch's ``Nats-Msg-Id``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NatsClient

from contract.codec import decode_batch, encode_batch
from contract.model import Reading
from contract.names import (
    HDR_CODEC,
    HDR_COUNT,
    HDR_EDGE,
    HDR_MSG_ID,
    HDR_SEQ,
    HDR_SIGNATURE,
    msg_id,
    telemetry_subject,
)
from contract.natsconn import NatsIdentity
from contract.signing import b64url, batch_headers, generate_key, public_key_bytes, sign_batch
from hub.ingest import Ingestor
from hub.registry import Registry
from hub.store import SqliteStore
from tests.pki_helpers import tls_nats
from tests.polling import stream_exists, until

from .conftest import AttackRecorder

N = 20  # readings per batch


def _body(edge: str, seq: int) -> bytes:
    return encode_batch(
        [Reading(f"{edge}-d", "temp", seq * 1_000_000 + i, float(seq * 100 + i)) for i in range(N)]
    )


@dataclass
class Edge:
    tenant: str
    edge: str
    key: Ed25519PrivateKey

    def headers(self, seq: int, body: bytes, *, codec: int = 1, mid: str = "") -> dict[str, str]:
        """The headers the edge's forwarder sends (``mid``: another Msg-Id)."""
        count = decode_batch(body).count
        return batch_headers(
            self.key, self.tenant, self.edge, seq, codec, body, count=count, msg=mid or None
        )

    @property
    def subject(self) -> str:
        return telemetry_subject(self.tenant, self.edge)


@dataclass
class Hub:
    store: SqliteStore
    registry: Registry
    ingestor: Ingestor
    url: str
    identity: NatsIdentity
    """TLS towards the hub's CA: the attacks run on the secure path."""

    async def connect(self) -> NatsClient:
        return await nats.connect(self.url, **self.identity.options())


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    store = SqliteStore(tmp_path / "store.sqlite3")
    registry = Registry(tmp_path / "registry.sqlite3")
    with tls_nats(tmp_path, fetch_batch=16) as site:
        ingestor = Ingestor(site.config, store, registry)
        task = asyncio.create_task(ingestor.run())
        try:
            await until(lambda: ingestor.stats.connected, "hub connected", 20)
            yield Hub(store, registry, ingestor, site.server.url, site.identity)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            store.close()
            registry.close()


def _enroll(hub: Hub, tenant: str, edge: str) -> Edge:
    e = Edge(tenant, edge, generate_key())
    hub.registry.register(tenant, edge, public_key_bytes(e.key))
    return e


def _quarantined(store: SqliteStore) -> dict[str, tuple[str, str]]:
    """Nats-Msg-Id -> (reason, subject) of every quarantined batch."""
    out: dict[str, tuple[str, str]] = {}
    for subject, reason, headers in store._reader().execute(
        "SELECT subject, reason, headers FROM quarantine"
    ):
        out[json.loads(headers).get(HDR_MSG_ID, "")] = (reason, subject)
    return out


async def test_forged_tampered_and_replayed_batches(hub: Hub, attack: AttackRecorder) -> None:
    a = _enroll(hub, "t", "edge-a")
    b = _enroll(hub, "t", "edge-b")
    revoked = _enroll(hub, "t", "edge-r")
    hub.registry.revoke_edge("t", "edge-r")
    twin = _enroll(hub, "u", "edge-a")  # tenant u has an edge of the same name
    off = _enroll(hub, "off", "edge-o")
    hub.registry.set_tenant_disabled("off", True)
    stranger = Edge("t", "edge-x", generate_key())  # never enrolled
    mallory = generate_key()

    nc = await hub.connect()
    js = nc.jetstream(timeout=10)
    await until(lambda: stream_exists(js), "the stream", 20)

    # The good batches first: a's 1 and 2, b's 1.
    for edge, seq in ((a, 1), (a, 2), (b, 1)):
        body = _body(edge.edge, seq)
        await js.publish(edge.subject, body, headers=edge.headers(seq, body))
    await until(lambda: hub.store.stats()["batches"] == 3, "the good batches", 20)
    good_rows = sorted(hub.store.export("t"), key=lambda r: (r.device, r.ts))

    body = _body("edge-a", 3)
    sig_a = a.headers(3, body)[HDR_SIGNATURE]
    attacks: list[tuple[str, str, bytes, dict[str, str], set[str]]] = []

    def add(name: str, subject: str, data: bytes, headers: dict[str, str], *reason: str) -> None:
        attacks.append((name, subject, data, {**headers, HDR_MSG_ID: f"attack-{name}"}, {*reason}))

    h = a.headers(3, body)
    add(
        "forged signature",
        a.subject,
        body,
        {**h, HDR_SIGNATURE: b64url(bytes(64))},
        "bad-signature",
    )
    add(
        "signed by an attacker's key",
        a.subject,
        body,
        {**h, HDR_SIGNATURE: sign_batch(mallory, "t", "edge-a", 3, 1, body)},
        "bad-signature",
    )
    add(
        "A's signature on B's subject",
        b.subject,
        body,
        {**h, HDR_EDGE: "edge-b", HDR_SIGNATURE: sig_a},
        "bad-signature",
    )
    add("A's batch on B's subject as A", b.subject, body, h, "edge-mismatch")
    add(
        "A's batch under tenant u (u has an edge-a)",
        telemetry_subject("u", "edge-a"),
        body,
        h,
        "bad-signature",
    )
    add(
        "B's batch under tenant u (u has no edge-b)",
        telemetry_subject("u", "edge-b"),
        _body("edge-b", 2),
        b.headers(2, _body("edge-b", 2)),
        "unknown-edge",
    )
    add(
        "twin edge-a of tenant u signs for t's edge-a",
        a.subject,
        body,
        {**h, HDR_SIGNATURE: sign_batch(twin.key, "t", "edge-a", 3, 1, body)},
        "bad-signature",
    )
    r_body = _body("edge-r", 1)
    add("revoked edge", revoked.subject, r_body, revoked.headers(1, r_body), "revoked-edge")
    o_body = _body("edge-o", 1)
    add("edge of a disabled tenant", off.subject, o_body, off.headers(1, o_body), "tenant-disabled")
    x_body = _body("edge-x", 1)
    add("unknown edge", stranger.subject, x_body, stranger.headers(1, x_body), "unknown-edge")
    add("unsigned", a.subject, body, {k: v for k, v in h.items() if k != HDR_SIGNATURE}, "unsigned")
    add("empty signature", a.subject, body, {**h, HDR_SIGNATURE: ""}, "unsigned")
    add("tampered seq", a.subject, body, {**h, HDR_SEQ: "4"}, "bad-signature")
    add("seq of a stored batch", a.subject, body, {**h, HDR_SEQ: "1"}, "bad-signature")
    add("tampered codec", a.subject, body, {**h, HDR_CODEC: "2"}, "unknown-codec", "bad-signature")
    add("tampered edge header", a.subject, body, {**h, HDR_EDGE: "edge-b"}, "edge-mismatch")
    flipped = bytearray(body)
    flipped[len(flipped) // 2] ^= 0x01
    add("tampered body (one bit)", a.subject, bytes(flipped), h, "bad-signature")
    add("body with bytes appended", a.subject, body + b"\x00", h, "bad-signature")
    add("another batch's body", a.subject, _body("edge-a", 9), h, "bad-signature")
    add(
        "signature padded (not canonical)",
        a.subject,
        body,
        {**h, HDR_SIGNATURE: sig_a + "=="},
        "bad-signature",
    )
    add("signature truncated", a.subject, body, {**h, HDR_SIGNATURE: sig_a[:-2]}, "bad-signature")
    add("seq beyond 64 bits", a.subject, body, {**h, HDR_SEQ: str(2**64)}, "bad-signature")
    add("negative seq", a.subject, body, {**h, HDR_SEQ: "-1"}, "bad-header")

    for _name, subject, data, headers, _reasons in attacks:
        await js.publish(subject, data, headers=headers)

    # A replay of a's batch 1 beyond JetStream's de-duplication (another Msg-Id), and a good
    # batch with a lying Cairn-Count.
    replay = _body("edge-a", 1)
    await js.publish(a.subject, replay, headers=a.headers(1, replay, mid="replayed-1"))
    liar = _body("edge-a", 5)
    await js.publish(a.subject, liar, headers={**a.headers(5, liar), HDR_COUNT: "1000000"})
    await nc.close()

    stats = hub.ingestor.stats
    await until(
        lambda: hub.store.stats()["quarantined"] == len(attacks) and stats.duplicates == 1,
        "every attack quarantined and the replay seen",
        30,
    )
    await until(lambda: hub.store.stats()["batches"] == 4, "the honest batch 5", 20)
    found = _quarantined(hub.store)
    for name, subject, _data, _headers, reasons in attacks:
        with attack("batch", name):
            reason, where = found[f"attack-{name}"]
            assert reason in reasons, (name, reason, reasons)
            assert where == subject

    with attack("batch", "replayed old batch"):
        assert stats.duplicates == 1
        assert hub.store.stats()["duplicates_skipped"] == 1
    with attack("batch", "lying Cairn-Count"):
        assert stats.readings_stored == 4 * N
        assert hub.store.stats(tenant="t")["readings"] == 4 * N
    # Never stored: tenant t holds the three good batches and batch 5, nothing else; no other
    # tenant holds anything.
    rows = sorted(hub.store.export("t"), key=lambda r: (r.device, r.ts))
    expected = sorted([*good_rows, *decode_batch(liar).readings()], key=lambda r: (r.device, r.ts))
    assert rows == expected
    assert hub.store.tenants() == ["t"]
    counted = sum(stats.quarantined.values())
    assert counted == len(attacks)
    assert hub.store.stats() == {
        "batches": 4,
        "readings": 4 * N,
        "duplicates_skipped": 1,
        "quarantined": len(attacks),
    }


async def test_an_edge_cannot_squat_another_edges_msg_id(hub: Hub, attack: AttackRecorder) -> None:
    """JetStream de-duplicates on ``Nats-Msg-Id`` across the whole stream, whatever the subject.
    An edge of another tenant with the victim's edge id publishes its own batches honestly, and
    a neighbour edge publishes on its own subject (which its NATS permissions allow) under every
    Msg-Id it can work out for the victim's next batch. The victim's batches must be stored."""
    victim = _enroll(hub, "t", "edge-v")
    twin = _enroll(hub, "u", "edge-v")  # another tenant's edge of the same name
    neighbour = _enroll(hub, "t", "edge-n")
    nc = await hub.connect()
    js = nc.jetstream(timeout=10)
    await until(lambda: stream_exists(js), "the stream", 20)
    body = _body("edge-v", 1)
    ack = await js.publish(twin.subject, body, headers=twin.headers(1, body))
    assert not ack.duplicate
    guesses = [
        msg_id("edge-v", 2),
        msg_id("edge-v", 2, tenant="t"),
        msg_id("edge-v", 2, tenant="t", signature="A" * 86),
    ]
    for n, guess in enumerate(guesses, 1):
        n_body = _body("edge-n", n)
        headers = {**neighbour.headers(n, n_body), HDR_MSG_ID: guess}
        assert not (await js.publish(neighbour.subject, n_body, headers=headers)).duplicate
    acks = {}
    for seq in (1, 2):
        body = _body("edge-v", seq)
        acks[seq] = await js.publish(victim.subject, body, headers=victim.headers(seq, body))
    await nc.close()
    with attack("batch", "Msg-Id collision: an edge of the same name in another tenant"):
        assert not acks[1].duplicate
    with attack("batch", "Msg-Id squatting by a neighbour edge"):
        assert not acks[2].duplicate
    await until(lambda: hub.store.stats()["batches"] == 6, "every batch stored", 20)
    assert hub.store.stats(tenant="t")["readings"] == 5 * N
