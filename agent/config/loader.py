"""The loader: the ini parsed, every section classified and read by its schema
(:mod:`agent.config.schema`), the maps checked against each other, all problems at once."""

from __future__ import annotations

import ast
import configparser
import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.config.convert import SECTION_NAME, did_you_mean
from agent.config.maps import (
    MAP_KEYS,
    MAP_SECTIONS,
    ReadMap,
    check_reverse_unique,
    read_group_rules,
    read_map_section,
    read_owner_rows,
    snow_title,
)
from agent.config.model import (
    CLOSURE_FALLBACK,
    Config,
    Defender,
    GroupRule,
    InstanceMaps,
    Mappings,
    ServiceNowInstance,
    Workspace,
)
from agent.config.schema import BY_KIND, SECTIONS
from agent.config.section import Report, Section
from agent.connectors.servicenow.profiles import ITSM, TableProfile
from agent.errors import ConfigError

_NO_DEFAULT_SECTION = "\x00"  # makes a literal [DEFAULT] an ordinary (and so unknown) section


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
        self.report = Report()
        # kind -> name -> (title as written, raw values); single sections use the name "".
        self.found: dict[str, dict[str, tuple[str, dict[str, str]]]] = {}

    def section(self, title: str, raw: Mapping[str, str], known: Iterable[str]) -> Section:
        return Section(self.report, title, raw, known, self.folder, self.environ)

    def classify(self, parser: configparser.ConfigParser) -> None:
        kinds = tuple(BY_KIND)
        for title in parser.sections():
            kind, colon, name = (part.strip() for part in title.partition(":"))
            raw = dict(parser[title].items())
            if kind not in kinds:
                named = colon and any(
                    BY_KIND[k].named for k in difflib.get_close_matches(kind, kinds, 1, 0.6)
                )
                message = "unknown section" + did_you_mean(kind, kinds, f"[{{}}:{name}]" if named else "[{}]")
                if title == "DEFAULT":
                    message += "; shared defaults are not supported, set each key in its own section"
                self.report.problem(title, None, message)
                continue
            schema = BY_KIND[kind]
            if colon and not schema.named:
                self.report.problem(title, None, f"[{kind}] takes no name")
                continue
            if schema.bare is None and not colon:
                self.report.problem(title, None, f"name the {kind}: [{kind}:NAME]")
                continue
            if colon and not SECTION_NAME.match(name):
                self.report.problem(title, None, f"{name!r} is not a valid name (letters, digits, _ . -)")
                continue
            if not colon and schema.bare:
                name = schema.bare
            bucket = self.found.setdefault(kind, {})
            if name in bucket:
                self.report.problem(title, None, f"duplicates [{bucket[name][0]}]")
                continue
            bucket[name] = (title, raw)

    def read_sections(self) -> dict[str, dict[str, Any]]:
        """Every section a schema has a reader for, in the registry's order."""
        loaded: dict[str, dict[str, Any]] = {}
        for schema in SECTIONS:
            if not schema.reader:
                continue
            read, known = schema.read(), schema.known()
            found = self.found.get(schema.kind, {})
            if not schema.named and not found:
                found = {"": (schema.kind, {})}  # a section left out: every key takes its default
            loaded[schema.kind] = {
                name: read(self.section(title, raw, raw.keys() if known is None else known), name, loaded)
                for name, (title, raw) in found.items()
            }
        return loaded

    def load(self, parser: configparser.ConfigParser) -> Config:
        self.classify(parser)
        loaded = self.read_sections()
        agent = loaded["agent"][""]
        oauth, servicenow, workspaces = loaded["oauth"], loaded["servicenow"], loaded["workspace"]
        defenders: dict[str, Defender] = loaded["defender"]
        if not servicenow:
            self.report.problem("servicenow", None, "at least one [servicenow] section is required")
        if not workspaces and not defenders:
            self.report.problem(
                "workspace", None, "at least one [workspace:NAME] or [defender:NAME] section is required"
            )
        self.check_onboarded_once(defenders)
        sources: dict[str, Workspace | Defender] = {**workspaces, **defenders}
        mappings = self.mappings(sources, servicenow)
        self.warn_unused(sources)
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
            defenders=defenders,
        )

    def check_onboarded_once(self, defenders: Mapping[str, Defender]) -> None:
        """A workspace's incidents move to one Defender source, not two."""
        owner: dict[str, str] = {}
        for name, defender in defenders.items():
            for ws in defender.workspaces:
                if ws in owner:
                    title = self.found["defender"][name][0]
                    message = f"{ws} is onboarded to [defender:{owner[ws]}] already"
                    self.report.problem(title, "workspaces", message)
                owner.setdefault(ws, name)

    def mappings(
        self, workspaces: Mapping[str, Workspace | Defender], servicenow: Mapping[str, ServiceNowInstance]
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
    ) -> dict[str, dict[str, ReadMap]]:
        """Every value-map section written, read once: kind -> instance name ("" shared) -> map."""
        read: dict[str, dict[str, ReadMap]] = {}
        for kind in MAP_SECTIONS:
            for name, (title, raw) in self.found.get(kind, {}).items():
                sec = self.section(title, raw, MAP_KEYS.get(kind) or raw.keys())
                if name and name not in servicenow:
                    hint = did_you_mean(name, servicenow, f"[{kind}:{{}}]") or (
                        f" (instances: {', '.join(servicenow)})" if servicenow else ""
                    )
                    sec.problem(None, f"no [servicenow:{name}] section{hint}")
                    continue
                read.setdefault(kind, {})[name] = ReadMap(title, read_map_section(kind, sec), "*" in raw)
        return read

    def instance_maps(
        self, profile: TableProfile, read: Mapping[str, Mapping[str, ReadMap]], name: str
    ) -> InstanceMaps:
        """An instance's maps: its own sections, else the shared ones, else the profile's defaults."""
        chosen: dict[str, ReadMap] = {}
        for kind in MAP_SECTIONS:
            found = read.get(kind, {})
            default = getattr(profile, kind, {})  # no profile has a [closure_to_defender]: H.4 instead
            chosen[kind] = found.get(name) or found.get("") or ReadMap("", dict(default), False)
        if profile.name == "custom":
            for kind in ("status_to_servicenow", "status_to_sentinel", "closure_to_servicenow"):
                if not chosen[kind].title and name:
                    self.report.problem(
                        snow_title(name),
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
            closure_to_defender=dict(chosen["closure_to_defender"].values),
        )

    def assignment_groups(
        self, workspaces: Mapping[str, Workspace | Defender]
    ) -> tuple[tuple[GroupRule, ...], dict[str, tuple[GroupRule, ...]]]:
        """``[assignment_groups]`` rows and the ``[assignment_groups:WORKSPACE]`` rows by workspace."""
        rules: tuple[GroupRule, ...] = ()
        by_workspace: dict[str, tuple[GroupRule, ...]] = {}
        for name, (title, raw) in self.found.get("assignment_groups", {}).items():
            sec = self.section(title, raw, raw.keys())
            read = read_group_rules(sec)
            if not name:
                rules = read
            elif name not in workspaces:
                hint = did_you_mean(name, workspaces, "[assignment_groups:{}]")
                sec.problem(None, f"{_no_source(name, workspaces)}{hint}")
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
            else f" for [{snow_title(inst.name)}] ({inst.incident_table}, profile {inst.profile.name})"
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

    def read_owners(self, maps: Mappings, workspaces: Mapping[str, Workspace | Defender]) -> None:
        # [owners] first, so each workspace's check sees the rows it inherits.
        for name, (title, raw) in sorted(self.found.get("owners", {}).items()):
            sec = self.section(title, raw, raw.keys())
            owners = read_owner_rows(sec)
            if not name:
                maps.owners.update(owners)
                check_reverse_unique(sec, owners)
            elif name not in workspaces:
                hint = did_you_mean(name, workspaces, "[owners:{}]")
                sec.problem(None, f"{_no_source(name, workspaces)}{hint}")
            else:
                maps.owners_by_workspace[name] = owners
                check_reverse_unique(sec, maps.owners_for(name))

    def warn_unused(self, workspaces: Mapping[str, Workspace | Defender]) -> None:
        for kind in ("oauth", "servicenow"):
            used = {getattr(ws, kind) for ws in workspaces.values()}
            for name, (title, _raw) in self.found.get(kind, {}).items():
                if name not in used:
                    self.report.warn(title, None, "not used by any workspace")
        if workspaces and not any(ws.enabled for ws in workspaces.values()):
            self.report.warn(
                "workspace", None, "every workspace is disabled (enabled = false); nothing will sync"
            )


def _no_source(name: str, sources: Mapping[str, Workspace | Defender]) -> str:
    if any(isinstance(s, Defender) for s in sources.values()):
        return f"no [workspace:{name}] or [defender:{name}] section"
    return f"no [workspace:{name}] section"


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
