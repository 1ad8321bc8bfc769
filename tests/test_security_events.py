"""Security events on both versions, the security log, secrets kept out of logs, triggers.

A04 (1.6 whitepaper and 2.0.1): every security event is stored in the security log; the
critical ones (each version's table) are also pushed with SecurityEventNotification, queued
durably while offline.  Behaviour both versions share runs once per version.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.app import Agent
from agent.clock import FakeClock
from agent.core.security_events import SecurityEvent, SecurityEvents
from agent.ocpp.security_delivery import ONCE_WHILE_WAITING
from agent.ocpp.v16.security import CRITICAL as CRITICAL_16
from agent.ocpp.v16.security import Security as Security16
from agent.ocpp.v21.security import CRITICAL_21
from agent.ocpp.v201.security import CRITICAL as CRITICAL_201
from agent.redaction import MASK, SECRETS, RedactingFilter, Secrets, leaks, redact_record
from agent.redaction import install as install_redaction
from agent.security.security_log import SecurityLog
from agent.storage import OutboxItem, StorageError
from agent.testing.csms import CsmsCallError
from tests.conftest import agent_config, eventually, strict_csms
from tests.conftest import online as online16
from tests.secret_guard import LeakCollector, record_leaks

SID = "CP1"
VERSIONS = ("1.6", "2.0.1")
NOWHERE = "ws://127.0.0.1:9/ocpp"  # nothing listens: the station is offline
KEY_PEM = ("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oRI\n"
           "-----END EC PRIVATE KEY-----")


def notifications(csms, station_id: str = SID) -> list[dict]:
    return csms.messages(station_id, "SecurityEventNotification")


async def online(agent: Agent, timeout: float = 5.0) -> None:
    await asyncio.wait_for(agent.adapter.accepted.wait(), timeout)
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), timeout)


# ====================================================================== delivery


@pytest.mark.parametrize("version", VERSIONS)
async def test_critical_events_reach_the_csms_in_order_through_an_outage_and_a_restart(
        version, short_dir):
    async with strict_csms((version,)) as csms:
        offline = Agent(agent_config(NOWHERE, short_dir, versions=(version,)))
        await offline.start()
        events = offline.station.security_events
        events.record("TamperDetectionActivated", "lid opened")
        events.record("InvalidMessages", "garbage from nowhere")  # not critical: log only
        events.record("SettingSystemTime", "set by hand")
        assert offline.storage.outbox_count() == 3  # startup, tamper, time: on disk now
        await offline.stop()
        # The next start reaches the CSMS: what the first one queued goes first, in order.
        again = Agent(agent_config(csms.url, short_dir, versions=(version,)))
        await again.start()
        try:
            await csms.wait_for("SecurityEventNotification", station_id=SID, count=4)
            await online(again)
            sent = notifications(csms)
            assert [p["type"] for p in sent] == ["StartupOfTheDevice", "TamperDetectionActivated",
                                                 "SettingSystemTime", "StartupOfTheDevice"]
            assert sent[1]["techInfo"] == "lid opened"
            stamps = [datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00"))
                      for p in sent]
            assert stamps == sorted(stamps)
            # Every one, critical or not, is in the security log.
            text = again.security_log.path.read_text()
            for kind in ("TamperDetectionActivated", "InvalidMessages", "SettingSystemTime"):
                assert kind in text
            assert again.storage.outbox_count() == 0
        finally:
            await again.stop()


@pytest.mark.parametrize("version", (*VERSIONS, "2.1"))
async def test_only_critical_events_are_pushed_all_are_logged(version, short_dir):
    critical = {"1.6": CRITICAL_16, "2.0.1": CRITICAL_201, "2.1": CRITICAL_21}[version]
    async with strict_csms((version,)) as csms:
        agent = Agent(agent_config(csms.url, short_dir, versions=(version,)))
        await agent.start()
        try:
            await online(agent)
            kinds = ["FailedToAuthenticateAtCsms", "InvalidCsmsCertificate",
                     "InvalidFirmwareSignature", "ReconfigurationOfSecurityParameters",
                     "AttemptedReplayAttacks", "MemoryExhaustion",
                     "DiscardedRenewedClientCertificate", "CsmsFailedToAuthenticate"]
            for kind in kinds:
                agent.station.security_events.record(kind, f"test {kind}")
            pushed = [k for k in kinds if k in critical]
            await csms.wait_for("SecurityEventNotification", station_id=SID,
                                count=1 + len(pushed))
            await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
            got = [p["type"] for p in notifications(csms)][1:]
            assert got == pushed
            log_text = agent.security_log.path.read_text()
            assert all(f"{k} test {k}" in log_text for k in kinds)
        finally:
            await agent.stop()
    # The tables differ where the spec's do: a bad CSMS certificate is critical from 2.0.1 on,
    # a renewed certificate given up for the previous one in 2.1 only.
    assert ("InvalidCsmsCertificate" in critical) == (version != "1.6")
    assert ("DiscardedRenewedClientCertificate" in critical) == (version == "2.1")
    assert {"InvalidFirmwareSignature", "InvalidFirmwareSigningCertificate"} <= critical


async def test_events_queued_under_1_6_go_to_a_csms_that_speaks_2_0_1(short_dir):
    async with strict_csms(("2.0.1",)) as csms:
        offline = Agent(agent_config(NOWHERE, short_dir, versions=("1.6", "2.0.1")))
        await offline.start()
        assert offline.adapter.version == "1.6"  # in charge while offline
        offline.station.security_events.record("TamperDetectionActivated", "lid")
        await offline.stop()
        again = Agent(agent_config(csms.url, short_dir, versions=("1.6", "2.0.1")))
        await again.start()
        try:
            await csms.wait_for("SecurityEventNotification", station_id=SID, count=3)
            assert [p["type"] for p in notifications(csms)] == [
                "StartupOfTheDevice", "TamperDetectionActivated", "StartupOfTheDevice"]
        finally:
            await again.stop()


def test_a_2_0_1_named_event_is_sent_in_1_6_words():
    block = Security16.__new__(Security16)  # prepare_outbox needs no adapter
    item = OutboxItem(1, "SecurityEventNotification", {}, None, 0, 0.0, "")
    for neutral, old in (("InvalidCsmsCertificate", "InvalidCentralSystemCertificate"),
                         ("FailedToAuthenticateAtCsms", "FailedToAuthenticateAtCentralSystem"),
                         ("StartupOfTheDevice", "StartupOfTheDevice")):
        out = block.prepare_outbox(item, {"type": neutral, "timestamp": "t", "techInfo": "x"})
        assert out == {"type": old, "timestamp": "t", "techInfo": "x"}
    # ... and a 1.6 spelling recorded on the bus becomes the 2.0.1 name.
    bus = SecurityEvents(FakeClock(start_wall=1.7e9))
    event = bus.record("InvalidCentralSystemCertificate")
    assert event is not None and event.kind == "InvalidCsmsCertificate"


async def test_repeated_connection_failures_queue_one_notification(short_dir):
    async with strict_csms(("2.0.1",)) as csms:
        agent = Agent(agent_config(NOWHERE, short_dir, versions=("2.0.1",)))
        await agent.start()
        try:
            assert "InvalidTLSVersion" in ONCE_WHILE_WAITING
            for _ in range(5):
                agent.station.security_events.record("InvalidTLSVersion", "CSMS offers TLS 1.0")
            queued = agent.storage.outbox_find("SecurityEventNotification")
            assert [i.payload["type"] for i in queued] == ["StartupOfTheDevice",
                                                           "InvalidTLSVersion"]
            lines = agent.security_log.path.read_text().count("InvalidTLSVersion")
            assert lines == 3  # throttled to three per hour; the rest counted
        finally:
            await agent.stop()
        del csms


async def test_events_before_any_adapter_wait_for_the_first_one():
    bus = SecurityEvents(FakeClock(start_wall=1.7e9))
    heard: list[SecurityEvent] = []
    bus.record("StartupOfTheDevice", "early")
    bus.deliver_to(heard.append)
    bus.record("SettingSystemTime")
    assert [e.kind for e in heard] == ["StartupOfTheDevice", "SettingSystemTime"]


async def test_a_flood_is_throttled_and_the_suppressed_ones_counted():
    clock = FakeClock(start_wall=1.7e9)
    bus = SecurityEvents(clock)
    bus.throttle("InvalidMessages", burst=2, window=60)
    got = [bus.record("InvalidMessages", "bad frame") for _ in range(50)]
    assert sum(e is not None for e in got) == 2
    assert bus.suppressed == 48
    await clock.advance(61)
    later = bus.record("InvalidMessages", "bad frame")
    assert later is not None and later.info == "bad frame (+48 suppressed)"


@pytest.mark.parametrize("version", VERSIONS)
async def test_invalid_frames_are_a_throttled_security_event_never_queued(version, short_dir):
    async with strict_csms((version,)) as csms:
        agent = Agent(agent_config(csms.url, short_dir, versions=(version,)))
        await agent.start()
        try:
            await online(agent)
            link = await csms.wait_station(SID)
            heard: list[SecurityEvent] = []
            agent.station.security_events.listeners.append(heard.append)
            for n in range(30):
                await link.send_raw(f'[2, "bad-{n}", "Heartbeat"')  # not even JSON
            await eventually(lambda: len([e for e in heard if e.kind == "InvalidMessages"])
                             >= 10, "ten InvalidMessages recorded")
            await link.send_raw('[2, "ok-1", "ClearCache", {}]')
            await link.recv_raw_reply("ok-1")
            assert len([e for e in heard if e.kind == "InvalidMessages"]) == 10
            assert all(p["type"] != "InvalidMessages" for p in notifications(csms))
            assert agent.storage.outbox_count() == 0
        finally:
            await agent.stop()


@pytest.mark.parametrize("version", VERSIONS)
async def test_refused_password_is_failed_to_authenticate_in_the_log(version, short_dir):
    async with strict_csms((version,)) as csms:
        csms.passwords = {SID: "the-right-password"}
        agent = Agent(agent_config(csms.url, short_dir, versions=(version,), profile=1,
                                   password="a-wrong-password"))
        await agent.start()
        try:
            await eventually(lambda: "FailedToAuthenticateAtCsms" in (
                agent.security_log.path.read_text() if agent.security_log.path.exists()
                else ""), "FailedToAuthenticateAtCsms logged")
            # Not critical in either table: nothing queued for it.
            assert all(i.payload["type"] != "FailedToAuthenticateAtCsms"
                       for i in agent.storage.outbox_find("SecurityEventNotification"))
        finally:
            await agent.stop()


@pytest.mark.parametrize("version", VERSIONS)
async def test_reset_then_restart_is_reset_or_reboot(version, short_dir):
    async with strict_csms((version,)) as csms:
        agent = Agent(agent_config(csms.url, short_dir, versions=(version,)))
        await agent.start()
        await online(agent)
        link = await csms.wait_station(SID)
        answer = await link.call("Reset", {"type": "Soft"} if version == "1.6"
                                 else {"type": "Immediate"})
        assert answer["status"] == "Accepted"
        await asyncio.wait_for(agent.wait(), 5)
        await agent.stop()
        again = Agent(agent_config(csms.url, short_dir, versions=(version,)))
        await again.start()
        try:
            await csms.wait_for("SecurityEventNotification", station_id=SID, count=2)
            assert [p["type"] for p in notifications(csms)] == ["StartupOfTheDevice",
                                                                "ResetOrReboot"]
        finally:
            await again.stop()


async def test_1_6_clock_set_far_from_the_station_time_is_setting_system_time(short_dir):
    future = datetime.now(UTC) + timedelta(days=3)
    async with strict_csms(("1.6",)) as csms:
        csms.now = lambda: future
        agent = Agent(agent_config(csms.url, short_dir))
        await agent.start()
        try:
            event = await csms.wait_for("SecurityEventNotification", station_id=SID,
                                        predicate=lambda p: p["type"] == "SettingSystemTime")
            assert "corrected" in event["techInfo"]
        finally:
            await agent.stop()


async def test_1_6_csms_without_the_security_extension_does_not_block_the_queue(short_dir):
    async with strict_csms(("1.6",)) as csms:
        def refuse(link, payload):
            raise CsmsCallError("NotImplemented", "no security extension here")

        csms.overrides["SecurityEventNotification"] = refuse
        agent = Agent(agent_config(csms.url, short_dir))
        await agent.start()
        try:
            await online(agent)
            assert agent.storage.outbox_count() == 0  # dropped at once, not retried
            dropped = agent.storage.outbox_dropped()
            assert dropped[0]["action"] == "SecurityEventNotification"
        finally:
            await agent.stop()


async def test_a_full_disk_is_memory_exhaustion_once(short_dir):
    agent = Agent(agent_config(NOWHERE, short_dir, versions=("2.0.1",)))
    await agent.start()
    try:
        heard: list[SecurityEvent] = []
        agent.station.security_events.listeners.append(heard.append)
        conn = agent.storage._require()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        failures = 0
        for n in range(50):
            try:
                agent.storage.set_setting(f"filler.{n}", "x" * 3000)
            except StorageError as exc:
                assert exc.kind == "full"
                failures += 1
        assert failures > 1
        await eventually(lambda: any(e.kind == "MemoryExhaustion" for e in heard),
                         "MemoryExhaustion recorded")
        assert [e.kind for e in heard].count("MemoryExhaustion") == 1  # throttled
        conn.execute("PRAGMA max_page_count = 1073741823")
    finally:
        await agent.stop()


async def test_an_event_the_outbox_cannot_take_is_held_and_queued_later(short_dir,
                                                                          monkeypatch):
    agent = Agent(agent_config(NOWHERE, short_dir, versions=("2.0.1",)))
    await agent.start()
    try:
        real_put = agent.storage.outbox_put

        def full(*args, **kw):
            raise StorageError("the disk is full", "full")

        monkeypatch.setattr(agent.storage, "outbox_put", full)
        agent.station.security_events.record("TamperDetectionActivated", "lid")
        monkeypatch.setattr(agent.storage, "outbox_put", real_put)
        kinds = [i.payload["type"] for i in agent.storage.outbox_find(
            "SecurityEventNotification")]
        assert kinds == ["StartupOfTheDevice"]
        agent.station.security_events.record("SettingSystemTime", "later")
        kinds = [i.payload["type"] for i in agent.storage.outbox_find(
            "SecurityEventNotification")]
        assert kinds == ["StartupOfTheDevice", "TamperDetectionActivated", "SettingSystemTime"]
    finally:
        await agent.stop()


# ====================================================================== the security log


def test_security_log_lines_rotation_bound_and_time_window(tmp_path: Path):
    clock = FakeClock(start_wall=datetime(2024, 5, 1, tzinfo=UTC).timestamp() - 1000)
    seclog = SecurityLog(tmp_path, wall=clock.wall, max_kb=1, count=3)
    bus = SecurityEvents(clock)
    bus.listeners.append(seclog.write)
    bus.record("StartupOfTheDevice", "boot")
    first = seclog.path.read_text().splitlines()[0]
    assert first.startswith("2024-05-01T00:00:00.000Z ") and first.endswith(
        "StartupOfTheDevice boot")
    for n in range(200):
        clock.jump(60)
        bus.record("SettingSystemTime", f"event {n:03d} " + "x" * 40)
    files = sorted(tmp_path.glob("logs/security.log*"))
    assert [f.name for f in files] == ["security.log", "security.log.1", "security.log.2"]
    assert all(f.stat().st_size <= 1024 + 200 for f in files)
    text = seclog.path.read_text()
    assert "event 199" in text and "StartupOfTheDevice" not in "".join(
        f.read_text() for f in files)  # the oldest rotated out: bounded
    # A window: only files with lines inside it.
    every = seclog.files()
    assert every == [tmp_path / "logs" / n for n in
                     ("security.log.2", "security.log.1", "security.log")]
    assert seclog.files(end=datetime(2000, 1, 1, tzinfo=UTC)) == []
    assert seclog.files(start=datetime(2100, 1, 1, tzinfo=UTC)) == []
    seclog.close()


def test_security_log_on_a_read_only_card_costs_the_log_not_the_event(tmp_path: Path):
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the directory should be")
    seclog = SecurityLog(tmp_path)
    bus = SecurityEvents(FakeClock(start_wall=1.7e9))
    heard: list[SecurityEvent] = []
    bus.listeners += [seclog.write, heard.append]
    bus.record("TamperDetectionActivated")
    assert [e.kind for e in heard] == ["TamperDetectionActivated"]


# ====================================================================== secrets


def test_redaction_masks_secrets_their_header_forms_and_private_keys():
    secrets = Secrets()
    secrets.add("hunter2-long", station_id="CP1")
    secrets.add("6d792d6b6579")  # hex AuthorizationKey: "my-key"
    secrets.add("abc")  # too short to mask
    header = base64.b64encode(b"CP1:hunter2-long").decode()
    text = f"pw hunter2-long basic {header} key my-key abc {KEY_PEM} end"
    clean = secrets.redact(text)
    assert "hunter2-long" not in clean and header not in clean and "my-key" not in clean
    assert "abc" in clean and clean.endswith(" end")
    assert "PRIVATE KEY" not in clean and MASK in clean
    assert leaks(clean, secrets.values) == []
    assert len(leaks(text, secrets.values)) == 4  # three secrets and the key


def test_installed_guard_masks_every_record_at_every_level(short_dir):
    # The agent installs the record factory and registers its configuration's password.
    Agent(agent_config(NOWHERE, short_dir, password="yaml-password-123", profile=1)
          ).storage.close()
    logger = logging.getLogger("cp_agent.test_redaction")
    collector = LeakCollector()
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    logger.addHandler(keep)
    logger.addHandler(collector)
    logger.setLevel(logging.DEBUG)
    try:
        logger.debug("debug %s", "yaml-password-123")
        logger.critical("key %s", KEY_PEM)
        try:
            raise ValueError("refused yaml-password-123")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(keep)
        logger.removeHandler(collector)
        logger.setLevel(logging.NOTSET)
    assert collector.take() == []
    assert seen[0].getMessage() == f"debug {MASK}"
    assert "PRIVATE KEY" not in seen[1].getMessage()
    assert "yaml-password-123" not in (seen[2].exc_text or "")


def test_redacting_filter_for_records_made_elsewhere():
    secrets = Secrets()
    secrets.add("s3cret-value")
    record = logging.makeLogRecord({"msg": "got %s", "args": ("s3cret-value",)})
    assert RedactingFilter(secrets).filter(record)
    assert record.getMessage() == f"got {MASK}"
    other = logging.makeLogRecord({"msg": "100%% sure", "args": ()})
    redact_record(other, secrets)
    assert other.getMessage() == "100%% sure"


def test_the_suite_wide_check_catches_a_leaked_secret_or_key():
    SECRETS.add("registered-secret-42")
    made_elsewhere = logging.makeLogRecord(
        {"name": "x", "msg": "oops %s", "args": ("registered-secret-42",)})
    found = record_leaks(made_elsewhere)
    assert found and "registered-secret-42" not in " ".join(found)
    key = logging.makeLogRecord({"name": "x", "msg": f"loaded {KEY_PEM}"})
    assert record_leaks(key) == ["a PEM private key"]
    assert record_leaks(logging.makeLogRecord({"msg": "nothing here"})) == []
    collector = LeakCollector()
    collector.handle(made_elsewhere)
    assert len(collector.take()) == 1 and collector.take() == []


def test_the_suite_guard_sees_debug_records_and_secrets_learnt_later(caplog):
    """The guard scans the agent's DEBUG records though nobody emits them (the root is at
    WARNING), without handing them to pytest's capture, and checks a test's records again for
    a secret registered after they were made (the record factory could not mask it then)."""
    from tests import secret_guard

    install_redaction()
    logger = logging.getLogger("cp_agent.test_guard")
    assert not logging.getLogger().isEnabledFor(logging.DEBUG)
    secret_guard._collector.take()
    logger.debug("token %s", "late-secret-9876")  # not a known secret yet
    SECRETS.add("late-secret-9876")
    logger.debug("again %s", "late-secret-9876")  # masked by the factory: no leak
    logger.info("key %s", KEY_PEM)  # masked too
    found = secret_guard._collector.take()
    assert len(found) == 1 and "registered after it was logged" in found[0]
    assert "late-secret-9876" not in found[0] and "cp_agent.test_guard DEBUG" in found[0]
    assert [r for r in caplog.records if r.name == logger.name] == []


def test_stored_passwords_are_registered_when_written(short_dir):
    agent = Agent(agent_config(NOWHERE, short_dir))
    try:
        agent.storage.set_setting("link.password.new", "set-by-the-csms-99")
        assert "set-by-the-csms-99" in SECRETS.values
        agent.storage.set_setting("setting.HeartbeatInterval", "not-a-secret-77")
        assert "not-a-secret-77" not in SECRETS.values
    finally:
        agent.storage.close()


# ====================================================================== triggers


EXTENDED = [
    ("BootNotification", None, "BootNotification"),
    ("Heartbeat", None, "Heartbeat"),
    ("MeterValues", 1, "MeterValues"),
    ("StatusNotification", 1, "StatusNotification"),
    ("FirmwareStatusNotification", None, "SignedFirmwareStatusNotification"),
    ("LogStatusNotification", None, "LogStatusNotification"),
    ("SignChargePointCertificate", None, "SignCertificate"),
]


@pytest.mark.parametrize("what, connector, action", EXTENDED)
async def test_extended_trigger_message(what, connector, action, short_dir):
    async with strict_csms(("1.6",)) as csms:
        agent = Agent(agent_config(csms.url, short_dir))
        await agent.start()
        try:
            await online(agent)
            link = await csms.wait_station(SID)
            await online16(agent, csms)  # every boot-time status is in
            if action == "SignCertificate" and agent.adapter.trigger_target(
                    "SignChargePointCertificate") is None:
                pytest.skip("no certificate block in this build")
            before = len(csms.messages(SID, action))
            request = {"requestedMessage": what}
            if connector is not None:
                request["connectorId"] = connector
            res = await link.call("ExtendedTriggerMessage", request)
            assert res["status"] == "Accepted"
            await csms.wait_for(action, station_id=SID, count=before + 1)
            answer = next(i for i, m in enumerate(csms.log)
                          if m.action == "ExtendedTriggerMessage" and m.kind == "CALLRESULT")
            after = [i for i, m in enumerate(csms.log) if m.action == action
                     and m.kind == "CALL" and m.direction == "cs->csms" and i > answer]
            assert after, "the triggered message follows the answer"
        finally:
            await agent.stop()


async def test_extended_trigger_message_rejected_and_not_implemented(short_dir, monkeypatch):
    async with strict_csms(("1.6",)) as csms:
        agent = Agent(agent_config(csms.url, short_dir))
        await agent.start()
        try:
            await online(agent)
            link = await csms.wait_station(SID)
            bad = await link.call("ExtendedTriggerMessage",
                                  {"requestedMessage": "StatusNotification", "connectorId": 9})
            assert bad["status"] == "Rejected"
            monkeypatch.setattr(agent.adapter, "trigger_target", lambda message: None)
            nobody = await link.call("ExtendedTriggerMessage",
                                     {"requestedMessage": "SignChargePointCertificate"})
            assert nobody["status"] == "NotImplemented"
            idle = await link.call("ExtendedTriggerMessage",
                                   {"requestedMessage": "LogStatusNotification"})
            assert idle["status"] == "Accepted"
            status = await csms.wait_for("LogStatusNotification", station_id=SID)
            assert status == {"status": "Idle"}  # no upload running: no requestId (N01.FR.12)
        finally:
            await agent.stop()


TRIGGERED_BY_A_BLOCK = {"1.6": ("TriggerMessage", "FirmwareStatusNotification", "connectorId"),
                        "2.0.1": ("TriggerMessage", "PublishFirmwareStatusNotification", "evse")}


@pytest.mark.parametrize("version", VERSIONS)
async def test_trigger_of_a_message_a_block_owns_calls_it_after_the_answer(version, short_dir,
                                                                           monkeypatch):
    action, message, where = TRIGGERED_BY_A_BLOCK[version]
    async with strict_csms((version,)) as csms:
        agent = Agent(agent_config(csms.url, short_dir, versions=(version,)))
        await agent.start()
        try:
            await online(agent)
            link = await csms.wait_station(SID)
            called: list[tuple[int | None, int]] = []

            async def send(evse_id: int | None) -> None:
                called.append((evse_id, len(csms.log)))

            asked: list[str] = []

            def target(name: str):
                asked.append(name)
                return send if name == message else None

            monkeypatch.setattr(agent.adapter, "trigger_target", target)
            request = {"requestedMessage": message,
                       where: 1 if where == "connectorId" else {"id": 1}}
            res = await link.call(action, request)
            assert res["status"] == "Accepted"
            await eventually(lambda: bool(called), "the block's method was called")
            answer = next(i for i, m in enumerate(csms.log)
                          if m.action == action and m.kind == "CALLRESULT")
            assert called[0][0] == 1 and called[0][1] > answer
            assert message in asked
            monkeypatch.setattr(agent.adapter, "trigger_target", lambda name: None)
            if version == "2.0.1":
                res = await link.call(action, {"requestedMessage": message})
                assert res["status"] == "NotImplemented"
        finally:
            await agent.stop()


async def test_two_blocks_claiming_one_trigger_is_a_build_error(short_dir):
    import dataclasses

    from agent.ocpp import registry
    from agent.ocpp.adapter import Adapter
    from agent.ocpp.blocks import Block

    class One(Block):
        TRIGGERS = {"X": "send_x"}

        async def send_x(self, evse_id: int | None) -> None:
            pass

    class Two(One):
        pass

    class Broken(Block):
        TRIGGERS = {"Y": "no_such_method"}

    agent = Agent(agent_config(NOWHERE, short_dir))
    try:
        spec = registry.spec("1.6")
        with pytest.raises(ValueError, match="claimed twice"):
            Adapter(dataclasses.replace(spec, blocks=(*spec.blocks, One, Two)), agent.adapter.ctx)
        with pytest.raises(TypeError, match="no_such_method"):
            Adapter(dataclasses.replace(spec, blocks=(*spec.blocks, Broken)), agent.adapter.ctx)
        ok = Adapter(dataclasses.replace(spec, blocks=(*spec.blocks, One)), agent.adapter.ctx)
        assert ok.trigger_target("X") is not None and ok.trigger_target("Z") is None
    finally:
        agent.storage.close()


def test_sqlite_full_is_recognised():
    # The text SQLite uses is what the storage maps to kind "full" (MemoryExhaustion).
    assert "full" in str(sqlite3.OperationalError("database or disk is full"))
