"""Owners both ways: the ticket system's user of each source owner seen in a cycle, and the
source owner of each ticket user (resolved per cycle; the connector caches its look-ups)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.core.records import Incident, Ticket
from agent.log import log
from agent.ports import TicketSink
from agent.tasks import limited


@dataclass
class Owners:
    """One cycle's owner tables: source owner key -> ticket user, ticket user -> source owner key."""

    to_snow: dict[str, str] = field(default_factory=dict)
    to_sentinel: dict[str, str] = field(default_factory=dict)

    async def resolve(
        self, sink: TicketSink, incidents: Sequence[Incident], tickets: Sequence[Ticket]
    ) -> None:
        """Look up every owner not resolved yet, several at once; one that cannot be found is a
        warning."""
        spelled = {i.owner: i.owner_spelled for i in incidents}
        keys = sorted(set(spelled) - {""} - self.to_snow.keys())
        users = sorted({t.values.get("owner", "") for t in tickets} - {""} - self.to_sentinel.keys())
        answers: list[str | None] = await limited(
            [*(sink.user_for(key, spelled[key]) for key in keys), *(sink.owner_of(user) for user in users)]
        )
        found, owners = answers[: len(keys)], answers[len(keys) :]
        for key, user in zip(keys, found, strict=True):
            if user is not None:
                self.to_snow[key] = user
            else:
                log.warning("owner_unknown_in_servicenow", upn=key)
        for user, owner in zip(users, owners, strict=True):
            if owner:
                self.to_sentinel[user] = owner
            else:
                log.warning("owner_unknown_in_sentinel", sys_id=user)

    def ticket_user(self, incident: Incident) -> str:
        """The ticket user of the incident's owner ("" for none or unknown)."""
        return self.to_snow.get(incident.owner, "") if incident.owner else ""
