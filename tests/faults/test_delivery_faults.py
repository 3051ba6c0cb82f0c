"""JetStream delivers the same batch more than once, or batches out of order: a second
publisher copies the edge's signed batches straight into the stream under other
``Nats-Msg-Id`` values (so JetStream's own dedupe does not catch them). The hub stores each
batch once, whatever the order."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import nats
import pytest

from contract.names import HDR_MSG_ID, STREAM_NAME
from tests.e2e_helpers import hub_count
from tests.faults.harness import FaultLab, Load
from tests.test_edge_support import stream_messages

pytestmark = pytest.mark.slow

LOAD = Load(devices=20, sensors=3, speed=40.0)


async def _republish(lab: FaultLab, msgs: list[Any], tag: str) -> int:
    """Publish each message again, headers kept but ``Nats-Msg-Id`` ``<tag>:<stream seq>``."""
    nc = await nats.connect(lab.nats.url, **lab.nats_identity.options())
    try:
        js = nc.jetstream()
        for m in msgs:
            headers = {**(m.headers or {}), HDR_MSG_ID: f"{tag}:{m.seq}"}
            ack = await js.publish(m.subject, m.data, headers=headers)
            assert not ack.duplicate
    finally:
        await nc.close()
    return len(msgs)


def _ingest(lab: FaultLab) -> dict[str, Any]:
    return dict(lab.hub_stats().get("ingest", {}))


async def test_duplicate_delivery_storm(make_lab: Callable[..., FaultLab], soak: float) -> None:
    """Twice during the run, every batch in the stream so far is published two more times
    by a second publisher: the hub counts them as duplicates and stores nothing twice."""
    lab = make_lab()
    sending = lab.send(LOAD, max(4.0, soak))
    await lab.progress(lambda: hub_count(lab), 3000, "readings at the hub")
    copies = 0
    first = await stream_messages(lab.nats.url, lab.nats_identity)
    for k in range(2):
        copies += await _republish(lab, first, f"storm{k}")
    ledger = await sending.finish()
    await lab.settle([ledger])
    seen = len(first)
    rest = [
        m
        for m in await stream_messages(lab.nats.url, lab.nats_identity)
        if m.headers[HDR_MSG_ID][:5] != "storm"
    ]
    for k in range(2):
        copies += await _republish(lab, rest, f"storm{k}b")
    await lab.until(lambda: _ingest(lab).get("duplicates", 0) >= copies, f"{copies} duplicates")
    lab.verdict("duplicate delivery storm", [ledger], rounds=2, note=f"{copies} copies")
    assert seen > 0
    assert _ingest(lab)["duplicates"] == copies


async def test_out_of_order_delivery(make_lab: Callable[..., FaultLab], soak: float) -> None:
    """The hub is away while the edge forwards everything; the stream is then emptied and
    its batches published again in reverse order: the hub ingests newest first, all once."""
    lab = make_lab()
    lab.hub.stop()  # it created the stream and its consumer
    sending = lab.send(LOAD, max(3.0, soak))
    ledger = await sending.finish()
    await lab.until(lambda: lab.unsent() == 0 and lab.forwarded() >= ledger.count, "forwarding")
    msgs = await stream_messages(lab.nats.url, lab.nats_identity)
    nc = await nats.connect(lab.nats.url, **lab.nats_identity.options())
    try:
        await nc.jetstream().purge_stream(STREAM_NAME)
    finally:
        await nc.close()
    await _republish(lab, list(reversed(msgs)), "reverse")
    await lab.to_thread(lab.start_hub)
    await lab.settle([ledger])
    lab.verdict("out-of-order delivery (reversed)", [ledger], note=f"{len(msgs)} batches reversed")
    assert len(msgs) > 10
    conn = sqlite3.connect(f"{lab.hub_store_path.as_uri()}?mode=ro", uri=True)
    try:
        order = [seq for (seq,) in conn.execute("SELECT seq FROM batches ORDER BY id")]
    finally:
        conn.close()
    assert order == sorted(order, reverse=True), "the hub did not see the batches reversed"
    assert len(order) == len(msgs)
