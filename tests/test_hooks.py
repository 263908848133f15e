"""The custom mapping hook against the emulators: the README's examples, failures contained to
one incident, the shadow recording what was really written."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agent.app.runtime import Runtime
from agent.connectors.servicenow.sink import hook_fields
from agent.errors import ConfigError
from agent.store.sqlite.store import Shadow
from agent.sync import hooks
from tests import fixtures_hooks
from tests.e2e import Env, props


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    from agent.log import log

    records: list[dict[str, Any]] = []
    log.sinks.append(records.append)
    yield records
    log.sinks.remove(records.append)


def use(env: Env, function: str) -> None:
    env.rewrite({"agent": {"custom_mapping": f"tests.fixtures_hooks:{function}"}})


async def test_import_errors_are_config_errors_naming_the_key(env: Env) -> None:
    for spec, message in (
        ("tests.no_such_module:f", r"\[agent\] custom_mapping: cannot import tests.no_such_module"),
        (
            "tests.fixtures_hooks:missing",
            r"\[agent\] custom_mapping: tests.fixtures_hooks has no function missing",
        ),
        ("tests.fixtures_hooks:IMPORTED", r"has no function IMPORTED"),
    ):
        env.rewrite({"agent": {"custom_mapping": spec}})
        with pytest.raises(ConfigError, match=message):
            async with Runtime(env.config) as rt:
                rt.syncs()


def test_the_hook_is_imported_once() -> None:
    first = hooks.load("tests.fixtures_hooks:label_to_group")
    assert first is hooks.load("tests.fixtures_hooks:label_to_group") is fixtures_hooks.label_to_group


async def test_label_to_group_on_create_and_when_the_label_comes_later(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = env.stack.snow_group_ids["default"]["Security Operations"]
    monkeypatch.setattr(fixtures_hooks, "LABEL_TO_GROUP", {"phishing": group})
    use(env, "label_to_group")
    ws = env.ws()
    phish = ws.create_incident(title="phish", labels=["snow", "phishing"])
    plain = ws.create_incident(title="plain", labels=["snow"])
    await env.stats()
    assert env.snow_record(phish["name"])["assignment_group"] == group
    assert env.snow_record(plain["name"])["assignment_group"] == ""
    ws.analyst_update(plain["name"], labels=["snow", "phishing", env.snow_record(plain["name"])["number"]])
    stats = await env.stats()
    assert stats.updated_snow == 1
    assert env.snow_record(plain["name"])["assignment_group"] == group
    mod = env.snow_record(plain["name"])["sys_mod_count"]
    ws.analyst_update(plain["name"], title="renamed")  # Sentinel changed, group already right
    stats = await env.stats()
    assert stats.updated_snow == 0 and env.snow_record(plain["name"])["sys_mod_count"] == mod


async def test_urgency_follows_severity(env: Env) -> None:
    use(env, "urgency_from_severity")
    ws = env.ws()
    inc = ws.create_incident(title="t", severity="Medium", labels=["snow"])
    await env.stats()
    rec = env.snow_record(inc["name"])
    assert (rec["impact"], rec["urgency"], rec["priority"]) == ("2", "2", "3")
    ws.analyst_update(inc["name"], severity="High")
    await env.stats()
    rec = env.snow_record(inc["name"])
    assert (rec["impact"], rec["urgency"], rec["priority"]) == ("1", "1", "1")
    for _ in range(2):
        stats = await env.stats()
        assert stats.updated_snow == stats.updated_sentinel == 0


async def test_a_hook_that_raises_skips_that_incident_only(env: Env, events: list[dict[str, Any]]) -> None:
    use(env, "explode_on_boom")
    ws = env.ws()
    boom = ws.create_incident(title="boom", labels=["snow"])
    fine = ws.create_incident(title="fine", labels=["snow"])
    stats = await env.stats()
    assert stats.created == 1 and stats.failures == 1
    assert [r["correlation_id"] for r in env.snow_records()] == [fine["name"]]
    [failed] = [r for r in events if r["event"] == "hook_failed"]
    assert (failed["incident"], failed["direction"], failed["kind"]) == (boom["name"], "to_snow", "create")
    assert "RuntimeError: boom" in failed["error"]
    ws.analyst_update(fine["name"], severity="High")
    stats = await env.stats()  # the failing incident backs off; the other one keeps syncing
    assert stats.updated_snow == 1 and env.snow_record(fine["name"])["impact"] == "1"


async def test_a_hook_that_raises_on_update_writes_nothing_for_that_incident(env: Env) -> None:
    ws = env.ws()
    boom = ws.create_incident(title="will go boom", labels=["snow"])
    fine = ws.create_incident(title="fine", labels=["snow"])
    await env.stats()
    use(env, "explode_on_boom")
    ws.analyst_update(boom["name"], severity="High", title="boom now")
    ws.analyst_update(fine["name"], severity="High")
    stats = await env.stats()
    assert (stats.updated_snow, stats.failures) == (1, 1)
    assert env.snow_record(boom["name"])["impact"] == "2"
    assert env.snow_record(fine["name"])["impact"] == "1"


async def test_a_hook_returning_a_non_dict_or_bad_property_is_a_hook_failure(
    env: Env, events: list[dict[str, Any]]
) -> None:
    use(env, "not_a_dict")
    env.ws().create_incident(title="list", labels=["snow"])
    stats = await env.stats()
    assert stats.created == 0 and stats.failures == 1
    inc = env.ws().create_incident(title="ok", severity="Low", labels=["snow"])
    use(env, "bad_property")
    await env.stats()
    env.snow.analyst_update("incident", env.snow_record(inc["name"])["sys_id"], {"impact": "1"})
    stats = await env.stats()
    assert stats.failures == 1 and props(env.ws(), inc["name"])["severity"] == "Low"
    errors = [r["error"] for r in events if r["event"] == "hook_failed"]
    assert errors[0] == "custom_mapping returned list, not a dict"
    assert errors[-1].startswith(
        "custom_mapping returned properties Sentinel does not accept: ['incidentNumber']"
    )


async def test_a_dropped_field_is_not_recorded_as_synced(env: Env) -> None:
    use(env, "keep_snow_impact")
    ws = env.ws()
    inc = ws.create_incident(title="t", severity="Low", labels=["snow"])
    await env.stats()
    ws.analyst_update(inc["name"], severity="High")
    for _ in range(3):
        stats = await env.stats()
        assert stats.updated_sentinel == 0  # ServiceNow's old impact is never copied back
    assert props(ws, inc["name"])["severity"] == "High"
    assert env.snow_record(inc["name"])["impact"] == "3"


async def test_hook_sees_updates_to_sentinel(env: Env) -> None:
    use(env, "tag_from_snow")
    ws = env.ws()
    inc = ws.create_incident(title="t", severity="Low", labels=["snow"])
    await env.stats()
    env.snow.analyst_update("incident", env.snow_record(inc["name"])["sys_id"], {"impact": "1"})
    await env.stats()
    p = props(ws, inc["name"])
    assert p["severity"] == "High"
    assert [lbl["labelName"] for lbl in p["labels"]][-1] == "updated-from-snow"
    for _ in range(2):
        stats = await env.stats()
        assert stats.updated_sentinel == stats.updated_snow == 0


def fields_of(hook: Any) -> tuple[str, ...]:
    """What the runtime asks of a hook's ``fields``: declared (the engine), checked names (ServiceNow)."""
    return hook_fields(hooks.declared_fields(hook))


def test_declared_fields_are_checked() -> None:
    def hook(*args: Any) -> dict[str, Any]:
        return {}

    assert fields_of(None) == ()
    hook.fields = ("urgency", "u_custom")  # type: ignore[attr-defined]
    assert fields_of(hook) == ("urgency", "u_custom")
    for bad in ("urgency", ("Bad Name",), (1,)):
        hook.fields = bad  # type: ignore[attr-defined]
        with pytest.raises(ConfigError, match=r"\[agent\] custom_mapping"):
            fields_of(hook)


async def test_plan_shows_the_hooked_write_and_a_failing_hook_records_nothing(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", severity="Medium", labels=["snow"])
    boom = ws.create_incident(title="boom later", labels=["snow"])
    await env.stats()
    use(env, "urgency_from_severity")
    ws.analyst_update(inc["name"], severity="High")
    stats = await env.stats(dry_run=True)
    [write] = [w for w in stats.planned if w["action"] == "update_snow"]
    assert write["values"] == {"impact": "1", "urgency": "1"}
    assert env.snow_record(inc["name"])["impact"] == "2"
    use(env, "explode_on_boom")
    ws.analyst_update(boom["name"], title="boom")
    stats = await env.stats(dry_run=True)
    assert stats.failures == 1
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        assert await shadow.failures() == []
