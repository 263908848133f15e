"""Connecting to the PostgreSQL state: libpq options, UTC, orjson for jsonb, redacted URLs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_dumps, set_json_loads

from agent.errors import StoreUnavailable

if TYPE_CHECKING:
    from agent.store.base import Secret

Conn = psycopg.AsyncConnection[dict[str, Any]]
PAGE = 500
# libpq options the agent sets unless the URL does: notice a dead peer within ~20 s.
DEFAULT_OPTIONS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "3",
    "keepalives_count": "3",
    "tcp_user_timeout": "20000",
    "application_name": "sentinel-snow-sync",
}


def redact(url: str) -> str:
    """``url`` without a password, safe for logs and ``status``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def connect(url: str, password: Secret | None, **options: str) -> Conn:
    """A new autocommit connection in UTC; a failure is :class:`StoreUnavailable` naming the URL."""
    given = psycopg.conninfo.conninfo_to_dict(url)
    extra = {k: v for k, v in {**DEFAULT_OPTIONS, **options}.items() if k not in given}
    if password is not None:
        extra["password"] = password.reveal()
    try:
        conninfo = psycopg.conninfo.make_conninfo(url, **extra)
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True, row_factory=dict_row)
    except psycopg.Error as exc:
        raise StoreUnavailable(f"state database {redact(url)}: cannot connect: {first_line(exc)}") from None
    await conn.execute("SET TIME ZONE 'UTC'")
    set_json_loads(orjson.loads, conn)
    set_json_dumps(lambda obj: orjson.dumps(obj, default=json_default).decode(), conn)
    return conn


def first_line(exc: BaseException) -> str:
    """The first line of a driver message (libpq adds detail lines)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def json_default(obj: Any) -> Any:
    """Sets as sorted lists, tuples as lists, anything else as its text (as the SQLite shadow)."""
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)
