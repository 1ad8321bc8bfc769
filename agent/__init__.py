"""cp-agent: an OCPP charge point agent for embedded Linux."""

from agent import dataclass_cache as _dataclass_cache

__version__ = "0.1.0"

# Before any of the agent's modules defines a dataclass: their generated methods are read
# from the cache beside the bytecode instead of compiled at every start
# (agent/dataclass_cache.py).
_dataclass_cache.install()
