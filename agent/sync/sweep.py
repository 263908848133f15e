"""The reconciliation sweep: when it is due, and what it reads.

An incremental cycle sees only what changed since the watermarks. A sweep (every ``[agent]
sweep_interval``, default 24 h, or ``once --sweep``) compares every open linked pair in full:
it lists the workspace's Sentinel incidents without a modification filter (paged), fetches the
ServiceNow records of every open link (batched ``sys_idIN``), pairs and plans them as usual
(even pairs whose etag and ``sys_mod_count`` match the shadow, so a value the shadow got wrong
is found too) and repairs the drift. Missed creations are found on the way. Its cost is the
cycle's ``calls`` in the ``cycle_summary`` line marked ``sweep: true``. The empty-listing
safety valve applies to both of its listings.

The time of the last sweep per workspace is a shadow mark; the first cycle of a workspace
starts the clock rather than sweeping (there is nothing to compare yet).

The **open check** is a lighter pass between sweeps (every ``[agent] open_check_interval``,
default 10 min): the workspace's open incidents are listed without a modification filter and
every one whose etag differs from the shadow's is synced. A new Sentinel comment always changes
the incident's etag, but whether it moves ``lastModifiedTimeUtc`` is not verified (REFERENCE
E.2); if it does not, the open check brings the comment over at most one interval (plus a
poll) late instead of at the next sweep. Its cost is one listing of the open incidents.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from agent.ports import Store

MARK_LAST_SWEEP = "last_sweep"
MARK_LAST_OPEN_CHECK = "last_open_check"


async def due(
    shadow: Store, instance: str, workspace: str, interval: float, now: datetime, *, record: bool
) -> bool:
    """Whether a periodic sweep is due; starts the clock (when ``record``) if none ran yet."""
    mark = await shadow.get_mark(instance, workspace, MARK_LAST_SWEEP)
    if mark is None:
        if record:
            await shadow.set_mark(instance, workspace, MARK_LAST_SWEEP, now.isoformat(), now=now)
        return False
    return now - datetime.fromisoformat(mark[0]) >= timedelta(seconds=interval)


async def done(shadow: Store, instance: str, workspace: str, now: datetime) -> None:
    """Remember that a sweep of this workspace completed at ``now``."""
    await shadow.set_mark(instance, workspace, MARK_LAST_SWEEP, now.isoformat(), now=now)


async def open_check_due(
    shadow: Store, instance: str, workspace: str, interval: float, now: datetime
) -> bool:
    """Whether the open incidents are due to be listed in full (``[agent] open_check_interval``;
    0 = every cycle). The first cycle of a workspace runs one."""
    mark = await shadow.get_mark(instance, workspace, MARK_LAST_OPEN_CHECK)
    return mark is None or now - datetime.fromisoformat(mark[0]) >= timedelta(seconds=interval)


async def open_check_done(shadow: Store, instance: str, workspace: str, now: datetime) -> None:
    """Remember that the open incidents of this workspace were listed at ``now``."""
    await shadow.set_mark(instance, workspace, MARK_LAST_OPEN_CHECK, now.isoformat(), now=now)
