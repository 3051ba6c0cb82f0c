"""Simulated sensor fleets and the machinery to run Cairn for real on one machine.

``fleet`` (seeded fleets), ``generators`` (their signals), ``mqtt_wire`` (an MQTT publisher
that knows what was acknowledged), ``send`` (fleets over MQTT, with a ledger), ``cli``
(``cairn-sim``); ``servers``, ``lab``, ``demo`` and ``bench`` run real processes.
"""

from simulator.fleet import SENSOR_KINDS, Fleet, FleetSpec, reading_key
from simulator.mqtt_wire import MqttError, MqttPublisher
from simulator.send import Ledger, send_fleet

__all__ = [
    "SENSOR_KINDS",
    "Fleet",
    "FleetSpec",
    "Ledger",
    "MqttError",
    "MqttPublisher",
    "reading_key",
    "send_fleet",
]
