"""The commands behind the CLI. Each returns the process exit code."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from agent.config import Config
from agent.engine import CycleOptions, CycleStats, run_workspaces
from agent.errors import AgentError, ConfigError, SafetyValveTripped
from agent.lock import StateLock
from agent.log import log
from agent.runtime import Runtime
from agent.shadow import Shadow
from agent.snowquery import Q

EXIT_OK, EXIT_TRANSIENT, EXIT_CONFIG, EXIT_RESYNC = 0, 1, 2, 7


def _exit_code(results: Mapping[str, BaseException | CycleStats]) -> int:
    if any(isinstance(r, SafetyValveTripped) for r in results.values()):
        return EXIT_RESYNC
    if any(isinstance(r, ConfigError) for r in results.values()):
        return EXIT_CONFIG
    if any(isinstance(r, BaseException) for r in results.values()):
        return EXIT_TRANSIENT
    if any(isinstance(r, CycleStats) and r.failures for r in results.values()):
        return EXIT_TRANSIENT
    return EXIT_OK


async def once(
    config: Config,
    *,
    workspaces: Sequence[str] | None = None,
    force: bool = False,
    since: datetime | None = None,
    backfill: bool = False,
) -> int:
    """One cycle of every enabled workspace (``backfill``: also create incidents since ``since``)."""
    with StateLock(config.agent.state_db):
        async with Runtime(config) as rt:
            syncs = rt.syncs(workspaces)
            if backfill and not syncs:
                raise ConfigError(
                    [f"[workspace:{workspaces[0] if workspaces else '?'}] enabled: workspace is disabled"]
                )
            options = CycleOptions(dry_run=config.agent.dry_run, force=force, since=since)
            results = await run_workspaces(syncs, options)
    if since is not None:
        from agent.watermarks import report_backfill

        report_backfill(results, since)
    return _exit_code(results)


async def plan(config: Config, *, workspaces: Sequence[str] | None = None) -> int:
    """Dry run: print the writes one cycle would make (JSON); nothing is written anywhere."""
    from agent.cli import print_json

    async with Runtime(config) as rt:
        results = await run_workspaces(rt.syncs(workspaces), CycleOptions(dry_run=True))
    out: dict[str, Any] = {}
    for name, r in results.items():
        if isinstance(r, CycleStats):
            out[name] = {"summary": r.as_dict(), "writes": r.planned}
        else:
            out[name] = {"error": str(r)}
    print_json(out)
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
    lock = StateLock(config.agent.state_db, ttl=max(600.0, 3 * config.agent.poll_interval))
    lock.acquire()
    code = EXIT_OK
    cycles = 0
    try:
        async with Runtime(config) as rt:
            syncs = rt.syncs(workspaces)
            log.info(
                "agent_started",
                workspaces=[s.ws.name for s in syncs],
                poll_interval=config.agent.poll_interval,
            )
            options = CycleOptions(dry_run=config.agent.dry_run, force=force)
            while not stop.is_set():
                for s in syncs:
                    s.stopping = stop
                current = asyncio.create_task(run_workspaces(syncs, options))
                stopper = asyncio.create_task(stop.wait())
                try:
                    await asyncio.wait({current, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if not current.done():
                        # Signalled mid-cycle: no new incident work starts; in-flight writes
                        # and their shadow commits get `grace` seconds.
                        try:
                            await asyncio.wait_for(asyncio.shield(current), timeout=grace)
                        except TimeoutError:
                            log.warning("shutdown_grace_expired", grace=grace)
                            current.cancel()
                    results = await current
                except asyncio.CancelledError:
                    log.warning("cycle_cancelled")
                    break
                finally:
                    stopper.cancel()
                code = _exit_code(results)
                cycles += 1
                lock.renew()
                if max_cycles and cycles >= max_cycles:
                    break
                try:
                    await asyncio.wait_for(stop.wait(), timeout=config.agent.poll_interval)
                except TimeoutError:
                    pass
    finally:
        lock.release()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("agent_stopped", cycles=cycles)
    return EXIT_OK if stop.is_set() else code


async def status(config: Config, *, as_json: bool = False) -> int:
    """Per workspace: links, open, watermarks, last cycle, failures."""
    from agent.cli import print_json

    now = datetime.now(UTC)
    report: dict[str, Any] = {}
    async with await Shadow.open(config.agent.state_db) as shadow:
        for name, ws in config.workspaces.items():
            inst = ws.servicenow
            total, open_ = await shadow.count_links(inst, name)
            wm = {}
            for side in ("sentinel", "servicenow"):
                w = await shadow.get_watermark(inst, name, side)
                wm[side] = {
                    "created": _iso(w.created),
                    "modified": _iso(w.modified),
                    "moved_at": _iso(w.moved_at),
                }
            last = await shadow.last_cycle(inst, name)
            failures = await shadow.failures(inst, name)
            lag = (
                (now - w.modified).total_seconds()
                if (w := await shadow.get_watermark(inst, name, "sentinel")).modified
                else None
            )
            report[name] = {
                "enabled": ws.enabled,
                "servicenow": inst,
                "links": total,
                "open": open_,
                "watermarks": wm,
                "lag_seconds": round(lag, 1) if lag is not None else None,
                "last_cycle": last,
                "failures": [
                    {
                        "incident": f.incident,
                        "error": f.error,
                        "attempts": f.attempts,
                        "next_try": _iso(f.next_try),
                    }
                    for f in failures
                ],
            }
    lock = StateLock(config.agent.state_db)
    running = lock.held_by_other()
    if as_json:
        print_json({"agent_running": running, "workspaces": report})
        return EXIT_OK
    out = sys.stdout
    out.write(f"agent running: {'yes' if running else 'no'}   state: {config.agent.state_db}\n")
    for name, r in report.items():
        out.write(f"\n[{name}] {'enabled' if r['enabled'] else 'DISABLED'} -> servicenow:{r['servicenow']}\n")
        out.write(f"  links {r['links']}, open {r['open']}, lag {r['lag_seconds']} s\n")
        for side, w in r["watermarks"].items():
            out.write(f"  watermark {side:10} modified {w['modified']}  (moved {w['moved_at']})\n")
        last = r["last_cycle"]
        if last:
            out.write(f"  last cycle {last.get('finished')} ok={last.get('ok')}\n")
        for f in r["failures"]:
            out.write(
                f"  FAILING {f['incident']} attempts={f['attempts']} next={f['next_try']}: {f['error']}\n"
            )
    return EXIT_OK


async def watermark_show(config: Config, workspace: str | None, *, as_json: bool = False) -> int:
    """Per workspace and side: the creation and modification watermarks and when each moved."""
    from agent import watermarks

    return await watermarks.show(config, workspace, as_json=as_json)


async def watermark_set(
    config: Config,
    workspace: str,
    *,
    modified: datetime | None,
    created: datetime | None,
    side: str,
    force: bool,
) -> int:
    """Rewind or advance a workspace's watermarks (see :mod:`agent.watermarks`)."""
    from agent import watermarks

    return await watermarks.set_(
        config, workspace, modified=modified, created=created, side=side, force=force
    )


async def check(config: Config) -> int:
    """A readable checklist: config, tokens, read access per workspace and table."""
    results: list[tuple[bool, str]] = [(True, f"config {config.path} is valid")]
    async with Runtime(config) as rt:
        for name, auth in rt.entra.items():
            try:
                await auth.header()
                results.append((True, f"[oauth:{name}] token obtained"))
            except AgentError as exc:
                results.append((False, f"[oauth:{name}] no token: {exc}"))
        for name, ws in config.workspaces.items():
            if not ws.enabled:
                results.append((True, f"[workspace:{name}] disabled: skipped"))
                continue
            client = rt.sentinel_client(name)
            try:
                async for _ in client.list_incidents(page_size=1):
                    break
                results.append((True, f"[workspace:{name}] Sentinel incidents readable"))
            except AgentError as exc:
                results.append((False, f"[workspace:{name}] Sentinel incidents not readable: {exc}"))
        for name, inst in config.servicenow.items():
            snow = rt.snow_client(name)
            try:
                await snow.find(Q.is_not_empty("sys_id"), ["sys_id"], limit=1)
                results.append((True, f"[servicenow:{name}] table {inst.incident_table} readable"))
            except AgentError as exc:
                results.append(
                    (False, f"[servicenow:{name}] table {inst.incident_table} not readable: {exc}")
                )
            try:
                await snow.journal([], since=None)
                results.append((True, f"[servicenow:{name}] sys_journal_field readable"))
            except AgentError as exc:
                results.append((False, f"[servicenow:{name}] sys_journal_field not readable: {exc}"))
            if inst.caller_id:
                try:
                    user = await snow.find_user(user_name=inst.caller_id)
                    results.append(
                        (
                            user is not None,
                            f"[servicenow:{name}] caller_id {inst.caller_id} "
                            + ("exists" if user else "not found in sys_user"),
                        )
                    )
                except AgentError as exc:
                    results.append((False, f"[servicenow:{name}] caller_id look-up failed: {exc}"))
    for ok, line in results:
        sys.stdout.write(f"{'ok  ' if ok else 'FAIL'} {line}\n")
    return EXIT_OK if all(ok for ok, _ in results) else EXIT_TRANSIENT


def _known(config: Config, names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in config.workspaces]
    if unknown:
        raise ConfigError([f"[workspace:{n}]: no such workspace in the config" for n in unknown])


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None
