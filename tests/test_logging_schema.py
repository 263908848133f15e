"""The JSON log line is a documented contract (docs/logging.md), and text mode renders the same events."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import orjson

from agent.log import Logger, bind, log
from agent.progress import Progress, Terminal
from tests.e2e import Env

ROOT = Path(__file__).parents[1]
CALL = re.compile(r"\blog\.(debug|info|warning|error)\(\s*(f?)(['\"])([^'\"]+)\3", re.S)
NON_LITERAL = re.compile(r"\blog\.(debug|info|warning|error)\(\s*(?!f?['\"])\S", re.S)
DOC_ROW = re.compile(r"^\| `([a-z0-9_]+)` \|", re.M)
STABLE = ("ts", "level", "event", "workspace", "instance", "incident", "snow_number", "direction", "fields")


def emitted() -> dict[str, set[str]]:
    """Every event name the agent emits -> the files emitting it (the emulators log nothing).

    An f-string name such as ``f"closure_{direction}"`` becomes the pattern ``closure_*``.
    """
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "agent").rglob("*.py")):
        text = path.read_text()
        for m in NON_LITERAL.finditer(text):
            raise AssertionError(f"{path}: name the event with a string: {text[m.start() : m.start() + 60]}")
        for m in CALL.finditer(text):
            name = re.sub(r"\{[^}]*\}", "*", m.group(4)) if m.group(2) else m.group(4)
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def _matches(pattern: str, name: str) -> bool:
    return re.fullmatch(re.escape(pattern).replace(r"\*", "[a-z0-9_]+"), name) is not None


def documented() -> set[str]:
    """The event names in the tables of the "## Events" section."""
    doc = (ROOT / "docs" / "logging.md").read_text()
    section = doc.split("\n## Events\n", 1)[1].split("\n## ", 1)[0]
    return set(DOC_ROW.findall(section))


def test_every_emitted_event_is_documented() -> None:
    doc = documented()
    missing = {e: files for e, files in emitted().items() if not any(_matches(e, name) for name in doc)}
    assert not missing, f"add these events to docs/logging.md: {missing}"


def test_stable_keys_are_documented() -> None:
    doc = (ROOT / "docs" / "logging.md").read_text()
    for key in (*STABLE, "duration_ms"):
        assert f"| `{key}` |" in doc


async def test_a_cycle_logs_stable_keys_and_one_summary(env: Env) -> None:
    records: list[dict[str, Any]] = []
    log.sinks.append(records.append)
    try:
        env.ws().create_incident(title="logged", labels=["snow"], severity="High")
        await env.stats()
    finally:
        log.sinks.remove(records.append)
    info = [r for r in records if r["level"] != "debug"]
    assert [r["event"] for r in info].count("cycle_summary") == 1
    for r in info:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"]), r
        assert r["event"] in documented(), r["event"]  # every event that really happened
    [created] = [r for r in info if r["event"] == "snow_created"]
    assert created["workspace"] == "soc" and created["instance"] == "default"
    assert (
        created["incident"] and created["snow_number"].startswith("INC") and created["direction"] == "to_snow"
    )
    [summary] = [r for r in info if r["event"] == "cycle_summary"]
    assert summary["created"] == 1 and summary["ok"] is True and summary["duration_ms"] >= 0
    assert env.stack.client_secret not in orjson.dumps(records).decode()


def test_text_format_renders_the_same_event_readably() -> None:
    out = io.StringIO()
    logger = Logger()
    logger.configure(fmt="text", stream=out)
    with bind(workspace="soc-eu", incident="73e0"):
        logger.info(
            "snow_updated", snow_number="INC0010001", direction="to_snow", fields=["severity", "status"]
        )
        logger.warning("incident_failed", kind="permanent", error="servicenow PATCH: HTTP 403 (ACL)")
    first, second = out.getvalue().splitlines()
    assert re.match(
        r"\d\d:\d\d:\d\d\.\d{3} INFO    snow_updated \[soc-eu\] incident=73e0 snow_number=INC0010001", first
    )
    assert first.endswith("direction=to_snow fields=severity,status")
    assert 'error="servicenow PATCH: HTTP 403 (ACL)"' in second and "WARNING" in second


def test_progress_events_only_for_long_phases() -> None:
    now = [0.0]
    records: list[dict[str, Any]] = []
    log.sinks.append(records.append)
    try:
        quick = Progress("soc", "apply", 10, clock=lambda: now[0], terminal=None)
        for _ in range(10):
            quick.step()
        quick.finish()
        assert records == []
        slow = Progress("soc", "apply", 100, interval=5.0, clock=lambda: now[0], terminal=None)
        for _ in range(40):
            now[0] += 0.25
            slow.step()
        slow.finish()
    finally:
        log.sinks.remove(records.append)
    events = [r for r in records if r["event"] == "progress"]
    assert len(events) == 3  # at 5 s, at 10 s, and the final one
    first = events[0]
    assert (first["done"], first["total"], first["percent"], first["rate_per_s"]) == (20, 100, 20.0, 4.0)
    assert first["eta_s"] == 20.0 and first["phase"] == "apply"
    assert events[-1]["done"] == 40


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_line_on_a_terminal_is_cleared_around_log_lines() -> None:
    err, out = _Tty(), io.StringIO()
    terminal = Terminal(stream=err, min_interval=0.0)
    saved = (log.format, log.stream, log.live)
    log.configure(fmt="text", stream=out)
    try:
        p = Progress("soc", "apply", 4, clock=lambda: 0.0, terminal=terminal)
        p.step()
        assert err.getvalue().endswith("soc apply 1/4 (25.0%)") or "soc apply 1/4 (25.0%)" in err.getvalue()
        log.info("snow_created", snow_number="INC1")
        p.step()
        p.finish()
    finally:
        log.format, log.stream, log.live = saved
    shown = err.getvalue()
    assert "\r\x1b[K" in shown and "soc apply 2/4 (50.0%)" in shown
    assert shown.endswith("\r\x1b[K")  # erased when the phase ended
    assert "INC1" in out.getvalue() and "\r" not in out.getvalue()


def test_no_live_line_without_a_terminal() -> None:
    err = io.StringIO()
    saved = log.format
    log.format = "text"
    try:
        p = Progress("soc", "apply", 2, terminal=Terminal(stream=err, min_interval=0.0))
        p.step()
        p.finish()
    finally:
        log.format = saved
    assert err.getvalue() == ""
