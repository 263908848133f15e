"""Acting on the plan: the writes of each action, then the pair's commit to the shadow.

Per pair the remote sides are written first and the shadow is committed only after they
succeeded (:func:`commit`, the one place that saves a link), in one short transaction. A crash
between the two looks like "changed on both sides to equal values" next cycle and heals without
a write. A 409 on the source write means an analyst changed the incident after it was read: it is
re-read and re-planned against the same last-agreed base (with the ticket as it is after our
write), so the analyst's change is copied, never overwritten; the pair then counts as changed on
the source side, so a comment that caused the conflict is copied too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from agent.core.maps import given_up
from agent.core.merge import Plan
from agent.core.merge import plan as merge
from agent.core.records import Incident, Link, Ticket
from agent.errors import EditConflict, NotSent, PermanentError, RateLimited, RemoteError, TransientError
from agent.log import log
from agent.sync import clock, hooks
from agent.sync.actions import Action, Create, FollowUp, Skip, Update, side, ticket_side
from agent.sync.context import CycleContext, Setup
from agent.sync.conversation import Opening, PairWork, journal_seen
from agent.sync.failures import release_slot, safe_error
from agent.sync.pairing import Pair
from agent.sync.writes import log_plan_notes, new_ticket, plan_writes

MAX_CONFLICT_RETRIES = 3
TALK_RETRIES = "talk_retries"  # link extra: conversation attempts that failed in a row
TALK_RETRY_BASE = 60.0
TALK_RETRY_MAX = 6 * 3600.0
EXTRA_PREVIOUS = "previous_tickets"  # link extra: "<number>:<id>,..." of closed tickets followed up
EXTRA_CLOSED_NOTES = "closed_notes"  # link extra: reopen notes put on the incident (reopen_closed = note)
EXTRA_READ_ONLY_WARNED = "read_only_warned"  # link extra: "1" once ticket_read_only was logged
_PER_TICKET_EXTRA = frozenset(
    {EXTRA_CLOSED_NOTES, EXTRA_READ_ONLY_WARNED, TALK_RETRIES, "journal_seen", "journal_dropped"}
)


async def commit(sync: Setup, link: Link, conflicts: Iterable[tuple[str, str, str, str]] = ()) -> None:
    """Save one pair's link (with the conflicts it resolved): the shadow's commit. It is the last
    step of a pair's work, so the pair's concurrency slot goes to the next one meanwhile."""
    release_slot()
    await sync.store.save_link(link, conflicts=list(conflicts))


async def run(sync: Setup, ctx: CycleContext, action: Action) -> None:
    """Execute one action."""
    if isinstance(action, Create):
        await create(sync, ctx, action.incident)
    elif isinstance(action, Update):
        await update(sync, ctx, action)
    elif isinstance(action, FollowUp):
        await follow_up(sync, ctx, action.pair)


async def forget(sync: Setup, action: Skip) -> None:
    """A pair with a side gone: its conversation has nothing left to re-check."""
    if action.forget is not None:
        await commit(sync, replace(action.forget, enrich_after=None))


def due(link: Link, now: datetime | None = None) -> bool:
    """Whether the link's conversation re-check (late enrichment or a deferred retry) is due."""
    return link.enrich_after is not None and link.enrich_after <= (now or clock.utcnow())


def first_base(incident: Incident, ticket: Ticket, owner: bool) -> dict[str, tuple[str, str]]:
    """The agreed fields of a new ticket (the owner only when it was written, or there is none)."""
    base = {
        name: (incident.values.get(name, ""), ticket.values.get(name, "")) for name in ("severity", "status")
    }
    if owner or not incident.owner:
        base["owner"] = (incident.owner, ticket.values.get("owner", ""))
    return base


async def _label(sync: Setup, incident: Incident, ticket: Ticket) -> str:
    """The incident's version after the ticket number went on it as a label (when configured)."""
    if sync.settings.writeback_label and ticket.number not in incident.labels:
        return await sync.source.add_label(incident, ticket.number) or incident.version
    return incident.version


async def create(sync: Setup, ctx: CycleContext, incident: Incident) -> None:
    """Source -> ticket: create the ticket with what the incident already holds (its alerts,
    entities and comments, :mod:`agent.sync.conversation.opening`), write its number back as a
    label, converse, link."""
    body = await new_ticket(sync, ctx, incident)
    opening = await sync.talk.open(incident, body, clock.utcnow())
    try:
        ticket = await sync.sink.create(incident.id, body, notes=opening.notes)
    except (PermanentError, NotSent, RateLimited):
        await sync.talk.created(incident, None, opening, clock.utcnow())  # nothing was made
        raise
    log.info("snow_created", snow_number=ticket.number, sys_id=ticket.id, direction="to_snow")
    # The opening entries' "posted" mark and the label go out together, each to its end, before
    # the link is saved: after a crash before the link, the incident is listed again (the
    # watermark has not moved), and adopting its ticket writes the label and confirms the entries.
    marked, labelled = await asyncio.gather(
        sync.talk.created(incident, ticket, opening, clock.utcnow()),
        _label(sync, incident, ticket),
        return_exceptions=True,
    )
    for outcome in (marked, labelled):
        if isinstance(outcome, BaseException):
            raise outcome
    assert isinstance(labelled, str)
    version = labelled
    now = clock.utcnow()
    delay = sync.settings.enrichment_delay
    link = Link(
        instance=sync.instance,
        workspace=sync.workspace,
        incident=incident.id,
        sys_id=ticket.id,
        number=ticket.number,
        fields=first_base(incident, ticket, bool(ctx.owners.ticket_user(incident))),
        sentinel_etag=version,
        snow_mod_count=ticket.version,
        open=True,
        created_at=now,
        enrich_after=now + timedelta(seconds=delay) if delay else None,
        extra={**journal_seen(ticket), **sync.sink.route_extra(incident), **incident.extra},
    )
    # Comments, alerts and entities go before the link is saved: a crash in between leaves no
    # link, and adopting the ticket next cycle resolves what was written (no duplicate).
    link, _ticket = await converse(sync, ctx, link, None, incident, ticket, created=True, opening=opening)
    await commit(sync, link)
    ctx.stats.created += 1


async def update(sync: Setup, ctx: CycleContext, action: Update) -> None:
    """Write one pair's plan: the ticket, then the source (re-planned on a 409), then the link."""
    pair, p = action.pair, action.plan
    assert pair.incident is not None and pair.ticket is not None
    incident, ticket = pair.incident, pair.ticket
    source_changed, ticket_changed = pair.source_changed, pair.ticket_changed
    if action.give_up:
        p = await give_up_closed(sync, pair, p)
    base_before = pair.link.fields if pair.link is not None else None
    read_only = sync.sink.read_only(ticket.values.get("status", ""))
    mod: int | None = ticket.version  # the newest ticket version this cycle has fully seen
    base: Mapping[str, tuple[str, str]] = p.base
    wrote = False
    for attempt in range(MAX_CONFLICT_RETRIES + 1):
        log_plan_notes(p, ctx)
        body, changes, base = plan_writes(sync, p, incident, ticket, source_changed, ticket_changed)
        if body and read_only:
            body = {}  # nor what the custom mapping added: the ticket is closed (E.9)
        if body:
            before, ticket = ticket, await sync.sink.write(ticket.id, body)
            mod = sync.sink.version_after(mod, before.version, ticket.version)
            wrote = True
            _ticket_written(sync, ctx, p, body, before, ticket)
        if not changes:
            break
        was_closed = incident.closed
        try:
            incident = await sync.source.write(incident, changes)
        except EditConflict:
            if attempt == MAX_CONFLICT_RETRIES:
                raise
            log.info("sentinel_conflict_replan", attempt=attempt + 1)
            incident = await sync.source.get(incident.id)
            # The incident changed since it was listed: whatever changed it (a new comment among
            # them) is this cycle's to handle, or the version stored below hides it.
            source_changed = pair.link is None or pair.link.sentinel_etag != incident.version
            await ctx.owners.resolve(sync.sink, [incident], [ticket])
            policy = sync.maps.policy(
                ctx.owners.to_snow, ctx.owners.to_sentinel, sync.settings.conflict_policy
            )
            p = merge(base_before, side(incident), ticket_side(ticket), policy)
            continue
        wrote = True
        _source_written(sync, ctx, p, changes, was_closed, ticket)
        break
    await _link_pair(sync, ctx, pair, p, incident, ticket, base, mod, wrote, source_changed, ticket_changed)


def _ticket_written(
    sync: Setup, ctx: CycleContext, p: Plan, body: Mapping[str, str], before: Ticket, after: Ticket
) -> None:
    ctx.stats.updated_snow += 1
    log.info("snow_updated", snow_number=after.number, direction="to_snow", fields=sorted(p.to_snow or body))
    state = body.get(sync.sink.field_keys["status"])
    was_closed = sync.sink.finished(before.values.get("status", ""))
    closes = None if state is None else sync.sink.finished(state)
    log_closure(hooks.TO_SNOW, closes, was_closed, after.number)


def _source_written(
    sync: Setup, ctx: CycleContext, p: Plan, changes: Mapping[str, object], was_closed: bool, ticket: Ticket
) -> None:
    ctx.stats.updated_sentinel += 1
    log.info(
        "sentinel_updated",
        snow_number=ticket.number,
        direction="to_sentinel",
        fields=sorted(p.to_sentinel or changes),
    )
    key = sync.source.field_keys["status"]
    closes = None if key not in changes else changes[key] == sync.source.closed_status
    log_closure(hooks.TO_SENTINEL, closes, was_closed, ticket.number)


async def _link_pair(
    sync: Setup,
    ctx: CycleContext,
    pair: Pair,
    p: Plan,
    incident: Incident,
    ticket: Ticket,
    base: Mapping[str, tuple[str, str]],
    mod: int | None,
    wrote: bool,
    source_changed: bool,
    ticket_changed: bool,
) -> None:
    """After the field writes: the link as agreed now, the conversation, the commit."""
    old = pair.link
    unchanged = old is not None and dict(base) == dict(p.previous_base) and not wrote
    if unchanged and old is not None and not due(old):
        if old.sentinel_etag == incident.version and old.snow_mod_count == ticket.version:
            return
    closed = incident.closed and sync.sink.finished(ticket.values.get("status", ""))
    # Adopting: a crash after the create (or a lost shadow) may have left no label.
    version = await _label(sync, incident, ticket) if old is None else incident.version
    link = Link(
        instance=sync.instance,
        workspace=sync.workspace,
        incident=incident.id,
        sys_id=ticket.id,
        number=ticket.number,
        fields=dict(base),
        sentinel_etag=version,
        snow_mod_count=mod,
        open=not closed,
        alerts_posted=old.alerts_posted if old else frozenset(),
        entities_posted=old.entities_posted if old else frozenset(),
        created_at=old.created_at if old else clock.utcnow(),
        enrich_after=old.enrich_after if old else None,
        extra=old.extra if old else {},
    )
    link, ticket = await converse(
        sync, ctx, link, old, incident, ticket, adopted=old is None, source_changed=source_changed,
        ticket_changed=ticket_changed,
    )  # fmt: skip
    await commit(sync, link, [(c.field, c.sentinel, c.servicenow, c.winner) for c in p.conflicts])
    if old is None:
        ctx.stats.adopted += 1
        log.info("link_adopted", snow_number=ticket.number, sys_id=ticket.id)


def log_closure(direction: str, closed: bool | None, was_closed: bool, number: str) -> None:
    """``closure_<direction>`` / ``reopen_<direction>`` when a write closes or reopens."""
    if closed and not was_closed:
        log.info(f"closure_{direction}", direction=direction, snow_number=number)
    elif closed is False and was_closed:
        log.info(f"reopen_{direction}", direction=direction, snow_number=number)


async def give_up_closed(sync: Setup, pair: Pair, p: Plan) -> Plan:
    """The plan without its writes to a read-only ticket. A reopen with ``reopen_closed = note``
    says on the incident (once per reopen) that the ticket stays closed; any other change is one
    warning per ticket."""
    assert pair.incident is not None and pair.ticket is not None and pair.link is not None
    incident, ticket, link = pair.incident, pair.ticket, pair.link
    status = p.to_snow.get("status")
    reopen = status is not None and not sync.sink.finished(status)
    extra = dict(link.extra)
    if reopen:
        count = int(extra.get(EXTRA_CLOSED_NOTES, "0")) + 1
        cid = sync.source.notice_id(f"{sync.instance}:{ticket.id}:{count}")
        message = (
            f"{sync.sink.title} {ticket.number} is closed and can no longer be changed, so it stays closed "
            "while this incident is open again (reopen_closed = note). Open a new ticket by hand "
            "if one is needed."
        )
        await sync.source.put_comment(incident, cid, message)
        extra[EXTRA_CLOSED_NOTES] = str(count)
        log.info("ticket_closed_note", snow_number=ticket.number, comment=cid, direction="to_sentinel")
    elif extra.get(EXTRA_READ_ONLY_WARNED) != "1":
        extra[EXTRA_READ_ONLY_WARNED] = "1"
        log.warning(
            "ticket_read_only",
            snow_number=ticket.number,
            fields=sorted(p.to_snow),
            message=f"{sync.sink.title} {ticket.number} is closed and read-only: changes made in "
            f"{sync.source.system.capitalize()} no longer reach it (said once per ticket)",
        )
    pair.link = replace(link, extra=extra)
    return given_up(p, ticket)


async def follow_up(sync: Setup, ctx: CycleContext, pair: Pair) -> None:
    """A reopen of an incident whose ticket is read-only (REFERENCE E.9): a follow-up ticket
    that references the closed one, and the link moves to it; the closed ticket stays in the
    link's history. The source keeps its reopened state. A follow-up a crashed run already made
    is found by the unique key and used, never made twice."""
    assert pair.incident is not None and pair.ticket is not None and pair.link is not None
    incident, closed, old = pair.incident, pair.ticket, pair.link
    history = [h for h in old.extra.get(EXTRA_PREVIOUS, "").split(",") if h]
    exclude = frozenset({closed.id, *(h.partition(":")[2] for h in history)})
    found = (await sync.sink.by_incident([incident.id], exclude)).get(incident.id)
    if found is not None and not sync.sink.finished(found.values.get("status", "")):
        ticket = found
    else:
        body = sync.sink.follow_up(await new_ticket(sync, ctx, incident), closed)
        ticket = await sync.sink.create(incident.id, body, exclude)
    log.info(
        "snow_follow_up_created", snow_number=ticket.number, sys_id=ticket.id, previous=closed.number,
        direction="to_snow",
    )  # fmt: skip
    version = await _label(sync, incident, ticket)
    kept = {k: v for k, v in old.extra.items() if k not in _PER_TICKET_EXTRA}
    link = replace(
        old,
        sys_id=ticket.id,
        number=ticket.number,
        fields=first_base(incident, ticket, bool(ctx.owners.ticket_user(incident))),
        sentinel_etag=version,
        snow_mod_count=ticket.version,
        open=True,
        enrich_after=None,
        extra={
            **kept,
            **journal_seen(ticket),
            EXTRA_PREVIOUS: ",".join([*history, f"{closed.number}:{closed.id}"]),
        },
    )
    link, _ticket = await converse(sync, ctx, link, None, incident, ticket, created=True)
    await commit(sync, link)
    ctx.stats.created += 1


async def converse(
    sync: Setup,
    ctx: CycleContext,
    link: Link,
    previous: Link | None,
    incident: Incident,
    ticket: Ticket,
    *,
    created: bool = False,
    adopted: bool = False,
    source_changed: bool = True,
    ticket_changed: bool = True,
    opening: Opening | None = None,
) -> tuple[Link, Ticket]:
    """Comments, journal entries, alerts and entities of one pair (:mod:`agent.sync.conversation`).

    A remote error here never holds the fields back: the link is committed with its new field
    base but the sides' versions of ``previous`` (so the pair still looks changed), and the
    conversation is re-checked after a backoff (``enrich_after``). What it wrote before the
    error is linked already and is not written again.
    """
    now = clock.utcnow()
    work = PairWork(
        link, incident, ticket, source_changed, ticket_changed, created, adopted, due(link, now), opening
    )
    try:
        done, ticket = await sync.talk.run(work, now)
    except RemoteError as exc:
        return _deferred(ctx, link, previous, exc, now), ticket
    extra = {k: v for k, v in done.extra.items() if k != TALK_RETRIES}
    enrich_after = done.enrich_after
    delay = timedelta(seconds=sync.settings.enrichment_delay)
    retried = TALK_RETRIES in link.extra
    if retried and enrich_after is None and delay and link.created_at and link.created_at + delay > now:
        enrich_after = link.created_at + delay  # a retry ran before the late re-check: keep it
    return replace(done, extra=extra, enrich_after=enrich_after), ticket


def _deferred(ctx: CycleContext, link: Link, previous: Link | None, exc: RemoteError, now: datetime) -> Link:
    tries = int(link.extra.get(TALK_RETRIES, "0")) + 1
    retry = now + timedelta(seconds=min(TALK_RETRY_MAX, TALK_RETRY_BASE * 2 ** min(tries - 1, 16)))
    ctx.stats.comments_deferred += 1
    # A first transient failure heals by itself at the retry; only a repeat needs a person.
    fields = {"error": safe_error(exc), "attempt": tries, "next_try": retry.isoformat()}
    if tries == 1 and isinstance(exc, TransientError):
        log.info("conversation_deferred", **fields)
    else:
        log.warning("conversation_deferred", **fields)
    return replace(
        link,
        sentinel_etag=previous.sentinel_etag if previous else None,
        snow_mod_count=previous.snow_mod_count if previous else None,
        enrich_after=min(retry, link.enrich_after) if link.enrich_after else retry,
        extra={**link.extra, TALK_RETRIES: str(tries)},
    )
