"""The benchmark harness at tiny sizes: every section runs against the emulators and the report is
written. Numbers of calls are checked (they are the product's call economy); times never are."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from agent.core.records import Link
from agent.store.sqlite.store import Shadow
from agent.testing.bench.__main__ import SECTIONS, build_parser, main, options_from, run
from agent.testing.bench.calls import Calls, kind
from agent.testing.bench.limits import retries_after_429
from agent.testing.bench.profiling import OTHER, category, measure
from agent.testing.bench.replay import load
from agent.testing.bench.report import render
from agent.testing.bench.scale import fill, size_mb
from agent.testing.bench.targets import rows
from agent.testing.emulators.common import Call


async def test_every_section_runs_and_the_report_says_what_it_measured(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "--workspaces",
            "2",
            "--incidents",
            "6",
            "--sweep",
            "1,4",
            "--sweep-incidents",
            "4",
            "--scale",
            "40,120",
        ]
    )
    options = options_from(args, tmp_path / "work")
    # The demo section runs `make demo` (about a minute): its parsing is tested on its own below.
    sections = [s for s in SECTIONS if s != "demo"]
    results = await run(options, sections, "python -m agent.testing.bench (test)")

    steady = results.steady
    assert steady is not None and steady.initial is not None
    initial = steady.initial
    assert (
        initial.created > 0 and initial.outcome.calls.by_kind["servicenow POST incident"] == initial.created
    )
    assert initial.bound > 0 and initial.outcome.wall > 0 and initial.outcome.cpu > 0
    steps = {s.scenario: s for s in steady.steps}
    idle = steps["idle (settled)"]
    assert idle.ours is not None and (idle.ours.reads, idle.ours.writes) == (2 * steady.workspaces, 0)
    # The reference reads every open linked incident, its comments and its record, every cycle.
    assert idle.reference is not None and idle.reference.writes == 0
    assert idle.reference.reads >= steady.workspaces + 3 * steady.open_links
    # The store app's algorithm reads what changed since its last run: an idle cycle lists both
    # sides once each and writes nothing.
    assert idle.store_app is not None and (idle.store_app.reads, idle.store_app.writes) == (
        2 * steady.workspaces,
        0,
    )
    changed = steps["one changed field (Sentinel severity)"]
    assert changed.ours is not None and changed.ours.writes == 1
    assert changed.reference is not None and changed.reference.writes == 1
    assert changed.store_app is not None and changed.store_app.writes == 1
    for scenario in ("one new Sentinel comment", "one new ServiceNow work note"):
        store_app = steps[scenario].store_app
        assert store_app is not None and store_app.writes == 1, scenario
    assert set(steady.comments) == {"to_servicenow", "to_sentinel"}

    assert results.arm is not None and results.arm.created > 0
    # A rate-limit rule used up mid-sync: the agent paused before the rule refused anything.
    [rule] = results.snow_limit_rows
    assert rule.verdict == "met" and rule.measured.startswith("0 of "), rule
    assert [s.concurrency for s in results.sweep] == [1, 4]
    assert all(s.created > 0 for s in results.sweep)
    # the act step: every create's requests, fewer than the run's (the listing and look-ups), in less time
    for s in results.sweep:
        assert s.act is not None and s.act_efficiency is not None
        calls, seconds = s.act
        made = s.outcome.calls.by_kind["servicenow POST incident"]
        assert made == s.created and made < calls < s.outcome.calls.total
        assert 0 < seconds < s.outcome.wall

    # Against the lighter-weight responder (the sweep from 4 up, the initial sync): the same work as
    # the recorded run against the emulators, every request answered from the recording.
    lighter = results.lighter
    assert lighter is not None and lighter.initial is not None
    assert [r.concurrency for r in lighter.sweep] == [4]
    assert lighter.initial.workspaces == 2
    for replay in [*lighter.sweep, lighter.initial]:
        assert replay.misses == 0 and replay.differences() == []
        assert replay.created == replay.recorded.created > 0
        assert replay.tickets == replay.recorded_tickets and len(replay.tickets) == replay.created
        assert replay.outcome.calls.writes == replay.recorded.outcome.calls.writes
        # Reads may differ only by owner look-ups that concurrent tasks repeat before the cache has
        # the answer; every other read kind is made as often as recorded.
        assert all("GET sys_user" in d for d in replay.read_differences()), replay.read_differences()
        assert replay.responder_cpu > 0
    # The recording holds the headers outer middlewares add (ARM's remaining allowance, which
    # the agent paces by), not only what the handler set.
    _, recorded = load(options.workdir / "lighter-sweep" / "recording.json")
    names = {name for x in recorded for name, _ in x.headers}
    assert "x-ms-ratelimit-remaining-subscription-reads" in names and "Location" in names

    assert [s.links for s in results.scale] == [40, 120]
    for size in results.scale:
        assert (size.idle.calls.reads, size.idle.calls.writes) == (2, 0)
        assert size.diffed.calls.writes == 0  # the dry run writes nothing
        assert size.busy.calls.by_kind["servicenow PATCH incident"] == size.changed
        assert 0 < size.idle.peak_rss_mb <= size.peak_rss_mb

    assert results.profile is not None and results.profile.outcome.breakdown
    text = render(results)
    for heading in (
        "## Targets",
        "## 1. Initial sync",
        "## 2 and 3. Steady state",
        "real token buckets",
        "## 4. Scale",
        "## 5. Concurrency sweep",
        "## 5b. Concurrency sweep against a lighter-weight responder",
        "## Where the time of the initial sync goes",
    ):
        assert heading in text
    assert f"{results.options.latency * 1000:.0f} ms" in text
    # Every item of the performance issue has its row, with a verdict.
    targets = rows(results)
    assert {row.item for row in targets} == {str(i) for i in range(1, 8)}
    assert all(row.verdict.startswith(("met", "missed: ", "not measured: ")) for row in targets)
    for row in targets:
        assert f"| {row.item} | {row.target} |" in text


def test_main_writes_the_report_and_refuses_unknown_sections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "BENCH.md"
    assert main(["--only", "nonsense", "--output", str(out)]) == 2
    assert not out.exists()
    argv = ["--only", "scale", "--scale", "30", "--output", str(out), "--workdir", str(tmp_path / "w")]
    assert main(argv) == 0
    text = out.read_text()
    assert "`python -m agent.testing.bench --only scale --scale 30" in text and "## 4. Scale" in text
    assert "## 1. Initial sync" not in text
    idle = "| 5 | the cycle right after an initial sync: 2 reads per workspace, 0 writes | - |"
    assert f"{idle} not measured: the 'steady' section was not run |" in text
    assert text in capsys.readouterr().out


def test_calls_are_counted_by_system_and_kind() -> None:
    calls = [
        Call("entra", "POST", "token.v2", "/tenant/oauth2/v2.0/token", 200),
        Call("sentinel", "GET", "incidents.list", "/subscriptions/s/incidents", 200),
        Call("sentinel", "POST", "incidents.alerts", "/subscriptions/s/incidents/i/alerts", 200),
        Call("sentinel", "PUT", "incidents.put", "/subscriptions/s/incidents/i", 429),
        Call("servicenow", "PATCH", "table.patch", "/api/now/table/incident/abc", 200),
        Call("servicenow", "GET", "table.list", "/api/now/table/sys_user", 200),
    ]
    counted = Calls.of(calls)
    assert (counted.reads, counted.writes, counted.throttled, counted.entra) == (3, 2, 1, 1)
    assert kind(calls[4]) == "servicenow PATCH incident" and kind(calls[5]) == "servicenow GET sys_user"
    assert counted.brief() == "3 reads, 2 writes"


def test_profile_counts_library_time_for_its_caller() -> None:
    calls = [Call("servicenow", "GET", "table.list", f"/api/now/table/t{i % 7}", 200) for i in range(300)]
    with measure(profile=True) as sample:
        for _ in range(30):
            Calls.of(calls)
    ours = sample.breakdown["our code (agent/)"]
    # The dict and Counter work done for Calls.of is counted as ours, not as "other".
    assert ours > 0 and sample.breakdown.get(OTHER, 0.0) < ours
    assert sample.top and sample.top[0][0].startswith("agent/testing/bench/calls.py")
    assert sample.loop_cpu > 0
    assert category("~", "<built-in method orjson.loads>") == "JSON (orjson)"
    assert category("/x/site-packages/aiohttp/client.py", "_request").startswith("HTTP library")


def test_the_demo_row_countsretries_after_429_in_the_agent_log(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    lines = [
        {"event": "http_retry", "status": 429, "system": "sentinel"},
        {"event": "http_retry", "status": 503, "system": "sentinel"},
        {"event": "cycle_summary", "status": 429},
        {"event": "http_retry", "status": 429, "system": "servicenow"},
    ]
    log.write_bytes(b"\n".join(orjson.dumps(x) for x in lines) + b"\nnot json\n")
    assert retries_after_429(log) == 2
    assert retries_after_429(tmp_path / "missing.log") == 0


async def test_a_million_links_are_seeded_straight_into_the_state_db(tmp_path: Path) -> None:
    """Links beyond what the emulators hold are rows the agent reads like any other."""
    path = tmp_path / "state.db"
    template = Link(
        instance="default",
        workspace="soc-1",
        incident="a-real-incident",
        sys_id="0" * 32,
        number="INC0010001",
        fields={"severity": ("Medium", "2"), "status": ("New", "1")},
        sentinel_etag='"etag"',
        snow_mod_count=1,
        open=True,
        extra={"journal_seen": "2026-12-01T10:00:00+00:00"},
    )
    async with await Shadow.open(path) as shadow:
        await shadow.save_link(template)
    fill(path, template, 1000)
    async with await Shadow.open(path) as shadow:
        assert await shadow.count_links("default", "soc-1") == (1001, 1001)
        name = "00000000-0000-4000-8000-000000000999"
        link = (await shadow.get_links("default", "soc-1", [name]))[name]
    assert (link.sys_id, link.number) == (f"f{999:031x}", "INC50000999")
    assert (link.fields, link.extra, link.sentinel_etag) == (
        template.fields,
        template.extra,
        template.sentinel_etag,
    )
    assert size_mb(path) > 0
