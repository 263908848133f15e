"""What ``check`` proves about a Defender tenant: the app's token, its permissions, one read.

Nothing is written. The read is one ``GET /security/incidents?$top=1``: a missing permission
answers 403 with the roles the API wanted and the roles the token has (GRAPH.md A.2), which the
result names. Whether the app may also *write* (update incidents, post comments: only
``SecurityIncident.ReadWrite.All``, A.2) shows in the token's ``roles`` claim, where an app-only
token lists its consented application permissions (A.1; a token without consent has no claim).
The claim is read for this diagnosis only, never trusted for anything else: when the token
cannot be read (Microsoft may make Graph tokens opaque) the result says it could not tell.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import orjson

from agent.connectors.graph.client import GraphClient
from agent.connectors.graph.cloud import missing_roles
from agent.errors import Forbidden

READ_ROLES = ("SecurityIncident.Read.All", "SecurityIncident.ReadWrite.All")
WRITE_ROLE = "SecurityIncident.ReadWrite.All"
CONSENT_HINT = (
    "in Entra ID, App registrations > the app > API permissions: add Microsoft Graph > Application "
    "permissions > {role}, then Grant admin consent (a Global or Privileged Role Administrator)"
)


@dataclass(frozen=True, slots=True)
class Permissions:
    """What the probe found. ``can_write`` is None when the token's roles could not be read."""

    can_read: bool
    can_write: bool | None
    granted: tuple[str, ...]
    problem: str = ""
    hint: str = ""


def token_roles(bearer: str) -> tuple[str, ...] | None:
    """The ``roles`` claim of a JWT access token (``()`` when it has none), None if unreadable."""
    token = bearer.removeprefix("Bearer ").strip()
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(claims, dict):
        return None
    roles = claims.get("roles", [])
    return tuple(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else None


async def probe(client: GraphClient) -> Permissions:
    """Read one incident page and look at the token's roles (see the module docstring)."""
    auth = client.http.auth
    roles = token_roles((await auth.header())["Authorization"]) if auth is not None else None
    try:
        await client.http.request(
            "GET", f"{client.base_url}/incidents", params={"$top": 1},
            headers={"Prefer": "include-unknown-enum-members"}, expected=(200,),
        )  # fmt: skip
    except Forbidden as exc:
        found = missing_roles(exc)
        granted = tuple(found[1]) if found else roles or ()
        needed = " or ".join(found[0]) if found else " or ".join(READ_ROLES)
        has = ", ".join(granted) or "no application permission"
        return Permissions(
            False,
            False,
            granted,
            f"the app may not read incidents: it needs {needed} and has {has}",
            CONSENT_HINT.format(role=WRITE_ROLE),
        )
    if roles is None:
        return Permissions(
            True, None, (), "the token's roles could not be read to tell whether the app may write"
        )
    if WRITE_ROLE not in roles:
        return Permissions(
            True,
            False,
            roles,
            f"the app may read but not update incidents or post comments: it needs {WRITE_ROLE} "
            f"and has {', '.join(roles) or 'no application permission'}",
            CONSENT_HINT.format(role=WRITE_ROLE),
        )
    return Permissions(True, True, roles)
