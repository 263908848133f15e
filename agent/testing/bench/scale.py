"""Scale: many linked incidents in the shadow, with emulators seeded to match.

For each size the emulators get that many incidents and matching tickets, and the shadow that
many links, agreed on every field: the agent's first ticket and link are made by the agent
itself, the others are copies of it inserted directly (``Shadow.save_links``), so the shadow
holds exactly what the agent would have written. From :data:`DIRECT_FROM` links on (a million),
only the share that changes lives in the emulators as well; the other links are rows written
straight into the state database (:func:`fill`, seconds instead of the hours the emulators would
take), whose remote halves neither an idle nor a diffed cycle reads: an idle cycle lists what
changed since the watermarks, a diffed one pairs only what it listed. The overlap window is then let pass (the
emulators' clock moves on) and the watermarks set to the emulators' present, as after a long
quiet period. A fresh agent process then runs an idle cycle, then a share of the incidents
changes (their Sentinel severity) and it plans that share without writing (a dry run: the cost
of diffing) and then syncs it, and reports its CPU time and peak RSS, how long it took from its
start to the end of its first (idle) cycle, and the state database's size.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.config import load_config
from agent.core.records import Link
from agent.store.sqlite.links import LINK_COLUMNS
from agent.store.sqlite.rows import link_row
from agent.store.sqlite.store import Shadow
from agent.testing.bench.lab import BenchOptions, Lab, Outcome, lab

WORKSPACE_TITLE = "Suspicious sign-in from Tor exit node"
BATCH = 10_000  # links per transaction while seeding the shadow
DIRECT_FROM = 1_000_000  # from this size on, links beyond the changed share are written directly
_SYSTEM_FIELDS = ("sys_id", "number", "sys_created_on", "sys_created_by", "sys_updated_on", "sys_updated_by")


@dataclass
class ScaleResult:
    """One size: the idle cycle, the changed share planned (dry run) and then synced, peak RSS."""

    links: int
    changed: int
    idle: Outcome
    diffed: Outcome  # dry run over the changed share: list, pair, fetch the other half, plan
    busy: Outcome  # the same, written
    peak_rss_mb: float
    start_s: float = 0.0  # agent process started -> its first (idle) cycle finished
    db_mb: float = 0.0  # the state database with its WAL, before the agent starts
    direct: int = 0  # links written straight into the state database (no remote halves)

    @property
    def cpu_per_diffed_ms(self) -> float:
        """Agent CPU time per changed incident for listing, pairing through the shadow, fetching
        the other half and planning (the dry run: nothing written)."""
        return 1000 * self.diffed.cpu / self.changed if self.changed else 0.0

    @property
    def cpu_per_synced_ms(self) -> float:
        """Agent CPU time per changed incident with the write and its shadow commit."""
        return 1000 * self.busy.cpu / self.changed if self.changed else 0.0


async def _first_link(lb: Lab) -> tuple[Link, dict[str, str]]:
    """Let the agent create the first ticket and link; return them as templates."""
    await lb.start_agent()
    outcome = await lb.cycle()
    if outcome.errors or outcome.total("created") != 1:
        raise RuntimeError(f"the template incident was not synced: {outcome.results}")
    await lb.stop_agent()
    config = load_config(lb.config)
    async with await Shadow.open(config.agent.state_db) as shadow:
        links = [link async for link in shadow.iter_links("default", lb.names[0])]
    link = links[0]
    return link, lb.stack.snow["default"].record("incident", link.sys_id)


async def _seed(lb: Lab, count: int) -> Link:
    """``count`` linked pairs in the emulators and the shadow, all agreed (see module docstring);
    returns the agent's own first link (the template of the others)."""
    ws_name = lb.names[0]
    ws = lb.stack.workspaces[ws_name]
    ws.create_incident(title=WORKSPACE_TITLE, severity="Medium", labels=["snow"])
    template, record = await _first_link(lb)
    fields = {k: v for k, v in record.items() if k not in _SYSTEM_FIELDS and v}
    snow = lb.stack.snow["default"]
    config = load_config(lb.config)
    async with await Shadow.open(config.agent.state_db) as shadow:
        batch: list[Link] = []
        for _ in range(count - 1):
            incident = ws.create_incident(title=WORKSPACE_TITLE, severity="Medium", labels=["snow"])
            ticket = snow.insert(
                "incident", {**fields, "correlation_id": incident["name"]}, by=record["sys_created_by"]
            )
            batch.append(_clone(template, incident, ticket))
            if len(batch) >= BATCH:
                await shadow.save_links(batch)
                batch = []
        await shadow.save_links(batch)
        # A quiet period longer than the overlap: the next listing starts past all of the above.
        lb.stack.clock.advance(config.agent.overlap + 1)
        now = lb.stack.clock.now()
        for side in ("sentinel", "servicenow"):
            await shadow.set_watermark("default", ws_name, side, modified=now, moved_at=datetime.now(UTC))
    return template


def fill(path: Path, template: Link, count: int) -> None:
    """``count`` more links like ``template`` written straight into the state database (one
    transaction, no agent running): names, sys_ids and numbers of their own, no remote halves."""
    base = list(link_row(template))
    marks = ", ".join("?" * len(base))

    def rows() -> Any:
        for i in range(count):
            row = base.copy()
            row[2] = f"00000000-0000-4000-8000-{i:012d}"  # incident name
            row[3] = f"f{i:031x}"  # sys_id
            row[4] = f"INC{50_000_000 + i}"  # number
            yield tuple(row)

    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous = OFF")
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO links ({LINK_COLUMNS}) VALUES ({marks})", rows())
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def size_mb(path: Path) -> float:
    """The database file and its WAL, in MiB."""
    return sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}")) / 2**20


def _clone(template: Link, incident: dict[str, Any], ticket: dict[str, str]) -> Link:
    return replace(
        template,
        incident=incident["name"],
        sys_id=ticket["sys_id"],
        number=ticket["number"],
        sentinel_etag=incident["etag"],
        snow_mod_count=int(ticket.get("sys_mod_count") or 0),
        enrich_after=None,
    )


def _change(lb: Lab, count: int) -> None:
    ws = lb.stack.workspaces[lb.names[0]]
    for name in list(ws.incidents)[:count]:
        ws.analyst_update(name, severity="High")


async def measure_size(options: BenchOptions, links: int) -> ScaleResult:
    """Seed ``links`` linked pairs, then an idle cycle and a cycle with a share changed."""
    one = replace(options, workspaces=1)
    changed = max(1, round(links * options.changed_share))
    real = changed if links >= DIRECT_FROM else links
    async with lab(
        one, f"scale-{links}", concurrency=options.concurrency, incidents=0, start_agent=False
    ) as lb:
        template = await _seed(lb, real)
        state_db = Path(load_config(lb.config).agent.state_db)
        if links > real:
            await asyncio.to_thread(fill, state_db, template, links - real)
        db_mb = size_mb(state_db)
        started = time.monotonic()
        await lb.start_agent()
        idle = await lb.cycle()
        start_s = time.monotonic() - started
        _change(lb, changed)
        diffed = await lb.cycle(dry_run=True)
        busy = await lb.cycle()
        for outcome in (idle, diffed, busy):
            if outcome.errors:
                raise RuntimeError("; ".join(outcome.errors))
        peak = await lb.stop_agent()
    return ScaleResult(links, changed, idle, diffed, busy, peak, start_s, db_mb, links - real)


async def scale(options: BenchOptions) -> list[ScaleResult]:
    """Every size of ``options.scale_sizes``, smallest first."""
    return [await measure_size(options, size) for size in sorted(options.scale_sizes)]
