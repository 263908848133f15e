"""The sections an ini file may hold, and who reads each: the loader itself knows none.

A remote system's connector and the state store contribute their own section (its keys and its
reader) by naming them here as ``module:attribute`` strings, imported only when a file is loaded
(bugwarrior's schema registry, uvicorn's lazy importer). A reader is called as
``read(section, name, loaded)``, where ``loaded`` holds the sections of the kinds read before it
(a workspace names its ``[oauth]`` app and ``[servicenow]`` instance); the loader reads the value
maps, ``[owners]`` and ``[assignment_groups]`` itself (:mod:`agent.config.maps`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.config.maps import MAP_SECTIONS

Loaded = Mapping[str, Mapping[str, Any]]
"""Kind -> section name -> what its reader returned, for the kinds read so far."""


@dataclass(frozen=True)
class SectionSchema:
    """One kind of section.

    ``bare`` is the name a section written without one gets (``[servicenow]`` is
    ``[servicenow:default]``); None when a name is required; ``named`` False when it takes none.
    ``reader`` and ``keys`` are ``module:attribute``; no ``keys``: any key (a map's rows).
    """

    kind: str
    reader: str = ""
    keys: str = ""
    named: bool = True
    bare: str | None = ""

    def read(self) -> Callable[..., Any]:
        """The reader, imported now."""
        reader: Callable[..., Any] = _attribute(self.reader)
        return reader

    def known(self) -> tuple[str, ...] | None:
        """The keys the section takes, or None for any."""
        return tuple(_attribute(self.keys)) if self.keys else None


SECTIONS: tuple[SectionSchema, ...] = (
    SectionSchema("agent", "agent.config.agent:read_agent", "agent.config.agent:AGENT_KEYS", named=False),
    SectionSchema(
        "oauth",
        "agent.connectors.entra_section:read_oauth",
        "agent.connectors.entra_section:OAUTH_KEYS",
        bare="default",
    ),
    SectionSchema(
        "servicenow",
        "agent.connectors.servicenow.section:read_servicenow",
        "agent.connectors.servicenow.section:SNOW_KEYS",
        bare="default",
    ),
    SectionSchema(
        "workspace",
        "agent.connectors.sentinel.section:read_workspace",
        "agent.connectors.sentinel.section:WORKSPACE_KEYS",
        bare=None,
    ),
    SectionSchema(
        "defender",
        "agent.connectors.graph.section:read_defender",
        "agent.connectors.graph.section:DEFENDER_KEYS",
        bare=None,
    ),
    SectionSchema("owners"),
    SectionSchema("assignment_groups"),
    *(SectionSchema(kind) for kind in MAP_SECTIONS),
)
"""Every kind, in the order the loader reads them."""

BY_KIND: Mapping[str, SectionSchema] = {schema.kind: schema for schema in SECTIONS}


def _attribute(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)
