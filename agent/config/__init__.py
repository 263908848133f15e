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
    [workspace:NAME]              a Sentinel workspace to sync (at least one)
    [severity_to_servicenow] [severity_to_sentinel] [status_to_servicenow] [status_to_sentinel]
    [closure_to_servicenow] [closure_to_sentinel]   value maps; a present section replaces the
                                  default of the instance's table profile; [KIND:INSTANCE] applies
                                  to one ServiceNow instance and wins there
    [owners] / [owners:WORKSPACE] ServiceNow user_name = Entra UPN
    [assignment_groups] / [assignment_groups:WORKSPACE]   label:/owner:/severity:/* = group name

Secrets (``client_secret``, ``password``) come from exactly one of ``<name>_env`` (an environment
variable), ``<name>_file`` (a file, relative to the ini's folder) or ``<name>`` (the value).
They are held in :class:`Secret` and registered for log redaction as soon as they are read.
"""

from __future__ import annotations

import ast
import configparser
import difflib
import keyword
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from agent.connectors.servicenow.profiles import ITSM, PROFILES, TABLE_PROFILES, TableProfile
from agent.errors import ConfigError
from agent.log import register_secret
from agent.store import StoreTarget, parse_target

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
    "GroupRule",
    "Mappings",
    "OAuthApp",
    "Secret",
    "ServiceNowInstance",
    "Workspace",
    "load_config",
]

T = TypeVar("T")

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

    def oauth_for(self, workspace: str) -> OAuthApp:
        """The Entra app a workspace uses."""
        return self.oauth[self.workspaces[workspace].oauth]

    def servicenow_for(self, workspace: str) -> ServiceNowInstance:
        """The ServiceNow instance a workspace syncs with."""
        return self.servicenow[self.workspaces[workspace].servicenow]


# --- Converters: str -> value, raising ValueError(message for the user) -----------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$", re.IGNORECASE | re.ASCII)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_BOOLS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}
_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(?:-preview)?$")
_SECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SNOW_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_RESOURCE_GROUP = re.compile(r"^[-\w.()]{1,90}$")
_WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
_UPN = re.compile(r"^[^@\s]+@[^@\s]+$")
_DOMAIN = re.compile(r"^(?:global|[0-9a-f]{32})$")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _human_duration(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= _UNIT_SECONDS[unit] and seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds / _UNIT_SECONDS[unit]:g}{unit}"
    return f"{seconds:g}s"


def _duration(low: float, high: float) -> Callable[[str], float]:
    def convert(text: str) -> float:
        match = _DURATION.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a duration (use e.g. 90, 90s, 5m, 24h or 1d)")
        seconds = float(match[1]) * _UNIT_SECONDS[match[2].lower()]
        if not low <= seconds <= high:
            raise ValueError(f"{text} is out of range ({_human_duration(low)} to {_human_duration(high)})")
        return seconds

    return convert


def _integer(low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if not low <= number <= high:
            raise ValueError(f"{number} is out of range ({low} to {high})")
        return number

    return convert


def _boolean(text: str) -> bool:
    try:
        return _BOOLS[text.lower()]
    except KeyError:
        raise ValueError(f"{text!r} is not a boolean (use true or false)") from None


def _choice(*allowed: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        for value in allowed:
            if value.lower() == text.lower():
                return value
        raise ValueError(f"{text!r} is not one of {', '.join(allowed)}{_did_you_mean(text, allowed)}")

    return convert


def _ratio(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{text} is out of range (0 to 1)")
    return number


def _https_url(text: str) -> str:
    """``https://host[:port]``; a bare host gets ``https://``. Plain http is refused (TLS is always on)."""
    parts = urlsplit(text if "://" in text else f"https://{text}")
    if parts.scheme.lower() != "https":
        raise ValueError(f"{text!r} must be an https:// URL (TLS is always on)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    if not parts.hostname or parts.username or parts.password:
        raise ValueError(f"{text!r} must be https://host[:port] without credentials")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{text!r} must be https://host[:port] without a path, query or fragment")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"https://{host}" + (f":{port}" if port is not None else "")


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
    if (
        not sep
        or not host
        or any(c.isspace() for c in host)
        or not (port.isascii() and port.isdigit())
        or int(port) > 65535
    ):
        raise ValueError(f"{text!r} is not host:port (e.g. 127.0.0.1:9464)")
    return host, int(port)


def _entry_point(text: str) -> str:
    module, sep, function = text.partition(":")
    names = [*module.split("."), function]
    if not sep or not all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
        raise ValueError(f"{text!r} is not package.module:function")
    return text


def _guid(text: str) -> str:
    if not _GUID.match(text):
        raise ValueError(f"{text!r} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    return text.lower()


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if not regex.match(text):
            raise ValueError(f"{text!r} is not {what}")
        return text

    return convert


def _text(text: str) -> str:
    return text


def _labels(text: str) -> tuple[str, ...]:
    """Comma-separated Sentinel label names (case-sensitive), each once."""
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def _did_you_mean(word: str, candidates: Iterable[str], fmt: str = "{}") -> str:
    options = list(candidates)
    same_case = [c for c in options if c.lower() == word.lower()]
    close = same_case or difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {fmt.format(close[0])}?)" if close else ""


# --- Reading one section ----------------------------------------------------------------------


class _Report:
    """Collects problems and warnings while the whole file is read."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, title: str, key: str | None, message: str) -> None:
        self.problems.append(f"[{title}] {key}: {message}" if key else f"[{title}]: {message}")

    def warn(self, title: str, key: str | None, message: str) -> None:
        self.warnings.append(f"[{title}] {key}: {message}" if key else f"[{title}]: {message}")


class _Section:
    """One section's raw values plus typed getters; unknown keys are reported on creation."""

    def __init__(
        self,
        report: _Report,
        title: str,
        raw: Mapping[str, str],
        known: Iterable[str],
        folder: Path,
        environ: Mapping[str, str],
    ) -> None:
        self.report = report
        self.title = title
        self.raw = dict(raw)
        self.folder = folder
        self.environ = environ
        self.broken: set[str] = set()
        known = tuple(known)
        for key, value in self.raw.items():
            if key not in known:
                self.problem(key, "unknown key" + _did_you_mean(key, known))
            elif "\n" in value.strip():
                # An indented line continues the previous value in ini syntax, which swallows keys.
                self.problem(key, "value spans several lines (is the next line indented by mistake?)")
                self.broken.add(key)

    def problem(self, key: str | None, message: str) -> None:
        self.report.problem(self.title, key, message)

    def warn(self, key: str | None, message: str) -> None:
        self.report.warn(self.title, key, message)

    def is_set(self, *keys: str) -> bool:
        """True when any of ``keys`` has a non-empty value (even one already reported as invalid)."""
        return any((self.raw.get(key) or "").strip() for key in keys)

    def text(self, key: str) -> str | None:
        """The stripped value, or None when the key is absent, empty or already reported."""
        if key in self.broken:
            return None
        return (self.raw.get(key) or "").strip() or None

    def get(self, key: str, convert: Callable[[str], T], default: T) -> T:
        """The converted value, ``default`` when absent or empty (or invalid, after reporting it)."""
        value = self.text(key)
        if value is None:
            return default
        try:
            return convert(value)
        except ValueError as exc:
            self.problem(key, str(exc))
            return default

    def optional(self, key: str, convert: Callable[[str], T]) -> T | None:
        return self.get(key, convert, None)

    def required(self, key: str, convert: Callable[[str], T], placeholder: T) -> T:
        """The converted value; a missing one is a problem (``placeholder`` is then returned)."""
        if not self.is_set(key):
            self.problem(key, "required")
            return placeholder
        return self.get(key, convert, placeholder)

    def path(self, key: str) -> Path | None:
        """A path relative to the ini file's folder, or None when empty."""
        return self.optional(key, self.resolve)

    def readable_file(self, key: str, private: bool = False) -> Path | None:
        """A path that must name a readable file; ``private`` warns when group/others may read it."""
        path = self.path(key)
        if path is None:
            return None
        if not path.is_file() or not os.access(path, os.R_OK):
            self.problem(key, f"{path} is not a readable file")
            return None
        if private:
            self._check_private(key, path)
        return path

    def secret(self, base: str) -> Secret | None:
        """Read ``<base>_env`` / ``<base>_file`` / ``<base>``; two forms set is a problem."""
        forms = [key for key in (f"{base}_env", f"{base}_file", base) if self.text(key) is not None]
        if len(forms) > 1:
            self.problem(base, f"set only one of {', '.join(forms)}")
            return None
        if not forms:
            return None
        key = forms[0]
        value = self.text(key) or ""
        if key.endswith("_env"):
            return self._secret_from_env(key, value)
        if key.endswith("_file"):
            expanded = self._expand(key, value)
            return self._secret_from_file(key, self.resolve(expanded)) if expanded else None
        return Secret(value)

    def _expand(self, key: str, text: str) -> str | None:
        """``$NAME`` / ``${NAME}`` from the environment, e.g. systemd's ``$CREDENTIALS_DIRECTORY``."""
        unset = [m[1] or m[2] for m in _VARIABLE.finditer(text) if (m[1] or m[2]) not in self.environ]
        if unset:
            systemd = "CREDENTIALS_DIRECTORY" in unset
            hint = " (systemd sets it for a unit with LoadCredential=)" if systemd else ""
            self.problem(key, f"environment variable {unset[0]} is not set{hint}")
            return None
        return _VARIABLE.sub(lambda m: self.environ[m[1] or m[2]], text)

    def _secret_from_env(self, key: str, variable: str) -> Secret | None:
        value = self.environ.get(variable)
        if value is None:
            self.problem(key, f"environment variable {variable} is not set")
            return None
        if not value:
            self.problem(key, f"environment variable {variable} is empty")
            return None
        return Secret(value)

    def _secret_from_file(self, key: str, path: Path) -> Secret | None:
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            self.problem(key, f"cannot read {path}: {reason}")
            return None
        if not value:
            self.problem(key, f"{path} is empty")
            return None
        self._check_private(key, path)
        return Secret(value)

    def _check_private(self, key: str, path: Path) -> None:
        if os.name == "posix" and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
            self.warn(key, f"{path} is readable by group/others; restrict it with chmod 600")

    def resolve(self, text: str) -> Path:
        """``text`` as a path, relative to the ini file's folder."""
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.folder / path


# --- Section readers ------------------------------------------------------------------------

_STATE_PG_KEYS = ("state_password_env", "state_password_file", "state_sslmode", "state_sslrootcert")
_AGENT_KEYS = (*(k for k in AgentSettings.__dataclass_fields__ if k != "store"), "state", *_STATE_PG_KEYS)
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_OAUTH_KEYS = (
    "tenant_id",
    "client_id",
    "client_secret_env",
    "client_secret_file",
    "client_secret",
    "certificate_file",
    "cloud",
    "authority_host",
    "management_url",
    "api_version",
)
_SNOW_KEYS = (
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
_WORKSPACE_KEYS = tuple(k for k in Workspace.__dataclass_fields__ if k != "name")

MAP_SECTIONS = (
    "severity_to_servicenow",
    "severity_to_sentinel",
    "status_to_servicenow",
    "status_to_sentinel",
    "closure_to_servicenow",
    "closure_to_sentinel",
)
"""The value maps: ``[KIND]`` for every instance, ``[KIND:INSTANCE]`` for one (it wins)."""
_SINGLE_SECTIONS = ("agent",)
_NAMED_SECTIONS = ("oauth", "servicenow", "workspace", "owners", "assignment_groups", *MAP_SECTIONS)
_NO_DEFAULT_SECTION = "\x00"  # makes a literal [DEFAULT] an ordinary (and so unknown) section


def _read_state(sec: _Section) -> StoreTarget:
    """``state`` / ``state_db`` and, for PostgreSQL, its password and TLS keys."""
    default = sec.resolve("sentinel-snow-sync.db")
    if sec.is_set("state") and sec.is_set("state_db"):
        sec.problem("state", "set either state or state_db (which means a SQLite file), not both")
    key = "state" if sec.is_set("state") else "state_db"
    if key == "state":
        fallback = StoreTarget("sqlite", str(default))
        target = sec.get("state", lambda text: parse_target(text, sec.resolve), fallback)
    else:
        target = StoreTarget("sqlite", str(sec.get("state_db", sec.resolve, default)))
    if target.kind == "memory":
        sec.problem(
            key, "memory: keeps nothing across restarts (it is for tests); use a file or postgresql://"
        )
    if target.path is not None and not target.path.parent.is_dir():
        sec.problem(key, f"folder {target.path.parent} does not exist")
    if target.kind != "postgresql":
        for name in _STATE_PG_KEYS:
            if sec.is_set(name):
                sec.problem(name, "only for a shared state (state = postgresql://...)")
        return target
    return _postgres_target(sec, target.value)


def _postgres_target(sec: _Section, url: str) -> StoreTarget:
    """The URL with the TLS keys folded into its query (as libpq reads them) and the password."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for name in ("sslmode", "sslrootcert"):
        if sec.is_set(f"state_{name}"):
            if name in query:
                sec.problem(f"state_{name}", f"{name} is already in the URL; set it in one place")
            query[name] = sec.text(f"state_{name}") or ""
    mode = query.get("sslmode")
    if mode is not None and mode not in _SSLMODES:
        key = "state_sslmode" if sec.is_set("state_sslmode") else "state"
        hint = _did_you_mean(mode, _SSLMODES)
        sec.problem(key, f"sslmode {mode!r} is not one of {', '.join(_SSLMODES)}{hint}")
    root = query.get("sslrootcert")
    if root and root != "system":
        key = "state_sslrootcert" if sec.is_set("state_sslrootcert") else "state"
        path = sec.resolve(root)
        if not path.is_file() or not os.access(path, os.R_OK):
            sec.problem(key, f"sslrootcert {path} is not a readable file")
        query["sslrootcert"] = str(path)
    if not parts.path.strip("/"):
        sec.problem("state", "name the database: postgresql://user@host/dbname")
    password = sec.secret("state_password")
    if parts.password is not None:
        if password is not None:
            sec.problem("state", "the URL has a password and state_password_* is set; keep one")
        password = Secret(unquote(parts.password))
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}@{host}")
    # libpq decodes %XX in a URI but not "+": spaces stay %20.
    url = urlunsplit(parts._replace(query=urlencode(query, safe="/:", quote_via=quote)))
    return StoreTarget("postgresql", url, password)


def _read_agent(sec: _Section) -> AgentSettings:
    state = _read_state(sec)
    return AgentSettings(
        state_db=state.path or sec.resolve("sentinel-snow-sync.db"),
        store=None if state.kind == "sqlite" else state,
        failover_timeout=sec.get("failover_timeout", _duration(3, 3600), 30.0),
        poll_interval=sec.get("poll_interval", _duration(0.1, 86400), 60.0),
        max_concurrency=sec.get("max_concurrency", _integer(1, 64), 8),
        # Sentinel's $top is capped at 1000 (REFERENCE A.7).
        page_size=sec.get("page_size", _integer(1, 1000), 200),
        log_level=sec.get("log_level", _choice("debug", "info", "warning", "error"), "info"),
        log_format=sec.get("log_format", _choice("json", "text"), "json"),
        ca_bundle=sec.readable_file("ca_bundle"),
        conflict_policy=sec.get("conflict_policy", _choice("newest", "sentinel", "servicenow"), "newest"),
        metrics_listen=sec.optional("metrics_listen", _host_port),
        dry_run=sec.get("dry_run", _boolean, False),
        custom_mapping=sec.optional("custom_mapping", _entry_point),
        overlap=sec.get("overlap", _duration(0, 86400), 120.0),
        sweep_interval=sec.get("sweep_interval", _duration(1, 30 * 86400), 86400.0),
        open_check_interval=sec.get("open_check_interval", _duration(0, 86400), 600.0),
        max_close_ratio=sec.get("max_close_ratio", _ratio, 0.5),
        comment_field=sec.get("comment_field", _choice("work_notes", "comments"), "work_notes"),
        comment_format=sec.get("comment_format", _choice("text", "code"), "text"),
        writeback_label=sec.get("writeback_label", _boolean, True),
        enrichment_delay=sec.get("enrichment_delay", _duration(0, 7 * 86400), 600.0),
    )


def _read_oauth(sec: _Section, name: str) -> OAuthApp:
    tenant_id = sec.required("tenant_id", _guid, "")
    client_id = sec.required("client_id", _guid, "")
    has_secret = sec.is_set(*_secret_keys("client_secret"))
    has_certificate = sec.is_set("certificate_file")
    if not has_secret and not has_certificate:
        sec.problem(
            "client_secret",
            "required: set client_secret_env, client_secret_file, client_secret or certificate_file",
        )
    elif has_secret and has_certificate:
        sec.problem("certificate_file", "set either a client secret or certificate_file, not both")
    secret = sec.secret("client_secret")
    certificate = sec.readable_file("certificate_file", private=True)
    cloud = sec.get("cloud", _choice(*CLOUDS), "public")
    preset = CLOUDS[cloud]
    return OAuthApp(
        name=name,
        tenant_id=tenant_id,
        client_id=client_id,
        client_secret=secret,
        certificate_file=certificate,
        cloud=cloud,
        authority_host=sec.get("authority_host", _https_url, preset.authority_host),
        management_url=sec.get("management_url", _https_url, preset.management_url),
        api_version=sec.get(
            "api_version", _pattern(_API_VERSION, "an api-version (YYYY-MM-DD)"), "2025-09-01"
        ),
        portal_host=preset.portal_host,
    )


def _secret_keys(base: str) -> tuple[str, str, str]:
    return (f"{base}_env", f"{base}_file", base)


_SnowCredentials = tuple[str | None, Secret | None, str | None, Secret | None]


def _snow_credentials(sec: _Section, auth: str) -> _SnowCredentials:
    """``(username, password, client_id, client_secret)`` as ``auth`` needs them."""
    username = sec.optional("username", _text)
    password = sec.secret("password")
    has_password = sec.is_set(*_secret_keys("password"))
    if auth == "basic":
        if username is None:
            sec.problem("username", "required with auth = basic")
        if not has_password:
            sec.problem("password", "required with auth = basic: set password_env, password_file or password")
        for key in ("client_id", *_secret_keys("client_secret")):
            if sec.is_set(key):
                sec.warn(key, "ignored with auth = basic")
        return username, password, None, None
    if sec.is_set("username") != has_password:
        # Password grant needs both; client credentials needs neither (REFERENCE C.7).
        sec.problem("username" if has_password else "password", "the OAuth password grant needs both")
    client_id = sec.optional("client_id", _text)
    client_secret = sec.secret("client_secret")
    if client_id is None:
        sec.problem("client_id", "required with auth = oauth")
    if not sec.is_set(*_secret_keys("client_secret")):
        sec.problem(
            "client_secret",
            "required with auth = oauth: set client_secret_env, client_secret_file or client_secret",
        )
    return username, password, client_id, client_secret


_SNOW_NAME_RULE = _pattern(_SNOW_NAME, "a ServiceNow table/field name (lower-case letters, digits, _)")


def _read_servicenow(sec: _Section, name: str) -> ServiceNowInstance:
    instance_url = sec.required("instance_url", _https_url, "")
    auth = sec.get("auth", _choice("basic", "oauth"), "basic")
    username, password, client_id, client_secret = _snow_credentials(sec, auth)
    table = sec.get("incident_table", _SNOW_NAME_RULE, "incident")
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
        unique_key=sec.get("unique_key", _SNOW_NAME_RULE, "correlation_id"),
        severity_field=sec.get("severity_field", _SNOW_NAME_RULE, profile.severity_field),
        status_field=sec.get("status_field", _SNOW_NAME_RULE, "state"),
        caller_id=sec.optional("caller_id", _text),
        profile=profile,
        reopen_closed=sec.get("reopen_closed", _choice("follow_up", "note"), "follow_up"),
    )


def _states(text: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not values or any(not v.replace("-", "").isalnum() for v in values):
        raise ValueError(f"{text!r} is not a comma-separated list of state values (e.g. 6 or 3, 7)")
    return values


def _read_profile(sec: _Section, table: str) -> TableProfile:
    """The table profile (REFERENCE E.5): chosen by ``table_profile`` or by the table's name, with
    the ``[servicenow]`` keys that override its states and fields."""
    chosen = sec.get("table_profile", _choice(*PROFILES), TABLE_PROFILES.get(table, "custom"))
    base = PROFILES[chosen]
    follow_up = sec.text("follow_up_field")
    profile = replace(
        base,
        resolved_states=sec.get("resolved_states", _states, base.resolved_states),
        closed_states=sec.get("closed_states", _states, base.closed_states),
        cancelled_states=sec.get("cancelled_states", _states, base.cancelled_states),
        close_code_field=sec.get("close_code_field", _SNOW_NAME_RULE, base.close_code_field),
        close_notes_field=sec.get("close_notes_field", _SNOW_NAME_RULE, base.close_notes_field),
        caller_field=sec.get("caller_field", _SNOW_NAME_RULE, base.caller_field),
        follow_up_field=""
        if follow_up == "none"
        else sec.get("follow_up_field", _SNOW_NAME_RULE, base.follow_up_field),
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


def _read_workspace(sec: _Section, name: str, oauth: Iterable[str], servicenow: Iterable[str]) -> Workspace:
    workspace = Workspace(
        name=name,
        subscription_id=sec.required("subscription_id", _guid, ""),
        resource_group=sec.required("resource_group", _pattern(_RESOURCE_GROUP, "a resource group name"), ""),
        workspace_name=sec.required(
            "workspace_name", _pattern(_WORKSPACE_NAME, "a Log Analytics workspace name"), ""
        ),
        oauth=sec.get("oauth", _text, "default"),
        servicenow=sec.get("servicenow", _text, "default"),
        enabled=sec.get("enabled", _boolean, True),
        incident_filter=sec.get("incident_filter", _labels, ()),
        max_age_days=sec.get("max_age_days", _integer(1, 3650), 30),
        caller_id=sec.optional("caller_id", _text),
        assignment_group=sec.optional("assignment_group", _text),
        sys_domain=sec.optional("sys_domain", _pattern(_DOMAIN, "a domain sys_id (32 hex digits) or global")),
        company=sec.optional("company", _text),
    )
    for key, value, defined, kind in (
        ("oauth", workspace.oauth, tuple(oauth), "oauth"),
        ("servicenow", workspace.servicenow, tuple(servicenow), "servicenow"),
    ):
        if value not in defined:
            hint = _did_you_mean(value, defined) or (f" (defined: {', '.join(defined)})" if defined else "")
            sec.problem(key, f"no [{kind}:{value}] section{hint}")
    return workspace


# --- Mapping readers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _ReadMap:
    """One value-map section as written (or a profile's default, ``title`` "")."""

    title: str
    values: Mapping[str, Any]
    catch_all: bool


_MAP_KEYS: Mapping[str, tuple[str, ...]] = {
    "severity_to_servicenow": SEVERITIES,
    "status_to_servicenow": STATUSES,
    "closure_to_servicenow": CLASSIFICATIONS,
}


def _read_map(kind: str, sec: _Section) -> Mapping[str, Any]:
    if kind == "severity_to_servicenow":
        return _keyed_map(sec, SEVERITIES, "Sentinel severity")
    if kind == "status_to_servicenow":
        return _keyed_map(sec, STATUSES, "Sentinel status")
    if kind == "closure_to_servicenow":
        return _keyed_map(sec, CLASSIFICATIONS, "Sentinel classification")
    if kind == "closure_to_sentinel":
        return _closure_to_sentinel(sec)
    return _valued_map(sec, SEVERITIES if kind == "severity_to_sentinel" else STATUSES)


def _snow_title(name: str) -> str:
    return "servicenow" if name == "default" else f"servicenow:{name}"


def _keyed_map(sec: _Section, keys: tuple[str, ...], what: str) -> dict[str, str]:
    """A map whose keys are a fixed Sentinel vocabulary; every key needs a row."""
    result: dict[str, str] = {}
    for key in keys:
        value = sec.text(key)
        if value is None:
            sec.problem(key, f"missing; a present section replaces the defaults and must map every {what}")
        else:
            result[key] = value
    return result


def _valued_map(sec: _Section, allowed: tuple[str, ...]) -> dict[str, str]:
    """A map from free ServiceNow values to a Sentinel enum value."""
    result: dict[str, str] = {}
    for key in sec.raw:
        value = sec.text(key)
        if value is None:
            sec.problem(key, f"empty value; use one of {', '.join(allowed)}")
        elif value not in allowed:
            sec.problem(key, f"{value!r} is not one of {', '.join(allowed)}{_did_you_mean(value, allowed)}")
        else:
            result[key] = value
    return result


def _closure_value(text: str) -> tuple[str, str | None]:
    classification, _, reason_text = (part.strip() for part in text.partition("/"))
    reason = reason_text or None
    if classification not in CLASSIFICATIONS:
        hint = _did_you_mean(classification, CLASSIFICATIONS)
        raise ValueError(f"{classification!r} is not a classification ({', '.join(CLASSIFICATIONS)}){hint}")
    if reason is not None and reason not in CLASSIFICATION_REASONS:
        hint = _did_you_mean(reason, CLASSIFICATION_REASONS)
        raise ValueError(
            f"{reason!r} is not a classification reason ({', '.join(CLASSIFICATION_REASONS)}){hint}"
        )
    if classification != "Undetermined" and reason is None:
        raise ValueError(f"{classification} needs a reason, e.g. {_pairs_for(classification)}")
    if (classification, reason) not in SENTINEL_CLOSURE_PAIRS:
        raise ValueError(f"{text} is not a pair Sentinel accepts; use {_pairs_for(classification)}")
    return classification, reason


def _pairs_for(classification: str) -> str:
    pairs = sorted(f"{c}/{r}" if r else c for c, r in SENTINEL_CLOSURE_PAIRS if c == classification)
    return " or ".join(pairs)


def _closure_to_sentinel(sec: _Section) -> dict[str, tuple[str, str | None]]:
    result: dict[str, tuple[str, str | None]] = {}
    for key in sec.raw:
        value = sec.get(key, _closure_value, None)
        if value is None and sec.text(key) is None:
            sec.problem(key, "empty value; use Classification[/Reason]")
        elif value is not None:
            result[key] = value
    # Close codes are an open, instance-defined set: the codes a user lists are mapped and every
    # other one lands on Undetermined, the classification Sentinel has for exactly that.
    result.setdefault("*", CLOSURE_FALLBACK)
    return result


_RULE_KINDS = ("label", "owner", "severity")


def _group_rules(sec: _Section) -> tuple[GroupRule, ...]:
    """Rows ``label:NAME`` / ``owner:WHO`` / ``severity:LEVEL`` / ``*`` = group name, in file order."""
    rules: list[GroupRule] = []
    for key in sec.raw:
        group = sec.text(key)
        kind, colon, value = (part.strip() for part in key.partition(":"))
        if key.strip() == "*":
            kind, value = "*", ""
        elif not colon or kind not in _RULE_KINDS:
            hint = _did_you_mean(kind, _RULE_KINDS, "{}:...")
            sec.problem(key, f"unknown row{hint}; write label:NAME, owner:UPN, severity:LEVEL or *")
            continue
        elif not value:
            sec.problem(key, f"{kind}: needs a value, e.g. {kind}:{'High' if kind == 'severity' else 'x'}")
            continue
        elif kind == "severity" and value not in SEVERITIES:
            hint = _did_you_mean(value, SEVERITIES)
            sec.problem(key, f"{value!r} is not a severity ({', '.join(SEVERITIES)}){hint}")
            continue
        if group is None:
            sec.problem(key, "empty value; write the ServiceNow assignment group's name")
            continue
        rules.append(GroupRule(kind, value, group))
    return tuple(rules)


def _owners(sec: _Section) -> dict[str, str]:
    result: dict[str, str] = {}
    for user in sec.raw:
        upn = sec.get(user, _pattern(_UPN, "a user principal name (user@domain)"), None)
        if upn is None and sec.text(user) is None:
            sec.problem(user, "empty value; write the user's UPN")
        elif upn is not None:
            result[user] = upn
    return result


def _check_reverse_unique(sec: _Section, owners: Mapping[str, str]) -> None:
    seen: dict[str, str] = {}
    for user, upn in owners.items():
        other = seen.setdefault(upn.lower(), user)
        if other != user:
            sec.problem(
                user, f"{upn} is also mapped from {other}; each UPN may belong to one ServiceNow user"
            )


# --- The loader ----------------------------------------------------------------------------------


class _Parser(configparser.ConfigParser):
    """Case-preserving keys: mapping rows like ``High`` or ``Solution provided`` are case-sensitive."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


class _Loader:
    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.path = path
        self.folder = path.parent
        self.environ = environ
        self.report = _Report()
        # kind -> name -> (title as written, raw values); single sections use the name "".
        self.found: dict[str, dict[str, tuple[str, dict[str, str]]]] = {}

    def section(self, title: str, raw: Mapping[str, str], known: Iterable[str]) -> _Section:
        return _Section(self.report, title, raw, known, self.folder, self.environ)

    def classify(self, parser: configparser.ConfigParser) -> None:
        kinds = (*_SINGLE_SECTIONS, *_NAMED_SECTIONS)
        for title in parser.sections():
            kind, colon, name = (part.strip() for part in title.partition(":"))
            raw = dict(parser[title].items())
            if kind not in kinds:
                named = colon and any(
                    k in _NAMED_SECTIONS for k in difflib.get_close_matches(kind, kinds, 1, 0.6)
                )
                message = "unknown section" + _did_you_mean(
                    kind, kinds, f"[{{}}:{name}]" if named else "[{}]"
                )
                if title == "DEFAULT":
                    message += "; shared defaults are not supported, set each key in its own section"
                self.report.problem(title, None, message)
                continue
            if colon and kind in _SINGLE_SECTIONS:
                self.report.problem(title, None, f"[{kind}] takes no name")
                continue
            if kind == "workspace" and not colon:
                self.report.problem(title, None, "name the workspace: [workspace:NAME]")
                continue
            if colon and not _SECTION_NAME.match(name):
                self.report.problem(title, None, f"{name!r} is not a valid name (letters, digits, _ . -)")
                continue
            if kind in ("oauth", "servicenow") and not colon:
                name = "default"
            bucket = self.found.setdefault(kind, {})
            if name in bucket:
                self.report.problem(title, None, f"duplicates [{bucket[name][0]}]")
                continue
            bucket[name] = (title, raw)

    def single(self, kind: str, known: Iterable[str] = ()) -> _Section | None:
        entry = self.found.get(kind, {}).get("")
        return self.section(entry[0], entry[1], known or entry[1].keys()) if entry else None

    def load(self, parser: configparser.ConfigParser) -> Config:
        self.classify(parser)
        agent = _read_agent(self.single("agent", _AGENT_KEYS) or self.section("agent", {}, _AGENT_KEYS))
        oauth = {
            name: _read_oauth(self.section(title, raw, _OAUTH_KEYS), name)
            for name, (title, raw) in self.found.get("oauth", {}).items()
        }
        servicenow = {
            name: _read_servicenow(self.section(title, raw, _SNOW_KEYS), name)
            for name, (title, raw) in self.found.get("servicenow", {}).items()
        }
        workspaces = {
            name: _read_workspace(self.section(title, raw, _WORKSPACE_KEYS), name, oauth, servicenow)
            for name, (title, raw) in self.found.get("workspace", {}).items()
        }
        if not servicenow:
            self.report.problem("servicenow", None, "at least one [servicenow] section is required")
        if not workspaces:
            self.report.problem("workspace", None, "at least one [workspace:NAME] section is required")
        mappings = self.mappings(workspaces, servicenow)
        self.warn_unused(workspaces)
        if self.report.problems:
            raise ConfigError(self.report.problems)
        return Config(
            path=self.path,
            agent=agent,
            oauth=oauth,
            servicenow=servicenow,
            workspaces=workspaces,
            mappings=mappings,
            warnings=tuple(self.report.warnings),
        )

    def mappings(
        self, workspaces: Mapping[str, Workspace], servicenow: Mapping[str, ServiceNowInstance]
    ) -> Mappings:
        read = self.read_map_sections(servicenow)
        shared = self.instance_maps(ITSM, read, "")
        group_rules, group_rules_by_workspace = self.assignment_groups(workspaces)
        mappings = Mappings(
            severity_to_servicenow=shared.severity_to_servicenow,
            severity_to_sentinel=shared.severity_to_sentinel,
            status_to_servicenow=shared.status_to_servicenow,
            status_to_sentinel=shared.status_to_sentinel,
            closure_to_servicenow=shared.closure_to_servicenow,
            closure_to_sentinel=shared.closure_to_sentinel,
            closure_catch_all_written=shared.closure_catch_all_written,
            owners={},
            owners_by_workspace={},
            assignment_groups=group_rules,
            assignment_groups_by_workspace=group_rules_by_workspace,
            instances={
                name: self.instance_maps(inst.profile, read, name) for name, inst in servicenow.items()
            },
        )
        for name, inst in servicenow.items():
            self.check_round_trips(inst, mappings.instances[name])
        self.read_owners(mappings, workspaces)
        return mappings

    def read_map_sections(
        self, servicenow: Mapping[str, ServiceNowInstance]
    ) -> dict[str, dict[str, _ReadMap]]:
        """Every value-map section written, read once: kind -> instance name ("" shared) -> map."""
        read: dict[str, dict[str, _ReadMap]] = {}
        for kind in MAP_SECTIONS:
            for name, (title, raw) in self.found.get(kind, {}).items():
                sec = self.section(title, raw, _MAP_KEYS.get(kind) or raw.keys())
                if name and name not in servicenow:
                    hint = _did_you_mean(name, servicenow, f"[{kind}:{{}}]") or (
                        f" (instances: {', '.join(servicenow)})" if servicenow else ""
                    )
                    sec.problem(None, f"no [servicenow:{name}] section{hint}")
                    continue
                read.setdefault(kind, {})[name] = _ReadMap(title, _read_map(kind, sec), "*" in raw)
        return read

    def instance_maps(
        self, profile: TableProfile, read: Mapping[str, Mapping[str, _ReadMap]], name: str
    ) -> InstanceMaps:
        """An instance's maps: its own sections, else the shared ones, else the profile's defaults."""
        chosen: dict[str, _ReadMap] = {}
        for kind in MAP_SECTIONS:
            found = read.get(kind, {})
            default = getattr(profile, kind)
            chosen[kind] = found.get(name) or found.get("") or _ReadMap("", dict(default), False)
        if profile.name == "custom":
            for kind in ("status_to_servicenow", "status_to_sentinel", "closure_to_servicenow"):
                if not chosen[kind].title and name:
                    self.report.problem(
                        _snow_title(name),
                        "table_profile",
                        f"a custom table has no default [{kind}]: write [{kind}] or [{kind}:{name}]",
                    )
        closure = dict(chosen["closure_to_sentinel"].values)
        closure.setdefault("*", CLOSURE_FALLBACK)
        return InstanceMaps(
            severity_to_servicenow=dict(chosen["severity_to_servicenow"].values),
            severity_to_sentinel=dict(chosen["severity_to_sentinel"].values),
            status_to_servicenow=dict(chosen["status_to_servicenow"].values),
            status_to_sentinel=dict(chosen["status_to_sentinel"].values),
            closure_to_servicenow=dict(chosen["closure_to_servicenow"].values),
            closure_to_sentinel=closure,
            closure_catch_all_written=chosen["closure_to_sentinel"].catch_all,
            sources={kind: read_map.title for kind, read_map in chosen.items()},
        )

    def assignment_groups(
        self, workspaces: Mapping[str, Workspace]
    ) -> tuple[tuple[GroupRule, ...], dict[str, tuple[GroupRule, ...]]]:
        """``[assignment_groups]`` rows and the ``[assignment_groups:WORKSPACE]`` rows by workspace."""
        rules: tuple[GroupRule, ...] = ()
        by_workspace: dict[str, tuple[GroupRule, ...]] = {}
        for name, (title, raw) in self.found.get("assignment_groups", {}).items():
            sec = self.section(title, raw, raw.keys())
            read = _group_rules(sec)
            if not name:
                rules = read
            elif name not in workspaces:
                hint = _did_you_mean(name, workspaces, "[assignment_groups:{}]")
                sec.problem(None, f"no [workspace:{name}] section{hint}")
            else:
                by_workspace[name] = read
        return rules, by_workspace

    def check_round_trips(self, inst: ServiceNowInstance, maps: InstanceMaps) -> None:
        """A value the agent writes to ServiceNow must read back as the same Sentinel value class,
        and Sentinel's Closed must be a closing state of the instance's table profile."""
        alone = len(self.found.get("servicenow", {})) <= 1 and inst.profile.name == "itsm"
        where = (
            ""
            if alone
            else f" for [{_snow_title(inst.name)}] ({inst.incident_table}, profile {inst.profile.name})"
        )

        def title(kind: str) -> str:
            return maps.sources.get(kind) or kind

        if not maps.sources.get("severity_to_servicenow") and not maps.sources.get("severity_to_sentinel"):
            pass  # the profile's own pair: consistent by construction
        else:
            for severity, value in maps.severity_to_servicenow.items():
                if value not in maps.severity_to_sentinel:
                    self.report.problem(
                        title("severity_to_sentinel"),
                        value,
                        f"no row, but [{title('severity_to_servicenow')}] {severity} writes it{where}",
                    )
        back = maps.status_to_sentinel
        if "Closed" not in back.values() or not {"New", "Active"} & set(back.values()):
            self.report.problem(
                title("status_to_sentinel"),
                None,
                f"must map at least one state to Closed and one to New or Active{where}",
            )
        for status, value in maps.status_to_servicenow.items():
            if value not in back:
                self.report.problem(
                    title("status_to_sentinel"),
                    value,
                    f"no row, but [{title('status_to_servicenow')}] {status} writes it{where}",
                )
            elif (back[value] == "Closed") != (status == "Closed"):
                self.report.problem(
                    title("status_to_servicenow"),
                    status,
                    f"{value} reads back as {back[value]} via [{title('status_to_sentinel')}]{where}",
                )
        if inst.status_field in ("state", "incident_state"):
            self.check_state_values(inst, maps, title("status_to_servicenow"), where)

    def check_state_values(
        self, inst: ServiceNowInstance, maps: InstanceMaps, title: str, where: str
    ) -> None:
        """Closed goes to a closing state of the profile, New and Active to an open one."""
        profile = inst.profile
        closing = " or ".join(
            [f"{s} Resolved" for s in profile.resolved_states]
            + [f"{s} Closed" for s in profile.closed_states]
        )
        own = ""
        if len(self.found.get("servicenow", {})) > 1 and ":" not in title:
            own = f"; [{title}:{inst.name}] would apply to that instance alone"
        closed = maps.status_to_servicenow.get("Closed")
        if closed is not None and closed not in profile.closing_states:
            self.report.problem(
                title, "Closed", f"{closed!r} is not a resolved/closed state ({closing}){where}{own}"
            )
        for status in ("New", "Active"):
            value = maps.status_to_servicenow.get(status)
            if value is not None and profile.is_finished(value):
                self.report.problem(title, status, f"{value} is a resolved/closed state{where}{own}")

    def read_owners(self, maps: Mappings, workspaces: Mapping[str, Workspace]) -> None:
        # [owners] first, so each workspace's check sees the rows it inherits.
        for name, (title, raw) in sorted(self.found.get("owners", {}).items()):
            sec = self.section(title, raw, raw.keys())
            owners = _owners(sec)
            if not name:
                maps.owners.update(owners)
                _check_reverse_unique(sec, owners)
            elif name not in workspaces:
                hint = _did_you_mean(name, workspaces, "[owners:{}]")
                sec.problem(None, f"no [workspace:{name}] section{hint}")
            else:
                maps.owners_by_workspace[name] = owners
                _check_reverse_unique(sec, maps.owners_for(name))

    def warn_unused(self, workspaces: Mapping[str, Workspace]) -> None:
        for kind in ("oauth", "servicenow"):
            used = {getattr(ws, kind) for ws in workspaces.values()}
            for name, (title, _raw) in self.found.get(kind, {}).items():
                if name not in used:
                    self.report.warn(title, None, "not used by any workspace")
        if workspaces and not any(ws.enabled for ws in workspaces.values()):
            self.report.warn(
                "workspace", None, "every workspace is disabled (enabled = false); nothing will sync"
            )


def _unrepr(text: str) -> str:
    # Python 3.11's ParsingError keeps repr(line); later versions keep the line itself.
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, str) else text


def _parse_problem(path: Path, exc: configparser.Error) -> str:
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"{path}: line {exc.lineno}: [{exc.section}] {exc.option} is set twice"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"{path}: line {exc.lineno}: section [{exc.section}] appears twice"
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"{path}: line {exc.lineno}: text before the first [section] header"
    if isinstance(exc, configparser.ParsingError):
        lines = ", ".join(f"line {number} ({_unrepr(text).strip()!r})" for number, text in exc.errors)
        return f"{path}: cannot parse {lines}; write key = value"
    return f"{path}: " + " ".join(str(exc).split())


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the ini file at ``path``.

    ``environ`` supplies the variables named by ``*_env`` keys (default: ``os.environ``).
    Relative paths in the file are relative to the file's folder. Raises
    :class:`~agent.errors.ConfigError` listing every problem found.
    """
    path = Path(path).expanduser().absolute()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the configuration file ({exc.strerror or exc})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: the configuration file is not UTF-8 text"]) from None
    parser = _Parser(
        interpolation=None,  # a '%' in a password must stay a '%'
        inline_comment_prefixes=(";",),
        delimiters=("=",),  # ':' may appear in keys (close codes) and values (host:port)
        default_section=_NO_DEFAULT_SECTION,
        empty_lines_in_values=False,
    )
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        raise ConfigError([_parse_problem(path, exc)]) from None
    return _Loader(path, os.environ if environ is None else environ).load(parser)
