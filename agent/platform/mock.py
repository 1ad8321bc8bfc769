"""The mock installer (default on the mock HAL): a full firmware update with nothing flashed.

Installing records the image's file name without its extension as the new firmware version
(``cp-agent-1.2.3.bin`` -> ``cp-agent-1.2.3``), and the "reboot" restarts the agent as a Reset
does (``cp-agent run`` re-executes itself), so the next BootNotification carries that version.
Any CSMS can so exercise the whole L01 flow (statuses, reboot, Installed, rollback) against a
bench agent.  The previous version is kept until the update is confirmed, for a rollback.

Hold points: with ``CP_AGENT_MOCK_FIRMWARE_HOLD`` naming a directory, the update stops at each
phase ``P`` (``downloaded``, ``verified``, ``installing``, ``rebooting``) for which a file
``P.hold`` exists there: it creates ``P.reached`` and waits until ``P.hold`` is removed.  So a
test (or a demonstration) can cut the power at an exact phase; without the variable nothing
waits.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from agent.platform.installer import Installer, InstallError

log = logging.getLogger("cp_agent.platform")

MAX_VERSION = 50  # firmwareVersion is CiString50 in both versions
HOLD_ENV = "CP_AGENT_MOCK_FIRMWARE_HOLD"
HOLD_POLL_S = 0.05  # how often a held update looks whether it may go on


def version_of(image: Path) -> str:
    return image.stem[:MAX_VERSION]


class MockInstaller(Installer):
    name = "mock"

    def current_version(self) -> str | None:
        return self.state.get("version")

    async def stage(self, image: Path) -> None:
        await super().stage(image)
        if not version_of(image):
            raise InstallError(f"{image.name}: no version in the file name")

    async def install(self, image: Path) -> str | None:
        version = version_of(image)
        self.state.set("previous", self.state.get("version") or "")
        self.state.set("version", version)
        return version

    async def confirm(self) -> None:
        self.state.set("previous", None)

    async def checkpoint(self, phase: str) -> None:
        directory = os.environ.get(HOLD_ENV)
        if not directory:
            return
        hold = Path(directory) / f"{phase}.hold"
        if not hold.exists():
            return
        log.warning("mock installer: update held at %s until %s is removed", phase, hold)
        (Path(directory) / f"{phase}.reached").touch()
        # A file has no event to wait on; the wall clock on purpose (not the agent's time).
        while hold.exists():  # noqa: ASYNC110
            await asyncio.sleep(HOLD_POLL_S)

    async def roll_back(self) -> bool:
        previous = self.state.get("previous")
        if previous is None:
            return False  # nothing installed since the last confirmation
        self.state.set("version", previous or None)
        self.state.set("previous", None)
        return False  # the version is read at the next boot; the agent restarts anyway
