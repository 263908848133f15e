"""Command line: ``sentinel-snow-sync [-c CONFIG] COMMAND``.

Exit codes (:class:`agent.errors.ExitCode`): 0 ok, 1 a transient or remote failure (try again
later), 2 configuration or usage error, 7 a safety valve tripped or the state needs attention
(``--force`` / resync), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from agent import __version__
from agent.cli import commands
from agent.config import Config, load_config
from agent.errors import AgentError, ConfigError, ExitCode, LockHeld, SafetyValveTripped
from agent.log import log

DEFAULT_CONFIG = "agent.ini"
REPORT_COMMANDS = frozenset({"check", "plan", "status", "watermark", "resync", "unlink", "migrate-state"})

DESCRIPTION = """\
Keep Microsoft Sentinel incidents and ServiceNow incidents in sync, both ways.

First run: `check` (config, tokens, access), then `plan` (what one cycle would write,
nothing written), then `once` or `run`.
"""

EPILOG = """\
exit codes: 0 ok | 1 transient failure, try again | 2 configuration or usage error |
            7 a safety valve tripped (re-run with --force after checking) or state needs resync

The config file defaults to ./agent.ini or $SENTINEL_SNOW_SYNC_CONFIG. See agent.example.ini
for every key.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentinel-snow-sync",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        default=os.environ.get("SENTINEL_SNOW_SYNC_CONFIG", DEFAULT_CONFIG),
        help="path of the ini file (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="override [agent] log_level"
    )
    parser.add_argument("--log-format", choices=["json", "text"], help="override [agent] log_format")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser(
        "check",
        help="a checklist: config, tokens, read and write rights, journal, mapping rows (writes nothing)",
    )

    p = sub.add_parser("once", help="run one sync cycle for every enabled workspace, then exit")
    _cycle_args(p)
    p.add_argument(
        "--since", metavar="DATE", help="also create incidents created since DATE (ISO 8601 or -7d)"
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="compare every open linked pair in full and repair drift (as every sweep_interval)",
    )

    p = sub.add_parser(
        "run", help="sync every poll_interval until SIGTERM/SIGINT (a second signal forces exit)"
    )
    _cycle_args(p)
    p.add_argument("--grace", type=float, default=30.0, help="seconds to finish in-flight writes on shutdown")
    p.add_argument("--max-cycles", type=int, default=0, help=argparse.SUPPRESS)

    p = sub.add_parser(
        "plan", help="dry run: print the writes one cycle would make as JSON; nothing is written"
    )
    p.add_argument("--workspace", action="append", metavar="NAME", help="only this workspace (repeatable)")

    p = sub.add_parser("status", help="per workspace: links, open, last cycle, lag, failures and why")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("watermark", help="show or move the per-workspace watermarks")
    wsub = p.add_subparsers(dest="wm_command", metavar="ACTION")
    w = wsub.add_parser("show", help="print the watermarks of every (or one) workspace")
    w.add_argument("workspace", nargs="?")
    w.add_argument("--json", action="store_true", help="machine-readable output")
    w = wsub.add_parser("set", help="rewind or advance a workspace's watermarks")
    w.add_argument("workspace")
    w.add_argument(
        "--modified", metavar="DATE", help="modification watermark (ISO 8601 or relative like -7d)"
    )
    w.add_argument(
        "--created",
        metavar="DATE",
        help="Sentinel creation floor: no new ticket for incidents created before DATE (ISO 8601, now, -7d)",
    )
    w.add_argument("--side", choices=["sentinel", "servicenow", "both"], default="both")
    w.add_argument("--force", action="store_true", help="even while an agent holds the state lock")

    p = sub.add_parser("backfill", help="create and sync incidents created since DATE, beyond max_age_days")
    p.add_argument("workspace")
    p.add_argument("--since", metavar="DATE", required=True, help="ISO 8601 or relative like -30d")
    p.add_argument("--force", action="store_true", help="skip the safety valves")

    p = sub.add_parser(
        "resync",
        help="rebuild the state from both sides by unique key (lost state file); writes nothing remote",
    )
    p.add_argument("--workspace", action="append", metavar="NAME", help="only this workspace (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="report what would be linked; save nothing")
    p.add_argument("--json", action="store_true", help="machine-readable report")

    p = sub.add_parser("unlink", help="stop syncing incidents or a whole workspace; both records are kept")
    p.add_argument("workspace")
    p.add_argument("incidents", nargs="*", metavar="INCIDENT", help="Sentinel incident id or ticket number")
    p.add_argument("--all", action="store_true", help="every linked incident of the workspace")
    p.add_argument("--undo", action="store_true", help="allow these incidents to be linked again")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "migrate-state",
        help="copy the whole state between SQLite and PostgreSQL (stop the agents first)",
        description="Copy every link, comment link, watermark, failure, tombstone and the history "
        "from one state to another, empty one, and verify the counts. STATE is sqlite:PATH or "
        "postgresql://user@host/dbname; the side not given is the config's state.",
    )
    p.add_argument("--from", dest="source", metavar="STATE", help="copy from (default: the config's state)")
    p.add_argument("--to", dest="target", metavar="STATE", help="copy into (default: the config's state)")
    p.add_argument("--json", action="store_true", help="machine-readable report")

    p = sub.add_parser(
        "demo", help="start the built-in emulators, sync while they change, show what happened"
    )
    p.add_argument("--duration", type=float, default=30.0, help="seconds of simulated analyst activity")
    p.add_argument("--incidents", type=int, default=100, help="incidents per workspace")
    p.add_argument("--workspaces", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--state-dir", default="demo-state", help="where the demo writes its config and state")
    return parser


def _cycle_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", action="append", metavar="NAME", help="only this workspace (repeatable)")
    p.add_argument("--force", action="store_true", help="proceed although a safety valve tripped")


_RELATIVE = re.compile(r"^-(\d+)([smhdw])$")
_DATE_FLAGS = ("--since", "--modified", "--created")


def _glue_relative_dates(argv: Sequence[str]) -> list[str]:
    """``--since -7d`` -> ``--since=-7d``: argparse would take ``-7d`` for an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in _DATE_FLAGS and _RELATIVE.match(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """ISO 8601 (a date alone means midnight UTC), ``now``, or relative ``-7d`` / ``-12h`` / ``-30m``."""
    now = now or datetime.now(UTC)
    if text.strip().lower() == "now":
        return now
    m = _RELATIVE.match(text.strip())
    if m:
        n, unit = int(m.group(1)), m.group(2)
        seconds = n * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
        return now - timedelta(seconds=seconds)
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            [f"date '{text}': use ISO 8601 (2024-05-01, 2024-05-01T10:00:00Z) or -7d"]
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_glue_relative_dates(sys.argv[1:] if argv is None else argv))
    if not args.command:
        parser.print_help()
        return ExitCode.CONFIG
    if args.command == "demo":
        return _demo(args)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{args.config}: configuration is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return ExitCode.CONFIG
    log.configure(
        level=args.log_level or config.agent.log_level,
        fmt=args.log_format or config.agent.log_format,
        # A command whose output is a report keeps stdout for it (parseable --json).
        stream=sys.stderr if args.command in REPORT_COMMANDS else None,
    )
    for warning in config.warnings:
        log.warning("config_warning", message=warning)
    try:
        return _run(_dispatch(args, config))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return ExitCode.CONFIG
    except LockHeld as exc:
        log.error("lock_held", message=str(exc))
        return ExitCode.TRANSIENT
    except SafetyValveTripped as exc:
        log.error("safety_valve", check=exc.check, message=str(exc))
        return ExitCode.RESYNC
    except AgentError as exc:
        log.error("command_failed", command=args.command, error=str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


def _run(coro: Any) -> int:
    try:
        import uvloop

        result: int = uvloop.run(coro)
        return result
    except ImportError:
        fallback: int = asyncio.run(coro)
        return fallback


def _demo(args: argparse.Namespace) -> int:
    # The emulators are test-side code, left out of the installed package: the demo runs from a
    # source checkout (``make demo``), and only this command ever imports them.
    try:
        from agent.cli.demo import run_demo
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("agent.testing.emulators"):
            raise
        print(
            "demo: the emulators are not part of the installed package; run `make demo` in a "
            "checkout of the source repository",
            file=sys.stderr,
        )
        return ExitCode.CONFIG
    return run_demo(args)


async def _dispatch(args: argparse.Namespace, config: Config) -> int:
    if args.command == "check":
        return await commands.check(config)
    if args.command == "once":
        since = parse_when(args.since) if args.since else None
        return await commands.once(
            config, workspaces=args.workspace, force=args.force, since=since, sweep=args.sweep
        )
    if args.command == "backfill":
        return await commands.once(
            config, workspaces=[args.workspace], force=args.force, since=parse_when(args.since), backfill=True
        )
    if args.command == "run":
        return await commands.run(
            config, workspaces=args.workspace, force=args.force, grace=args.grace, max_cycles=args.max_cycles
        )
    if args.command == "plan":
        return await commands.plan(config, workspaces=args.workspace)
    if args.command == "status":
        return await commands.status(config, as_json=args.json)
    if args.command == "watermark":
        if args.wm_command == "set":
            return await commands.watermark_set(
                config,
                args.workspace,
                modified=parse_when(args.modified) if args.modified else None,
                created=parse_when(args.created) if args.created else None,
                side=args.side,
                force=args.force,
            )
        return await commands.watermark_show(config, args.workspace, as_json=args.json)
    if args.command == "resync":
        return await commands.resync(
            config, workspaces=args.workspace, dry_run=args.dry_run, as_json=args.json
        )
    if args.command == "unlink":
        return await commands.unlink(
            config, args.workspace, args.incidents, every=args.all, undo=args.undo, as_json=args.json
        )
    if args.command == "migrate-state":
        return await commands.migrate_state(config, args.source, args.target, as_json=args.json)
    raise ConfigError([f"unknown command {args.command}"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
