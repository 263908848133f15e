"""ServiceNow Table API emulator (REFERENCE C).

A strict stand-in for one instance: the Table API at ``/api/now[/v1|/v2]/table/{table}`` and
``/oauth_token.do``, with the tables the sync touches (``incident``, ``sys_journal_field``,
``sys_user``, ``sys_user_group``, ``core_company``, ``sys_choice``). It is strict wherever the
real service is: every value a string, journal fields that read back empty, data policy on
resolve/close, required headers on writes, real encoded queries
(:mod:`agent.testing.emulators.encoded_query`), paging headers, per-user ACLs and hourly rate-limit
rules. Domain separation is modelled as data: ``sys_domain`` (a domain sys_id or ``global``) on
incidents, users, groups and companies, settable on insert; scoping queries is the caller's job.

Tests and the activity simulator change state directly through :meth:`ServiceNowEmulator.insert`
and :meth:`ServiceNowEmulator.analyst_update`, which apply the same business rules as the HTTP
path except auth and the data policy.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import math
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import formatdate
from typing import Any

import orjson
from aiohttp import web

from agent.connectors.servicenow.models import format_snow_time, parse_snow_time
from agent.testing.emulators.common import (
    Clock,
    Faults,
    Recorder,
    TokenRegistry,
    fault_and_record_middleware,
    json_response,
)
from agent.testing.emulators.encoded_query import DATETIME, bind, parse
from agent.testing.emulators.servicenow_tables import (
    DEFAULTS,
    DISPLAY_FIELD,
    JOURNAL,
    JOURNAL_LABELS,
    PRIORITY,
    REFERENCE,
    SCHEMAS,
    TABLE_CHOICES,
    TASKS,
    Column,
    TaskRules,
)

ACCESS_TOKEN_LIFETIME = 1799  # REFERENCE C.7
REFRESH_TOKEN_LIFETIME = 100 * 86400  # the platform's default refresh-token lifespan
DEFAULT_LIMIT = 10000  # REFERENCE C.2
AUTOCLOSE_AFTER = 86400.0  # glide.ui.autoclose.time: resolved incidents close after a day (E.9)


class Rejected(Exception):
    """An error the emulator answers with ServiceNow's error body (REFERENCE C.5)."""

    def __init__(self, status: int, message: str, detail: str | None, headers: dict[str, str] | None = None):
        super().__init__(f"{status} {message}: {detail}")
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "detail": self.detail}, "status": "failure"}
        return json_response(body, self.status, dict(self.headers))


def _not_found() -> Rejected:
    return Rejected(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")


def _unauthenticated() -> Rejected:
    return Rejected(
        401,
        "User Not Authenticated",
        "Required to provide Auth information",
        {"WWW-Authenticate": 'BASIC realm="Service-now"'},
    )


@dataclass
class ApiUser:
    """An integration account: a ``sys_user`` row plus credentials and permissions."""

    user_name: str
    password: str
    sys_id: str
    roles: tuple[str, ...]
    journal_read: bool
    write: bool
    # How the user sees dates in display values (REFERENCE C.4, E.6): the user's time zone as an
    # offset (a US Pacific user in winter; daylight saving is not modelled) and date format.
    utc_offset: timedelta = timedelta(hours=-8)
    date_format: str = "%Y-%m-%d %H:%M:%S"

    def shows(self, raw: str) -> str:
        """A raw (UTC) date-time as this user sees it in a display value."""
        when = datetime.strptime(raw, "%Y-%m-%d %H:%M:%S") + self.utc_offset
        return when.strftime(self.date_format)


@dataclass
class RateRule:
    """An hourly rate-limit rule for one user (REFERENCE C.6)."""

    sys_id: str
    per_hour: int
    window: int = -1
    used: int = 0


@dataclass(frozen=True, slots=True)
class _Refresh:
    user_name: str
    client_id: str
    expires_at: float


@dataclass
class _View:
    """How one response renders records (REFERENCE C.4)."""

    base: str  # scheme://host of the request, for reference links
    fields: list[str] | None = None
    display: str = "false"  # false | true | all
    exclude_links: bool = False
    user: ApiUser | None = None  # whose time zone and date format display values use


@dataclass
class _Ctx:
    request: web.Request
    user: ApiUser
    table: str
    version: str  # "", "v1" or "v2"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[_Ctx], Awaitable[web.Response]]


class _TableSchema:
    """The :class:`agent.testing.emulators.encoded_query.Schema` of one table, with dot-walking."""

    def __init__(self, emulator: ServiceNowEmulator, table: str) -> None:
        self.emulator = emulator
        self.table = table
        self._kinds: dict[str, str | None] = {}

    def kind(self, field: str) -> str | None:
        if field not in self._kinds:
            column = self.emulator.resolve(self.table, field)
            self._kinds[field] = column[1].kind if column else None
        return self._kinds[field]

    def value(self, record: Mapping[str, str], field: str) -> str:
        if "." not in field:
            # Journal text never lives on the record itself, so the stored value is already "".
            return record.get(field, "")
        return self.emulator.walk(self.table, record, field)[2]


class ServiceNowEmulator:
    """One ServiceNow instance's Table API and OAuth endpoint, as an aiohttp application."""

    def __init__(
        self,
        *,
        clock: Clock,
        tokens: TokenRegistry,
        faults: Faults | None = None,
        recorder: Recorder | None = None,
        name: str = "default",
        close_data_policy: bool = True,
    ) -> None:
        self.clock = clock
        self.tokens = tokens
        self.faults = faults or Faults()
        self.recorder = recorder or Recorder()
        self.name = name
        self.audience = "servicenow:" + name
        self.close_data_policy = close_data_policy
        self.tables: dict[str, dict[str, dict[str, str]]] = {t: {} for t in SCHEMAS}
        self._api_users: dict[str, ApiUser] = {}
        self._oauth_clients: dict[str, str] = {}
        self._oauth_app_users: dict[str, str] = {}  # client_id -> its OAuth Application User
        # glide.oauth.inbound.client.credential.grant_type.enabled: off on a new instance (C.7).
        self.client_credentials_enabled = False
        # A developer instance asleep: every URL answers an HTML page with 200 (REFERENCE E.7).
        self.hibernating = False
        self._access_tokens: dict[str, str] = {}  # access token -> user_name
        self._refresh_tokens: dict[str, _Refresh] = {}
        self._rate_rules: dict[str, RateRule] = {}
        self._lost_answers: dict[str, list[int]] = {}
        # What the instance silently ignored in requests (REFERENCE C.2, C.3): a condition on a
        # field the table lacks widens a query, a written field it lacks is dropped. Tests assert
        # that both stay empty unless they expect otherwise.
        self.dropped_terms: list[str] = []  # "<table>: <term>"
        self.ignored_fields: list[str] = []  # "<table>.<field>"
        self._next_number: dict[str, int] = {table: 10001 for table in TASKS}
        self._resolved_at: dict[str, float] = {}  # resolved incidents, for the autoclose rule
        self.autoclose_after = AUTOCLOSE_AFTER
        self._seed()
        self.app = web.Application(
            middlewares=[
                fault_and_record_middleware(
                    "servicenow", self.faults, self.recorder, self._fault_response, instance=name
                )
            ]
        )
        self._add_routes()

    # --- setup ------------------------------------------------------------------------------

    def _seed(self) -> None:
        self.add_user("admin", "admin@example.com", "System Administrator")
        for table, table_choices in TABLE_CHOICES.items():
            for element, choices in table_choices.items():
                for seq, (value, label) in enumerate(choices, start=1):
                    self.insert(
                        "sys_choice",
                        {
                            "name": table,
                            "element": element,
                            "value": value,
                            "label": label,
                            "sequence": str(seq),
                        },
                    )

    def _add_routes(self) -> None:
        base = "/api/now{version:(?:/v[12])?}/table/{table}"
        one = base + "/{sys_id}"
        routes: list[tuple[str, str, str, Handler]] = [
            ("GET", base, "table.list", self._list),
            ("POST", base, "table.post", self._post),
            ("GET", one, "table.get", self._get),
            ("PATCH", one, "table.patch", self._update),
            ("PUT", one, "table.put", self._update),
            ("DELETE", one, "table.delete", self._delete),
        ]
        for method, path, name, handler in routes:
            self.app.router.add_route(method, path, self._table_route(method, handler), name=name)
        self.app.router.add_route("POST", "/oauth_token.do", self._oauth, name="oauth.token")

    def add_api_user(
        self,
        user_name: str,
        password: str,
        *,
        roles: tuple[str, ...] = ("itil",),
        journal_read: bool = True,
        write: bool = True,
    ) -> str:
        """An integration account (also a ``sys_user`` row); returns its sys_id."""
        sys_id = self.add_user(user_name, f"{user_name}@example.com", user_name)
        self._api_users[user_name] = ApiUser(user_name, password, sys_id, roles, journal_read, write)
        return sys_id

    def add_oauth_client(
        self, client_id: str, client_secret: str, *, application_user: str | None = None
    ) -> None:
        """Register an OAuth application (``oauth_entity``). The password and refresh grants work
        at once; the client-credentials grant also needs :attr:`client_credentials_enabled` and
        an ``application_user`` (an integration account the tokens are issued as)."""
        self._oauth_clients[client_id] = client_secret
        if application_user is not None:
            self._oauth_app_users[client_id] = application_user

    def add_user(self, user_name: str, email: str, name: str) -> str:
        """A ``sys_user`` row; returns its sys_id."""
        first, _, last = name.partition(" ")
        row = {"user_name": user_name, "email": email, "name": name, "first_name": first, "last_name": last}
        return self.insert("sys_user", row)["sys_id"]

    def add_group(self, name: str, domain: str = "global") -> str:
        """A ``sys_user_group`` row in ``domain`` (a domain sys_id or ``global``); returns its sys_id."""
        return self.insert("sys_user_group", {"name": name, "sys_domain": domain})["sys_id"]

    def add_company(self, name: str, domain: str = "global") -> str:
        """A ``core_company`` row in ``domain``; returns its sys_id."""
        return self.insert("core_company", {"name": name, "sys_domain": domain})["sys_id"]

    def set_user_clock(self, user_name: str, utc_offset: timedelta, date_format: str) -> None:
        """The time zone (as an offset) and date format (strftime) the user's display values use."""
        user = self._api_users[user_name]
        user.utc_offset, user.date_format = utc_offset, date_format

    def deny_journal_read(self, user_name: str, denied: bool = True) -> None:
        """Take away (or give back) the user's read ACL on ``sys_journal_field``: its reads then
        answer 200 with no rows, as a real instance does (REFERENCE E.6)."""
        self._api_users[user_name].journal_read = not denied

    def set_rate_limit(self, user_name: str, per_hour: int) -> str:
        """An hourly rate-limit rule for one user (REFERENCE C.6); returns the rule's sys_id."""
        rule = RateRule(uuid.uuid4().hex, per_hour)
        self._rate_rules[user_name] = rule
        return rule.sys_id

    def lose_answer(self, route: str, status: int = 0) -> None:
        """The next request to ``route`` (e.g. ``table.post``) is carried out, but its answer never
        reaches the client: the connection drops (``status`` 0), or a gateway in front of the
        instance answers ``status`` (e.g. 503) after the instance committed the write."""
        self._lost_answers.setdefault(route, []).append(status)

    # --- direct access (no HTTP, no auth, no data policy) ------------------------------------

    def insert(self, table: str, fields: dict[str, str], by: str = "admin") -> dict[str, str]:
        """Create a record with the same business rules as a POST; returns the stored fields."""
        return dict(self._write(table, None, fields, by, policy=False))

    def analyst_update(
        self, table: str, sys_id: str, fields: dict[str, str], by: str = "admin"
    ) -> dict[str, str]:
        """Update a record with the same business rules as a PATCH (no data policy)."""
        return dict(self._write(table, self._stored(table, sys_id), fields, by, policy=False))

    def record(self, table: str, sys_id: str) -> dict[str, str]:
        """A copy of the raw stored fields; KeyError if there is no such record."""
        return dict(self._stored(table, sys_id))

    def find(self, table: str, encoded_query: str) -> list[dict[str, str]]:
        """Records matching an encoded query, in query order (copies)."""
        rows = bind(parse(encoded_query), _TableSchema(self, table)).select(self.tables[table].values())
        return [dict(r) for r in rows]

    def journal(self, sys_id: str, element: str | None = None) -> list[dict[str, str]]:
        """The ``sys_journal_field`` rows of one record, oldest first."""
        return [
            dict(row)
            for row in self.tables["sys_journal_field"].values()
            if row["element_id"] == sys_id and (element is None or row["element"] == element)
        ]

    def delete(self, table: str, sys_id: str) -> None:
        """Remove a record; KeyError if there is no such record."""
        self._stored(table, sys_id)
        del self.tables[table][sys_id]

    def _stored(self, table: str, sys_id: str) -> dict[str, str]:
        if table not in self.tables:
            raise KeyError(f"unknown table {table}")
        try:
            return self.tables[table][sys_id]
        except KeyError:
            raise KeyError(f"no {table} record {sys_id}") from None

    # --- schema helpers ---------------------------------------------------------------------

    def resolve(self, table: str, path: str) -> tuple[str, Column] | None:
        """``caller_id.email`` on incident -> ("sys_user", email column); None if unknown."""
        parts = path.split(".")
        for i, part in enumerate(parts):
            column = SCHEMAS.get(table, {}).get(part)
            if column is None:
                return None
            if i == len(parts) - 1:
                return table, column
            if column.kind != REFERENCE:
                return None
            table = column.reference
        return None

    def walk(
        self, table: str, record: Mapping[str, str] | None, path: str
    ) -> tuple[str, Mapping[str, str] | None, str]:
        """Follow references along ``path`` -> (last table, last record or None, raw value)."""
        parts = path.split(".")
        for part in parts[:-1]:
            column = SCHEMAS[table][part]
            ref = record.get(part, "") if record is not None else ""
            table = column.reference
            record = self.tables.get(table, {}).get(ref) if ref else None
        value = record.get(parts[-1], "") if record is not None else ""
        if SCHEMAS[table][parts[-1]].kind == JOURNAL:
            value = ""
        return table, record, value

    def _actor_sys_id(self, user_name: str) -> str:
        return next((sid for sid, u in self.tables["sys_user"].items() if u["user_name"] == user_name), "")

    # --- business rules ---------------------------------------------------------------------

    def _write(
        self, table: str, current: dict[str, str] | None, fields: Mapping[str, str], by: str, policy: bool
    ) -> dict[str, str]:
        """Insert (``current`` None) or update one record, applying the business rules."""
        schema = SCHEMAS[table]
        accepted = {k: v for k, v in fields.items() if self._writable(schema, k)}
        journal = [(k, v) for k, v in accepted.items() if schema[k].kind == JOURNAL and v != ""]
        values = {k: v for k, v in accepted.items() if schema[k].kind != JOURNAL}
        now = self.clock.now()
        if current is None:
            new = {name: "" for name in schema}
            new.update(DEFAULTS.get(table, {}))
            new.update(values)
            self._on_insert(table, new, by, now)
        else:
            new = dict(current)
            new.update(values)
        rules = TASKS.get(table)
        if rules is not None:
            self._task_rules(table, rules, new, current, values, by, now)
        if current is not None and not journal and all(new[k] == current[k] for k in new):
            return current  # the platform skips a no-op update (REFERENCE C.9)
        if policy and self.close_data_policy and rules is not None:
            self._check_close_policy(rules, new)
        if current is None and rules is not None:
            # Numbered only once the insert is accepted, so a rejected POST leaves no gap.
            new["number"] = f"{rules.prefix}{self._next_number[table]:07d}"
            self._next_number[table] += 1
        if current is not None and "sys_mod_count" in schema:
            new["sys_mod_count"] = str(int(current["sys_mod_count"] or "0") + 1)
            new["sys_updated_on"] = format_snow_time(now)
            new["sys_updated_by"] = by
        self.tables[table][new["sys_id"]] = new
        if table == "incident":
            self._note_resolution(new)
        for element, text in journal:
            self._add_journal(table, new["sys_id"], element, text, by, now)
        return new

    @staticmethod
    def _writable(schema: Mapping[str, Column], name: str) -> bool:
        column = schema.get(name)
        if column is None or column.computed:
            return False
        # The domain is the one system field a caller may set (as a form template or a module's
        # sysparm_domain does); an integration user in a parent domain writes it on insert.
        return name == "sys_domain" or (name != "number" and not name.startswith("sys_"))

    def _on_insert(self, table: str, new: dict[str, str], by: str, now: datetime) -> None:
        stamp = format_snow_time(now)
        new["sys_id"] = uuid.uuid4().hex
        new["sys_created_on"] = stamp
        new["sys_created_by"] = by
        if "sys_mod_count" in new:
            new.update(sys_mod_count="0", sys_updated_on=stamp, sys_updated_by=by)
        if table in TASKS:
            new["opened_at"] = new["opened_at"] or stamp
            new["opened_by"] = new["opened_by"] or self._actor_sys_id(by)

    def _task_rules(
        self,
        table: str,
        rules: TaskRules,
        new: dict[str, str],
        current: dict[str, str] | None,
        written: Mapping[str, str],
        by: str,
        now: datetime,
    ) -> None:
        state = new["state"]
        before = current["state"] if current is not None else ""
        stamp = format_snow_time(now)
        new["active"] = "false" if state in rules.inactive else "true"
        if table == "incident":
            new["incident_state"] = state
            new["priority"] = PRIORITY.get((new["impact"], new["urgency"]), new["priority"])
        finished = (*rules.resolved, *rules.closed, *rules.inactive)
        if state in rules.resolved and before not in rules.resolved:
            if "resolved_at" not in written:
                new["resolved_at"] = stamp
            new["resolved_by"] = new["resolved_by"] or self._actor_sys_id(by)
        if state in rules.closed and before not in rules.closed:
            if "closed_at" not in written:
                new["closed_at"] = stamp
            new["closed_by"] = new["closed_by"] or self._actor_sys_id(by)
        if state not in finished and before in finished:
            # Reopened: the resolution stamps belong to the previous resolution.
            for name in ("resolved_at", "resolved_by", "closed_at", "closed_by"):
                if name in new and name not in written:
                    new[name] = ""

    def _check_close_policy(self, rules: TaskRules, new: Mapping[str, str]) -> None:
        if new["state"] not in rules.policy:
            return
        missing = [label for name, label in rules.policy_labels.items() if not new[name].strip()]
        if missing:
            detail = "Data Policy Exception: \n\tThe following fields are mandatory: " + ", ".join(missing)
            raise Rejected(403, "Operation Failed", detail)

    def _note_resolution(self, record: Mapping[str, str]) -> None:
        if record["state"] == "6" and record["resolved_at"]:
            self._resolved_at[record["sys_id"]] = parse_snow_time(record["resolved_at"]).timestamp()
        else:
            self._resolved_at.pop(record["sys_id"], None)

    def autoclose(self) -> list[str]:
        """Close resolved incidents whose resolution is older than :attr:`autoclose_after` (the
        base system's scheduled job, ``glide.ui.autoclose.time``, REFERENCE E.9); their sys_ids.
        Runs before every request, so a test only has to move the clock."""
        deadline = self.clock.time() - self.autoclose_after
        due = [sys_id for sys_id, at in self._resolved_at.items() if at <= deadline]
        for sys_id in due:
            self._write("incident", self.tables["incident"][sys_id], {"state": "7"}, "system", policy=False)
        return due

    def _add_journal(
        self, table: str, element_id: str, element: str, text: str, by: str, now: datetime
    ) -> None:
        row = {
            "sys_id": uuid.uuid4().hex,
            "element": element,
            "element_id": element_id,
            "name": table,
            "value": text,
            "sys_created_on": format_snow_time(now),
            "sys_created_by": by,
        }
        self.tables["sys_journal_field"][row["sys_id"]] = row

    # --- rendering (REFERENCE C.4) ----------------------------------------------------------

    def _render(self, table: str, record: Mapping[str, str], view: _View) -> dict[str, Any]:
        names = view.fields if view.fields is not None else list(SCHEMAS[table])
        out: dict[str, Any] = {}
        for name in names:
            resolved = self.resolve(table, name)
            if resolved is None:
                continue  # REFERENCE C.2: invalid sysparm_fields entries are ignored
            last_table, column = resolved
            _, owner, raw = self.walk(table, record, name)
            out[name] = self._render_value(last_table, owner, name.split(".")[-1], column, raw, view)
        return out

    def _render_value(
        self, table: str, owner: Mapping[str, str] | None, name: str, column: Column, raw: str, view: _View
    ) -> Any:
        link = (
            f"{view.base}/api/now/table/{column.reference}/{raw}" if column.kind == REFERENCE and raw else ""
        )
        if view.display == "false":
            return {"link": link, "value": raw} if link and not view.exclude_links else raw
        shown = self._display(table, owner, name, column, raw, view.user)
        if view.display == "true":
            return {"display_value": shown, "link": link} if link and not view.exclude_links else shown
        both: dict[str, str] = {"display_value": shown, "value": raw}
        if link and not view.exclude_links:
            both["link"] = link
        return both

    def _display(
        self,
        table: str,
        owner: Mapping[str, str] | None,
        name: str,
        column: Column,
        raw: str,
        user: ApiUser | None = None,
    ) -> str:
        if column.kind == JOURNAL:
            return self._journal_text(owner["sys_id"], name, user) if owner is not None else ""
        if column.kind == DATETIME and raw and user is not None:
            return user.shows(raw)  # in the user's time zone and format (REFERENCE C.4)
        if column.kind == REFERENCE:
            target = self.tables.get(column.reference, {}).get(raw) if raw else None
            shown = DISPLAY_FIELD.get(column.reference, "")
            return target.get(shown, "") if target is not None else ""
        if column.choice and raw:
            return self._choice_label(table, name, raw) or raw
        return raw

    def _choice_label(self, table: str, element: str, value: str) -> str:
        for row in self.tables["sys_choice"].values():
            if row["name"] == table and row["element"] == element and row["value"] == value:
                return row["label"]
        return ""

    def _journal_text(self, sys_id: str, name: str, user: ApiUser | None = None) -> str:
        # REFERENCE E.6: newest first, "<date time> - <display name> (<label>)\n<text>\n\n", the
        # date in the reading user's time zone and format (the exact layout is likely, C.4).
        elements = JOURNAL_LABELS if name == "comments_and_work_notes" else {name: JOURNAL_LABELS[name]}
        rows = [r for r in self.journal(sys_id) if r["element"] in elements]
        blocks = []
        for row in reversed(rows):
            author = self._display_name(row["sys_created_by"])
            label = JOURNAL_LABELS[row["element"]]
            when = user.shows(row["sys_created_on"]) if user is not None else row["sys_created_on"]
            blocks.append(f"{when} - {author} ({label})\n{row['value']}\n\n")
        return "".join(blocks)

    def _display_name(self, user_name: str) -> str:
        user = next((u for u in self.tables["sys_user"].values() if u["user_name"] == user_name), None)
        return user["name"] if user is not None else user_name

    def _from_display(self, table: str, name: str, value: str) -> str:
        """``sysparm_input_display_value=true``: a choice label or a referenced display value."""
        column = SCHEMAS[table].get(name)
        if column is None or not value:
            return value
        if column.kind == REFERENCE and column.reference in DISPLAY_FIELD:
            shown = DISPLAY_FIELD[column.reference]
            rows = self.tables[column.reference].items()
            return next((sid for sid, row in rows if row.get(shown) == value), "")
        if column.choice:
            for row in self.tables["sys_choice"].values():
                if row["name"] == table and row["element"] == name and row["label"] == value:
                    return row["value"]
        return value

    # --- HTTP: plumbing ---------------------------------------------------------------------

    def _table_route(self, method: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def route(request: web.Request) -> web.Response:
            ctx: _Ctx | None = None
            if self.hibernating:
                return _hibernating_page()
            self.autoclose()
            try:
                user = self._authenticate(request)
                version = request.match_info["version"].lstrip("/")
                ctx = _Ctx(request, user, request.match_info["table"], version, self._rate_limit(user))
                if ctx.table not in SCHEMAS:
                    raise Rejected(400, f"Invalid table {ctx.table}", None)
                _check_headers(request, method)
                if method != "GET" and not user.write:
                    verb = {"POST": "Insert", "DELETE": "Delete"}.get(method, "Update")
                    raise Rejected(
                        403, "Operation Failed", f"ACL Exception {verb} Failed due to security constraints"
                    )
                response = await handler(ctx)
            except Rejected as exc:
                response = exc.response()
            lost = self._lost_answers.get(request.match_info.route.name or "")
            if lost:
                return self._lose(request, lost.pop(0))
            if ctx is not None:
                for key, value in ctx.headers.items():
                    response.headers.setdefault(key, value)
            # The instance's own clock, as a real server's Date header (RFC 9110 6.6.1) is.
            response.headers.setdefault("Date", formatdate(self.clock.time(), usegmt=True))
            return response

        return route

    def _lose(self, request: web.Request, status: int) -> web.Response:
        if status:
            return self._fault_response(status, 1)
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError

    def _authenticate(self, request: web.Request) -> ApiUser:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        credentials = credentials.strip()
        user: ApiUser | None = None
        if scheme.lower() == "basic":
            try:
                user_name, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise _unauthenticated() from None
            candidate = self._api_users.get(user_name)
            if candidate is not None and hmac.compare_digest(candidate.password, password):
                user = candidate
        elif scheme.lower() == "bearer":
            _, problem = self.tokens.check(credentials, self.audience)
            owner = self._access_tokens.get(credentials)
            if not problem and owner is not None:
                user = self._api_users.get(owner)
        if user is None:
            raise _unauthenticated()
        return user

    def _rate_limit(self, user: ApiUser) -> dict[str, str]:
        """Headers of the user's rule (REFERENCE C.6); Rejected(429) once the hour's quota is used."""
        rule = self._rate_rules.get(user.user_name)
        if rule is None:
            return {}
        now = self.clock.time()
        window = int(now // 3600) * 3600
        if rule.window != window:
            rule.window, rule.used = window, 0
        headers = {
            "X-RateLimit-Limit": str(rule.per_hour),
            "X-RateLimit-Reset": str(window + 3600),
            "X-RateLimit-Rule": rule.sys_id,
        }
        if rule.used >= rule.per_hour:
            retry = max(1, math.ceil(window + 3600 - now))
            detail = f"Rate limit of {rule.per_hour} requests per hour for Table API exceeded"
            raise Rejected(429, "Rate limit exceeded", detail, {**headers, "Retry-After": str(retry)})
        rule.used += 1
        return headers

    def _fault_response(self, status: int, retry_after: int) -> web.Response:
        if status == 429:
            detail = "Rate limit of 100 requests per hour for Table API exceeded"
            return Rejected(429, "Rate limit exceeded", detail, {"Retry-After": str(retry_after)}).response()
        messages = {
            500: ("Internal Server Error", "An unexpected error occurred while processing the request"),
            502: ("Bad Gateway", "The instance did not respond in time"),
            503: ("Service Unavailable", "The instance is temporarily unavailable"),
        }
        message, detail = messages.get(status, ("Request failed", f"HTTP {status}"))
        return Rejected(status, message, detail).response()

    @staticmethod
    def _view(request: web.Request, user: ApiUser | None = None) -> _View:
        q = request.query
        fields = q.get("sysparm_fields", "")
        display = q.get("sysparm_display_value", "false").lower()
        return _View(
            f"{request.scheme}://{request.host}",
            [f.strip() for f in fields.split(",") if f.strip()] if fields.strip() else None,
            display if display in ("true", "all") else "false",
            q.get("sysparm_exclude_reference_link", "false").lower() == "true",
            user,
        )

    def _visible(self, ctx: _Ctx, record: Mapping[str, str]) -> bool:
        # Without a read ACL on sys_journal_field the rows are silently filtered out.
        return ctx.table != "sys_journal_field" or ctx.user.journal_read

    async def _body(self, ctx: _Ctx) -> dict[str, str]:
        raw = await ctx.request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Rejected(400, "Exception while reading request", "The payload is not valid JSON.") from None
        if not isinstance(body, dict):
            raise Rejected(400, "Exception while reading request", "The payload is not a JSON object.")
        values = {str(k): _as_string(k, v) for k, v in body.items()}
        if ctx.request.query.get("sysparm_input_display_value", "false").lower() == "true":
            values = {k: self._from_display(ctx.table, k, v) for k, v in values.items()}
        return values

    def _record_response(self, ctx: _Ctx, record: Mapping[str, str], status: int) -> web.Response:
        headers: dict[str, str] = {}
        if status == 201:
            headers["Location"] = (
                f"{ctx.request.scheme}://{ctx.request.host}{ctx.request.path}/{record['sys_id']}"
            )
        if ctx.request.headers.get("X-no-response-body", "").lower() == "true":
            return web.Response(status=status, headers=headers)
        body = {"result": self._render(ctx.table, record, self._view(ctx.request, ctx.user))}
        return json_response(body, status, headers)

    # --- HTTP: handlers ---------------------------------------------------------------------

    async def _list(self, ctx: _Ctx) -> web.Response:
        q = ctx.request.query
        rows = [r for r in self.tables[ctx.table].values() if self._visible(ctx, r)]
        if "sysparm_query" in q:
            dropped: list[str] = []
            matched = bind(parse(q["sysparm_query"]), _TableSchema(self, ctx.table), dropped).select(rows)
            self.dropped_terms.extend(f"{ctx.table}: {term}" for term in dropped)
        else:
            matched = self._filter_pairs(ctx.table, rows, q.items())
        total = len(matched)
        if ctx.version == "v1" and total == 0:
            raise _not_found()  # REFERENCE C.1: v1 answers an empty match with 404
        limit = _int_param(q.get("sysparm_limit"), DEFAULT_LIMIT)
        offset = _int_param(q.get("sysparm_offset"), 0, minimum=0)
        page = matched[offset : offset + limit]
        view = self._view(ctx.request, ctx.user)
        response = json_response({"result": [self._render(ctx.table, r, view) for r in page]})
        no_count = q.get("sysparm_no_count", "false").lower() == "true"
        if not no_count:
            response.headers["X-Total-Count"] = str(total)
        if q.get("sysparm_suppress_pagination_header", "false").lower() != "true":
            link = _link_header(ctx.request, offset, limit, None if no_count else total, len(page))
            if link:
                response.headers["Link"] = link
        return response

    def _filter_pairs(
        self, table: str, rows: list[dict[str, str]], params: Iterable[tuple[str, str]]
    ) -> list[dict[str, str]]:
        """Name-value pair filtering (REFERENCE C.2): raw values, or display values of choices/references."""
        schema = SCHEMAS[table]
        pairs = [(k, v) for k, v in params if not k.startswith("sysparm_") and k in schema]

        def keep(row: dict[str, str]) -> bool:
            for name, wanted in pairs:
                raw = row.get(name, "")
                column = schema[name]
                if raw == wanted:
                    continue
                if column.choice or column.kind == REFERENCE:
                    shown = self._display(table, row, name, column, raw)
                    if shown and shown.lower() == wanted.lower():
                        continue
                return False
            return True

        return [r for r in rows if keep(r)]

    async def _get(self, ctx: _Ctx) -> web.Response:
        record = self.tables[ctx.table].get(ctx.request.match_info["sys_id"])
        if record is None or not self._visible(ctx, record):
            raise _not_found()
        return self._record_response(ctx, record, 200)

    def _note_ignored(self, table: str, values: Mapping[str, str]) -> None:
        schema = SCHEMAS[table]
        self.ignored_fields.extend(f"{table}.{name}" for name in values if not self._writable(schema, name))

    async def _post(self, ctx: _Ctx) -> web.Response:
        values = await self._body(ctx)
        self._note_ignored(ctx.table, values)
        record = self._write(ctx.table, None, values, ctx.user.user_name, policy=True)
        return self._record_response(ctx, record, 201)

    async def _update(self, ctx: _Ctx) -> web.Response:
        current = self.tables[ctx.table].get(ctx.request.match_info["sys_id"])
        if current is None or not self._visible(ctx, current):
            raise _not_found()
        rules = TASKS.get(ctx.table)
        if rules is not None and current["state"] in rules.read_only and "admin" not in ctx.user.roles:
            # REFERENCE E.9: a closed ticket is read-only for itil users (journal entries included).
            raise Rejected(403, "Operation Failed", "ACL Exception Update Failed due to security constraints")
        values = await self._body(ctx)
        self._note_ignored(ctx.table, values)
        record = self._write(ctx.table, current, values, ctx.user.user_name, policy=True)
        return self._record_response(ctx, record, 200)

    async def _delete(self, ctx: _Ctx) -> web.Response:
        sys_id = ctx.request.match_info["sys_id"]
        record = self.tables[ctx.table].get(sys_id)
        if record is None or not self._visible(ctx, record):
            raise _not_found()
        del self.tables[ctx.table][sys_id]
        return web.Response(status=204)

    # --- HTTP: OAuth (REFERENCE C.7) --------------------------------------------------------

    async def _oauth(self, request: web.Request) -> web.Response:
        if self.hibernating:
            return _hibernating_page()
        denied = json_response({"error_description": "access_denied", "error": "server_error"}, 401)
        form = await request.post()

        def get(key: str) -> str:
            return str(form.get(key, ""))

        client_id = get("client_id")
        secret = self._oauth_clients.get(client_id)
        if secret is None or not hmac.compare_digest(secret, get("client_secret")):
            return denied
        grant = get("grant_type")
        now = self.clock.time()
        refresh: str | None
        if grant == "password":
            user = self._api_users.get(get("username"))
            if user is None or not hmac.compare_digest(user.password, get("password")):
                return denied
            refresh = secrets.token_urlsafe(48)
            self._refresh_tokens[refresh] = _Refresh(user.user_name, client_id, now + REFRESH_TOKEN_LIFETIME)
        elif grant == "refresh_token":
            refresh = get("refresh_token")
            stored = self._refresh_tokens.get(refresh)
            if stored is None or stored.client_id != client_id or stored.expires_at <= now:
                return denied
            user = self._api_users[stored.user_name]
        elif grant == "client_credentials":
            # Off unless the instance enables it (REFERENCE C.7, E.11). Measured on a live
            # instance: without the property the answer is access_denied/server_error, without
            # an OAuth Application User unauthorized_client (refractionPOINT/documentation#283).
            if not self.client_credentials_enabled:
                return denied
            app_user = self._api_users.get(self._oauth_app_users.get(client_id, ""))
            if app_user is None:
                body = {
                    "error_description": "integration user is not configured",
                    "error": "unauthorized_client",
                }
                return json_response(body, 401)
            user, refresh = app_user, None  # no refresh token for this grant (RFC 6749 4.4.3)
        else:
            return denied
        issued = self.tokens.issue(
            audience=self.audience,
            tenant=self.name,
            client_id=client_id,
            lifetime=ACCESS_TOKEN_LIFETIME,
            object_id=user.sys_id,
        )
        self._access_tokens[issued.token] = user.user_name
        answer: dict[str, Any] = {
            "scope": "useraccount",
            "token_type": "Bearer",
            "expires_in": ACCESS_TOKEN_LIFETIME,
            "access_token": issued.token,
        }
        if refresh is not None:
            answer["refresh_token"] = refresh
        return json_response(answer)


# --- module helpers -------------------------------------------------------------------------


def _hibernating_page() -> web.Response:
    """What a hibernating developer instance answers to any request: an HTML page, status 200
    (REFERENCE E.7; the status as reported, the wording is ours)."""
    page = (
        "<!DOCTYPE html><html><head><title>Instance Hibernating</title></head><body>"
        "<h1>Your instance is hibernating</h1><p>Sign in to the developer site to wake it up.</p>"
        "</body></html>"
    )
    return web.Response(status=200, text=page, content_type="text/html")


def _check_headers(request: web.Request, method: str) -> None:
    """REFERENCE C.1: writes need ``Accept`` and a JSON ``Content-Type``; only JSON is served."""
    accept = request.headers.get("Accept")
    if accept is None and method != "GET":
        raise Rejected(400, "Invalid request", "Missing Accept header")
    if accept is not None and not any(t in accept for t in ("application/json", "*/*", "application/*")):
        raise Rejected(406, "Not Acceptable", f"Unsupported Accept header {accept}")
    if method in ("POST", "PUT", "PATCH"):
        if "Content-Type" not in request.headers or request.content_type != "application/json":
            raise Rejected(400, "Invalid request", "Content-Type must be application/json")


def _as_string(name: Any, value: Any) -> str:
    """JSON scalars are stored as strings (REFERENCE C.4); null clears a field."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise Rejected(400, "Exception while reading request", f"Invalid value for field {name}")


def _int_param(value: str | None, default: int, minimum: int = 1) -> int:
    try:
        number = int(value) if value is not None else default
    except ValueError:
        return default
    return number if number >= minimum else default


def _link_header(request: web.Request, offset: int, limit: int, total: int | None, returned: int) -> str:
    """REFERENCE C.2/C.11: first/prev/next/last on the request's own host; none for one page."""
    if total is not None and offset == 0 and total <= limit:
        return ""
    has_next = offset + limit < total if total is not None else returned == limit
    rels: list[tuple[str, int]] = [("first", 0)]
    if offset > 0:
        rels.append(("prev", max(0, offset - limit)))
    if has_next:
        rels.append(("next", offset + limit))
    if total is not None:
        rels.append(("last", max(0, (total - 1) // limit * limit)))
    parts = []
    for rel, at in rels:
        url = request.url.update_query(sysparm_offset=str(at), sysparm_limit=str(limit))
        parts.append(f'<{url}>;rel="{rel}"')
    return ",".join(parts)
