"""The ``[agent]`` section: process-wide settings (the state keys come from :mod:`agent.store.section`)."""

from __future__ import annotations

from agent.config.convert import boolean, choice, duration, entry_point, host_port, integer, ratio
from agent.config.model import AgentSettings
from agent.config.schema import Loaded
from agent.config.section import Section
from agent.store.section import STATE_PG_KEYS, read_state

AGENT_KEYS = (*(k for k in AgentSettings.__dataclass_fields__ if k != "store"), "state", *STATE_PG_KEYS)


def read_agent(sec: Section, name: str = "", loaded: Loaded | None = None) -> AgentSettings:
    """``[agent]`` (``name`` and ``loaded`` are the registry's calling convention, unused here)."""
    state = read_state(sec)
    return AgentSettings(
        state_db=state.path or sec.resolve("sentinel-snow-sync.db"),
        store=None if state.kind == "sqlite" else state,
        failover_timeout=sec.get("failover_timeout", duration(3, 3600), 30.0),
        poll_interval=sec.get("poll_interval", duration(0.1, 86400), 60.0),
        max_concurrency=sec.get("max_concurrency", integer(1, 64), 8),
        # Sentinel's $top is capped at 1000 (REFERENCE A.7).
        page_size=sec.get("page_size", integer(1, 1000), 200),
        log_level=sec.get("log_level", choice("debug", "info", "warning", "error"), "info"),
        log_format=sec.get("log_format", choice("json", "text"), "json"),
        ca_bundle=sec.readable_file("ca_bundle"),
        conflict_policy=sec.get("conflict_policy", choice("newest", "sentinel", "servicenow"), "newest"),
        metrics_listen=sec.optional("metrics_listen", host_port),
        dry_run=sec.get("dry_run", boolean, False),
        custom_mapping=sec.optional("custom_mapping", entry_point),
        overlap=sec.get("overlap", duration(0, 86400), 120.0),
        sweep_interval=sec.get("sweep_interval", duration(1, 30 * 86400), 86400.0),
        open_check_interval=sec.get("open_check_interval", duration(0, 86400), 600.0),
        max_close_ratio=sec.get("max_close_ratio", ratio, 0.5),
        comment_field=sec.get("comment_field", choice("work_notes", "comments"), "work_notes"),
        comment_format=sec.get("comment_format", choice("text", "code"), "text"),
        writeback_label=sec.get("writeback_label", boolean, True),
        enrichment_delay=sec.get("enrichment_delay", duration(0, 7 * 86400), 600.0),
    )
