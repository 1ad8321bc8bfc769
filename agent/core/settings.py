"""The one settings store: typed, persisted values that the core and every OCPP version share.

One installation may speak 1.6 today and 2.0.1 tomorrow, so a setting must never fork into two
copies: HeartbeatInterval is the same stored value whether a 1.6 ChangeConfiguration or a 2.0.1
SetVariables (OCPPCommCtrlr.HeartbeatInterval) changed it.  The store holds definitions
(:class:`SettingDef`) and values; the versions are *views* of it: the 1.6 configuration keys
(:mod:`agent.ocpp.v16.keys`) show the definitions flagged ``v16`` under their own names, the
2.0.1 device model maps variables onto them (``VarDef.setting``).

Definitions come from two places: :data:`CORE_SETTINGS`, the ones the core reads itself
(authorization rules, metering intervals, message attempts, ...), and the block modules of the
versions, which register what only they know (``register``).  Names are the 1.6 key names where
1.6 has the setting: they are what installers and CSMS operators know.

Values start from the definition's default, then ``ocpp.defaults`` in the YAML file (factory
settings), then what a CSMS set, persisted in the SQLite state file under ``setting.<name>``.

Some list settings accept only what this station's hardware can do: a definition's
``choices`` is the vocabulary (every measurand the agent knows), its ``supported_by`` names a
*capability* that the core registers once it knows the hardware (``add_capability``; the
measurands every EVSE's meter and EV side can give, :mod:`agent.core.metering`).  A change
naming a member outside it is refused, in every version's view alike (1.6 3.16.4: Rejected,
no change); a stored or factory value is cut to it, with a warning, because a value the
station could never act on must not look accepted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Hashable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

log = logging.getLogger("cp_agent.settings")

PREFIX = "setting."
# Where values lived before the store became version-neutral; moved on first open.
_LEGACY_PREFIX = "v16."

# Measurands this agent can sample from any HAL meter (1.6 names; 2.0.1 lacks Temperature).
MEASURANDS = (
    "Energy.Active.Import.Register",
    "Energy.Active.Export.Register",
    "Power.Active.Import",
    "Power.Active.Export",  # out of the EV (a bidirectional stage; 0 on a charge-only one)
    "Current.Import",
    "Current.Export",
    "Current.Offered",
    "Voltage",
    "Frequency",
    "SoC",
    "Temperature",
    "Power.Reactive.Import",  # vars absorbed (a stage with reactive control; meters with Q)
    "Power.Reactive.Export",  # vars injected
    "Power.Factor",
)
SAMPLED_MAX = 9
# The capability (Settings.add_capability) of the measurand lists: what the hardware gives.
MEASURAND_CAPABILITY = "measurands"


class SettingError(Exception):
    """A value the setting does not accept; the message says why (logged, answered Rejected)."""


class SettingsBackend(Protocol):
    def settings(self, prefix: str = "") -> dict[str, str]: ...
    def set_setting(self, key: str, value: str) -> None: ...
    def delete_setting(self, key: str) -> None: ...


@dataclass(frozen=True)
class SettingDef:
    name: str
    kind: str  # "bool", "int", "csl" (comma-separated list), "str"
    default: Any
    readonly: bool = False
    reboot: bool = False
    min: int | None = None
    max: int | None = None
    choices: tuple[str, ...] | None = None  # allowed list members (the vocabulary)
    supported_by: str | None = None  # a capability narrowing choices to this station's
    max_items: int | None = None
    v16: bool = True  # shown as a 1.6 configuration key
    profile: str = "Core"  # the 1.6 feature profile that lists it
    secret: bool = False  # write-only (1.6 AuthorizationKey): listed, its value never shown

    def parse(self, text: str) -> Any:
        """Turn a CSMS's or installer's text into a typed value or raise :class:`SettingError`."""
        if self.kind == "bool":
            low = text.strip().lower()
            if low not in ("true", "false"):
                raise SettingError(f"{self.name}: {text!r} is not true or false")
            return low == "true"
        if self.kind == "int":
            try:
                value = int(text.strip())
            except ValueError:
                raise SettingError(f"{self.name}: {text!r} is not an integer") from None
            if self.min is not None and value < self.min:
                raise SettingError(f"{self.name}: {value} is below {self.min}")
            if self.max is not None and value > self.max:
                raise SettingError(f"{self.name}: {value} is above {self.max}")
            return value
        if self.kind == "csl":
            items = [x.strip() for x in text.split(",") if x.strip()]
            if self.max_items is not None and len(items) > self.max_items:
                raise SettingError(f"{self.name}: {len(items)} items, at most {self.max_items}")
            if self.choices is not None:
                bad = [x for x in items if x not in self.choices]
                if bad:
                    raise SettingError(f"{self.name}: not supported: {', '.join(bad)}")
            return items
        return text

    def format(self, value: Any) -> str:
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "csl":
            return ",".join(value)
        return str(value)


def _d(name: str, kind: str, default: Any, **kw: Any) -> SettingDef:
    return SettingDef(name, kind, default, **kw)


# Definitions a block derives from constants and its station's shape, made once per process
# and shape: a SettingDef (frozen, 14 fields) costs microseconds to build, and a swarm builds
# the same ones for every station.  The defaults they hold are shared, like CORE_SETTINGS'.
_MADE: dict[Hashable, tuple[SettingDef, ...]] = {}
_NOT_V16: dict[int, tuple[tuple[SettingDef, ...], tuple[SettingDef, ...]]] = {}


def defs_once(key: Hashable, make: Callable[[], Iterable[SettingDef]]) -> tuple[SettingDef, ...]:
    """``make()``'s definitions, made the first time ``key`` is asked for; ``key`` names the
    block and everything ``make`` reads (e.g. the number of EVSEs)."""
    defs = _MADE.get(key)
    if defs is None:
        defs = _MADE[key] = tuple(make())
    return defs


def not_v16(defs: tuple[SettingDef, ...]) -> tuple[SettingDef, ...]:
    """``defs`` shown as no 1.6 configuration key (``v16=False``), made once per tuple."""
    hit = _NOT_V16.get(id(defs))
    if hit is None or hit[0] is not defs:
        hit = _NOT_V16[id(defs)] = (defs, tuple(replace(d, v16=False) for d in defs))
    return hit[1]


# What the core itself reads. Bounds are the tighter of the versions' bounds.
CORE_SETTINGS: tuple[SettingDef, ...] = (
    _d("AllowOfflineTxForUnknownId", "bool", False),
    _d("AuthorizationCacheEnabled", "bool", True),
    _d("AuthorizeRemoteTxRequests", "bool", False),
    _d("ClockAlignedDataInterval", "int", 0, min=0, max=86400),
    _d("ConnectionTimeOut", "int", 60, min=1, max=3600),
    _d("HeartbeatInterval", "int", 300, min=0, max=86400),
    _d("LocalAuthorizeOffline", "bool", True),
    _d("LocalPreAuthorize", "bool", False),
    _d("MaxEnergyOnInvalidId", "int", 0, min=0),
    _d("MeterValuesAlignedData", "csl", ["Energy.Active.Import.Register"], choices=MEASURANDS,
       supported_by=MEASURAND_CAPABILITY, max_items=SAMPLED_MAX),
    _d("MeterValuesSampledData", "csl", ["Energy.Active.Import.Register"], choices=MEASURANDS,
       supported_by=MEASURAND_CAPABILITY, max_items=SAMPLED_MAX),
    _d("MeterValueSampleInterval", "int", 60, min=0, max=86400),
    _d("MinimumStatusDuration", "int", 0, min=0, max=3600),
    _d("ResetRetries", "int", 1, min=0, max=10),
    _d("StopTransactionOnEVSideDisconnect", "bool", True),
    _d("StopTransactionOnInvalidId", "bool", True),
    _d("StopTxnAlignedData", "csl", [], choices=MEASURANDS, supported_by=MEASURAND_CAPABILITY,
       max_items=SAMPLED_MAX),
    _d("StopTxnSampledData", "csl", [], choices=MEASURANDS, supported_by=MEASURAND_CAPABILITY,
       max_items=SAMPLED_MAX),
    _d("TransactionMessageAttempts", "int", 3, min=1, max=100),
    _d("TransactionMessageRetryInterval", "int", 60, min=1, max=86400),
    _d("UnlockConnectorOnEVSideDisconnect", "bool", True),
    _d("WebSocketPingInterval", "int", 60, min=0, max=3600),
    _d("LocalAuthListEnabled", "bool", True, profile="LocalAuthListManagement"),
    _d("LocalAuthListMaxLength", "int", 10000, readonly=True,
       profile="LocalAuthListManagement"),
    # Rules 1.6 has no key for; the 2.0.1 device model shows them (AuthCtrlr, AuthCacheCtrlr,
    # LocalAuthListCtrlr, TxCtrlr). Their defaults are what 1.6 does.
    _d("DisableRemoteAuthorization", "bool", False, v16=False),
    _d("AuthCacheDisablePostAuthorize", "bool", False, v16=False),
    _d("LocalAuthListDisablePostAuthorize", "bool", False, v16=False),
    _d("AuthCacheLifeTime", "int", 0, min=0, max=31536000, v16=False),  # 0: no lifetime
    _d("TxBeforeAcceptedEnabled", "bool", False, readonly=True, v16=False),
)


class Settings:
    """Typed values of every registered setting: defaults, YAML factory values, CSMS changes."""

    def __init__(self, backend: SettingsBackend, defs: Iterable[SettingDef] = CORE_SETTINGS,
                 overrides: dict[str, Any] | None = None) -> None:
        self._backend = backend
        self.defs: dict[str, SettingDef] = {}
        self._values: dict[str, Any] = {}
        self._overrides = dict(overrides or {})
        self.listeners: list[Callable[[str, Any], None]] = []
        self._capabilities: dict[str, Callable[[], Collection[str]]] = {}
        self._stored = self._load()
        self.register(defs)

    def _load(self) -> dict[str, str]:
        stored = {k[len(PREFIX):]: v for k, v in self._backend.settings(PREFIX).items()}
        for key, text in self._backend.settings(_LEGACY_PREFIX).items():
            name = key[len(_LEGACY_PREFIX):]
            if name not in stored:
                self._backend.set_setting(PREFIX + name, text)
                stored[name] = text
            self._backend.delete_setting(key)
        return stored

    def register(self, defs: Iterable[SettingDef]) -> None:
        """Add definitions (a block module's own settings); a name is defined once."""
        known_defs, values = self.defs, self._values
        overrides, stored, capabilities = self._overrides, self._stored, self._capabilities
        for d in defs:
            name = d.name
            known = known_defs.get(name)
            if known is not None:
                if known is not d and known != d:
                    raise ValueError(f"setting {name} defined twice, differently")
                continue
            known_defs[name] = d
            if name in overrides or name in stored or d.supported_by in capabilities:
                values[name] = self._fit(d, self._initial(d))
            else:  # what _initial and _fit give for a value nobody set
                values[name] = d.default

    def add_capability(self, name: str, supported: Callable[[], Collection[str]]) -> None:
        """What this station can do for the settings ``supported_by`` ``name`` (asked anew at
        every change, so a driver may learn more about its device after start-up)."""
        self._capabilities[name] = supported
        have: set[str] | None = None  # asked once for all the lists it narrows
        for d in self.defs.values():
            if d.supported_by == name and self._values[d.name]:
                if have is None:
                    have = set(supported())
                allowed = have.intersection(d.choices) if d.choices is not None else set()
                self._values[d.name] = self._fit(d, self._values[d.name], allowed)

    def choices(self, name: str) -> tuple[str, ...] | None:
        """The members the list setting ``name`` accepts on this station (None: any)."""
        d = self.defs[name]
        if d.choices is None:
            return None
        supported = self._capabilities.get(d.supported_by or "")
        if supported is None:
            return d.choices
        have = set(supported())
        return tuple(c for c in d.choices if c in have)

    def _unsupported(self, d: SettingDef, value: Any,
                     allowed: set[str] | None = None) -> list[str]:
        if d.kind != "csl" or not value or d.supported_by not in self._capabilities:
            return []
        if allowed is None:
            allowed = set(self.choices(d.name) or ())
        return [x for x in value if x not in allowed]

    def _fit(self, d: SettingDef, value: Any, allowed: set[str] | None = None) -> Any:
        """A stored or factory list cut to what the station supports (in memory only: the
        stored text stays, for hardware that can do more)."""
        bad = self._unsupported(d, value, allowed)
        if not bad:
            return value
        log.warning("%s: this station's hardware cannot give %s; left out", d.name,
                    ", ".join(bad))
        return [x for x in value if x not in bad]

    def _initial(self, d: SettingDef) -> Any:
        value = d.default
        if d.name in self._overrides:
            raw = self._overrides[d.name]
            text = ",".join(str(v) for v in raw) if isinstance(raw, list) else (
                d.format(raw) if isinstance(raw, bool) else str(raw))
            value = d.parse(text)  # a bad factory value is a configuration error
        text = self._stored.get(d.name)
        if text is not None:
            try:
                value = d.parse(text)
            except SettingError:
                log.warning("stored %s=%r is no longer valid; using %r", d.name, text, value)
        return value

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.defs

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def items(self) -> list[tuple[SettingDef, Any]]:
        return [(self.defs[n], self._values[n]) for n in self.defs]

    def change(self, name: str, text: str) -> str:
        """A CSMS change: Accepted, Rejected, RebootRequired or NotSupported (1.6 words)."""
        d = self.defs.get(name)
        if d is None:
            return "NotSupported"
        if d.readonly:
            return "Rejected"
        try:
            value = d.parse(text)
            bad = self._unsupported(d, value)
            if bad:
                raise SettingError(f"{d.name}: not supported by this station: {', '.join(bad)}")
        except SettingError as exc:
            log.info("change refused: %s", exc)
            return "Rejected"
        self._store(d, value)
        return "RebootRequired" if d.reboot else "Accepted"

    def set_internal(self, name: str, value: Any) -> None:
        """Change a value on the station's own initiative (e.g. HeartbeatInterval from Boot)."""
        self._store(self.defs[name], value)

    def _store(self, d: SettingDef, value: Any) -> None:
        self._values[d.name] = value
        self._backend.set_setting(PREFIX + d.name, d.format(value))
        for listener in list(self.listeners):
            listener(d.name, value)
