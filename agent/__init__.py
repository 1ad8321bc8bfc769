"""cp-agent: an OCPP charge point agent for embedded Linux."""

__version__ = "0.1.0"
