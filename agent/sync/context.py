"""What the steps of a cycle share: the workspace's long-lived parts (:class:`Setup`) and one
cycle's state (:class:`CycleContext`), made fresh for every cycle so nothing of one cycle leaks
into the next through the long-lived object."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.core.maps import Maps
from agent.ports import IncidentSource, Store, TicketSink
from agent.sync.conversation import Conversation
from agent.sync.hooks import Hook
from agent.sync.owners import Owners


@dataclass
class CycleStats:
    """What one workspace cycle did; logged as the ``cycle_summary`` event."""

    listed_sentinel: int = 0
    listed_snow: int = 0
    created: int = 0
    adopted: int = 0
    updated_snow: int = 0
    updated_sentinel: int = 0
    conflicts: int = 0
    failures: int = 0
    skipped: int = 0
    backoff: int = 0
    unmapped: int = 0
    deferred: int = 0
    comments_to_snow: int = 0
    comments_to_sentinel: int = 0
    notes_to_snow: int = 0
    comments_deferred: int = 0
    sweep: bool = False
    open_check: bool = False
    # The act step alone (the writes under the concurrency bound): its wall time and the requests
    # the workspace's clients sent meanwhile (clients shared with other workspaces count theirs too).
    apply_ms: float = 0.0
    apply_calls: int = 0
    planned: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "planned"}


@dataclass(frozen=True)
class CycleOptions:
    dry_run: bool = False
    force: bool = False
    since: datetime | None = None  # backfill: create incidents created since, beyond max_age_days
    sweep: bool = False  # compare every open linked pair in full (agent.sync.sweep)


@dataclass
class CycleContext:
    """One cycle of one workspace: its options, its clock reading and what it found out."""

    options: CycleOptions
    now: datetime
    stats: CycleStats = field(default_factory=CycleStats)
    sweeping: bool = False
    checking: bool = False
    retrying: set[str] = field(default_factory=set)  # incidents whose retry is due this cycle
    open_links: int = 0  # open links in the shadow (the close-ratio valve's denominator)
    listed_all_open: bool = False  # a first listing back to the floor: it serves as the open check
    owners: Owners = field(default_factory=Owners)


@dataclass(frozen=True)
class Settings:
    """What the engine takes from the configuration for one workspace (the runtime builds it from
    ``[agent]``, the workspace's section and its ticket-system instance's maps)."""

    workspace: str
    instance: str
    maps: Maps
    max_age_days: int = 30
    reopen_closed: str = "follow_up"  # follow_up | note (REFERENCE E.9)
    conflict_policy: str = "newest"
    max_concurrency: int = 8
    overlap: float = 120.0
    poll_interval: float = 60.0
    sweep_interval: float = 86_400.0
    open_check_interval: float = 600.0
    max_close_ratio: float = 0.5
    writeback_label: bool = True
    enrichment_delay: float = 900.0
    comment_format: str = "text"


class Setup:
    """One workspace's long-lived parts: its settings, its two sides and the shadow."""

    def __init__(
        self,
        settings: Settings,
        source: IncidentSource,
        sink: TicketSink,
        store: Store,
        *,
        hook: Hook | None = None,
    ) -> None:
        self.settings = settings
        self.workspace = settings.workspace
        self.instance = settings.instance
        self.maps = settings.maps
        self.source = source
        self.sink = sink
        self.store = store
        self.hook = hook
        self.sem = asyncio.Semaphore(settings.max_concurrency)
        self.stopping: asyncio.Event | None = None  # set: start no new work (a shutdown)
        self.fallback_codes: set[str] = set()  # close codes already logged as value_unmapped
        self.talk = Conversation(
            instance=settings.instance,
            workspace=settings.workspace,
            source=source,
            sink=sink,
            store=store,
            comment_format=settings.comment_format,
            overlap=settings.overlap,
        )
