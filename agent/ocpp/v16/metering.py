"""1.6 meter values: the sampling streams 1.6 defines, and the 1.6 form of a sample.

When samples are taken is the core's (:mod:`agent.core.metering`): MeterValueSampleInterval
from each transaction's start, ClockAlignedDataInterval on wall-clock boundaries, StopTxn*Data
collected for StopTransaction.transactionData.  This block formats them (values are decimal
strings; 1.6 has no unit for frequency) and queues a transaction's MeterValues durably, in the
same commit that journals the reading.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from agent.core.metering import MeterValue, Stream
from agent.core.model import TxRecord
from agent.ocpp.blocks import Block
from agent.storage import StorageError

log = logging.getLogger("cp_agent.v16")

STREAMS = (
    Stream("sampled", "MeterValueSampleInterval", "MeterValuesSampledData", aligned=False),
    Stream("sampled-stop", "MeterValueSampleInterval", "StopTxnSampledData", aligned=False,
           collect=True),
    Stream("aligned", "ClockAlignedDataInterval", "MeterValuesAlignedData", aligned=True),
    Stream("aligned-stop", "ClockAlignedDataInterval", "StopTxnAlignedData", aligned=True,
           collect=True),
)
UNITS = frozenset({"Wh", "kWh", "varh", "kvarh", "W", "kW", "VA", "kVA", "var", "kvar", "A",
                   "V", "K", "Celsius", "Fahrenheit", "Percent"})


def fmt(value: float) -> str:
    """Meter values travel as decimal strings; trim float noise so they read like a meter."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


def meter_value(value: MeterValue) -> dict[str, Any]:
    """One 1.6 MeterValue element."""
    out = []
    for s in value.samples:
        item: dict[str, Any] = {"value": fmt(s.value), "context": s.context,
                                "measurand": s.measurand}
        if s.phase:
            item["phase"] = s.phase
        if s.unit in UNITS:
            item["unit"] = s.unit
        if s.location:
            item["location"] = s.location
        out.append(item)
    return {"timestamp": value.timestamp, "sampledValue": out}


class Metering(Block):
    PROFILE: ClassVar[str] = "Core"

    def sink(self, evse_id: int, tx: TxRecord | None, value: MeterValue,
             stream: Stream) -> None:
        if tx is not None:
            self.queue_tx_values(evse_id, tx, value)
        elif self.adapter.online:
            self.adapter.spawn(self.adapter.send_quiet("MeterValues", {
                "connectorId": evse_id, "meterValue": [meter_value(value)]}),
                "v16-aligned-send")

    def queue_tx_values(self, evse_id: int, tx: TxRecord, value: MeterValue) -> None:
        """Queue a transaction's MeterValues and journal the same reading in one commit.

        Journalling it keeps the power-loss Stop (meterStop, timestamp) never behind a sample
        the CSMS already has. A failing disk costs a sample, not the sampler.
        """
        payload = {"connectorId": evse_id, "transactionId": 0,  # filled in at send time
                   "meterValue": [meter_value(value)]}
        evse = self.station.evses[evse_id]
        reading = evse.reading
        try:
            with self.storage.atomic():
                self.adapter.enqueue("MeterValues", payload, tx_ref=tx.local_id)
                if reading is not None:
                    self.storage.tx_meter(tx.local_id, reading.energy_import_wh,
                                          value.timestamp)
        except (StorageError, KeyError) as exc:
            log.error("MeterValues of transaction %s not queued: %s", tx.local_id, exc)
            return
        if reading is not None:
            tx.last_meter_wh, tx.last_meter_at = reading.energy_import_wh, value.timestamp
