"""2.0.1 block K, smart charging: SetChargingProfile (K01), the TxProfile of a remote start
(K05 / F01), GetCompositeSchedule (K08), GetChargingProfiles (K09), ClearChargingProfile
(K10) and the SmartChargingCtrlr variables.

A thin mapping over the core, as 1.6's :mod:`agent.ocpp.v16.smart_charging` is: the 2.0.1
JSON becomes the engine's :class:`ChargingProfile` in one place (:func:`to_profile`, and back
in :func:`from_profile`), the engine's ``validate`` judges it with this station's
capabilities, and :class:`agent.core.charging_profiles.ChargingProfiles` installs, clears and
applies it, on- and offline (K06), persisted across restarts.  What 2.0.1 adds to the shared
rules lives here:

- every refusal is ``Rejected`` with a reason code (Appendix 5) and the problems in words,
  never a CALLERROR;
- a TxProfile must name the transaction running on its EVSE (K01.FR.03, .09, .33);
  2.0.1's transactionId is the station's own id;
- equal purpose and stack level on the same EVSE (and transaction) with overlapping validity
  is refused as DuplicateProfile instead of replacing (K01.FR.06, .39), a station-wide and an
  EVSE's TxDefault may not share a stack level (K01.FR.52, .53), and an external constraint
  can be neither set (K01.FR.22), replaced (K01.FR.05) nor cleared by the CSMS;
- one charging schedule per profile: alternatives 2 and 3 are for ISO 15118 negotiation,
  which this station does not do;
- the profile inside RequestStartTransaction gets its transactionId from the transaction it
  starts (F01.FR.11; see :meth:`SmartCharging.transaction_started`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from agent.clock import iso
from agent.core.model import EvseSnapshot, TxRecord
from agent.core.smart_charging import (
    BASE_KINDS,
    BASE_PURPOSES,
    ChargingProfile,
    ChargingSchedule,
    ChargingSchedulePeriod,
    Purpose,
)
from agent.link.rpc import CallFailed
from agent.ocpp.blocks import handles
from agent.ocpp.charging_profiles_json import dec, number, stamp, when
from agent.ocpp.v201.device_model import VarDef, VariableBlock, b, ro, split_report
from agent.storage import StorageError

log = logging.getLogger("cp_agent.v201")

PURPOSES = {"ChargingStationMaxProfile": Purpose.STATION_MAX,
            "TxDefaultProfile": Purpose.TX_DEFAULT, "TxProfile": Purpose.TX,
            "ChargingStationExternalConstraints": Purpose.EXTERNAL}
PURPOSE_NAMES = {v: k for k, v in PURPOSES.items()}
UNITS = ("A", "W")
MAX_SCHEDULES = 1  # 2 and 3 are ISO 15118 alternatives; without 15118 only the first counts
# SmartChargingCtrlr.Entries maxLimit: how many profiles may be installed at once.
MAX_ENTRIES = 32
REPORT = "ReportChargingProfiles"  # the DeviceDataCtrlr instance that limits its messages

# The engine names 1.6's configuration keys; a 2.0.1 operator knows the variables.
_NAMES_201 = {
    "ChargeProfileMaxStackLevel": "SmartChargingCtrlr.ProfileStackLevel",
    "ChargingScheduleAllowedChargingRateUnit": "SmartChargingCtrlr.RateUnit",
    "ChargingScheduleMaxPeriods": "SmartChargingCtrlr.PeriodsPerSchedule",
}
# The reason code of a problem, by a mark in its text (first match wins; Appendix 5).
_REASONS = (
    ("internal error", "InternalError"),
    ("v2xFreqWattCurve is missing", "NoFreqWattCurve"),  # 2.1 V2X
    ("SupportedOperationModes", "UnsupportedParam"),  # 2.1 V2X
    ("K01.FR.122", "InvalidProfile"),  # 2.1: dynUpdateInterval on a profile not Dynamic
    ("K01.FR.05", "DuplicateProfile"),
    ("K01.FR.06", "DuplicateProfile"),
    ("K01.FR.52", "DuplicateProfile"),
    ("K01.FR.53", "DuplicateProfile"),
    ("K01.FR.22", "InvalidValue"),
    ("K01.FR.28", "UnknownEvse"),
    ("no transaction is running", "TxNotFound"),
    ("K01.FR.33", "TxNotFound"),
    ("K01.FR.03", "MissingParam"),
    ("ProfileStackLevel", "InvalidStackLevel"),
    ("stack level", "InvalidStackLevel"),
    ("RateUnit", "UnsupportedRateUnit"),
    ("rate unit", "UnsupportedRateUnit"),
    ("PeriodsPerSchedule", "TooManyElements"),
    ("charging schedules, at most", "TooManyElements"),
    ("Entries", "OutOfStorage"),
    ("belongs on EVSE 0", "InvalidValue"),
    ("needs an EVSE > 0", "InvalidValue"),
    ("period ", "InvalidSchedule"),
    ("startSchedule", "InvalidSchedule"),
    ("schedule", "InvalidSchedule"),
    ("duration", "InvalidSchedule"),
    ("minChargingRate", "InvalidSchedule"),
)


# ---------------------------------------------------------------------- JSON <-> engine


def to_profile(cp: dict, evse_id: int) -> ChargingProfile:
    """2.0.1 ChargingProfileType -> the engine's model (unknown values kept for validate).

    salesTariff (ISO 15118) is not kept: this station does not negotiate tariffs with the EV.
    """
    schedules = []
    for sched in cp.get("chargingSchedule") or []:
        periods = [ChargingSchedulePeriod(start_s=q.get("startPeriod"), limit=dec(q.get("limit")),
                                          number_phases=q.get("numberPhases"),
                                          phase_to_use=q.get("phaseToUse"))
                   for q in sched.get("chargingSchedulePeriod") or []]
        schedules.append(ChargingSchedule(
            rate_unit=sched.get("chargingRateUnit"), periods=periods,
            duration_s=sched.get("duration"), start=when(sched.get("startSchedule")),
            min_rate=dec(sched.get("minChargingRate")), id=sched.get("id")))
    purpose = cp.get("chargingProfilePurpose")
    return ChargingProfile(
        id=cp.get("id"), stack_level=cp.get("stackLevel"),
        purpose=PURPOSES.get(purpose, purpose), kind=cp.get("chargingProfileKind"),
        recurrency=cp.get("recurrencyKind"), valid_from=when(cp.get("validFrom")),
        valid_to=when(cp.get("validTo")), transaction_id=cp.get("transactionId"),
        evse_id=evse_id, schedules=schedules)


def from_profile(p: ChargingProfile) -> dict:
    """The engine's model -> 2.0.1 ChargingProfileType, as ReportChargingProfiles sends it."""
    out: dict[str, Any] = {
        "id": p.id, "stackLevel": p.stack_level,
        "chargingProfilePurpose": PURPOSE_NAMES.get(p.purpose, str(p.purpose)),
        "chargingProfileKind": str(p.kind)}
    if p.recurrency is not None:
        out["recurrencyKind"] = str(p.recurrency)
    for key, moment in (("validFrom", p.valid_from), ("validTo", p.valid_to)):
        text = stamp(moment)
        if text is not None:
            out[key] = text
    schedules = []
    for number_, s in enumerate(p.schedules, start=1):
        sched: dict[str, Any] = {"id": s.id if s.id is not None else number_,
                                 "chargingRateUnit": str(s.rate_unit),
                                 "chargingSchedulePeriod": [_period(q) for q in s.periods]}
        if s.start is not None:
            sched["startSchedule"] = stamp(s.start)
        if s.duration_s is not None:
            sched["duration"] = s.duration_s
        if s.min_rate is not None:
            sched["minChargingRate"] = number(s.min_rate)
        schedules.append(sched)
    out["chargingSchedule"] = schedules
    if p.transaction_id is not None:
        out["transactionId"] = str(p.transaction_id)
    return out


def _period(q: ChargingSchedulePeriod) -> dict:
    out: dict[str, Any] = {"startPeriod": q.start_s}
    if q.limit is not None:  # 2.1 V2X periods may have none
        out["limit"] = number(q.limit)
    if q.number_phases is not None:
        out["numberPhases"] = q.number_phases
    if q.phase_to_use is not None:
        out["phaseToUse"] = q.phase_to_use
    return out


def limit_source(p: ChargingProfile) -> str:
    """Who set ``p`` (ChargingLimitSourceEnumType): the CSO for what the CSMS installs; an
    external constraint names its system (EMS when it says nothing)."""
    source = getattr(p, "charging_limit_source", None)
    if p.purpose == Purpose.EXTERNAL and source in (None, "", "CSO"):
        return "EMS"
    return source or "CSO"


def reason_code(problem: str) -> str:
    """The Appendix 5 reason code that fits a problem the validation named."""
    for mark, code in _REASONS:
        if mark in problem:
            return code
    return "InvalidProfile"


def _rejected(problems: list[str]) -> dict:
    return {"status": "Rejected",
            "statusInfo": {"reasonCode": reason_code(problems[0]),
                           "additionalInfo": "; ".join(problems)[:512]}}


def _in_201_terms(problem: str) -> str:
    for old, new in _NAMES_201.items():
        problem = problem.replace(old, new)
    return problem


def _overlap(a: ChargingProfile, b_: ChargingProfile, now: datetime) -> bool:
    """Whether the validity periods of two profiles overlap (absent validFrom: valid since
    installed, i.e. from now for the new one; absent validTo: for ever)."""
    lo = datetime.min.replace(tzinfo=UTC)
    hi = datetime.max.replace(tzinfo=UTC)

    def span(p: ChargingProfile, start: datetime) -> tuple[datetime, datetime]:
        vf = p.valid_from if isinstance(p.valid_from, datetime) else start
        vt = p.valid_to if isinstance(p.valid_to, datetime) else hi
        return _utc(vf), _utc(vt)

    a_from, a_to = span(a, lo)
    b_from, b_to = span(b_, now)
    return a_from < b_to and b_from < a_to


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


# ---------------------------------------------------------------------- the block


class SmartCharging(VariableBlock):
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        ro("SmartChargingCtrlr", "Enabled", "boolean", "true"),
        ro("SmartChargingCtrlr", "Available", "boolean", "true"),
        ro("SmartChargingCtrlr", "ProfileStackLevel", "integer", "8", min_limit=0),
        ro("SmartChargingCtrlr", "PeriodsPerSchedule", "integer", "24", min_limit=1,
           max_limit=1024),
        ro("SmartChargingCtrlr", "RateUnit", "MemberList", "A,W", values_list=UNITS),
        # No board selects the phase of a 1-phase session: phaseToUse is refused (K01.FR.20).
        ro("SmartChargingCtrlr", "ACPhaseSwitchingSupported", "boolean", "false"),
        ro("DeviceDataCtrlr", "ItemsPerMessage", "integer", "16", instance=REPORT),
        ro("DeviceDataCtrlr", "BytesPerMessage", "integer", "16384", instance=REPORT),
    )

    def live_variables(self) -> list[VarDef]:
        return [
            ro("SmartChargingCtrlr", "Entries", "integer",
               lambda: str(len(self.service.profiles)), instance="ChargingProfiles",
               min_limit=0, max_limit=MAX_ENTRIES),
            # 3-to-1 during a transaction: what the boards can (the core knows).
            ro("SmartChargingCtrlr", "Phases3to1", "boolean",
               lambda: b(bool(getattr(self.service, "phase_switching", False)))),
        ]

    @property
    def service(self) -> Any:
        return self.station.charging_profiles

    def _everything(self) -> list[ChargingProfile]:
        """The installed profiles and the external limits in force (the core keeps those
        in memory as ExternalConstraints, never among the installed ones)."""
        return [*self.service.profiles, *getattr(self.service, "external_profiles", ())]

    def _units(self) -> list[str]:
        return [u for u in self.dm.members("SmartChargingCtrlr", "RateUnit") if u in UNITS]

    # ------------------------------------------------------------------ validation

    def check(self, profile: ChargingProfile, *, remote_start: bool = False) -> list[str]:
        """Every reason to refuse ``profile`` (2.0.1 rules, this station's capabilities), in
        words; the first one decides the reason code."""
        try:
            return self._check(profile, remote_start=remote_start)
        except Exception as exc:  # a CSMS request is answered, whatever went wrong here
            log.exception("charging profile %r could not be checked", profile.id)
            return [f"internal error while checking the profile: {type(exc).__name__}"]

    # Hooks a later version's block overrides (2.1: more fields, purposes and kinds).

    def parse_profile(self, cp: dict, evse_id: int) -> ChargingProfile:
        """This version's ChargingProfileType -> the engine's model."""
        return to_profile(cp, evse_id)

    def render_profile(self, p: ChargingProfile) -> dict:
        """The engine's model -> this version's ChargingProfileType (reports)."""
        return from_profile(p)

    def validation_options(self) -> dict[str, Any]:
        """More arguments for the engine's ``validate`` (2.1: its purposes and kinds)."""
        return {}

    def expressible(self, p: ChargingProfile) -> bool:
        """Whether this version's messages can carry ``p``: a 2.1 profile (PriorityCharging,
        Dynamic, ...) installed over 2.1 on the same state file still applies, but is left out
        of a 2.0.1 report, whose schema has no words for it."""
        return str(p.purpose) in BASE_PURPOSES and str(p.kind) in BASE_KINDS

    def _check(self, profile: ChargingProfile, *, remote_start: bool) -> list[str]:
        # The engine, imported by the first profile a CSMS sends (agent/core/charging_profiles.py)
        from agent.core.smart_charging_engine import validate

        transactions = self.service.local_transactions()
        problems = [_in_201_terms(text) for text in validate(
            profile, max_stack_level=self.dm.integer("SmartChargingCtrlr", "ProfileStackLevel"),
            max_periods=self.dm.integer("SmartChargingCtrlr", "PeriodsPerSchedule"),
            max_schedules=MAX_SCHEDULES, allowed_units=self._units(),
            evse_ids=list(self.station.evses), transactions=transactions,
            remote_start=remote_start, require_transaction_id=True,
            phase_switching=self.dm.flag("SmartChargingCtrlr", "ACPhaseSwitchingSupported"),
            **self.validation_options())]
        problems += self._phases(profile)
        if not problems:
            problems += self._duplicates(profile)
        if not problems:
            installed = [p for p in self.service.profiles if p.id != profile.id]
            if len(installed) + 1 > MAX_ENTRIES:
                problems.append(f"{len(installed)} profiles are installed already, the most "
                                f"this station keeps (SmartChargingCtrlr.Entries maxLimit "
                                f"{MAX_ENTRIES})")
        return problems

    def _phases(self, profile: ChargingProfile) -> list[str]:
        """K01.FR.45: no more phases than the EVSE (or, on EVSE 0, any EVSE) has."""
        evse = self.station.evses.get(profile.evse_id)
        have = evse.phases if evse is not None else max(
            (e.phases for e in self.station.evses.values()), default=3)
        out = []
        for schedule in profile.schedules:
            for n, q in enumerate(getattr(schedule, "periods", ()), start=1):
                if isinstance(q.number_phases, int) and q.number_phases > have:
                    out.append(f"period {n}: numberPhases {q.number_phases}, but the EVSE has "
                               f"{have} phase(s) (K01.FR.45)")
        return out

    def _duplicates(self, profile: ChargingProfile) -> list[str]:
        now = self.clock.now()
        out = []
        for p in self._everything():
            if p.id == profile.id:
                if p.purpose == Purpose.EXTERNAL:
                    out.append(f"id {p.id} is an external constraint set by "
                               f"the {limit_source(p)}; the CSMS cannot replace it (K01.FR.05)")
                continue
            if str(p.purpose) != str(profile.purpose) or p.stack_level != profile.stack_level:
                continue
            if p.evse_id == profile.evse_id:
                if profile.purpose == Purpose.TX and \
                        str(p.transaction_id) != str(profile.transaction_id):
                    continue
                if _overlap(p, profile, now):
                    out.append(f"profile {p.id} has the same purpose and stack "
                               f"level {p.stack_level} on EVSE {p.evse_id} and a validity "
                               f"period that overlaps (K01.FR.06, K01.FR.39)")
            elif profile.purpose == Purpose.TX_DEFAULT and (p.evse_id == 0) != (
                    profile.evse_id == 0):
                rule = "K01.FR.52" if profile.evse_id == 0 else "K01.FR.53"
                out.append(f"TxDefaultProfile {p.id} on EVSE {p.evse_id} has "
                           f"stack level {p.stack_level} already; station-wide and per-EVSE "
                           f"defaults need distinct levels ({rule})")
        return out

    # ------------------------------------------------------------------ K01

    @handles("SetChargingProfile")
    async def set_charging_profile(self, p: dict) -> dict:
        cp = p.get("chargingProfile") or {}
        profile = self.parse_profile(cp, p.get("evseId"))
        problems = self.check(profile)
        if problems:
            log.warning("SetChargingProfile: charging profile %r rejected: %s", cp.get("id"),
                        "; ".join(problems))
            return _rejected(problems)
        try:
            self.service.install(profile, replace_level=False)
        except StorageError as exc:
            log.error("SetChargingProfile: charging profile %r not stored: %s", profile.id, exc)
            return {"status": "Rejected", "statusInfo": {
                "reasonCode": "InternalError",
                "additionalInfo": f"the profile could not be stored: {exc}"[:512]}}
        return {"status": "Accepted"}

    # ------------------------------------------------------------------ K05 / F01

    def remote_start_profile(self, cp: dict, evse_id: int) -> ChargingProfile | dict:
        """The TxProfile a RequestStartTransaction carries, checked (F01.FR.09/.11): the
        profile to install, or the Rejected answer saying why not.  A transaction already
        running on the EVSE (TxStartPoint EVConnected) is the one it is for."""
        profile = self.parse_profile(cp, evse_id)
        if profile.purpose != Purpose.TX:
            problems = [f"purpose {cp.get('chargingProfilePurpose')!r}: a remote start "
                        f"takes a TxProfile only (F01.FR.09)"]
        else:
            problems = self.check(profile, remote_start=True)
        if problems:
            log.warning("RequestStartTransaction: charging profile %r rejected: %s",
                        cp.get("id"), "; ".join(problems))
            answer = _rejected(problems)
            if answer["statusInfo"]["reasonCode"] == "InvalidValue":
                answer["statusInfo"]["reasonCode"] = "InvalidProfile"
            return answer
        running = self.service.local_transactions().get(evse_id)
        return replace(profile, transaction_id=running) if running else profile

    def forget_remote_start(self, profile_id: int) -> None:
        """The remote start that brought this TxProfile started nothing: it must not go to
        whatever transaction starts next on that EVSE."""
        p = self.service.get(profile_id)
        if p is not None and p.purpose == Purpose.TX and p.transaction_id is None:
            self.service.clear_ids([profile_id])

    def transaction_started(self, tx: TxRecord, snap: EvseSnapshot, trigger: Any) -> None:
        """F01.FR.11: the station names the transaction of a remote start's TxProfile."""
        for p in self.service.profiles:
            if p.purpose == Purpose.TX and p.evse_id == tx.evse_id and p.transaction_id is None:
                self.service.install(replace(p, transaction_id=tx.local_id),
                                     replace_level=False)

    # ------------------------------------------------------------------ K08

    @handles("GetCompositeSchedule")
    async def get_composite_schedule(self, p: dict) -> dict:
        evse_id = p.get("evseId")
        if evse_id != 0 and evse_id not in self.station.evses:
            return {"status": "Rejected", "statusInfo": {
                "reasonCode": "UnknownEvse", "additionalInfo": f"EVSE {evse_id} does not exist"}}
        units = self._units()
        unit = p.get("chargingRateUnit") or ("A" if "A" in units or not units else units[0])
        if unit not in units:
            return {"status": "Rejected", "statusInfo": {
                "reasonCode": "UnsupportedRateUnit",
                "additionalInfo": f"{unit} is not in SmartChargingCtrlr.RateUnit "
                                  f"({','.join(units)})"}}
        duration = p.get("duration")
        if not isinstance(duration, int) or duration <= 0:
            return {"status": "Rejected", "statusInfo": {
                "reasonCode": "InvalidValue",
                "additionalInfo": f"duration {duration!r} is not a number of seconds > 0"}}
        now = self.clock.now().replace(microsecond=0)
        periods = self.service.composite(evse_id, duration, unit, start=now)
        return {"status": "Accepted", "schedule": {
            "evseId": evse_id, "duration": duration, "scheduleStart": iso(now),
            "chargingRateUnit": unit,
            "chargingSchedulePeriod": [
                {"startPeriod": q.start_s, "limit": number(q.limit),
                 "numberPhases": q.number_phases} for q in periods]}}

    # ------------------------------------------------------------------ K09

    def select(self, evse_id: int | None, criteria: dict) -> list[ChargingProfile]:
        """The installed profiles a GetChargingProfilesRequest asks for: on ``evse_id`` (0:
        the station's own; None: every one), matching every criterion given."""
        ids = criteria.get("chargingProfileId")
        purpose = criteria.get("chargingProfilePurpose")
        level = criteria.get("stackLevel")
        sources = criteria.get("chargingLimitSource")
        return [p for p in self._everything()
                if self.expressible(p) and (evse_id is None or p.evse_id == evse_id)
                and (not ids or p.id in ids)
                and (purpose is None or p.purpose == PURPOSES.get(purpose, purpose))
                and (level is None or p.stack_level == level)
                and (not sources or limit_source(p) in sources)]

    @handles("GetChargingProfiles")
    async def get_charging_profiles(self, p: dict) -> dict:
        chosen = self.select(p.get("evseId"), p.get("chargingProfile") or {})
        if not chosen:
            return {"status": "NoProfiles"}
        self.adapter.spawn(self._report(p["requestId"], chosen), "v201-charging-profiles")
        return {"status": "Accepted"}

    def report_messages(self, request_id: int, chosen: list[ChargingProfile]) -> list[dict]:
        """ReportChargingProfiles payloads: one source and EVSE each (the message names one of
        each), profiles by stack level, cut by DeviceDataCtrlr ItemsPerMessage /
        BytesPerMessage [ReportChargingProfiles]; ``tbc`` on all but the last."""
        groups: dict[tuple[int, str], list[ChargingProfile]] = {}
        for prof in chosen:
            groups.setdefault((prof.evse_id, limit_source(prof)), []).append(prof)
        items = self.dm.integer("DeviceDataCtrlr", "ItemsPerMessage", REPORT)
        size = self.dm.integer("DeviceDataCtrlr", "BytesPerMessage", REPORT)
        out: list[dict] = []
        for (evse_id, source), profiles in sorted(groups.items()):
            header = {"requestId": request_id, "chargingLimitSource": source, "evseId": evse_id}
            entries = [self.render_profile(q) for q in sorted(profiles,
                                                       key=lambda q: (q.stack_level, q.id))]
            for chunk in split_report(entries, header, items, size):
                out.append({**header, "chargingProfile": chunk, "tbc": True})
        out[-1]["tbc"] = False
        return out

    async def _report(self, request_id: int, chosen: list[ChargingProfile]) -> None:
        await self.adapter.after_answer()
        messages = self.report_messages(request_id, chosen)
        for n, payload in enumerate(messages, start=1):
            try:
                await self.adapter.call("ReportChargingProfiles", payload)
            except CallFailed as exc:
                log.warning("charging profile report %s stopped at part %d of %d: %s",
                            request_id, n, len(messages), exc)
                return

    # ------------------------------------------------------------------ K10

    @handles("ClearChargingProfile")
    async def clear_charging_profile(self, p: dict) -> dict:
        pid = p.get("chargingProfileId")
        criteria = p.get("chargingProfileCriteria") or {}
        if pid is not None:
            chosen = [q for q in self._everything() if q.id == pid]
        else:
            purpose = criteria.get("chargingProfilePurpose")
            chosen = [q for q in self._everything()
                      if (criteria.get("evseId") is None or q.evse_id == criteria["evseId"])
                      and (purpose is None or q.purpose == PURPOSES.get(purpose, purpose))
                      and (criteria.get("stackLevel") is None
                           or q.stack_level == criteria["stackLevel"])]
        external = [q.id for q in chosen if q.purpose == Purpose.EXTERNAL]
        ids = [q.id for q in chosen if q.purpose != Purpose.EXTERNAL]
        try:
            if ids and self.service.clear_ids(ids):
                return {"status": "Accepted"}
        except StorageError as exc:
            log.error("ClearChargingProfile: profiles %s not removed: %s", ids, exc)
            return {"status": "Unknown", "statusInfo": {
                "reasonCode": "InternalError",
                "additionalInfo": f"the profiles could not be removed: {exc}"[:512]}}
        answer: dict[str, Any] = {"status": "Unknown"}
        if external:
            answer["statusInfo"] = {
                "reasonCode": "InvalidValue",
                "additionalInfo": f"profile(s) {external} are external constraints: only "
                                  f"their external system clears them"}
        return answer

__all__ = ["PURPOSES", "SmartCharging", "from_profile", "limit_source", "reason_code",
           "to_profile"]
