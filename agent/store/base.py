"""The state store's interface: what the engine and the operator commands may ask of it.

Every implementation (SQLite, PostgreSQL, memory) passes one contract suite, so they are
interchangeable. The rules each one keeps:

* Writes are short transactions, whole or not at all. :meth:`Store.save_link` is the one the
  engine calls after a remote write succeeded: the link, its new comment links, its conflicts
  and the clearing of its failure row land together.
* ``(instance, sys_id)`` links one incident; a journal entry and a Sentinel comment are each
  linked once. A write breaking either raises :class:`~agent.errors.DuplicateKey` and writes
  nothing.
* Times are aware datetimes, returned in UTC with microseconds kept; a naive one is refused
  with :class:`ValueError` before anything is written, as are an unknown watermark side,
  comment direction or comment state.
* Reads by many names take any number of them. :meth:`Store.iter_links` reads a page at a
  time by key, so the caller may write while iterating.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from agent.core.records import UNSET, CommentLink, Failure, Link, Tombstone, Unset, Watermark


class Secret(Protocol):
    """A password as the config holds it (``agent.config.Secret``): revealed only where sent."""

    def reveal(self) -> str: ...


@runtime_checkable
class Store(Protocol):
    """One open state store. ``async with await open_store(url) as store: ...``."""

    @property
    def location(self) -> str:
        """Where the state lives, safe to print (a path, or a URL without its password)."""
        ...

    async def close(self) -> None:
        """Close it (safe to call twice)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def schema_version(self) -> int:
        """The schema version of the open store."""
        ...

    # --- links -----------------------------------------------------------------------------------

    async def get_links(self, instance: str, workspace: str, incidents: Iterable[str]) -> dict[str, Link]:
        """The links of these Sentinel incident names that exist, keyed by incident name."""
        ...

    async def get_links_by_sys_id(self, instance: str, sys_ids: Iterable[str]) -> dict[str, Link]:
        """The links of these ServiceNow sys_ids (any workspace), keyed by sys_id."""
        ...

    def iter_links(self, instance: str, workspace: str, *, open_only: bool = False) -> AsyncIterator[Link]:
        """Every link of a workspace in incident-name order (see the module docstring)."""
        ...

    async def count_links(self, instance: str, workspace: str) -> tuple[int, int]:
        """``(total, open)`` links of a workspace."""
        ...

    async def save_link(
        self,
        link: Link,
        *,
        comment_links: Sequence[CommentLink] = (),
        conflicts: Sequence[tuple[str, str, str, str]] = (),
        now: datetime | None = None,
    ) -> None:
        """In one transaction: upsert ``link`` (keeping a stored ``created_at`` when the new one is
        None), add its comment links, log its conflicts ``(field, sentinel, servicenow, winner)``
        stamped ``now`` and clear its failure row."""
        ...

    async def save_links(self, links: Sequence[Link]) -> None:
        """Upsert many links in one transaction; clears their failures."""
        ...

    async def delete_link(self, instance: str, workspace: str, incident: str) -> None:
        """Remove a link, its comment links and its failure row."""
        ...

    async def move_link(
        self, instance: str, workspace: str, incident: str, link: Link, comment_links: Sequence[CommentLink]
    ) -> None:
        """In one transaction: remove the link of ``incident`` with its comment links and failure
        row, and store ``link`` with ``comment_links`` (the same ticket and conversation under
        another source or incident id, e.g. a workspace's Defender XDR incident moving to the
        Graph source). Nothing changes if any part fails."""
        ...

    async def links_by_number(self, instance: str, workspace: str, numbers: Iterable[str]) -> dict[str, Link]:
        """The links of a workspace whose ServiceNow number is one of ``numbers``, keyed by number."""
        ...

    # --- tombstones ------------------------------------------------------------------------------

    async def unlink(
        self, instance: str, workspace: str, incident: str, *, reason: str, now: datetime
    ) -> Link | None:
        """Write a tombstone and remove the link, its comment links and failure; the link removed."""
        ...

    async def unlinked(
        self, instance: str, workspace: str, incidents: Iterable[str] | None = None
    ) -> dict[str, Tombstone]:
        """The tombstones of a workspace (all, or of these incidents), keyed by incident."""
        ...

    async def forget_unlinked(self, instance: str, workspace: str, incident: str) -> bool:
        """Remove a tombstone; False if there was none."""
        ...

    # --- comment links ---------------------------------------------------------------------------

    async def comment_links(self, instance: str, workspace: str, incident: str) -> list[CommentLink]:
        """The comment links of one incident, oldest first (ties in insertion order)."""
        ...

    async def add_comment_link(self, link: CommentLink) -> None:
        """Store one comment link."""
        ...

    async def unconfirmed_comment_links(self, instance: str, workspace: str) -> list[CommentLink]:
        """Comment links of a workspace in state ``pending`` or ``posted``, oldest first."""
        ...

    async def set_comment_link(
        self, link: CommentLink, *, state: str, journal_sys_id: str | None = None
    ) -> CommentLink:
        """Move one comment link to ``state`` (and to its real journal sys_id); returns it."""
        ...

    async def delete_comment_link(self, link: CommentLink) -> None:
        """Forget one comment link."""
        ...

    # --- enrichment and marks --------------------------------------------------------------------

    async def due_enrichment(self, instance: str, workspace: str, now: datetime) -> list[Link]:
        """Links whose ``enrich_after`` is due (``<= now``), soonest first."""
        ...

    async def get_mark(self, instance: str, workspace: str, name: str) -> tuple[str, datetime] | None:
        """A small named value of a workspace and when it was set, or None."""
        ...

    async def set_mark(
        self, instance: str, workspace: str, name: str, value: str | None, *, now: datetime
    ) -> None:
        """Set a named value of a workspace (``None`` removes it)."""
        ...

    # --- watermarks ------------------------------------------------------------------------------

    async def get_watermark(self, instance: str, workspace: str, side: str) -> Watermark:
        """The watermark of one side; all times None if it was never set."""
        ...

    async def set_watermark(
        self,
        instance: str,
        workspace: str,
        side: str,
        *,
        created: datetime | Unset | None = UNSET,
        modified: datetime | Unset | None = UNSET,
        moved_at: datetime,
    ) -> None:
        """Move a watermark: only the times passed change (``None`` clears one)."""
        ...

    # --- failures --------------------------------------------------------------------------------

    async def record_failure(
        self,
        instance: str,
        workspace: str,
        incident: str,
        error: str,
        *,
        now: datetime,
        base_delay: float = 60.0,
        max_delay: float = 6 * 3600,
        grace: int = 0,
    ) -> datetime:
        """Count one more failure; returns the next try, ``now + min(max_delay, base_delay * 2**(n-1))``,
        or ``now`` for the first ``grace`` failures in a row (the exponent then counts from the
        first failure after the grace)."""
        ...

    async def clear_failure(self, instance: str, workspace: str, incident: str) -> None:
        """Forget the failures of one incident."""
        ...

    async def failures(self, instance: str | None = None, workspace: str | None = None) -> list[Failure]:
        """Every failure (optionally of one instance and/or workspace), soonest retry first."""
        ...

    async def due_failures(self, instance: str, workspace: str, now: datetime) -> list[Failure]:
        """Failures of a workspace whose next try is due (``next_try <= now``)."""
        ...

    async def blocked(self, instance: str, workspace: str, now: datetime) -> set[str]:
        """Incidents still backing off (``next_try > now``)."""
        ...

    # --- history ---------------------------------------------------------------------------------

    async def conflicts(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent logged conflicts, newest first."""
        ...

    async def record_cycle(
        self,
        instance: str,
        workspace: str,
        *,
        started: datetime,
        finished: datetime,
        ok: bool,
        summary: Mapping[str, Any],
    ) -> None:
        """Record one finished cycle; keeps the newest ``CYCLES_KEPT`` and the last successful one."""
        ...

    async def last_cycle(self, instance: str, workspace: str) -> dict[str, Any] | None:
        """The last recorded cycle as ``{"started", "finished", "ok", "summary"}``, or None."""
        ...

    async def last_ok_cycle(self, instance: str, workspace: str) -> datetime | None:
        """When the last successful cycle finished, or None."""
        ...
