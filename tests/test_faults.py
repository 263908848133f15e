"""Faults on all three emulators: the agent converges, its call amplification stays bounded,
and permanent errors are parked in the failures table instead of being retried hot.

Transient faults: 429 with ``Retry-After``, 500, 503, dropped connections and added latency at
seeded rates on Entra, Sentinel and ServiceNow (OAuth), and token-endpoint outages on both
token endpoints. Amplification is the number of calls the emulators served for one scenario
with faults divided by the calls for the same scenario (same seed, same data, same edits)
without; it is printed and held to a generous bound.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.app.runtime import Runtime
from agent.config import load_config
from agent.connectors.retry import RetryPolicy
from agent.errors import TransientError
from agent.log import log
from agent.sync.cycle import CycleOptions, CycleStats, run_workspaces
from agent.testing.emulators.simulator import Simulator
from agent.testing.emulators.stack import EmulatorStack
from tests.agent_process import AgentProcess
from tests.conftest import assert_no_silent_drops
from tests.e2e import Env, writes
from tests.sync_invariants import Checker, Findings, TimeTravel

RETRY = RetryPolicy(attempts=8, total=20, base=0.005, cap=0.05)
RATES: dict[str, Any] = {
    "rate_429": 0.06,
    "rate_500": 0.05,
    "rate_503": 0.05,
    "rate_drop": 0.05,
    "latency": 0.002,
    "retry_after": 1,
}
TOKEN_ROUTES = {"entra": "token.v2", "servicenow": "oauth.token"}
AMPLIFICATION_BOUND = 3.0
SCENARIOS = 1  # seeds in `make test`; `make soak` runs SNOW_SYNC_FAULT_SEEDS (20)


@pytest.fixture
def time_travel(monkeypatch: pytest.MonkeyPatch) -> TimeTravel:
    return TimeTravel(monkeypatch)


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    log.sinks.append(records.append)
    yield records
    log.sinks.remove(records.append)


@dataclass
class Outcome:
    calls: int
    injected: dict[str, int]
    failed_cycles: int
    findings: Findings
    duplicates: int


def _all_faults(stack: EmulatorStack) -> list[Any]:
    return [stack.entra.faults, stack.sentinel.faults, *(s.faults for s in stack.snow.values())]


async def _scenario(tmp: Path, seed: int, faulty: bool, travel: TimeTravel) -> Outcome:
    """40 incidents; 4 rounds of (analyst edits, 3 cycles, a fault-free convergence). Enough
    incidents that the faulty cycles make some 30 faults at these rates."""
    travel.offset = timedelta()  # every scenario starts at the real time
    async with EmulatorStack(seed=seed, directory=tmp / "emu") as stack:
        stack.add_workspace("soc")
        path = stack.write_config(
            tmp / "agent.ini",
            state_db=tmp / "state.db",
            workspaces=["soc"],
            extra={
                "agent": {"max_concurrency": "4", "max_close_ratio": "1"},
                "servicenow": {
                    "auth": "oauth",
                    "client_id": stack.snow_client_id,
                    "client_secret_file": "agent.snow-client-secret",
                },
            },
        )
        config = load_config(path)
        checker = Checker(stack, config)
        sim = Simulator(stack, seed=seed)
        sim.seed(["soc"], 40)
        failed = 0

        async def cycle() -> CycleStats | BaseException:
            nonlocal failed
            async with Runtime(config, retry=RETRY) as rt:
                result = (await run_workspaces(rt.syncs(), CycleOptions()))["soc"]
            failed += isinstance(result, BaseException)
            return result

        for round_ in range(4):
            for _ in range(10):
                sim.step()
            if faulty:
                for faults in _all_faults(stack):
                    faults.set("*", **RATES)
                if round_ == 1:  # both token endpoints down for a whole cycle
                    stack.entra.faults.set(TOKEN_ROUTES["entra"], rate_503=1.0)
                    stack.snow["default"].faults.set(TOKEN_ROUTES["servicenow"], rate_503=1.0)
            for _ in range(3):
                await cycle()
                for faults in _all_faults(stack):
                    faults.rules.pop(TOKEN_ROUTES["entra"], None)
                    faults.rules.pop(TOKEN_ROUTES["servicenow"], None)
            for faults in _all_faults(stack):
                faults.clear()
            # Incidents that failed back off (up to 6 h): let that time pass, then converge.
            travel.advance(timedelta(hours=7))
            findings = Findings(problems=["not checked"])
            for _ in range(6):
                result = await cycle()
                assert isinstance(result, CycleStats), result
                findings = checker.check(["soc"])
                if findings:
                    break
            assert findings, (round_, findings.problems[:10])
        injected: dict[str, int] = {}
        for faults in _all_faults(stack):
            for key, n in faults.injected.items():
                injected[key] = injected.get(key, 0) + n
        keys = Counter(r["correlation_id"] for r in stack.snow["default"].tables["incident"].values())
        duplicates = sum(n - 1 for key, n in keys.items() if key)
        assert_no_silent_drops(stack)
        return Outcome(len(stack.recorder.calls), injected, failed, findings, duplicates)


async def test_converges_under_faults_with_bounded_amplification(
    tmp_path: Path, time_travel: TimeTravel, events: list[dict[str, Any]]
) -> None:
    await _amplification(tmp_path, time_travel, events, SCENARIOS)


@pytest.mark.soak
async def test_soak_converges_under_faults_many_seeds(
    tmp_path: Path, time_travel: TimeTravel, events: list[dict[str, Any]]
) -> None:
    await _amplification(tmp_path, time_travel, events, int(os.environ.get("SNOW_SYNC_FAULT_SEEDS", "20")))


async def _amplification(
    tmp_path: Path, time_travel: TimeTravel, events: list[dict[str, Any]], scenarios: int
) -> None:
    ratios = []
    for seed in range(scenarios):
        clean = await _scenario(tmp_path / f"clean{seed}", seed, False, time_travel)
        faulty = await _scenario(tmp_path / f"faulty{seed}", seed, True, time_travel)
        ratio = faulty.calls / clean.calls
        ratios.append(ratio)
        print(
            f"\nseed {seed}: calls without faults {clean.calls}, with faults {faulty.calls}, "
            f"amplification {ratio:.2f}; faults injected {faulty.injected} "
            f"({sum(faulty.injected.values())}); cycles failed {faulty.failed_cycles}; "
            f"links {faulty.findings.links}, duplicate tickets {faulty.duplicates}"
        )
        assert clean.failed_cycles == 0 and sum(clean.injected.values()) == 0
        assert clean.duplicates == faulty.duplicates == 0
        assert sum(faulty.injected.values()) >= 30  # the faults really happened
        assert {"429", "500", "503", "drop"} <= faulty.injected.keys()
        assert faulty.failed_cycles >= 1  # the token outage failed a whole cycle, cleanly
        assert ratio <= AMPLIFICATION_BOUND
    mean = sum(ratios) / len(ratios)
    print(f"\namplification over {scenarios} seed(s): max {max(ratios):.2f}, mean {mean:.2f}")
    # Retry-After was honoured: every retry after a 429 waited at least the second it asked for.
    after_429 = [e for e in events if e["event"] == "http_retry" and e.get("status") == 429]
    assert after_429 and all(e["delay"] >= 1 for e in after_429)
    # The token outage failed whole cycles, each saying why; so may a run of other faults.
    failed = [e["error"] for e in events if e["event"] == "cycle_failed"]
    assert any("TokenUnavailable" in e for e in failed)
    assert all(e.startswith(("sentinel ", "servicenow ", "entra ")) for e in failed), failed


# --- permanent errors -----------------------------------------------------------------------

DATA_POLICY = orjson.dumps(
    {
        "error": {
            "message": "Operation Failed",
            "detail": "Data Policy Exception: \n\tThe following fields are mandatory: Resolution code",
        },
        "status": "failure",
    }
)


async def test_permanent_errors_are_parked_with_backoff_not_retried_hot(
    env: Env, time_travel: TimeTravel, events: list[dict[str, Any]]
) -> None:
    ws = env.ws()
    names = [ws.create_incident(title=f"t{i}", severity="Low", labels=["snow"])["name"] for i in range(4)]
    await env.stats()
    await env.stats()
    acl, policy, invalid, fine = names
    acl_rec, policy_rec = env.snow_record(acl), env.snow_record(policy)
    # ServiceNow: an ACL refuses one record, a data policy another; Sentinel: 400 on a third.
    env.snow.faults.fail(acl_rec["sys_id"], 403, method="PATCH")
    env.snow.faults.fail(policy_rec["sys_id"], 403, method="PATCH", body=DATA_POLICY)
    env.stack.sentinel.faults.fail(f"/incidents/{invalid}", 400, method="PUT")
    for name in (acl, policy, fine):
        ws.analyst_update(name, severity="High")
    env.snow.analyst_update("incident", env.snow_record(invalid)["sys_id"], {"impact": "1"}, by="bob.hunter")
    mark = env.stack.recorder.mark()
    stats = await env.stats()
    assert stats.failures == 3 and stats.updated_snow == 1  # the healthy incident went through
    assert env.snow_record(fine)["impact"] == "1"
    first = env.calls_since(mark)
    # five more cycles, some with new analyst work elsewhere: the parked ones are not touched
    for i in range(5):
        ws.analyst_update(fine, severity=("Medium", "High")[i % 2])
        stats = await env.stats()
        assert stats.failures == 0 and stats.updated_snow == 1
    later = env.calls_since(mark)[len(first) :]
    for sys_id in (acl_rec["sys_id"], policy_rec["sys_id"]):
        assert sum(1 for c in first if c.method == "PATCH" and sys_id in c.path) == 1
        assert not any(sys_id in c.path for c in later)
    assert sum(1 for c in first if c.method == "PUT" and invalid in c.path) == 1
    assert not any(invalid in c.path for c in writes(later))
    # visible in the logs and in `status --json`, with the reason
    failed = {e["incident"]: e for e in events if e["event"] == "incident_failed"}
    assert {acl, policy, invalid} <= failed.keys() and fine not in failed
    assert all(failed[n]["kind"] == "permanent" for n in (acl, policy, invalid))
    assert "Data Policy Exception" in failed[policy]["error"]
    async with AgentProcess(env.config_path, "status", "--json") as status:
        assert await status.wait() == 0
    report = orjson.loads("\n".join(status.stdout_text))["workspaces"]["soc"]
    parked = {f["incident"]: f for f in report["failures"]}
    assert parked.keys() == {acl, policy, invalid}
    assert "403" in parked[acl]["error"] and "400" in parked[invalid]["error"]
    assert all(f["attempts"] == 1 and f["next_try"] for f in parked.values())
    # the backoff grows while the cause stays: one more try when due, then twice as long
    time_travel.advance(timedelta(minutes=2))
    await env.stats()
    again = await env.stats()
    assert again.failures == 0  # not due yet after the second failure
    report_after = [f for f in await _failures(env) if f.incident in (acl, policy, invalid)]
    assert sorted(f.attempts for f in report_after) == [2, 2, 2]
    # once the cause is gone, the next due retry syncs them and clears the rows
    env.snow.faults.clear()
    env.stack.sentinel.faults.clear()
    time_travel.advance(timedelta(hours=7))
    await env.stats()
    assert await _failures(env) == []
    found = Checker(env.stack, env.config).check(["soc"])
    assert found, found.problems


async def _failures(env: Env) -> list[Any]:
    from agent.store.sqlite.store import Shadow

    async with await Shadow.open(env.config.agent.state_db) as shadow:
        return await shadow.failures()


async def test_entra_discovery_throttled_is_transient_not_a_config_error(
    env: Env, events: list[dict[str, Any]]
) -> None:
    """msal reports a throttled authority discovery (429) like an unknown tenant ("Unable to get
    authority configuration"); it is an outage to retry, not a configuration to fix."""
    env.ws().create_incident(title="t", labels=["snow"])
    env.stack.entra.faults.once("oidc.config", 429)
    stats = await env.stats()  # one retry gets through
    assert stats.created == 1
    assert any(e["event"] == "http_retry" and "AuthorityUnavailable" in e["error"] for e in events)
    env.stack.entra.faults.set("oidc.config", rate_429=1.0, retry_after=0)
    failed = (await env.cycle())["soc"]
    assert isinstance(failed, TransientError) and "HTTP 429" in str(failed)
    assert "AuthorityUnavailable" in str(failed) and "authority configuration" not in str(failed)
    env.stack.entra.faults.clear()
    assert isinstance((await env.cycle())["soc"], CycleStats)


async def test_entra_token_throttling_is_retried_not_an_auth_error(
    env: Env, events: list[dict[str, Any]]
) -> None:
    """A 429 from the token endpoint reaches msal's caller as an error dict, like a wrong secret;
    it is Entra being busy (AADSTS50196), so the request waits and tries again."""
    env.ws().create_incident(title="t", labels=["snow"])
    env.stack.entra.faults.once("token.v2", 429)
    stats = await env.stats()
    assert stats.created == 1
    assert any(e["event"] == "http_retry" and "temporarily_unavailable" in e["error"] for e in events)
    env.stack.entra.faults.set("token.v2", rate_429=1.0, retry_after=0)
    failed = (await env.cycle())["soc"]
    assert isinstance(failed, TransientError) and "temporarily_unavailable" in str(failed)
