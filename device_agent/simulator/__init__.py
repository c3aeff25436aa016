"""A fleet simulator: many simulated devices in one process, each a real paho MQTT client
speaking protocol 1 (enrolment over REST, signed instructions verified with
``ota.instructions``, chunks requested and hash-checked, state, events, telemetry and shadow
reports). It imports ``ota`` only, never the agent or the server.
"""

from device_agent.simulator.behaviour import Behaviour
from device_agent.simulator.fleet import SimFleet

__all__ = ["Behaviour", "SimFleet"]
