"""Microsoft Graph clouds, the app-only token and the request pacing of the security API.

* **Clouds** (A.3): public, usgov (GCC High) and dod; China has no incidents API, so it is a
  configuration error.
* **Auth** (A.1): an msal client-credentials token for ``<graph_url>/.default``, per cloud.
* **Pacing** (G): 150 requests a minute per app per tenant, one shared
  :class:`~agent.connectors.pacing.RequestPacer` per (tenant, app); :func:`missing_roles` reads the
  permission names out of a 403 (A.2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.connectors.entra import EntraAuth
from agent.connectors.pacing import RequestPacer
from agent.errors import ConfigError, Forbidden

RATE_PER_MINUTE = 150  # G: per app per tenant, every /security call
_ROLES = re.compile(r"API required roles: (?P<required>[^ ]*), application roles: (?P<granted>[^ ]*?)\.?$")


@dataclass(frozen=True, slots=True)
class GraphCloud:
    """One cloud's Graph endpoint (also the token audience), login host and portal (A.3)."""

    name: str
    graph_url: str
    authority_host: str
    portal_host: str


GRAPH_CLOUDS: Mapping[str, GraphCloud] = {
    "public": GraphCloud(
        "public", "https://graph.microsoft.com", "https://login.microsoftonline.com", "security.microsoft.com"
    ),
    # US Government L4 (GCC High); Microsoft 365 GCC stays on the public endpoints.
    "usgov": GraphCloud(
        "usgov", "https://graph.microsoft.us", "https://login.microsoftonline.us", "security.microsoft.us"
    ),
    # US Government L5 (DoD).
    "dod": GraphCloud(
        "dod", "https://dod-graph.microsoft.us", "https://login.microsoftonline.us", "security.apps.mil"
    ),
}


def graph_cloud(name: str, *, where: str = "[oauth] cloud") -> GraphCloud:
    """The endpoints of cloud ``name``; :class:`ConfigError` for China (no incidents API, A.3)
    and for unknown names. ``where`` names the ini key in the message."""
    if name == "china":
        raise ConfigError(
            [
                f"{where}: china (21Vianet) has no Microsoft Graph security incidents API, so Defender "
                "XDR incidents cannot be synced there; sync the Sentinel workspace instead"
            ]
        )
    cloud = GRAPH_CLOUDS.get(name)
    if cloud is None:
        raise ConfigError([f"{where}: unknown cloud {name!r} (one of {', '.join(GRAPH_CLOUDS)})"])
    return cloud


def graph_scope(graph_url: str) -> str:
    """``<graph_url>/.default``: the app-only scope of every application permission (A.1)."""
    return graph_url.rstrip("/") + "/.default"


def graph_auth(
    *,
    tenant_id: str,
    client_id: str,
    cloud: str = "public",
    client_secret: str | None = None,
    certificate_file: str | Path | None = None,
    graph_url: str | None = None,
    authority_host: str | None = None,
    scope: str | None = None,
    ca_bundle: str | Path | None = None,
) -> EntraAuth:
    """Entra client credentials (msal) for Microsoft Graph in ``cloud``.

    ``graph_url``/``authority_host`` override the cloud's hosts; the scope is
    ``<graph_url>/.default`` unless given. An ARM token is not a Graph token (A.1): an app that
    talks to both holds two of these.
    """
    endpoints = graph_cloud(cloud)
    return EntraAuth(
        tenant_id=tenant_id,
        client_id=client_id,
        client_secret=client_secret,
        certificate_file=certificate_file,
        authority_host=authority_host or endpoints.authority_host,
        scope=scope or graph_scope(graph_url or endpoints.graph_url),
        ca_bundle=ca_bundle,
    )


_PACERS: dict[tuple[str, str], RequestPacer] = {}
# Seconds added to Graph's one-minute window: network jitter between our send and Graph's count.
PACE_MARGIN = 0.5


def graph_pacer(tenant_id: str, client_id: str, per_minute: int = RATE_PER_MINUTE) -> RequestPacer:
    """The one pacer of an app in a tenant: Graph counts ``/security`` calls per app per tenant
    (G), so every client of that pair must share it."""
    key = (tenant_id.lower(), client_id.lower())
    pacer = _PACERS.get(key)
    if pacer is None or pacer.limit != per_minute:
        pacer = _PACERS[key] = RequestPacer(per_minute, 60.0, margin=PACE_MARGIN)
    return pacer


def missing_roles(error: Forbidden) -> tuple[list[str], list[str]] | None:
    """(roles the API requires, roles the token has) from Graph's 403 text (A.2), else None."""
    found = _ROLES.search(error.detail or "")
    if found is None:
        return None
    return (
        [r for r in found.group("required").split(",") if r],
        [r for r in found.group("granted").split(",") if r],
    )
