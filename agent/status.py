"""``status``: what the shadow knows per workspace, read-only, safe while the agent runs.

:func:`collect` returns the report as plain data; the command line renders it
(:func:`agent.render.status`) or prints it as JSON.

Per workspace: links and open links, the last cycle (when, ok, how long, what it did), the last
successful cycle, the lag of each side's modification watermark (now minus the newest
modification already seen), and the incidents waiting for a retry with the reason they failed.
Per ServiceNow instance: a rate-limit pause that still holds (REFERENCE E.8).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agent.config import Config
from agent.lock import StateLock
from agent.pause import iso as pause_iso
from agent.pause import saved_pause
from agent.shadow import Shadow


async def collect(config: Config, now: datetime | None = None) -> dict[str, Any]:
    """The status report as plain JSON-ready data (``status --json`` prints exactly this)."""
    now = now or datetime.now(UTC)
    lock = StateLock(config.agent.state_db)
    running = lock.held_by_other()
    report: dict[str, Any] = {
        "agent_running": running,
        "agent": _holder(lock) if running else None,
        "state_db": str(config.agent.state_db),
        "servicenow_paused": {},
        "workspaces": {},
    }
    async with await Shadow.open(config.agent.state_db) as shadow:
        for instance in config.servicenow:
            pause = await saved_pause(shadow, instance, now.timestamp())
            if pause is not None:  # REFERENCE E.8: the instance's hourly rate limit is used up
                report["servicenow_paused"][instance] = {"until": pause_iso(pause[0]), "reason": pause[1]}
        for name, ws in config.workspaces.items():
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
