"""``check``'s ServiceNow probes, per instance (see :mod:`agent.app.check` for what each shows)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agent.app.probes import FAIL, OK, SKIP, WARN, Probes
from agent.app.runtime import Runtime
from agent.config import Config, ServiceNowInstance
from agent.connectors.servicenow import fields as snowfields
from agent.connectors.servicenow.client import ServiceNowClient
from agent.connectors.servicenow.models import SnowRecord
from agent.connectors.servicenow.query import Q
from agent.errors import AgentError, AuthError, Forbidden, NotFound, RemoteError, TransientError

NO_SUCH_SYS_ID = "0" * 32


class ServiceNowChecks(Probes):
    """The probes of one ServiceNow instance."""

    def __init__(self, config: Config, rt: Runtime) -> None:
        super().__init__(config, rt)
        self._ours: dict[str, SnowRecord | None] = {}

    async def _servicenow(self, name: str, inst: ServiceNowInstance) -> None:
        subject = f"[servicenow:{name}]"
        snow = self.rt.snow_client(name)
        try:
            await snow.find(Q.is_not_empty("sys_id"), ["sys_id"], limit=1)
        except (RemoteError, AuthError) as exc:
            self.add(FAIL, subject, f"table {inst.incident_table} not readable: {exc}", _snow_hint(exc, inst))
            self.add(SKIP, subject, "the other ServiceNow checks need a readable table")
            return
        who = inst.username or f"the OAuth application {inst.client_id} (client-credentials grant)"
        self.add(OK, subject, f"table {inst.incident_table} readable as {who}")
        profile = inst.profile
        self.add(
            OK,
            subject,
            f"table_profile {profile.name}: finished states {profile.describe_states()}, close fields "
            f"{profile.close_code_field} and {profile.close_notes_field}, caller {profile.caller_field}",
        )
        for probe in (
            self._fields,
            self._writable,
            self._journal,
            self._references,
            self._choices,
            self._owners,
        ):
            try:
                await probe(subject, name, inst, snow)
            except (RemoteError, AuthError) as exc:
                self.add(
                    FAIL, subject, f"{probe.__name__.strip('_')} probe failed: {exc}", _snow_hint(exc, inst)
                )

    async def _fields(
        self, subject: str, name: str, inst: ServiceNowInstance, snow: ServiceNowClient
    ) -> None:
        """Every configured field exists on the table (a query on a missing one matches all)."""
        fields = snowfields.configured_fields(self.config, inst)
        proof = await snowfields.look(snow, fields)
        if not proof.proven:
            self.add(
                SKIP,
                subject,
                f"fields of {inst.incident_table} not verified: the table has no record to look at",
                "run check again once a record exists (the first create also checks the unique key)",
            )
        elif proof.missing:
            for problem in snowfields.missing_problems(inst, proof.missing):
                self.add(
                    FAIL,
                    subject,
                    problem,
                    "fix the field name in the ini (ServiceNow names are case-sensitive)",
                )
        else:
            self.add(OK, subject, f"all {len(fields)} configured fields exist on {inst.incident_table}")

    async def _our_record(self, name: str, snow: ServiceNowClient) -> SnowRecord | None:
        """One record the agent created (marked ``Sentinel/<workspace_name>``), newest first."""
        if name not in self._ours:
            marks = [
                f"Sentinel/{ws.workspace_name}"
                for ws in self.config.workspaces.values()
                if ws.servicenow == name
            ] + [f"Defender/{d.name}" for d in self.config.defenders.values() if d.servicenow == name]
            found = await snow.find(
                Q.in_("correlation_display", marks).order_by("sys_updated_on", desc=True),
                ["correlation_display"],
                limit=1,
            ) if marks else []  # fmt: skip
            self._ours[name] = found[0] if found else None
        return self._ours[name]

    async def _writable(
        self, subject: str, name: str, inst: ServiceNowInstance, snow: ServiceNowClient
    ) -> None:
        ours = await self._our_record(name, snow)
        if ours is None:
            try:
                await snow.patch(NO_SUCH_SYS_ID, {"correlation_display": "check"}, ["sys_id"])
            except Forbidden as exc:
                self.add(FAIL, subject, f"table {inst.incident_table} not writable: {exc}", _WRITE_HINT)
                return
            except NotFound:
                pass
            self.add(
                SKIP,
                subject,
                f"write access to {inst.incident_table} not proven: no record of ours yet "
                "(a PATCH of a non-existent record was not refused by an ACL)",
                "run check again after the first sync created a record",
            )
            return
        try:
            after = await snow.patch(
                ours.sys_id, {"correlation_display": ours.get("correlation_display")}, []
            )
        except Forbidden as exc:
            self.add(FAIL, subject, f"table {inst.incident_table} not writable: {exc}", _WRITE_HINT)
            return
        changed = "" if after.mod_count == ours.mod_count else " (the instance counted it as an update)"
        self.add(
            OK,
            subject,
            f"table {inst.incident_table} writable: no-op PATCH of {ours.number} accepted{changed}",
        )

    async def _journal(
        self, subject: str, name: str, inst: ServiceNowInstance, snow: ServiceNowClient
    ) -> None:
        table = inst.incident_table
        noted = await self._record_with_notes(name, snow, table)
        if noted is not None:
            sys_id, number = noted
            rows = await _rows(
                snow, "sys_journal_field", Q.eq("element_id", sys_id) & Q.eq("name", table), ["sys_id"], 1
            )
            if rows:
                self.add(
                    OK,
                    subject,
                    f"sys_journal_field readable (entries of {number} returned): journals are read from it",
                )
                return
            shown = await snow.journal_from_records([sys_id])
            if shown.get(sys_id):
                self.add(
                    WARN,
                    subject,
                    f"sys_journal_field returned no entries for {number}, although its work notes show them: "
                    "comments and work notes are read through the records' display values instead "
                    f"({len(shown[sys_id])} entries of {number} read that way)",
                    "grant the integration user read access to sys_journal_field (an ACL, or a role such as "
                    "itil) for exact entry times and cheaper reads; the sync works either way",
                )
            else:
                self.add(
                    FAIL,
                    subject,
                    f"sys_journal_field returned no entries for {number}, although its work notes show them, "
                    "and the display values could not be read either (the user's date format?)",
                    "grant the integration user read access to sys_journal_field, or give it the "
                    "system's date format (yyyy-MM-dd HH:mm:ss)",
                )
            return
        rows = await _rows(snow, "sys_journal_field", Q.eq("name", table), ["sys_id"], 1)
        if rows:
            self.add(OK, subject, "sys_journal_field readable")
        else:
            self.add(
                SKIP,
                subject,
                "sys_journal_field answered with no rows and no record shows work notes to compare with",
                "if incidents here have work notes, the user lacks read access to sys_journal_field",
            )

    async def _record_with_notes(
        self, name: str, snow: ServiceNowClient, table: str
    ) -> tuple[str, str] | None:
        ours = await self._our_record(name, snow)
        queries = [Q.eq("sys_id", ours.sys_id)] if ours is not None else []
        queries.append(Q.is_not_empty("sys_id").order_by("sys_updated_on", desc=True))
        for query in queries:
            rows = await _rows(
                snow, table, query, ["sys_id", "number", "work_notes", "comments"], 20, display="true"
            )
            for row in rows:
                if str(row.get("work_notes") or "").strip() or str(row.get("comments") or "").strip():
                    return str(row.get("sys_id")), str(row.get("number"))
        return None

    async def _references(
        self, subject: str, name: str, inst: ServiceNowInstance, snow: ServiceNowClient
    ) -> None:
        callers = {inst.caller_id} if inst.caller_id else set()
        groups: set[str] = set()
        for ws in self.config.sources.values():
            if ws.servicenow == name and ws.enabled:
                callers |= {ws.caller_id} if ws.caller_id else set()
                groups |= {ws.assignment_group} if ws.assignment_group else set()
        for caller in sorted(callers):
            by_id = len(caller) == 32 and all(c in "0123456789abcdef" for c in caller)
            user = await (snow.find_user(sys_id=caller) if by_id else snow.find_user(user_name=caller))
            if user is None:
                self.add(
                    FAIL,
                    subject,
                    f"caller_id {caller} not found in sys_user",
                    "set caller_id to an existing user_name or sys_id (or leave it empty)",
                )
            else:
                self.add(OK, subject, f"caller_id {caller} exists")
        for group in sorted(groups):
            if await snow.find_group(group) is None:
                self.add(
                    FAIL, subject, f"assignment_group {group!r} not found (or not unique) in sys_user_group"
                )
            else:
                self.add(OK, subject, f"assignment_group {group!r} exists")

    async def _choices(
        self, subject: str, name: str, inst: ServiceNowInstance, snow: ServiceNowClient
    ) -> None:
        m = self.config.mappings.for_instance(name)
        close_code = inst.profile.close_code_field
        fields = {inst.severity_field: "severity", inst.status_field: "status", close_code: "closure"}

        def title(kind: str) -> str:  # the section the map came from (an instance's own wins)
            return m.sources.get(kind) or kind

        rows = await _rows(
            snow,
            "sys_choice",
            Q.eq("name", inst.incident_table) & Q.in_("element", list(fields)) & Q.eq("inactive", "false"),
            ["element", "value"],
            1000,
        )
        choices: dict[str, set[str]] = {f: set() for f in fields}
        for row in rows:
            choices.setdefault(str(row.get("element")), set()).add(str(row.get("value")))
        written = {
            inst.severity_field: (title("severity_to_servicenow"), m.severity_to_servicenow.values()),
            inst.status_field: (title("status_to_servicenow"), m.status_to_servicenow.values()),
            close_code: (title("closure_to_servicenow"), m.closure_to_servicenow.values()),
        }
        back = {
            inst.severity_field: (title("severity_to_sentinel"), m.severity_to_sentinel),
            inst.status_field: (title("status_to_sentinel"), m.status_to_sentinel),
        }
        for field, (section, values) in written.items():
            known = choices.get(field, set())
            where = f"{inst.incident_table}.{field}"
            if not known:
                self.add(
                    SKIP, subject, f"no active sys_choice rows readable for {where}: values not verified"
                )
                continue
            missing = sorted(set(values) - known)
            if missing:
                self.add(
                    FAIL,
                    subject,
                    f"[{section}] writes {', '.join(map(repr, missing))}, not an active choice of {where}",
                    f"use one of: {', '.join(sorted(known))}",
                )
            else:
                self.add(OK, subject, f"[{section}] values are active choices of {where}")
            if field in back:
                section_back, rows_back = back[field]
                unmapped = sorted(known - set(rows_back))
                if unmapped:
                    self.add(
                        FAIL,
                        subject,
                        f"[{section_back}] has no row for {where} value(s) {', '.join(map(repr, unmapped))}",
                        f"add a row per value to [{section_back}]; until then they log value_unmapped",
                    )
                else:
                    self.add(OK, subject, f"[{section_back}] has a row for every active choice of {where}")
        where = f"{inst.incident_table}.{close_code}"
        self._close_codes(subject, name, where, choices.get(close_code, set()), title("closure_to_sentinel"))

    def _close_codes(self, subject: str, name: str, where: str, codes: set[str], section: str) -> None:
        """Warn for each active close code that lands on the default ``*`` row (an open set:
        never a failure, but a person should decide where it goes)."""
        m = self.config.mappings.for_instance(name)
        if not codes:
            return
        falling = sorted(code for code in codes if m.closure_falls_back(code))
        fallback = "/".join(x for x in m.closure_for_sentinel("") if x)
        for code in falling:
            self.add(
                WARN,
                subject,
                f"close code {code!r} (an active choice of {where}) has no [{section}] row: "
                f"it closes Sentinel incidents as {fallback}",
                f"add '{code} = Classification[/Reason]' to [{section}], or a '*' row",
            )
        if not falling:
            self.add(OK, subject, f"[{section}] places every active choice of {where}")

    async def _owners(
        self, subject: str, name: str, inst: ServiceNowInstance, snow: ServiceNowClient
    ) -> None:
        m = self.config.mappings
        users = set(m.owners)
        for ws_name, ws in self.config.sources.items():
            if ws.servicenow == name and ws.enabled:
                users |= set(m.owners_by_workspace.get(ws_name, {}))
        if not users:
            return
        rows = await _rows(
            snow, "sys_user", Q.in_("user_name", sorted(users)), ["user_name"], len(users) + 10
        )
        found = {str(r.get("user_name")) for r in rows}
        missing = sorted(users - found)
        if missing:
            self.add(
                FAIL,
                subject,
                f"[owners] user_name(s) not in sys_user: {', '.join(missing)}",
                "fix the rows (left of = is the ServiceNow user_name); those owners are not synced",
            )
        else:
            self.add(OK, subject, f"[owners]: all {len(users)} user_names exist in sys_user")


_WRITE_HINT = (
    "give the integration user the itil role (or sn_incident_write) and check ACLs on the incident table"
)


async def _rows(
    snow: ServiceNowClient, table: str, query: Q, fields: Iterable[str], limit: int, *, display: str = "false"
) -> list[dict[str, Any]]:
    """One Table API page of ``table`` (any table; ``display`` as ``sysparm_display_value``)."""
    params: dict[str, str | int] = {
        "sysparm_query": query.encoded,
        "sysparm_fields": ",".join(fields),
        "sysparm_limit": limit,
        "sysparm_display_value": display,
        "sysparm_exclude_reference_link": "true",
    }
    resp = await snow.http.request("GET", snow.table_url(table), params=params)
    result = resp.body.get("result") if isinstance(resp.body, dict) else None
    return [r for r in result if isinstance(r, dict)] if isinstance(result, list) else []


_CLIENT_CREDENTIALS_HINTS: Mapping[str, str] = {
    # REFERENCE C.7, E.11; the two answers as measured on a live instance
    # (refractionPOINT/documentation#283).
    "server_error": "the instance refused the client-credentials grant (access_denied): it is off until "
    "the system property glide.oauth.inbound.client.credential.grant_type.enabled is true; otherwise "
    "client_id or the client secret is wrong",
    "unauthorized_client": "the OAuth application has no OAuth Application User: set one on its "
    "Application Registry entry (the tokens are issued as that user, who needs the itil role)",
}


def _snow_hint(exc: AgentError, inst: ServiceNowInstance) -> str:
    if isinstance(exc, AuthError) and inst.auth == "oauth" and inst.username is None:
        return _CLIENT_CREDENTIALS_HINTS.get(
            exc.code or "", "check client_id and the client secret of the OAuth application"
        )
    if isinstance(exc, AuthError) or (isinstance(exc, RemoteError) and exc.status == 401):
        return (
            "the instance refused the sign-in: check username and password (or the OAuth client); "
            "newer instances may also require the role snc_basic_auth_api_access for basic auth"
        )
    if isinstance(exc, RemoteError) and exc.status == 403:
        return "give the integration user the itil role (or sn_incident_write)"
    if isinstance(exc, RemoteError) and exc.status == 400:
        return f"check incident_table ({inst.incident_table}) and the field names in [servicenow]"
    return "a transient failure: try again" if isinstance(exc, TransientError) else ""
