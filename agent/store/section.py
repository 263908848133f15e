"""The state store's keys of ``[agent]``: ``state`` / ``state_db`` and, for PostgreSQL, its
password and TLS keys (the store contributes them to the ``[agent]`` schema)."""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from agent.config.convert import did_you_mean
from agent.config.model import Secret
from agent.config.section import Section
from agent.store import StoreTarget, parse_target

STATE_PG_KEYS = ("state_password_env", "state_password_file", "state_sslmode", "state_sslrootcert")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def read_state(sec: Section) -> StoreTarget:
    """``state`` / ``state_db`` and, for PostgreSQL, its password and TLS keys."""
    default = sec.resolve("sentinel-snow-sync.db")
    if sec.is_set("state") and sec.is_set("state_db"):
        sec.problem("state", "set either state or state_db (which means a SQLite file), not both")
    key = "state" if sec.is_set("state") else "state_db"
    if key == "state":
        fallback = StoreTarget("sqlite", str(default))
        target = sec.get("state", lambda text: parse_target(text, sec.resolve), fallback)
    else:
        target = StoreTarget("sqlite", str(sec.get("state_db", sec.resolve, default)))
    if target.kind == "memory":
        sec.problem(
            key, "memory: keeps nothing across restarts (it is for tests); use a file or postgresql://"
        )
    if target.path is not None and not target.path.parent.is_dir():
        sec.problem(key, f"folder {target.path.parent} does not exist")
    if target.kind != "postgresql":
        for name in STATE_PG_KEYS:
            if sec.is_set(name):
                sec.problem(name, "only for a shared state (state = postgresql://...)")
        return target
    return _postgres_target(sec, target.value)


def _postgres_target(sec: Section, url: str) -> StoreTarget:
    """The URL with the TLS keys folded into its query (as libpq reads them) and the password."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for name in ("sslmode", "sslrootcert"):
        if sec.is_set(f"state_{name}"):
            if name in query:
                sec.problem(f"state_{name}", f"{name} is already in the URL; set it in one place")
            query[name] = sec.text(f"state_{name}") or ""
    mode = query.get("sslmode")
    if mode is not None and mode not in SSLMODES:
        key = "state_sslmode" if sec.is_set("state_sslmode") else "state"
        hint = did_you_mean(mode, SSLMODES)
        sec.problem(key, f"sslmode {mode!r} is not one of {', '.join(SSLMODES)}{hint}")
    root = query.get("sslrootcert")
    if root and root != "system":
        key = "state_sslrootcert" if sec.is_set("state_sslrootcert") else "state"
        path = sec.resolve(root)
        if not path.is_file() or not os.access(path, os.R_OK):
            sec.problem(key, f"sslrootcert {path} is not a readable file")
        query["sslrootcert"] = str(path)
    if not parts.path.strip("/"):
        sec.problem("state", "name the database: postgresql://user@host/dbname")
    password = sec.secret("state_password")
    if parts.password is not None:
        if password is not None:
            sec.problem("state", "the URL has a password and state_password_* is set; keep one")
        password = Secret(unquote(parts.password))
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}@{host}")
    # libpq decodes %XX in a URI but not "+": spaces stay %20.
    url = urlunsplit(parts._replace(query=urlencode(query, safe="/:", quote_via=quote)))
    return StoreTarget("postgresql", url, password)
