"""An integration user who cannot read ``sys_journal_field`` (REFERENCE E.6).

The table answers 200 with no rows (not 403), so the agent notices from the records themselves:
a record whose display value shows entries the table does not return. It then reads journals
through the records' display values (dates in the user's time zone and format) and keeps every
comment and work note exactly once in both directions, also when the ACL is lost or granted
while it runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from agent.connectors.servicenow.journal import MARK_JOURNAL_UNREADABLE
from agent.log import log
from agent.store.sqlite.store import Shadow
from tests.e2e import Env


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    found: list[dict[str, Any]] = []
    log.sinks.append(found.append)
    yield found
    log.sinks.remove(found.append)


def named(events: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == event]


def journal_texts(env: Env, sys_id: str) -> list[str]:
    """The journal of a record as texts (the agent's notes carry a header line first)."""
    return [r["value"] for r in env.snow.journal(sys_id)]


def sentinel_texts(env: Env, name: str) -> list[str]:
    return [c["properties"]["message"] for c in env.ws().comments(name)]


def count(texts: list[str], needle: str) -> int:
    return sum(needle in t for t in texts)


async def _mode(env: Env) -> bool:
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        return await shadow.get_mark("default", "soc", MARK_JOURNAL_UNREADABLE) is not None


async def _linked(env: Env) -> tuple[str, str]:
    name = env.ws().create_incident(title="t", labels=["snow"])["name"]
    await env.stats()
    return name, env.snow_record(name)["sys_id"]


async def test_e6_unreadable_journal_falls_back_to_display_values(
    env: Env, events: list[dict[str, Any]]
) -> None:
    env.snow.deny_journal_read(env.stack.snow_user)
    name, sys_id = await _linked(env)
    env.snow.analyst_update("incident", sys_id, {"work_notes": "from the service desk"}, by="bob.hunter")
    env.ws().analyst_comment(name, "from the SOC")
    for _ in range(4):
        stats = await env.stats()
        assert stats.failures == 0 and stats.comments_deferred == 0
    assert count(sentinel_texts(env, name), "from the service desk") == 1
    assert count(journal_texts(env, sys_id), "from the SOC") == 1
    # the agent's own notes (the alert and entity lists, the copied comment) never come back
    assert not [t for t in sentinel_texts(env, name) if "Microsoft Sentinel" in t and "service desk" not in t]
    [warning] = named(events, "journal_unreadable")
    assert warning["level"] == "warning" and "display values" in warning["message"]
    assert await _mode(env)
    # both directions keep working, each entry once
    env.snow.analyst_update("incident", sys_id, {"comments": "second from the desk"}, by="carol.responder")
    env.ws().analyst_comment(name, "second from the SOC")
    for _ in range(3):
        await env.stats()
    assert count(sentinel_texts(env, name), "second from the desk") == 1
    assert count(journal_texts(env, sys_id), "second from the SOC") == 1
    assert len(named(events, "journal_unreadable")) == 1


async def test_e6_dates_in_the_users_time_zone_and_format_are_read_back_as_utc(env: Env) -> None:
    env.snow.set_user_clock(env.stack.snow_user, timedelta(hours=5, minutes=30), "%d.%m.%Y %I:%M:%S %p")
    env.snow.deny_journal_read(env.stack.snow_user)
    name, sys_id = await _linked(env)
    env.snow.analyst_update("incident", sys_id, {"work_notes": "timed note"}, by="bob.hunter")
    await env.stats()
    await env.stats()
    [row] = [r for r in env.snow.journal(sys_id) if r["value"] == "timed note"]
    [comment] = [t for t in sentinel_texts(env, name) if "timed note" in t]
    stamp = row["sys_created_on"][:16]  # "YYYY-MM-DD HH:MM", UTC as stored
    assert stamp in comment.replace("T", " "), (stamp, comment)


async def test_e6_losing_the_acl_later_copies_no_entry_twice(env: Env, events: list[dict[str, Any]]) -> None:
    name, sys_id = await _linked(env)
    env.snow.analyst_update("incident", sys_id, {"work_notes": "read from the table"}, by="bob.hunter")
    env.ws().analyst_comment(name, "first from the SOC")
    await env.stats()
    await env.stats()
    assert not await _mode(env)
    env.snow.deny_journal_read(env.stack.snow_user)  # an admin takes the read ACL away
    env.stack.clock.advance(5)
    env.snow.analyst_update("incident", sys_id, {"work_notes": "after the ACL went"}, by="bob.hunter")
    env.ws().analyst_comment(name, "second from the SOC")
    for _ in range(3):
        await env.stats()
    texts = sentinel_texts(env, name)
    assert (count(texts, "read from the table"), count(texts, "after the ACL went")) == (1, 1)
    journal = journal_texts(env, sys_id)
    assert (count(journal, "first from the SOC"), count(journal, "second from the SOC")) == (1, 1)
    assert await _mode(env)


async def test_e6_acl_granted_again_goes_back_to_the_table_and_copies_nothing_twice(
    env: Env, events: list[dict[str, Any]]
) -> None:
    env.snow.deny_journal_read(env.stack.snow_user)
    name, sys_id = await _linked(env)
    env.snow.analyst_update("incident", sys_id, {"work_notes": "while blind"}, by="bob.hunter")
    for _ in range(2):
        await env.stats()
    assert await _mode(env)
    env.snow.deny_journal_read(env.stack.snow_user, denied=False)  # the ACL is granted
    env.snow.analyst_update("incident", sys_id, {"work_notes": "after the grant"}, by="bob.hunter")
    other, other_sys_id = await _linked(env)
    env.snow.analyst_update("incident", other_sys_id, {"work_notes": "on a new pair"}, by="bob.hunter")
    for _ in range(3):
        await env.stats()
    texts = sentinel_texts(env, name)
    assert (count(texts, "while blind"), count(texts, "after the grant")) == (1, 1)
    assert count(sentinel_texts(env, other), "on a new pair") == 1
    assert not await _mode(env)  # new pairs read sys_journal_field again
    assert named(events, "journal_readable")
