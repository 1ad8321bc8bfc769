"""Plug & Charge over OCPP (issue 19), driven through the core's ISO 15118 service the way the
SECC sidecar drives it (``station.iso15118.hlc_event`` / ``hlc_request``), against the strict
test CSMS: 2.0.1 / 2.1 C07, M01/M02, M06, the V2G certificate, K15/K16, ISO15118Ctrlr, and 1.6
through the OCA application note's DataTransfer.  The test PKI is tests/pki15118.py.

The SECC sidecar itself does not run here (its Python is pointed at nothing): the service is
the real one, only its SECCs are absent.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.core.iso15118 import ContractRequest
from agent.core.plug_and_charge import ContractAuthority
from tests.conftest import eventually, online, online201, version_rig
from tests.pki15118 import EMAID, EXPIRED_EMAID, ROGUE_EMAID, pki

VENDOR = "org.openchargealliance.iso15118pnc"
NS_2 = "urn:iso:15118:2:2013:MsgDef"
VERSIONS = ("1.6", "2.0.1", "2.1")


def hlc_extra(state: Path) -> str:
    return yaml.safe_dump({"hal": {"driver": "mock", "ev_max_current_a": 16, "iso15118": {
        "enabled": True, "python": "/nonexistent/python", "pnc": True, "cert_install": True,
        "pki_dir": str(state / "pki")}}})


async def started(version: str, csms: Any, make: Any, state: Path, **kw: Any) -> tuple:
    agent = await make(extra=hlc_extra(state), **kw)
    link = await (online(agent, csms) if version == "1.6" else online201(agent, csms))
    return agent, link


def install_mo_root(agent: Any) -> None:
    assert agent.station.certificates.add_root("MORootCertificate",
                                               pki().mo_root.pem).status == "Accepted"


async def contract(agent: Any, chain: str | None, emaid: str = EMAID) -> dict:
    """The SECC's contract authorization, asked again while the answer is Ongoing."""
    svc = agent.station.iso15118
    for _ in range(20):
        res = await svc.hlc_request(1, "authorize", {
            "token_type": "pnc", "id_token": emaid, "certificate_chain_pem": chain,
            "protocol": "ISO_15118_2"})
        if res["status"] != "Ongoing":
            return res
    raise AssertionError("the contract authorization stayed Ongoing")


def wrapped(payload: dict, message_id: str) -> dict | None:
    """The 2.0.1 payload of a PnC DataTransfer of ``message_id`` (None: another one)."""
    if payload.get("vendorId") != VENDOR or payload.get("messageId") != message_id:
        return None
    return json.loads(payload["data"])


def answer_pnc(csms: Any, version: str, action: str, fn: Any) -> None:
    """CSMS answers ``action`` with ``fn(payload)``: directly (2.x) or inside the 1.6
    DataTransfer of the application note."""
    if version != "1.6":
        csms.overrides[action] = lambda link, p: fn(p)
        return
    previous = csms.overrides.get("DataTransfer")

    def data_transfer(link: Any, p: dict) -> dict | None:
        inner = wrapped(p, action)
        if inner is None:
            return previous(link, p) if previous else None
        return {"status": "Accepted", "data": json.dumps(fn(inner))}

    csms.overrides["DataTransfer"] = data_transfer


def sent(csms: Any, version: str, action: str) -> list[dict]:
    if version != "1.6":
        return csms.messages("CP1", action)
    return [d for p in csms.messages("CP1", "DataTransfer")
            if (d := wrapped(p, action)) is not None]


async def csms_pnc(link: Any, version: str, action: str, payload: dict) -> dict:
    """A CSMS request of the PnC set: itself (2.x) or wrapped in DataTransfer (1.6)."""
    if version != "1.6":
        return await link.call(action, payload)
    res = await link.call("DataTransfer", {"vendorId": VENDOR, "messageId": action,
                                           "data": json.dumps(payload)})
    assert res["status"] == "Accepted", res
    return json.loads(res["data"])


# ---------------------------------------------------------------- C07 on every version


@pytest.mark.parametrize("version", VERSIONS)
async def test_contract_accepted_charges_with_the_emaid(version: str, short_dir: Path) -> None:
    """C07: a contract chain under an installed MO root goes to the CSMS as its OCSP data
    with the EMAID as idToken of type eMAID; Accepted authorizes the session, the energy
    flows once the EV starts, and the transaction carries the EMAID (1.6: as idTag)."""
    async with version_rig(version, short_dir) as (csms, make):
        agent, _ = await started(version, csms, make, short_dir)
        install_mo_root(agent)
        answer_pnc(csms, version, "Authorize", lambda p: {
            "idTokenInfo": {"status": "Accepted"}, "certificateStatus": "Accepted"})
        svc = agent.station.iso15118
        agent.hal.plug(1)
        svc.hlc_event(1, "session_started", {"evcc_id": "EVCC01", "protocol": "ISO_15118_2"})
        res = await contract(agent, pki().contract_chain_pem())
        assert res == {"status": "Accepted", "certificate_status": None}
        (auth,) = sent(csms, version, "Authorize")
        assert auth["idToken"] == {"idToken": EMAID, "type": "eMAID"}
        assert "certificate" not in auth
        hashes = auth["iso15118CertificateHashData"]
        assert len(hashes) == 3 and all(h["responderURL"] == "http://ocsp.mo.test/ocsp"
                                        for h in hashes)
        assert hashes[0]["serialNumber"] == f"{pki().contract.cert.serial_number:x}"
        await eventually(lambda: agent.station.evses[1].snapshot().authorized,
                         "the session is authorized by the contract")
        assert not agent.station.evses[1].snapshot().contactor_closed  # until the EV starts
        svc.hlc_event(1, "charge_progress", {"started": True})
        if version == "1.6":
            start = await csms.wait_for("StartTransaction", station_id="CP1")
            assert start["idTag"] == EMAID
        else:
            ev = await csms.wait_for("TransactionEvent", station_id="CP1", predicate=lambda p:
                                     p["transactionInfo"].get("chargingState") == "Charging")
            tx_id = ev["transactionInfo"]["transactionId"]
            started_ev = next(p for p in csms.messages("CP1", "TransactionEvent")
                              if p["transactionInfo"]["transactionId"] == tx_id
                              and p.get("idToken"))
            assert started_ev["idToken"] == {"idToken": EMAID, "type": "eMAID"}
        await eventually(lambda: (agent.station.evses[1].snapshot().power_w or 0) > 0,
                         "energy flows")


# ---------------------------------------------------------------- C07 refusals (2.0.1)


async def test_contract_refusals_local_and_central(short_dir: Path) -> None:
    """An expired contract is refused by the station itself (no Authorize); one from a root
    nobody installed goes to the CSMS as the PEM chain (CentralContractValidationAllowed)
    and the CSMS's CertChainError refuses it; with central validation not allowed it is
    refused as NoCertificateAvailable without asking."""
    async with version_rig("2.0.1", short_dir) as (csms, make):
        agent, link = await started("2.0.1", csms, make, short_dir)
        install_mo_root(agent)
        csms.overrides["Authorize"] = lambda link, p: {
            "idTokenInfo": {"status": "Invalid"}, "certificateStatus": "CertChainError"}
        agent.hal.plug(1)
        agent.station.iso15118.hlc_event(1, "session_started", {"protocol": "ISO_15118_2"})
        res = await contract(agent, pki().contract_chain_pem("expired"), EXPIRED_EMAID)
        assert res == {"status": "Rejected", "certificate_status": "CertificateExpired"}
        assert csms.messages("CP1", "Authorize") == []
        res = await contract(agent, pki().contract_chain_pem("rogue"), ROGUE_EMAID)
        assert res == {"status": "Rejected", "certificate_status": "CertChainError"}
        (auth,) = csms.messages("CP1", "Authorize")
        assert auth["certificate"] == pki().contract_chain_pem("rogue")
        assert "iso15118CertificateHashData" not in auth
        res = await link.call("SetVariables", {"setVariableData": [{
            "component": {"name": "ISO15118Ctrlr"},
            "variable": {"name": "CentralContractValidationAllowed"},
            "attributeValue": "false"}]})
        assert res["setVariableResult"][0]["attributeStatus"] == "Accepted"
        agent.station.iso15118.hlc_event(1, "session_ended", {"reason": "the EV left"})
        agent.station.iso15118.hlc_event(1, "session_started", {"protocol": "ISO_15118_2"})
        res = await contract(agent, pki().contract_chain_pem("rogue"), ROGUE_EMAID)
        assert res == {"status": "Rejected", "certificate_status": "NoCertificateAvailable"}
        assert len(csms.messages("CP1", "Authorize")) == 1
        assert not agent.station.evses[1].snapshot().authorized


class _Wire:
    """A version's PnC messages as a test double: offline, or answering what it is given."""

    def __init__(self, *, online: bool, answers: dict[str, dict] | None = None) -> None:
        self._online = online
        self.answers = answers or {}
        self.calls: list[tuple[str, dict]] = []

    def online(self) -> bool:
        return self._online

    async def _ask(self, name: str, payload: dict) -> dict | None:
        self.calls.append((name, payload))
        return self.answers.get(name) if self._online else None

    async def authorize(self, payload: dict) -> dict | None:
        return await self._ask("Authorize", payload)

    async def get_15118_ev_certificate(self, payload: dict) -> dict | None:
        return await self._ask("Get15118EVCertificate", payload)

    async def get_certificate_status(self, payload: dict) -> dict | None:
        return await self._ask("GetCertificateStatus", payload)


async def test_offline_rules_and_ocsp_revocation(short_dir: Path) -> None:
    """Offline: a locally valid contract follows the offline rules of a card (unknown
    EMAID refused, a cached Accepted one accepted with LocalAuthorizeOffline) and nothing is
    accepted with ContractValidationOffline false; with LocalPreAuthorize a cached EMAID
    is accepted without Authorize unless GetCertificateStatus (M06) says the leaf is revoked,
    and that OCSP answer is reused until its nextUpdate."""
    async with version_rig("2.0.1", short_dir) as (csms, make):
        agent = await make(extra=hlc_extra(short_dir))
        install_mo_root(agent)
        station = agent.station
        chain = pki().contract_chain_pem()
        request = ContractRequest(1, EMAID, chain)
        offline = ContractAuthority(station, _Wire(online=False), version="2.0.1")
        verdict = await offline.authorize_contract(request)
        assert not verdict.accepted and "not known locally" in verdict.reason
        from agent.core.authorization import AuthInfo

        station.authorization.remember(EMAID, AuthInfo("Accepted"))
        assert (await offline.authorize_contract(request)).accepted
        station.settings.set_internal("ContractValidationOffline", False)
        assert not (await offline.authorize_contract(request)).accepted
        station.settings.set_internal("ContractValidationOffline", True)
        expired = ContractRequest(1, EXPIRED_EMAID, pki().contract_chain_pem("expired"))
        assert (await offline.authorize_contract(expired)).certificate_status == \
            "CertificateExpired"

        station.settings.set_internal("LocalPreAuthorize", True)
        wire = _Wire(online=True, answers={"GetCertificateStatus": {
            "status": "Accepted",
            "ocspResult": pki().ocsp_response_b64(pki().contract, pki().mo_sub2,
                                                  revoked=True)}})
        authority = ContractAuthority(station, wire, version="2.0.1")
        verdict = await authority.authorize_contract(request)
        assert verdict.certificate_status == "CertificateRevoked" and not verdict.accepted
        assert [name for name, _ in wire.calls] == ["GetCertificateStatus"]
        ocsp = wire.calls[0][1]["ocspRequestData"]
        assert ocsp["serialNumber"] == f"{pki().contract.cert.serial_number:x}"
        assert ocsp["responderURL"] == "http://ocsp.mo.test/ocsp"
        await authority.authorize_contract(request)
        assert len(wire.calls) == 1  # the cached OCSP answer, valid for hours
        good = ContractAuthority(station, _Wire(online=True, answers={"GetCertificateStatus": {
            "status": "Accepted", "ocspResult": pki().ocsp_response_b64(
                pki().contract, pki().mo_sub2)}}), version="2.0.1")
        verdict = await good.authorize_contract(request)
        assert verdict.accepted and verdict.auth.source == "cache"


@pytest.mark.parametrize("version", ("2.0.1", "2.1"))
async def test_get_certificate_status_over_the_wire(version: str, short_dir: Path) -> None:
    """M06 as a 2.x message: GetCertificateStatus with the leaf's OCSPRequestData; the
    CSMS's DER OCSP response (base64) decides, cached per its nextUpdate."""
    async with version_rig(version, short_dir) as (csms, make):
        agent, _ = await started(version, csms, make, short_dir)
        install_mo_root(agent)
        ocsp_b64 = pki().ocsp_response_b64(pki().contract, pki().mo_sub2)
        csms.overrides["GetCertificateStatus"] = lambda link, p: {
            "status": "Accepted", "ocspResult": ocsp_b64}
        authority = agent.station.iso15118.authorizer
        from agent.security import crypto

        chain = crypto.load_certificates(pki().contract_chain_pem())
        data = crypto.ocsp_request_data(chain, [pki().mo_root.cert])[0]
        assert await authority.certificate_status(data) == ("good", ocsp_b64)
        assert await authority.certificate_status(data) == ("good", ocsp_b64)
        (req,) = csms.messages("CP1", "GetCertificateStatus")
        assert req["ocspRequestData"] == data


# ---------------------------------------------------------------- M01 / M02


@pytest.mark.parametrize("version", VERSIONS)
async def test_ev_certificate_installation_round_trip(version: str, short_dir: Path) -> None:
    """M01 / M02: the EV's CertificateInstallationReq (EXI, base64) goes to the CSMS in
    Get15118EVCertificate (1.6: in the DataTransfer), its exiResponse back to the SECC;
    Failed (or ContractCertificateInstallationEnabled false) gives the SECC no response."""
    async with version_rig(version, short_dir) as (csms, make):
        agent, link = await started(version, csms, make, short_dir)
        exi_req = base64.b64encode(b"\x80\x98\x02CertificateInstallationReq").decode()
        exi_res = base64.b64encode(b"\x80\x98\x02CertificateInstallationRes").decode()
        answer_pnc(csms, version, "Get15118EVCertificate",
                   lambda p: {"status": "Accepted", "exiResponse": exi_res})
        svc = agent.station.iso15118
        res = await svc.hlc_request(1, "certificate", {"action": "install", "exi_b64": exi_req,
                                                       "namespace": NS_2})
        assert res == {"status": "Accepted", "exi_b64": exi_res}
        (req,) = sent(csms, version, "Get15118EVCertificate")
        assert req == {"iso15118SchemaVersion": NS_2, "action": "Install", "exiRequest": exi_req}
        res = await svc.hlc_request(1, "certificate", {"action": "update", "exi_b64": exi_req,
                                                       "namespace": NS_2})
        assert sent(csms, version, "Get15118EVCertificate")[-1]["action"] == "Update"
        if version != "1.6":
            await link.call("SetVariables", {"setVariableData": [{
                "component": {"name": "ISO15118Ctrlr"},
                "variable": {"name": "ContractCertificateInstallationEnabled"},
                "attributeValue": "false"}]})
            res = await svc.hlc_request(1, "certificate", {
                "action": "install", "exi_b64": exi_req, "namespace": NS_2})
            assert res["status"] == "Failed"
            assert len(sent(csms, version, "Get15118EVCertificate")) == 2


# ---------------------------------------------------------------- the V2G certificate


@pytest.mark.parametrize("version", VERSIONS)
async def test_v2g_certificate_signed_and_given_to_the_secc(version: str,
                                                            short_dir: Path) -> None:
    """The A-block V2G certificate: the CSMS installs the V2G root and triggers
    SignV2GCertificate; the station sends a V2GCertificate CSR (1.6: DataTransfer
    SignCertificate), takes the CertificateSigned chain (leaf under the installed V2G root,
    its own key), lists it as V2GCertificateChain and writes it, with its key and the root,
    into the SECC's PKI directory."""
    async with version_rig(version, short_dir) as (csms, make):
        agent, link = await started(version, csms, make, short_dir)
        if version == "1.6":
            answer_pnc(csms, version, "SignCertificate", lambda p: {"status": "Accepted"})
        res = await csms_pnc(link, version, "InstallCertificate", {
            "certificateType": "V2GRootCertificate", "certificate": pki().v2g_root.pem})
        assert res["status"] == "Accepted"
        res = await csms_pnc(link, version, "TriggerMessage",
                             {"requestedMessage": "SignV2GCertificate"})
        assert res["status"] == "Accepted"
        await eventually(lambda: sent(csms, version, "SignCertificate"), "a V2G CSR")
        (req,) = sent(csms, version, "SignCertificate")
        assert req["certificateType"] == "V2GCertificate"
        chain = pki().sign_v2g_csr(req["csr"])
        res = await csms_pnc(link, version, "CertificateSigned", {
            "certificateChain": chain, "certificateType": "V2GCertificate"})
        assert res["status"] == "Accepted", res
        res = await csms_pnc(link, version, "GetInstalledCertificateIds",
                             {"certificateType": ["V2GCertificateChain"]})
        assert res["status"] == "Accepted"
        (entry,) = res["certificateHashDataChain"]
        assert entry["certificateType"] == "V2GCertificateChain"
        assert len(entry["childCertificateHashData"]) == 2
        certs = short_dir / "pki" / "iso15118_2" / "certs"
        assert (certs / "cpoCertChain.pem").read_text().startswith(chain.split("-----END")[0])
        assert (certs / "v2gRootCACert.pem").read_text() == pki().v2g_root.pem
        key = short_dir / "pki" / "iso15118_2" / "private_keys" / "seccLeaf.key"
        assert key.stat().st_mode & 0o077 == 0
        # A chain for a key this station never made is refused.
        other = pki().secc_chain_pem()
        res = await csms_pnc(link, version, "CertificateSigned", {
            "certificateChain": other, "certificateType": "V2GCertificate"})
        assert res["status"] == "Rejected"


# ---------------------------------------------------------------- K15 / K16


@pytest.mark.parametrize("version", ("2.0.1", "2.1"))
async def test_charging_needs_and_tx_profile_reach_the_ev(version: str,
                                                          short_dir: Path) -> None:
    """K15: the EV's charging needs become NotifyEVChargingNeeds (2.1: decimals, a timestamp,
    the -20 fields); the TxProfile the CSMS then sets is the schedule the SECC offers the EV;
    K16: the EV's start on it is reported with NotifyEVChargingSchedule."""
    async with version_rig(version, short_dir) as (csms, make):
        agent, link = await started(version, csms, make, short_dir)
        install_mo_root(agent)
        csms.overrides["Authorize"] = lambda link, p: {
            "idTokenInfo": {"status": "Accepted"}, "certificateStatus": "Accepted"}
        svc = agent.station.iso15118
        agent.hal.plug(1)
        svc.hlc_event(1, "session_started", {"protocol": "ISO_15118_2"})
        assert (await contract(agent, pki().contract_chain_pem()))["status"] == "Accepted"
        svc.hlc_event(1, "charge_progress", {"started": True})
        ev = await csms.wait_for("TransactionEvent", station_id="CP1", predicate=lambda p:
                                 p["transactionInfo"].get("chargingState") == "Charging")
        tx_id = ev["transactionInfo"]["transactionId"]
        svc.hlc_event(1, "ev_parameters", {"params": {
            "energy_mode": "AC_three_phase_core", "departure_time_s": 7200,
            "energy_amount_wh": 20000, "max_current_a": 16, "min_current_a": 6,
            "max_voltage_v": 400, "bidirectional": version == "2.1",
            "max_discharge_power_w": 7000 if version == "2.1" else None}})
        needs = await csms.wait_for("NotifyEVChargingNeeds", station_id="CP1")
        assert needs["evseId"] == 1
        cn = needs["chargingNeeds"]
        ac = cn["acChargingParameters"]
        assert (ac["energyAmount"], ac["evMinCurrent"], ac["evMaxCurrent"],
                ac["evMaxVoltage"]) == (20000, 6, 16, 400)
        assert "departureTime" in cn
        if version == "2.1":
            assert cn["requestedEnergyTransfer"] == "AC_BPT"
            assert cn["v2xChargingParameters"]["maxDischargePower"] == 7000.0
            assert cn["controlMode"] == "ScheduledControl" and "timestamp" in needs
        else:
            assert cn["requestedEnergyTransfer"] == "AC_three_phase"
        res = await link.call("SetChargingProfile", {"evseId": 1, "chargingProfile": {
            "id": 7, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Relative", "transactionId": tx_id,
            "chargingSchedule": [{"id": 1, "chargingRateUnit": "A",
                                  "chargingSchedulePeriod": [
                                      {"startPeriod": 0, "limit": 10.0}]}]}})
        assert res["status"] == "Accepted", res
        sched = await svc.hlc_request(1, "schedule", {"departure_time_s": 7200,
                                                      "max_entries": 12})
        first = sched["periods"][0]
        assert first["start_s"] == 0 and first["limit_w"] == pytest.approx(10 * 230 * 3,
                                                                           rel=0.02)
        svc.hlc_event(1, "charge_progress", {"started": False})
        svc.hlc_event(1, "charge_progress", {"started": True})
        schedule = await csms.wait_for("NotifyEVChargingSchedule", station_id="CP1")
        assert schedule["chargingSchedule"]["chargingRateUnit"] == "W"
        assert schedule["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == \
            pytest.approx(first["limit_w"], abs=1)


# ---------------------------------------------------------------- ISO15118Ctrlr


@pytest.mark.parametrize("version", ("2.0.1", "2.1"))
async def test_iso15118ctrlr_in_full_inventory(version: str, short_dir: Path) -> None:
    """The ISO15118Ctrlr variables of the appendices: the PnC switches station-wide (the
    conformance-required ContractValidationOffline ReadWrite among them), the SECC's state
    per EVSE; 2.1 adds ProtocolSupported and ServiceRenegotiationSupport."""
    async with version_rig(version, short_dir) as (csms, make):
        agent, link = await started(version, csms, make, short_dir)
        res = await link.call("GetBaseReport", {"requestId": 3, "reportBase": "FullInventory"})
        assert res["status"] == "Accepted"
        await csms.wait_for("NotifyReport", station_id="CP1", predicate=lambda p:
                            p["requestId"] == 3 and not p.get("tbc", False))
        found: dict[tuple, dict] = {}
        for part in csms.messages("CP1", "NotifyReport"):
            for item in part.get("reportData", []):
                if item["component"]["name"] == "ISO15118Ctrlr":
                    key = (item["variable"]["name"], item["variable"].get("instance"),
                           (item["component"].get("evse") or {}).get("id"))
                    found[key] = item
        cvo = found[("ContractValidationOffline", None, None)]
        assert cvo["variableAttribute"][0]["mutability"] == "ReadWrite"
        for name in ("PnCEnabled", "CentralContractValidationAllowed",
                     "V2GCertificateInstallationEnabled",
                     "ContractCertificateInstallationEnabled"):
            assert found[(name, None, None)]["variableAttribute"][0]["value"] == "true"
        assert found[("Enabled", None, 1)]["variableAttribute"][0]["value"] == "true"
        assert found[("Active", None, 1)]["variableAttribute"][0]["value"] == "false"
        assert found[("MaxScheduleEntries", None, 1)]["variableAttribute"][0]["value"] == "24"
        if version == "2.1":
            assert found[("ProtocolSupported", "1", 1)]["variableAttribute"][0]["value"] == \
                "urn:iso:15118:2:2013:MsgDef,2,0"
            assert ("ServiceRenegotiationSupport", None, 1) in found
        else:
            assert ("ProtocolSupported", "1", 1) not in found


# ---------------------------------------------------------------- 1.6 specifics


async def test_16_pnc_keys_and_unknown_messages(short_dir: Path) -> None:
    """1.6: the application note's keys are configuration keys (ChangeConfiguration turns
    PnC off, after which a contract is refused without a DataTransfer); a PnC DataTransfer
    of an unknown messageId is UnknownMessageId, unreadable data Rejected."""
    async with version_rig("1.6", short_dir) as (csms, make):
        agent, link = await started("1.6", csms, make, short_dir)
        res = await link.call("GetConfiguration", {"key": [
            "ISO15118PnCEnabled", "CentralContractValidationAllowed",
            "ContractValidationOffline", "CertSigningWaitMinimum", "CertSigningRepeatTimes"]})
        assert {k["key"] for k in res["configurationKey"]} == {
            "ISO15118PnCEnabled", "CentralContractValidationAllowed",
            "ContractValidationOffline", "CertSigningWaitMinimum", "CertSigningRepeatTimes"}
        res = await link.call("DataTransfer", {"vendorId": VENDOR, "messageId": "Nope",
                                               "data": "{}"})
        assert res["status"] == "UnknownMessageId"
        res = await link.call("DataTransfer", {"vendorId": VENDOR,
                                               "messageId": "InstallCertificate",
                                               "data": "not json"})
        assert res["status"] == "Rejected"
        res = await link.call("ChangeConfiguration", {"key": "ISO15118PnCEnabled",
                                                      "value": "false"})
        assert res["status"] == "Accepted"
        agent.hal.plug(1)
        agent.station.iso15118.hlc_event(1, "session_started", {"protocol": "ISO_15118_2"})
        res = await contract(agent, pki().contract_chain_pem())
        assert res["status"] == "Rejected"
        assert sent(csms, "1.6", "Authorize") == []


async def test_2_1_revocation_asks_about_the_whole_chain_at_once(short_dir: Path) -> None:
    """2.1 M06: with LocalPreAuthorize a cached EMAID is checked with one
    GetCertificateChainStatus for every certificate of the contract chain (leaf and sub-CAs,
    OCSP with each one's responder URL); a revoked sub-CA refuses the contract, all Good
    accepts it, and the answers are reused until their nextUpdate."""
    from datetime import timedelta

    from agent.clock import iso
    from agent.core.authorization import AuthInfo
    from agent.security import crypto

    async with version_rig("2.1", short_dir) as (csms, make):
        agent, _ = await started("2.1", csms, make, short_dir)
        install_mo_root(agent)
        station = agent.station
        station.authorization.remember(EMAID, AuthInfo("Accepted"))
        station.settings.set_internal("LocalPreAuthorize", True)
        chain = crypto.load_certificates(pki().contract_chain_pem())
        expected = crypto.ocsp_request_data(chain, [pki().mo_root.cert])
        assert len(expected) >= 2, "the leaf and at least one sub-CA are asked about"
        revoked_serial = expected[1]["serialNumber"]
        verdicts = {"status": "Revoked"}

        def chain_status(link: Any, p: dict) -> dict:
            later = iso(agent.clock.now() + timedelta(hours=4))
            return {"certificateStatus": [{
                "certificateHashData": item["certificateHashData"], "source": item["source"],
                "nextUpdate": later,
                "status": verdicts["status"] if item["certificateHashData"]["serialNumber"]
                == revoked_serial else "Good"} for item in p["certificateStatusRequests"]]}

        csms.overrides["GetCertificateChainStatus"] = chain_status
        authority = station.iso15118.authorizer
        verdict = await authority.authorize_contract(ContractRequest(1, EMAID,
                                                                     pki().contract_chain_pem()))
        assert verdict.certificate_status == "CertificateRevoked" and not verdict.accepted
        assert revoked_serial in verdict.reason
        (req,) = csms.messages("CP1", "GetCertificateChainStatus")
        asked = req["certificateStatusRequests"]
        assert [a["certificateHashData"]["serialNumber"] for a in asked] == [
            e["serialNumber"] for e in expected]
        assert all(a["source"] == "OCSP" and a["urls"] == [e["responderURL"]]
                   for a, e in zip(asked, expected, strict=True))
        assert csms.messages("CP1", "GetCertificateStatus") == [], "2.1 asks the chain"
        # The revoked answer is cached until its nextUpdate: no second request.
        again = await authority.authorize_contract(ContractRequest(1, EMAID,
                                                                   pki().contract_chain_pem()))
        assert not again.accepted and len(csms.messages("CP1", "GetCertificateChainStatus")) == 1
        authority.ocsp.clear()
        verdicts["status"] = "Good"
        good = await authority.authorize_contract(ContractRequest(1, EMAID,
                                                                  pki().contract_chain_pem()))
        assert good.accepted and good.auth.source == "cache"
