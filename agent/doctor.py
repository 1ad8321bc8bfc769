"""``cp-agent doctor``: probe every configured device and say, one line each, what works and
what to check for what does not.

It runs the same probes as the hardware HAL's self-check (which gates READY), so the
doctor and the daemon never disagree about a device.  Nothing is switched: contactors stay
open, the pilot stays at "no offer", readers are only identified.
"""

from __future__ import annotations

from typing import TextIO

from hal.drivers.base import ProbeResult
from hal.drivers.hardware import HardwareHal
from hal.factory import HalConfig, build_hal


def _line(r: ProbeResult) -> str:
    mark = "PASS" if r.ok else ("FAIL" if r.required else "WARN")
    optional = "" if r.required else " (optional)"
    return f"{mark}  {r.device}{optional}: {r.detail}"


async def doctor(cfg: HalConfig, out: TextIO, *, hal: HardwareHal | None = None) -> int:
    """Print one pass/fail line per device; return 1 when a required device fails, else 0.

    Stop the running service first: the doctor needs the same ports and pins, and says so
    when it finds them taken.  ``hal`` is an already built hardware HAL (tests and
    simulations build theirs with simulated libraries); by default it is built from ``cfg``.
    """
    if cfg.driver == "mock":
        out.write(f"PASS  mock HAL: {len(cfg.evse_ids)} simulated EVSE(s), no hardware to probe\n")
        return 0
    if hal is None:
        built = build_hal(cfg)
        assert isinstance(built, HardwareHal)
        hal = built
    try:
        results = await hal.probe_all()
    finally:
        await hal.release()
    for r in results:
        out.write(_line(r) + "\n")
    failed = [r for r in results if not r.ok and r.required]
    warned = [r for r in results if not r.ok and not r.required]
    if failed:
        out.write(f"{len(failed)} required device(s) failing: the agent will not report READY.\n")
        return 1
    passed = sum(1 for r in results if r.ok)
    extra = f" ({len(warned)} optional device(s) failing)" if warned else ""
    out.write(f"{passed} of {len(results)} checks passed{extra}: every required device "
              "answers.\n")
    return 0
