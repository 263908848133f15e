"""The state store: one interface (:class:`Store`), several implementations, one way to open them.

``[agent] state`` (or ``state_db = PATH``, which always means SQLite) names the store:

=============================  ===========================================================
``sqlite:PATH`` or a bare path  the embedded default: a SQLite file on this host
``postgresql://user@host/db``   PostgreSQL, shared by an active/standby pair of agents
``memory:``                     in this process only, for tests (nothing survives)
``package.module:factory``      a store of your own: an async factory called with the text
                                after a third ``:`` (or ""), returning a :class:`Store`
=============================  ===========================================================

Implementations are imported only when named (as uvicorn resolves ``module:attr`` strings),
so the SQLite default never loads a PostgreSQL driver.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from agent.errors import ConfigError
from agent.store.base import Store

if TYPE_CHECKING:
    from agent.store.base import Secret
    from agent.store.memory import MemoryStore
    from agent.store.postgres.store import PostgresStore
    from agent.store.sqlite.store import Shadow

    def _implementations(sqlite: Shadow, memory: MemoryStore, postgres: PostgresStore) -> list[Store]:
        return [sqlite, memory, postgres]  # mypy checks here that each one satisfies the Protocol


__all__ = ["STORES", "Store", "StoreTarget", "open_store", "parse_target"]

STORES: dict[str, str] = {
    "sqlite": "agent.store.sqlite.store:Shadow.open",
    "memory": "agent.store.memory:MemoryStore.open",
    "postgresql": "agent.store.postgres.store:PostgresStore.open",
}
"""Built-in kinds -> ``module:attribute`` of an async ``open(target_text)``."""

_CUSTOM = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)(?::(?P<arg>.*))?$")


@dataclass(frozen=True)
class StoreTarget:
    """Which store to open: ``kind`` (a :data:`STORES` key or ``custom``) and what it needs."""

    kind: str
    value: str  # the SQLite path, the PostgreSQL URL, or "module:attr[:arg]"
    password: Secret | None = field(default=None, repr=False)

    @property
    def location(self) -> str:
        """The target as it is safe to print."""
        return f"{self.kind}:{self.value}" if self.kind in ("sqlite", "memory") else self.value

    @property
    def path(self) -> Path | None:
        """The SQLite file, when this is one (its lock file sits beside it)."""
        return Path(self.value) if self.kind == "sqlite" else None


def parse_target(text: str, resolve: Callable[[str], Path] = Path) -> StoreTarget:
    """``[agent] state`` as a :class:`StoreTarget`; ``resolve`` makes a relative path absolute.

    Raises :class:`ValueError` with a message for a person.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty: write a path, sqlite:PATH or postgresql://user@host/dbname")
    scheme, sep, rest = text.partition(":")
    if sep and scheme.lower() == "sqlite":
        if not rest:
            raise ValueError("sqlite: needs a path, e.g. sqlite:/var/lib/sentinel-snow-sync/state.db")
        return StoreTarget("sqlite", str(resolve(rest)))
    if sep and scheme.lower() == "memory":
        return StoreTarget("memory", "")
    if sep and scheme.lower() in ("postgresql", "postgres"):
        return StoreTarget("postgresql", text)
    if sep and _CUSTOM.match(text):
        return StoreTarget("custom", text)
    return StoreTarget("sqlite", str(resolve(text)))


async def open_store(target: StoreTarget | str | Path) -> Store:
    """Open (creating and migrating if needed) the store ``target`` names.

    Raises :class:`ConfigError` naming the store when it cannot be opened or used.
    """
    if isinstance(target, Path):
        target = StoreTarget("sqlite", str(target))
    elif isinstance(target, str):
        target = parse_target(target)
    if target.kind == "custom":
        match = _CUSTOM.match(target.value)
        assert match is not None
        factory = _import(f"{match['module']}:{match['attr']}", "[agent] state")
        store = await factory(match["arg"] or "")
        if not isinstance(store, Store):
            raise ConfigError([f"[agent] state: {target.value} did not return a state store"])
        return store
    opener = _import(STORES[target.kind], "[agent] state")
    if target.kind == "postgresql":
        return cast(Store, await opener(target.value, password=target.password))
    return cast(Store, await opener(target.value))


def _import(spec: str, where: str) -> Callable[..., Awaitable[Any]]:
    """``module:attr.attr`` imported lazily; a failure is a ConfigError naming ``where``."""
    module_name, _, attrs = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError([f"{where}: cannot import {module_name}: {exc}"]) from None
    for name in attrs.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise ConfigError([f"{where}: {module_name} has no attribute {attrs}"]) from None
    if not callable(obj):
        raise ConfigError([f"{where}: {spec} is not callable"])
    return cast(Callable[..., Awaitable[Any]], obj)
