"""A Sentinel workspace onboarded to the Defender portal: its Defender XDR incidents move to the
Graph source, keeping every link (GRAPH.md H.1, H.2, H.4).

After onboarding, Defender's correlation engine makes every incident, and the same incident is
visible in both APIs: the ARM incident has ``providerName`` "Microsoft XDR" and its
``providerIncidentId`` is the Graph incident's id. Changes made through both APIs race and
duplicate comments (H.4), so each incident is written through one API only: Graph for Defender
XDR incidents, ARM for the incidents that exist only there (H.2). ``[defender:NAME] workspaces``
names the onboarded workspaces; the workspace source then creates no ticket for an XDR incident
and keeps syncing the ones it has linked until they moved here.

:func:`move_workspace` runs before each cycle of the Graph source (never in a dry run) until the
workspace has nothing left to move (a state mark remembers that). From the moment the
configuration names the workspace, its own sync leaves every Defender XDR incident alone (it
neither creates, adopts, writes nor commits one: :meth:`SentinelSource.handed_over`), so the
move never races the workspace's cycle. Per linked XDR incident, in this order:

1. the Graph incident is read (with its alerts); one not in this tenant stays with the workspace;
2. the conversation is matched: every comment link of the ARM incident finds the Graph comment
   with the same text (the H.4 mirror copies new comments both ways, edits never), so a comment
   copied once is never copied again, and a work note the agent posted is never taken for a new
   comment. While a linked ARM comment has no Graph twin yet and is younger than the mirror's
   delay, the incident waits for the next cycle (the workspace keeps syncing it meanwhile);
3. the ticket's unique key becomes the Graph incident's key (a lost shadow or a crash then finds
   it by that key, never making a second ticket), its marker the source's;
4. the link, its field base and its comment links move in one transaction
   (:meth:`~agent.store.base.Store.move_link`); the alerts and evidence the Graph incident holds
   count as noted (the workspace noted them under their ARM names).

Once nothing is left, the source's watermarks start where the workspace's are (less the mirror's
delay), unless the source has its own already.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from agent.connectors.graph import comments as gcomments
from agent.connectors.graph import notes as gnotes
from agent.connectors.graph.client import GraphClient
from agent.connectors.graph.models import GraphComment, GraphIncident
from agent.connectors.graph.source import EXTRA_DEFENDER_ID, incident_key
from agent.connectors.sentinel.client import XDR_PROVIDER, SentinelClient
from agent.connectors.sentinel.models import SentinelComment
from agent.connectors.servicenow.client import ServiceNowClient
from agent.core import text as textfmt
from agent.core.records import CommentLink, Link
from agent.errors import NotFound
from agent.log import bind, log
from agent.store import Store

EXTRA_MOVED_FROM = "moved_from"  # link extra: "<workspace>:<ARM incident name>" it came from
MIRROR_WINDOW = timedelta(minutes=5)  # H.4: after onboarding allow up to 5 minutes
AGENT_NOTE = "agent-note:"
MARK = "onboarded:"  # state mark of the Graph source: "onboarded:<workspace>" once all moved


@dataclass
class MoveReport:
    """What one pass over a workspace's links did."""

    workspace: str
    moved: int = 0
    waiting: int = 0  # comments not mirrored yet: moved next time
    not_in_tenant: int = 0
    done: bool = False


@dataclass(frozen=True)
class Target:
    """Where the links go: the Graph source of ``[defender:NAME]`` and its ticket marker."""

    source: str
    tenant: str
    unique_key: str
    marker: str
    fields: Sequence[str]


def _normal(text: str) -> str:
    """A comment's text as the two APIs may render it: HTML to text, blanks collapsed."""
    plain = textfmt.html_to_text(text) if textfmt.looks_like_html(text) else text
    return " ".join(plain.split())


async def moved(store: Store, instance: str, source: str, workspace: str) -> bool:
    """Whether every link of ``workspace`` that belongs to Defender source ``source`` moved there."""
    return await store.get_mark(instance, source, MARK + workspace) is not None


async def move_workspace(
    store: Store,
    instance: str,
    workspace: str,
    target: Target,
    sentinel: SentinelClient,
    graph: GraphClient,
    snow: ServiceNowClient,
    now: datetime,
) -> MoveReport:
    """Move the workspace's linked Defender XDR incidents to the Graph source (module docstring)."""
    report = MoveReport(workspace)
    if await store.get_mark(instance, target.source, MARK + workspace) is not None:
        report.done = True
        return report
    links = [link async for link in store.iter_links(instance, workspace)]
    for link in links:
        with bind(incident=link.incident, workspace=workspace):
            outcome = await _move_one(store, link, target, sentinel, graph, snow, now)
        if outcome == "moved":
            report.moved += 1
        elif outcome == "waiting":
            report.waiting += 1
        elif outcome == "absent":
            report.not_in_tenant += 1
    if not report.waiting:
        await _carry_watermarks(store, instance, workspace, target.source, now)
        await store.set_mark(instance, target.source, MARK + workspace, "done", now=now)
        report.done = True
    if report.moved or report.waiting:
        log.info(
            "onboarded_links_moved", workspace=workspace, source=target.source, moved=report.moved,
            waiting=report.waiting, not_in_tenant=report.not_in_tenant,
        )  # fmt: skip
    return report


async def _move_one(
    store: Store,
    link: Link,
    target: Target,
    sentinel: SentinelClient,
    graph: GraphClient,
    snow: ServiceNowClient,
    now: datetime,
) -> str:
    # Read every time: a native Sentinel incident has a providerIncidentId too (its number).
    try:
        arm = await sentinel.get_incident(link.incident)
    except NotFound:
        return "arm-only"
    if arm.provider_name != XDR_PROVIDER or not arm.provider_incident_id:
        return "arm-only"
    provider = arm.provider_incident_id
    try:
        incident = await graph.get_incident(provider, alerts=True)
    except NotFound:
        log.warning("onboarded_incident_not_in_tenant", defender_id=provider, source=target.source)
        return "absent"
    old = await store.comment_links(link.instance, link.workspace, link.incident)
    moved = _match(old, await sentinel.list_comments(link.incident), incident, now)
    if moved is None:
        return "waiting"
    key = incident_key(target.tenant, incident.id)
    rekey = {target.unique_key: key, "correlation_display": target.marker}
    record = await snow.patch(link.sys_id, rekey, target.fields)
    # Our own write bumps the count by one; anything else is a change not seen yet (kept so).
    known = link.snow_mod_count
    mod = record.mod_count if known is not None and record.mod_count == known + 1 else known
    alerts = incident.alerts or ()
    origin = f"{link.workspace}:{link.incident}"
    new = replace(
        link,
        workspace=target.source,
        incident=key,
        sentinel_etag=None,  # compared once in full on the first cycle of the new source
        snow_mod_count=mod,
        alerts_posted=frozenset(line.id for line in gnotes.alert_lines(alerts)),
        entities_posted=frozenset(line.id for line in gnotes.evidence_lines(alerts)),
        extra={**link.extra, EXTRA_DEFENDER_ID: incident.id, EXTRA_MOVED_FROM: origin},
    )
    comments = [
        replace(c, workspace=target.source, incident=key, sentinel_comment=moved.get(name, name))
        for c in old
        for name in (c.sentinel_comment,)
    ]
    await store.move_link(link.instance, link.workspace, link.incident, new, comments)
    log.info("onboarded_link_moved", defender_id=incident.id, snow_number=link.number, source=target.source)
    return "moved"


def _match(
    links: Sequence[CommentLink], arm: Sequence[SentinelComment], incident: GraphIncident, now: datetime
) -> dict[str, str] | None:
    """ARM comment name -> Graph comment id for every linked ARM comment; None while one has no
    Graph twin yet and may still be on its way (younger than the mirror's delay)."""
    by_name = {c.name: c for c in arm}
    free: dict[str, list[GraphComment]] = {}
    for comment in incident.comments:
        free.setdefault(_normal(comment.text), []).append(comment)
    out: dict[str, str] = {}
    for link in links:
        name = link.sentinel_comment
        if name.startswith(AGENT_NOTE) or name in out:
            continue
        source = by_name.get(name)
        if source is None:
            continue  # gone from ARM (or never written there): nothing to pair
        twins = free.get(_normal(source.message))
        if twins:
            out[name] = gcomments.comment_id(twins.pop(0))
        elif now - source.created < MIRROR_WINDOW:
            return None
    return out


async def _carry_watermarks(store: Store, instance: str, workspace: str, source: str, now: datetime) -> None:
    """The source starts where the workspace is, unless it has watermarks of its own."""
    for side, back in (("sentinel", MIRROR_WINDOW), ("servicenow", timedelta(0))):
        theirs = await store.get_watermark(instance, workspace, side)
        ours = await store.get_watermark(instance, source, side)
        if ours.modified is not None or theirs.modified is None:
            continue
        created = theirs.created if side == "sentinel" else None
        await store.set_watermark(instance, source, side, modified=theirs.modified - back, created=created,
                                  moved_at=now)  # fmt: skip
