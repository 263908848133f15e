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
from datetime import UTC, datetime
from typing import IO, Any

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

    def configure(self, level: str = "info", fmt: str = "json", stream: IO[str] | None = None) -> None:
        self.level = LEVELS.get(level, 20)
        self.format = fmt
        if stream is not None:
            self.stream = stream

    def emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if LEVELS[level] < self.level and not self.sinks:
            return
        record: dict[str, Any] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": level,
            "event": event,
        }
        record.update(_context.get() or {})
        record.update(fields)
        line = redact(orjson.dumps(record, default=_default).decode())
        if self.sinks:
            clean = orjson.loads(line)
            for sink in self.sinks:
                sink(clean)
        if LEVELS[level] < self.level:
            return
        if self.format == "text":
            line = redact(_render_text(record))
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
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


def _render_text(record: dict[str, Any]) -> str:
    ts = str(record.get("ts", ""))[11:23]
    head = f"{ts} {record['level'].upper():7} {record['event']}"
    rest = " ".join(
        f"{k}={v if isinstance(v, (str, int, float)) else orjson.dumps(v, default=_default).decode()}"
        for k, v in record.items()
        if k not in ("ts", "level", "event")
    )
    return f"{head} {rest}".rstrip()


log = Logger()
