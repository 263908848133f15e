"""Closure classification both ways against the emulators (the Sentinel emulator enforces the
REFERENCE A.6 rules, the ServiceNow emulator the close data policy of C.8)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agent.app.runtime import Runtime
from agent.config import load_config
from agent.errors import ConfigError, PermanentError
from agent.sync.cycle import CycleOptions, run_workspaces
from tests.e2e import Env, props, writes

ALICE = "alice@contoso.example"


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    from agent.log import log

    records: list[dict[str, Any]] = []
    log.sinks.append(records.append)
    yield records
    log.sinks.remove(records.append)


def count(records: list[dict[str, Any]], event: str) -> int:
    return sum(1 for r in records if r["event"] == event)


async def linked(env: Env) -> tuple[str, str]:
    inc = env.ws().create_incident(
        title="Keep my title", description="keep my description", labels=["snow", "vip"], owner_upn=ALICE
    )
    await env.stats()
    return inc["name"], env.snow_record(inc["name"])["sys_id"]


@pytest.mark.parametrize(
    ("classification", "reason", "close_code"),
    [
        ("TruePositive", "SuspiciousActivity", "Solution provided"),
        ("BenignPositive", "SuspiciousButExpected", "Resolved by caller"),
        ("FalsePositive", "InaccurateData", "No resolution provided"),
        ("Undetermined", None, "No resolution provided"),
    ],
)
async def test_sentinel_close_resolves_snow_in_one_patch(
    env: Env, events: list[dict[str, Any]], classification: str, reason: str | None, close_code: str
) -> None:
    name, sys_id = await linked(env)
    closing: dict[str, Any] = {"status": "Closed", "classification": classification}
    if reason:
        closing |= {"classificationReason": reason, "classificationComment": "checked with the owner"}
    env.ws().analyst_update(name, **closing)
    mark = env.stack.recorder.mark()
    await env.stats()
    # One PATCH carried state, close_code and close_notes (the data policy refuses them apart).
    assert [c.route for c in writes(env.calls_since(mark))] == ["table.patch"]
    rec = env.snow.record("incident", sys_id)
    assert (rec["state"], rec["close_code"]) == ("6", close_code)
    assert rec["close_notes"].startswith(f"Closed in Microsoft Sentinel as {classification}")
    if reason:
        assert rec["close_notes"].endswith(f"({reason}): checked with the owner")
    assert count(events, "closure_to_snow") == 1


@pytest.mark.parametrize("state", ["6", "7"])
async def test_snow_resolve_closes_sentinel_with_benign_positive_and_its_reason(
    env: Env, events: list[dict[str, Any]], state: str
) -> None:
    name, sys_id = await linked(env)
    env.snow.analyst_update(
        "incident",
        sys_id,
        {"state": state, "close_code": "Resolved by caller", "close_notes": "the user ran the tool"},
    )
    await env.stats()
    p = props(env.ws(), name)
    assert (p["status"], p["classification"], p["classificationReason"]) == (
        "Closed",
        "BenignPositive",
        "SuspiciousButExpected",
    )
    assert p["classificationComment"] == "the user ran the tool"
    # owner, labels, title and description untouched
    assert p["owner"]["userPrincipalName"] == ALICE
    assert [lbl["labelName"] for lbl in p["labels"]] == [
        "snow",
        "vip",
        env.snow.record("incident", sys_id)["number"],
    ]
    assert (p["title"], p["description"]) == ("Keep my title", "keep my description")
    assert count(events, "closure_to_sentinel") == 1


async def test_benign_positive_without_reason_is_refused(env: Env, tmp_path: Any) -> None:
    name, _ = await linked(env)
    async with Runtime(env.config) as rt:
        client = rt.sentinel_client("soc")
        current = await client.get_incident(name)
        with pytest.raises(PermanentError, match="must have classificationReason"):
            await client.update_incident(current, {"status": "Closed", "classification": "BenignPositive"})
    assert props(env.ws(), name)["status"] == "New"
    env.rewrite({"closure_to_sentinel": {"Resolved by caller": "BenignPositive", "*": "Undetermined"}})
    with pytest.raises(
        ConfigError, match=r"\[closure_to_sentinel\] Resolved by caller: BenignPositive needs a"
    ):
        load_config(env.config_path)


async def test_unknown_close_code_falls_back_to_the_star_row(env: Env) -> None:
    env.rewrite(
        {
            "closure_to_sentinel": {
                "Solution provided": "TruePositive/SuspiciousActivity",
                "*": "FalsePositive/InaccurateData",
            },
        }
    )
    name, sys_id = await linked(env)
    env.snow.analyst_update(
        "incident", sys_id, {"state": "6", "close_code": "Closed by automation", "close_notes": "auto"}
    )
    stats = await env.stats()
    assert stats.failures == 0
    p = props(env.ws(), name)
    assert (p["status"], p["classification"], p["classificationReason"]) == (
        "Closed",
        "FalsePositive",
        "InaccurateData",
    )


async def test_close_code_without_a_row_closes_as_undetermined_and_is_logged_once(
    env: Env, events: list[dict[str, Any]]
) -> None:
    # README's own table without a "*" row: the loader accepts it (issue #13, item 5).
    env.rewrite({"closure_to_sentinel": {"Solution provided": "TruePositive/SuspiciousActivity"}})
    pairs = [await linked(env) for _ in range(3)]
    codes = ("Closed by automation", "Closed by automation", "Merged")
    for (_name, sys_id), code in zip(pairs, codes, strict=True):
        env.snow.analyst_update("incident", sys_id, {"state": "6", "close_code": code, "close_notes": "auto"})
    first = pairs[0][1]
    async with Runtime(env.config) as rt:
        syncs = rt.syncs()  # one process: a code is logged once, however often it closes
        await run_workspaces(syncs, CycleOptions())
        env.snow.analyst_update("incident", first, {"state": "2", "close_code": "", "close_notes": ""})
        await run_workspaces(syncs, CycleOptions())
        assert props(env.ws(), pairs[0][0])["status"] == "Active"
        env.snow.analyst_update(
            "incident", first, {"state": "6", "close_code": "Closed by automation", "close_notes": "again"}
        )
        await run_workspaces(syncs, CycleOptions())
    for name, _sys_id in pairs:
        p = props(env.ws(), name)
        assert (p["status"], p["classification"]) == ("Closed", "Undetermined")
        assert p.get("classificationReason") is None
    unmapped = [
        (e["field"], e["side"], e["value"], e["default"]) for e in events if e["event"] == "value_unmapped"
    ]
    assert sorted(unmapped) == [
        ("close_code", "servicenow", "Closed by automation", "Undetermined"),
        ("close_code", "servicenow", "Merged", "Undetermined"),
    ]


async def test_closed_without_close_code_still_closes(env: Env) -> None:
    env.stack.snow["default"].close_data_policy = False  # an instance without the data policy
    name, sys_id = await linked(env)
    env.snow.analyst_update("incident", sys_id, {"state": "7"})
    await env.stats()
    p = props(env.ws(), name)
    assert (p["status"], p["classification"]) == ("Closed", "Undetermined")
    assert p["classificationComment"].startswith("Closed in ServiceNow INC")


async def test_reopen_either_side_reopens_the_other_and_clears_the_classification(
    env: Env, events: list[dict[str, Any]]
) -> None:
    name, sys_id = await linked(env)
    ws = env.ws()
    ws.analyst_update(
        name, status="Closed", classification="TruePositive", classificationReason="SuspiciousActivity"
    )
    await env.stats()
    ws.analyst_update(name, status="Active", classification=None, classificationReason=None)
    await env.stats()
    rec = env.snow.record("incident", sys_id)
    assert (rec["state"], rec["close_code"], rec["close_notes"]) == ("2", "", "")
    env.snow.analyst_update(
        "incident", sys_id, {"state": "6", "close_code": "Solution provided", "close_notes": "done"}
    )
    await env.stats()
    assert props(env.ws(), name)["classification"] == "TruePositive"
    env.snow.analyst_update("incident", sys_id, {"state": "2"})
    await env.stats()
    p = props(env.ws(), name)
    assert p["status"] == "Active"
    assert (
        not p.get("classification")
        and not p.get("classificationReason")
        and not p.get("classificationComment")
    )
    assert p["owner"]["userPrincipalName"] == ALICE
    assert (count(events, "closure_to_snow"), count(events, "reopen_to_snow")) == (1, 1)
    assert (count(events, "closure_to_sentinel"), count(events, "reopen_to_sentinel")) == (1, 1)
