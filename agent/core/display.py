"""What the driver sees on the station's display, for any OCPP version.

A public station has to tell the person in front of it what is going on and what it costs:
"present your card", "plug in", energy and power while charging, the running cost, the total
after the session, and why it is out of order. :class:`DisplayService` composes that from the
core's snapshots, the costs the CSMS sent (:mod:`agent.core.cost`) and the messages a CSMS
configured for the display (:mod:`agent.core.display_messages`, 2.0.1 SetDisplayMessage), and
writes it to the HAL's :class:`hal.interfaces.Display`.

What is shown follows the messages' priorities (2.0.1 MessagePriorityEnumType): an
AlwaysFront message is shown alone, regardless of everything else (the newest one, when there
are several); InFront messages are shown in front of the normal cycle, cycling among
themselves; NormalCycle messages take turns with the station's own pages. A message may be
bound to a station state (Charging, Faulted, Idle, Unavailable), a time window and a
transaction (it goes when the transaction ends). A text longer than the screen becomes
several pages, shown in turn (``cycle_s`` each).

The screen is redrawn when what it should show changed, not at every meter poll: the content
is recomposed at every change the core reports and once a ``tick_s``, and written only when
it differs from what is on the glass, at most once a ``min_redraw_s``. Texts are in the
driver's language when the CSMS named one (2.0.1 idTokenInfo language1 / language2) and the
station has it, else in the station's default language.

The costs and the message board are built on first use (a CSMS speaking of a tariff or a
cost, of a display message; or a start-up finding some in the state file): a station that
never gets either draws its own pages without loading them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.clock import Clock, sleep_or
from agent.core.model import ConnectorStatus, EvseSnapshot
from agent.core.service_settings import (
    COST_FALLBACK,
    DISPLAY_LANGUAGE,
    MESSAGE_CAPACITY,
    SHOWN_FORMATS,
    TARIFF_FALLBACK,
    cost_enabled,
    cost_setting,
    primary,
    tariff_enabled,
)
from agent.core.settings import Settings
from agent.storage import Storage, StorageError
from hal.interfaces import Display, FaultKind

if TYPE_CHECKING:  # both built on first use: a screen without CSMS messages or costs
    from agent.core.cost import Costs, TxCost  # never loads them
    from agent.core.display_messages import DisplayMessage, MessageBoard
    from agent.core.station import Station

log = logging.getLogger("cp_agent.display")

# How long the total of a finished session stays after the EV left, and how long the station
# waits for the final cost before it shows the fallback text instead.
FINISHED_SHOW_S = 120.0
RETRY_MIN_S = 2.0  # a failing display: first retry after this, doubling
RETRY_MAX_S = 60.0
FINAL_COST_WAIT_S = 15.0

# The station's own words, per language (RFC 5646 primary subtag).
TEXTS: dict[str, dict[str, str]] = {
    "en": {"available": "Available", "present_card": "Present your card",
           "reader_down": "Card reader faulty", "authorized": "Authorized",
           "plug_in": "Plug in the cable", "waiting_ev": "Waiting for the vehicle",
           "charging": "Charging", "paused": "Charging paused", "finished": "Finished",
           "unplug": "Please unplug", "cost": "Cost", "total": "Total",
           "total_follows": "Total follows", "out_of_order": "Out of order",
           "unavailable": "Unavailable", "out_of_service": "Out of service"},
    "de": {"available": "Frei", "present_card": "Karte vorhalten",
           "reader_down": "Kartenleser gestört", "authorized": "Freigegeben",
           "plug_in": "Kabel einstecken", "waiting_ev": "Warte auf Fahrzeug",
           "charging": "Lädt", "paused": "Laden pausiert", "finished": "Beendet",
           "unplug": "Bitte Kabel ziehen", "cost": "Kosten", "total": "Gesamt",
           "total_follows": "Betrag folgt", "out_of_order": "Außer Betrieb",
           "unavailable": "Nicht verfügbar", "out_of_service": "Außer Betrieb"},
    "nl": {"available": "Beschikbaar", "present_card": "Houd uw pas voor de lezer",
           "reader_down": "Paslezer defect", "authorized": "Geautoriseerd",
           "plug_in": "Steek de kabel in", "waiting_ev": "Wacht op het voertuig",
           "charging": "Laden", "paused": "Laden gepauzeerd", "finished": "Klaar",
           "unplug": "Kabel losmaken a.u.b.", "cost": "Kosten", "total": "Totaal",
           "total_follows": "Totaal volgt", "out_of_order": "Buiten gebruik",
           "unavailable": "Niet beschikbaar", "out_of_service": "Buiten gebruik"},
    "fr": {"available": "Disponible", "present_card": "Présentez votre badge",
           "reader_down": "Lecteur en panne", "authorized": "Autorisé",
           "plug_in": "Branchez le câble", "waiting_ev": "Attente du véhicule",
           "charging": "En charge", "paused": "Charge en pause", "finished": "Terminé",
           "unplug": "Débranchez le câble", "cost": "Coût", "total": "Total",
           "total_follows": "Total à suivre", "out_of_order": "Hors service",
           "unavailable": "Indisponible", "out_of_service": "Hors service"},
}
# Why an EVSE is out of order, in words for the driver (English: a technician reads it too).
FAULT_TEXT = {
    FaultKind.METER: "Meter fault", FaultKind.WELDED: "Contactor fault",
    FaultKind.CONTACTOR_FAILED: "Contactor fault", FaultKind.PILOT: "Vehicle signal fault",
    FaultKind.READER: "Card reader fault", FaultKind.LOCK: "Cable lock fault",
    FaultKind.EV_BOARD: "Charger fault", FaultKind.OVER_CURRENT: "Overcurrent",
    FaultKind.OVER_VOLTAGE: "Overvoltage", FaultKind.UNDER_VOLTAGE: "Undervoltage",
    FaultKind.OVER_TEMPERATURE: "Overheated", FaultKind.GROUND_FAILURE: "Earth fault",
    FaultKind.INTERNAL: "Internal error",
}


# ====================================================================== composition


@dataclass
class _Ended:
    """The last finished transaction of an EVSE, for the "finished" page."""

    local_id: str
    energy_wh: float
    at: float  # monotonic time it ended
    token: str | None


def _wrap(text: str, columns: int) -> list[str]:
    out: list[str] = []
    for paragraph in text.replace("\r", "").split("\n"):
        out += textwrap.wrap(paragraph, columns, break_long_words=True,
                             break_on_hyphens=False) or ([""] if out else [])
    return out


def _pages(lines: list[str], rows: int) -> list[list[str]]:
    lines = [line for line in lines if line is not None]
    if not lines:
        return [[]]
    return [lines[i:i + rows] for i in range(0, len(lines), rows)]


def _energy_line(energy_wh: float | None, power_w: float | None, columns: int) -> str:
    kwh = f"{(energy_wh or 0.0) / 1000:.2f}"
    if power_w is None:
        return f"{kwh} kWh"
    kw = f"{max(0.0, power_w) / 1000:.1f}"
    for text in (f"{kwh} kWh  {kw} kW", f"{kwh} kWh {kw} kW", f"{kwh}kWh {kw}kW"):
        if len(text) <= columns:
            return text
    return f"{kwh}kWh"


class DisplayService:
    """Composes the screen and keeps the HAL display showing it (redraw on change)."""

    def __init__(self, station: Station, screen: Display | None, clock: Clock, *,
                 settings: Settings, storage: Storage,
                 cycle_s: float = 5.0, tick_s: float = 1.0, min_redraw_s: float = 0.25,
                 capacity: int = MESSAGE_CAPACITY) -> None:
        self.station = station
        self.screen = screen
        self.clock = clock
        self.settings = settings
        self._storage = storage
        self._capacity = capacity
        # The CSMS's messages (agent/core/display_messages.py), built by the first request
        # about them or by start() when the state file holds one: see ``board``.
        self._board: MessageBoard | None = None
        self.cycle_s = cycle_s
        self.tick_s = tick_s
        self.min_redraw_s = min_redraw_s
        self.lines: list[str] = []  # what the screen shows now (as the core sent it)
        self.redraws = 0
        self.failing: str | None = None  # why the last write failed, while it fails
        # A display that does not answer is tried again later and later (it shares its bus
        # with the pilot ADC and the RFID reader: a dead screen must not take their time).
        self._retry_s = 0.0
        self._retry_at = 0.0
        # Whether CSMS messages are shown (2.0.1 DisplayMessageCtrlr.Enabled).
        self.messages_enabled: Callable[[], bool] = lambda: True
        self._ended: dict[int, _Ended] = {}
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The costs (agent/core/cost.py) are the station's "cost" service, built when a CSMS
        # first says something of a tariff or a cost; the screen redraws on each change.
        station.when_built("cost", lambda costs: costs.listeners.append(self.changed))
        for evse in station.evses.values():
            evse.state_listeners.append(lambda _evse: self.changed())
            evse.tx_listeners.append(lambda e=evse: self._tx_changed(e))

    # ------------------------------------------------------------------ on first use

    @property
    def board(self) -> MessageBoard:
        """The CSMS's messages, built (and read from the state file) on first use."""
        if self._board is None:
            from agent.core.display_messages import MessageBoard

            board = MessageBoard(self._storage, self._capacity)
            board.listeners.append(self.changed)
            self._board = board
            self.changed()
        return self._board

    @property
    def capacity(self) -> int:
        """How many messages the board keeps (DisplayMessageCtrlr.DisplayMessages maxLimit)."""
        return self._board.capacity if self._board is not None else self._capacity

    def message_count(self) -> int:
        """How many messages are kept, without building the board (none: 0)."""
        return len(self._board) if self._board is not None else 0

    def _messages_stored(self) -> bool:
        """The start-up check: one row query (an unreadable table counts as stored, so the
        board is built and logs what is wrong)."""
        try:
            return self._storage.display_messages_any()
        except StorageError:
            return True

    @property
    def costs(self) -> Costs | None:
        """The station's costs if a CSMS ever spoke of one (None: no tariff, no cost)."""
        return self.station.built("cost")

    def _cost_of(self, local_id: str | None) -> TxCost | None:
        costs = self.costs
        return costs.of(local_id) if costs is not None else None

    def _driver_info(self, token: str | None) -> tuple[Any, tuple[str, ...]]:
        costs = self.costs
        return costs.driver_info(token) if costs is not None else (None, ())

    # ------------------------------------------------------------------ geometry

    @property
    def columns(self) -> int:
        return self.screen.columns if self.screen is not None else 20

    @property
    def rows(self) -> int:
        return self.screen.rows if self.screen is not None else 4

    # ------------------------------------------------------------------ events

    def changed(self) -> None:
        """Something the screen shows may have changed: recompose soon."""
        self._dirty.set()

    def _tx_changed(self, evse: Any) -> None:
        """A transaction started or ended (called inside the EVSE's step: keep it cheap, and
        never let it raise into the EVSE logic)."""
        try:
            self._record_tx(evse)
        except Exception:  # noqa: BLE001 - the display is never worth an EVSE fault
            log.exception("display: transaction change of EVSE %s not taken", evse.id)
        self.changed()

    def _record_tx(self, evse: Any) -> None:
        s = evse.session
        tx = s.tx if s is not None else None
        if tx is not None and s.ended_reason is None:
            costs = self.costs  # none yet: its builder adopts the running transactions
            if costs is not None:
                costs.started(tx.local_id, evse.id, tx.id_token or None)
            self._ended.pop(evse.id, None)
        elif tx is not None:
            stop = tx.meter_stop_wh if tx.meter_stop_wh is not None else tx.last_meter_wh
            self._ended[evse.id] = _Ended(tx.local_id, max(0.0, stop - tx.meter_start_wh),
                                          self.clock.monotonic(), tx.id_token or None)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        if self.screen is None or self._task is not None:
            return
        if self._board is not None or self._messages_stored():
            self.board.purge(self.clock.now(), self._running())
        self._task = asyncio.get_running_loop().create_task(self._run(), name="display")

    async def stop(self) -> None:
        """Stop redrawing and leave "out of service" on the glass (the station is going)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self._write([self._t(self._language(None))["out_of_service"]], timeout=1.0)

    async def _run(self) -> None:
        last_write = -1e9
        while True:
            await self._sleep_or_dirty(self.tick_s)
            self._dirty.clear()
            wait = last_write + self.min_redraw_s - self.clock.monotonic()
            if wait > 0:
                await self.clock.sleep(wait)
            try:
                if await self.redraw():
                    last_write = self.clock.monotonic()
            except Exception:  # noqa: BLE001 - a display bug never stops the station
                log.exception("display: composing the screen failed")

    async def _sleep_or_dirty(self, seconds: float) -> None:
        if self._dirty.is_set():
            return
        await sleep_or(self.clock, seconds, self._dirty)

    async def redraw(self) -> bool:
        """Write the screen if what it should show changed; whether it was written."""
        lines = self.compose()
        if lines == self.lines and self.failing is None:
            return False
        if self.failing is not None and self.clock.monotonic() < self._retry_at:
            return False
        return await self._write(lines)

    async def _write(self, lines: list[str], timeout: float = 5.0) -> bool:
        if self.screen is None:
            self.lines = lines
            return False
        try:
            async with asyncio.timeout(timeout):
                await self.screen.show(lines)
        except Exception as exc:  # noqa: BLE001 - HalError, a driver bug, a timeout
            text = str(exc) or type(exc).__name__
            if self.failing is None:
                log.warning("display: %s", text)
            self.failing = text
            self._retry_s = min(RETRY_MAX_S, max(RETRY_MIN_S, self._retry_s * 2))
            self._retry_at = self.clock.monotonic() + self._retry_s
            return False
        if self.failing is not None:
            log.info("display: showing again")
        self.failing = None
        self._retry_s = 0.0
        self.lines = lines
        self.redraws += 1
        return True

    def status(self) -> dict[str, Any] | None:
        if self.screen is None:
            return None
        lines = [*self.lines, *[""] * (self.rows - len(self.lines))]
        return {"columns": self.columns, "rows": self.rows, "lines": lines,
                "messages": self.message_count(), "ok": self.failing is None,
                "error": self.failing}

    # ------------------------------------------------------------------ what is shown

    def _running(self) -> set[str]:
        return {e.tx.local_id for e in self.station.evses.values() if e.tx is not None}

    def _station_state(self, snaps: list[EvseSnapshot]) -> str:
        if any(s.tx is not None for s in snaps):
            return "Charging"
        if any(s.blocking_fault is not None for s in snaps):
            return "Faulted"
        if snaps and all(not s.operative for s in snaps):
            return "Unavailable"
        return "Idle"

    def _language(self, snap: EvseSnapshot | None) -> str:
        """The driver's language where the CSMS named one the station has, else the
        station's default."""
        if snap is not None and snap.token is not None:
            cost = self._cost_of(snap.tx_local_id)
            languages = cost.languages if cost is not None and cost.languages else \
                self._driver_info(snap.token)[1]
            for lang in languages:
                if primary(lang) in TEXTS:
                    return str(primary(lang))
        default = primary(str(self.settings.get(DISPLAY_LANGUAGE, "en") or "en"))
        return default if default in TEXTS else "en"

    @staticmethod
    def _t(language: str) -> dict[str, str]:
        return TEXTS.get(language, TEXTS["en"])

    def _preferred_languages(self, snaps: list[EvseSnapshot]) -> list[str]:
        out: list[str] = []
        for snap in snaps:
            if snap.token is not None:
                cost = self._cost_of(snap.tx_local_id)
                langs = cost.languages if cost is not None and cost.languages else \
                    self._driver_info(snap.token)[1]
                out += [p for p in (primary(x) for x in langs) if p]
        default = primary(str(self.settings.get(DISPLAY_LANGUAGE, "en") or "en"))
        return out + ([default] if default else [])

    def _messages(self, snaps: list[EvseSnapshot]) -> list[DisplayMessage]:
        if self._board is None or not self.messages_enabled():
            return []  # no board: no CSMS ever set a message
        now = self.clock.now()
        running = self._running()
        self.board.purge(now, running)
        active = [m for m in self.board.active(now, self._station_state(snaps), running)
                  if m.variants()]
        preferred = self._preferred_languages(snaps)
        if any(m.languages() & set(preferred) for m in active):
            # "The Charging Station selects the correct language": where the CSMS gave a
            # message in a language the driver (or the station) prefers, other-language
            # messages step back; messages without a language are for everyone.
            active = [m for m in active
                      if not m.languages() or m.languages() & set(preferred)]
        return active

    def _message_pages(self, message: DisplayMessage,
                       preferred: list[str] | None = None) -> list[list[str]]:
        text = message.text_for(preferred or [])
        return _pages(_wrap(text, self.columns), self.rows)

    def _tariff_lines(self, cost: TxCost | None, token: str | None) -> list[str]:
        if not tariff_enabled(self.settings):
            return []
        tariff = cost.tariff if cost is not None and cost.tariff is not None else \
            self._driver_info(token)[0]
        if tariff is not None and tariff.format in SHOWN_FORMATS and tariff.text.strip():
            return _wrap(tariff.text, self.columns)
        fallback = str(cost_setting(self.settings, TARIFF_FALLBACK) or "")
        return _wrap(fallback, self.columns) if fallback.strip() else []

    def evse_lines(self, snap: EvseSnapshot) -> list[str]:
        """The station's own page(s) of one EVSE, as lines (before paging)."""
        lang = self._language(snap)
        t = self._t(lang)
        columns = self.columns
        ended = self._ended.get(snap.evse_id)
        cost = self._cost_of(snap.tx_local_id)
        if snap.blocking_fault is not None:
            return [t["out_of_order"], FAULT_TEXT.get(snap.blocking_fault,
                                                      str(snap.blocking_fault))]
        if snap.tx is not None and snap.authorized and not snap.ev_connected:
            # TxStartPoint Authorized: the transaction runs before the cable is in.
            return [t["authorized"], t["plug_in"]] + self._tariff_lines(cost, snap.token)
        if snap.tx is not None:
            if snap.charging_state == "Charging":
                head = t["charging"]
            elif not snap.authorized:
                head = t["present_card"]
            else:
                head = t["paused"]
            lines = [head, _energy_line(snap.energy_wh, snap.power_w, columns)]
            if cost_enabled(self.settings) and cost is not None and cost.total is not None:
                lines.append(f"{t['cost']} {self._format(cost.total)}")
            return lines + self._tariff_lines(cost, snap.token)
        if snap.authorized:
            second = t["waiting_ev"] if snap.ev_connected else t["plug_in"]
            return [t["authorized"], second] + self._tariff_lines(None, snap.token)
        if not snap.operative:
            return [t["unavailable"]]
        if ended is not None and (snap.status == ConnectorStatus.FINISHING or (
                not snap.ev_connected
                and self.clock.monotonic() - ended.at < FINISHED_SHOW_S)):
            return self._finished_lines(ended, snap, t)
        reader_down = FaultKind.READER in self.station.station_faults or \
            FaultKind.READER in snap.faults
        ask = t["reader_down"] if reader_down else t["present_card"]
        head = [ask] if snap.ev_connected else [t["available"], ask]
        return head + self._tariff_lines(None, None)

    def _format(self, amount: Any) -> str:
        costs = self.costs  # a total is known: the costs exist
        return costs.format(amount) if costs is not None else str(amount)

    def _finished_lines(self, ended: _Ended, snap: EvseSnapshot,
                        t: dict[str, str]) -> list[str]:
        lines = [t["finished"], _energy_line(ended.energy_wh, None, self.columns)]
        cost = self._cost_of(ended.local_id)
        if cost_enabled(self.settings):
            if cost is not None and cost.final and cost.total is not None:
                lines.append(f"{t['total']} {self._format(cost.total)}")
            elif self.clock.monotonic() - ended.at < FINAL_COST_WAIT_S:
                lines.append(t["total_follows"])
            elif (fallback := str(cost_setting(self.settings, COST_FALLBACK) or "")).strip():
                # 2.0.1 I05: the cost could not be had at the end (offline, no total sent).
                lines += _wrap(fallback, self.columns)
        if snap.ev_connected:
            lines.append(t["unplug"])
        return lines

    def _station_pages(self, snaps: list[EvseSnapshot]) -> list[list[str]]:
        pages: list[list[str]] = []
        for snap in snaps:
            lines = self.evse_lines(snap)
            if len(snaps) > 1 and lines:  # which EVSE a page is about
                lines = [f"{snap.evse_id}: {lines[0]}", *lines[1:]]
            wrapped: list[str] = []
            for line in lines:
                wrapped += _wrap(line, self.columns) or [""]
            pages += _pages(wrapped, self.rows)
        return pages or [[]]

    def compose(self) -> list[str]:
        """The lines to show now (at most ``rows``, each at most ``columns``)."""
        snaps = self.station.snapshots()
        messages = self._messages(snaps)
        preferred = self._preferred_languages(snaps)
        front = [m for m in messages if m.priority == "AlwaysFront"]
        in_front = [m for m in messages if m.priority == "InFront"]
        if front:
            pages = self._message_pages(max(front, key=lambda m: m.seq), preferred)
        elif in_front:
            pages = [p for m in in_front for p in self._message_pages(m, preferred)]
        else:
            pages = self._station_pages(snaps)
            pages += [p for m in messages if m.priority == "NormalCycle"
                      for p in self._message_pages(m, preferred)]
        index = int(self.clock.monotonic() // self.cycle_s) % len(pages)
        return [line[:self.columns] for line in pages[index][:self.rows]]
