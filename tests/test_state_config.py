"""``[agent] state`` and its PostgreSQL keys: what a README reader writes is accepted, the rest named."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.store import StoreTarget
from tests.test_config import ENV, load, problems


def state(tmp_path: Path, **keys: str) -> StoreTarget:
    return load(tmp_path, {"agent": dict(keys)}, env={**ENV, "DB_PW": "s3cret"}).agent.state


def test_state_db_keeps_meaning_sqlite(tmp_path: Path) -> None:
    assert state(tmp_path, state_db="x.db") == StoreTarget("sqlite", str(tmp_path / "x.db"))
    assert state(tmp_path) == StoreTarget("sqlite", str(tmp_path / "sentinel-snow-sync.db"))


def test_state_sqlite_forms(tmp_path: Path) -> None:
    for text in ("sqlite:x.db", "x.db", f"sqlite:{tmp_path}/x.db"):
        config = load(tmp_path, {"agent": {"state": text}})
        assert config.agent.state == StoreTarget("sqlite", str(tmp_path / "x.db"))
        assert config.agent.state_db == tmp_path / "x.db"  # the lock file's place


def test_postgresql_state_with_password_from_env_and_tls(tmp_path: Path) -> None:
    ca = tmp_path / "db-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    target = state(
        tmp_path,
        state="postgresql://sync@db.example.com:6432/sync",
        state_password_env="DB_PW",
        state_sslmode="verify-full",
        state_sslrootcert="db-ca.pem",
    )
    assert target.kind == "postgresql"
    assert target.value == f"postgresql://sync@db.example.com:6432/sync?sslmode=verify-full&sslrootcert={ca}"
    assert target.password is not None and target.password.reveal() == "s3cret"
    assert "s3cret" not in repr(target) and "s3cret" not in target.location


def test_libpq_options_in_the_url_are_kept(tmp_path: Path) -> None:
    url = "postgresql://sync@db1,db2/sync?target_session_attrs=read-write&sslmode=require"
    assert state(tmp_path, state=url).value == url
    schema = "postgresql://sync@db/shared?options=-c%20search_path%3Dsync"
    assert state(tmp_path, state=schema).value == schema


def test_a_password_in_the_url_becomes_a_secret(tmp_path: Path) -> None:
    target = state(tmp_path, state="postgres://sync:p%40ss@db/sync")
    assert target.value == "postgres://sync@db/sync"
    assert target.password is not None and target.password.reveal() == "p@ss"


def test_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    secret.chmod(0o600)
    target = state(tmp_path, state="postgresql://sync@db/sync", state_password_file="pw")
    assert target.password is not None and target.password.reveal() == "from-file"


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"state": "x.db", "state_db": "y.db"}, "[agent] state: set either state or state_db"),
        ({"state": "memory:"}, "[agent] state: memory: keeps nothing across restarts"),
        ({"state": "nowhere/x.db"}, "[agent] state: folder"),
        ({"state_password_env": "DB_PW"}, "[agent] state_password_env: only for a shared state"),
        ({"state": "postgresql://sync@db/"}, "[agent] state: name the database"),
        ({"state": "postgresql://u@db/d", "state_sslmode": "verify_full"}, "did you mean verify-full"),
        ({"state": "postgresql://u@db/d?sslmode=strict"}, "[agent] state: sslmode 'strict' is not one of"),
        ({"state": "postgresql://u@db/d", "state_sslrootcert": "none.pem"}, "state_sslrootcert: sslrootcert"),
        ({"state": "postgresql://u@db/d?sslmode=require", "state_sslmode": "disable"}, "already in the URL"),
        ({"state": "postgresql://u:pw@db/d", "state_password_env": "DB_PW"}, "keep one"),
        ({"state": "postgresql://u@db/d", "state_password_env": "NOPE"}, "variable NOPE is not set"),
        ({"state": "postgresql://u@db/d", "failover_timeout": "1s"}, "[agent] failover_timeout:"),
        ({"state_password": "x"}, "[agent] state_password: unknown key"),
    ],
)
def test_state_problems_name_the_key(tmp_path: Path, keys: dict[str, str], expected: str) -> None:
    found = problems(tmp_path, {"agent": dict(keys)}, env={**ENV, "DB_PW": "s3cret"})
    assert any(expected in p for p in found), found


def test_failover_timeout(tmp_path: Path) -> None:
    config = load(tmp_path, {"agent": {"state": "postgresql://u@db/d", "failover_timeout": "12s"}})
    assert config.agent.failover_timeout == 12.0
    assert load(tmp_path).agent.failover_timeout == 30.0
