"""The ini loader: every message kind, the example file, and the typed values it produces."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import config as cfg
from agent.config import Config, Secret, load_config, schema
from agent.config.convert import duration
from agent.errors import ConfigError
from agent.log import log

EXAMPLE = Path(__file__).resolve().parents[1] / "agent.example.ini"

TENANT = "0b5c8e1a-6a3f-4c53-9f1e-2d6c4f3b7a10"
CLIENT = "7d0e4c2b-1f6a-4e8b-b3c5-9a1d2e3f4a5b"
SUBSCRIPTION = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"
ENV = {"T_CLIENT_SECRET": "client-secret-value-1", "T_PASSWORD": "p%ss;w0rd-value"}

Sections = dict[str, dict[str, str | None] | None]


def base_sections() -> Sections:
    """The smallest valid file: one app, one instance, one workspace, all mappings defaulted."""
    return {
        "oauth:default": {"tenant_id": TENANT, "client_id": CLIENT, "client_secret_env": "T_CLIENT_SECRET"},
        "servicenow": {
            "instance_url": "https://snow.example",
            "username": "svc_sync",
            "password_env": "T_PASSWORD",
        },
        "workspace:soc-eu": {
            "subscription_id": SUBSCRIPTION,
            "resource_group": "rg-soc",
            "workspace_name": "law-soc",
        },
    }


def write_ini(folder: Path, changes: Sections | None = None, extra: str = "") -> Path:
    """Write the base file with ``changes`` merged in: a None section or key removes it."""
    sections = base_sections()
    for title, keys in (changes or {}).items():
        if keys is None:
            sections.pop(title, None)
            continue
        merged = {**(sections.get(title) or {}), **keys}
        sections[title] = {k: v for k, v in merged.items() if v is not None}
    lines: list[str] = []
    for title, keys in sections.items():
        lines.append(f"[{title}]")
        lines.extend(f"{key} = {value}" for key, value in (keys or {}).items())
        lines.append("")
    path = folder / "agent.ini"
    path.write_text("\n".join(lines) + extra, encoding="utf-8")
    return path


def load(
    folder: Path, changes: Sections | None = None, extra: str = "", env: Mapping[str, str] = ENV
) -> Config:
    return load_config(write_ini(folder, changes, extra), environ=env)


def problems(
    folder: Path, changes: Sections | None = None, extra: str = "", env: Mapping[str, str] = ENV
) -> list[str]:
    with pytest.raises(ConfigError, match=r"^\[[^\]]*\]") as caught:
        load(folder, changes, extra, env)
    assert caught.value.exit_code == 2
    return caught.value.problems


# --- The example file -----------------------------------------------------------------------


def test_example_ini_loads_and_documents_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNOW_SYNC_CLIENT_SECRET", "example-client-secret")
    monkeypatch.setenv("SNOW_SYNC_PASSWORD", "example-password")
    monkeypatch.setenv("SNOW_SYNC_US_CLIENT_SECRET", "example-us-secret")
    config = load_config(EXAMPLE)

    assert config.warnings == ()
    assert config.agent.state_db == EXAMPLE.parent / "sentinel-snow-sync.db"
    assert (config.agent.poll_interval, config.agent.overlap) == (60.0, 120.0)
    assert (config.agent.sweep_interval, config.agent.enrichment_delay) == (86400.0, 600.0)
    assert config.agent.metrics_listen is None and config.agent.custom_mapping is None
    app = config.oauth["default"]
    assert app.client_secret is not None and app.client_secret.reveal() == "example-client-secret"
    assert app.scope == "https://management.azure.com/.default"
    assert app.authority == "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000"
    snow = config.servicenow["default"]
    assert snow.password is not None and snow.password.reveal() == "example-password"
    assert (snow.auth, snow.caller_id, snow.unique_key) == ("basic", "svc_sentinel_sync", "correlation_id")
    assert config.servicenow["us"].auth == "oauth"
    eu, us = config.workspaces["soc-eu"], config.workspaces["soc-us"]
    assert (eu.incident_filter, eu.assignment_group, eu.enabled) == (("snow",), "SOC Tier 1", True)
    assert (us.servicenow, us.enabled, us.incident_filter) == ("us", False, ())
    assert config.servicenow_for("soc-us").instance_url == "https://example-us.service-now.com"
    # The example spells out the defaults; they must stay identical to the built-in ones.
    maps = config.mappings
    assert maps.severity_to_servicenow == cfg.DEFAULT_SEVERITY_TO_SERVICENOW
    assert maps.severity_to_sentinel == cfg.DEFAULT_SEVERITY_TO_SENTINEL
    assert maps.status_to_servicenow == cfg.DEFAULT_STATUS_TO_SERVICENOW
    assert maps.status_to_sentinel == cfg.DEFAULT_STATUS_TO_SENTINEL
    assert maps.closure_to_servicenow == cfg.DEFAULT_CLOSURE_TO_SERVICENOW
    assert maps.closure_to_sentinel == cfg.DEFAULT_CLOSURE_TO_SENTINEL
    assert maps.owners_for("soc-us")["abel.tuter"] == "abel.tuter@us.tenant.example"
    assert maps.owners_for("soc-eu")["abel.tuter"] == "abel.tuter@tenant.example"


def test_example_ini_comments_every_key() -> None:
    known = {
        title: schema.BY_KIND[kind].known() or ()
        for title, kind in (
            ("agent", "agent"),
            ("oauth:default", "oauth"),
            ("servicenow", "servicenow"),
            ("workspace:soc-eu", "workspace"),
        )
    }
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    section = ""
    comments: dict[str, str] = {title: "" for title in known}
    set_keys: dict[str, set[str]] = {title: set() for title in known}
    above: dict[str, str] = {}
    for number, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip("[]")
        elif section not in known:
            continue
        elif line.startswith("#"):
            comments[section] += line + "\n"
        elif "=" in line:
            key = line.split("=", 1)[0].strip()
            assert lines[number - 1].startswith("#"), f"[{section}] {key} has no comment above it"
            set_keys[section].add(key)
            above[key] = "\n".join(text for text in lines[number - 3 : number] if text.startswith("#"))
    for title, keys in known.items():
        # Alternatives (client_secret_file, password, ...) may be documented in a comment only.
        missing = [k for k in keys if k not in set_keys[title] and k not in comments[title]]
        assert not missing, f"[{title}] does not document {missing}"
    assert "enabled = false freezes" in above["enabled"]
    assert "watermarks are frozen" in above["enabled"] and "resumes" in above["enabled"]


def test_example_ini_needs_its_secrets() -> None:
    with pytest.raises(ConfigError, match="SNOW_SYNC_CLIENT_SECRET is not set") as caught:
        load_config(EXAMPLE, environ={})
    assert caught.value.problems == [
        "[oauth:default] client_secret_env: environment variable SNOW_SYNC_CLIENT_SECRET is not set",
        "[servicenow] password_env: environment variable SNOW_SYNC_PASSWORD is not set",
        "[servicenow:us] client_secret_env: environment variable SNOW_SYNC_US_CLIENT_SECRET is not set",
    ]


# --- Defaults and typed values ----------------------------------------------------------------


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.path == tmp_path / "agent.ini"
    assert config.agent == cfg.AgentSettings(
        state_db=tmp_path / "sentinel-snow-sync.db",
        poll_interval=60.0,
        max_concurrency=8,
        page_size=200,
        log_level="info",
        log_format="json",
        ca_bundle=None,
        conflict_policy="newest",
        metrics_listen=None,
        dry_run=False,
        custom_mapping=None,
        overlap=120.0,
        sweep_interval=86400.0,
        open_check_interval=600.0,
        max_close_ratio=0.5,
        comment_field="work_notes",
        comment_format="text",
        writeback_label=True,
        enrichment_delay=600.0,
    )
    ws = config.workspaces["soc-eu"]
    assert (ws.oauth, ws.servicenow, ws.enabled, ws.incident_filter, ws.max_age_days) == (
        "default",
        "default",
        True,
        (),
        30,
    )
    assert config.mappings.closure_to_sentinel == cfg.DEFAULT_CLOSURE_TO_SENTINEL
    assert config.mappings.closure_for_sentinel("Some custom code") == ("Undetermined", None)
    assert config.warnings == ()


def test_typed_values_are_converted(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    (tmp_path / "db").mkdir()
    config = load(
        tmp_path,
        {
            "agent": {
                "state_db": "db/state.sqlite",
                "poll_interval": "90",
                "overlap": "0",
                "sweep_interval": "1.5h",
                "enrichment_delay": "1d",
                "max_concurrency": "64",
                "page_size": "1000",
                "log_level": "DEBUG",
                "dry_run": "yes",
                "writeback_label": "off",
                "ca_bundle": "ca.pem",
                "metrics_listen": "[::1]:9464",
                "custom_mapping": "site_hooks.mapping:adjust",
                "max_close_ratio": "0.25",
                "comment_format": "code",
            },
            "oauth:default": {"tenant_id": TENANT.upper()},
            "servicenow": {"instance_url": "https://snow.example:8443/"},
        },
    )
    agent = config.agent
    assert agent.state_db == tmp_path / "db" / "state.sqlite"
    assert (agent.poll_interval, agent.overlap, agent.sweep_interval, agent.enrichment_delay) == (
        90.0,
        0.0,
        5400.0,
        86400.0,
    )
    assert (agent.max_concurrency, agent.page_size, agent.log_level) == (64, 1000, "debug")
    assert (agent.dry_run, agent.writeback_label, agent.comment_format) == (True, False, "code")
    assert agent.ca_bundle == tmp_path / "ca.pem"
    assert agent.metrics_listen == ("::1", 9464)
    assert agent.custom_mapping == "site_hooks.mapping:adjust"
    assert agent.max_close_ratio == 0.25
    assert config.oauth["default"].tenant_id == TENANT
    assert config.servicenow["default"].instance_url == "https://snow.example:8443"


@given(
    number=st.integers(min_value=0, max_value=86400), unit=st.sampled_from(["", "s", "m", "h", "d", "M", "H"])
)
def test_duration_forms(number: int, unit: str) -> None:
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit.lower()]
    convert = duration(0, 86400 * 86400)
    assert convert(f"{number}{unit}") == number * factor


# --- One test per message kind ---------------------------------------------------------------


def test_unknown_section_with_did_you_mean(tmp_path: Path) -> None:
    assert problems(
        tmp_path, {"agnet": {}, "workspaces:soc-us": {}, "totally_unrelated": {}, "DEFAULT": {}}
    ) == [
        "[agnet]: unknown section (did you mean [agent]?)",
        "[workspaces:soc-us]: unknown section (did you mean [workspace:soc-us]?)",
        "[totally_unrelated]: unknown section",
        "[DEFAULT]: unknown section; shared defaults are not supported, set each key in its own section",
    ]


def test_unknown_key_with_did_you_mean(tmp_path: Path) -> None:
    assert problems(
        tmp_path, {"agent": {"poll_intervall": "60s", "Log_Level": "info", "colour": "blue"}}
    ) == [
        "[agent] poll_intervall: unknown key (did you mean poll_interval?)",
        "[agent] Log_Level: unknown key (did you mean log_level?)",
        "[agent] colour: unknown key",
    ]


def test_bad_duration(tmp_path: Path) -> None:
    assert problems(
        tmp_path, {"agent": {"poll_interval": "5 minutes", "overlap": "2w", "sweep_interval": "0"}}
    ) == [
        "[agent] poll_interval: '5 minutes' is not a duration (use e.g. 90, 90s, 5m, 24h or 1d)",
        "[agent] overlap: '2w' is not a duration (use e.g. 90, 90s, 5m, 24h or 1d)",
        "[agent] sweep_interval: 0 is out of range (1s to 30d)",
    ]


def test_bad_int_and_bounds(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        {
            "agent": {"max_concurrency": "eight", "page_size": "5000"},
            "workspace:soc-eu": {"max_age_days": "0"},
        },
    ) == [
        "[agent] max_concurrency: 'eight' is not a whole number",
        "[agent] page_size: 5000 is out of range (1 to 1000)",
        "[workspace:soc-eu] max_age_days: 0 is out of range (1 to 3650)",
    ]


def test_bad_bool(tmp_path: Path) -> None:
    assert problems(
        tmp_path, {"agent": {"dry_run": "maybe"}, "workspace:soc-eu": {"enabled": "enabled"}}
    ) == [
        "[agent] dry_run: 'maybe' is not a boolean (use true or false)",
        "[workspace:soc-eu] enabled: 'enabled' is not a boolean (use true or false)",
    ]


def test_bad_enum(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        {"agent": {"conflict_policy": "newer", "log_format": "xml"}, "oauth:default": {"cloud": "germany"}},
    ) == [
        "[agent] log_format: 'xml' is not one of json, text",
        "[agent] conflict_policy: 'newer' is not one of newest, sentinel, servicenow (did you mean newest?)",
        "[oauth:default] cloud: 'germany' is not one of public, usgov, china",
    ]


def test_bad_url(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        {
            "oauth:default": {
                "authority_host": "http://login.microsoftonline.com",
                "management_url": "https://",
            },
            "servicenow": {"instance_url": "https://snow.example/api/now"},
        },
    ) == [
        "[oauth:default] authority_host: 'http://login.microsoftonline.com' must be an https:// URL"
        " (TLS is always on)",
        "[oauth:default] management_url: 'https://' must be https://host[:port] without credentials",
        "[servicenow] instance_url: 'https://snow.example/api/now' must be https://host[:port]"
        " without a path, query or fragment",
    ]


def test_bare_host_url_gets_https(tmp_path: Path) -> None:
    config = load(tmp_path, {"servicenow": {"instance_url": "Snow.Example"}})
    assert config.servicenow["default"].instance_url == "https://snow.example"


def test_bad_host_port_module_function_and_guid(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        {
            "agent": {"metrics_listen": "9464", "custom_mapping": "my-hooks.map"},
            "oauth:default": {"client_id": "not-a-guid"},
            "workspace:soc-eu": {"subscription_id": "1234"},
        },
    ) == [
        "[agent] metrics_listen: '9464' is not host:port (e.g. 127.0.0.1:9464)",
        "[agent] custom_mapping: 'my-hooks.map' is not package.module:function",
        "[oauth:default] client_id: 'not-a-guid' is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
        "[workspace:soc-eu] subscription_id: '1234' is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
    ]


def test_missing_required_key(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        {
            "oauth:default": {"tenant_id": None},
            "servicenow": {"instance_url": ""},
            "workspace:soc-eu": {"resource_group": None, "workspace_name": None},
        },
    ) == [
        "[oauth:default] tenant_id: required",
        "[servicenow] instance_url: required",
        "[workspace:soc-eu] resource_group: required",
        "[workspace:soc-eu] workspace_name: required",
    ]


def test_missing_sections(tmp_path: Path) -> None:
    assert problems(tmp_path, {"servicenow": None, "workspace:soc-eu": None}) == [
        "[servicenow]: at least one [servicenow] section is required",
        "[workspace]: at least one [workspace:NAME] or [defender:NAME] section is required",
    ]


def test_secret_env_var_missing_or_empty(tmp_path: Path) -> None:
    assert problems(tmp_path, env={"T_PASSWORD": ""}) == [
        "[oauth:default] client_secret_env: environment variable T_CLIENT_SECRET is not set",
        "[servicenow] password_env: environment variable T_PASSWORD is empty",
    ]


def test_secret_file_unreadable(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    found = problems(
        tmp_path,
        {
            "oauth:default": {"client_secret_env": None, "client_secret_file": "missing.txt"},
            "servicenow": {"password_env": None, "password_file": "folder"},
        },
    )
    assert found == [
        f"[oauth:default] client_secret_file: cannot read {tmp_path / 'missing.txt'}:"
        " No such file or directory",
        f"[servicenow] password_file: cannot read {tmp_path / 'folder'}: Is a directory",
    ]


def test_two_secret_forms_and_none(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        {
            "oauth:default": {"client_secret": "inline-secret-value"},
            "servicenow": {"password_env": None},
        },
    ) == [
        "[oauth:default] client_secret: set only one of client_secret_env, client_secret",
        "[servicenow] password: required with auth = basic: set password_env, password_file or password",
    ]


def test_secret_file_readable_by_others_warns(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("file-secret-value\n", encoding="utf-8")
    changes: Sections = {"oauth:default": {"client_secret_env": None, "client_secret_file": "secret.txt"}}

    os.chmod(secret_file, 0o644)
    config = load(tmp_path, changes)
    assert config.warnings == (
        f"[oauth:default] client_secret_file: {secret_file} is readable by group/others;"
        " restrict it with chmod 600",
    )
    secret = config.oauth["default"].client_secret
    assert secret is not None and secret.reveal() == "file-secret-value"

    os.chmod(secret_file, 0o600)
    assert load(tmp_path, changes).warnings == ()


def test_plain_secret_keeps_percent_and_inline_comment_is_stripped(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "servicenow": {"password_env": None, "password": "50%off;not-a-comment ; a comment"},
            "agent": {"poll_interval": "30s ; every half minute"},
        },
    )
    password = config.servicenow["default"].password
    assert password is not None and password.reveal() == "50%off;not-a-comment"
    assert config.agent.poll_interval == 30.0


def test_secret_never_prints_and_is_redacted_from_logs() -> None:
    secret = Secret("registered-secret-value")
    assert repr(secret) == "***" and str(secret) == "***" and f"{secret}" == "***"
    assert "registered-secret-value" not in repr(
        cfg.OAuthApp("a", TENANT, CLIENT, secret, None, "public", "", "", "", "")
    )
    records: list[dict[str, Any]] = []
    log.sinks.append(records.append)
    try:
        log.debug("leak_test", detail=f"token={secret.reveal()}")
    finally:
        log.sinks.remove(records.append)
    assert records[-1]["detail"] == "token=***"


def test_workspace_naming_unknown_oauth_or_servicenow(tmp_path: Path) -> None:
    assert problems(
        tmp_path, {"workspace:soc-eu": {"oauth": "defualt", "servicenow": "emea"}, "servicenow:us": {}}
    ) == [
        "[servicenow:us] instance_url: required",
        "[servicenow:us] username: required with auth = basic",
        "[servicenow:us] password: required with auth = basic: set password_env, password_file or password",
        "[workspace:soc-eu] oauth: no [oauth:defualt] section (did you mean default?)",
        "[workspace:soc-eu] servicenow: no [servicenow:emea] section (defined: default, us)",
    ]


def test_servicenow_oauth_needs_client_id_and_secret(tmp_path: Path) -> None:
    assert problems(tmp_path, {"servicenow": {"auth": "oauth", "password_env": None}}) == [
        "[servicenow] password: the OAuth password grant needs both",
        "[servicenow] client_id: required with auth = oauth",
        "[servicenow] client_secret: required with auth = oauth: set client_secret_env,"
        " client_secret_file or client_secret",
    ]


def test_servicenow_oauth_client_credentials(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "servicenow": {
                "auth": "oauth",
                "username": None,
                "password_env": None,
                "client_id": "abc123",
                "client_secret_env": "T_PASSWORD",
            }
        },
    )
    snow = config.servicenow["default"]
    assert (snow.username, snow.password, snow.client_id) == (None, None, "abc123")
    assert snow.client_secret is not None and snow.client_secret.reveal() == ENV["T_PASSWORD"]


def test_oauth_app_needs_exactly_one_credential(tmp_path: Path) -> None:
    pem = tmp_path / "app.pem"
    pem.write_text("-----BEGIN PRIVATE KEY-----\n", encoding="utf-8")
    os.chmod(pem, 0o600)
    assert problems(tmp_path, {"oauth:default": {"certificate_file": "app.pem"}}) == [
        "[oauth:default] certificate_file: set either a client secret or certificate_file, not both",
    ]
    assert problems(tmp_path, {"oauth:default": {"client_secret_env": None}}) == [
        "[oauth:default] client_secret: required: set client_secret_env, client_secret_file,"
        " client_secret or certificate_file",
    ]
    config = load(tmp_path, {"oauth:default": {"client_secret_env": None, "certificate_file": "app.pem"}})
    assert (config.oauth["default"].certificate_file, config.oauth["default"].client_secret) == (pem, None)
    assert config.warnings == ()


def test_referenced_files_must_exist(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        {
            "agent": {"state_db": "no-such-folder/state.db", "ca_bundle": "ca.pem"},
            "oauth:default": {"client_secret_env": None, "certificate_file": "~/../no-such.pem"},
        },
    ) == [
        f"[agent] state_db: folder {tmp_path / 'no-such-folder'} does not exist",
        f"[agent] ca_bundle: {tmp_path / 'ca.pem'} is not a readable file",
        f"[oauth:default] certificate_file: {Path('~/../no-such.pem').expanduser()} is not a readable file",
    ]


def test_bare_oauth_section_is_the_default_app(tmp_path: Path) -> None:
    app = base_sections()["oauth:default"]
    config = load(tmp_path, {"oauth:default": None, "oauth": app})
    assert config.oauth["default"].client_id == CLIENT
    assert problems(tmp_path, {"oauth": app}) == ["[oauth]: duplicates [oauth:default]"]


def test_incomplete_mapping(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        {
            "severity_to_servicenow": {"High": "1", "Medium": "2", "Low": "3"},
            "closure_to_servicenow": {"TruePositive": "Solution provided", "Benign": "Resolved by caller"},
        },
    ) == [
        "[severity_to_servicenow] Informational: missing; a present section replaces the defaults"
        " and must map every Sentinel severity",
        "[closure_to_servicenow] Benign: unknown key (did you mean BenignPositive?)",
        "[closure_to_servicenow] Undetermined: missing; a present section replaces the defaults"
        " and must map every Sentinel classification",
        "[closure_to_servicenow] BenignPositive: missing; a present section replaces the defaults"
        " and must map every Sentinel classification",
        "[closure_to_servicenow] FalsePositive: missing; a present section replaces the defaults"
        " and must map every Sentinel classification",
    ]


def test_present_mapping_replaces_default(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "severity_to_servicenow": {"High": "1", "Medium": "1", "Low": "2", "Informational": "3"},
            "severity_to_sentinel": {"1": "High", "2": "Low", "3": "Informational"},
        },
    )
    assert config.mappings.severity_to_sentinel == {"1": "High", "2": "Low", "3": "Informational"}
    assert config.mappings.status_to_sentinel == cfg.DEFAULT_STATUS_TO_SENTINEL


def test_bad_enum_values_in_mappings(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        {
            "severity_to_sentinel": {"1": "high", "2": "Medium", "3": "Low"},
            "status_to_sentinel": {"1": "Open"},
        },
    ) == [
        "[severity_to_sentinel] 1: 'high' is not one of High, Medium, Low, Informational"
        " (did you mean High?)",
        "[status_to_sentinel] 1: 'Open' is not one of New, Active, Closed",
        "[severity_to_sentinel] 1: no row, but [severity_to_servicenow] High writes it",
        "[status_to_sentinel]: must map at least one state to Closed and one to New or Active",
        "[status_to_sentinel] 1: no row, but [status_to_servicenow] New writes it",
        "[status_to_sentinel] 2: no row, but [status_to_servicenow] Active writes it",
        "[status_to_sentinel] 6: no row, but [status_to_servicenow] Closed writes it",
    ]


def test_status_closed_must_be_a_resolved_or_closed_state(tmp_path: Path) -> None:
    assert problems(tmp_path, {"status_to_servicenow": {"New": "1", "Active": "6", "Closed": "3"}}) == [
        "[status_to_servicenow] Active: 6 reads back as Closed via [status_to_sentinel]",
        "[status_to_servicenow] Closed: 3 reads back as Active via [status_to_sentinel]",
        "[status_to_servicenow] Closed: '3' is not a resolved/closed state (6 Resolved or 7 Closed)",
        "[status_to_servicenow] Active: 6 is a resolved/closed state",
    ]


def test_custom_status_field_skips_state_check(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "servicenow": {"status_field": "u_status"},
            "status_to_servicenow": {"New": "open", "Active": "working", "Closed": "done"},
            "status_to_sentinel": {"open": "New", "working": "Active", "done": "Closed"},
        },
    )
    assert config.mappings.status_to_servicenow["Closed"] == "done"


def test_bad_closure_value(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        {
            "closure_to_sentinel": {
                "Solution provided": "TruePositiv/SuspiciousActivity",
                "Resolved by caller": "BenignPositive/SuspiciousButExpectd",
                "Known error": "TruePositive/IncorrectAlertLogic",
                "Duplicate": "Undetermined/InaccurateData",
                "*": "",
            }
        },
    ) == [
        "[closure_to_sentinel] Solution provided: 'TruePositiv' is not a classification (Undetermined,"
        " TruePositive, BenignPositive, FalsePositive) (did you mean TruePositive?)",
        "[closure_to_sentinel] Resolved by caller: 'SuspiciousButExpectd' is not a classification reason"
        " (SuspiciousActivity, SuspiciousButExpected, IncorrectAlertLogic, InaccurateData)"
        " (did you mean SuspiciousButExpected?)",
        "[closure_to_sentinel] Known error: TruePositive/IncorrectAlertLogic is not a pair Sentinel accepts;"
        " use TruePositive/SuspiciousActivity",
        "[closure_to_sentinel] Duplicate: Undetermined/InaccurateData is not a pair Sentinel accepts;"
        " use Undetermined",
        "[closure_to_sentinel] *: empty value; use Classification[/Reason]",
    ]


def test_determined_classification_without_reason(tmp_path: Path) -> None:
    assert problems(
        tmp_path, {"closure_to_sentinel": {"Solution provided": "FalsePositive", "*": "Undetermined"}}
    ) == [
        "[closure_to_sentinel] Solution provided: FalsePositive needs a reason, e.g."
        " FalsePositive/InaccurateData or FalsePositive/IncorrectAlertLogic",
    ]


def test_incident_filter_takes_several_labels(tmp_path: Path) -> None:
    config = load(tmp_path, {"workspace:soc-eu": {"incident_filter": "snow, soc-escalate ,snow,, VIP"}})
    assert config.workspaces["soc-eu"].incident_filter == ("snow", "soc-escalate", "VIP")


def test_closure_to_sentinel_without_star_row_defaults_to_undetermined(tmp_path: Path) -> None:
    # Close codes are an open, instance-defined set: a user lists the ones they use (issue #13).
    config = load(tmp_path, {"closure_to_sentinel": {"Solution provided": "TruePositive/SuspiciousActivity"}})
    maps = config.mappings
    assert maps.closure_to_sentinel == {
        "Solution provided": ("TruePositive", "SuspiciousActivity"),
        "*": ("Undetermined", None),
    }
    assert maps.closure_for_sentinel("Solved (Permanently)") == ("Undetermined", None)
    assert not maps.closure_catch_all_written
    assert maps.closure_falls_back("Solved (Permanently)")
    assert not maps.closure_falls_back("Solution provided")
    assert config.warnings == ()


def test_closure_to_sentinel_written_star_row_is_the_users_choice(tmp_path: Path) -> None:
    config = load(
        tmp_path, {"closure_to_sentinel": {"Solution provided": "TruePositive/SuspiciousActivity",
                                           "*": "BenignPositive/SuspiciousButExpected"}}
    )  # fmt: skip
    maps = config.mappings
    assert maps.closure_catch_all_written
    assert maps.closure_for_sentinel("Anything") == ("BenignPositive", "SuspiciousButExpected")
    assert not maps.closure_falls_back("Anything")


def test_default_closure_map_reports_codes_it_does_not_list(tmp_path: Path) -> None:
    maps = load(tmp_path).mappings
    assert not maps.closure_catch_all_written
    assert not maps.closure_falls_back("Resolved by caller")
    assert maps.closure_falls_back("Solved (Permanently)")
    assert maps.closure_for_sentinel("Solved (Permanently)") == ("Undetermined", None)


def test_closure_to_sentinel_section_replaces_default(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "closure_to_sentinel": {
                "Solved (Permanently)": "TruePositive / SuspiciousActivity",
                "*": "Undetermined",
            }
        },
    )
    maps = config.mappings
    assert maps.closure_to_sentinel == {
        "Solved (Permanently)": ("TruePositive", "SuspiciousActivity"),
        "*": ("Undetermined", None),
    }
    assert maps.closure_for_sentinel("Solution provided") == ("Undetermined", None)


@pytest.mark.parametrize(
    ("cloud", "authority_host", "management_url", "portal_host"),
    [
        ("public", "https://login.microsoftonline.com", "https://management.azure.com", "portal.azure.com"),
        (
            "usgov",
            "https://login.microsoftonline.us",
            "https://management.usgovcloudapi.net",
            "portal.azure.us",
        ),
        ("china", "https://login.chinacloudapi.cn", "https://management.chinacloudapi.cn", "portal.azure.cn"),
    ],
)
def test_cloud_presets(
    tmp_path: Path, cloud: str, authority_host: str, management_url: str, portal_host: str
) -> None:
    app = load(tmp_path, {"oauth:default": {"cloud": cloud}}).oauth["default"]
    assert (app.cloud, app.authority_host, app.management_url, app.portal_host) == (
        cloud,
        authority_host,
        management_url,
        portal_host,
    )
    assert app.scope == f"{management_url}/.default"
    assert app.authority == f"{authority_host}/{TENANT}"


def test_explicit_endpoints_override_cloud_preset(tmp_path: Path) -> None:
    app = load(
        tmp_path,
        {
            "oauth:default": {
                "cloud": "usgov",
                "authority_host": "https://127.0.0.1:8443",
                "management_url": "https://127.0.0.1:9443/",
            }
        },
    ).oauth["default"]
    assert (app.authority_host, app.management_url, app.portal_host) == (
        "https://127.0.0.1:8443",
        "https://127.0.0.1:9443",
        "portal.azure.us",
    )
    assert app.scope == "https://127.0.0.1:9443/.default"


def test_optionxform_keeps_case(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        {
            "severity_to_servicenow": {
                "high": "1",
                "High": "1",
                "Medium": "2",
                "Low": "3",
                "Informational": "3",
            }
        },
    ) == ["[severity_to_servicenow] high: unknown key (did you mean High?)"]
    config = load(tmp_path, {"owners": {"Abel.Tuter": "Abel.Tuter@Tenant.Example"}})
    assert config.mappings.owners == {"Abel.Tuter": "Abel.Tuter@Tenant.Example"}


def test_owners_per_workspace_and_reverse(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "workspace:soc-us": {
                "subscription_id": SUBSCRIPTION,
                "resource_group": "rg-us",
                "workspace_name": "law-us",
            },
            "owners": {"abel.tuter": "Abel.Tuter@tenant.example", "beth.anglin": "beth@tenant.example"},
            "owners:soc-us": {"abel.tuter": "abel@us.tenant.example"},
        },
    )
    maps = config.mappings
    assert maps.owners_for("soc-eu") == {
        "abel.tuter": "Abel.Tuter@tenant.example",
        "beth.anglin": "beth@tenant.example",
    }
    assert maps.owners_for("soc-us") == {
        "abel.tuter": "abel@us.tenant.example",
        "beth.anglin": "beth@tenant.example",
    }
    assert maps.users_for("soc-eu") == {
        "abel.tuter@tenant.example": "abel.tuter",
        "beth@tenant.example": "beth.anglin",
    }
    assert maps.users_for("soc-us")["abel@us.tenant.example"] == "abel.tuter"


def test_owners_problems(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        {
            "owners": {"abel.tuter": "abel@tenant.example", "abel2": "ABEL@tenant.example", "carl": "carl"},
            "owners:soc-ue": {"abel.tuter": "abel@tenant.example"},
        },
    ) == [
        "[owners] carl: 'carl' is not a user principal name (user@domain)",
        "[owners] abel2: ABEL@tenant.example is also mapped from abel.tuter;"
        " each UPN may belong to one ServiceNow user",
        "[owners:soc-ue]: no [workspace:soc-ue] section (did you mean [owners:soc-eu]?)",
    ]


def test_workspace_owners_checked_against_global_rows_in_any_order(tmp_path: Path) -> None:
    extra = "[owners:soc-eu]\nbeth.anglin = abel@tenant.example\n[owners]\nabel.tuter = abel@tenant.example\n"
    assert problems(tmp_path, extra=extra) == [
        "[owners:soc-eu] beth.anglin: abel@tenant.example is also mapped from abel.tuter;"
        " each UPN may belong to one ServiceNow user",
    ]


def test_duplicate_default_instance_and_bad_section_names(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        {"servicenow:default": {"instance_url": "https://other.example"}, "workspace": {}, "agent:x": {}},
    ) == [
        "[servicenow:default]: duplicates [servicenow]",
        "[workspace]: name the workspace: [workspace:NAME]",
        "[agent:x]: [agent] takes no name",
    ]


def test_unused_instance_and_all_disabled_warn(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "servicenow:spare": {
                "instance_url": "https://spare.example",
                "username": "u",
                "password": "spare-pass",
            },
            "workspace:soc-eu": {"enabled": "false"},
        },
    )
    assert config.warnings == (
        "[servicenow:spare]: not used by any workspace",
        "[workspace]: every workspace is disabled (enabled = false); nothing will sync",
    )


def test_indented_continuation_line_is_reported(tmp_path: Path) -> None:
    assert problems(tmp_path, extra="[agent]\npoll_interval = 60s\n  max_concurrency = 8\n") == [
        "[agent] poll_interval: value spans several lines (is the next line indented by mistake?)",
    ]


def test_missing_file_is_one_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file") as caught:
        load_config(tmp_path / "nope.ini")
    assert caught.value.problems == [
        f"{tmp_path / 'nope.ini'}: cannot read the configuration file (No such file or directory)"
    ]


def test_parse_errors_are_one_problem_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.ini"
    cases = {
        "poll_interval = 1\n[agent]\n": f"{path}: line 1: text before the first [section] header",
        "[agent]\nthis line has no equals sign\n": f"{path}: cannot parse line 2"
        " ('this line has no equals sign'); write key = value",
        "[agent]\n[agent]\n": f"{path}: line 2: section [agent] appears twice",
        "[agent]\ndry_run = true\ndry_run = false\n": f"{path}: line 3: [agent] dry_run is set twice",
    }
    for text, expected in cases.items():
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match=re.escape(f"{path}: ")) as caught:
            load_config(path, environ=ENV)
        assert caught.value.problems == [expected]


def test_several_problems_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        {
            "agent": {"poll_interval": "soon", "page_size": "0", "comment_field": "notes"},
            "agents": {},
            "oauth:default": {"tenant_id": "contoso"},
            "servicenow": {"instance_url": "http://snow.example"},
            "workspace:soc-eu": {"servicenow": "eu", "max_age": "30"},
            "closure_to_sentinel": {"Solution provided": "TruePositive"},
        },
        env={},
    )
    assert found == [
        "[agents]: unknown section (did you mean [agent]?)",
        "[agent] poll_interval: 'soon' is not a duration (use e.g. 90, 90s, 5m, 24h or 1d)",
        "[agent] page_size: 0 is out of range (1 to 1000)",
        "[agent] comment_field: 'notes' is not one of work_notes, comments (did you mean work_notes?)",
        "[oauth:default] tenant_id: 'contoso' is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
        "[oauth:default] client_secret_env: environment variable T_CLIENT_SECRET is not set",
        "[servicenow] instance_url: 'http://snow.example' must be an https:// URL (TLS is always on)",
        "[servicenow] password_env: environment variable T_PASSWORD is not set",
        "[workspace:soc-eu] max_age: unknown key (did you mean max_age_days?)",
        "[workspace:soc-eu] servicenow: no [servicenow:eu] section (defined: default)",
        "[closure_to_sentinel] Solution provided: TruePositive needs a reason,"
        " e.g. TruePositive/SuspiciousActivity",
    ]
    assert str(ConfigError(found)).count("\n") == len(found) - 1


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load(tmp_path)
    with pytest.raises(AttributeError, match="cannot assign to field 'dry_run'"):
        config.agent.dry_run = True  # type: ignore[misc]


def test_secret_file_path_expands_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name, value in (
        ("client_secret", "secret-from-systemd-1"),
        ("snow_password", "password-from-systemd"),
    ):
        (creds / name).write_text(value + "\n")
        os.chmod(creds / name, 0o600)
    changes: Sections = {
        "oauth:default": {
            "client_secret_env": None,
            "client_secret_file": "$CREDENTIALS_DIRECTORY/client_secret",
        },
        "servicenow": {"password_env": None, "password_file": "${CREDENTIALS_DIRECTORY}/snow_password"},
    }
    config = load(tmp_path, changes, env={"CREDENTIALS_DIRECTORY": str(creds)})
    secret = config.oauth["default"].client_secret
    password = config.servicenow["default"].password
    assert secret is not None and secret.reveal() == "secret-from-systemd-1"
    assert password is not None and password.reveal() == "password-from-systemd"
    assert problems(tmp_path, changes, env={}) == [
        "[oauth:default] client_secret_file: environment variable CREDENTIALS_DIRECTORY is not set"
        " (systemd sets it for a unit with LoadCredential=)",
        "[servicenow] password_file: environment variable CREDENTIALS_DIRECTORY is not set"
        " (systemd sets it for a unit with LoadCredential=)",
    ]


def test_poll_interval_may_be_sub_second(tmp_path: Path) -> None:
    # Process-level tests cycle a real agent every 0.2 s; below 0.1 s is refused.
    assert load(tmp_path, {"agent": {"poll_interval": "0.2s"}}).agent.poll_interval == 0.2
    assert problems(tmp_path, {"agent": {"poll_interval": "0.05"}}) == [
        "[agent] poll_interval: 0.05 is out of range (0.1s to 1d)"
    ]



# --- Assignment groups and domains ----------------------------------------------------------------


def test_example_ini_assignment_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SNOW_SYNC_CLIENT_SECRET", "SNOW_SYNC_PASSWORD", "SNOW_SYNC_US_CLIENT_SECRET"):
        monkeypatch.setenv(name, "example-secret")
    maps = load_config(EXAMPLE).mappings
    assert maps.assignment_groups == (
        cfg.GroupRule("label", "Phishing", "Service Desk"),
        cfg.GroupRule("owner", "alice@tenant.example", "SOC Tier 2"),
        cfg.GroupRule("severity", "High", "SOC Tier 2"),
        cfg.GroupRule("*", "", "Security Operations"),
    )
    assert maps.assignment_groups_by_workspace == {
        "soc-us": (cfg.GroupRule("label", "Phishing", "US Service Desk"),)
    }


def test_assignment_group_rows_keep_file_order(tmp_path: Path) -> None:
    extra = (
        "\n[assignment_groups:soc-eu]\nowner:Tier 3 Group = Tier 3\n* = EU default\n"
        "[assignment_groups]\nseverity:Informational = Triage\nlabel:ransomware = IR\n"
    )
    maps = load(tmp_path, extra=extra).mappings
    assert [(r.kind, r.value, r.group) for r in maps.assignment_groups] == [
        ("severity", "Informational", "Triage"),
        ("label", "ransomware", "IR"),
    ]
    assert [(r.kind, r.value) for r in maps.assignment_groups_by_workspace["soc-eu"]] == [
        ("owner", "Tier 3 Group"),
        ("*", ""),
    ]


def test_assignment_group_problems(tmp_path: Path) -> None:
    extra = (
        "\n[assignment_groups]\ncolour:red = A\nlabel: = B\nseverity:Critical = C\nlable:x = D\n"
        "owner:bob@x.example =\n[assignment_groups:soc-ue]\n* = E\n"
    )
    assert problems(tmp_path, extra=extra) == [
        "[assignment_groups] colour:red: unknown row; write label:NAME, owner:UPN, severity:LEVEL or *",
        "[assignment_groups] label:: label: needs a value, e.g. label:x",
        "[assignment_groups] severity:Critical: 'Critical' is not a severity "
        "(High, Medium, Low, Informational)",
        "[assignment_groups] lable:x: unknown row (did you mean label:...?); "
        "write label:NAME, owner:UPN, severity:LEVEL or *",
        "[assignment_groups] owner:bob@x.example: empty value; write the ServiceNow assignment group's name",
        "[assignment_groups:soc-ue]: no [workspace:soc-ue] section "
        "(did you mean [assignment_groups:soc-eu]?)",
    ]


def test_sys_domain_is_a_domain_sys_id_or_global(tmp_path: Path) -> None:
    domain = "0f8b2c4d6e8f0a1b2c3d4e5f6a7b8c9d"
    ws = load(tmp_path, {"workspace:soc-eu": {"sys_domain": domain, "company": "ACME"}}).workspaces["soc-eu"]
    assert (ws.sys_domain, ws.company) == (domain, "ACME")
    top = load(tmp_path, {"workspace:soc-eu": {"sys_domain": "global"}}).workspaces["soc-eu"]
    assert top.sys_domain == "global"
    assert problems(tmp_path, {"workspace:soc-eu": {"sys_domain": "TOP/ACME"}}) == [
        "[workspace:soc-eu] sys_domain: 'TOP/ACME' is not a domain sys_id (32 hex digits) or global"
    ]
