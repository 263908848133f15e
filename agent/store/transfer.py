"""``migrate-state``: copy a whole state from one store to another (SQLite <-> PostgreSQL).

Every data table of the source is copied, whatever it holds (links, comment links, watermarks,
failures, tombstones, marks, conflict and cycle history, and tables later versions add), in
insertion order, a page per transaction, then verified by counting each table on both sides.
The target must be empty and at the same schema as this agent; the caller holds both stores
exclusively (no agent may run on either meanwhile).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from agent.errors import ConfigError, StoreError


@runtime_checkable
class Transferable(Protocol):
    """A store that can list, export and import its tables (SQLite and PostgreSQL)."""

    @property
    def location(self) -> str: ...

    async def tables(self) -> dict[str, list[str]]: ...

    def export_rows(self, table: str, columns: Sequence[str]) -> AsyncIterator[list[dict[str, Any]]]: ...

    async def import_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None: ...

    async def count_rows(self, table: str) -> int: ...


@dataclass(frozen=True)
class Copied:
    """What ``migrate-state`` copied: rows per table, counted on both sides afterwards."""

    source: str
    target: str
    rows: Mapping[str, int]


async def copy_state(source: Transferable, target: Transferable) -> Copied:
    """Copy every table of ``source`` into the empty ``target``; verify the counts."""
    theirs = await source.tables()
    ours = await target.tables()
    plan = _plan(source, target, theirs, ours)
    busy = {t: n for t in ours if (n := await target.count_rows(t))}
    if busy:
        held = ", ".join(f"{t} {n}" for t, n in sorted(busy.items()))
        raise ConfigError(
            [f"migrate-state: {target.location} is not empty ({held}); copy into an empty state"]
        )
    for table, columns in plan.items():
        async for page in source.export_rows(table, columns):
            await target.import_rows(table, page)
    counts: dict[str, int] = {}
    for table in plan:
        before, after = await source.count_rows(table), await target.count_rows(table)
        if before != after:
            raise StoreError(f"migrate-state: {table}: {before} rows in {source.location}, {after} copied")
        counts[table] = after
    return Copied(source.location, target.location, counts)


def _plan(
    source: Transferable,
    target: Transferable,
    theirs: Mapping[str, list[str]],
    ours: Mapping[str, list[str]],
) -> dict[str, list[str]]:
    """The tables and columns to copy; a table or column the target lacks is refused, not dropped."""
    problems = []
    for table, columns in theirs.items():
        if table not in ours:
            problems.append(f"migrate-state: {target.location} has no table {table} (from {source.location})")
            continue
        missing = [c for c in columns if c not in ours[table]]
        if missing:
            problems.append(f"migrate-state: {target.location} table {table} lacks {', '.join(missing)}")
    if problems:
        raise ConfigError(problems)
    return {table: list(columns) for table, columns in theirs.items()}
