"""The commands behind the CLI: each runs one operator command, shows its report on stdout (through
:mod:`agent.cli.render`) and returns the process exit code. The modules they call return data."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from agent.app import resync as rebuild
from agent.app import status as report
from agent.app import watermarks
from agent.app.check import Checklist
from agent.app.health import operations
from agent.app.leadership import Leadership, exclusive
from agent.app.runtime import Runtime
from agent.cli import render
from agent.config import Config
from agent.connectors.servicenow.pause import iso as pause_iso
from agent.errors import ConfigError, ExitCode, InstancePaused, SafetyValveTripped
from agent.log import LEVELS, log
from agent.sync.cycle import CycleOptions, CycleStats, run_workspaces


def _exit_code(results: Mapping[str, BaseException | CycleStats]) -> int:
    if any(isinstance(r, SafetyValveTripped) for r in results.values()):
        return ExitCode.RESYNC
    if any(isinstance(r, ConfigError) for r in results.values()):
        return ExitCode.CONFIG
    if any(isinstance(r, BaseException) for r in results.values()):
        return ExitCode.TRANSIENT
    if any(isinstance(r, CycleStats) and (r.failures or r.backoff) for r in results.values()):
        return ExitCode.TRANSIENT
    return ExitCode.OK


def _report_left_behind(results: Mapping[str, BaseException | CycleStats]) -> None:
    """One line when a ``once`` left incidents failed or waiting for their backoff (exit 1), and
    one per ServiceNow instance whose rate-limit pause kept its workspaces from syncing."""
    paused = {r.instance: r for r in results.values() if isinstance(r, InstancePaused)}
    for instance, exc in sorted(paused.items()):
        log.warning(
            "once_paused",
            instance=instance,
            until=pause_iso(exc.until),
            workspaces=sorted(
                w for w, r in results.items() if isinstance(r, InstancePaused) and r.instance == instance
            ),
            message=f"nothing was synced with ServiceNow instance {instance}: its hourly rate limit is "
            f"used up and calls to it are paused until {pause_iso(exc.until)}",
        )
    failed = {w: r.failures for w, r in results.items() if isinstance(r, CycleStats) and r.failures}
    waiting = {w: r.backoff for w, r in results.items() if isinstance(r, CycleStats) and r.backoff}
    if failed or waiting:
        log.warning(
            "once_incomplete",
            failed=sum(failed.values()),
            backoff=sum(waiting.values()),
            workspaces=sorted({*failed, *waiting}),
            message=f"{sum(failed.values())} incident(s) failed in this run and "
            f"{sum(waiting.values())} wait for a retry after an earlier failure; run again later "
            "(`status` lists them and why)",
        )


async def once(
    config: Config,
    *,
    workspaces: Sequence[str] | None = None,
    force: bool = False,
    since: datetime | None = None,
    backfill: bool = False,
    sweep: bool = False,
) -> int:
    """One cycle of every enabled workspace (``backfill``: also create incidents since ``since``;
    ``sweep``: compare every open linked pair in full)."""
    async with exclusive(config) as lead, Runtime(config) as rt:
        lead.bind(rt)
        syncs = rt.syncs(workspaces)
        if backfill and not syncs:
            raise ConfigError(
                [f"[workspace:{workspaces[0] if workspaces else '?'}] enabled: workspace is disabled"]
            )
        options = CycleOptions(dry_run=config.agent.dry_run, force=force, since=since, sweep=sweep)
        results = await run_workspaces(syncs, options)
    _report_left_behind(results)
    if since is not None:
        watermarks.report_backfill(results, since)
    return _exit_code(results)


async def plan(config: Config, *, workspaces: Sequence[str] | None = None) -> int:
    """Dry run: print the writes one cycle would make (JSON); nothing is written anywhere."""
    async with Runtime(config) as rt:
        results = await run_workspaces(rt.syncs(workspaces), CycleOptions(dry_run=True))
    out: dict[str, Any] = {}
    for name, r in results.items():
        if isinstance(r, CycleStats):
            out[name] = {"summary": r.as_dict(), "writes": r.planned}
        else:
            out[name] = {"error": str(r)}
    render.json_out(out, sys.stdout)
    return _exit_code(results)


async def run(
    config: Config,
    *,
    workspaces: Sequence[str] | None = None,
    force: bool = False,
    grace: float = 30.0,
    max_cycles: int = 0,
) -> int:
    """Cycle every ``poll_interval`` until SIGTERM/SIGINT.

    First signal: stop starting new cycles, let the running cycle finish its in-flight writes
    and shadow commits for up to ``grace`` seconds, then exit 0. Second signal: cancel now
    (the shadow is only ever written after a remote write succeeded, so this is safe too).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    current: asyncio.Task[Any] | None = None
    signals = 0

    def on_signal(sig: int) -> None:
        nonlocal signals
        signals += 1
        log.info("shutdown_requested", signal=signal.Signals(sig).name, forced=signals > 1)
        stop.set()
        if signals > 1 and current is not None:
            current.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    code: int = ExitCode.OK
    cycles = 0
    try:
        async with (
            Runtime(config) as rt,
            Leadership(config) as lead,
            operations(config, rt, workspaces, lead),
        ):
            names = [s.workspace for s in rt.syncs(workspaces)]
            log.info("agent_started", workspaces=names, poll_interval=config.agent.poll_interval)
            options = CycleOptions(dry_run=config.agent.dry_run, force=force)
            done = False
            # A standby waits in wait_to_lead; a leader that lost its lease comes back to it.
            while not done and await lead.wait_to_lead(stop):
                lead.bind(rt)
                syncs = rt.syncs(workspaces)  # fresh per term: nothing cached from an old one
                while lead.leading and not stop.is_set():
                    for s in syncs:
                        s.stopping = stop
                    current = asyncio.create_task(run_workspaces(syncs, options))
                    stopper = asyncio.create_task(lead.interrupted(stop))
                    try:
                        await asyncio.wait({current, stopper}, return_when=asyncio.FIRST_COMPLETED)
                        if not current.done() and not lead.leading:
                            current.cancel()  # another agent may lead by now: no grace
                        elif not current.done():
                            # Signalled mid-cycle: no new incident work starts; in-flight writes
                            # and their shadow commits get `grace` seconds.
                            try:
                                await asyncio.wait_for(asyncio.shield(current), timeout=grace)
                            except TimeoutError:
                                log.warning("shutdown_grace_expired", grace=grace)
                                current.cancel()
                        results = await current
                    except asyncio.CancelledError:
                        log.warning("cycle_cancelled", lease_lost=not lead.leading and not stop.is_set())
                        break
                    finally:
                        stopper.cancel()
                    code = _exit_code(results)
                    cycles += 1
                    lead.renew_file_lock()
                    if max_cycles and cycles >= max_cycles:
                        done = True
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lead.interrupted(stop), timeout=config.agent.poll_interval)
                await lead.step_down()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("agent_stopped", cycles=cycles)
    if code == ExitCode.RESYNC:
        return code  # a safety valve held a workspace back in the last cycle: say so, even on SIGTERM
    return ExitCode.OK if stop.is_set() else code


async def status(config: Config, *, as_json: bool = False) -> int:
    """Per workspace: links, open, last cycle, lag, failures and their reasons (``--json``)."""
    data = await report.collect(config)
    if as_json:
        render.json_out(data, sys.stdout)
    else:
        render.status(data, sys.stdout)
    return ExitCode.OK


async def watermark_show(config: Config, workspace: str | None, *, as_json: bool = False) -> int:
    """Per workspace and side: the creation and modification watermarks and when each moved."""
    marks = await watermarks.show(config, workspace)
    if as_json:
        render.json_out(marks, sys.stdout)
    else:
        render.watermarks(marks, sys.stdout)
    return ExitCode.OK


async def watermark_set(
    config: Config,
    workspace: str,
    *,
    modified: datetime | None,
    created: datetime | None,
    side: str,
    force: bool,
) -> int:
    """Rewind or advance a workspace's watermarks (see :mod:`agent.app.watermarks`)."""
    moved = await watermarks.set_(
        config, workspace, modified=modified, created=created, side=side, force=force
    )
    render.watermark_moved(moved, sys.stdout)
    return ExitCode.OK


async def resync(
    config: Config, *, workspaces: Sequence[str] | None = None, dry_run: bool = False, as_json: bool = False
) -> int:
    """Rebuild the shadow's links from both sides by unique key, writing nothing remote."""
    found = await rebuild.resync(config, workspaces=workspaces, dry_run=dry_run)
    if as_json:
        render.json_out(found.as_dict(), sys.stdout)
    else:
        render.resync(found, sys.stdout)
    return ExitCode.OK


async def unlink(
    config: Config,
    workspace: str,
    incidents: Sequence[str],
    *,
    every: bool = False,
    undo: bool = False,
    as_json: bool = False,
) -> int:
    """Stop syncing incidents (or a whole workspace), keeping both records (see agent.app.resync)."""
    done = await rebuild.unlink(config, workspace, incidents, every=every, undo=undo)
    if as_json:
        render.json_out(done.as_dict(), sys.stdout)
    else:
        render.unlink(done, sys.stdout)
    return ExitCode.OK


async def check(config: Config) -> int:
    """A readable checklist (see :mod:`agent.app.check`): one line per probe, ok / FAIL / warn /
    skip, a hint under each failure; exit 1 when anything failed. Nothing is written anywhere."""
    level = log.level
    if level > LEVELS["debug"]:
        log.level = LEVELS["error"]  # the checklist is the output; log lines would interleave
    rt = Runtime(config)
    try:
        await rt.open(state=False)  # the checklist opens the state itself and reports it
        items = await Checklist(config, rt).run()
    finally:
        await rt.close()
        log.level = level
    failed, _total = render.checklist(items, sys.stdout)
    return ExitCode.TRANSIENT if failed else ExitCode.OK


async def migrate_state(
    config: Config, source: str | None, target: str | None, *, as_json: bool = False
) -> int:
    """Copy the whole state between SQLite and PostgreSQL (see :mod:`agent.app.migrate_state`)."""
    from agent.app.migrate_state import migrate

    report = await migrate(config, source, target)
    if as_json:
        render.json_out(report, sys.stdout)
    else:
        render.migrated(report, sys.stdout)
    return ExitCode.OK
