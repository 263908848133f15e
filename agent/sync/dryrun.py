"""A dry run (``plan``, ``once --dry-run``): the plan's actions described, nothing written.

Each action is rendered exactly as :mod:`agent.sync.apply` would write it (the hook included)
and listed in the cycle's ``planned`` entries, which the ``plan`` command prints."""

from __future__ import annotations

from agent.core.maps import given_up
from agent.sync.actions import Action, Create, FollowUp, Update
from agent.sync.context import CycleContext, Setup
from agent.sync.writes import log_plan_notes, new_ticket, plan_writes


async def describe(sync: Setup, ctx: CycleContext, action: Action) -> None:
    """Add what ``action`` would write to the cycle's planned entries."""
    planned = ctx.stats.planned
    if isinstance(action, Create):
        body = await new_ticket(sync, ctx, action.incident)
        planned.append({"action": "create_snow", "incident": action.incident.id, "values": body})
        ctx.stats.created += 1
    elif isinstance(action, FollowUp):
        assert action.pair.ticket is not None
        planned.append(
            {"action": "follow_up_snow", "incident": action.name, "closed": action.pair.ticket.number}
        )
    elif isinstance(action, Update):
        pair = action.pair
        assert pair.incident is not None and pair.ticket is not None
        p = given_up(action.plan, pair.ticket) if action.give_up else action.plan
        log_plan_notes(p, ctx)
        values, changes, _base = plan_writes(
            sync, p, pair.incident, pair.ticket, pair.source_changed, pair.ticket_changed
        )
        number = pair.ticket.number
        if values:
            planned.append(
                {"action": "update_snow", "incident": action.name, "snow_number": number, "values": values}
            )
            ctx.stats.updated_snow += 1
        if changes:
            planned.append(
                {
                    "action": "update_sentinel",
                    "incident": action.name,
                    "snow_number": number,
                    "changes": changes,
                }
            )
            ctx.stats.updated_sentinel += 1
