"""2.0.1 Plug & Charge and ISO 15118 smart charging: C07 (Authorize with a contract
certificate), M01 / M02 (Get15118EVCertificate), M06 (GetCertificateStatus), the A-block V2G
certificate (SignCertificate / CertificateSigned of the V2GCertificate, TriggerMessage
SignV2GCertificate, renewal), K15 / K16 (NotifyEVChargingNeeds, NotifyEVChargingSchedule) and
the ISO15118Ctrlr variables.

The decisions are version-neutral (:mod:`agent.core.plug_and_charge`); this block sends them
the 2.0.1 way and plugs them into the core's ISO 15118 service (``station.iso15118``, the seam
of :mod:`agent.core.iso15118`) while its version is the active one: the contract authorizer,
the EV certificate provider, and a listener for the EV's charging needs.  The schedule the EV
is offered stays the service's default, the smart charging engine's composite schedule, so a
TxProfile the CSMS sends after NotifyEVChargingNeeds is what the EV gets at its next
ChargeParameterDiscovery / renegotiation (K17: the service has the EV renegotiate when the
composite changes materially during the charge loop, and the renegotiated PowerDelivery
Start is a ``charge_progress`` again, so NotifyEVChargingSchedule follows with the new one).

The SECC's certificate lives in the certificate store (``station.certificates``, its V2G
identity); after every change it and the V2G / MO roots are written to the SECC's PKI
directory (``hal.iso15118.pki_dir``) in the ``iso15118`` package's layout.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from agent.clock import iso
from agent.core.pnc_settings import pnc_settings
from agent.ocpp.v201.device_model import VarDef, VariableBlock, b, ro, rw

if TYPE_CHECKING:
    # The core service (agent/core/iso15118.py) is loaded only where hal.iso15118 builds it
    # (agent/app.py): a station without ISO 15118 does not pay for it (issue 18).
    from agent.core.iso15118 import ChargingNeeds, EvSession
    from agent.core.model import Token
    from agent.core.plug_and_charge import ContractAuthority
    from agent.core.settings import SettingDef
    from agent.ocpp.certificate_signing import CertificateSigning

log = logging.getLogger("cp_agent.v201.iso15118")

ENERGY_MODES_201 = ("AC_single_phase_core", "AC_three_phase_core", "DC_core", "DC_extended",
                    "DC_combo_core", "DC_unique")
V2G_CERT = "V2GCertificate"
# agent.core.iso15118.MAX_SCHEDULE_ENTRIES (the periods offered to the EV), which the
# ISO15118Ctrlr reports; repeated so that the block does not load the service (a test compares).
MAX_SCHEDULE_ENTRIES = 24


def _country(text: str) -> str | None:
    return None if text == "" or re.fullmatch(r"[A-Z]{2}", text) else \
        "an ISO 3166-1 alpha-2 country code (e.g. DE) or empty"


def energy_transfer_201(mode: str | None) -> str:
    """ISO 15118-2 EnergyTransferMode -> 2.0.1 EnergyTransferModeEnumType."""
    mode = mode or ""
    if mode.startswith("AC_single"):
        return "AC_single_phase"
    if mode.startswith("AC_two"):
        return "AC_two_phase"
    if mode.startswith("AC"):
        return "AC_three_phase"
    return "DC" if mode.startswith("DC") else "AC_three_phase"


class Iso15118(VariableBlock):
    TRIGGERS: ClassVar[dict[str, str]] = {"SignV2GCertificate": "send_sign_v2g_certificate"}
    # Numbers the schema types as integers in 2.0.1, decimals in 2.1.
    NUMBER: ClassVar[type] = int
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        rw("ISO15118Ctrlr", "PnCEnabled", "boolean", setting="ISO15118PnCEnabled"),
        rw("ISO15118Ctrlr", "CentralContractValidationAllowed", "boolean",
           setting="CentralContractValidationAllowed"),
        rw("ISO15118Ctrlr", "ContractValidationOffline", "boolean",
           setting="ContractValidationOffline"),
        rw("ISO15118Ctrlr", "V2GCertificateInstallationEnabled", "boolean",
           setting="V2GCertificateInstallationEnabled"),
        rw("ISO15118Ctrlr", "ContractCertificateInstallationEnabled", "boolean",
           setting="ContractCertificateInstallationEnabled"),
        ro("ISO15118Ctrlr", "RequestMeteringReceipt", "boolean", "false"),
        rw("ISO15118Ctrlr", "OrganizationName", "string", max_limit=50),
        rw("ISO15118Ctrlr", "CountryName", "string", max_limit=2, check=_country),
        rw("ISO15118Ctrlr", "SeccId", "string", max_limit=37),
    )

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        # A station without ISO 15118 (no hal.iso15118) has no V2G certificate to sign: the
        # trigger stays NotImplemented and a V2G CertificateSigned Rejected, as before.
        if self.station.iso15118 is None:
            self.TRIGGERS = {}

    # Made on first use (agent.core.plug_and_charge and agent.ocpp.certificate_signing
    # imported): only a station that speaks ISO 15118 ever uses them.
    @functools.cached_property
    def authority(self) -> ContractAuthority:
        from agent.core.plug_and_charge import ContractAuthority

        return ContractAuthority(self.station, self, version=self.adapter.version,
                                 on_answer=self._authorize_answered)

    @functools.cached_property
    def v2g_signing(self) -> CertificateSigning:
        from agent.ocpp.certificate_signing import CertificateSigning

        return CertificateSigning(
            self.adapter, payload=self._v2g_payload, resend_waits=self._resend_waits,
            csr=self._v2g_csr, what="V2G certificate")

    def settings_defs(self) -> tuple[SettingDef, ...]:
        return pnc_settings(self.station)

    # ------------------------------------------------------------------ the seam

    @property
    def service(self) -> Any:
        return getattr(self.station, "iso15118", None)

    def activate(self) -> None:
        """This version took charge (its adapter is the station's observer)."""
        if self.service is None:  # no ISO 15118 here: nothing to answer
            return
        from agent.core.plug_and_charge import attach

        if attach(self.station, self.authority, listener=self._hlc_event):
            log.debug("OCPP %s answers the SECC's Plug & Charge questions",
                      self.adapter.version)

    def start(self) -> None:
        if self.adapter.active:
            self.activate()
        self.pki_changed()

    def session_started(self) -> None:
        if self.adapter.active:
            self.activate()
        if self.service is not None and self.store is not None:  # store read only then
            self.adapter.spawn(self._v2g_renewal(), f"{self.adapter.version}-v2g-renewal",
                               session=True)

    # PncWire: how this version asks the CSMS (None: not reached).
    def online(self) -> bool:
        return self.adapter.online

    async def authorize(self, payload: dict) -> dict | None:
        return await self.adapter.ask("Authorize", payload)

    async def get_15118_ev_certificate(self, payload: dict) -> dict | None:
        return await self.adapter.ask("Get15118EVCertificate", payload)

    async def get_certificate_status(self, payload: dict) -> dict | None:
        return await self.adapter.ask("GetCertificateStatus", payload)

    def _authorize_answered(self, token: Token, answer: dict) -> None:
        for block in self.adapter.blocks:  # the driver's tariff text (I01), as for a card
            hook = getattr(block, "authorize_answered", None)
            if hook is not None:
                hook(token, answer)

    # ------------------------------------------------------------------ K15 / K16

    def _hlc_event(self, evse_id: int, what: str, session: EvSession) -> None:
        if not self.adapter.active:
            return
        if what == "charging_needs" and session.needs is not None:
            self.adapter.spawn(self._notify_needs(evse_id, session.needs),
                               f"{self.adapter.version}-ev-needs-{evse_id}")
        elif what == "charge_progress" and session.charging and session.offered:
            self.adapter.spawn(self._notify_schedule(evse_id, list(session.offered)),
                               f"{self.adapter.version}-ev-schedule-{evse_id}")

    def charging_needs(self, needs: ChargingNeeds, evse_id: int) -> dict:
        """ChargingNeedsType of what the EV said (2.0.1)."""
        n = self.NUMBER
        evse = self.station.evses.get(evse_id)
        out: dict[str, Any] = {"requestedEnergyTransfer": energy_transfer_201(needs.energy_mode)}
        if needs.departure is not None:
            out["departureTime"] = iso(needs.departure)
        max_a = needs.max_current_a or (evse.max_current_a if evse is not None else 16.0)
        if needs.ac or not (needs.energy_mode or "").startswith("DC"):
            out["acChargingParameters"] = {
                "energyAmount": n(round(needs.energy_amount_wh or 0)),
                "evMinCurrent": n(round(needs.min_current_a or 0)),
                "evMaxCurrent": n(round(max_a)),
                "evMaxVoltage": n(round(needs.max_voltage_v or 230))}
        else:
            dc: dict[str, Any] = {"evMaxCurrent": n(round(max_a)),
                                  "evMaxVoltage": n(round(needs.max_voltage_v or 500))}
            for key, value in (("energyAmount", needs.energy_amount_wh),
                               ("evMaxPower", needs.max_power_w),
                               ("evEnergyCapacity", needs.battery_capacity_wh)):
                if value is not None:
                    dc[key] = n(round(value))
            for key, value in (("stateOfCharge", needs.soc_percent),
                               ("fullSoC", needs.max_soc_percent),
                               ("bulkSoC", needs.target_soc_percent)):
                if value is not None:
                    dc[key] = max(0, min(100, int(value)))
            out["dcChargingParameters"] = dc
        return out

    def needs_payload(self, needs: ChargingNeeds, evse_id: int) -> dict:
        return {"evseId": evse_id, "chargingNeeds": self.charging_needs(needs, evse_id),
                "maxScheduleTuples": 1}

    async def _notify_needs(self, evse_id: int, needs: ChargingNeeds) -> None:
        """K15: the EV's needs go to the CSMS; Accepted means a TxProfile may follow (the
        smart charging block takes it, the EV gets it through the composite schedule)."""
        res = await self.adapter.ask("NotifyEVChargingNeeds", self.needs_payload(needs, evse_id))
        status = (res or {}).get("status")
        log.info("EVSE %s: NotifyEVChargingNeeds answered %s", evse_id, status or "nothing")

    def schedule_payload(self, evse_id: int, periods: list[tuple[int, float]]) -> dict:
        n = self.NUMBER
        return {"timeBase": iso(self.clock.now()), "evseId": evse_id, "chargingSchedule": {
            "id": 1, "chargingRateUnit": "W",
            "chargingSchedulePeriod": [{"startPeriod": int(start), "limit": n(round(w, 1))}
                                       for start, w in periods[:MAX_SCHEDULE_ENTRIES]]}}

    async def _notify_schedule(self, evse_id: int, periods: list[tuple[int, float]]) -> None:
        """K16 (ISO 15118-2): the EV started the energy transfer on the schedule it selected,
        the one tuple this station offers (SAScheduleTupleID 1)."""
        res = await self.adapter.ask("NotifyEVChargingSchedule",
                                     self.schedule_payload(evse_id, periods))
        log.info("EVSE %s: NotifyEVChargingSchedule answered %s", evse_id,
                 (res or {}).get("status") or "nothing")

    # ------------------------------------------------------------------ A02 / A03: V2G

    @property
    def store(self) -> Any:
        return getattr(self.station, "certificates", None)

    def _secc_id(self) -> str:
        return self.dm.value("ISO15118Ctrlr", "SeccId") or self.adapter.ctx.station_id

    def _v2g_csr(self, new_round: bool) -> str:
        org = self.dm.value("ISO15118Ctrlr", "OrganizationName") or str(
            self.settings.get("CpoName", ""))
        return self.store.new_v2g_csr(self._secc_id(), org,
                                      self.dm.value("ISO15118Ctrlr", "CountryName"),
                                      new_round=new_round)

    def _v2g_payload(self, csr: str) -> dict:
        return {"csr": csr, "certificateType": V2G_CERT}

    def _resend_waits(self) -> list[float]:
        first = self.dm.integer("SecurityCtrlr", "CertSigningWaitMinimum")
        if first <= 0:
            return []
        times = self.dm.integer("SecurityCtrlr", "CertSigningRepeatTimes")
        return [float(first * 2 ** k) for k in range(max(0, times) + 1)]

    def _v2g_enabled(self) -> bool:
        return bool(self.settings.get("V2GCertificateInstallationEnabled", True))

    async def send_sign_v2g_certificate(self, evse_id: int | None) -> None:
        """TriggerMessage(SignV2GCertificate) was answered Accepted."""
        if not self._v2g_enabled():
            log.info("SignV2GCertificate triggered, but V2GCertificateInstallationEnabled is "
                     "false: no CSR")
            return
        self.v2g_signing.start("TriggerMessage")

    async def v2g_certificate_signed(self, chain: str) -> dict:
        """CertificateSigned of the V2GCertificate (the Certificates block hands it here)."""
        if not self._v2g_enabled():
            return {"status": "Rejected", "statusInfo": {
                "reasonCode": "Disabled",
                "additionalInfo": "V2GCertificateInstallationEnabled is false"}}
        verdict = self.store.install_v2g_chain(chain)
        self.v2g_signing.answered()
        if verdict.status == "Accepted":
            self.pki_changed()
            return {"status": "Accepted"}
        out: dict[str, Any] = {"status": "Rejected"}
        info = verdict.status_info()
        if info is not None:
            out["statusInfo"] = info
        return out

    async def _v2g_renewal(self) -> None:
        from agent.core.plug_and_charge import v2g_renewal

        await v2g_renewal(self.clock, lambda: self.store, self.v2g_signing, self._v2g_enabled)

    def pki_changed(self) -> None:
        """Write the SECC certificate and the V2G / MO roots to the SECC's PKI directory."""
        service = self.service
        pki_dir = getattr(getattr(getattr(service, "hlc", None), "cfg", None), "pki_dir", None)
        store = self.store if pki_dir else None  # no SECC: the store is not built for it
        if store is None or not pki_dir:
            return
        try:
            written = store.export_iso15118(Path(pki_dir))
        except OSError as exc:
            log.error("cannot write the SECC's certificates to %s: %s", pki_dir, exc)
            return
        if written:
            log.info("SECC certificates written to %s (%d files)", pki_dir, len(written))

    # ------------------------------------------------------------------ ISO15118Ctrlr

    def live_variables(self) -> list[VarDef]:
        service = self.service
        out: list[VarDef] = []
        hlc_evses = set(getattr(getattr(service, "hlc", None), "evse_ids", []) or [])
        for e in self.adapter.ctx.evses:
            eid = e.id
            out += [
                ro("ISO15118Ctrlr", "Enabled", "boolean",
                   lambda eid=eid: b(self.service is not None and eid in hlc_evses), evse=eid),
                ro("ISO15118Ctrlr", "Active", "boolean",
                   lambda eid=eid: b(self._session(eid) is not None
                                     and self._session(eid).ended is None), evse=eid),
                ro("ISO15118Ctrlr", "Complete", "boolean",
                   lambda eid=eid: b(self._session(eid) is not None
                                     and self._session(eid).ended is not None), evse=eid),
                ro("ISO15118Ctrlr", "SeccId", "string",
                   lambda eid=eid: self._evse_secc(eid), evse=eid, max_limit=37),
                ro("ISO15118Ctrlr", "MaxScheduleEntries", "integer",
                   str(MAX_SCHEDULE_ENTRIES), evse=eid),
                ro("ISO15118Ctrlr", "RequestedEnergyTransferMode", "OptionList",
                   lambda eid=eid: self._requested_mode(eid), evse=eid,
                   values_list=ENERGY_MODES_201),
            ]
        return out

    def _session(self, evse_id: int) -> EvSession | None:
        service = self.service
        return service.session(evse_id) if service is not None else None

    def _evse_secc(self, evse_id: int) -> str:
        names = getattr(self.service, "evse_names", {}) or {}
        return (names.get(evse_id) or f"{self._secc_id()}*E{evse_id}")[:37]

    def _requested_mode(self, evse_id: int) -> str:
        s = self._session(evse_id)
        mode = s.needs.energy_mode if s is not None and s.needs is not None else None
        return mode if mode in ENERGY_MODES_201 else ""


__all__ = ["ENERGY_MODES_201", "Iso15118", "energy_transfer_201"]
