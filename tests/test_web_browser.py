"""The status page in a real browser: headless Chromium drives a charging session with the
page's own bench controls while the agent runs on the mock HAL against the strict test CSMS.

Selenium is synchronous, so the browser runs in a thread (``asyncio.to_thread``) while the
agent and the CSMS keep running on the event loop.  Every wait is a WebDriverWait on what the
page shows, with a time-out; the screenshot taken mid-session is kept as a test artifact, and
becomes the README's picture with ``CP_AGENT_UPDATE_SCREENSHOT=1`` (a test run leaves the tree
clean otherwise).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.app import Agent
from agent.config import WebConfig
from tests.conftest import agent_config, online, strict_csms
from tests.test_web import _three_periods

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "img" / "status-page.png"
WAIT_S = 10

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytestmark = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); "
           "scripts/system_deps.sh installs them")


def _browser():  # noqa: ANN202 - selenium's WebDriver, imported lazily
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,1240", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def drive(url: str, artifacts: Path) -> dict:
    """Play a session with the page's buttons; returns what was observed along the way."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    seen: dict = {}
    driver = _browser()
    try:
        wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.05)

        def status() -> str | None:
            return driver.find_element(By.ID, "evse-1").get_attribute("data-status")

        def points() -> int:
            return int(driver.find_element(By.ID, "chart-1").get_attribute("data-points"))

        def text(element_id: str) -> str:
            return driver.find_element(By.ID, element_id).text

        def click(element_id: str) -> None:
            driver.find_element(By.ID, element_id).click()

        def more_points(than: int, by: int = 1) -> int:
            wait.until(lambda d: points() >= than + by, f"chart to grow past {than}")
            return points()

        driver.get(url)
        wait.until(lambda d: d.find_elements(By.ID, "evse-1") and status() == "Available",
                   "EVSE 1 to show Available")
        wait.until(lambda d: text("link-state") == "connected", "the link to show connected")
        seen["title"] = driver.title
        # The driver's display, as the mock HAL's 20x4 screen shows it.
        wait.until(lambda d: "Present your card" in text("screen-lines"), "the idle screen")
        seen["screen_note"] = text("screen-note")
        assert points() == 0
        # Smart charging and the site: the composite as a step chart, the installed profile,
        # the binding limit source, the load-management panel.
        wait.until(lambda d: d.find_element(By.ID, "schedule-1").get_attribute(
            "data-periods") == "4", "the profile's schedule on the step chart")
        wait.until(lambda d: d.find_elements(
            By.CSS_SELECTOR, "#profiles-1 tr[data-profile-id='7']"), "the profile's row")
        seen["profile_row"] = driver.find_element(
            By.CSS_SELECTOR, "#profiles-1 tr[data-profile-id='7']").text
        seen["limits"] = text("limits-1")
        seen["site"] = (driver.find_element(By.ID, "site").is_displayed(), text("site-mode"))

        click("btn-plug-1")
        wait.until(lambda d: status() == "Preparing", "Preparing after the plug")
        click("btn-tap-1")
        wait.until(lambda d: status() == "Charging", "Charging after the tap")
        wait.until(lambda d: text("screen-lines").startswith("Charging"), "the screen charging")
        wait.until(lambda d: driver.find_element(
            By.CSS_SELECTOR, "#evse-1 [data-role=power]").text.endswith(" kW"),
            "the meter's power in kW")
        first = more_points(0)
        seen["growth"] = [first, more_points(first, 2)]

        click("btn-pause-1")  # the EV pauses (state B): power drops on the chart
        wait.until(lambda d: status() == "SuspendedEV", "SuspendedEV after the pause")
        more_points(points(), 2)
        click("btn-resume-1")
        wait.until(lambda d: status() == "Charging", "Charging again after the resume")
        seen["growth"].append(more_points(points(), 3))
        wait.until(lambda d: "StartTransaction" in text("frames"), "frames to list the start")
        seen["frames"] = text("frames")
        seen["token"] = driver.find_element(By.CSS_SELECTOR, "#evse-1 [data-role=token]").text
        artifacts.mkdir(parents=True, exist_ok=True)
        shot = artifacts / "status-page.png"
        assert driver.save_screenshot(str(shot))
        if os.environ.get("CP_AGENT_UPDATE_SCREENSHOT"):  # refresh the README's picture
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, SCREENSHOT)

        click("btn-unplug-1")
        wait.until(lambda d: status() == "Available", "Available after the unplug")
        wait.until(lambda d: "StopTransaction" in text("frames"), "frames to list the stop")
        wait.until(lambda d: "(ended)" in driver.find_element(
            By.CSS_SELECTOR, "#evse-1 [data-role=duration]").text, "the session to end")
        seen["ended_points"] = points()
        seen["console"] = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    return seen


async def test_the_page_plays_a_session_with_its_bench_controls(short_dir, tmp_path):
    async with strict_csms(("1.6",)) as csms:
        cfg = agent_config(csms.url, short_dir, station_id="BENCH-CP1",
                           defaults={"MeterValueSampleInterval": 2},
                           extra="site: {max_current_a: 40}")
        cfg.web = WebConfig(listen="127.0.0.1:0")
        cfg.validate()
        agent = Agent(cfg)
        await agent.start()
        try:
            link = await online(agent, csms)
            start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
            assert (await link.call("SetChargingProfile", {
                "connectorId": 1, "csChargingProfiles": _three_periods(start)}))["status"] \
                == "Accepted"
            seen = await asyncio.wait_for(
                asyncio.to_thread(drive, agent.web_url, tmp_path / "artifacts"), 60)
        finally:
            await agent.stop()
        # The session really happened, as the CSMS saw it.
        start = await csms.wait_for("StartTransaction", station_id="BENCH-CP1")
        await csms.wait_for("StopTransaction", station_id="BENCH-CP1")
    assert seen["title"] == "cp-agent \u00b7 BENCH-CP1"
    assert seen["screen_note"].startswith("20 \u00d7 4 characters"), seen["screen_note"]
    assert seen["token"] == start["idTag"] == "04A2B3C4D5E680"
    growth = seen["growth"]
    assert growth == sorted(growth) and growth[0] < growth[-1], growth
    assert seen["ended_points"] >= growth[-1]  # the ended session stays on the chart
    assert "StartTransaction" in seen["frames"] and "CALLRESULT" in seen["frames"]
    assert seen["console"] == []  # no script error, no CSP violation
    assert seen["profile_row"].startswith("7 TxDefaultProfile 1 Absolute"), seen["profile_row"]
    assert "16 A" in seen["profile_row"] and "10 A" in seen["profile_row"]
    assert "csms" in seen["limits"] and "evse" in seen["limits"]
    assert seen["site"] == (True, "static")
    assert (tmp_path / "artifacts" / "status-page.png").stat().st_size > 10_000
