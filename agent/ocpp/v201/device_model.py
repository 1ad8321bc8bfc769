"""The OCPP 2.0.1 device model: components, variables, attributes and their characteristics.

2.0.1 replaces 1.6's flat configuration keys with (component, variable, attribute) triples.
This module is the machinery that answers GetVariables / SetVariables / reports from the
declarations; the declarations themselves belong to the functional blocks that use them (each
block's ``variables()``: TxCtrlr in transactions, AuthCtrlr in authorization, ...), and the
model of a station is the union of its blocks' variables.

One installation may speak 1.6 today and 2.0.1 tomorrow, so a setting must not fork into two
copies: a variable the core also reads (HeartbeatInterval, TxUpdatedInterval =
MeterValueSampleInterval, EVConnectionTimeOut = ConnectionTimeOut, ...) names its neutral
setting (``VarDef.setting``) and is read and written through the one
:class:`agent.core.settings.Settings` store, whichever protocol changed it.  Variables 2.0.1
alone has are persisted under the ``v201.dm.`` settings prefix (unchanged, so state files keep
working).  Values that describe the live station (AvailabilityState, Power, Problem, DateTime,
...) are read from getters the blocks supply, never stored.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from agent.clock import parse_iso
from agent.core.settings import MEASURANDS, SettingError, Settings
from agent.core.settings import PREFIX as SETTINGS_PREFIX
from agent.ocpp.adapter import EvseInfo
from agent.ocpp.blocks import Block
from agent.storage import Storage

log = logging.getLogger("cp_agent.v201")

PREFIX = "v201.dm."

# Measurands the HAL meter can provide that 2.0.1 also knows (2.0.1 has no Temperature).
MEASURANDS_201 = tuple(m for m in MEASURANDS if m != "Temperature")
TX_POINTS = ("EVConnected", "Authorized", "PowerPathClosed", "EnergyTransfer")
NETWORK_SLOTS = ("1", "2", "3", "4", "5")  # SetNetworkProfile configuration slots
AVAILABILITY_STATES = ("Available", "Occupied", "Reserved", "Unavailable", "Faulted")

_INT = re.compile(r"^[+-]?\d+$")

__all__ = ["Attr", "DeviceModel", "EvseInfo", "MEASURANDS_201", "VarDef", "VariableBlock",
           "factory_names", "ro", "rw", "split_report"]


ATTRIBUTE_TYPES = ("Actual", "Target", "MinSet", "MaxSet")  # AttributeEnumType


@dataclass(frozen=True)
class Attr:
    """One attribute (Actual, Target, MinSet, MaxSet) of a variable.

    A variable has the attributes its declaration lists and no others: asking for another is
    NotSupportedAttributeType (B05.FR.06, B06.FR.08).  Each has its own mutability and is
    stored on its own; the data type, unit and limits (variableCharacteristics) are the
    variable's and hold for all of them.  MinSet <= Target <= MaxSet where a variable has
    them (a set value that would cross another is refused).
    """

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
    setting: str | None = None  # the neutral setting (agent.core.settings) holding the value
    reboot: bool = False  # a change takes effect only after a restart
    check: Callable[[str], str | None] | None = None  # extra validation: reason or None
    constant: bool = False
    # Whether variable monitors may watch it (block N, agent/ocpp/v201/monitoring.py): any
    # variable with an Actual value, unless its block says otherwise.
    monitoring: bool = True

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
    def monitorable(self) -> bool:
        """supportsMonitoring: a monitor needs an Actual value to watch."""
        return self.monitoring and self.attr("Actual") is not None

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

    def characteristics(self, values_list: tuple[str, ...] | None = None) -> dict:
        """``values_list``: what this station accepts, where narrower than the declaration."""
        out: dict[str, Any] = {"dataType": self.data_type,
                               "supportsMonitoring": self.monitorable}
        if self.unit:
            out["unit"] = self.unit
        if self.min_limit is not None:
            out["minLimit"] = self.min_limit
        if self.max_limit is not None:
            out["maxLimit"] = self.max_limit
        values = self.values_list if values_list is None else values_list
        if values:
            out["valuesList"] = ",".join(values)[:1000]
        return out


def b(value: bool) -> str:
    return "true" if value else "false"


def num(value: float) -> str:
    """A decimal as a meter shows it: no float noise, no trailing zeros."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def ro(component: str, name: str, data_type: str, value: str | Callable[[], str] = "",
       *, attrs: tuple[Attr, ...] = (), **kw: Any) -> VarDef:
    """Read-only: a live getter, or a fixed value an installer may set in ``ocpp.defaults``
    (or, with ``setting=``, the neutral setting's value). ``attrs``: its other attributes
    (MinSet, MaxSet, Target)."""
    attr = (Attr("Actual", "ReadOnly", getter=value) if callable(value)
            else Attr("Actual", "ReadOnly", default=value))
    return VarDef(component, name, data_type, (attr, *attrs), **kw)


def rw(component: str, name: str, data_type: str, default: str = "", *,
       attrs: tuple[Attr, ...] = (), **kw: Any) -> VarDef:
    """Read-write: stored under ``v201.dm.`` or, with ``setting=``, the neutral setting.
    ``attrs``: its other attributes (MinSet, MaxSet, Target)."""
    return VarDef(component, name, data_type,
                  (Attr("Actual", "ReadWrite", default=default), *attrs), **kw)


class VariableBlock(Block):
    """A 2.0.1 block that owns device-model variables.

    ``VARIABLES`` are the fixed declarations, readable without a live station (the composition
    root maps ``ocpp.defaults`` from them before the settings store exists, see
    :func:`factory_names`); every variable mapped to a neutral setting must be one of them.
    ``live_variables()`` adds those that depend on the station (per EVSE, live getters).
    """

    VARIABLES: ClassVar[tuple[VarDef, ...]] = ()

    def live_variables(self) -> list[VarDef]:
        return []

    def variables(self) -> list[VarDef]:
        live = self.live_variables()
        mapped = [d.short_name for d in live if d.setting is not None]
        if mapped:
            raise TypeError(f"{type(self).__name__}: variables mapped to a setting must be in "
                            f"VARIABLES: {', '.join(mapped)}")
        return [*self.VARIABLES, *live]

    @property
    def dm(self) -> DeviceModel:
        from agent.ocpp.v201.provisioning import Provisioning

        return self.adapter.block(Provisioning).dm

    async def send_report_parts(self, action: str, field: str, request_id: int,
                                entries: list[dict]) -> None:
        """A report (NotifyReport, NotifyMonitoringReport) sent after the request's answer,
        cut by DeviceDataCtrlr ItemsPerMessage / BytesPerMessage [GetReport]: seqNo from 0,
        ``tbc`` on every part but the last; a part the CSMS refuses ends it."""
        from agent.link.rpc import CallFailed

        await self.adapter.after_answer()
        header = {"requestId": request_id, "generatedAt": self.clock.now_iso()}
        chunks = split_report(
            entries, header,
            self.dm.integer("DeviceDataCtrlr", "ItemsPerMessage", "GetReport"),
            self.dm.integer("DeviceDataCtrlr", "BytesPerMessage", "GetReport"))
        for seq, chunk in enumerate(chunks):
            payload = {**header, "seqNo": seq, field: chunk}
            if seq < len(chunks) - 1:
                payload["tbc"] = True
            try:
                await self.adapter.call(action, payload, pending_ok=True)
            except CallFailed as exc:
                log.warning("%s %s stopped at part %d: %s", action, request_id, seq, exc)
                return


# Factory values of neutral settings where a 2.0.1 station has always differed from the
# neutral default (AuthCacheCtrlr.LifeTime: a day, where 1.6 has no lifetime at all).
FACTORY_201: dict[str, Any] = {"AuthCacheLifeTime": 86400}


def _block_classes() -> tuple[type[Block], ...]:
    from agent.ocpp.v201 import SPEC  # the registry entry imports this module

    return SPEC.blocks


def factory_names(defaults: dict[str, Any],
                  blocks: Iterable[type[Block]] | None = None) -> dict[str, Any]:
    """``ocpp.defaults`` written with 2.0.1 names of shared settings, as neutral names
    (``blocks``: another version's blocks sharing this device model, e.g. 2.1's).

    An installer writing ``SampledDataCtrlr.TxUpdatedInterval: 10`` means the same setting as
    ``MeterValueSampleInterval: 10``; the settings store only knows the latter.  Needs no live
    adapter: the mapped variables are the blocks' fixed ``VARIABLES``.  Includes the 2.0.1
    factory values of :data:`FACTORY_201` (``VersionSpec.factory_names``: names the installer
    wrote as such win).
    """
    names = {d.short_name: d.setting for cls in (blocks or _block_classes())
             for d in getattr(cls, "VARIABLES", ()) if d.setting}
    out = dict(FACTORY_201)
    out.update({names[name]: value for name, value in defaults.items() if name in names})
    return out


def check_password(text: str) -> str | None:
    # 2.0.1 passwordString: 16-40 characters of the identifierString set plus a few specials.
    if not re.fullmatch(r"[A-Za-z0-9*\-_=:+|@.]{16,40}", text):
        return "16-40 letters, digits or *-_=:+|@."
    return None


class DeviceModel:
    """Typed, persisted access to the variables; GetVariables/SetVariables/report logic."""

    # The OCPP version whose reports this builds (2.1 reports a list's item limit as
    # maxElements, keeping maxLimit for string lengths; set by the 2.1 provisioning block).
    version = "2.0.1"

    def __init__(self, settings: Settings, storage: Storage, defs: Iterable[VarDef],
                 defaults: dict[str, Any] | None = None) -> None:
        self._settings = settings
        self._storage = storage
        self.defs: list[VarDef] = list(defs)
        self._by_comp: dict[tuple, dict[tuple, VarDef]] = {}
        for d in self.defs:
            known = self._by_comp.setdefault(d.comp_key, {})
            if d.var_key in known:
                raise ValueError(f"device-model variable {d.storage_id} declared twice")
            if d.setting is not None and d.setting not in settings:
                raise ValueError(f"{d.short_name} maps to the unknown setting {d.setting}")
            known[d.var_key] = d
            kinds = [a.type for a in d.attrs]
            if not kinds or any(k not in ATTRIBUTE_TYPES for k in kinds) or \
                    len(set(kinds)) != len(kinds):
                raise ValueError(f"device-model variable {d.storage_id}: attributes {kinds} "
                                 f"(each of {', '.join(ATTRIBUTE_TYPES)} at most once)")
        self._names: dict[str, VarDef] = {d.short_name: d for d in self.defs if d.evse is None}
        # Factory values from the YAML (``ocpp.defaults``), under what CSMS changes persisted;
        # those of mapped variables went to the settings store (factory_names).
        self._factory: dict[str, str] = {}
        for name, value in (defaults or {}).items():
            d = self._names.get(name)
            if d is None or d.setting is not None:
                continue  # a neutral / 1.6 name, another version's name, or a mapped variable
            text = ",".join(str(x) for x in value) if isinstance(value, list) else (
                b(value) if isinstance(value, bool) else str(value))
            self._factory[d.storage_id] = text
        # Called after a CSMS changed a value: ``listeners`` for the Actual attribute,
        # ``attribute_listeners`` (VarDef, attribute type, value) for every attribute.
        self.listeners: list[Callable[[VarDef, str], None]] = []
        self.attribute_listeners: list[Callable[[VarDef, str, str], None]] = []
        self._migrate()

    def _migrate(self) -> None:
        """Values a CSMS set while a variable was 2.0.1's own move to its neutral setting."""
        for d in self.defs:
            if d.setting is None:
                continue
            old = self._skey(d, "Actual")
            text = self._storage.get_setting(old)
            if text is None:
                continue
            if self._storage.get_setting(SETTINGS_PREFIX + d.setting) is None:
                try:
                    self._settings.set_internal(d.setting,
                                                self._settings.defs[d.setting].parse(text))
                except SettingError as exc:
                    log.warning("stored %s=%r not carried over: %s", d.short_name, text, exc)
            self._storage.delete_setting(old)

    # ------------------------------------------------------------------ typed access

    def lookup(self, component: str, variable: str, instance: str | None = None,
               evse: int | None = None, connector: int | None = None) -> VarDef:
        return self._by_comp[(component, None, evse, connector)][(variable, instance)]

    def value(self, component: str, variable: str, instance: str | None = None, *,
              evse: int | None = None, connector: int | None = None,
              default: str | None = None, attribute: str = "Actual") -> str:
        """The value of one attribute (Actual unless named); ``default`` (when given) for a
        variable not declared here or without that attribute."""
        try:
            d = self.lookup(component, variable, instance, evse, connector)
            if d.attr(attribute) is None:
                raise KeyError(attribute)
        except KeyError:
            if default is None:
                raise
            return default
        return self._read(d, attribute)

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
        if d.setting is not None and kind == "Actual":
            return self._settings.defs[d.setting].format(self._settings[d.setting])
        stored = self._storage.get_setting(self._skey(d, kind))
        if stored is not None:
            return stored
        factory = self._factory.get(d.storage_id)
        if factory is not None and kind == "Actual":
            return factory
        return attr.default or ""

    def values_list(self, d: VarDef) -> tuple[str, ...] | None:
        """The members a list variable accepts here: its declaration, narrowed for a mapped
        one to what the neutral setting accepts on this station (the measurand lists: what
        the hardware gives, TC_B_53_CS "valuesList=subset(<supported measurands>)")."""
        if d.values_list is None or d.setting is None:
            return d.values_list
        allowed = self._settings.choices(d.setting)
        if allowed is None:
            return d.values_list
        return tuple(v for v in d.values_list if v in allowed)

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

    def find(self, component: dict, variable: dict) -> tuple[str, VarDef | None]:
        """The variable a ComponentType / VariableType pair names: ("Accepted", it), or
        ("UnknownComponent" / "UnknownVariable", None)."""
        return self._find(component, variable)

    def actual(self, d: VarDef) -> str | None:
        """The Actual value of ``d`` as a report shows it; None when it has none to read
        (no Actual attribute, or a WriteOnly one)."""
        attr = d.attr("Actual")
        if attr is None or attr.mutability == "WriteOnly":
            return None
        return self._read(d, "Actual")

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
        problem = self._order_problem(d, kind, text)
        if problem is not None:
            result["attributeStatus"] = "Rejected"
            result["attributeStatusInfo"] = {"reasonCode": "InvalidValue",
                                             "additionalInfo": problem[:512]}
            return result, None
        if d.setting is not None and kind == "Actual":
            status = self._settings.change(d.setting, text)
            if status not in ("Accepted", "RebootRequired"):
                result["attributeStatus"] = "Rejected"
                result["attributeStatusInfo"] = {"reasonCode": "InvalidValue"}
                return result, None
        else:
            self._storage.set_setting(self._skey(d, kind), text)
        result["attributeStatus"] = "RebootRequired" if d.reboot else "Accepted"
        if kind == "Actual":
            for listener in self.listeners:
                listener(d, text)
        for attribute_listener in self.attribute_listeners:
            attribute_listener(d, kind, text)
        return result, d

    def _order_problem(self, d: VarDef, kind: str, text: str) -> str | None:
        """MinSet <= Target <= MaxSet (numbers only): why ``text`` for ``kind`` would break
        it, or None."""
        order = ("MinSet", "Target", "MaxSet")
        if kind not in order or d.data_type not in ("integer", "decimal"):
            return None
        new = float(text)
        rank = order.index(kind)
        for other in order:
            if other == kind or d.attr(other) is None:
                continue
            try:
                value = float(self._read(d, other))
            except ValueError:
                continue  # not set: nothing to cross
            below = order.index(other) < rank
            if (below and new < value) or (not below and new > value):
                return (f"{kind} {text} would be {'below' if below else 'above'} "
                        f"{other} {self._read(d, other)}")
        return None

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
            allowed = self.values_list(d) or ()
            bad = [x for x in items if x not in allowed]
            if bad:
                return f"not supported by this station: {', '.join(bad)}"
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

    def report_entry(self, d: VarDef, *, writable_only: bool = False) -> dict:
        """One ReportData: every attribute of ``d`` (``writable_only``: those a CSMS can set,
        for ConfigurationInventory, TC_B_12_CS "mutability = ReadWrite or WriteOnly")."""
        attributes = []
        for a in d.attrs:
            if writable_only and a.mutability == "ReadOnly":
                continue
            entry: dict[str, Any] = {"type": a.type, "mutability": a.mutability,
                                     "persistent": a.getter is None, "constant": d.constant}
            if a.mutability != "WriteOnly":
                entry["value"] = self._read(d, a.type)[:2500]
            attributes.append(entry)
        characteristics = d.characteristics(self.values_list(d))
        if self.version == "2.1" and d.data_type in ("MemberList", "SequenceList") and \
                "maxLimit" in characteristics:
            # The declared maxLimit of a list is its item count (see validate).
            items = int(characteristics.pop("maxLimit"))
            if items >= 1:
                characteristics["maxElements"] = items
        return {"component": d.component_json(), "variable": d.variable_json(),
                "variableAttribute": attributes,
                "variableCharacteristics": characteristics}

    def base_report(self, base: str) -> list[dict]:
        if base == "ConfigurationInventory":
            return [self.report_entry(d, writable_only=True) for d in self.defs if d.writable]
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
    """B08 (errata 2023-12 B08.FR.22-25): what is left out of a componentVariable matches
    every value of it. No component.instance: every instance and none; no evse: every EVSE and
    the station level; an evse without connectorId: the EVSE and each of its connectors; no
    variable: all of the component's; no variable.instance: every instance of the variable."""
    comp = cv["component"]
    if comp["name"] != d.component:
        return False
    if "instance" in comp and comp["instance"] != d.comp_instance:
        return False
    evse = comp.get("evse")
    if evse is not None:
        if evse["id"] != d.evse:
            return False
        if "connectorId" in evse and evse["connectorId"] != d.connector:
            return False
    var = cv.get("variable")
    if var is not None:
        if var["name"] != d.name:
            return False
        if "instance" in var and var["instance"] != d.instance:
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
