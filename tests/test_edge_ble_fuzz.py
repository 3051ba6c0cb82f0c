"""Property and fuzz tests of the BLE decoders and source (hypothesis).

Random bytes as manufacturer and service data, random advertisements interleaved with the
recorded good ones: no exception escapes a decoder or the source, every advertisement has
exactly one outcome in the counters, and every good advertisement's readings are kept.
"""

from __future__ import annotations

import asyncio
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.errors import PayloadError
from contract.model import FLAG_EDGE_STAMPED, Reading, valid_name
from edge.sources.ble import BleSource, device_id_for
from edge.sources.ble_decoders import (
    BTHOME_UUID,
    DECODERS,
    REASONS,
    RUUVI_COMPANY_ID,
    Advertisement,
    BleDecoder,
)
from edge.stats import EdgeStats
from tests.polling import until
from tests.test_edge_ble_support import (
    BTHOME_BUTTON,
    BTHOME_DOUBLE_TEMP,
    BTHOME_PRESSURE,
    BTHOME_SHELLY,
    BTHOME_TEMP_HUM,
    RUUVI_MAX,
    RUUVI_MIN,
    RUUVI_VALID,
    TS,
    RecordingSink,
    ScannerLog,
    ble_settings,
    settled,
)

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# BTHome object ids that bthome-ble knows, to get past the first byte more often.
_OBJECT_IDS = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x0C, 0x2E, 0x3A, 0x3C, 0x45, 0x50, 0x53, 0x54]

bthome_data = st.one_of(
    st.binary(max_size=40),
    st.binary(max_size=30).map(lambda b: b"\x40" + b),
    st.lists(st.tuples(st.sampled_from(_OBJECT_IDS), st.binary(max_size=5)), max_size=6).map(
        lambda objs: b"\x40" + b"".join(bytes([i]) + d for i, d in objs)
    ),
)
ruuvi_data = st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=23, max_size=23).map(lambda b: b"\x05" + b),
    st.binary(max_size=30).map(lambda b: b"\x05" + b),
)
uuids = st.one_of(
    st.just(BTHOME_UUID),
    st.uuids().map(str),
    st.text(max_size=12),
)
manufacturer = st.dictionaries(
    st.one_of(st.just(RUUVI_COMPANY_ID), st.integers(0, 0xFFFF)),
    st.one_of(ruuvi_data, st.binary(max_size=31)),
    max_size=3,
)
service = st.dictionaries(uuids, st.one_of(bthome_data, st.binary(max_size=31)), max_size=3)


def _bad_address(i: int) -> str:
    return f"F0:00:00:00:{i >> 8:02X}:{i & 0xFF:02X}"


random_ads = st.lists(
    st.tuples(
        st.one_of(st.none(), st.text(max_size=20)),
        st.integers(-127, 20),
        manufacturer,
        service,
    ),
    max_size=25,
)


@FUZZ
@given(
    decoder=st.sampled_from(list(BleDecoder)),
    name=st.one_of(st.none(), st.text(max_size=30)),
    mfr=manufacturer,
    svc=service,
)
def test_decoders_raise_only_payload_errors_and_give_plain_values(
    decoder: BleDecoder,
    name: str | None,
    mfr: dict[int, bytes],
    svc: dict[str, bytes],
) -> None:
    d = DECODERS[decoder]
    adv = Advertisement("A4:C1:38:8D:18:B2", name, -60, mfr, svc, TS)
    assert isinstance(d.data(adv), bytes)
    if not d.relevant(adv):
        return
    reason = None
    try:
        decoded = d.decode(adv)
    except PayloadError as exc:
        reason = exc.reason
    if reason is not None:
        assert reason in REASONS
        return
    assert decoded.values
    for sensor, value in decoded.values.items():
        assert isinstance(sensor, str)
        assert isinstance(value, bool | int | float | str | dict), (sensor, value)
        if isinstance(value, float):
            assert math.isfinite(value)


GOOD_BTHOME = [BTHOME_TEMP_HUM, BTHOME_PRESSURE, BTHOME_SHELLY, BTHOME_DOUBLE_TEMP, BTHOME_BUTTON]
GOOD_RUUVI = [RUUVI_VALID, RUUVI_MAX, RUUVI_MIN]


def _good(decoder: BleDecoder, i: int) -> Advertisement:
    address = f"0A:00:00:00:{i >> 8:02X}:{i & 0xFF:02X}"
    if decoder is BleDecoder.RUUVI:
        payload = GOOD_RUUVI[i % len(GOOD_RUUVI)]
        return Advertisement(address, "Ruuvi", -70, {RUUVI_COMPANY_ID: payload}, {}, TS + i)
    if decoder is BleDecoder.BTHOME:
        payload = GOOD_BTHOME[i % len(GOOD_BTHOME)]
        return Advertisement(address, "ATC", -60, {}, {BTHOME_UUID: payload}, TS + i)
    return Advertisement(address, "tag", -50, {0x004C: bytes([i % 256])}, {}, TS + i)


async def _scenario(
    decoder: BleDecoder, ads: list[Advertisement], good: list[Advertisement]
) -> tuple[BleSource, RecordingSink]:
    sink = RecordingSink()
    allow = {} if decoder is not BleDecoder.RAW else {"names": ("*",), "addresses": ()}
    source = BleSource(
        ble_settings(decoder=decoder, **allow),
        sink,
        EdgeStats(),
        scanner_factory=ScannerLog().factory(),
    )
    async with source:
        task = asyncio.create_task(source.run())
        await until(lambda: source.connected, "scanning")
        for adv in ads:
            source.on_advertisement(adv)
        await until(lambda: settled(source), "every advertisement counted", timeout=30)
        await source.stop()
        await asyncio.wait_for(task, 10)
    return source, sink


@FUZZ
@given(
    decoder=st.sampled_from(list(BleDecoder)),
    bad=random_ads,
    n_good=st.integers(0, 12),
    order=st.randoms(use_true_random=False),
)
def test_good_advertisements_among_garbage_are_all_kept_and_counts_add_up(
    decoder: BleDecoder,
    bad: list[tuple[str | None, int, dict[int, bytes], dict[str, bytes]]],
    n_good: int,
    order: object,
) -> None:
    good = [_good(decoder, i) for i in range(n_good)]
    garbage = [
        Advertisement(_bad_address(i), name or None, rssi, mfr, svc, TS + 1000 + i)
        for i, (name, rssi, mfr, svc) in enumerate(bad)
    ]
    ads = good + garbage
    order.shuffle(ads)  # type: ignore[attr-defined]
    source, sink = asyncio.run(_scenario(decoder, ads, good))
    status = source.status
    d = DECODERS[decoder]
    assert status.seen == len(ads)
    assert status.not_kept + status.messages == len(ads)
    if decoder is not BleDecoder.RAW:  # (raw also ignores devices without a name here)
        assert status.not_kept == sum(1 for a in ads if not d.relevant(a))
    assert settled(source)
    assert status.refused_advertisements == 0
    assert not status.refused
    assert set(status.rejected) <= {*REASONS, "bad-name"}, status.rejected
    assert "internal-error" not in status.rejected
    expected: set[Reading] = set()
    for adv in good:
        values = d.decode(adv).values
        dev = device_id_for(adv.address)
        expected |= {
            Reading(dev, s, adv.timestamp, v, FLAG_EDGE_STAMPED) for s, v in values.items()
        }
    got = set(sink.readings)
    assert expected <= got
    assert all(valid_name(r.sensor) and valid_name(r.device) for r in got)
    assert len(sink.readings) == len(got)  # no reading twice
