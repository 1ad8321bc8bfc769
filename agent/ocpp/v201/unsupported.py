"""What this station does not offer (yet), answered the way 2.0.1 says "no".

A request of a feature the station lacks gets the status the spec gives for "not supported /
nothing there" instead of a CALLERROR, so a CSMS gets a usable answer; the controllers of the
absent features (ReservationCtrlr, SmartChargingCtrlr) say Enabled / Available false.  A
feature that gets built moves its actions out of this table into its own block.
"""

from __future__ import annotations

from typing import ClassVar

from agent.ocpp.blocks import Handler, fixed_answer
from agent.ocpp.v201.device_model import VarDef, VariableBlock, ro, rw

UNSUPPORTED_ANSWERS: dict[str, dict] = {
    "CancelReservation": {"status": "Rejected"},
    "ReserveNow": {"status": "Rejected"},
    "SetChargingProfile": {"status": "Rejected",
                           "statusInfo": {"reasonCode": "UnsupportedRequest"}},
    "GetChargingProfiles": {"status": "NoProfiles"},
    "ClearChargingProfile": {"status": "Unknown"},
    "GetCompositeSchedule": {"status": "Rejected",
                             "statusInfo": {"reasonCode": "UnsupportedRequest"}},
    "SetDisplayMessage": {"status": "Rejected"},
    "GetDisplayMessages": {"status": "Unknown"},
    "ClearDisplayMessage": {"status": "Unknown"},
    "GetLog": {"status": "Rejected"},
    "UpdateFirmware": {"status": "Rejected"},
    "PublishFirmware": {"status": "Rejected"},
    "UnpublishFirmware": {"status": "NoFirmware"},
    "GetInstalledCertificateIds": {"status": "NotFound"},
    "DeleteCertificate": {"status": "NotFound"},
    "InstallCertificate": {"status": "Rejected"},
    "CertificateSigned": {"status": "Rejected"},
    "CustomerInformation": {"status": "Rejected"},
    "SetMonitoringBase": {"status": "NotSupported"},
    "SetMonitoringLevel": {"status": "Rejected"},
    "GetMonitoringReport": {"status": "NotSupported"},
    "CostUpdated": {},
}


class Unsupported(VariableBlock):
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        ro("ReservationCtrlr", "Enabled", "boolean", "false"),
        ro("ReservationCtrlr", "Available", "boolean", "false"),
        ro("ReservationCtrlr", "NonEvseSpecific", "boolean", "false"),
        ro("SmartChargingCtrlr", "Enabled", "boolean", "false"),
        ro("SmartChargingCtrlr", "Available", "boolean", "false"),
        ro("SmartChargingCtrlr", "Entries", "integer", "0", instance="ChargingProfiles"),
        rw("SmartChargingCtrlr", "LimitChangeSignificance", "decimal", "10", unit="Percent",
           min_limit=0, max_limit=100),
        ro("SmartChargingCtrlr", "PeriodsPerSchedule", "integer", "0"),
        ro("SmartChargingCtrlr", "ProfileStackLevel", "integer", "0"),
        ro("SmartChargingCtrlr", "RateUnit", "MemberList", "A", values_list=("A", "W")),
    )

    def routes(self) -> dict[str, Handler]:
        return {action: fixed_answer(answer) for action, answer in UNSUPPORTED_ANSWERS.items()}
