"""Which fields of the incident table a configuration uses, and proof that the table has them.

A ServiceNow instance ignores what it does not know instead of refusing it (REFERENCE C.2,
C.3): a condition on a field the table lacks is dropped, so ``unique_key = u_sentinel_ref``
without that field turns every scoped listing and unique-key look-up into "every incident";
a written field the table lacks is dropped too, so the key is never stored. Nothing fails.

The proof is one read of one record with the fields in ``sysparm_fields``: the answer omits
every field the table does not have (C.2). An empty table proves nothing (the first create's
answer is checked instead, see :func:`require_unique_key`). The result is kept in the state
database per instance (a mark), so it costs one call when the configuration changes or a day
has passed, not one per ``once``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from agent.config import Config, ServiceNowInstance
from agent.connectors.servicenow.client import ServiceNowClient
from agent.connectors.servicenow.models import SnowRecord
from agent.connectors.servicenow.query import Q
from agent.errors import ConfigError
from agent.log import log
from agent.store import Store

MARK_FIELDS = "fields_proven"
"""Instance-wide mark (workspace ""): ``<digest of table and fields>`` when every field was seen."""
PROOF_TTL = timedelta(days=1)


@dataclass(frozen=True)
class Proof:
    """The outcome of one look: ``missing`` fields (with the key that configures each), or
    ``proven`` False when the table had no record to look at."""

    proven: bool
    missing: Mapping[str, str]


def configured_fields(config: Config, inst: ServiceNowInstance) -> dict[str, str]:
    """Every incident-table field the configuration makes the agent write or query, each with the
    ``[section] key`` (or what) that asks for it."""
    title = "servicenow" if inst.name == "default" else f"servicenow:{inst.name}"
    fields = {
        inst.unique_key: f"[{title}] unique_key",
        inst.severity_field: f"[{title}] severity_field",
        inst.status_field: f"[{title}] status_field",
        inst.profile.close_code_field: f"[{title}] close_code_field",
        inst.profile.close_notes_field: f"[{title}] close_notes_field",
        "assigned_to": "the owner field",
        "correlation_display": "the workspace marker the agent writes",
        "short_description": "the title field",
        "description": "the description field",
    }
    workspaces = [ws for ws in config.workspaces.values() if ws.servicenow == inst.name and ws.enabled]
    if inst.caller_id or any(ws.caller_id for ws in workspaces):
        fields.setdefault(inst.profile.caller_field, f"[{title}] caller_field (caller_id)")
    if inst.profile.follow_up_field and inst.reopen_closed == "follow_up":
        fields.setdefault(
            inst.profile.follow_up_field, f"[{title}] follow_up_field (none if the table has none)"
        )
    if config.mappings.assignment_groups or any(
        ws.assignment_group or config.mappings.assignment_groups_by_workspace.get(ws.name)
        for ws in workspaces
    ):
        fields.setdefault("assignment_group", "[assignment_groups] / assignment_group")
    if any(ws.company for ws in workspaces):
        fields.setdefault("company", "[workspace:...] company")
    if any(ws.sys_domain for ws in workspaces):
        fields.setdefault("sys_domain", "[workspace:...] sys_domain")
    return fields


async def look(snow: ServiceNowClient, fields: Mapping[str, str]) -> Proof:
    """One record of the table read with ``fields``; the ones the answer lacks do not exist."""
    found = await snow.find(Q.is_not_empty("sys_id"), list(fields), limit=1)
    if not found:
        return Proof(False, {})
    present = found[0].fields
    return Proof(True, {name: why for name, why in fields.items() if name not in present})


def _digest(inst: ServiceNowInstance, fields: Mapping[str, str]) -> str:
    text = inst.incident_table + ":" + ",".join(sorted(fields))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


async def ensure(
    config: Config, inst: ServiceNowInstance, snow: ServiceNowClient, shadow: Store, now: datetime
) -> None:
    """Prove the configured fields exist (at most once a day per configuration).

    Raises :class:`ConfigError` when the unique key is missing (every look-up would match every
    incident); any other missing field is one warning per proof (its values would be dropped).
    """
    if snow.fields_proven:
        return
    fields = configured_fields(config, inst)
    mark = await shadow.get_mark(inst.name, "", MARK_FIELDS)
    if mark is not None and mark[0] == _digest(inst, fields) and now - mark[1] < PROOF_TTL:
        snow.fields_proven = True
        return
    proof = await look(snow, fields)
    if not proof.proven:
        log.info("snow_fields_unproven", table=inst.incident_table, reason="the table has no record yet")
        return
    await _conclude(inst, snow, shadow, fields, proof.missing, now)


async def ensure_from_created(
    config: Config,
    inst: ServiceNowInstance,
    snow: ServiceNowClient,
    shadow: Store,
    record: SnowRecord,
    now: datetime,
) -> None:
    """The same proof from the answer to a create (asked for every configured field), for a
    table that was empty when the agent started."""
    if snow.fields_proven:
        return
    fields = configured_fields(config, inst)
    await _conclude(
        inst, snow, shadow, fields, {n: w for n, w in fields.items() if n not in record.fields}, now
    )


async def _conclude(
    inst: ServiceNowInstance,
    snow: ServiceNowClient,
    shadow: Store,
    fields: Mapping[str, str],
    missing: Mapping[str, str],
    now: datetime,
) -> None:
    problems = missing_problems(inst, missing)
    if inst.unique_key in missing:
        raise ConfigError(problems[:1])
    for problem in problems:
        log.warning("snow_field_missing", table=inst.incident_table, message=problem)
    snow.fields_proven = True  # warned once; the next start looks again while a field is missing
    await shadow.set_mark(inst.name, "", MARK_FIELDS, None if missing else _digest(inst, fields), now=now)


def missing_problems(inst: ServiceNowInstance, missing: Mapping[str, str]) -> list[str]:
    """One line per missing field, the unique key first."""
    lines = []
    for name, why in sorted(missing.items(), key=lambda item: item[0] != inst.unique_key):
        what = (
            "every unique-key look-up and scoped listing would match every incident"
            if name == inst.unique_key
            else "values written to it would be dropped and reads of it are always empty"
        )
        where = why if why.startswith("[") else f"{why} ({name})"
        lines.append(f"{where}: table {inst.incident_table} has no field {name}; {what}")
    return lines


def require_unique_key(inst: ServiceNowInstance, record: SnowRecord) -> None:
    """The answer to a create must show the unique key: a table without the field drops it."""
    if inst.unique_key not in record.fields:
        raise ConfigError(missing_problems(inst, {inst.unique_key: _key_of(inst)}))


def _key_of(inst: ServiceNowInstance) -> str:
    return f"[{'servicenow' if inst.name == 'default' else 'servicenow:' + inst.name}] unique_key"
