"""device_agent: installs, verifies and serves models on a device; reports to the fleet."""

__version__ = "0.1.0"
