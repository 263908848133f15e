"""What every probe of ``check`` shares: the line it adds (:class:`Item`) and its status."""

from __future__ import annotations

from dataclasses import dataclass

from agent.app.runtime import Runtime
from agent.config import Config

OK, FAIL, WARN, SKIP = "ok", "FAIL", "warn", "skip"


@dataclass(frozen=True)
class Item:
    """One line of the checklist."""

    status: str
    subject: str
    text: str
    hint: str = ""


class Probes:
    """Collects the :class:`Item` lines of the probes run against a :class:`Runtime`."""

    def __init__(self, config: Config, rt: Runtime) -> None:
        self.config = config
        self.rt = rt
        self.items: list[Item] = []

    def add(self, status: str, subject: str, text: str, hint: str = "") -> None:
        self.items.append(Item(status, subject, text, hint))
