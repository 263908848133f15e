"""The Grafana dashboard in contrib/ queries only what a running agent exports.

Every query of every panel and template variable is parsed as PromQL and compared with the
``/metrics`` of a real ``run`` against the emulators (the ``ops_run`` fixture): metric names,
label matchers, grouping labels and legend labels.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.app.metrics import METRICS
from tests.ops_run import OpsRun
from tests.promql_check import TARGET_LABELS, Exported, metric_names, problems

DASHBOARD = Path(__file__).parents[1] / "contrib" / "grafana" / "sentinel-snow-sync.json"
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[a-zA-Z_]\w*)\s*\)$")
LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_]\w*)\s*\}\}")
VARIABLE = re.compile(r"\$\{?([a-zA-Z_]\w*)")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(DASHBOARD.read_bytes())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # a collapsed row holds its panels
    return out


def targets(board: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in panels(board) for t in p.get("targets", [])]


@pytest.fixture(scope="module")
def exported(ops_run: OpsRun) -> Exported:
    return Exported.parse(ops_run.metrics)


def test_every_panel_query_reads_what_the_agent_exports(exported: Exported) -> None:
    board = dashboard()
    found = {}
    for title, target in targets(board):
        expr = target["expr"]
        trouble = problems(expr, exported)
        legend = set(LEGEND_LABEL.findall(target.get("legendFormat", "")))
        available = set(TARGET_LABELS).union(*(exported.labels.get(n, ()) for n in metric_names(expr)))
        trouble += [f"legend label {label!r} is on none of its metrics" for label in legend - available]
        if trouble:
            found[f"{title}: {expr}"] = trouble
    assert not found, found
    assert len(targets(board)) >= 20


def test_template_variables_read_what_the_agent_exports(exported: Exported) -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "instance", "workspace"]
    for name in ("job", "instance", "workspace"):
        query = variables[name]["query"]["query"]
        m = LABEL_VALUES.match(query)
        assert m, query
        assert not problems(m["selector"], exported), query
        selected = metric_names(m["selector"])
        assert all(m["label"] in exported.labels[n] | TARGET_LABELS for n in selected), query


def test_every_variable_used_is_defined_and_every_panel_uses_the_datasource_variable() -> None:
    board = dashboard()
    defined = {v["name"] for v in board["templating"]["list"]}
    text = DASHBOARD.read_text()
    used = {name for name in VARIABLE.findall(text) if not name.startswith("__")}
    assert used <= defined, used - defined
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    for p in panels(board):
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["description"], p["title"]


def test_the_issue_s_panels_are_there() -> None:
    """Cycle lag, last success age, writes by kind and direction, conflicts, failing incidents,
    429s and rate-limit pauses, token refreshes, safety-valve trips and links open, and which
    agent of an active/standby pair leads: each one queried by some panel."""
    queried = set().union(*(metric_names(t["expr"]) for _, t in targets(dashboard())))
    for name in (
        "last_cycle_timestamp_seconds",
        "last_success_timestamp_seconds",
        "writes_total",
        "conflicts_total",
        "failing_incidents",
        "http_throttled_total",
        "rate_limit_paused",
        "rate_limit_pause_until_timestamp_seconds",
        "http_auth_refreshes_total",
        "token_requests_total",
        "safety_valve_trips_total",
        "links_open",
        "leader",
        "lease_transitions_total",
    ):
        assert f"sentinel_snow_sync_{name}" in queried, name


def test_no_exported_label_collides_with_a_target_label(exported: Exported) -> None:
    """Prometheus renames a scraped ``job`` or ``instance`` label to ``exported_*`` (unless
    ``honor_labels``), so a metric labelled ``instance`` would break every panel that selects by
    the agent's instance: the ServiceNow instance goes in ``client`` like the HTTP metrics do."""
    clashes = {
        name: labels & TARGET_LABELS for name, labels in exported.labels.items() if labels & TARGET_LABELS
    }
    assert not clashes, clashes
    # and the run behind these checks produced samples of every metric the agent has
    assert {name.removesuffix("_total") for name in METRICS} <= exported.families


def test_the_checker_finds_what_is_not_exported(exported: Exported) -> None:
    """The check above is only as good as this: each kind of mistake is caught."""
    good = 'sum by (workspace) (increase(sentinel_snow_sync_writes_total{job=~"$job"}[$__rate_interval]))'
    assert problems(good, exported) == []
    assert problems(good.replace("writes_total", "writes_totals"), exported) == [
        "metric 'sentinel_snow_sync_writes_totals' is not exported"
    ]
    assert problems(good.replace('job=~"$job"', 'kind="create", side="x"'), exported) == [
        "sentinel_snow_sync_writes_total has no label 'side'"
    ]
    assert problems(good.replace("by (workspace)", "by (field)"), exported) == [
        "label 'field' is on none of the metrics it reads"
    ]
    assert problems("rate(sentinel_snow_sync_links_open[5m])", exported) == [
        "sentinel_snow_sync_links_open is a gauge, not a counter (rate/increase)"
    ]
    joined = "sentinel_snow_sync_links * on (instance) group_left (version) sentinel_snow_sync_build_info"
    assert problems(joined, exported) == []
    assert problems(joined.replace("on (instance)", "on (x)"), exported) == [
        "label 'x' is on none of the metrics it reads"
    ]
    assert problems(joined.replace("(version)", "(release)"), exported) == [
        "label 'release' is on none of the metrics it reads"
    ]
    assert problems("sum(", exported)[0].startswith("does not parse")
