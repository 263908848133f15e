"""``status``: what the shadow knows per workspace, read-only, safe while the agent runs.

:func:`collect` returns the report as plain data; the command line renders it
(:func:`agent.cli.render.status`) or prints it as JSON.

Per workspace: links and open links, the last cycle (when, ok, how long, what it did), the last
successful cycle, the lag of each side's modification watermark (now minus the newest
modification already seen), and the incidents waiting for a retry with the reason they failed.
Per ServiceNow instance: a rate-limit pause that still holds (REFERENCE E.8).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agent.app.leadership import new_lease, shared
from agent.config import Config
from agent.connectors.servicenow.pause import iso as pause_iso
from agent.connectors.servicenow.pause import saved_pause
from agent.store import open_store
from agent.store.sqlite.lock import StateLock


async def collect(config: Config, now: datetime | None = None) -> dict[str, Any]:
    """The status report as plain JSON-ready data (``status --json`` prints exactly this)."""
    now = now or datetime.now(UTC)
    if shared(config):
        roles = await leaders(config)
        running = roles["leader"] is not None and roles["leader"]["live"]
        agent = roles["leader"] if running else None
    else:
        lock = StateLock(config.agent.state_db)
        running = lock.held_by_other()
        agent = _holder(lock) if running else None
        roles = None
    report: dict[str, Any] = {
        "agent_running": running,
        "agent": agent,
        "state_db": config.agent.state.location if shared(config) else str(config.agent.state_db),
        "servicenow_paused": {},
        "workspaces": {},
    }
    if roles is not None:
        report["leader"], report["standby"] = roles["leader"], roles["standby"]
    async with await open_store(config.agent.state) as shadow:
        for instance in config.servicenow:
            pause = await saved_pause(shadow, instance, now.timestamp())
            if pause is not None:  # REFERENCE E.8: the instance's hourly rate limit is used up
                report["servicenow_paused"][instance] = {"until": pause_iso(pause[0]), "reason": pause[1]}
        for name, ws in config.sources.items():
            inst = ws.servicenow
            total, open_ = await shadow.count_links(inst, name)
            watermarks: dict[str, Any] = {}
            lag: dict[str, float | None] = {}
            for side in ("sentinel", "servicenow"):
                w = await shadow.get_watermark(inst, name, side)
                watermarks[side] = {
                    "created": _iso(w.created),
                    "modified": _iso(w.modified),
                    "moved_at": _iso(w.moved_at),
                }
                lag[side] = round((now - w.modified).total_seconds(), 1) if w.modified else None
            last = await shadow.last_cycle(inst, name)
            last_ok = await shadow.last_ok_cycle(inst, name)
            failures = await shadow.failures(inst, name)
            numbers = {
                n.incident: n.number
                for n in (await shadow.get_links(inst, name, [f.incident for f in failures])).values()
            }
            report["workspaces"][name] = {
                "enabled": ws.enabled,
                "servicenow": inst,
                "links": total,
                "open": open_,
                "watermarks": watermarks,
                "lag_seconds": lag,
                "last_cycle": _cycle(last, now),
                "last_success": _iso(last_ok),
                "seconds_since_success": round((now - last_ok).total_seconds(), 1) if last_ok else None,
                "failures": [
                    {
                        "incident": f.incident,
                        "snow_number": numbers.get(f.incident),
                        "error": f.error,
                        "attempts": f.attempts,
                        "next_try": _iso(f.next_try),
                    }
                    for f in failures
                ],
            }
    return report


async def leaders(config: Config) -> dict[str, Any]:
    """Who leads a shared state (host, pid, since, epoch, live) and which agents wait as standby."""
    lease = new_lease(config)
    try:
        holder = await lease.holder()
        standby = [a for a in await lease.agents() if a.role == "standby"]
    finally:
        await lease.close()
    leader = None
    if holder is not None:
        leader = {
            "host": holder.host,
            "pid": holder.pid,
            "since": _iso(holder.since),
            "epoch": holder.epoch,
            "live": holder.live,
            "lease_expires": _iso(holder.expires_at),
        }
    return {
        "leader": leader,
        "standby": [
            {"host": a.host, "pid": a.pid, "since": _iso(a.started), "seen": _iso(a.seen)} for a in standby
        ],
    }


def _cycle(last: dict[str, Any] | None, now: datetime) -> dict[str, Any] | None:
    if last is None:
        return None
    summary = last.get("summary") or {}
    return {
        "started": _iso(last["started"]),
        "finished": _iso(last["finished"]),
        "seconds_ago": round((now - last["finished"]).total_seconds(), 1),
        "ok": last["ok"],
        "duration_ms": summary.get("duration_ms"),
        "summary": {k: v for k, v in summary.items() if k != "duration_ms"},
    }


def _holder(lock: StateLock) -> dict[str, Any]:
    data = lock.holder()
    return {"pid": data.get("pid"), "host": data.get("host")}


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None
