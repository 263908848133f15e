"""Structured logging: one JSON object per line on stdout (or readable text on a terminal).

Usage::

    from agent.log import log, bind
    with bind(workspace="soc-eu", incident="73e0..."):
        log.info("snow_updated", snow_number="INC0010001", fields=["state"])

Stable keys: ``ts`` (UTC ISO-8601), ``level``, ``event``, then the bound context
(``workspace``, ``instance``, ``incident``, ...) and the event's own fields. Values are passed
through :func:`redact` so a secret registered with :func:`register_secret` never reaches a line.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Protocol

import orjson

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("log_context", default=None)
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Never print this value (client secrets, passwords, tokens). Short values are ignored."""
    if value and len(value) >= 6:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add fields to every log line emitted inside the block (and tasks started from it)."""
    current = _context.get() or {}
    token = _context.set({**current, **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class LiveLine(Protocol):
    """A status line kept at the bottom of a terminal (see :mod:`agent.progress`)."""

    def clear(self) -> None:
        """Erase the line before a log line is written."""

    def redraw(self) -> None:
        """Draw the line again after a log line was written."""


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}"
    return str(obj)


class Logger:
    """The agent's single logger. ``sink`` is replaceable (tests capture records there)."""

    def __init__(self) -> None:
        self.level = LEVELS["info"]
        self.format = "json"
        self.stream: IO[str] = sys.stdout
        self.sinks: list[Callable[[dict[str, Any]], None]] = []
        # Observers (metrics) see every info-or-higher record whatever the output level.
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        # A live terminal line (progress) to clear before a text line and redraw after it.
        self.live: LiveLine | None = None

    def configure(self, level: str = "info", fmt: str = "json", stream: IO[str] | None = None) -> None:
        self.level = LEVELS.get(level, 20)
        self.format = fmt
        if stream is not None:
            self.stream = stream

    def emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        severity = LEVELS[level]
        observed = bool(self.observers) and severity >= LEVELS["info"]
        if severity < self.level and not self.sinks and not observed:
            return
        record: dict[str, Any] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": level,
            "event": event,
        }
        record.update(_context.get() or {})
        record.update(fields)
        if observed:
            for observer in self.observers:
                observer(record)
        if severity < self.level and not self.sinks:
            return
        line = redact(orjson.dumps(record, default=_default).decode())
        if self.sinks:
            clean = orjson.loads(line)
            for sink in self.sinks:
                sink(clean)
        if LEVELS[level] < self.level:
            return
        if self.format == "text":
            line = redact(_render_text(record))
        live = self.live
        try:
            if live is not None:
                live.clear()
            self.stream.write(line + "\n")
            self.stream.flush()
            if live is not None:
                live.redraw()
        except (BrokenPipeError, ValueError):
            pass

    def debug(self, event: str, **fields: Any) -> None:
        self.emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self.emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self.emit("error", event, fields)


_TEXT_FIRST = ("workspace", "instance", "incident", "snow_number", "direction")


def _render_text(record: dict[str, Any]) -> str:
    """``HH:MM:SS.mmm LEVEL   event [workspace] incident=... key=value`` for a terminal.

    The same record as the JSON line: the well-known context keys first, then the event's own
    fields in the order given; text with spaces is quoted, lists are joined with commas.
    """
    ts = str(record.get("ts", ""))[11:23]
    head = f"{ts} {record['level'].upper():7} {record['event']}"
    if record.get("workspace"):
        head += f" [{record['workspace']}]"
    keys = [k for k in _TEXT_FIRST if k in record and k != "workspace"]
    keys += [k for k in record if k not in ("ts", "level", "event", *_TEXT_FIRST)]
    rest = " ".join(f"{k}={_text_value(record[k])}" for k in keys)
    return f"{head} {rest}".rstrip()


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        return orjson.dumps(value).decode() if (not value or any(c.isspace() for c in value)) else value
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, (str, int)) for v in value):
        return ",".join(str(v) for v in value) or "[]"
    return orjson.dumps(value, default=_default).decode()


log = Logger()


# --- retries counted per unit of work ---------------------------------------------------------


@dataclass
class RetryCount:
    """Requests retried (and their final outcome left to the caller) while a :func:`counting_retries`
    block ran, in this task and the tasks it started."""

    retried: int = 0


_RETRY_COUNT: contextvars.ContextVar[RetryCount | None] = contextvars.ContextVar("retry_count", default=None)


@contextlib.contextmanager
def counting_retries() -> Iterator[RetryCount]:
    """Count the HTTP retries made inside the block (a workspace cycle reports them in its
    summary; one retry that recovered is not worth a warning of its own)."""
    count = RetryCount()
    token = _RETRY_COUNT.set(count)
    try:
        yield count
    finally:
        _RETRY_COUNT.reset(token)


def count_retry() -> None:
    """One more retry for the :func:`counting_retries` block this task runs in, if any."""
    count = _RETRY_COUNT.get()
    if count is not None:
        count.retried += 1
