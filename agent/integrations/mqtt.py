"""MQTT bridge for home and depot energy managers: the station's state out, a current limit in.

Energy managers (openHAB, Home Assistant, EVCC, a depot's load controller) speak MQTT, not OCPP.
The bridge publishes what they need on retained topics, so that one that (re)connects sees the
state at once, and accepts one command: a current limit per EVSE, which becomes the limit
source ``mqtt`` of the core.  The core offers the lowest of all its limit sources, capped by the
EVSE maximum, so the energy manager can only lower the offer, never raise it above what the
installation or the CSMS allows.

Topics, under ``<prefix>`` (``mqtt.topic_prefix``, default ``cp-agent/<station id>``)::

    <prefix>/status                  online / offline (the broker's last will: offline)
    <prefix>/link                    connected / disconnected (the OCPP link to the CSMS)
    <prefix>/link/ocpp_version       1.6, 2.0.1 (empty until a CSMS agreed one)
    <prefix>/evse/<n>/state          JSON, see :func:`evse_state`
    <prefix>/evse/<n>/power_w        number; empty: no meter reading
    <prefix>/evse/<n>/energy_wh      number: energy of the running session (0: none)
    <prefix>/evse/<n>/charging       true / false
    <prefix>/evse/<n>/offered_a      number: what the pilot offers the EV now (0: nothing)
    <prefix>/evse/<n>/set/limit_a    written by the energy manager: amps, or empty / none
    <prefix>/set/limit_a             the same limit for every EVSE of the station
    <prefix>/evse/<n>/set/setpoint_w written: signed W for OCPP 2.1 ExternalSetpoint periods
                                     (negative: discharge the EV), or empty / none
    <prefix>/evse/<n>/set/max_charge_w, max_discharge_w
                                     written: W >= 0, the external limits of the 2.1
                                     ExternalSetpoint / ExternalLimits periods, or empty / none
    <prefix>/set/setpoint_w, ...     the same for every EVSE of the station
    <...>/set/<command>/error        retained text naming why the last value was refused

What the bridge reads it reads from the core's snapshots, compared every second (and sent
whenever something changed) plus a full republish every ``publish_interval_s``: polling a
handful of snapshots is cheap, and it leaves the core's one observer slot to the OCPP adapter.

Safety choices (README, "MQTT"):

- A limit that is not renewed within ``limit_timeout_s`` is kept, not dropped: the energy
  manager may be capping the charger to protect a house fuse, and a silent energy manager
  (crashed, network down, broker down) must not leave the car uncapped.  The bridge logs a
  warning and marks the state ``mqtt_limit_stale``.  The fuse-safe maximum belongs in
  ``evses[].max_current_a``, which holds whether or not MQTT works.
- The limit lives in memory: after a restart of the agent the EVSE starts at its maximum until
  the energy manager speaks again.  Publish the limit retained, and the broker hands it back
  the moment the bridge subscribes.
- A payload that is not a non-negative number is refused with a log line and a retained
  ``.../error`` message; it never raises and never changes the limit in force.
- An external setpoint is different: it drives energy rather than restricting it, so one
  not renewed within ``setpoint_timeout_s`` is stale and no longer followed (the core falls
  back to the period's setpoint, else 0 W: :mod:`agent.core.v2x_modes`); the external
  charge / discharge limits restrict, so they are kept like ``limit_a`` (stale: flagged).
  Each is applied by the core only in the OCPP 2.1 external operation modes, and within
  every bound of :mod:`agent.core.v2x` (the EV's and the stage's limits, the profile's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt

from agent.clock import Clock
from agent.config import MqttConfig
from agent.core.model import EvseSnapshot
from agent.core.station import Station

log = logging.getLogger("cp_agent.mqtt")

LIMIT_SOURCE = "mqtt"  # the name of the limit in the core (``limit_source`` in the state)
POLL_S = 1.0  # how often snapshots are compared with what was published
KEEPALIVE_S = 30  # a half-open connection to the broker is noticed within 1.5 x this
OPERATION_TIMEOUT_S = 10.0  # connect, subscribe, publish (QoS 1: until the broker's PUBACK)
STOP_TIMEOUT_S = 5.0  # a clean stop's last publications (final state, offline)
ERROR_PAYLOAD_CHARS = 40  # how much of a refused payload an error message quotes

LinkState = Callable[[], tuple[str, str | None]]  # (link state, agreed OCPP version)


class LimitError(ValueError):
    """A payload on a limit topic that cannot be a limit; the message says why."""


# The command topics under <prefix>/evse/<n>/set/ and <prefix>/set/.
LIMIT_A = "limit_a"
SETPOINT_W = "setpoint_w"
MAX_CHARGE_W = "max_charge_w"
MAX_DISCHARGE_W = "max_discharge_w"
COMMANDS = (LIMIT_A, SETPOINT_W, MAX_CHARGE_W, MAX_DISCHARGE_W)
MAX_WATTS = 1_000_000.0  # beyond any charger: a typo (kW sent as W * 1000), refused


def parse_watts(payload: bytes, *, signed: bool) -> float | None:
    """Watts from a setpoint (``signed``: negative discharges the EV) or a power limit
    message (>= 0); None clears it (empty payload, ``none``, ``null``).

    Raises :class:`LimitError` naming the problem for anything else.
    """
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise LimitError("the payload is not UTF-8 text; expected a number of watts, "
                         "or an empty payload / none to clear it") from None
    if text == "" or text.lower() in ("none", "null"):
        return None
    shown = text if len(text) <= ERROR_PAYLOAD_CHARS else text[:ERROR_PAYLOAD_CHARS] + "..."
    what = "signed watts (e.g. -3000 discharges the EV at 3 kW)" if signed \
        else "watts >= 0 (e.g. 7400)"
    try:
        watts = float(text)
    except ValueError:
        raise LimitError(f"{shown!r} is not a number; expected {what}, or an empty payload "
                         "/ none to clear it") from None
    if not math.isfinite(watts):
        raise LimitError(f"{shown!r} is not a finite number of watts")
    if not signed and watts < 0:
        raise LimitError(f"{shown!r} is negative; expected {what}")
    if abs(watts) > MAX_WATTS:
        raise LimitError(f"{shown!r} is beyond {MAX_WATTS:.0f} W; expected {what}")
    return watts


def parse_limit(payload: bytes) -> float | None:
    """Amps from a limit message; None clears the limit (empty payload, ``none``, ``null``).

    Raises :class:`LimitError` naming the problem for anything else than a finite number >= 0.
    """
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise LimitError("the payload is not UTF-8 text; expected a number of amps, "
                         "or an empty payload / none to clear the limit") from None
    if text == "" or text.lower() in ("none", "null"):
        return None
    shown = text if len(text) <= ERROR_PAYLOAD_CHARS else text[:ERROR_PAYLOAD_CHARS] + "..."
    try:
        amps = float(text)
    except ValueError:
        raise LimitError(f"{shown!r} is not a number; expected amps (e.g. 16), "
                         "or an empty payload / none to clear the limit") from None
    if not math.isfinite(amps):
        raise LimitError(f"{shown!r} is not a finite number of amps")
    if amps < 0:
        raise LimitError(f"{shown!r} is negative; expected amps >= 0 (below the EVSE minimum, "
                         "usually 6 A, the EV is paused)")
    return amps


def _num(value: float | None, digits: int = 1) -> str:
    """A number as a short text ("16", "3680.5"); empty for unknown."""
    if value is None:
        return ""
    value = round(float(value), digits)
    return str(int(value)) if value.is_integer() else str(value)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


def evse_state(snap: EvseSnapshot, *, mqtt_limit_a: float | None = None,
               mqtt_limit_stale: bool = False,
               external: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON state of one EVSE as published on ``<prefix>/evse/<n>/state``.

    Whether a session is authorized is published, the token UID is not: an energy manager
    needs to know that a car may charge, and a card UID is personal data that would end up in
    every subscriber's history.
    """
    return {
        "evse": snap.evse_id,
        "connector": snap.connector_id,
        "status": snap.status.value,  # 1.6 ChargePointStatus names
        "charging_state": snap.charging_state,  # Idle, EVConnected, Charging, SuspendedEV(SE)
        "charging": snap.charging_state == "Charging",
        "pilot": snap.pilot.value,
        "ev_connected": snap.ev_connected,
        "contactor": "closed" if snap.contactor_closed else "open",
        "power_w": _round(snap.power_w),
        "energy_wh": _round(snap.energy_wh),  # of the running transaction, null: none
        "offered_a": _round(snap.offered_a),
        "limit_a": _round(snap.limit_a),
        "limit_source": snap.limit_source,
        "mqtt_limit_a": _round(mqtt_limit_a),
        "mqtt_limit_stale": mqtt_limit_stale,
        "authorized": snap.authorized,
        "transaction": snap.tx_local_id is not None,
        "operative": snap.operative,
        "faults": [str(f) for f in snap.faults],
        **(external or {}),  # the V2X part, on an EVSE whose power stage takes setpoints
    }


def _consume(task: asyncio.Task[Any]) -> None:
    """Retrieve a finished helper task's exception: it ended the session, or it does not count."""
    if not task.cancelled():
        task.exception()


@dataclass
class _Limit:
    amps: float
    at: float  # monotonic time of the last message that set or renewed it
    stale: bool = False


class MqttBridge:
    """Publishes the station's state to an MQTT broker and takes current limits from it.

    It runs as one task that connects, serves and reconnects with backoff for as long as the
    agent runs; nothing the broker does (absent at start-up, restarted, refusing credentials)
    delays or stops the agent.
    """

    def __init__(self, cfg: MqttConfig, station_id: str, station: Station, *,
                 link_state: LinkState, clock: Clock | None = None,
                 rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.prefix = cfg.prefix(station_id)
        self._station = station
        self._link_state = link_state
        self._clock = clock or Clock()
        self._rng = rng or random.Random()
        self._identifier = f"cp-agent-{station_id}"
        self._limits: dict[int, _Limit] = {}
        self._power_limits: dict[tuple[int, str], _Limit] = {}  # (EVSE, command) -> W
        self._published: dict[str, str] = {}  # topic -> payload the broker has (this session)
        self._clean_errors: set[str] = set()  # error topics known to hold no retained error
        self._poke = asyncio.Event()  # something changed: publish now, not at the next poll
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.connects = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Start the bridge's task and return at once: the broker may well be down."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mqtt")

    async def stop(self) -> None:
        """Publish the final state and "offline" (a clean disconnect sends no last will)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        if self._client is not None:
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await asyncio.shield(task)
            except TimeoutError:
                log.warning("MQTT: no clean goodbye within %.0f s; the broker will publish the "
                            "last will (offline)", STOP_TIMEOUT_S)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def _make_client(self) -> aiomqtt.Client:
        cfg = self.cfg
        tls = ssl.create_default_context(cafile=cfg.ca_file) if cfg.tls else None
        return aiomqtt.Client(
            cfg.host, cfg.port, username=cfg.username, password=cfg.password,
            identifier=self._identifier, tls_context=tls, keepalive=KEEPALIVE_S,
            timeout=OPERATION_TIMEOUT_S, logger=logging.getLogger("cp_agent.mqtt.client"),
            will=aiomqtt.Will(f"{self.prefix}/status", "offline", qos=1, retain=True))

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff, as the OCPP link does (no stampede on a broker)."""
        lo, hi = self.cfg.reconnect.min_backoff_s, self.cfg.reconnect.max_backoff_s
        ceiling = min(hi, lo * (2 ** min(attempt, 30)))
        return lo + self._rng.random() * max(0.0, ceiling - lo)

    async def _run(self) -> None:
        where = f"{self.cfg.host}:{self.cfg.port}"
        attempt = 0
        while not self._stopping.is_set():
            try:
                async with self._make_client() as client:
                    attempt = 0
                    self.connects += 1
                    self._client = client
                    self.connected.set()
                    log.info("MQTT: connected to %s, topics under %s/", where, self.prefix)
                    await self._session(client)
            except asyncio.CancelledError:
                raise
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc) or type(exc).__name__
            except Exception as exc:  # a bug here must not take the agent down
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("MQTT: bridge failed")
            finally:
                was_connected = self._client is not None
                self._client = None
                self.connected.clear()
            if self._stopping.is_set():
                return
            delay = self.backoff(attempt)
            attempt += 1
            log.warning("MQTT: %s %s: %s; retrying in %.1f s",
                        "connection to" if was_connected else "cannot connect to", where,
                        ("lost, " if was_connected else "") + (self.last_error or "?"), delay)
            await self._clock.sleep(delay)

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection: subscribe, announce, then serve until it breaks or we stop."""
        self._published.clear()  # the broker may have lost everything (no persistence)
        # Subscribed before "online": an energy manager that sees online may send a limit.
        await client.subscribe(f"{self.prefix}/evse/+/set/+", qos=1)
        await client.subscribe(f"{self.prefix}/set/+", qos=1)
        await client.publish(f"{self.prefix}/status", "online", qos=1, retain=True)
        await self._publish(client, force=True)
        tasks = [asyncio.create_task(self._listen(client), name="mqtt-listen"),
                 asyncio.create_task(self._publisher(client), name="mqtt-publish"),
                 asyncio.create_task(self._stopping.wait(), name="mqtt-stop")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
                t.add_done_callback(_consume)
            # Bounded: on 3.11 asyncio.wait_for (inside aiomqtt) can swallow a cancel; the
            # loops also end on ``_stopping``, and a straggler dies with the connection.
            await asyncio.wait(tasks, timeout=1.0)
        if self._stopping.is_set():
            await self._publish(client, force=False)
            await client.publish(f"{self.prefix}/status", "offline", qos=1, retain=True)
            log.info("MQTT: final state and offline published")
            return
        for t in done:
            t.result()  # the error that ended the session
        raise aiomqtt.MqttError("session ended")

    # ------------------------------------------------------------------ state out

    def _topics(self) -> dict[str, str]:
        """Every state topic with its payload now, from the core's snapshots."""
        state, version = self._link_state()
        p = self.prefix
        out = {f"{p}/link": "connected" if state == "connected" else "disconnected",
               f"{p}/link/ocpp_version": version or ""}
        for snap in self._station.snapshots():
            limit = self._limits.get(snap.evse_id)
            doc = evse_state(snap, mqtt_limit_a=limit.amps if limit else None,
                             mqtt_limit_stale=bool(limit and limit.stale),
                             external=self._external_state(snap))
            base = f"{p}/evse/{snap.evse_id}"
            out[f"{base}/state"] = json.dumps(doc, sort_keys=True, separators=(",", ":"))
            out[f"{base}/power_w"] = _num(snap.power_w)
            out[f"{base}/energy_wh"] = _num(snap.energy_wh or 0.0)
            out[f"{base}/charging"] = "true" if doc["charging"] else "false"
            out[f"{base}/offered_a"] = _num(snap.offered_a)
        return out

    async def _publish(self, client: aiomqtt.Client, *, force: bool) -> None:
        """Send what changed since the last publication (``force``: everything)."""
        for topic, payload in self._topics().items():
            if force or self._published.get(topic) != payload:
                await client.publish(topic, payload, qos=1, retain=True)
                self._published[topic] = payload

    async def _publisher(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        last_full = loop.time()
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self._poke.wait()
            self._poke.clear()
            self._check_stale()
            force = loop.time() - last_full >= self.cfg.publish_interval_s
            if force:
                last_full = loop.time()
            await self._publish(client, force=force)

    def _external_state(self, snap: EvseSnapshot) -> dict[str, Any] | None:
        """What the energy manager set for the 2.1 external modes and what the stage does."""
        modes = getattr(self._station, "v2x_modes", None)
        stage = getattr(snap, "power_stage", None)
        if modes is None or stage is None:
            return None
        watts, stale = modes.external_setpoint(snap.evse_id)
        plan = modes.plans.get(snap.evse_id)
        out: dict[str, Any] = {
            "operation_mode": plan.mode.value if plan is not None else None,
            "setpoint_w": _round(stage.setpoint_w),  # what the power stage follows now
            "external_setpoint_w": _round(watts), "external_setpoint_stale": stale}
        for command in (MAX_CHARGE_W, MAX_DISCHARGE_W):
            limit = self._power_limits.get((snap.evse_id, command))
            out[f"external_{command}"] = _round(limit.amps) if limit else None
            out[f"external_{command}_stale"] = bool(limit and limit.stale)
        return out

    def _check_stale(self) -> None:
        now = self._clock.monotonic()
        for (evse_id, command), limit in self._power_limits.items():
            if not limit.stale and now - limit.at > self.cfg.limit_timeout_s:
                limit.stale = True
                log.warning("MQTT: EVSE %d: the external %s of %s W was not renewed for "
                            "%.0f s; keeping it (a limit only restricts)", evse_id,
                            command, _num(limit.amps), self.cfg.limit_timeout_s)
        for evse_id, limit in self._limits.items():
            if not limit.stale and now - limit.at > self.cfg.limit_timeout_s:
                limit.stale = True
                log.warning("MQTT: EVSE %d: the limit of %s A was not renewed for %.0f s; "
                            "keeping it (the energy manager may be protecting a fuse). Clear "
                            "it with an empty message on %s/evse/%d/set/limit_a", evse_id,
                            _num(limit.amps), self.cfg.limit_timeout_s, self.prefix, evse_id)

    # ------------------------------------------------------------------ limits in

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if self._stopping.is_set():
                return
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):  # paho hands bytes; be sure
                payload = b"" if payload is None else str(payload).encode()
            await self._on_message(client, message.topic.value, bytes(payload))

    def _targets(self, topic: str) -> tuple[list[int], str, str | None]:
        """The EVSEs and the command a topic addresses, or a reason why it addresses none."""
        evses = sorted(self._station.evses)
        command = topic.rsplit("/", 1)[-1]
        if command not in COMMANDS:
            return [], command, (f"unknown command topic {command!r}; expected one of "
                                 f"{', '.join(COMMANDS)}")
        if topic == f"{self.prefix}/set/{command}":
            found = evses
        else:
            n = topic[len(f"{self.prefix}/evse/"):-len(f"/set/{command}")]
            if not (n.isdigit() and int(n) in self._station.evses):
                return [], command, f"no EVSE {n!r}; this station has EVSEs {evses}"
            found = [int(n)]
        if command != LIMIT_A:
            modes = getattr(self._station, "v2x_modes", None)
            able = [e for e in found if self._station.evses[e].hw.ev.supports_setpoint]
            if modes is None or not able:
                where = "this station" if len(found) > 1 else f"EVSE {found[0]}"
                return [], command, (f"{where} has no power stage that takes setpoints "
                                     "(bidirectional, OCPP 2.1 V2X)")
            found = able
        return found, command, None

    async def _on_message(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        """Apply one command message; a bad one is answered on ``<topic>/error``, never
        raised."""
        error_topic = f"{topic}/error"
        evses, command, problem = self._targets(topic)
        if problem is None and command != LIMIT_A:
            problem = self._on_power(topic, evses, command, payload)
        elif problem is None:
            problem = await self._on_limit(topic, evses, payload)
        if problem is not None:
            log.warning("MQTT: refused the %s on %s: %s",
                        "limit" if command == LIMIT_A else "value", topic, problem)
            self._clean_errors.discard(error_topic)
            await client.publish(error_topic, problem, qos=1, retain=True)
            return
        if error_topic not in self._clean_errors:
            await client.publish(error_topic, b"", qos=1, retain=True)  # drops a retained error
            self._clean_errors.add(error_topic)
        self._poke.set()

    def _on_power(self, topic: str, evses: list[int], command: str,
                  payload: bytes) -> str | None:
        """An external setpoint or power limit (2.1 external modes) to the core; the
        problem, or None when applied."""
        modes = self._station.v2x_modes  # type: ignore[attr-defined]
        try:
            watts = parse_watts(payload, signed=command == SETPOINT_W)
        except LimitError as exc:
            return str(exc)
        try:
            for evse_id in evses:
                if command == SETPOINT_W:
                    modes.set_external_setpoint(evse_id, watts,
                                                valid_s=self.cfg.setpoint_timeout_s)
                    continue
                direction = "charge" if command == MAX_CHARGE_W else "discharge"
                modes.set_external_limit(evse_id, direction, watts)
                if watts is None:
                    self._power_limits.pop((evse_id, command), None)
                else:
                    self._power_limits[(evse_id, command)] = _Limit(watts,
                                                                    self._clock.monotonic())
        except Exception as exc:  # the core refusing must not end the session
            log.exception("MQTT: applying %s failed", command)
            return f"the value could not be applied: {exc}"
        log.info("MQTT: %s: %s", topic, "cleared" if watts is None else f"{_num(watts)} W")
        return None

    async def _on_limit(self, topic: str, evses: list[int], payload: bytes) -> str | None:
        """A current limit (``limit_a``) to the core's limit source; the problem, or None."""
        try:
            amps = parse_limit(payload)
        except LimitError as exc:
            return str(exc)
        try:
            for evse_id in evses:
                await self._station.evses[evse_id].set_limit(LIMIT_SOURCE, amps)
                self._note_limit(evse_id, amps)
                profiles = getattr(self._station, "charging_profiles", None)
                if profiles is not None:  # an energy manager's limit: 2.0.1 K11-K13
                    profiles.set_external(LIMIT_SOURCE, evse_id, amps)
        except Exception as exc:  # the core refusing must not end the session
            log.exception("MQTT: applying the limit from %s failed", topic)
            return f"the limit could not be applied: {exc}"
        log.info("MQTT: %s: limit %s", topic, "cleared" if amps is None else f"{_num(amps)} A")
        return None

    def _note_limit(self, evse_id: int, amps: float | None) -> None:
        if amps is None:
            self._limits.pop(evse_id, None)
            return
        old = self._limits.get(evse_id)
        if old is not None and old.stale:
            log.info("MQTT: EVSE %d: the limit is renewed again", evse_id)
        self._limits[evse_id] = _Limit(amps, self._clock.monotonic())
