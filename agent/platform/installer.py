"""How a verified firmware image becomes the running firmware: the installer interface.

The firmware service (:mod:`agent.core.firmware`) downloads and verifies; an installer knows
the platform.  Its life cycle for one update:

``stage(image)``    check that the image is something this installer can install (a wheel's
                    name, the file exists and is readable), before anything changes;
``install(image)``  make it the firmware of the next start (write the other slot, build the new
                    venv); an :class:`InstallError` if it did not work (nothing switched);
``reboot()``        start the new firmware (the machine, or only the agent's process);
``confirm()``       after the new firmware reached an accepted BootNotification: keep it;
``roll_back()``     it did not: the previous firmware is the one of the next start (True if a
                    reboot is needed for that to take effect);
``current_version()``  the version running now, for BootNotification (None: the configured
                    ``station.firmware_version``);
``checkpoint(phase)``  the update reached a phase (``downloaded``, ``verified``, ``installing``,
                    ``rebooting``), already persisted: nothing by default; the mock installer
                    can hold the update there (power-cut tests, demonstrations).

Installers keep what they must remember across the reboot in an :class:`InstallerState`
(the agent's state file), never in memory.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("cp_agent.platform")


class InstallError(Exception):
    """Installing failed; the text says why (for the log and the status page).
    ``verification``: the installer's own check of the image failed (a checksum, a bundle
    signature): InstallVerificationFailed rather than InstallationFailed."""

    def __init__(self, text: str, *, verification: bool = False) -> None:
        super().__init__(text)
        self.verification = verification


class KeyValue(Protocol):
    def get_setting(self, key: str) -> str | None: ...
    def set_setting(self, key: str, value: str) -> None: ...
    def delete_setting(self, key: str) -> None: ...


@dataclass
class InstallerState:
    """Durable text values of one installer (``platform.<name>.<key>`` in the state file)."""

    store: KeyValue
    prefix: str

    def get(self, key: str) -> str | None:
        return self.store.get_setting(f"{self.prefix}.{key}")

    def set(self, key: str, value: str | None) -> None:
        if value is None:
            self.store.delete_setting(f"{self.prefix}.{key}")
        else:
            self.store.set_setting(f"{self.prefix}.{key}", value)


def _is_file(path: Path) -> bool:
    return path.is_file()


Restart = Callable[[], Awaitable[None]]


class Installer(abc.ABC):
    """One way of installing firmware on this platform."""

    name = "?"

    def __init__(self, state: InstallerState, restart_agent: Restart) -> None:
        self.state = state
        self._restart_agent = restart_agent
        # A different interpreter for the restart (python_package: the new venv's), or None.
        self.restart_python: str | None = None

    @abc.abstractmethod
    def current_version(self) -> str | None: ...

    async def stage(self, image: Path) -> None:
        if not _is_file(image):
            raise InstallError(f"{image} is not a file")

    @abc.abstractmethod
    async def install(self, image: Path) -> str | None:
        """Install ``image``; the version it will report once started (None: unknown)."""

    async def reboot(self) -> None:
        """Start what was installed: by default the agent's own process restarts (Reset)."""
        await self._restart_agent()

    async def checkpoint(self, phase: str) -> None:
        """The update reached ``phase`` (persisted); by default nothing happens."""
        return None

    @abc.abstractmethod
    async def confirm(self) -> None:
        """The new firmware booted and was accepted: make it permanent."""

    @abc.abstractmethod
    async def roll_back(self) -> bool:
        """Make the previous firmware the one of the next start; True if a reboot is needed."""

    def describe(self) -> dict[str, Any]:
        return {"installer": self.name}


def build_installer(kind: str, options: Any, state_store: KeyValue, restart_agent: Restart,
                    state_dir: Path) -> Installer | None:
    """The installer ``kind`` names (None for "none"); options are its config section."""
    if kind == "none":
        return None
    state = InstallerState(state_store, f"platform.{kind}")
    if kind == "mock":
        from agent.platform.mock import MockInstaller

        return MockInstaller(state, restart_agent)
    if kind == "command":
        from agent.platform.command import CommandInstaller

        return CommandInstaller(state, restart_agent, options)
    if kind == "python_package":
        from agent.platform.python_package import PythonPackageInstaller

        return PythonPackageInstaller(state, restart_agent, options)
    raise ValueError(f"unknown installer {kind!r}")


__all__ = ["InstallError", "Installer", "InstallerState", "build_installer"]
