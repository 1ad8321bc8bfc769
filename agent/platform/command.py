"""The command installer: a configured executable installs the image (swupdate, RAUC, Mender,
or a vendor script), judged by its exit status.

``firmware.command.install`` is run with the image path appended (``["rauc", "install"]`` runs
``rauc install /var/lib/cp-agent/firmware/7/image.raucb``); exit status 0 means installed
(for the next start), 65 (``EX_DATAERR`` of sysexits.h: the input data was incorrect) that the
command's own check of the image failed (a bundle signature, a checksum, a wrong board):
InstallVerificationFailed; anything else InstallationFailed, with the last lines of its output
in the log.  A wrapper script maps its tool's exit codes onto these.  The optional
``confirm`` (``rauc status mark-good``), ``roll_back`` (``rauc status mark-bad other``),
``version`` (prints the running version on stdout) and ``reboot`` (``systemctl reboot``;
without it only the agent restarts) commands are run without arguments.  Each runs without
a shell, with a time limit, and its output goes to the log, never to the CSMS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from agent.platform.installer import Installer, InstallError, InstallerState, Restart

log = logging.getLogger("cp_agent.platform")

TAIL = 400  # characters of a failed command's output kept in the message
VERIFICATION_FAILED_EXIT = 65  # sysexits.h EX_DATAERR: the image did not pass the check


class CommandInstaller(Installer):
    name = "command"

    def __init__(self, state: InstallerState, restart_agent: Restart, options: Any) -> None:
        super().__init__(state, restart_agent)
        self.options = options

    async def _run(self, argv: list[str], what: str, *,
                   verification_exit: int | None = None) -> str:
        timeout = float(self.options.timeout_s)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise InstallError(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from None
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            with contextlib.suppress(ProcessLookupError):
                # Its whole process group: a cancelled update (restart, new request) leaves
                # no child behind (nor one holding the output pipe open).
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise InstallError(f"{what}: {argv[0]} did not finish within {timeout:g} s"
                               ) from None
        text = out.decode(errors="replace").strip()
        if text:
            log.info("%s (%s): %s", what, argv[0], text[-2000:])
        if proc.returncode != 0:
            verification = proc.returncode == verification_exit
            raise InstallError(f"{what}: {argv[0]} exited with status {proc.returncode}"
                               + (" (the image failed its verification)" if verification
                                  else "")
                               + (f": {text[-TAIL:]}" if text else ""),
                               verification=verification)
        return text

    def current_version(self) -> str | None:
        argv = self.options.version
        if not argv:
            return self.state.get("version")
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                  stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("firmware.command.version %s failed: %s", argv[0], exc)
            return self.state.get("version")
        version = done.stdout.strip().splitlines()[0].strip() if done.stdout.strip() else ""
        if done.returncode != 0 or not version:
            log.warning("firmware.command.version %s gave no version (exit %s)", argv[0],
                        done.returncode)
            return self.state.get("version")
        return version[:50]

    async def install(self, image: Path) -> str | None:
        await self._run([*self.options.install, str(image)], "firmware install",
                        verification_exit=VERIFICATION_FAILED_EXIT)
        # Without a version command, the image's name stands for the version it brings.
        self.state.set("previous", self.state.get("version") or "")
        self.state.set("version", image.stem[:50])
        return None if self.options.version else image.stem[:50]

    async def reboot(self) -> None:
        if self.options.reboot:
            await self._run(list(self.options.reboot), "reboot")
        await super().reboot()  # if the machine is still up: at least the agent restarts

    async def confirm(self) -> None:
        self.state.set("previous", None)
        if self.options.confirm:
            await self._run(list(self.options.confirm), "firmware confirm")

    async def roll_back(self) -> bool:
        previous = self.state.get("previous")
        if previous is not None:
            self.state.set("version", previous or None)
            self.state.set("previous", None)
        if not self.options.roll_back:
            log.error("firmware.command.roll_back is not configured: the new firmware stays "
                      "(the boot loader's own fallback is all there is)")
            return False
        await self._run(list(self.options.roll_back), "firmware roll back")
        return True

    def describe(self) -> dict[str, Any]:
        return {"installer": self.name, "install": self.options.install[0]}
