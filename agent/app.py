"""The composition root: reads the configuration, builds every layer, runs and stops them.

Only this module knows all the pieces.  ``Agent`` is used by ``cp-agent run`` (the daemon), by
``cp-agent demo``, by the tests (several agents in one process) and by the swarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent import __version__
from agent.clock import Clock
from agent.config import AgentConfig
from agent.control_server import ControlServer
from agent.core.model import StopReason
from agent.core.security_events import SECURITY_SETTINGS
from agent.core.settings import Settings
from agent.core.station import Station
from agent.frames import KEEP as FRAME_HISTORY
from agent.frames import FrameLog
from agent.link.connection import Link
from agent.link.network import NEW_PASSWORD_KEY, PASSWORD_KEY, NetworkPlan, StoreTls
from agent.ocpp import registry
from agent.ocpp.adapter import Adapter, EvseInfo, StationContext
from agent.platform.installer import Installer, build_installer
from agent.redaction import SECRETS
from agent.redaction import install as install_redaction
from agent.sdnotify import Notifier
from agent.security.names import holds_identity
from agent.security.security_log import SecurityLog, own_name
from agent.storage import MEMORY, Storage, StorageError
from agent.storage.settings import SECRET_KEY
from hal.interfaces import FaultKind, Hal

if TYPE_CHECKING:  # built on first use (Station.provide): not imported at start-up
    from agent.core.cost import Costs
    from agent.core.diagnostics import Diagnostics
    from agent.core.display import DisplayService
    from agent.core.firmware import FirmwareService
    from agent.core.load_management import LoadManager  # only with a site: section
    from agent.security.store import CertificateStore

log = logging.getLogger("cp_agent")

# How long a clean stop waits for queued transaction messages to reach a connected CSMS.
FLUSH_ON_STOP_S = 5.0
# The OCPP version last agreed with a CSMS (its adapter is in charge while offline).
LAST_VERSION_SETTING = "link.version"
# A basic-auth password the CSMS set (2.0.1 SecurityCtrlr.BasicAuthPassword) replaces the
# YAML one from the next connection on.
PASSWORD_SETTING = "v201.dm.SecurityCtrlr/BasicAuthPassword"
# The 2.0.1 variables the link's network profiles follow (agent/link/network.py).
PRIORITY_SETTING = "v201.dm.OCPPCommCtrlr/NetworkConfigurationPriority"
ATTEMPTS_SETTING = "v201.dm.OCPPCommCtrlr/NetworkProfileConnectionAttempts"
# Where agent.core.diagnostics persists the upload a restart may cut (its JOB_SETTING; a
# test keeps the two equal): read at start-up without importing that module.
DIAGNOSTICS_JOB = "diagnostics.job"
FIRMWARE_JOB = "firmware.job"  # agent.core.firmware's JOB_SETTING, likewise
# Names of configuration entries / settings whose values are secrets (diagnostics archive).
_SECRET_NAME = re.compile(r"(?i)password|passwd|secret|token|credential|key$")


def _secret_name(name: str) -> bool:
    return _SECRET_NAME.search(name) is not None


def build_hal(cfg: AgentConfig, clock: Clock) -> Hal:
    """The HAL named by ``hal.driver``; the hardware factory validates its own section."""
    from hal.factory import build_hal as build
    from hal.factory import parse_hal_config

    hal_cfg = parse_hal_config(cfg.hal, cfg.evse_ids)
    return build(hal_cfg, monotonic=clock.monotonic)


def build_iso15118(cfg: AgentConfig, station: Station, state_dir: Path) -> Any:
    """ISO 15118 high-level communication when ``hal.iso15118`` is enabled: the SECC
    sidecars (hal/iso15118/client.py) and the core's side of them, as ``station.iso15118``
    (agent/core/iso15118.py); None otherwise."""
    from hal.factory import parse_hal_config

    iso = parse_hal_config(cfg.hal, cfg.evse_ids).iso15118
    if iso is None or not iso.enabled:
        return None
    from agent.core.iso15118 import Iso15118Service
    from hal.iso15118.client import HighLevelCommunication

    service = Iso15118Service(station, HighLevelCommunication(iso, state_dir / "iso15118"),
                              evse_names=iso.evse_ids, station_id=cfg.station.id)
    station.iso15118 = service
    return service


def _external_source(modes: Any) -> None:
    """An energy manager (the MQTT bridge) gives external limits and setpoints: the 2.1
    operation modes ExternalLimits / ExternalSetpoint are offered."""
    modes.external_limits = True
    modes.external_setpoint_source = True


def build_load_manager(cfg: AgentConfig, hal: Hal, station: Station,
                       clock: Clock) -> LoadManager | None:
    """Local load management from the ``site:`` section (None without one); the grid meter is
    validated against the HAL (``HalConfigError`` naming the ``site.grid_meter`` key)."""
    site = cfg.site
    if site is None:
        return None
    from agent.core.load_management import LoadManager, SiteLimits

    assert site.max_current_a is not None  # validated
    meter = None
    if site.grid_meter is not None:
        from hal.factory import build_grid_meter, parse_grid_meter, parse_hal_config

        hal_cfg = parse_hal_config(cfg.hal, cfg.evse_ids)
        meter = build_grid_meter(parse_grid_meter(site.grid_meter, hal_cfg, cfg.hal), hal,
                                 hal_cfg)
    limits = SiteLimits(max_current_a=site.max_current_a, min_current_a=site.min_current_a,
                        fallback_current_a=site.fallback_current_a or 0.0,
                        silent_samples=site.silent_samples)
    return LoadManager(station.evses, limits, clock, grid_meter=meter,
                       interval_s=station.meter_poll_s, profiles=station.charging_profiles,
                       on_fallback=lambda active, detail: station.station_fault(
                           FaultKind.METER, active, detail))


class Agent:
    """One charge point: storage, HAL, core, protocol adapters, link, control socket."""

    def __init__(self, cfg: AgentConfig, *, clock: Clock | None = None,
                 hal: Hal | None = None, notifier: Notifier | None = None,
                 control: bool = True,
                 on_frame: Callable[[str, str, str, str, dict], None] | None = None,
                 frame_history: int = FRAME_HISTORY,
                 state_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or Clock()
        self.notifier = notifier or Notifier()
        self.storage = Storage(cfg.storage.path)
        # Everything the agent keeps on the board (certificates, logs, firmware downloads)
        # lives beside the state file, so one directory is what to protect and back up.
        # A state in memory (degraded mode, tests) has no directory: ``state_dir`` if the
        # caller owns one (a swarm's thousands of stations share its temporary directory),
        # else a private temporary one, never the working directory.
        self.state_dir = ((state_dir or Path(tempfile.mkdtemp(prefix="cp-agent-state-")))
                          if cfg.storage.path == MEMORY
                          else Path(cfg.storage.path).resolve().parent)
        self.hal = hal or build_hal(cfg, self.clock)
        self.frames = FrameLog(self.clock, log_frames=cfg.log.frames, keep=frame_history)
        self.settings = Settings(self.storage, overrides=registry.factory_settings(
            cfg.ocpp.defaults, cfg.ocpp.versions))
        limits = {e.id: (e.max_current_a, e.min_current_a) for e in cfg.evses}
        connectors = {e.id: tuple(c.id for c in e.connectors) for e in cfg.evses}
        self.station = Station(self.hal, self.storage, self.clock, settings=self.settings,
                               evse_limits=limits, evse_connectors=connectors,
                               meter_persist_s=cfg.storage.meter_persist_s)
        # Security events (agent/core/security_events.py): the security log hears every one,
        # the adapter in charge queues the critical ones; no secret reaches any log line.
        install_redaction()
        self._register_secrets()
        events = self.station.security_events
        events.scrub = SECRETS.redact
        # Agents sharing a state directory (a swarm's stations) keep a security log each, so
        # that a GetLog SecurityLog uploads this station's lines only.
        self.security_log = SecurityLog.of_agent(
            self.state_dir, cfg.station.id, shared=state_dir is not None,
            memory=cfg.storage.path == MEMORY, wall=self.clock.wall)
        events.listeners.append(self.security_log.write)
        self.storage.on_full = self._storage_full
        self.settings.listeners.append(self._security_setting_changed)
        # Keys, the station certificate chain and the roots (both versions' certificate
        # blocks and the link's TLS reach it as station.certificates), built on first use
        # or at start-up when the station needs it then (_certificates_at_start).
        # Agents sharing a state directory have a certificate directory each, made by the
        # first certificate (a swarm's stations mostly never get one).
        self._shared_state = state_dir is not None
        self.certs_dir = (self.state_dir / "certs" / own_name(cfg.station.id)
                          if self._shared_state else self.state_dir / "certs")
        self.station.provide("certificates", self._build_certificates)
        # Where and how the link connects: network profiles, security profile, password,
        # the TLS material from the certificate store (agent/link/network.py).
        self.tls = StoreTls(cfg.ocpp, lambda: getattr(self.station, "certificates", None))
        self.network = NetworkPlan(
            cfg.ocpp, cfg.station.id, self.storage, tls=self.tls,
            priority=lambda: self._dm_list(PRIORITY_SETTING, "1"),
            set_priority=lambda slots: self.storage.set_setting(PRIORITY_SETTING,
                                                                ",".join(slots)),
            attempts=lambda: self._dm_int(ATTEMPTS_SETTING, 3),
            legacy_password=lambda: self.storage.get_setting(PASSWORD_SETTING),
            on_security_event=self.station.security_events.record)
        self.load = build_load_manager(cfg, self.hal, self.station, self.clock)
        self.reset_kind: str | None = None
        # Firmware updates: one job (agent/core/firmware.py) over the platform's installer
        # (agent/platform/); both versions' firmware blocks reach it as station.firmware.
        # The interpreter to re-execute after an update that replaced it (python_package).
        self.restart_python: str | None = None
        fw = cfg.firmware
        kind = fw.kind(cfg.hal.get("driver"))
        self.installer: Installer | None = build_installer(
            kind, fw.command if kind == "command" else fw.python_package, self.storage,
            self._restart_for_firmware, self.state_dir)
        # The job itself is built (agent.core.firmware imported) on the first request, or at
        # start-up when the state file holds one to carry on.
        self.station.provide("firmware", self._build_firmware)
        # What a session costs (agent/core/cost.py), built when a CSMS first speaks of a
        # tariff or a cost, or at start-up when the state file holds one; what the driver
        # sees (agent/core/display.py), only on a station with a screen, built at start-up.
        # Both versions' blocks reach them as station.cost / station.display.
        self.station.provide("cost", self._build_costs)
        if getattr(self.hal, "display", None) is not None:  # it follows every EVSE from now
            self.station.display = self._build_display()  # type: ignore[attr-defined]
        build_iso15118(cfg, self.station, self.state_dir)  # station.iso15118 (or None)
        self._stop = asyncio.Event()
        ctx = StationContext(
            station=self.station, storage=self.storage, clock=self.clock,
            settings=self.settings, station_id=cfg.station.id, vendor=cfg.station.vendor,
            model=cfg.station.model, serial_number=cfg.station.serial_number,
            firmware_version=self._installed_version() or cfg.station.firmware_version
            or f"cp-agent {__version__}",
            security_profile=cfg.ocpp.security_profile,
            message_timeout_s=cfg.ocpp.call_timeout_s,
            evses=[EvseInfo(e.id, e.phases, e.max_current_a * 230.0 * e.phases,
                            e.connectors[0].type,
                            connectors=tuple((c.id, c.type) for c in e.connectors))
                   for e in cfg.evses],
            defaults=cfg.ocpp.defaults, request_reset=self._request_reset,
            network=self.network)
        self._ctx = ctx
        # One adapter per offered version, built from the registry's entry.
        self.adapters: dict[str, Adapter] = {
            v: Adapter(registry.spec(v), ctx) for v in cfg.ocpp.versions}
        # State in memory and one adapter: every queued message is that version's.
        self._one_version_in_memory = cfg.storage.path == MEMORY and len(self.adapters) == 1
        # While offline the core reports to the adapter of the version last negotiated, so
        # that what happens during an outage is queued in the form that CSMS understands.
        last = self.storage.get_setting(LAST_VERSION_SETTING)
        if last not in self.adapters:
            last = cfg.ocpp.versions[0]
        self.adapter: Adapter = self.adapters[last]
        self.adapter.activate()
        self.link = Link(cfg.ocpp, cfg.station.id, self.adapters, clock=self.clock,
                         ping_interval=lambda: float(self.settings["WebSocketPingInterval"]),
                         on_version=self._on_version, on_frame=self._frame_observer(on_frame),
                         profiles=self.network,
                         on_security_event=self.station.security_events.record)
        self.network.reconnect_hook = self.link.reconnect
        self.control = ControlServer(cfg.control.socket, self.handle_control) if control else None
        self._tasks: list[asyncio.Task] = []
        self.ready = asyncio.Event()
        self._stopped = False
        self.web: Any = None  # agent.web.WebServer, imported only when web.listen is set
        self.web_url: str | None = None  # where the status page listens (port 0 resolved)
        self.mqtt: Any = None  # agent.integrations.mqtt.MqttBridge, only with an mqtt: section
        if cfg.mqtt is not None:
            from agent.integrations.mqtt import MqttBridge  # the one module that uses aiomqtt

            self.mqtt = MqttBridge(cfg.mqtt, cfg.station.id, self.station, clock=self.clock,
                                   link_state=lambda: (self.link.state, self.link.version))
            # 2.1 ExternalLimits / ExternalSetpoint: the energy manager's MQTT limits and
            # setpoints are the external source (the modes built on first use: a station
            # without a stage that takes setpoints never needs them).
            self.station.when_built("v2x_modes", _external_source)
        # GetDiagnostics / GetLog: the blocks reach the collector as station.diagnostics,
        # built (agent.core.diagnostics imported) on the first request or to resume an upload.
        self.station.provide("diagnostics", self._build_diagnostics)

    @property
    def diagnostics(self) -> Diagnostics:
        return self.station.diagnostics  # type: ignore[attr-defined]

    @property
    def firmware(self) -> FirmwareService:
        return self.station.firmware  # type: ignore[attr-defined]

    @property
    def costs(self) -> Costs:
        return self.station.cost  # type: ignore[attr-defined]

    @property
    def display(self) -> DisplayService | None:
        """The screen's service (None: the station has no screen)."""
        return getattr(self.station, "display", None)

    def _build_costs(self) -> Costs:
        """The costs, with the transactions running now (as if they had been there when
        those began: a tariff the CSMS names for their driver is theirs)."""
        from agent.core.cost import Costs

        costs = Costs(self.storage, self.clock, self.settings)
        for evse in self.station.evses.values():
            s, tx = evse.session, evse.tx
            if tx is not None and s is not None and s.ended_reason is None:
                costs.started(tx.local_id, evse.id, tx.id_token or None)
        return costs

    def _costs_stored(self) -> bool:
        """The start-up check of the costs: one row query (an unreadable table counts as
        stored: the costs are built and log what is wrong)."""
        try:
            return self.storage.tx_costs_any()
        except StorageError:
            return True

    def _build_display(self) -> DisplayService:
        from agent.core.display import DisplayService

        return DisplayService(self.station, getattr(self.hal, "display", None), self.clock,
                              settings=self.settings, storage=self.storage)

    @property
    def certificates(self) -> CertificateStore:
        return self.station.certificates  # type: ignore[attr-defined]

    def _build_certificates(self) -> CertificateStore:
        from agent.security.store import CertificateStore

        return CertificateStore(
            self.certs_dir, self.clock, self.station.security_events, settings=self.settings,
            trusted_files=[f for f in (self.cfg.ocpp.ca_file,) if f], lazy=self._shared_state)

    def _certificates_at_start(self) -> bool:
        """Whether the certificate store has start-up duties: TLS (security profile 2/3,
        the configured one or one a CSMS raised it to, or a wss:// URL) needs the CSMS roots,
        factory station-certificate files are imported, and a station certificate in the
        store has its renewal timer.  Otherwise (profile 0/1) it is built on first use."""
        ocpp = self.cfg.ocpp
        return (self.network.security_profile >= 2  # the YAML's or a higher one reached
                or ocpp.url.startswith("wss://")
                or bool(ocpp.client_cert_file and ocpp.client_key_file)
                or holds_identity(self.certs_dir))

    def _build_firmware(self) -> FirmwareService:
        from agent.core.firmware import FirmwareService

        fw, driver = self.cfg.firmware, self.cfg.hal.get("driver")
        return FirmwareService(
            self.station, self.storage, self.clock, self.installer, self.state_dir,
            allow_unsigned=fw.unsigned_ok(driver), confirm_timeout_s=fw.confirm_timeout_s,
            default_retries=fw.retries, default_retry_interval_s=fw.retry_interval_s,
            download_timeout_s=fw.download_timeout_s, ssl_context=self._transfer_tls)

    def _installed_version(self) -> str | None:
        """The version the installer says runs (FirmwareService.current_version's answer)."""
        return self.installer.current_version() if self.installer is not None else None

    def _firmware_status(self) -> dict[str, Any] | None:
        """The firmware part of the status; without a job (the service never built) what
        FirmwareService.status answers for none, without importing it."""
        firmware = self.station.built("firmware")
        if firmware is not None:
            return firmware.status()
        return {"installer": self.installer.name if self.installer is not None else None,
                "version": self._installed_version(), "status": "Idle"}

    def _build_diagnostics(self) -> Diagnostics:
        from agent.core.diagnostics import Diagnostics, Sources

        return Diagnostics(self.cfg.station.id, self.clock, self.state_dir, Sources(
            config=self._public_config, status=self.status,
            frames=lambda: [f.line() for f in self.frames.recent()],
            settings=self._public_settings, secrets=self._secrets),
            uploader=self._upload, storage=self.storage, security_log=self.security_log.lines)

    # ------------------------------------------------------------------ file transfers

    def _transfer_tls(self) -> Any:
        """How HTTPS / FTPS file servers are verified: the system CAs plus the CSMS roots
        (agent/transfer/tls.py); built per transfer, so a newly installed root counts."""
        from agent.transfer.tls import context

        return context(self.tls.ca_files())

    async def _upload(self, location: str, name: str, data: bytes) -> str:
        from agent.transfer.upload import upload

        return await upload(location, name, data, ssl_context=self._transfer_tls())

    # ------------------------------------------------------------------ diagnostics sources

    def _public_config(self) -> dict[str, Any]:
        from agent.web.view import public_config  # the status page's /config, reused

        return public_config(self.cfg)

    def _public_settings(self) -> dict[str, Any]:
        return {d.name: "***" if _secret_name(d.name) else d.format(v)
                for d, v in self.settings.items()}

    def _secrets(self) -> list[str]:
        """Every secret value the station knows, for the archive's last scrub."""
        found: list[str] = []

        def walk(node: Any, name: str = "") -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, str(k))
            elif isinstance(node, (list, tuple)):
                for v in node:
                    walk(v, name)
            elif isinstance(node, str) and _secret_name(name):
                found.append(node)

        walk(dataclasses.asdict(self.cfg))
        found += [str(v) for d, v in self.settings.items() if _secret_name(d.name) and v]
        for key in (PASSWORD_SETTING, PASSWORD_KEY, NEW_PASSWORD_KEY):  # CSMS-set passwords
            stored = self.storage.get_setting(key)
            if stored:
                found.append(stored)
        try:  # the process-wide registry of secrets the log masks
            from agent.redaction import SECRETS
        except ImportError:
            return found
        return found + list(SECRETS.values)

    # ------------------------------------------------------------------ security

    def _register_secrets(self) -> None:
        """The configuration's credentials, masked in every log record (agent.redaction);
        those a CSMS sets later are registered by the storage as they are written."""
        cfg = self.cfg
        SECRETS.add(cfg.ocpp.password, station_id=cfg.station.id)
        SECRETS.add(urlsplit(cfg.ocpp.url).password)
        SECRETS.add(cfg.web.password)
        SECRETS.add(cfg.web.token)
        if cfg.mqtt is not None:
            SECRETS.add(cfg.mqtt.password)
        for key, value in self.storage.settings().items():  # registers the stored ones
            if SECRET_KEY.search(key):
                SECRETS.add(value, station_id=cfg.station.id)

    def _storage_full(self, text: str) -> None:
        """The state file's disk is full: MemoryExhaustion, recorded outside the failing
        write (its delivery writes to the same database)."""
        def record() -> None:
            self.station.security_events.record("MemoryExhaustion",
                                                "the disk of the state file is full")
        try:
            asyncio.get_running_loop().call_soon(record)
        except RuntimeError:
            record()

    def _security_setting_changed(self, name: str, value: Any) -> None:
        if name in SECURITY_SETTINGS:
            if name == "AuthorizationKey":
                SECRETS.add(str(value), station_id=self.cfg.station.id)
            self.station.security_events.record("ReconfigurationOfSecurityParameters",
                                                f"{name} changed")

    def _frame_observer(self, extra: Callable[[str, str, str, str, dict], None] | None
                        ) -> Callable[[str, str, str, str, dict], None]:
        """Every frame goes to the message log, and to ``extra`` (demo, swarm) if given."""
        if extra is None:
            return self.frames.record

        def both(direction: str, kind: str, unique_id: str, action: str,
                 payload: dict) -> None:
            self.frames.record(direction, kind, unique_id, action, payload)
            extra(direction, kind, unique_id, action, payload)

        return both

    def _dm_value(self, key: str) -> str | None:
        """A 2.0.1 variable the link follows: stored by a CSMS, else its ocpp.defaults entry."""
        stored = self.storage.get_setting(key)
        if stored is not None:
            return stored
        name = key.removeprefix("v201.dm.").replace("/", ".")
        value = self.cfg.ocpp.defaults.get(name)
        if isinstance(value, list):
            return ",".join(str(v) for v in value)
        return None if value is None else str(value)

    def _dm_list(self, key: str, default: str) -> list[str]:
        text = self._dm_value(key) or default
        return [x.strip() for x in text.split(",") if x.strip()]

    def _dm_int(self, key: str, default: int) -> int:
        try:
            return int(self._dm_value(key) or default)
        except ValueError:
            return default

    def _on_version(self, adapter: Adapter) -> None:
        """A CSMS agreed a version: its adapter takes over; messages of the other go."""
        previous = self.storage.get_setting(LAST_VERSION_SETTING)
        if previous != adapter.version:
            self.storage.set_setting(LAST_VERSION_SETTING, adapter.version)
        if adapter is not self.adapter:
            log.warning("OCPP version changed from %s to %s", self.adapter.version,
                        adapter.version)
            self.adapter = adapter
            adapter.activate()
        self._drop_foreign_messages(adapter)

    def _drop_foreign_messages(self, adapter: Adapter) -> None:
        """Messages queued for another OCPP version cannot be sent on this connection.

        A 1.6 StopTransaction means nothing to a 2.0.1 CSMS (and the other way round), so they
        are moved to the ``dropped`` table, where diagnostics can still find them, instead of
        blocking the queue.  A transaction still running is reported by the new adapter in
        its own terms (2.0.1 sends a Started for a transaction begun under 1.6).
        """
        if self._one_version_in_memory:
            # Only this version's adapter ever queued into this database (in memory, so no
            # earlier run's messages either): nothing can be foreign, no query to compile.
            return
        version = adapter.version
        allowed = adapter.outbox_actions
        forgotten: set[str] = set()
        for item in self.storage.outbox_foreign(allowed):
            log.warning("dropping queued %s #%s: queued for another OCPP version than %s",
                        item.action, item.id, version)
            self.storage.outbox_drop(item.id, f"queued for another OCPP version than {version}")
            if item.tx_ref is not None:
                forgotten.add(item.tx_ref)
        for local_id in forgotten:
            tx = self.storage.tx_get(local_id)
            if tx is not None and tx.closed and self.storage.tx_outbox_pending(local_id) == 0:
                self.storage.tx_forget(local_id)

    async def _request_reset(self, kind: str) -> None:
        self.reset_kind = kind
        self.station.security_events.reset_requested(self.storage, kind)
        self._stop.set()

    async def _restart_for_firmware(self) -> None:
        """The installers' reboot: the agent restarts as after a Reset (in the new
        interpreter when the update replaced it)."""
        if self.installer is not None and self.installer.restart_python:
            self.restart_python = self.installer.restart_python
        await self._request_reset("Hard")

    def request_stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        # Asked before the first write, while a database in memory still answers it without
        # SQLite (Engine.pristine); nothing below writes a cost.
        costs_stored = self._costs_stored()
        # Queued now (the adapter in charge is known), sent once the CSMS accepted the boot.
        self.station.security_events.started(self.storage)
        if self._certificates_at_start():
            self.station.certificates  # noqa: B018 - built now, before the blocks start
        imported = self.tls.import_factory_identity()  # security profile 3, factory files
        if imported is not None:
            log.info("%s", imported)
        if costs_stored:  # the totals the display shows after a restart
            self.station.cost  # noqa: B018 - built now
        await self.station.start()
        if self.station.iso15118 is not None:  # the SECCs start; their EVs come later
            await self.station.iso15118.start()
        if self.load is not None:  # shares the site's headroom from the first sample on
            self.load.start()
        # Transactions a power cut left open end now, reported by the adapter in charge.
        self.station.recover()
        if self.display is not None:
            self.display.start()
        # A firmware job in the state file (one query) is built before the blocks start:
        # they read its phase (2.0.1 boot reason) and carry on reporting it.
        resume_firmware = self.storage.get_setting(FIRMWARE_JOB) is not None
        if resume_firmware:
            self.station.firmware  # noqa: B018 - built now
        for adapter in self.adapters.values():
            await adapter.start()
        # An update a restart interrupted carries on; a rolled-back one reports the version
        # that runs again (before the link's first BootNotification).
        if self.storage.get_setting(DIAGNOSTICS_JOB) is not None:
            self.diagnostics.resume()  # an upload a restart cut: resumed or ended, never left
        if resume_firmware and await self.firmware.start():
            await self._restart_for_firmware()
        self._ctx.firmware_version = (self._installed_version()
                                      or self.cfg.station.firmware_version
                                      or f"cp-agent {__version__}")
        if self.control is not None:
            await self.control.start()
        if self.cfg.web.listen is not None:
            from agent.web import start_web

            self.web = await start_web(self)
            self.web_url = self.web.url if self.web is not None else None
        self._tasks.append(asyncio.create_task(self._ready_when_healthy(), name="self-check"))
        self._tasks.append(asyncio.create_task(self.link.run(), name="link"))
        if self.mqtt is not None:  # returns at once: a broker that is down delays nothing
            await self.mqtt.start()
        interval = self.notifier.watchdog_interval()
        if interval:
            self._tasks.append(asyncio.create_task(self._watchdog(interval / 2),
                                                   name="watchdog"))

    async def _ready_when_healthy(self) -> None:
        """READY=1 only once every device answers; until then systemd sees us starting."""
        while True:
            results = await self.hal.self_check()
            bad = [r for r in results if not r.ok]
            if not bad:
                self.notifier.ready(f"station {self.cfg.station.id} running")
                self.ready.set()
                return
            text = "; ".join(f"{r.device}: {r.detail or 'failed'}" for r in bad)
            log.error("self-check failed, not ready: %s", text)
            self.notifier.status(f"waiting for devices: {text}"[:200])
            await self.clock.sleep(5)

    async def _watchdog(self, period: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(period)

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self, reason: StopReason = StopReason.REBOOT) -> None:
        """Contactors open first; then transactions end, their Stops get a moment to go out."""
        if self._stopped:
            return
        self._stopped = True
        self.notifier.stopping()
        for evse in self.station.evses.values():
            await evse.emergency_open()
        if self.reset_kind is None:
            await self.station.end_all(reason)
        if self.adapter.online and self.storage.outbox_count():
            self.adapter.outbox.wake()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.adapter.outbox.idle.wait(), FLUSH_ON_STOP_S)
        if self.mqtt is not None:  # publishes the final state (contactors open), then offline
            await self.mqtt.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.load is not None:
            await self.load.stop()
        await self.link.close()
        for adapter in self.adapters.values():
            await adapter.stop()
        firmware = self.station.built("firmware")
        if firmware is not None:
            await firmware.stop()
        if self.display is not None:  # "out of service" on the glass, before the HAL closes
            await self.display.stop()
        if self.station.iso15118 is not None:
            await self.station.iso15118.stop()
        await self.station.stop()
        if self.control is not None:
            await self.control.stop()
        if self.web is not None:  # it reads the storage: stopped before that closes
            await self.web.stop()
        self.storage.close()
        self.security_log.close()
        self.notifier.close()

    async def run(self) -> str | None:
        """Run until SIGTERM/SIGINT or a Reset; returns the reset kind, if any."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        try:
            await self.wait()
        finally:
            await self.stop()
        return self.reset_kind

    # ------------------------------------------------------------------ control socket

    def status(self) -> dict[str, Any]:
        evses = []
        for snap in self.station.snapshots():
            evses.append({
                "evse": snap.evse_id, "connector": snap.connector_id,
                "pilot": snap.pilot.value, "contactor": "closed" if snap.contactor_closed
                else "open", "status": snap.status.value,
                # The status as the active version reports it (2.0.1: Available, Occupied...).
                "connector_status": self.adapter.spec.connector_status(snap),
                # 2.0.1 has no CSMS-assigned id: the station's own id is the transactionId.
                "transaction_id": snap.tx_remote_id if self.adapter.spec.csms_assigns_tx_id
                else snap.tx_local_id, "local_transaction_id": snap.tx_local_id,
                "token": snap.token,
                "energy_wh": round(snap.energy_wh, 1) if snap.energy_wh is not None else None,
                "meter_wh": round(snap.reading.energy_import_wh, 1) if snap.reading else None,
                "power_w": snap.power_w, "current_limit_a": snap.offered_a,
                "max_current_a": snap.limit_a, "limit_source": snap.limit_source,
                "operative": snap.operative,
                "faults": [str(f) for f in snap.faults],
                # A bidirectional power stage (agent/core/v2x.py): its EV, setpoint, bounds.
                "v2x": snap.power_stage.as_dict() if snap.power_stage else None,
                "export_wh": round(snap.reading.energy_export_wh, 1) if snap.reading
                and snap.power_stage else None,
                # Q (load sign: positive absorbed) and cos phi where the meter gives them.
                "reactive_var": snap.reading.power_reactive_var if snap.reading else None,
                "power_factor": snap.reading.power_factor if snap.reading else None,
            })
        return {"station": self.cfg.station.id, "link": self.link.state,
                "ocpp_version": self.link.version, "registration": self.adapter.registration,
                "last_error": self.link.last_error, "outbox": self.storage.outbox_count(),
                "station_faults": [str(f) for f in self.station.station_faults],
                "site": self.load.status() if self.load is not None else None,
                "firmware": self._firmware_status(),
                "display": self.display.status() if self.display is not None else None,
                "evses": evses}

    async def handle_control(self, request: dict) -> Any:
        """A control socket command (``cp-agent ctl``, the status page's actions): answered by
        agent/control_commands.py, imported by the first one."""
        from agent.control_commands import handle

        return await handle(self, request)
