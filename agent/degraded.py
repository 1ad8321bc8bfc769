"""What `cp-agent run` does when its state database cannot be used at start-up.

Without its journal and outbox the agent cannot promise anything about transactions, so it must
not charge.  Two ways to be safe were possible: exit non-zero and let systemd restart us, or stay
up without charging.  Exiting is silent where it matters: the unit hits its start limit within
minutes and stops for good, and the CSMS only sees a station that went offline, with no reason.
So the agent exits only when another cp-agent holds the file (that instance is the one doing the
work; starting a second would fight it for the CSMS connection) and otherwise runs *degraded*:

- the database is replaced by an in-memory one, so nothing is ever claimed durable;
- every EVSE carries a blocking InternalError fault: contactors stay open, remote starts are
  refused, the CSMS sees Faulted with the reason in ``info``, connector 0 too;
- the reason is logged at CRITICAL and shown as the systemd STATUS line;
- the file is tried again every ``CP_AGENT_STORAGE_RETRY_S`` seconds (default 30); once it opens
  (disk space freed, backup job gone, damaged file moved aside) the agent restarts itself and
  runs normally.  A CSMS Reset does the same at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import signal

from agent.config import AgentConfig
from agent.sdnotify import Notifier
from agent.storage import MEMORY, Storage, StorageError
from hal.interfaces import FaultKind

log = logging.getLogger("cp_agent")

EXIT_STORAGE = 3
DEFAULT_RETRY_S = 30.0


def must_exit(error: StorageError) -> bool:
    """True when the right reaction is to exit rather than run degraded."""
    return error.kind == "locked"


def _retry_interval() -> float:
    try:
        value = float(os.environ.get("CP_AGENT_STORAGE_RETRY_S", DEFAULT_RETRY_S))
    except ValueError:
        return DEFAULT_RETRY_S
    return value if value > 0 else DEFAULT_RETRY_S


def reason_text(error: StorageError) -> str:
    """The short form that fits a StatusNotification ``info`` (50 characters)."""
    return f"state database unusable ({error.kind})"


async def _probe(path: str, every: float) -> None:
    """Return once the state file opens (then a normal start will work)."""
    while True:
        await asyncio.sleep(every)
        try:
            Storage(path).close()
        except StorageError as exc:
            log.debug("state database still unusable: %s", exc)
            continue
        return


async def run_degraded(cfg: AgentConfig, error: StorageError, *,
                       notifier: Notifier | None = None) -> str | None:
    """Run the station without charging; returns "Soft" when it should restart normally."""
    from agent.app import Agent  # the composition root imports everything; only now

    notifier = notifier or Notifier()
    reason = reason_text(error)
    status = f"DEGRADED, not charging: {error}"
    notifier.status(status[:400])
    path = cfg.storage.path
    degraded_cfg = copy.deepcopy(cfg)
    degraded_cfg.storage.path = MEMORY
    agent = Agent(degraded_cfg, notifier=notifier)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, agent.request_stop)
    await agent.start()
    for evse in agent.station.evses.values():
        await evse.raise_fault(FaultKind.INTERNAL, reason)
    agent.station.station_faults[FaultKind.INTERNAL] = reason
    agent.station.observer.fault_changed(0, FaultKind.INTERNAL, True, reason)

    async def keep_status() -> None:
        await agent.ready.wait()  # READY=1 carries its own STATUS: put ours back after it
        notifier.status(status[:400])

    async def recover() -> None:
        await _probe(path, _retry_interval())
        log.warning("state database %s opens again: restarting to run normally", path)
        agent.reset_kind = "Soft"
        agent.request_stop()

    tasks = [asyncio.create_task(keep_status(), name="degraded-status"),
             asyncio.create_task(recover(), name="degraded-probe")]
    try:
        await agent.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await agent.stop()
    return agent.reset_kind
