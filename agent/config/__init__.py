"""Load the agent's ini file into frozen dataclasses, reporting every problem at once.

Every key has one typed converter (duration, bounded int, bool, choice, path, https URL,
host:port, module:function, ratio, GUID). Unknown sections and keys are rejected with a
"did you mean" hint. Problems are collected, never raised one by one, and end in a single
:class:`agent.errors.ConfigError` whose lines read ``[section] key: message`` (or
``[section]: message`` for a whole section, or ``<file>: message`` when the file itself cannot
be read or parsed).

Sections::

    [agent]                       process-wide settings (AgentSettings)
    [oauth:NAME]                  an Entra app used for the Sentinel (ARM) API; [oauth] = [oauth:default]
    [servicenow] / [servicenow:NAME]   a ServiceNow instance; [servicenow] = [servicenow:default]
    [workspace:NAME]              a Sentinel workspace to sync
    [defender:NAME]               a Defender XDR tenant's incidents through Microsoft Graph
                                  (at least one workspace or Defender section)
    [severity_to_servicenow] [severity_to_sentinel] [status_to_servicenow] [status_to_sentinel]
    [closure_to_servicenow] [closure_to_sentinel]   value maps; a present section replaces the
                                  default of the instance's table profile; [KIND:INSTANCE] applies
                                  to one ServiceNow instance and wins there
    [closure_to_defender]         close code = classification/determination (Graph terms), optional
    [owners] / [owners:WORKSPACE] ServiceNow user_name = Entra UPN (WORKSPACE: also a Defender name)
    [assignment_groups] / [assignment_groups:WORKSPACE]   label:/owner:/severity:/* = group name

The package: :mod:`.model` (the dataclasses), :mod:`.convert` (converters), :mod:`.section`
(reading one section), :mod:`.schema` (the registry of sections: each connector and the store
contribute their own), :mod:`.maps` (the map sections), :mod:`.loader` (:func:`load_config`).

Secrets (``client_secret``, ``password``) come from exactly one of ``<name>_env`` (an environment
variable), ``<name>_file`` (a file, relative to the ini's folder) or ``<name>`` (the value).
They are held in :class:`Secret` and registered for log redaction as soon as they are read.
"""

from __future__ import annotations

from agent.config.loader import load_config
from agent.config.model import (
    CLASSIFICATION_REASONS,
    CLASSIFICATIONS,
    CLOSURE_FALLBACK,
    CLOUDS,
    DEFAULT_CLOSURE_TO_SENTINEL,
    DEFAULT_CLOSURE_TO_SERVICENOW,
    DEFAULT_SEVERITY_TO_SENTINEL,
    DEFAULT_SEVERITY_TO_SERVICENOW,
    DEFAULT_STATUS_TO_SENTINEL,
    DEFAULT_STATUS_TO_SERVICENOW,
    SENTINEL_CLOSURE_PAIRS,
    SEVERITIES,
    STATUSES,
    AgentSettings,
    Cloud,
    Config,
    Defender,
    GroupRule,
    InstanceMaps,
    Mappings,
    OAuthApp,
    Secret,
    ServiceNowInstance,
    Workspace,
)

__all__ = [
    "CLASSIFICATIONS",
    "CLASSIFICATION_REASONS",
    "CLOSURE_FALLBACK",
    "CLOUDS",
    "DEFAULT_CLOSURE_TO_SENTINEL",
    "DEFAULT_CLOSURE_TO_SERVICENOW",
    "DEFAULT_SEVERITY_TO_SENTINEL",
    "DEFAULT_SEVERITY_TO_SERVICENOW",
    "DEFAULT_STATUS_TO_SENTINEL",
    "DEFAULT_STATUS_TO_SERVICENOW",
    "SENTINEL_CLOSURE_PAIRS",
    "SEVERITIES",
    "STATUSES",
    "AgentSettings",
    "Cloud",
    "Config",
    "Defender",
    "GroupRule",
    "InstanceMaps",
    "Mappings",
    "OAuthApp",
    "Secret",
    "ServiceNowInstance",
    "Workspace",
    "load_config",
]
