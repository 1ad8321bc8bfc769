"""2.1 block K, smart charging: the 2.0.1 block with 2.1's profile features, and what it still
refuses.

Built here, over the same engine and scheduler as 1.6 and 2.0.1 (the rules live in
:mod:`agent.core.smart_charging` and :mod:`agent.core.charging_profiles`; this maps JSON):

- **Dynamic profiles (K28)**: chargingProfileKind Dynamic, one schedule of one period whose
  limit the CSMS replaces with UpdateDynamicSchedule, or the station pulls with
  PullDynamicScheduleUpdate once dynUpdateInterval seconds have passed since the last update
  (K28.FR.10).  Every update counts from the station's clock (dynUpdateTime, K28.FR.09) and
  moves the pilot at once; with a duration, a profile not updated within it stops applying
  and the next valid profile takes over until the next update (K28.FR.13-.15).  Persisted
  like every profile.
- **Priority charging (K21, K22)**: PriorityCharging profiles (no duration, K01.FR.70) on the
  EVSE or the station; UsePriorityCharging switches a transaction to them (NoProfile when none
  can serve it, Rejected for an unknown transaction), the EV driver can ask at the station
  (``cp-agent ctl priority``), and NotifyPriorityCharging tells the CSMS each time the
  station starts or stops using one.  While on, the priority profile replaces the TxProfile /
  TxDefault in the composite; the station maximum and external constraints still cap it.
- **LocalGeneration (K27)**: the capacity of locally generated power, added on top of the
  EVSE's capped composite (never beyond its rating).

- **V2X periods (block Q)**: operationMode, setpoint, dischargeLimit, v2xBaseline,
  v2xFreqWattCurve and v2xSignalWattCurve are kept with the profile and applied by the
  scheduler (agent/core/v2x_modes.py); the modes accepted are those the EVSE can apply
  (V2XChargingCtrlr.SupportedOperationModes: the setpoint modes need a stage that takes
  setpoints, LocalFrequency a meter measuring frequency); a LocalFrequency period without a
  curve is Rejected with NoFreqWattCurve.  A period may leave out its limit in the modes
  that allow it.

Still refused, by name, with UnsupportedParam rather than half applied: per-phase limits,
setpoints and discharge limits (_L2 / _L3), setpointReactive, evseSleep and
preconditioningRequest (nothing in this station can follow them); and maxOfflineDuration,
randomizedDelay, useLocalTime and limitAtSoC, which the SmartChargingCtrlr.Supports*
variables report false.  PriorityCharging stays ChargingOnly (K01.FR.71).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar

from agent.core.smart_charging import ChargingProfile, ChargingSchedulePeriod, Kind, Purpose
from agent.core.v2x_names import CHARGE_ONLY_MODES
from agent.link.rpc import CallFailed, ConnectionLost
from agent.ocpp.blocks import handles
from agent.ocpp.charging_profiles_json import dec, number, stamp, when
from agent.ocpp.v201.device_model import VarDef, ro
from agent.ocpp.v201.smart_charging import PURPOSES, SmartCharging, from_profile, to_profile

log = logging.getLogger("cp_agent.v21")

PURPOSES_21 = {**PURPOSES, "PriorityCharging": Purpose.PRIORITY,
               "LocalGeneration": Purpose.LOCAL_GENERATION}
_PROFILE_FIELDS = ("maxOfflineDuration", "invalidAfterOfflineDuration")
_SCHEDULE_FIELDS = ("limitAtSoC", "randomizedDelay", "useLocalTime")
# Per-phase values (the engine applies one limit per phase) and reactive power (the stages
# take a real power setpoint only).
_PERIOD_FIELDS = ("setpoint_L2", "setpoint_L3", "setpointReactive", "setpointReactive_L2",
                  "setpointReactive_L3", "dischargeLimit_L2", "dischargeLimit_L3", "limit_L2",
                  "limit_L3")
# ChargingScheduleUpdateType: what an update may carry besides ``limit``.
_UPDATE_FIELDS = ("limit_L2", "limit_L3", "dischargeLimit", "dischargeLimit_L2",
                  "dischargeLimit_L3", "setpoint", "setpoint_L2", "setpoint_L3",
                  "setpointReactive", "setpointReactive_L2", "setpointReactive_L3")
PULL = "PullDynamicScheduleUpdate"
NOTIFY_PRIORITY = "NotifyPriorityCharging"
# A pull that failed (no answer, Rejected) is tried again after the profile's interval, but
# not sooner than this: a CSMS that refuses must not be asked in a tight loop.
MIN_RETRY_S = 5.0


def unsupported_21(cp: dict) -> list[str]:
    """What a 2.1 ChargingProfileType asks that this station does not do (empty: nothing)."""
    out: list[str] = [f"{name} is not supported" for name in _PROFILE_FIELDS if name in cp]
    for sched in cp.get("chargingSchedule") or []:
        out += [f"chargingSchedule.{name} is not supported" for name in _SCHEDULE_FIELDS
                if name in sched]
        for period in sched.get("chargingSchedulePeriod") or []:
            out += [f"chargingSchedulePeriod.{name} is not supported"
                    for name in _PERIOD_FIELDS if name in period]
            for flag in ("evseSleep", "preconditioningRequest"):
                if period.get(flag):
                    out.append(f"chargingSchedulePeriod.{flag} is not supported")
    return list(dict.fromkeys(out))


def _refused(problems: list[str], code: str = "UnsupportedParam") -> dict:
    return {"status": "Rejected",
            "statusInfo": {"reasonCode": code, "additionalInfo": "; ".join(problems)[:1024]}}


def to_profile_21(cp: dict, evse_id: int) -> ChargingProfile:
    """2.1 ChargingProfileType -> the engine's model: 2.0.1's plus the purposes and the
    dynamic fields (the values kept as sent, for validate to judge)."""
    base = to_profile(cp, evse_id)
    purpose = cp.get("chargingProfilePurpose")
    schedules = [replace(s, periods=[_v2x_period(q, j) for q, j in zip(
        s.periods, sched.get("chargingSchedulePeriod") or [], strict=False)])
        for s, sched in zip(base.schedules, cp.get("chargingSchedule") or [], strict=False)]
    return replace(base, purpose=PURPOSES_21.get(purpose, purpose), schedules=schedules,
                   dyn_update_interval=cp.get("dynUpdateInterval"),
                   dyn_update_time=when(cp.get("dynUpdateTime")))


def _v2x_period(q: ChargingSchedulePeriod, j: dict) -> ChargingSchedulePeriod:
    """2.1's V2X fields of a ChargingSchedulePeriodType onto the engine's period."""
    def curve(name: str, x: str) -> tuple | None:
        points = j.get(name)
        if not isinstance(points, list):
            return None
        return tuple((dec(pt.get(x)), dec(pt.get("power"))) for pt in points
                     if isinstance(pt, dict))

    return replace(q, operation_mode=j.get("operationMode"), setpoint=dec(j.get("setpoint")),
                   discharge_limit=dec(j.get("dischargeLimit")),
                   v2x_baseline=dec(j.get("v2xBaseline")),
                   freq_watt=curve("v2xFreqWattCurve", "frequency"),
                   signal_watt=curve("v2xSignalWattCurve", "signal"))


def _v2x_json(q: ChargingSchedulePeriod, out: dict) -> None:
    if q.operation_mode is not None:
        out["operationMode"] = str(q.operation_mode)
    for name, value in (("setpoint", q.setpoint), ("dischargeLimit", q.discharge_limit),
                        ("v2xBaseline", q.v2x_baseline)):
        if value is not None:
            out[name] = number(value)
    for name, x, points in (("v2xFreqWattCurve", "frequency", q.freq_watt),
                            ("v2xSignalWattCurve", "signal", q.signal_watt)):
        if points:
            out[name] = [{x: number(a) if x == "frequency" else int(a), "power": number(b)}
                         for a, b in points]


def from_profile_21(p: ChargingProfile) -> dict:
    """The engine's model -> 2.1 ChargingProfileType (ReportChargingProfiles)."""
    out = from_profile(p)
    for sched, s in zip(out["chargingSchedule"], p.schedules, strict=False):
        for period, q in zip(sched["chargingSchedulePeriod"], s.periods, strict=False):
            _v2x_json(q, period)
    if p.kind == Kind.DYNAMIC:
        if p.dyn_update_interval is not None:
            out["dynUpdateInterval"] = p.dyn_update_interval
        text = stamp(p.dyn_update_time)
        if text is not None:
            out["dynUpdateTime"] = text
    return out


class SmartCharging21(SmartCharging):
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        *SmartCharging.VARIABLES,
        # 2.1 appendix 4: what of 2.1's additions to ChargingProfileType this station applies.
        ro("SmartChargingCtrlr", "SupportedAdditionalPurposes", "MemberList",
           "PriorityCharging,LocalGeneration",
           values_list=("PriorityCharging", "LocalGeneration")),
        ro("SmartChargingCtrlr", "SupportsDynamicProfiles", "boolean", "true"),
        ro("SmartChargingCtrlr", "SupportsMaxOfflineDuration", "boolean", "false"),
        ro("SmartChargingCtrlr", "SupportsRandomizedDelay", "boolean", "false"),
        ro("SmartChargingCtrlr", "SupportsUseLocalTime", "boolean", "false"),
        ro("SmartChargingCtrlr", "SupportsLimitAtSoC", "boolean", "false"),
        ro("SmartChargingCtrlr", "SupportsEvseSleep", "boolean", "false"),
        # Which purposes survive a reboot: all the CSMS installs (the state file); the
        # external constraints are the energy manager's, in memory only.
        *(ro("SmartChargingCtrlr", "ChargingProfilePersistence", "boolean", value,
             instance=purpose)
          for purpose, value in (("ChargingStationMaxProfile", "true"),
                                 ("TxDefaultProfile", "true"), ("TxProfile", "true"),
                                 ("PriorityCharging", "true"), ("LocalGeneration", "true"),
                                 ("ChargingStationExternalConstraints", "false"))),
    )

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self._pull_wake = asyncio.Event()
        self._modes_for: Any = 0  # the EVSE of the profile being validated (its V2X modes)
        self._pull_failed: dict[int, float] = {}  # profile id -> monotonic time of a failed pull
        self.pulls = 0  # pulls answered (tests wait on it)
        service = getattr(self.station, "charging_profiles", None)
        if service is not None:
            service.priority_listeners.append(self._priority_changed)
            service.dynamic_listeners.append(self._pull_wake.set)

    # ------------------------------------------------------------------ 2.0.1 hooks

    def parse_profile(self, cp: dict, evse_id: int) -> ChargingProfile:
        return to_profile_21(cp, evse_id)

    def render_profile(self, p: ChargingProfile) -> dict:
        return from_profile_21(p)

    def validation_options(self) -> dict[str, Any]:
        # Not built: no stage takes setpoints (the station builds the modes at start-up
        # where one does), so the EVSEs apply what the pilot does.
        modes = self.built_service("v2x_modes")
        evse_id = self._modes_for if isinstance(self._modes_for, int) else 0
        return {"allowed_purposes": frozenset(Purpose), "allowed_kinds": frozenset(Kind),
                "operation_modes": modes.supported(evse_id) if modes is not None
                else CHARGE_ONLY_MODES}

    def _check(self, profile: ChargingProfile, *, remote_start: bool) -> list[str]:
        """2.0.1's checks, with the V2X modes the profile's EVSE (0: all) can apply."""
        self._modes_for = profile.evse_id
        return super()._check(profile, remote_start=remote_start)

    def expressible(self, p: ChargingProfile) -> bool:
        return True

    # ------------------------------------------------------------------ K01 / F01

    @handles("SetChargingProfile")
    async def set_charging_profile(self, p: dict) -> dict:
        problems = unsupported_21(p.get("chargingProfile") or {})
        if problems:
            log.warning("SetChargingProfile refused: %s", "; ".join(problems))
            return _refused(problems)
        return await super().set_charging_profile(p)

    def remote_start_profile(self, cp: dict, evse_id: int) -> ChargingProfile | dict:
        problems = unsupported_21(cp)
        if problems:
            log.warning("RequestStartTransaction: charging profile refused: %s",
                        "; ".join(problems))
            return _refused(problems)
        return super().remote_start_profile(cp, evse_id)

    # ------------------------------------------------------------------ K28 dynamic

    @handles("UpdateDynamicSchedule")
    async def update_dynamic_schedule(self, p: dict) -> dict:
        pid = p.get("chargingProfileId")
        problem, code = self._apply_update(pid, p.get("scheduleUpdate") or {})
        if problem is not None:
            log.warning("UpdateDynamicSchedule of profile %r refused: %s", pid, problem)
            return _refused([problem], code)
        return {"status": "Accepted"}

    def _apply_update(self, pid: Any, update: dict) -> tuple[str | None, str]:
        """Apply a ChargingScheduleUpdateType to dynamic profile ``pid``: (None, "") when
        done, else (why not, the reason code)."""
        profile = self.service.get(pid) if isinstance(pid, int) else None
        if profile is None:
            return f"no charging profile {pid!r} is installed", "InvalidProfileId"
        if profile.kind != Kind.DYNAMIC:
            return (f"charging profile {pid} is {profile.kind}, not Dynamic: only a dynamic "
                    f"profile takes schedule updates (K28)"), "InvalidProfile"
        extra = [name for name in _UPDATE_FIELDS if name in update]
        if extra:
            return (f"{', '.join(extra)}: setpoints, discharge and per-phase limits are not "
                    f"supported (ChargingOnly only)"), "UnsupportedParam"
        if "limit" not in update:
            return "the update carries no limit", "MissingParam"
        try:
            problem = self.service.update_dynamic(pid, dec(update["limit"]))
        except Exception as exc:  # noqa: BLE001 - storage or a bad value: answered, not raised
            log.exception("dynamic profile %s not updated", pid)
            return f"the update could not be stored: {type(exc).__name__}", "InternalError"
        return (problem, "InvalidValue") if problem is not None else (None, "")

    def session_started(self) -> None:
        super().session_started()
        self._pull_wake.set()
        self.adapter.spawn(self._puller(), "v21-dynamic-pull", session=True)

    def _next_pull(self, now: datetime) -> tuple[int | None, float]:
        """The dynamic profile due first and the seconds until it is (0: now); (None, ...)
        when no profile is pulled."""
        best: tuple[int | None, float] = (None, float("inf"))
        for pid, due in self.service.pull_due().items():
            wait = max(0.0, (due - now).total_seconds())
            failed = self._pull_failed.get(pid)
            if failed is not None:
                interval = float(self.service.get(pid).dyn_update_interval or 0)
                wait = max(wait, failed + max(MIN_RETRY_S, interval) - self.clock.monotonic())
            if wait < best[1]:
                best = (pid, wait)
        return best

    async def _puller(self) -> None:
        """K28.FR.10: ask the CSMS for each pulled profile's update when it is due, for as
        long as the connection lasts (offline, the last limit stands, K28's duration aside)."""
        while True:
            self._pull_wake.clear()
            pid, wait = self._next_pull(self.clock.now())
            if pid is None:  # nothing to pull: no timer, until a dynamic profile changes
                await self._pull_wake.wait()
            elif wait > 0:
                await self.adapter.sleep_or(wait, self._pull_wake)
            else:
                await self._pull(pid)

    async def _pull(self, pid: int) -> None:
        try:
            res = await self.adapter.call(PULL, {"chargingProfileId": pid})
        except ConnectionLost:
            raise
        except CallFailed as exc:
            log.warning("%s of profile %s failed: %s", PULL, pid, exc)
            self._pull_failed[pid] = self.clock.monotonic()
            return
        self.pulls += 1
        problem: str | None = None
        if res.get("status") != "Accepted":
            info = res.get("statusInfo") or {}
            problem = f"the CSMS answered {res.get('status')} {info.get('reasonCode', '')}"
        elif not isinstance(res.get("scheduleUpdate"), dict):
            problem = "the CSMS accepted but sent no scheduleUpdate"
        else:
            problem, _ = self._apply_update(pid, res["scheduleUpdate"])
        if problem is None:
            self._pull_failed.pop(pid, None)
            return
        # Not applied, so not stamped: a CSMS that keeps refusing must not keep a stale limit
        # alive (K28.FR.13); asked again after the interval.
        log.warning("%s of profile %s: not applied: %s", PULL, pid, problem)
        self._pull_failed[pid] = self.clock.monotonic()

    # ------------------------------------------------------------------ K21 / K22 priority

    @handles("UsePriorityCharging")
    async def use_priority_charging(self, p: dict) -> dict:
        tx_id = p.get("transactionId")
        evse_id = next((e for e, t in self.service.local_transactions().items()
                        if t == tx_id), None)
        if evse_id is None:
            return {"status": "Rejected", "statusInfo": {
                "reasonCode": "TxNotFound",
                "additionalInfo": f"no transaction {tx_id!r} is running"}}
        status = self.service.use_priority(evse_id, bool(p.get("activate")))
        if status == "NoProfile":
            return {"status": "NoProfile", "statusInfo": {
                "reasonCode": "NotFound",
                "additionalInfo": f"no PriorityCharging profile on EVSE {evse_id} or the "
                                  f"station (SetChargingProfile one first)"}}
        return {"status": status}

    def _priority_changed(self, evse_id: int, tx_id: str, activated: bool) -> None:
        """The station started or stopped using a priority profile: tell the CSMS (after the
        answer of a UsePriorityCharging that caused it)."""
        if self.adapter.active and self.adapter.online:
            self.adapter.spawn(self._notify_priority(tx_id, activated), "v21-priority")

    async def _notify_priority(self, tx_id: str, activated: bool) -> None:
        await self.adapter.after_answer()
        await self.adapter.send_quiet(NOTIFY_PRIORITY, {"transactionId": tx_id,
                                                        "activated": activated})


__all__ = ["PURPOSES_21", "SmartCharging21", "from_profile_21", "to_profile_21",
           "unsupported_21"]
