"""Rows of the SQLite shadow: Python values to SQLite columns and back, and the batches that
write them in one transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from agent.core.records import CommentLink, Failure, Link
from agent.store.checks import check_comment

CHUNK = 500  # names per IN (...) query: far below SQLite's bound-parameter limit


Params = Sequence[Any] | Mapping[str, Any]


class Batch:
    """The statements of one :meth:`Shadow._batch` write, in order."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Params | list[Params], bool]] = []

    async def execute(self, sql: str, params: Params = ()) -> None:
        self.statements.append((sql, params, False))

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        self.statements.append((sql, list(rows), True))


def run_statements(db: sqlite3.Connection, statements: Sequence[tuple[str, Any, bool]]) -> None:
    """Runs in the writer's thread, inside its transaction: the statements in order."""
    for sql, params, many in statements:
        if many:
            db.executemany(sql, params)
        else:
            db.execute(sql, params)


def chunks(names: Iterable[str]) -> Iterable[list[str]]:
    unique = list(dict.fromkeys(names))
    for i in range(0, len(unique), CHUNK):
        yield unique[i : i + CHUNK]


def ts(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the shadow stores only aware (UTC) times")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def ts_opt(value: datetime | None) -> str | None:
    return None if value is None else ts(value)


def dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def dt_req(text: str) -> datetime:
    return datetime.fromisoformat(text)


def json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else list(obj)
    return str(obj)


def link_row(link: Link) -> tuple[Any, ...]:
    return (
        link.instance,
        link.workspace,
        link.incident,
        link.sys_id,
        link.number,
        orjson.dumps({k: [s, n] for k, (s, n) in link.fields.items()}).decode(),
        link.sentinel_etag,
        link.snow_mod_count,
        int(link.open),
        orjson.dumps(sorted(link.alerts_posted)).decode(),
        orjson.dumps(sorted(link.entities_posted)).decode(),
        ts_opt(link.created_at),
        ts_opt(link.enrich_after),
        orjson.dumps(dict(link.extra)).decode(),
    )


def link_from_row(row: sqlite3.Row) -> Link:
    pairs = orjson.loads(row["fields"])
    return Link(
        instance=row["instance"],
        workspace=row["workspace"],
        incident=row["incident"],
        sys_id=row["sys_id"],
        number=row["number"],
        fields={k: (str(v[0]), str(v[1])) for k, v in pairs.items()},
        sentinel_etag=row["sentinel_etag"],
        snow_mod_count=row["snow_mod_count"],
        open=bool(row["open"]),
        alerts_posted=frozenset(orjson.loads(row["alerts_posted"])),
        entities_posted=frozenset(orjson.loads(row["entities_posted"])),
        created_at=dt(row["created_at"]),
        enrich_after=dt(row["enrich_after"]),
        extra={str(k): str(v) for k, v in orjson.loads(row["extra"]).items()},
    )


def comment_row(c: CommentLink) -> tuple[Any, ...]:
    check_comment(c)
    return (
        c.instance,
        c.workspace,
        c.incident,
        c.sentinel_comment,
        c.journal_sys_id,
        c.direction,
        ts(c.created_at),
        c.state,
        c.text_hash,
        orjson.dumps(list(c.note_ids)).decode(),
    )


def comment_from_row(row: sqlite3.Row) -> CommentLink:
    return CommentLink(
        instance=row["instance"],
        workspace=row["workspace"],
        incident=row["incident"],
        sentinel_comment=row["sentinel_comment"],
        journal_sys_id=row["journal_sys_id"],
        direction=row["direction"],
        created_at=dt_req(row["created_at"]),
        state=row["state"],
        text_hash=row["text_hash"],
        note_ids=tuple(orjson.loads(row["note_ids"])),
    )


def failure_from_row(row: sqlite3.Row) -> Failure:
    return Failure(
        instance=row["instance"],
        workspace=row["workspace"],
        incident=row["incident"],
        error=row["error"],
        attempts=int(row["attempts"]),
        next_try=dt_req(row["next_try"]),
        last_at=dt_req(row["last_at"]),
    )
