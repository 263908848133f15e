"""Rate limits from outside the agent: a ServiceNow rate-limit rule, and ``make demo``'s output.

* :func:`snow_rule`: one workspace synced from scratch while the integration user has an hourly
  rate-limit rule (REFERENCE C.6) allowing fewer requests than the sync needs. The agent counts
  its requests against the rule from the ``X-RateLimit-*`` headers and pauses the instance
  before the rule would refuse one; the row counts the answers of 429.
* :func:`demo`: ``python -m agent demo`` as a new user runs it (``make demo``), its output and
  its agent's log searched for 429 answers and retry lines.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from pathlib import Path

import orjson

from agent.testing.bench.lab import BenchOptions, lab
from agent.testing.bench.results import Row
from agent.testing.bench.targets import verdict

HOUR = 3600.0
RULE_SHARE = 0.6  # the rule allows this share of the requests the sync needs


async def snow_rule(options: BenchOptions) -> list[Row]:
    """Row: ServiceNow 429 answers while a rate-limit rule runs out mid-sync."""
    one = replace(options, workspaces=1)
    incidents = min(options.incidents, 200)
    # Calibrate: the ServiceNow requests of the same sync without a rule.
    async with lab(one, "snow-rule-free", concurrency=options.concurrency, incidents=incidents) as lb:
        needed = sum(n for k, n in (await lb.cycle()).calls.by_kind.items() if k.startswith("servicenow "))
    limit = max(10, int(needed * RULE_SHARE))
    async with lab(
        one, "snow-rule", concurrency=options.concurrency, incidents=incidents, start_agent=False
    ) as lb:
        # Ten minutes into the instance's hour: the window does not reset during the run.
        lb.stack.clock.advance(HOUR - lb.stack.clock.time() % HOUR + 600)
        lb.stack.snow["default"].set_rate_limit(lb.stack.snow_user, limit)
        await lb.start_agent()
        outcome = await lb.cycle()
    calls = sum(n for k, n in outcome.calls.by_kind.items() if k.startswith("servicenow "))
    refused = outcome.calls.throttled_by["servicenow"]
    share = refused / calls if calls else 0.0
    created = outcome.calls.by_kind["servicenow POST incident"]
    paused = ", ".join(sorted({str(r.get("error", "")).split(":")[0] for r in outcome.results.values()}))
    return [
        Row(
            "2",
            "ServiceNow rate-limit rule used up mid-sync: 429 answers <= 1% of its calls",
            f"{refused} of {calls} ({share:.1%}); rule {limit}/hour for a sync needing {needed}; "
            f"{created} tickets created, then the cycle stopped ({paused or 'no error'})",
            verdict(share <= 0.01, "requests sent past the rule's limit"),
        )
    ]


async def demo(options: BenchOptions) -> Row:
    """Row: ``make demo`` prints no 429 retry line."""
    state = options.workdir / "demo"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "demo",
        "--state-dir",
        str(state),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    printed = sum(1 for line in text.splitlines() if "429" in line)
    retried = retries_after_429(state / "agent.log")
    ok = proc.returncode == 0 and printed == 0 and retried == 0
    why = f"the demo exited {proc.returncode}" if proc.returncode else "429s met and retried"
    return Row(
        "2",
        "`make demo` prints no 429 retry line",
        f"{printed} printed lines mention 429; {retried} retries after a 429 in its agent log",
        verdict(ok, why),
    )


def retries_after_429(path: Path) -> int:
    """Retries after an answer of 429 in an agent's JSON log (``http_retry`` lines)."""
    count = 0
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return 0
    for line in lines:
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        count += isinstance(rec, dict) and rec.get("event") == "http_retry" and rec.get("status") == 429
    return count
