"""2.0.1 block J, meter values: the sampling streams 2.0.1 defines and the 2.0.1 form of a
sample.

When samples are taken is the core's (:mod:`agent.core.metering`): TxUpdatedInterval from
each transaction's start (sent as TransactionEvent Updated, MeterValuePeriodic),
AlignedDataCtrlr.Interval on wall-clock boundaries (Updated MeterValueClock during a
transaction, MeterValues while idle; with SendDuringIdle only while no transaction runs), and
the TxEnded streams collected for the Ended event.  The intervals 1.6 has too are its settings
(MeterValueSampleInterval, ClockAlignedDataInterval); the TxEnded intervals, which only 2.0.1
has, are neutral settings this block registers so that the core's streams can read them.

This block formats samples: numbers with unitOfMeasure, and only the measurands 2.0.1 knows
(it has no Temperature).  The measurand lists (TxStarted/TxUpdated/TxEnded, AlignedDataCtrlr
Measurands/TxEndedMeasurands) are neutral settings: their valuesList and what SetVariables
accepts is what the station's hardware gives (the core's measurand capability).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from agent.core.metering import MeterValue, Stream
from agent.core.model import TxRecord
from agent.core.settings import MEASURAND_CAPABILITY, MEASURANDS, SAMPLED_MAX, SettingDef
from agent.ocpp.v201.device_model import MEASURANDS_201, VarDef, VariableBlock, ro, rw

log = logging.getLogger("cp_agent.v201")

TX_ENDED_SAMPLE_INTERVAL = "TxEndedSampleInterval"  # SampledDataCtrlr.TxEndedInterval
TX_ENDED_ALIGNED_INTERVAL = "TxEndedAlignedInterval"  # AlignedDataCtrlr.TxEndedInterval
# SampledDataCtrlr.TxStartedMeasurands: a neutral setting so that, like the other lists, it
# accepts only what the hardware gives (the core's measurand capability).
TX_STARTED_MEASURANDS = "TxStartedMeasurands"

STREAMS = (
    Stream("updated", "MeterValueSampleInterval", "MeterValuesSampledData", aligned=False),
    Stream("ended", TX_ENDED_SAMPLE_INTERVAL, "StopTxnSampledData", aligned=False,
           collect=True),
    Stream("aligned", "ClockAlignedDataInterval", "MeterValuesAlignedData", aligned=True),
    Stream("aligned-ended", TX_ENDED_ALIGNED_INTERVAL, "StopTxnAlignedData", aligned=True,
           collect=True),
)
_KNOWN = frozenset(MEASURANDS_201)


def number(value: float) -> float | int:
    """Numbers as a meter shows them: no float noise, integers where there is no fraction."""
    rounded = round(value, 3)
    return int(rounded) if rounded == int(rounded) else rounded


def meter_value(value: MeterValue) -> dict[str, Any] | None:
    """One 2.0.1 MeterValue element, or None when 2.0.1 knows none of its measurands."""
    out = []
    for s in value.samples:
        if s.measurand not in _KNOWN:
            continue
        item: dict[str, Any] = {"value": number(s.value), "context": s.context,
                                "measurand": s.measurand}
        if s.unit:
            item["unitOfMeasure"] = {"unit": s.unit}
        if s.phase:
            item["phase"] = s.phase
        if s.location:
            item["location"] = s.location
        out.append(item)
    return {"timestamp": value.timestamp, "sampledValue": out} if out else None


def register_value(wh: float, context: str, stamp: str) -> dict[str, Any]:
    """The energy register alone (a start reported late, a power-loss end)."""
    return {"timestamp": stamp, "sampledValue": [{
        "value": number(wh), "context": context, "measurand": "Energy.Active.Import.Register",
        "unitOfMeasure": {"unit": "Wh"}}]}


_MEASURANDS = dict(values_list=MEASURANDS_201, max_limit=len(MEASURANDS_201))


class Metering(VariableBlock):
    SETTINGS = (
        SettingDef(TX_ENDED_SAMPLE_INTERVAL, "int", 0, min=0, max=86400, v16=False),
        SettingDef(TX_ENDED_ALIGNED_INTERVAL, "int", 0, min=0, max=86400, v16=False),
        SettingDef(TX_STARTED_MEASURANDS, "csl", ["Energy.Active.Import.Register"],
                   choices=MEASURANDS, supported_by=MEASURAND_CAPABILITY,
                   max_items=SAMPLED_MAX, v16=False),
    )
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        ro("SampledDataCtrlr", "Enabled", "boolean", "true"),
        ro("SampledDataCtrlr", "Available", "boolean", "true"),
        ro("SampledDataCtrlr", "SignReadings", "boolean", "false"),
        rw("SampledDataCtrlr", "TxStartedMeasurands", "MemberList",
           setting=TX_STARTED_MEASURANDS, **_MEASURANDS),
        rw("SampledDataCtrlr", "TxUpdatedInterval", "integer", unit="s", min_limit=0,
           max_limit=86400, setting="MeterValueSampleInterval"),
        rw("SampledDataCtrlr", "TxUpdatedMeasurands", "MemberList",
           setting="MeterValuesSampledData", **_MEASURANDS),
        rw("SampledDataCtrlr", "TxEndedInterval", "integer", unit="s", min_limit=0,
           max_limit=86400, setting=TX_ENDED_SAMPLE_INTERVAL),
        rw("SampledDataCtrlr", "TxEndedMeasurands", "MemberList",
           setting="StopTxnSampledData", **_MEASURANDS),
        ro("AlignedDataCtrlr", "Enabled", "boolean", "true"),
        ro("AlignedDataCtrlr", "Available", "boolean", "true"),
        ro("AlignedDataCtrlr", "SignReadings", "boolean", "false"),
        rw("AlignedDataCtrlr", "Interval", "integer", unit="s", min_limit=0, max_limit=86400,
           setting="ClockAlignedDataInterval"),
        rw("AlignedDataCtrlr", "Measurands", "MemberList", setting="MeterValuesAlignedData",
           **_MEASURANDS),
        rw("AlignedDataCtrlr", "SendDuringIdle", "boolean", "false"),
        rw("AlignedDataCtrlr", "TxEndedInterval", "integer", unit="s", min_limit=0,
           max_limit=86400, setting=TX_ENDED_ALIGNED_INTERVAL),
        rw("AlignedDataCtrlr", "TxEndedMeasurands", "MemberList",
           setting="StopTxnAlignedData", **_MEASURANDS),
    )

    def meter(self, evse_id: int, measurands: list[str], context: str,
              stamp: str | None = None) -> list[dict[str, Any]]:
        """The ``meterValue`` list of what the meter of ``evse_id`` gives now (maybe empty)."""
        evse = self.station.evses.get(evse_id)
        if evse is None:
            return []
        value = self.station.metering.measure(evse, measurands, context, stamp)
        mv = meter_value(value) if value is not None else None
        return [mv] if mv is not None else []

    def sink(self, evse_id: int, tx: TxRecord | None, value: MeterValue,
             stream: Stream) -> None:
        """Where the core's sending streams deliver (the collecting ones it keeps)."""
        from agent.ocpp.v201.transactions import Transactions

        mv = meter_value(value)
        if mv is None:
            return
        if stream.aligned:
            # SendDuringIdle (part 2, AlignedDataCtrlr): none while a transaction runs.
            if self.dm.flag("AlignedDataCtrlr", "SendDuringIdle") and \
                    self.station.any_transaction:
                return
            if tx is not None:
                self.adapter.block(Transactions).updated(tx, "MeterValueClock", meter=[mv])
            elif self.adapter.online:
                self.adapter.spawn(self.adapter.send_quiet(
                    "MeterValues", {"evseId": evse_id, "meterValue": [mv]}),
                    "v201-aligned-send")
        elif tx is not None:
            self.adapter.block(Transactions).updated(tx, "MeterValuePeriodic", meter=[mv])

    async def triggered(self, evse_ids: list[int]) -> None:
        """TriggerMessage(MeterValues): the clock-aligned measurands now (F06)."""
        measurands = self.settings["MeterValuesAlignedData"]
        for evse_id in evse_ids:
            meter = self.meter(evse_id, measurands, "Trigger")
            if meter:
                await self.adapter.send_quiet("MeterValues", {"evseId": evse_id,
                                                              "meterValue": meter},
                                              pending_ok=True)
