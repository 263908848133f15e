"""The agent's own recent writes to one side, by the server's clock: how big a listing's page is.

A cycle lists what changed since its watermark minus the overlap. Right after the agent wrote
(an initial sync writes every incident and every ticket), that window holds all its own writes,
and paging through them at the usual page size costs one read per page for records the agent
knows already: the pairing step recognises them by their version and skips them. Knowing how
many records it wrote itself after the window's start, the connector asks for a page large
enough to hold them on top of a regular page (within the API's maximum), so the cycle after a
busy one still reads each side once. Records are counted once however often they were written,
and forgotten once a window starts after their last write.
"""

from __future__ import annotations

from datetime import datetime, timedelta

# The largest page asked for to take in our own writes, where the API allows more (a ServiceNow
# page of this many records is a few megabytes).
OWN_PAGE_MAX = 2000
KEEP = timedelta(hours=1)


class OwnWrites:
    """When each record this connector wrote was last written, as the server answered."""

    def __init__(self) -> None:
        self._last: dict[str, datetime] = {}

    def add(self, key: str, when: datetime) -> None:
        """Record ``key`` was written by us, at ``when`` (the server's modification time)."""
        seen = self._last.get(key)
        if seen is None or when > seen:
            self._last[key] = when

    def since(self, start: datetime | None) -> int:
        """How many records we wrote at or after ``start`` (all when None). Those written more
        than :data:`KEEP` before it are forgotten: a listing that starts earlier (another
        workspace's, on a shared instance) is rarely that far behind."""
        if start is None:
            return len(self._last)
        old = [key for key, when in self._last.items() if when < start - KEEP]
        for key in old:
            del self._last[key]
        return sum(1 for when in self._last.values() if when >= start)

    def page(self, base: int, start: datetime | None, maximum: int) -> int:
        """The page size for a listing from ``start``: ``base`` plus our writes in it, at most ``maximum``."""
        return max(1, min(maximum, base + self.since(start)))
