"""The python_package installer (the Raspberry Pi bench rig): the firmware is cp-agent itself.

The image is a wheel or an sdist.  It is installed into a fresh virtual environment next to the
running one (``firmware.python_package.venvs/<image name>``), and the symlink the service runs
through (``firmware.python_package.link``, e.g. ``/opt/cp-agent/venv``, the path in the
unit's ExecStart) is switched to it by renaming a new symlink over it: the switch is atomic, a
power cut leaves either the old or the new environment in place.  The old environment is kept
as the rollback target until the next update is confirmed.

Fast and offline by default (``inherit: true``): the new venv is made ``--without-pip`` and
sees the running venv's packages through a ``.pth`` file, so pip (the running one, ``pip
--python``) only installs what the image adds or changes; ``pip_args`` (e.g. ``--no-index
--find-links /opt/wheels``) says where new dependencies may come from.

The restart after the switch re-executes the agent with ``<link>/bin/python``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from agent.platform.installer import Installer, InstallError, InstallerState, Restart

log = logging.getLogger("cp_agent.platform")

MARKER = "cp-agent-firmware.json"
BASE_PTH = "cp-agent-base.pth"
TAIL = 600
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")
_SDIST = re.compile(r"^(?P<name>.+)-(?P<version>\d[^-]*)\.(tar\.gz|zip)$")


def package_version(image: Path) -> str | None:
    """The version in a wheel's or sdist's file name (PEP 427 / PEP 625), or None."""
    m = _WHEEL.match(image.name) or _SDIST.match(image.name)
    return m.group("version") if m else None


class PythonPackageInstaller(Installer):
    name = "python_package"

    def __init__(self, state: InstallerState, restart_agent: Restart, options: Any) -> None:
        super().__init__(state, restart_agent)
        self.link = Path(options.link)
        self.venvs = Path(options.venvs) if options.venvs else self.link.parent / "venvs"
        self.python = options.python or getattr(sys, "_base_executable", sys.executable)
        self.pip_args = list(options.pip_args or [])
        self.inherit = bool(options.inherit)
        self.timeout_s = float(options.timeout_s)

    # ------------------------------------------------------------------ helpers

    async def _run(self, argv: list[str], what: str) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise InstallError(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from None
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            with contextlib.suppress(ProcessLookupError):
                # Its whole process group: a cancelled update (restart, new request) leaves
                # no child behind (nor one holding the output pipe open).
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise InstallError(f"{what} did not finish within {self.timeout_s:g} s") from None
        text = out.decode(errors="replace").strip()
        if proc.returncode != 0:
            raise InstallError(f"{what} failed (exit {proc.returncode}): {text[-TAIL:]}")
        return text

    def _target(self) -> Path | None:
        """Where the link points now (None: no link yet)."""
        if self.link.is_symlink():
            return Path(os.path.realpath(self.link))
        return None

    def _switch(self, target: Path) -> None:
        """Point the link at ``target`` atomically (a new symlink renamed over the old)."""
        self._check_link()
        self.link.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.link.with_name(self.link.name + ".switch")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(target, target_is_directory=True)
        os.replace(tmp, self.link)
        fd = os.open(self.link.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself survives a power cut
        finally:
            os.close(fd)
        self.restart_python = str(self.link / "bin" / "python")

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.write_text(text)

    def _check_link(self) -> None:
        if self.link.exists() and not self.link.is_symlink():
            raise InstallError(
                f"{self.link} is a directory, not a symlink: move it into {self.venvs} and link "
                f"it (e.g. mv {self.link} {self.venvs}/base && ln -s {self.venvs}/base "
                f"{self.link}) so that updates can switch it atomically")

    def _base_site(self) -> str:
        """The site-packages holding the dependencies: the one the first environment used."""
        known = self.state.get("base_site")
        if known:
            return known
        here = sysconfig.get_paths()["purelib"]
        pth = Path(here) / BASE_PTH
        if pth.is_file():  # running in an environment we built: its base is the base
            return pth.read_text().strip()
        self.state.set("base_site", here)
        return here

    # ------------------------------------------------------------------ Installer

    def current_version(self) -> str | None:
        target = self._target()
        marker = (target or Path(sys.prefix)) / MARKER
        try:
            return str(json.loads(marker.read_text())["version"])[:50]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def stage(self, image: Path) -> None:
        await super().stage(image)
        if package_version(image) is None:
            raise InstallError(f"{image.name} is not a wheel (name-version-...-py3-none-any"
                               ".whl) or an sdist (name-version.tar.gz)")
        self._check_link()  # the explanation before anything is built

    async def install(self, image: Path) -> str | None:
        version = package_version(image)
        if version is None:
            raise InstallError(f"{image.name}: no version in the file name")
        self.venvs.mkdir(parents=True, exist_ok=True)
        venv = self.venvs / re.sub(r"[^A-Za-z0-9._+-]", "_", image.name.split(".whl")[0])
        if venv == self._target():
            raise InstallError(f"{venv} is the running environment; refusing to rebuild it")
        if venv.exists():
            await asyncio.to_thread(shutil.rmtree, venv)  # a half-built one (power cut)
        await self._run([self.python, "-m", "venv", "--without-pip", str(venv)],
                        "creating the virtual environment")
        python = venv / "bin" / "python"
        if self.inherit:
            site = (await self._run([str(python), "-c",
                                     "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    "locating site-packages")).splitlines()[-1]
            self._write(Path(site, BASE_PTH), self._base_site() + "\n")
        await self._run([sys.executable, "-m", "pip", "--python", str(python), "install",
                         "--no-input", "--disable-pip-version-check", *self.pip_args,
                         str(image)], f"pip install {image.name}")
        self._write(venv / MARKER, json.dumps({"version": version, "image": image.name}))
        previous = self._target()
        self._switch(venv)
        self.state.set("previous", str(previous) if previous is not None else "")
        self.state.set("current", str(venv))
        log.info("switched %s to %s (previous %s)", self.link, venv, previous)
        return version

    async def confirm(self) -> None:
        """Keep the running environment and the one before it (for a manual rollback);
        remove older ones this installer built."""
        keep = {self._target()}
        previous = self.state.get("previous")
        if previous:
            keep.add(Path(previous))
        self.state.set("previous", None)
        base = self.state.get("base_site")
        for venv in self.venvs.iterdir() if self.venvs.is_dir() else ():
            if venv in keep or not (venv / MARKER).is_file():
                continue  # not ours (the base environment), or one we keep
            if base and base.startswith(str(venv) + os.sep):
                continue
            await asyncio.to_thread(shutil.rmtree, venv, True)

    async def roll_back(self) -> bool:
        previous = self.state.get("previous")
        if not previous:
            return False
        self._switch(Path(previous))
        self.state.set("previous", None)
        log.warning("rolled %s back to %s", self.link, previous)
        return True

    def describe(self) -> dict[str, Any]:
        return {"installer": self.name, "link": str(self.link)}
