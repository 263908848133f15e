"""``check``: everything the agent needs, probed one line at a time, before the first sync.

Every probe is harmless: it reads, or it makes a write the remote refuses or ignores by
construction. Nothing is created, changed or deleted anywhere.

* Entra ID: each ``[oauth:NAME]`` app gets a token; a wrong or expired secret is named with
  its AADSTS code (REFERENCE B.1).
* Sentinel, per enabled workspace: the incident list is readable; Responder rights are shown
  by a full-object PUT of an existing incident, with its current values but a deliberately
  stale etag. ARM checks the role before the resource provider sees the body, so a Reader
  gets 403 ``AuthorizationFailed``, while a Responder reaches the provider and gets 409
  ``Conflict`` (REFERENCE A.5, A.10) - and nothing is saved either way.
* Microsoft Graph, per enabled ``[defender:NAME]``: the app's Graph token, one incident read,
  and whether the app may write (:mod:`agent.connectors.graph.probe`): a missing permission is
  named from Graph's 403 (GRAPH.md A.2) or from the token's roles, with how to consent.
* ServiceNow, per instance: the incident table is readable; it is writable, shown by a PATCH of
  one of the agent's own records that sets ``correlation_display`` to the value it already
  has - the write ACL is evaluated, and the platform skips an update that changes nothing
  (REFERENCE C.9), so ``sys_mod_count`` stays put (checked). Without such a record yet, a PATCH
  of a sys_id that cannot exist: 403 is a table-level ACL refusal, 404 proves nothing (skip).
  ``sys_journal_field`` is readable: a missing read ACL does not fail, it silently returns no
  rows, so the journal of a record whose work notes are visible on the record itself is read
  and must not come back empty; when it does, the fallback the agent uses then (the records'
  display values, REFERENCE E.6) is tried and the line says which way journals are read.
  ``caller_id`` and ``assignment_group`` exist; the values the
  maps write are active ``sys_choice`` values, and every active choice of the severity and
  status fields has a row in the map back to Sentinel; every ``[owners]`` user exists.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.app.check_servicenow import ServiceNowChecks
from agent.app.probes import FAIL, OK, SKIP, WARN, Item
from agent.app.runtime import Runtime
from agent.config import Config
from agent.connectors.graph.probe import WRITE_ROLE, probe
from agent.connectors.sentinel.client import SentinelClient
from agent.connectors.sentinel.models import build_put_body
from agent.errors import AuthError, ConfigError, Forbidden, RemoteError, StoreError, TransientError

__all__ = ["FAIL", "OK", "SKIP", "WARN", "Checklist", "Item"]

STALE_ETAG = '"00000000-0000-0000-0000-000000000000"'

ENTRA_HINTS: Mapping[str, str] = {
    "AADSTS7000215": "the client secret is wrong: paste the secret's Value (not its Secret ID) into "
    "client_secret_file / client_secret_env",
    "AADSTS7000222": "the client secret has expired: create a new one under App registrations > "
    "Certificates & secrets and replace the old value",
    "AADSTS700016": "no such application in this tenant: check client_id and tenant_id (and cloud)",
    "AADSTS90002": "no such tenant: check tenant_id, and cloud = usgov / china for a sovereign cloud",
    "AADSTS700027": "the certificate is not the one uploaded to the app registration",
    "TLSVerifyFailed": "TLS verification failed: put the proxy's or issuer's CA into [agent] ca_bundle",
}


class Checklist(ServiceNowChecks):
    """Runs every probe against the remotes of a :class:`Runtime` and collects :class:`Item`."""

    def __init__(self, config: Config, rt: Runtime) -> None:
        super().__init__(config, rt)
        self._tokens: dict[str, bool] = {}

    async def run(self) -> list[Item]:
        """Every probe, in the order a SOC engineer would set things up."""
        self._config()
        await self._state()
        for name in self.config.oauth:
            await self._token(name)
        for name, ws in self.config.workspaces.items():
            if not ws.enabled:
                self.add(SKIP, f"[workspace:{name}]", "enabled = false: not probed")
                continue
            await self._workspace(name)
        for name, defender in self.config.defenders.items():
            if not defender.enabled:
                self.add(SKIP, f"[defender:{name}]", "enabled = false: not probed")
                continue
            await self._defender(name)
        for name, inst in self.config.servicenow.items():
            await self._servicenow(name, inst)
        return self.items

    # -- config and state --

    def _config(self) -> None:
        c = self.config
        enabled = sum(1 for w in c.workspaces.values() if w.enabled)
        defenders = ""
        if c.defenders:
            on = sum(1 for d in c.defenders.values() if d.enabled)
            defenders = f"{on} of {len(c.defenders)} Defender sources enabled, "
        self.add(
            OK,
            "config",
            f"{c.path} is valid: {enabled} of {len(c.workspaces)} workspaces enabled, {defenders}"
            f"{len(c.servicenow)} ServiceNow instance(s), {len(c.oauth)} Entra app(s)",
        )
        for warning in c.warnings:
            self.add(WARN, "config", warning)

    async def _state(self) -> None:
        subject = "[agent] state_db" if self.config.agent.store is None else "[agent] state"
        try:
            await self.rt.open_state()
        except (StoreError, ConfigError) as exc:
            hint = (
                "the database must be reachable from this host and its role able to log in"
                " (README: High availability)"
                if self.config.agent.store is not None
                else "the folder must exist and be writable by the agent's user"
            )
            self.add(FAIL, subject, (str(exc).strip().splitlines() or [type(exc).__name__])[0], hint)
            return
        shadow = self.rt.shadow
        assert shadow is not None
        links = 0
        for name, ws in self.config.sources.items():
            links += (await shadow.count_links(ws.servicenow, name))[0]
        version = await shadow.schema_version()
        where = str(self.config.agent.state_db) if self.config.agent.store is None else shadow.location
        self.add(OK, subject, f"{where} opened (schema v{version}, {links} links)")

    # -- Entra ID and Sentinel --

    async def _token(self, name: str) -> None:
        subject = f"[oauth:{name}]"
        app = self.config.oauth[name]
        try:
            await self.rt.entra[name].header()
        except AuthError as exc:
            self._tokens[name] = False
            code = exc.code or ""
            self.add(FAIL, subject, f"no token: {exc}", ENTRA_HINTS.get(code, _entra_hint(code)))
            return
        except TransientError as exc:
            self._tokens[name] = False
            self.add(FAIL, subject, f"Entra ID unreachable: {exc}", "check the network path or HTTPS_PROXY")
            return
        self._tokens[name] = True
        self.add(OK, subject, f"token obtained for {app.client_id} from {app.authority_host}")

    async def _workspace(self, name: str) -> None:
        ws = self.config.workspaces[name]
        subject = f"[workspace:{name}]"
        if not self._tokens.get(ws.oauth, False):
            self.add(SKIP, subject, f"not probed: [oauth:{ws.oauth}] has no token")
            return
        client = self.rt.sentinel_client(name)
        try:
            first = None
            async for incident in client.list_incidents(page_size=1):
                first = incident
                break
        except RemoteError as exc:
            self.add(FAIL, subject, f"Sentinel incidents not readable: {exc}", _sentinel_hint(exc))
            return
        self.add(OK, subject, f"Sentinel incidents of {ws.workspace_name} readable")
        if first is None:
            self.add(
                SKIP,
                subject,
                "Responder rights not probed: the workspace has no incident yet",
                "run check again once an incident exists",
            )
            return
        await self._responder(subject, client, first.name)

    async def _defender(self, name: str) -> None:
        """The Graph token, one read, and the write permission (GRAPH.md A.2); nothing written."""
        defender = self.config.defenders[name]
        subject = f"[defender:{name}]"
        if not self._tokens.get(defender.oauth, False):
            self.add(SKIP, subject, f"not probed: [oauth:{defender.oauth}] has no token")
            return
        try:
            found = await probe(self.rt.graph_client(name))
        except AuthError as exc:
            code = exc.code or ""
            self.add(
                FAIL, subject, f"no Microsoft Graph token: {exc}", ENTRA_HINTS.get(code, _entra_hint(code))
            )
            return
        except RemoteError as exc:
            self.add(FAIL, subject, f"Defender XDR incidents not readable: {exc}", _graph_hint(exc))
            return
        if not found.can_read or found.can_write is False:
            self.add(FAIL, subject, found.problem, found.hint)
        elif found.can_write is None:
            self.add(
                WARN, subject, f"Defender XDR incidents readable at {defender.graph_url}; {found.problem}"
            )
        else:
            self.add(
                OK, subject, f"Defender XDR incidents readable at {defender.graph_url}; {WRITE_ROLE} granted"
            )

    async def _responder(self, subject: str, client: SentinelClient, name: str) -> None:
        incident = await client.get_incident(name)
        body = build_put_body(incident, {})
        body["etag"] = STALE_ETAG
        try:
            await client.http.request(
                "PUT",
                client.incident_url(name),
                params={"api-version": client.api_version},
                json=body,
                expected=(200, 201),
                idempotent=False,
            )
        except Forbidden as exc:
            self.add(
                FAIL,
                subject,
                f"cannot update incidents (HTTP 403 {exc.code or ''}): the app can read but not write",
                _RESPONDER_HINT,
            )
            return
        except RemoteError as exc:
            if exc.status == 409:
                self.add(
                    OK,
                    subject,
                    "Microsoft Sentinel Responder: a PUT with a stale etag reached Sentinel (409)",
                )
            else:
                self.add(FAIL, subject, f"Responder probe failed: {exc}", _sentinel_hint(exc))
            return
        self.add(
            WARN,
            subject,
            "Responder rights present, but Sentinel accepted a stale etag (the incident's own values "
            "were written back unchanged)",
        )


_RESPONDER_HINT = (
    "assign the role Microsoft Sentinel Responder to the app on the workspace or its resource group"
)


def _entra_hint(code: str) -> str:
    if code.startswith("AADSTS"):
        return f"look the code up: https://login.microsoftonline.com/error?code={code[6:]}"
    return "check tenant_id, client_id, the secret or certificate, and cloud"


def _graph_hint(exc: RemoteError) -> str:
    if exc.status == 401:
        return "the Graph token was refused: graph_url must be the Graph endpoint of the app's cloud"
    if exc.status == 404:
        return "no incidents API at graph_url: check it (and that the tenant has Microsoft Defender XDR)"
    return "a transient failure: try again" if isinstance(exc, TransientError) else ""


def _sentinel_hint(exc: RemoteError) -> str:
    if exc.status == 401:
        return "the token was refused: check cloud / management_url match the tenant's cloud"
    if exc.status == 403:
        return _RESPONDER_HINT
    if exc.status == 404:
        return "check subscription_id, resource_group and workspace_name (the name, not the workspace id)"
    if exc.status == 400:
        return "check api_version"
    return "a transient failure: try again" if isinstance(exc, TransientError) else ""
