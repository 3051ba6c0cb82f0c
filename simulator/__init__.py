"""Simulated sensor fleets and the machinery to run Cairn for real on one machine.

``fleet`` (seeded fleets), ``generators`` (their signals), ``parts`` (generators, filters
and joins to compose), ``fleetfile`` (TOML fleet files of device types, and their ground
truth), ``mqtt_wire`` (an MQTT publisher that knows what was acknowledged), ``send`` (fleets
over MQTT, with a ledger), ``fleetrun`` (fleet files over their transports: one send loop),
``transports`` (each kind's sender, message parts and checks), ``plot``,
``cli`` (``cairn-sim``); ``servers``, ``lab``, ``demo`` and ``bench`` run real processes.
``pacing`` (open-loop load at a target rate), ``display`` (the live display of ``run``),
``watch`` (a fleet file run under it) and ``score`` (detection scored against ground truth).
"""

from simulator.fleet import SENSOR_KINDS, Fleet, FleetSpec, reading_key
from simulator.fleetfile import FleetFile, TruthRecord, load_fleet_file, parse_fleet
from simulator.fleetrun import send_fleet_file
from simulator.mqtt_wire import MqttError, MqttPublisher
from simulator.send import Ledger, send_fleet

__all__ = [
    "SENSOR_KINDS",
    "Fleet",
    "FleetFile",
    "FleetSpec",
    "Ledger",
    "MqttError",
    "MqttPublisher",
    "TruthRecord",
    "load_fleet_file",
    "parse_fleet",
    "reading_key",
    "send_fleet",
    "send_fleet_file",
]
