"""The ``[workspace:NAME]`` section: a Sentinel workspace to sync (this connector's part of the
config schema)."""

from __future__ import annotations

from agent.config.convert import (
    DOMAIN,
    RESOURCE_GROUP,
    WORKSPACE_NAME,
    boolean,
    did_you_mean,
    guid,
    integer,
    label_list,
    pattern,
    plain,
)
from agent.config.model import Workspace
from agent.config.schema import Loaded
from agent.config.section import Section

WORKSPACE_KEYS = tuple(k for k in Workspace.__dataclass_fields__ if k != "name")


def read_workspace(sec: Section, name: str, loaded: Loaded) -> Workspace:
    oauth, servicenow = loaded.get("oauth", {}), loaded.get("servicenow", {})
    workspace = Workspace(
        name=name,
        subscription_id=sec.required("subscription_id", guid, ""),
        resource_group=sec.required("resource_group", pattern(RESOURCE_GROUP, "a resource group name"), ""),
        workspace_name=sec.required(
            "workspace_name", pattern(WORKSPACE_NAME, "a Log Analytics workspace name"), ""
        ),
        oauth=sec.get("oauth", plain, "default"),
        servicenow=sec.get("servicenow", plain, "default"),
        enabled=sec.get("enabled", boolean, True),
        incident_filter=sec.get("incident_filter", label_list, ()),
        max_age_days=sec.get("max_age_days", integer(1, 3650), 30),
        caller_id=sec.optional("caller_id", plain),
        assignment_group=sec.optional("assignment_group", plain),
        sys_domain=sec.optional("sys_domain", pattern(DOMAIN, "a domain sys_id (32 hex digits) or global")),
        company=sec.optional("company", plain),
    )
    for key, value, defined, kind in (
        ("oauth", workspace.oauth, tuple(oauth), "oauth"),
        ("servicenow", workspace.servicenow, tuple(servicenow), "servicenow"),
    ):
        if value not in defined:
            hint = did_you_mean(value, defined) or (f" (defined: {', '.join(defined)})" if defined else "")
            sec.problem(key, f"no [{kind}:{value}] section{hint}")
    return workspace
