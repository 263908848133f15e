"""The writes of a plan, as each side takes them, after the custom mapping hook had its say.

A new ticket's fields come from the incident through the value maps (a value without a row is
reported and left to the ticket system's default) plus what the ticket system adds (caller,
routing); an update's from the field plan (:mod:`agent.core.merge`): the ticket write carries
the close code and notes when it finishes the ticket, the source write the classification when
it closes the incident. The hook may change either; the base stored afterwards is what was
really written (:func:`agent.sync.hooks.settle_base`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.core.merge import Plan
from agent.core.records import Closure, Incident, Ticket
from agent.log import log
from agent.sync import hooks
from agent.sync.context import CycleContext, Setup


def new_values(sync: Setup, ctx: CycleContext, incident: Incident) -> dict[str, str]:
    """The synced fields of a new ticket in its terms; ``owner`` only when it resolved."""
    maps, values = sync.maps, {}
    tables = {"severity": maps.severity_to_snow, "status": maps.status_to_snow}
    for name, table in tables.items():
        value = incident.values.get(name, "")
        mapped = table.get(value)
        if mapped is None:
            # The source's enums are open (REFERENCE A.4): the ticket is made with the ticket
            # system's default for this field, which stays until either side sets a mapped value.
            ctx.stats.unmapped += 1
            log.warning("value_unmapped", field=name, side="sentinel", value=value)
        else:
            values[name] = mapped
    owner = ctx.owners.ticket_user(incident)
    if owner:
        values["owner"] = owner
    return values


async def new_ticket(sync: Setup, ctx: CycleContext, incident: Incident) -> dict[str, str]:
    """The body of a new ticket for ``incident``, after the hook (its unique key is never a hook's)."""
    values = new_values(sync, ctx, incident)
    body = await sync.sink.new_ticket(incident, values, sync.source.ticket_description(incident))
    body = hooks.call(sync.hook, hooks.TO_SNOW, "create", incident, None, body, sync.source.writable)
    return sync.sink.keyed(body, incident)


def closure_of(sync: Setup, ticket: Ticket) -> Closure:
    """How the incident closes when its ticket finished: the close code's row, the close notes."""
    classification, reason = sync.maps.closure(ticket.close_code)
    comment = ticket.close_notes or f"Closed in {sync.sink.title} {ticket.number}"
    return Closure(classification, reason, comment, ticket.close_code)


def plan_writes(
    sync: Setup, p: Plan, incident: Incident, ticket: Ticket, source_changed: bool, ticket_changed: bool
) -> tuple[dict[str, Any], dict[str, Any], Mapping[str, tuple[str, str]]]:
    """The ticket write and the source write for ``p`` after the hook (which also sees pairs with
    nothing planned on a side that changed), and the base to store once they succeeded."""
    # A merged incident's ticket closes as a duplicate of the survivor's (agent.sync.followups).
    code = sync.maps.duplicate_code if incident.merged_away else sync.maps.close_code
    close = (code(incident.classification), incident.close_notes)
    body = sync.sink.render(p.to_snow, ticket, close) if p.to_snow else {}
    closure = closure_of(sync, ticket) if "status" in p.to_sentinel else None
    changes = sync.source.render(p.to_sentinel, closure) if p.to_sentinel else {}
    if p.to_sentinel.get("status") == sync.source.closed_status:
        note_close_code(sync, ticket.close_code)
    if sync.hook is None:
        return body, changes, p.base
    hooked_body: dict[str, Any] = {}
    hooked_changes: dict[str, Any] = {}
    writable = sync.source.writable
    if body or source_changed:
        hooked = hooks.call(sync.hook, hooks.TO_SNOW, "update", incident, ticket, body, writable)
        hooked_body = sync.sink.drop_unchanged(ticket, hooked, body)
    if changes or ticket_changed:
        hooked = hooks.call(sync.hook, hooks.TO_SENTINEL, "update", incident, ticket, changes, writable)
        hooked_changes = sync.source.drop_unchanged(incident, hooked, changes)
    base = hooks.settle_base(
        p,
        sync.sink.field_keys,
        body,
        hooked_body,
        sync.source.field_keys,
        hooked_changes,
        sync.source.field_value,
    )
    return hooked_body, hooked_changes, base


def note_close_code(sync: Setup, code: str) -> None:
    """``value_unmapped`` once per close code that lands on the default ``*`` row."""
    if code and code not in sync.fallback_codes and sync.maps.closure_falls_back(code):
        sync.fallback_codes.add(code)
        classification, reason = sync.maps.closure(code)
        log.warning(
            "value_unmapped",
            field="close_code",
            side="servicenow",
            value=code,
            default="/".join(x for x in (classification, reason) if x),
        )


def log_plan_notes(p: Plan, ctx: CycleContext) -> None:
    """Count and log the plan's conflicts and unmapped values."""
    for c in p.conflicts:
        ctx.stats.conflicts += 1
        log.info("conflict", field=c.field, sentinel=c.sentinel, servicenow=c.servicenow, winner=c.winner)
    for f, side, value in p.unmapped:
        ctx.stats.unmapped += 1
        log.warning("value_unmapped", field=f, side=side, value=value)
