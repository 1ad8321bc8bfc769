"""ISO 15118: the SECC sidecar, its channel to the agent, and the core's side (issue 19).

The end-to-end session runs the `iso15118` package's EVCC against our SECC sidecar over the
loopback interface, both in ``.venv-iso15118`` (scripts/iso15118_venv.sh) with the package's
Java EXI codec: seconds of JVM start-up each, so it is one session. The channel and the
contract authorization are tested without the JVM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.iso15118 import LIMIT_SOURCE, ContractRequest, Iso15118Service
from hal.config_kit import HalConfigError
from hal.factory import parse_hal_config
from hal.iso15118 import protocol
from hal.iso15118.client import HighLevelCommunication, Sidecar
from hal.iso15118.hlc_config import default_python, parse_iso15118
from tests.conftest import eventually, online201, tx_events, version_rig

SIDECAR_PYTHON = default_python()
JAVA = any(os.access(os.path.join(d, "java"), os.X_OK)
           for d in os.environ.get("PATH", "").split(os.pathsep))
needs_sidecar = pytest.mark.skipif(
    not ((Path(SIDECAR_PYTHON).parents[1] / ".cp-agent-installed").exists() and JAVA),
    reason=f"the ISO 15118 sidecar venv ({SIDECAR_PYTHON}) or java is missing: "
           "bash scripts/iso15118_venv.sh, apt install default-jre-headless")

ISO_HAL = """
hal:
  driver: mock
  ev_max_current_a: 16
  iso15118: {enabled: true}
"""


# ---------------------------------------------------------------- the channel, no JVM


@pytest.mark.parametrize(("line", "says"), [
    (b"\xff\xfe", "not UTF-8"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object, not list"),
    (b'{"kind": "shout"}', "kind 'shout'"),
    (b'{"kind": "request", "id": -1, "name": "authorize"}', "id -1"),
    (b'{"kind": "request", "id": 3, "name": "launch"}', "request 'launch'"),
    (b'{"kind": "request", "id": 4, "name": "authorize", "params": {}}',
     "missing parameter 'token_type'"),
    (b'{"kind": "request", "id": 5, "name": "authorize", "params": {"token_type": 1}}',
     "token_type = 1 is not a string"),
    (b'{"kind": "event", "name": "charge_progress", "params": {"started": "yes"}}',
     "started = 'yes' is not a boolean"),
    (b'{"kind": "event", "name": "state", "params": {"state": "x", "extra": 1}}',
     "unknown parameter 'extra'"),
    (b'{"kind": "response", "id": 2, "result": 5}', "result 5 is not an object"),
    (b"   \n", "empty line"),
])
def test_bad_lines_are_named(line: bytes, says: str) -> None:
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.decode_from_sidecar(line)
    assert says in str(err.value)


def test_a_request_identified_in_a_bad_line_keeps_its_id() -> None:
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.decode_from_sidecar(b'{"kind": "request", "id": 9, "name": "nope"}')
    assert err.value.request_id == 9


def test_messages_round_trip() -> None:
    for msg in (protocol.request(1, "authorize", token_type="pnc", id_token="DEABC1234567"),
                protocol.event("session_started", evcc_id="0A1B2C3D4E5F"),
                protocol.response(1, {"status": "Accepted"}),
                protocol.response(2, error="no")):
        assert protocol.decode_from_sidecar(protocol.encode(msg)) == msg


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                              lambda c: st.lists(c, max_size=4)
                              | st.dictionaries(st.sampled_from(
                                  ["kind", "id", "name", "params", "result", "error",
                                   "token_type", "status"]), c, max_size=5),
                              max_leaves=12).map(lambda v: __import__("json").dumps(v))))
def test_any_line_parses_or_is_a_protocol_error(line: Any) -> None:
    try:
        msg = protocol.decode_from_sidecar(line)
    except protocol.ProtocolError:
        return
    assert msg.kind in protocol.KINDS


class _Handler:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def hlc_event(self, evse_id: int, name: str, params: dict) -> None:
        self.events.append((name, params))

    async def hlc_request(self, evse_id: int, name: str, params: dict) -> dict:
        if params.get("token_type") == "pnc":
            raise ValueError("no contracts here")
        return {"status": "Accepted"}


async def test_garbage_from_the_sidecar_is_logged_and_the_channel_goes_on(
        short_dir: Path) -> None:
    """A fake sidecar sends bad lines among good ones: each bad one is counted and answered
    where it had an id, the good ones are served, and the connection stays up."""
    path = str(short_dir / "fake.sock")
    answers: list[dict] = []
    got_all = asyncio.Event()

    async def fake_sidecar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for line in (b"\xff garbage\n", b'{"kind": "request", "id": 1, "name": "nope"}\n',
                     protocol.encode(protocol.event("hello", protocol_version=1)),
                     b"[]\n" * 3,
                     protocol.encode(protocol.request(2, "authorize", token_type="eim")),
                     protocol.encode(protocol.request(3, "authorize", token_type="pnc",
                                                      id_token="X")),
                     protocol.encode(protocol.event("state", state="Authorization"))):
            writer.write(line)
        await writer.drain()
        while len(answers) < 3:
            answers.append(protocol.decode_from_agent(await reader.readline()).__dict__)
        got_all.set()
        await reader.read()  # until the agent goes

    server = await asyncio.start_unix_server(fake_sidecar, path)
    handler = _Handler()
    car = Sidecar(1, "lo", path, None, handler)
    task = asyncio.create_task(car.run())
    try:
        await asyncio.wait_for(got_all.wait(), 5)
        by_id = {a["id"]: a for a in answers}
        assert "request 'nope'" in by_id[1]["error"]
        assert by_id[2]["result"] == {"status": "Accepted"}
        assert "no contracts here" in by_id[3]["error"]
        await eventually(lambda: ("state", {"state": "Authorization"}) in handler.events,
                         "the good event after the garbage was handled")
        assert car.bad_lines == 5
        assert car.connected.is_set()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        server.close()


# ---------------------------------------------------------------- configuration


def test_config_errors_name_the_key() -> None:
    with pytest.raises(HalConfigError, match=r"hal.iso15118.interface: missing"):
        parse_hal_config({"driver": "hardware", "iso15118": {"enabled": True}}, [1])
    with pytest.raises(HalConfigError, match=r"hal.iso15118.interface: 'eth1' on the mock"):
        parse_iso15118({"interface": "eth1"}, (1,), mock=True)
    with pytest.raises(HalConfigError, match=r"hal.iso15118.protocols\[1\]"):
        parse_iso15118({"protocols": ["ISO_15118_2", "ISO_15118_3"]}, (1,), mock=True)
    with pytest.raises(HalConfigError, match=r"hal.iso15118.pki_dir: missing"):
        parse_iso15118({"pnc": True}, (1,), mock=True)
    with pytest.raises(HalConfigError, match=r"hal.iso15118.interfaces.3: no EVSE 3"):
        parse_iso15118({"interface": "eth1", "interfaces": {3: "eth3"}}, (1, 2), mock=False)
    with pytest.raises(HalConfigError, match=r"hal.iso15118.sdp_prot: unknown key"):
        parse_iso15118({"sdp_prot": 1}, (1,), mock=True)
    cfg = parse_hal_config({"driver": "mock", "iso15118": {"enabled": True}}, [1, 2]).iso15118
    assert cfg is not None and cfg.interfaces == {1: "lo", 2: "lo"}


# ---------------------------------------------------------------- contracts, no JVM


def _contract_chain(emaid: str, *, expired: bool) -> str:
    """An MO sub-CA and a contract leaf (CN = EMAID) as the EV presents them."""
    now = datetime.now(UTC)

    def cert(cn: str, key: Any, issuer: x509.Name, issuer_key: Any, ca: bool,
             start: datetime, end: datetime) -> x509.Certificate:
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(issuer).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .sign(issuer_key, hashes.SHA256()))

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MO Sub-CA 2")])
    ca = cert("MO Sub-CA 2", ca_key, ca_name, ca_key, True, now - timedelta(days=400),
              now + timedelta(days=400))
    end = now - timedelta(days=1) if expired else now + timedelta(days=30)
    leaf = cert(emaid, leaf_key, ca_name, ca_key, False, now - timedelta(days=60), end)
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in (leaf, ca))


async def test_contract_authorization_through_the_policy(short_dir: Path) -> None:
    """C07 through the default authorizer: a valid contract is an Authorize with the EMAID as
    idToken of type eMAID and authorizes the EVSE; an expired one is refused before any round
    trip, with CertificateExpired for the EV. No sidecar runs (no JVM)."""
    async with version_rig("2.0.1", short_dir) as (csms, make):
        agent = await make()
        await online201(agent, csms)
        hlc = HighLevelCommunication(parse_iso15118({}, (1,), mock=True), short_dir)
        service = Iso15118Service(agent.station, hlc)
        agent.hal.plug(1)
        service.hlc_event(1, "session_started", {"evcc_id": "0A1B2C3D4E5F",
                                                 "protocol": "ISO_15118_2"})
        seen: list[ContractRequest] = []
        policy = service.authorizer

        class Spy:
            async def authorize_contract(self, request: ContractRequest) -> Any:
                seen.append(request)
                return await policy.authorize_contract(request)

        service.authorizer = Spy()
        hash_data = [{"hashAlgorithm": "SHA256", "issuerNameHash": "aa", "issuerKeyHash": "bb",
                      "serialNumber": "1", "responderURL": "http://ocsp.example"}]
        expired = await service.hlc_request(1, "authorize", {
            "token_type": "pnc", "id_token": "DEABCC1234567X",
            "certificate_chain_pem": _contract_chain("DEABCC1234567X", expired=True),
            "hash_data": hash_data})
        assert expired == {"status": "Rejected", "certificate_status": "CertificateExpired"}
        assert csms.messages("CP1", "Authorize") == []
        assert not agent.station.evses[1].snapshot().authorized

        ok = await service.hlc_request(1, "authorize", {
            "token_type": "pnc", "id_token": "DEABCC7654321X",
            "certificate_chain_pem": _contract_chain("DEABCC7654321X", expired=False),
            "hash_data": hash_data})
        assert ok["status"] == "Accepted"
        assert seen[-1].emaid == "DEABCC7654321X" and seen[-1].hash_data[0]["serialNumber"] == "1"
        auth = csms.messages("CP1", "Authorize")
        assert auth[-1]["idToken"] == {"idToken": "DEABCC7654321X", "type": "eMAID"}
        assert agent.station.evses[1].snapshot().token == "DEABCC7654321X"
        # The EIM question now has its answer too: the EVSE is authorized.
        assert await service.hlc_request(1, "authorize", {"token_type": "eim"}) == {
            "status": "Accepted"}
        assert LIMIT_SOURCE in agent.station.evses[1].limits  # held until PowerDelivery
        service.hlc_event(1, "session_ended", {"reason": "test"})
        await eventually(lambda: LIMIT_SOURCE not in agent.station.evses[1].limits,
                         "the hold ends with the session")


# ---------------------------------------------------------------- a whole session (JVM)


@needs_sidecar
async def test_eim_session_evcc_secc_agent_csms(short_dir: Path) -> None:
    """The package's EVCC -> our SECC sidecar -> the agent (mock HAL) -> the 2.0.1 test CSMS,
    over loopback: the EV's EVCCID and charging needs reach station.iso15118, the composite
    schedule (a 10 A station maximum) reaches the EV, the contactor closes by the core's path
    once the EV starts the energy transfer and opens when it stops, the session ends."""
    async with version_rig("2.0.1", short_dir, extra=ISO_HAL) as (csms, make):
        agent = await make()
        link = await online201(agent, csms, timeout=10)
        start = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        answer = await link.call("SetChargingProfile", {"evseId": 0, "chargingProfile": {
            "id": 1, "stackLevel": 0, "chargingProfilePurpose": "ChargingStationMaxProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": [{
                "id": 10, "chargingRateUnit": "A", "startSchedule": start,
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10}]}]}})
        assert answer["status"] == "Accepted"
        service = agent.station.iso15118
        assert service is not None
        await service.hlc.wait_connected(1, timeout=90)
        what: list[str] = []
        service.listeners.append(lambda evse, w, s: what.append(w))
        closed: list[bool] = []
        agent.station.evses[1].state_listeners.append(
            lambda e: closed.append(e.hw.contactor.commanded_closed))

        await agent.handle_control({"cmd": "plug", "args": {
            "evse": 1, "iso15118": True, "evcc_id": "0A1B2C3D4E5F"}})
        agent.hal.tap("TAG1")  # EIM: the card authorizes, the SECC tells the EV
        sim = service.hlc.simulators[1]
        await asyncio.wait_for(sim.ended.wait(), 150)
        assert sim.report("ended") == {"kind": "ended", "ok": True}, list(sim.tail)[-15:]

        s = service.session(1)
        assert s is not None and s.evcc_id == "0A1B2C3D4E5F" and s.protocol == "ISO_15118_2"
        assert s.needs is not None and s.needs.energy_mode == "AC_three_phase_core"
        assert s.needs.energy_amount_wh == 20_000 and s.needs.max_current_a == 16
        offered = sim.report("schedule")
        assert offered is not None
        assert offered["entries"][0] == {"start_s": 0, "duration_s": 86_400,
                                         "limit_w": 6900.0}  # 10 A x 230 V x 3 phases
        assert True in closed, "the contactor never closed"
        await eventually(lambda: s.ended is not None, "the session ended", 30)
        await agent.station.quiet()
        # The EV ended its session: no energy until it leaves (the hold of limit source
        # iso15118), although it is still plugged in.
        assert not agent.hal.evses[1].contactor.commanded_closed
        assert agent.station.evses[1].limits.get(LIMIT_SOURCE) == 0.0
        assert what[:1] == ["session_started"] and "charging_needs" in what
        assert what.count("charge_progress") == 2  # the EV's start and its stop
        assert agent.hal.sims[1].energy_wh > 0  # energy flowed while the contactor was closed
        agent.hal.unplug(1)
        await csms.wait_for("TransactionEvent", predicate=lambda p: p["eventType"] == "Ended",
                            timeout=10)
        await eventually(lambda: LIMIT_SOURCE not in agent.station.evses[1].limits,
                         "the hold ends with the unplug")
        assert tx_events(csms, eventType="Started")[0]["idToken"]["idToken"] == "TAG1"
