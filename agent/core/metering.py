"""Metering: one sample builder and the sampling schedule, for every OCPP version.

A sample is built once, in neutral terms (:class:`Sample`: measurand, value, unit, phase,
location, context), from the HAL's :class:`MeterReading`; each version only formats it (1.6
decimal strings, 2.0.1 numbers with unitOfMeasure) and drops what its vocabulary lacks.

The schedule is a set of :class:`Stream` declarations that the active version supplies:

- periodic streams run per transaction and are timed from the transaction's start, as 1.6
  says ("samples are acquired and transmitted periodically at this interval from the start of
  the charging transaction"); a changed interval applies at once, not after the old one ran
  out, so a short session still gets its samples;
- clock-aligned streams fire on wall-clock boundaries counted from midnight UTC, with or
  without a transaction;
- a stream either sends (the adapter turns the sample into MeterValues / TransactionEvent
  Updated) or collects (kept, bounded, for the transaction's end message: 1.6 StopTxn*Data,
  2.0.1 TxEnded*).

Only the stream's settings are read here; what the messages look like is the adapter's.

What can be sampled is the hardware's to say: each EVSE's meter and EV side declare their
``measures`` (HAL terms), :func:`supported_measurands` turns what every EVSE has into the
measurands the station supports, and the measurand lists of the settings store accept only
those (registered as the store's measurand capability), so every version refuses the same
way.  The EV side's state of charge joins the meter's reading when a sample asks for SoC.

Energy out of the EV (a bidirectional power stage, agent/core/v2x.py) is the meter's export
register (Energy.Active.Export.Register); the HAL's power is signed (negative: out of the
EV), which the measurands split into Power.Active.Import and Power.Active.Export, and the
per-phase current magnitudes into Current.Import or Current.Export by the same sign.  Reactive
power is signed the same way (positive: absorbed, Power.Reactive.Import; negative: injected,
Power.Reactive.Export); Power.Factor is the meter's cos phi, unitless.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agent.clock import Clock, iso
from agent.core.model import TxRecord
from agent.core.settings import MEASURAND_CAPABILITY, MEASURANDS, Settings
from hal.interfaces import EvseHardware, MeterReading

if TYPE_CHECKING:
    from agent.core.evse import EvseController

log = logging.getLogger("cp_agent.metering")

# A transaction's collected samples are bounded: a week-long session must not grow RAM or its
# end message without limit.
COLLECT_MAX = 200
# How often a disabled stream (interval 0, or no trustworthy time) looks again.
IDLE_POLL_S = 5.0


# What each measurand needs from the hardware, in the HAL's terms (hal.interfaces.MEASURES):
# the meter's or the EV side's. Current.Offered needs nothing: the station knows its offer.
NEEDS: dict[str, str | None] = {
    "Energy.Active.Import.Register": "energy_import",
    "Energy.Active.Export.Register": "energy_export",
    "Power.Active.Import": "power",
    "Power.Active.Export": "power",
    "Current.Import": "current",
    "Current.Export": "current",
    "Current.Offered": None,
    "Voltage": "voltage",
    "Frequency": "frequency",
    "SoC": "soc",
    "Temperature": "temperature",
    "Power.Reactive.Import": "power_reactive",
    "Power.Reactive.Export": "power_reactive",
    "Power.Factor": "power_factor",
}
assert set(NEEDS) == set(MEASURANDS)


def evse_measures(hw: EvseHardware) -> frozenset[str]:
    """What one EVSE's hardware measures: its meter's and its EV side's."""
    return frozenset(hw.meter.measures) | frozenset(hw.ev.measures)


def supported_measurands(hardware: Iterable[EvseHardware]) -> tuple[str, ...]:
    """The measurands every one of these EVSEs can give (the vocabulary when there are none).

    A measurand list applies to every EVSE, so a measurand one of them can never give is not
    supported by the station (1.6 3.16.4: refused at ChangeConfiguration).
    """
    found = [evse_measures(hw) for hw in hardware]
    if not found:
        return MEASURANDS
    common = frozenset.intersection(*found)
    return tuple(m for m in MEASURANDS if NEEDS[m] is None or NEEDS[m] in common)


@dataclass(frozen=True, slots=True)
class Sample:
    measurand: str
    value: float
    unit: str | None
    context: str
    phase: str | None = None
    location: str | None = None


def build_samples(reading: MeterReading, measurands: list[str], context: str,
                  offered_a: float | None = None) -> list[Sample]:
    """What the reading holds of ``measurands``; those it lacks are left out.

    Leaving out is right for a value the hardware gives only sometimes (no SoC while no EV
    is plugged or while it does not say, a register that answered NaN): the message still
    goes, with what there is.  A measurand the hardware can never give does not get here:
    the lists refuse it (:func:`supported_measurands`).
    """
    out: list[Sample] = []
    for m in measurands:
        if m == "Energy.Active.Import.Register":
            out.append(Sample(m, reading.energy_import_wh, "Wh", context, location="Outlet"))
        elif m == "Energy.Active.Export.Register":
            out.append(Sample(m, reading.energy_export_wh, "Wh", context, location="Outlet"))
        elif m == "Power.Active.Import":
            out.append(Sample(m, max(0.0, reading.power_w), "W", context, location="Outlet"))
        elif m == "Power.Active.Export":  # the signed power's other half (discharge)
            out.append(Sample(m, max(0.0, -reading.power_w), "W", context, location="Outlet"))
        elif m in ("Current.Import", "Current.Export"):
            # The per-phase currents are magnitudes; the power's sign says which way they flow.
            flowing = (reading.power_w < 0) == (m == "Current.Export")
            for i, amps in enumerate(reading.current_a):
                out.append(Sample(m, abs(amps) if flowing else 0.0, "A", context,
                                  f"L{i + 1}", "Outlet"))
        elif m == "Voltage":
            for i, volts in enumerate(reading.voltage_v):
                out.append(Sample(m, volts, "V", context, f"L{i + 1}-N", "Outlet"))
        elif m == "Current.Offered" and offered_a is not None:
            out.append(Sample(m, offered_a, "A", context, location="Outlet"))
        elif m == "Frequency" and reading.frequency_hz is not None:
            out.append(Sample(m, reading.frequency_hz, "Hz", context))
        elif m == "SoC" and reading.soc_percent is not None:
            out.append(Sample(m, reading.soc_percent, "Percent", context, location="EV"))
        elif m == "Temperature" and reading.temperature_c is not None:
            out.append(Sample(m, reading.temperature_c, "Celsius", context, location="Body"))
        elif m in ("Power.Reactive.Import", "Power.Reactive.Export") \
                and reading.power_reactive_var is not None:
            # Signed in the load convention (positive: import, absorbed): split as P is.
            var = reading.power_reactive_var
            out.append(Sample(m, max(0.0, var if m.endswith("Import") else -var), "var",
                              context, location="Outlet"))
        elif m == "Power.Factor" and reading.power_factor is not None:
            out.append(Sample(m, reading.power_factor, None, context, location="Outlet"))
    return out


@dataclass(frozen=True, slots=True)
class MeterValue:
    """Samples taken at one instant."""

    timestamp: str
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class Stream:
    name: str
    interval: str  # setting holding the interval in seconds (0: off)
    measurands: str  # setting holding the measurand list
    aligned: bool  # on wall-clock boundaries; else periodic from the transaction's start
    collect: bool = False  # kept for the transaction's end message instead of sent now
    idle_ok: bool = True  # aligned streams: also sent while no transaction runs
    context: str = ""  # Sample.Periodic / Sample.Clock unless given

    @property
    def sample_context(self) -> str:
        return self.context or ("Sample.Clock" if self.aligned else "Sample.Periodic")


# (evse_id, transaction or None, meter value, stream) -> None; runs on the event loop.
Sink = Callable[[int, TxRecord | None, MeterValue, Stream], None]


class Metering:
    """Runs the streams of the active version over the station's EVSEs."""

    def __init__(self, evses: dict[int, EvseController], settings: Settings,
                 clock: Clock) -> None:
        self._evses = evses
        self.settings = settings
        self.clock = clock
        self.streams: tuple[Stream, ...] = ()
        self.sink: Sink | None = None
        self._collected: dict[str, list[MeterValue]] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        settings.listeners.append(self._setting_changed)
        settings.add_capability(MEASURAND_CAPABILITY, self.supported)

    def supported(self) -> tuple[str, ...]:
        """The measurands this station can give on every EVSE (the lists' choices)."""
        return supported_measurands(evse.hw for evse in self._evses.values())

    # ------------------------------------------------------------------ configuration

    def use(self, streams: tuple[Stream, ...], sink: Sink) -> None:
        """The active version's streams and where their samples go; restarts the schedule."""
        self.streams, self.sink = streams, sink
        if self._tasks:
            self._restart()

    def _setting_changed(self, name: str, value: object) -> None:
        if any(name in (s.interval, s.measurands) for s in self.streams):
            self._changed.set()

    def start(self) -> None:
        self._restart()

    def _restart(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        loop = asyncio.get_running_loop()
        for stream in self.streams:
            if stream.aligned:
                self._tasks.append(loop.create_task(self._aligned(stream),
                                                    name=f"meter-{stream.name}"))
            else:
                for evse in self._evses.values():
                    self._tasks.append(loop.create_task(
                        self._periodic(stream, evse), name=f"meter-{stream.name}-{evse.id}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # ------------------------------------------------------------------ collected samples

    def measure(self, evse: EvseController, stream_or_measurands: Stream | list[str],
                context: str, stamp: str | None = None) -> MeterValue | None:
        """A meter value of ``evse`` now (its last reading), or None without samples."""
        reading = evse.reading
        if reading is None:
            return None
        measurands = (self.settings[stream_or_measurands.measurands]
                      if isinstance(stream_or_measurands, Stream) else stream_or_measurands)
        if "SoC" in measurands and reading.soc_percent is None:
            soc = evse.hw.ev.soc_percent  # the EV side's, where the meter has none
            if soc is not None:
                reading = replace(reading, soc_percent=soc)
        samples = build_samples(reading, measurands, context, evse.offered_a)
        if not samples:
            return None
        return MeterValue(stamp or self.clock.stamp(), tuple(samples))

    def collect(self, tx: TxRecord, value: MeterValue | None) -> None:
        if value is None:
            return
        bucket = self._collected.setdefault(tx.local_id, [])
        if len(bucket) < COLLECT_MAX:
            bucket.append(value)

    def collected(self, tx: TxRecord) -> list[MeterValue]:
        """Hand over (and forget) what was collected for ``tx``'s end message."""
        return self._collected.pop(tx.local_id, [])

    # ------------------------------------------------------------------ the schedules

    def _emit(self, evse: EvseController, tx: TxRecord | None, stream: Stream,
              stamp: str | None = None) -> None:
        value = self.measure(evse, stream, stream.sample_context, stamp)
        if value is None:
            return
        if stream.collect:
            if tx is not None:
                self.collect(tx, value)
        elif self.sink is not None:
            self.sink(evse.id, tx, value, stream)

    async def _wait(self, seconds: float, wake: asyncio.Event) -> bool:
        """Sleep on the injected clock; True when ``wake`` (or a setting change) cut it short."""
        sleeper = asyncio.ensure_future(self.clock.sleep(max(0.0, seconds)))
        waiters = [asyncio.ensure_future(wake.wait()),
                   asyncio.ensure_future(self._changed.wait())]
        try:
            await asyncio.wait({sleeper, *waiters}, return_when=asyncio.FIRST_COMPLETED)
            return not sleeper.done()
        finally:
            for f in (sleeper, *waiters):
                f.cancel()

    async def _periodic(self, stream: Stream, evse: EvseController) -> None:
        """Samples of each transaction of ``evse``, ``interval`` apart from its start."""
        tx_changed = evse.tx_changed
        while True:
            tx = evse.tx
            if tx is None:
                tx_changed.clear()
                await tx_changed.wait()
                continue
            last = self.clock.monotonic()  # the start of this transaction (or of the stream)
            while evse.tx is tx:
                interval = float(self.settings[stream.interval] or 0)
                tx_changed.clear()
                self._changed.clear()
                if interval <= 0:
                    await self._wait(IDLE_POLL_S, tx_changed)
                    last = self.clock.monotonic()
                    continue
                due = last + interval
                woken = await self._wait(due - self.clock.monotonic(), tx_changed)
                if evse.tx is not tx:
                    break
                if woken and self.clock.monotonic() < due:
                    # A changed interval applies at once: the next sample is the new interval
                    # after the last one, or now if that is already past.
                    new = float(self.settings[stream.interval] or 0)
                    if new > 0 and self.clock.monotonic() >= last + new:
                        last = self.clock.monotonic()
                        self._emit(evse, tx, stream)
                    continue
                # Keep the phase of the transaction's start, unless far behind (a stalled
                # loop, a suspended board): then count from now rather than burst.
                now = self.clock.monotonic()
                last = due if now - due < interval else now
                self._emit(evse, tx, stream)

    async def _aligned(self, stream: Stream) -> None:
        """Work on the wall-clock boundaries (counted from midnight UTC)."""
        never = asyncio.Event()
        while True:
            interval = float(self.settings[stream.interval] or 0)
            self._changed.clear()
            if interval <= 0:
                # Off (the default): only a setting can turn it on, and its listener sets
                # _changed; no poll (a swarm's 10,000 stations would spend a core on them).
                await self._changed.wait()
                continue
            if not self.clock.trustworthy:  # no boundaries without the time
                await self._wait(IDLE_POLL_S, never)
                continue
            now = self.clock.wall()
            nxt = math.floor(now / interval + 1) * interval
            if await self._wait(max(0.05, nxt - now), never):
                continue
            stamp = iso(datetime.fromtimestamp(nxt, UTC))
            for evse in self._evses.values():
                tx = evse.tx
                if tx is None and (stream.collect or not stream.idle_ok):
                    continue
                self._emit(evse, tx, stream, stamp)
