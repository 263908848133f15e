"""``status``: what the shadow knows per workspace, read-only, safe while the agent runs.

Per workspace: links and open links, the last cycle (when, ok, how long, what it did), the last
successful cycle, the lag of each side's modification watermark (now minus the newest
modification already seen), and the incidents waiting for a retry with the reason they failed.
Per ServiceNow instance: a rate-limit pause that still holds (REFERENCE E.8).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import IO, Any

from agent.config import Config
from agent.lock import StateLock
from agent.pause import iso as pause_iso
from agent.pause import saved_pause
from agent.shadow import Shadow

SUMMARY_KEYS = ("created", "updated_snow", "updated_sentinel", "conflicts", "failures", "calls")


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


def render(report: dict[str, Any], out: IO[str]) -> None:
    """The report for a person: one block per workspace."""
    agent = report.get("agent") or {}
    running = f"yes (pid {agent.get('pid')} on {agent.get('host')})" if report["agent_running"] else "no"
    out.write(f"agent running: {running}\nstate: {report['state_db']}\n")
    for instance, pause in report.get("servicenow_paused", {}).items():
        out.write(
            f"servicenow:{instance} PAUSED until {pause['until']}: its hourly rate limit is used up "
            f"({pause['reason']}); its workspaces resume then\n"
        )
    for name, r in report["workspaces"].items():
        state = "enabled" if r["enabled"] else "DISABLED (frozen)"
        out.write(f"\n[{name}] {state}, syncs with servicenow:{r['servicenow']}\n")
        out.write(f"  links        {r['links']} ({r['open']} open)\n")
        last = r["last_cycle"]
        if last is None:
            out.write("  last cycle   never\n")
        else:
            result = "ok" if last["ok"] else "FAILED"
            done = ", ".join(f"{k} {last['summary'][k]}" for k in SUMMARY_KEYS if last["summary"].get(k))
            out.write(
                f"  last cycle   {last['finished']} ({_ago(last['seconds_ago'])}) {result}, "
                f"{last['duration_ms']} ms{': ' + done if done else ''}\n"
            )
            if not last["ok"]:
                out.write(f"  last success {r['last_success'] or 'never'}\n")
        for side in ("sentinel", "servicenow"):
            w = r["watermarks"][side]
            lag = r["lag_seconds"][side]
            out.write(
                f"  {side:<12} newest change seen {w['modified'] or 'none yet'}"
                f"{' (' + _ago(lag) + ')' if lag is not None else ''}\n"
            )
        if r["failures"]:
            out.write(f"  failing      {len(r['failures'])} incident(s), retried with backoff:\n")
            for f in r["failures"]:
                label = f["snow_number"] or "not linked"
                out.write(
                    f"    {f['incident']} ({label}) attempts {f['attempts']}, next try {f['next_try']}\n"
                    f"      {f['error']}\n"
                )


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


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 120:
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    if s < 172800:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None
