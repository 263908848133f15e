"""The ``[servicenow:NAME]`` section: a ServiceNow instance, its credentials and its table
profile (this connector's part of the config schema)."""

from __future__ import annotations

from dataclasses import replace

from agent.config.convert import SNOW_NAME, choice, https_url, pattern, plain
from agent.config.model import Secret, ServiceNowInstance
from agent.config.schema import Loaded
from agent.config.section import Section
from agent.connectors.entra_section import secret_keys
from agent.connectors.servicenow.profiles import PROFILES, TABLE_PROFILES, TableProfile

SNOW_KEYS = (
    "instance_url",
    "auth",
    "username",
    "password_env",
    "password_file",
    "password",
    "client_id",
    "client_secret_env",
    "client_secret_file",
    "client_secret",
    "incident_table",
    "unique_key",
    "severity_field",
    "status_field",
    "caller_id",
    "table_profile",
    "resolved_states",
    "closed_states",
    "cancelled_states",
    "close_code_field",
    "close_notes_field",
    "caller_field",
    "follow_up_field",
    "reopen_closed",
)


_SnowCredentials = tuple[str | None, Secret | None, str | None, Secret | None]


def _snow_credentials(sec: Section, auth: str) -> _SnowCredentials:
    """``(username, password, client_id, client_secret)`` as ``auth`` needs them."""
    username = sec.optional("username", plain)
    password = sec.secret("password")
    has_password = sec.is_set(*secret_keys("password"))
    if auth == "basic":
        if username is None:
            sec.problem("username", "required with auth = basic")
        if not has_password:
            sec.problem("password", "required with auth = basic: set password_env, password_file or password")
        for key in ("client_id", *secret_keys("client_secret")):
            if sec.is_set(key):
                sec.warn(key, "ignored with auth = basic")
        return username, password, None, None
    if sec.is_set("username") != has_password:
        # Password grant needs both; client credentials needs neither (REFERENCE C.7).
        sec.problem("username" if has_password else "password", "the OAuth password grant needs both")
    client_id = sec.optional("client_id", plain)
    client_secret = sec.secret("client_secret")
    if client_id is None:
        sec.problem("client_id", "required with auth = oauth")
    if not sec.is_set(*secret_keys("client_secret")):
        sec.problem(
            "client_secret",
            "required with auth = oauth: set client_secret_env, client_secret_file or client_secret",
        )
    return username, password, client_id, client_secret


SNOW_NAME_RULE = pattern(SNOW_NAME, "a ServiceNow table/field name (lower-case letters, digits, _)")


def read_servicenow(sec: Section, name: str, loaded: Loaded | None = None) -> ServiceNowInstance:
    instance_url = sec.required("instance_url", https_url, "")
    auth = sec.get("auth", choice("basic", "oauth"), "basic")
    username, password, client_id, client_secret = _snow_credentials(sec, auth)
    table = sec.get("incident_table", SNOW_NAME_RULE, "incident")
    profile = _read_profile(sec, table)
    return ServiceNowInstance(
        name=name,
        instance_url=instance_url,
        auth=auth,
        username=username,
        password=password,
        client_id=client_id,
        client_secret=client_secret,
        incident_table=table,
        unique_key=sec.get("unique_key", SNOW_NAME_RULE, "correlation_id"),
        severity_field=sec.get("severity_field", SNOW_NAME_RULE, profile.severity_field),
        status_field=sec.get("status_field", SNOW_NAME_RULE, "state"),
        caller_id=sec.optional("caller_id", plain),
        profile=profile,
        reopen_closed=sec.get("reopen_closed", choice("follow_up", "note"), "follow_up"),
    )


def _states(text: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not values or any(not v.replace("-", "").isalnum() for v in values):
        raise ValueError(f"{text!r} is not a comma-separated list of state values (e.g. 6 or 3, 7)")
    return values


def _read_profile(sec: Section, table: str) -> TableProfile:
    """The table profile (REFERENCE E.5): chosen by ``table_profile`` or by the table's name, with
    the ``[servicenow]`` keys that override its states and fields."""
    chosen = sec.get("table_profile", choice(*PROFILES), TABLE_PROFILES.get(table, "custom"))
    base = PROFILES[chosen]
    follow_up = sec.text("follow_up_field")
    profile = replace(
        base,
        resolved_states=sec.get("resolved_states", _states, base.resolved_states),
        closed_states=sec.get("closed_states", _states, base.closed_states),
        cancelled_states=sec.get("cancelled_states", _states, base.cancelled_states),
        close_code_field=sec.get("close_code_field", SNOW_NAME_RULE, base.close_code_field),
        close_notes_field=sec.get("close_notes_field", SNOW_NAME_RULE, base.close_notes_field),
        caller_field=sec.get("caller_field", SNOW_NAME_RULE, base.caller_field),
        follow_up_field=""
        if follow_up == "none"
        else sec.get("follow_up_field", SNOW_NAME_RULE, base.follow_up_field),
    )
    if not profile.closing_states:
        hint = (
            f"incident_table = {table} uses table_profile = custom: set closed_states (and "
            "resolved_states / cancelled_states) to the table's state values"
        )
        sec.problem("closed_states", f"required: {hint}" if chosen == "custom" else "no closing state left")
    overlap = set(profile.resolved_states) & set(profile.read_only_states)
    if overlap:
        sec.problem("resolved_states", f"{', '.join(sorted(overlap))} is also a closed or cancelled state")
    return profile
