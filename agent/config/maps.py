"""The value-map, ``[owners]`` and ``[assignment_groups]`` sections: rows read and checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.config.convert import UPN, did_you_mean, pattern
from agent.config.model import (
    CLASSIFICATION_REASONS,
    CLASSIFICATIONS,
    CLOSURE_FALLBACK,
    SENTINEL_CLOSURE_PAIRS,
    SEVERITIES,
    STATUSES,
    GroupRule,
)
from agent.config.section import Section
from agent.connectors.graph.mapping import parse_defender_closure

MAP_SECTIONS = (
    "severity_to_servicenow",
    "severity_to_sentinel",
    "status_to_servicenow",
    "status_to_sentinel",
    "closure_to_servicenow",
    "closure_to_sentinel",
    "closure_to_defender",
)
"""The value maps: ``[KIND]`` for every instance, ``[KIND:INSTANCE]`` for one (it wins)."""


# --- Mapping readers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadMap:
    """One value-map section as written (or a profile's default, ``title`` "")."""

    title: str
    values: Mapping[str, Any]
    catch_all: bool


MAP_KEYS: Mapping[str, tuple[str, ...]] = {
    "severity_to_servicenow": SEVERITIES,
    "status_to_servicenow": STATUSES,
    "closure_to_servicenow": CLASSIFICATIONS,
}


def read_map_section(kind: str, sec: Section) -> Mapping[str, Any]:
    if kind == "severity_to_servicenow":
        return _keyed_map(sec, SEVERITIES, "Sentinel severity")
    if kind == "status_to_servicenow":
        return _keyed_map(sec, STATUSES, "Sentinel status")
    if kind == "closure_to_servicenow":
        return _keyed_map(sec, CLASSIFICATIONS, "Sentinel classification")
    if kind == "closure_to_sentinel":
        return _closure_to_sentinel(sec)
    if kind == "closure_to_defender":
        return _closure_to_defender(sec)
    return _valued_map(sec, SEVERITIES if kind == "severity_to_sentinel" else STATUSES)


def _closure_to_defender(sec: Section) -> dict[str, tuple[str, str]]:
    """Close code (``*``: every other one) = ``classification/determination``, a pair of GRAPH.md B.3."""
    result: dict[str, tuple[str, str]] = {}
    for key in sec.raw:
        value = sec.get(key, parse_defender_closure, None)
        if value is None and sec.text(key) is None:
            sec.problem(key, "empty value; use classification/determination, e.g. truePositive/malware")
        elif value is not None:
            result[key] = value
    return result


def snow_title(name: str) -> str:
    return "servicenow" if name == "default" else f"servicenow:{name}"


def _keyed_map(sec: Section, keys: tuple[str, ...], what: str) -> dict[str, str]:
    """A map whose keys are a fixed Sentinel vocabulary; every key needs a row."""
    result: dict[str, str] = {}
    for key in keys:
        value = sec.text(key)
        if value is None:
            sec.problem(key, f"missing; a present section replaces the defaults and must map every {what}")
        else:
            result[key] = value
    return result


def _valued_map(sec: Section, allowed: tuple[str, ...]) -> dict[str, str]:
    """A map from free ServiceNow values to a Sentinel enum value."""
    result: dict[str, str] = {}
    for key in sec.raw:
        value = sec.text(key)
        if value is None:
            sec.problem(key, f"empty value; use one of {', '.join(allowed)}")
        elif value not in allowed:
            sec.problem(key, f"{value!r} is not one of {', '.join(allowed)}{did_you_mean(value, allowed)}")
        else:
            result[key] = value
    return result


def _closure_value(text: str) -> tuple[str, str | None]:
    classification, _, reason_text = (part.strip() for part in text.partition("/"))
    reason = reason_text or None
    if classification not in CLASSIFICATIONS:
        hint = did_you_mean(classification, CLASSIFICATIONS)
        raise ValueError(f"{classification!r} is not a classification ({', '.join(CLASSIFICATIONS)}){hint}")
    if reason is not None and reason not in CLASSIFICATION_REASONS:
        hint = did_you_mean(reason, CLASSIFICATION_REASONS)
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


def _closure_to_sentinel(sec: Section) -> dict[str, tuple[str, str | None]]:
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


def read_group_rules(sec: Section) -> tuple[GroupRule, ...]:
    """Rows ``label:NAME`` / ``owner:WHO`` / ``severity:LEVEL`` / ``*`` = group name, in file order."""
    rules: list[GroupRule] = []
    for key in sec.raw:
        group = sec.text(key)
        kind, colon, value = (part.strip() for part in key.partition(":"))
        if key.strip() == "*":
            kind, value = "*", ""
        elif not colon or kind not in _RULE_KINDS:
            hint = did_you_mean(kind, _RULE_KINDS, "{}:...")
            sec.problem(key, f"unknown row{hint}; write label:NAME, owner:UPN, severity:LEVEL or *")
            continue
        elif not value:
            sec.problem(key, f"{kind}: needs a value, e.g. {kind}:{'High' if kind == 'severity' else 'x'}")
            continue
        elif kind == "severity" and value not in SEVERITIES:
            hint = did_you_mean(value, SEVERITIES)
            sec.problem(key, f"{value!r} is not a severity ({', '.join(SEVERITIES)}){hint}")
            continue
        if group is None:
            sec.problem(key, "empty value; write the ServiceNow assignment group's name")
            continue
        rules.append(GroupRule(kind, value, group))
    return tuple(rules)


def read_owner_rows(sec: Section) -> dict[str, str]:
    result: dict[str, str] = {}
    for user in sec.raw:
        upn = sec.get(user, pattern(UPN, "a user principal name (user@domain)"), None)
        if upn is None and sec.text(user) is None:
            sec.problem(user, "empty value; write the user's UPN")
        elif upn is not None:
            result[user] = upn
    return result


def check_reverse_unique(sec: Section, owners: Mapping[str, str]) -> None:
    seen: dict[str, str] = {}
    for user, upn in owners.items():
        other = seen.setdefault(upn.lower(), user)
        if other != user:
            sec.problem(
                user, f"{upn} is also mapped from {other}; each UPN may belong to one ServiceNow user"
            )
