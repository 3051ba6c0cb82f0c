"""The HTTP/WebSocket source against a real aiohttp server, batcher and SQLite buffer."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from contract.errors import ConfigError
from contract.model import FLAG_EDGE_STAMPED, Reading, now_us
from edge.buffer import BufferFullError, BufferLimits
from edge.config import load_config
from edge.service import run_edge
from edge.sources.devtokens import AUDIENCE
from edge.sources.http import WS_CLOSE_REVOKED, WS_CLOSE_TOKEN_EXPIRED, HttpSource
from edge.stats import EdgeStats
from hub.auth import DEVICE_AUDIENCE
from tests.polling import until
from tests.test_edge_http_support import (
    ED_KID,
    RSA_KID,
    auth,
    claims,
    ed_key,
    http_edge,
    http_settings,
    keyed,
    public_pem,
    raw_token,
    token,
    write_keys,
)
from tests.test_edge_support import http_json, stored, write_config

pytestmark = pytest.mark.timeout(120)

TS = (now_us() // 1_000_000 - 60) * 1_000_000
TS_S = TS // 1_000_000


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: Any = None,
    *,
    tok: str | None = None,
    data: bytes | None = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    h = {"Content-Type": content_type, **(auth(tok) if tok else {}), **(headers or {})}
    raw = data if data is not None else json.dumps(body).encode()
    async with session.post(url, data=raw, headers=h) as resp:
        doc = await resp.json(content_type=None)
        return resp.status, doc, dict(resp.headers)


# --------------------------------------------------------------------------- POST


async def test_a_reading_is_committed_before_202(tmp_path: Path) -> None:
    async with http_edge(tmp_path, http_settings(write_keys(tmp_path))) as edge:
        async with aiohttp.ClientSession() as s:
            status, doc, _ = await post(
                s, edge.readings_url, {"ts": TS_S, "temp": 21.5, "on": True}, tok=token()
            )
            # 202 means committed: the buffer file (read through a connection of our own)
            # already holds the readings when the answer arrives.
            assert (status, doc) == (202, {"accepted": 2})
            assert set(stored(edge.buffer.path)) == {
                Reading("pump-1", "temp", TS, 21.5),
                Reading("pump-1", "on", TS, True),
            }
            status, doc, _ = await post(s, edge.readings_url, {"hum": 40}, tok=token())
            assert (status, doc) == (202, {"accepted": 1})
        [late] = [r for r in stored(edge.buffer.path) if r.sensor == "hum"]
        assert late.flags == FLAG_EDGE_STAMPED
        st = edge.source.status
        assert (st.messages, st.accepted, dict(st.rejected), dict(st.responses)) == (
            2,
            3,
            {},
            {202: 2},
        )


async def test_a_batch_from_an_rs256_device_is_committed_whole(tmp_path: Path) -> None:
    body = [{"ts": TS_S + i, "temp": 20 + i, "gps": {"lat": 52.1, "lon": i}} for i in range(5)]
    async with http_edge(tmp_path, http_settings(write_keys(tmp_path))) as edge:
        async with aiohttp.ClientSession() as s:
            status, doc, _ = await post(s, edge.readings_url, body, tok=token("d-9", rsa=True))
        assert (status, doc) == (202, {"accepted": 10})
        assert keyed(stored(edge.buffer.path)) == keyed(
            Reading("d-9", k, TS + i * 1_000_000, v)
            for i in range(5)
            for k, v in (("temp", 20 + i), ("gps", {"lat": 52.1, "lon": i}))
        )


async def test_a_senml_pack_is_the_token_devices_sensors(tmp_path: Path) -> None:
    pack = [
        {"bn": "urn:dev:ow:10e2073a01080063:", "bt": TS_S, "n": "temp", "u": "Cel", "v": 23.1},
        {"n": "on", "vb": True, "t": 1},
        {"n": "label", "vs": "boiler"},
    ]
    async with http_edge(tmp_path, http_settings(write_keys(tmp_path))) as edge:
        async with aiohttp.ClientSession() as s:
            ok = await post(
                s, edge.readings_url, pack, tok=token(), content_type="application/senml+json"
            )
            bad = await post(
                s,
                edge.readings_url,
                [{"n": "x", "v": 1, "vs": "two values"}],
                tok=token(),
                content_type="application/senml+json",
            )
        assert ok[:2] == (202, {"accepted": 3})
        assert (bad[0], bad[1]["error"]) == (400, "bad-shape")
        prefix = "urn:dev:ow:10e2073a01080063:"
        assert set(stored(edge.buffer.path)) == {
            Reading("pump-1", prefix + "temp", TS, 23.1),
            Reading("pump-1", prefix + "on", TS + 1_000_000, True),
            Reading("pump-1", prefix + "label", TS, "boiler"),
        }


async def test_the_device_comes_from_the_token_never_the_body(tmp_path: Path) -> None:
    async with http_edge(tmp_path, http_settings(write_keys(tmp_path))) as edge:
        async with aiohttp.ClientSession() as s:
            ok = await post(
                s, edge.readings_url, {"device": "pump-1", "ts": TS_S, "t": 1}, tok=token()
            )
            other = await post(
                s,
                edge.readings_url,
                [{"ts": TS_S, "t": 2}, {"device": "pump-2", "t": 3}],
                tok=token(),
            )
            not_text = await post(s, edge.readings_url, {"device": 7, "t": 4}, tok=token())
            only = await post(s, edge.readings_url, {"device": "pump-1"}, tok=token())
        assert ok[:2] == (202, {"accepted": 1})
        assert (other[0], other[1]["error"]) == (403, "wrong-device")
        assert "pump-2" in other[1]["detail"]
        assert (not_text[0], not_text[1]["error"]) == (400, "bad-shape")
        assert (only[0], only[1]["error"]) == (422, "no-readings")
        assert stored(edge.buffer.path) == [Reading("pump-1", "t", TS, 1)]
        assert dict(edge.source.status.rejected) == {
            "wrong-device": 1,
            "bad-shape": 1,
            "no-readings": 1,
        }


async def test_every_error_status_with_its_json_reason(tmp_path: Path) -> None:
    settings = http_settings(write_keys(tmp_path), max_body_bytes=1024)
    good = {"ts": TS_S, "t": 1}
    async with http_edge(tmp_path, settings) as edge:
        url = edge.readings_url
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"body": good}, 401, "no-token"),
            ({"body": good, "headers": {"Authorization": "Basic dTpw"}}, 401, "no-token"),
            ({"body": good, "headers": {"Authorization": "Bearer "}}, 401, "no-token"),
            ({"body": good, "tok": "not.a.jwt"}, 401, "bad-token"),
            ({"data": b"{", "tok": token()}, 400, "bad-json"),
            ({"data": b'{"t": NaN}', "tok": token()}, 400, "bad-json"),
            ({"data": b'{"t": 1, "t": 2}', "tok": token()}, 400, "bad-json"),
            ({"data": b"\xff\xfe", "tok": token()}, 400, "bad-utf8"),
            ({"body": [1, 2], "tok": token()}, 400, "bad-shape"),
            ({"body": {"t": None}, "tok": token()}, 400, "bad-shape"),
            ({"body": {"ts": "yesterday", "t": 1}, "tok": token()}, 422, "bad-timestamp"),
            ({"body": {"": 1}, "tok": token()}, 422, "bad-name"),
            ({"body": {"ts": TS_S}, "tok": token()}, 422, "no-readings"),
            ({"body": [], "tok": token()}, 422, "no-readings"),
            ({"body": good, "tok": token(), "content_type": "text/plain"}, 415, "bad-content-type"),
            (
                {"body": good, "tok": token(), "content_type": "application/json; charset=latin-1"},
                415,
                "bad-content-type",
            ),
            (  # SenML is an array of records
                {"body": good, "tok": token(), "content_type": "application/senml+json"},
                400,
                "bad-shape",
            ),
            ({"data": b" " * 2000 + b"{}", "tok": token()}, 413, "too-large"),
        ]
        async with aiohttp.ClientSession() as s:
            for kwargs, want_status, want_error in cases:
                status, doc, headers = await post(s, url, **kwargs)
                assert (status, doc["error"]) == (want_status, want_error), kwargs
                assert isinstance(doc["detail"], str)
                assert doc["detail"]
                if status == 401:
                    assert headers["WWW-Authenticate"].startswith("Bearer")

            async def chunks() -> Any:
                for _ in range(20):
                    yield b" " * 100

            async with s.post(  # chunked: no Content-Length, the limit still holds
                url, data=chunks(), headers={**auth(token()), "Content-Type": "application/json"}
            ) as resp:
                assert resp.status == 413
                assert (await resp.json())["error"] == "too-large"
            async with s.get(url) as resp:
                assert resp.status == 405
                assert "POST" in resp.headers["Allow"]
                assert (await resp.json())["error"] == "method-not-allowed"
            async with s.get(edge.url + "/nope") as resp:
                assert (resp.status, (await resp.json())["error"]) == (404, "not-found")
            status, doc, _ = await post(s, url, good, tok=token())
            assert (status, doc) == (202, {"accepted": 1})
        assert stored(edge.buffer.path) == [Reading("pump-1", "t", TS, 1)]
        st = edge.source.status
        want: dict[str, int] = {}
        for _, _, reason in cases:
            want[reason] = want.get(reason, 0) + 1
        want["too-large"] += 1
        assert dict(st.rejected) == want
        assert st.messages == len(cases) + 2  # + chunked + the good one (404/405 are no POST)
        assert st.accepted == 1
        assert sum(st.responses.values()) == st.messages + 2


async def test_malformed_http_is_counted_without_tracebacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = [
        b"GARBAGE\r\n\r\n",
        b"POST /api/v1/readings HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST /api/v1/readings HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
    ]
    async with http_edge(tmp_path, http_settings(write_keys(tmp_path))) as edge:
        with caplog.at_level(logging.DEBUG):
            for raw in garbage:
                reader, writer = await asyncio.open_connection("127.0.0.1", edge.source.port)
                writer.write(raw)
                answer = await reader.read()  # aiohttp answers 400 and closes
                writer.close()
                assert answer.startswith(b"HTTP/1.0 400"), answer[:80]
            async with aiohttp.ClientSession() as s:
                status, _, _ = await post(s, edge.readings_url, {"ts": TS_S, "t": 1}, tok=token())
        assert status == 202
        st = edge.source.status
        assert (dict(st.rejected), st.messages, st.accepted) == ({"bad-http": 3}, 4, 1)
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
        assert next(r.message for r in caplog.records if "bad-http" in r.message).startswith(
            "source http: refused a message (bad-http)"
        )


# --------------------------------------------------------------------------- JWT attacks


def _attacks(tmp_path: Path) -> list[tuple[str, str, int, str]]:
    now = int(time.time())
    pem = public_pem(ed_key())
    other_key = Ed25519PrivateKey.generate()
    return [
        ("alg none", raw_token({"alg": "none", "kid": ED_KID}, claims(), None), 401, "bad-token"),
        (
            "alg none, no kid",
            raw_token({"alg": "none"}, claims(), None),
            401,
            "bad-token",
        ),
        (
            "HS256 signed with the public key",
            raw_token({"alg": "HS256", "kid": ED_KID, "typ": "JWT"}, claims(), pem),
            401,
            "bad-token",
        ),
        (
            "HS256 signed with the RSA public key",
            raw_token(
                {"alg": "HS256", "kid": RSA_KID}, claims(), (tmp_path / "rsa.pem").read_bytes()
            ),
            401,
            "bad-token",
        ),
        ("RS256 under the Ed25519 kid", token(rsa=True, kid=ED_KID), 401, "bad-token"),
        ("EdDSA under the RSA kid", token(kid=RSA_KID), 401, "bad-token"),
        ("unknown kid", token(kid="someone-else"), 401, "bad-token"),
        (
            "no kid",
            pyjwt.encode(claims(), ed_key(), algorithm="EdDSA"),
            401,
            "bad-token",
        ),
        (
            "signed by another key",
            pyjwt.encode(claims(), other_key, algorithm="EdDSA", headers={"kid": ED_KID}),
            401,
            "bad-token",
        ),
        ("expired", token(exp=now - 60, iat=now - 120, nbf=now - 120), 401, "token-expired"),
        ("no exp", token(exp=None), 401, "bad-token"),
        ("not yet valid (nbf)", token(nbf=now + 300), 401, "token-not-yet-valid"),
        ("issued in the future (iat)", token(iat=now + 300, nbf=None), 401, "token-not-yet-valid"),
        ("wrong audience", token(aud="cairn-api"), 401, "bad-token"),
        ("no audience", token(aud=None), 401, "bad-token"),
        ("no sub", token(sub=None), 401, "bad-token"),
        ("sub not a device id", token(device="a//b"), 401, "bad-token"),
        ("no tenant", token(tenant=None), 401, "bad-token"),
        ("wrong tenant", token(tenant="globex"), 403, "wrong-tenant"),
        ("tampered payload", _tamper(token()), 401, "bad-token"),
        ("garbage", "a" * 5000, 401, "bad-token"),
    ]


def _tamper(tok: str) -> str:
    head, payload, sig = tok.split(".")
    doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    doc["sub"] = "pump-2"
    raw = base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    return f"{head}.{raw}.{sig}"


async def test_jwt_attacks_are_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    keys = write_keys(tmp_path)
    attacks = _attacks(tmp_path)
    async with http_edge(tmp_path, http_settings(keys, leeway_s=5)) as edge:
        async with aiohttp.ClientSession() as s:
            for name, tok, want_status, want_error in attacks:
                status, doc, _ = await post(s, edge.readings_url, {"t": 1}, tok=tok)
                assert (status, doc["error"]) == (want_status, want_error), name
                if len(tok) > 4000:  # longer than a request line may be
                    continue
                with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                    await s.ws_connect(edge.ws_url, headers=auth(tok))
                assert err.value.status == want_status, name
        assert stored(edge.buffer.path) == []
        assert edge.source.verifier.cached == 0
        assert sum(edge.source.status.rejected.values()) == 2 * len(attacks) - 1
        assert edge.source.status.websockets_opened == 0


async def test_ws_upgrade_refused_with_the_same_status(tmp_path: Path) -> None:
    async with http_edge(tmp_path, http_settings(write_keys(tmp_path))) as edge:
        async with aiohttp.ClientSession() as s:
            for tok, want in ((None, 401), (token(tenant="globex"), 403), ("x.y.z", 401)):
                url = edge.ws_url + (f"?token={tok}" if tok else "")
                with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                    await s.ws_connect(url)
                assert err.value.status == want
        assert edge.source.status.websockets_opened == 0


async def test_issuer_is_checked_when_configured(tmp_path: Path) -> None:
    settings = http_settings(write_keys(tmp_path), issuer="cairn-hub")
    async with http_edge(tmp_path, settings) as edge:
        async with aiohttp.ClientSession() as s:
            wrong = await post(s, edge.readings_url, {"t": 1}, tok=token(iss="mallory"))
            missing = await post(s, edge.readings_url, {"t": 1}, tok=token())
            right = await post(s, edge.readings_url, {"t": 1}, tok=token(iss="cairn-hub"))
        assert [wrong[0], missing[0], right[0]] == [401, 401, 202]


# --------------------------------------------------------------------------- revocation


async def test_revocation_list_is_reread_and_applies_to_cached_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    revoked = tmp_path / "revoked.txt"
    revoked.write_text("# none yet\n")
    settings = http_settings(write_keys(tmp_path), revoked_file=str(revoked))
    tok_a = token("pump-1", jti="jti-a")
    tok_b = token("pump-2", jti="jti-b")
    async with http_edge(tmp_path, settings) as edge:
        revocations = edge.source.verifier.revocations
        async with aiohttp.ClientSession() as s:
            assert (await post(s, edge.readings_url, {"t": 1}, tok=tok_a))[0] == 202
            assert (await post(s, edge.readings_url, {"t": 1}, tok=tok_b))[0] == 202
            assert edge.source.verifier.cached == 2
            with caplog.at_level(logging.WARNING, "edge.sources.devtokens"):
                revoked.write_text("jti jti-a\nbogus line\ndevice pump-2  # stolen\n")
                await until(lambda: revocations.jtis == {"jti-a"}, "the list re-read")
            assert revocations.devices == {"pump-2"}
            assert any("line 2" in r.message for r in caplog.records)
            for tok, why in ((tok_a, "jti-a"), (tok_b, "pump-2")):
                status, doc, _ = await post(s, edge.readings_url, {"t": 2}, tok=tok)
                assert (status, doc["error"]) == (403, "revoked")
                assert why in doc["detail"]
            fresh = token("pump-1", jti="jti-c")
            assert (await post(s, edge.readings_url, {"t": 3}, tok=fresh))[0] == 202
            revoked.unlink()  # a vanished file keeps the last list in force
            await until(lambda: revocations.errors > 0, "the failed re-read")
            assert (await post(s, edge.readings_url, {"t": 2}, tok=tok_a))[0] == 403
            revoked.write_text("")
            await until(lambda: not revocations.devices, "the emptied list")
            assert (await post(s, edge.readings_url, {"t": 4}, tok=tok_b))[0] == 202
        assert sorted(r.value for r in stored(edge.buffer.path)) == [1, 1, 3, 4]


async def test_a_missing_revocation_file_or_bad_key_fails_at_start(tmp_path: Path) -> None:
    keys = write_keys(tmp_path)
    with pytest.raises(ConfigError, match="revoked_file"):
        HttpSource(
            http_settings(keys, revoked_file=str(tmp_path / "nope")), _NoSink(), EdgeStats(), "a"
        )
    (tmp_path / "bad.pem").write_text("not a key")
    bad = (type(keys[0])("k", tmp_path / "bad.pem"),)
    with pytest.raises(ConfigError, match="not a PEM public key"):
        HttpSource(http_settings(bad), _NoSink(), EdgeStats(), "a")
    (tmp_path / "small.pem").write_bytes(
        public_pem(generate_private_key(public_exponent=65537, key_size=1024))
    )
    small = (type(keys[0])("k", tmp_path / "small.pem"),)
    with pytest.raises(ConfigError, match="at least 2048"):
        HttpSource(http_settings(small), _NoSink(), EdgeStats(), "a")


class _NoSink:
    async def submit(self, *a: Any, **k: Any) -> None:  # pragma: no cover
        raise AssertionError


# --------------------------------------------------------------------------- limits


async def test_rate_limit_per_device_with_retry_after(tmp_path: Path) -> None:
    settings = http_settings(write_keys(tmp_path), rate_readings_per_s=0.01, rate_burst=3)
    async with http_edge(tmp_path, settings) as edge:
        async with aiohttp.ClientSession() as s:
            url, a, b = edge.readings_url, token("a"), token("b")
            too_many = await post(s, url, {"x": 1, "y": 2, "z": 3, "w": 4}, tok=a)
            assert (too_many[0], too_many[1]["error"]) == (413, "too-many-readings")
            assert (await post(s, url, {"x": 1, "y": 2}, tok=a))[0] == 202
            assert (await post(s, url, {"x": 3}, tok=a))[0] == 202
            status, doc, headers = await post(s, url, {"x": 4}, tok=a)
            assert (status, doc["error"]) == (429, "rate-limited")
            assert int(headers["Retry-After"]) >= 1
            assert (await post(s, url, {"x": 5, "y": 6, "z": 7}, tok=b))[0] == 202
        assert sorted(r.value for r in stored(edge.buffer.path)) == [1, 2, 3, 5, 6, 7]
        assert dict(edge.source.status.rejected) == {"too-many-readings": 1, "rate-limited": 1}


async def test_a_refusing_buffer_answers_503_and_counts_refused(tmp_path: Path) -> None:
    limits = BufferLimits(max_bytes=1 << 20, policy="refuse-new")
    async with http_edge(tmp_path, http_settings(write_keys(tmp_path)), limits) as edge:
        rng = random.Random(4)
        for i in range(1000):  # fill the budget with another source's readings
            block = [Reading("d", "s", 1000 * i + k, rng.random()) for k in range(1000)]
            try:
                await edge.batcher.submit(block, "other")
            except BufferFullError:
                break
        else:
            pytest.fail("the budget never filled")
        async with aiohttp.ClientSession() as s:
            status, doc, headers = await post(s, edge.readings_url, {"a": 1, "b": 2}, tok=token())
        assert (status, doc["error"]) == (503, "buffer-full")
        assert headers["Retry-After"] == "5"
        st = edge.source.status
        assert (dict(st.refused), dict(st.rejected), st.accepted) == ({"full": 2}, {}, 0)
        assert not any(r.device == "pump-1" for r in stored(edge.buffer.path))


# --------------------------------------------------------------------------- WebSocket


async def _ack(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=20)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    doc: dict[str, Any] = json.loads(msg.data)
    return doc


async def test_websocket_acks_each_message_by_id_after_commit(tmp_path: Path) -> None:
    settings = http_settings(write_keys(tmp_path), rate_readings_per_s=1, rate_burst=6)
    messages: list[str | bytes] = [
        json.dumps({"id": 1, "ts": TS_S, "temp": 21.5}),
        "{not json",
        json.dumps(
            {"id": "b", "readings": [{"ts": TS_S + 1, "temp": 22}, {"ts": TS_S + 2, "x": 1}]}
        ),
        json.dumps({"id": 3, "device": "pump-2", "temp": 1}),
        json.dumps({"id": 4, "readings": {"ts": "bad", "temp": 1}}),
        json.dumps({"id": None, "temp": 1}),
        json.dumps({"id": 5, "readings": [], "extra": 1}),
        json.dumps([1, 2]).encode(),
        json.dumps({"id": 6, "readings": {"ts": TS_S + 3, "hum": 40, "p": 1000}}).encode(),
        json.dumps({"id": 7, "readings": {"a": 1, "b": 2, "c": 3}}),  # over the burst left
    ]
    async with (
        http_edge(tmp_path, settings) as edge,
        aiohttp.ClientSession() as s,
        s.ws_connect(edge.ws_url, headers=auth(token())) as ws,
    ):
        for m in messages:
            await (ws.send_bytes(m) if isinstance(m, bytes) else ws.send_str(m))
        acks = [await _ack(ws) for _ in messages]
        assert not ws.closed
        # every ok ack came after its commit: all are in the file now
        committed = stored(edge.buffer.path)
        assert len(committed) == 5
        by_id: dict[Any, list[dict[str, Any]]] = {}
        for a in acks:
            by_id.setdefault(a["id"], []).append(a)
        assert by_id[1] == [{"id": 1, "status": "ok", "accepted": 1}]
        assert by_id["b"] == [{"id": "b", "status": "ok", "accepted": 2}]
        assert by_id[6] == [{"id": 6, "status": "ok", "accepted": 2}]
        assert (by_id[3][0]["error"], by_id[3][0]["code"]) == ("wrong-device", 403)
        assert (by_id[4][0]["error"], by_id[4][0]["code"]) == ("bad-timestamp", 422)
        assert (by_id[5][0]["error"], by_id[5][0]["code"]) == ("bad-shape", 400)
        assert (by_id[7][0]["error"], by_id[7][0]["code"]) == ("rate-limited", 429)
        assert by_id[7][0]["retry_after"] >= 1
        assert sorted(a["error"] for a in by_id[None]) == ["bad-json", "bad-shape", "bad-shape"]
        assert set(committed) == {
            Reading("pump-1", "temp", TS, 21.5),
            Reading("pump-1", "temp", TS + 1_000_000, 22),
            Reading("pump-1", "x", TS + 2_000_000, 1),
            Reading("pump-1", "hum", TS + 3_000_000, 40),
            Reading("pump-1", "p", TS + 3_000_000, 1000),
        }
        st = edge.source.status
        assert st.messages == len(messages)
        assert sum(st.rejected.values()) == 7
        assert (st.websockets_opened, st.websockets_open, st.accepted) == (1, 1, 5)
        await ws.close()
        await until(lambda: st.websockets_open == 0, "the socket counted closed")


async def test_websocket_token_in_query_and_expiry_closes_with_4401(tmp_path: Path) -> None:
    settings = http_settings(write_keys(tmp_path), leeway_s=0)
    short = token(exp=int(time.time()) + 4)  # the socket must open before it expires
    async with (
        http_edge(tmp_path, settings) as edge,
        aiohttp.ClientSession() as s,
        s.ws_connect(f"{edge.ws_url}?token={short}") as ws,
    ):
        await ws.send_str(json.dumps({"id": 1, "t": 1}))
        assert (await _ack(ws))["status"] == "ok"
        msg = await ws.receive(timeout=20)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert (ws.close_code, msg.extra) == (WS_CLOSE_TOKEN_EXPIRED, "token expired")
        assert [r.value for r in stored(edge.buffer.path)] == [1]


async def test_revoking_a_device_closes_its_websocket_with_4403(tmp_path: Path) -> None:
    revoked = tmp_path / "revoked.txt"
    revoked.write_text("")
    settings = http_settings(write_keys(tmp_path), revoked_file=str(revoked))
    async with (
        http_edge(tmp_path, settings) as edge,
        aiohttp.ClientSession() as s,
        s.ws_connect(edge.ws_url, headers=auth(token("pump-1"))) as ws1,
        s.ws_connect(edge.ws_url, headers=auth(token("pump-2"))) as ws2,
    ):
        revoked.write_text("device pump-1\n")
        msg = await ws1.receive(timeout=20)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws1.close_code == WS_CLOSE_REVOKED
        await ws2.send_str(json.dumps({"id": 1, "t": 1}))
        assert (await _ack(ws2))["status"] == "ok"
        assert stored(edge.buffer.path)[0].device == "pump-2"


async def test_stopping_closes_websockets_after_their_acks(tmp_path: Path) -> None:
    async with (
        http_edge(tmp_path, http_settings(write_keys(tmp_path))) as edge,
        aiohttp.ClientSession() as s,
    ):
        ws = await s.ws_connect(edge.ws_url, headers=auth(token()))
        for i in range(20):
            await ws.send_str(json.dumps({"id": i, "t": i}))
        acks = [await _ack(ws)]
        stopping = asyncio.create_task(edge.source.stop())
        while True:  # the device keeps reading, as a client does (it answers the close)
            msg = await ws.receive(timeout=20)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            acks.append(json.loads(msg.data))
        await stopping
        assert (ws.close_code, msg.extra) == (1001, "edge stopping")
        ids = [a["id"] for a in acks]
        assert len(ids) == len(set(ids))
        assert set(ids) <= set(range(20))
        # every message acknowledged ok is committed, and nothing else; a message left
        # unanswered when the socket closed was not stored either
        ok = {a["id"] for a in acks if a["status"] == "ok"}
        assert {r.value for r in stored(edge.buffer.path)} == ok
        assert {a["error"] for a in acks if a["status"] != "ok"} <= {"shutting-down"}


# --------------------------------------------------------------------------- config and service


def test_http_config_section_is_checked(tmp_path: Path) -> None:
    write_keys(tmp_path / "keys")
    base = write_config(tmp_path, extra="")
    good = (
        '[[http]]\nlisten = "0.0.0.0:8080"\nrevoked_file = "revoked.txt"\n'
        'keys = [{ kid = "hub", file = "keys/ed.pem" }]\n'
    )
    base.write_text(base.read_text() + good)
    [http] = load_config(base).http
    assert http.keys[0].file == tmp_path / "keys" / "ed.pem"
    assert http.revoked_file == str(tmp_path / "revoked.txt")
    assert (http.host, http.port, http.rate_burst) == ("0.0.0.0", 8080, 10_000)
    bad = {
        "[[http]]\n": "http[0].keys",
        '[[http]]\nkeys = [{ kid = "a", file = "k" }, { kid = "a", file = "k" }]\n': "kid",
        '[[http]]\nlisten = "nope"\nkeys = [{ kid = "a", file = "k" }]\n': "http[0].listen",
        '[[http]]\nrate_burst = 0\nkeys = [{ kid = "a", file = "k" }]\n': "rate_burst",
        '[[http]]\nmax_body_bytes = 10000000\nkeys = [{ kid = "a", file = "k" }]\n': "max_body",
        '[[http]]\nkeys = [{ kid = "a", file = "k" }]\n[[http]]\nkeys = [{ kid = "a", file = "k" }]\n': "name",
        '[[http]]\nwho = 1\nkeys = [{ kid = "a", file = "k" }]\n': "http[0].who",
    }
    for text, key in bad.items():
        path = write_config(tmp_path / "bad", extra=text)
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            load_config(path)


def test_the_hub_and_the_edge_agree_on_the_audience() -> None:
    assert AUDIENCE == DEVICE_AUDIENCE == "cairn-edge"


async def test_edge_service_with_a_hub_made_device_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hub.cli import main as hub_main

    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    (hub_dir / "hub.toml").write_text('[hub]\nstate_dir = "state"\n')
    hub_conf = str(hub_dir / "hub.toml")
    assert hub_main(["token", "public-key", "--config", hub_conf]) == 0
    (tmp_path / "hub.pem").write_text(capsys.readouterr().out)
    assert hub_main(["token", "public-key", "--config", hub_conf, "--kid"]) == 0
    kid = capsys.readouterr().out.strip()
    assert (
        hub_main(
            ["token", "device", "--config", hub_conf, "--tenant", "acme", "--device", "meter-7"]
        )
        == 0
    )
    device_token = capsys.readouterr().out.strip()
    assert hub_main(["token", "device", "--config", hub_conf, "--tenant", "acme",
                     "--device", "a//b"]) != 0  # fmt: skip
    capsys.readouterr()
    config = load_config(
        write_config(
            tmp_path,
            extra=(
                f'[[http]]\nlisten = "127.0.0.1:0"\nissuer = "cairn-hub"\n'
                f'keys = [{{ kid = "{kid}", file = "hub.pem" }}]\n'
            ),
        )
    )
    stop = asyncio.Event()
    service = asyncio.create_task(run_edge(config, stop=stop, handle_signals=False))
    port_file = tmp_path / "state" / "admin.port"
    await until(port_file.exists, "admin.port")
    status_url = f"http://127.0.0.1:{int(port_file.read_text())}/api/v1/status"
    try:

        async def listening() -> bool:
            doc = await asyncio.to_thread(http_json, status_url)
            return bool(doc["sources"].get("http", {}).get("connected"))

        await until(listening, "the HTTP source")
        listen = (await asyncio.to_thread(http_json, status_url))["sources"]["http"]["listen"]
        async with aiohttp.ClientSession() as s:
            status, doc, _ = await post(
                s,
                f"http://{listen}/api/v1/readings",
                {"ts": TS_S, "kwh": 12.5},
                tok=device_token,
            )
        assert (status, doc) == (202, {"accepted": 1})
        doc = await asyncio.to_thread(http_json, status_url)
        src = doc["sources"]["http"]
        assert (src["messages"], src["accepted"], src["responses"]) == (1, 1, {"202": 1})
        assert src["tokens_cached"] == 1
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)
    assert stored(config.edge.buffer_path) == [Reading("meter-7", "kwh", TS, 12.5)]
