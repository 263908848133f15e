"""The Prometheus alert rules in contrib/: promtool accepts them, their unit tests pass, every
rule fires in one case and stays silent in another, and they read only what the agent exports."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops_run import OpsRun
from tests.os_tools import run, tool
from tests.promql_check import Exported, metric_names, problems

HERE = Path(__file__).parents[1] / "contrib" / "prometheus"
RULES = HERE / "alerts.yml"
TESTS = HERE / "alerts.test.yml"
PROMETHEUS_MADE = {"up"}  # series Prometheus writes itself for every target
NEVER = "vector(0) > 1"


def rules(path: Path = RULES) -> list[dict[str, Any]]:
    loaded = yaml.safe_load(path.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def unit_tests() -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = yaml.safe_load(TESTS.read_text())["tests"]
    return loaded


def test_promtool_checks_the_rules() -> None:
    result = run([tool("promtool"), "check", "rules", RULES])
    assert result.returncode == 0, result.stdout
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = run([tool("promtool"), "test", "rules", TESTS.name], cwd=HERE)
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout


def test_every_rule_fires_in_one_case_and_is_silent_in_another() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    for name in names:
        checks = [
            (case, check)
            for case in unit_tests()
            for check in case["alert_rule_test"]
            if check["alertname"] == name
        ]
        assert any(check["exp_alerts"] for _, check in checks), f"{name} never fires in a test"
        # silent where its own series are there, not in a test that lacks them
        read = metric_names(next(r["expr"] for r in rules() if r["alert"] == name))
        silent = [
            case
            for case, check in checks
            if not check["exp_alerts"] and read & {s["series"].split("{")[0] for s in case["input_series"]}
        ]
        assert silent, f"{name} is never silent in a test"


@pytest.mark.parametrize("alert", [rule["alert"] for rule in rules()])
def test_each_rule_s_firing_case_depends_on_that_rule(alert: str, tmp_path: Path) -> None:
    """With one rule made unable to fire, promtool's tests fail, naming that rule."""
    loaded = yaml.safe_load(RULES.read_text())
    for group in loaded["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                rule["expr"] = NEVER
    (tmp_path / RULES.name).write_text(yaml.safe_dump(loaded))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    result = run([tool("promtool"), "test", "rules", TESTS.name], cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert f"alertname: {alert}," in result.stdout
    others = {r["alert"] for r in rules()} - {alert}
    assert not any(f"alertname: {other}," in result.stdout for other in others), result.stdout


def test_rules_read_only_what_the_agent_exports(ops_run: OpsRun) -> None:
    exported = Exported.parse(ops_run.metrics)
    for name in PROMETHEUS_MADE:
        exported.labels[name] = set()
        exported.types[name] = "gauge"
    found = {rule["alert"]: problems(rule["expr"], exported) for rule in rules()}
    assert not any(found.values()), found


def test_the_issue_s_rules_are_there() -> None:
    """Stale sync, failing incidents, safety-valve trips, token failures, a rate-limit pause and
    agents of an active/standby pair without a leader."""
    read = {rule["alert"]: metric_names(rule["expr"]) for rule in rules()}
    assert "sentinel_snow_sync_poll_interval_seconds" in read["SentinelSnowSyncStale"]
    assert "sentinel_snow_sync_failing_incidents" in read["SentinelSnowSyncIncidentsFailing"]
    assert "sentinel_snow_sync_safety_valve_trips_total" in read["SentinelSnowSyncSafetyValveTripped"]
    assert "sentinel_snow_sync_token_requests_total" in read["SentinelSnowSyncTokenFailures"]
    assert "sentinel_snow_sync_rate_limit_paused" in read["SentinelSnowSyncRateLimitPaused"]
    assert "sentinel_snow_sync_leader" in read["SentinelSnowSyncNoLeader"]
