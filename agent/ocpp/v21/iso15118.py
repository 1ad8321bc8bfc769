"""2.1 Plug & Charge and ISO 15118: the 2.0.1 block with what 2.1 changed (schemas compared).

- ChargingNeedsType: the amounts are decimals; ``v2xChargingParameters`` carries the EV's
  -20 limits (charge / discharge power and current, the energy requests, the target SoC),
  ``requestedEnergyTransfer`` names the bidirectional modes (AC_BPT, DC_BPT) when the EV asked
  for bidirectional power transfer, ``availableEnergyTransfer`` what it could take,
  ``controlMode`` ScheduledControl (ISO 15118-2 and -20 scheduled) or DynamicControl, and
  ``mobilityNeedsMode`` EVCC (the EV decides its needs); NotifyEVChargingNeedsRequest has a
  ``timestamp`` (when the needs came), its answer a ``NoChargingProfile`` status.
- ISO15118Ctrlr per EVSE: ServiceRenegotiationSupport (false: this SECC does not renegotiate
  services) and ProtocolSupported (one instance per protocol the SECC offers).
- Revocation (M06): GetCertificateChainStatus asks about every certificate of the contract
  chain (up to 4, OCSP with each certificate's responder URL) in one request instead of
  GetCertificateStatus for the leaf; each answer is cached until its nextUpdate.
- V2G20Certificate (ISO 15118-20 SECC certificates) is not signed here: only the -2 V2G
  certificate is (TriggerMessage SignV2G20Certificate is not claimed: NotImplemented).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from agent.clock import iso
from agent.ocpp.v201.device_model import VarDef, b, ro
from agent.ocpp.v201.iso15118 import Iso15118

if TYPE_CHECKING:  # loaded with the ISO 15118 service only (agent/app.py)
    from agent.core.iso15118 import ChargingNeeds

# ISO 15118 protocol -> "<uri>,<major>,<minor>" of its supportedAppProtocol entry.
PROTOCOL_URIS = {
    "ISO_15118_2": "urn:iso:15118:2:2013:MsgDef,2,0",
    "DIN_SPEC_70121": "urn:din:70121:2012:MsgDef,2,0",
    "ISO_15118_20_AC": "urn:iso:std:iso:15118:-20:AC,1,0",
    "ISO_15118_20_DC": "urn:iso:std:iso:15118:-20:DC,1,0",
}


class Iso15118_21(Iso15118):  # noqa: N801 - the version in the name, as the other 2.1 blocks
    NUMBER: ClassVar[type] = float

    async def get_certificate_chain_status(self, payload: dict) -> dict | None:
        return await self.adapter.ask("GetCertificateChainStatus", payload)

    def charging_needs(self, needs: ChargingNeeds, evse_id: int) -> dict:
        out = super().charging_needs(needs, evse_id)
        ac = out["requestedEnergyTransfer"].startswith("AC")
        if needs.bidirectional:
            out["requestedEnergyTransfer"] = "AC_BPT" if ac else "DC_BPT"
            out["availableEnergyTransfer"] = ["AC_BPT" if ac else "DC_BPT",
                                              "AC_three_phase" if ac else "DC"]
        v2x: dict[str, Any] = {}
        for key, value in (("maxChargePower", needs.max_power_w),
                           ("minChargePower", needs.min_power_w),
                           ("maxDischargePower", needs.max_discharge_power_w),
                           ("minDischargePower", needs.min_discharge_power_w),
                           ("maxChargeCurrent", needs.max_current_a),
                           ("minChargeCurrent", needs.min_current_a),
                           ("maxDischargeCurrent", needs.max_discharge_current_a),
                           ("maxVoltage", needs.max_voltage_v),
                           ("evTargetEnergyRequest", needs.energy_amount_wh),
                           ("evMinEnergyRequest", needs.min_energy_wh),
                           ("evMaxEnergyRequest", needs.max_energy_wh),
                           ("evMinV2XEnergyRequest", needs.min_v2x_energy_wh),
                           ("evMaxV2XEnergyRequest", needs.max_v2x_energy_wh)):
            if value is not None:
                v2x[key] = float(value)
        if needs.target_soc_percent is not None:
            v2x["targetSoC"] = max(0, min(100, int(needs.target_soc_percent)))
        if v2x and (needs.bidirectional or needs.max_discharge_power_w is not None):
            out["v2xChargingParameters"] = v2x
        out["controlMode"] = "DynamicControl" if needs.control_mode == "dynamic" \
            else "ScheduledControl"
        out["mobilityNeedsMode"] = "EVCC"
        return out

    def needs_payload(self, needs: ChargingNeeds, evse_id: int) -> dict:
        return {**super().needs_payload(needs, evse_id), "timestamp": iso(self.clock.now())}

    def live_variables(self) -> list[VarDef]:
        out = super().live_variables()
        cfg = getattr(getattr(self.service, "hlc", None), "cfg", None)
        protocols = [p for p in getattr(cfg, "protocols", ()) if p in PROTOCOL_URIS]
        for e in self.adapter.ctx.evses:
            out.append(ro("ISO15118Ctrlr", "ServiceRenegotiationSupport", "boolean",
                          b(False), evse=e.id))
            for i, name in enumerate(protocols[:20], start=1):
                out.append(ro("ISO15118Ctrlr", "ProtocolSupported", "string",
                              PROTOCOL_URIS[name], evse=e.id, instance=str(i)))
        return out


__all__ = ["PROTOCOL_URIS", "Iso15118_21"]
