"""The SECC sidecar's side of K17 renegotiation, without the JVM: the sidecar's controller
(hal/iso15118/sidecar.py, ``AgentController``) with the `iso15118` package's classes, run in
the sidecar venv (the agent's venv cannot import the package). The agent's ``renegotiate``
event reaches the controller; the EV is told in the charge-loop answers (-2 AC ChargingStatus
/ DC CurrentDemand: EVSENotification ReNegotiation; -20: ServiceRenegotiation) until it asks
for its new schedule; outside the charge loop and on DIN SPEC 70121 it is refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hal.iso15118.hlc_config import default_python

SIDECAR_PYTHON = default_python()
HERE = Path(__file__).resolve().parents[2] / "hal" / "iso15118"

SCRIPT = r"""
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
import protocol, sidecar
from iso15118.shared.messages.enums import Protocol

class Link(sidecar.AgentLink):
    def __init__(self):
        super().__init__("unused", {})
        self.told = []
        self.status = {"limit_a": 16.0}
    def tell(self, name, **params):
        self.told.append([name, params])
    async def ask(self, name, timeout=2.0, **params):
        if name == "evse_info":
            return {"evse_id": "DE*ABC*E1", "nominal_voltage_v": 230.0, "max_current_a": 16.0}
        return {"periods": [{"start_s": 0, "limit_w": 6900.0}]}

async def main():
    link = Link()
    c = sidecar.build_controller(link)
    out = {}
    c.set_selected_protocol(Protocol.ISO_15118_2)
    line = protocol.encode(protocol.event("renegotiate", reason="a new TxProfile"))
    await link._receive(line)  # before the charge loop: refused
    await c.set_hlc_charging(True)
    await link._receive(line)
    out["ac"] = (await c.get_ac_evse_status()).evse_notification.value
    out["ac_again"] = (await c.get_ac_evse_status()).evse_notification.value
    out["dc"] = (await c.get_dc_evse_status()).evse_notification.value
    await c.get_ac_charge_params_v2()  # the EV's ChargeParameterDiscovery: served
    out["ac_after"] = (await c.get_ac_evse_status()).evse_notification.value
    link.status["stop"] = True
    await link._receive(line)
    out["stop_first"] = (await c.get_ac_evse_status()).evse_notification.value
    link.status["stop"] = False
    await c.get_sa_schedule_list(c.ev_data_context, False, None, 0)
    c.set_selected_protocol(Protocol.ISO_15118_20_AC)
    out["v20_idle"] = await c.get_evse_status()
    await link._receive(line)
    out["v20"] = (await c.get_evse_status()).evse_notification.value
    out["v20_supported"] = await c.service_renegotiation_supported()
    await c.stop_charger()  # the EV's PowerDelivery Stop on its way to ServiceRenegotiation
    out["v20_stopped"] = await c.get_evse_status()
    c.set_selected_protocol(Protocol.DIN_SPEC_70121)
    await c.set_hlc_charging(True)
    await link._receive(line)
    out["told"] = link.told
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.mark.skipif(not (Path(SIDECAR_PYTHON).parents[1] / ".cp-agent-installed").exists(),
                    reason=f"the ISO 15118 sidecar venv ({SIDECAR_PYTHON}) is missing: "
                           "bash scripts/iso15118_venv.sh")
def test_the_secc_tells_the_ev_to_renegotiate_in_its_charge_loop() -> None:
    proc = subprocess.run([SIDECAR_PYTHON, "-c", SCRIPT, str(HERE)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ac"] == out["ac_again"] == "ReNegotiation"  # until the EV acts on it
    assert out["dc"] == "ReNegotiation"
    assert out["ac_after"] == "None"
    assert out["stop_first"] == "StopCharging"  # the station's stop outranks it
    assert out["v20_idle"] is None  # no EVSEStatus without news (the EVCC stops on one)
    assert out["v20"] == "ServiceRenegotiation" and out["v20_supported"] is True
    assert out["v20_stopped"] is None
    reports = [(name, p["status"]) for name, p in out["told"] if name == "renegotiation"]
    assert reports == [("renegotiation", "refused"), ("renegotiation", "requested"),
                       ("renegotiation", "started"), ("renegotiation", "requested"),
                       ("renegotiation", "started"), ("renegotiation", "requested"),
                       ("renegotiation", "refused")]
    refused = [p["reason"] for name, p in out["told"]
               if name == "renegotiation" and p["status"] == "refused"]
    assert refused == ["the EV is not in the charge loop", "DIN SPEC 70121 has no renegotiation"]
