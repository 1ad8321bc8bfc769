"""2.1 block K, smart charging: the 2.0.1 block, refusing what 2.1 added and it does not do.

2.1 extended ChargingProfileType: kind Dynamic (K28), purposes PriorityCharging and
LocalGeneration, offline durations, and periods that carry a setpoint, a discharge limit,
per-phase limits or an operationMode instead of (or beside) ``limit``, which 2.1 no longer
requires.  The 2.0.1 engine only applies a charging limit, so a profile that relies on any of
this is Rejected with the fields named (UnsupportedParam) rather than half applied; the
device model says so too (SmartChargingCtrlr.SupportsDynamicProfiles false, ...).  What the
2.0.1 block does (validation, storage, composite schedules) is unchanged.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from agent.core.smart_charging import ChargingProfile
from agent.ocpp.blocks import handles
from agent.ocpp.v201.device_model import VarDef, ro
from agent.ocpp.v201.smart_charging import SmartCharging

log = logging.getLogger("cp_agent.v21")

_PROFILE_FIELDS = ("dynUpdateInterval", "dynUpdateTime", "maxOfflineDuration",
                   "invalidAfterOfflineDuration")
_SCHEDULE_FIELDS = ("limitAtSoC", "randomizedDelay", "useLocalTime")
_PERIOD_FIELDS = ("setpoint", "setpoint_L2", "setpoint_L3", "setpointReactive",
                  "setpointReactive_L2", "setpointReactive_L3", "dischargeLimit",
                  "dischargeLimit_L2", "dischargeLimit_L3", "limit_L2", "limit_L3",
                  "v2xBaseline", "v2xFreqWattCurve", "v2xSignalWattCurve")


def unsupported_21(cp: dict) -> list[str]:
    """What a 2.1 ChargingProfileType asks that this station does not do (empty: nothing)."""
    out: list[str] = []
    if cp.get("chargingProfileKind") == "Dynamic":
        out.append("chargingProfileKind Dynamic is not supported")
    purpose = cp.get("chargingProfilePurpose")
    if purpose in ("PriorityCharging", "LocalGeneration"):
        out.append(f"chargingProfilePurpose {purpose} is not supported")
    out += [f"{name} is not supported" for name in _PROFILE_FIELDS if name in cp]
    for sched in cp.get("chargingSchedule") or []:
        out += [f"chargingSchedule.{name} is not supported" for name in _SCHEDULE_FIELDS
                if name in sched]
        for period in sched.get("chargingSchedulePeriod") or []:
            mode = period.get("operationMode", "ChargingOnly")
            if mode != "ChargingOnly":
                out.append(f"operationMode {mode} is not supported (ChargingOnly only)")
            out += [f"chargingSchedulePeriod.{name} is not supported"
                    for name in _PERIOD_FIELDS if name in period]
            if period.get("evseSleep"):
                out.append("chargingSchedulePeriod.evseSleep is not supported")
            if "limit" not in period:
                out.append("a chargingSchedulePeriod without a limit is not supported")
    return list(dict.fromkeys(out))


def _refused(problems: list[str]) -> dict:
    return {"status": "Rejected",
            "statusInfo": {"reasonCode": "UnsupportedParam",
                           "additionalInfo": "; ".join(problems)[:1024]}}


class SmartCharging21(SmartCharging):
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        *SmartCharging.VARIABLES,
        # 2.1 appendix 4: the 2.1 additions to ChargingProfileType, none of them applied.
        ro("SmartChargingCtrlr", "SupportedAdditionalPurposes", "MemberList", "",
           values_list=("PriorityCharging", "LocalGeneration")),
        ro("SmartChargingCtrlr", "SupportsDynamicProfiles", "boolean", "false"),
        ro("SmartChargingCtrlr", "SupportsMaxOfflineDuration", "boolean", "false"),
        ro("SmartChargingCtrlr", "SupportsRandomizedDelay", "boolean", "false"),
        ro("SmartChargingCtrlr", "SupportsUseLocalTime", "boolean", "false"),
        ro("SmartChargingCtrlr", "SupportsLimitAtSoC", "boolean", "false"),
        ro("SmartChargingCtrlr", "SupportsEvseSleep", "boolean", "false"),
    )

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
