"""The custom mapping hook: ``[agent] custom_mapping = package.module:function``.

The function is imported once when the agent starts (an import problem is a configuration
error naming the key) and is called for every create and every update the agent is about to
make, in both directions, with five positional arguments::

    def hook(direction, kind, incident, record, changes):
        # direction: "to_snow" | "to_sentinel"
        # kind:      "create" | "update"   (creates are always "to_snow")
        # incident:  the source's own record (agent.connectors.sentinel.models.SentinelIncident:
        #            labels, severity, owner, raw, ...)
        # record:    the ticket's (agent.connectors.servicenow.models.SnowRecord), None on create
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
from collections.abc import Callable, Collection, Mapping
from typing import Any, NoReturn

from agent.core.merge import Plan
from agent.core.records import Incident, Ticket
from agent.errors import ConfigError, HookFailed
from agent.log import log

Hook = Callable[[str, str, Any, Any, dict[str, Any]], Any]

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


def declared_fields(hook: Hook | None) -> tuple[str, ...]:
    """The ticket fields a hook declared in its ``fields`` attribute (the connector checks the names)."""
    declared = getattr(hook, "fields", ()) if hook is not None else ()
    if isinstance(declared, str) or not all(isinstance(f, str) for f in declared):
        raise ConfigError(["[agent] custom_mapping: the hook's fields attribute must be a tuple of names"])
    return tuple(declared)


def call(
    hook: Hook | None,
    direction: str,
    kind: str,
    incident: Incident,
    ticket: Ticket | None,
    changes: Mapping[str, Any],
    writable: Collection[str],
) -> dict[str, Any]:
    """The changes to make after the hook had its say (``changes`` itself when there is no hook).

    The hook sees the two sides' own records. Raises :class:`HookFailed` (after logging
    ``hook_failed``) when the hook raises or returns something that is not a valid change set for
    ``direction`` (``writable``: the properties the source takes).
    """
    if hook is None:
        return dict(changes)
    try:
        result = hook(direction, kind, incident.wire, ticket.wire if ticket else None, dict(changes))
    except Exception as exc:  # the hook is user code: any failure is contained to this incident
        _failed(direction, kind, f"raised {type(exc).__name__}: {exc}")
    if not isinstance(result, dict):
        _failed(direction, kind, f"returned {type(result).__name__}, not a dict")
    problem = _check(direction, result, writable)
    if problem:
        _failed(direction, kind, problem)
    return result


def _failed(direction: str, kind: str, why: str) -> NoReturn:
    message = f"custom_mapping {why[:300]}"
    log.warning("hook_failed", direction=direction, kind=kind, error=message)
    raise HookFailed(message)


def _check(direction: str, result: Mapping[Any, Any], writable: Collection[str]) -> str | None:
    if direction == TO_SNOW:
        bad = [k for k, v in result.items() if not isinstance(k, str) or not isinstance(v, str)]
        return f"returned non-string ServiceNow fields: {bad!r}" if bad else None
    bad = [k for k in result if k not in writable]
    return f"returned properties Sentinel does not accept: {bad!r}" if bad else None


def settle_base(
    p: Plan,
    snow_keys: Mapping[str, str],
    snow_before: Mapping[str, str],
    snow_after: Mapping[str, Any],
    sentinel_keys: Mapping[str, str],
    sentinel_after: Mapping[str, Any],
    sentinel_value: Callable[[str, Any], str],
) -> dict[str, tuple[str, str]]:
    """The base to store once the hooked writes succeeded (see the module docstring).

    ``snow_keys``/``sentinel_keys`` map each synced field to the field or property a write carries
    it in (severity -> impact, ...); ``sentinel_value`` reads a written property back in the
    planner's terms.
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
        key = sentinel_keys[f]
        if key not in sentinel_after:
            _restore(base, previous, f)
        else:
            base[f] = (sentinel_value(f, sentinel_after[key]), base[f][1])
    return base


def _restore(base: dict[str, tuple[str, str]], previous: Mapping[str, tuple[str, str]], f: str) -> None:
    if f in previous:
        base[f] = previous[f]
    else:
        base.pop(f, None)
