"""`cp-agent` command line: run (the daemon), demo, ctl (bench tool), csms (a bench CSMS),
doctor (hardware probe)."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import sys
from collections.abc import Sequence

from agent import __version__
from agent.config import AgentConfig, ConfigError, load_config
from agent.ocpp import registry

EXIT_CONFIG = 2
# run / check-config: a path the configuration names cannot be used here (README: exit codes).
EXIT_PATH = 4
CSMS_PORT = 9000  # `cp-agent csms`, the usual OCPP-J port of CSMS test tools


def _setup_logging(level: str, *, frames: bool = False) -> None:
    # Under systemd the journal adds its own timestamps; keep lines short and greppable.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    if frames:  # the message log is asked for: shown whatever the level of the rest
        logging.getLogger("cp_agent.frames").setLevel(logging.INFO)


# How long the start-up housekeeping below waits for the first BootNotification to be answered
# before it runs anyway (a station that cannot reach its CSMS still gets it, just later).
BOOT_PATIENCE_S = 30.0


async def freeze_after_start(ready: asyncio.Event, booted: Sequence[asyncio.Event] = (), *,
                             patience_s: float = BOOT_PATIENCE_S) -> None:
    """Once the agent is up (``Agent.ready``: started, devices answering) and its first
    BootNotification was answered (any of ``booted``, or ``patience_s`` later), collect what
    start-up left as cyclic garbage and move every object alive now (modules, schemas, the
    agent's object graph) into the collector's permanent generation (``gc.freeze``): a full
    collection then no longer walks ~37,000 objects that live as long as the process.

    After the boot, not before it: the mock HAL answers its self-check at once, so ``ready``
    is set before the link has even connected, and a full collection there (~12 M
    instructions) was start-up time spent before the BootNotification went out
    (docs/performance.md).

    Measured (docs/performance.md): it changes nothing in an outbox replay (3 young-generation
    collections per 1,000 messages, ~1 ms, with or without it); what it saves is the
    occasional full collection of a long-running daemon.  What it can keep alive is at most
    the cyclic garbage of objects alive at that moment (e.g. a first connection that closes
    later): a one-time amount, never a growing one.
    """
    import gc

    from agent import dataclass_cache

    await ready.wait()
    if booted:
        waits = [asyncio.ensure_future(event.wait()) for event in booted]
        try:
            await asyncio.wait(waits, timeout=patience_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
    gc.collect()
    gc.freeze()
    # Every module a start needs is loaded now: their dataclass methods are cached for the
    # next start even if this process never exits cleanly (a power cut, SIGKILL).
    dataclass_cache.save()


def _load(path: str) -> AgentConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"cp-agent: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_run(ns: argparse.Namespace) -> int:
    cfg = _load(ns.config)
    from agent.control_server import ControlSocketError, ControlSocketInUse
    from agent.preflight import run_blockers

    blockers = run_blockers(cfg)
    for problem in blockers:  # one line each, before anything is opened
        print(f"cp-agent: {problem}", file=sys.stderr)
    if blockers:
        return EXIT_PATH
    if ns.log_frames:
        cfg.log.frames = True
    _setup_logging(ns.log_level or cfg.log.level, frames=cfg.log.frames)
    # A hung loop is killed by the systemd watchdog (SIGABRT): dump every stack to the journal.
    faulthandler.enable()
    from agent.app import Agent
    from agent.storage import StorageError

    restart_python: list[str | None] = [None]

    async def main() -> str | None:
        agent = Agent(cfg)
        if cfg.log.file:  # <state dir>/logs/agent.log, what GetDiagnostics / GetLog upload
            from agent.logfiles import install_agent_log

            install_agent_log(agent.state_dir, max_kb=cfg.log.file_max_kb,
                              count=cfg.log.file_count, wall=agent.clock.wall)
        booted = [adapter.registration_seen for adapter in agent.adapters.values()]
        freezer = asyncio.create_task(freeze_after_start(agent.ready, booted),
                                      name="gc-freeze")
        try:
            return await agent.run()
        finally:  # a firmware update may have replaced the interpreter (python_package)
            freezer.cancel()
            restart_python[0] = agent.restart_python

    try:
        reset = asyncio.run(main())
    except StorageError as exc:
        # Never charge without the journal; see agent/degraded.py for exit-or-degrade.
        from agent.degraded import EXIT_STORAGE, must_exit, run_degraded
        from agent.sdnotify import Notifier

        logging.getLogger("cp_agent").critical("state storage unusable: %s", exc)
        if must_exit(exc):
            Notifier().status(f"not started: {exc}"[:400])
            return EXIT_STORAGE
        try:
            reset = asyncio.run(run_degraded(cfg, exc))
        except KeyboardInterrupt:
            return 0
        except (ControlSocketError, ControlSocketInUse) as sock_exc:
            print(f"cp-agent: control.socket: {sock_exc.args[-1]}", file=sys.stderr)
            return EXIT_PATH
    except (ControlSocketError, ControlSocketInUse) as exc:
        # A race with the check above, or another agent listening there: one line, no trace.
        print(f"cp-agent: control.socket: {exc.args[-1]}", file=sys.stderr)
        return EXIT_PATH
    except KeyboardInterrupt:
        return 0
    if reset is not None:
        # Reset: start the same program afresh (same PID, so systemd keeps supervising it).
        logging.getLogger("cp_agent").warning("%s reset: restarting", reset)
        sys.stdout.flush()
        sys.stderr.flush()
        python = restart_python[0] or sys.executable
        os.execv(python, [python, "-m", "agent", *sys.argv[1:]])
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    if getattr(ns, "v2x", False):  # a discharge session with a DER control (2.1 only)
        if ns.ocpp != "2.1":
            print("cp-agent demo: --v2x needs --ocpp 2.1 (V2X and DER control are 2.1's)",
                  file=sys.stderr)
            return 2
        from agent.demo_v2x import run_v2x_demo

        return asyncio.run(run_v2x_demo())
    from agent.demo import run_demo

    return asyncio.run(run_demo(version=ns.ocpp, verbose=ns.verbose))


def cmd_swarm(ns: argparse.Namespace) -> int:
    from agent.swarm import PASSWORD_ENV, SwarmOptions, main, merge_reports, resolve_shard

    if ns.merge is not None:  # the JSON reports of several processes (pods), one summary
        try:
            lines: list[str] = []
            for name in ns.merge or ["-"]:
                if name == "-":
                    lines += sys.stdin.read().splitlines()
                else:
                    with open(name, encoding="utf-8") as f:
                        lines += f.read().splitlines()
            summary = merge_reports(lines, sys.stdout)
        except (OSError, ValueError) as exc:
            print(f"cp-agent swarm --merge: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return 0 if summary.booted == summary.stations else 1
    logging.basicConfig(level=getattr(logging, ns.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    try:
        if ns.csms is None or ns.count is None:
            raise ValueError("--csms and --count are required (unless --merge)")
        options = SwarmOptions(
            csms=ns.csms, count=ns.count, ocpp=ns.ocpp, id_prefix=ns.id_prefix,
            first_index=ns.first_index, charging_ratio=ns.charging_ratio, ramp=ns.ramp,
            duration=ns.duration, session_s=ns.session_s, meter_interval=ns.meter_interval,
            evses=ns.evses, id_tag=ns.id_tag,
            password=ns.password or os.environ.get(PASSWORD_ENV) or None,
            state_dir=ns.state_dir, seed=ns.seed, shard=resolve_shard(ns.shard, ns.shard_env),
            workers=ns.workers, report=ns.report, loop=ns.loop, id_width=ns.id_width,
            compression=ns.compression == "on")
        options.validate()
        return 0 if main(options, sys.stdout, ns.log_level).failed == 0 else 1
    except ValueError as exc:
        print(f"cp-agent swarm: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def cmd_ctl(argv: list[str]) -> int:
    from agent.control import ctl_main

    return ctl_main(argv, os.environ.get("CP_AGENT_SOCKET"))


def cmd_csms(ns: argparse.Namespace) -> int:
    from agent.testing.csms.command import main

    return main(ns.host, ns.port, ns.versions, ns.accept, ns.on_boot)


def cmd_doctor(ns: argparse.Namespace) -> int:
    cfg = _load(ns.config)
    try:
        from agent.doctor import doctor
        from hal.factory import HalConfigError, parse_hal_config
    except ImportError:
        print("cp-agent doctor: hardware support is not installed", file=sys.stderr)
        return 1
    try:
        hal_cfg = parse_hal_config(cfg.hal, cfg.evse_ids)
    except HalConfigError as exc:
        print(f"cp-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(doctor(hal_cfg, sys.stdout))


def cmd_check_config(ns: argparse.Namespace) -> int:
    cfg = _load(ns.config)
    try:
        from hal.factory import HalConfigError, parse_hal_config
    except ImportError:
        HalConfigError = ValueError  # noqa: N806
        parse_hal_config = None
    if parse_hal_config is not None:
        try:
            hal_cfg = parse_hal_config(cfg.hal, cfg.evse_ids)
            if cfg.site is not None and cfg.site.grid_meter is not None:
                from hal.factory import parse_grid_meter

                parse_grid_meter(cfg.site.grid_meter, hal_cfg, cfg.hal)
        except HalConfigError as exc:
            print(f"cp-agent: configuration error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    from agent.preflight import check_paths

    problems = check_paths(cfg)
    errors = [p for p in problems if not p.managed]
    for p in errors:
        print(f"cp-agent: path error: {p}", file=sys.stderr)
    if errors:
        return EXIT_PATH
    print(f"{ns.config}: ok (station {cfg.station.id}, {len(cfg.evses)} EVSE(s), "
          f"OCPP {', '.join(cfg.ocpp.versions)}, hal {cfg.hal.get('driver')})")
    # Directories cp-agent.service creates for itself: what they look like from here is
    # worth a line, but says nothing about the service.
    for p in problems:
        print(f"cp-agent: note: {p}", file=sys.stderr)
    return 0


def cmd_firmware_sign(ns: argparse.Namespace) -> int:
    """Print the base64 signature of a firmware image (the ``signature`` of SignedUpdateFirmware
    / 2.0.1 UpdateFirmware); see agent/security/signing.py for the schemes."""
    from pathlib import Path

    from agent.security.signing import SigningError, sign_image

    try:
        key = Path(ns.key).read_bytes()
        cert = Path(ns.cert).read_bytes() if ns.cert else None
        print(sign_image(Path(ns.image), key, cert))
    except OSError as exc:
        print(f"cp-agent firmware sign: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    except SigningError as exc:
        print(f"cp-agent firmware sign: {exc}", file=sys.stderr)
        return 1
    return 0


class _Undeclared:
    """Stands in for the parser of a subcommand the command line does not name: argparse
    parses the chosen subcommand's arguments only, so the others' need not be declared.
    Declaring all of them (~70 arguments, each help text looked up by gettext) was ~12 M
    instructions of every start (docs/performance.md); ``cp-agent -h`` still lists every
    subcommand, and ``cp-agent swarm -h`` shows every argument of swarm."""

    def add_argument(self, *args: object, **kwargs: object) -> None:
        return None

    def set_defaults(self, **kwargs: object) -> None:
        return None

    def add_subparsers(self, **kwargs: object) -> _Undeclared:
        return self

    def add_parser(self, *args: object, **kwargs: object) -> _Undeclared:
        return self


def _declared(parser: argparse.ArgumentParser, name: str,
              command: str | None) -> argparse.ArgumentParser:
    return parser if command is None or command == name else _Undeclared()  # type: ignore[return-value]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command`` (the subcommand about to be parsed) only that
    subcommand's arguments are declared, the others are listed by name and help."""
    versions = list(registry.versions())
    p = argparse.ArgumentParser(prog="cp-agent", description="OCPP charge point agent")
    p.add_argument("--version", action="version", version=f"cp-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the station daemon")
    r = _declared(r, "run", command)
    r.add_argument("--config", required=True, help="YAML configuration file")
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    r.add_argument("--log-frames", action="store_true",
                   help="log every OCPP frame (redacted; logger cp_agent.frames), as "
                        "log.frames: true does")
    r.set_defaults(func=cmd_run)
    d = sub.add_parser("demo", help="play a charging session against a local CSMS (mock HAL)")
    d = _declared(d, "demo", command)
    d.add_argument("--ocpp", default=versions[0], choices=versions,
                   help=f"OCPP version to speak (default {versions[0]})")
    d.add_argument("-v", "--verbose", action="store_true", help="also print agent logs")
    d.add_argument("--v2x", action="store_true",
                   help="with --ocpp 2.1: a discharge session (bidirectional mock EV) with a "
                        "DER control")
    d.set_defaults(func=cmd_demo)
    sub.add_parser("ctl", help="drive a running agent (bench tool); see `cp-agent ctl -h`",
                   add_help=False)
    cs = sub.add_parser("csms", help="run the strict test CSMS for a bench rig, printing "
                                     "every frame, until Ctrl-C",
                        description="The strict test CSMS the integration tests use, as a "
                        "command: a station connects to ws://HOST:PORT/<station id>.")
    cs = _declared(cs, "csms", command)
    cs.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                    "127.0.0.1; 0.0.0.0 for a charger on the network)")
    cs.add_argument("--port", type=int, default=CSMS_PORT,
                    help=f"port (default {CSMS_PORT}; 0: any free one, printed)")
    cs.add_argument("--versions", default=",".join(versions), metavar="V[,V...]",
                    help=f"OCPP versions offered, preferred first (default "
                         f"{','.join(versions)})")
    cs.add_argument("--accept", nargs="+", metavar="TOKEN",
                    help="cards the CSMS accepts, any other is Invalid (default: all)")
    cs.add_argument("--on-boot", metavar="FILE",
                    help="CALLs (YAML or JSON: per OCPP version, a list of {action, payload, "
                         "delay_s}) sent to each station once its boot is accepted")
    cs.set_defaults(func=cmd_csms)
    doc = sub.add_parser("doctor", help="probe every configured device")
    doc = _declared(doc, "doctor", command)
    doc.add_argument("--config", required=True)
    doc.set_defaults(func=cmd_doctor)
    c = sub.add_parser("check-config", help="validate a configuration file and exit")
    c = _declared(c, "check-config", command)
    c.add_argument("--config", required=True)
    c.set_defaults(func=cmd_check_config)
    sw = sub.add_parser("swarm", help="simulate many stations (real agents, mock HAL) "
                                      "against a CSMS", description="Run N stations in one "
                        "process, each the real agent on its own mock HAL, with simulated "
                        "drivers. Ctrl-C finishes the sessions and stops cleanly (twice: "
                        "at once).")
    sw = _declared(sw, "swarm", command)
    sw.add_argument("--csms", metavar="URL",
                    help="CSMS websocket URL; the station id is appended to it (required)")
    sw.add_argument("--count", type=int, metavar="N",
                    help="stations (required; with --shard: of each shard)")
    sw.add_argument("--ocpp", default=versions[0], choices=versions, metavar="VERSION",
                    help=f"OCPP version: one of {', '.join(versions)} (default {versions[0]})")
    sw.add_argument("--id-prefix", default="SWARM-", metavar="P",
                    help="station ids are P00001, P00002, ... (default SWARM-); give each "
                         "swarm process its own prefix")
    sw.add_argument("--first-index", type=int, default=1, metavar="I",
                    help="number of the first station (default 1)")
    sw.add_argument("--charging-ratio", type=float, default=0.1, metavar="R",
                    help="long-run share of stations with a session (default 0.1)")
    sw.add_argument("--ramp", type=float, default=50.0, metavar="STATIONS_PER_S",
                    help="connection rate (default 50/s); 0 starts all at once")
    sw.add_argument("--duration", type=float, default=0.0, metavar="S",
                    help="seconds to run, ramp included (default: until Ctrl-C)")
    sw.add_argument("--session-s", type=float, default=300.0, metavar="S",
                    help="mean session length, plug-in to unplug (default 300)")
    sw.add_argument("--meter-interval", type=int, default=60, metavar="S",
                    help="MeterValueSampleInterval of every station (default 60)")
    sw.add_argument("--evses", type=int, default=1, help="EVSEs per station (default 1)")
    sw.add_argument("--id-tag", metavar="TAG",
                    help="card every driver taps (default: one per station, TAG<id>)")
    sw.add_argument("--password", help="HTTP basic auth password of every station")
    sw.add_argument("--state-dir", metavar="DIR",
                    help="one SQLite file per station here, kept (default: a temporary "
                         "directory, removed at the end)")
    sw.add_argument("--seed", type=int, help="random seed, for a repeatable run")
    sw.add_argument("--log-level", default="error",
                    choices=["debug", "info", "warning", "error", "critical"],
                    help="agent log lines on stderr (default error)")
    sw.add_argument("--workers", type=int, default=1, metavar="N",
                    help="split the stations over N processes on this machine, one merged "
                         "summary (default 1)")
    sw.add_argument("--shard", metavar="I|env",
                    help="this process is shard I of a bigger fleet: stations "
                         "first-index + I*count ... (env: the index in $JOB_COMPLETION_INDEX, "
                         "as a Kubernetes Indexed Job sets it)")
    sw.add_argument("--shard-env", default="JOB_COMPLETION_INDEX", metavar="VAR",
                    help="the variable --shard env reads (default JOB_COMPLETION_INDEX)")
    sw.add_argument("--report", default="text", choices=["text", "json"],
                    help="text for people, json: one JSON object a line (progress, then "
                         "the summary) for --merge and scripts")
    sw.add_argument("--merge", nargs="*", metavar="FILE",
                    help="print the merged summary of the --report json output of several "
                         "processes or pods (FILE ..., or - / nothing: standard input)")
    sw.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"],
                    help="event loop (default auto: uvloop when installed, the swarm extra)")
    sw.add_argument("--id-width", type=int, default=0, metavar="D",
                    help="digits of the station number (default: those of the last, min 5)")
    sw.add_argument("--compression", default="on", choices=["on", "off"],
                    help="offer permessage-deflate on every websocket (default on, as a "
                         "station's ocpp.compression; off: ~40 KiB and the deflate of every "
                         "frame less per station, for the CSMS as well)")
    sw.set_defaults(func=cmd_swarm)
    fw = sub.add_parser("firmware", help="firmware images: sign one for a signed update")
    fw = _declared(fw, "firmware", command)
    fw_sub = fw.add_subparsers(dest="firmware_command", required=True)
    fs = fw_sub.add_parser("sign", help="print the base64 signature of IMAGE (RSA-PSS or "
                                        "ECDSA with SHA-256, by the key's type)")
    fs.add_argument("--key", required=True, help="the signing private key (PEM)")
    fs.add_argument("--cert", help="the firmware signing certificate (PEM): checked to belong "
                                   "to the key")
    fs.add_argument("image", help="the firmware image file")
    fs.set_defaults(func=cmd_firmware_sign)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "ctl":
        return cmd_ctl(argv[1:])
    ns = build_parser(argv[0] if argv else None).parse_args(argv)
    return ns.func(ns)


if __name__ == "__main__":
    raise SystemExit(main())
