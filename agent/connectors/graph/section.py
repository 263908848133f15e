"""The ``[defender:NAME]`` section: a Defender XDR tenant's incidents through Microsoft Graph (this
connector's part of the config schema).

The Graph endpoint follows the ``[oauth:NAME]`` app's cloud (GRAPH.md A.3); China (21Vianet) has
no Graph incidents API, so a Defender source there is refused. ``workspaces`` names Sentinel
workspaces onboarded to this tenant's Defender portal: each must be configured (its links move
from it), on the same ServiceNow instance, and onboarded to one Defender source only.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.config.convert import (
    DOMAIN,
    boolean,
    did_you_mean,
    https_url,
    integer,
    label_list,
    pattern,
    plain,
)
from agent.config.model import Defender, OAuthApp, Workspace
from agent.config.schema import Loaded
from agent.config.section import Section
from agent.connectors.graph.cloud import GRAPH_CLOUDS

DEFENDER_KEYS = tuple(k for k in Defender.__dataclass_fields__ if k != "name")


def read_defender(sec: Section, name: str, loaded: Loaded) -> Defender:
    oauth: Mapping[str, OAuthApp] = loaded.get("oauth", {})
    servicenow, workspaces = loaded.get("servicenow", {}), loaded.get("workspace", {})
    defender = Defender(
        name=name,
        oauth=sec.get("oauth", plain, "default"),
        graph_url=_graph_url(sec, oauth),
        servicenow=sec.get("servicenow", plain, "default"),
        enabled=sec.get("enabled", boolean, True),
        incident_filter=sec.get("incident_filter", label_list, ()),
        max_age_days=sec.get("max_age_days", integer(1, 3650), 30),
        caller_id=sec.optional("caller_id", plain),
        assignment_group=sec.optional("assignment_group", plain),
        sys_domain=sec.optional("sys_domain", pattern(DOMAIN, "a domain sys_id (32 hex digits) or global")),
        company=sec.optional("company", plain),
        workspaces=sec.get("workspaces", label_list, ()),
    )
    for key, value, defined, kind in (
        ("oauth", defender.oauth, tuple(oauth), "oauth"),
        ("servicenow", defender.servicenow, tuple(servicenow), "servicenow"),
    ):
        if value not in defined:
            hint = did_you_mean(value, defined) or (f" (defined: {', '.join(defined)})" if defined else "")
            sec.problem(key, f"no [{kind}:{value}] section{hint}")
    if name in workspaces:
        sec.problem(None, f"{name!r} is the name of [workspace:{name}] too; give each source its own")
    _check_onboarded(sec, defender, workspaces)
    return defender


def _graph_url(sec: Section, oauth: Mapping[str, OAuthApp]) -> str:
    app = oauth.get(sec.get("oauth", plain, "default"))
    if app is not None and app.cloud == "china":
        sec.problem(
            "oauth",
            f"[oauth:{app.name}] is in cloud china (21Vianet), which has no Microsoft Graph security "
            "incidents API (Defender XDR incidents cannot be synced there); sync the Sentinel workspace",
        )
    default = GRAPH_CLOUDS[app.cloud if app is not None and app.cloud in GRAPH_CLOUDS else "public"].graph_url
    return sec.get("graph_url", https_url, default).rstrip("/")


def _check_onboarded(sec: Section, defender: Defender, workspaces: Mapping[str, Workspace]) -> None:
    for ws in defender.workspaces:
        if ws not in workspaces:
            known = f" (workspaces: {', '.join(workspaces)})" if workspaces else ""
            hint = did_you_mean(ws, workspaces) or known
            sec.problem(
                "workspaces",
                f"no [workspace:{ws}] section{hint}; keep the workspace configured while its incidents "
                "move to this source",
            )
        elif workspaces[ws].servicenow != defender.servicenow:
            sec.problem(
                "workspaces",
                f"[workspace:{ws}] syncs with [servicenow:{workspaces[ws].servicenow}], this source with "
                f"[servicenow:{defender.servicenow}]: their tickets cannot move",
            )
