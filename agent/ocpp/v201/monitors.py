"""Variable monitors of block N (2.0.1 / 2.1): what a monitor is and when it fires, no I/O.

A monitor watches the Actual value of one device-model variable (2.0.1 part 2, 3.55
MonitorEnumType):

- UpperThreshold / LowerThreshold: the value rose above / fell below ``value``. The monitor
  reports once when it crosses (trigger Alerting) and once more, ``cleared``, when the value
  is back on the right side; numbers only.
- Delta: the value moved more than plus or minus ``value`` from the reference (the value when
  the monitor was set, or when it last reported); the new value becomes the reference.  For a
  variable that is not a number (boolean, string, lists, dateTime) any change reports.
- Periodic: every ``value`` seconds from the moment the monitor was set; PeriodicClockAligned:
  on the multiples of ``value`` seconds of the wall clock.
- 2.1 TargetDelta / TargetDeltaRelative: the value is more than ``value`` (TargetDeltaRelative:
  ``value`` percent of the target) away from the variable's Target attribute; reported like a
  threshold (Alerting, then cleared).  Only a numeric variable with a Target has one.

The block (:mod:`agent.ocpp.v201.monitoring`) keeps the monitors, reads the values and sends
what :func:`evaluate` says; this module holds the state each monitor carries between two
looks at its variable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

THRESHOLD_TYPES = ("UpperThreshold", "LowerThreshold")
PERIODIC_TYPES = ("Periodic", "PeriodicClockAligned")
TARGET_TYPES = ("TargetDelta", "TargetDeltaRelative")  # 2.1
# GetMonitoringReport monitoringCriteria -> the monitor types it selects.
CRITERIA: dict[str, tuple[str, ...]] = {
    "ThresholdMonitoring": THRESHOLD_TYPES,
    "DeltaMonitoring": ("Delta", *TARGET_TYPES),
    "PeriodicMonitoring": PERIODIC_TYPES,
}
# Who set a monitor up (EventNotificationEnumType; VariableMonitoringType in 2.1 reports).
CUSTOM = "CustomMonitor"
PRECONFIGURED = "PreconfiguredMonitor"
HARDWIRED = "HardWiredMonitor"
BASES = ("All", "FactoryDefault", "HardWiredOnly")
NUMERIC = ("integer", "decimal")


def comp_key(component: dict) -> tuple:
    evse = component.get("evse") or {}
    return (component["name"], component.get("instance"), evse.get("id"),
            evse.get("connectorId"))


def var_key(variable: dict) -> tuple:
    return (variable["name"], variable.get("instance"))


def to_number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


@dataclass
class Monitor:
    """One monitor: its definition (persisted for custom ones) and its running state."""

    id: int
    component: dict
    variable: dict
    type: str
    value: float
    severity: int
    transaction: bool = False
    kind: str = CUSTOM
    factory: bool = False  # a preconfigured monitor of the FactoryDefault set
    # Running state, never stored: the Delta reference, whether a threshold is crossed, when
    # a periodic monitor reports next (monotonic seconds).
    reference: str | None = field(default=None, compare=False)
    alerting: bool = field(default=False, compare=False)
    due: float | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple:
        """What makes two monitors the same (N04: Duplicate)."""
        return (comp_key(self.component), var_key(self.variable), self.type, self.severity)

    def stored(self) -> dict[str, Any]:
        return {"id": self.id, "component": self.component, "variable": self.variable,
                "type": self.type, "value": self.value, "severity": self.severity,
                "transaction": self.transaction, "kind": self.kind, "factory": self.factory}

    @classmethod
    def from_stored(cls, doc: dict[str, Any]) -> Monitor:
        return cls(id=int(doc["id"]), component=dict(doc["component"]),
                   variable=dict(doc["variable"]), type=str(doc["type"]),
                   value=float(doc["value"]), severity=int(doc["severity"]),
                   transaction=bool(doc.get("transaction", False)),
                   kind=str(doc.get("kind", CUSTOM)), factory=bool(doc.get("factory", False)))

    def report(self, version: str) -> dict[str, Any]:
        """VariableMonitoringType (2.1 adds the eventNotificationType, required there)."""
        out: dict[str, Any] = {"id": self.id, "transaction": self.transaction,
                               "value": self.value, "type": self.type,
                               "severity": self.severity}
        if version != "2.0.1":
            out["eventNotificationType"] = self.kind
        return out


@dataclass(frozen=True)
class Firing:
    """What a monitor reports: its trigger (Alerting / Delta / Periodic) and ``cleared``."""

    trigger: str
    cleared: bool = False


def evaluate(m: Monitor, value: str | None, *, numeric: bool,
             target: str | None = None) -> Firing | None:
    """Take in the variable's current ``value`` (None: nothing to read now); what ``m``
    reports because of it, if anything.  Periodic monitors are timed, not evaluated here."""
    if value is None or m.type in PERIODIC_TYPES:
        return None
    if m.type == "Delta":
        if m.reference is None:
            m.reference = value  # a fresh monitor (or one kept across a restart) starts here
            return None
        if numeric:
            new, ref = to_number(value), to_number(m.reference)
            if new is None:
                return None
            if ref is not None and abs(new - ref) <= m.value:
                return None
        elif value == m.reference:
            return None
        m.reference = value
        return Firing("Delta")
    x = to_number(value)
    if x is None:
        return None
    if m.type == "UpperThreshold":
        beyond = x > m.value
    elif m.type == "LowerThreshold":
        beyond = x < m.value
    elif m.type in TARGET_TYPES:
        goal = to_number(target)
        if goal is None:
            return None
        limit = m.value if m.type == "TargetDelta" else abs(goal) * m.value / 100.0
        beyond = abs(x - goal) > limit
    else:
        return None
    if beyond == m.alerting:
        return None
    m.alerting = beyond
    return Firing("Alerting", cleared=not beyond)


def first_due(m: Monitor, mono: float, wall: float) -> float:
    """When a periodic monitor set (or started) now reports first."""
    if m.type == "PeriodicClockAligned":
        delay = m.value - math.fmod(wall, m.value)
        return mono + (delay if delay > 1e-6 else m.value)
    return mono + m.value


def next_due(m: Monitor, due: float, mono: float, wall: float) -> float:
    """After reporting at ``due``: the next instant (missed ones are skipped, not caught up:
    a late report says the value now, not then)."""
    if m.type == "PeriodicClockAligned":
        return first_due(m, mono, wall)
    due += m.value
    while due <= mono + 1e-9:
        due += m.value
    return due


__all__ = ["BASES", "CRITERIA", "CUSTOM", "HARDWIRED", "NUMERIC", "PERIODIC_TYPES",
           "PRECONFIGURED", "TARGET_TYPES", "THRESHOLD_TYPES", "Firing", "Monitor",
           "comp_key", "evaluate", "first_due", "next_due", "to_number", "var_key"]
