"""Functional blocks: the unit an OCPP version is composed of.

A block is one functional area of one version (1.6 feature profiles such as Core or
LocalAuthListManagement; 2.0.1 blocks such as B Provisioning or C Authorization).  It

- answers the CALLs of its area: methods marked ``@handles("Action")``;
- declares its settings: 1.6 configuration keys / neutral settings (``SETTINGS``, or
  :meth:`Block.settings` when they depend on the station), and for 2.0.1 the device-model
  variables it owns (:meth:`Block.variables`);
- may react to what the core reports (the :class:`agent.core.model.CoreObserver` methods:
  ``status_changed``, ``transaction_started``, ... are called on every block that has them);
- may own outbox actions (``OUTBOX_ACTIONS``) with ``prepare_outbox`` / ``outbox_result`` /
  ``outbox_done`` hooks, called for its own actions only;
- may own messages a CSMS can trigger (``TRIGGERS``: the trigger's requestedMessage name ->
  the name of an ``async def send_x(self, evse_id: int | None) -> None`` method), which the
  TriggerMessage / ExtendedTriggerMessage handlers call after their answer went out
  (:meth:`agent.ocpp.adapter.Adapter.trigger_target`).

Everything shared by the blocks of a version (the connection, the outbox sender, the status
queue, registration, the core) is on the :class:`agent.ocpp.adapter.Adapter` they belong to,
reachable as ``self.adapter``.  A block reads the core through snapshots and acts through the
core's commands; it never takes the core's locks or touches the hardware.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from agent.core.settings import SettingDef

if TYPE_CHECKING:
    from agent.ocpp.adapter import Adapter

Handler = Callable[[dict], Awaitable[dict]]
F = TypeVar("F", bound=Callable[..., Awaitable[dict]])

_ROUTE = "__ocpp_action__"
# (action, method name) of each Block class's @route methods: found once per class, not once
# per adapter (a swarm builds thousands of adapters; inspect.getmembers costs ~0.2 ms a block).
_ROUTES: dict[type, tuple[tuple[str, str], ...]] = {}


def _route_names(cls: type) -> tuple[tuple[str, str], ...]:
    names = _ROUTES.get(cls)
    if names is None:
        names = tuple((action, name) for name, member in inspect.getmembers(cls)
                      if (action := getattr(member, _ROUTE, None)) is not None)
        _ROUTES[cls] = names
    return names


def handles(action: str) -> Callable[[F], F]:
    """Route decorator: the decorated coroutine method answers CALLs of ``action``.

    The routing itself (schema validation, spec-correct errors for unknown actions and
    malformed frames, one task per CALL) is :mod:`agent.link.rpc`'s; this only says which
    method answers which action.
    """

    def mark(fn: F) -> F:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@handles({action!r}) needs an async method, not {fn!r}")
        setattr(fn, _ROUTE, action)
        return fn

    return mark


def fixed_answer(answer: dict) -> Handler:
    """A handler that always gives ``answer`` (requests of features this station lacks)."""

    async def handler(payload: dict) -> dict:
        return dict(answer)

    return handler


class Block:
    """Base of every functional block module's class."""

    SETTINGS: ClassVar[tuple[SettingDef, ...]] = ()
    OUTBOX_ACTIONS: ClassVar[frozenset[str]] = frozenset()
    # requestedMessage name -> method sending it (``async def m(self, evse_id) -> None``).
    TRIGGERS: ClassVar[dict[str, str]] = {}

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.station = adapter.station
        self.settings = adapter.settings
        self.storage = adapter.storage
        self.clock = adapter.clock

    def settings_defs(self) -> tuple[SettingDef, ...]:
        """The settings this block declares (registered in the one settings store)."""
        return self.SETTINGS

    def when_service(self, name: str, callback: Callable[[Any], None]) -> None:
        """``callback(station.<name>)`` once that service exists, without building it: a
        service built on first use (``Station.provide``) calls back when it is built; a
        station without such services (a test's stand-in) calls back now if it has one."""
        when_built = getattr(self.station, "when_built", None)
        if when_built is not None:
            when_built(name, callback)
            return
        service = getattr(self.station, name, None)
        if service is not None:
            callback(service)

    def built_service(self, name: str) -> Any | None:
        """``station.<name>`` if it exists, without building it (None: nobody used it yet),
        for the questions whose answer is "nothing" then; a station without services built
        on first use (a test's stand-in) answers with its attribute."""
        built = getattr(self.station, "built", None)
        if built is not None:
            return built(name)
        return getattr(self.station, name, None)

    def variables(self) -> list[Any]:
        """2.0.1 / 2.1: the device-model variables (VarDef) this block owns."""
        return []

    def routes(self) -> dict[str, Handler]:
        return {action: getattr(self, name) for action, name in _route_names(type(self))}

    def start(self) -> None:
        """Agent start-up (tasks for the agent's lifetime go through ``adapter.spawn``)."""

    def session_started(self) -> None:
        """A connection's registration was accepted (or resumed after a mere reconnect)."""

    def session_ended(self) -> None:
        """The connection dropped."""

    def clock_synced(self, delta: float) -> None:
        """The clock adopted the CSMS time (a boot answer or a Heartbeat), moved by ``delta``
        seconds: timers set on the wall clock re-arm."""
