"""The PostgreSQL store's schema, as numbered migrations (the SQLite shadow's tables in PostgreSQL types).

Each entry is one version (index 0 -> version 1); a released entry is never edited, a change is
a new entry. :func:`migrate` applies the missing ones in one transaction each, under a
transaction-level advisory lock so two agents starting together do not both migrate, and
refuses a database that a newer agent already migrated further.

Incident names sort bytewise (``COLLATE "C"``, as in SQLite), whatever the database's locale.
Times are ``timestamptz`` (microseconds, compared as instants); mappings and sets are ``jsonb``.
``lease`` holds the one leader row (see :mod:`agent.store.lease`); ``agents`` is where each
running agent says what it is (leader or standby) for ``status``.
"""

from __future__ import annotations

from typing import Any

import psycopg

from agent.errors import ConfigError

MIGRATIONS: tuple[str, ...] = (
    # 1: everything the SQLite shadow holds at its version 5, plus the lease and the agents' roles.
    """
    CREATE TABLE links (
        instance        text NOT NULL,
        workspace       text NOT NULL,
        incident        text COLLATE "C" NOT NULL,
        sys_id          text NOT NULL,
        number          text NOT NULL,
        fields          jsonb NOT NULL DEFAULT '{}',
        sentinel_etag   text,
        snow_mod_count  bigint,
        open            boolean NOT NULL DEFAULT true,
        alerts_posted   jsonb NOT NULL DEFAULT '[]',
        entities_posted jsonb NOT NULL DEFAULT '[]',
        created_at      timestamptz,
        enrich_after    timestamptz,
        extra           jsonb NOT NULL DEFAULT '{}',
        PRIMARY KEY (instance, workspace, incident),
        UNIQUE (instance, sys_id)
    );
    CREATE INDEX links_open ON links (instance, workspace, open);
    CREATE INDEX links_enrich ON links (instance, workspace, enrich_after);
    CREATE INDEX links_by_number ON links (instance, workspace, number);
    CREATE TABLE comment_links (
        id               bigserial PRIMARY KEY,
        instance         text NOT NULL,
        workspace        text NOT NULL,
        incident         text NOT NULL,
        sentinel_comment text NOT NULL,
        journal_sys_id   text NOT NULL,
        direction        text NOT NULL CHECK (direction IN ('to_snow', 'to_sentinel')),
        created_at       timestamptz NOT NULL,
        state            text NOT NULL DEFAULT 'confirmed'
                         CHECK (state IN ('pending', 'posted', 'confirmed', 'unconfirmed')),
        text_hash        text,
        note_ids         jsonb NOT NULL DEFAULT '[]',
        UNIQUE (instance, journal_sys_id),
        UNIQUE (instance, workspace, incident, sentinel_comment)
    );
    CREATE INDEX comment_links_by_state ON comment_links (instance, workspace, state);
    CREATE TABLE watermarks (
        instance          text NOT NULL,
        workspace         text NOT NULL,
        side              text NOT NULL CHECK (side IN ('sentinel', 'servicenow')),
        created           timestamptz,
        modified          timestamptz,
        moved_at          timestamptz NOT NULL,
        created_moved_at  timestamptz,
        modified_moved_at timestamptz,
        PRIMARY KEY (instance, workspace, side)
    );
    CREATE TABLE failures (
        instance  text NOT NULL,
        workspace text NOT NULL,
        incident  text COLLATE "C" NOT NULL,
        error     text NOT NULL,
        attempts  integer NOT NULL,
        next_try  timestamptz NOT NULL,
        last_at   timestamptz NOT NULL,
        PRIMARY KEY (instance, workspace, incident)
    );
    CREATE TABLE conflict_log (
        id         bigserial PRIMARY KEY,
        at         timestamptz NOT NULL,
        instance   text NOT NULL,
        workspace  text NOT NULL,
        incident   text NOT NULL,
        field      text NOT NULL,
        sentinel   text NOT NULL,
        servicenow text NOT NULL,
        winner     text NOT NULL
    );
    CREATE TABLE cycles (
        id        bigserial PRIMARY KEY,
        instance  text NOT NULL,
        workspace text NOT NULL,
        started   timestamptz NOT NULL,
        finished  timestamptz NOT NULL,
        ok        boolean NOT NULL,
        summary   jsonb NOT NULL
    );
    CREATE INDEX cycles_by_workspace ON cycles (instance, workspace, id);
    CREATE TABLE marks (
        instance  text NOT NULL,
        workspace text NOT NULL,
        name      text NOT NULL,
        value     text NOT NULL,
        at        timestamptz NOT NULL,
        PRIMARY KEY (instance, workspace, name)
    );
    CREATE TABLE unlinked (
        instance  text NOT NULL,
        workspace text NOT NULL,
        incident  text COLLATE "C" NOT NULL,
        sys_id    text NOT NULL,
        number    text NOT NULL,
        reason    text NOT NULL,
        at        timestamptz NOT NULL,
        PRIMARY KEY (instance, workspace, incident)
    );
    CREATE TABLE lease (
        name        text PRIMARY KEY,
        epoch       bigint NOT NULL,
        holder      text NOT NULL,
        host        text NOT NULL,
        pid         integer NOT NULL,
        since       timestamptz NOT NULL,
        renewed_at  timestamptz NOT NULL,
        expires_at  timestamptz NOT NULL
    );
    INSERT INTO lease VALUES ('leader', 0, '', '', 0, 'epoch', 'epoch', 'epoch');
    CREATE TABLE agents (
        id        text PRIMARY KEY,
        host      text NOT NULL,
        pid       integer NOT NULL,
        role      text NOT NULL CHECK (role IN ('leader', 'standby')),
        started   timestamptz NOT NULL,
        seen      timestamptz NOT NULL,
        expires   timestamptz NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
_MIGRATION_LOCK = 0x5E57_1E15  # the advisory lock key two starting agents queue on


async def migrate(conn: psycopg.AsyncConnection[dict[str, Any]], where: str) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; returns the version found before."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        cur = await conn.execute("SELECT version FROM schema_version")
        row = await cur.fetchone()
        if row is None:
            await conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        found = int(row["version"]) if row is not None else 0
        if found > SCHEMA_VERSION:
            raise ConfigError(
                [
                    f"state database {where}: schema version {found} is newer than this agent supports "
                    f"({SCHEMA_VERSION}); run a newer agent or point it at another database"
                ]
            )
        for number in range(found + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[number - 1].encode())
            await conn.execute("UPDATE schema_version SET version = %s", (number,))
    return found
