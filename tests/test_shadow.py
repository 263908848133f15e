"""The SQLite shadow store, on real database files in a temporary folder."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import agent.store.sqlite.state as shadow_module
from agent.core.records import CommentLink, Link
from agent.errors import ConfigError, DuplicateKey
from agent.store.sqlite.schema import SCHEMA_VERSION
from agent.store.sqlite.store import Shadow

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
INST = "contoso.service-now.com"
WS = "soc-eu"
# What SQLite says when a uniqueness rule of the schema refuses a row.
ONE_JOURNAL_ENTRY = r"UNIQUE constraint failed: comment_links\.instance, comment_links\.journal_sys_id"
ONE_SENTINEL_COMMENT = r"UNIQUE constraint failed: .*comment_links\.sentinel_comment"
ONE_LINK_PER_RECORD = r"UNIQUE constraint failed: links\.instance, links\.sys_id"


def make_link(incident: str = "inc-1", sys_id: str = "s" * 32, **changes: object) -> Link:
    link = Link(
        instance=INST,
        workspace=WS,
        incident=incident,
        sys_id=sys_id,
        number="INC0010001",
        fields={"severity": ("High", "1"), "status": ("Active", "2"), "owner": ("", "")},
        sentinel_etag='"0300bf09-0000-0000-0000-5c37296e0001"',
        snow_mod_count=3,
        open=True,
    )
    return replace(link, **changes)  # type: ignore[arg-type]


def comment(
    journal: str, name: str = "c-1", incident: str = "inc-1", direction: str = "to_snow"
) -> CommentLink:
    return CommentLink(INST, WS, incident, name, journal, direction, T0)


@pytest.fixture
async def shadow(tmp_path: Path) -> AsyncIterator[Shadow]:
    async with await Shadow.open(tmp_path / "state" / "shadow.db") as s:
        yield s


# --- round trips ------------------------------------------------------------------------------


async def test_link_round_trip_every_field(shadow: Shadow) -> None:
    link = make_link(
        alerts_posted=frozenset({"alert-1", "alert-2"}),
        entities_posted=frozenset({"ent-1"}),
        created_at=T0,
        enrich_after=T0 + timedelta(minutes=5),
        extra={"provider_incident_id": "3177"},
        snow_mod_count=None,
        sentinel_etag=None,
    )
    await shadow.save_link(link)
    assert await shadow.get_links(INST, WS, ["inc-1", "missing"]) == {"inc-1": link}
    assert await shadow.get_links_by_sys_id(INST, [link.sys_id]) == {link.sys_id: link}
    assert [x async for x in shadow.iter_links(INST, WS)] == [link]
    assert await shadow.count_links(INST, WS) == (1, 1)


async def test_link_defaults_round_trip(shadow: Shadow) -> None:
    link = make_link(fields={})
    await shadow.save_link(link)
    got = (await shadow.get_links(INST, WS, ["inc-1"]))["inc-1"]
    assert got == link
    assert got.extra == {} and got.alerts_posted == frozenset() and got.created_at is None


async def test_save_link_upserts_and_keeps_created_at(shadow: Shadow) -> None:
    await shadow.save_link(make_link(created_at=T0))
    updated = make_link(fields={"severity": ("Low", "3")}, open=False, snow_mod_count=9, created_at=None)
    await shadow.save_link(updated)
    got = (await shadow.get_links(INST, WS, ["inc-1"]))["inc-1"]
    assert got == replace(updated, created_at=T0)
    assert await shadow.count_links(INST, WS) == (1, 0)


async def test_comment_links_round_trip(shadow: Shadow) -> None:
    first = comment("j1", "c-1")
    second = comment("j2", "c-2", direction="to_sentinel")
    await shadow.save_link(make_link(), comment_links=[first])
    await shadow.add_comment_link(second)
    assert await shadow.comment_links(INST, WS, "inc-1") == [first, second]
    assert await shadow.comment_links(INST, WS, "other") == []


async def test_add_comment_link_refuses_duplicates(shadow: Shadow) -> None:
    await shadow.add_comment_link(comment("j1", "c-1"))
    with pytest.raises(DuplicateKey, match=ONE_JOURNAL_ENTRY):
        await shadow.add_comment_link(comment("j1", "c-other"))
    with pytest.raises(DuplicateKey, match=ONE_SENTINEL_COMMENT):
        await shadow.add_comment_link(comment("j-other", "c-1"))
    assert len(await shadow.comment_links(INST, WS, "inc-1")) == 1


async def test_comment_link_direction_is_checked(shadow: Shadow) -> None:
    with pytest.raises(ValueError, match="direction"):
        await shadow.add_comment_link(comment("j1", direction="sideways"))


async def test_conflicts_are_logged_newest_first(shadow: Shadow) -> None:
    await shadow.save_link(make_link(), conflicts=[("severity", "Low", "2", "servicenow")], now=T0)
    later = T0 + timedelta(minutes=1)
    await shadow.save_link(make_link(), conflicts=[("owner", "a@x", "b" * 32, "sentinel")], now=later)
    got = await shadow.conflicts()
    assert [(c["field"], c["winner"], c["at"]) for c in got] == [
        ("owner", "sentinel", later),
        ("severity", "servicenow", T0),
    ]
    assert got[1] == {
        "at": T0,
        "instance": INST,
        "workspace": WS,
        "incident": "inc-1",
        "field": "severity",
        "sentinel": "Low",
        "servicenow": "2",
        "winner": "servicenow",
    }
    assert len(await shadow.conflicts(limit=1)) == 1


async def test_cycles_round_trip(shadow: Shadow) -> None:
    assert await shadow.last_cycle(INST, WS) is None
    assert await shadow.last_ok_cycle(INST, WS) is None
    end = T0 + timedelta(seconds=3)
    await shadow.record_cycle(INST, WS, started=T0, finished=end, ok=True, summary={"updated": 2, "at": T0})
    failed_end = end + timedelta(minutes=1)
    await shadow.record_cycle(INST, WS, started=end, finished=failed_end, ok=False, summary={"error": "x"})
    assert await shadow.last_cycle(INST, WS) == {
        "started": end,
        "finished": failed_end,
        "ok": False,
        "summary": {"error": "x"},
    }
    assert await shadow.last_ok_cycle(INST, WS) == end
    assert await shadow.last_cycle(INST, "other-ws") is None


async def test_cycle_history_is_pruned_but_keeps_last_success(
    shadow: Shadow, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shadow_module, "CYCLES_KEPT", 3)
    last_ok = T0 + timedelta(minutes=1)
    for t in (T0, last_ok):
        await shadow.record_cycle(INST, WS, started=t, finished=t, ok=True, summary={})
    for i in range(2, 7):
        t = T0 + timedelta(minutes=i)
        await shadow.record_cycle(INST, WS, started=t, finished=t, ok=False, summary={"i": i})
    assert await shadow.last_ok_cycle(INST, WS) == last_ok
    assert (await shadow.last_cycle(INST, WS) or {})["summary"] == {"i": 6}
    rows = await shadow._read("SELECT count(*) FROM cycles")
    assert rows[0][0] == 4


# --- atomicity, separation, deletion ----------------------------------------------------------


async def test_concurrent_commits_share_transactions_and_a_broken_one_fails_alone(shadow: Shadow) -> None:
    """The writer commits the pairs queued meanwhile together (a group commit), each in its own
    savepoint: the one that breaks a unique key fails alone, every other one is stored, and each
    caller returns only once its write committed."""
    links = [make_link(f"inc-{i}", f"{i:032x}") for i in range(20)]
    clash = make_link("inc-x", f"{3:032x}")  # the sys_id of another incident's link
    before = shadow.times.groups
    results = await asyncio.gather(
        *(shadow.save_link(link) for link in links), shadow.save_link(clash), return_exceptions=True
    )
    assert results[:20] == [None] * 20
    assert isinstance(results[20], DuplicateKey)
    assert shadow.times.groups - before < 21
    assert await shadow.count_links(INST, WS) == (20, 20)
    assert (await shadow.get_links(INST, WS, ["inc-x"])) == {}


async def test_reads_do_not_wait_for_writes(shadow: Shadow) -> None:
    """A read runs on a connection of its own: it answers while the writer is busy."""
    await shadow.save_link(make_link())
    gate = threading.Event()
    busy = asyncio.ensure_future(shadow._transact(lambda db: gate.wait(10)))  # holds the writer
    queued = asyncio.ensure_future(shadow.save_link(make_link("inc-2", "2" * 32)))
    try:
        found = await asyncio.wait_for(shadow.get_links(INST, WS, ["inc-1", "inc-2"]), 5)
        assert list(found) == ["inc-1"] and not busy.done() and not queued.done()
    finally:
        gate.set()
    await asyncio.gather(busy, queued)
    assert await shadow.count_links(INST, WS) == (2, 2)


async def test_close_finishes_queued_writes(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = await Shadow.open(path)
    pending = [asyncio.ensure_future(s.save_link(make_link(f"inc-{i}", f"{i:032x}"))) for i in range(50)]
    await asyncio.sleep(0)
    await s.close()
    await asyncio.gather(*pending)
    async with await Shadow.open(path) as again:
        assert await again.count_links(INST, WS) == (50, 50)


async def test_save_link_is_atomic(shadow: Shadow) -> None:
    original = make_link()
    await shadow.save_link(original, comment_links=[comment("j1", "c-1")])
    await shadow.record_failure(INST, WS, "inc-1", "boom", now=T0)
    changed = make_link(fields={"severity": ("Low", "3")}, snow_mod_count=4)
    with pytest.raises(DuplicateKey, match=ONE_JOURNAL_ENTRY):
        await shadow.save_link(
            changed,
            comment_links=[comment("j2", "c-2"), comment("j1", "c-3")],  # j1 is already linked
            conflicts=[("severity", "Low", "2", "sentinel")],
        )
    assert (await shadow.get_links(INST, WS, ["inc-1"]))["inc-1"] == original
    assert [c.journal_sys_id for c in await shadow.comment_links(INST, WS, "inc-1")] == ["j1"]
    assert await shadow.conflicts() == []
    assert [f.incident for f in await shadow.failures()] == ["inc-1"]
    # The connection is usable afterwards: the failed transaction was rolled back.
    await shadow.save_link(changed, comment_links=[comment("j2", "c-2")])
    assert (await shadow.get_links(INST, WS, ["inc-1"]))["inc-1"] == changed
    assert await shadow.failures() == []


async def test_save_link_rejects_comment_links_of_another_incident(shadow: Shadow) -> None:
    with pytest.raises(ValueError, match="another incident"):
        await shadow.save_link(make_link(), comment_links=[comment("j1", incident="inc-2")])
    assert await shadow.count_links(INST, WS) == (0, 0)


async def test_instances_are_separate(shadow: Shadow) -> None:
    a = make_link()
    b = replace(make_link(number="INC0999999"), instance="fabrikam.service-now.com")
    await shadow.save_link(a)
    await shadow.save_link(b)
    assert await shadow.get_links(INST, WS, ["inc-1"]) == {"inc-1": a}
    assert await shadow.get_links("fabrikam.service-now.com", WS, ["inc-1"]) == {"inc-1": b}
    assert await shadow.get_links_by_sys_id("fabrikam.service-now.com", [a.sys_id]) == {a.sys_id: b}
    await shadow.delete_link(INST, WS, "inc-1")
    assert await shadow.get_links(INST, WS, ["inc-1"]) == {}
    assert await shadow.count_links("fabrikam.service-now.com", WS) == (1, 1)


async def test_one_servicenow_record_links_one_incident(shadow: Shadow) -> None:
    await shadow.save_link(make_link("inc-1"))
    with pytest.raises(DuplicateKey, match=ONE_LINK_PER_RECORD):
        await shadow.save_link(make_link("inc-2"))
    assert await shadow.count_links(INST, WS) == (1, 1)


async def test_concurrent_writers_and_read_modify_writes_never_interleave(shadow: Shadow) -> None:
    # One-hand-off transactions (save_link) and multi-statement ones that read first
    # (record_failure) share one connection: every one must land whole.
    async def one(i: int) -> None:
        await shadow.record_failure(INST, WS, f"inc-{i}", "boom", now=T0)
        await shadow.save_link(
            make_link(f"inc-{i}", f"{i:032x}"), comment_links=[comment(f"j{i}", incident=f"inc-{i}")]
        )
        await shadow.record_failure(INST, WS, f"inc-{i}", "again", now=T0)

    await asyncio.gather(*(one(i) for i in range(60)))
    assert await shadow.count_links(INST, WS) == (60, 60)
    failures = await shadow.failures()
    assert len(failures) == 60 and {f.attempts for f in failures} == {1}  # save_link cleared the first
    for i in range(60):
        assert [c.journal_sys_id for c in await shadow.comment_links(INST, WS, f"inc-{i}")] == [f"j{i}"]


async def test_delete_link_removes_comment_links_and_failure(shadow: Shadow) -> None:
    await shadow.save_link(make_link(), comment_links=[comment("j1")])
    await shadow.save_link(make_link("inc-2", "t" * 32), comment_links=[comment("j2", incident="inc-2")])
    await shadow.record_failure(INST, WS, "inc-1", "boom", now=T0)
    await shadow.delete_link(INST, WS, "inc-1")
    assert await shadow.get_links(INST, WS, ["inc-1", "inc-2"]) == {"inc-2": make_link("inc-2", "t" * 32)}
    assert await shadow.comment_links(INST, WS, "inc-1") == []
    assert len(await shadow.comment_links(INST, WS, "inc-2")) == 1
    assert await shadow.failures() == []


async def test_iter_links_open_only(shadow: Shadow) -> None:
    await shadow.save_links(
        [make_link("a", "1" * 32), make_link("b", "2" * 32, open=False), make_link("c", "3" * 32)]
    )
    assert [x.incident async for x in shadow.iter_links(INST, WS, open_only=True)] == ["a", "c"]
    assert [x.incident async for x in shadow.iter_links(INST, WS)] == ["a", "b", "c"]
    assert await shadow.count_links(INST, WS) == (3, 2)


async def test_concurrent_saves_do_not_interleave_transactions(shadow: Shadow) -> None:
    links = [make_link(f"inc-{i}", f"{i:032d}") for i in range(50)]
    await asyncio.gather(
        *(
            shadow.save_link(link, comment_links=[comment(f"j{i}", incident=link.incident)])
            for i, link in enumerate(links)
        )
    )
    assert await shadow.count_links(INST, WS) == (50, 50)


async def test_naive_datetimes_are_rejected(shadow: Shadow) -> None:
    with pytest.raises(ValueError, match="naive"):
        await shadow.save_link(make_link(created_at=datetime(2024, 1, 1)))
    assert await shadow.count_links(INST, WS) == (0, 0)


# --- watermarks ---------------------------------------------------------------------------------


async def test_watermarks_update_only_what_is_given(shadow: Shadow) -> None:
    empty = await shadow.get_watermark(INST, WS, "sentinel")
    assert (empty.created, empty.modified, empty.moved_at) == (None, None, None)

    t1, t2, t3 = (T0 + timedelta(minutes=i) for i in (1, 2, 3))
    await shadow.set_watermark(INST, WS, "sentinel", created=T0, moved_at=t1)
    wm = await shadow.get_watermark(INST, WS, "sentinel")
    assert (wm.created, wm.modified, wm.moved_at) == (T0, None, t1)

    await shadow.set_watermark(INST, WS, "sentinel", modified=t1, moved_at=t2)
    wm = await shadow.get_watermark(INST, WS, "sentinel")
    assert (wm.created, wm.modified, wm.moved_at) == (T0, t1, t2)

    await shadow.set_watermark(INST, WS, "sentinel", created=None, moved_at=t3)
    wm = await shadow.get_watermark(INST, WS, "sentinel")
    assert (wm.side, wm.created, wm.modified, wm.moved_at) == ("sentinel", None, t1, t3)

    other = await shadow.get_watermark(INST, WS, "servicenow")
    assert (other.created, other.modified, other.moved_at) == (None, None, None)


async def test_watermark_side_is_checked(shadow: Shadow) -> None:
    with pytest.raises(ValueError, match="side"):
        await shadow.set_watermark(INST, WS, "jira", moved_at=T0)


# --- failures -----------------------------------------------------------------------------------


async def test_failure_backoff_grows_and_caps(shadow: Shadow) -> None:
    delays = []
    for _ in range(6):
        next_try = await shadow.record_failure(INST, WS, "inc-1", "HTTP 503", now=T0, max_delay=1000)
        delays.append((next_try - T0).total_seconds())
    assert delays == [60, 120, 240, 480, 960, 1000]
    [failure] = await shadow.failures()
    assert (failure.incident, failure.error, failure.attempts) == ("inc-1", "HTTP 503", 6)
    assert failure.next_try == T0 + timedelta(seconds=1000)
    assert failure.last_at == T0


async def test_failure_backoff_survives_many_attempts(shadow: Shadow) -> None:
    async with shadow._batch() as db:
        await db.execute(
            "INSERT INTO failures (instance, workspace, incident, error, attempts, next_try, last_at) "
            "VALUES (?, ?, ?, 'x', 5000, ?, ?)",
            (INST, WS, "inc-1", T0.isoformat(), T0.isoformat()),
        )
    next_try = await shadow.record_failure(INST, WS, "inc-1", "again", now=T0)
    assert next_try == T0 + timedelta(hours=6)


async def test_blocked_and_due_failures(shadow: Shadow) -> None:
    next_try = await shadow.record_failure(INST, WS, "inc-1", "boom", now=T0)
    await shadow.record_failure(INST, "other-ws", "inc-9", "boom", now=T0)
    assert await shadow.blocked(INST, WS, T0) == {"inc-1"}
    assert await shadow.due_failures(INST, WS, T0) == []
    # At next_try exactly the incident is due again, no longer blocked.
    assert await shadow.blocked(INST, WS, next_try) == set()
    assert [f.incident for f in await shadow.due_failures(INST, WS, next_try)] == ["inc-1"]
    assert [f.incident for f in await shadow.failures(workspace="other-ws")] == ["inc-9"]
    assert [f.incident for f in await shadow.failures(INST, WS)] == ["inc-1"]
    assert len(await shadow.failures()) == 2
    await shadow.clear_failure(INST, WS, "inc-1")
    assert await shadow.failures(INST, WS) == []


async def test_successful_save_clears_failure(shadow: Shadow) -> None:
    await shadow.record_failure(INST, WS, "inc-1", "boom", now=T0)
    await shadow.save_link(make_link())
    assert await shadow.blocked(INST, WS, T0) == set()
    next_try = await shadow.record_failure(INST, WS, "inc-1", "boom again", now=T0)
    assert next_try == T0 + timedelta(seconds=60)  # the count started over


async def test_long_error_text_is_truncated(shadow: Shadow) -> None:
    await shadow.record_failure(INST, WS, "inc-1", "e" * 10_000, now=T0)
    [failure] = await shadow.failures()
    assert len(failure.error) == shadow_module.ERROR_TEXT_MAX


# --- files, schema, migrations ------------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES (1);
CREATE TABLE links (
    instance TEXT NOT NULL, workspace TEXT NOT NULL, incident TEXT NOT NULL,
    sys_id TEXT NOT NULL, number TEXT NOT NULL, fields TEXT NOT NULL DEFAULT '{}',
    sentinel_etag TEXT, snow_mod_count INTEGER, open INTEGER NOT NULL DEFAULT 1,
    alerts_posted TEXT NOT NULL DEFAULT '[]', entities_posted TEXT NOT NULL DEFAULT '[]',
    created_at TEXT, PRIMARY KEY (instance, workspace, incident));
CREATE UNIQUE INDEX links_by_sys_id ON links (instance, sys_id);
CREATE TABLE comment_links (
    instance TEXT NOT NULL, workspace TEXT NOT NULL, incident TEXT NOT NULL,
    sentinel_comment TEXT NOT NULL, journal_sys_id TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('to_snow', 'to_sentinel')), created_at TEXT NOT NULL,
    UNIQUE (instance, journal_sys_id), UNIQUE (instance, workspace, incident, sentinel_comment));
CREATE TABLE watermarks (
    instance TEXT NOT NULL, workspace TEXT NOT NULL,
    side TEXT NOT NULL CHECK (side IN ('sentinel', 'servicenow')),
    created TEXT, modified TEXT, moved_at TEXT NOT NULL, PRIMARY KEY (instance, workspace, side));
CREATE TABLE failures (
    instance TEXT NOT NULL, workspace TEXT NOT NULL, incident TEXT NOT NULL, error TEXT NOT NULL,
    attempts INTEGER NOT NULL, next_try TEXT NOT NULL, last_at TEXT NOT NULL,
    PRIMARY KEY (instance, workspace, incident));
INSERT INTO links (instance, workspace, incident, sys_id, number, fields, sentinel_etag, snow_mod_count,
                   open, alerts_posted, entities_posted, created_at)
VALUES ('contoso.service-now.com', 'soc-eu', 'inc-old', 'abc', 'INC0000042',
        '{"severity": ["High", "1"]}', '"e1"', 7, 1, '["al-1"]', '[]', '2024-01-01T00:00:00.000000+00:00');
"""


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_fresh_database_is_current_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "shadow.db"
    async with await Shadow.open(path) as s:
        assert await s.schema_version() == SCHEMA_VERSION
        await s.save_link(make_link())
    async with await Shadow.open(path) as s:
        assert await s.schema_version() == SCHEMA_VERSION
        assert await s.count_links(INST, WS) == (1, 1)
        [(journal,)] = list(await s._db.execute_fetchall("PRAGMA journal_mode"))  # the writer's
        [(sync,)] = list(await s._db.execute_fetchall("PRAGMA synchronous"))
        assert (journal, sync) == ("wal", 1)  # 1 = NORMAL


async def test_v1_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
    db.close()
    async with await Shadow.open(path) as s:
        assert await s.schema_version() == SCHEMA_VERSION
        old = (await s.get_links(INST, WS, ["inc-old"]))["inc-old"]
        assert old.fields == {"severity": ("High", "1")}
        assert old.alerts_posted == frozenset({"al-1"})
        assert old.created_at == datetime(2024, 1, 1, tzinfo=UTC)
        assert (old.extra, old.enrich_after, old.snow_mod_count) == ({}, None, 7)
        # The tables added by migration 2 work.
        await s.save_link(replace(old, extra={"k": "v"}), conflicts=[("severity", "Low", "1", "servicenow")])
        await s.record_cycle(INST, WS, started=T0, finished=T0, ok=True, summary={})
        assert len(await s.conflicts()) == 1
        assert await s.last_ok_cycle(INST, WS) == T0


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            f"CREATE TABLE schema_version (version INTEGER NOT NULL); "
            f"INSERT INTO schema_version VALUES ({SCHEMA_VERSION + 1});"
        )
    db.close()
    with pytest.raises(ConfigError, match="newer than this agent supports") as info:
        await Shadow.open(path)
    assert str(SCHEMA_VERSION + 1) in info.value.problems[0]


async def test_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match=r"garbage\.db"):
        await Shadow.open(path)


async def test_database_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "private.db"
    old = os.umask(0)  # a permissive umask must not leak into the files' modes
    try:
        async with await Shadow.open(path) as s:
            await s.save_link(make_link())
            assert {mode(p) for p in (path, f"{path}-wal", f"{path}-shm")} == {0o600}
    finally:
        os.umask(old)


async def test_existing_loose_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "loose.db"
    async with await Shadow.open(path):
        pass
    os.chmod(path, 0o644)
    async with await Shadow.open(path) as s:
        await s.save_link(make_link())
        assert {mode(p) for p in (path, f"{path}-wal", f"{path}-shm")} == {0o600}


# --- volume -------------------------------------------------------------------------------------


async def test_ten_thousand_links(shadow: Shadow) -> None:
    links = [make_link(f"inc-{i:05d}", f"{i:032x}", open=i % 3 != 0) for i in range(10_000)]
    await shadow.save_links(links)
    assert await shadow.count_links(INST, WS) == (10_000, sum(1 for x in links if x.open))
    wanted = [f"inc-{i:05d}" for i in range(0, 10_000, 10)] + ["inc-missing"]
    got = await shadow.get_links(INST, WS, wanted)
    assert len(got) == 1_000
    assert got["inc-09990"] == links[9990]
    by_sys_id = await shadow.get_links_by_sys_id(INST, [x.sys_id for x in links[:1_200]])
    assert len(by_sys_id) == 1_200
    assert sum([1 async for _ in shadow.iter_links(INST, WS)]) == 10_000
