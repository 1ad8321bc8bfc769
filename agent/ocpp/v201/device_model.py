"""The OCPP 2.0.1 device model: components, variables, attributes and their characteristics.

2.0.1 replaces 1.6's flat configuration keys with (component, variable, attribute) triples.
This module declares the standardized ones a station of this kind has (part 2 appendix 3 and
the "Referenced Components and Variables" list of the part 6 test cases) and answers
GetVariables / SetVariables / reports from that declaration.

One installation may speak 1.6 today and 2.0.1 tomorrow, so a setting must not fork into two
copies: every variable that 1.6 knows as a configuration key (HeartbeatInterval,
MeterValueSampleInterval = TxUpdatedInterval, ConnectionTimeOut = EVConnectionTimeOut, ...) is
stored through :class:`ConfigurationKeys`, the same persisted value whichever protocol changed
it.  Variables 2.0.1 alone has are persisted under the ``v201.dm.`` settings prefix.  Values
that describe the live station (AvailabilityState, Power, Problem, DateTime, ...) are read
from getters the adapter supplies, never stored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.clock import parse_iso
from agent.ocpp.v16.keys import MEASURANDS, ConfigurationKeys
from agent.storage import Storage

PREFIX = "v201.dm."

# Measurands the HAL meter can provide that 2.0.1 also knows (2.0.1 has no Temperature).
MEASURANDS_201 = tuple(m for m in MEASURANDS if m != "Temperature")
TX_POINTS = ("EVConnected", "Authorized", "PowerPathClosed", "EnergyTransfer")
NETWORK_SLOTS = ("1", "2", "3", "4", "5")  # SetNetworkProfile configuration slots
AVAILABILITY_STATES = ("Available", "Occupied", "Reserved", "Unavailable", "Faulted")

# Physical components that report hardware faults (NotifyEvent) and their Problem-like
# variable.  Declared here so that every NotifyEvent names a component/variable pair the
# CSMS can also find in a FullInventory report.
FAULT_COMPONENTS = (
    ("FiscalMetering", "Problem"),
    ("PowerContactor", "Problem"),
    ("CPPWMController", "Problem"),
    ("ConnectorPlugRetentionLock", "Problem"),
    ("Controller", "Problem"),
    ("OverCurrentProtection", "Active"),
    ("ElectricalFeed", "Problem"),
    ("TemperatureSensor", "Active"),
    ("RCD", "Tripped"),
)

_INT = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class Attr:
    """One attribute (Actual, Target, MinSet, MaxSet) of a variable."""

    type: str = "Actual"
    mutability: str = "ReadWrite"
    default: str | None = None  # stored attributes
    getter: Callable[[], str] | None = None  # live (read-only) attributes


@dataclass(frozen=True)
class VarDef:
    component: str
    name: str
    data_type: str  # 2.0.1 DataEnumType: string, integer, boolean, MemberList, ...
    attrs: tuple[Attr, ...]
    instance: str | None = None
    comp_instance: str | None = None
    evse: int | None = None
    connector: int | None = None
    unit: str | None = None
    min_limit: float | None = None
    max_limit: float | None = None
    values_list: tuple[str, ...] | None = None
    key16: str | None = None  # the 1.6 configuration key holding the same setting
    reboot: bool = False  # a change takes effect only after a restart
    check: Callable[[str], str | None] | None = None  # extra validation: reason or None
    constant: bool = False

    @property
    def comp_key(self) -> tuple:
        return (self.component, self.comp_instance, self.evse, self.connector)

    @property
    def var_key(self) -> tuple:
        return (self.name, self.instance)

    @property
    def storage_id(self) -> str:
        comp = self.component + (f"[{self.comp_instance}]" if self.comp_instance else "")
        if self.evse is not None:
            comp += f"@{self.evse}" + (f".{self.connector}" if self.connector is not None else "")
        var = self.name + (f"[{self.instance}]" if self.instance else "")
        return f"{comp}/{var}"

    @property
    def short_name(self) -> str:
        """Name accepted in ``ocpp.defaults``: ``Component.Variable`` or ``...[Instance]``."""
        return f"{self.component}.{self.name}" + (f"[{self.instance}]" if self.instance else "")

    def attr(self, kind: str) -> Attr | None:
        return next((a for a in self.attrs if a.type == kind), None)

    @property
    def writable(self) -> bool:
        return any(a.mutability != "ReadOnly" for a in self.attrs)

    def component_json(self) -> dict:
        out: dict[str, Any] = {"name": self.component}
        if self.comp_instance:
            out["instance"] = self.comp_instance
        if self.evse is not None:
            out["evse"] = {"id": self.evse}
            if self.connector is not None:
                out["evse"]["connectorId"] = self.connector
        return out

    def variable_json(self) -> dict:
        out: dict[str, Any] = {"name": self.name}
        if self.instance:
            out["instance"] = self.instance
        return out

    def characteristics(self) -> dict:
        out: dict[str, Any] = {"dataType": self.data_type, "supportsMonitoring": False}
        if self.unit:
            out["unit"] = self.unit
        if self.min_limit is not None:
            out["minLimit"] = self.min_limit
        if self.max_limit is not None:
            out["maxLimit"] = self.max_limit
        if self.values_list:
            out["valuesList"] = ",".join(self.values_list)[:1000]
        return out


@dataclass
class EvseInfo:
    id: int
    phases: int
    max_power_w: float
    connector_type: str = "cType2"


@dataclass
class StationInfo:
    identity: str
    vendor: str
    model: str
    serial_number: str | None
    firmware_version: str
    security_profile: int
    message_timeout_s: int
    evses: list[EvseInfo] = field(default_factory=list)


@dataclass
class LiveValues:
    """Getters for values that describe the station as it is, supplied by the adapter."""

    availability: Callable[[int | None], str]  # evse id or None for the station
    problem: Callable[[str, int | None], bool]  # component name, evse id (None: station)
    power_w: Callable[[int], float]
    now_iso: Callable[[], str]
    local_list_entries: Callable[[], int]


def _b(value: bool) -> str:
    return "true" if value else "false"


def _ro(component: str, name: str, data_type: str, value: str | Callable[[], str],
        **kw: Any) -> VarDef:
    """Read-only: a live getter, or a fixed value an installer may set in ``ocpp.defaults``."""
    attr = (Attr("Actual", "ReadOnly", getter=value) if callable(value)
            else Attr("Actual", "ReadOnly", default=value))
    return VarDef(component, name, data_type, (attr,), **kw)


def _rw(component: str, name: str, data_type: str, default: str = "", **kw: Any) -> VarDef:
    return VarDef(component, name, data_type, (Attr("Actual", "ReadWrite", default=default),),
                  **kw)


def _check_tx_points(text: str) -> str | None:
    return None if text.strip() else "at least one point is needed"


def standard_variables(info: StationInfo, live: LiveValues) -> list[VarDef]:
    """The components and variables of this station."""
    measurands = MEASURANDS_201
    v: list[VarDef] = [
        # -------------------------------------------------------------- OCPPCommCtrlr
        _rw("OCPPCommCtrlr", "HeartbeatInterval", "integer", unit="s", min_limit=0,
            max_limit=86400, key16="HeartbeatInterval"),
        _rw("OCPPCommCtrlr", "WebSocketPingInterval", "integer", unit="s", min_limit=0,
            max_limit=3600, key16="WebSocketPingInterval"),
        _rw("OCPPCommCtrlr", "MessageAttempts", "integer", instance="TransactionEvent",
            min_limit=1, max_limit=100, key16="TransactionMessageAttempts"),
        _rw("OCPPCommCtrlr", "MessageAttemptInterval", "integer", instance="TransactionEvent",
            unit="s", min_limit=1, max_limit=86400, key16="TransactionMessageRetryInterval"),
        _ro("OCPPCommCtrlr", "MessageTimeout", "integer", str(info.message_timeout_s),
            instance="Default", unit="s"),
        _rw("OCPPCommCtrlr", "OfflineThreshold", "integer", "60", unit="s", min_limit=0,
            max_limit=86400),
        _rw("OCPPCommCtrlr", "ResetRetries", "integer", min_limit=0, max_limit=10,
            key16="ResetRetries"),
        _rw("OCPPCommCtrlr", "UnlockOnEVSideDisconnect", "boolean",
            key16="UnlockConnectorOnEVSideDisconnect"),
        _rw("OCPPCommCtrlr", "MinimumStatusDuration", "integer", unit="s", min_limit=0,
            max_limit=3600, key16="MinimumStatusDuration"),
        _ro("OCPPCommCtrlr", "FileTransferProtocols", "MemberList", "",
            values_list=("HTTPS",)),
        _rw("OCPPCommCtrlr", "NetworkConfigurationPriority", "SequenceList", "1",
            values_list=NETWORK_SLOTS, reboot=True),
        _rw("OCPPCommCtrlr", "NetworkProfileConnectionAttempts", "integer", "3", min_limit=1,
            max_limit=100),
        _ro("OCPPCommCtrlr", "QueueAllMessages", "boolean", "false"),
        _rw("OCPPCommCtrlr", "RetryBackOffRepeatTimes", "integer", "5", min_limit=0,
            max_limit=30),
        _rw("OCPPCommCtrlr", "RetryBackOffRandomRange", "integer", "10", unit="s",
            min_limit=0, max_limit=3600),
        _rw("OCPPCommCtrlr", "RetryBackOffWaitMinimum", "integer", "1", unit="s",
            min_limit=0, max_limit=3600),
        # -------------------------------------------------------------- TxCtrlr
        _rw("TxCtrlr", "EVConnectionTimeOut", "integer", unit="s", min_limit=1,
            max_limit=3600, key16="ConnectionTimeOut"),
        _rw("TxCtrlr", "StopTxOnEVSideDisconnect", "boolean",
            key16="StopTransactionOnEVSideDisconnect"),
        _rw("TxCtrlr", "StopTxOnInvalidId", "boolean", key16="StopTransactionOnInvalidId"),
        _rw("TxCtrlr", "MaxEnergyOnInvalidId", "integer", unit="Wh", min_limit=0,
            key16="MaxEnergyOnInvalidId"),
        _rw("TxCtrlr", "TxStartPoint", "MemberList", "PowerPathClosed", values_list=TX_POINTS,
            check=_check_tx_points),
        _rw("TxCtrlr", "TxStopPoint", "MemberList", "EVConnected,Authorized",
            values_list=TX_POINTS, check=_check_tx_points),
        _ro("TxCtrlr", "TxBeforeAcceptedEnabled", "boolean", "false"),
        # -------------------------------------------------------------- SampledDataCtrlr
        _ro("SampledDataCtrlr", "Enabled", "boolean", "true"),
        _ro("SampledDataCtrlr", "Available", "boolean", "true"),
        _ro("SampledDataCtrlr", "SignReadings", "boolean", "false"),
        _rw("SampledDataCtrlr", "TxStartedMeasurands", "MemberList",
            "Energy.Active.Import.Register", values_list=measurands,
            max_limit=len(measurands)),
        _rw("SampledDataCtrlr", "TxUpdatedInterval", "integer", unit="s", min_limit=0,
            max_limit=86400, key16="MeterValueSampleInterval"),
        _rw("SampledDataCtrlr", "TxUpdatedMeasurands", "MemberList", values_list=measurands,
            max_limit=len(measurands), key16="MeterValuesSampledData"),
        _rw("SampledDataCtrlr", "TxEndedInterval", "integer", "0", unit="s", min_limit=0,
            max_limit=86400),
        _rw("SampledDataCtrlr", "TxEndedMeasurands", "MemberList", values_list=measurands,
            max_limit=len(measurands), key16="StopTxnSampledData"),
        # -------------------------------------------------------------- AlignedDataCtrlr
        _ro("AlignedDataCtrlr", "Enabled", "boolean", "true"),
        _ro("AlignedDataCtrlr", "Available", "boolean", "true"),
        _ro("AlignedDataCtrlr", "SignReadings", "boolean", "false"),
        _rw("AlignedDataCtrlr", "Interval", "integer", unit="s", min_limit=0,
            max_limit=86400, key16="ClockAlignedDataInterval"),
        _rw("AlignedDataCtrlr", "Measurands", "MemberList", values_list=measurands,
            max_limit=len(measurands), key16="MeterValuesAlignedData"),
        _rw("AlignedDataCtrlr", "SendDuringIdle", "boolean", "false"),
        _rw("AlignedDataCtrlr", "TxEndedInterval", "integer", "0", unit="s", min_limit=0,
            max_limit=86400),
        _rw("AlignedDataCtrlr", "TxEndedMeasurands", "MemberList", values_list=measurands,
            max_limit=len(measurands), key16="StopTxnAlignedData"),
        # -------------------------------------------------------------- AuthCtrlr
        _ro("AuthCtrlr", "Enabled", "boolean", "true"),
        _rw("AuthCtrlr", "AuthorizeRemoteStart", "boolean", key16="AuthorizeRemoteTxRequests"),
        _rw("AuthCtrlr", "LocalAuthorizeOffline", "boolean", key16="LocalAuthorizeOffline"),
        _rw("AuthCtrlr", "LocalPreAuthorize", "boolean", key16="LocalPreAuthorize"),
        _rw("AuthCtrlr", "OfflineTxForUnknownIdEnabled", "boolean",
            key16="AllowOfflineTxForUnknownId"),
        _rw("AuthCtrlr", "DisableRemoteAuthorization", "boolean", "false"),
        # -------------------------------------------------------------- AuthCacheCtrlr
        _rw("AuthCacheCtrlr", "Enabled", "boolean", key16="AuthorizationCacheEnabled"),
        _ro("AuthCacheCtrlr", "Available", "boolean", "true"),
        _rw("AuthCacheCtrlr", "LifeTime", "integer", "86400", unit="s", min_limit=1,
            max_limit=31536000),
        _rw("AuthCacheCtrlr", "DisablePostAuthorize", "boolean", "false"),
        # -------------------------------------------------------------- LocalAuthListCtrlr
        _rw("LocalAuthListCtrlr", "Enabled", "boolean", key16="LocalAuthListEnabled"),
        _ro("LocalAuthListCtrlr", "Available", "boolean", "true"),
        _ro("LocalAuthListCtrlr", "Entries", "integer",
            lambda: str(live.local_list_entries()), max_limit=10000),
        _ro("LocalAuthListCtrlr", "ItemsPerMessage", "integer", "1000"),
        _ro("LocalAuthListCtrlr", "BytesPerMessage", "integer", "262144"),
        _rw("LocalAuthListCtrlr", "DisablePostAuthorize", "boolean", "false"),
        # -------------------------------------------------------------- DeviceDataCtrlr
        _ro("DeviceDataCtrlr", "ItemsPerMessage", "integer", "32", instance="GetReport"),
        _ro("DeviceDataCtrlr", "ItemsPerMessage", "integer", "32", instance="GetVariables"),
        _ro("DeviceDataCtrlr", "ItemsPerMessage", "integer", "32", instance="SetVariables"),
        _ro("DeviceDataCtrlr", "BytesPerMessage", "integer", "16384", instance="GetReport"),
        _ro("DeviceDataCtrlr", "BytesPerMessage", "integer", "16384",
            instance="GetVariables"),
        _ro("DeviceDataCtrlr", "BytesPerMessage", "integer", "16384",
            instance="SetVariables"),
        _ro("DeviceDataCtrlr", "ValueSize", "integer", "2500"),
        # -------------------------------------------------------------- ClockCtrlr
        _ro("ClockCtrlr", "DateTime", "dateTime", live.now_iso),
        _rw("ClockCtrlr", "TimeSource", "SequenceList", "Heartbeat",
            values_list=("Heartbeat",)),
        _rw("ClockCtrlr", "TimeZone", "string", "", max_limit=50),
        _rw("ClockCtrlr", "TimeOffset", "string", "", max_limit=6),
        _rw("ClockCtrlr", "NextTimeOffsetTransitionDateTime", "dateTime", ""),
        _rw("ClockCtrlr", "TimeAdjustmentReportingThreshold", "integer", "20", unit="s",
            min_limit=0),
        # -------------------------------------------------------------- SecurityCtrlr
        _ro("SecurityCtrlr", "SecurityProfile", "integer", str(info.security_profile)),
        _ro("SecurityCtrlr", "Identity", "string", info.identity, max_limit=48),
        _rw("SecurityCtrlr", "OrganizationName", "string", "", max_limit=50),
        _ro("SecurityCtrlr", "CertificateEntries", "integer", "0"),
        VarDef("SecurityCtrlr", "BasicAuthPassword", "string",
               (Attr("Actual", "WriteOnly", default=""),), min_limit=16, max_limit=40,
               check=_check_password),
        # -------------------------------------------------------------- ReservationCtrlr
        _ro("ReservationCtrlr", "Enabled", "boolean", "false"),
        _ro("ReservationCtrlr", "Available", "boolean", "false"),
        _ro("ReservationCtrlr", "NonEvseSpecific", "boolean", "false"),
        # -------------------------------------------------------------- SmartChargingCtrlr
        _ro("SmartChargingCtrlr", "Enabled", "boolean", "false"),
        _ro("SmartChargingCtrlr", "Available", "boolean", "false"),
        _ro("SmartChargingCtrlr", "Entries", "integer", "0", instance="ChargingProfiles"),
        _rw("SmartChargingCtrlr", "LimitChangeSignificance", "decimal", "10", unit="Percent",
            min_limit=0, max_limit=100),
        _ro("SmartChargingCtrlr", "PeriodsPerSchedule", "integer", "0"),
        _ro("SmartChargingCtrlr", "ProfileStackLevel", "integer", "0"),
        _ro("SmartChargingCtrlr", "RateUnit", "MemberList", "A", values_list=("A", "W")),
        # -------------------------------------------------------------- ChargingStation
        _ro("ChargingStation", "AvailabilityState", "OptionList",
            lambda: live.availability(None), values_list=AVAILABILITY_STATES),
        _ro("ChargingStation", "Available", "boolean", "true"),
        _ro("ChargingStation", "Problem", "boolean",
            lambda: _b(live.problem("ChargingStation", None))),
        _ro("ChargingStation", "SupplyPhases", "integer",
            str(max((e.phases for e in info.evses), default=3))),
        _ro("ChargingStation", "VendorName", "string", info.vendor),
        _ro("ChargingStation", "Model", "string", info.model),
        _ro("TokenReader", "Problem", "boolean",
            lambda: _b(live.problem("TokenReader", None))),
        _ro("Controller", "FirmwareVersion", "string", info.firmware_version),
    ]
    if info.serial_number:
        v.append(_ro("ChargingStation", "SerialNumber", "string", info.serial_number))
    for e in info.evses:
        eid = e.id
        v += [
            _ro("EVSE", "AvailabilityState", "OptionList",
                lambda eid=eid: live.availability(eid), values_list=AVAILABILITY_STATES,
                evse=eid),
            _ro("EVSE", "Available", "boolean", "true", evse=eid),
            _ro("EVSE", "Problem", "boolean", lambda eid=eid: _b(live.problem("EVSE", eid)),
                evse=eid),
            VarDef("EVSE", "Power", "decimal",
                   (Attr("Actual", "ReadOnly", getter=lambda eid=eid: _num(live.power_w(eid))),
                    Attr("MaxSet", "ReadOnly", getter=lambda p=e.max_power_w: _num(p))),
                   evse=eid, unit="W", max_limit=e.max_power_w),
            _ro("EVSE", "SupplyPhases", "integer", str(e.phases), evse=eid),
            _ro("Connector", "AvailabilityState", "OptionList",
                lambda eid=eid: live.availability(eid), values_list=AVAILABILITY_STATES,
                evse=eid, connector=1),
            _ro("Connector", "Available", "boolean", "true", evse=eid, connector=1),
            _ro("Connector", "ConnectorType", "string", e.connector_type, evse=eid,
                connector=1),
            _ro("Connector", "SupplyPhases", "integer", str(e.phases), evse=eid, connector=1),
        ]
        for comp, var in FAULT_COMPONENTS:
            connector = 1 if comp == "ConnectorPlugRetentionLock" else None
            v.append(_ro(comp, var, "boolean",
                         lambda comp=comp, eid=eid: _b(live.problem(comp, eid)),
                         evse=eid, connector=connector))
    return v


def translate_defaults(defaults: dict[str, Any]) -> dict[str, Any]:
    """``ocpp.defaults`` with 2.0.1 names of shared settings renamed to their 1.6 keys.

    An installer writing ``SampledDataCtrlr.TxUpdatedInterval: 10`` means the same setting
    as ``MeterValueSampleInterval: 10``; :class:`ConfigurationKeys` only knows the latter.
    """
    info = StationInfo("x", "x", "x", None, "x", 0, 30)
    live = LiveValues(lambda e: "", lambda c, e: False, lambda e: 0.0, lambda: "",
                      lambda: 0)
    names = {d.short_name: d.key16 for d in standard_variables(info, live) if d.key16}
    out = dict(defaults)
    for name, value in defaults.items():
        if name in names:
            out[names[name]] = value
    return out


def _check_password(text: str) -> str | None:
    # 2.0.1 passwordString: 16-40 characters of the identifierString set plus a few specials.
    if not re.fullmatch(r"[A-Za-z0-9*\-_=:+|@.]{16,40}", text):
        return "16-40 letters, digits or *-_=:+|@."
    return None


def _num(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


class DeviceModel:
    """Typed, persisted access to the variables; GetVariables/SetVariables/report logic."""

    def __init__(self, storage: Storage, keys: ConfigurationKeys, defs: Iterable[VarDef],
                 defaults: dict[str, Any] | None = None) -> None:
        self._storage = storage
        self._keys = keys
        self.defs: list[VarDef] = list(defs)
        self._by_comp: dict[tuple, dict[tuple, VarDef]] = {}
        for d in self.defs:
            self._by_comp.setdefault(d.comp_key, {})[d.var_key] = d
        self._names: dict[str, VarDef] = {d.short_name: d for d in self.defs if d.evse is None}
        # Factory values from the YAML (``ocpp.defaults``), under what CSMS changes persisted.
        self._factory: dict[str, str] = {}
        for name, value in (defaults or {}).items():
            d = self._names.get(name)
            if d is None:
                continue  # a 1.6 key (ConfigurationKeys takes it) or another version's name
            text = ",".join(str(x) for x in value) if isinstance(value, list) else (
                _b(value) if isinstance(value, bool) else str(value))
            self._factory[d.storage_id] = text
        self.listeners: list[Callable[[VarDef, str], None]] = []

    # ------------------------------------------------------------------ typed access

    def lookup(self, component: str, variable: str, instance: str | None = None,
               evse: int | None = None, connector: int | None = None) -> VarDef:
        return self._by_comp[(component, None, evse, connector)][(variable, instance)]

    def value(self, component: str, variable: str, instance: str | None = None) -> str:
        return self._read(self.lookup(component, variable, instance), "Actual")

    def integer(self, component: str, variable: str, instance: str | None = None) -> int:
        try:
            return int(float(self.value(component, variable, instance)))
        except ValueError:
            return 0

    def flag(self, component: str, variable: str) -> bool:
        return self.value(component, variable).strip().lower() == "true"

    def members(self, component: str, variable: str) -> list[str]:
        return [x.strip() for x in self.value(component, variable).split(",") if x.strip()]

    def _read(self, d: VarDef, kind: str) -> str:
        attr = d.attr(kind)
        assert attr is not None
        if attr.getter is not None:
            return attr.getter()
        if d.key16 is not None and kind == "Actual":
            kd = self._keys.defs[d.key16]
            return kd.format(self._keys[d.key16])
        stored = self._storage.get_setting(self._skey(d, kind))
        if stored is not None:
            return stored
        factory = self._factory.get(d.storage_id)
        if factory is not None and kind == "Actual":
            return factory
        return attr.default or ""

    @staticmethod
    def _skey(d: VarDef, kind: str) -> str:
        return PREFIX + d.storage_id + ("" if kind == "Actual" else f"/{kind}")

    # ------------------------------------------------------------------ lookups

    def _find(self, component: dict, variable: dict) -> tuple[str, VarDef | None]:
        evse = component.get("evse") or {}
        key = (component["name"], component.get("instance"), evse.get("id"),
               evse.get("connectorId"))
        variables = self._by_comp.get(key)
        if variables is None:
            return "UnknownComponent", None
        d = variables.get((variable["name"], variable.get("instance")))
        if d is None:
            return "UnknownVariable", None
        return "Accepted", d

    # ------------------------------------------------------------------ Get/SetVariables

    def get_variable(self, item: dict) -> dict:
        """One GetVariableResult for one GetVariableData."""
        kind = item.get("attributeType", "Actual")
        result: dict[str, Any] = {"component": item["component"],
                                  "variable": item["variable"]}
        if "attributeType" in item:
            result["attributeType"] = kind
        status, d = self._find(item["component"], item["variable"])
        if d is None:
            result["attributeStatus"] = status
            return result
        attr = d.attr(kind)
        if attr is None:
            result["attributeStatus"] = "NotSupportedAttributeType"
            result["attributeType"] = kind
            return result
        if attr.mutability == "WriteOnly":
            result["attributeStatus"] = "Rejected"
            result["attributeStatusInfo"] = {"reasonCode": "WriteOnly"}
            return result
        result["attributeStatus"] = "Accepted"
        result["attributeType"] = kind
        result["attributeValue"] = self._read(d, kind)[:2500]
        return result

    def set_variable(self, item: dict) -> tuple[dict, VarDef | None]:
        """One SetVariableResult; the VarDef when a value was changed (for listeners)."""
        kind = item.get("attributeType", "Actual")
        result: dict[str, Any] = {"component": item["component"], "variable": item["variable"],
                                  "attributeType": kind}
        status, d = self._find(item["component"], item["variable"])
        if d is None:
            result["attributeStatus"] = status
            return result, None
        attr = d.attr(kind)
        if attr is None:
            result["attributeStatus"] = "NotSupportedAttributeType"
            return result, None
        if attr.mutability == "ReadOnly":
            result["attributeStatus"] = "Rejected"
            result["attributeStatusInfo"] = {"reasonCode": "ReadOnly"}
            return result, None
        text = item["attributeValue"]
        problem = self.validate(d, text)
        if problem is not None:
            result["attributeStatus"] = "Rejected"
            result["attributeStatusInfo"] = {"reasonCode": "InvalidValue",
                                             "additionalInfo": problem[:512]}
            return result, None
        text = self._normalize(d, text)
        if d.key16 is not None and kind == "Actual":
            status = self._keys.change(d.key16, text)
            if status not in ("Accepted", "RebootRequired"):
                result["attributeStatus"] = "Rejected"
                result["attributeStatusInfo"] = {"reasonCode": "InvalidValue"}
                return result, None
        else:
            self._storage.set_setting(self._skey(d, kind), text)
        result["attributeStatus"] = "RebootRequired" if d.reboot else "Accepted"
        for listener in self.listeners:
            listener(d, text)
        return result, d

    def validate(self, d: VarDef, text: str) -> str | None:
        """Why ``text`` is not a valid value of ``d``, or None."""
        t = d.data_type
        if t == "integer":
            if not _INT.match(text.strip()):
                return f"{text!r} is not an integer"
            number: float = int(text)
        elif t == "decimal":
            try:
                number = float(text)
            except ValueError:
                return f"{text!r} is not a decimal number"
            if not math.isfinite(number):
                return f"{text!r} is not a finite number"
        elif t == "boolean":
            if text.strip().lower() not in ("true", "false"):
                return f"{text!r} is not true or false"
            number = 0
        elif t == "dateTime":
            if "T" not in text:
                return f"{text!r} is not an RFC 3339 date-time"
            try:
                parse_iso(text)
            except ValueError:
                return f"{text!r} is not an RFC 3339 date-time"
            number = 0
        elif t in ("OptionList", "MemberList", "SequenceList"):
            items = [x.strip() for x in text.split(",")] if text.strip() else []
            if t == "OptionList" and len(items) != 1:
                return "exactly one option is needed"
            allowed = d.values_list or ()
            bad = [x for x in items if x not in allowed]
            if bad:
                return f"not supported: {', '.join(bad)}"
            if len(set(items)) != len(items):
                return "an item is listed twice"
            number = len(items)
            if t != "OptionList" and d.max_limit is not None and number > d.max_limit:
                return f"at most {d.max_limit:g} items"
            number = 0  # list limits are item counts, checked above
        else:  # string
            if d.max_limit is not None and len(text) > d.max_limit:
                return f"longer than {d.max_limit:g} characters"
            number = 0
        if t in ("integer", "decimal"):
            if d.min_limit is not None and number < d.min_limit:
                return f"{text} is below {d.min_limit:g}"
            if d.max_limit is not None and number > d.max_limit:
                return f"{text} is above {d.max_limit:g}"
        if d.check is not None:
            return d.check(text)
        return None

    @staticmethod
    def _normalize(d: VarDef, text: str) -> str:
        if d.data_type == "boolean":
            return text.strip().lower()
        if d.data_type == "integer":
            return str(int(text))
        if d.data_type in ("MemberList", "SequenceList", "OptionList"):
            return ",".join(x.strip() for x in text.split(",") if x.strip())
        return text

    # ------------------------------------------------------------------ reports

    def report_entry(self, d: VarDef) -> dict:
        attributes = []
        for a in d.attrs:
            entry: dict[str, Any] = {"type": a.type, "mutability": a.mutability,
                                     "persistent": a.getter is None, "constant": d.constant}
            if a.mutability != "WriteOnly":
                entry["value"] = self._read(d, a.type)[:2500]
            attributes.append(entry)
        return {"component": d.component_json(), "variable": d.variable_json(),
                "variableAttribute": attributes, "variableCharacteristics": d.characteristics()}

    def base_report(self, base: str) -> list[dict]:
        if base == "ConfigurationInventory":
            chosen = [d for d in self.defs if d.writable]
        elif base == "SummaryInventory":
            chosen = [d for d in self.defs
                      if d.component in ("ChargingStation", "EVSE", "Connector")
                      and d.name in ("AvailabilityState", "Available", "Problem")]
        else:
            chosen = list(self.defs)
        return [self.report_entry(d) for d in chosen]

    def custom_report(self, component_variables: list[dict] | None,
                      criteria: list[str] | None) -> list[dict]:
        """GetReport: the union of the requested component/variables, filtered by criteria."""
        chosen = list(self.defs)
        if component_variables:
            chosen = [d for d in chosen if any(_matches(d, cv) for cv in component_variables)]
        if criteria:
            chosen = [d for d in chosen if self._component_meets(d, criteria)]
        return [self.report_entry(d) for d in chosen]

    def _component_meets(self, d: VarDef, criteria: list[str]) -> bool:
        """B08: a component qualifies when one of the criteria variables of it reads true."""
        variables = self._by_comp.get(d.comp_key, {})
        for criterion in criteria:
            var = variables.get((criterion, None))
            if var is not None and var.data_type == "boolean" and var.attr("Actual") and \
                    self._read(var, "Actual") == "true":
                return True
        return False


def _matches(d: VarDef, cv: dict) -> bool:
    comp = cv["component"]
    if comp["name"] != d.component or comp.get("instance") != d.comp_instance:
        return False
    evse = comp.get("evse")
    if evse is not None:
        if evse["id"] != d.evse:
            return False
        if "connectorId" in evse and evse["connectorId"] != d.connector:
            return False
    var = cv.get("variable")
    if var is not None:
        if var["name"] != d.name or var.get("instance") != d.instance:
            return False
    return True


def split_report(entries: list[dict], header: dict, max_items: int,
                 max_bytes: int) -> list[list[dict]]:
    """Cut report data into messages of at most ``max_items`` entries and ``max_bytes``.

    ``header`` holds the other fields of the message, so the byte count is of the whole
    payload as sent.  An entry too big on its own still goes out, alone: dropping it would
    make the report silently incomplete.
    """
    chunks: list[list[dict]] = []
    current: list[dict] = []
    base = len(json.dumps({**header, "tbc": False, "seqNo": 0, "reportData": []},
                          separators=(",", ":")))
    size = base
    for entry in entries:
        entry_size = len(json.dumps(entry, separators=(",", ":"))) + 1
        if current and (len(current) >= max(1, max_items) or size + entry_size > max_bytes):
            chunks.append(current)
            current, size = [], base
        current.append(entry)
        size += entry_size
    if current:
        chunks.append(current)
    return chunks
