"""Prometheus metrics of a running agent (``[agent] metrics_listen``), on a registry passed in.

The engine knows nothing of Prometheus. The numbers come from three places:

* the agent's own log events, observed through :attr:`agent.log.Logger.observers` (so a metric
  and the log line an operator reads can never disagree): cycles and their duration, writes,
  comments, conflicts, incident failures, unmapped values, safety valves;
* the HTTP clients' counters, read at scrape time: requests by status, retries, 429s, token
  refreshes, and the ARM ``x-ms-ratelimit-remaining-*`` headers (REFERENCE A.11); the token
  providers' requests and failures (Entra ID, ServiceNow OAuth); and whether a ServiceNow
  instance is paused by its hourly rate limit and until when (E.8);
* the shadow, read at scrape time (:meth:`AgentMetrics.refresh`): links, open links, failing
  incidents and the watermark lag per workspace.

Every name is listed in :data:`METRICS` (the README and ``docs/logging.md`` document them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from agent import __version__
from agent.connectors.http import HttpClient
from agent.core.valves import CHECKS
from agent.store import Store

PREFIX = "sentinel_snow_sync"

WRITE_EVENTS: Mapping[str, tuple[str, str]] = {
    "snow_created": ("servicenow", "create"),
    "snow_updated": ("servicenow", "update"),
    "sentinel_updated": ("sentinel", "update"),
    "sentinel_label_added": ("sentinel", "label"),
    "comment_to_snow": ("servicenow", "comment"),
    "comment_to_sentinel": ("sentinel", "comment"),
    "alerts_to_snow": ("servicenow", "evidence"),
    "entities_to_snow": ("servicenow", "evidence"),
    "assignment_group_routed": ("servicenow", "route"),
}
"""Log event -> (system written to, kind of write) for ``sentinel_snow_sync_writes_total``."""

COMMENT_EVENTS: Mapping[str, str] = {"comment_to_snow": "to_snow", "comment_to_sentinel": "to_sentinel"}
"""Log event -> direction for ``sentinel_snow_sync_comments_total``."""

METRICS: Mapping[str, str] = {
    f"{PREFIX}_build_info": "gauge {version}: always 1",
    f"{PREFIX}_poll_interval_seconds": "gauge: [agent] poll_interval (alert thresholds are multiples of it)",
    f"{PREFIX}_cycles_total": "counter {workspace, result=ok|failed}: workspace cycles",
    f"{PREFIX}_cycle_duration_seconds": "histogram {workspace}: duration of one workspace cycle",
    f"{PREFIX}_last_cycle_timestamp_seconds": "gauge {workspace}: when the last cycle ended (Unix time)",
    f"{PREFIX}_last_success_timestamp_seconds": "gauge {workspace}: when the last successful cycle ended",
    f"{PREFIX}_writes_total": (
        "counter {workspace, system, kind=create|update|label|comment|evidence|route}: remote writes"
    ),
    f"{PREFIX}_comments_total": "counter {workspace, direction=to_snow|to_sentinel}: comments copied",
    f"{PREFIX}_conflicts_total": "counter {workspace, field}: fields changed on both sides",
    f"{PREFIX}_incident_failures_total": "counter {workspace, kind=transient|permanent|agent}: failed pairs",
    f"{PREFIX}_unmapped_values_total": "counter {workspace, field}: values without a mapping row",
    f"{PREFIX}_safety_valve_trips_total": "counter {workspace, check}: cycles refused before any write",
    f"{PREFIX}_links": "gauge {workspace}: linked incident pairs in the shadow",
    f"{PREFIX}_links_open": "gauge {workspace}: linked pairs not closed on both sides",
    f"{PREFIX}_failing_incidents": "gauge {workspace}: incidents waiting for a retry after a failure",
    f"{PREFIX}_watermark_lag_seconds": "gauge {workspace, side}: now minus the side's modification watermark",
    f"{PREFIX}_http_requests_total": "counter {system, client, status}: requests sent, retries included",
    f"{PREFIX}_http_retries_total": "counter {system, client}: requests retried after a transient failure",
    f"{PREFIX}_http_throttled_total": "counter {system, client}: HTTP 429 answers",
    f"{PREFIX}_http_auth_refreshes_total": "counter {system, client}: tokens refreshed after a 401",
    f"{PREFIX}_token_requests_total": (
        "counter {system=entra|servicenow, client, result=ok|failed}: "
        "token requests (Entra ID, ServiceNow OAuth)"
    ),
    f"{PREFIX}_arm_ratelimit_remaining": "gauge {client, bucket}: last x-ms-ratelimit-remaining-* from ARM",
    f"{PREFIX}_rate_limit_paused": (
        "gauge {client}: 1 while calls to that ServiceNow instance are paused (hourly rate limit), else 0"
    ),
    f"{PREFIX}_rate_limit_pause_until_timestamp_seconds": (
        "gauge {client}: Unix time the rate-limit pause of that ServiceNow instance ends, 0 when none"
    ),
    f"{PREFIX}_leader": "gauge: 1 while this agent leads (writes), 0 while it waits as standby",
    f"{PREFIX}_lease_transitions_total": "counter: times this agent took or lost the leader lease",
}
"""Every metric the agent exports (besides the standard ``process_*``/``python_*``), with its help."""

CYCLE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class HttpSource:
    """One HTTP client to report: ``system`` (sentinel/servicenow) and ``client`` (app/instance name)."""

    system: str
    client: str
    http: HttpClient


@dataclass(frozen=True)
class TokenSource:
    """One token provider to report: ``system`` (entra/servicenow), ``client`` (app/instance name)
    and its counts so far."""

    system: str
    client: str
    requests: int
    failures: int


class AgentMetrics:
    """The agent's metrics on ``registry``; feed it log records with :meth:`observe`.

    ``workspaces`` maps each enabled workspace to its ServiceNow instance; their series start
    at zero so ``rate()`` and ``increase()`` work from the first scrape (a counter that first
    appears at 1 hides that first increase from them).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        workspaces: Mapping[str, str],
        *,
        poll_interval: float,
        http: Callable[[], Iterable[HttpSource]] = tuple,
        tokens: Callable[[], Iterable[TokenSource]] = tuple,
        pauses: Callable[[], Mapping[str, float]] = dict,
        leadership: Callable[[], tuple[bool, int]] = lambda: (True, 0),
        clock: Callable[[], float] = time.time,
        process: bool = True,
    ) -> None:
        self.workspaces = dict(workspaces)
        self._clock = clock
        build = Gauge(f"{PREFIX}_build_info", _help("build_info"), ["version"], registry=registry)
        build.labels(__version__).set(1)
        interval = Gauge(f"{PREFIX}_poll_interval_seconds", _help("poll_interval_seconds"), registry=registry)
        interval.set(poll_interval)
        ws = ["workspace"]
        self.cycles = Counter(f"{PREFIX}_cycles", _help("cycles_total"), [*ws, "result"], registry=registry)
        self.cycle_seconds = Histogram(
            f"{PREFIX}_cycle_duration_seconds",
            _help("cycle_duration_seconds"),
            ws,
            buckets=CYCLE_BUCKETS,
            registry=registry,
        )
        self.last_cycle = Gauge(
            f"{PREFIX}_last_cycle_timestamp_seconds", _help("last_cycle_timestamp_seconds"), ws,
            registry=registry,
        )  # fmt: skip
        self.last_success = Gauge(
            f"{PREFIX}_last_success_timestamp_seconds", _help("last_success_timestamp_seconds"), ws,
            registry=registry,
        )  # fmt: skip
        self.writes = Counter(
            f"{PREFIX}_writes", _help("writes_total"), [*ws, "system", "kind"], registry=registry
        )
        self.comments = Counter(
            f"{PREFIX}_comments", _help("comments_total"), [*ws, "direction"], registry=registry
        )
        self.conflicts = Counter(
            f"{PREFIX}_conflicts", _help("conflicts_total"), [*ws, "field"], registry=registry
        )
        self.failures = Counter(
            f"{PREFIX}_incident_failures", _help("incident_failures_total"), [*ws, "kind"], registry=registry
        )
        self.unmapped = Counter(
            f"{PREFIX}_unmapped_values", _help("unmapped_values_total"), [*ws, "field"], registry=registry
        )
        self.valves = Counter(
            f"{PREFIX}_safety_valve_trips", _help("safety_valve_trips_total"), [*ws, "check"],
            registry=registry,
        )  # fmt: skip
        for name in self.workspaces:
            for result in ("ok", "failed"):
                self.cycles.labels(name, result)
            self.cycle_seconds.labels(name)
            for system, kind in WRITE_EVENTS.values():
                self.writes.labels(name, system, kind)
            for direction in COMMENT_EVENTS.values():
                self.comments.labels(name, direction)
            for kind in ("transient", "permanent", "agent"):
                self.failures.labels(name, kind)
            for check in CHECKS:
                self.valves.labels(name, check)
        self.shadow_view = _ShadowView()
        registry.register(self.shadow_view)
        registry.register(_HttpCollector(http, tokens))
        registry.register(_PauseCollector(pauses))
        registry.register(_LeaderCollector(leadership))
        if process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)

    # -- log events --

    def observe(self, record: Mapping[str, Any]) -> None:
        """Count one log record (an :attr:`agent.log.Logger.observers` callback)."""
        event = record.get("event")
        workspace = record.get("workspace")
        if not isinstance(event, str) or not isinstance(workspace, str):
            return
        if event == "cycle_summary":
            self._cycle(workspace, record)
        elif event in WRITE_EVENTS:
            self.writes.labels(workspace, *WRITE_EVENTS[event]).inc()
            if event in COMMENT_EVENTS:
                self.comments.labels(workspace, COMMENT_EVENTS[event]).inc()
        elif event == "conflict":
            self.conflicts.labels(workspace, str(record.get("field", ""))).inc()
        elif event == "incident_failed":
            self.failures.labels(workspace, str(record.get("kind", "agent"))).inc()
        elif event == "value_unmapped":
            self.unmapped.labels(workspace, str(record.get("field", ""))).inc()
        elif event == "safety_valve":
            self.valves.labels(workspace, str(record.get("check", ""))).inc()

    def _cycle(self, workspace: str, record: Mapping[str, Any]) -> None:
        ok = record.get("ok") is True
        now = self._clock()
        self.cycles.labels(workspace, "ok" if ok else "failed").inc()
        duration = record.get("duration_ms")
        if isinstance(duration, (int, float)):
            self.cycle_seconds.labels(workspace).observe(duration / 1000)
        self.last_cycle.labels(workspace).set(now)
        if ok:
            self.last_success.labels(workspace).set(now)

    # -- the shadow --

    async def refresh(self, shadow: Store) -> None:
        """Read links, failures and watermarks of every workspace (called before each scrape)."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        rows: list[tuple[str, str, dict[str, float]]] = []
        for workspace, instance in self.workspaces.items():
            total, open_ = await shadow.count_links(instance, workspace)
            failing = len(await shadow.failures(instance, workspace))
            values = {"links": float(total), "links_open": float(open_), "failing_incidents": float(failing)}
            for side in ("sentinel", "servicenow"):
                mark = (await shadow.get_watermark(instance, workspace, side)).modified
                if mark is not None:
                    values[f"lag:{side}"] = max(0.0, (now - mark).total_seconds())
            rows.append((workspace, instance, values))
        self.shadow_view.rows = rows


def _help(name: str) -> str:
    return METRICS[f"{PREFIX}_{name}"].split(": ", 1)[-1]


class _ShadowView:
    """The shadow's numbers as of the last :meth:`AgentMetrics.refresh`."""

    def __init__(self) -> None:
        self.rows: Sequence[tuple[str, str, Mapping[str, float]]] = ()

    def collect(self) -> Iterator[Metric]:
        families = {
            key: GaugeMetricFamily(f"{PREFIX}_{key}", _help(key), labels=["workspace"])
            for key in ("links", "links_open", "failing_incidents")
        }
        lag = GaugeMetricFamily(
            f"{PREFIX}_watermark_lag_seconds", _help("watermark_lag_seconds"), labels=["workspace", "side"]
        )
        for workspace, _instance, values in self.rows:
            for key, family in families.items():
                family.add_metric([workspace], values[key])
            for side in ("sentinel", "servicenow"):
                if f"lag:{side}" in values:
                    lag.add_metric([workspace, side], values[f"lag:{side}"])
        yield from families.values()
        yield lag


class _LeaderCollector:
    """Leader or standby, and how often that changed (read when Prometheus scrapes)."""

    def __init__(self, leadership: Callable[[], tuple[bool, int]]) -> None:
        self._leadership = leadership

    def collect(self) -> Iterator[Metric]:
        leading, transitions = self._leadership()
        yield GaugeMetricFamily(f"{PREFIX}_leader", _help("leader"), value=1.0 if leading else 0.0)
        yield CounterMetricFamily(
            f"{PREFIX}_lease_transitions", _help("lease_transitions_total"), value=transitions
        )


class _HttpCollector:
    """The HTTP clients' own counters, read when Prometheus scrapes."""

    def __init__(
        self, sources: Callable[[], Iterable[HttpSource]], tokens: Callable[[], Iterable[TokenSource]]
    ) -> None:
        self._sources = sources
        self._tokens = tokens

    def collect(self) -> Iterator[Metric]:
        labels = ["system", "client"]
        requests = CounterMetricFamily(
            f"{PREFIX}_http_requests", _help("http_requests_total"), labels=[*labels, "status"]
        )
        retries = CounterMetricFamily(f"{PREFIX}_http_retries", _help("http_retries_total"), labels=labels)
        throttled = CounterMetricFamily(
            f"{PREFIX}_http_throttled", _help("http_throttled_total"), labels=labels
        )
        refreshes = CounterMetricFamily(
            f"{PREFIX}_http_auth_refreshes", _help("http_auth_refreshes_total"), labels=labels
        )
        remaining = GaugeMetricFamily(
            f"{PREFIX}_arm_ratelimit_remaining", _help("arm_ratelimit_remaining"), labels=["client", "bucket"]
        )
        for src in self._sources():
            key = [src.system, src.client]
            for status, count in sorted(src.http.by_status.items()):
                requests.add_metric([*key, status], count)
            retries.add_metric(key, src.http.retries)
            throttled.add_metric(key, src.http.throttled)
            refreshes.add_metric(key, src.http.auth_refreshes)
            for bucket, left in sorted(src.http.ratelimit_remaining.items()):
                remaining.add_metric([src.client, bucket], left)
        tokens = CounterMetricFamily(
            f"{PREFIX}_token_requests", _help("token_requests_total"), labels=[*labels, "result"]
        )
        for tok in self._tokens():
            tokens.add_metric([tok.system, tok.client, "ok"], tok.requests - tok.failures)
            tokens.add_metric([tok.system, tok.client, "failed"], tok.failures)
        yield from (requests, retries, throttled, refreshes, remaining, tokens)


class _PauseCollector:
    """Rate-limit pauses per ServiceNow instance (REFERENCE E.8), read when Prometheus scrapes. The
    instance's name is the ``client`` label, as on the HTTP metrics (``instance`` is Prometheus's
    own target label)."""

    def __init__(self, pauses: Callable[[], Mapping[str, float]]) -> None:
        self._pauses = pauses

    def collect(self) -> Iterator[Metric]:
        paused = GaugeMetricFamily(
            f"{PREFIX}_rate_limit_paused", _help("rate_limit_paused"), labels=["client"]
        )
        until = GaugeMetricFamily(
            f"{PREFIX}_rate_limit_pause_until_timestamp_seconds",
            _help("rate_limit_pause_until_timestamp_seconds"),
            labels=["client"],
        )
        for instance, end in sorted(self._pauses().items()):
            paused.add_metric([instance], 1.0 if end else 0.0)
            until.add_metric([instance], end)
        yield from (paused, until)
