"""The engine's one clock (tests move it): every "now" of a cycle comes from :func:`utcnow`."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
