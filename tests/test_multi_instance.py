"""One agent, two Entra tenants, two ServiceNow instances (issue: beyond the store app).

Workspace ``eu`` (tenant 1) syncs with instance ``default``, workspace ``us`` (tenant 2) with
instance ``second``. Nothing of one workspace may reach the other instance: no record, no
call, no link, no watermark.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.store.sqlite.store import Shadow
from agent.testing.emulators.stack import EmulatorStack
from tests.conftest import assert_no_silent_drops
from tests.e2e import Env, props, writes

TENANT2 = "0b6d3c1e-5a7f-4b2c-9d8e-1f2a3b4c5d6e"
CLIENT2 = "7c1e2d3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
SECRET2 = "second-tenant-secret~abcdefghij0123"


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Env]:
    async with EmulatorStack(directory=tmp_path / "emu", snow_instances=("default", "second")) as stack:
        stack.entra.add_app(TENANT2, CLIENT2, secret=SECRET2)
        stack.add_workspace("eu")
        stack.add_workspace("us", servicenow="second", resource_group="rg-us")
        secret_file = tmp_path / "tenant2.secret"
        secret_file.write_text(SECRET2 + "\n")
        os.chmod(secret_file, 0o600)
        cfg = stack.write_config(
            tmp_path / "agent.ini",
            state_db=tmp_path / "state.db",
            workspaces=["eu", "us"],
            extra={
                "oauth:tenant2": {
                    "tenant_id": TENANT2,
                    "client_id": CLIENT2,
                    "client_secret_file": secret_file.name,
                    "authority_host": stack.entra_url,
                    "management_url": stack.sentinel_url,
                },
                "workspace:us": {"oauth": "tenant2"},
            },
        )
        yield Env(stack, tmp_path, cfg, ["eu", "us"])
        assert_no_silent_drops(stack)


def tickets(env: Env, instance: str) -> dict[str, dict[str, str]]:
    table = env.stack.snow[instance].tables["incident"]
    return {r["correlation_id"]: r for r in table.values() if r.get("correlation_id")}


async def test_each_workspace_syncs_only_with_its_own_instance(two: Env) -> None:
    env = two
    eu = [env.ws("eu").create_incident(title=f"eu {i}", labels=["snow"]) for i in range(3)]
    us = [env.ws("us").create_incident(title=f"us {i}", labels=["snow"]) for i in range(2)]
    mark = env.stack.recorder.mark()
    results = await env.cycle()
    assert {name: getattr(r, "created", r) for name, r in results.items()} == {"eu": 3, "us": 2}

    assert set(tickets(env, "default")) == {i["name"] for i in eu}
    assert set(tickets(env, "second")) == {i["name"] for i in us}
    assert all(r["correlation_display"] == "Sentinel/us" for r in tickets(env, "second").values())
    calls = env.calls_since(mark)
    # every ServiceNow call went to the instance of a workspace that has something there
    posts = {(c.instance, c.method) for c in writes(calls) if c.system == "servicenow"}
    assert posts == {("default", "POST"), ("second", "POST")}
    assert len([c for c in calls if c.instance == "second" and c.method == "POST"]) == 2
    # the numbers written back are each instance's own (both start at INC0010001)
    for inc in us:
        number = tickets(env, "second")[inc["name"]]["number"]
        assert number in [lbl["labelName"] for lbl in props(env.ws("us"), inc["name"])["labels"]]

    # both tenants' apps were used for ARM
    issued = [env.stack.tokens.check(t, env.stack.sentinel_url)[0] for t in env.stack.tokens.issued()]
    arm_clients = {t.client_id for t in issued if t is not None and t.audience != "servicenow:default"}
    assert {env.stack.client_id, CLIENT2} <= arm_clients

    # links and watermarks are per instance
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        assert await shadow.count_links("default", "eu") == (3, 3)
        assert await shadow.count_links("second", "us") == (2, 2)
        assert await shadow.count_links("default", "us") == (0, 0)
        assert await shadow.count_links("second", "eu") == (0, 0)
        assert (await shadow.get_watermark("second", "us", "sentinel")).modified is not None
        assert (await shadow.get_watermark("default", "us", "sentinel")).modified is None


async def test_changes_flow_per_instance_and_idle_cycles_stay_apart(two: Env) -> None:
    env = two
    a = env.ws("eu").create_incident(title="eu", labels=["snow"], severity="Low")
    b = env.ws("us").create_incident(title="us", labels=["snow"], severity="Low")
    await env.cycle()
    await env.cycle()
    second = env.stack.snow["second"]
    rec_b = tickets(env, "second")[b["name"]]
    second.analyst_update("incident", rec_b["sys_id"], {"impact": "1"})
    env.ws("eu").analyst_update(a["name"], severity="Medium")

    mark = env.stack.recorder.mark()
    await env.cycle()
    patched = {(c.instance, c.path.rsplit("/", 1)[-1]) for c in env.calls_since(mark) if c.method == "PATCH"}
    assert patched == {("default", tickets(env, "default")[a["name"]]["sys_id"])}
    assert props(env.ws("us"), b["name"])["severity"] == "High"
    assert tickets(env, "default")[a["name"]]["impact"] == "2"
    assert tickets(env, "second")[b["name"]]["impact"] == "1"

    await env.cycle()
    mark = env.stack.recorder.mark()
    await env.cycle()
    idle = env.calls_since(mark)
    assert writes(idle) == []
    per_instance = sorted(c.instance for c in idle if c.system == "servicenow")
    assert per_instance == ["default", "second"]  # one listing each, nothing else


async def test_a_record_in_another_instance_is_never_adopted(two: Env) -> None:
    env = two
    inc = env.ws("eu").create_incident(title="eu", labels=["snow"])
    # A ticket carrying the eu incident's key exists, but on the other workspace's instance.
    stray = env.stack.snow["second"].insert(
        "incident", {"short_description": "stray", "correlation_id": inc["name"]}
    )
    stats = (await env.cycle())["eu"]
    assert getattr(stats, "created", None) == 1 and getattr(stats, "adopted", None) == 0
    assert tickets(env, "default")[inc["name"]]["short_description"] == "eu"
    assert env.stack.snow["second"].record("incident", stray["sys_id"])["sys_mod_count"] == "0"
