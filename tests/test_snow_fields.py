"""A misspelt field must not widen a query (REFERENCE C.2, C.3).

An instance ignores a condition on a field the table lacks and drops a written field it does
not know. The agent proves at start (and in ``check``) that every configured field exists, and
refuses to run when the unique key does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agent.app.check import FAIL, OK, SKIP
from agent.errors import ConfigError
from agent.log import log
from tests.e2e import Env
from tests.test_check import _check, _lines


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    found: list[dict[str, Any]] = []
    log.sinks.append(found.append)
    yield found
    log.sinks.remove(found.append)


def _existing_ticket(env: Env) -> None:
    env.snow.insert("incident", {"short_description": "someone else's ticket"})


async def test_c3_a_unique_key_the_table_lacks_is_refused_before_any_query(env: Env) -> None:
    _existing_ticket(env)
    env.rewrite({"agent": {"overlap": "0s"}, "servicenow": {"unique_key": "u_sentinel_ref"}})
    env.ws().create_incident(title="t", labels=["snow"])
    mark = env.stack.recorder.mark()
    result = (await env.cycle())["soc"]
    assert isinstance(result, ConfigError)
    assert str(result).startswith("[servicenow] unique_key: table incident has no field u_sentinel_ref")
    snow_calls = [c for c in env.calls_since(mark) if c.system == "servicenow"]
    assert [c.route for c in snow_calls] == ["table.list"]  # the one-record read, nothing else
    assert len(env.snow.tables["incident"]) == 1  # no ticket was made


async def test_c3_with_an_empty_table_the_first_create_proves_the_key_missing(env: Env) -> None:
    env.rewrite({"agent": {"overlap": "0s"}, "servicenow": {"unique_key": "u_sentinel_ref"}})
    env.ws().create_incident(title="t", labels=["snow"])
    result = (await env.cycle())["soc"]
    assert isinstance(result, ConfigError) and "has no field u_sentinel_ref" in str(result)
    # the instance dropped the key from the create: that is exactly what the proof caught (and
    # the look-up before the create matched every incident of the then empty table)
    assert env.snow.ignored_fields == ["incident.u_sentinel_ref"]
    assert [t.split("IN")[0] for t in env.snow.dropped_terms] == ["incident: u_sentinel_ref"]
    env.snow.ignored_fields.clear()
    env.snow.dropped_terms.clear()
    # from now on the table has a record, so the next start refuses before writing anything
    again = (await env.cycle())["soc"]
    assert isinstance(again, ConfigError)
    assert len(env.snow.tables["incident"]) == 1


async def test_c2_another_missing_field_is_one_warning_per_proof(
    env: Env, records: list[dict[str, Any]]
) -> None:
    _existing_ticket(env)
    env.rewrite({"agent": {"overlap": "0s"}, "servicenow": {"severity_field": "u_severity"}})
    env.ws().create_incident(title="t", labels=["snow"])
    stats = await env.stats()
    assert stats.created == 1
    [warning] = [r for r in records if r["event"] == "snow_field_missing"]
    assert warning["level"] == "warning"
    assert warning["message"].startswith(
        "[servicenow] severity_field: table incident has no field u_severity"
    )
    assert env.snow.ignored_fields == ["incident.u_severity"]  # what the warning was about
    env.snow.ignored_fields.clear()


async def test_c3_a_proof_is_kept_a_day_not_repeated_by_every_run(env: Env) -> None:
    _existing_ticket(env)
    await env.stats()
    mark = env.stack.recorder.mark()
    await env.stats()  # a new runtime, as a cron-driven `once` would be
    snow_reads = [c.route for c in env.calls_since(mark) if c.system == "servicenow"]
    assert snow_reads == ["table.list"]  # the incremental listing only: no second proof


async def test_c3_check_names_every_missing_field(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = await _check(env, capsys)
    assert _lines(lines, SKIP, "[servicenow:default]", "not verified", "no record")
    _existing_ticket(env)
    env.rewrite({"servicenow": {"unique_key": "u_sentinel_ref", "status_field": "u_state"}})
    code, lines = await _check(env, capsys)
    assert code == 1
    assert _lines(
        lines, FAIL, "[servicenow:default]", "unique_key", "no field u_sentinel_ref", "every incident"
    )
    assert _lines(lines, FAIL, "[servicenow:default]", "status_field", "no field u_state")
    env.rewrite({"servicenow": {"unique_key": "correlation_id", "status_field": "state"}})
    code, lines = await _check(env, capsys)
    assert _lines(lines, OK, "[servicenow:default]", "configured fields exist on incident")
