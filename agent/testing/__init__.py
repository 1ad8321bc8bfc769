"""Test doubles that ship with the agent.

The strict test CSMS lives here rather than under ``tests/`` because ``cp-agent demo`` runs the
agent against it, and because CSMS builders who use the agent as a load generator want the same
reference peer.
"""

from agent.testing.csms import (
    CS_TO_CSMS,
    CSMS_TO_CS,
    NO_REPLY,
    CsmsCallError,
    Message,
    SchemaError,
    StationLink,
    TestCsms,
)

__all__ = [
    "CS_TO_CSMS",
    "CSMS_TO_CS",
    "NO_REPLY",
    "CsmsCallError",
    "Message",
    "SchemaError",
    "StationLink",
    "TestCsms",
]
