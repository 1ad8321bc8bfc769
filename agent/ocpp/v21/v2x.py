"""2.1 block Q, bidirectional charging (V2X): what the CSMS allows a transaction to do, the
aFRR signal, and the V2XChargingCtrlr variables.  The operation modes themselves are charging
profile periods (agent/ocpp/v21/smart_charging.py parses them, agent/core/v2x_modes.py
applies them through the scheduler).

- **Allowed energy transfer** (Q01 / Q02): an AuthorizeResponse's ``allowedEnergyTransfer``
  is what the transaction the token starts (or runs) may do; without it, "this defaults to
  charging only" (the schema's words), so a station that asked Authorize never discharges
  until the CSMS allows it.  NotifyAllowedEnergyTransfer replaces it for a running
  transaction: Accepted, or Rejected (TxNotFound for an unknown transaction,
  UnsupportedRequest where the EVSE's power stage takes no setpoints).  A session started
  without an Authorize (local list, cache, remote start) is not restricted: the profiles'
  setpoints and the hardware's modes decide.
- **Without ISO 15118**: the EV's transfer modes are what the HAL's EV side says (the mock
  HAL's bidirectional EV tells its modes and limits; a pilot-only EV tells none, so it is
  charged only).  Nothing is renegotiated with the EV (Q02.FR.06 needs ISO 15118-20 service
  renegotiation): the allowed modes bound the setpoints the station gives its own stage.
- **AFRRSignal** (Q08, CentralFrequency): Accepted when an EVSE is in a CentralFrequency
  period with a v2xSignalWattCurve (the signal applies from its timestamp), else Rejected
  with NoSignalWattCurve.
- **Meter values**: Energy.Active.Export.Register, Power.Active.Export and Current.Export
  are measurands like any other (agent/core/metering.py); configure them in
  SampledDataCtrlr.TxUpdatedMeasurands / AlignedDataCtrlr.Measurands to have them sent.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from agent.clock import parse_iso
from agent.core.settings import SettingDef
from agent.core.smart_charging import OperationMode
from agent.core.v2x_names import (
    CHARGE_ONLY_MODES,
    DEFAULT_THRESHOLD_MHZ,
    FREQUENCY_THRESHOLD_SETTING,
)
from agent.ocpp.blocks import handles
from agent.ocpp.v201.device_model import VarDef, VariableBlock, b, ro, rw
from hal.interfaces import EnergyTransferMode

log = logging.getLogger("cp_agent.v21")

CHARGE_ONLY = object()  # an Authorize answer without allowedEnergyTransfer


def _rejected(code: str, info: str) -> dict:
    return {"status": "Rejected", "statusInfo": {"reasonCode": code,
                                                 "additionalInfo": info[:1024]}}


class V2x21(VariableBlock):
    SETTINGS = (SettingDef(FREQUENCY_THRESHOLD_SETTING, "int", DEFAULT_THRESHOLD_MHZ, min=0,
                           max=10000, v16=False),)
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        rw("V2XChargingCtrlr", "LocalFrequencyUpdateThreshold", "integer", unit="mHz",
           min_limit=0, max_limit=10000, setting=FREQUENCY_THRESHOLD_SETTING),
    )

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self._pending: dict[str, Any] = {}  # token id -> allowed modes from its Authorize
        # Transactions the CSMS named in a NotifyAllowedEnergyTransfer: that says more than
        # an Authorize answer crossing it (its "charging only" default must not undo it).
        self._explicit: set[str] = set()

    @property
    def modes(self) -> Any:
        """The operation modes, built now if nothing did yet (a request that needs them)."""
        return self.station.v2x_modes

    def supported_modes(self, evse_id: int) -> list[str] | tuple[str, ...]:
        """What EVSE ``evse_id`` can apply, without building the modes: a station whose
        stages take setpoints built them at start-up, so none built means charge-only."""
        modes = self.built_service("v2x_modes")
        return modes.supported(evse_id) if modes is not None else CHARGE_ONLY_MODES

    def live_variables(self) -> list[VarDef]:
        out: list[VarDef] = []
        for eid, evse in self.station.evses.items():
            ev = evse.hw.ev
            out += [
                ro("V2XChargingCtrlr", "Enabled", "boolean",
                   lambda ev=ev: b(bool(ev.supports_setpoint)), evse=eid),
                ro("V2XChargingCtrlr", "SupportedEnergyTransferModes", "MemberList",
                   lambda evse=evse: ",".join(self._transfer_modes(evse)), evse=eid,
                   values_list=tuple(m.value for m in EnergyTransferMode)),
                ro("V2XChargingCtrlr", "SupportedOperationModes", "MemberList",
                   lambda eid=eid: ",".join(self.supported_modes(eid)), evse=eid,
                   values_list=tuple(m.value for m in OperationMode)),
            ]
        return out

    @staticmethod
    def _transfer_modes(evse: Any) -> list[str]:
        """What the EVSE's stage can do: the HAL's modes where it tells them (with an EV
        plugged, those it and the EV share), else the AC mode of its phases."""
        try:
            modes = sorted(m.value for m in evse.hw.ev.energy_transfer_modes)
        except Exception:  # noqa: BLE001 - a driver's bug is "nothing known"
            modes = []
        if modes:
            return modes
        return ["AC_single_phase" if evse.phases == 1 else
                "AC_two_phase" if evse.phases == 2 else "AC_three_phase"]

    # ------------------------------------------------------------------ allowed transfer

    def authorize_answered(self, token: Any, res: dict) -> None:
        """An AuthorizeResponse: its allowedEnergyTransfer (absent: charging only) goes to
        the session of that token, now or when it is authorized."""
        allowed = res.get("allowedEnergyTransfer")
        info = res.get("idTokenInfo") or {}
        if info.get("status") != "Accepted":
            return
        self._pending[token.id] = list(allowed) if isinstance(allowed, list) else CHARGE_ONLY
        for evse in self.station.evses.values():
            s = evse.session
            if s is not None and s.token is not None and s.token.id == token.id:
                self._apply_pending(evse.id, token.id)

    def session_event(self, evse_id: int, event: str, detail: dict) -> None:
        if event == "authorized" and detail.get("token") in self._pending:
            self._apply_pending(evse_id, detail["token"])

    def _apply_pending(self, evse_id: int, token_id: str) -> None:
        allowed = self._pending.pop(token_id, None)
        evse = self.station.evses.get(evse_id)
        if allowed is None or evse is None or not evse.hw.ev.supports_setpoint:
            return
        modes = [] if allowed is CHARGE_ONLY else allowed
        self.adapter.spawn(self._set_allowed(evse, modes, from_authorize=True),
                           f"v21-allowed-{evse_id}")

    async def _set_allowed(self, evse: Any, modes: list[str], *,
                           from_authorize: bool = False) -> bool:
        tx = evse.tx
        if from_authorize and tx is not None and tx.local_id in self._explicit:
            return True  # the CSMS said so for this transaction already
        try:
            ok = await evse.set_allowed_transfer(modes)
        except ValueError as exc:  # a mode the HAL does not know: nothing allowed beyond
            log.warning("evse %s: allowed energy transfer %s: %s", evse.id, modes, exc)
            ok = await evse.set_allowed_transfer([])
        log.info("evse %s: allowed energy transfer %s", evse.id,
                 ", ".join(modes) or "charging only")
        self.station.charging_profiles.wake()
        return ok

    @handles("NotifyAllowedEnergyTransfer")
    async def notify_allowed_energy_transfer(self, p: dict) -> dict:
        tx_id = p.get("transactionId")
        evse = self.station.find_tx(local_id=tx_id)
        if evse is None or evse.tx is None:
            return _rejected("TxNotFound", f"no transaction {tx_id!r} is running")
        if not evse.hw.ev.supports_setpoint:
            return _rejected("UnsupportedRequest",
                             f"EVSE {evse.id}'s power stage is charge-only (takes no setpoint)")
        modes = list(p.get("allowedEnergyTransfer") or [])
        self._explicit.add(evse.tx.local_id)
        if not await self._set_allowed(evse, modes):
            return _rejected("TxNotFound", f"transaction {tx_id!r} has no session any more")
        return {"status": "Accepted"}

    # ------------------------------------------------------------------ Q08 aFRR

    @handles("AFRRSignal")
    async def afrr_signal(self, p: dict) -> dict:
        try:
            at = parse_iso(p.get("timestamp") or "")
        except (TypeError, ValueError):
            return _rejected("InvalidValue", f"timestamp {p.get('timestamp')!r} is not a date")
        from agent.core.smart_charging_engine import v2x_at

        service = self.station.charging_profiles
        now = self.clock.now()
        curves = []
        for eid, evse in self.station.evses.items():
            tx = evse.tx
            period = v2x_at(service.profiles, now, evse_id=eid, tx_start=service.tx_start(evse),
                            transaction_id=tx.remote_id if tx is not None else None,
                            priority=service.priority_active(eid))
            if period is not None and period.mode is OperationMode.CENTRAL_FREQUENCY \
                    and period.period.signal_watt:
                curves.append(eid)
        if not curves:
            return _rejected("NoSignalWattCurve", "no EVSE is in a CentralFrequency period "
                                                  "with a v2xSignalWattCurve")
        self.modes.set_afrr(int(p.get("signal", 0)), at)
        return {"status": "Accepted"}


__all__ = ["V2x21"]
