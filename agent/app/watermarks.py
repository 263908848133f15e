"""Operators control the watermarks: ``watermark show``, ``watermark set`` and backfill reports.

Each workspace has two watermarks per side, kept in the shadow (:class:`agent.core.records.Watermark`):

* **modified** - the newest modification time the agent has seen. Every cycle lists what changed
  since it (minus ``[agent] overlap``) and moves it forward. Rewinding it makes the next cycle
  re-read older changes; the shadow decides what is new, so a linked incident that did not change
  is never rewritten and nothing is duplicated.
* **created** - on the Sentinel side only: the *creation floor*. A regular cycle creates a ticket
  only for an incident created at or after both the floor and ``now - max_age_days``. The agent
  never moves it; an operator does, e.g. ``--created now`` when taking over from another
  integration ("only incidents from now on"). Rewinding it also rewinds the Sentinel
  modification watermark, so that the next cycle actually re-reads those incidents. To go below
  ``max_age_days``, use a backfill (``backfill WORKSPACE --since DATE``), which ignores both
  floors and moves no watermark. The ServiceNow side has no creation watermark: tickets are
  only ever created from Sentinel incidents.

``enabled = false`` on a workspace freezes its watermarks: nothing reads or moves them until
it is enabled again, and then syncing resumes from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.app.leadership import exclusive
from agent.config import Config
from agent.core.records import Watermark
from agent.errors import ConfigError, LeaseLost, LockHeld
from agent.log import log
from agent.store import open_store
from agent.sync.cycle import CycleStats

SIDES = ("sentinel", "servicenow")
FUTURE_SLACK = timedelta(minutes=5)  # clock skew between the operator's host and the agent's


@dataclass(frozen=True, slots=True)
class WatermarkMove:
    """What ``watermark set`` did: one line per watermark moved, saying what the next cycle does."""

    workspace: str
    lines: list[str]
    enabled: bool


def iso(value: datetime | None) -> str | None:
    """UTC ISO 8601 with ``Z``, or None."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def creation_floor(config: Config, workspace: str, created: datetime | None, now: datetime) -> datetime:
    """The oldest creation time a regular cycle still makes a ticket for."""
    max_age = now - timedelta(days=config.sources[workspace].max_age_days)
    return max(max_age, created) if created is not None else max_age


async def show(config: Config, workspace: str | None) -> dict[str, Any]:
    """Each workspace's watermarks per side, with when each last moved (``watermark show``)."""
    names = [workspace] if workspace else list(config.sources)
    known(config, names)
    now = datetime.now(UTC)
    report: dict[str, Any] = {}
    async with await open_store(config.agent.state) as shadow:
        for name in names:
            inst = config.sources[name].servicenow
            marks = {side: await shadow.get_watermark(inst, name, side) for side in SIDES}
            report[name] = {
                "enabled": config.sources[name].enabled,
                "instance": inst,
                **{side: _as_dict(w) for side, w in marks.items()},
            }
            report[name]["sentinel"]["creation_floor"] = iso(
                creation_floor(config, name, marks["sentinel"].created, now)
            )
    return report


async def set_(
    config: Config,
    workspace: str,
    *,
    modified: datetime | None,
    created: datetime | None,
    side: str,
    force: bool,
) -> WatermarkMove:
    """Rewind or advance a workspace's watermarks; says what the next cycle will re-read.

    Holds the state lock while writing, so no agent starts a cycle meanwhile. A running agent's
    lock is refused unless ``force``; that agent then leaves the new values alone at the end of
    its current cycle (it only moves a watermark nobody else moved).
    """
    known(config, [workspace])
    now = datetime.now(UTC)
    _check_request(modified, created, side, now)
    try:
        async with exclusive(config):
            lines = await _apply(config, workspace, modified=modified, created=created, side=side, now=now)
    except LockHeld as exc:
        if not force or isinstance(exc, LeaseLost):
            raise LockHeld(f"{exc}; stop the agent first, or use --force") from None
        log.warning("watermark_set_forced", workspace=workspace, message=str(exc))
        lines = await _apply(config, workspace, modified=modified, created=created, side=side, now=now)
    return WatermarkMove(workspace, lines, config.sources[workspace].enabled)


def _check_request(modified: datetime | None, created: datetime | None, side: str, now: datetime) -> None:
    problems = []
    if modified is None and created is None:
        problems.append("watermark set: give --modified DATE and/or --created DATE")
    if created is not None and side == "servicenow":
        problems.append(
            "watermark set: --created applies to the Sentinel side only (tickets are created only "
            "from Sentinel incidents); use --side sentinel or leave --side out"
        )
    for flag, value in (("--modified", modified), ("--created", created)):
        if value is not None and value > now + FUTURE_SLACK:
            problems.append(f"watermark set: {flag} {iso(value)} is in the future")
    if problems:
        raise ConfigError(problems)


async def _apply(
    config: Config,
    workspace: str,
    *,
    modified: datetime | None,
    created: datetime | None,
    side: str,
    now: datetime,
) -> list[str]:
    inst = config.sources[workspace].servicenow
    overlap = timedelta(seconds=config.agent.overlap)
    sides = SIDES if side == "both" else (side,)
    lines: list[str] = []
    async with await open_store(config.agent.state) as shadow:
        before = {s: await shadow.get_watermark(inst, workspace, s) for s in SIDES}
        targets: dict[str, datetime] = {}
        if modified is not None:
            targets = dict.fromkeys(sides, modified)
        if created is not None:
            old = before["sentinel"]
            await shadow.set_watermark(inst, workspace, "sentinel", created=created, moved_at=now)
            floor = creation_floor(config, workspace, created, now)
            max_age = config.sources[workspace].max_age_days
            lines.append(
                f"sentinel creation floor {iso(old.created) or 'unset'} -> {iso(created)}: new tickets "
                f"only for incidents created since {iso(floor)}"
                + (f" (max_age_days = {max_age}; older ones need a backfill)" if floor > created else "")
            )
            if modified is None and (old.modified is None or old.modified > created):
                # Re-read what the lower floor lets in; otherwise it would only apply to changes.
                targets["sentinel"] = created
        for s, value in targets.items():
            old_value = before[s].modified
            await shadow.set_watermark(inst, workspace, s, modified=value, moved_at=now)
            lines.append(_describe(s, old_value, value, overlap))
    for s, value in targets.items():
        log.info("watermark_set", workspace=workspace, side=s, modified=iso(value), created=iso(created))
    if created is not None and not targets:
        log.info("watermark_set", workspace=workspace, side="sentinel", created=iso(created))
    return lines


def _describe(side: str, old: datetime | None, new: datetime, overlap: timedelta) -> str:
    what = "Sentinel incidents" if side == "sentinel" else "ServiceNow records of this workspace"
    head = f"{side} modification watermark {iso(old) or 'unset'} -> {iso(new)}: "
    if old is None or new < old:
        return (
            head + f"the next cycle re-reads {what} modified since {iso(new - overlap)}; "
            "linked incidents that did not change are not rewritten and nothing is duplicated"
        )
    if new == old:
        return head + "unchanged"
    return (
        head + f"the next cycle skips changes to {what} made before {iso(new - overlap)} "
        "(they sync only when changed again)"
    )


def report_backfill(results: Mapping[str, BaseException | CycleStats], since: datetime) -> None:
    """One ``backfill_finished`` line per workspace of a ``once --since`` / ``backfill`` pass."""
    for name, r in results.items():
        if isinstance(r, CycleStats):
            log.info(
                "backfill_finished",
                workspace=name,
                since=iso(since),
                created=r.created,
                adopted=r.adopted,
                updated_snow=r.updated_snow,
                updated_sentinel=r.updated_sentinel,
                failures=r.failures,
                watermarks="unchanged",
            )
        else:
            log.error("backfill_failed", workspace=name, since=iso(since), error=str(r)[:500])


def known(config: Config, names: Sequence[str]) -> None:
    """Raise ``ConfigError`` for names that are not ``[workspace:NAME]`` sections."""
    unknown = [n for n in names if n not in config.sources]
    if unknown:
        raise ConfigError([f"[workspace:{n}]: no such workspace in the config" for n in unknown])


def _as_dict(w: Watermark) -> dict[str, str | None]:
    return {
        "created": iso(w.created),
        "created_moved_at": iso(w.created_moved_at),
        "modified": iso(w.modified),
        "modified_moved_at": iso(w.modified_moved_at),
        "moved_at": iso(w.moved_at),
    }
