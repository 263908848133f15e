"""The cycle's plan: one action per pair, from the two decision tables.

The record-level table (:mod:`agent.core.decide`) says what happens to each pair, the field
merge (:mod:`agent.core.merge`) what to write; :func:`plan` gathers the facts both need (the
shadow's tombstones and backoffs, a unique-key look-up for incidents without a link, the owners)
and returns the list :mod:`agent.sync.apply` executes, or a dry run describes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from agent.core import decide
from agent.core.decide import Decision, Facts, Row
from agent.core.maps import absorb_autoclose
from agent.core.merge import Plan, SideState
from agent.core.merge import plan as merge
from agent.core.records import Incident, Link, Ticket
from agent.log import log
from agent.sync.context import CycleContext, Setup
from agent.sync.pairing import Pair


@dataclass(frozen=True)
class Create:
    """Make a ticket for the incident."""

    incident: Incident

    @property
    def name(self) -> str:
        return self.incident.id


@dataclass
class Update:
    """Sync a pair's fields and conversation (``adopt``: link a ticket found by its unique key);
    ``give_up``: its ticket is read-only, so only the source side is written."""

    pair: Pair
    plan: Plan
    give_up: bool = False

    @property
    def name(self) -> str:
        assert self.pair.incident is not None
        return self.pair.incident.id

    @property
    def adopt(self) -> bool:
        return self.pair.link is None


@dataclass
class FollowUp:
    """The incident reopened while its ticket is read-only: open a follow-up ticket."""

    pair: Pair
    plan: Plan

    @property
    def name(self) -> str:
        assert self.pair.incident is not None
        return self.pair.incident.id


@dataclass(frozen=True)
class Skip:
    """Leave the pair this cycle; ``forget`` is a link whose conversation re-check ends."""

    name: str
    row: Row
    forget: Link | None = None


Action = Create | Update | FollowUp | Skip


def side(incident: Incident) -> SideState:
    return SideState(values=incident.values, modified=incident.modified)


def ticket_side(ticket: Ticket) -> SideState:
    return SideState(values=ticket.values, modified=ticket.modified)


def field_plan(sync: Setup, ctx: CycleContext, p: Pair, base: Mapping[str, tuple[str, str]] | None) -> Plan:
    """The field merge of a pair whose two sides are there (``base``: the link's agreed fields)."""
    assert p.incident is not None and p.ticket is not None
    policy = sync.maps.policy(ctx.owners.to_snow, ctx.owners.to_sentinel, sync.settings.conflict_policy)
    if base is not None:
        base = absorb_autoclose(base, p.ticket, sync.maps, sync.sink.autoclosed)
    return merge(base, side(p.incident), ticket_side(p.ticket), policy)


async def plan(
    sync: Setup, ctx: CycleContext, pairs: Mapping[str, Pair], floor: datetime, watermark: datetime | None
) -> list[Action]:
    """The cycle's actions: creates first, then the linked pairs, then the adopted ones."""
    inst, wsname = sync.instance, sync.workspace
    live = {name: p for name, p in pairs.items() if not p.unchanged}
    blocked = await sync.store.blocked(inst, wsname, ctx.now)
    ctx.stats.backoff = len(blocked)
    unlinked = await sync.store.unlinked(inst, wsname, live)  # never re-created or re-adopted
    facts = {
        name: _facts(sync, ctx, p, name in unlinked, name in blocked, floor, watermark)
        for name, p in live.items()
    }
    ctx.stats.skipped += sum(1 for f in facts.values() if decide.row(f) is Row.BACKOFF)
    open_ = {n: f for n, f in facts.items() if not (f.linked or f.unlinked or f.backoff)}
    asking = [n for n, f in open_.items() if f.wanted] + [n for n, f in open_.items() if f.may_own]
    found = await sync.sink.by_incident(asking) if asking else {}
    for name, ticket in found.items():
        live[name].ticket = ticket
        facts[name] = replace(facts[name], found=True)
    creates = [i for n, f in facts.items() if decide.decide(f) is Decision.CREATE and (i := live[n].incident)]
    linked = [n for n, f in facts.items() if decide.row(f) in (Row.UPDATE, Row.INCOMPLETE)]
    adopted = [n for n in asking if n in found]
    if ctx.options.since is not None:
        log.info(
            "backfill_listed", since=ctx.options.since.isoformat(), listed=ctx.stats.listed_sentinel,
            to_create=len(creates), to_adopt=len(adopted), changed=len(linked),
        )  # fmt: skip
    both = [live[n] for n in [*linked, *adopted] if live[n].incident and live[n].ticket]
    await ctx.owners.resolve(
        sync.sink,
        [p.incident for p in both if p.incident] + creates,
        [p.ticket for p in both if p.ticket],
    )
    actions: list[Action] = [Create(c) for c in creates]
    for name in [*linked, *adopted]:
        actions.append(_pair_action(sync, ctx, name, live[name]))
    return actions


def _facts(
    sync: Setup,
    ctx: CycleContext,
    p: Pair,
    unlinked: bool,
    blocked: bool,
    floor: datetime,
    watermark: datetime | None,
) -> Facts:
    if p.link is not None:
        return Facts(
            linked=True, has_incident=p.incident is not None, has_ticket=p.ticket is not None,
            unlinked=unlinked, backoff=blocked,
        )  # fmt: skip
    inc = p.incident
    wanted = inc is not None and _wanted(sync, inc, floor, ctx.options.since)
    may_own = (
        inc is not None
        and not wanted
        and sync.source.selected(inc)
        and (watermark is None or inc.modified > watermark)
    )
    return Facts(linked=False, unlinked=unlinked, backoff=blocked, wanted=wanted, may_own=may_own)


def _wanted(sync: Setup, inc: Incident, max_age: datetime, since: datetime | None) -> bool:
    """Whether the agent makes a ticket for the incident now: selected, open, new enough."""
    if not sync.source.selected(inc) or inc.closed:
        return False
    oldest = min(max_age, since) if since is not None else max_age
    return inc.created >= oldest


def _pair_action(sync: Setup, ctx: CycleContext, name: str, p: Pair) -> Action:
    """The action of a linked or adopted pair (the field plan decides about a read-only ticket)."""
    if p.incident is None or p.ticket is None:
        ctx.stats.skipped += 1
        link = p.link
        log.warning(
            "pair_incomplete",
            incident=link.incident if link else None,
            snow_number=link.number if link else None,
            missing="sentinel" if p.incident is None else "servicenow",
        )
        # A side is gone: its conversation has nothing left to re-check.
        due = link is not None and link.enrich_after is not None and link.enrich_after <= ctx.now
        return Skip(name, Row.INCOMPLETE, link if due else None)
    pl = field_plan(sync, ctx, p, p.link.fields if p.link else None)
    status = pl.to_snow.get("status")
    read_only = (
        p.link is not None and bool(pl.to_snow) and sync.sink.read_only(p.ticket.values.get("status", ""))
    )
    facts = Facts(
        linked=p.link is not None,
        found=p.link is None,
        wanted=True,
        read_only=read_only,
        reopens=status is not None and not sync.sink.finished(status),
        follow_up=sync.settings.reopen_closed == "follow_up",
    )
    if decide.decide(facts) is Decision.FOLLOW_UP:
        return FollowUp(p, pl)
    return Update(p, pl, give_up=read_only)
