"""The Defender portal: provider ids, portal links, and incidents merged in the unified portal.

A merge closes the source incident, moves its tags (our ServiceNow number label among them) to
the surviving incident and adds the ``Redirected`` tag to the source (see
agent.sync.followups). The source's ticket then gets one work note naming the
survivor, ``parent_incident`` pointing at the survivor's ticket, and is resolved.
"""

from __future__ import annotations

from typing import Any

from agent.connectors.sentinel.source import EXTRA_PROVIDER_ID
from agent.core.records import Link
from agent.store.sqlite.store import Shadow
from tests.e2e import Env, props, writes

DEFENDER = "https://security.microsoft.com/incidents/"


def xdr(env: Env, title: str, provider_id: str, labels: list[str] | None = None) -> dict[str, Any]:
    ws = env.ws()
    inc = ws.create_incident(title=title, labels=["snow"] if labels is None else labels)
    ws.analyst_update(inc["name"], providerName="Microsoft XDR", providerIncidentId=provider_id)
    return inc


def labels(env: Env, name: str) -> list[str]:
    return [lbl["labelName"] for lbl in props(env.ws(), name)["labels"]]


def merge(env: Env, source: str, target: str) -> None:
    """What the Defender portal does to the two incidents (Microsoft Learn, incident merging)."""
    ws = env.ws()
    moved, kept = labels(env, source), labels(env, target)
    close_as_redirected(env, source)
    ws.analyst_update(target, labels=[*kept, *(x for x in moved if x not in kept)])


def close_as_redirected(env: Env, name: str) -> None:
    env.ws().analyst_update(name, status="Closed", classification="Undetermined", labels=["Redirected"])


async def link_of(env: Env, name: str) -> Link:
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        return (await shadow.get_links("default", "soc", [name]))[name]


def notes(env: Env, sys_id: str) -> list[str]:
    return [row["value"] for row in env.snow.journal(sys_id, "work_notes")]


async def test_ticket_links_both_portals_and_the_provider_id_is_kept(env: Env) -> None:
    inc = xdr(env, "XDR incident", "4242")
    native = env.ws().create_incident(title="native", labels=["snow"])
    await env.stats()
    description = env.snow_record(inc["name"])["description"]
    assert "portal.azure.com" in description and inc["name"] in description
    assert f"{DEFENDER}4242" in description
    assert DEFENDER not in env.snow_record(native["name"])["description"]
    assert (await link_of(env, inc["name"])).extra[EXTRA_PROVIDER_ID] == "4242"


async def test_merged_incident_notes_links_and_resolves_its_ticket(env: Env) -> None:
    source = xdr(env, "Suspicious sign-in", "100")
    survivor = xdr(env, "Multi-stage attack", "200")
    await env.stats()
    await env.stats()
    src, dst = env.snow_record(source["name"]), env.snow_record(survivor["name"])
    merge(env, source["name"], survivor["name"])
    assert src["number"] in labels(env, survivor["name"])

    mark = env.stack.recorder.mark()
    await env.stats()
    rec = env.snow_record(source["name"])
    assert rec["state"] == "6" and rec["close_code"]
    assert rec["parent_incident"] == dst["sys_id"]
    [note] = [n for n in notes(env, src["sys_id"]) if "Merged" in n]
    assert "into incident 200: Multi-stage attack" in note
    assert f"{DEFENDER}200" in note and dst["number"] in note
    assert (await link_of(env, source["name"])).extra["merged_into"] == survivor["name"]
    assert env.snow_record(survivor["name"])["state"] == "1"  # the survivor's ticket carries on
    assert len([c for c in writes(env.calls_since(mark)) if c.path.endswith(src["sys_id"])]) == 1

    for _ in range(2):  # noted once
        await env.stats()
    assert len([n for n in notes(env, src["sys_id"]) if "Merged" in n]) == 1
    assert len(env.snow_records()) == 2


async def test_merge_into_an_incident_without_a_ticket(env: Env) -> None:
    source = xdr(env, "Phishing mail", "300")
    survivor = xdr(env, "Unlabelled XDR incident", "400", labels=[])
    await env.stats()
    await env.stats()
    src = env.snow_record(source["name"])
    merge(env, source["name"], survivor["name"])  # the survivor inherits the "snow" label
    stats = await env.stats()
    assert stats.created == 1
    dst = env.snow_record(survivor["name"])
    rec = env.snow_record(source["name"])
    assert rec["parent_incident"] == dst["sys_id"] and rec["state"] == "6"
    assert any(dst["number"] in n for n in notes(env, src["sys_id"]))


async def test_merge_with_the_survivor_unknown_links_the_redirecting_page(env: Env) -> None:
    env.rewrite(
        {"agent": {"writeback_label": "false"}, "workspace:soc": {"incident_filter": ""}}
    )
    source = xdr(env, "Lone incident", "500", labels=[])
    await env.stats()
    await env.stats()
    src = env.snow_record(source["name"])
    close_as_redirected(env, source["name"])
    await env.stats()
    rec = env.snow_record(source["name"])
    assert rec["state"] == "6" and rec["parent_incident"] == ""
    [note] = [n for n in notes(env, src["sys_id"]) if "Merged" in n]
    assert f"{DEFENDER}500" in note and "opens the surviving incident" in note
    assert (await link_of(env, source["name"])).extra["merged_into"] == ""


async def test_a_copied_number_label_is_not_a_merge(env: Env) -> None:
    a = xdr(env, "a", "600")
    b = xdr(env, "b", "700")
    await env.stats()
    await env.stats()
    number = env.snow_record(a["name"])["number"]
    env.ws().analyst_update(b["name"], labels=[*labels(env, b["name"]), number])  # by hand
    await env.stats()
    rec = env.snow_record(a["name"])
    assert rec["state"] == "1" and rec["parent_incident"] == ""
    assert not [n for n in notes(env, rec["sys_id"]) if "Merged" in n]
