"""1.6 Plug & Charge per the OCA application note "Using ISO 15118 Plug & Charge with OCPP 1.6"
(v1.0, 2020-09-16): the 2.0.1 messages of C07, M01/M02, M06 and the V2G certificate, each
wrapped in a DataTransfer with vendorId ``org.openchargealliance.iso15118pnc``, messageId the
2.0.1 message name, ``data`` the 2.0.1 payload as a JSON string (the answer's ``data`` the
2.0.1 response payload, likewise).

- station -> CSMS: Authorize (the EMAID as idToken of type eMAID, with the OCSP data or the
  PEM chain: the rules of :mod:`agent.core.plug_and_charge`), Get15118EVCertificate,
  GetCertificateStatus, SignCertificate (certificateType V2GCertificate);
- CSMS -> station: CertificateSigned (the V2G certificate), InstallCertificate,
  DeleteCertificate, GetInstalledCertificateIds (V2GRootCertificate, MORootCertificate,
  CSMSRootCertificate, ManufacturerRootCertificate, V2GCertificateChain) and TriggerMessage
  (requestedMessage SignV2GCertificate).

Once the contract is accepted the session is authorized with the EMAID as its idTag
(StartTransaction.idTag), which the authorization cache keeps like any idTag.  The keys of
the note: ISO15118PnCEnabled, CentralContractValidationAllowed, ContractValidationOffline
(:data:`agent.core.plug_and_charge.PNC_SETTINGS`), CertSigningWaitMinimum and
CertSigningRepeatTimes (the V2G CSR's resend schedule, as in 2.0.1 A02.FR.17/18).  ISO 15118
smart charging (NotifyEVChargingNeeds) is not part of the note: on 1.6 the EV is offered the
composite schedule of the 1.6 profiles.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

from agent.core import plug_and_charge
from agent.core.plug_and_charge import ContractAuthority, pnc_settings, v2g_renewal
from agent.core.settings import SettingDef, defs_once, not_v16
from agent.link.rpc import CallFailed, CallTimeout, ConnectionLost
from agent.ocpp.certificate_signing import CertificateSigning
from agent.ocpp.v16.pnc import SIGNING_SETTINGS, PlugAndCharge16

log = logging.getLogger("cp_agent.v16.pnc")

VENDOR = "org.openchargealliance.iso15118pnc"
ROOT_TYPES = ("V2GRootCertificate", "MORootCertificate", "CSMSRootCertificate",
              "ManufacturerRootCertificate")


class PncDataError(ValueError):
    """A PnC DataTransfer whose data is not the JSON object its messageId needs."""


class PlugAndCharge16Iso(PlugAndCharge16):
    """The block of a station that speaks ISO 15118 (agent/ocpp/v16/pnc.py makes it)."""

    DATA_TRANSFER_VENDOR: ClassVar[str | None] = VENDOR

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        if self.station.iso15118 is None:  # no ISO 15118 here: the vendorId stays unknown
            self.DATA_TRANSFER_VENDOR = None
        self.authority = ContractAuthority(self.station, self, version="1.6")
        self.v2g_signing = CertificateSigning(
            adapter, payload=lambda csr: {"csr": csr, "certificateType": "V2GCertificate"},
            resend_waits=self._resend_waits, csr=self._v2g_csr, send=self._send_sign,
            what="V2G certificate")

    def settings_defs(self) -> tuple[SettingDef, ...]:
        pnc = self.station.iso15118 is not None
        return defs_once((type(self), pnc), lambda: (
            *pnc_settings(self.station), *(SIGNING_SETTINGS if pnc else not_v16(SIGNING_SETTINGS))))

    @property
    def store(self) -> Any:
        return getattr(self.station, "certificates", None)

    # ------------------------------------------------------------------ the seam

    def activate(self) -> None:
        plug_and_charge.attach(self.station, self.authority)

    def start(self) -> None:
        if self.adapter.active:
            self.activate()
        self.pki_changed()

    def session_started(self) -> None:
        if self.adapter.active:
            self.activate()
        if self.store is not None and self.station.iso15118 is not None:
            self.adapter.spawn(v2g_renewal(self.clock, lambda: self.store, self.v2g_signing,
                                           self._enabled), "v16-v2g-renewal", session=True)

    def _enabled(self) -> bool:
        return bool(self.settings.get("ISO15118PnCEnabled", True))

    # PncWire: the 2.0.1 messages inside DataTransfer.
    def online(self) -> bool:
        return self.adapter.online

    async def _wrapped(self, message_id: str, payload: dict) -> dict | None:
        """Send ``payload`` as DataTransfer ``message_id``: the inner answer, ``{}`` when the
        CSMS refused the DataTransfer or sent no readable data, None when it was not
        reached."""
        try:
            res = await self.adapter.call("DataTransfer", {
                "vendorId": VENDOR, "messageId": message_id,
                "data": json.dumps(payload, separators=(",", ":"))})
        except (CallTimeout, ConnectionLost) as exc:
            log.warning("DataTransfer %s not answered: %s", message_id, exc)
            return None
        except CallFailed as exc:
            log.warning("DataTransfer %s answered with an error (%s)", message_id, exc)
            return {}
        if res.get("status") != "Accepted":
            log.warning("DataTransfer %s (%s) answered %s", message_id, VENDOR,
                        res.get("status"))
            return {}
        try:
            data = json.loads(res.get("data") or "")
        except ValueError:
            log.warning("DataTransfer %s: the answer's data is not JSON", message_id)
            return {}
        return data if isinstance(data, dict) else {}

    async def authorize(self, payload: dict) -> dict | None:
        return await self._wrapped("Authorize", payload)

    async def get_15118_ev_certificate(self, payload: dict) -> dict | None:
        return await self._wrapped("Get15118EVCertificate", payload)

    async def get_certificate_status(self, payload: dict) -> dict | None:
        return await self._wrapped("GetCertificateStatus", payload)

    # ------------------------------------------------------------------ V2G certificate

    def _v2g_csr(self, new_round: bool) -> str:
        return self.store.new_v2g_csr(self.adapter.ctx.station_id,
                                      str(self.settings.get("CpoName", "")),
                                      new_round=new_round)

    async def _send_sign(self, payload: dict) -> dict:
        res = await self._wrapped("SignCertificate", payload)
        if res is None:
            raise ConnectionLost("SignCertificate (DataTransfer) not answered")
        return res

    def _resend_waits(self) -> list[float]:
        first = int(self.settings.get("CertSigningWaitMinimum", 0) or 0)
        if first <= 0:
            return []
        times = int(self.settings.get("CertSigningRepeatTimes", 0) or 0)
        return [float(first * 2 ** k) for k in range(max(0, times) + 1)]

    def pki_changed(self) -> None:
        service, store = self.station.iso15118, self.store
        pki_dir = getattr(getattr(getattr(service, "hlc", None), "cfg", None), "pki_dir", None)
        if store is None or not pki_dir:
            return
        try:
            store.export_iso15118(Path(pki_dir))
        except OSError as exc:
            log.error("cannot write the SECC's certificates to %s: %s", pki_dir, exc)

    # ------------------------------------------------------------------ CSMS -> station

    async def vendor_data_transfer(self, p: dict) -> dict:
        """A DataTransfer of this vendorId (the DataTransfer block hands it here)."""
        message = p.get("messageId")
        handler = {"CertificateSigned": self._certificate_signed,
                   "InstallCertificate": self._install_certificate,
                   "DeleteCertificate": self._delete_certificate,
                   "GetInstalledCertificateIds": self._installed_ids,
                   "TriggerMessage": self._trigger}.get(message or "")
        if handler is None:
            return {"status": "UnknownMessageId"}
        if not self._enabled():
            log.info("PnC DataTransfer %s refused: ISO15118PnCEnabled is false", message)
            return {"status": "Rejected"}
        try:
            data = json.loads(p.get("data") or "")
            if not isinstance(data, dict):
                raise PncDataError("data is not a JSON object")
            answer = await handler(data)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("PnC DataTransfer %s refused: %s", message,
                        exc if not isinstance(exc, KeyError) else f"no {exc} in its data")
            return {"status": "Rejected"}
        return {"status": "Accepted", "data": json.dumps(answer, separators=(",", ":"))}

    def _need_store(self) -> Any:
        store = self.store
        if store is None:
            raise PncDataError("no certificate store")
        return store

    async def _certificate_signed(self, d: dict) -> dict:
        kind = d.get("certificateType", "V2GCertificate")
        chain = d["certificateChain"]
        if not isinstance(chain, str) or kind != "V2GCertificate":
            return {"status": "Rejected"}  # the station certificate: the security extension's
        verdict = self._need_store().install_v2g_chain(chain)
        self.v2g_signing.answered()
        if verdict.status == "Accepted":
            self.pki_changed()
        return {"status": verdict.status}

    async def _install_certificate(self, d: dict) -> dict:
        use, pem = d["certificateType"], d["certificate"]
        if use not in ROOT_TYPES or not isinstance(pem, str):
            return {"status": "Rejected"}
        verdict = self._need_store().add_root(use, pem)
        if verdict.status == "Accepted":
            self.pki_changed()
        return {"status": verdict.status}

    async def _delete_certificate(self, d: dict) -> dict:
        data = d["certificateHashData"]
        if not isinstance(data, dict):
            raise PncDataError("certificateHashData is not an object")
        store = self._need_store()
        tls = self.adapter.ctx.security_profile >= 2
        verdict = store.delete(data, keep_last_csms_root=tls)
        if verdict.status == "NotFound" and store.delete_v2g(data):
            return {"status": "Accepted"}
        if verdict.status == "Accepted":
            self.pki_changed()
        return {"status": verdict.status}

    async def _installed_ids(self, d: dict) -> dict:
        store = self._need_store()
        wanted = d.get("certificateType") or [*ROOT_TYPES, "V2GCertificateChain"]
        if not isinstance(wanted, list):
            raise PncDataError("certificateType is not a list")
        chain: list[dict] = []
        for item in store.installed([u for u in wanted if u in ROOT_TYPES]):
            chain.append({"certificateType": item.use, "certificateHashData": item.hash_data()})
        v2g = store.v2g_hash_data() if "V2GCertificateChain" in wanted else None
        if v2g is not None:
            entry: dict[str, Any] = {"certificateType": "V2GCertificateChain",
                                     "certificateHashData": v2g[0]}
            if v2g[1]:
                entry["childCertificateHashData"] = v2g[1]
            chain.append(entry)
        if not chain:
            return {"status": "NotFound"}
        return {"status": "Accepted", "certificateHashDataChain": chain}

    async def _trigger(self, d: dict) -> dict:
        if d["requestedMessage"] != "SignV2GCertificate":
            return {"status": "NotImplemented"}
        if self.store is None:
            return {"status": "Rejected"}
        self.v2g_signing.start("TriggerMessage (DataTransfer)")
        return {"status": "Accepted"}


__all__ = ["ROOT_TYPES", "SIGNING_SETTINGS", "VENDOR", "PlugAndCharge16Iso"]
