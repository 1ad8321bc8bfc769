"""OCPP-J rule tables the test CSMS judges a station by, one entry per OCPP version.

Which websocket subprotocol names a version, which CALLERROR codes a version knows, which actions
exist at all and which travel only as SEND, and which station messages a CSMS request licenses
before the station is accepted.
"""

from __future__ import annotations

import ocpp.v16.enums
import ocpp.v21.enums
import ocpp.v201.enums

SUBPROTOCOLS: dict[str, str] = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}
_VERSION_OF = {sub: version for version, sub in SUBPROTOCOLS.items()}

_V2_ERROR_CODES = frozenset(
    {
        "FormatViolation",
        "GenericError",
        "InternalError",
        "MessageTypeNotSupported",
        "NotImplemented",
        "NotSupported",
        "OccurrenceConstraintViolation",
        "PropertyConstraintViolation",
        "ProtocolError",
        "RpcFrameworkError",
        "SecurityError",
        "TypeConstraintViolation",
    }
)
_ERROR_CODES: dict[str, frozenset[str]] = {
    # 1.6 spells "OccurenceConstraintViolation" with one 'r' and has FormationViolation.
    "1.6": frozenset(
        {
            "NotImplemented",
            "NotSupported",
            "InternalError",
            "ProtocolError",
            "SecurityError",
            "FormationViolation",
            "PropertyConstraintViolation",
            "OccurenceConstraintViolation",
            "TypeConstraintViolation",
            "GenericError",
        }
    ),
    "2.0.1": _V2_ERROR_CODES,
    "2.1": _V2_ERROR_CODES,
}

_KNOWN_ACTIONS: dict[str, frozenset[str]] = {
    "1.6": frozenset(a.value for a in ocpp.v16.enums.Action),
    "2.0.1": frozenset(a.value for a in ocpp.v201.enums.Action),
    "2.1": frozenset(a.value for a in ocpp.v21.enums.Action) | {"NotifyPeriodicEventStream"},
}

# 2.1 messages that only travel as SEND (message type 6).
_SEND_ACTIONS = frozenset({"NotifyPeriodicEventStream"})

# Messages a station may send before it is accepted because the CSMS asked for them.
_CONSEQUENCES: dict[str, frozenset[str]] = {
    "GetDiagnostics": frozenset({"DiagnosticsStatusNotification"}),
    "UpdateFirmware": frozenset({"FirmwareStatusNotification", "SecurityEventNotification"}),
    "SignedUpdateFirmware": frozenset(
        {"SignedFirmwareStatusNotification", "SecurityEventNotification"}
    ),
    "GetLog": frozenset({"LogStatusNotification"}),
    "GetBaseReport": frozenset({"NotifyReport"}),
    "GetReport": frozenset({"NotifyReport"}),
    "GetMonitoringReport": frozenset({"NotifyMonitoringReport"}),
    "CustomerInformation": frozenset({"NotifyCustomerInformation"}),
    "GetDisplayMessages": frozenset({"NotifyDisplayMessages"}),
    "GetChargingProfiles": frozenset({"ReportChargingProfiles"}),
    "PublishFirmware": frozenset({"PublishFirmwareStatusNotification"}),
    "GetDERControl": frozenset({"ReportDERControl"}),
}
# TriggerMessage.requestedMessage values that do not name the resulting action.
_TRIGGERED_ACTION = {
    "SignChargePointCertificate": "SignCertificate",
    "SignChargingStationCertificate": "SignCertificate",
    "SignV2GCertificate": "SignCertificate",
    "SignV2G20Certificate": "SignCertificate",
    "SignCombinedCertificate": "SignCertificate",
}
