"""The control socket's commands (``cp-agent ctl``): what the bench does to a running agent.

``Agent.handle_control`` hands each request here; this module is imported by the first
command, so an agent nobody drives never loads it (docs/performance.md, issue 18).  The
commands drive the mock HAL (plug, ev, tap, fault, ...) or read the agent (status, frames),
and answer with the state the agent settled in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from agent.control_server import Stream
from agent.core.model import Token
from hal.interfaces import FaultKind, PilotState
from hal.mock import EV_SETTINGS, MockHal

if TYPE_CHECKING:
    from agent.app import Agent

# How long a bench command waits for the agent to react before answering with the state.
CONTROL_SETTLE_S = 10.0


def _mock(agent: Agent) -> MockHal:
    if not isinstance(agent.hal, MockHal):
        raise ValueError("this command drives the mock HAL; the agent runs on hardware")
    return agent.hal


def _evse_id(agent: Agent, args: dict) -> int:
    evse = args.get("evse")
    if not isinstance(evse, int) or evse not in agent.station.evses:
        raise ValueError(f"no EVSE {evse!r}; this station has EVSEs "
                         f"{sorted(agent.station.evses)}")
    return evse


def _connector_id(agent: Agent, evse: int, args: dict) -> int:
    """The connector an EV is plugged into (``ctl plug EVSE --connector N``; default 1)."""
    connector = args.get("connector", 1)
    ids = agent.station.evses[evse].connector_ids
    if isinstance(connector, bool) or not isinstance(connector, int) \
            or connector not in ids:
        raise ValueError(f"EVSE {evse} has no connector {connector!r}; its connectors "
                         f"are {sorted(ids)}")
    return connector


async def handle(agent: Agent, request: dict) -> Any:
    """One request (``{"cmd": ..., "args": {...}}``); a ValueError / KeyError is the
    operator's mistake, answered as such by the server."""
    cmd = request.get("cmd")
    args = request.get("args") or {}
    if cmd == "status":
        return agent.status()
    if cmd == "plug":
        evse = _evse_id(agent, args)
        connector = _connector_id(agent, evse, args)
        if args.get("iso15118") and agent.station.iso15118 is None:
            raise ValueError("plug --iso15118 needs hal.iso15118 (enabled: true) on the "
                             "mock HAL")
        _mock(agent).plug(evse, connector=connector)
        if args.get("iso15118"):  # the package's EV simulator talks to the EVSE's SECC
            hlc = agent.station.iso15118.hlc
            bidi = bool(args.get("bidirectional"))
            await hlc.start_ev(evse, evcc_id=str(args.get("evcc_id") or ""),
                               tls=bool(args.get("tls")),
                               cert_install=bool(args.get("cert_install")),
                               bidirectional=bidi,
                               protocol_name="ISO_15118_20_AC" if bidi else "ISO_15118_2",
                               control_mode=str(args.get("control_mode") or "scheduled"))
    elif cmd == "unplug":
        _mock(agent).unplug(_evse_id(agent, args))
    elif cmd == "ev":
        return await _ev(agent, args)
    elif cmd == "setpoint":
        return await _setpoint(agent, args)
    elif cmd == "external":
        return await _external(agent, args)
    elif cmd == "tap":
        return await _tap(agent, args)
    elif cmd == "house-load":
        amps = args.get("amps")
        if not isinstance(amps, int | float) or isinstance(amps, bool):
            raise ValueError("house-load needs amps (a number)")
        _mock(agent).set_house_load(amps)
        if agent.load is not None:  # the offer follows at once, not at the next sample
            await agent.load.step()
    elif cmd in ("grid-frequency", "grid-voltage"):  # V2X frequency modes, DER alarms
        key, name = ("hz", "frequency_hz") if cmd == "grid-frequency" else ("volts",
                                                                          "voltage_v")
        value = args.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{cmd} needs {key} (a number)")
        _mock(agent).set_grid(**{name: float(value)})
    elif cmd == "priority":
        return await _priority(agent, args)
    elif cmd == "frames":
        return _frames(agent, args)
    elif cmd in ("fault", "clear-fault"):
        kind = FaultKind(args.get("kind"))
        evse = args.get("evse")
        if kind != FaultKind.READER:
            evse = _evse_id(agent, args)
        raised = (kind in agent.station.station_faults if kind == FaultKind.READER
                  else kind in agent.station.evses[evse].faults)
        if isinstance(agent.hal, MockHal):
            (agent.hal.inject_fault if cmd == "fault" else agent.hal.clear_fault)(
                evse or 0, kind)
        elif cmd == "clear-fault":
            await agent.station.evses[evse].clear_fault(kind)
        else:
            await agent.station.evses[evse].raise_fault(kind, "raised from ctl")
        if cmd == "clear-fault" and not raised:
            where = "the station" if kind == FaultKind.READER else f"EVSE {evse}"
            raise ValueError(f"no {kind} fault is raised on {where}: nothing to clear")
    else:
        raise ValueError(f"unknown command {cmd!r}")
    return await _settled_status(agent)


async def _priority(agent: Agent, args: dict) -> dict[str, Any]:
    """The EV driver asks at the station for priority charging, or ends it (OCPP 2.1 K22;
    on hardware a button or the station's app would call this).  ``priority`` in the
    answer: Accepted, NoProfile (no PriorityCharging profile can serve it: the driver is
    told it is not possible) or Rejected (no transaction on the EVSE)."""
    evse = _evse_id(agent, args)
    on = args.get("on")
    if not isinstance(on, bool):
        raise ValueError("priority needs on: true (ask for it) or false (end it)")
    result = agent.station.charging_profiles.use_priority(evse, on, by="the EV driver")
    return {**await _settled_status(agent), "priority": result}


async def _ev(agent: Agent, args: dict) -> dict[str, Any]:
    """What the EV does; asking for energy that is not offered is a valid bench step (the
    EV waits in B), answered with a warning."""
    evse = _evse_id(agent, args)
    battery = {k: args[k] for k in EV_SETTINGS if args.get(k) is not None}
    if args.get("state") is None and not battery:
        raise ValueError("ev needs a pilot STATE or an EV setting (--soc, --max-soc, ...)")
    if battery:  # a bidirectional mock EV's battery and limits (hal/mock_v2x.py)
        _mock(agent).set_ev(evse, **battery)
    state = PilotState(args["state"]) if args.get("state") is not None else None
    if state is not None:
        _mock(agent).set_ev_state(evse, state)
    status = await _settled_status(agent)
    controller = agent.station.evses[evse]
    if state is not None and state.wants_energy \
            and controller.offered_a < controller.min_current_a:
        status["warning"] = (f"EVSE {evse} offers no current (no session authorized): "
                             "the EV cannot charge without an offer; tap a card first")
    return status


async def _setpoint(agent: Agent, args: dict) -> dict[str, Any]:
    """A signed power setpoint for the session on an EVSE (``ctl setpoint EVSE W|off``),
    held to every bound (agent/core/v2x.py); the answer says what the stage follows."""
    evse = _evse_id(agent, args)
    watts = args.get("watts")
    if watts is not None and (isinstance(watts, bool) or not isinstance(watts, int | float)):
        raise ValueError("setpoint needs watts (a signed number) or null (off)")
    controller = agent.station.evses[evse]
    if controller.session is None and watts is not None:
        raise ValueError(f"EVSE {evse} has no session: a setpoint belongs to one "
                         "(plug and authorize first)")
    applied = await controller.set_power_setpoint(watts)
    status = await _settled_status(agent)
    snap = controller.snapshot().power_stage
    if watts is not None and applied != watts and snap is not None:
        why = f": {snap.no_discharge}" if watts < 0 and snap.no_discharge else ""
        status["warning"] = (f"EVSE {evse} follows {applied if applied is not None else 0:g}"
                             f" W, not {watts:g} W (held to its bounds{why})")
    return status


async def _external(agent: Agent, args: dict) -> dict[str, Any]:
    """What a local energy manager would send for the 2.1 external operation modes
    (``ctl external EVSE --setpoint W --max-charge-w W --max-discharge-w W --valid-s
    S``), so a bench drives them without a broker; the first use makes the control
    socket the station's external source (ExternalSetpoint / ExternalLimits offered)."""
    evse = _evse_id(agent, args)
    if not agent.station.evses[evse].hw.ev.supports_setpoint:
        raise ValueError(f"EVSE {evse} has no power stage that takes setpoints "
                         "(hal.v2x on the mock HAL)")
    given = [k for k in ("setpoint_w", "max_charge_w", "max_discharge_w") if k in args]
    if not given:
        raise ValueError("external needs a setpoint_w, max_charge_w or max_discharge_w "
                         "(a number of watts, or null to clear it)")
    for key in given:
        w = args[key]
        if w is not None and (isinstance(w, bool) or not isinstance(w, int | float)
                              or w != w or abs(w) > 1_000_000
                              or (key != "setpoint_w" and w < 0)):
            raise ValueError(f"{key} {w!r}: expected " + (
                "signed watts" if key == "setpoint_w" else "watts >= 0") + " or null")
    valid = args.get("valid_s")
    if valid is not None and (isinstance(valid, bool) or not isinstance(valid, int | float)
                              or not 0 < valid <= 86400):
        raise ValueError(f"valid_s {valid!r}: expected seconds in (0, 86400] or null")
    modes = agent.station.v2x_modes
    modes.external_setpoint_source = modes.external_limits = True
    if "setpoint_w" in args:
        modes.set_external_setpoint(evse, args["setpoint_w"], valid_s=valid)
    for key, direction in (("max_charge_w", "charge"), ("max_discharge_w", "discharge")):
        if key in args:
            modes.set_external_limit(evse, direction, args[key])
    with contextlib.suppress(TimeoutError):  # the scheduler plans with the new values
        await agent.station.charging_profiles.evaluated(timeout=CONTROL_SETTLE_S)
    status = await _settled_status(agent)
    watts, stale = modes.external_setpoint(evse)
    plan = modes.plans.get(evse)
    status["external"] = {
        "evse": evse, "setpoint_w": watts, "stale": stale,
        "max_charge_w": modes.external_caps.get(evse, {}).get("charge"),
        "max_discharge_w": modes.external_caps.get(evse, {}).get("discharge"),
        "operation_mode": plan.mode.value if plan is not None else None}
    if plan is None or plan.mode.value not in ("ExternalSetpoint", "ExternalLimits"):
        status["warning"] = (f"EVSE {evse} is in no ExternalSetpoint / ExternalLimits "
                             "period now: the values wait for one")
    return status


async def _tap(agent: Agent, args: dict) -> dict[str, Any]:
    """Present a card and answer what became of it (``tap``) with the state it led to."""
    token = args.get("token")
    if not isinstance(token, str) or not token:
        raise ValueError("tap needs a token")
    evse = args.get("evse")
    if evse is not None:
        _evse_id(agent, args)
    agent.station.authorization.verdicts.pop(token, None)
    if isinstance(agent.hal, MockHal):
        # The card goes the way a real one does: a HAL event, whose handling spawns the
        # authorization; its outcome is what the station recorded for this card.
        agent.station.taps.pop(token, None)
        if not agent.hal.tap(token, evse):
            raise ValueError("the RFID reader is faulted (clear-fault 0 reader)")
        await asyncio.wait_for(agent.station.settled(), CONTROL_SETTLE_S)
        task = agent.station.taps.get(token)
        try:
            result = (await asyncio.wait_for(asyncio.shield(task), CONTROL_SETTLE_S)
                      if task is not None else "ignored")
        except TimeoutError:
            result = "pending"
    else:
        result = await agent.station.present_token(Token(token), evse)
    reason = None
    if result == "rejected":
        verdict = agent.station.authorization.verdicts.get(token)
        reason = (f"{verdict.status} ({verdict.source})"
                  if verdict is not None and not verdict.accepted
                  else "no EVSE could take the session")
    elif result == "ignored":
        reason = "no EVSE can take it"
    status = await _settled_status(agent)
    where = evse if evse is not None else next(
        (e["evse"] for e in status["evses"] if e["token"] == token), None)
    return {**status, "tap": {"token": token, "result": result, "reason": reason,
                              "evse": where}}


def _frames(agent: Agent, args: dict) -> Stream:
    """The message log: the last ``limit`` frames, then (``follow``) every new one."""
    limit = args.get("limit")
    follow = args.get("follow", False)
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError("frames: limit must be a non-negative integer")
    if not isinstance(follow, bool):
        raise ValueError("frames: follow must be true or false")
    # Subscribed in the same step as the copy of the recent ones: none lost, none twice.
    queue = agent.frames.follow() if follow else None
    recent = agent.frames.recent(limit)

    async def frames() -> AsyncIterator[dict[str, Any]]:
        try:
            for frame in recent:
                yield frame.as_dict()
            while queue is not None:
                yield (await queue.get()).as_dict()
        finally:
            if queue is not None:
                agent.frames.leave(queue)

    return Stream(frames(), head={"frames": len(recent), "follow": follow})


async def _settled_status(agent: Agent) -> dict[str, Any]:
    """The state a bench command led to, once the agent reacted (the EV's answer to the
    offer, the contactor, the reported status); ``settled`` says whether it did in time."""
    try:
        await agent.station.quiet(timeout=CONTROL_SETTLE_S)
        settled = True
    except TimeoutError:
        settled = False
    return {**agent.status(), "settled": settled}


__all__ = ["CONTROL_SETTLE_S", "handle"]
