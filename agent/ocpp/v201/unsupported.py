"""What this station does not offer (yet), answered the way 2.0.1 says "no".

A request of a feature the station lacks gets the status the spec gives for "not supported /
nothing there" instead of a CALLERROR, so a CSMS gets a usable answer.  A feature that gets
built moves its actions out of this table into its own block (reservations: reservation.py;
variable monitoring: monitoring.py).
"""

from __future__ import annotations

from agent.ocpp.blocks import Handler, fixed_answer
from agent.ocpp.v201.device_model import VariableBlock

UNSUPPORTED_ANSWERS: dict[str, dict] = {
    "PublishFirmware": {"status": "Rejected"},
    "UnpublishFirmware": {"status": "NoFirmware"},
    "CustomerInformation": {"status": "Rejected"},
}


class Unsupported(VariableBlock):
    def routes(self) -> dict[str, Handler]:
        return {action: fixed_answer(answer) for action, answer in UNSUPPORTED_ANSWERS.items()}
