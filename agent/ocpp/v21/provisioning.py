"""2.1 block B, provisioning: the 2.0.1 block with 2.1's Reset and device-model additions.

Reset gained ``ImmediateAndResume`` (reset now, resume the transactions afterwards: E17).
With a transaction running it needs ``TxCtrlr.ResumptionTimeout`` above 0 (else Rejected,
TC_B_101): the contactors open, the agent restarts without ending the transactions, and the
start-up resumes them (agent/core/resumption.py: the EV and its authorization are checked
again first; what may not resume ends with PowerLoss). With none running it is an Immediate
reset.

The device model is the 2.0.1 one (same components and variables, same storage: one setting
is one value whichever of 1.6, 2.0.1 or 2.1 changed it) plus the variables 2.1's appendix
(v2.0) added that describe what the carried-over blocks do (:data:`VARIABLES_21`); its
reports give a list's item limit as 2.1's ``maxElements`` (the ``dm`` property says so).
"""

from __future__ import annotations

from typing import ClassVar

from agent.ocpp.blocks import handles
from agent.ocpp.v201.device_model import DeviceModel, VarDef, ro
from agent.ocpp.v201.provisioning import Provisioning

# 2.1 appendix 7.1, IdTokenEnumStringType's standardized values.
ID_TOKEN_TYPES_21 = ("Central", "DirectPayment", "eMAID", "EVCCID", "ISO14443", "ISO15693",
                     "KeyCode", "Local", "MacAddress", "NoAuthorization", "VIN")

VARIABLES_21: tuple[VarDef, ...] = (
    # 2.1 F06: the customTrigger values TriggerMessage takes (none: CustomTrigger is
    # answered NotImplemented).
    ro("CustomizationCtrlr", "CustomTriggers", "MemberList", ""),
    # The local list's cacheExpiryDateTime does not make an entry "not present" here (an
    # expired entry is refused as expired).
    ro("LocalAuthListCtrlr", "SupportsExpiryDateTime", "boolean", "false"),
    # 2.1 appendix 4: the idToken types this station's readers and remote starts use (an
    # installer with other readers says so in ocpp.defaults); the values of appendix 7.1.
    ro("AuthCtrlr", "SupportedIdTokenTypes", "MemberList",
       "Central,ISO14443,ISO15693,KeyCode,Local",
       values_list=ID_TOKEN_TYPES_21),
    # Signed meter values are not produced (SignReadings false), for no context.
    ro("SampledDataCtrlr", "SignStartedReadings", "boolean", "false"),
    ro("SampledDataCtrlr", "SignUpdatedReadings", "boolean", "false"),
)


class Provisioning21(Provisioning):
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (*Provisioning.VARIABLES, *VARIABLES_21)

    @property
    def dm(self) -> DeviceModel:
        """The 2.0.1 device model, reporting in 2.1 terms (maxElements)."""
        model = super().dm
        model.version = "2.1"
        return model

    @handles("Reset")
    async def reset(self, p: dict) -> dict:
        if p["type"] == "ImmediateAndResume":
            if self.station.any_transaction and p.get("evseId") in (None, 0):
                if self.dm.integer("TxCtrlr", "ResumptionTimeout") <= 0:
                    return {"status": "Rejected", "statusInfo": {
                        "reasonCode": "UnsupportedParam",
                        "additionalInfo": "ImmediateAndResume: TxCtrlr.ResumptionTimeout is "
                                          "0, transactions are not resumed; use Immediate or "
                                          "OnIdle"}}
                if self.adapter.ctx.request_reset is None:
                    return {"status": "Rejected"}
                self.adapter.spawn(self._reset_and_resume(), "v21-reset-resume")
                return {"status": "Accepted"}
            # Nothing to resume (or one EVSE, whose reset ends its transaction): Immediate.
            p = {**p, "type": "Immediate"}
        return await super().reset(p)

    async def _reset_and_resume(self) -> None:
        """E17 after B11: restart with the transactions left open in the journal, for the
        start-up to resume them. The meter is journalled now (the interruption counts from
        here) and the contactors open first, as on every stop."""
        from agent.ocpp.v201.provisioning import BOOT_REASON

        await self.adapter.after_answer()
        self.storage.set_setting(BOOT_REASON, "RemoteReset")
        for evse in self.station.evses.values():
            tx, reading = evse.tx, evse.reading
            if tx is not None and reading is not None:
                tx.last_meter_wh, tx.last_meter_at = reading.energy_import_wh, self.clock.stamp()
                self.storage.tx_meter(tx.local_id, tx.last_meter_wh, tx.last_meter_at,
                                      durable=True)
            await evse.emergency_open()
        request_reset = self.adapter.ctx.request_reset
        assert request_reset is not None
        await request_reset("Immediate")
