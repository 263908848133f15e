"""``migrate-state --from STATE --to STATE``: move the whole state between SQLite and PostgreSQL.

Either side defaults to the config's ``state``; a PostgreSQL URL on the command line takes its
password from the config's ``state_password_*`` when it is the config's state, else from
libpq's usual places (``PGPASSWORD``, ``~/.pgpass``). Both states are held exclusively while the
copy runs (the file lock, or the leader lease): stop the agents first. The target must be empty;
every table is copied and counted on both sides (:mod:`agent.store.transfer`).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from agent.app.leadership import exclusive
from agent.config import Config, Secret
from agent.errors import ConfigError
from agent.store import StoreTarget, open_store, parse_target
from agent.store.transfer import Transferable, copy_state


def resolve(config: Config, text: str | None) -> StoreTarget:
    """A ``--from`` / ``--to`` value (None: the config's state) as a store target."""
    if text is None:
        return config.agent.state
    target = parse_target(text, lambda p: Path(p).expanduser().absolute())
    if target.kind not in ("sqlite", "postgresql"):
        raise ConfigError([f"migrate-state: {text}: give sqlite:PATH or postgresql://user@host/dbname"])
    if target.kind != "postgresql":
        return target
    parts = urlsplit(target.value)
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        url = urlunsplit(parts._replace(netloc=f"{parts.username or ''}@{host}"))
        return StoreTarget("postgresql", url, Secret(unquote(parts.password)))
    own = config.agent.state
    return replace(target, password=own.password if own.value == target.value else None)


async def migrate(config: Config, source_text: str | None, target_text: str | None) -> dict[str, Any]:
    """Copy the state; the report ``{"from", "to", "rows": {table: count}}``."""
    if source_text is None and target_text is None:
        raise ConfigError(
            ["migrate-state: give --from STATE or --to STATE (the other is the config's state)"]
        )
    source, target = resolve(config, source_text), resolve(config, target_text)
    if (source.kind, source.value) == (target.kind, target.value):
        raise ConfigError([f"migrate-state: --from and --to are both {source.location}"])
    async with contextlib.AsyncExitStack() as stack:
        stores: list[Transferable] = []
        for side in (source, target):
            if side.path is not None and not side.path.parent.is_dir():
                raise ConfigError([f"migrate-state: folder {side.path.parent} does not exist"])
            if side is source and side.path is not None and not side.path.exists():
                raise ConfigError([f"migrate-state: {side.path} does not exist"])
            held = _with_state(config, side)
            lead = await stack.enter_async_context(exclusive(held))
            store = await stack.enter_async_context(await open_store(side))
            lead.fence(store)
            if not isinstance(store, Transferable):
                raise ConfigError(
                    [f"migrate-state: {store.location} cannot be copied (not SQLite or PostgreSQL)"]
                )
            stores.append(store)
        copied = await copy_state(stores[0], stores[1])
    return {"from": copied.source, "to": copied.target, "rows": dict(copied.rows)}


def _with_state(config: Config, target: StoreTarget) -> Config:
    """The config as if its state were ``target`` (for the lock or lease on it)."""
    if target.path is not None:
        agent = replace(config.agent, store=None, state_db=target.path)
    else:
        agent = replace(config.agent, store=target)
    return replace(config, agent=agent)
