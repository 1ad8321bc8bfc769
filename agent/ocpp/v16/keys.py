"""OCPP 1.6 configuration keys (chapter 9 of the 1.6 edition 2 specification).

Each key is declared once with its type, accessibility, bounds and whether a change needs a
reboot.  Values the CSMS sets are persisted (storage namespace ``v16.``) and survive restarts;
values from ``ocpp.defaults`` in the YAML file are the factory settings underneath them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.storage import Storage

# Measurands this agent can sample from any HAL meter (1.6 Measurand enumeration).
MEASURANDS = (
    "Energy.Active.Import.Register",
    "Energy.Active.Export.Register",
    "Power.Active.Import",
    "Current.Import",
    "Current.Offered",
    "Voltage",
    "Frequency",
    "SoC",
    "Temperature",
)


class KeyError16(Exception):
    """A value the key does not accept; the message says why (logged, answered Rejected)."""


@dataclass(frozen=True)
class KeyDef:
    name: str
    kind: str  # "bool", "int", "csl", "str"
    default: Any
    readonly: bool = False
    reboot: bool = False
    min: int | None = None
    max: int | None = None
    choices: tuple[str, ...] | None = None  # allowed CSL members
    max_items: int | None = None
    profile: str = "Core"

    def parse(self, text: str) -> Any:
        """Turn the CSMS's string into a typed value or raise :class:`KeyError16`."""
        if self.kind == "bool":
            low = text.strip().lower()
            if low not in ("true", "false"):
                raise KeyError16(f"{self.name}: {text!r} is not true or false")
            return low == "true"
        if self.kind == "int":
            try:
                value = int(text.strip())
            except ValueError:
                raise KeyError16(f"{self.name}: {text!r} is not an integer") from None
            if self.min is not None and value < self.min:
                raise KeyError16(f"{self.name}: {value} is below {self.min}")
            if self.max is not None and value > self.max:
                raise KeyError16(f"{self.name}: {value} is above {self.max}")
            return value
        if self.kind == "csl":
            items = [x.strip() for x in text.split(",") if x.strip()]
            if self.max_items is not None and len(items) > self.max_items:
                raise KeyError16(f"{self.name}: {len(items)} items, at most {self.max_items}")
            if self.choices is not None:
                bad = [x for x in items if x not in self.choices]
                if bad:
                    raise KeyError16(f"{self.name}: not supported: {', '.join(bad)}")
            return items
        return text

    def format(self, value: Any) -> str:
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "csl":
            return ",".join(value)
        return str(value)


SAMPLED_MAX = 9


def key_table(evse_count: int) -> dict[str, KeyDef]:
    k = [
        KeyDef("AllowOfflineTxForUnknownId", "bool", False),
        KeyDef("AuthorizationCacheEnabled", "bool", True),
        KeyDef("AuthorizeRemoteTxRequests", "bool", False),
        KeyDef("BlinkRepeat", "int", 3, min=0, max=100),
        KeyDef("ClockAlignedDataInterval", "int", 0, min=0, max=86400),
        KeyDef("ConnectionTimeOut", "int", 60, min=1, max=3600),
        KeyDef("ConnectorPhaseRotation", "csl", ["0.RST"], max_items=evse_count + 1),
        KeyDef("ConnectorPhaseRotationMaxLength", "int", evse_count + 1, readonly=True),
        KeyDef("GetConfigurationMaxKeys", "int", 64, readonly=True),
        KeyDef("HeartbeatInterval", "int", 300, min=0, max=86400),
        KeyDef("LightIntensity", "int", 100, min=0, max=100),
        KeyDef("LocalAuthorizeOffline", "bool", True),
        KeyDef("LocalPreAuthorize", "bool", False),
        KeyDef("MaxEnergyOnInvalidId", "int", 0, min=0),
        KeyDef("MeterValuesAlignedData", "csl", ["Energy.Active.Import.Register"],
               choices=MEASURANDS, max_items=SAMPLED_MAX),
        KeyDef("MeterValuesAlignedDataMaxLength", "int", SAMPLED_MAX, readonly=True),
        KeyDef("MeterValuesSampledData", "csl", ["Energy.Active.Import.Register"],
               choices=MEASURANDS, max_items=SAMPLED_MAX),
        KeyDef("MeterValuesSampledDataMaxLength", "int", SAMPLED_MAX, readonly=True),
        KeyDef("MeterValueSampleInterval", "int", 60, min=0, max=86400),
        KeyDef("MinimumStatusDuration", "int", 0, min=0, max=3600),
        KeyDef("NumberOfConnectors", "int", evse_count, readonly=True),
        KeyDef("ResetRetries", "int", 1, min=0, max=10),
        KeyDef("StopTransactionOnEVSideDisconnect", "bool", True),
        KeyDef("StopTransactionOnInvalidId", "bool", True),
        KeyDef("StopTxnAlignedData", "csl", [], choices=MEASURANDS, max_items=SAMPLED_MAX),
        KeyDef("StopTxnAlignedDataMaxLength", "int", SAMPLED_MAX, readonly=True),
        KeyDef("StopTxnSampledData", "csl", [], choices=MEASURANDS, max_items=SAMPLED_MAX),
        KeyDef("StopTxnSampledDataMaxLength", "int", SAMPLED_MAX, readonly=True),
        KeyDef("SupportedFeatureProfiles", "csl",
               ["Core", "LocalAuthListManagement", "RemoteTrigger"], readonly=True),
        KeyDef("SupportedFeatureProfilesMaxLength", "int", 6, readonly=True),
        KeyDef("TransactionMessageAttempts", "int", 3, min=1, max=100),
        KeyDef("TransactionMessageRetryInterval", "int", 60, min=1, max=86400),
        KeyDef("UnlockConnectorOnEVSideDisconnect", "bool", True),
        KeyDef("WebSocketPingInterval", "int", 60, min=0, max=3600),
        KeyDef("LocalAuthListEnabled", "bool", True, profile="LocalAuthListManagement"),
        KeyDef("LocalAuthListMaxLength", "int", 10000, readonly=True,
               profile="LocalAuthListManagement"),
        KeyDef("SendLocalListMaxLength", "int", 1000, readonly=True,
               profile="LocalAuthListManagement"),
    ]
    return {d.name: d for d in k}


class ConfigurationKeys:
    """Typed view of the 1.6 keys: defaults, YAML overrides, CSMS changes (persisted)."""

    PREFIX = "v16."

    def __init__(self, storage: Storage, evse_count: int,
                 overrides: dict[str, Any] | None = None) -> None:
        self._storage = storage
        self.defs = key_table(evse_count)
        self._values: dict[str, Any] = {}
        self.listeners: list[Callable[[str, Any], None]] = []
        for name, d in self.defs.items():
            self._values[name] = d.default
        for name, value in (overrides or {}).items():
            d = self.defs.get(name)
            if d is None:
                continue  # keys of other versions share the `ocpp.defaults` mapping
            text = d.format(value) if not isinstance(value, str) else value
            if isinstance(value, list):
                text = ",".join(str(v) for v in value)
            self._values[name] = d.parse(text)
        for key, text in storage.settings(self.PREFIX).items():
            name = key[len(self.PREFIX):]
            d = self.defs.get(name)
            if d is None:
                continue
            try:
                self._values[name] = d.parse(text)
            except KeyError16:
                pass  # a value our newer bounds refuse: keep the default

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def get(self, name: str) -> Any:
        return self._values.get(name)

    def items(self) -> list[tuple[KeyDef, Any]]:
        return [(self.defs[n], self._values[n]) for n in self.defs]

    def change(self, name: str, text: str) -> str:
        """ChangeConfiguration: Accepted, Rejected, RebootRequired or NotSupported."""
        d = self.defs.get(name)
        if d is None:
            return "NotSupported"
        if d.readonly:
            return "Rejected"
        try:
            value = d.parse(text)
        except KeyError16:
            return "Rejected"
        self._values[name] = value
        self._storage.set_setting(self.PREFIX + name, d.format(value))
        for listener in self.listeners:
            listener(name, value)
        return "RebootRequired" if d.reboot else "Accepted"

    def set_internal(self, name: str, value: Any) -> None:
        """Change a value on the station's own initiative (e.g. HeartbeatInterval from Boot)."""
        d = self.defs[name]
        self._values[name] = value
        self._storage.set_setting(self.PREFIX + name, d.format(value))
        for listener in self.listeners:
            listener(name, value)
