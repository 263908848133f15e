"""Counting the calls the emulators served, by system and kind, reads apart from writes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.testing.emulators.common import Call

# ARM list actions answered by POST that read and change nothing (REFERENCE A.9).
_READ_POSTS = ("incidents.alerts", "incidents.entities")


def kind(call: Call) -> str:
    """``sentinel GET incidents.list``, ``servicenow PATCH incident``, ``entra POST token.v2``, ..."""
    if call.system == "servicenow" and call.path.startswith("/api/now/"):
        parts = call.path.strip("/").split("/")
        table = parts[parts.index("table") + 1] if "table" in parts[:-1] else call.route
        return f"servicenow {call.method} {table}"
    return f"{call.system} {call.method} {call.route}"


def is_write(call: Call) -> bool:
    """A call that changes something remote (a list action by POST is a read)."""
    if call.method in ("GET", "HEAD"):
        return False
    return not (call.method == "POST" and call.route in _READ_POSTS)


def kind_is_write(name: str) -> bool:
    """:func:`is_write` for a kind as :func:`kind` names it (``sentinel POST incidents.alerts``)."""
    system, method, route = name.split(" ", 2)
    return is_write(Call(system, method, route, "", 0))


@dataclass
class Calls:
    """Calls to Sentinel and ServiceNow (token requests to Entra kept apart), by kind."""

    by_kind: Counter[str] = field(default_factory=Counter)
    reads: int = 0
    writes: int = 0
    throttled: int = 0  # answered 429
    throttled_by: Counter[str] = field(default_factory=Counter)  # system -> answered 429
    entra: int = 0

    @classmethod
    def of(cls, calls: Iterable[Call]) -> Calls:
        out = cls()
        for call in calls:
            if call.system == "entra":
                out.entra += 1
                continue
            out.by_kind[kind(call)] += 1
            if call.status == 429:
                out.throttled += 1
                out.throttled_by[call.system] += 1
            if is_write(call):
                out.writes += 1
            else:
                out.reads += 1
        return out

    @property
    def total(self) -> int:
        """Sentinel and ServiceNow calls, retries and throttled ones included."""
        return self.reads + self.writes

    def brief(self) -> str:
        """``2 reads, 0 writes``."""
        return f"{self.reads} read{'s' * (self.reads != 1)}, {self.writes} write{'s' * (self.writes != 1)}"

    def kinds(self) -> str:
        """Every kind with its count, most frequent first: ``servicenow POST incident 500, ...``."""
        return ", ".join(f"{k} {n}" for k, n in self.by_kind.most_common())
