"""2.1 block R, DER control: SetDERControl, GetDERControl -> ReportDERControl,
ClearDERControl, NotifyDERStartStop and NotifyDERAlarm over the core's DER controls
(agent/core/der.py keeps, schedules and judges them; agent/core/v2x_modes.py applies them).

- **SetDERControl**: Accepted (with ``supersededIds``: the controls of its type and kind it
  outranks where their times overlap), Rejected for a setting that does not fit its type
  (the setting field of another type, a missing startTime / duration on a scheduled control,
  values out of range: reason codes MissingParam / InvalidValue; OutOfStorage when the
  station keeps 64 already), NotSupported on a station none of whose EVSEs can feed energy
  back (no power stage that takes setpoints and discharges), and NotSupported
  (UnsupportedParam) for a type no EVSE's stage can follow (DCDERCtrlr.SupportedControls:
  the reactive types need a stage with reactive control, Gradients one with ramp rates;
  PowerMonitoringMustTrip is followed by none): a control answered Accepted is followed.
- **GetDERControl**: Accepted and the controls in ReportDERControl (every kind in one
  message, up to 24 of each; more in further messages, ``tbc`` on all but the last),
  NotFound when none matches.
- **ClearDERControl**: Accepted, or NotFound when none matches.
- **NotifyDERStartStop** when a scheduled control's startTime comes (``supersededIds``: what
  its start takes out of force) and when its duration is over; delivered once each, also
  after a restart or an outage (with the instant it happened).
- **NotifyDERAlarm** when a ride-through curve's threshold is crossed and when the grid is
  back inside (``alarmEnded``), judged from the EVSE meters' voltage and frequency.
- **DCDERCtrlr** (per EVSE: the DER capability of the station's own power stage, the
  component 2.1 places at the EVSE tier): Enabled, Available, SupportedControls.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, ClassVar

from agent.clock import iso
from agent.core.v2x_names import CONTROL_TYPES, setting_field, stage_supports
from agent.link.rpc import CallFailed, ConnectionLost
from agent.ocpp.blocks import handles
from agent.ocpp.v201.device_model import VarDef, VariableBlock, b, ro

if TYPE_CHECKING:  # the service is built on first use (Station.provide)
    from agent.core.der import DerControl, DerControls

log = logging.getLogger("cp_agent.v21")

RETRY_S = 30.0  # a notification the CSMS did not take is offered again after this
PER_MESSAGE = 24  # ReportDERControlRequest: maxItems of each list
_GET_FIELD = {"curve": "curve", "enterService": "enterService", "fixedPFAbsorb": "fixedPF",
              "fixedPFInject": "fixedPF", "fixedVar": "fixedVar", "freqDroop": "freqDroop",
              "gradient": "gradient", "limitMaxDischarge": "limitMaxDischarge"}
_NO_FLAGS = frozenset({"enterService", "gradient"})  # their Get types have no isDefault


def _status(status: str, code: str | None = None, info: str = "") -> dict:
    out: dict[str, Any] = {"status": status}
    if code:
        out["statusInfo"] = {"reasonCode": code, "additionalInfo": info[:1024]}
    return out


class Der21(VariableBlock):
    VARIABLES: ClassVar[tuple[VarDef, ...]] = ()

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self._wake = asyncio.Event()
        self.reports = 0  # ReportDERControl messages sent (tests)
        # The controls are built on the first request, or at start-up when the state file
        # keeps one (agent/core/station.py): from then on this block hears of every change.
        self.when_service("der", self._der_built)

    def _der_built(self, der: DerControls) -> None:
        der.listeners.append(self._wake.set)
        self._wake.set()  # what a restart left owed goes out now

    @property
    def der(self) -> DerControls:
        """The DER controls, built now if nothing did yet (a request that needs them)."""
        return self.station.der

    def capable(self) -> bool:
        """Whether some EVSE can feed energy back (a stage that takes setpoints and says it
        can discharge): only then is a DER control something this station can follow."""
        for evse in self.station.evses.values():
            snap = evse.power_stage_snapshot()
            if snap is not None and snap.stage_limits is not None \
                    and snap.stage_limits.max_discharge_w > 0:
                return True
        return False

    def live_variables(self) -> list[VarDef]:
        out: list[VarDef] = []
        for eid, evse in self.station.evses.items():
            out += [
                ro("DCDERCtrlr", "Enabled", "boolean", lambda: b(self.capable()), evse=eid),
                ro("DCDERCtrlr", "Available", "boolean",
                   lambda evse=evse: b(bool(evse.hw.ev.supports_setpoint)), evse=eid),
                ro("DCDERCtrlr", "SupportedControls", "MemberList",
                   lambda evse=evse: ",".join(stage_supports(evse.hw.ev)), evse=eid,
                   values_list=CONTROL_TYPES),
            ]
        return out

    # ------------------------------------------------------------------ R01 set

    @handles("SetDERControl")
    async def set_der_control(self, p: dict) -> dict:
        if not self.capable():
            return _status("NotSupported", "UnsupportedRequest",
                           "no EVSE of this station can feed energy back (charge-only stages)")
        control_type = p.get("controlType")
        if control_type in CONTROL_TYPES and not any(
                control_type in stage_supports(e.hw.ev) for e in self.station.evses.values()):
            return _status("NotSupported", "UnsupportedParam",
                           f"no power stage of this station can follow a {control_type} "
                           f"control (DCDERCtrlr.SupportedControls)")
        name = setting_field(str(control_type))
        extra = [k for k in ("curve", "enterService", "fixedPFAbsorb", "fixedPFInject",
                             "fixedVar", "freqDroop", "gradient", "limitMaxDischarge")
                 if k in p and k != name]
        if extra:
            return _status("Rejected", "InvalidValue",
                           f"a {control_type} control takes {name}, not {', '.join(extra)}")
        setting = p.get(name)
        from agent.core.der import validate_control

        problem = validate_control(control_type, p.get("isDefault"), setting)
        if problem is not None:
            log.warning("SetDERControl %s refused: %s", p.get("controlId"), problem[1])
            return _status("Rejected", *problem)
        status, code, superseded = self.der.set(p["controlId"], control_type,
                                                bool(p["isDefault"]), setting)
        if status != "Accepted":
            return _status(status, code, "the station keeps no more DER controls")
        out = {"status": "Accepted"}
        if superseded:
            out["supersededIds"] = superseded[:24]
        return out

    # ------------------------------------------------------------------ R02 get / report

    @handles("GetDERControl")
    async def get_der_control(self, p: dict) -> dict:
        der = self.built_service("der")  # none built: none kept (start-up builds a kept one)
        chosen = der.select(control_id=p.get("controlId"), control_type=p.get("controlType"),
                            is_default=p.get("isDefault")) if der is not None else []
        if not chosen:
            return _status("NotFound", "NotFound", "no DER control matches")
        self.adapter.spawn(self._report(p["requestId"], chosen), "v21-der-report")
        return {"status": "Accepted"}

    def entry(self, c: DerControl) -> tuple[str, dict]:
        """A control as its ReportDERControl list and entry."""
        name = setting_field(c.control_type)
        entry: dict[str, Any] = {"id": c.control_id, _GET_FIELD[name]: dict(c.setting)}
        if name == "curve":
            entry["curveType"] = c.control_type
        if name not in _NO_FLAGS:
            entry["isDefault"] = c.is_default
            entry["isSuperseded"] = self.der.superseded(c)
        return name, entry

    async def _report(self, request_id: int, chosen: list[DerControl]) -> None:
        await self.adapter.after_answer()
        lists: dict[str, list[dict]] = {}
        for c in chosen:
            name, entry = self.entry(c)
            lists.setdefault(name, []).append(entry)
        # Every kind in one message, up to 24 of each; more of a kind go in the next ones.
        messages: list[dict] = []
        longest = max(len(entries) for entries in lists.values())
        for i in range(0, longest, PER_MESSAGE):
            messages.append({name: entries[i:i + PER_MESSAGE]
                             for name, entries in lists.items() if entries[i:i + PER_MESSAGE]})
        for number, body in enumerate(messages, start=1):
            payload = {"requestId": request_id, **body}
            if number < len(messages):
                payload["tbc"] = True
            await self.adapter.send_quiet("ReportDERControl", payload)
            self.reports += 1

    # ------------------------------------------------------------------ R03 clear

    @handles("ClearDERControl")
    async def clear_der_control(self, p: dict) -> dict:
        der = self.built_service("der")  # none built: none kept
        chosen = der.select(control_id=p.get("controlId"), control_type=p.get("controlType"),
                            is_default=None if p.get("controlId") else p.get("isDefault")
                            ) if der is not None else []
        if not chosen or not der.clear([c.control_id for c in chosen]):
            return _status("NotFound", "NotFound", "no DER control matches")
        return {"status": "Accepted"}

    # ------------------------------------------------------------------ R04 / R05 notify

    def clock_synced(self, delta: float) -> None:
        """The wall clock moved: the controls' windows are where they were, "now" is not.
        The notifier and the scheduler judge them again (a restart's clock, corrected by the
        boot answer, may have put a kept control out of its window until then)."""
        self._wake.set()
        if self.built_service("der") is not None:
            self.station.charging_profiles.wake()

    def session_started(self) -> None:
        self._wake.set()
        self.adapter.spawn(self._notifier(), "v21-der-notify", session=True)

    async def _notifier(self) -> None:
        """Deliver what is owed (start / stop of scheduled controls, alarms) and sleep until
        the next start or end, or until something changes; for the connection's life."""
        while True:
            self._wake.clear()
            der = self.built_service("der")  # none yet: nothing kept, nothing owed
            delivered = await self._deliver(der) if der is not None else True
            now = self.clock.now()
            nxt = der.next_change(now) if der is not None else None
            wait = max(0.0, (nxt - now).total_seconds()) if nxt is not None else None
            if not delivered:  # the CSMS refused or did not answer: again in a while
                wait = RETRY_S if wait is None else min(wait, RETRY_S)
            if wait is None:
                await self._wake.wait()
            else:
                await self.adapter.sleep_or(min(wait, 3600.0), self._wake)

    async def _deliver(self, der: DerControls) -> bool:
        while der.alarm_queue:
            alarm = der.alarm_queue[0]
            payload: dict[str, Any] = {"controlType": alarm.control_type,
                                       "gridEventFault": alarm.fault,
                                       "timestamp": iso(alarm.at)}
            if alarm.ended:
                payload["alarmEnded"] = True
            elif alarm.info:
                payload["extraInfo"] = alarm.info[:200]
            if not await self._send("NotifyDERAlarm", payload):
                return False
            der.alarm_queue.pop(0)
        for control, started, at, superseded in der.due(self.clock.now()):
            payload = {"controlId": control.control_id, "started": started,
                       "timestamp": iso(at)}
            if started and superseded:
                payload["supersededIds"] = superseded[:24]
            if not await self._send("NotifyDERStartStop", payload):
                return False
            der.announced(control.control_id, started)
        return True

    async def _send(self, action: str, payload: dict) -> bool:
        try:
            await self.adapter.call(action, payload)
        except ConnectionLost:
            raise
        except CallFailed as exc:  # not delivered: owed still, tried at the next change
            log.warning("%s not delivered: %s", action, exc)
            return False
        return True


__all__ = ["Der21"]
