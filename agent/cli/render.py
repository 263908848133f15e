"""What the command line shows: each operator command's report, as text for a person or as JSON.

The operator commands (:mod:`agent.app.status`, :mod:`agent.app.watermarks`, :mod:`agent.app.resync`,
:mod:`agent.app.check`) return data; :mod:`agent.cli.commands` hands it to these functions with the
stream to write to. Together with :mod:`agent.cli.main` this is the only place that writes to stdout
(the log goes through :mod:`agent.log`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, Any

import orjson

from agent.app.check import FAIL, OK, SKIP, WARN, Item
from agent.app.resync import ResyncReport, UnlinkReport
from agent.app.watermarks import SIDES, WatermarkMove

SUMMARY_KEYS = ("created", "updated_snow", "updated_sentinel", "conflicts", "failures", "calls")


def json_out(obj: Any, out: IO[str]) -> None:
    """Indented JSON, one document per call (``--json`` and ``plan``)."""
    out.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
    out.flush()


# --- check ------------------------------------------------------------------------------------


def checklist(items: Iterable[Item], out: IO[str]) -> tuple[int, int]:
    """The checklist, one line per item (hints indented below); returns (failed, total)."""
    failed = total = 0
    counts: dict[str, int] = {}
    for item in items:
        total += 1
        counts[item.status] = counts.get(item.status, 0) + 1
        failed += item.status == FAIL
        out.write(f"{item.status:<5} {item.subject} {item.text}\n")
        if item.hint:
            out.write(f"      hint: {item.hint}\n")
    summary = ", ".join(f"{counts[s]} {s}" for s in (OK, FAIL, WARN, SKIP) if counts.get(s))
    out.write(f"\n{total} checks: {summary}\n")
    return failed, total


# --- status -----------------------------------------------------------------------------------


def _roles(report: dict[str, Any], out: IO[str]) -> None:
    """A shared (PostgreSQL) state: who leads, who waits as standby."""
    leader = report["leader"]
    if leader is None:
        out.write("leader: none yet\n")
    else:
        state = "" if leader["live"] else f" (lease expired {leader['lease_expires']}: none leads now)"
        who = f"pid {leader['pid']} on {leader['host']}"
        out.write(f"leader: {who} since {leader['since']}, epoch {leader['epoch']}{state}\n")
    for s in report["standby"]:
        out.write(f"standby: pid {s['pid']} on {s['host']} since {s['since']}, last seen {s['seen']}\n")
    if not report["standby"]:
        out.write("standby: none\n")


def status(report: dict[str, Any], out: IO[str]) -> None:
    """The status report for a person: one block per workspace."""
    agent = report.get("agent") or {}
    running = f"yes (pid {agent.get('pid')} on {agent.get('host')})" if report["agent_running"] else "no"
    out.write(f"agent running: {running}\nstate: {report['state_db']}\n")
    if "leader" in report:
        _roles(report, out)
    for instance, pause in report.get("servicenow_paused", {}).items():
        out.write(
            f"servicenow:{instance} PAUSED until {pause['until']}: its hourly rate limit is used up "
            f"({pause['reason']}); its workspaces resume then\n"
        )
    for name, r in report["workspaces"].items():
        state = "enabled" if r["enabled"] else "DISABLED (frozen)"
        out.write(f"\n[{name}] {state}, syncs with servicenow:{r['servicenow']}\n")
        out.write(f"  links        {r['links']} ({r['open']} open)\n")
        _last_cycle(r, out)
        for side in SIDES:
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


def _last_cycle(r: dict[str, Any], out: IO[str]) -> None:
    last = r["last_cycle"]
    if last is None:
        out.write("  last cycle   never\n")
        return
    result = "ok" if last["ok"] else "FAILED"
    done = ", ".join(f"{k} {last['summary'][k]}" for k in SUMMARY_KEYS if last["summary"].get(k))
    out.write(
        f"  last cycle   {last['finished']} ({_ago(last['seconds_ago'])}) {result}, "
        f"{last['duration_ms']} ms{': ' + done if done else ''}\n"
    )
    if not last["ok"]:
        out.write(f"  last success {r['last_success'] or 'never'}\n")


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


# --- watermarks -------------------------------------------------------------------------------


def watermarks(report: dict[str, Any], out: IO[str]) -> None:
    """``watermark show``: per workspace and side, each watermark and when it last moved."""
    for name, r in report.items():
        state = "enabled" if r["enabled"] else "DISABLED (watermarks frozen)"
        out.write(f"[{name}] {state} -> servicenow:{r['instance']}\n")
        for side in SIDES:
            w = r[side]
            moved = w["modified_moved_at"] or "-"
            out.write(f"  {side:10} modified {w['modified'] or '-':32} moved {moved}\n")
            if side == "sentinel":
                note = f"tickets for incidents created since {w['creation_floor']}"
                out.write(f"  {'':10} created  {w['created'] or '-':32} moved {w['created_moved_at'] or '-'}")
                out.write(f"  ({note})\n")


def watermark_moved(moved: WatermarkMove, out: IO[str]) -> None:
    """``watermark set``: what moved, and what the next cycle will re-read."""
    for line in moved.lines:
        out.write(f"[{moved.workspace}] {line}\n")
    if not moved.enabled:
        out.write(f"[{moved.workspace}] the workspace is disabled: this applies once enabled = true\n")


# --- resync and unlink ------------------------------------------------------------------------


def resync(report: ResyncReport, out: IO[str]) -> None:
    """What resync linked (or would link), and what it could not match."""
    verb = "would link" if report.dry_run else "linked"
    for r in report.workspaces:
        out.write(f"[{r.workspace}] servicenow:{r.instance}: {r.records} tickets with a unique key, ")
        out.write(f"{r.incidents} Sentinel incidents listed\n")
        split = sum(1 for m in r.linked if m.disagree)
        out.write(f"  {verb} {len(r.linked)}")
        if split:
            policy = report.conflict_policy
            out.write(f" ({split} disagree on some field: the next cycle applies conflict_policy = {policy})")
        out.write("\n")
        for m in r.linked:
            if m.disagree:
                out.write(f"    {m.number} <-> {m.incident}: disagree on {', '.join(m.disagree)}\n")
        out.write(f"  already linked {r.already_linked}\n")
        if r.kept_unlinked:
            out.write(f"  kept unlinked {len(r.kept_unlinked)}: {', '.join(r.kept_unlinked)}\n")
        for d in r.duplicates:
            out.write(
                f"  DUPLICATE {d['number']}: incident {d['incident']} is already linked to {d['linked_to']}\n"
            )
    if report.unmatched:
        out.write(f"not matched: {len(report.unmatched)}\n")
        for u in report.unmatched:
            out.write(f"  {u.number} (servicenow:{u.instance}, key {u.key}): {u.reason}\n")


def unlink(report: UnlinkReport, out: IO[str]) -> None:
    """One line per incident: unlinked, or (``--undo``) may be linked again."""
    for d in report.incidents:
        number = f" ({d['number']})" if d.get("number") else ""
        out.write(f"[{report.workspace}] {d['incident']}{number}: {d['result']}\n")
    if not report.undo and report.incidents:
        out.write(f"[{report.workspace}] both records are kept; the agent no longer syncs them\n")


# --- migrate-state ----------------------------------------------------------------------------


def migrated(report: dict[str, Any], out: IO[str]) -> None:
    """What ``migrate-state`` copied, table by table (counted on both sides)."""
    out.write(f"copied {report['from']} -> {report['to']}, counts verified:\n")
    for table, count in report["rows"].items():
        out.write(f"  {table:<14} {count}\n")
