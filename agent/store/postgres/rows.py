"""The PostgreSQL store's SQL and row conversions (records <-> rows, and the SQLite encoding
rows travel in for ``migrate-state``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg.types.json import Jsonb

from agent.core.records import CommentLink, Link

BY_INCIDENT = "instance = %s AND workspace = %s AND incident = %s"
FAILURE_COLUMNS = "instance, workspace, incident, error, attempts, next_try, last_at"
LINK_COLUMNS = (
    "instance, workspace, incident, sys_id, number, fields, sentinel_etag, snow_mod_count, open, "
    "alerts_posted, entities_posted, created_at, enrich_after, extra"
)
UPSERT_LINK = f"""
    INSERT INTO links ({LINK_COLUMNS}) VALUES ({", ".join(["%s"] * 14)})
    ON CONFLICT (instance, workspace, incident) DO UPDATE SET
        sys_id = excluded.sys_id, number = excluded.number, fields = excluded.fields,
        sentinel_etag = excluded.sentinel_etag, snow_mod_count = excluded.snow_mod_count,
        open = excluded.open, alerts_posted = excluded.alerts_posted,
        entities_posted = excluded.entities_posted,
        created_at = COALESCE(excluded.created_at, links.created_at),
        enrich_after = excluded.enrich_after, extra = excluded.extra
"""
INSERT_COMMENT = """
    INSERT INTO comment_links
        (instance, workspace, incident, sentinel_comment, journal_sys_id, direction, created_at,
         state, text_hash, note_ids)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


def link_params(link: Link) -> tuple[Any, ...]:
    return (
        link.instance, link.workspace, link.incident, link.sys_id, link.number,
        Jsonb({k: [s, n] for k, (s, n) in link.fields.items()}),
        link.sentinel_etag, link.snow_mod_count, link.open,
        Jsonb(sorted(link.alerts_posted)), Jsonb(sorted(link.entities_posted)),
        link.created_at, link.enrich_after, Jsonb(dict(link.extra)),
    )  # fmt: skip


def link_from_row(row: Mapping[str, Any]) -> Link:
    return Link(
        instance=row["instance"],
        workspace=row["workspace"],
        incident=row["incident"],
        sys_id=row["sys_id"],
        number=row["number"],
        fields={k: (str(v[0]), str(v[1])) for k, v in row["fields"].items()},
        sentinel_etag=row["sentinel_etag"],
        snow_mod_count=row["snow_mod_count"],
        open=row["open"],
        alerts_posted=frozenset(row["alerts_posted"]),
        entities_posted=frozenset(row["entities_posted"]),
        created_at=row["created_at"],
        enrich_after=row["enrich_after"],
        extra={str(k): str(v) for k, v in row["extra"].items()},
    )


def comment_params(c: CommentLink) -> tuple[Any, ...]:
    return (
        c.instance, c.workspace, c.incident, c.sentinel_comment, c.journal_sys_id, c.direction,
        c.created_at, c.state, c.text_hash, Jsonb(list(c.note_ids)),
    )  # fmt: skip


def comment_from_row(row: Mapping[str, Any]) -> CommentLink:
    return CommentLink(
        instance=row["instance"],
        workspace=row["workspace"],
        incident=row["incident"],
        sentinel_comment=row["sentinel_comment"],
        journal_sys_id=row["journal_sys_id"],
        direction=row["direction"],
        created_at=row["created_at"],
        state=row["state"],
        text_hash=row["text_hash"],
        note_ids=tuple(row["note_ids"]),
    )


NOT_COPIED = ("schema_version", "lease", "agents")  # this database's own bookkeeping


def to_text(value: Any, kind: str) -> Any:
    """A PostgreSQL value in the SQLite shadow's encoding."""
    if value is None:
        return None
    if kind == "timestamp with time zone":
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if kind == "jsonb":
        return orjson.dumps(value).decode()
    if kind == "boolean":
        return int(value)
    return value


def from_text(value: Any, kind: str) -> Any:
    """A value in the SQLite shadow's encoding as this column's PostgreSQL type."""
    if value is None:
        return None
    if kind == "timestamp with time zone":
        return datetime.fromisoformat(value)
    if kind == "jsonb":
        return Jsonb(orjson.loads(value))
    if kind == "boolean":
        return bool(value)
    return value


def unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))
