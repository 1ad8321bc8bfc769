"""What this station does not offer (yet) of what 2.1 added, answered the way 2.1 says "no".

The rule (2.1 part 4, 4.3 Table 9 and the example of 4.2.3): a request the station
recognizes but whose feature it lacks is answered with CALLERROR ``NotSupported``
("Requested Action is recognized but not supported by the receiver"); ``NotImplemented`` is
for an action the station does not know at all, which never applies to a 2.1 action.  Where
the response schema itself has a status that says exactly this (DERControlStatusEnumType
``NotSupported``), that status is the answer instead, because a CSMS reads it the same way
without treating it as an error.

The 2.0.1 actions that 2.1 kept (SetDisplayMessage, CustomerInformation, ...) keep their
2.0.1 answers (:mod:`agent.ocpp.v201.unsupported`, carried over).  A feature that gets built
moves its actions out of this table into its own block (built: dynamic profiles and
priority charging, smart_charging.py; periodic event streams, event_streams.py; local cost
calculation, local_cost.py; V2X, v2x.py; DER control, der.py).
"""

from __future__ import annotations

from agent.link.rpc import OcppCallError
from agent.ocpp.blocks import Block, Handler, fixed_answer

# A CALLERROR NotSupported, with the feature named in its description.
NOT_SUPPORTED = "NotSupported"

# action -> the status answer, or (NOT_SUPPORTED, the missing feature in words).
UNSUPPORTED_ANSWERS_21: dict[str, dict | tuple[str, str]] = {
    "RequestBatterySwap": (NOT_SUPPORTED, "this station does not swap batteries"),
    "NotifyWebPaymentStarted": (NOT_SUPPORTED, "web payments are not supported by this "
                                               "station"),
}


def _refusal(action: str, why: str) -> Handler:
    async def handler(payload: dict) -> dict:
        raise OcppCallError(NOT_SUPPORTED, f"{action}: {why}")

    return handler


class Unsupported21(Block):
    """The 2.1-only requests of features this station lacks (see the module docstring)."""

    def routes(self) -> dict[str, Handler]:
        out: dict[str, Handler] = {}
        for action, answer in UNSUPPORTED_ANSWERS_21.items():
            if isinstance(answer, dict):
                out[action] = fixed_answer(answer)
            else:
                out[action] = _refusal(action, answer[1])
        return out


__all__ = ["NOT_SUPPORTED", "UNSUPPORTED_ANSWERS_21", "Unsupported21"]
