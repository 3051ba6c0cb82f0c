"""The BLE source: recorded advertisements through the scanner's path into a real buffer.

The radio itself is not tested (this machine has no Bluetooth: FACTS.md); the real bleak is,
as far as it goes here: it fails to find an adapter, which the source must report and retry.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from contract.errors import ConfigError, PayloadError
from contract.model import FLAG_EDGE_STAMPED, Reading
from edge.batcher import BatcherClosedError
from edge.buffer import BufferFullError, BufferLimits
from edge.config import BleSettings, ScanningMode, load_config
from edge.service import run_edge
from edge.sources.ble import BleakAdvertisementScanner, BleSource, device_id_for
from edge.sources.ble_decoders import (
    BTHOME_UUID,
    Advertisement,
    BleDecoder,
    decode_bthome,
    decode_raw,
    decode_ruuvi,
)
from edge.stats import EdgeStats
from tests.polling import until
from tests.test_edge_ble_support import (
    ATC,
    BTHOME_BUTTON,
    BTHOME_DIMMER,
    BTHOME_DOUBLE_TEMP,
    BTHOME_PRESSURE,
    BTHOME_SHELLY,
    BTHOME_TEMP_HUM,
    RUUVI,
    RUUVI_INVALID,
    RUUVI_MAX,
    RUUVI_MIN,
    RUUVI_VALID,
    SHELLY,
    TS,
    RecordingSink,
    ScannerLog,
    ble_edge,
    ble_settings,
    bthome,
    ruuvi,
    settled,
)
from tests.test_edge_support import http_json, stored, write_config

pytestmark = pytest.mark.timeout(60)

E = FLAG_EDGE_STAMPED


# --------------------------------------------------------------------------- decoders


def test_bthome_published_examples_decode_to_bthome_bles_values() -> None:
    assert decode_bthome(bthome(BTHOME_TEMP_HUM)).values == {
        "temperature": 25.06,
        "humidity": 50.55,
    }
    assert decode_bthome(bthome(BTHOME_PRESSURE)).values == {"pressure": 1008.83}
    shelly = decode_bthome(bthome(BTHOME_SHELLY, SHELLY, "SBHT-103C"))
    assert shelly.values == {"battery": 100, "humidity": 52, "temperature": 27.8, "light": True}
    assert shelly.counted  # packet id 46: marks repeats, is not a reading
    assert not decode_bthome(bthome(BTHOME_TEMP_HUM)).counted
    assert decode_bthome(bthome(BTHOME_DOUBLE_TEMP)).values == {
        "temperature_1": 25.06,
        "temperature_2": 25.11,
    }
    assert decode_bthome(bthome(BTHOME_BUTTON)).values == {"button": "press"}
    assert decode_bthome(bthome(BTHOME_DIMMER)).values == {
        "dimmer": {"event": "rotate_left", "steps": 3}
    }


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "bad-bthome"),
        (b"\x40", "bad-bthome"),  # no object
        (b"\x40\x02\xca", "bad-bthome"),  # truncated temperature
        (b"\x60\x02\xca\x09", "bad-bthome"),  # version 3
        (b"\x41\xa4\x72\x66\xc9\x5f\x73\x00\x11\x22\x33\x78\x23\x72\x14", "encrypted"),
        (b"\x40\xfe\xca\x09", "bad-bthome"),  # unknown object id first
    ],
)
def test_bthome_bad_data_is_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as err:
        decode_bthome(bthome(payload))
    assert err.value.reason == reason


def test_ruuvi_df5_official_test_vectors() -> None:
    valid = decode_ruuvi(ruuvi(RUUVI_VALID))
    assert valid.values == {
        "temperature": 24.3,
        "humidity": 53.49,
        "pressure": 1000.44,  # 100044 Pa
        "acceleration_x": 0.004,
        "acceleration_y": -0.004,
        "acceleration_z": 1.036,
        "voltage": 2.977,
        "tx_power": 4,
        "movement_counter": 66,
        "measurement_sequence": 205,
    }
    assert valid.counted
    assert decode_ruuvi(ruuvi(RUUVI_MAX)).values == {
        "temperature": 163.835,
        "humidity": 163.835,
        "pressure": 1155.34,
        "acceleration_x": 32.767,
        "acceleration_y": 32.767,
        "acceleration_z": 32.767,
        "voltage": 3.646,
        "tx_power": 20,
        "movement_counter": 254,
        "measurement_sequence": 65534,
    }
    assert decode_ruuvi(ruuvi(RUUVI_MIN)).values == {
        "temperature": -163.835,
        "humidity": 0.0,
        "pressure": 500.0,
        "acceleration_x": -32.767,
        "acceleration_y": -32.767,
        "acceleration_z": -32.767,
        "voltage": 1.6,
        "tx_power": -40,
        "movement_counter": 0,
        "measurement_sequence": 0,
    }
    with pytest.raises(PayloadError) as err:  # every field "not available"
        decode_ruuvi(ruuvi(RUUVI_INVALID))
    assert err.value.reason == "no-readings"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "bad-ruuvi"),
        (RUUVI_VALID[:-1], "bad-ruuvi"),
        (RUUVI_VALID + b"\x00", "bad-ruuvi"),
        (bytes.fromhex("03291A1ECE1EFC18F94202CA0B53"), "unsupported-format"),  # format 3
    ],
)
def test_ruuvi_bad_frames_are_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as err:
        decode_ruuvi(ruuvi(payload))
    assert err.value.reason == reason


def test_raw_keeps_the_bytes_as_hex() -> None:
    adv = Advertisement(
        ATC,
        None,
        -50,
        {0x004C: b"\x02\x15\xaa", 0x0499: RUUVI_VALID},
        {BTHOME_UUID: b"\x40\x00", "12345678-1234-5678-1234-56789abcdef0": b""},
        TS,
    )
    assert decode_raw(adv).values == {
        "manufacturer/004c": "0215aa",
        "manufacturer/0499": RUUVI_VALID.hex(),
        "service/fcd2": "4000",
        "service/12345678-1234-5678-1234-56789abcdef0": "",
    }


# --------------------------------------------------------------------------- the source


async def test_recorded_advertisements_become_exact_readings_in_the_buffer(
    tmp_path: Path,
) -> None:
    settings = ble_settings(devices=((ATC, "greenhouse-1"),), addresses=(SHELLY,))
    async with ble_edge(tmp_path, settings) as edge:
        src = edge.source
        src.on_advertisement(bthome(BTHOME_TEMP_HUM, ts=TS))
        src.on_advertisement(bthome(BTHOME_SHELLY, SHELLY, "SBHT-103C", ts=TS + 1, rssi=-71))
        src.on_advertisement(bthome(BTHOME_BUTTON, ts=TS + 2))
        src.on_advertisement(ruuvi(RUUVI_VALID))  # no BTHome data: not for this decoder
        await until(lambda: settled(src), "every advertisement counted")
        await until(lambda: len(stored(tmp_path / "buffer.sqlite3")) == 7, "7 readings stored")
        shelly = device_id_for(SHELLY)
        assert shelly == "ble-5448e68f80a5"
        assert set(stored(tmp_path / "buffer.sqlite3")) == {
            Reading("greenhouse-1", "temperature", TS, 25.06, E),
            Reading("greenhouse-1", "humidity", TS, 50.55, E),
            Reading(shelly, "battery", TS + 1, 100, E),
            Reading(shelly, "humidity", TS + 1, 52, E),
            Reading(shelly, "temperature", TS + 1, 27.8, E),
            Reading(shelly, "light", TS + 1, True, E),
            Reading("greenhouse-1", "button", TS + 2, "press", E),
        }
        st = src.status
        assert (st.seen, st.not_kept, st.messages, st.stored) == (4, 1, 3, 3)
        assert st.accepted == 7
        doc = edge.stats.as_json()["sources"]["ble"]
        assert doc["devices"]["greenhouse-1"] == {
            "address": ATC,
            "name": "ATC_8D18B2",
            "rssi": -60,
            "last_seen_us": TS + 2,
            "advertisements": 2,
        }
        assert doc["devices"][shelly]["rssi"] == -71
        assert doc["adapter"] == "scanning (passive) on default adapter"
        assert doc["connected"] is True


async def test_repeats_of_one_measurement_are_one_reading(tmp_path: Path) -> None:
    async with ble_edge(tmp_path, ble_settings()) as edge:
        src = edge.source
        for i in range(5):  # the same Shelly packet (packet id 46) heard five times
            src.on_advertisement(bthome(BTHOME_SHELLY, SHELLY, "SBHT-103C", ts=TS + i))
        next_packet = bytes.fromhex("40002f01641e012e34451601")  # packet id 47
        src.on_advertisement(bthome(next_packet, SHELLY, "SBHT-103C", ts=TS + 10))
        src.on_advertisement(bthome(next_packet, SHELLY, "SBHT-103C", ts=TS + 11))
        # No packet id: an equal advertisement may be a new measurement of the same value.
        src.on_advertisement(bthome(BTHOME_TEMP_HUM, ts=TS + 20))
        src.on_advertisement(bthome(BTHOME_TEMP_HUM, ts=TS + 21))
        await until(lambda: settled(src), "every advertisement counted")
        await until(lambda: src.status.accepted == 12, "12 readings committed")
        got = stored(tmp_path / "buffer.sqlite3")
        assert sorted({r.ts for r in got}) == [TS, TS + 10, TS + 20, TS + 21]
        assert len(got) == 12
        assert src.status.duplicates == 5
        assert src.status.stored == 4
        assert src.status.devices[SHELLY].advertisements == 7  # RSSI kept from every one


async def test_ruuvi_sequence_number_dedupes_and_invalid_fields_are_skipped(
    tmp_path: Path,
) -> None:
    async with ble_edge(tmp_path, ble_settings(decoder=BleDecoder.RUUVI)) as edge:
        src = edge.source
        src.on_advertisement(ruuvi(RUUVI_VALID, ts=TS))
        src.on_advertisement(ruuvi(RUUVI_VALID, ts=TS + 1))  # sequence 205 again
        no_humidity = bytearray(RUUVI_VALID)
        no_humidity[3:5] = b"\xff\xff"
        no_humidity[16:18] = b"\x00\xce"  # sequence 206
        src.on_advertisement(ruuvi(bytes(no_humidity), ts=TS + 2))
        src.on_advertisement(ruuvi(RUUVI_INVALID, ts=TS + 3))
        await until(lambda: settled(src), "every advertisement counted")
        await until(lambda: src.status.accepted == 19, "19 readings committed")
        got = stored(tmp_path / "buffer.sqlite3")
        dev = device_id_for(RUUVI)
        assert {r.sensor for r in got if r.ts == TS + 2} == {
            "temperature",
            "pressure",
            "acceleration_x",
            "acceleration_y",
            "acceleration_z",
            "voltage",
            "tx_power",
            "movement_counter",
            "measurement_sequence",
        }
        assert Reading(dev, "measurement_sequence", TS + 2, 206, E) in got
        assert len(got) == 19
        assert src.status.duplicates == 1
        assert dict(src.status.rejected) == {"no-readings": 1}


async def test_allowlist_by_address_name_and_pattern(tmp_path: Path) -> None:
    other = "11:22:33:44:55:66"
    settings = ble_settings(addresses=(SHELLY,), names=("Kitchen", "ATC_*"))
    async with ble_edge(tmp_path, settings) as edge:
        src = edge.source
        src.on_advertisement(bthome(BTHOME_PRESSURE, SHELLY.lower(), None, ts=TS))  # address
        src.on_advertisement(bthome(BTHOME_PRESSURE, other, "Kitchen", ts=TS + 1))  # name
        src.on_advertisement(bthome(BTHOME_PRESSURE, ATC, "ATC_8D18B2", ts=TS + 2))  # pattern
        src.on_advertisement(bthome(BTHOME_PRESSURE, "AA:AA:AA:AA:AA:AA", "kitchen", ts=TS + 3))
        src.on_advertisement(bthome(BTHOME_PRESSURE, "BB:BB:BB:BB:BB:BB", None, ts=TS + 4))
        await until(lambda: settled(src), "every advertisement counted")
        await until(lambda: src.status.accepted == 3, "3 readings committed")
        assert {(r.device, r.ts) for r in stored(tmp_path / "buffer.sqlite3")} == {
            (device_id_for(SHELLY), TS),
            (device_id_for(other), TS + 1),
            (device_id_for(ATC), TS + 2),
        }
        assert (src.status.not_kept, src.status.messages) == (2, 3)


async def test_malformed_advertisements_are_counted_and_neighbours_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with ble_edge(tmp_path, ble_settings()) as edge:
        src = edge.source
        bad = [b"", b"\x40", b"\x60\x02\xca\x09", b"\x41" + bytes(14), b"\x40\x02\xca"]
        for i, payload in enumerate(bad):
            src.on_advertisement(bthome(BTHOME_PRESSURE, f"00:00:00:00:00:{i:02X}", ts=TS + i))
            src.on_advertisement(bthome(payload, f"00:00:00:00:01:{i:02X}", ts=TS + i))
        await until(lambda: settled(src), "every advertisement counted")
        await until(lambda: src.status.accepted == 5, "the 5 good ones committed")
        assert {r.device for r in stored(tmp_path / "buffer.sqlite3")} == {
            device_id_for(f"00:00:00:00:00:{i:02X}") for i in range(5)
        }
        assert dict(src.status.rejected) == {"bad-bthome": 4, "encrypted": 1}
        assert edge.stats.counters["messages-rejected"] == 5
        lines = [r.getMessage() for r in caplog.records if r.name == "edge.stats"]
        assert any("(bad-bthome) on 00:00:00:00:01:00" in line for line in lines)
        assert any(
            "(encrypted)" in line and f"payload 's:{BTHOME_UUID}:41000000" in line for line in lines
        )


async def test_a_full_buffer_under_refuse_new_refuses_ble_readings_counted(
    tmp_path: Path,
) -> None:
    limits = BufferLimits(max_bytes=1 << 20, policy="refuse-new")
    async with ble_edge(tmp_path, ble_settings(), limits=limits) as edge:
        rng = random.Random(4)
        for i in range(1000):  # fill the budget with another source's readings
            block = [Reading("d", "s", 1000 * i + k, rng.random()) for k in range(1000)]
            try:
                await edge.batcher.submit(block, "other")
            except BufferFullError:
                break
        else:
            pytest.fail("the budget never filled")
        src = edge.source
        src.on_advertisement(bthome(BTHOME_TEMP_HUM, ts=TS))
        src.on_advertisement(bthome(BTHOME_PRESSURE, "00:00:00:00:00:01", ts=TS + 1))
        await until(lambda: settled(src), "every advertisement counted")
        assert src.status.refused_advertisements == 2
        assert src.status.refused == {"full": 3}
        assert edge.stats.counters["readings-refused"] == 3 + 1000
        assert src.status.stored == 0
        doc = edge.stats.as_json()["sources"]["ble"]
        assert (doc["refused"], doc["refused_advertisements"]) == ({"full": 3}, 2)


async def test_a_refusing_sink_counts_refused_readings_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = RecordingSink()
    stats = EdgeStats()
    log = ScannerLog()
    async with BleSource(ble_settings(), sink, stats, scanner_factory=log.factory()) as src:
        task = asyncio.create_task(src.run())
        await until(lambda: src.connected, "scanning")
        sink.refuse = BatcherClosedError()
        src.on_advertisement(bthome(BTHOME_TEMP_HUM))
        await until(lambda: src.status.refused_advertisements == 1, "the refusal counted")
        sink.refuse = PayloadError("too-large", "larger than the buffer budget")
        src.on_advertisement(bthome(BTHOME_PRESSURE, ts=TS + 1))
        await until(lambda: src.status.refused_advertisements == 2, "the second one counted")
        sink.refuse = None
        src.on_advertisement(bthome(BTHOME_PRESSURE, ts=TS + 2))
        await until(lambda: settled(src) and src.status.stored == 1, "the third stored")
        assert src.status.refused == {"closed": 2, "too-large": 1}
        assert stats.counters["readings-refused"] == 3
        assert sink.readings == [Reading(device_id_for(ATC), "pressure", TS + 2, 1008.83, E)]
        assert not task.done()
        assert any(
            "refused 2 readings (closed)" in r.getMessage()
            and "BLE cannot resend" in r.getMessage()
            for r in caplog.records
        )
        await src.stop()
        await asyncio.wait_for(task, 5)


async def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    sink = RecordingSink()
    sink.gate = asyncio.Event()  # commits hang (a stuck disk)
    stats = EdgeStats()
    log = ScannerLog()
    settings = ble_settings(queue_size=3)
    async with BleSource(settings, sink, stats, scanner_factory=log.factory()) as src:
        task = asyncio.create_task(src.run())
        await until(lambda: src.connected, "scanning")
        for i in range(5):
            src.on_advertisement(bthome(BTHOME_PRESSURE, f"00:00:00:00:00:{i:02X}", ts=TS + i))
        assert dict(src.status.rejected) == {"queue-full": 2}
        sink.gate.set()
        await until(lambda: settled(src), "every advertisement counted")
        assert {r.ts for r in sink.readings} == {TS, TS + 1, TS + 2}
        src.on_advertisement(bthome(BTHOME_PRESSURE, "00:00:00:00:00:09", ts=TS + 9))
        await until(lambda: len(sink.readings) == 4, "room again after the commit")
        await src.stop()
        await asyncio.wait_for(task, 5)


async def test_bad_value_from_the_codec_refuses_only_its_own_advertisement() -> None:
    class PickySink(RecordingSink):
        async def submit(self, readings, source, digest=None):  # type: ignore[no-untyped-def]
            if any(r.value == 1008.83 for r in readings):
                raise PayloadError("bad-value", "cannot carry it")
            await super().submit(readings, source, digest)

    sink = PickySink()
    log = ScannerLog()
    async with BleSource(ble_settings(), sink, EdgeStats(), scanner_factory=log.factory()) as src:
        task = asyncio.create_task(src.run())
        await until(lambda: src.connected, "scanning")
        src.on_advertisement(bthome(BTHOME_TEMP_HUM, "00:00:00:00:00:01"))
        src.on_advertisement(bthome(BTHOME_PRESSURE, "00:00:00:00:00:02"))
        src.on_advertisement(bthome(BTHOME_BUTTON, "00:00:00:00:00:03"))
        await until(lambda: settled(src), "every advertisement counted")
        assert {r.sensor for r in sink.readings} == {"temperature", "humidity", "button"}
        assert (src.status.stored, src.status.refused_advertisements) == (2, 1)
        assert src.status.refused == {"bad-value": 1}
        await src.stop()
        await asyncio.wait_for(task, 5)


# --------------------------------------------------------------------------- the adapter


async def test_adapter_failures_are_a_status_and_retried_then_scanning_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = ScannerLog(failures={ScanningMode.PASSIVE: 3, ScanningMode.ACTIVE: 3})
    sink = RecordingSink()
    src = BleSource(ble_settings(), sink, EdgeStats(), scanner_factory=log.factory())
    async with src:
        task = asyncio.create_task(src.run())
        await until(lambda: src.status.adapter.startswith("unavailable:"), "the status line")
        assert src.status.adapter == "unavailable: OSError: adapter hci0 is powered off"
        assert not src.connected
        await until(lambda: src.connected, "scanning after the adapter came back")
        # Three rounds of passive-then-active failed, the fourth passive start worked.
        assert log.starts == [ScanningMode.PASSIVE, ScanningMode.ACTIVE] * 3 + [
            ScanningMode.PASSIVE
        ]
        assert src.status.adapter == "scanning (passive) on default adapter"
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert (
            warnings.count(
                "source ble: adapter: unavailable: OSError: adapter hci0 is powered off; "
                "retrying in " + warnings[0].split("retrying in ")[1]
            )
            == 1
        )  # the first failure at WARNING, the retries below it
        await src.stop()
        await asyncio.wait_for(task, 5)
        assert log.running == []
        assert src.status.adapter == "stopped"


async def test_a_hung_scanner_start_is_a_failure_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge.sources.ble._START_TIMEOUT_S", 0.05)
    log = ScannerLog(hang=True)
    src = BleSource(ble_settings(), RecordingSink(), EdgeStats(), scanner_factory=log.factory())
    async with src:
        task = asyncio.create_task(src.run())
        await until(lambda: len(log.starts) >= 4, "two rounds of start attempts")
        assert src.status.adapter == "unavailable: the scanner did not start within 0.05 s"
        log.hang = False
        await until(lambda: src.connected, "scanning once starts answer")
        await src.stop()
        await asyncio.wait_for(task, 5)


async def test_passive_unsupported_falls_back_to_active_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = ScannerLog(failures={ScanningMode.PASSIVE: 1})
    src = BleSource(ble_settings(), RecordingSink(), EdgeStats(), scanner_factory=log.factory())
    async with src:
        task = asyncio.create_task(src.run())
        await until(lambda: src.connected, "scanning")
        assert log.starts == [ScanningMode.PASSIVE, ScanningMode.ACTIVE]
        assert src.status.scanning_mode == "active"
        assert any("passive scanning unavailable" in r.getMessage() for r in caplog.records)
        await src.stop()
        await asyncio.wait_for(task, 5)


async def test_a_silent_scanner_is_restarted_by_the_watchdog() -> None:
    log = ScannerLog()
    src = BleSource(
        ble_settings(watchdog_s=0.2), RecordingSink(), EdgeStats(), scanner_factory=log.factory()
    )
    async with src:
        task = asyncio.create_task(src.run())
        await until(lambda: src.status.scanner_restarts >= 2, "two watchdog restarts")
        assert log.stops >= 2
        assert len(log.running) <= 1
        await src.stop()
        await asyncio.wait_for(task, 5)


async def test_real_bleak_without_bluetooth_reports_and_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    starts = 0

    def counting(settings, mode, callback):  # type: ignore[no-untyped-def]
        nonlocal starts
        starts += 1
        return BleakAdvertisementScanner(settings, mode, callback)

    src = BleSource(
        ble_settings(adapter="hci0"), RecordingSink(), EdgeStats(), scanner_factory=counting
    )
    async with src:
        task = asyncio.create_task(src.run())
        await until(lambda: starts >= 6, "three rounds of passive and active attempts")
        assert src.status.adapter.startswith("unavailable: ")
        assert not src.connected
        assert not task.done()
        assert any("adapter: unavailable:" in r.getMessage() for r in caplog.records)
        await src.stop()
        await asyncio.wait_for(task, 5)


async def test_the_bleak_callback_feeds_the_same_path(tmp_path: Path) -> None:
    async with ble_edge(tmp_path, ble_settings(decoder=BleDecoder.RUUVI)) as edge:
        adapter = BleakAdvertisementScanner(
            edge.source.settings, ScanningMode.PASSIVE, edge.source.on_advertisement
        )
        device = BLEDevice(RUUVI, "Ruuvi 884F", None)
        data = AdvertisementData(
            local_name=None,
            manufacturer_data={0x0499: RUUVI_VALID},
            service_data={},
            service_uuids=[],
            tx_power=None,
            rssi=-77,
            platform_data=(),
        )
        adapter.on_detection(device, data)
        await until(lambda: edge.source.status.accepted == 10, "10 readings committed")
        got = stored(tmp_path / "buffer.sqlite3")
        assert {r.sensor for r in got} >= {"temperature", "humidity", "pressure"}
        assert {(r.device, r.flags) for r in got} == {(device_id_for(RUUVI), E)}
        state = edge.source.status.devices[RUUVI]
        assert (state.rssi, state.name) == (-77, "Ruuvi 884F")


def test_bleak_passive_patterns_follow_the_decoder() -> None:
    from bleak.assigned_numbers import AdvertisementDataType

    args = BleakAdvertisementScanner(
        ble_settings(adapter="hci1"), ScanningMode.PASSIVE, lambda _a: None
    )._bluez_args()
    assert args["adapter"] == "hci1"
    assert [tuple(p) for p in args["or_patterns"]] == [
        (0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xd2\xfc")
    ]
    ruuvi_args = BleakAdvertisementScanner(
        ble_settings(decoder=BleDecoder.RUUVI), ScanningMode.PASSIVE, lambda _a: None
    )._bluez_args()
    assert [tuple(p) for p in ruuvi_args["or_patterns"]] == [
        (0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x99\x04")
    ]
    active = BleakAdvertisementScanner(ble_settings(), ScanningMode.ACTIVE, lambda _a: None)
    assert active._bluez_args() == {}


# --------------------------------------------------------------------------- config, service


def test_config_ble_section(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        extra=(
            "[[ble]]\n"
            'name = "yard"\ndecoder = "ruuvi"\nadapter = "hci1"\n'
            'addresses = ["cb:b8:33:4c:88:4f"]\nnames = ["Ruuvi *"]\n'
            'devices = { "A4:C1:38:8D:18:B2" = "greenhouse-1" }\n'
        ),
    )
    (ble,) = load_config(path).ble
    assert ble == BleSettings(
        name="yard",
        adapter="hci1",
        decoder=BleDecoder.RUUVI,
        addresses=("CB:B8:33:4C:88:4F",),
        names=("Ruuvi *",),
        devices=(("A4:C1:38:8D:18:B2", "greenhouse-1"),),
    )


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[[ble]]\ndecoder = "raw"\n', "ble[0].decoder"),
        ('[[ble]]\naddresses = ["A4:C1:38"]\n', "ble[0].addresses[0]"),
        ("[[ble]]\naddresses = [1]\n", "ble[0].addresses"),
        ('[[ble]]\ndevices = { "A4:C1:38:8D:18:B2" = "" }\n', "ble[0].devices.'A4:C1:38:8D:18:B2'"),
        ("[[ble]]\nqueue_size = 0\n", "ble[0].queue_size"),
        ("[[ble]]\nretry_initial_s = 5.0\nretry_max_s = 1.0\n", "ble[0].retry_max_s"),
        ('[[ble]]\nname = "a"\n[[ble]]\nname = "a"\n', "ble[1].name"),
        ('[[ble]]\nscanning_mode = "loud"\n', "ble[0].scanning_mode"),
        ("[[ble]]\nbogus = 1\n", "ble[0].bogus"),
        ('[ble]\nname = "x"\n', "ble"),
    ],
)
def test_config_ble_errors_name_the_key(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, extra=extra))
    assert err.value.key == key


async def test_the_edge_runs_a_ble_source_without_bluetooth(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, extra='[[ble]]\nname = "ble"\n'))
    stop = asyncio.Event()
    service = asyncio.create_task(run_edge(config, stop=stop, handle_signals=False))
    port_file = tmp_path / "state" / "admin.port"
    await until(port_file.exists, "admin.port")
    url = f"http://127.0.0.1:{int(port_file.read_text())}/api/v1/status"

    async def unavailable() -> bool:
        doc = await asyncio.to_thread(http_json, url)
        return str(doc["sources"]["ble"]["adapter"]).startswith("unavailable: ")

    await until(unavailable, "the BLE status line")
    assert not service.done()
    stop.set()
    await asyncio.wait_for(service, 30)
