"""A small, strict CSMS for the demo and for the integration tests.

It sits on the server side of the ``ocpp`` package: each connection is an ``ocpp.v16`` /
``ocpp.v201`` / ``ocpp.v21`` ``ChargePoint`` subclass whose ``@on`` handlers answer the station.
The library's own message loop is replaced, because a test peer has to be stricter than the
library is:

* every frame the station sends is checked against the official JSON schemas shipped with the
  ``ocpp`` package (synchronously, with ``date-time`` formats checked too), and against the
  OCPP-J framing rules (message ids, one CALL in flight, CALLERROR codes);
* anything wrong is answered the way the spec says (``NotImplemented`` for an unknown action,
  ``NotSupported`` for a known one the CSMS does not take, ``RpcFrameworkError`` with id "-1"
  for unreadable frames, ...) and recorded in ``TestCsms.violations``, which tests assert empty;
* handlers receive and return the wire (camelCase) payloads, because the log and the
  transaction records must show exactly what was on the wire and the library's snake_case
  round trip is lossy for several 2.x field names.

Registration is enforced too: a station that sends anything but BootNotification before it was
accepted commits a violation, unless the CSMS asked for that message (TriggerMessage, GetLog,
GetBaseReport, ...). While Pending or Rejected such a message is answered with SecurityError.

The package, one job per module:

* ``messages``: the ``Message`` record, the directions, ``NO_REPLY``, ``CsmsCallError`` and
  ``SchemaError``;
* ``protocol``: the OCPP-J rule tables (subprotocols, error codes, actions, registration);
* ``schemas``: loading the JSON schemas, validating payloads, mapping failures to error codes;
* ``link``: ``StationLink``, the CSMS end of one connection, and its per-version subclasses;
* ``server``: ``TestCsms``, the server and its protocol state.

The CSMS is the oracle the agent is tested against, so it shares no code with the agent's own
RPC layer: nothing here imports ``agent.ocpp``, ``agent.link`` or ``agent.core``.
"""

from agent.testing.csms.link import StationLink
from agent.testing.csms.messages import (
    CS_TO_CSMS,
    CSMS_TO_CS,
    NO_REPLY,
    CsmsCallError,
    Message,
    SchemaError,
)
from agent.testing.csms.protocol import SUBPROTOCOLS
from agent.testing.csms.server import TestCsms

__all__ = [
    "CS_TO_CSMS",
    "CSMS_TO_CS",
    "NO_REPLY",
    "SUBPROTOCOLS",
    "CsmsCallError",
    "Message",
    "SchemaError",
    "StationLink",
    "TestCsms",
]
