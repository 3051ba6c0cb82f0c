"""Counters and the rate-limited log of bad input."""

from __future__ import annotations

import logging

import pytest

from edge.stats import COUNTER_KEYS, LOG_INTERVAL_S, EdgeStats, payload_preview


def test_counters_start_at_zero_and_count() -> None:
    stats = EdgeStats()
    assert stats.as_json()["counters"] == dict.fromkeys(sorted(COUNTER_KEYS), 0)
    stats.received("a")
    stats.accepted("a", 3)
    stats.duplicate("a")
    stats.count("batches-committed")
    doc = stats.as_json()
    assert doc["counters"]["messages-received"] == 1
    assert doc["counters"]["readings-accepted"] == 3
    assert doc["counters"]["redelivered-duplicate"] == 1
    assert doc["counters"]["batches-committed"] == 1
    assert doc["sources"] == {
        "a": {
            "connected": False,
            "messages": 1,
            "accepted": 3,
            "rejected": {},
            "redelivered-duplicate": 1,
            "dropped": {},
            "refused": {},
        }
    }


def test_bad_input_is_counted_always_and_logged_rarely(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    stats = EdgeStats(clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="edge.stats")
    for i in range(100):
        stats.rejected("mqtt", "bad-json", f"detail {i}", b"{oops", "devices/d1")
    stats.rejected("mqtt", "bad-name", "key 'a//b'", b'{"a//b": 1}')
    stats.rejected("other", "bad-json", "x", b"\xff\x00" * 50)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "source mqtt: refused a message (bad-json) on devices/d1: detail 0; payload '{oops'",
        """source mqtt: refused a message (bad-name): key 'a//b'; payload '{"a//b": 1}'""",
        "source other: refused a message (bad-json): x; payload hex "
        + "ff00" * 32
        + "... (100 bytes)",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    caplog.clear()
    now[0] += LOG_INTERVAL_S - 1
    stats.rejected("mqtt", "bad-json", "detail 100", b"{oops")
    assert caplog.records == []  # still inside the interval
    now[0] += 1
    stats.rejected("mqtt", "bad-json", "detail 101", b"{oops", "devices/d2")
    assert [r.getMessage() for r in caplog.records] == [
        "source mqtt: refused 101 more messages (bad-json) in the last 60 s; latest on devices/d2:"
        " detail 101"
    ]
    assert stats.source("mqtt").rejected == {"bad-json": 102, "bad-name": 1}
    assert stats.counters["messages-rejected"] == 104


def test_payload_preview() -> None:
    assert payload_preview(b"21.5") == "'21.5'"
    assert payload_preview(b"x" * 100) == repr("x" * 64) + "... (100 bytes)"
    assert payload_preview(b"\xc3") == "hex c3"


def test_drops_and_refusals_are_counted_per_source_and_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = [0.0]
    stats = EdgeStats(clock=lambda: t[0])
    with caplog.at_level(logging.WARNING, logger="edge.stats"):
        stats.dropped("a", "full", 10, "budget")
        stats.dropped("a", "full", 5, "budget")
        stats.dropped("b", "age", 2, "older than 60 s")
        stats.refused("a", "full", 3, "refuse-new")
        t[0] = 61.0
        stats.dropped("a", "full", 1, "budget")
    doc = stats.as_json()
    assert doc["counters"]["readings-dropped"] == 18
    assert doc["counters"]["readings-refused"] == 3
    assert doc["sources"]["a"]["dropped"] == {"full": 16}
    assert doc["sources"]["a"]["refused"] == {"full": 3}
    assert doc["sources"]["b"]["dropped"] == {"age": 2}
    assert [r.getMessage() for r in caplog.records] == [
        "source a: dropped 10 unsent readings (full): budget",
        "source b: dropped 2 unsent readings (age): older than 60 s",
        "source a: refused 3 readings (full): refuse-new",
        "source a: 2 more drops (full) in the last 61 s; latest: dropped 1 unsent readings"
        " (full): budget",
    ]
