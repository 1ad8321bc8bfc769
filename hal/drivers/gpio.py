"""GPIO through gpiozero: the only module that imports it.

The wrappers keep gpiozero's strengths (pin factories chosen the way gpiozero chooses them,
lgpio on a Pi 5; a mock factory for tests) and add what a charger needs on top: errors that
name the likely cause instead of a bare exception, raw levels with an explicit polarity
(auxiliary contacts are usually wired active-low), and edge callbacks handed from
gpiozero's threads to the event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any

from gpiozero import DigitalInputDevice, DigitalOutputDevice, PWMOutputDevice
from gpiozero.exc import (
    BadPinFactory,
    GPIOPinInUse,
    PinFactoryFallback,
    PinInvalidPin,
    PinPWMUnsupported,
)

from hal.drivers.base import DriverError, PortUnavailable

log = logging.getLogger(__name__)

PinName = int | str

PIN_FACTORIES = ("lgpio", "rpigpio", "pigpio", "native", "mock")


class PinFactoryUnavailable:
    """Stands in for a pin factory that failed to load, so that building the HAL still
    works and every pin that needs it fails with the cause (one clear doctor line each)."""

    def __init__(self, cause: str) -> None:
        self.cause = cause


DT_MODEL = "/proc/device-tree/model"


def board_model() -> str | None:
    """The board's name from the device tree ("Raspberry Pi 5 Model B Rev 1.0"), or None."""
    try:
        with open(DT_MODEL, "rb") as f:
            return f.read().rstrip(b"\0").decode("ascii", "replace").strip() or None
    except OSError:
        return None


def is_raspberry_pi() -> bool:
    return (board_model() or "").startswith("Raspberry Pi")


def lgpio_installed() -> bool:
    """Whether the Python running the agent can import lgpio, the library behind gpiozero's
    default pin factory on a Pi 5 (and on a Pi 4 under bookworm)."""
    return "lgpio" in sys.modules or importlib.util.find_spec("lgpio") is not None


def lgpio_advice() -> str:
    """The command that makes lgpio importable by this very Python. ``apt-get install
    python3-lgpio`` does not: a virtualenv (such as /opt/cp-agent/venv) does not see the
    system's packages."""
    sudo = "" if os.access(sys.prefix, os.W_OK) else "sudo "
    return (f"install lgpio into the Python that runs cp-agent: {sudo}{sys.executable} -m pip "
            "install lgpio (systemd/install.sh does this on a Raspberry Pi; the apt package "
            "python3-lgpio is not visible inside a virtualenv)")


def _writable(path: str) -> bool:
    return os.access(path, os.W_OK)


_lgpio_dir: str | None = None


def _import_lgpio() -> None:
    """Import lgpio from a writable directory.

    lgpio creates its notification FIFO (``.lgd-nfyN``) in the current directory when it is
    imported, and without write access there it fails; gpiozero then silently falls back to
    another pin factory, which on a Pi 5 cannot drive the pins. The current directory is
    "/" for a service (read-only under ProtectSystem=strict) and the caller's directory
    under ``sudo -u cp-agent``. lgpio keeps using the FIFO it opened, so the import happens
    once from a private directory and the current directory is restored at once.
    """
    global _lgpio_dir
    if "lgpio" in sys.modules or importlib.util.find_spec("lgpio") is None:
        return
    try:
        cwd: str | None = os.getcwd()
    except OSError:  # the current directory was removed
        cwd = None
    if cwd is not None and _writable(cwd):
        return
    _lgpio_dir = tempfile.mkdtemp(prefix="cp-agent-lgpio-")
    atexit.register(shutil.rmtree, _lgpio_dir, ignore_errors=True)
    try:
        os.chdir(_lgpio_dir)
        with contextlib.suppress(Exception):  # gpiozero reports it when it tries lgpio
            import lgpio  # noqa: F401
    finally:
        if cwd is not None:
            with contextlib.suppress(OSError):
                os.chdir(cwd)


# Why gpiozero passed over each pin factory it tried, e.g. {"lgpio": "No module named ..."}.
_fallbacks: dict[str, str] = {}


def _check_factory(factory: Any) -> None:
    if isinstance(factory, PinFactoryUnavailable):
        raise PortUnavailable(factory.cause)


def load_pin_factory(name: str | None) -> Any:
    """Return a pin factory by gpiozero's entry-point name, or None for gpiozero's choice.

    None leaves the choice to gpiozero (``GPIOZERO_PIN_FACTORY`` or its preference order,
    which picks lgpio on a Pi 5), which is what a bench rig wants; naming one is for boards
    where autodetection guesses wrong.
    """
    if name in (None, "", "default"):
        return None
    if name == "lgpio":
        _import_lgpio()
    for ep in entry_points(group="gpiozero_pin_factories"):
        if ep.name == name:
            try:
                return ep.load()()
            except Exception as exc:
                hint = ""
                if name == "lgpio" and not lgpio_installed():
                    hint = f"; {lgpio_advice()}"
                elif isinstance(exc, ImportError):
                    hint = f" (is the {name} package installed?)"
                raise PortUnavailable(f"GPIO pin factory {name!r} failed to load: "
                                      f"{exc}{hint}") from exc
    raise PortUnavailable(f"GPIO pin factory {name!r} is not installed "
                          f"(known names: {', '.join(PIN_FACTORIES)})")


_reported_warnings: set[str] = set()


@contextlib.contextmanager
def _quiet_fallbacks() -> Iterator[None]:
    """gpiozero warns on stderr for every pin while it searches for a pin factory; say it
    once in the log instead (the failure itself is reported with its cause)."""
    _import_lgpio()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PinFactoryFallback)
        yield
    for w in caught:
        text = str(w.message)
        if not issubclass(w.category, PinFactoryFallback):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            continue
        name, sep, why = text.removeprefix("Falling back from ").partition(": ")
        if sep:
            _fallbacks[name] = why
        if text not in _reported_warnings:
            _reported_warnings.add(text)
            log.info("gpiozero: %s", text)


def _cause(pin: PinName, exc: BaseException) -> str:
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES:
        return (f"GPIO {pin}: permission denied on the GPIO chip "
                "(add the service user to group 'gpio')")
    if isinstance(exc, BadPinFactory):
        return f"GPIO {pin}: no usable GPIO library ({exc}); {_no_factory_fix()}"
    if isinstance(exc, GPIOPinInUse):
        return f"GPIO {pin}: already in use (declared twice in the config, or another process)"
    if isinstance(exc, PinInvalidPin):
        return f"GPIO {pin}: not a pin of this board ({exc})"
    if isinstance(exc, PinPWMUnsupported):
        return f"GPIO {pin}: this pin factory cannot do PWM on it"
    text = f"GPIO {pin}: {type(exc).__name__}: {exc}"
    if "lgpio" in _fallbacks:  # gpiozero fell back to a factory that then failed
        text += f" (with the fallback pin factory, lgpio failed: {_fallbacks['lgpio']}"
        text += f"; {lgpio_advice()})" if not lgpio_installed() else ")"
    return text


def _no_factory_fix() -> str:
    """What to do when gpiozero found no pin factory at all."""
    if not lgpio_installed():
        if is_raspberry_pi():
            return lgpio_advice()
        return (f"on a Raspberry Pi, {lgpio_advice()}; on other boards set "
                "hal.gpio.pin_factory")
    if "lgpio" in _fallbacks:
        return (f"lgpio is installed but failed: {_fallbacks['lgpio']}; set "
                "hal.gpio.pin_factory: lgpio to see its own error")
    return "set hal.gpio.pin_factory to one that works on this board"


class DigitalOut:
    """A push-pull output (contactor coil, LED, lock motor) with its polarity."""

    def __init__(self, pin: PinName, *, active_high: bool = True, pin_factory: Any = None) -> None:
        self.pin = pin
        self.active_high = active_high
        self._factory = pin_factory
        self._dev: DigitalOutputDevice | None = None
        self._blinking = False

    @property
    def is_open(self) -> bool:
        return self._dev is not None

    def open(self) -> None:
        if self._dev is not None:
            return
        _check_factory(self._factory)
        try:
            with _quiet_fallbacks():
                self._dev = DigitalOutputDevice(self.pin, active_high=self.active_high,
                                                initial_value=False, pin_factory=self._factory)
        except Exception as exc:
            raise PortUnavailable(_cause(self.pin, exc)) from exc

    def set(self, on: bool) -> None:
        dev = self._require()
        try:
            if on:
                dev.on()
            else:
                dev.off()
        except Exception as exc:
            raise DriverError(_cause(self.pin, exc)) from exc
        self._blinking = False

    def blink(self, on_s: float, off_s: float) -> None:
        dev = self._require()
        try:
            dev.blink(on_time=on_s, off_time=off_s, background=True)
        except Exception as exc:
            raise DriverError(_cause(self.pin, exc)) from exc
        self._blinking = True

    @property
    def value(self) -> bool:
        return bool(self._dev is not None and self._dev.value)

    @property
    def blinking(self) -> bool:
        return self._blinking

    def close(self) -> None:
        dev, self._dev = self._dev, None
        self._blinking = False
        if dev is not None:
            try:
                dev.off()
                dev.close()
            except Exception:
                log.exception("closing GPIO %s", self.pin)

    def _require(self) -> DigitalOutputDevice:
        if self._dev is None:
            raise DriverError(f"GPIO {self.pin}: not open")
        return self._dev


class DigitalIn:
    """An input (auxiliary contact, lock switch) whose edges reach the loop thread.

    ``pull`` is the internal resistor ("up", "down", "none"); ``active_high`` says which
    level means "closed"/"active".  The two are separate on purpose: gpiozero ties
    polarity to the pull, but wiring does not always follow that convention.
    """

    def __init__(self, pin: PinName, *, active_high: bool = True, pull: str = "none",
                 pin_factory: Any = None) -> None:
        if pull not in ("up", "down", "none"):
            raise ValueError(f"pull must be up, down or none, not {pull!r}")
        self.pin = pin
        self.active_high = active_high
        self.pull = pull
        self._factory = pin_factory
        self._dev: DigitalInputDevice | None = None
        self._on_change: Callable[[bool], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_open(self) -> bool:
        return self._dev is not None

    def open(self, on_change: Callable[[bool], None] | None = None,
             loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Claim the pin; ``on_change(active)`` is then called on ``loop``'s thread."""
        if self._dev is None:
            _check_factory(self._factory)
            pull_up = {"up": True, "down": False, "none": None}[self.pull]
            try:
                with _quiet_fallbacks():
                    self._dev = DigitalInputDevice(
                        self.pin, pull_up=pull_up,
                        active_state=True if pull_up is None else None,
                        pin_factory=self._factory)
            except Exception as exc:
                raise PortUnavailable(_cause(self.pin, exc)) from exc
        self._on_change = on_change
        self._loop = loop
        if on_change is not None:
            self._dev.when_activated = self._edge
            self._dev.when_deactivated = self._edge

    @property
    def active(self) -> bool:
        if self._dev is None:
            raise DriverError(f"GPIO {self.pin}: not open")
        try:
            level = bool(self._dev.pin.state)
        except Exception as exc:
            raise DriverError(_cause(self.pin, exc)) from exc
        return level if self.active_high else not level

    def _edge(self) -> None:
        # gpiozero calls this on its own thread; the level is re-read on the loop thread
        # so that a burst of bounces ends in the level that actually stuck.
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # loop closed while shutting down
            pass

    def _deliver(self) -> None:
        cb = self._on_change
        if cb is None or self._dev is None:
            return
        try:
            cb(self.active)
        except Exception:
            log.exception("GPIO %s change handler", self.pin)

    def close(self) -> None:
        dev, self._dev = self._dev, None
        self._on_change = None
        if dev is not None:
            try:
                dev.when_activated = None
                dev.when_deactivated = None
                dev.close()
            except Exception:
                log.exception("closing GPIO %s", self.pin)


class PwmOut:
    """Software (or factory-provided) PWM on a GPIO, e.g. the control pilot oscillator.

    lgpio's PWM is timed in software: good enough for a bench rig, which is why the direct
    pilot can use the kernel's hardware PWM instead (``pwm_sysfs``).
    """

    def __init__(self, pin: PinName, *, active_high: bool = True, frequency_hz: float = 1000.0,
                 pin_factory: Any = None) -> None:
        self.pin = pin
        self.active_high = active_high
        self.frequency_hz = frequency_hz
        self._factory = pin_factory
        self._dev: PWMOutputDevice | None = None
        self._duty = 0.0

    @property
    def label(self) -> str:
        return f"GPIO {self.pin} PWM"

    async def open(self, initial_duty: float = 0.0) -> None:
        if self._dev is None:
            _check_factory(self._factory)
            try:
                with _quiet_fallbacks():
                    self._dev = PWMOutputDevice(self.pin, active_high=self.active_high,
                                                initial_value=initial_duty,
                                                frequency=int(self.frequency_hz),
                                                pin_factory=self._factory)
            except Exception as exc:
                raise PortUnavailable(_cause(self.pin, exc)) from exc
        self._duty = initial_duty

    async def set_duty(self, fraction: float) -> None:
        if self._dev is None:
            raise DriverError(f"GPIO {self.pin}: PWM not open")
        try:
            self._dev.value = fraction
        except Exception as exc:
            raise DriverError(_cause(self.pin, exc)) from exc
        self._duty = fraction

    @property
    def duty(self) -> float:
        return self._duty

    async def close(self) -> None:
        dev, self._dev = self._dev, None
        if dev is not None:
            try:
                dev.close()
            except Exception:
                log.exception("closing GPIO %s", self.pin)
