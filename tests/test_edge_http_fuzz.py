"""Hypothesis against the running HTTP/WebSocket source: random bodies, headers, tokens and
messages, good requests interleaved with bad ones. No 5xx, every good reading committed exactly
once, every refusal counted, the counters add up."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.errors import PayloadError
from contract.model import FLAG_EDGE_STAMPED, Reading, now_us
from edge.sources.http import RateLimiter, _own_device, _RefusalError
from edge.sources.payloads import parse_json_payload
from edge.sources.senml import parse_senml_payload
from tests.test_edge_http_support import (
    ED_KID,
    HttpEdge,
    ThreadedHttpEdge,
    claims,
    http_settings,
    raw_token,
    token,
    write_keys,
)
from tests.test_edge_support import stored

pytestmark = pytest.mark.timeout(300)

MAX_BODY = 4096
TS_S = now_us() // 1_000_000 - 60
DEVICES = ("fz-1", "fz-2")
_PRINTABLE = string.ascii_letters + string.digits + string.punctuation + " "
_FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _key(r: Reading) -> tuple[str, str, int | None, str, int]:
    ts = None if r.flags & FLAG_EDGE_STAMPED else r.ts
    return (r.device, r.sensor, ts, json.dumps(r.value, sort_keys=True), r.flags)


@dataclass
class Tracker:
    """What the test has sent and expects, summed over hypothesis examples."""

    edge: HttpEdge
    runner: ThreadedHttpEdge
    tokens: dict[str, str]
    expected: Counter[tuple[str, str, int | None, str, int]] = field(default_factory=Counter)
    sent: int = 0
    accepted_requests: int = 0
    accepted_readings: int = 0

    def check_totals(self) -> None:
        st_ = self.runner.source_status()
        assert st_["messages"] == self.sent
        assert st_["accepted"] == self.accepted_readings
        assert sum(st_["rejected"].values()) == self.sent - self.accepted_requests
        assert st_["refused"] == {}
        assert "500" not in st_["responses"]
        assert Counter(_key(r) for r in stored(self.edge.buffer.path)) == self.expected


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[Tracker]:
    settings_ = http_settings(
        write_keys(tmp_path), max_body_bytes=MAX_BODY, rate_readings_per_s=0, leeway_s=5
    )
    runner = ThreadedHttpEdge(tmp_path, settings_)
    with runner as edge:
        yield Tracker(edge, runner, {d: token(d) for d in DEVICES})


# --------------------------------------------------------------------------- strategies

_values = st.one_of(
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=20),
    st.lists(st.integers(0, 100), max_size=3),
)
_sensor = st.from_regex(r"[a-z][a-z0-9_/]{0,10}[a-z0-9]", fullmatch=True).filter(
    lambda s: "//" not in s and s not in {"ts", "device"}
)
_good_body = st.lists(
    st.tuples(st.integers(0, 10_000), st.dictionaries(_sensor, _values, min_size=1, max_size=4)),
    min_size=1,
    max_size=4,
).map(lambda items: [{"ts": TS_S + t, **sensors} for t, sensors in items])
_json_any = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_header_text = st.text(alphabet=_PRINTABLE, max_size=120)
_senml_record = st.fixed_dictionaries(
    {},
    optional={
        "bn": st.sampled_from(["urn:dev:x:", "b/", "", "bad name "]),
        "bt": st.sampled_from([TS_S, 0, -5, 1e300]),
        "n": _sensor,
        "v": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**60), 2**60),
        "vs": st.text(max_size=5),
        "vb": st.booleans(),
        "t": st.integers(-10, 10),
        "u": st.sampled_from(["Cel", 5]),
    },
)
_senml_pack = st.one_of(st.lists(_senml_record, max_size=5), _json_any)


def _attack_tokens() -> list[str]:
    return [
        raw_token({"alg": "none", "kid": ED_KID}, claims("fz-1"), None),
        raw_token({"alg": "HS256", "kid": ED_KID}, claims("fz-1"), b"secret"),
        token("fz-1", exp=TS_S - 600, iat=TS_S - 700, nbf=TS_S - 700),
        token("fz-1", tenant="other"),
        token("fz-1", aud="x"),
        token("fz-1", kid="unknown"),
    ]


@dataclass
class Req:
    device: str | None
    headers: dict[str, str]
    body: bytes
    oracle: bool
    """Whether the request is authenticated and JSON: then the parser decides the outcome."""
    senml: bool = False


@st.composite
def requests(draw: st.DrawFn) -> Req:
    device = draw(st.sampled_from(DEVICES))
    kind = draw(
        st.sampled_from(
            ["good", "good", "bytes", "json", "senml", "auth", "ctype", "big", "headers"]
        )
    )
    ctype = {"Content-Type": "application/json"}
    good_auth = {"Authorization": f"Bearer {{{device}}}"}
    good = json.dumps(draw(_good_body)).encode()
    if kind == "good":
        return Req(device, {**ctype, **good_auth}, good, oracle=True)
    if kind == "bytes":
        return Req(device, {**ctype, **good_auth}, draw(st.binary(max_size=300)), oracle=True)
    if kind == "json":
        body = json.dumps(draw(_json_any)).encode()
        return Req(device, {**ctype, **good_auth}, body, oracle=True)
    if kind == "senml":
        body = json.dumps(draw(_senml_pack)).encode()
        headers = {"Content-Type": "application/senml+json", **good_auth}
        return Req(device, headers, body, oracle=True, senml=True)
    if kind == "auth":
        choice = draw(
            st.one_of(
                st.just(None),
                _header_text,
                st.sampled_from(_attack_tokens()).map(lambda t: f"Bearer {t}"),
                _header_text.map(lambda t: f"Bearer {t}"),
            )
        )
        headers = dict(ctype) if choice is None else {**ctype, "Authorization": choice}
        return Req(None, headers, good, oracle=False)
    if kind == "ctype":
        kind_text = draw(_header_text.filter(lambda t: "json" not in t.lower()))
        return Req(None, {"Content-Type": kind_text, **good_auth}, good, oracle=False)
    if kind == "big":
        return Req(None, {**ctype, **good_auth}, b" " * MAX_BODY + good, oracle=False)
    extra = draw(
        st.dictionaries(st.from_regex(r"X-[A-Za-z0-9-]{1,12}", fullmatch=True), _header_text)
    )
    return Req(device, {**extra, **ctype, **good_auth}, good, oracle=True)


def _expect(req: Req) -> list[Reading] | None:
    if not req.oracle or req.device is None:
        return None
    try:
        if req.senml:
            return parse_senml_payload(req.body, req.device)
        return _own_device(parse_json_payload(req.body, req.device), req.device)
    except (PayloadError, _RefusalError):
        return None


# --------------------------------------------------------------------------- HTTP


@_FUZZ
@given(batch=st.lists(requests(), min_size=1, max_size=8))
def test_random_requests_interleaved_with_good_ones(tracker: Tracker, batch: list[Req]) -> None:
    port = tracker.edge.source.port
    assert port is not None
    for req in batch:
        headers = {
            k: v.replace("{fz-1}", tracker.tokens["fz-1"]).replace("{fz-2}", tracker.tokens["fz-2"])
            for k, v in req.headers.items()
        }
        expected = _expect(req)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", "/api/v1/readings", body=req.body, headers=headers)
            resp = conn.getresponse()
            status, raw = resp.status, resp.read()
        finally:
            conn.close()
        tracker.sent += 1
        doc = json.loads(raw)
        assert status in {202, 400, 401, 403, 413, 415, 422}, (status, doc)
        if status == 202:
            assert expected is not None, (req, doc)
            assert doc == {"accepted": len(expected)}
            tracker.accepted_requests += 1
            tracker.accepted_readings += len(expected)
            tracker.expected.update(_key(r) for r in expected)
        else:
            assert set(doc) == {"error", "detail"}
            assert expected is None or doc["error"] == "bad-value", (req, doc)
    tracker.check_totals()


_request_heads = st.sampled_from(
    [
        b"",
        b"POST /api/v1/readings HTTP/1.1\r\n",
        b"POST /api/v1/readings HTTP/1.1\r\nContent-Type: application/json\r\n",
        b"GET /api/v1/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    ]
)


@_FUZZ
@given(head=_request_heads, tail=st.binary(max_size=300))
def test_random_bytes_on_the_socket_never_get_a_5xx_or_a_traceback(
    tracker: Tracker, caplog: pytest.LogCaptureFixture, head: bytes, tail: bytes
) -> None:
    port = tracker.edge.source.port
    assert port is not None
    caplog.clear()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + tail + b"\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    if answer:
        assert answer.startswith(b"HTTP/1."), answer[:80]
        assert answer[9:10] in {b"2", b"4"}, answer[:80]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    reasons = set(tracker.runner.source_status()["rejected"])
    assert reasons <= {"bad-http", "no-token", "bad-token", "bad-content-type", "too-large"}


# --------------------------------------------------------------------------- WebSocket

_bad_messages = st.one_of(
    st.binary(max_size=200).map(lambda b: b"\xff" + b),
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=200),
    _json_any.filter(lambda d: not isinstance(d, dict)).map(json.dumps),
    st.dictionaries(st.sampled_from(["ts", "temp", "x"]), _json_any, max_size=3).map(
        lambda d: json.dumps({k: v for k, v in d.items() if k != "id"})  # no id
    ),
    st.tuples(st.integers(), st.one_of(st.none(), st.integers(), st.text(max_size=5))).map(
        lambda p: json.dumps({"id": p[0], "readings": p[1]})
    ),
    st.integers().map(lambda i: json.dumps({"id": i, "temp": None})),
)


@st.composite
def ws_messages(draw: st.DrawFn) -> list[tuple[str | bytes, list[dict[str, Any]] | None]]:
    out: list[tuple[str | bytes, list[dict[str, Any]] | None]] = []
    for i in range(draw(st.integers(1, 10))):
        if draw(st.booleans()):
            body = draw(_good_body)
            out.append((json.dumps({"id": f"g{i}", "readings": body}), body))
        else:
            out.append((draw(_bad_messages), None))
    return out


@_FUZZ
@given(messages=ws_messages())
def test_random_websocket_messages_each_answered_once(
    tracker: Tracker, messages: list[tuple[str | bytes, list[dict[str, Any]] | None]]
) -> None:
    device = "fz-2"

    async def exchange() -> list[dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(
                tracker.edge.ws_url, headers={"Authorization": f"Bearer {tracker.tokens[device]}"}
            ) as ws,
        ):
            for data, _ in messages:
                await (ws.send_bytes(data) if isinstance(data, bytes) else ws.send_str(data))
            answers = []
            for _ in messages:
                msg = await ws.receive(timeout=30)
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                answers.append(json.loads(msg.data))
            return answers

    answers = tracker.runner.call(exchange())
    tracker.sent += len(messages)
    by_id = Counter(a["id"] for a in answers)
    for i, (_data, body) in enumerate(messages):
        if body is None:
            continue
        [ack] = [a for a in answers if a["id"] == f"g{i}"]
        readings = parse_json_payload(json.dumps(body).encode(), device)
        assert ack == {"id": f"g{i}", "status": "ok", "accepted": len(readings)}, ack
        assert by_id[f"g{i}"] == 1
        tracker.accepted_requests += 1
        tracker.accepted_readings += len(readings)
        tracker.expected.update(_key(r) for r in readings)
    bad = [a for a in answers if not str(a["id"]).startswith("g")]
    assert len(bad) == sum(1 for _, body in messages if body is None)
    assert all(a["status"] == "error" and a["code"] in {400, 422} for a in bad), bad
    tracker.check_totals()


# --------------------------------------------------------------------------- rate limiter


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.5, 1000),
    burst=st.integers(1, 500),
    steps=st.lists(st.tuples(st.floats(0, 2), st.integers(1, 600)), max_size=40),
)
def test_the_rate_limiter_never_lets_more_through_than_rate_and_burst(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    now = [0.0]
    limiter = RateLimiter(rate, burst, clock=lambda: now[0])
    taken = 0
    for dt, n in steps:
        now[0] += dt
        wait = limiter.take("d", n)
        if wait == 0:
            taken += n
        else:
            assert wait > 0
        assert taken <= burst + rate * now[0] + 1e-6
    # a device that waited as long as it was told gets through
    now[0] += burst / rate + 1
    assert limiter.take("d", burst) == 0
