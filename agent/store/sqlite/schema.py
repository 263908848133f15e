"""The SQLite shadow's schema: numbered migrations, applied in one transaction each, and the
database file kept private (0600, its -wal and -shm files too)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import aiosqlite

from agent.errors import ConfigError

# Each entry is one schema version (index 0 -> version 1). Never edit a released entry: add one.
MIGRATIONS: tuple[str, ...] = (
    # 1: links, comment links, watermarks, failures.
    """
    CREATE TABLE links (
        instance        TEXT NOT NULL,
        workspace       TEXT NOT NULL,
        incident        TEXT NOT NULL,
        sys_id          TEXT NOT NULL,
        number          TEXT NOT NULL,
        fields          TEXT NOT NULL DEFAULT '{}',
        sentinel_etag   TEXT,
        snow_mod_count  INTEGER,
        open            INTEGER NOT NULL DEFAULT 1,
        alerts_posted   TEXT NOT NULL DEFAULT '[]',
        entities_posted TEXT NOT NULL DEFAULT '[]',
        created_at      TEXT,
        PRIMARY KEY (instance, workspace, incident)
    );
    CREATE UNIQUE INDEX links_by_sys_id ON links (instance, sys_id);
    CREATE TABLE comment_links (
        instance         TEXT NOT NULL,
        workspace        TEXT NOT NULL,
        incident         TEXT NOT NULL,
        sentinel_comment TEXT NOT NULL,
        journal_sys_id   TEXT NOT NULL,
        direction        TEXT NOT NULL CHECK (direction IN ('to_snow', 'to_sentinel')),
        created_at       TEXT NOT NULL,
        UNIQUE (instance, journal_sys_id),
        UNIQUE (instance, workspace, incident, sentinel_comment)
    );
    CREATE TABLE watermarks (
        instance  TEXT NOT NULL,
        workspace TEXT NOT NULL,
        side      TEXT NOT NULL CHECK (side IN ('sentinel', 'servicenow')),
        created   TEXT,
        modified  TEXT,
        moved_at  TEXT NOT NULL,
        PRIMARY KEY (instance, workspace, side)
    );
    CREATE TABLE failures (
        instance  TEXT NOT NULL,
        workspace TEXT NOT NULL,
        incident  TEXT NOT NULL,
        error     TEXT NOT NULL,
        attempts  INTEGER NOT NULL,
        next_try  TEXT NOT NULL,
        last_at   TEXT NOT NULL,
        PRIMARY KEY (instance, workspace, incident)
    );
    """,
    # 2: enrichment scheduling and provider ids on links; conflict and cycle history.
    """
    ALTER TABLE links ADD COLUMN enrich_after TEXT;
    ALTER TABLE links ADD COLUMN extra TEXT NOT NULL DEFAULT '{}';
    CREATE INDEX links_open ON links (instance, workspace, open);
    CREATE TABLE conflict_log (
        id         INTEGER PRIMARY KEY,
        at         TEXT NOT NULL,
        instance   TEXT NOT NULL,
        workspace  TEXT NOT NULL,
        incident   TEXT NOT NULL,
        field      TEXT NOT NULL,
        sentinel   TEXT NOT NULL,
        servicenow TEXT NOT NULL,
        winner     TEXT NOT NULL
    );
    CREATE TABLE cycles (
        id        INTEGER PRIMARY KEY,
        instance  TEXT NOT NULL,
        workspace TEXT NOT NULL,
        started   TEXT NOT NULL,
        finished  TEXT NOT NULL,
        ok        INTEGER NOT NULL,
        summary   TEXT NOT NULL
    );
    CREATE INDEX cycles_by_workspace ON cycles (instance, workspace, id);
    """,
    # 3: when each watermark last moved (``moved_at`` is when either of the side's two did).
    """
    ALTER TABLE watermarks ADD COLUMN created_moved_at TEXT;
    ALTER TABLE watermarks ADD COLUMN modified_moved_at TEXT;
    UPDATE watermarks SET created_moved_at = moved_at WHERE created IS NOT NULL;
    UPDATE watermarks SET modified_moved_at = moved_at WHERE modified IS NOT NULL;
    """,
    # 4: comment links written but not yet confirmed from the journal (state + hash of the text
    # written + the alert/entity ids an agent note lists), links due for the late-enrichment
    # re-check, and small per-workspace marks.
    """
    ALTER TABLE comment_links ADD COLUMN state TEXT NOT NULL DEFAULT 'confirmed'
        CHECK (state IN ('pending', 'posted', 'confirmed', 'unconfirmed'));
    ALTER TABLE comment_links ADD COLUMN text_hash TEXT;
    ALTER TABLE comment_links ADD COLUMN note_ids TEXT NOT NULL DEFAULT '[]';
    CREATE INDEX comment_links_by_state ON comment_links (instance, workspace, state);
    CREATE INDEX links_enrich ON links (instance, workspace, enrich_after);
    CREATE TABLE marks (
        instance  TEXT NOT NULL,
        workspace TEXT NOT NULL,
        name      TEXT NOT NULL,
        value     TEXT NOT NULL,
        at        TEXT NOT NULL,
        PRIMARY KEY (instance, workspace, name)
    );
    """,
    # 5: incidents unlinked on purpose (tombstones: never re-created or re-adopted) and links
    # found by ticket number (merges in the Defender portal move the number label).
    """
    CREATE TABLE unlinked (
        instance  TEXT NOT NULL,
        workspace TEXT NOT NULL,
        incident  TEXT NOT NULL,
        sys_id    TEXT NOT NULL,
        number    TEXT NOT NULL,
        reason    TEXT NOT NULL,
        at        TEXT NOT NULL,
        PRIMARY KEY (instance, workspace, incident)
    );
    CREATE INDEX links_by_number ON links (instance, workspace, number);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(db: aiosqlite.Connection, path: Path) -> None:
    await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    rows = list(await db.execute_fetchall("SELECT version FROM schema_version"))
    if not rows:
        await db.execute("INSERT INTO schema_version (version) VALUES (0)")
        version = 0
    else:
        version = int(rows[0]["version"])
    if version > SCHEMA_VERSION:
        raise ConfigError(
            [
                f"state database {path}: schema version {version} is newer than this agent supports "
                f"({SCHEMA_VERSION}); run a newer agent or point it at another state file"
            ]
        )
    for number in range(version + 1, SCHEMA_VERSION + 1):
        # executescript runs the whole script; the explicit BEGIN makes it one transaction.
        script = (
            f"BEGIN IMMEDIATE;\n{MIGRATIONS[number - 1]}\n"
            f"UPDATE schema_version SET version = {number};\nCOMMIT;"
        )
        try:
            await db.executescript(script)
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise


def create_private(path: Path) -> None:
    # SQLite creates the -wal and -shm files with the main file's permission bits, so creating the
    # main file 0600 before SQLite touches it keeps all three private (umask can only remove bits).
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def chmod_private(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)
