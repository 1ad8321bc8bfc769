"""1.6 SmartCharging profile: SetChargingProfile, ClearChargingProfile, GetCompositeSchedule
(1.6 3.13, 5.5, 5.7, 5.16) and the profile inside RemoteStartTransaction.

A thin mapping: the 1.6 JSON becomes the engine's :class:`ChargingProfile`, the engine's
``validate`` judges it (every problem is logged and answered Rejected, never an exception),
and :class:`agent.core.charging_profiles.ChargingProfiles` installs, clears and applies it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from decimal import ROUND_FLOOR, Decimal
from typing import Any, ClassVar

from agent.clock import iso
from agent.core.settings import SettingDef, defs_once
from agent.core.smart_charging import (
    ChargingProfile,
    ChargingSchedule,
    ChargingSchedulePeriod,
    Purpose,
)
from agent.ocpp.blocks import Block, handles
from agent.ocpp.charging_profiles_json import dec as _dec
from agent.ocpp.charging_profiles_json import number as _number
from agent.ocpp.charging_profiles_json import when as _when

log = logging.getLogger("cp_agent.v16")

PROFILE = "SmartCharging"

PURPOSES = {"ChargePointMaxProfile": Purpose.STATION_MAX,
            "TxDefaultProfile": Purpose.TX_DEFAULT, "TxProfile": Purpose.TX}
PURPOSE_NAMES = {v: k for k, v in PURPOSES.items()}
UNITS = {"Current": "A", "Power": "W"}  # ChargingScheduleAllowedChargingRateUnit members


def to_profile(cs: dict, connector_id: int) -> ChargingProfile:
    """1.6 csChargingProfiles -> the engine's model (unknown values kept for validate)."""
    sched = cs.get("chargingSchedule") or {}
    periods = [ChargingSchedulePeriod(start_s=p.get("startPeriod"), limit=_dec(p.get("limit")),
                                      number_phases=p.get("numberPhases"))
               for p in sched.get("chargingSchedulePeriod") or []]
    unit = sched.get("chargingRateUnit")
    purpose = cs.get("chargingProfilePurpose")
    return ChargingProfile(
        id=cs.get("chargingProfileId"), stack_level=cs.get("stackLevel"),
        purpose=PURPOSES.get(purpose, purpose), kind=cs.get("chargingProfileKind"),
        recurrency=cs.get("recurrencyKind"), valid_from=_when(cs.get("validFrom")),
        valid_to=_when(cs.get("validTo")), transaction_id=cs.get("transactionId"),
        evse_id=connector_id,
        schedules=[ChargingSchedule(rate_unit={"A": "A", "W": "W"}.get(unit, unit),
                                    periods=periods, duration_s=sched.get("duration"),
                                    start=_when(sched.get("startSchedule")),
                                    min_rate=_dec(sched.get("minChargingRate")))])


class SmartCharging(Block):
    PROFILE: ClassVar[str] = PROFILE
    SETTINGS = (
        SettingDef("ChargeProfileMaxStackLevel", "int", 8, readonly=True, profile=PROFILE),
        SettingDef("ChargingScheduleAllowedChargingRateUnit", "csl", ["Current", "Power"],
                   readonly=True, profile=PROFILE),
        SettingDef("ChargingScheduleMaxPeriods", "int", 24, readonly=True, profile=PROFILE),
        SettingDef("MaxChargingProfilesInstalled", "int", 16, readonly=True, profile=PROFILE),
        SettingDef("ConnectorSwitch3to1PhaseSupported", "bool", False, readonly=True,
                   profile=PROFILE),
    )

    @property
    def service(self) -> Any:
        return self.station.charging_profiles

    def settings_defs(self) -> tuple[SettingDef, ...]:
        """ConnectorSwitch3to1PhaseSupported says what the hardware can: true only when every
        EVSE's board switches phases (the HAL's ``supports_phase_switch``)."""
        switch = bool(getattr(self.service, "phase_switching", False))
        return defs_once((type(self), switch), lambda: tuple(
            replace(d, default=switch) if d.name == "ConnectorSwitch3to1PhaseSupported" else d
            for d in self.SETTINGS))

    def check(self, profile: ChargingProfile, *, remote_start: bool = False) -> list[str]:
        """Every reason to refuse ``profile`` (1.6 rules and this station's capabilities)."""
        # The engine, imported by the first profile a CSMS sends (agent/core/charging_profiles.py)
        from agent.core.smart_charging_engine import validate

        units = [UNITS[u] for u in self.settings["ChargingScheduleAllowedChargingRateUnit"]
                 if u in UNITS]
        problems = validate(
            profile, max_stack_level=self.settings["ChargeProfileMaxStackLevel"],
            max_periods=self.settings["ChargingScheduleMaxPeriods"], allowed_units=units,
            evse_ids=list(self.station.evses), transactions=self.service.transactions(),
            remote_start=remote_start,
            phase_switching=bool(self.settings["ConnectorSwitch3to1PhaseSupported"]))
        if not problems:
            installed = len(self.service.profiles) - self.service.would_replace(profile)
            limit = self.settings["MaxChargingProfilesInstalled"]
            if installed + 1 > limit:
                problems.append(f"{limit} profiles are installed already "
                                f"(MaxChargingProfilesInstalled)")
        return problems

    def _refuse(self, what: str, cs: dict, problems: list[str]) -> None:
        log.warning("%s: charging profile %r rejected: %s", what, cs.get("chargingProfileId"),
                    "; ".join(problems))

    @handles("SetChargingProfile")
    async def set_charging_profile(self, p: dict) -> dict:
        connector = p.get("connectorId")
        cs = p.get("csChargingProfiles") or {}
        if connector != 0 and connector not in self.station.evses:
            self._refuse("SetChargingProfile", cs, [f"connector {connector} does not exist"])
            return {"status": "Rejected"}
        profile = to_profile(cs, connector)
        problems = self.check(profile)
        if cs.get("chargingProfilePurpose") not in PURPOSES:
            problems.insert(0, f"unknown purpose {cs.get('chargingProfilePurpose')!r}")
        if problems:
            self._refuse("SetChargingProfile", cs, problems)
            return {"status": "Rejected"}
        self.service.install(profile)
        return {"status": "Accepted"}

    def remote_start_profile(self, cs: dict, connector_id: int) -> ChargingProfile | None:
        """The TxProfile of a RemoteStartTransaction, or None (logged) if it is unusable."""
        if cs.get("chargingProfilePurpose") != "TxProfile":
            self._refuse("RemoteStartTransaction", cs, [
                f"purpose {cs.get('chargingProfilePurpose')!r}: a remote start takes a "
                f"TxProfile only (1.6 5.11)"])
            return None
        profile = to_profile(cs, connector_id)
        problems = self.check(profile, remote_start=True)
        if problems:
            self._refuse("RemoteStartTransaction", cs, problems)
            return None
        return profile

    @handles("ClearChargingProfile")
    async def clear_charging_profile(self, p: dict) -> dict:
        purpose = p.get("chargingProfilePurpose")
        cleared = self.service.clear(
            profile_id=p.get("id"), evse_id=p.get("connectorId"),
            purpose=PURPOSES.get(purpose) if purpose is not None else None,
            stack_level=p.get("stackLevel"))
        return {"status": "Accepted" if cleared else "Unknown"}

    @handles("GetCompositeSchedule")
    async def get_composite_schedule(self, p: dict) -> dict:
        connector = p.get("connectorId")
        if connector != 0 and connector not in self.station.evses:
            return {"status": "Rejected"}
        wanted = p.get("chargingRateUnit")
        if wanted is not None and wanted not in ("A", "W"):
            return {"status": "Rejected"}
        unit = wanted or "A"
        duration = int(p.get("duration") or 0)
        if duration <= 0:
            return {"status": "Rejected"}
        now = self.clock.now().replace(microsecond=0)
        # 1.6 has no ExternalConstraints: the site / MQTT limits stay out of its composite.
        periods = self.service.composite(connector, duration, unit, start=now, external=False)
        stamp = iso(now)
        schedule: dict[str, Any] = {
            "duration": duration, "startSchedule": stamp, "chargingRateUnit": unit,
            "chargingSchedulePeriod": [
                {"startPeriod": q.start_s, "limit": _number(q.limit),
                 "numberPhases": q.number_phases} for q in periods]}
        # The EV's minChargingRate of the profile in force now (ChargingSchedule); now, not
        # the second it rounds down to, which may lie before the transaction began.
        rate = self.service.min_rate(connector, unit=unit) if connector else None
        if rate is not None:
            schedule["minChargingRate"] = _number(rate.quantize(Decimal("0.1"), ROUND_FLOOR))
        return {"status": "Accepted", "connectorId": connector, "scheduleStart": stamp,
                "chargingSchedule": schedule}


__all__ = ["PROFILE", "SmartCharging", "to_profile"]
