"""The custom mapping hook: ``[agent] custom_mapping = package.module:function``.

The function is imported once when the agent starts (an import problem is a configuration
error naming the key) and is called for every create and every update the agent is about to
make, in both directions, with five positional arguments::

    def hook(direction, kind, incident, record, changes):
        # direction: "to_snow" | "to_sentinel"
        # kind:      "create" | "update"   (creates are always "to_snow")
        # incident:  agent.connectors.sentinel.models.SentinelIncident (labels, severity, owner, raw, ...)
        # record:    agent.connectors.servicenow.models.SnowRecord, or None on create
        # changes:   the proposed write, a new dict the hook may change:
        #            to_snow     ServiceNow field -> string value (the PATCH / POST body)
        #            to_sentinel ARM property -> value (merged into the full-object PUT)
        return changes

It returns the changes to make: it may add fields, drop fields or change values. An empty dict
means "write nothing". A hook that raises, or returns anything but a dict of the right shape,
skips that one incident for this cycle (event ``hook_failed``, retried with the usual backoff);
every other incident goes on.

The hook is also offered each pair whose side changed even when the sync itself has nothing to
write (``changes`` is then empty), so a hook can react to things the sync does not compare, such
as a Sentinel label. A hook may name the ServiceNow fields it writes in a ``fields`` attribute
(``hook.fields = ("assignment_group",)``): the agent then reads them with every record and never
sends a value the record already holds.

The shadow records what was really written: a synced field the hook dropped keeps its previous
agreed value (and is planned again next time), one it changed is recorded with the hook's value,
so a hook never makes the two sides flip-flop.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

from agent.connectors.sentinel.client import WRITABLE
from agent.connectors.sentinel.models import SentinelIncident
from agent.connectors.servicenow.models import SnowRecord
from agent.connectors.servicenow.query import field_name
from agent.core.merge import Plan
from agent.errors import ConfigError, HookFailed
from agent.log import log

Hook = Callable[[str, str, SentinelIncident, SnowRecord | None, dict[str, Any]], Any]

TO_SNOW = "to_snow"
TO_SENTINEL = "to_sentinel"

_loaded: dict[str, Hook] = {}


def load(spec: str | None) -> Hook | None:
    """Import ``package.module:function`` once per process; :class:`ConfigError` if impossible."""
    if not spec:
        return None
    if spec in _loaded:
        return _loaded[spec]
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is a configuration problem
        raise ConfigError(
            [f"[agent] custom_mapping: cannot import {module_name}: {type(exc).__name__}: {exc}"]
        ) from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise ConfigError([f"[agent] custom_mapping: {module_name} has no function {attr}"])
    hook: Hook = func
    _loaded[spec] = hook
    return hook


def fields_of(hook: Hook | None) -> tuple[str, ...]:
    """The ServiceNow fields a hook declared in its ``fields`` attribute (checked names)."""
    declared = getattr(hook, "fields", ()) if hook is not None else ()
    if isinstance(declared, str) or not all(isinstance(f, str) for f in declared):
        raise ConfigError(["[agent] custom_mapping: the hook's fields attribute must be a tuple of names"])
    try:
        return tuple(field_name(f) for f in declared)
    except ValueError as exc:
        raise ConfigError([f"[agent] custom_mapping: {exc}"]) from None


def call(
    hook: Hook | None,
    direction: str,
    kind: str,
    incident: SentinelIncident,
    record: SnowRecord | None,
    changes: Mapping[str, Any],
) -> dict[str, Any]:
    """The changes to make after the hook had its say (``changes`` itself when there is no hook).

    Raises :class:`HookFailed` (after logging ``hook_failed``) when the hook raises or returns
    something that is not a valid change set for ``direction``.
    """
    if hook is None:
        return dict(changes)
    try:
        result = hook(direction, kind, incident, record, dict(changes))
    except Exception as exc:  # the hook is user code: any failure is contained to this incident
        _failed(direction, kind, f"raised {type(exc).__name__}: {exc}")
    if not isinstance(result, dict):
        _failed(direction, kind, f"returned {type(result).__name__}, not a dict")
    problem = _check(direction, result)
    if problem:
        _failed(direction, kind, problem)
    return result


def _failed(direction: str, kind: str, why: str) -> NoReturn:
    message = f"custom_mapping {why[:300]}"
    log.warning("hook_failed", direction=direction, kind=kind, error=message)
    raise HookFailed(message)


def _check(direction: str, result: Mapping[Any, Any]) -> str | None:
    if direction == TO_SNOW:
        bad = [k for k, v in result.items() if not isinstance(k, str) or not isinstance(v, str)]
        return f"returned non-string ServiceNow fields: {bad!r}" if bad else None
    bad = [k for k in result if k not in WRITABLE]
    return f"returned properties Sentinel does not accept: {bad!r}" if bad else None


def drop_unchanged(body: Mapping[str, Any], record: SnowRecord, planned: Iterable[str]) -> dict[str, Any]:
    """``body`` without the fields a hook added whose value the record already holds."""
    keep = set(planned)
    return {k: v for k, v in body.items() if k in keep or k not in record.fields or record.fields[k] != v}


def drop_unchanged_sentinel(
    changes: Mapping[str, Any], incident: SentinelIncident, planned: Iterable[str]
) -> dict[str, Any]:
    """``changes`` without the properties a hook added whose value the incident already holds."""
    keep = set(planned)
    raw = incident.raw.get("properties") if isinstance(incident.raw, dict) else None
    props: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    current = {**props, "labels": list(incident.labels)}
    return {k: v for k, v in changes.items() if k in keep or k not in current or current[k] != v}


def settle_base(
    p: Plan,
    snow_keys: Mapping[str, str],
    snow_before: Mapping[str, str],
    snow_after: Mapping[str, Any],
    sentinel_after: Mapping[str, Any],
) -> dict[str, tuple[str, str]]:
    """The base to store once the hooked writes succeeded (see the module docstring).

    ``snow_keys`` maps each synced field to its ServiceNow field (severity -> impact, ...).
    """
    base = dict(p.base)
    previous = p.previous_base
    for f, value in p.to_snow.items():
        key = snow_keys[f]
        if key not in snow_after:
            _restore(base, previous, f)
        elif snow_after[key] != snow_before.get(key, value):
            base[f] = (base[f][0], str(snow_after[key]))
    for f in p.to_sentinel:
        if f not in sentinel_after:
            _restore(base, previous, f)
        else:
            base[f] = (_sentinel_value(f, sentinel_after[f]), base[f][1])
    return base


def _restore(base: dict[str, tuple[str, str]], previous: Mapping[str, tuple[str, str]], f: str) -> None:
    if f in previous:
        base[f] = previous[f]
    else:
        base.pop(f, None)


def _sentinel_value(f: str, value: Any) -> str:
    if f != "owner":
        return str(value)
    if isinstance(value, Mapping):
        return str(value.get("userPrincipalName") or value.get("email") or "").lower()
    return str(value or "").lower()
