"""2.1 block N, periodic event streams (N11-N15): frequent monitor values over SEND.

A CSMS that wants a variable's value often (a voltage every second, say) sets a Periodic or
PeriodicClockAligned monitor with ``periodicEventStream`` parameters (SetVariableMonitoring,
routed here by :class:`agent.ocpp.v21.monitoring.Monitoring21`).  The station then

- opens a stream for that monitor: OpenPeriodicEventStream (a CALL) with the stream's id,
  the monitor's id and the parameters;
- once the CSMS accepted it, samples the variable every monitor ``value`` seconds (Periodic:
  counted from the stream's start; PeriodicClockAligned: on multiples of ``value`` of the
  wall clock) and sends what it collected as NotifyPeriodicEventStream, an unconfirmed SEND,
  when ``params.values`` samples are together or ``params.interval`` seconds have passed,
  whichever comes first (neither set: every sample at once).  ``basetime`` is the first
  sample's time, each element's ``t`` its offset from it in seconds; a batch longer than
  ``values`` (after an adjustment) or :data:`ITEMS_PER_MESSAGE` goes out in parts whose
  ``pending`` counts what still follows;
- if the CSMS rejects the stream (or answers the open with a CALLERROR), reports the monitor
  the ordinary way, a NotifyEvent (trigger Periodic) per sample;
- answers AdjustPeriodicEventStream (new interval / values from now on) and
  GetPeriodicEventStream (the streams the CSMS accepted);
- closes the stream (ClosePeriodicEventStream) when its monitor goes: ClearVariableMonitoring,
  or a SetVariableMonitoring replacing it (the new definition gets a new stream).  The CSMS has
  no message to close a stream; it clears the monitor.

Offline nothing is sampled and nothing is kept: a SEND is never queued (2.1 part 4, 4.2.4), so
the samples of a connection that drops before their batch went out are dropped with it.  The
streams themselves survive: after a mere reconnect (no new BootNotification) an accepted
stream carries on with its id; a stream whose open was not answered is opened again; after a
new registration (a restart, a changed BootNotification) every stream is offered again, since
a CSMS that saw the station boot may have forgotten it.  The monitors and their streams are
kept in the state file (``v21.event_streams``); a ClosePeriodicEventStream that could not be
delivered goes at the next connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.clock import iso, parse_iso
from agent.link.rpc import CallErrorReceived, CallFailed, CallTimeout, ConnectionLost
from agent.ocpp.blocks import handles
from agent.ocpp.v201.device_model import VariableBlock

log = logging.getLogger("cp_agent.v21.streams")

STATE_KEY = "v21.event_streams"
PERIODIC_TYPES = ("Periodic", "PeriodicClockAligned")
MIN_SAMPLE_S = 0.1  # the shortest monitor value (seconds between samples) accepted
ITEMS_PER_MESSAGE = 200  # data elements in one NotifyPeriodicEventStream
MAX_BUFFERED = 10_000  # a batch this long goes out whatever interval / values say
VALUE_CHARS = 2500  # StreamDataElementType.v maxLength
OPEN_RETRY_S = 60.0  # an OpenPeriodicEventStream left unanswered is sent again after this


def _comp_key(component: dict) -> tuple:
    evse = component.get("evse") or {}
    return (component["name"], component.get("instance"), evse.get("id"),
            evse.get("connectorId"))


def _var_key(variable: dict) -> tuple:
    return (variable["name"], variable.get("instance"))


@dataclass
class StreamMonitor:
    """A monitor reporting through a periodic event stream, and the stream's state."""

    id: int  # the variable monitor's id
    component: dict
    variable: dict
    type: str  # Periodic / PeriodicClockAligned
    value: float  # seconds between samples
    severity: int
    transaction: bool  # sample only while a transaction runs on the component's EVSE
    stream_id: int
    interval: int = 0  # params.interval: seconds after which the collected data is sent
    values: int = 0  # params.values: samples sent together
    # Not persisted: "opening" until the CSMS answered OpenPeriodicEventStream, then "open"
    # (Accepted) or "rejected" (reported with NotifyEvent instead).
    state: str = field(default="opening", compare=False)
    opened_boot: int | None = field(default=None, compare=False)  # adapter.boots then
    retired: bool = field(default=False, compare=False)
    calling: bool = field(default=False, compare=False)  # the open CALL is in flight

    def params(self) -> dict:
        out: dict[str, int] = {}
        if self.interval:
            out["interval"] = self.interval
        if self.values:
            out["values"] = self.values
        return out

    def constant(self) -> dict:
        """ConstantStreamDataType: what OpenPeriodicEventStream / GetPeriodicEventStream say."""
        return {"id": self.stream_id, "variableMonitoringId": self.id, "params": self.params()}

    def stored(self) -> dict:
        data = asdict(self)
        for transient in ("state", "opened_boot", "retired", "calling"):
            data.pop(transient)
        return data


class EventStreams(VariableBlock):
    """The stream monitors and their streams (see the module docstring)."""

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self._monitors: dict[int, StreamMonitor] = {}
        self._closing: list[int] = []  # stream ids whose ClosePeriodicEventStream is owed
        self._next_monitor = 1
        self._next_stream = 1
        self._runners: dict[int, asyncio.Task] = {}  # stream id -> its session task
        self._wake: dict[int, asyncio.Event] = {}  # stream id -> set on adjust / clear
        #: stream id -> when (monotonic) its runner wakes next: the next sample or send; tests
        #: step the fake clock once the runner has dealt with the present instant.
        self.next_wake: dict[int, float] = {}
        self._close_lock = asyncio.Lock()
        #: where a new monitor's id comes from (Monitoring21: one id space with the other
        #: monitors); None: this block's own counter.
        self.new_monitor_id: Callable[[], int] | None = None
        self._load()

    # ------------------------------------------------------------------ persistence

    def _load(self) -> None:
        text = self.storage.get_setting(STATE_KEY)
        if not text:
            return
        try:
            doc = json.loads(text)
            monitors = [StreamMonitor(**m) for m in doc.get("monitors", [])]
            closing = [int(i) for i in doc.get("closing", [])]
            next_monitor = int(doc.get("next_monitor", 1))
            next_stream = int(doc.get("next_stream", 1))
        except (ValueError, TypeError, KeyError) as exc:
            log.error("stored periodic event streams unreadable (%s); starting without them",
                      exc)
            return
        self._monitors = {m.id: m for m in monitors}
        self._closing = closing
        self._next_monitor, self._next_stream = next_monitor, next_stream

    def _save(self) -> None:
        doc = {"next_monitor": self._next_monitor, "next_stream": self._next_stream,
               "monitors": [m.stored() for m in self._monitors.values()],
               "closing": self._closing}
        self.storage.set_setting(STATE_KEY, json.dumps(doc, separators=(",", ":")))

    # ------------------------------------------------------------------ monitors (Monitoring21)

    def claims(self, data: dict) -> bool:
        """Whether this SetMonitoringData is a stream monitor's (new, or replacing one)."""
        return "periodicEventStream" in data or data.get("id") in self._monitors

    def has_monitor(self, monitor_id: int) -> bool:
        return monitor_id in self._monitors

    def monitor(self, monitor_id: int) -> StreamMonitor | None:
        return self._monitors.get(monitor_id)

    def monitors(self) -> list[StreamMonitor]:
        return list(self._monitors.values())

    def max_streams(self) -> int:
        return self.dm.integer("MonitoringCtrlr", "MaxPeriodicEventStreams")

    def set_monitor(self, data: dict) -> dict:
        """One SetMonitoringResult for a stream monitor (N11); opens its stream after the
        answer went out."""
        result: dict[str, Any] = {"type": data["type"], "severity": data["severity"],
                                  "component": data["component"], "variable": data["variable"]}

        def refuse(status: str, reason: str, info: str) -> dict:
            result["status"] = status
            result["statusInfo"] = {"reasonCode": reason, "additionalInfo": info[:1024]}
            return result

        replacing = data.get("id")
        if replacing is not None and replacing not in self._monitors:
            return refuse("Rejected", "UnknownMonitorId",
                          f"no monitor {replacing} reports through a periodic event stream")
        if "periodicEventStream" not in data:
            return refuse("UnsupportedMonitorType", "NoStream",
                          "this station reports monitors only through periodic event streams")
        if data["type"] not in PERIODIC_TYPES:
            return refuse("UnsupportedMonitorType", "NotPeriodic",
                          "a periodic event stream needs a Periodic or PeriodicClockAligned "
                          "monitor")
        found = self.dm.get_variable({"component": data["component"],
                                      "variable": data["variable"]})
        if found["attributeStatus"] in ("UnknownComponent", "UnknownVariable"):
            result["status"] = found["attributeStatus"]
            return result
        if found["attributeStatus"] != "Accepted":
            return refuse("Rejected", "NotReadable",
                          "the variable has no readable Actual value to stream")
        value = float(data["value"])
        if not math.isfinite(value) or value < MIN_SAMPLE_S:
            return refuse("Rejected", "InvalidValue",
                          f"value is the seconds between samples: at least {MIN_SAMPLE_S:g}")
        key = (_comp_key(data["component"]), _var_key(data["variable"]), data["type"],
               data["severity"])
        for m in self._monitors.values():
            if m.id != replacing and key == (_comp_key(m.component), _var_key(m.variable),
                                             m.type, m.severity):
                result["status"] = "Duplicate"
                result["statusInfo"] = {"reasonCode": "Duplicate",
                                        "additionalInfo": f"monitor {m.id} is the same"}
                return result
        if replacing is None and len(self._monitors) >= self.max_streams():
            return refuse("Rejected", "MaxStreams",
                          f"at most {self.max_streams()} periodic event streams "
                          "(MonitoringCtrlr.MaxPeriodicEventStreams)")
        params = data["periodicEventStream"]
        if replacing is None and self.new_monitor_id is not None:
            monitor_id = self.new_monitor_id()
        elif replacing is None:
            monitor_id = self._next_monitor
            self._next_monitor += 1
        else:
            monitor_id = replacing
            self._retire(self._monitors.pop(replacing))
        monitor = StreamMonitor(
            id=monitor_id, component=data["component"], variable=data["variable"],
            type=data["type"], value=value, severity=data["severity"],
            transaction=bool(data.get("transaction", False)), stream_id=self._next_stream,
            interval=int(params.get("interval", 0)), values=int(params.get("values", 0)))
        self._next_stream += 1
        self._monitors[monitor_id] = monitor
        self._save()
        if self.adapter.online:
            self._start_runner(monitor, after_answer=True)
        result["status"] = "Accepted"
        result["id"] = monitor_id
        return result

    def clear_monitor(self, monitor_id: int) -> None:
        """The CSMS cleared the monitor (N06): its stream is closed."""
        monitor = self._monitors.pop(monitor_id)
        self._retire(monitor)
        self._save()

    def _retire(self, monitor: StreamMonitor) -> None:
        monitor.retired = True
        self._wake.pop(monitor.stream_id, asyncio.Event()).set()
        self.next_wake.pop(monitor.stream_id, None)
        task = self._runners.pop(monitor.stream_id, None)
        if monitor.calling:
            return  # the open is in flight: its runner closes the stream if it was accepted
        if task is not None:
            task.cancel()
        if monitor.state == "open":
            self._owe_close(monitor.stream_id)

    def _owe_close(self, stream_id: int) -> None:
        self._closing.append(stream_id)
        self._save()
        if self.adapter.online:
            self.adapter.spawn(self._send_closes(after_answer=True),
                               f"2.1-close-stream-{stream_id}", session=True)

    # ------------------------------------------------------------------ CSMS requests

    @handles("AdjustPeriodicEventStream")
    async def adjust_periodic_event_stream(self, p: dict) -> dict:
        """N14: new interval / values for an open stream, from now on."""
        monitor = next((m for m in self._monitors.values()
                        if m.stream_id == p["id"] and m.state == "open"), None)
        if monitor is None:
            return {"status": "Rejected", "statusInfo": {
                "reasonCode": "UnknownStream",
                "additionalInfo": f"no open periodic event stream {p['id']}"}}
        monitor.interval = int(p["params"].get("interval", 0))
        monitor.values = int(p["params"].get("values", 0))
        self._save()
        wake = self._wake.get(monitor.stream_id)
        if wake is not None:
            wake.set()
        return {"status": "Accepted"}

    @handles("GetPeriodicEventStream")
    async def get_periodic_event_stream(self, p: dict) -> dict:
        """N12: the streams the CSMS accepted (none: the list is left out, minItems 1)."""
        open_streams = [m.constant() for m in self._monitors.values() if m.state == "open"]
        return {"constantStreamData": open_streams} if open_streams else {}

    # ------------------------------------------------------------------ connection

    def session_started(self) -> None:
        if self._closing:
            self.adapter.spawn(self._send_closes(after_answer=False), "2.1-close-streams",
                               session=True)
        for monitor in self._monitors.values():
            self._start_runner(monitor, after_answer=False)

    def session_ended(self) -> None:
        # The session's tasks (the runners) are cancelled by the adapter; what they had
        # collected is dropped with them.
        self._runners.clear()
        self._wake.clear()
        self.next_wake.clear()

    def _start_runner(self, monitor: StreamMonitor, *, after_answer: bool) -> None:
        if monitor.stream_id in self._runners:
            return
        wake = self._wake.setdefault(monitor.stream_id, asyncio.Event())
        self._runners[monitor.stream_id] = self.adapter.spawn(
            self._run(monitor, wake, after_answer), f"2.1-stream-{monitor.stream_id}",
            session=True)

    async def _send_closes(self, *, after_answer: bool) -> None:
        if after_answer:
            await self.adapter.after_answer()
        async with self._close_lock:
            for stream_id in list(self._closing):
                try:
                    await self.adapter.call("ClosePeriodicEventStream", {"id": stream_id})
                except (CallTimeout, ConnectionLost) as exc:
                    log.info("ClosePeriodicEventStream %s not delivered (%s); next connection",
                             stream_id, exc)
                    return
                except CallFailed as exc:
                    log.warning("CSMS refused ClosePeriodicEventStream %s: %s", stream_id, exc)
                if stream_id in self._closing:
                    self._closing.remove(stream_id)
                    self._save()

    # ------------------------------------------------------------------ one stream

    async def _run(self, monitor: StreamMonitor, wake: asyncio.Event,
                   after_answer: bool) -> None:
        if after_answer:
            await self.adapter.after_answer()
        if self._closing:
            await self._send_closes(after_answer=False)  # a replaced stream closes first
        if monitor.state == "opening" or monitor.opened_boot != self.adapter.boots:
            while not await self._open(monitor):
                await self.clock.sleep(OPEN_RETRY_S)  # a lost connection cancels us
                if monitor.retired:
                    return
        if monitor.retired:
            return
        await self._stream(monitor, wake)

    async def _open(self, monitor: StreamMonitor) -> bool:
        """OpenPeriodicEventStream; False when unanswered (to be tried again)."""
        monitor.calling = True
        try:
            res = await self.adapter.call("OpenPeriodicEventStream",
                                          {"constantStreamData": monitor.constant()})
        except (CallTimeout, ConnectionLost) as exc:
            log.info("OpenPeriodicEventStream %s not answered (%s)", monitor.stream_id, exc)
            monitor.state = "opening"
            return False
        except CallErrorReceived as exc:
            log.warning("CSMS answered OpenPeriodicEventStream %s with %s; monitor %s "
                        "reports with NotifyEvent", monitor.stream_id, exc, monitor.id)
            monitor.state = "rejected"
        except CallFailed as exc:  # an unusable answer
            log.warning("OpenPeriodicEventStream %s failed (%s); monitor %s reports with "
                        "NotifyEvent", monitor.stream_id, exc, monitor.id)
            monitor.state = "rejected"
        else:
            monitor.state = "open" if res.get("status") == "Accepted" else "rejected"
            if monitor.state == "rejected":
                log.info("CSMS rejected periodic event stream %s (%s); monitor %s reports "
                         "with NotifyEvent", monitor.stream_id, res.get("statusInfo"),
                         monitor.id)
        finally:
            monitor.calling = False
        monitor.opened_boot = self.adapter.boots
        if monitor.retired and monitor.state == "open":
            self._owe_close(monitor.stream_id)  # cleared while the open was in flight
        return True

    def _first_sample(self, monitor: StreamMonitor) -> float:
        now = self.clock.monotonic()
        if monitor.type == "PeriodicClockAligned":
            delay = monitor.value - math.fmod(self.clock.wall(), monitor.value)
            return now + (delay if delay > 1e-6 else monitor.value)
        return now + monitor.value

    def _next_sample(self, monitor: StreamMonitor, due: float) -> float:
        if monitor.type == "PeriodicClockAligned":
            return self._first_sample(monitor)
        now = self.clock.monotonic()
        due += monitor.value
        while due <= now:  # fell behind (a slow CALL): skip what cannot be sampled any more
            due += monitor.value
        return due

    def _active(self, monitor: StreamMonitor) -> bool:
        if not self.adapter.online:
            return False
        if not monitor.transaction:
            return True
        evse_id = (monitor.component.get("evse") or {}).get("id")
        if evse_id is None:
            return self.station.any_transaction
        evse = self.station.evses.get(evse_id)
        return evse is not None and evse.snapshot().tx is not None

    def _sample(self, monitor: StreamMonitor) -> str | None:
        found = self.dm.get_variable({"component": monitor.component,
                                      "variable": monitor.variable})
        if found["attributeStatus"] != "Accepted":
            return None
        return str(found.get("attributeValue", ""))[:VALUE_CHARS]

    async def _stream(self, monitor: StreamMonitor, wake: asyncio.Event) -> None:
        """Sample at the monitor's cadence; send by count / interval (see module docstring)."""
        buffer: list[tuple[float, str]] = []  # (wall time, value)
        next_sample = self._first_sample(monitor)
        flush_at = self.clock.monotonic() + monitor.interval if monitor.interval else None
        while not monitor.retired:
            due = next_sample if flush_at is None else min(next_sample, flush_at)
            self.next_wake[monitor.stream_id] = due
            await self.adapter.sleep_or(max(0.0, due - self.clock.monotonic()), wake)
            if monitor.retired:
                return
            now = self.clock.monotonic()
            if wake.is_set():  # adjusted: the new interval counts from now
                wake.clear()
                flush_at = now + monitor.interval if monitor.interval else None
            if now >= next_sample - 1e-9:
                next_sample = self._next_sample(monitor, next_sample)
                value = self._sample(monitor) if self._active(monitor) else None
                if value is not None:
                    if monitor.state == "open":
                        buffer.append((self.clock.wall(), value))
                    else:
                        self._report_as_event(monitor, value)
            timed_out = flush_at is not None and now >= flush_at - 1e-9
            if buffer and (timed_out or len(buffer) >= MAX_BUFFERED
                           or (monitor.values and len(buffer) >= monitor.values)
                           or (not monitor.values and not monitor.interval)):
                batch, buffer = buffer, []
                await self._send(monitor, batch)
                flush_at = (self.clock.monotonic() + monitor.interval if monitor.interval
                            else None)
            elif timed_out:
                flush_at = now + monitor.interval if monitor.interval else None

    async def _send(self, monitor: StreamMonitor, batch: list[tuple[float, str]]) -> None:
        """NotifyPeriodicEventStream SENDs for ``batch``; dropped when offline (4.2.4)."""
        remaining = len(batch)
        size = min(ITEMS_PER_MESSAGE, monitor.values or ITEMS_PER_MESSAGE)
        for start in range(0, len(batch), size):
            part = batch[start:start + size]
            remaining -= len(part)
            basetime = iso(datetime.fromtimestamp(part[0][0], UTC))
            base = parse_iso(basetime).timestamp()
            payload = {"id": monitor.stream_id, "pending": remaining, "basetime": basetime,
                       "data": [{"t": round(max(0.0, wall - base), 3), "v": value}
                                for wall, value in part]}
            if not await self.adapter.send_unconfirmed("NotifyPeriodicEventStream", payload):
                log.debug("stream %s: %d samples dropped (offline)", monitor.stream_id,
                          remaining + len(part))
                return

    def _report_as_event(self, monitor: StreamMonitor, value: str) -> None:
        """A rejected stream's monitor reports the ordinary way: NotifyEvent, trigger
        Periodic (sent once if online, never queued)."""
        from agent.ocpp.v21.monitoring import Monitoring21

        payload = self.adapter.block(Monitoring21).periodic_event(monitor, value)
        self.adapter.spawn(self.adapter.send_quiet("NotifyEvent", payload),
                           f"2.1-monitor-{monitor.id}-event", session=True)


__all__ = ["EventStreams", "StreamMonitor"]
