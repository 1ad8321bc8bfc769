"""2.0.1 block N, monitoring: variable monitors, their events, and hardware faults.

Monitors (N02-N08) watch device-model variables and report through NotifyEvent
(:mod:`agent.ocpp.v201.monitors` says when each type fires).  There are three kinds:

- hard-wired: one per component that reports a hardware fault (PowerContactor.Problem,
  RCD.Tripped, TokenReader.Problem, ...).  A fault the core raises or clears is reported by
  its monitor: trigger Delta, eventNotificationType HardWiredMonitor, techCode / techInfo,
  ``cleared`` when it went.  They cannot be changed or cleared.
- preconfigured: what the station ships with.  Per EVSE: EVSE.Power above its rating
  (severity 4, the FactoryDefault set) and EVSE.ACVoltage outside 207-253 V (severity 6,
  active only with monitoring base All).  The CSMS may change them (SetVariableMonitoring
  with their id), not clear them; FactoryDefault / HardWiredOnly restore them.
- custom: set by the CSMS (N04), ids from 1, kept in the state file.

SetMonitoringBase (N03): All activates every preconfigured monitor and keeps the custom ones;
FactoryDefault activates the FactoryDefault set; HardWiredOnly none; both of these remove
the custom monitors and undo the CSMS's changes to preconfigured ones.  SetMonitoringLevel
(N05): only events of a severity number at or below it are reported.  While offline, a
monitor's event is queued (the durable outbox, as every NotifyEvent of this block) only when
its severity is at or below MonitoringCtrlr.OfflineQueuingSeverity; others are dropped.
MonitoringCtrlr.Enabled false silences the custom and preconfigured monitors (not the
hard-wired fault reports).

When values are looked at: a threshold or delta monitor after every meter reading of an
EVSE, every change of an EVSE's state (availability, faults, transactions), every SetVariables
and settings change, and, while the CSMS has set or changed monitors, every
:data:`POLL_S` seconds for the values nothing announces (the clock, counters).  Periodic
monitors report at their instants on the injected clock.  One task does all of it and sleeps
in between; the hooks only wake it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import Any, ClassVar

from agent.link.rpc import OcppCallError
from agent.ocpp.blocks import handles
from agent.ocpp.v201.device_model import (
    VarDef,
    VariableBlock,
    _matches,
    b,
    num,
    ro,
    rw,
)
from agent.ocpp.v201.monitors import (
    BASES,
    CRITERIA,
    CUSTOM,
    HARDWIRED,
    NUMERIC,
    PERIODIC_TYPES,
    PRECONFIGURED,
    TARGET_TYPES,
    THRESHOLD_TYPES,
    Monitor,
    evaluate,
    first_due,
    next_due,
)
from hal.interfaces import FaultKind

log = logging.getLogger("cp_agent.v201.monitoring")

# Which device-model component and variable reports a hardware fault.
FAULT_COMPONENT: dict[FaultKind, tuple[str, str]] = {
    FaultKind.METER: ("FiscalMetering", "Problem"),
    FaultKind.WELDED: ("PowerContactor", "Problem"),
    FaultKind.CONTACTOR_FAILED: ("PowerContactor", "Problem"),
    FaultKind.PILOT: ("CPPWMController", "Problem"),
    FaultKind.READER: ("TokenReader", "Problem"),
    FaultKind.LOCK: ("ConnectorPlugRetentionLock", "Problem"),
    FaultKind.EV_BOARD: ("Controller", "Problem"),
    FaultKind.OVER_CURRENT: ("OverCurrentProtection", "Active"),
    FaultKind.OVER_VOLTAGE: ("ElectricalFeed", "Problem"),
    FaultKind.UNDER_VOLTAGE: ("ElectricalFeed", "Problem"),
    FaultKind.OVER_TEMPERATURE: ("TemperatureSensor", "Active"),
    FaultKind.GROUND_FAILURE: ("RCD", "Tripped"),
    FaultKind.INTERNAL: ("Controller", "Problem"),
}
# The per-EVSE components of those faults (the token reader is the station's).
FAULT_COMPONENTS = tuple(dict.fromkeys(
    pair for pair in FAULT_COMPONENT.values() if pair[0] != "TokenReader"))
# Severity of each hard-wired fault monitor: 0 Danger where a person may be at risk, 2 System
# Failure for the reader (the station still charges for remote starts), else 1 Hardware
# Failure.  All at or below the factory OfflineQueuingSeverity: faults survive an outage.
FAULT_SEVERITY = {"RCD": 0, "OverCurrentProtection": 0, "TokenReader": 2}
EVENT_ID = "v201.event_id"  # the last eventId used, so ids grow across restarts
STATE_KEY = "v201.monitoring"  # custom monitors, changed preconfigured ones, base, level
BUILTIN_ID = 100_000  # hard-wired / preconfigured ids: BUILTIN_ID + 100 * evse + index
FACTORY_BASE = "FactoryDefault"
FACTORY_LEVEL = 9
OFFLINE_SEVERITY = "2"
POLL_S = 5.0
MIN_PERIOD_S = 1.0  # the shortest Periodic interval (each report is a CALL)
IDLE_S = 3600.0
VALUE_CHARS = 2500  # EventDataType.actualValue maxLength
VOLTAGE_BAND = (207.0, 253.0)  # 230 V +-10 % (EN 50160)


def _status(data: dict, status: str, reason: str | None = None,
            info: str | None = None) -> dict:
    result: dict[str, Any] = {"status": status, "type": data["type"],
                              "severity": data["severity"], "component": data["component"],
                              "variable": data["variable"]}
    if reason is not None:
        result["statusInfo"] = {"reasonCode": reason}
        if info:
            result["statusInfo"]["additionalInfo"] = info[:512]
    return result


class Monitoring(VariableBlock):
    OUTBOX_ACTIONS = frozenset({"NotifyEvent"})
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        ro("MonitoringCtrlr", "Available", "boolean", "true"),
        rw("MonitoringCtrlr", "Enabled", "boolean", "true"),
        ro("MonitoringCtrlr", "ItemsPerMessage", "integer", "32",
           instance="SetVariableMonitoring", min_limit=1),
        ro("MonitoringCtrlr", "ItemsPerMessage", "integer", "32",
           instance="ClearVariableMonitoring", min_limit=1),
        ro("MonitoringCtrlr", "BytesPerMessage", "integer", "16384",
           instance="SetVariableMonitoring", min_limit=1),
        ro("MonitoringCtrlr", "BytesPerMessage", "integer", "16384",
           instance="ClearVariableMonitoring", min_limit=1),
        rw("MonitoringCtrlr", "OfflineQueuingSeverity", "integer", OFFLINE_SEVERITY,
           min_limit=0, max_limit=9),
    )

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self._custom: dict[int, Monitor] = {}
        self._overrides: dict[int, Monitor] = {}  # preconfigured ones the CSMS changed
        self._builtin: dict[int, Monitor] | None = None  # built on first use (needs the DM)
        self._base = FACTORY_BASE
        self._level = FACTORY_LEVEL
        self._next_id = 1
        self._stored: str | None = None  # the state text last read or written
        self._wake = asyncio.Event()
        self._seen: dict[int, Any] = {}  # evse id -> the last meter reading looked at
        self._poll_at: float | None = None
        self._enabled_flag: bool | None = None  # MonitoringCtrlr.Enabled, read once
        self._dm_cache: Any = None
        self._load()

    @property
    def dm(self) -> Any:
        """The device model, looked up once (the evaluation reads it at every sample)."""
        if self._dm_cache is None:
            self._dm_cache = super().dm
        return self._dm_cache

    # ------------------------------------------------------------------ variables

    def live_variables(self) -> list[VarDef]:
        out = [
            ro("TokenReader", "Problem", "boolean",
               lambda: b(self.problem("TokenReader", None))),
            ro("MonitoringCtrlr", "MonitoringBase", "OptionList", lambda: self._base,
               values_list=BASES),
            ro("MonitoringCtrlr", "ActiveMonitoringBase", "OptionList", lambda: self._base,
               values_list=BASES),
            ro("MonitoringCtrlr", "MonitoringLevel", "integer", lambda: str(self._level),
               min_limit=0, max_limit=9),
            ro("MonitoringCtrlr", "ActiveMonitoringLevel", "integer",
               lambda: str(self._level), min_limit=0, max_limit=9),
        ]
        for eid in self.station.evses:
            for comp, var in FAULT_COMPONENTS:
                connector = 1 if comp == "ConnectorPlugRetentionLock" else None
                out.append(ro(comp, var, "boolean",
                              lambda comp=comp, eid=eid: b(self.problem(comp, eid)),
                              evse=eid, connector=connector))
            # The meter's figures, for monitors (EVSE.Power is the availability block's).
            out += [
                ro("EVSE", "ACCurrent", "decimal", lambda eid=eid: self._meter(eid, "current"),
                   evse=eid, unit="A", min_limit=0),
                ro("EVSE", "ACVoltage", "decimal", lambda eid=eid: self._meter(eid, "voltage"),
                   evse=eid, unit="V", min_limit=0),
                ro("FiscalMetering", "EnergyImportRegister", "decimal",
                   lambda eid=eid: self._meter(eid, "energy"), evse=eid, unit="Wh",
                   min_limit=0),
            ]
        return out

    def _meter(self, evse_id: int, what: str) -> str:
        """EVSE.ACCurrent: the highest phase current; EVSE.ACVoltage: the phases' mean;
        the energy register.  Empty before the first reading."""
        evse = self.station.evses.get(evse_id)
        reading = evse.snapshot().reading if evse is not None else None
        if reading is None:
            return ""
        if what == "current":
            return num(max(reading.current_a, default=0.0))
        if what == "voltage":
            volts = reading.voltage_v
            return num(sum(volts) / len(volts)) if volts else ""
        return num(reading.energy_import_wh)

    def problem(self, component: str, evse_id: int | None) -> bool:
        """Whether ``component`` (of EVSE ``evse_id``, or of the station) has a fault now."""
        if evse_id is None:
            if component == "TokenReader":
                return FaultKind.READER in self.station.station_faults
            return bool(self.station.station_faults) or any(
                s.blocking_fault is not None for s in self.station.snapshots())
        evse = self.station.evses.get(evse_id)
        if evse is None:
            return False
        faults = evse.snapshot().faults
        if component == "EVSE":
            return bool(faults)
        return any(FAULT_COMPONENT.get(k, ("",))[0] == component for k in faults)

    # ------------------------------------------------------------------ the monitors

    def _builtins(self) -> dict[int, Monitor]:
        """The hard-wired and preconfigured monitors, with ids that stay the same across
        restarts (derived from the EVSE and the component)."""
        if self._builtin is not None:
            return self._builtin
        out: dict[int, Monitor] = {}

        def add(evse: int, index: int, comp: dict, var: str, kind_: str, type_: str,
                value: float, severity: int, factory: bool = False) -> None:
            mid = BUILTIN_ID + 100 * evse + index
            out[mid] = Monitor(mid, comp, {"name": var}, type_, value, severity, kind=kind_,
                               factory=factory)

        add(0, 0, {"name": "ChargingStation"}, "Problem", HARDWIRED, "Delta", 1, 1)
        add(0, 1, {"name": "TokenReader"}, "Problem", HARDWIRED, "Delta", 1,
            FAULT_SEVERITY["TokenReader"])
        for eid in sorted(self.station.evses):
            for i, (name, var) in enumerate(FAULT_COMPONENTS):
                comp: dict[str, Any] = {"name": name, "evse": {"id": eid}}
                if name == "ConnectorPlugRetentionLock":
                    comp["evse"]["connectorId"] = 1
                add(eid, i, comp, var, HARDWIRED, "Delta", 1, FAULT_SEVERITY.get(name, 1))
            evse = {"name": "EVSE", "evse": {"id": eid}}
            try:
                rated = self.dm.lookup("EVSE", "Power", evse=eid).max_limit
            except KeyError:
                rated = None
            if rated:
                add(eid, 50, evse, "Power", PRECONFIGURED, "UpperThreshold", rated, 4,
                    factory=True)
            add(eid, 51, evse, "ACVoltage", PRECONFIGURED, "UpperThreshold", VOLTAGE_BAND[1], 6)
            add(eid, 52, evse, "ACVoltage", PRECONFIGURED, "LowerThreshold", VOLTAGE_BAND[0], 6)
        self._builtin = out
        return out

    def _other_monitors(self) -> list[Monitor]:
        """Monitors another block keeps (2.1: the stream monitors), for duplicates, ids and
        reports."""
        return []

    def monitors(self) -> list[Monitor]:
        """Every active monitor: hard-wired, the preconfigured ones of the monitoring base
        (as the CSMS changed them), the custom ones."""
        out = []
        for m in self._builtins().values():
            if m.kind == HARDWIRED:
                out.append(m)
            elif self._base == "All" or (self._base == "FactoryDefault" and m.factory):
                out.append(self._overrides.get(m.id, m))
        out += self._custom.values()
        return out

    def _in_use(self, monitor_id: int) -> bool:
        return (monitor_id in self._custom or monitor_id in self._builtins()
                or any(m.id == monitor_id for m in self._other_monitors()))

    def allocate_id(self) -> int:
        """A new monitor id, never one in use (one id space with the 2.1 stream monitors)."""
        n = self._next_id
        while self._in_use(n):
            n += 1
        self._next_id = n + 1
        self._save()
        return n

    # ------------------------------------------------------------------ persistence

    def _load(self) -> None:
        text = self.storage.get_setting(STATE_KEY)
        self._stored = text
        if not text:
            return
        try:
            doc = json.loads(text)
            custom = [Monitor.from_stored(m) for m in doc.get("custom", [])]
            overrides = [Monitor.from_stored(m) for m in doc.get("overrides", [])]
            base = str(doc.get("base", FACTORY_BASE))
            level = int(doc.get("level", FACTORY_LEVEL))
            next_id = int(doc.get("next_id", 1))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.error("stored monitors unreadable (%s); starting with the factory set", exc)
            return
        self._custom = {m.id: m for m in custom}
        self._overrides = {m.id: m for m in overrides}
        self._base = base if base in BASES else FACTORY_BASE
        self._level = level if 0 <= level <= 9 else FACTORY_LEVEL
        self._next_id = max(1, next_id)

    def _save(self) -> None:
        doc = {"next_id": self._next_id, "base": self._base, "level": self._level,
               "custom": [m.stored() for m in self._custom.values()],
               "overrides": [m.stored() for m in self._overrides.values()]}
        text = json.dumps(doc, separators=(",", ":"))
        self.storage.set_setting(STATE_KEY, text)
        self._stored = text

    def _reload_if_changed(self) -> None:
        """The other 2.x version's block (same state file) may have changed the monitors
        while it was in charge."""
        if self.storage.get_setting(STATE_KEY) != self._stored:
            self._load()

    # ------------------------------------------------------------------ start, hooks

    def start(self) -> None:
        for evse in self.station.evses.values():
            evse.meter_listeners.append(self._meter_changed)
            evse.state_listeners.append(self._evse_changed)
        self.settings.listeners.append(lambda name, value: self._changed())
        self.adapter.spawn(self._run(), f"{self.adapter.version}-monitors")

    def session_started(self) -> None:
        self._reload_if_changed()
        self._enabled_flag = None  # the other 2.x version may have set it
        self._changed()

    def _evse_changed(self, evse: Any) -> None:
        self._changed()

    def _meter_changed(self, evse: Any) -> None:
        """A sample: the runner looks only when a figure moved. A monitor on a meter value
        can only fire on a change (thresholds, Delta; Periodic ones keep their own time),
        and an idle station's meter repeats itself every second: waking the runner for
        each sample was one task step per station per second (a swarm's steady state)."""
        reading = evse.reading
        if reading != self._seen.get(evse.id):
            self._seen[evse.id] = reading
            self._changed()

    def _changed(self) -> None:
        """Something a monitor may watch changed: the runner looks (cheap; coalesced)."""
        if self.adapter.active:
            self._wake.set()

    def variable_changed(self, d: VarDef, value: str) -> None:
        """SetVariables changed ``d``: a WriteOnly variable's Delta monitors report the write
        (with an empty actualValue, nothing to show); the others are looked at."""
        if (d.component, d.name) == ("MonitoringCtrlr", "Enabled"):
            self._enabled_flag = None
        attr = d.attr("Actual")
        if attr is not None and attr.mutability == "WriteOnly" and self._enabled():
            for m in self._watching(d):
                if m.type == "Delta" and self._applies(m):
                    self._report(m, "", "Delta")
        self._changed()

    def attribute_changed(self, d: VarDef, kind: str, value: str) -> None:
        if kind == "Target":
            self._changed()  # a TargetDelta monitor measures from it

    def status_changed(self, snap: Any, fault: Any) -> None:
        self._changed()

    def transaction_started(self, tx: Any, snap: Any, trigger: Any) -> None:
        self._changed()

    def transaction_ended(self, tx: Any, reason: Any, snap: Any) -> None:
        self._changed()

    def clock_synced(self, delta: float) -> None:
        for m in self.monitors():
            if m.type == "PeriodicClockAligned":
                m.due = None  # re-aligned to the corrected wall clock
        self._changed()

    # ------------------------------------------------------------------ evaluation

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock.monotonic()
            due = now + IDLE_S
            if self.adapter.active and self._enabled():
                try:
                    due = self._evaluate(now)
                except Exception:  # noqa: BLE001 - monitoring never stops for one bad value
                    log.exception("monitor evaluation failed")
            await self.adapter.sleep_or(max(0.0, due - self.clock.monotonic()), self._wake)

    def _enabled(self) -> bool:
        if self._enabled_flag is None:
            try:
                self._enabled_flag = self.dm.flag("MonitoringCtrlr", "Enabled")
            except KeyError:
                self._enabled_flag = True
        return self._enabled_flag

    def _evaluate(self, now: float) -> float:
        """Look at every monitor's variable; report what fired; when to look again."""
        wall = self.clock.wall()
        due = now + IDLE_S
        polled = False
        for m in self.monitors():
            if m.kind == HARDWIRED:
                continue  # fed by the core's fault reports (fault_changed)
            d = self._var(m)
            if d is None:
                continue
            if m.type in PERIODIC_TYPES:
                if m.due is None:
                    m.due = first_due(m, now, wall)
                if now >= m.due - 1e-9:
                    m.due = next_due(m, m.due, now, wall)
                    value = self.dm.actual(d)
                    if value is not None and self._applies(m):
                        self._report(m, value, "Periodic")
                due = min(due, m.due)
                continue
            if not self._applies(m):
                continue
            target = None
            if m.type in TARGET_TYPES:
                target = self.dm.value(d.component, d.name, d.instance, evse=d.evse,
                                       connector=d.connector, attribute="Target",
                                       default="")
            firing = evaluate(m, self.dm.actual(d), numeric=d.data_type in NUMERIC,
                              target=target)
            if firing is not None:
                self._report(m, self.dm.actual(d) or "", firing.trigger,
                             cleared=firing.cleared)
            polled = polled or m.kind == CUSTOM or m.id in self._overrides
        if polled:
            if self._poll_at is None or now >= self._poll_at - 1e-9:
                self._poll_at = now + POLL_S
            due = min(due, self._poll_at)
        else:
            self._poll_at = None
        return due

    def _var(self, m: Monitor) -> VarDef | None:
        status, d = self.dm.find(m.component, m.variable)
        return d

    def _watching(self, d: VarDef) -> Iterable[Monitor]:
        comp, var = d.component_json(), d.variable_json()
        return [m for m in self.monitors() if m.kind != HARDWIRED
                and m.component == comp and m.variable == var]

    def _applies(self, m: Monitor) -> bool:
        """A ``transaction`` monitor watches only while a transaction runs where it looks."""
        if not m.transaction:
            return True
        evse_id = (m.component.get("evse") or {}).get("id")
        if evse_id is None:
            return self.station.any_transaction
        evse = self.station.evses.get(evse_id)
        return evse is not None and evse.snapshot().tx is not None

    # ------------------------------------------------------------------ events

    def _event(self, m: Monitor, value: str, trigger: str, *, cleared: bool = False) -> dict:
        event: dict[str, Any] = {
            "eventId": self._next_event_id(), "timestamp": self.clock.stamp(),
            "trigger": trigger, "actualValue": value[:VALUE_CHARS],
            "eventNotificationType": m.kind, "component": m.component,
            "variable": m.variable, "variableMonitoringId": m.id,
        }
        if self.adapter.version != "2.0.1":
            event["severity"] = m.severity  # 2.1 EventDataType.severity
        if cleared:
            event["cleared"] = True
        evse_id = (m.component.get("evse") or {}).get("id")
        evse = self.station.evses.get(evse_id) if evse_id is not None else None
        tx = evse.snapshot().tx if evse is not None else None
        if tx is not None:
            event["transactionId"] = tx.local_id
        return event

    def _report(self, m: Monitor, value: str, trigger: str, *, cleared: bool = False) -> None:
        if m.severity > self._level:
            return  # N05: above the monitoring level
        if not self.adapter.online and m.severity > self._offline_severity():
            log.debug("monitor %s: %s event dropped while offline (severity %s)", m.id,
                      trigger, m.severity)
            return
        self._send(self._event(m, value, trigger, cleared=cleared))

    def _send(self, event: dict) -> None:
        self.adapter.enqueue("NotifyEvent", {"generatedAt": self.clock.stamp(), "seqNo": 0,
                                             "eventData": [event]})

    def _offline_severity(self) -> int:
        try:
            return self.dm.integer("MonitoringCtrlr", "OfflineQueuingSeverity")
        except KeyError:
            return int(OFFLINE_SEVERITY)

    def _next_event_id(self) -> int:
        n = int(self.storage.get_setting(EVENT_ID) or "0") + 1
        self.storage.set_setting(EVENT_ID, str(n))
        return n

    def fault_changed(self, evse_id: int, kind: FaultKind, active: bool, detail: str) -> None:
        """A hardware fault raised or cleared: its hard-wired monitor reports (N07)."""
        component, _ = FAULT_COMPONENT.get(kind, ("Controller", "Problem"))
        if component == "TokenReader":
            evse_id, index = 0, 1  # the station's reader, whichever EVSE reported it
        elif evse_id == 0:
            index = 0  # ChargingStation.Problem
        else:
            pairs = [c for c, _v in FAULT_COMPONENTS]
            index = pairs.index(component) if component in pairs else pairs.index("Controller")
        m = self._builtins().get(BUILTIN_ID + 100 * evse_id + index)
        if m is None:
            log.warning("fault %s on unknown EVSE %s not reported", kind, evse_id)
            return
        self._changed()
        if m.severity > self._level:
            return
        if not self.adapter.online and m.severity > self._offline_severity():
            return
        event = self._event(m, "true" if active else "false", "Delta", cleared=not active)
        event["techCode"] = str(kind)[:50]
        if detail:
            event["techInfo"] = detail[:500]
        self._send(event)

    # ------------------------------------------------------------------ N04 set

    def _limits(self, p: dict, action: str, items: str) -> None:
        """ItemsPerMessage / BytesPerMessage of ``action``: a longer request is refused as a
        whole, with the CALLERROR OCPP-J gives for it."""
        limit = self.dm.integer("MonitoringCtrlr", "ItemsPerMessage", action)
        if limit > 0 and len(p[items]) > limit:
            raise OcppCallError("OccurrenceConstraintViolation",
                                f"{len(p[items])} {items} elements; at most {limit} "
                                f"(MonitoringCtrlr.ItemsPerMessage[{action}])")
        size = len(json.dumps(p, separators=(",", ":")))
        limit = self.dm.integer("MonitoringCtrlr", "BytesPerMessage", action)
        if limit > 0 and size > limit:
            raise OcppCallError("FormatViolation",
                                f"{size} bytes; at most {limit} "
                                f"(MonitoringCtrlr.BytesPerMessage[{action}])")

    @handles("SetVariableMonitoring")
    async def set_variable_monitoring(self, p: dict) -> dict:
        self._limits(p, "SetVariableMonitoring", "setMonitoringData")
        results = [self.set_one(item) for item in p["setMonitoringData"]]
        self._changed()
        return {"setMonitoringResult": results}

    def set_one(self, data: dict) -> dict:
        """One SetMonitoringResult: the monitor checked, then set (or replaced by id)."""
        severity = data["severity"]
        if not 0 <= severity <= 9:
            return _status(data, "Rejected", "InvalidSeverity", "severity is 0-9")
        replacing = data.get("id")
        old: Monitor | None = None
        if replacing is not None:
            old = self._custom.get(replacing) or next(
                (m for m in self.monitors() if m.id == replacing), None)
            if old is None:
                return _status(data, "Rejected", "UnknownMonitorId",
                               f"no monitor {replacing}")
            if old.kind == HARDWIRED:
                return _status(data, "Rejected", "HardWiredMonitor",
                               f"monitor {replacing} is hard-wired")
        status, d = self.dm.find(data["component"], data["variable"])
        if d is None:
            return _status(data, status)
        problem = self._unsupported(d, data)
        if problem is not None:
            return _status(data, "UnsupportedMonitorType", *problem)
        problem = self._out_of_range(d, data)
        if problem is not None:
            return _status(data, "Rejected", "ValueOutOfRange", problem)
        comp, var = d.component_json(), d.variable_json()
        candidate = Monitor(0, comp, var, data["type"], float(data["value"]), severity,
                            transaction=bool(data.get("transaction", False)))
        for m in [*self.monitors(), *self._other_monitors()]:
            if m.key == candidate.key and m.id != replacing:
                result = _status(data, "Duplicate", "Duplicate", f"monitor {m.id} is the same")
                return result
        if old is not None and old.kind == PRECONFIGURED:
            candidate.id, candidate.kind, candidate.factory = old.id, old.kind, old.factory
            self._overrides[old.id] = candidate
        else:
            candidate.id = replacing if replacing is not None else self.allocate_id()
            self._custom[candidate.id] = candidate
        candidate.reference = self.dm.actual(d)  # a Delta measures from the value now
        self._save()
        result = _status(data, "Accepted")
        result["id"] = candidate.id
        return result

    @staticmethod
    def _unsupported(d: VarDef, data: dict) -> tuple[str, str] | None:
        """Why this variable cannot have this type of monitor (reason, words), or None."""
        kind = data["type"]
        if not d.monitorable:
            return "NotMonitorable", "this variable does not support monitoring"
        numeric = d.data_type in NUMERIC
        attr = d.attr("Actual")
        if attr is not None and attr.mutability == "WriteOnly" and kind != "Delta":
            return "WriteOnly", "a WriteOnly variable takes Delta monitors only"
        if kind in THRESHOLD_TYPES and not numeric:
            return "NotNumeric", f"a threshold needs a number; this is {d.data_type}"
        if kind in TARGET_TYPES and (not numeric or d.attr("Target") is None):
            return "NoTarget", "the variable has no numeric Target attribute"
        if kind not in (*THRESHOLD_TYPES, *TARGET_TYPES, "Delta", *PERIODIC_TYPES):
            return "UnknownType", f"{kind} monitors are not supported"
        return None

    @staticmethod
    def _out_of_range(d: VarDef, data: dict) -> str | None:
        kind, value = data["type"], float(data["value"])
        if kind in THRESHOLD_TYPES:
            if d.min_limit is not None and value < d.min_limit:
                return f"{value:g} is below the variable's minLimit {d.min_limit:g}"
            if d.max_limit is not None and value > d.max_limit:
                return f"{value:g} is above the variable's maxLimit {d.max_limit:g}"
        elif kind in PERIODIC_TYPES:
            if value < MIN_PERIOD_S:
                return f"the interval is at least {MIN_PERIOD_S:g} s"
        elif value < 0:
            return "a delta is not negative"
        return None

    # ------------------------------------------------------------------ N06 clear

    @handles("ClearVariableMonitoring")
    async def clear_variable_monitoring(self, p: dict) -> dict:
        self._limits(p, "ClearVariableMonitoring", "id")
        return {"clearMonitoringResult": [self.clear_one(i) for i in p["id"]]}

    def clear_one(self, monitor_id: int) -> dict:
        if monitor_id in self._custom:
            del self._custom[monitor_id]
            self._save()
            return {"status": "Accepted", "id": monitor_id}
        builtin = self._builtins().get(monitor_id)
        if builtin is not None:
            why = "hard-wired" if builtin.kind == HARDWIRED else "preconfigured"
            return {"status": "Rejected", "id": monitor_id, "statusInfo": {
                "reasonCode": "NotCustom",
                "additionalInfo": f"monitor {monitor_id} is {why}; it cannot be cleared"}}
        return {"status": "NotFound", "id": monitor_id}

    # ------------------------------------------------------------------ N03, N05

    @handles("SetMonitoringBase")
    async def set_monitoring_base(self, p: dict) -> dict:
        base = p["monitoringBase"]
        self._base = base
        if base in ("FactoryDefault", "HardWiredOnly"):
            self._drop_custom()
            self._overrides.clear()
        for m in self._builtins().values():
            m.alerting, m.due, m.reference = False, None, None  # (re)activated: start afresh
        self._save()
        self._changed()
        return {"status": "Accepted"}

    def _drop_custom(self) -> None:
        self._custom.clear()

    @handles("SetMonitoringLevel")
    async def set_monitoring_level(self, p: dict) -> dict:
        severity = p["severity"]
        if not 0 <= severity <= 9:
            return {"status": "Rejected", "statusInfo": {
                "reasonCode": "InvalidSeverity", "additionalInfo": "severity is 0-9"}}
        self._level = severity
        self._save()
        return {"status": "Accepted"}

    # ------------------------------------------------------------------ N02 report

    @handles("GetMonitoringReport")
    async def get_monitoring_report(self, p: dict) -> dict:
        wanted = p.get("componentVariable") or []
        limit = self.dm.integer("DeviceDataCtrlr", "ItemsPerMessage", "GetReport")
        if limit > 0 and len(wanted) > limit:
            raise OcppCallError("OccurrenceConstraintViolation",
                                f"{len(wanted)} componentVariable elements; at most {limit} "
                                "(DeviceDataCtrlr.ItemsPerMessage[GetReport])")
        entries = self.report_entries(wanted, p.get("monitoringCriteria") or [])
        if not entries:
            return {"status": "EmptyResultSet"}
        self.adapter.spawn(self._send_report(p["requestId"], entries), "v201-monitor-report")
        return {"status": "Accepted"}

    def report_entries(self, wanted: list[dict], criteria: list[str]) -> list[dict]:
        """MonitoringDataType entries: the monitors matching a componentVariable (any, when
        none is given) and a criterion (any, when none is given), per component/variable."""
        types = {t for c in criteria for t in CRITERIA.get(c, ())} if criteria else None
        groups: dict[tuple, tuple[VarDef, list[Monitor]]] = {}
        for m in sorted([*self.monitors(), *self._other_monitors()], key=lambda m: m.id):
            if types is not None and m.type not in types:
                continue
            d = self._var(m)
            if d is None or (wanted and not any(_matches(d, cv) for cv in wanted)):
                continue
            groups.setdefault((d.comp_key, d.var_key), (d, []))[1].append(m)
        version = self.adapter.version
        return [{"component": d.component_json(), "variable": d.variable_json(),
                 "variableMonitoring": [m.report(version) for m in ms]}
                for d, ms in groups.values()]

    async def _send_report(self, request_id: int, entries: list[dict]) -> None:
        await self.send_report_parts("NotifyMonitoringReport", "monitor", request_id, entries)


__all__ = ["FAULT_COMPONENT", "FAULT_COMPONENTS", "Monitoring"]
