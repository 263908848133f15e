"""The configuration as the agent uses it: frozen dataclasses, the Sentinel vocabulary and the
default value maps (:mod:`agent.config.loader` fills them from the ini file)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.connectors.servicenow.profiles import ITSM, TableProfile
from agent.log import register_secret
from agent.store import StoreTarget

# --- Sentinel vocabulary (REFERENCE A.4) ------------------------------------------------------

SEVERITIES = ("High", "Medium", "Low", "Informational")
STATUSES = ("New", "Active", "Closed")
CLASSIFICATIONS = ("Undetermined", "TruePositive", "BenignPositive", "FalsePositive")
CLASSIFICATION_REASONS = (
    "SuspiciousActivity",
    "SuspiciousButExpected",
    "IncorrectAlertLogic",
    "InaccurateData",
)
# The pairs Sentinel's UI offers; a determined classification without a reason is rejected
# with 400, and other pairs are unverified, so only these are accepted (REFERENCE A.6).
SENTINEL_CLOSURE_PAIRS: frozenset[tuple[str, str | None]] = frozenset(
    {
        ("TruePositive", "SuspiciousActivity"),
        ("BenignPositive", "SuspiciousButExpected"),
        ("FalsePositive", "IncorrectAlertLogic"),
        ("FalsePositive", "InaccurateData"),
        ("Undetermined", None),
    }
)

# --- Default maps (used when the section is absent) ------------------------------------------

# The maps of an ITSM ``incident`` table (agent.connectors.servicenow.profiles has those of every profile).
DEFAULT_SEVERITY_TO_SERVICENOW = dict(ITSM.severity_to_servicenow)
DEFAULT_SEVERITY_TO_SENTINEL = dict(ITSM.severity_to_sentinel)
DEFAULT_STATUS_TO_SERVICENOW = dict(ITSM.status_to_servicenow)
DEFAULT_STATUS_TO_SENTINEL = dict(ITSM.status_to_sentinel)
DEFAULT_CLOSURE_TO_SERVICENOW = dict(ITSM.closure_to_servicenow)
DEFAULT_CLOSURE_TO_SENTINEL: dict[str, tuple[str, str | None]] = dict(ITSM.closure_to_sentinel)
CLOSURE_FALLBACK: tuple[str, str | None] = ("Undetermined", None)
"""Where a close code without a row lands when ``[closure_to_sentinel]`` has no ``*`` row."""


@dataclass(frozen=True)
class Cloud:
    """Endpoints of one Azure cloud (REFERENCE A.12)."""

    authority_host: str
    management_url: str
    portal_host: str


CLOUDS: Mapping[str, Cloud] = {
    "public": Cloud("https://login.microsoftonline.com", "https://management.azure.com", "portal.azure.com"),
    "usgov": Cloud(
        "https://login.microsoftonline.us", "https://management.usgovcloudapi.net", "portal.azure.us"
    ),
    "china": Cloud(
        "https://login.chinacloudapi.cn", "https://management.chinacloudapi.cn", "portal.azure.cn"
    ),
}


# --- Public records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    """A secret value that prints as ``***``; :meth:`reveal` returns it.

    The value is registered with the log redactor on creation, so even an accidental leak into a
    log line is masked.
    """

    _value: str = field(repr=False)

    def __post_init__(self) -> None:
        register_secret(self._value)

    def reveal(self) -> str:
        """The secret itself, for the one place that must send it."""
        register_secret(self._value)
        return self._value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__


@dataclass(frozen=True)
class AgentSettings:
    """``[agent]``: process-wide settings. Durations are seconds.

    ``state`` names the state store (``state_db`` is its SQLite path, or the default path when
    the state is elsewhere); ``failover_timeout`` applies to a shared PostgreSQL state.
    """

    state_db: Path
    poll_interval: float
    max_concurrency: int
    page_size: int
    log_level: str
    log_format: str
    ca_bundle: Path | None
    conflict_policy: str
    metrics_listen: tuple[str, int] | None
    dry_run: bool
    custom_mapping: str | None
    overlap: float
    sweep_interval: float
    open_check_interval: float
    max_close_ratio: float
    comment_field: str
    comment_format: str
    writeback_label: bool
    enrichment_delay: float
    failover_timeout: float = 30.0
    store: StoreTarget | None = None  # set for a state other than a SQLite file

    @property
    def state(self) -> StoreTarget:
        """The state store to open: ``store``, or the SQLite file ``state_db``."""
        return self.store or StoreTarget("sqlite", str(self.state_db))


@dataclass(frozen=True)
class OAuthApp:
    """``[oauth:NAME]``: an Entra app registration used to call ARM (Sentinel)."""

    name: str
    tenant_id: str
    client_id: str
    client_secret: Secret | None
    certificate_file: Path | None
    cloud: str
    authority_host: str
    management_url: str
    api_version: str
    portal_host: str

    @property
    def scope(self) -> str:
        """The ARM token scope, ``<management_url>/.default`` (REFERENCE A.12)."""
        return f"{self.management_url}/.default"

    @property
    def authority(self) -> str:
        """The MSAL authority, ``<authority_host>/<tenant_id>``."""
        return f"{self.authority_host}/{self.tenant_id}"


@dataclass(frozen=True)
class ServiceNowInstance:
    """``[servicenow]`` / ``[servicenow:NAME]``: one ServiceNow instance and how to write to it."""

    name: str
    instance_url: str
    auth: str
    username: str | None
    password: Secret | None
    client_id: str | None
    client_secret: Secret | None
    incident_table: str
    unique_key: str
    severity_field: str
    status_field: str
    caller_id: str | None
    profile: TableProfile = ITSM
    reopen_closed: str = "follow_up"  # follow_up | note (REFERENCE E.9)


@dataclass(frozen=True)
class Workspace:
    """``[workspace:NAME]``: one Sentinel workspace. ``enabled=False`` freezes it entirely.

    ``incident_filter``: the label names an incident must carry one of (empty: every incident).
    """

    name: str
    subscription_id: str
    resource_group: str
    workspace_name: str
    oauth: str
    servicenow: str
    enabled: bool
    incident_filter: tuple[str, ...]
    max_age_days: int
    caller_id: str | None
    assignment_group: str | None
    sys_domain: str | None
    company: str | None


@dataclass(frozen=True)
class Defender:
    """``[defender:NAME]``: the Defender XDR incidents of one Entra tenant, read and written through
    Microsoft Graph with the app ``oauth`` (GRAPH.md). ``enabled=False`` freezes it entirely.

    ``incident_filter``: the custom tags an incident must carry one of (case-sensitive; empty:
    every incident). ``graph_url``: the Graph endpoint of the app's cloud unless set (GRAPH.md
    A.3). The routing keys (``caller_id``, ``assignment_group``, ``sys_domain``, ``company``) are
    a workspace's. ``workspaces``: Sentinel workspaces onboarded to this tenant's Defender portal;
    their Defender XDR incidents are synced here, their links moved from the workspace (H.1, H.2).
    """

    name: str
    oauth: str
    graph_url: str
    servicenow: str
    enabled: bool
    incident_filter: tuple[str, ...]
    max_age_days: int
    caller_id: str | None
    assignment_group: str | None
    sys_domain: str | None
    company: str | None
    workspaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupRule:
    """One ``[assignment_groups]`` row: incidents matching ``kind:value`` go to ``group``.

    ``kind`` is ``label`` (a label name, case-sensitive), ``owner`` (the owner's UPN or e-mail,
    or for a group owner its name; case-insensitive), ``severity`` or ``*`` (every incident).
    """

    kind: str
    value: str
    group: str


@dataclass(frozen=True)
class InstanceMaps:
    """The value maps one ServiceNow instance uses, complete and validated.

    Each map is the instance's own section (``[status_to_servicenow:NAME]``), else the shared one
    (``[status_to_servicenow]``), else the default of the instance's table profile
    (:mod:`agent.connectors.servicenow.profiles`); ``sources`` names, per map, the section it came
    from ("" for the profile's default). ``closure_to_sentinel`` maps a close code to
    ``(classification, reason)``; its ``"*"`` row applies to every other code (``Undetermined``
    unless the user wrote one), and ``closure_catch_all_written`` says whether the user wrote one:
    when not, a code that falls to it is worth telling (``check`` warns, the runtime logs
    ``value_unmapped`` once per code).
    """

    severity_to_servicenow: dict[str, str]
    severity_to_sentinel: dict[str, str]
    status_to_servicenow: dict[str, str]
    status_to_sentinel: dict[str, str]
    closure_to_servicenow: dict[str, str]
    closure_to_sentinel: dict[str, tuple[str, str | None]]
    closure_catch_all_written: bool = False
    sources: Mapping[str, str] = field(default_factory=dict)
    closure_to_defender: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Close code -> ``(classification, determination)`` in Graph terms (``[closure_to_defender]``,
    optional: without a row, the Sentinel row goes through GRAPH.md H.4)."""

    def closure_for_sentinel(self, close_code: str) -> tuple[str, str | None]:
        """``(classification, reason)`` for a ServiceNow close code, falling back to the ``*`` row."""
        return self.closure_to_sentinel.get(close_code, self.closure_to_sentinel.get("*", CLOSURE_FALLBACK))

    def closure_falls_back(self, close_code: str) -> bool:
        """Whether ``close_code`` lands on the ``*`` row without the user having written one."""
        return not self.closure_catch_all_written and close_code not in self.closure_to_sentinel


@dataclass(frozen=True)
class Mappings:
    """The value maps between the two systems, complete and validated, and the owner and
    assignment-group rows.

    The six maps here are those of an ITSM ``incident`` table with the shared sections applied;
    what an instance really uses is :meth:`for_instance` (its table profile and its own sections).
    ``owners`` maps ServiceNow user_name to Entra UPN; ``owners_by_workspace`` holds the
    per-workspace overrides.
    """

    severity_to_servicenow: dict[str, str]
    severity_to_sentinel: dict[str, str]
    status_to_servicenow: dict[str, str]
    status_to_sentinel: dict[str, str]
    closure_to_servicenow: dict[str, str]
    closure_to_sentinel: dict[str, tuple[str, str | None]]
    owners: dict[str, str]
    owners_by_workspace: dict[str, dict[str, str]]
    assignment_groups: tuple[GroupRule, ...] = ()
    assignment_groups_by_workspace: dict[str, tuple[GroupRule, ...]] = field(default_factory=dict)
    closure_catch_all_written: bool = False
    instances: dict[str, InstanceMaps] = field(default_factory=dict)

    def for_instance(self, instance: str) -> InstanceMaps:
        """The maps the ServiceNow instance ``instance`` uses."""
        return self.instances[instance]

    def owners_for(self, workspace: str) -> dict[str, str]:
        """ServiceNow user_name -> UPN for ``workspace``, its ``[owners:WORKSPACE]`` rows winning."""
        return {**self.owners, **self.owners_by_workspace.get(workspace, {})}

    def users_for(self, workspace: str) -> dict[str, str]:
        """Lower-cased UPN -> ServiceNow user_name for ``workspace`` (the reverse of :meth:`owners_for`)."""
        return {upn.lower(): user for user, upn in self.owners_for(workspace).items()}

    def closure_for_sentinel(self, close_code: str) -> tuple[str, str | None]:
        """``(classification, reason)`` for a ServiceNow close code, falling back to the ``*`` row."""
        return self.closure_to_sentinel.get(close_code, self.closure_to_sentinel["*"])

    def closure_falls_back(self, close_code: str) -> bool:
        """Whether ``close_code`` lands on the ``*`` row without the user having written one."""
        return not self.closure_catch_all_written and close_code not in self.closure_to_sentinel


@dataclass(frozen=True)
class Config:
    """The whole validated configuration. ``warnings`` are worth logging but do not stop the agent."""

    path: Path
    agent: AgentSettings
    oauth: dict[str, OAuthApp]
    servicenow: dict[str, ServiceNowInstance]
    workspaces: dict[str, Workspace]
    mappings: Mappings
    warnings: tuple[str, ...]
    defenders: dict[str, Defender] = field(default_factory=dict)

    @property
    def sources(self) -> dict[str, Workspace | Defender]:
        """Every incident source by name: the workspaces, then the Defender sources (names are
        unique across both)."""
        return {**self.workspaces, **self.defenders}

    def oauth_for(self, workspace: str) -> OAuthApp:
        """The Entra app a workspace (or Defender source) uses."""
        return self.oauth[self.sources[workspace].oauth]

    def servicenow_for(self, workspace: str) -> ServiceNowInstance:
        """The ServiceNow instance a workspace (or Defender source) syncs with."""
        return self.servicenow[self.sources[workspace].servicenow]
