"""Where a workspace's tickets go: assignment group, company and domain.

**Assignment groups.** ``[assignment_groups]`` (all workspaces) and
``[assignment_groups:WORKSPACE]`` map Sentinel facts to a ServiceNow ``assignment_group``::

    label:Phishing            = Service Desk       # the incident carries this label
    owner:alice@contoso.com   = SOC Tier 2         # its owner (UPN/e-mail, or a group's name)
    severity:High             = SOC Tier 2
    *                         = Security Operations

Specific rows are tried first, top to bottom, the workspace's section before the global one;
the first match wins. When none matches, the default is, in this order: the ``*`` row of the
workspace's section, the workspace's ``assignment_group`` key, the ``*`` row of
``[assignment_groups]``. Anything else (a custom rule) belongs in ``[agent] custom_mapping``,
which sees every create and update and may set ``assignment_group`` (a sys_id) itself.

The group is set on create, and again when a Sentinel change (label, owner, severity) routes
the incident elsewhere. An analyst who reassigns the ticket in ServiceNow is not overruled:
only a change of the *routing outcome* is written, never a drift of the ticket's group.

**Domain separation.** With ``sys_domain`` set on a workspace (a domain sys_id, or ``global``),
new tickets carry it, every incident query of that workspace (listing, unique-key look-ups,
fetches by sys_id) is limited to it, and group and company names are looked up in that domain
first, then in ``global`` (shared records), so two customers may both have a "Service Desk".
``company`` (a name or a sys_id) is set on new tickets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agent.config import Config, Defender, GroupRule, Workspace
from agent.connectors.servicenow.client import ServiceNowClient
from agent.connectors.servicenow.query import Q
from agent.core.records import Incident, Route
from agent.errors import PermanentError
from agent.log import log

EXTRA_GROUP = "assignment_group"
"""``Link.extra`` key: the group name routing chose last ("" when none applied)."""


def matches(rule: GroupRule, incident: Incident) -> bool:
    """Whether one ``[assignment_groups]`` row applies to the incident."""
    if rule.kind == "*":
        return True
    if rule.kind == "label":
        return rule.value in incident.labels
    if rule.kind == "severity":
        return rule.value == incident.values.get("severity")
    if rule.kind == "owner":
        return rule.value.lower() in incident.owner_names
    return False


def group_for(
    incident: Incident,
    workspace_rules: Sequence[GroupRule],
    rules: Sequence[GroupRule],
    workspace_default: str | None,
) -> str | None:
    """The assignment group name for ``incident`` (see the module docstring), or None."""
    for rule in (*workspace_rules, *rules):
        if rule.kind != "*" and matches(rule, incident):
            return rule.group
    for rule in workspace_rules:
        if rule.kind == "*":
            return rule.group
    if workspace_default:
        return workspace_default
    return next((rule.group for rule in rules if rule.kind == "*"), None)


def _is_sys_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


class Routing:
    """A workspace's routing and domain scope against its ServiceNow instance."""

    def __init__(self, config: Config, workspace: Workspace | Defender, snow: ServiceNowClient) -> None:
        self.ws = workspace
        self.instance = workspace.servicenow
        self.snow = snow
        self.rules = config.mappings.assignment_groups
        self.workspace_rules = config.mappings.assignment_groups_by_workspace.get(workspace.name, ())
        domain = workspace.sys_domain
        # Shared records (groups, companies) live in global; the workspace's own domain wins.
        self.domains: tuple[str, ...] = (domain, "global") if domain and domain != "global" else ()

    def scoped(self, query: Q) -> Q:
        """``query`` limited to the workspace's domain (unchanged without one)."""
        return query & Q.eq("sys_domain", self.ws.sys_domain) if self.ws.sys_domain else query

    def group_name(self, incident: Incident) -> str | None:
        """The assignment group name routing gives this incident, or None."""
        return group_for(incident, self.workspace_rules, self.rules, self.ws.assignment_group)

    async def sys_id(self, table: str, name: str) -> str | None:
        """A group's or company's sys_id by name (a sys_id passes through), in the domain."""
        if _is_sys_id(name):
            return name
        try:
            found = await self.snow.find_by_name(table, name, self.domains)
        except PermanentError as exc:
            # No read access to the table (an ACL): create the ticket without the field rather
            # than never; a transient error still fails the create, which is retried.
            log.warning(
                "snow_name_unknown", table=table, name=name, domains=list(self.domains), error=str(exc)[:300]
            )
            return None
        if found is None:
            log.warning("snow_name_unknown", table=table, name=name, domains=list(self.domains))
        return found

    async def create_values(self, incident: Incident) -> dict[str, str]:
        """The routing fields of a new ticket: assignment_group, company, sys_domain."""
        values: dict[str, str] = {}
        group = self.group_name(incident)
        if group:
            group_id = await self.sys_id("sys_user_group", group)
            if group_id:
                values["assignment_group"] = group_id
        if self.ws.company:
            company_id = await self.sys_id("core_company", self.ws.company)
            if company_id:
                values["company"] = company_id
        if self.ws.sys_domain:
            values["sys_domain"] = self.ws.sys_domain
        return values

    def link_extra(self, incident: Incident) -> dict[str, str]:
        """What a new link remembers about routing."""
        return {EXTRA_GROUP: self.group_name(incident) or ""}

    async def reroute(self, extra: Mapping[str, str], incident: Incident) -> Route | None:
        """After a change of the incident: the link's new extras and the PATCH that re-routes its
        ticket, empty when the routing outcome did not change.

        A link that never recorded a routing outcome (made before routing existed, or adopted)
        records the current one without writing; "no rule applies now" keeps the group; a group
        that cannot be found changes nothing (None: leave the link as it is).
        """
        name = self.group_name(incident) or ""
        known = extra.get(EXTRA_GROUP)
        new = dict(extra)
        if known is None or name == known or not name:
            new[EXTRA_GROUP] = name if known is None else known
            return Route(new, {})
        group_id = await self.sys_id("sys_user_group", name)
        if group_id is None:
            return None
        new[EXTRA_GROUP] = name
        return Route(new, {"assignment_group": group_id}, name, known or None)
