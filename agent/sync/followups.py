"""After the writes: re-route tickets a source change routes elsewhere, and follow merged incidents.

**Routing.** When a change of a linked incident (a label, the owner, the severity) routes it to
another assignment group, its ticket is moved there; a ticket an analyst moved by hand is never
moved back unless the *routing outcome* changes (:meth:`agent.ports.TicketSink.reroute`).

**Merges.** A merge in the Defender portal closes the *source* incident and moves its tags (the
ticket number label the agent wrote among them) to the *surviving* incident (Microsoft Learn,
"Alert correlation and incident merging in the Microsoft Defender portal"). Once per merged
incident the agent writes one note on the source's ticket naming the survivor (its portal pages
and its own ticket when it has one), makes the survivor's ticket its parent, and finishes the
ticket if it is still open. When the survivor is not known yet, the note links the source's
Defender page (which redirects to the survivor); the parent follows once the survivor shows up.
The ticket closes with the close code ``Duplicate`` when the instance has it (a ``[closure_to_sentinel]``
row names it, as the itsm profile does), else with the code of the merged incident's classification.
The source's version stays in its link: a change to it not synced yet is still seen as one.

Defender does not move the merged incident's comments to the survivor (GRAPH.md E, H.3), so
once the survivor's ticket is known the agent carries them forward: one work note on the
survivor's ticket lists the merged incident's comments (not those the agent wrote there itself).
It is written once: the survivor's journal is read first and the note is not written again when
it is there (a crash between the write and the commit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace

from agent.core import text as textfmt
from agent.core.records import Incident, Link
from agent.errors import NotFound, RemoteError
from agent.log import bind, log
from agent.sync import clock
from agent.sync.apply import commit
from agent.sync.context import Setup
from agent.sync.conversation.state import TO_SENTINEL, text_hash
from agent.sync.failures import safe_error

EXTRA_MERGED_INTO = "merged_into"
"""``Link.extra`` key: the surviving incident's id once noted ("" while it is unknown)."""
EXTRA_CARRIED = "comments_carried_to"
"""``Link.extra`` key: the surviving incident whose ticket got the merged incident's comments."""


async def follow(sync: Setup, processed: Sequence[Incident], incidents: Mapping[str, Incident]) -> None:
    """Routing over ``processed`` (the linked incidents this cycle wrote or compared), merges over
    the cycle's listing; a remote error is retried the next time the pair or merge is seen."""
    failed = await sync.store.blocked(sync.instance, sync.workspace, clock.utcnow())
    ok = [i for i in processed if i.id not in failed]
    steps: tuple[tuple[str, Callable[[], Awaitable[int]]], ...] = (
        ("routing", lambda: reroute(sync, ok)),
        ("merges", lambda: merges(sync, incidents, frozenset(failed))),
    )
    for what, step in steps:
        try:
            await step()
        except RemoteError as exc:
            log.warning("follow_failed", step=what, error=safe_error(exc))


# --- routing ----------------------------------------------------------------------------------


async def reroute(sync: Setup, incidents: Sequence[Incident]) -> int:
    """Move tickets whose incident now routes elsewhere; returns how many moved."""
    by_id = {i.id: i for i in incidents}
    links = await sync.store.get_links(sync.instance, sync.workspace, by_id)

    async def one(link: Link) -> int:
        async with sync.sem:
            with bind(incident=link.incident):
                return await _reroute(sync, link, by_id[link.incident])

    return sum(await asyncio.gather(*(one(link) for link in links.values())))


async def _reroute(sync: Setup, link: Link, incident: Incident) -> int:
    route = await sync.sink.reroute({**link.extra, **incident.extra}, incident)
    if route is None:
        return 0
    if not route.write:
        if dict(route.extra) != dict(link.extra):
            await commit(sync, replace(link, extra=route.extra))
        return 0
    try:
        ticket = await sync.sink.write(link.sys_id, route.write)
    except RemoteError as exc:
        log.warning("assignment_group_failed", snow_number=link.number, error=str(exc)[:300])
        return 0
    version = sync.sink.version_after(link.snow_mod_count, link.snow_mod_count, ticket.version)
    await commit(sync, replace(link, extra=route.extra, snow_mod_count=version))
    log.info("assignment_group_routed", snow_number=link.number, group=route.group, previous=route.previous)
    return 1


# --- merges -----------------------------------------------------------------------------------


async def merges(sync: Setup, incidents: Mapping[str, Incident], failing: frozenset[str]) -> int:
    """Note every newly seen merge among this cycle's listed incidents; returns how many."""
    carriers = _number_labels(sync, incidents)
    by_number = await sync.store.links_by_number(sync.instance, sync.workspace, carriers)
    sources: dict[str, tuple[Link, Incident | None]] = {}
    for number, link in by_number.items():
        if carriers[number].id != link.incident:
            sources[link.incident] = (link, carriers[number])
    merged = [name for name, inc in incidents.items() if inc.merged_away]
    for name, link in (await sync.store.get_links(sync.instance, sync.workspace, merged)).items():
        sources.setdefault(name, (link, carriers.get(link.number)))
    done = 0
    for link, survivor in sources.values():
        if link.incident in failing:
            continue  # left to its retry
        noted = link.extra.get(EXTRA_MERGED_INTO)
        if noted:
            continue  # noted with its survivor already
        gone = incidents.get(link.incident)
        if survivor is None and gone is not None and gone.merged_into:
            survivor = await _survivor(sync, incidents, gone.merged_into)
        if noted is not None and survivor is None:
            continue  # noted already, and nothing new to add
        with bind(incident=link.incident):
            done += await _merged(sync, link, incidents.get(link.incident), survivor)
    return done


async def _survivor(sync: Setup, incidents: Mapping[str, Incident], survivor_id: str) -> Incident | None:
    """The incident a merged one lives on in, when the source names it (Graph's
    ``redirectIncidentId``, GRAPH.md H.3); None when it cannot be read."""
    if survivor_id in incidents:
        return incidents[survivor_id]
    try:
        return await sync.source.get(survivor_id)
    except NotFound:
        return None


def _number_labels(sync: Setup, incidents: Mapping[str, Incident]) -> dict[str, Incident]:
    """Ticket numbers found as labels -> the (not merged) incident carrying them."""
    out: dict[str, Incident] = {}
    for inc in incidents.values():
        if inc.merged_away:
            continue
        for label in inc.labels:
            if sync.sink.is_number(label):
                out.setdefault(label, inc)
    return out


async def _merged(sync: Setup, link: Link, merged: Incident | None, survivor: Incident | None) -> int:
    try:
        merged = merged or await sync.source.get(link.incident)
    except NotFound:
        return 0
    if not merged.merged_away:
        return 0  # a number label an analyst copied by hand: not a merge
    ticket = await sync.sink.get(link.sys_id)
    if ticket is None:
        log.warning("snow_record_missing", sys_id=link.sys_id)
        return 0
    target = None
    if survivor is not None:
        target = (await sync.store.get_links(sync.instance, sync.workspace, [survivor.id])).get(survivor.id)
    first = EXTRA_MERGED_INTO not in link.extra
    closed_state = sync.maps.status_to_snow.get(sync.source.closed_status)
    finishing = (
        closed_state if closed_state and not sync.sink.finished(ticket.values.get("status", "")) else None
    )
    close = (sync.maps.duplicate_code(merged.classification), sync.source.merge_text(merged, survivor))
    note = sync.source.merge_note(merged, survivor, target.number if target else None, first)
    body = sync.sink.merge_write(ticket, note, target.sys_id if target else None, finishing, close)
    try:
        after = await sync.sink.write(ticket.id, body)
    except RemoteError as exc:
        log.warning("merge_note_failed", snow_number=link.number, error=str(exc)[:300])
        return 0
    carried = {}
    if survivor is not None and target is not None and link.extra.get(EXTRA_CARRIED) != survivor.id:
        await _carry(sync, link, merged, target)
        carried = {EXTRA_CARRIED: survivor.id}
    fields = dict(link.fields)
    state = after.values.get("status", "")
    if "status" in fields or sync.sink.finished(state):
        fields["status"] = (merged.values.get("status", ""), state)
    extra = {**link.extra, EXTRA_MERGED_INTO: survivor.id if survivor else "", **merged.extra, **carried}
    await commit(
        sync,
        replace(
            link,
            fields=fields,
            snow_mod_count=sync.sink.version_after(link.snow_mod_count, ticket.version, after.version),
            open=not (sync.sink.finished(state) and merged.closed),
            extra=extra,
        ),
    )
    log.info(
        "incident_merged", snow_number=link.number, survivor=survivor.id if survivor else None,
        survivor_snow_number=target.number if target else None, direction="to_snow",
    )  # fmt: skip
    return 1


async def _carry(sync: Setup, link: Link, merged: Incident, target: Link) -> None:
    """The merged incident's comments as one note on the survivor's ticket, written once."""
    written = {
        c.text_hash
        for c in await sync.store.comment_links(sync.instance, sync.workspace, link.incident)
        if c.direction == TO_SENTINEL and c.text_hash
    }
    comments = [c for c in await sync.source.comments(merged) if text_hash(c.text) not in written]
    if not comments:
        return
    lines = [
        f"Comments of the merged {sync.source.title} incident {merged.number} ({sync.sink.title} "
        f"{link.number}), which the merge does not move to this incident:"
    ]
    for c in comments:
        text = textfmt.html_to_text(c.text) if sync.source.comments_html else c.text
        lines.append(f"{c.author or 'unknown'} ({c.created:%Y-%m-%d %H:%M} UTC): {text.strip()}")
    note = textfmt.cap("\n\n".join(lines), sync.sink.note_limit, f"{sync.source.title} {merged.number}")
    now = clock.utcnow()
    there = await sync.sink.journal.read({target.sys_id: None}, now)
    if any(e.text.strip() == note.strip() for e in there.get(target.sys_id, [])):
        return  # written before a crash kept it from being recorded
    await sync.sink.post_note(target.sys_id, note, sync.sink.note_kind)
    log.info("merge_comments_carried", snow_number=target.number, comments=len(comments), direction="to_snow")
