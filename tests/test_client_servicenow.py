"""The ServiceNow Table API client against the ServiceNow emulator over TLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from agent.connectors.http import HttpClient
from agent.connectors.pacing import HourlyQuotas
from agent.connectors.retry import RetryPolicy
from agent.connectors.servicenow.auth import ServiceNowBasicAuth
from agent.connectors.servicenow.client import ServiceNowClient
from agent.connectors.servicenow.models import parse_snow_time
from agent.connectors.servicenow.pause import PauseGate
from agent.connectors.servicenow.query import Q
from agent.errors import (
    Forbidden,
    InstancePaused,
    NotFound,
    PermanentError,
    RateLimited,
    TransientError,
)
from agent.testing.emulators.common import Clock, EmulatorServer, Recorder, TLSMaterial, TokenRegistry
from agent.testing.emulators.servicenow import ServiceNowEmulator

USER = "svc_sentinel_sync"
PASSWORD = "snow-password-for-client-tests"
FIELDS = ("short_description", "state", "impact", "caller_id", "correlation_id", "work_notes", "active")
INJECTION = "x^ORDERBYsys_id^NQactive=true"


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@dataclass
class Env:
    snow: ServiceNowEmulator
    clock: Clock
    recorder: Recorder
    client: ServiceNowClient
    http: HttpClient
    sleeps: Sleeps
    url: str

    def calls(self, mark: int, route: str | None = None) -> list[tuple[str, str, int]]:
        return [(c.method, c.route, c.status) for c in self.recorder.since(mark) if route in (None, c.route)]

    def incident(self, short_description: str, **fields: str) -> dict[str, str]:
        return self.snow.insert("incident", {"short_description": short_description, **fields})


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    return TLSMaterial(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def env(tls: TLSMaterial) -> AsyncIterator[Env]:
    clock = Clock()
    recorder = Recorder()
    snow = ServiceNowEmulator(clock=clock, tokens=TokenRegistry(clock), recorder=recorder)
    snow.add_api_user(USER, PASSWORD)
    server = EmulatorServer(snow.app, tls)
    await server.start()
    sleeps = Sleeps()
    http = HttpClient(
        "servicenow",
        auth=ServiceNowBasicAuth(USER, PASSWORD),
        ca_bundle=tls.ca_file,
        sleep=sleeps,
        retry=RetryPolicy(attempts=4, total=600.0),
    )
    try:
        yield Env(
            snow, clock, recorder, ServiceNowClient(http, server.base_url), http, sleeps, server.base_url
        )
    finally:
        await http.close()
        await server.stop()


# --- records --------------------------------------------------------------------------------


async def test_create_get_patch(env: Env) -> None:
    caller = env.snow.add_user("abel.tuter", "abel@example.com", "Abel Tuter")
    created = await env.client.create(
        {"short_description": "Disk full", "impact": "2", "caller_id": caller, "correlation_id": "guid-1"},
        FIELDS,
    )
    assert created.number.startswith("INC") and len(created.sys_id) == 32
    assert created.mod_count == 0 and created.updated_by == USER
    assert created.get("caller_id") == caller  # a reference, flattened to its sys_id
    assert created.get("impact") == "2" and created.get("active") == "true"
    assert created.updated_on == parse_snow_time(
        env.snow.record("incident", created.sys_id)["sys_updated_on"]
    )

    fetched = await env.client.get(created.sys_id, FIELDS)
    assert fetched == created

    env.clock.advance(5)
    patched = await env.client.patch(created.sys_id, {"state": "2"}, FIELDS)
    assert patched.get("state") == "2" and patched.mod_count == 1
    assert patched.updated_on > created.updated_on
    assert env.snow.record("incident", created.sys_id)["state"] == "2"


async def test_get_missing_is_not_found(env: Env) -> None:
    with pytest.raises(NotFound, match="HTTP 404") as info:
        await env.client.get("0" * 32, FIELDS)
    assert info.value.detail and "Record doesn't exist" in info.value.detail
    with pytest.raises(ValueError, match="sys_id"):
        await env.client.get("../sys_user", FIELDS)


async def test_values_must_be_strings_and_fields_valid(env: Env) -> None:
    with pytest.raises(TypeError, match="must be a string"):
        await env.client.create({"impact": 2}, FIELDS)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="field name"):
        await env.client.create({"short_description^x": "y"}, FIELDS)
    assert env.snow.find("incident", "") == []


async def test_data_policy_is_forbidden(env: Env) -> None:
    rec = env.incident("to resolve")
    with pytest.raises(Forbidden, match=r"HTTP 403 .*Data Policy Exception") as info:
        await env.client.patch(rec["sys_id"], {"state": "6"}, FIELDS)
    assert info.value.detail and "Data Policy Exception" in info.value.detail
    resolved = await env.client.patch(
        rec["sys_id"], {"state": "6", "close_code": "Solution provided", "close_notes": "done"}, FIELDS
    )
    assert resolved.get("state") == "6"


# --- retries: which writes may be repeated --------------------------------------------------


async def test_create_is_not_retried_after_a_5xx(env: Env) -> None:
    env.snow.faults.once("table.post", 503)
    mark = env.recorder.mark()
    with pytest.raises(TransientError, match=r"servicenow POST .*: HTTP 503") as info:
        await env.client.create({"short_description": "once"}, FIELDS)
    assert info.value.status == 503
    assert env.calls(mark) == [("POST", "table.post", 503)]
    assert env.sleeps.calls == []


async def test_create_is_not_retried_after_a_dropped_connection(env: Env) -> None:
    env.snow.faults.once("table.post", 0)
    mark = env.recorder.mark()
    with pytest.raises(TransientError, match=r"servicenow POST .*: connection failed"):
        await env.client.create({"short_description": "once"}, FIELDS)
    assert env.calls(mark) == [("POST", "table.post", 0)]


async def test_create_is_retried_after_429_once_created(env: Env) -> None:
    env.snow.faults.once("table.post", 429)
    mark = env.recorder.mark()
    rec = await env.client.create({"short_description": "throttled"}, FIELDS)
    assert env.calls(mark) == [("POST", "table.post", 429), ("POST", "table.post", 201)]
    assert env.sleeps.calls == [1.0]  # the emulator's Retry-After; jitter stays below it
    assert [r["sys_id"] for r in env.snow.find("incident", "short_description=throttled")] == [rec.sys_id]


async def test_plain_patch_is_retried_but_journal_patch_is_not(env: Env) -> None:
    rec = env.incident("retry me")
    env.snow.faults.once("table.patch", 500)
    mark = env.recorder.mark()
    await env.client.patch(rec["sys_id"], {"impact": "1"}, FIELDS)
    assert env.calls(mark) == [("PATCH", "table.patch", 500), ("PATCH", "table.patch", 200)]

    env.snow.faults.once("table.patch", 500)
    mark = env.recorder.mark()
    with pytest.raises(TransientError, match=r"servicenow PATCH .*: HTTP 500"):
        await env.client.patch(rec["sys_id"], {"work_notes": "appended once"}, FIELDS)
    assert env.calls(mark) == [("PATCH", "table.patch", 500)]
    assert env.snow.journal(rec["sys_id"]) == []

    written = await env.client.patch(rec["sys_id"], {"work_notes": "appended once"}, FIELDS)
    assert written.get("work_notes") == ""  # journal fields read back empty (REFERENCE C.4)
    assert [j["value"] for j in env.snow.journal(rec["sys_id"])] == ["appended once"]


async def test_hourly_rate_limit_surfaces_as_rate_limited(env: Env) -> None:
    env.snow.set_rate_limit(USER, 1)
    env.http.retry = RetryPolicy.disabled()
    await env.client.find(Q.eq("active", True), FIELDS)
    with pytest.raises(RateLimited, match="HTTP 429") as info:
        await env.client.find(Q.eq("active", True), FIELDS)
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 3600


async def test_e8_a_rule_used_up_pauses_the_instance_instead_of_meeting_429(env: Env) -> None:
    # The instance's clock is five hours ahead of ours and ten minutes into its hour: the rule's
    # window resets in 50 minutes of anybody's time.
    hour = 3600.0
    env.clock.advance(hour - env.clock.time() % hour + 600 + 5 * hour)
    env.snow.set_rate_limit(USER, 3)
    gate = PauseGate("default")
    env.http.quotas, env.http.gate = HourlyQuotas(), gate
    for _ in range(3):
        await env.client.find(Q.eq("active", True), FIELDS)
    mark = env.recorder.mark()
    with pytest.raises(InstancePaused, match="paused until") as info:
        await env.client.find(Q.eq("active", True), FIELDS)
    assert env.calls(mark) == []  # not sent: it would only have been refused
    assert [c.status for c in env.recorder.since(0)] == [200, 200, 200]
    assert 2990 < info.value.retry_after <= 3002 and gate.active()


# --- listing --------------------------------------------------------------------------------


async def test_list_records_pages_without_gaps_or_duplicates(env: Env) -> None:
    created = [env.incident(f"inc {i}", correlation_id=f"c{i}")["sys_id"] for i in range(23)]
    env.incident("closed one", state="7")
    mark = env.recorder.mark()
    got = [r async for r in env.client.list_records(Q.eq("active", True), FIELDS, page_size=5)]
    assert sorted(r.sys_id for r in got) == sorted(created)
    assert len({r.sys_id for r in got}) == len(got) == 23
    assert [(r.updated_on, r.sys_id) for r in got] == sorted((r.updated_on, r.sys_id) for r in got)
    assert len(env.calls(mark, "table.list")) == 5  # 5+5+5+5+3: the short page ends it


async def test_list_records_exact_multiple_of_the_page_size(env: Env) -> None:
    for i in range(6):
        env.incident(f"n{i}")
    mark = env.recorder.mark()
    got = [r async for r in env.client.list_records(Q(), FIELDS, page_size=3)]
    assert len(got) == 6 and len(env.calls(mark, "table.list")) == 3  # 3, 3, then an empty page


async def test_list_records_survives_updates_between_pages(env: Env) -> None:
    ids = [env.incident(f"moving {i}")["sys_id"] for i in range(12)]
    env.clock.advance(10)
    seen: list[str] = []
    async for rec in env.client.list_records(
        Q.startswith("short_description", "moving"), FIELDS, page_size=4
    ):
        seen.append(rec.sys_id)
        if len(seen) == 2:
            # An analyst touches a record already read: it moves to the end of the order.
            env.snow.analyst_update("incident", seen[0], {"impact": "1"})
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))

    # The same situation with sysparm_offset paging loses a record: everything behind the
    # moved one shifts forward by one place, into the page that was already read.
    async def offset_page(offset: int) -> list[str]:
        resp = await env.http.request(
            "GET",
            env.url + "/api/now/table/incident",
            params={
                "sysparm_query": "short_descriptionSTARTSWITHmoving^ORDERBYsys_updated_on^ORDERBYsys_id",
                "sysparm_fields": "sys_id",
                "sysparm_limit": 4,
                "sysparm_offset": offset,
            },
        )
        return [r["sys_id"] for r in resp.body["result"]]

    env.clock.advance(10)
    by_offset = await offset_page(0)
    env.snow.analyst_update("incident", by_offset[0], {"impact": "2"})
    by_offset += await offset_page(4) + await offset_page(8) + await offset_page(12)
    assert len(set(by_offset)) == len(ids) - 1


async def test_list_records_rejects_own_ordering_and_bad_page_sizes(env: Env) -> None:
    with pytest.raises(ValueError, match="without order_by"):
        _ = [r async for r in env.client.list_records(Q().order_by("number"), FIELDS)]
    with pytest.raises(ValueError, match="page_size"):
        _ = [r async for r in env.client.list_records(Q(), FIELDS, page_size=0)]


async def test_list_records_is_bounded(env: Env) -> None:
    for i in range(5):
        env.incident(f"b{i}")
    client = ServiceNowClient(env.http, env.url, max_pages=2)
    with pytest.raises(PermanentError, match="TooManyPages"):
        _ = [r async for r in client.list_records(Q(), FIELDS, page_size=2)]


# --- injection ------------------------------------------------------------------------------


async def test_caret_injection_cannot_widen_a_lookup(env: Env) -> None:
    target = env.incident(INJECTION)
    others = [env.incident(f"other {i}")["sys_id"] for i in range(3)]
    found = await env.client.find(Q.eq("short_description", INJECTION), FIELDS)
    assert [r.sys_id for r in found] == [target["sys_id"]]

    env.snow.delete("incident", target["sys_id"])
    assert await env.client.find(Q.eq("short_description", INJECTION), FIELDS) == []

    # The same value pasted in unescaped turns into "...=x OR active=true": every record.
    resp = await env.http.request(
        "GET",
        env.url + "/api/now/table/incident",
        params={"sysparm_query": "short_description=" + INJECTION, "sysparm_fields": "sys_id"},
    )
    widened = {r["sys_id"] for r in resp.body["result"]}
    assert widened == set(others)


async def test_in_lookup_by_unique_key(env: Env) -> None:
    a = env.incident("a", correlation_id="73e01a99-5cd7-4139-a149-9f2736ff2ab5")
    env.incident("b", correlation_id="other")
    got = [
        r
        async for r in env.client.list_records(
            Q.in_("correlation_id", ["73e01a99-5cd7-4139-a149-9f2736ff2ab5", "missing"]), FIELDS
        )
    ]
    assert [r.sys_id for r in got] == [a["sys_id"]]


# --- journal --------------------------------------------------------------------------------


async def test_journal_for_many_records_paged_and_since(env: Env) -> None:
    one, two, three = (env.incident(n)["sys_id"] for n in ("j1", "j2", "j3"))
    env.snow.analyst_update("incident", one, {"work_notes": "old note"}, by="alice.analyst")
    env.clock.advance(60)
    since = datetime.fromtimestamp(env.clock.time(), UTC).replace(microsecond=0)
    env.snow.analyst_update("incident", one, {"work_notes": "n1"}, by="alice.analyst")
    env.snow.analyst_update("incident", two, {"comments": "c2"})
    env.snow.analyst_update("incident", two, {"work_notes": "n2", "comments": "c2b"})
    env.snow.analyst_update("incident", three, {"work_notes": "n3"})
    env.snow.analyst_update("incident", three, {"comments": "c3"})

    mark = env.recorder.mark()
    entries = await env.client.journal([one, two, three], since=since, page_size=2)
    assert sorted(e.value for e in entries) == ["c2", "c2b", "c3", "n1", "n2", "n3"]
    assert len({e.sys_id for e in entries}) == 6
    assert [(e.created_on, e.sys_id) for e in entries] == sorted((e.created_on, e.sys_id) for e in entries)
    assert len(env.calls(mark, "table.list")) == 4  # 2+2+2, then an empty page
    by_value = {e.value: e for e in entries}
    assert by_value["n1"].element == "work_notes" and by_value["n1"].element_id == one
    assert by_value["n1"].created_by == "alice.analyst"
    assert by_value["c3"].element == "comments" and by_value["c3"].element_id == three

    notes = await env.client.journal([one, two, three], elements=("work_notes",))
    assert sorted(e.value for e in notes) == ["n1", "n2", "n3", "old note"]
    assert await env.client.journal([]) == []


async def test_journal_chunks_long_id_lists(env: Env) -> None:
    real = env.incident("chunked")["sys_id"]
    env.snow.analyst_update("incident", real, {"work_notes": "found"})
    ids = [f"{i:032x}" for i in range(70)] + [real]
    mark = env.recorder.mark()
    entries = await env.client.journal(ids)
    assert [e.value for e in entries] == ["found"]
    assert len(env.calls(mark, "table.list")) == 2  # 50 + 21 ids


# --- users and groups -----------------------------------------------------------------------


async def test_find_user_by_each_key_with_cache(env: Env) -> None:
    sys_id = env.snow.add_user("abel.tuter", "abel.tuter@example.com", "Abel Tuter")
    by_name = await env.client.find_user(user_name="abel.tuter")
    assert by_name is not None and (by_name.sys_id, by_name.email, by_name.name) == (
        sys_id,
        "abel.tuter@example.com",
        "Abel Tuter",
    )
    assert await env.client.find_user(email="abel.tuter@example.com") == by_name
    assert await env.client.find_user(sys_id=sys_id) == by_name
    mark = env.recorder.mark()
    assert await env.client.find_user(user_name="abel.tuter") == by_name
    assert await env.client.find_user(user_name="nobody") is None
    assert await env.client.find_user(user_name="nobody") is None
    assert len(env.calls(mark)) == 1  # hits and misses are cached
    with pytest.raises(ValueError, match="exactly one"):
        await env.client.find_user(user_name="a", email="b")


async def test_concurrent_look_ups_of_one_user_ask_once(env: Env) -> None:
    # Workspaces of one instance resolve their owners at the same time: the cache must not let
    # each of them query the same user.
    env.snow.add_user("abel.tuter", "abel.tuter@example.com", "Abel Tuter")
    mark = env.recorder.mark()
    found = await asyncio.gather(*(env.client.find_user(email="abel.tuter@example.com") for _ in range(5)))
    assert len({u.sys_id for u in found if u is not None}) == 1 and None not in found
    assert len(env.calls(mark)) == 1


async def test_find_user_with_duplicate_emails(env: Env) -> None:
    env.snow.add_user("dup.one", "shared@example.com", "Dup One")
    env.snow.add_user("dup.two", "shared@example.com", "Dup Two")
    assert await env.client.find_user(email="shared@example.com") is None
    inactive = env.snow.add_user("old.carol", "carol@example.com", "Carol Old")
    env.snow.analyst_update("sys_user", inactive, {"active": "false"})
    active = env.snow.add_user("carol", "carol@example.com", "Carol")
    found = await env.client.find_user(email="carol@example.com")
    assert found is not None and found.sys_id == active


async def test_find_group(env: Env) -> None:
    group = env.snow.add_group("Security Operations")
    assert await env.client.find_group("Security Operations") == group
    assert await env.client.find_group("Nope") is None
    env.snow.add_group("Twin")
    env.snow.add_group("Twin")
    assert await env.client.find_group("Twin") is None
