"""Writing a Defender incident without an ETag (GRAPH.md D.4): re-read, compare, PATCH, verify.

Graph has no ETag, no ``If-Match`` and no 409: the last writer wins per property. So that the
agent never overwrites a person or Defender with a value planned from an older read,
:func:`write_guarded` does what an etag does elsewhere:

1. **re-read** the incident just before writing;
2. if any synced property (severity, status, classification, determination, owner, tags,
   resolving comment) differs from the incident the plan was made from, raise
   :class:`~agent.errors.EditConflict`: the caller plans again from the fresh read under its
   conflict policy, as after a 409. Changes elsewhere (alerts, the name Defender generates,
   comments) move ``lastUpdateDateTime`` too but conflict with nothing the agent writes;
3. **PATCH** only the properties whose value differs from the re-read (D.2; an empty PATCH is
   never sent: it still moves ``lastUpdateDateTime``), ``customTags`` merged into the current list
   (a PATCH replaces the list, D.2);
4. **verify** the answer (200 with the full incident): when a synced property the agent did not
   write changed between the re-read and the PATCH, ``clean`` is False, and the caller keeps the
   version it knew so the next cycle reads that change instead of taking it as seen.

A ``redirected`` incident (merged into another, H.3) takes no writes at all: its survivor carries
the work on, and setting a status on it is what makes incidents unopenable (D.3).

The answer's ``lastModifiedBy`` is ``API-App:<app display name>`` (B.5): the agent learns its own
name from it (:attr:`Written.app_name`) to recognise its own writes later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.connectors.graph.client import GraphClient
from agent.connectors.graph.comments import app_name_of
from agent.connectors.graph.models import SYSTEM, GraphIncident, changed_fields, merged_tags
from agent.errors import EditConflict

SYNCED = (
    "severity", "status", "classification", "determination", "assignedTo", "customTags",
    "resolvingComment",
)  # fmt: skip
"""The properties the sync reads or writes: a change to one of them since the plan's read is a
conflict."""


@dataclass(frozen=True, slots=True)
class Written:
    """The outcome of :func:`write_guarded`.

    ``incident`` is the incident as saved (or as re-read when nothing was left to write);
    ``sent`` the properties PATCHed; ``clean`` False when someone else changed a synced property
    while the PATCH was under way; ``dropped`` the properties not written because the incident
    was merged away.
    """

    incident: GraphIncident
    sent: Mapping[str, Any]
    clean: bool = True
    dropped: tuple[str, ...] = ()

    @property
    def app_name(self) -> str | None:
        """The agent's own display name, as Graph showed it on this write (None: no write)."""
        return app_name_of(self.incident.last_modified_by) if self.sent else None


def synced_value(incident: GraphIncident, key: str) -> Any:
    """A synced property as compared: an empty owner is no owner, tags are a list."""
    value = incident.raw.get(key)
    if key == "assignedTo":
        return value or None
    if key == "customTags":
        return list(value or [])
    return value


def moved(before: GraphIncident, after: GraphIncident, keys: Iterable[str] = SYNCED) -> list[str]:
    """The synced properties whose value differs between two reads of one incident."""
    return [k for k in keys if synced_value(before, k) != synced_value(after, k)]


async def write_guarded(
    client: GraphClient,
    read: GraphIncident,
    changes: Mapping[str, Any],
    *,
    add_tags: Iterable[str] = (),
) -> Written:
    """PATCH ``changes`` (Graph property names) onto the incident the plan read as ``read``,
    plus ``add_tags`` merged into its tags; :class:`EditConflict` when a synced property moved
    since ``read``."""
    now = await client.get_incident(read.id)
    drift = moved(read, now)
    if drift:
        raise EditConflict(
            SYSTEM, "PATCH", f"incident {read.id}", None, "ChangedSinceRead",
            f"{', '.join(drift)} changed in Microsoft Defender XDR since it was read (no ETag, D.4)",
        )  # fmt: skip
    desired = dict(changes)
    if now.redirected:
        return Written(now, {}, dropped=tuple(sorted({*desired, *(["customTags"] if add_tags else [])})))
    tags = list(add_tags)
    if tags:
        desired["customTags"] = merged_tags(now.custom_tags, add=tags)
    body = changed_fields(now, desired)
    if not body:
        return Written(now, {})
    saved = await client.update_incident(read.id, body)
    expected = {k: body[k] if k in body else synced_value(now, k) for k in SYNCED}
    if "assignedTo" in body:
        expected["assignedTo"] = body["assignedTo"] or None
    clean = all(synced_value(saved, k) == v for k, v in expected.items())
    return Written(saved, body, clean=clean)
